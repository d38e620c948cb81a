"""Start a tf.data service dispatcher or worker (TF's own DispatchServer / WorkerServer).

    python tools/data_service.py --role=dispatcher --port=5050 [--work_dir=/shared/ds]
    python tools/data_service.py --role=worker --port=5051 --dispatcher=localhost:5050

Then: python train.py --data_service=grpc://localhost:5050 ...
--work_dir makes the dispatcher fault tolerant (it journals its state and recovers on
restart). Workers advertise --host (localhost by default) to the dispatcher. Note: TF's
gRPC servers listen on every interface of the machine whatever --host says; on a shared
network, keep the ports behind a firewall.
"""
import signal
import sys

from absl import app, flags

if not __package__:  # run as a file (python tools/x.py), not as tools.x
    import _bootstrap  # noqa: F401  (puts the project on sys.path)

FLAGS = flags.FLAGS
flags.DEFINE_enum("role", None, ["dispatcher", "worker"], "Which server to run.")
flags.DEFINE_integer("port", 0, "Port to serve on (0: pick a free one and print it).")
flags.DEFINE_string("dispatcher", "localhost:5050", "Dispatcher HOST:PORT (workers).")
flags.DEFINE_string("work_dir", "", "Dispatcher journal folder: enables fault-tolerant mode.")
flags.DEFINE_integer("worker_timeout_ms", 10000, "Dispatcher: a worker silent this long is "
                     "dropped and its clients stop waiting for it.")
flags.DEFINE_string("host", "localhost", "Address a worker advertises. Anything but localhost "
                    "needs --allow_remote.")
flags.DEFINE_bool("allow_remote", False, "Allow advertising a non-localhost address.")
flags.DEFINE_integer("intra_op_threads", 1, "TensorFlow's intra-op pool size in this process. A "
                     "worker only runs input pipelines, whose XLA-compiled stages are faster "
                     "with 1 thread (BENCHMARKS.md §2); 0: TensorFlow's default.", lower_bound=0)
flags.mark_flag_as_required("role")


def main(argv):
    del argv
    import tensorflow as tf
    if FLAGS.intra_op_threads:
        tf.config.threading.set_intra_op_parallelism_threads(FLAGS.intra_op_threads)
    service = tf.data.experimental.service
    if FLAGS.host not in ("localhost", "127.0.0.1") and not FLAGS.allow_remote:
        sys.stderr.write(f"data_service: error: --host={FLAGS.host} serves other machines; "
                         "pass --allow_remote if that is intended\n")
        return 1
    if FLAGS.role == "dispatcher":
        server = service.DispatchServer(service.DispatcherConfig(
            port=FLAGS.port, work_dir=FLAGS.work_dir or None,
            fault_tolerant_mode=bool(FLAGS.work_dir), worker_timeout_ms=FLAGS.worker_timeout_ms))
        print(f"dispatcher listening at {server.target}", flush=True)
    else:
        config = service.WorkerConfig(dispatcher_address=FLAGS.dispatcher, port=FLAGS.port,
                                      worker_address=f"{FLAGS.host}:%port%")
        server = service.WorkerServer(config)
        print(f"worker serving for {FLAGS.dispatcher}", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    server.join()
    return 0


if __name__ == "__main__":
    app.run(main)
