"""The input pipeline run backwards: model input from a raw image, and the model's
logits mapped back onto the image's own pixels (for predict and for scoring at the
original resolution). Uses the same resize matrices as training, so nothing drifts."""
import tensorflow as tf

from segdata import augment


def to_model_input(image, size, policy="stretch", mask=None, mask_fill=255):
    """uint8 (h, w, c) [and mask] -> (model input (H, W, c), mask or None, output->input matrix).

    The pixels come from the evaluation path of the training pipeline itself.
    """
    matrix = augment.resize_matrix(tf.shape(image)[:2], size, policy, training=False)
    dummy = mask if mask is not None else tf.zeros_like(image[..., :1])
    image, resized_mask = augment.augment_example(image, dummy, tf.constant([0, 0], tf.int64),
                                                  size, None, policy, training=False,
                                                  mask_fill=mask_fill)
    return image, (resized_mask if mask is not None else None), matrix


def to_original(logits, matrix, original_size):
    """(H, W, K) logits -> (h, w, K) logits plus a validity map (False where the
    model never saw the pixel, e.g. outside a centre crop)."""
    inverse = tf.linalg.inv(matrix)
    logits = tf.cast(logits, tf.float32)
    back = augment.warp(logits[None], inverse[None], original_size, "BILINEAR")[0]
    seen = augment.warp(tf.ones_like(logits[None, ..., :1]), inverse[None], original_size,
                        "NEAREST", fill_value=0)[0]
    return back, seen[..., 0] > 0

