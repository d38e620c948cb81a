"""Optimizers and learning-rate schedules from flag values."""
import keras

OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop")
SCHEDULES = ("constant", "cosine", "polynomial")


@keras.saving.register_keras_serializable(package="segflow")
class Warmup(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up from 0 to `peak` over `warmup_steps`, then `after` (a schedule or a
    float) counted from the end of the warm-up."""

    def __init__(self, after, warmup_steps, peak):
        self.after, self.warmup_steps, self.peak = after, int(warmup_steps), float(peak)

    def __call__(self, step):
        step = keras.ops.cast(step, "float32")
        later = (self.after(step - self.warmup_steps) if callable(self.after)
                 else keras.ops.convert_to_tensor(self.after, "float32"))
        warm = self.peak * (step + 1) / self.warmup_steps
        return keras.ops.where(step < self.warmup_steps, warm, later)

    def get_config(self):
        after = (keras.optimizers.schedules.serialize(self.after) if callable(self.after)
                 else self.after)
        return {"after": after, "warmup_steps": self.warmup_steps, "peak": self.peak}

    @classmethod
    def from_config(cls, config):
        after = config["after"]
        if isinstance(after, dict):
            after = keras.optimizers.schedules.deserialize(after)
        return cls(after, config["warmup_steps"], config["peak"])


def learning_rate(peak, schedule, total_steps, warmup_steps=0):
    decay_steps = max(1, total_steps - warmup_steps)
    if schedule == "cosine":
        rate = keras.optimizers.schedules.CosineDecay(peak, decay_steps)
    elif schedule == "polynomial":
        rate = keras.optimizers.schedules.PolynomialDecay(peak, decay_steps, peak * 0.01, power=0.9)
    elif schedule == "constant":
        rate = peak
    else:
        raise ValueError(f"--lr_schedule={schedule!r}: expected one of {SCHEDULES}")
    return Warmup(rate, warmup_steps, peak) if warmup_steps else rate


def build_optimizer(name, rate, weight_decay=1e-4, loss_scale=False):
    """loss_scale: wrap in Keras's LossScaleOptimizer (dynamic loss scaling, for float16)."""
    if name == "adam":
        optimizer = keras.optimizers.Adam(rate)
    elif name == "adamw":
        optimizer = keras.optimizers.AdamW(rate, weight_decay=weight_decay)
    elif name == "sgd":
        optimizer = keras.optimizers.SGD(rate, momentum=0.9, nesterov=True)
    elif name == "rmsprop":
        optimizer = keras.optimizers.RMSprop(rate)
    else:
        raise ValueError(f"--optimizer={name!r}: expected one of {OPTIMIZERS}")
    return keras.optimizers.LossScaleOptimizer(optimizer) if loss_scale else optimizer
