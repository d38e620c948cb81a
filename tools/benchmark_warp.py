"""Milliseconds of the warp variants behind the pipeline's design choices (BENCHMARKS.md §2).

    python tools/benchmark_warp.py [--size=512]

Rows: ImageProjectiveTransformV3 on uint8 vs float32, 1 vs 3 channels, bilinear vs
nearest; the image+mask pair as the op (--noaug_xla) vs augment's gather warp run op by op
and compiled by XLA; gray -> RGB expansion after the warp in the same XLA cluster (concat,
uint32 bytes) vs its own cluster; the contrast centre (the frame's mean) as one int64 sum
or int32 row sums inside the XLA warp stage vs summed op by op and passed in; whole augment_example calls with and
without XLA; and the flips + brightness/contrast (+ gray -> RGB) stage of an unwarped image
op by op vs XLA with a tf.cond per flip vs XLA with a branch per flip combination.
"""
import statistics
import time

import numpy as np
from absl import app, flags

import _bootstrap  # noqa: F401  (puts the project on sys.path)

FLAGS = flags.FLAGS
flags.DEFINE_integer("size", 512, "Square image side.")
flags.DEFINE_integer("repeats", 50, "Calls per timing.")
flags.DEFINE_integer("rounds", 7, "Timings per row, rows taking turns; the median is printed.")

FULL = dict(hflip=True, rotation=20, zoom=0.1, shear=5, shift=0.05, brightness=0.1, contrast=0.1)


def _timer(fn, *args):
    """A callable returning milliseconds per fn(*args), fn called --repeats times in a while
    loop inside one tf.function: no Python dispatch per call (~0.2 ms here, more than some
    steps cost). The first argument is nudged each iteration so no call can be hoisted out
    of the loop, and every output feeds the loop's result so none is pruned."""
    import tensorflow as tf
    first, rest = args[0], args[1:]

    @tf.function
    def loop():
        def body(k, total):
            outputs = tf.nest.flatten(fn(first + tf.cast(k % 2, first.dtype), *rest))
            return k + 1, total + tf.add_n([tf.cast(tf.reshape(o, [-1])[0], tf.float32)
                                           for o in outputs])
        return tf.while_loop(lambda k, _: k < FLAGS.repeats, body, (0, 0.0),
                             parallel_iterations=1)[1]

    loop().numpy()  # trace and compile

    def timed():
        start = time.perf_counter()
        loop().numpy()
        return (time.perf_counter() - start) / FLAGS.repeats * 1e3
    return timed


_ROWS = []  # (name, timer): every row is compiled first, then timed round after round


def _row(name, fn, *args):
    _ROWS.append((name, _timer(fn, *args)))


def _note(text):
    _ROWS.append((text, None))


def _print_rows():
    """Rows take turns, --rounds times, and each prints its median: a slow spell of this
    shared machine then costs every row one sample instead of deciding a comparison."""
    samples = {name: [] for name, timer in _ROWS if timer}
    for _ in range(FLAGS.rounds):
        for name, timer in _ROWS:
            if timer:
                samples[name].append(timer())
    for name, timer in _ROWS:
        print(f"{name:56} {statistics.median(samples[name]):6.2f} ms" if timer else name)


def main(argv):
    del argv
    import tensorflow as tf

    from segdata import augment
    tf.get_logger().setLevel("ERROR")  # every row traces a new loop, on purpose
    size = (FLAGS.size, FLAGS.size)
    rng = np.random.default_rng(0)
    seed = tf.constant([1, 2], tf.int64)
    matrix = augment.augmentation_matrix(seed, augment.AugmentConfig(rotation=20, zoom=0.1), size)
    raw = tf.raw_ops.ImageProjectiveTransformV3
    transforms = (tf.reshape(matrix, [-1])[:8] / matrix[2, 2])[None]
    for dtype in ("uint8", "float32"):
        for channels in (1, 3):
            images = tf.constant(rng.integers(0, 255, (1,) + size + (channels,)).astype(dtype))
            for interpolation in ("BILINEAR", "NEAREST"):
                op = tf.function(lambda x, i=interpolation: raw(
                    images=x, transforms=transforms, output_shape=size, fill_value=0.0,
                    interpolation=i, fill_mode="CONSTANT"))
                _row(f"V3 {dtype:7} {channels}ch {interpolation}", op, images)
    mask = tf.constant(rng.integers(0, 2, size + (1,)).astype("uint8"))
    true_size = tf.constant(size)
    for channels in (1, 3):
        image = tf.constant(rng.integers(0, 255, size + (channels,)).astype("uint8"))
        op_pair = tf.function(lambda i, m: (
            augment.warp(i[None], matrix[None], size, "BILINEAR")[0],
            augment.warp(m[None], matrix[None], size, "NEAREST", 255)[0]))
        stage = lambda fn: (lambda i, m: fn(i, m, true_size, matrix, {}, size,  # noqa: E731
                                            "constant", 255))
        _row(f"{channels}ch pair, ImageProjectiveTransformV3 x2", op_pair, image, mask)
        _row(f"{channels}ch pair, gather warp op by op",
             tf.function(stage(augment._warp_stage)), image, mask)
        _row(f"{channels}ch pair, gather warp, XLA in one piece (before)",
             tf.function(stage(augment._warp_stage), jit_compile=True),
             image, mask)
        _row(f"{channels}ch pair, gather warp, XLA in 4 bands (the pipeline)",
             stage(augment._warp_stage_xla), image, mask)
        agree = (op_pair(image, mask)[1].numpy()
                 == augment._warp_stage_xla(image, mask, true_size, matrix, {}, size,
                                            "constant", 255)[1].numpy()).mean()
        _note(f"   mask agreement, op vs XLA gather warp: {agree:.5f}")
    gray = tf.constant(rng.integers(0, 255, size + (1,)).astype("uint8"))
    fused_expand = tf.function(lambda i, m: tf.concat([augment._warp_stage(
        i, m, true_size, matrix, {}, size, "constant", 255)[0]] * 3, -1), jit_compile=True)
    _row("gray pair + RGB expansion by concat, same cluster (rejected)", fused_expand, gray, mask)
    fused_bytes = tf.function(lambda i, m: augment._expand(augment._warp_stage(
        i, m, true_size, matrix, {}, size, "constant", 255)[0], 3), jit_compile=True)
    _row("gray pair + RGB expansion by uint32 bytes, same cluster (rejected)", fused_bytes,
         gray, mask)
    _row("gray pair, then expansion by uint32 bytes as its own cluster (the pipeline)",
         lambda i, m: augment._expand_xla(stage(augment._warp_stage_xla)(i, m)[0], 3), gray, mask)
    photometric = augment.AugmentConfig(brightness=0.1, contrast=0.1)
    int64_mean = lambda i: tf.reduce_sum(tf.cast(i, tf.int64)) / tf.size(i, tf.int64)  # noqa
    for channels in (1, 3):
        image = tf.constant(rng.integers(0, 255, size + (channels,)).astype("uint8"))
        draws = augment._photometric_draws(seed, photometric, size + (channels,))
        centred = lambda fn, mean: (lambda i, m: fn(  # noqa: E731
            i, m, true_size, matrix, dict(draws, centre=tf.cast(mean(i), tf.float32)), size,
            "constant", 255))
        label = f"{channels}ch pair + contrast, mean"
        _row(f"{label} as one int64 sum in the XLA stage (before)",
             tf.function(centred(augment._warp_stage, int64_mean), jit_compile=True),
             image, mask)
        _row(f"{label} as int32 row sums in the XLA stage",
             tf.function(centred(augment._warp_stage, augment._mean), jit_compile=True),
             image, mask)
        _row(f"{label} as int32 row sums op by op, passed in (the pipeline)",
             tf.function(centred(augment._warp_stage_xla, augment._mean)), image, mask)
    for channels in (1, 3):
        image = tf.constant(rng.integers(0, 255, size + (channels,)).astype("uint8"))
        for xla in (False, True):
            config = augment.AugmentConfig(**FULL, xla=xla)
            call = tf.function(lambda i, m, c=config: augment.augment_example(
                i, m, seed, size, c, channels=3))
            _row(f"augment_example {channels}ch -> RGB, full augmentation, xla={xla}", call,
                 image, mask)
    pixel_steps(size, rng)
    _print_rows()
    return 0


def pixel_steps(size, rng):
    import tensorflow as tf

    from segdata import augment
    gray = tf.constant(rng.integers(0, 255, size + (1,)).astype("uint8"))
    mask = tf.constant(rng.integers(0, 2, size + (1,)).astype("uint8"))
    rows = {
        "gray -> RGB, tf.image.grayscale_to_rgb": (tf.image.grayscale_to_rgb, gray),
        "gray -> RGB, tf.broadcast_to": (lambda x: tf.broadcast_to(x, size + (3,)), gray),
        "gray -> RGB, concat in XLA": (
            tf.function(lambda x: tf.concat([x, x, x], -1), jit_compile=True), gray),
        "gray -> RGB, uint32 x 0x01010101 bytes in XLA (the pipeline)": (
            lambda x: augment._expand_xla(x, 3), gray),
        "reverse (h, w, 1) along w": (tf.function(lambda x: tf.reverse(x, [1])), mask),
        "reverse (h, w) along w": (tf.function(lambda x: tf.reverse(x[..., 0], [1])), mask),
    }
    for name, (fn, arg) in rows.items():
        _row(name, tf.function(fn), arg)
    config = augment.AugmentConfig(brightness=0.1, contrast=0.1)

    def cond_per_flip(image, mask, flips, draws, channels):
        for flip, axis in zip(flips, (1, 0)):
            image, mask = tf.cond(flip, lambda: (augment._reverse(image, axis),
                                                 augment._reverse(mask, axis)),
                                  lambda: (image, mask))
        return augment._expand(augment._photometric_pixels(image, draws), channels), mask

    stages = {"op by op": tf.function(augment._pixel_stage),
              "XLA, a tf.cond per flip (rejected)": tf.function(cond_per_flip, jit_compile=True),
              "XLA, a branch per flip combination, one piece (before)": tf.function(
                  augment._pixel_stage, jit_compile=True),
              "XLA, a branch per flip combination, in bands (the pipeline)":
                  augment._pixel_stage_xla}
    for channels in (1, 3):
        image = tf.constant(rng.integers(0, 255, size + (channels,)).astype("uint8"))
        draws = augment._photometric_draws(tf.constant([1, 2], tf.int64), config, image.shape)
        for flips in ((False, False), (True, True)):
            flags_ = tuple(tf.constant(f) for f in flips)
            label = f"{channels}ch -> RGB, flips {flips[0]:d}{flips[1]:d} + brightness/contrast"
            for name, stage in stages.items():
                _row(f"{label}, {name}", tf.function(
                    lambda i, m, f, s=stage: s(i, m, f, augment._with_centre(draws, i), 3)),
                    image, mask, flags_)


if __name__ == "__main__":
    app.run(main)
