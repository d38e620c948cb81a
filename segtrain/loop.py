"""The one training loop for every strategy.

Why not `model.fit`: under MultiWorkerMirroredStrategy Keras 3's fit fails with
"Attempt to convert a value (PerReplica...)" (keras-team/keras#20585, measured
with TF 2.21 / Keras 3.15). A `strategy.run` step inside a `tf.function` works
under every strategy, so there is one loop, not a fit path plus a custom path.
Keras callbacks (ModelCheckpoint, EarlyStopping, CSVLogger, ...) are driven from
here through `keras.callbacks.CallbackList`.

Preemption-safe resume: a `tf.train.CheckpointManager` in RUN_DIR/backup holds
the model, optimizer, finished-epoch counter and the early-stopping/best-model
state; it is written after every epoch, so a run killed at any point restarts
from the last finished epoch with the same command.
"""
import math
import os
import sys
import threading
import time

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from segmodels import metrics as seg_metrics


class NanLossError(RuntimeError):
    """Training produced a non-finite loss; the last good backup is kept."""


class Watchdog:
    """Ends the process with a clear message when no step finishes for `timeout_s` seconds.

    A dead peer in a collective, or a tf.data service whose worker died mid-pass, can
    block a step forever; a bounded, explained exit (the backup is kept, the same command
    resumes) beats a silent hang that burns a cluster allocation.
    """

    def __init__(self, timeout_s, backup_directory):
        self.timeout_s, self.backup_directory = timeout_s, backup_directory
        self.last = time.monotonic()
        self.stopped = threading.Event()
        if timeout_s > 0:
            threading.Thread(target=self._watch, daemon=True).start()

    def beat(self):
        self.last = time.monotonic()

    def stop(self):
        self.stopped.set()

    def _watch(self):
        while not self.stopped.wait(1.0):
            if time.monotonic() - self.last > self.timeout_s:
                sys.stderr.write(
                    f"train.py: error: no training step finished in {self.timeout_s:.0f} s "
                    "(a dead cluster worker or tf.data service worker?). The last backup in "
                    f"{self.backup_directory} is kept; rerun the same command to resume.\n")
                sys.stderr.flush()
                os._exit(3)


class Trainer:
    def __init__(self, strategy, model, optimizer, loss_fn, num_classes, ignore_label=255,
                 preprocess=None, jit_compile=False):
        """loss_fn(y_true, logits) -> scalar mean over the per-replica batch.
        preprocess(batch) -> (images, masks): device-side work inside the step (e.g. augmentation).
        """
        self.strategy, self.model, self.optimizer = strategy, model, optimizer
        self.loss_fn, self.num_classes, self.ignore_label = loss_fn, num_classes, ignore_label
        self.preprocess = preprocess or (lambda batch: (batch[0], batch[1]))
        self.jit_compile = jit_compile
        self._train_step = None
        self._eval_step = None

    # -- steps ---------------------------------------------------------------

    def _replica_train_step(self, images, masks):
        with tf.GradientTape() as tape:
            logits = self.model(images, training=True)
            loss = self.loss_fn(masks, logits)
            if self.model.losses:
                loss += tf.add_n(self.model.losses)
            # per-replica mean / replicas: the all-reduced SUM of gradients is then the mean
            scaled = self.optimizer.scale_loss(loss / self.strategy.num_replicas_in_sync)
        grads = tape.gradient(scaled, self.model.trainable_variables)
        self.optimizer.apply(grads, self.model.trainable_variables)
        cm = seg_metrics.confusion_matrix(masks, logits, self.num_classes, self.ignore_label)
        return loss / self.strategy.num_replicas_in_sync, cm

    def train_step(self, iterator):
        if self._train_step is None:
            replica_fn = tf.function(self._replica_train_step, jit_compile=self.jit_compile)

            @tf.function
            def step(iterator):
                images, masks = self.preprocess(next(iterator))
                loss, cm = self.strategy.run(replica_fn, args=(images, masks))
                reduce = tf.distribute.ReduceOp.SUM
                return (self.strategy.reduce(reduce, loss, axis=None),
                        self.strategy.reduce(reduce, cm, axis=None))
            self._train_step = step
        return self._train_step(iterator)

    def evaluate(self, dataset):
        """Loss and scores over a whole (non-distributed) dataset, every example once.

        Every worker evaluates the full split: no collectives, so uneven splits cannot
        hang a multi-worker job, and all workers see the same numbers (EarlyStopping
        then decides the same everywhere).
        """
        if self._eval_step is None:
            @tf.function
            def step(images, masks):
                logits = self.model(images, training=False)
                loss = self.loss_fn(masks, logits)
                return loss, tf.cast(tf.shape(images)[0], tf.float32), seg_metrics.confusion_matrix(
                    masks, logits, self.num_classes, self.ignore_label)
            self._eval_step = step
        total_loss, count = 0.0, 0.0
        cm = np.zeros((self.num_classes, self.num_classes), np.float64)
        for batch in dataset:
            loss, n, batch_cm = self._eval_step(batch[0], batch[1])
            total_loss += float(loss) * float(n)
            count += float(n)
            cm += batch_cm.numpy()
        result = _scores(cm)
        result["loss"] = total_loss / max(count, 1.0)
        result["confusion_matrix"] = cm.tolist()
        return result

    # -- the loop ------------------------------------------------------------

    def fit(self, train_dataset, val_dataset, epochs, steps_per_epoch, callbacks, backup,
            log=logging.info, step_timeout_s=0):
        """Runs from the backup's epoch to `epochs`; returns a summary dict."""
        watchdog = Watchdog(step_timeout_s, backup.directory)
        try:
            return self._fit(train_dataset, val_dataset, epochs, steps_per_epoch, callbacks,
                             backup, log, watchdog)
        finally:
            watchdog.stop()

    def _fit(self, train_dataset, val_dataset, epochs, steps_per_epoch, callbacks, backup, log,
             watchdog):
        callbacks.on_train_begin()
        start_epoch = backup.restore(callbacks)
        if start_epoch:
            log(f"resumed from backup: {start_epoch} epoch(s) already done")
        iterator = iter(train_dataset)
        history = []
        epoch = start_epoch
        for epoch in range(start_epoch, epochs):
            if backup.finished:
                break
            callbacks.on_epoch_begin(epoch)
            started = time.time()
            cm = np.zeros((self.num_classes, self.num_classes), np.float64)
            loss_sum = 0.0
            for step in range(steps_per_epoch):
                callbacks.on_train_batch_begin(step)
                loss, batch_cm = self.train_step(iterator)
                loss = float(loss)
                watchdog.beat()
                if not math.isfinite(loss):
                    raise NanLossError(
                        f"loss became {loss} at epoch {epoch + 1}, step {step + 1}: lower "
                        f"--learning_rate or check the data. The last good backup (epoch "
                        f"{epoch}) is kept in {backup.directory}.")
                loss_sum += loss
                cm += batch_cm.numpy()
                callbacks.on_train_batch_end(step, {"loss": loss})
            logs = {"loss": loss_sum / steps_per_epoch}
            logs.update({k: v for k, v in _scores(cm).items() if not k.startswith("per_class")})
            val = self.evaluate(val_dataset)
            watchdog.beat()
            logs.update({f"val_{k}": v for k, v in val.items()
                         if not k.startswith("per_class") and k != "confusion_matrix"})
            logs["learning_rate"] = float(keras.ops.convert_to_numpy(self.optimizer.learning_rate))
            logs["epoch_seconds"] = time.time() - started
            callbacks.on_epoch_end(epoch, logs)
            history.append(logs)
            log("epoch %d/%d: %s" % (epoch + 1, epochs, ", ".join(
                f"{k}={v:.4f}" for k, v in logs.items())))
            stop = bool(getattr(self.model, "stop_training", False))
            # "finished" means early-stopped: a run that reached --epochs continues if a
            # rerun asks for more epochs
            backup.save(epoch + 1, callbacks, finished=stop)
            if stop:
                break
        callbacks.on_train_end()
        return {"history": history, "start_epoch": start_epoch}


def _scores(cm):
    out = seg_metrics.scores(cm.astype(np.float32))
    return {k: (np.asarray(v).tolist() if k.startswith("per_class") else float(v))
            for k, v in out.items()}


class Backup:
    """Model + optimizer + progress + callback state in RUN_DIR/backup (CheckpointManager)."""

    def __init__(self, directory, model, optimizer, write_directory=None):
        self.directory = directory
        self.optimizer = optimizer
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        self.done = tf.Variable(False, trainable=False, name="finished")
        self.wait = tf.Variable(0, dtype=tf.int64, trainable=False, name="es_wait")
        self.best = tf.Variable(np.nan, dtype=tf.float64, trainable=False, name="best")
        self.best_epoch = tf.Variable(-1, dtype=tf.int64, trainable=False, name="best_epoch")
        self.checkpoint = tf.train.Checkpoint(
            model=model, optimizer=optimizer, epoch=self.epoch, finished=self.done,
            es_wait=self.wait, best=self.best, best_epoch=self.best_epoch)
        self.read_manager = tf.train.CheckpointManager(self.checkpoint, directory, max_to_keep=2)
        self.write_manager = (self.read_manager if not write_directory or write_directory == directory
                              else tf.train.CheckpointManager(self.checkpoint, write_directory,
                                                              max_to_keep=1))

    @property
    def finished(self):
        return bool(self.done.numpy())

    def restore(self, callbacks):
        latest = self.read_manager.latest_checkpoint
        if not latest:
            return 0
        # A constant learning rate comes from the command line, not the backup: a user who
        # resumes with a new --learning_rate gets it. Schedules are functions of the step.
        constant_lr = not callable(getattr(self.optimizer, "_learning_rate", None))
        learning_rate = float(keras.ops.convert_to_numpy(self.optimizer.learning_rate))
        self.checkpoint.restore(latest).expect_partial()
        if constant_lr:
            self.optimizer.learning_rate = learning_rate
        best = float(self.best.numpy())
        for callback in callbacks.callbacks:
            if isinstance(callback, keras.callbacks.EarlyStopping):
                callback.wait = int(self.wait.numpy())
                if not math.isnan(best):
                    callback.best = best
                callback.best_epoch = int(self.best_epoch.numpy())
            if isinstance(callback, keras.callbacks.ModelCheckpoint) and not math.isnan(best):
                callback.best = best
        return int(self.epoch.numpy())

    def save(self, epoch, callbacks, finished=False):
        for callback in callbacks.callbacks:
            if isinstance(callback, keras.callbacks.EarlyStopping):
                self.wait.assign(callback.wait)
                if callback.best is not None and np.isfinite(callback.best):
                    self.best.assign(float(callback.best))
                self.best_epoch.assign(int(callback.best_epoch))
        self.epoch.assign(epoch)
        self.done.assign(finished)
        self.write_manager.save(checkpoint_number=epoch)
