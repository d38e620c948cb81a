"""Milliseconds of the warp variants behind the pipeline's design choices (BENCHMARKS.md §2).

    python tools/benchmark_warp.py [--size=512]

Rows: ImageProjectiveTransformV3 on uint8 vs float32, 1 vs 3 channels, bilinear vs
nearest; the image+mask pair in one tf.function; and the rejected alternative, a
shared-coordinate gather warp (grid computed once, 4 gathers bilinear + 1 gather nearest).
Then the per-pixel steps around the warp: gray -> RGB expansion, flips, and the
flips + brightness/contrast stage op by op vs compiled by XLA.
"""
import time

import numpy as np
from absl import app, flags

import _bootstrap  # noqa: F401  (puts the project on sys.path)

FLAGS = flags.FLAGS
flags.DEFINE_integer("size", 512, "Square image side.")
flags.DEFINE_integer("repeats", 30, "Timed calls per row.")


def _ms(fn, *args):
    fn(*args)
    start = time.perf_counter()
    for _ in range(FLAGS.repeats):
        fn(*args)
    return (time.perf_counter() - start) / FLAGS.repeats * 1e3


def gather_pair(image, mask, matrix, size):
    """The alternative: one sampling grid for both, gathers instead of the op."""
    import tensorflow as tf
    ys, xs = tf.meshgrid(tf.range(size, dtype=tf.float32), tf.range(size, dtype=tf.float32),
                         indexing="ij")
    sx = matrix[0, 0] * xs + matrix[0, 1] * ys + matrix[0, 2]
    sy = matrix[1, 0] * xs + matrix[1, 1] * ys + matrix[1, 2]
    last = float(size - 1)
    flat_image = tf.reshape(tf.cast(image, tf.float32), [-1])

    def at(flat, yy, xx, fill):
        inside = (xx >= 0) & (xx <= last) & (yy >= 0) & (yy <= last)
        index = (tf.cast(tf.clip_by_value(yy, 0, last), tf.int32) * size
                 + tf.cast(tf.clip_by_value(xx, 0, last), tf.int32))
        return tf.where(inside, tf.gather(flat, index), fill)

    mask_out = at(tf.reshape(mask, [-1]), tf.round(sy), tf.round(sx), tf.constant(255, tf.uint8))
    x0, y0 = tf.floor(sx), tf.floor(sy)
    fx, fy = sx - x0, sy - y0
    out = (at(flat_image, y0, x0, 0.0) * (1 - fx) * (1 - fy)
           + at(flat_image, y0, x0 + 1, 0.0) * fx * (1 - fy)
           + at(flat_image, y0 + 1, x0, 0.0) * (1 - fx) * fy
           + at(flat_image, y0 + 1, x0 + 1, 0.0) * fx * fy)
    return tf.cast(tf.round(out), tf.uint8)[..., None], mask_out[..., None]


def main(argv):
    del argv
    import tensorflow as tf

    from segdata import augment
    size = (FLAGS.size, FLAGS.size)
    rng = np.random.default_rng(0)
    matrix = augment.augmentation_matrix(tf.constant([1, 2], tf.int64),
                                         augment.AugmentConfig(rotation=20, zoom=0.1), size)
    raw = tf.raw_ops.ImageProjectiveTransformV3
    transforms = (tf.reshape(matrix, [-1])[:8] / matrix[2, 2])[None]
    for dtype in ("uint8", "float32"):
        for channels in (1, 3):
            images = tf.constant(rng.integers(0, 255, (1,) + size + (channels,)).astype(dtype))
            for interpolation in ("BILINEAR", "NEAREST"):
                op = tf.function(lambda x, i=interpolation: raw(
                    images=x, transforms=transforms, output_shape=size, fill_value=0.0,
                    interpolation=i, fill_mode="CONSTANT"))
                print(f"V3 {dtype:7} {channels}ch {interpolation:8} {_ms(op, images):6.2f} ms")
    image = tf.constant(rng.integers(0, 255, size + (1,)).astype("uint8"))
    mask = tf.constant(rng.integers(0, 2, size + (1,)).astype("uint8"))
    pair = tf.function(lambda i, m: (
        augment.warp(i[None], matrix[None], size, "BILINEAR")[0],
        augment.warp(m[None], matrix[None], size, "NEAREST", 255)[0]))
    gathered = tf.function(lambda i, m: gather_pair(i, m, matrix, FLAGS.size))
    print(f"pair (image bilinear + mask nearest, as the pipeline) {_ms(pair, image, mask):6.2f} ms")
    print(f"pair by shared-grid gathers (rejected)             {_ms(gathered, image, mask):6.2f} ms")
    agree = (pair(image, mask)[1].numpy() == gathered(image, mask)[1].numpy()).mean()
    print(f"mask agreement between the two: {agree:.5f}")
    pixel_steps(size, rng)
    return 0


def pixel_steps(size, rng):
    import tensorflow as tf

    from segdata import augment
    gray = tf.constant(rng.integers(0, 255, size + (1,)).astype("uint8"))
    rgb = tf.constant(rng.integers(0, 255, size + (3,)).astype("uint8"))
    mask = tf.constant(rng.integers(0, 2, size + (1,)).astype("uint8"))
    warped = tf.cast(gray, tf.float32) + 0.25  # what a warp hands on
    rows = {
        "gray -> RGB, tf.image.grayscale_to_rgb (uint8)": (tf.image.grayscale_to_rgb, gray),
        "gray -> RGB, tf.broadcast_to (uint8)": (
            lambda x: tf.broadcast_to(x, size + (3,)), gray),
        "float -> uint8, 1 channel": (augment.to_uint8, warped),
        "float -> uint8 RGB, to_uint8 matmul expansion": (lambda x: augment.to_uint8(x, 3), warped),
        "reverse (h, w, 1) along w": (lambda x: tf.reverse(x, [1]), mask),
        "reverse (h, w) along w": (lambda x: tf.reverse(x[..., 0], [1]), mask),
    }
    for name, (fn, arg) in rows.items():
        print(f"{name:48} {_ms(tf.function(fn), arg):6.2f} ms")
    config = augment.AugmentConfig(brightness=0.1, contrast=0.1)
    draws = augment._photometric_draws(tf.constant([1, 2], tf.int64), config, rgb)
    plain = tf.function(augment._pixel_stage)
    for flips in ((False, False), (True, False), (True, True)):
        flags_ = tuple(tf.constant(f) for f in flips)
        label = f"RGB flips {flips[0]:d}{flips[1]:d} + brightness/contrast"
        print(f"{label + ', op by op':48} {_ms(plain, rgb, mask, flags_, draws, None):6.2f} ms")
        print(f"{label + ', XLA':48} "
              f"{_ms(augment._pixel_stage_xla, rgb, mask, flags_, draws, None):6.2f} ms")


if __name__ == "__main__":
    app.run(main)
