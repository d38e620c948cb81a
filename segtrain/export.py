"""SavedModel export: a serving signature that takes uint8 images of any size and returns masks."""
import os
import shutil

import tensorflow as tf


class _Serving(tf.Module):
    def __init__(self, model, image_size, channels):
        super().__init__()
        self.model = model
        self.image_size = tuple(image_size)
        self.channels = channels

    def serve(self, images):
        """uint8 (batch, H, W, C) -> mask uint8 (batch, H, W, 1), probabilities float32."""
        original = tf.shape(images)[1:3]
        x = tf.image.resize(tf.cast(images, tf.float32), self.image_size)
        x = tf.cast(tf.clip_by_value(tf.round(x), 0, 255), tf.uint8)
        logits = tf.cast(self.model(x, training=False), tf.float32)
        # resize logits, not labels: smooth boundaries at the original resolution
        logits = tf.image.resize(logits, original)
        if logits.shape[-1] == 1:
            probabilities = tf.sigmoid(logits)
            mask = tf.cast(logits > 0, tf.uint8)
        else:
            probabilities = tf.nn.softmax(logits)
            mask = tf.cast(tf.argmax(logits, -1), tf.uint8)[..., None]
        return {"mask": mask, "probabilities": probabilities}


def export_saved_model(model, path, image_size, channels):
    """Writes to a temp folder, then renames: a crash never leaves a half export."""
    module = _Serving(model, image_size, channels)
    signature = tf.function(module.serve, input_signature=[
        tf.TensorSpec([None, None, None, channels], tf.uint8, name="images")])
    temp = path.rstrip("/") + ".partial"
    shutil.rmtree(temp, ignore_errors=True)
    tf.saved_model.save(module, temp, signatures={"serving_default": signature})
    if os.path.exists(path):
        shutil.rmtree(path)
    os.replace(temp, path)
    return path


class SavedModelPredictor:
    """The exported SavedModel behind the same call as a Keras model: uint8 batch -> logits."""

    def __init__(self, path):
        self.signature = tf.saved_model.load(path).signatures["serving_default"]
        spec = self.signature.structured_input_signature[1]["images"]
        self.channels = spec.shape[-1]
        self.input_size = None  # any size: the signature resizes itself

    def __call__(self, images):
        probabilities = self.signature(images=tf.cast(images, tf.uint8))["probabilities"]
        p = tf.clip_by_value(probabilities, 1e-7, 1 - 1e-7)
        if p.shape[-1] == 1:
            return tf.math.log(p) - tf.math.log1p(-p)
        return tf.math.log(p)


def load_predictor(path):
    """A `.keras` file (loaded with safe_mode: no lambda or pickled layers) or a SavedModel folder.

    Returns (callable uint8 batch -> logits, input (H, W) or None for any size, channels).
    """
    import keras
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, "saved_model.pb")):
            raise ValueError(f"--model={path}: a folder without saved_model.pb; pass "
                             "RUN_DIR/model.keras or RUN_DIR/export")
        predictor = SavedModelPredictor(path)
        return predictor, None, predictor.channels
    if not path.endswith(".keras") or not os.path.isfile(path):
        raise ValueError(f"--model={path}: expected an existing .keras file or SavedModel folder")
    model = keras.saving.load_model(path, compile=False, safe_mode=True)
    shape = model.input_shape
    return (lambda images: model(images, training=False)), tuple(shape[1:3]), shape[-1]
