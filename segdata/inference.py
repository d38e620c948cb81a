"""A trained model in any exported format behind the one inference path (segdata.serving).

`load(path)` picks the format by what it finds and returns a Predictor:
- `RUN/model.keras`: Keras (safe_mode: no lambda or pickled layers);
- a SavedModel folder (RUN/export): its `model` signature, its input contract inside;
- a `.tflite` file: the standalone LiteRT interpreter (ai-edge-litert), as phones and edge
  boxes run it;
- a `.onnx` file: onnxruntime.
Files other than the SavedModel read the input contract (input_contract.json) from their
own folder; tools/export.py writes it there. Nothing here imports training code, so
predict and evaluate load no training package.
"""
import os

import tensorflow as tf

from segdata import records, serving


class Predictor:
    """A trained model behind the one inference path: logits(image) at the image's own
    pixels, mapped as the model's input contract says."""

    def __init__(self, model_fn, contract):
        self.model_fn, self.contract = model_fn, contract
        self._run = tf.function(self._logits, reduce_retracing=True)

    def _logits(self, image, tile, overlap, tta, batch_size):
        # shapes are relaxed across calls; the channels are the contract's (see logits)
        image = tf.ensure_shape(image, [None, None, self.contract.channels])
        return serving.predict_logits(self.model_fn, image, self.contract, tile, overlap, tta,
                                      batch_size)

    def logits(self, image, tile=None, overlap=0.25, tta="none", batch_size=8):
        """uint8 (h, w, c) -> (logits (h, w, K) float32, seen (h, w) bool)."""
        if tile not in (None, "model"):
            tile = tuple(int(v) for v in tile)
        return self._run(serving.with_model_channels(image, self.contract), tile, float(overlap),
                         tta, int(batch_size))


def load(path):
    """A Predictor for a .keras file, a SavedModel folder, a .tflite or a .onnx file."""
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, "saved_model.pb")):
            raise ValueError(f"--model={path}: a folder without saved_model.pb; pass "
                             "RUN_DIR/model.keras or RUN_DIR/export")
        loaded = tf.saved_model.load(path)
        if "model" not in loaded.signatures:
            raise ValueError(f"--model={path}: a SavedModel from before input contracts; "
                             "re-export it with tools/export.py")
        contract = serving.InputContract.from_json(loaded.input_contract.numpy().decode())
        # the closure keeps `loaded` alive: its signatures' variables die with it
        return Predictor(lambda images: loaded.signatures["model"](images=images)["output_0"],
                         contract)
    kinds = {".keras": lambda: _keras_fn(load_keras(path)), ".tflite": lambda: TFLiteModel(path),
             ".onnx": lambda: OnnxModel(path)}
    extension = os.path.splitext(path)[1]
    if extension not in kinds or not os.path.isfile(path):
        raise ValueError(f"--model={path}: expected an existing .keras, .tflite or .onnx file or "
                         "a SavedModel folder")
    model_fn = kinds[extension]()
    contract = serving.InputContract.load(os.path.dirname(os.path.abspath(path)))
    if extension != ".keras":
        model_fn = _numpy_model_fn(model_fn, contract)
    return Predictor(model_fn, contract)


def _keras_fn(model):
    return lambda images: model(images, training=False)


def _numpy_model_fn(runtime, contract):
    """A runtime that takes and returns numpy arrays, as a function of tensors inside the
    Predictor's tf.function."""
    def model_fn(images):
        logits = tf.numpy_function(runtime, [images], tf.float32, stateful=False)
        return tf.ensure_shape(logits, [None, *contract.image_size, contract.logit_channels])
    return model_fn


def load_keras(path):
    """A SegFlow .keras file, loaded in safe mode. Importing segmodels registers the layers
    its models use (the encoders' preprocessing, initializers), which Keras cannot
    deserialize otherwise."""
    import keras

    import segmodels  # noqa: F401
    return keras.saving.load_model(path, compile=False, safe_mode=True)


def _runtime(module, package, path):
    import importlib
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ValueError(f"--model={path}: reading it needs {package} (pinned in "
                         f"requirements.txt: pip install -r requirements.txt)") from None


class TFLiteModel:
    """A TFLite file in the standalone LiteRT interpreter, as a numpy model_fn: uint8 batch
    at the input size -> float32 logits, one image per invoke (the interpreter's input
    shape is fixed at batch 1).

    int8 graphs run on LiteRT's builtin kernels, without its default XNNPACK delegate: on
    an int8 MobileNetV2 UNet, XNNPACK failed to prepare in TensorFlow's interpreter and
    crashed the process in ai-edge-litert 2.3.0 (double free), while the builtin kernels
    ran it and agreed with Keras on every pixel. Float graphs keep XNNPACK."""

    def __init__(self, path, num_threads=None):
        litert = _runtime("ai_edge_litert.interpreter", "ai-edge-litert", path)
        # one thread is the interpreter's default; TensorFlow uses every core
        threads = num_threads or len(os.sched_getaffinity(0))
        builtin = litert.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        self.interpreter = litert.Interpreter(model_path=path, num_threads=threads,
                                              experimental_op_resolver_type=builtin)
        import numpy as np
        quantized = any(t["dtype"] == np.int8 for t in self.interpreter.get_tensor_details())
        if not quantized:
            self.interpreter = litert.Interpreter(model_path=path, num_threads=threads)
        self.interpreter.allocate_tensors()
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]

    def __call__(self, images):
        import numpy as np
        out = []
        for image in np.asarray(images, np.uint8):
            self.interpreter.set_tensor(self.input["index"], image[None])
            self.interpreter.invoke()
            out.append(self.interpreter.get_tensor(self.output["index"])[0])
        return np.stack(out).astype(np.float32)


class OnnxModel:
    """An ONNX file in onnxruntime (CPU), as a numpy model_fn: uint8 batch -> float32 logits."""

    def __init__(self, path):
        ort = _runtime("onnxruntime", "onnxruntime", path)
        self.session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name

    def __call__(self, images):
        import numpy as np
        return self.session.run(None, {self.input: np.asarray(images, np.uint8)})[0].astype(
            np.float32)


def calibration_images(data_dir, contract, count):
    """Up to `count` training examples as (1, H, W, C) uint8 model inputs, mapped as served:
    int8 calibration data."""
    for index, example in enumerate(records.iter_split(data_dir, "train")):
        if index >= count:
            return
        model_input, _, _ = serving.to_model_input(tf.constant(example["image"]), contract)
        yield model_input.numpy()[None]
