"""Milliseconds of one example's augmentation kernels (BENCHMARKS.md §2), one core.

    taskset -c 0 python tools/benchmark_warp.py [--size=512]

Rows, gray and RGB at --size: the image+mask pair through ImageProjectiveTransformV3 (the op
the kernels' arithmetic follows) vs segdata.kernels.reference (op by op) vs kernels.xla;
the same with every photometric draw; elastic deformation + affine in the same kernels;
flips + photometric of an unresampled frame; whole augment_example calls with and without
XLA. Every row runs inside one tf.function loop, rows take turns for --rounds rounds.
"""
import statistics
import time

import numpy as np
from absl import app, flags

if not __package__:  # run as a file (python tools/x.py), not as tools.x
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

    from segdata import augment, kernels
    tf.get_logger().setLevel("ERROR")  # every row traces a new loop, on purpose
    size = (FLAGS.size, FLAGS.size)
    rng = np.random.default_rng(0)
    seed = tf.constant([1, 2], tf.int64)
    geometric = augment.AugmentConfig(rotation=20, zoom=0.1)
    photometric = augment.AugmentConfig(rotation=20, zoom=0.1, brightness=0.1, contrast=0.1,
                                        noise=3)
    elastic = augment.AugmentConfig(rotation=20, zoom=0.1, elastic_alpha=10)
    mask = tf.constant(rng.integers(0, 2, (1,) + size + (1,)).astype("uint8"))
    sizes = tf.constant([size], tf.int32)
    batched = lambda d: augment.Draw(*[None if v is None else v[None] for v in d])  # noqa
    for channels in (1, 3):
        image = tf.constant(rng.integers(0, 255, (1,) + size + (channels,)).astype("uint8"))
        for label, config in (("affine", geometric), ("affine + photometric", photometric),
                              ("elastic + affine", elastic)):
            d = augment.draw(seed, config, size, size, channels)
            if d.gain is not None:
                d = d._replace(centre=kernels.frame_mean(image)[0])
            d = batched(d)
            if label == "affine":
                op = lambda i, m, d=d: (  # noqa: E731
                    tf.cast(tf.round(kernels.projective_warp(
                        tf.cast(i, tf.float32), d.matrix, size, "BILINEAR")), tf.uint8),
                    kernels.projective_warp(m, d.matrix, size, "NEAREST", 255))
                _row(f"{channels}ch {label}, ImageProjectiveTransformV3 x2", tf.function(op),
                     image, mask)
            for name, kernel in (("reference", kernels.reference), ("xla", kernels.xla)):
                _row(f"{channels}ch {label}, kernels.{name}",
                     lambda i, m, d=d, k=kernel: k(i, m, sizes, d, size), image, mask)
        flips = augment.AugmentConfig(hflip=True, vflip=True, brightness=0.1, contrast=0.1)
        d = augment.draw(seed, flips, size, size, channels)
        d = batched(d._replace(centre=kernels.frame_mean(image)[0]))
        for name, kernel in (("reference", kernels.reference), ("xla", kernels.xla)):
            _row(f"{channels}ch flips + photometric, kernels.{name}",
                 lambda i, m, d=d, k=kernel: k(i, m, sizes, d, size), image, mask)
        frame = tf.constant(rng.integers(0, 255, (600, 700, channels)).astype("uint8"))
        frame_mask = tf.constant(rng.integers(0, 2, (600, 700, 1)).astype("uint8"))
        for xla in (False, True):
            config = augment.AugmentConfig(**FULL, xla=xla)
            _row(f"{channels}ch augment_example 600x700 -> {FLAGS.size}, xla={xla}",
                 lambda i, m, c=config: augment.augment_example(i, m, seed, size, c),
                 frame, frame_mask)
    _print_rows()


if __name__ == "__main__":
    app.run(main)
