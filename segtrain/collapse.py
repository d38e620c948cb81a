"""A run that learns nothing says so: "high accuracy, bad masks" caught at the epoch it starts.

Two signs, read off what the loop has anyway, each over the last `EPOCHS` epochs: one
column of each epoch's training confusion matrix holds every count (the same class
predicted for every pixel), or the training loss has not moved. One epoch of a single
class is no sign: on imbalanced data a healthy model predicts the majority class
everywhere in its first epoch (seen on the synthetic set: runs that reached Dice 0.95).
"""
import numpy as np

EPOCHS = 2
FLAT_TOLERANCE = 1e-4  # relative; batch composition alone moves an epoch loss ~1e-3

ADVICE = ("Likely causes: a learning rate too high for the model (try a lower "
          "--learning_rate), no normalisation (--batch_norm), or rare classes drowned by the "
          "background (--loss=dice_ce or --class_weights=manifest)")


def single_predicted_class(cm):
    """The class predicted for every counted pixel, or None."""
    cm = np.asarray(cm)
    columns = np.flatnonzero(cm.sum(axis=0))
    return int(columns[0]) if cm.sum() > 0 and len(columns) == 1 else None


def loss_is_flat(losses, epochs=EPOCHS, tolerance=FLAT_TOLERANCE):
    """True when each of the last `epochs` epoch losses is within `tolerance` (relative) of
    the one `epochs` before the last."""
    if len(losses) < epochs + 1:
        return False
    reference = losses[-epochs - 1]
    scale = max(abs(reference), 1e-12)
    return all(abs(value - reference) <= tolerance * scale for value in losses[-epochs:])


def diagnose(epoch, single_classes, losses, class_names=None):
    """One warning sentence for the epoch (0-based) that ended, or None when all is well.

    single_classes: single_predicted_class() of each epoch so far (None: several classes);
    losses: each epoch's training loss."""
    signs = []
    recent = single_classes[-EPOCHS:]
    if len(recent) == EPOCHS and recent[0] is not None and len(set(recent)) == 1:
        only = recent[0]
        name = class_names[only] if class_names and only < len(class_names) else f"class {only}"
        signs.append(f"the model predicted {name} for every training pixel for {EPOCHS} epochs")
    if loss_is_flat(losses):
        signs.append(f"the training loss has not moved for {EPOCHS} epochs "
                     f"({losses[-EPOCHS - 1]:.4f} -> {losses[-1]:.4f})")
    if not signs:
        return None
    return (f"epoch {epoch + 1}: {' and '.join(signs)}; the run has likely collapsed. {ADVICE}")
