"""The one training loop for every strategy.

Why not `model.fit`: under MultiWorkerMirroredStrategy Keras 3's fit fails with
"Attempt to convert a value (PerReplica...)" (keras-team/keras#20585, measured
with TF 2.21 / Keras 3.15). A `strategy.run` step inside a `tf.function` works
under every strategy, so there is one loop, not a fit path plus a custom path.
Keras callbacks (ModelCheckpoint, EarlyStopping, CSVLogger, ...) are driven from
here through `keras.callbacks.CallbackList`.

The host talks to the devices once per loop of `steps_per_loop` steps (as TF Model
Garden's orbit does): the steps run in a `tf.range` loop inside one `tf.function`,
which sums the loss and the confusion matrix on the device; the host then reads
them once, checks for NaN/inf, updates the progress line and calls the batch
callbacks. Confusion counts are float64 (exact to 2**53; float32 stops at 2**24 per
cell, and every device and collective implementation has float64 sums).

Preemption-safe resume: a `tf.train.CheckpointManager` in RUN_DIR/backup holds
the model, optimizer, finished-epoch counter, early-stopping/best-model state and
the collapse check's history; it is written after every epoch, so a run killed at any
point restarts from the last finished epoch with the same command.
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
from segtrain import collapse
from segtrain import progress as seg_progress


# the logged values --monitor may name: each epoch's training and validation loss and scores
MONITORS = tuple(prefix + name for prefix in ("val_", "")
                 for name in ("loss", "dice", "mean_iou", "pixel_accuracy"))


class NanLossError(RuntimeError):
    """Training produced a non-finite loss; the last good backup is kept."""


class Watchdog:
    """Ends the process with a clear message when no step finishes for `timeout_s`.

    A dead peer in a collective, or a tf.data service whose worker died mid-pass, can
    block a step forever; a bounded, explained exit (the backup is kept, the same command
    resumes) beats a silent hang that burns a cluster allocation. `steps_done()` reads a
    counter the training loop advances after every step inside its tf.function, so a loop
    of many slow steps is not mistaken for a hang; evaluation beats once per batch.
    """

    def __init__(self, timeout_s, backup_directory, steps_done=None):
        self.timeout_s, self.backup_directory = timeout_s, backup_directory
        self.steps_done = steps_done
        self.last, self.last_steps = time.monotonic(), None
        self.stopped = threading.Event()
        if timeout_s > 0:
            threading.Thread(target=self._watch, daemon=True).start()

    def beat(self):
        self.last = time.monotonic()

    def stop(self):
        self.stopped.set()

    def _watch(self):
        while not self.stopped.wait(min(1.0, self.timeout_s / 4)):
            if self.steps_done is not None:
                steps = self.steps_done()
                if steps != self.last_steps:
                    self.last_steps = steps
                    self.beat()
            if time.monotonic() - self.last > self.timeout_s:
                sys.stderr.write(
                    f"train.py: error: no training step finished in {self.timeout_s:.0f} s "
                    "(a dead cluster worker or tf.data service worker?). The last backup in "
                    f"{self.backup_directory} is kept; rerun the same command to resume.\n")
                sys.stderr.flush()
                os._exit(3)


def _images_and_masks(batch):
    return batch["image"], batch["mask"]


class Trainer:
    def __init__(self, strategy, model, optimizer, loss_fn, num_classes, ignore_label=255,
                 preprocess=None, jit_compile=False, steps_per_loop=1, freeze=None):
        """loss_fn: a segmodels.losses.AdditiveLoss bound to the run's ignore label and class
        weights (`.bound()`): loss_fn(y_true, logits) -> scalar over the per-replica batch,
        and its `sums`/`from_sums` give a split's loss in evaluate().
        preprocess(batch dict) -> (images, masks): per-replica work inside the step (device
        augmentation); default: the batch's "image" and "mask".
        freeze: (layer, epochs): `layer` is not trained for the first `epochs` epochs (a
        Keras layer set untrainable: its BatchNorm runs in inference mode meanwhile).
        """
        if steps_per_loop < 1:
            raise ValueError(f"--steps_per_loop={steps_per_loop}: must be >= 1")
        self.strategy, self.model, self.optimizer = strategy, model, optimizer
        self.loss_fn, self.num_classes, self.ignore_label = loss_fn, num_classes, ignore_label
        self.preprocess = tf.autograph.experimental.do_not_convert(preprocess or _images_and_masks)
        self.steps_per_loop, self.jit_compile, self.freeze = steps_per_loop, jit_compile, freeze
        # steps finished, read by the watchdog while a loop runs; a host variable, so reading
        # it never waits on an accelerator's queue
        with tf.device("/cpu:0"):
            self.steps_done = tf.Variable(0, dtype=tf.int64, trainable=False, name="steps_done")
        self._heartbeat = lambda: None
        self._trace()

    def _trace(self):
        """New tf.functions: a trace captures the trainable variables it saw. Only the loop
        needs AutoGraph (its tf.range); converting the steps' model and loss code as well
        only lengthens every start (BENCHMARKS.md §10)."""
        self._update = tf.function(self._replica_update, jit_compile=self.jit_compile,
                                   autograph=False)
        self._train_loop = tf.function(self._train_loop_fn)
        self._eval_step = tf.function(self._eval_step_fn, autograph=False)

    def _apply_freeze(self, epoch, log):
        if self.freeze is None:
            return
        layer, epochs = self.freeze
        trainable = epoch >= epochs
        if layer.trainable != trainable:
            layer.trainable = trainable
            self._trace()
            log(f"{layer.name}: {'trained from now on' if trainable else 'frozen'} "
                f"(epoch {epoch + 1}, --freeze_encoder_epochs={epochs})")

    # -- steps ---------------------------------------------------------------

    def _confusion(self, masks, logits):
        return tf.cast(seg_metrics.confusion_matrix(masks, logits, self.num_classes,
                                                    self.ignore_label), tf.float64)

    def _replica_update(self, images, masks):
        replicas = self.strategy.num_replicas_in_sync
        with tf.GradientTape() as tape:
            logits = self.model(images, training=True)
            loss = self.loss_fn(masks, logits)
            if self.model.losses:
                loss += tf.add_n(self.model.losses)
            # per-replica mean / replicas: the all-reduced SUM of gradients is then the mean
            scaled = self.optimizer.scale_loss(loss / replicas)
        grads = tape.gradient(scaled, self.model.trainable_variables)
        self.optimizer.apply(grads, self.model.trainable_variables)
        return loss / replicas, self._confusion(masks, logits)

    def _train_loop_fn(self, iterator, steps):
        """`steps` (a tensor: one trace for every loop length) steps; summed loss and counts."""
        total = tf.constant(0.0, tf.float32)
        cm = tf.zeros((self.num_classes, self.num_classes), tf.float64)
        for _ in tf.range(steps):
            # two runs: the update is a tf.function of its own (for --jit_compile), and one
            # called from inside another replica function cannot all-reduce its gradients
            images, masks = self.strategy.run(self.preprocess, args=(next(iterator),))
            loss, batch_cm = self.strategy.run(self._update, args=(images, masks))
            total += self.strategy.reduce(tf.distribute.ReduceOp.SUM, loss, axis=None)
            cm += self.strategy.reduce(tf.distribute.ReduceOp.SUM, batch_cm, axis=None)
            self.steps_done.assign_add(1)
        return total, cm

    def train_loop(self, iterator, steps):
        """Runs `steps` training steps in one call; returns (loss sum, confusion counts)."""
        return self._train_loop(iterator, tf.constant(steps, tf.int32))

    def _eval_step_fn(self, batch):
        def replica(batch):
            logits = self.model(batch["image"], training=False)
            sums = tf.cast(self.loss_fn.sums(batch["mask"], logits), tf.float64)
            return sums, self._confusion(batch["mask"], logits)
        sums, cm = self.strategy.run(replica, args=(batch,))
        reduce = tf.distribute.ReduceOp.SUM
        return (self.strategy.reduce(reduce, sums, axis=None),
                self.strategy.reduce(reduce, cm, axis=None))

    def evaluate(self, dataset):
        """Loss and scores over a split, every example once, on every replica.

        `dataset`: a distributed dataset whose replicas all get the same number of
        batches (pipeline.evaluation_dataset(..., pad_batches=True)); padding has an all-ignore
        mask, so it adds nothing. The loss is the split's: computed from the loss's sums
        (e.g. Dice's per-class intersections) over every batch of every replica, like the
        scores from the one summed confusion matrix, so neither depends on the batch size
        or the replica count.
        """
        sums, cm = None, tf.zeros((self.num_classes, self.num_classes), tf.float64)
        for batch in dataset:
            # no host read per batch: eager adds queue behind the device's work
            batch_sums, batch_cm = self._eval_step(batch)
            sums = batch_sums if sums is None else sums + batch_sums
            cm = cm + batch_cm
            self._heartbeat()
        cm = cm.numpy()
        result = scores(cm)
        result["loss"] = (float(self.loss_fn.from_sums(tf.cast(sums, tf.float32)))
                          if sums is not None else math.nan)
        result["confusion_matrix"] = cm.tolist()
        return result

    # -- the loop ------------------------------------------------------------

    def fit(self, train_dataset, val_dataset, epochs, steps_per_epoch, callbacks, backup,
            log=logging.info, step_timeout_s=0, progress=None, batch_size=1, class_names=None):
        """Runs from the backup's epoch to `epochs`; returns a summary dict.

        progress(epoch, epochs, steps, batch_size) -> an EpochProgress-like object, or None.
        """
        watchdog = Watchdog(step_timeout_s, backup.directory,
                            lambda: int(self.steps_done.numpy()))
        self._heartbeat = watchdog.beat
        try:
            return self._fit(train_dataset, val_dataset, epochs, steps_per_epoch, callbacks,
                             backup, log, watchdog, progress, batch_size, class_names)
        finally:
            watchdog.stop()
            self._heartbeat = lambda: None

    def _fit(self, train_dataset, val_dataset, epochs, steps_per_epoch, callbacks, backup, log,
             watchdog, progress, batch_size, class_names):
        callbacks.on_train_begin()
        start_epoch = backup.restore(callbacks)
        if start_epoch:
            log(f"resumed from backup: {start_epoch} epoch(s) already done")
        iterator = iter(train_dataset)
        history = []
        for epoch in range(start_epoch, epochs):
            if backup.finished:
                break
            self._apply_freeze(epoch, log)
            callbacks.on_epoch_begin(epoch)
            started = time.time()
            bar = (progress(epoch, epochs, steps_per_epoch, batch_size) if progress
                   else seg_progress.NoProgress())
            cm = np.zeros((self.num_classes, self.num_classes), np.float64)
            loss_sum, done = 0.0, 0
            while done < steps_per_epoch:
                steps = min(self.steps_per_loop, steps_per_epoch - done)
                callbacks.on_train_batch_begin(done)
                loop_loss, loop_cm = self.train_loop(iterator, steps)
                loop_loss = float(loop_loss)
                watchdog.beat()
                if not math.isfinite(loop_loss):
                    raise NanLossError(
                        f"loss became {loop_loss} at epoch {epoch + 1}, steps {done + 1}-"
                        f"{done + steps}: lower --learning_rate or check the data. The last "
                        f"good backup (epoch {epoch}) is kept in {backup.directory}.")
                loss_sum += loop_loss
                cm += loop_cm.numpy()
                done += steps
                bar.update(done, loss_sum / done)
                callbacks.on_train_batch_end(done - 1, {"loss": loop_loss / steps})
            bar.finish()
            logs = {"loss": loss_sum / steps_per_epoch}
            logs.update({k: v for k, v in scores(cm).items() if not k.startswith("per_class")})
            val = self.evaluate(val_dataset)
            watchdog.beat()
            logs.update({f"val_{k}": v for k, v in val.items()
                         if not k.startswith("per_class") and k != "confusion_matrix"})
            logs["learning_rate"] = float(keras.ops.convert_to_numpy(self.optimizer.learning_rate))
            # optimizer steps so far: fewer than the batches seen when float16 loss scaling
            # skipped steps, and the step the learning-rate schedule is at
            logs["iterations"] = int(keras.ops.convert_to_numpy(self.optimizer.iterations))
            logs["epoch_seconds"] = time.time() - started
            callbacks.on_epoch_end(epoch, logs)
            history.append(logs)
            log("epoch %d/%d: %s" % (epoch + 1, epochs, ", ".join(
                f"{k}={v}" if isinstance(v, int) else f"{k}={v:.4g}" for k, v in logs.items())))
            warning = backup.check_collapse(epoch, cm, logs["loss"], class_names)
            if warning:
                log(f"WARNING: {warning}")
            stop = bool(getattr(self.model, "stop_training", False))
            # "finished" means early-stopped: a run that reached --epochs continues if a
            # rerun asks for more epochs
            backup.save(epoch + 1, callbacks, finished=stop)
            if stop:
                break
        callbacks.on_train_end()
        return {"history": history, "start_epoch": start_epoch}


def scores(cm):
    """Confusion counts -> JSON-ready scores (segmodels.metrics.scores)."""
    out = seg_metrics.scores(np.asarray(cm, np.float32))
    return {k: (np.asarray(v).tolist() if k.startswith("per_class") else float(v))
            for k, v in out.items()}


class Backup:
    """Model + optimizer + progress + callback state in RUN_DIR/backup (CheckpointManager).

    The optimizer is saved without its float16 loss-scale wrapper: its step, moments and
    schedule position are the same variables in every precision, so a run resumes in
    another precision (a GPU job resumed on a CPU or a bfloat16 host). The loss scale is
    saved beside it and restored when both runs use float16. A restore must fill every
    variable of the model and optimizer, or it fails: never a silent optimizer reset.

    `constant_learning_rate`: the run's learning rate when it is a constant. It comes from
    the command line, not the backup, so a user who resumes with a new --learning_rate gets
    it; a schedule is a function of the restored step and needs nothing.
    `precision`: the run's precision policy, saved so a resume can say what changed.
    """

    def __init__(self, directory, model, optimizer, write_directory=None,
                 constant_learning_rate=None, precision=""):
        self.directory = directory
        self.optimizer = optimizer
        self.constant_learning_rate = constant_learning_rate
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        self.done = tf.Variable(False, trainable=False, name="finished")
        self.wait = tf.Variable(0, dtype=tf.int64, trainable=False, name="es_wait")
        self.best = tf.Variable(np.nan, dtype=tf.float64, trainable=False, name="best")
        self.best_epoch = tf.Variable(-1, dtype=tf.int64, trainable=False, name="best_epoch")
        # the collapse check's memory: recent epoch losses, the class each recent epoch
        # predicted everywhere (-1: several), and the first warning
        self.recent_losses = tf.Variable([np.nan] * (collapse.EPOCHS + 1), dtype=tf.float64,
                                         trainable=False, name="recent_losses")
        self.recent_classes = tf.Variable([-1] * collapse.EPOCHS, dtype=tf.int64,
                                          trainable=False, name="recent_classes")
        self.collapse_warning = tf.Variable("", dtype=tf.string, trainable=False,
                                            name="collapse_warning")
        self.precision = tf.Variable(precision, dtype=tf.string, trainable=False,
                                     name="precision")
        self.base_optimizer = getattr(optimizer, "inner_optimizer", optimizer)
        # the float16 wrapper's own state (none in other precisions)
        self.loss_scale_variables = {} if self.base_optimizer is optimizer else dict(
            dynamic_scale=optimizer.dynamic_scale, step_counter=optimizer.step_counter)
        self.children = dict(
            model=model, optimizer=self.base_optimizer, epoch=self.epoch, finished=self.done,
            es_wait=self.wait, best=self.best, best_epoch=self.best_epoch,
            recent_losses=self.recent_losses, recent_classes=self.recent_classes,
            collapse_warning=self.collapse_warning, precision=self.precision)
        if self.loss_scale_variables:
            self.children["loss_scale"] = tf.train.Checkpoint(**self.loss_scale_variables)
        self.checkpoint = tf.train.Checkpoint(**self.children)
        self._loaded = False
        self.read_manager = tf.train.CheckpointManager(self.checkpoint, directory, max_to_keep=2)
        same = not write_directory or write_directory == directory
        self.write_manager = (self.read_manager if same else tf.train.CheckpointManager(
            self.checkpoint, write_directory, max_to_keep=1))

    @property
    def finished(self):
        return bool(self.done.numpy())

    def _saved(self, name):
        """A scalar of the newest backup, read without restoring (None: no backup or no such
        value, as in backups written before it existed)."""
        latest = self.read_manager.latest_checkpoint
        key = f"{name}/.ATTRIBUTES/VARIABLE_VALUE"
        if not latest or key not in dict(tf.train.list_variables(latest)):
            return None
        return tf.train.load_variable(latest, key)

    def latest_epoch(self):
        """Finished epochs in the newest backup (0 without one)."""
        return int(self._saved("epoch") or 0)

    def saved_precision(self):
        """The precision policy the newest backup was trained in, or None if unknown."""
        value = self._saved("precision")
        return value.decode() if value else None

    def load(self):
        """Restores the newest backup's model, optimizer and progress (once; False without
        a backup). A backup that cannot fill this run's variables is a ValueError naming
        what to pass, before anything of the run folder is written."""
        latest = self.read_manager.latest_checkpoint
        if not latest or self._loaded:
            return bool(latest)
        saved = {name for name, _ in tf.train.list_variables(latest)}
        children = dict(self.children)
        if not any(name.startswith("loss_scale/") for name in saved):
            children.pop("loss_scale", None)  # float16 after another precision: a new scale
        children.pop("precision")  # read by saved_precision(); this run saves its own
        if any(name.startswith("optimizer/inner_optimizer/") for name in saved):
            # written before the wrapper was left out: the optimizer is one level down
            children["optimizer"] = tf.train.Checkpoint(inner_optimizer=self.base_optimizer,
                                                        **self.loss_scale_variables)
            children.pop("loss_scale", None)
        try:
            tf.train.Checkpoint(**children).restore(latest).assert_existing_objects_matched()
        except (AssertionError, ValueError, tf.errors.InvalidArgumentError) as err:
            raise ValueError(
                f"{latest} does not hold every variable of this run's model and optimizer "
                f"({str(err).splitlines()[0][:200]}); resume with the flags in "
                f"{os.path.dirname(self.directory)}/flags.txt, or pass a new --model_dir") from None
        if self.constant_learning_rate is not None:
            self.optimizer.learning_rate = self.constant_learning_rate
        self._loaded = True
        return True

    def restore(self, callbacks):
        """load(), then the early-stopping and best-model state into `callbacks`; returns
        the finished epochs."""
        if not self.load():
            return 0
        best = float(self.best.numpy())
        for callback in callbacks.callbacks:
            if isinstance(callback, keras.callbacks.EarlyStopping):
                callback.wait = int(self.wait.numpy())
                if not math.isnan(best):
                    callback.best = best
                callback.best_epoch = int(self.best_epoch.numpy())
        return int(self.epoch.numpy())

    def check_collapse(self, epoch, cm, loss, class_names=None):
        """The collapse warning to print for this epoch (the first one only), or None."""
        losses = np.concatenate([self.recent_losses.numpy()[1:], [loss]])
        self.recent_losses.assign(losses)
        single = collapse.single_predicted_class(cm)
        classes = np.concatenate([self.recent_classes.numpy()[1:],
                                  [-1 if single is None else single]])
        self.recent_classes.assign(classes)
        if self.collapse_warning.numpy():
            return None
        warning = collapse.diagnose(epoch, [None if c < 0 else int(c) for c in classes],
                                    [v for v in losses if not math.isnan(v)], class_names)
        if warning:
            self.collapse_warning.assign(warning)
        return warning

    @property
    def collapse(self):
        """The run's collapse warning, or None."""
        return self.collapse_warning.numpy().decode() or None

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
