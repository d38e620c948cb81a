"""Callbacks for the custom loop: the classic recipe's checkpoints and early stop,
plus TensorBoard scalars with a few validation images."""
import csv
import os
import time

import keras
import tensorflow as tf

from segdata import atomic


def monitor_mode(monitor, mode="auto"):
    """min for losses, max for Dice/IoU/accuracy, unless given."""
    if mode != "auto":
        return mode
    return "min" if "loss" in monitor else "max"


class TensorBoardImages(keras.callbacks.Callback):
    """Epoch scalars and, for a few validation images, the predicted and true masks."""

    def __init__(self, log_dir, images, masks):
        super().__init__()
        self.writer = tf.summary.create_file_writer(log_dir)
        self.images, self.masks = images, masks

    def on_epoch_end(self, epoch, logs=None):
        logits = self.model(self.images, training=False)
        if logits.shape[-1] == 1:
            pred = tf.cast(logits > 0, tf.float32)
        else:
            pred = tf.cast(tf.argmax(logits, -1), tf.float32)[..., None]
        scale = float(max(1, logits.shape[-1] - 1)) if logits.shape[-1] > 1 else 1.0
        truth = tf.cast(tf.where(self.masks == 255, 0, self.masks), tf.float32) / scale
        with self.writer.as_default(step=epoch + 1):
            for key, value in (logs or {}).items():
                tf.summary.scalar(key, value)
            image = tf.cast(self.images, tf.float32) / 255.0
            if image.shape[-1] == 1:
                image = tf.image.grayscale_to_rgb(image)
            tf.summary.image("val/image", image, max_outputs=4)
            tf.summary.image("val/predicted_mask", pred / scale, max_outputs=4)
            tf.summary.image("val/true_mask", truth, max_outputs=4)
        self.writer.flush()


class Deadline(keras.callbacks.Callback):
    """Stops after the epoch whose successor would end past `deadline` (time.time()): a
    minutes budget holds even when a step was slower than the one timed for the plan."""

    def __init__(self, deadline):
        super().__init__()
        self.deadline, self.epoch_started = deadline, None

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch_started = time.time()

    def on_epoch_end(self, epoch, logs=None):
        now = time.time()
        if now + (now - self.epoch_started) > self.deadline:
            self.model.stop_training = True


class BestCheckpoint(keras.callbacks.Callback):
    """Saves the model (atomically) at each epoch `early_stopping` counts as its new best.

    One notion of best for the run: the checkpoint then holds the epoch that metrics.json
    reports as best_epoch and that a resumed run compares against. Keras's ModelCheckpoint
    keeps a best of its own without --min_delta, so it saved epochs better by less than
    that while the run reported an earlier one. Keras's own restore_best_weights takes the
    early stop's epoch too. Goes after `early_stopping` in the callback list.
    """

    def __init__(self, path, early_stopping):
        super().__init__()
        self.path, self.early_stopping = path, early_stopping

    def on_epoch_end(self, epoch, logs=None):
        stop = self.early_stopping
        # best_epoch moves only on an improvement, but starts at 0: a best tells epoch 0
        if stop.best_epoch != epoch or stop.best is None:
            return
        save_atomically(self.model, self.path)


def save_atomically(model, path):
    """model.save to a temp name, then rename: a crash never leaves a half-written file."""
    # Keras saves only to a name ending in .keras
    partial = path[:-len(".keras")] + ".partial.keras"
    model.save(partial)
    os.replace(partial, path)


def trim_csv_log(path, epochs):
    """Keeps the rows of the first `epochs` epochs of a CSVLogger file (atomically).

    A run killed after an epoch's row was written but before its backup was saved
    repeats that epoch on resume; without this, log.csv would list it twice.
    """
    if not os.path.isfile(path):
        return
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    if not rows or "epoch" not in rows[0]:
        return
    column = rows[0].index("epoch")
    kept = [rows[0]] + [row for row in rows[1:] if row and int(row[column]) < epochs]
    if len(kept) == len(rows):
        return
    with atomic.replacing(path, newline="") as handle:
        csv.writer(handle).writerows(kept)


def make_callbacks(model_dir, monitor, mode, patience, min_delta, is_chief, resumed_epochs=0,
                   sample_images=None):
    """EarlyStopping on every worker (they see the same logs); files on the chief only.
    `resumed_epochs`: epochs the backup holds (log.csv continues after them)."""
    mode = monitor_mode(monitor, mode)
    early_stopping = keras.callbacks.EarlyStopping(monitor=monitor, mode=mode, patience=patience,
                                                   min_delta=min_delta, restore_best_weights=False)
    callbacks = [early_stopping]
    if is_chief:
        callbacks += [
            BestCheckpoint(os.path.join(model_dir, "best.keras"), early_stopping),
            keras.callbacks.ModelCheckpoint(os.path.join(model_dir, "latest.weights.h5"),
                                            save_weights_only=True),
            keras.callbacks.CSVLogger(os.path.join(model_dir, "log.csv"),
                                      append=resumed_epochs > 0),
        ]
        trim_csv_log(os.path.join(model_dir, "log.csv"), resumed_epochs)
        if sample_images is not None:
            callbacks.append(TensorBoardImages(os.path.join(model_dir, "tensorboard"),
                                               *sample_images))
    return callbacks
