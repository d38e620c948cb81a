"""SegFlow models, losses and metrics, written with keras.* only (any Keras 3 backend).

Models output float32 LOGITS: 1 channel for binary tasks (sigmoid), num_classes
channels otherwise (softmax). Losses and metrics take logits.
"""
from segmodels import deeplab, encoders, fcn, losses, metrics, unet  # noqa: F401  (segmodels.metrics for users)

MODELS = {
    "unet": unet.build_unet,
    "fcn32s": fcn.build_fcn32s,
    "fcn16s": fcn.build_fcn16s,
    "fcn8s": fcn.build_fcn8s,
    "deeplabv3plus": deeplab.build_deeplabv3plus,
}

# name -> the builder options it takes; train.py and tools/benchmark_train.py pick a
# model's options from their flags of the same names through model_options()
MODEL_OPTIONS = {
    "unet": ("base_filters", "depth", "batch_norm", "dropout", "encoder", "encoder_weights"),
    "fcn32s": ("fc_filters", "dropout", "backbone_weights"),
    "fcn16s": ("fc_filters", "dropout", "backbone_weights"),
    "fcn8s": ("fc_filters", "dropout", "backbone_weights"),
    "deeplabv3plus": ("encoder", "encoder_weights", "aspp_filters"),
}

# models built on an --encoder (required by deeplabv3plus, optional for unet)
ENCODER_MODELS = ("unet", "deeplabv3plus")
# the encoder UNet's decoder width at full resolution when --base_filters is not given
# (segmentation_models' 16: 256 channels at stride 16; the classic UNet's 64 made it 1024)
ENCODER_UNET_BASE_FILTERS = 16

# --encoder choices: the classic UNet, or one on a keras.applications encoder
ENCODER_CHOICES = ("none",) + tuple(sorted(encoders.ENCODERS))

# name -> loss(y_true, logits, ignore_label, class_weights) -> scalar
LOSSES = losses.FUNCTIONS


def model_options(name, values):
    """The options of model `name` found in `values` (a dict of flag values)."""
    if name not in MODEL_OPTIONS:
        raise ValueError(f"--model={name!r}: expected one of {sorted(MODELS)}")
    return {key: values[key] for key in MODEL_OPTIONS[name] if key in values}


def size_multiple(name, options):
    """What each side of the model's input must be a multiple of (its total stride)."""
    if name == "deeplabv3plus":
        return deeplab.SIZE_MULTIPLE
    if name == "unet" and options.get("encoder", "none") == "none":
        return 2 ** options.get("depth", 4)  # the classic UNet's own check: unet.build_unet
    return encoders.SIZE_MULTIPLE if name == "unet" else fcn.SIZE_MULTIPLE


def build_model(name, input_shape, num_classes, **options):
    """input_shape (height, width, channels); height and width None: any multiple of
    size_multiple() (fully convolutional: every model but deeplabv3plus)."""
    if name not in MODELS:
        raise ValueError(f"--model={name!r}: expected one of {sorted(MODELS)}")
    if num_classes < 2:
        raise ValueError(f"num_classes={num_classes}: need at least 2 (background + one class)")
    return MODELS[name](tuple(input_shape), num_classes, **options)


def build_loss(name, ignore_label=255, class_weights=None):
    if name not in LOSSES:
        raise ValueError(f"--loss={name!r}: expected one of {sorted(LOSSES)}")
    return losses.SegmentationLoss(name, ignore_label, class_weights)
