"""Frames with more than 8 bits: one dataset-level rule maps them to the uint8 model input.

Records keep 16-bit frames at full depth (16-bit PNG). prepare decides the rule once from
a sample of every frame's values (`decide`), writes it into the manifest, and train.py into
the input contract; the pipeline, serving (the SavedModel takes the raw uint16 frames),
predict, evaluate and show_dataset all apply it with `apply`. 8-bit data has no rule and
keeps its path bit for bit.

The rule (nnU-Net's for non-CT images, less the z-score): clip to the dataset's 0.5 and
99.5 percentiles and stretch that range over 0..255. A fixed `>> 8` kept 17 grey levels of
12-bit microscopy (values 100..4100); outliers (hot pixels, saturated spots) would set a
min-max range and squeeze the rest.
"""
import numpy as np

PERCENTILES = (0.5, 99.5)
_SAMPLE_STRIDE = 2  # every 2nd pixel of every 2nd row: a quarter of each frame


def sample(array):
    """(values, counts) of a deep frame's pixels, subsampled: summed over frames by prepare."""
    values, counts = np.unique(np.asarray(array)[::_SAMPLE_STRIDE, ::_SAMPLE_STRIDE],
                               return_counts=True)
    return values.astype(np.int64), counts.astype(np.int64)


def decide(samples, bits=16):
    """The manifest's rule from `sample`s of every frame: a dict with the range and why."""
    values = np.concatenate([v for v, _ in samples])
    counts = np.concatenate([c for _, c in samples])
    order = np.argsort(values, kind="stable")
    values, cumulative = values[order], np.cumsum(counts[order])
    low, high = (int(values[np.searchsorted(cumulative, cumulative[-1] * p / 100)])
                 for p in PERCENTILES)
    high = max(high, low + 1)
    return {"bits": bits, "rule": "percentile_clip", "low": low, "high": high,
            "why": f"{bits}-bit frames: values {int(values[0])}..{int(values[-1])}; the "
                   f"{PERCENTILES[0]}-{PERCENTILES[1]} percentiles over all frames, {low}..{high}, "
                   f"stretched over 0..255 (clipped outside)"}


def apply(image, rule):
    """uint16 (..., C) tensor -> uint8 by the rule; anything else (a uint8 frame, no rule)
    is returned as it is. TensorFlow ops, so the SavedModel holds it."""
    import tensorflow as tf
    image = tf.convert_to_tensor(image)
    if not rule or image.dtype != tf.uint16:
        return image
    scaled = (tf.cast(image, tf.float32) - rule["low"]) * (255.0 / (rule["high"] - rule["low"]))
    return tf.cast(tf.clip_by_value(tf.round(scaled), 0, 255), tf.uint8)
