"""Segmentation losses on logits, ignore-aware, computed in float32.

Conventions (shared with the models and metrics):
- y_true: integer class indices (batch, H, W, 1); pixels equal to `ignore_label`
  count nowhere.
- y_pred: logits (batch, H, W, C). C == 1 means a binary task (sigmoid); it is
  treated as two classes [background, foreground] so Dice is a mean over both,
  which keeps a minority background (e.g. membranes) from being ignored.
Each loss returns one scalar for the batch: Dice is not a per-pixel sum, so it is
computed over the whole (per-replica) batch. Each is an `AdditiveLoss`, a function of
sums over pixels, so a whole split's loss (validation, test) is computed from the
split's summed sums and does not depend on the batch size or the replica count.
"""
import keras
from keras import ops

EPSILON = 1.0


def _valid_and_labels(y_true, ignore_label):
    y_true = ops.cast(y_true, "int32")
    if len(y_true.shape) == 4:
        y_true = ops.squeeze(y_true, -1)
    valid = ops.not_equal(y_true, ignore_label)
    return ops.cast(valid, "float32"), ops.where(valid, y_true, 0)


def class_probabilities(logits):
    """(B,H,W,C) logits -> (B,H,W,K) probabilities with K = max(C, 2)."""
    logits = ops.cast(logits, "float32")
    if logits.shape[-1] == 1:
        p = ops.sigmoid(logits)
        return ops.concatenate([1 - p, p], axis=-1)
    return ops.softmax(logits, axis=-1)


def class_log_probabilities(logits):
    logits = ops.cast(logits, "float32")
    if logits.shape[-1] == 1:
        return ops.concatenate([ops.log_sigmoid(-logits), ops.log_sigmoid(logits)], axis=-1)
    return ops.log_softmax(logits, axis=-1)


def _dice_sums(y_true, logits, ignore_label=255):
    """Per-class soft intersections and denominators over the batch: [I_0..I_K-1, D_0..D_K-1]."""
    valid, labels = _valid_and_labels(y_true, ignore_label)
    probs = class_probabilities(logits)
    onehot = ops.one_hot(labels, probs.shape[-1], dtype="float32")
    valid = valid[..., None]
    probs, onehot = probs * valid, onehot * valid
    axes = (0, 1, 2)
    intersection = ops.sum(probs * onehot, axis=axes)
    return ops.concatenate([intersection, ops.sum(probs, axis=axes) + ops.sum(onehot, axis=axes)])


def _per_class_dice_from_sums(sums, epsilon=EPSILON):
    """Soft Dice per class; empty prediction on empty mask gives 1."""
    classes = sums.shape[0] // 2
    return (2 * sums[:classes] + epsilon) / (sums[classes:] + epsilon)


def _weighted_mean(values, weights):
    if weights is None:
        return ops.mean(values)
    weights = ops.convert_to_tensor(weights, "float32")
    return ops.sum(values * weights) / ops.sum(weights)


def _pixel_sums(y_true, logits, ignore_label, class_weights, per_pixel):
    """[sum of weight * per_pixel(log p(true), onehot), sum of weight] over valid pixels."""
    valid, labels = _valid_and_labels(y_true, ignore_label)
    log_probs = class_log_probabilities(logits)
    onehot = ops.one_hot(labels, log_probs.shape[-1], dtype="float32")
    log_pt = ops.sum(onehot * log_probs, axis=-1)
    weight = valid
    if class_weights is not None:
        weight = weight * ops.sum(onehot * ops.convert_to_tensor(class_weights, "float32"), -1)
    return ops.stack([ops.sum(per_pixel(log_pt) * weight), ops.sum(weight)])


def _pixel_mean(sums, class_weights=None):
    return sums[0] / ops.maximum(sums[1], 1e-6)


def _focal_term(log_pt, gamma=2.0):
    return -((1 - ops.exp(log_pt)) ** gamma) * log_pt


class AdditiveLoss:
    """A loss as a function of sums that add over pixels and batches: the loss of a batch is
    `from_sums(sums(batch))`, the loss of a whole split `from_sums` of the batches' summed
    `sums`, whatever the batch size or replica count (a mean of batch Dice losses is not)."""

    def __init__(self, sums, from_sums):
        self._sums, self._from_sums = sums, from_sums

    def sums(self, y_true, logits, ignore_label=255, class_weights=None):
        return self._sums(y_true, logits, ignore_label, class_weights)

    def from_sums(self, sums, class_weights=None):
        return self._from_sums(sums, class_weights)

    def __call__(self, y_true, logits, ignore_label=255, class_weights=None):
        return self.from_sums(self.sums(y_true, logits, ignore_label, class_weights),
                              class_weights)

    def bound(self, ignore_label=255, class_weights=None):
        """This loss with a run's ignore label and class weights fixed: f(y_true, logits)."""
        return AdditiveLoss(lambda y, logits, *_: self._sums(y, logits, ignore_label,
                                                             class_weights),
                            lambda sums, *_: self._from_sums(sums, class_weights))


dice_loss = AdditiveLoss(
    lambda y, logits, ignore, weights: _dice_sums(y, logits, ignore),
    lambda sums, weights: 1 - _weighted_mean(_per_class_dice_from_sums(sums), weights))
cross_entropy = AdditiveLoss(  # mean over valid pixels of -log p(true class)
    lambda y, logits, ignore, weights: _pixel_sums(y, logits, ignore, weights, lambda lp: -lp),
    _pixel_mean)
focal = AdditiveLoss(  # Lin et al.: CE scaled by (1 - p_true)^2, mean over valid pixels
    lambda y, logits, ignore, weights: _pixel_sums(y, logits, ignore, weights, _focal_term),
    _pixel_mean)
dice_ce = AdditiveLoss(
    lambda y, logits, ignore, weights: ops.concatenate(
        [dice_loss.sums(y, logits, ignore), cross_entropy.sums(y, logits, ignore, weights)]),
    lambda sums, weights: dice_loss.from_sums(sums[:-2], weights)
    + cross_entropy.from_sums(sums[-2:]))


FUNCTIONS = {"dice": dice_loss, "ce": cross_entropy, "dice_ce": dice_ce, "focal": focal}


@keras.saving.register_keras_serializable(package="segflow")
class SegmentationLoss(keras.losses.Loss):
    """Keras wrapper so the losses also work with model.compile and serialise by name."""

    def __init__(self, kind="dice", ignore_label=255, class_weights=None, name=None,
                 reduction="sum_over_batch_size", dtype=None):
        if kind not in FUNCTIONS:
            raise ValueError(f"loss {kind!r}: expected one of {sorted(FUNCTIONS)}")
        super().__init__(name=name or f"{kind}_loss", reduction=reduction, dtype=dtype)
        self.kind, self.ignore_label = kind, ignore_label
        self.class_weights = list(class_weights) if class_weights is not None else None

    def call(self, y_true, y_pred):
        return FUNCTIONS[self.kind](y_true, y_pred, self.ignore_label, self.class_weights)

    def get_config(self):
        return {"kind": self.kind, "ignore_label": self.ignore_label,
                "class_weights": self.class_weights, "name": self.name}


def class_weights_from_pixels(class_pixels, power=1.0):
    """Median-frequency balancing from the manifest's per-class pixel counts; `power` 0.5:
    their square roots, a milder balance (a class 100x rarer than the median weighs 10)."""
    total = sum(class_pixels)
    freqs = [c / total if c else 0.0 for c in class_pixels]
    present = sorted(f for f in freqs if f > 0)
    median = present[len(present) // 2]
    return [(median / f) ** power if f > 0 else 0.0 for f in freqs]
