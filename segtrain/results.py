"""RUN_DIR/metrics.json: what a finished run reports. train.py writes it; tools/sweep.py and
anyone comparing runs read it through here, so the keys are named in one place.

Keys: the test split's scores (dice = mean of per_class_dice incl. background,
per_class_dice, mean_iou, per_class_iou, pixel_accuracy, loss, confusion_matrix),
stopped_epoch (None unless early stopping fired), epochs_run, best_epoch (1-based),
best_<monitor>, class_names, resumed_from_epoch, and collapse (the warning text of a run
that stopped learning, else None).
"""
import math
import os

from segdata import atomic

FILENAME = "metrics.json"
SCORE_KEYS = ("dice", "per_class_dice", "mean_iou", "per_class_iou", "pixel_accuracy", "loss",
              "confusion_matrix")


def run_result(test_scores, backup, monitor, class_names, resumed_from_epoch):
    """The metrics.json dict from the test scores and the backup's record of the run."""
    epochs_run = int(backup.epoch.numpy())
    best_epoch = int(backup.best_epoch.numpy())
    best = float(backup.best.numpy())
    result = {key: test_scores[key] for key in SCORE_KEYS}
    result.update({
        # the backup knows of an early stop even when it happened before a resume
        "stopped_epoch": epochs_run if backup.finished else None,
        "epochs_run": epochs_run,
        "best_epoch": best_epoch + 1 if best_epoch >= 0 else None,
        "best_" + monitor: None if math.isnan(best) else best,
        "class_names": class_names,
        "resumed_from_epoch": resumed_from_epoch,
        "collapse": backup.collapse,
    })
    return result


def write(run_dir, result):
    """Atomically: a reader never sees half a file."""
    return atomic.write_json(os.path.join(run_dir, FILENAME), result, indent=2)


def read(run_dir):
    """The run's metrics dict, or None when the run has not finished."""
    return atomic.read_json(os.path.join(run_dir, FILENAME))
