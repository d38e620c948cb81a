"""Time and peak memory of one batch's confusion matrix, by number of classes.

    python tools/benchmark_confusion.py [--classes=2,21,150] [--batch_size=8 --image_size=512]

Rows: `segment_sum` (segmodels.metrics.confusion_matrix: one bin per pixel, O(pixels))
and `one_hot_matmul` (the implementation it replaced: Keras's argmax, then two one-hot
float32 tensors of (pixels, K), multiplied). Each row runs in its own child process (peak
RSS: Linux VmHWM); a third child only draws the batch, and its time and peak are subtracted.
Rows take turns for --rounds rounds; medians are reported.
"""
import json
import os
import subprocess
import sys
import time

from absl import app, flags

if not __package__:  # run as a file (python tools/x.py), not as tools.x
    import _bootstrap  # noqa: F401  (puts the project on sys.path)

FLAGS = flags.FLAGS
flags.DEFINE_list("classes", ["2", "21", "150"], "Numbers of classes.")
flags.DEFINE_integer("batch_size", 8, "Images per batch.")
flags.DEFINE_integer("image_size", 512, "Square image side.")
flags.DEFINE_integer("repeats", 5, "Timed calls per child (after one untimed call).")
flags.DEFINE_integer("rounds", 3, "Rounds; each runs every row once, in turns.")
flags.DEFINE_bool("json", False, "Print one JSON object instead of a table.")
flags.DEFINE_string("child", "", "Internal: run one row ('impl:K') and print its JSON.")

IMPLEMENTATIONS = ("segment_sum", "one_hot_matmul")


def _one_hot_matmul(y_true, logits, num_classes, ignore_label=255):
    """segmodels.metrics.confusion_matrix as it was before (argmax included)."""
    from keras import ops
    y_true = ops.squeeze(ops.cast(y_true, "int32"), -1)
    valid = ops.reshape(ops.cast(ops.not_equal(y_true, ignore_label), "float32"), (-1, 1))
    labels = ops.reshape(ops.where(ops.not_equal(y_true, ignore_label), y_true, 0), (-1,))
    preds = (ops.squeeze(logits, -1) > 0 if logits.shape[-1] == 1
             else ops.argmax(logits, axis=-1))
    preds = ops.reshape(ops.cast(preds, "int32"), (-1,))
    true_onehot = ops.one_hot(labels, num_classes, dtype="float32") * valid
    pred_onehot = ops.one_hot(preds, num_classes, dtype="float32")
    return ops.matmul(ops.transpose(true_onehot), pred_onehot)


def _peak_rss_mb():
    with open("/proc/self/status") as handle:
        return int(next(line for line in handle if line.startswith("VmHWM:")).split()[1]) / 1024


def run_child(impl, k):
    """ms per call and the process's peak RSS. The batch is drawn inside the same
    tf.function: made outside, its temporaries (and TF's allocator keeping freed memory)
    set the peak before the call, whatever the call needs."""
    import numpy as np
    import tensorflow as tf

    from segmodels import metrics
    shape = (FLAGS.batch_size, FLAGS.image_size, FLAGS.image_size)
    count = {"segment_sum": metrics.confusion_matrix, "one_hot_matmul": _one_hot_matmul,
             # the batch alone: its peak is subtracted from the others'
             "inputs_only": lambda y, logits, _: tf.reduce_sum(logits) + tf.cast(
                 tf.reduce_sum(y), tf.float32)}[impl]

    @tf.function
    def step(seed):
        y = tf.random.stateless_uniform(shape + (1,), seed, 0, k, tf.int32)
        logits = tf.random.stateless_normal(shape + (1 if k == 2 else k,), seed + 1)
        return count(y, logits, k)
    step(tf.constant([0, 1])).numpy()
    times = []
    for i in range(FLAGS.repeats):
        start = time.perf_counter()
        step(tf.constant([i, 1])).numpy()
        times.append(time.perf_counter() - start)
    return {"ms": 1000 * float(np.median(times)), "peak_rss_mb": _peak_rss_mb()}


def main(argv):
    del argv
    if FLAGS.child:
        impl, k = FLAGS.child.split(":")
        print(json.dumps(run_child(impl, int(k))))
        return 0
    import numpy as np
    rows = [(impl, int(k)) for k in FLAGS.classes
            for impl in IMPLEMENTATIONS + ("inputs_only",)]
    samples = {row: [] for row in rows}
    for _ in range(FLAGS.rounds):
        for impl, k in rows:
            out = subprocess.run(
                [sys.executable, os.path.abspath(__file__), f"--child={impl}:{k}",
                 f"--batch_size={FLAGS.batch_size}", f"--image_size={FLAGS.image_size}",
                 f"--repeats={FLAGS.repeats}"], capture_output=True, text=True, check=True)
            samples[(impl, k)].append(json.loads(out.stdout.strip().splitlines()[-1]))
    median = lambda row, key: float(np.median([s[key] for s in samples[row]]))  # noqa: E731
    report = {"batch_size": FLAGS.batch_size, "image_size": FLAGS.image_size, "rows": [
        {"impl": impl, "classes": k,
         # the time to draw the batch is in every row: subtracted too
         "ms": median((impl, k), "ms") - median(("inputs_only", k), "ms"),
         "peak_above_inputs_mb": median((impl, k), "peak_rss_mb")
         - median(("inputs_only", k), "peak_rss_mb")}
        for impl, k in rows if impl != "inputs_only"]}
    if FLAGS.json:
        print(json.dumps(report))
        return 0
    print(f"batch {FLAGS.batch_size} x {FLAGS.image_size}x{FLAGS.image_size}, median of "
          f"{FLAGS.rounds} rounds")
    print(f"{'classes':>7} {'implementation':16} {'ms':>9} {'peak MB':>9}")
    for row in report["rows"]:
        print(f"{row['classes']:7d} {row['impl']:16} {row['ms']:9.1f} "
              f"{row['peak_above_inputs_mb']:9.0f}")
    return 0


if __name__ == "__main__":
    app.run(main)
