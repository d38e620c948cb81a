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


def build_optimizer(name, rate, weight_decay=1e-4, loss_scale=False, fresh_start_variables=()):
    """loss_scale: wrap in Keras's LossScaleOptimizer (dynamic loss scaling, for float16).
    fresh_start_variables: variables whose optimizer state starts at their first update
    (an encoder frozen for the first epochs; see FreshStartOptimizer)."""
    optimizer = _single_optimizer(name, rate, weight_decay)
    if fresh_start_variables:
        # the second follows the first's learning rate at the first's step (evaluated when it
        # applies, before the first does); given at construction: replacing a built
        # optimizer's learning-rate variable leaves a list checkpoints refuse to save
        main = optimizer
        late = _single_optimizer(name, lambda: main.learning_rate, weight_decay)
        optimizer = FreshStartOptimizer(main, late, fresh_start_variables)
    return keras.optimizers.LossScaleOptimizer(optimizer) if loss_scale else optimizer


def _single_optimizer(name, rate, weight_decay):
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
    return optimizer


class FreshStartOptimizer(keras.optimizers.Optimizer):
    """One optimizer kind, two states: `main` updates every variable but `late_variables`,
    `late` (a second instance of the same kind) updates those, and counts its own steps.

    For an encoder frozen for the first epochs: its Adam/RMSprop state starts at its first
    update, with the bias correction of step 1. One optimizer built for every variable
    counts every step, so moments that start at zero after N steps are never corrected and
    the first updates of the unfrozen encoder are ~3x the learning rate (a Keras Adam
    stepped 1000 times, then applied to a new variable). `late` follows `main`'s learning
    rate (schedule) at `main`'s step (build_optimizer gives it that learning rate), so both
    groups see one schedule.
    """

    def __init__(self, main, late, late_variables, name="fresh_start", **kwargs):
        super().__init__(learning_rate=0.0, name=name, **kwargs)
        self.main, self.late = main, late
        self._late_ids = {id(v) for v in late_variables}

    def _split(self, values, variables):
        main, late = ([], []), ([], [])
        for value, variable in zip(values, variables):
            group = late if id(variable) in self._late_ids else main
            group[0].append(value)
            group[1].append(variable)
        return main, late

    def build(self, var_list):
        (_, main_vars), (_, late_vars) = self._split(var_list, var_list)
        self.main.build(main_vars)
        self.late.build(late_vars)
        super().build(var_list)

    def apply(self, grads, trainable_variables=None):
        (main_grads, main_vars), (late_grads, late_vars) = self._split(grads, trainable_variables)
        if late_vars:
            self.late.apply(late_grads, late_vars)
        if main_vars:
            self.main.apply(main_grads, main_vars)

    @property
    def variables(self):
        return self._variables + self.main.variables + self.late.variables

    @property
    def iterations(self):
        return self.main.iterations

    @property
    def learning_rate(self):
        return self.main.learning_rate

    @learning_rate.setter
    def learning_rate(self, value):
        if hasattr(self, "main"):  # the base class sets it once before `main` exists
            self.main.learning_rate = value

    def finalize_variable_values(self, var_list):
        (_, main_vars), (_, late_vars) = self._split(var_list, var_list)
        self.main.finalize_variable_values(main_vars)
        self.late.finalize_variable_values(late_vars)
