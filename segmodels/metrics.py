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
    return ops.cast(ops.argmax(logits, axis=-1), "int32")


def confusion_matrix(y_true, logits, num_classes, ignore_label=255):
    y_true = ops.cast(y_true, "int32")
    if len(y_true.shape) == 4:
        y_true = ops.squeeze(y_true, -1)
    valid = ops.reshape(ops.cast(ops.not_equal(y_true, ignore_label), "float32"), (-1, 1))
    labels = ops.reshape(ops.where(ops.not_equal(y_true, ignore_label), y_true, 0), (-1,))
    preds = ops.reshape(predicted_classes(logits), (-1,))
    true_onehot = ops.one_hot(labels, num_classes, dtype="float32") * valid
    pred_onehot = ops.one_hot(preds, num_classes, dtype="float32")
    return ops.matmul(ops.transpose(true_onehot), pred_onehot)


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
        self.matrix = self.add_variable(shape=(num_classes, num_classes), initializer="zeros",
                                        dtype="float32", name="confusion_matrix",
                                        aggregation="sum")

    def update_state(self, y_true, y_pred, sample_weight=None):
        self.matrix.assign_add(confusion_matrix(y_true, y_pred, self.num_classes,
                                                self.ignore_label))

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


@keras.saving.register_keras_serializable(package="segflow")
class PerClassIoU(_ConfusionMetric):
    score = "per_class_iou"


@keras.saving.register_keras_serializable(package="segflow")
class PerClassDice(_ConfusionMetric):
    score = "per_class_dice"
