"""Size, CPU latency and agreement of each export format of a trained run, side by side.

    python tools/benchmark_inference.py --model=RUN_DIR/model.keras --data_dir=RECORDS [--json]

Exports the run into a temp folder as a SavedModel and as TFLite (float32, float16, int8
calibrated on the training split), then, for each format and the Keras model itself:
size on disk (MB), ms per image at the model's input size (batch 1, median of
--repeats calls after a warm-up, formats in turns), and on the --split at the model's
input resolution: pixel agreement with the Keras masks and mean IoU.
"""
import json
import os
import statistics
import tempfile
import time

from absl import app, flags

if not __package__:  # run as a file (python tools/x.py), not as tools.x
    import _bootstrap  # noqa: F401  (puts the project on sys.path)

FLAGS = flags.FLAGS
flags.DEFINE_string("model", None, "RUN_DIR/model.keras (input_contract.json beside it).")
flags.DEFINE_string("data_dir", None, "Records: calibration (train) and scoring (--split).")
flags.DEFINE_string("split", "test", "Split to score.")
flags.DEFINE_integer("repeats", 30, "Timed calls per format and round.")
flags.DEFINE_integer("rounds", 3, "Rounds; each times every format once, in turns.")
flags.DEFINE_integer("calibration_examples", 300, "Training examples for int8 calibration.")
flags.DEFINE_bool("json", False, "Print one JSON object instead of a table.")
flags.mark_flags_as_required(["model", "data_dir"])


def _size_mb(path):
    if os.path.isdir(path):
        return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path)
                   for f in fs) / 2**20
    return os.path.getsize(path) / 2**20


def main(argv):
    del argv
    from segtrain import startup
    startup.quiet_python_logs()
    import numpy as np
    import tensorflow as tf

    from segdata import inference, records, serving
    from segmodels import metrics
    from segtrain import export

    model = inference.load_keras(FLAGS.model)
    contract = serving.InputContract.load(os.path.dirname(os.path.abspath(FLAGS.model)))
    work = tempfile.mkdtemp(prefix="segflow-inference-")
    saved = export.export_saved_model(model, os.path.join(work, "saved_model"), contract)
    loaded = tf.saved_model.load(saved)
    calibration = list(inference.calibration_images(FLAGS.data_dir, contract,
                                                 FLAGS.calibration_examples))
    # in a tf.function, as predict and evaluate call it (an eager call adds ~60 ms here)
    keras_fn = tf.function(lambda x: model(x, training=False))
    formats = {"keras": (FLAGS.model, lambda x: keras_fn(tf.constant(x)).numpy()),
               "saved_model": (saved, lambda x: loaded.signatures["model"](
                   images=tf.constant(x))["output_0"].numpy())}
    for quantize in export.QUANTIZE:
        path = os.path.join(work, f"model.{quantize}.tflite")
        export.export_tflite(model, path, quantize, calibration if quantize == "int8" else None)
        formats[f"tflite_{quantize}"] = (path, inference.TFLiteModel(path))
    onnx_path = export.export_onnx(model, os.path.join(work, "model.onnx"))
    formats["onnx"] = (onnx_path, inference.OnnxModel(onnx_path))

    examples = []
    for example in records.iter_split(FLAGS.data_dir, FLAGS.split):
        x, truth, _ = serving.to_model_input(tf.constant(example["image"]), contract,
                                             tf.constant(example["mask"]))
        examples.append((x.numpy()[None], truth.numpy()[None]))
    one = examples[0][0]
    for _, fn in formats.values():
        fn(one)  # warm-up: traces, allocations
    times = {name: [] for name in formats}
    for _ in range(FLAGS.rounds):
        for name, (_, fn) in formats.items():
            start = time.perf_counter()
            for _ in range(FLAGS.repeats):
                fn(one)
            times[name].append(1000 * (time.perf_counter() - start) / FLAGS.repeats)
    rows = {}
    reference = [serving.classes(formats["keras"][1](x)).numpy() for x, _ in examples]
    for name, (path, fn) in formats.items():
        cm = np.zeros((contract.num_classes,) * 2, np.int64)
        agree = total = 0
        for (x, truth), expected in zip(examples, reference):
            logits = fn(x)
            agree += int((serving.classes(logits).numpy() == expected).sum())
            total += expected.size
            cm += np.asarray(metrics.confusion_matrix(truth, logits, contract.num_classes,
                                                      contract.ignore_label))
        rows[name] = {"size_mb": _size_mb(path), "ms_per_image": statistics.median(times[name]),
                      "agreement_with_keras": agree / total,
                      "mean_iou": float(metrics.scores(cm)["mean_iou"])}
    report = {"model": FLAGS.model, "image_size": list(contract.image_size),
              "split": FLAGS.split, "examples": len(examples), "rows": rows}
    if FLAGS.json:
        print(json.dumps(report))
        return 0
    print(f"{FLAGS.model}, input {contract.image_size}, {len(examples)} {FLAGS.split} images, "
          f"median of {FLAGS.rounds} rounds x {FLAGS.repeats} calls")
    print(f"{'format':14} {'MB':>7} {'ms/image':>9} {'agree':>8} {'mIoU':>7}")
    for name, row in rows.items():
        print(f"{name:14} {row['size_mb']:7.2f} {row['ms_per_image']:9.2f} "
              f"{row['agreement_with_keras']:8.4f} {row['mean_iou']:7.4f}")
    return 0


if __name__ == "__main__":
    app.run(main)
