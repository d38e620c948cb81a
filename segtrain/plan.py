"""A training plan: flag values derived from the dataset fingerprint, the machine and a
budget, each with the reason it was chosen (nnU-Net's idea, for train.py's flags).

    plan = make_plan(manifest, Machine.detect(replicas), given)
    schedule(plan, manifest, Budget.parse("2000steps"))

`given`: the flags the user set; they always win, and the plan records which of its
values they replaced. Decisions are plain rules on measured facts (frame sizes, class
frequencies, object areas, frames, memory); BENCHMARKS.md §13 measures them. Pure Python:
no TensorFlow (the step timing a minutes budget needs lives in segtrain.steptime).
"""
import dataclasses
import math
import os
import re

from segdata import atomic

FILENAME = "plan.json"
DEFAULT_BUDGET = "2000steps"
BUDGET_UNITS = ("steps", "min", "epochs")

# Pixels a training step carries on a CPU: 8 x 256^2, where the membrane runs (BENCHMARKS
# §12.1) took ~0.5 s a step in mixed_bfloat16 at width 16.
CPU_STEP_PIXELS = 2 ** 19
# Largest side trained whole, and the window side for larger or mixed-size frames.
WHOLE_FRAME_SIDE = {"cpu": 512, "gpu": 1024}
WINDOW_SIDE = {"cpu": 256, "gpu": 512}
MAX_DEPTH = {"cpu": 4, "gpu": 5}
WIDTH = {"cpu": 16, "gpu": 32}
# Activation + gradient memory a pixel of a classic UNet of width w needs in training,
# ~72 w bytes (about 12 w values a pixel over all stages, kept and differentiated, 2 bytes
# each in bfloat16, x3): an estimate, not measured on a GPU (TensorFlow has none here).
BYTES_PER_PIXEL_PER_FILTER = 72
MAX_BATCH_PER_REPLICA = 16
# Validation forward passes may cost at most this share of the training work.
VALIDATION_SHARE = 0.1
# Checkpoints and the backup written at each epoch end (~0.4 s for a width-16 UNet on 2
# cores, more for larger models): an estimate for a minutes budget.
EPOCH_END_SECONDS = 1.0
FEW_FRAMES = 100           # fewer training frames than this: elastic deformation
RARE = 0.5                 # a class in fewer than this share of frames: windows centred on it
IMBALANCED = 0.05          # a class under this pixel share: class weights


class PlanError(ValueError):
    pass


@dataclasses.dataclass(frozen=True)
class Machine:
    accelerator: str               # "cpu" or "gpu"
    replicas: int
    host_memory_gib: float
    gpu_memory_gib: float = 0.0    # each GPU's
    native_bfloat16: bool = False  # a CPU's (GPUs: --mixed_precision=auto decides)

    @classmethod
    def detect(cls, replicas):
        import tensorflow as tf

        from segtrain import distribute
        host = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30, 1)
        if tf.config.list_physical_devices("GPU"):
            return cls("gpu", replicas, host, _gpu_memory_gib())
        return cls("cpu", replicas, host,
                   native_bfloat16=bool(distribute.cpu_has_native_bfloat16()))


def _gpu_memory_gib():
    """The first GPU's memory from nvidia-smi; 16 GiB (the smallest current training GPU)
    when it cannot say. TensorFlow reports use, not capacity."""
    import subprocess
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.total",
                              "--format=csv,noheader,nounits"], capture_output=True, text=True,
                             timeout=10).stdout
        return round(float(out.split()[0]) / 1024, 1)
    except (OSError, ValueError, IndexError, subprocess.SubprocessError):
        return 16.0


@dataclasses.dataclass(frozen=True)
class Budget:
    amount: float
    unit: str

    @classmethod
    def parse(cls, text):
        match = re.fullmatch(rf"\s*(\d+(?:\.\d+)?)\s*({'|'.join(BUDGET_UNITS)})\s*", str(text))
        if not match or float(match.group(1)) <= 0:
            raise PlanError(f"--budget={text!r}: expected a positive amount of steps, minutes "
                            "or epochs, e.g. 2000steps, 10min or 50epochs")
        return cls(float(match.group(1)), match.group(2))

    def __str__(self):
        amount = int(self.amount) if self.amount == int(self.amount) else self.amount
        return f"{amount}{self.unit}"


@dataclasses.dataclass
class Plan:
    values: dict              # flag name -> planned value
    reasons: dict             # flag name -> why
    overridden: dict = dataclasses.field(default_factory=dict)  # name -> (planned, given)
    facts: dict = dataclasses.field(default_factory=dict)       # what the rules read
    given: dict = dataclasses.field(default_factory=dict)       # the user's flags

    def set(self, name, value, why):
        self.values[name] = value
        self.reasons[name] = why

    def to_json(self, budget, machine):
        return {"budget": str(budget), "machine": dataclasses.asdict(machine),
                "facts": self.facts,
                "values": {name: {"value": value, "why": self.reasons[name]}
                           for name, value in self.values.items()},
                "overridden": {name: {"planned": planned, "given": given}
                               for name, (planned, given) in self.overridden.items()}}

    def summary_lines(self):
        """A few lines for the start of the log; plan.json has every reason."""
        groups = (("input", ("image_size", "resize", "train_crop", "data_scale", "aug_scale",
                             "crop_foreground", "batch_size", "cache", "mixed_precision")),
                  ("model", ("base_filters", "depth", "batch_norm", "dropout")),
                  ("loss", ("loss", "class_weights", "monitor", "patience")),
                  ("optimizer", ("optimizer", "learning_rate", "lr_schedule", "warmup_epochs",
                                 "epochs", "steps_per_epoch")),
                  ("augmentation", ("aug_hflip", "aug_vflip", "aug_rotation",
                                    "aug_elastic_alpha", "aug_fill_mode", "aug_brightness",
                                    "aug_contrast")))
        lines = []
        for title, names in groups:
            shown = [f"{name}={_flag_text(self.values[name])}" for name in names
                     if name in self.values]
            if shown:
                lines.append(f"  {title}: " + " ".join(shown))
        if self.overridden:
            lines.append("  overridden by flags: " + ", ".join(
                f"--{name}={_flag_text(given)} (plan: {_flag_text(planned)})"
                for name, (planned, given) in self.overridden.items()))
        return lines


def _flag_text(value):
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)


def _multiple_below(value, multiple):
    return max(multiple, int(value) // multiple * multiple)


def _multiple_above(value, multiple):
    return -(-int(value) // multiple) * multiple


def _pixels(size):
    return size[0] * size[1]


def make_plan(manifest, machine, given=None):
    """The plan for the records `manifest` on `machine`, without the training length
    (`schedule` adds it from the budget; a minutes budget needs a timed step first).
    `given`: {flag name: value} of flags the user set."""
    given = dict(given or {})
    fingerprint = manifest.get("fingerprint")
    if not fingerprint or not fingerprint.get("median_size"):
        raise PlanError("--plan=auto: the manifest has no dataset fingerprint (records from "
                        "an older prepare_dataset.py); re-run tools/prepare_dataset.py, or "
                        "pass --plan=none and set the flags")
    kind = machine.accelerator
    plan = Plan({}, {})
    num_classes = manifest["num_classes"]
    train_frames = manifest["splits"]["train"]["count"]
    frequency = fingerprint["class_frequency"]
    frames_with = fingerprint["frames_with_class"]
    frames = max(1, fingerprint["frames"])
    foreground = range(1, num_classes)
    rarest_share = min(frames_with[c] / frames for c in foreground)
    rare = rarest_share < RARE
    smallest_frequency = min(frequency[c] for c in foreground)
    areas = [fingerprint["median_object_area"][c] for c in foreground
             if fingerprint["median_object_area"][c]]
    sizes = [(h, w) for h, w, _ in fingerprint["sizes"]]
    largest = (max(h for h, _ in sizes), max(w for _, w in sizes))
    median = tuple(fingerprint["median_size"])
    plan.facts = {"frames": frames, "train_frames": train_frames,
                  "distinct_sizes": fingerprint["distinct_sizes"], "median_size": list(median),
                  "largest_size": list(largest), "channels": fingerprint["channels"],
                  "bits": fingerprint["bits"], "class_frequency": frequency,
                  "frames_with_class_share": [round(n / frames, 3) for n in frames_with],
                  "smallest_median_object_area": min(areas) if areas else None}
    classic_unet = given.get("model", "unet") == "unet" and given.get("encoder", "none") == "none"

    # -- input: whole frames when they fit, windows at native scale otherwise ------------
    one_size = fingerprint["distinct_sizes"] == 1
    side_cap = WHOLE_FRAME_SIDE[kind]
    frames_fit = one_size and max(median) <= side_cap
    if "train_crop" in given:
        mode = "windows"
    elif "image_size" in given or "resize" in given:
        mode = "whole"
    else:
        mode = "whole" if frames_fit and not rare else "windows"
    if mode == "whole":
        planned = median
        target = _parse_size(given["image_size"]) if "image_size" in given else planned
    else:
        # frames that would fit whole are cut in half-side windows when a class is rare:
        # a third of them centred on foreground see the rare class more often
        planned = tuple(min(WINDOW_SIDE[kind], s // 2 if rare and frames_fit else s)
                        for s in median)
        target = _parse_size(given["train_crop"], "train_crop") if "train_crop" in given \
            else planned
    depth = max(2, min(MAX_DEPTH[kind], int(math.log2(max(32, min(target)) / 8))))
    if classic_unet:
        plan.set("depth", depth, f"stages until the bottom map is >= 8 px on the "
                 f"{min(target)} px input (at most {MAX_DEPTH[kind]} on a {kind.upper()})")
        plan.set("base_filters", WIDTH[kind], f"width for a {kind.upper()}: the membrane "
                 "runs found a width-16 UNet's accuracy equal to width 32's at 256 px "
                 "(BENCHMARKS §4)" if kind == "cpu" else "width for a GPU's throughput")
        plan.set("batch_norm", kind == "gpu", "BatchNorm has no bfloat16 fast path on CPUs "
                 "(2.5x slower a step, §4); Adam with warm-up trains the plain UNet"
                 if kind == "cpu" else "batch statistics steady the large GPU batches")
        plan.set("dropout", 0.0, "augmentation regularises; dropout 0.5 at the bottom slowed "
                 "the first real run (issue 24)")
    multiple = 2 ** given.get("depth", depth) if classic_unet else 32
    if mode == "whole":
        size = tuple(_multiple_above(s, multiple) for s in target)
        rounded = tuple(_multiple_above(s, multiple) for s in planned)
        exact = rounded == tuple(planned)
        plan.set("image_size", f"{rounded[0]},{rounded[1]}",
                 f"the frames are all {median[0]}x{median[1]}, small enough to train whole"
                 + ("" if exact else f" (padded to a multiple of {multiple})"))
        plan.set("resize", "stretch" if exact else "pad",
                 "no resizing: the model input is the frame" if exact else
                 "pad, not stretch: keeps the frames' own pixels")
    else:
        size = tuple(_multiple_below(s, multiple) for s in target)
        rounded = tuple(_multiple_below(s, multiple) for s in planned)
        if not one_size:
            why_windows = f"{fingerprint['distinct_sizes']} frame sizes"
        elif max(median) > side_cap:
            why_windows = (f"{median[0]}x{median[1]} frames, larger than the {side_cap} px "
                           f"trained whole on a {kind.upper()}")
        elif rare:
            why_windows = (f"a class is in only {rarest_share:.0%} of the frames: half-frame "
                           "windows, a third centred on foreground, beat whole frames on such "
                           "data (BENCHMARKS §13.2)")
        else:
            why_windows = "--train_crop given"
        plan.set("train_crop", f"{rounded[0]},{rounded[1]}", f"{why_windows}: windows at "
                 "native scale keep small objects (BENCHMARKS §12.4)")
        plan.set("data_scale", 1.0, "native scale: shrinking loses small objects"
                 + (f" (median object area down to {min(areas):.0f} px)" if areas else ""))
        plan.set("aug_scale", ["0.8", "1.25"], "scale jitter around native scale")
        plan.set("crop_foreground", 0.33 if rare else 0.0,
                 f"a class is in only {rarest_share:.0%} of frames: a third of the windows "
                 "centre on a foreground pixel (nnU-Net's oversampling)" if rare
                 else "every class is in most frames: uniform windows")
    batch = _batch_size(plan, machine, size, given)

    # -- loss, monitor ------------------------------------------------------------------
    plan.set("loss", "dice_ce", "Dice for the overlap the scores measure, cross-entropy for "
             "steady gradients (nnU-Net's loss)")
    imbalanced = smallest_frequency < IMBALANCED
    plan.set("class_weights", "manifest_sqrt" if imbalanced else "none",
             f"a class has {smallest_frequency:.2%} of the pixels: square roots of the "
             "median-frequency weights, or the rarest classes are never predicted (full "
             "weights over-predict them; BENCHMARKS §13)" if imbalanced else
             "no class is rare enough to need weights")
    plan.set("monitor", "val_mean_iou", "the score, not a loss that depends on the batch")
    plan.set("mode", "max", "mean IoU: higher is better")
    plan.set("min_delta", 0.0, "any improvement keeps a new best checkpoint")

    # -- optimizer --------------------------------------------------------------------
    plan.set("optimizer", "adam", "Adam: the setting every benchmark here used")
    plan.set("learning_rate", 2e-3, "peak of the cosine schedule; recipes/membrane_448.flags' "
             "value, measured for the plan (BENCHMARKS §13.1)")
    plan.set("lr_schedule", "cosine", "decays to zero at the end of the budget")
    if kind == "cpu":
        plan.set("mixed_precision", "mixed_bfloat16" if machine.native_bfloat16 else "float32",
                 "this CPU has bfloat16 hardware: 2.1x float32's speed (§4)"
                 if machine.native_bfloat16 else "no bfloat16 hardware on this CPU: "
                 "emulated bfloat16 is slower than float32 (§10)")

    # -- augmentation -----------------------------------------------------------------
    grey = fingerprint["channels"] == 1
    plan.set("aug_hflip", True, "mirror images are as likely as the originals")
    plan.set("aug_vflip", grey, "grey frames (microscopy, medical): no up or down" if grey
             else "colour photographs have an up")
    plan.set("aug_rotation", 20.0 if grey else 10.0, "small rotations")
    plan.set("aug_fill_mode", "reflect", "warped-in borders look like the frame")
    few = train_frames < FEW_FRAMES
    alpha = round(8 * min(size) / 256, 1) if few else 0.0
    plan.set("aug_elastic_alpha", alpha, f"only {train_frames} training frames: elastic "
             "deformation (UNet paper; 8 px at 256, the membrane recipes)" if few else
             f"{train_frames} training frames: enough shapes without elastic deformation")
    plan.set("aug_elastic_grid", 3, "a 3x3 grid of displacements")
    if not grey:
        plan.set("aug_brightness", 0.1, "lighting varies between photographs")
        plan.set("aug_contrast", 0.1, "exposure varies between photographs")
    cache_bytes = (sum(h * w * n for h, w, n in fingerprint["sizes"])
                   * (fingerprint["channels"] + 1) * train_frames / frames
                   * (2 if fingerprint["bits"] > 8 else 1))
    fits = cache_bytes < 0.25 * machine.host_memory_gib * 2 ** 30
    plan.set("cache", bool(fits), f"the decoded training split ({cache_bytes / 2 ** 20:.0f} MiB) "
             + ("fits in a quarter of this machine's memory" if fits else
                "does not fit in a quarter of this machine's memory"))
    plan.facts.update(batch=batch, input=list(size), input_mode=mode)
    plan.given = given
    _record_overrides(plan)
    return plan


def _parse_size(text, flag="image_size"):
    from segtrain import cli
    return cli.parse_image_size(text, flag)


def _batch_size(plan, machine, size, given):
    replicas = machine.replicas
    if machine.accelerator == "cpu":
        per_step = max(2, min(MAX_BATCH_PER_REPLICA * replicas,
                              round(CPU_STEP_PIXELS / _pixels(size))))
        batch = _multiple_above(per_step, replicas)
        why = (f"~{CPU_STEP_PIXELS / 2 ** 20:.1f} Mpx a step on a CPU ({batch} x "
               f"{size[0]}x{size[1]})")
    else:
        width = plan.values.get("base_filters", WIDTH["gpu"])
        usable = 0.5 * machine.gpu_memory_gib * 2 ** 30
        per_replica = int(usable // (BYTES_PER_PIXEL_PER_FILTER * width * _pixels(size)))
        per_replica = max(2, min(MAX_BATCH_PER_REPLICA, per_replica))
        batch = per_replica * replicas
        why = (f"{per_replica} a GPU x {replicas}: half of {machine.gpu_memory_gib:g} GiB at "
               f"~{BYTES_PER_PIXEL_PER_FILTER * width} bytes a pixel (estimated, not measured)")
    plan.set("batch_size", batch, why)
    return int(given.get("batch_size", batch))


def schedule(plan, manifest, budget, step_seconds=None, seconds_left=None):
    """Completes `plan` with the training length: `budget` in steps, epochs of the training
    split, or minutes (`seconds_left` of it after start-up, at `step_seconds` a step).
    An "epoch" of the loop is a validation point: as many as VALIDATION_SHARE allows."""
    batch = plan.facts["batch"]
    train = manifest["splits"]["train"]["count"]
    size = plan.facts["input"]
    step_pixels = batch * _pixels(size)
    val_pixels = _val_pixels(manifest, plan.facts)
    # a validation's cost in training steps: its forward pass is ~1/3 of a training step's
    # work per pixel, and (when a step is timed) each epoch end writes checkpoints
    per_validation = val_pixels / step_pixels / 3 + (
        EPOCH_END_SECONDS / step_seconds if step_seconds else 0)
    if budget.unit == "steps":
        total = int(budget.amount)
        why = f"--budget={budget}"
    elif budget.unit == "epochs":
        per_pass = max(1, train // batch)
        total = int(budget.amount * per_pass)
        why = f"--budget={budget}: {per_pass} steps a pass over {train} training frames"
    else:
        validations = _validations(seconds_left / step_seconds, per_validation)
        eval_seconds = validations * per_validation * step_seconds
        total = int((seconds_left - eval_seconds) / step_seconds)
        if total < validations:
            raise PlanError(f"--budget={budget}: {seconds_left:.0f} s are left after start-up "
                            f"and a step takes {step_seconds:.2f} s; give a larger budget")
        why = (f"--budget={budget}: {seconds_left:.0f} s left after start-up at a measured "
               f"{step_seconds:.3f} s a step, less ~{eval_seconds:.0f} s of validation and "
               "checkpoints")
    validations = _validations(total, per_validation)
    steps = -(-total // validations)
    epochs = -(-total // steps)
    plan.set("steps_per_epoch", steps, f"{total} steps in all ({why}), validated "
             f"{epochs} times (validation at most {VALIDATION_SHARE:.0%} of the training work)")
    plan.set("epochs", epochs, "to the end of the budget")
    plan.set("warmup_epochs", round(max(1, 0.05 * total) / steps, 3), "5% of the steps warm "
             "the learning rate up")
    plan.set("patience", epochs, "no early stop: the schedule runs to its end and the best "
             "checkpoint is kept")
    plan.facts.update(total_steps=total, training_pixels=total * step_pixels)
    _record_overrides(plan)
    return plan


def _validations(total_steps, steps_per_validation):
    """Validation points: their cost (in training steps) at most VALIDATION_SHARE of the
    budget, between 5 and 50."""
    share = int(VALIDATION_SHARE * total_steps / max(steps_per_validation, 1e-9))
    return int(max(1, min(total_steps, 50, max(5, share))))


def _val_pixels(manifest, facts):
    split = manifest["splits"]["val"]["count"] and "val" or "test"
    count = manifest["splits"][split]["count"]
    if facts["input_mode"] == "whole":
        return count * _pixels(facts["input"])
    return count * _pixels(manifest["splits"][split].get("max_size") or facts["largest_size"])


def _record_overrides(plan):
    for name, value in plan.given.items():
        if name in plan.values and _flag_text(plan.values[name]) != _flag_text(value):
            plan.overridden[name] = (plan.values[name], value)


def write(plan, model_dir, budget, machine):
    atomic.write_json(os.path.join(model_dir, FILENAME), plan.to_json(budget, machine))


def read(model_dir):
    """plan.json of a run folder, or None."""
    return atomic.read_json(os.path.join(model_dir, FILENAME))
