"""How long a training step takes on this machine: what a minutes budget is turned into
steps with (segtrain.plan.schedule). Measured on a throwaway model with the run's input
pipeline, strategy, precision and loss, so the figure includes decoding and augmentation."""
import time

import keras

from segtrain import loop


def seconds_per_step(strategy, build_model, loss_fn, num_classes, ignore_label, dataset_fn,
                     preprocess=None, warm_steps=2, timed_steps=5):
    """`build_model()` -> a fresh model; `dataset_fn(input_context)` -> the per-replica
    training dataset. The first `warm_steps` trace and compile; the next are timed."""
    with strategy.scope():
        model = build_model()
        optimizer = keras.optimizers.Adam(1e-4)
        optimizer.build(model.trainable_variables)
    trainer = loop.Trainer(strategy, model, optimizer, loss_fn, num_classes, ignore_label,
                           preprocess)
    iterator = iter(strategy.distribute_datasets_from_function(dataset_fn))
    float(trainer.train_loop(iterator, warm_steps)[0])
    start = time.perf_counter()
    float(trainer.train_loop(iterator, timed_steps)[0])  # float(): waits for the last step
    return (time.perf_counter() - start) / timed_steps
