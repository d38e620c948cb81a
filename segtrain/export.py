"""SavedModel export and loading a trained model for inference, both through segdata.serving.

The SavedModel serves raw uint8 images of any size exactly as training mapped them (its
input contract travels inside it) and has three signatures:
- serving_default(images uint8 [N, h, w, C]) -> logits [N, h, w, K] float32, probabilities,
  mask uint8 [N, h, w, 1] (ignore label where the model never saw a pixel);
- tiled(images, tile_overlap float32) -> the same, from overlapping windows of the model's
  input size (test-time flips are predict's and evaluate's --tta: as signature options
  they tripled the export's tracing);
- model(images uint8 [N, H, W, C] at the input size) -> logits: the network alone, for tools
  that map images themselves (predict, evaluate) and for tiles of another size.
"""
import os
import shutil

import tensorflow as tf

from segdata import atomic, serving


class _Serving(tf.Module):
    def __init__(self, model, contract, contract_path):
        super().__init__()
        self.model = model
        self.contract = contract
        # readable by TF Serving clients and by load_predictor; the asset is for people
        self.input_contract = tf.Variable(contract.to_json(), trainable=False)
        self.contract_file = tf.saved_model.Asset(contract_path)

    def network(self, images):
        return tf.cast(self.model(images, training=False), tf.float32)

    def _outputs(self, images, one_image):
        logits, seen = tf.map_fn(one_image, images, fn_output_signature=(
            tf.TensorSpec([None, None, self.contract.logit_channels], tf.float32),
            tf.TensorSpec([None, None], tf.bool)))
        mask = serving.mask_of(logits, seen, self.contract.ignore_label)[..., None]
        return {"logits": logits, "probabilities": serving.probabilities(logits), "mask": mask}

    def serve(self, images):
        return self._outputs(images, lambda image: serving.predict_logits(
            self.network, image, self.contract))

    def serve_tiled(self, images, tile_overlap):
        return self._outputs(images, lambda image: serving.predict_logits(
            self.network, image, self.contract, tile="model", overlap=tile_overlap))


def export_saved_model(model, path, contract):
    """Writes to a temp folder, then renames: a crash never leaves a half export."""
    temp = path.rstrip("/") + ".partial"
    shutil.rmtree(temp, ignore_errors=True)
    os.makedirs(temp)
    # TF copies the asset into the SavedModel's assets/ when it saves
    module = _Serving(model, contract, contract.save(temp))
    channels = contract.channels
    images = tf.TensorSpec([None, None, None, channels], tf.uint8, name="images")
    signatures = {
        "serving_default": tf.function(module.serve, input_signature=[images]),
        "tiled": tf.function(module.serve_tiled, input_signature=[
            images, tf.TensorSpec([], tf.float32, name="tile_overlap")]),
        "model": tf.function(module.network, input_signature=[tf.TensorSpec(
            [None, *contract.image_size, channels], tf.uint8, name="images")]),
    }
    saved = os.path.join(temp, "saved")
    tf.saved_model.save(module, saved, signatures=signatures)
    if os.path.exists(path):
        shutil.rmtree(path)
    os.replace(saved, path)
    shutil.rmtree(temp, ignore_errors=True)
    return path


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


def load_predictor(path):
    """A `.keras` file (loaded with safe_mode: no lambda or pickled layers) with the
    input_contract.json beside it, or a SavedModel folder (its contract is inside)."""
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
    if not path.endswith(".keras") or not os.path.isfile(path):
        raise ValueError(f"--model={path}: expected an existing .keras file or SavedModel folder")
    model = load_keras(path)
    contract = serving.InputContract.load(os.path.dirname(os.path.abspath(path)))
    return Predictor(lambda images: model(images, training=False), contract)


def load_keras(path):
    """A SegFlow .keras file, loaded in safe mode. Importing segmodels registers the layers
    its models use (the encoders' preprocessing, initializers): without it, every encoder
    model failed to load in the tools with "Could not locate class 'EncoderPreprocess'"."""
    import keras

    import segmodels  # noqa: F401
    return keras.saving.load_model(path, compile=False, safe_mode=True)


QUANTIZE = ("none", "float16", "int8")


def float32_copy(model):
    """The same network computing in float32: a mixed-precision model's layers carry their
    policy in the config, and TFLite has no bfloat16 kernels."""
    import keras
    config = model.get_config()
    for layer in config["layers"]:
        dtype = layer["config"].get("dtype")
        if isinstance(dtype, dict) and "mixed" in str(dtype.get("config", {}).get("name", "")):
            layer["config"]["dtype"] = "float32"
    copy = keras.Model.from_config(config)
    copy.set_weights(model.get_weights())
    return copy


def export_tflite(model, path, quantize="none", calibration=None):
    """A TFLite flatbuffer taking uint8 images at the model's input size (its first layers
    rescale them, as in Keras) and returning float32 logits; written to a temp name, then
    renamed. int8: weights and activations quantized where TFLite can, calibrated on
    `calibration`, an iterable of uint8 (1, H, W, C) batches; float16: weights only."""
    import tempfile
    if quantize not in QUANTIZE:
        raise ValueError(f"--quantize={quantize!r}: expected one of {QUANTIZE}")
    if quantize == "int8" and calibration is None:
        raise ValueError("--quantize=int8 needs calibration images: pass --data_dir")
    with tempfile.TemporaryDirectory() as saved:
        float32_copy(model).export(saved, format="tf_saved_model", verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(saved)
        if quantize != "none":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if quantize == "float16":
            converter.target_spec.supported_types = [tf.float16]
        if quantize == "int8":
            converter.representative_dataset = lambda: ([batch] for batch in calibration)
        flatbuffer = converter.convert()
    with atomic.replacing(path, "wb") as handle:
        handle.write(flatbuffer)
    return path


def calibration_images(data_dir, contract, count):
    """Up to `count` training examples as (1, H, W, C) uint8 model inputs, mapped as served:
    int8 calibration data."""
    from segdata import records
    for index, example in enumerate(records.iter_split(data_dir, "train")):
        if index >= count:
            return
        model_input, _, _ = serving.to_model_input(tf.constant(example["image"]), contract)
        yield model_input.numpy()[None]


class TFLiteModel:
    """A TFLite file as a model_fn: uint8 batch at the input size -> float32 logits, one
    image per invoke (the interpreter's input shape is fixed at batch 1)."""

    def __init__(self, path, num_threads=None):
        # one thread is the interpreter's default; TensorFlow uses every core
        self.interpreter = tf.lite.Interpreter(
            model_path=path, num_threads=num_threads or len(os.sched_getaffinity(0)))
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
        return np.stack(out)
