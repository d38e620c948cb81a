"""Run train.py as an N-worker MultiWorkerMirroredStrategy job on this machine.

    python tools/launch_local.py --workers=2 -- --data_dir=RECORDS --model_dir=RUN [train flags]

Each worker gets a TF_CONFIG on a free localhost port (the same code path a cluster
uses), its log lines are prefixed with [worker i], and the exit code is the chief's
(worker 0). If a worker dies, the others are stopped after --grace_s seconds so a
broken job never hangs; rerunning the same command resumes from RUN/backup.
"""
import json
import os
import socket
import subprocess
import sys
import threading
import time

from absl import app, flags

import _bootstrap  # noqa: E402  (puts the project on sys.path; ROOT used below)

FLAGS = flags.FLAGS
flags.DEFINE_integer("workers", 2, "Number of worker processes.")
flags.DEFINE_float("grace_s", 30.0, "After one worker fails, seconds before the rest are killed.")
flags.DEFINE_string("host", "localhost", "Address workers bind to (localhost unless told).")


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _pump(stream, prefix):
    for line in iter(stream.readline, b""):
        sys.stdout.write(f"{prefix} {line.decode(errors='replace')}")
        sys.stdout.flush()


def launch(workers, train_args, grace_s=30.0, host="localhost"):
    """Starts the workers and returns the chief's exit code."""
    cluster = {"worker": [f"{host}:{port}" for port in free_ports(workers)]}
    processes, pumps = [], []
    for index in range(workers):
        env = dict(os.environ, TF_CONFIG=json.dumps(
            {"cluster": cluster, "task": {"type": "worker", "index": index}}))
        command = [sys.executable, os.path.join(_bootstrap.ROOT, "train.py"),
                   "--strategy=multi_worker"] + list(train_args)
        proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT)
        processes.append(proc)
        pump = threading.Thread(target=_pump, args=(proc.stdout, f"[worker {index}]"), daemon=True)
        pump.start()
        pumps.append(pump)
    failed_at = None
    while any(p.poll() is None for p in processes):
        if failed_at is None and any(p.poll() not in (None, 0) for p in processes):
            failed_at = time.time()
            sys.stdout.write(f"[launch] a worker failed; stopping the others in {grace_s:.0f}s\n")
        if failed_at is not None and time.time() - failed_at > grace_s:
            for p in processes:
                if p.poll() is None:
                    p.kill()
        time.sleep(0.2)
    for pump in pumps:
        pump.join(timeout=5)
    codes = [p.returncode for p in processes]
    sys.stdout.write(f"[launch] exit codes: {codes}\n")
    if codes[0] == 0 and any(codes[1:]):
        return 1
    return codes[0]


def main(argv):
    return launch(FLAGS.workers, argv[1:], FLAGS.grace_s, FLAGS.host)


if __name__ == "__main__":
    app.run(main)
