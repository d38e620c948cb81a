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
