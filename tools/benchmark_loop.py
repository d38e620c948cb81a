"""ms per training step of segtrain.loop.Trainer by --steps_per_loop, side by side.

    python tools/benchmark_loop.py [--steps_per_loop=1,10,50] [--image_size=32 --base_filters=4]

A tiny UNet on one synthetic batch repeated by tf.data (no decoding), so the time per
step is mostly what the loop itself costs: the step's compute plus, per loop, the host
call and its read of the loss and confusion counts. Every setting runs --steps steps per round,
the settings take turns for --rounds rounds, and the median ms/step is reported.
"""
import json
import statistics
import sys
import time

from absl import app, flags

if not __package__:  # run as a file (python tools/x.py), not as tools.x
    import _bootstrap  # noqa: F401  (puts the project on sys.path)

FLAGS = flags.FLAGS
flags.DEFINE_list("steps_per_loop", ["1", "10", "50"], "Settings to compare.")
flags.DEFINE_integer("image_size", 32, "Square image side.")
flags.DEFINE_integer("batch_size", 4, "Batch size.")
flags.DEFINE_integer("base_filters", 4, "UNet width.")
flags.DEFINE_integer("depth", 2, "UNet depth.")
flags.DEFINE_integer("steps", 200, "Timed steps per setting and round (a multiple of each "
                     "setting is best).")
flags.DEFINE_integer("rounds", 5, "Rounds; each times every setting once, in turns.")
flags.DEFINE_bool("json", False, "Print one JSON object instead of a table.")


def make_trainer(steps_per_loop):
    import keras
    import numpy as np
    import tensorflow as tf

    import segmodels
    from segtrain import loop, optim
    keras.utils.set_random_seed(0)
    strategy = tf.distribute.get_strategy()
    shape = (FLAGS.image_size, FLAGS.image_size)
    model = segmodels.build_model("unet", shape + (1,), 2, base_filters=FLAGS.base_filters,
                                  depth=FLAGS.depth, dropout=0.0)
    optimizer = optim.build_optimizer("adam", 1e-3)
    optimizer.build(model.trainable_variables)
    rng = np.random.default_rng(0)
    batch = {"image": rng.integers(0, 255, (FLAGS.batch_size,) + shape + (1,)).astype("uint8"),
             "mask": rng.integers(0, 2, (FLAGS.batch_size,) + shape + (1,)).astype("uint8")}
    dataset = tf.data.Dataset.from_tensors(batch).repeat().prefetch(2)
    trainer = loop.Trainer(strategy, model, optimizer, segmodels.LOSSES["dice"], 2,
                           steps_per_loop=steps_per_loop)
    return trainer, iter(strategy.experimental_distribute_dataset(dataset))


def time_steps(trainer, iterator, steps):
    """Seconds for `steps` steps as the epoch loop runs them: loops of steps_per_loop, the
    loss and counts read on the host after each."""
    start = time.perf_counter()
    done = 0
    while done < steps:
        n = min(trainer.steps_per_loop, steps - done)
        loss, cm = trainer.train_loop(iterator, n)
        float(loss), cm.numpy()
        done += n
    return time.perf_counter() - start


def main(argv):
    del argv
    settings = [int(n) for n in FLAGS.steps_per_loop]
    if min(settings) < 1:
        sys.stderr.write("benchmark_loop: error: --steps_per_loop values must be >= 1\n")
        return 1
    runs = {n: make_trainer(n) for n in settings}
    for trainer, iterator in runs.values():
        time_steps(trainer, iterator, trainer.steps_per_loop)  # trace and warm up
    samples = {n: [] for n in settings}
    for _ in range(FLAGS.rounds):
        for n, (trainer, iterator) in runs.items():
            samples[n].append(1000 * time_steps(trainer, iterator, FLAGS.steps) / FLAGS.steps)
    medians = {n: statistics.median(values) for n, values in samples.items()}
    report = {"image_size": FLAGS.image_size, "batch_size": FLAGS.batch_size,
              "base_filters": FLAGS.base_filters, "depth": FLAGS.depth, "steps": FLAGS.steps,
              "rounds": FLAGS.rounds, "ms_per_step": {str(n): v for n, v in medians.items()},
              "samples": {str(n): v for n, v in samples.items()}}
    if FLAGS.json:
        print(json.dumps(report))
        return 0
    print(f"UNet width {FLAGS.base_filters} depth {FLAGS.depth}, batch {FLAGS.batch_size} x "
          f"{FLAGS.image_size}px, {FLAGS.steps} steps x {FLAGS.rounds} rounds (median)")
    base = medians[settings[0]]
    for n in settings:
        print(f"  steps_per_loop={n:<4} {medians[n]:7.2f} ms/step  ({medians[n] / base:.2f}x "
              f"of steps_per_loop={settings[0]})")
    return 0


if __name__ == "__main__":
    app.run(main)
