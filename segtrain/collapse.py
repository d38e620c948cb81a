"""A run that learns nothing says so: "high accuracy, bad masks" caught at the epoch it starts.

Two signs, read off what the loop has anyway: one column of the epoch's training
confusion matrix holds every count (one class predicted for every pixel), or the
training loss has not moved for `FLAT_EPOCHS` epochs.
"""
import numpy as np

FLAT_EPOCHS = 2
FLAT_TOLERANCE = 1e-3  # relative change of the epoch loss that counts as "not moved"

ADVICE = ("Likely causes: a learning rate too high for the model (try a lower "
          "--learning_rate), no normalisation (--batch_norm), or rare classes drowned by the "
          "background (--loss=dice_ce or --class_weights=manifest)")


def single_predicted_class(cm):
    """The class predicted for every counted pixel, or None."""
    cm = np.asarray(cm)
    columns = np.flatnonzero(cm.sum(axis=0))
    return int(columns[0]) if cm.sum() > 0 and len(columns) == 1 else None


def loss_is_flat(losses, epochs=FLAT_EPOCHS, tolerance=FLAT_TOLERANCE):
    """True when each of the last `epochs` epoch losses is within `tolerance` (relative) of
    the one `epochs` before the last."""
    if len(losses) < epochs + 1:
        return False
    reference = losses[-epochs - 1]
    scale = max(abs(reference), 1e-12)
    return all(abs(value - reference) <= tolerance * scale for value in losses[-epochs:])


def diagnose(epoch, cm, losses, class_names=None):
    """One warning sentence for the epoch (0-based) that ended, or None when all is well."""
    signs = []
    only = single_predicted_class(cm)
    if only is not None:
        name = class_names[only] if class_names and only < len(class_names) else f"class {only}"
        signs.append(f"the model predicted {name} for every training pixel")
    if loss_is_flat(losses):
        signs.append(f"the training loss has not moved for {FLAT_EPOCHS} epochs "
                     f"({losses[-FLAT_EPOCHS - 1]:.4f} -> {losses[-1]:.4f})")
    if not signs:
        return None
    return (f"epoch {epoch + 1}: {' and '.join(signs)}; the run has likely collapsed. {ADVICE}")
