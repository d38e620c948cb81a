"""Exports of a trained model: SavedModel (through segdata.serving), TFLite and ONNX (the
network at its training size). Loading any of them for inference: segdata.inference.

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
    # 16-bit data: raw 16-bit frames in, mapped by the contract's intensity rule
    images = tf.TensorSpec([None, None, None, channels],
                           tf.uint16 if contract.intensity else tf.uint8, name="images")
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


def export_onnx(model, path):
    """The network at its input size as ONNX (uint8 images in, float32 logits out) through
    Keras's own export (tf2onnx), written to a temp name, then renamed."""
    import warnings

    import keras
    import numpy as np

    from segmodels import layers
    copy = float32_copy(model)
    copy(np.zeros((1,) + tuple(copy.input_shape[1:]), "uint8"))  # Keras exports called models
    # Normalization (EfficientNet's input) holds its statistics as tensors made outside the
    # traced graph, which tf2onnx turns into inputs nobody feeds; as numpy arrays they
    # become constants of the graph
    for layer in layers.all_layers(copy):
        if isinstance(layer, keras.layers.Normalization):
            layer.mean, layer.variance = (keras.ops.convert_to_numpy(value)
                                          for value in (layer.mean, layer.variance))
    temp = path + ".partial"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # tf2onnx reads np.object
            copy.export(temp, format="onnx", verbose=False)
    except ImportError as err:
        raise ValueError(f"--format=onnx needs tf2onnx and onnx ({err}); they are pinned in "
                         "requirements.txt: pip install -r requirements.txt") from None
    os.replace(temp, path)
    return path

