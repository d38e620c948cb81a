"""First epoch of the training pipeline on frames of many sizes: time and XLA compiles.

    python tools/benchmark_frame_sizes.py [--work=DIR] [--sizes=40] [--json]
    python tools/benchmark_frame_sizes.py --segflow_root=OTHER_CHECKOUT   # another version

Generates (once, into --work) a synthetic set whose frames have --sizes distinct sizes,
prepares its records, then runs one pass over the train split through
pipeline.make_dataset (rotation, zoom, flips: every example through the XLA kernel) in a
child process that logs each XLA compilation, and counts them. Each compile stalls the
worker that hit it, so a set of many sizes pays for every compile in its first epoch.
--segflow_root imports segdata from another checkout (e.g. a git worktree of an older
commit) for a before/after on the same records.
"""
import json
import os
import re
import subprocess
import sys
import time

from absl import app, flags

if not __package__:  # run as a file (python tools/x.py), not as tools.x
    import _bootstrap  # noqa: F401  (puts the project on sys.path)

FLAGS = flags.FLAGS
flags.DEFINE_string("work", "/tmp/segflow_frame_sizes", "Folder for the generated set.")
flags.DEFINE_integer("sizes", 40, "Distinct frame sizes.", lower_bound=1)
flags.DEFINE_integer("count", 200, "Frames.", lower_bound=10)
flags.DEFINE_integer("image_size", 256, "Output side.")
flags.DEFINE_integer("batch_size", 8, "Batch size.")
flags.DEFINE_string("segflow_root", "", "Import segdata from this checkout ('' this one).")
flags.DEFINE_bool("child", False, "Internal: measure in this process.")
flags.DEFINE_bool("json", False, "Print one JSON object.")

# logged by TensorFlow for every XLA compilation (TF_CPP_VMODULE below)
_COMPILED = re.compile(r"Compiled __inference__(xla|resample)_\d+ \d+ times")


def _records():
    from segdata import prepare, synthetic
    out = os.path.join(FLAGS.work, f"records_{FLAGS.sizes}_{FLAGS.count}")
    if not os.path.isfile(os.path.join(out, "manifest.json")):
        side = lambda i, n: 120 + (i * 367 // n) % 380  # noqa: E731  (120..499 px)
        sizes = [(side(i, FLAGS.sizes), side(i * 7 + 3, FLAGS.sizes)) for i in range(FLAGS.sizes)]
        files = synthetic.generate(os.path.join(FLAGS.work, "files"), count=FLAGS.count,
                                   size=sizes)
        prepare.prepare(prepare.PrepareConfig(input=files, output=out, overwrite=True,
                                              progress=False, split=(100, 0, 0)))
    return out


def _first_epoch(records_dir):
    from segdata import augment, pipeline, records
    config = augment.AugmentConfig(hflip=True, rotation=10, zoom=0.1)
    count = records.load_manifest(records_dir)["splits"]["train"]["count"]
    size = (FLAGS.image_size, FLAGS.image_size)
    if hasattr(pipeline, "training_dataset"):
        from segdata import spec
        dataset = pipeline.training_dataset(
            records_dir, spec.InputSpec.for_records(records_dir, size), FLAGS.batch_size, config)
    else:  # a checkout from before the input spec (--segflow_root)
        dataset = pipeline.make_dataset(records_dir, "train", FLAGS.batch_size, size, config)
    start = time.perf_counter()
    for _ in dataset.take(count // FLAGS.batch_size):
        pass
    return time.perf_counter() - start


def main(argv):
    del argv
    if FLAGS.child:
        if FLAGS.segflow_root:
            sys.path.insert(0, os.path.abspath(FLAGS.segflow_root))
        print(json.dumps({"first_epoch_s": _first_epoch(_records())}))
        return 0
    records_dir = _records()
    from segdata import records
    splits = records.load_manifest(records_dir)["splits"]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="0",
               TF_CPP_VMODULE="device_compilation_profiler=1")
    child = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--child", f"--work={FLAGS.work}",
         f"--sizes={FLAGS.sizes}", f"--count={FLAGS.count}",
         f"--image_size={FLAGS.image_size}", f"--batch_size={FLAGS.batch_size}",
         f"--segflow_root={FLAGS.segflow_root}"],
        capture_output=True, text=True, env=env, check=False)
    if child.returncode:
        sys.stderr.write(child.stderr[-3000:])
        return 1
    result = json.loads(child.stdout.strip().splitlines()[-1])
    result.update(compiles=len(_COMPILED.findall(child.stderr)), frames=splits["train"]["count"],
                  distinct_sizes=FLAGS.sizes, min_size=splits["train"]["min_size"],
                  max_size=splits["train"]["max_size"],
                  segflow_root=FLAGS.segflow_root or "this checkout")
    if FLAGS.json:
        print(json.dumps(result))
    else:
        print(f"{result['frames']} frames of {FLAGS.sizes} sizes "
              f"({result['min_size']}..{result['max_size']}) -> {FLAGS.image_size} px: first "
              f"epoch {result['first_epoch_s']:.1f} s, {result['compiles']} XLA compiles "
              f"({result['segflow_root']})")
    return 0


if __name__ == "__main__":
    app.run(main)
