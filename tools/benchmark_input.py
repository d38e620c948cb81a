"""images/s of the input pipeline against the decode limit and the classic Keras recipe.

    python tools/benchmark_input.py --data_dir=RECORDS_DIR [--json]

Measured side by side in one run, on the same records (and their source files for
the classic baseline), all at --image_size (default 512x512):
  decode_limit      read + decode frame and mask only, all cores
  pipeline_light    training pipeline, flips + photometric only
  pipeline_light_no_xla  the same with --noaug_xla (the reference kernel, op by op)
  pipeline          training pipeline, flip + rotate + zoom + shear + shift + photometric
  pipeline_no_xla   the same with --noaug_xla (the reference kernel, op by op)
  pipeline_elastic  pipeline + elastic deformation (10 px on a 3x3 grid) in the same kernel
  pipeline_device   host side of --augment_on=device (decode + resize; warps run on the GPU)
  pipeline_windows  --train_crop windows of --image_size cut at native scale (random scale
                    0.8-1.25, flips, rotation, elastic: the first membrane window recipe, §12.1)
  classic_baseline  two Keras ImageDataGenerator.flow_from_directory iterators zipped with
                    one seed, same augmentations (needs `pip install --no-deps tf_keras`,
                    for this benchmark only)
Each row is also measured on 1 core (a child process pinned to one CPU) unless --nocores,
and the pipeline rows with TensorFlow's intra-op pool at 1 thread (a child process, all
cores: what train.py --intra_op_threads=1 does) unless --nointra1. `X_all_vs_1core` is the
median over rounds of each round's all-core rate / the same round's 1-core rate (the JSON's
`scaling_rounds` lists them).
The JSON's `max_rss_mb` is the process's peak memory over the rows it measured (run one row
to compare pipelines' memory).
Each row also reports the process's CPU time per image (every thread, over the timed
images; `cpu_ms_per_image` in the JSON): more per image on all cores than on one core is
work lost to threading rather than cores left idle.
With --data_service=grpc://HOST:PORT the `pipeline` row also runs through that tf.data
service (start it with tools/data_service.py).
"""
import contextlib
import functools
import json
import os
import resource
import statistics
import subprocess
import sys
import time

from absl import app, flags

if not __package__:  # run as a file (python tools/x.py), not as tools.x
    import _bootstrap  # noqa: F401  (puts the project on sys.path)

FLAGS = flags.FLAGS
flags.DEFINE_string("data_dir", None, "Records folder.")
flags.DEFINE_string("split", "train", "Split to read.")
flags.DEFINE_integer("image_size", 512, "Output side.")
flags.DEFINE_integer("batch_size", 8, "Batch size.")
flags.DEFINE_integer("channels", 3, "Image channels the pipeline rows ask for (3, as the classic "
                     "baseline loads them; 1: gray, e.g. RGB records asked for as gray).")
flags.DEFINE_integer("images", 400, "Images per measurement (after a warm-up batch).")
flags.DEFINE_bool("cores", True, "Also measure with a single core (a child process pinned to "
                  "one CPU).")
flags.DEFINE_list("rows", [], "Measure only these rows (default: all).")
flags.DEFINE_bool("intra1", True, "Also measure the pipeline rows with TensorFlow's intra-op "
                  "pool at 1 thread (train.py --intra_op_threads=1), all cores.")
flags.DEFINE_integer("intra_op_threads", 0, "TensorFlow's intra-op pool size for this "
                     "process; 0: TensorFlow's default.")
flags.DEFINE_bool("classic", True, "Measure the classic ImageDataGenerator baseline.")
flags.DEFINE_string("files", "", "frames/ + masks/ folder for the classic baseline "
                    "(default: the manifest's source).")
flags.DEFINE_string("data_service", "", "grpc://HOST:PORT: also measure through that tf.data "
                    "service; 'local': start one in this process with 1, then 2 workers.")
flags.DEFINE_integer("repeats", 3, "Rounds; each round measures every row once, in turn, and the "
                     "median of the rounds is reported.")
flags.DEFINE_bool("json", False, "Print one JSON object.")
flags.mark_flag_as_required("data_dir")

FULL = dict(hflip=True, rotation=20, zoom=0.1, shear=5, shift=0.05, brightness=0.1, contrast=0.1)
LIGHT = dict(hflip=True, vflip=True, brightness=0.1, contrast=0.1)
# the UNet paper's elastic deformation (10 px on a 3x3 grid) on top of FULL
ELASTIC = dict(FULL, elastic_alpha=10.0, elastic_grid=3)
# --train_crop windows of --image_size at native scale, the first membrane window recipe's
# augmentation (BENCHMARKS §12.2's rows; recipes/membrane.flags has since changed its flips and
# added jitter)
WINDOWS = dict(hflip=True, vflip=True, rotation=20, elastic_alpha=8.0, elastic_grid=3,
               fill_mode="reflect", scale=(0.8, 1.25))


def _cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _measure(batches, images):
    """(images/s, CPU ms per image, images timed) over the whole batches that hold at least
    `images` images of an iterator of batches (dicts from the pipeline, or (images, ...)
    tuples);
    CPU time is the process's, every thread: more per image on all cores than on one is
    work lost to threading."""
    next(batches)  # warm-up: thread pools, file handles, first decode
    count, start, cpu = 0, time.perf_counter(), _cpu_seconds()
    while count < images:
        batch = next(batches)
        count += len(batch["image"] if isinstance(batch, dict) else batch[0])
    return count / (time.perf_counter() - start), (_cpu_seconds() - cpu) / count * 1e3, count


def _rate(dataset, images):
    return _measure(iter(dataset), images)


def _child_rates(names, cpus=None, intra_op_threads=0):
    """Rows `names` measured once by this tool in a child process, pinned to `cpus` and/or
    with TensorFlow's intra-op pool set to `intra_op_threads`.

    Pinning is the only honest "one core": tf.data's own thread options (a 1-thread private
    pool) do not bound the threads of ops and XLA-compiled stages, which use TensorFlow's
    intra-op pool, and TensorFlow sizes its pools from the affinity it starts with.
    """
    command = [sys.executable, os.path.abspath(__file__), f"--data_dir={FLAGS.data_dir}",
               f"--split={FLAGS.split}", f"--image_size={FLAGS.image_size}",
               f"--batch_size={FLAGS.batch_size}", f"--images={FLAGS.images // 2}",
               f"--channels={FLAGS.channels}",
               f"--rows={','.join(names)}", f"--intra_op_threads={intra_op_threads}",
               "--repeats=1", "--nocores", "--nointra1", "--noclassic", "--json"]
    child = subprocess.run(command, capture_output=True, text=True,
                           preexec_fn=cpus and (lambda: os.sched_setaffinity(0, cpus)))
    if child.returncode:
        raise RuntimeError(f"child run failed ({' '.join(command)}):\n{child.stderr[-2000:]}")
    report = json.loads(child.stdout.strip().splitlines()[-1])
    return {name: (report[name], report["cpu_ms_per_image"][name],
                   report["images_timed"][name]) for name in names}, report["cores"]


def decode_limit(data_dir, split):
    import tensorflow as tf

    from segdata import records
    manifest = records.load_manifest(data_dir)
    files = records.list_shards(data_dir, split, manifest)
    dataset = tf.data.TFRecordDataset(files, compression_type=records.compression_of(manifest))
    dataset = dataset.repeat().map(lambda raw: records.parse_example(raw),
                                   num_parallel_calls=tf.data.AUTOTUNE)
    # Decoded tensors are reduced to their shapes and batched: no per-element Python loop
    # and no batch copy is charged to the limit, so it is an upper bound on decoding alone.
    shapes = lambda ex: (tf.shape(ex["image"]), tf.shape(ex["mask"]))  # noqa: E731
    return dataset.map(shapes).batch(FLAGS.batch_size).prefetch(tf.data.AUTOTUNE)


def classic_baseline(files, size, batch, seed=1):
    """The recipe this project replaces: two generators zipped, kept in step by one seed."""
    from tf_keras.preprocessing.image import ImageDataGenerator
    args = dict(horizontal_flip=True, rotation_range=20, zoom_range=0.1, shear_range=5,
                width_shift_range=0.05, height_shift_range=0.05)
    image_gen = ImageDataGenerator(brightness_range=(0.9, 1.1), **args)
    mask_gen = ImageDataGenerator(**args)
    common = dict(target_size=(size, size), class_mode=None, batch_size=batch, seed=seed)
    images = image_gen.flow_from_directory(files, classes=["frames"], color_mode="rgb", **common)
    masks = mask_gen.flow_from_directory(files, classes=["masks"], color_mode="grayscale",
                                         interpolation="nearest", **common)
    return zip(images, masks)


def local_service_rates(make_pipeline, images):
    """The `pipeline` row through an in-process tf.data service with 1, then 2 workers.

    Each count gets a fresh dispatcher: adding a worker to a dispatcher that had served a
    job hung the second job in our runs (TF 2.21), which a benchmark must not depend on.
    """
    import tensorflow as tf

    from segdata import service
    api = tf.data.experimental.service
    rates, servers = {}, []
    for count in (1, 2):
        dispatcher = api.DispatchServer()
        host_port = dispatcher.target.split("://")[1]
        servers += [dispatcher] + [api.WorkerServer(api.WorkerConfig(dispatcher_address=host_port))
                                   for _ in range(count)]
        rates[f"data_service_{count}worker{'s' if count > 1 else ''}"] = _rate(
            service.distribute(make_pipeline(), dispatcher.target), images)[0]
    return rates


def _classic_rate(files):
    try:
        # flow_from_directory prints "Found N images" to stdout, which --json keeps for JSON
        with contextlib.redirect_stdout(sys.stderr):
            iterator = classic_baseline(files, FLAGS.image_size, FLAGS.batch_size)
    except ImportError:
        return None, None  # tf_keras not installed
    return _measure(iterator, FLAGS.images // 4)


def main(argv):
    del argv
    import tensorflow as tf

    from segdata import augment, pipeline, records, spec
    if FLAGS.intra_op_threads:
        tf.config.threading.set_intra_op_parallelism_threads(FLAGS.intra_op_threads)
    size = (FLAGS.image_size, FLAGS.image_size)
    input_spec = spec.InputSpec.for_records(FLAGS.data_dir, size, channels=FLAGS.channels)
    window_spec = spec.InputSpec.for_records(FLAGS.data_dir, size, augment.SCALE, FLAGS.channels,
                                             data_scale=1.0, train_crop=size)
    make = lambda aug, on="host", input_spec=input_spec: pipeline.training_dataset(  # noqa
        FLAGS.data_dir, input_spec, FLAGS.batch_size, augment.AugmentConfig(**aug),
        augment_on=on)
    cases = {
        "decode_limit": lambda: decode_limit(FLAGS.data_dir, FLAGS.split),
        "pipeline_light": lambda: make(LIGHT),
        "pipeline_light_no_xla": lambda: make(dict(LIGHT, xla=False)),
        "pipeline": lambda: make(FULL),
        "pipeline_no_xla": lambda: make(dict(FULL, xla=False)),
        "pipeline_elastic": lambda: make(ELASTIC),
        "pipeline_device": lambda: make(FULL, "device"),
        "pipeline_windows": lambda: make(WINDOWS, input_spec=window_spec),
    }
    rows = {name: functools.partial(lambda b: _rate(b(), FLAGS.images), build)
            for name, build in cases.items() if not FLAGS.rows or name in FLAGS.rows}
    one_core = [name for name in rows if not name.endswith("no_xla")] if FLAGS.cores else []
    intra1 = [name for name in rows if name in ("pipeline", "pipeline_light")] if FLAGS.intra1 \
        else []
    if FLAGS.data_service and FLAGS.data_service != "local":
        from segdata import service
        rows["pipeline_data_service"] = lambda: _rate(
            service.distribute(make(FULL), FLAGS.data_service), FLAGS.images)
    if FLAGS.classic:
        files = FLAGS.files or records.load_manifest(FLAGS.data_dir)["source"]
        rows["classic_baseline"] = functools.partial(_classic_rate, files)
    # Rows take turns, round after round: a slow spell of this shared machine then costs
    # each row one sample out of --repeats instead of deciding a ratio.
    samples = ({name: [] for name in rows} | {name + "_1core": [] for name in one_core}
               | {name + "_intra1": [] for name in intra1})
    cpu_samples = {name: [] for name in samples}
    images_timed, child_cores = {}, {}

    def record(name, measured):
        samples[name].append(measured[0])
        cpu_samples[name].append(measured[1])
        images_timed[name] = measured[2] if len(measured) > 2 else None

    for _ in range(FLAGS.repeats):
        for name, measure in rows.items():
            record(name, measure())
        if one_core:
            measured, child_cores["1core"] = _child_rates(one_core,
                                                          cpus={min(os.sched_getaffinity(0))})
            for name, values in measured.items():
                record(name + "_1core", values)
        if intra1:
            measured, child_cores["intra1"] = _child_rates(intra1, intra_op_threads=1)
            for name, values in measured.items():
                record(name + "_intra1", values)
    median = lambda values: statistics.median(values) if None not in values else None  # noqa
    results = {name: median(values) for name, values in samples.items()}
    cpu_ms = {name: median(values) for name, values in cpu_samples.items()}
    if FLAGS.data_service == "local":
        results.update(local_service_rates(lambda: make(FULL), FLAGS.images))
    limit = results.get("decode_limit")
    ratios = {f"{k}_vs_decode_limit": v / limit for k, v in results.items()
              if v and limit and k.startswith("pipeline") and not k.endswith("_1core")}
    if results.get("classic_baseline") and "pipeline_intra1" in results:
        ratios["pipeline_intra1_vs_classic"] = (results["pipeline_intra1"]
                                                / results["classic_baseline"])
    if results.get("classic_baseline") and "pipeline" in results:
        ratios["pipeline_vs_classic"] = results["pipeline"] / results["classic_baseline"]
    # Scaling pairs each round's all-core rate with the same round's 1-core rate (the child
    # runs after the round's all-core rows), then takes the median over rounds: a slow spell
    # spoils one pair, where a ratio of the two medians can divide a fast round by a slow one.
    scaling_rounds = {f"{name}{kind}_all_vs_1core": [
        all_cores / one for all_cores, one in zip(samples[name + kind], samples[name + "_1core"])]
        for kind, names in (("", one_core), ("_intra1", intra1)) for name in names
        if name in one_core}
    ratios.update({name: statistics.median(values) for name, values in scaling_rounds.items()})
    cores = len(os.sched_getaffinity(0))
    if FLAGS.json:
        max_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        print(json.dumps({**results, **ratios, "cores": cores, "repeats": FLAGS.repeats,
                          "cpu_ms_per_image": cpu_ms, "max_rss_mb": round(max_rss_mb),
                          "images_timed": images_timed, "child_cores": child_cores,
                          "samples": samples, "scaling_rounds": scaling_rounds}))
        return 0
    print(f"{cores} cores, {FLAGS.image_size}x{FLAGS.image_size}, {FLAGS.data_dir}")
    for name, value in results.items():
        cpu = f", {cpu_ms[name]:6.2f} CPU ms/image" if cpu_ms.get(name) else ""
        print(f"  {name:24} " + (f"{value:8.1f} images/s{cpu}" if value else "not measured "
                                 "(pip install --no-deps tf_keras==2.21.0)"))
    for name, value in ratios.items():
        print(f"  {name:32} {value:6.2f}")
    return 0


if __name__ == "__main__":
    app.run(main)
