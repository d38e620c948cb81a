"""Confusion-matrix metrics: Dice, IoU per class and mean, pixel accuracy.

Every score derives from one (num_classes x num_classes) confusion matrix that
accumulates over batches (and sums across replicas), so the epoch's value is the
dataset's value, not a mean of batch means. Rows: true class; columns: predicted.
A class absent from both truth and prediction scores 1 (empty on empty is a
perfect match, as in the Dice loss).
"""
import keras
from keras import ops


def predicted_classes(logits):
    if logits.shape[-1] == 1:
        return ops.cast(ops.squeeze(logits, -1) > 0, "int32")
    # top_k(1) is argmax with the same tie rule (lowest index); Keras's TF argmax first
    # rewrites -0.0 through four temporaries of the logits' size (2x the peak memory)
    return ops.cast(ops.top_k(logits, 1)[1][..., 0], "int32")


def confusion_matrix(y_true, logits, num_classes, ignore_label=255):
    """(num_classes, num_classes) int32 pixel counts of one batch; rows true, columns predicted.

    Each pixel adds 1 to bin `true * K + pred` (a segment sum over the pixels), so time and
    memory grow with the pixels, not pixels x K as a product of two one-hot tensors does
    (1.26 GB each at batch 8, 512x512, K=150). Ignored pixels, and labels outside
    [0, K), go to one extra bin that is dropped.
    """
    y_true = ops.cast(y_true, "int32")
    if len(y_true.shape) == 4:
        y_true = ops.squeeze(y_true, -1)
    bins = num_classes * num_classes
    counted = ops.logical_and(ops.not_equal(y_true, ignore_label),
                              ops.logical_and(y_true >= 0, y_true < num_classes))
    index = ops.reshape(ops.where(counted, y_true * num_classes + predicted_classes(logits), bins),
                        (-1,))
    counts = ops.segment_sum(ops.ones_like(index), index, num_segments=bins + 1)
    return ops.reshape(counts[:bins], (num_classes, num_classes))


def scores(cm):
    """Confusion matrix -> dict of per-class Dice/IoU, their means, pixel accuracy."""
    cm = ops.cast(cm, "float32")
    tp = ops.diagonal(cm)
    fp = ops.sum(cm, axis=0) - tp
    fn = ops.sum(cm, axis=1) - tp
    empty = ops.equal(tp + fp + fn, 0)
    dice = ops.where(empty, 1.0, 2 * tp / ops.maximum(2 * tp + fp + fn, 1e-12))
    iou = ops.where(empty, 1.0, tp / ops.maximum(tp + fp + fn, 1e-12))
    return {"per_class_dice": dice, "dice": ops.mean(dice), "per_class_iou": iou,
            "mean_iou": ops.mean(iou),
            "pixel_accuracy": ops.sum(tp) / ops.maximum(ops.sum(cm), 1e-12)}


class _ConfusionMetric(keras.metrics.Metric):
    score = None

    def __init__(self, num_classes, ignore_label=255, name=None, dtype=None):
        super().__init__(name=name or self.score, dtype=dtype)
        self.num_classes, self.ignore_label = num_classes, ignore_label
        # int64: float32 counts stop being exact past 2**24 per cell (64 images at 512x512)
        self.matrix = self.add_variable(shape=(num_classes, num_classes), initializer="zeros",
                                        dtype="int64", name="confusion_matrix",
                                        aggregation="sum")

    def update_state(self, y_true, y_pred, sample_weight=None):
        self.matrix.assign_add(ops.cast(confusion_matrix(y_true, y_pred, self.num_classes,
                                                         self.ignore_label), "int64"))

    def result(self):
        return scores(self.matrix)[self.score]

    def reset_state(self):
        self.matrix.assign(ops.zeros_like(self.matrix))

    def get_config(self):
        return {"num_classes": self.num_classes, "ignore_label": self.ignore_label,
                "name": self.name}


@keras.saving.register_keras_serializable(package="segflow")
class DiceCoefficient(_ConfusionMetric):
    score = "dice"


@keras.saving.register_keras_serializable(package="segflow")
class MeanIoU(_ConfusionMetric):
    score = "mean_iou"


@keras.saving.register_keras_serializable(package="segflow")
class PixelAccuracy(_ConfusionMetric):
    score = "pixel_accuracy"
