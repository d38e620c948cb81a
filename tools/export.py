"""Export a trained model for serving: a SavedModel, or TFLite (optionally quantized).

    python tools/export.py --model=RUN_DIR/model.keras --format=saved_model   # -> RUN_DIR/export
    python tools/export.py --model=RUN_DIR/model.keras --format=tflite --quantize=int8 \
        [--data_dir=RECORDS] [--calibration_examples=300]      # -> RUN_DIR/model.int8.tflite

The SavedModel maps raw images of any size as training did (its input contract is inside).
A TFLite model takes uint8 images at the training size and returns float32 logits; map
images to it with segdata.serving (the contract is RUN_DIR/input_contract.json). int8 is
calibrated on training examples mapped the same way; --data_dir defaults to the run's own
(RUN_DIR/flags.txt).
"""
import os
import sys

from absl import app, flags

if not __package__:  # run as a file (python tools/x.py), not as tools.x
    import _bootstrap  # noqa: F401  (puts the project on sys.path)

FLAGS = flags.FLAGS
flags.DEFINE_string("model", None, "RUN_DIR/model.keras (input_contract.json beside it).")
flags.DEFINE_enum("format", "saved_model", ["saved_model", "tflite", "onnx"], "What to write: "
                  "onnx and tflite hold the network at its training size (uint8 in, float32 "
                  "logits out), the input contract beside them.")
flags.DEFINE_enum("quantize", "none", ["none", "float16", "int8"], "TFLite only: float16 "
                  "weights, or int8 weights and activations calibrated on --data_dir.")
flags.DEFINE_string("data_dir", "", "Records for int8 calibration; default the run's --data_dir.")
flags.DEFINE_integer("calibration_examples", 300, "Training examples for int8 calibration.",
                     lower_bound=1)
flags.DEFINE_string("output", "", "Default: RUN_DIR/export, RUN_DIR/model[.QUANTIZE].tflite or "
                    "RUN_DIR/model.onnx.")
flags.mark_flag_as_required("model")


def run_data_dir(run_dir):
    """The --data_dir a run was trained on, from its flags.txt ('' when unknown)."""
    from segtrain import cli
    path = os.path.join(run_dir, "flags.txt")
    if not os.path.isfile(path):
        return ""
    with open(path) as handle:
        line = cli.flag_lines(handle.read()).get("data_dir", "")
    return line.partition("=")[2]


def main(argv):
    del argv
    from segtrain import startup
    startup.quiet_python_logs()

    from segdata import inference, serving
    from segtrain import export
    path = FLAGS.model
    run_dir = os.path.dirname(os.path.abspath(path))
    try:
        if not path.endswith(".keras") or not os.path.isfile(path):
            raise ValueError(f"--model={path}: expected an existing .keras file")
        if FLAGS.format != "tflite" and FLAGS.quantize != "none":
            raise ValueError(f"--quantize is for --format=tflite (got --quantize={FLAGS.quantize} "
                             f"with --format={FLAGS.format})")
        model = inference.load_keras(path)
        contract = serving.InputContract.load(run_dir)
        if FLAGS.format == "saved_model":
            output = FLAGS.output or os.path.join(run_dir, "export")
            export.export_saved_model(model, output, contract)
        elif FLAGS.format == "tflite":
            suffix = "" if FLAGS.quantize == "none" else f".{FLAGS.quantize}"
            output = FLAGS.output or os.path.join(run_dir, f"model{suffix}.tflite")
            calibration = None
            if FLAGS.quantize == "int8":
                data_dir = FLAGS.data_dir or run_data_dir(run_dir)
                if not data_dir:
                    raise ValueError("--quantize=int8: pass --data_dir (calibration images)")
                calibration = list(inference.calibration_images(data_dir, contract,
                                                                FLAGS.calibration_examples))
            export.export_tflite(model, output, FLAGS.quantize, calibration)
        else:
            output = FLAGS.output or os.path.join(run_dir, "model.onnx")
            export.export_onnx(model, output)
        if FLAGS.format != "saved_model" and os.path.dirname(os.path.abspath(output)) != run_dir:
            contract.save(os.path.dirname(os.path.abspath(output)))  # read beside the file
    except ValueError as err:
        sys.stderr.write(f"export: error: {err}\n")
        return 1
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(output) for f in fs) \
        if os.path.isdir(output) else os.path.getsize(output)
    print(f"wrote {output} ({size / 2**20:.2f} MB)")
    return 0


if __name__ == "__main__":
    app.run(main)
