"""Train, evaluate and export a segmentation model.

    python train.py                                  # built-in synthetic data, CPU-sized
    python train.py --data_dir=RECORDS --model_dir=RUN [--model=unet --image_size=512 ...]

Wiring only: flags -> strategy -> datasets -> model -> the one training loop
(segtrain.loop) -> evaluate on the test split -> model.keras + SavedModel.
Rerunning the same command resumes from RUN/backup.
"""
import functools
import math
import os
import sys
import time

STARTED = time.time()  # a minutes --budget counts start-up
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from segtrain import startup  # noqa: E402

startup.quiet_tensorflow_import()  # before segmodels: Keras imports TensorFlow
import segmodels  # noqa: E402  (registries and choices below become flag enums)
from segtrain import cli, distribute, optim, plan as planning  # noqa: E402

FLAGS = flags.FLAGS
# runs/ and .cache/ go here: the clone, or the current directory for the installed
# segflow-train (segtrain.startup)
ROOT = os.environ.get("SEGFLOW_HOME") or os.path.dirname(os.path.abspath(__file__))

# Names scripts and job files depend on: keep them exactly.
flags.DEFINE_string("data_dir", None, "Records folder from tools/prepare_dataset.py. Unset: the "
                    "built-in synthetic dataset (generated once into .cache/) with CPU-sized "
                    "defaults.")
flags.DEFINE_enum("plan", "auto", ["auto", "none"], "auto (with --data_dir): every flag you "
                  "do not give is set from the dataset's fingerprint, this machine and "
                  "--budget, with its reason in RUN/plan.json; flags you give win. none: "
                  "the flags' own defaults.")
flags.DEFINE_string("budget", "", "Training work for --plan=auto: '2000steps', '10min' (wall "
                    f"time on this machine, start-up included) or '50epochs'. Default "
                    f"{planning.DEFAULT_BUDGET}.")
flags.DEFINE_string("model_dir", None, "Run folder: checkpoints, logs, metrics.json, exports. "
                    "Default runs/<model>; the same folder resumes.")
flags.DEFINE_enum("model", "unet", sorted(segmodels.MODELS), "Model (segmodels.MODELS).")
flags.DEFINE_string("image_size", "512", "Training size: '512' or 'H,W' e.g. '360,480'.")
flags.DEFINE_string("train_crop", "", "Native-resolution training: random HxW windows ('256' "
                    "or 'H,W') of each frame scaled by --data_scale x a random --aug_scale; "
                    "validation and test then run on whole frames at --data_scale (one canvas, "
                    "the largest frame). Replaces --image_size and --resize.")
flags.DEFINE_list("aug_scale", ["1", "1"], "--train_crop: random scale 'MIN,MAX' "
                  "(log-uniform) around --data_scale, e.g. '0.7,1.4'.")
flags.DEFINE_float("data_scale", 1.0, "--train_crop: model pixels per source pixel for the "
                   "whole run (1: native; 0.5 halves every frame, antialiased).")
flags.DEFINE_float("crop_foreground", 0.0, "--train_crop: probability that a window is "
                   "centred on a random pixel of a random foreground class in the frame.")
flags.DEFINE_integer("batch_size", 8, "GLOBAL batch size (divided over replicas).",
                     lower_bound=1)
flags.DEFINE_integer("epochs", 50, "Maximum epochs (EarlyStopping may stop sooner).",
                     lower_bound=1)
flags.DEFINE_float("learning_rate", 1e-4, "Peak learning rate.")
flags.DEFINE_enum("optimizer", "adam", optim.OPTIMIZERS, "Optimizer (sgd uses "
                  "Nesterov momentum 0.9).")
flags.DEFINE_enum("loss", "dice", sorted(segmodels.LOSSES), "Loss (segmodels.LOSSES).")
flags.DEFINE_enum("strategy", "auto", distribute.STRATEGIES,
                  "auto: MirroredStrategy over all GPUs when >1, else the default strategy. "
                  "multi_worker: cluster from TF_CONFIG or SLURM.")
flags.DEFINE_enum("mixed_precision", "auto", distribute.PRECISIONS,
                  "auto: mixed_bfloat16 on GPUs with compute capability >= 8.0, mixed_float16 "
                  "on 7.x, else float32.")
flags.DEFINE_integer("seed", 42, "Seed for weights, shuffling and augmentation.")
# Other flags.
flags.DEFINE_integer("num_classes", 0, "Classes; 0 takes the manifest's (a mismatch is an error).")
flags.DEFINE_integer("steps_per_epoch", 0, "0: train split size // batch size.", lower_bound=0)
flags.DEFINE_integer("steps_per_loop", 10, "Training steps per call into TensorFlow: the host "
                     "reads the loss once per loop (NaN check, progress, batch callbacks), so "
                     "an accelerator never waits for it between steps.", lower_bound=1)
flags.DEFINE_bool("progress", True, "Per-epoch progress: a bar on a terminal, a plain line "
                  "every --progress_interval_s in a log file (chief only).")
flags.DEFINE_float("progress_interval_s", 30.0, "Seconds between plain progress lines when "
                   "stdout is not a terminal.", lower_bound=0)
flags.DEFINE_enum("lr_schedule", "constant", optim.SCHEDULES, "LR schedule.")
flags.DEFINE_float("warmup_epochs", 0.0, "Linear warm-up from 0 to --learning_rate (any schedule).")
flags.DEFINE_float("weight_decay", 1e-4, "Weight decay (adamw only).")
flags.DEFINE_enum("class_weights", "none", ["none", "manifest", "manifest_sqrt"], "manifest: "
                  "median-frequency weights from the manifest's per-class pixel counts; "
                  "manifest_sqrt: their square roots, a milder balance.")
flags.DEFINE_integer("base_filters", 64, "UNet width at full resolution (64 is the classic "
                     "model; with --encoder, 16 unless given: the encoder UNet's own default).")
flags.DEFINE_integer("depth", 4, "UNet down/up stages.")
flags.DEFINE_bool("batch_norm", False, "UNet: BatchNorm in every conv block.")
flags.DEFINE_float("dropout", 0.5, "Dropout at the UNet bottom / FCN fc6-fc7.")
flags.DEFINE_enum("encoder", "none", segmodels.ENCODER_CHOICES, "Encoder of --model=unet "
                  "(none: the classic UNet) or deeplabv3plus (required): a keras.applications "
                  "network; the encoder UNet's decoder is --base_filters wide at full "
                  "resolution (16 unless given, as in segmentation_models).")
flags.DEFINE_integer("aspp_filters", 256, "DeepLabV3+: width of the ASPP branches and the "
                     "decoder (256 in the paper).", lower_bound=1)
flags.DEFINE_bool("sync_batch_norm", False, "BatchNorm statistics over the global batch, all "
                  "replicas together (every BatchNorm: --batch_norm's, the encoders', "
                  "DeepLabV3+'s): for small per-replica batches.")
flags.DEFINE_string("encoder_weights", "", "Encoder weights: '' random, 'imagenet' (Keras's "
                    "download and cache; offline: the file in $KERAS_HOME/models/), or the path "
                    "of a no-top .h5.")
flags.DEFINE_integer("freeze_encoder_epochs", 0, "Train only the decoder for the first N epochs "
                     "(the encoder's BatchNorm runs in inference mode while frozen).",
                     lower_bound=0)
flags.DEFINE_integer("fc_filters", 4096, "FCN fc6/fc7 width.")
flags.DEFINE_string("backbone_weights", "", "FCN: path of the VGG16 no-top ImageNet .h5 file.")
flags.DEFINE_enum("resize", "stretch", ["stretch", "pad", "crop"], "Resize policy.")
flags.DEFINE_integer("channels", 0, "Model input channels; 0 uses the records' channels.")
flags.DEFINE_bool("aug_hflip", True, "Random horizontal flip.")
flags.DEFINE_bool("aug_vflip", False, "Random vertical flip.")
flags.DEFINE_float("aug_rotation", 0.0, "Max rotation, degrees.")
flags.DEFINE_float("aug_shear", 0.0, "Max shear, degrees.")
flags.DEFINE_float("aug_zoom", 0.0, "Zoom range: scale in [1-z, 1+z].")
flags.DEFINE_float("aug_shift", 0.0, "Shift range, fraction of the side.")
flags.DEFINE_float("aug_crop", 0.0, "Random scale-crop: keep [1-c, 1] of each side.")
flags.DEFINE_float("aug_elastic_alpha", 0.0, "Elastic deformation: stddev of the displacement "
                   "vectors on a coarse grid, output pixels (the UNet paper used 10 at 572 px).")
flags.DEFINE_integer("aug_elastic_grid", 3, "Elastic deformation: the coarse grid's points a "
                     "side, interpolated smoothly (bicubic) to every pixel.")
flags.DEFINE_float("aug_brightness", 0.0, "Brightness delta, fraction of 255.")
flags.DEFINE_float("aug_contrast", 0.0, "Contrast factor range [1-c, 1+c].")
flags.DEFINE_float("aug_saturation", 0.0, "Saturation factor range (RGB).")
flags.DEFINE_float("aug_hue", 0.0, "Hue shift range (RGB).")
flags.DEFINE_float("aug_noise", 0.0, "Gaussian noise stddev, grey levels.")
flags.DEFINE_bool("aug_xla", True, "Run each example's resampling + photometric as one "
                  "XLA-compiled kernel (segdata/kernels.py); --noaug_xla runs the reference "
                  "kernel op by op, for TensorFlow builds without XLA's CPU JIT.")
flags.DEFINE_enum("aug_fill_mode", "constant", ["constant", "reflect", "nearest"],
                  "Outside the image after a warp; constant fills masks with --mask_fill.")
flags.DEFINE_integer("mask_fill", -1, "Mask value for padded/warped-in pixels; -1: ignore label.")
flags.DEFINE_enum("augment_on", "host", ["host", "device"], "device: geometric and photometric "
                  "augmentation run batched inside the train step; host CPUs only decode.")
flags.DEFINE_bool("cache", False, "Cache decoded examples in memory.")
flags.DEFINE_integer("intra_op_threads", 0, "TensorFlow's intra-op thread pool size; 0: its "
                     "default (one per core). 1 suits hosts whose CPUs only feed GPUs; a "
                     "model trained on the CPU needs the default.", lower_bound=0)
flags.DEFINE_bool("deterministic", False, "Bit-for-bit repeatable runs: deterministic ops "
                  "(tf.config.experimental.enable_op_determinism, slower on GPUs). tf.data's "
                  "order and the augmentation seeds are fixed by --seed in every run.")
flags.DEFINE_bool("jit_compile", False, "XLA-compile the replica step.")
flags.DEFINE_string("monitor", "val_loss", "Metric for checkpoints and early stopping.")
flags.DEFINE_enum("mode", "auto", ["auto", "min", "max"], "auto: min for losses, max otherwise.")
flags.DEFINE_integer("patience", 3, "EarlyStopping patience, epochs.", lower_bound=0)
flags.DEFINE_float("min_delta", 0.001, "EarlyStopping minimum improvement.")
flags.DEFINE_bool("verify_records", True, "Check shard checksums against the manifest first.")
flags.DEFINE_bool("skip_corrupt", False, "Warn about corrupt shards and skip records that fail to "
                  "read, instead of stopping.")
flags.DEFINE_integer("logical_cpus", 0, "Split the CPU into N logical devices (tests "
                     "MirroredStrategy without GPUs).", lower_bound=0)
flags.DEFINE_string("data_service", "", "grpc://HOST:PORT of a tf.data service dispatcher: "
                    "decode + augmentation run on its workers (tools/data_service.py).")
flags.DEFINE_float("step_timeout_s", 900.0, "Exit with a clear error (code 3, backup kept) when no "
                   "step finishes for this long; 0 disables. Covers compilation of step 1.")
flags.DEFINE_bool("export", True, "Write model.keras and the SavedModel after training.")

flags.register_multi_flags_validator(
    ["freeze_encoder_epochs", "model", "encoder"],
    lambda v: not v["freeze_encoder_epochs"] or (v["model"] in segmodels.ENCODER_MODELS
                                                 and v["encoder"] != "none"),
    message="--freeze_encoder_epochs needs an --encoder (--model=unet or deeplabv3plus)")
flags.register_multi_flags_validator(
    ["encoder", "encoder_weights", "model"],
    lambda v: (v["encoder"] == "none" and not v["encoder_weights"]) or (
        v["model"] in segmodels.ENCODER_MODELS and v["encoder"] != "none"),
    message="--encoder and --encoder_weights are for --model=unet or deeplabv3plus, and "
            "weights need an --encoder")
flags.register_multi_flags_validator(
    ["model", "encoder"], lambda v: v["model"] != "deeplabv3plus" or v["encoder"] != "none",
    message="--model=deeplabv3plus needs an --encoder: resnet50, mobilenetv2 or efficientnetb0")

# CPU-sized settings for the no-flag synthetic run: (value, why).
SYNTHETIC_DEFAULTS = {
    "image_size": ("128", "the synthetic images are 128x128"),
    "base_filters": (8, "a width-8 UNet trains in seconds per epoch on 2 CPU cores"),
    "depth": (3, "three stages suffice for 128 px shapes"),
    "batch_size": (8, "small batches, more updates per epoch on CPU"),
    "epochs": (25, "reaches test Dice >= 0.9 well inside 5 minutes on 2 cores"),
    "learning_rate": (3e-3, "a small model tolerates a large step"),
    "dropout": (0.0, "no dropout needed for a 200-image toy task"),
    "patience": (5, "let the small model settle"),
    "mixed_precision": ("float32", "CPU"),
    "batch_norm": (True, "faster convergence for the small model"),
}


# A backup holds these flags' model and optimizer: resuming with other values cannot work.
RESUME_FLAGS = ("model", "encoder", "image_size", "data_scale", "channels", "base_filters", "depth",
                "batch_norm", "fc_filters", "aspp_filters", "optimizer", "freeze_encoder_epochs")
# These fix a warm-up or decaying schedule's shape and length when a run starts: resuming
# with other values would jump the learning rate (a cosine run extended from 2 to 4 epochs
# would leap from ~0 back to half its peak).
SCHEDULE_FLAGS = ("lr_schedule", "learning_rate", "warmup_epochs", "epochs", "steps_per_epoch",
                  "batch_size")


def _log(message):
    print(message, flush=True)


def _synthetic_records():
    from segdata import prepare, records, synthetic
    cache = os.path.join(ROOT, ".cache", "synthetic-v1")
    out = os.path.join(cache, "records")
    if not os.path.isfile(os.path.join(out, records.MANIFEST_NAME)):
        _log(f"generating the built-in synthetic dataset into {cache}")
        files = synthetic.generate(os.path.join(cache, "files"), count=200, size=(128, 128))
        prepare.prepare(prepare.PrepareConfig(input=files, output=out, overwrite=True,
                                              progress=False))
    return out


def _apply_synthetic_defaults():
    for name, (value, why) in SYNTHETIC_DEFAULTS.items():
        if not FLAGS[name].present:
            FLAGS[name].value = value
            _log(f"  --{name}={value}  ({why})")


def _apply_encoder_defaults():
    if (FLAGS.model == "unet" and FLAGS.encoder != "none" and not FLAGS["base_filters"].present
            and FLAGS.base_filters == FLAGS["base_filters"].default):
        FLAGS.base_filters = segmodels.ENCODER_UNET_BASE_FILTERS
        _log(f"  --base_filters={FLAGS.base_filters}  (the encoder UNet's decoder width at full "
             "resolution, 256 channels at stride 16; the classic UNet's 64 would make it 1024)")


def _given_flags():
    return {name: FLAGS[name].value for name in FLAGS if FLAGS[name].present}


def _apply_plan_values(values):
    for name, value in values.items():
        if not FLAGS[name].present:
            FLAGS[name].value = value


def _make_plan(manifest, model_dir, replicas):
    """--plan=auto: (plan, budget, machine) with the plan's values set on every flag not
    given; a run folder being resumed keeps the plan in its plan.json (plan None then).
    (None, None, None) with --plan=none or the built-in data."""
    if FLAGS.plan == "none" or FLAGS.data_dir is None:
        if FLAGS.budget:
            raise ValueError(f"--budget={FLAGS.budget}: a budget is for --plan=auto with a "
                             "--data_dir; drop it, or set --epochs and --steps_per_epoch")
        return None, None, None
    budget = planning.Budget.parse(FLAGS.budget or planning.DEFAULT_BUDGET)
    stored = planning.read(model_dir) if os.path.isdir(os.path.join(model_dir, "backup")) else None
    if stored:
        if FLAGS.budget and stored["budget"] != str(budget):
            raise ValueError(f"--model_dir={model_dir} holds a run planned for --budget="
                             f"{stored['budget']} (now {budget}); resume with that budget, "
                             "or pass a new --model_dir")
        _apply_plan_values({"budget": stored["budget"],
                            **{name: entry["value"] for name, entry in stored["values"].items()}})
        _log(f"resuming with the plan in {model_dir}/{planning.FILENAME} (--budget="
             f"{stored['budget']})")
        return None, budget, None
    FLAGS.budget = str(budget)  # flags.txt says what the run was planned for
    machine = planning.Machine.detect(replicas)
    plan = planning.make_plan(manifest, machine, _given_flags())
    if budget.unit != "min":
        planning.schedule(plan, manifest, budget)
    _apply_plan_values(plan.values)
    return plan, budget, machine


def _log_plan(plan, budget):
    _log(f"plan (--plan=auto --budget={budget}; reasons in RUN/{planning.FILENAME}, a flag "
         "you give wins):")
    for line in plan.summary_lines():
        _log(line)


def _check_run_folder(model_dir):
    """A file in the way, or a backup made with another model: one clear error, nothing written."""
    if os.path.exists(model_dir) and not os.path.isdir(model_dir):
        raise ValueError(f"--model_dir={model_dir} is a file; pass a folder path")
    flagfile = os.path.join(model_dir, "flags.txt")
    if not (os.path.isdir(os.path.join(model_dir, "backup")) and os.path.isfile(flagfile)):
        return
    with open(flagfile) as handle:
        previous = handle.read()

    def changed(names):
        return cli.changed_flags(previous, {n: FLAGS[n].serialize() for n in names}, names)

    def started_with(changes):
        return (f"--model_dir={model_dir} holds a run started with "
                + ", ".join(f"{before} (now {now})" for _, before, now in changes)
                + f" ({flagfile})")
    model_changes = changed(RESUME_FLAGS)
    if model_changes:
        raise ValueError(started_with(model_changes) + "; its backup cannot resume with other "
                         "model flags. Pass a new --model_dir, or the same flags to resume.")
    was = cli.flag_lines(previous)
    scheduled_before = (was.get("lr_schedule", "--lr_schedule=constant") != "--lr_schedule=constant"
                        or float(was.get("warmup_epochs", "=0").partition("=")[2]) > 0)
    scheduled_now = FLAGS.lr_schedule != "constant" or FLAGS.warmup_epochs > 0
    schedule_changes = changed(SCHEDULE_FLAGS)
    if (scheduled_before or scheduled_now) and schedule_changes:
        raise ValueError(
            started_with(schedule_changes) + ": a warm-up or decaying learning-rate schedule is "
            "fixed when a run starts, and resuming with another would jump the learning rate. "
            "Resume with " + " ".join(before for _, before, _ in schedule_changes)
            + ", or pass a new --model_dir.")


def _write_flags(model_dir):
    path = os.path.join(model_dir, "flags.txt")
    with open(path + ".partial", "w") as handle:
        handle.write(FLAGS.flags_into_string())
    os.replace(path + ".partial", path)


def _check_data(data_dir, manifest, replicas):
    """Steps per epoch, once the flags and records are known to fit."""
    from segdata import records
    if FLAGS.num_classes and FLAGS.num_classes != manifest["num_classes"]:
        raise ValueError(f"--num_classes={FLAGS.num_classes} but {data_dir}/manifest.json says "
                         f"{manifest['num_classes']}; drop the flag or re-prepare the data")
    if FLAGS.batch_size % replicas:
        raise ValueError(f"--batch_size={FLAGS.batch_size} does not divide over {replicas} "
                         f"replicas; use a multiple of {replicas}")
    if FLAGS.skip_corrupt:
        corrupt = sum((records.find_corrupt_shards(data_dir, s)
                       for s in ("train", "val", "test")), [])
        if corrupt:
            _log(f"WARNING: {len(corrupt)} corrupt shard(s), unreadable records will be skipped "
                 f"(--skip_corrupt): {corrupt}")
    elif FLAGS.verify_records:
        for split in ("train", "val", "test"):
            records.list_shards(data_dir, split, manifest, verify=True)
    return FLAGS.steps_per_epoch or max(1, manifest["splits"]["train"]["count"] // FLAGS.batch_size)


def _input_spec(data_dir, manifest, model_options, channels):
    """The run's spec.InputSpec from the flags: --image_size and --resize, or --train_crop's
    windows and their evaluation canvas (every val/test frame at --data_scale, rounded up
    to the model's size multiple)."""
    from segdata import augment, spec
    if not FLAGS.train_crop:
        given = [f"--{name}" for name in ("aug_scale", "data_scale", "crop_foreground")
                 if FLAGS[name].present]
        if given:
            raise ValueError(f"{', '.join(given)}: only with --train_crop (native-resolution "
                             "windows); add --train_crop=H,W or drop them")
        return spec.InputSpec.for_records(data_dir, cli.parse_image_size(FLAGS.image_size),
                                          FLAGS.resize, channels, FLAGS.aug_xla)
    for name in ("image_size", "resize"):
        if FLAGS[name].present:
            raise ValueError(f"--{name} and --train_crop: windows are cut at --data_scale, "
                             f"not resized to one size; drop --{name}")
    crop = cli.parse_image_size(FLAGS.train_crop, "train_crop")
    multiple = segmodels.size_multiple(FLAGS.model, model_options)
    if crop[0] % multiple or crop[1] % multiple:
        raise ValueError(f"--train_crop={FLAGS.train_crop}: --model={FLAGS.model} needs sides "
                         f"that are multiples of {multiple}")
    frames = [manifest["splits"][split]["max_size"] for split in ("val", "test")
              if manifest["splits"][split]["count"]]
    canvas = tuple(-(-math.ceil(max(size[axis] for size in frames) * FLAGS.data_scale - 1e-6)
                     // multiple) * multiple for axis in (0, 1))
    return spec.InputSpec.for_records(data_dir, canvas, augment.SCALE, channels, FLAGS.aug_xla,
                                      FLAGS.data_scale, crop)


def _loss_fn(manifest):
    from segmodels import losses
    weights = None
    if FLAGS.class_weights != "none":
        weights = losses.class_weights_from_pixels(
            manifest["splits"]["train"]["class_pixels"],
            power=0.5 if FLAGS.class_weights == "manifest_sqrt" else 1.0)
        _log(f"class weights from the manifest: {[round(w, 3) for w in weights]}")
    return segmodels.LOSSES[FLAGS.loss].bound(manifest["ignore_label"], weights)


def run():
    import keras
    import tensorflow as tf

    from segdata import augment, pipeline, records, serving
    from segtrain import callbacks, export, loop, progress, results

    if FLAGS.intra_op_threads:
        tf.config.threading.set_intra_op_parallelism_threads(FLAGS.intra_op_threads)
    # The strategy comes first: MultiWorkerMirroredStrategy must exist before other TF ops.
    strategy = distribute.make_strategy(FLAGS.strategy, FLAGS.logical_cpus)
    _, _, is_chief = distribute.task_info(strategy)
    if FLAGS.data_dir is None:
        _log("no --data_dir: using the built-in synthetic dataset with CPU-sized settings:")
        _apply_synthetic_defaults()
    _apply_encoder_defaults()
    data_dir = FLAGS.data_dir or _synthetic_records()
    model_dir = FLAGS.model_dir or os.path.join(ROOT, "runs", FLAGS.model)
    manifest = records.load_manifest(data_dir)
    plan, budget, machine = _make_plan(manifest, model_dir, strategy.num_replicas_in_sync)
    timed_budget = plan is not None and budget.unit == "min"
    if plan is not None and not timed_budget:
        _log_plan(plan, budget)
    steps = _check_data(data_dir, manifest, strategy.num_replicas_in_sync)
    model_options = segmodels.model_options(FLAGS.model, FLAGS.flag_values_dict())
    # the model's input, decided once: pipeline, model, contract and serving read it
    spec = _input_spec(data_dir, manifest, model_options, FLAGS.channels)
    config = augment.AugmentConfig.from_flags(FLAGS)
    num_classes, ignore, channels = spec.num_classes, spec.ignore_label, spec.channels
    if FLAGS.monitor not in loop.MONITORS:
        raise ValueError(f"--monitor={FLAGS.monitor}: not a value the loop logs; expected one "
                         f"of {', '.join(loop.MONITORS)}")
    _check_run_folder(model_dir)

    keras.utils.set_random_seed(FLAGS.seed)
    if FLAGS.deterministic:
        tf.config.experimental.enable_op_determinism()
    precision = distribute.choose_precision(FLAGS.mixed_precision)
    distribute.set_precision(precision)
    slow = distribute.slow_precision_warning(precision)
    if slow:
        _log(f"warning: {slow}")
    windows = spec.train_crop is not None
    geometry = (f"train_crop={spec.train_crop} data_scale={spec.data_scale} aug_scale="
                f"{config.scale} crop_foreground={config.crop_foreground} eval_canvas="
                f"{spec.image_size}" if windows else f"image_size={spec.image_size}")
    _log(f"{distribute.describe(strategy)} precision={precision} model={FLAGS.model} "
         f"{geometry} batch={FLAGS.batch_size} steps/epoch={steps} "
         f"num_classes={num_classes} data={data_dir}")
    # windows and whole frames differ in size: one fully convolutional model takes both
    input_shape = ((None, None) if windows else spec.image_size) + (channels,)
    mask_fill = ignore if FLAGS.mask_fill < 0 else FLAGS.mask_fill
    reading = dict(cache=FLAGS.cache, skip_corrupt=FLAGS.skip_corrupt)

    def train_input(context, start_step=0, **options):
        per_replica = context.get_per_replica_batch_size(FLAGS.batch_size)
        return pipeline.training_dataset(
            data_dir, spec, per_replica, config, seed=FLAGS.seed, input_context=context,
            augment_on=FLAGS.augment_on, start_index=start_step * per_replica,
            mask_fill=mask_fill, on_service=bool(FLAGS.data_service), **{**reading, **options})

    preprocess = None
    if FLAGS.augment_on == "device":
        preprocess = lambda batch: augment.augment_batch(  # noqa: E731
            batch["image"], batch["mask"], batch["seed"], config, mask_fill)
    loss_fn = _loss_fn(manifest)
    if timed_budget:
        from segtrain import steptime
        step_s = steptime.seconds_per_step(
            strategy, lambda: segmodels.build_model(FLAGS.model, input_shape, num_classes,
                                                    **model_options),
            loss_fn, num_classes, ignore, lambda c: train_input(c, cache=False),
            preprocess)
        # the rest of the budget, less a tenth kept for the test split and the export; every
        # worker of a cluster plans with the slowest one's figures, so all run the same steps
        started = distribute.agree_max(strategy, time.time() - STARTED)
        seconds_left = 0.9 * budget.amount * 60 - started
        planning.schedule(plan, manifest, budget, distribute.agree_max(strategy, step_s),
                          seconds_left)
        _apply_plan_values(plan.values)
        steps = FLAGS.steps_per_epoch
        _log_plan(plan, budget)
        keras.utils.set_random_seed(FLAGS.seed)  # the timed model drew from the seed
    with strategy.scope():
        model = segmodels.build_model(FLAGS.model, input_shape, num_classes, **model_options)
        if FLAGS.sync_batch_norm:
            synchronized = segmodels.layers.synchronize_batch_norm(model)
            if not synchronized:
                raise ValueError(f"--sync_batch_norm: --model={FLAGS.model} has no BatchNorm "
                                 "layer (the classic UNet has them with --batch_norm)")
            _log(f"--sync_batch_norm: {synchronized} BatchNorm layers use global-batch statistics")
        rate = optim.learning_rate(FLAGS.learning_rate, FLAGS.lr_schedule, FLAGS.epochs * steps,
                                   int(FLAGS.warmup_epochs * steps))
        # a frozen encoder's optimizer state starts when it unfreezes (FreshStartOptimizer)
        late = model.get_layer("encoder").trainable_weights if FLAGS.freeze_encoder_epochs else ()
        optimizer = optim.build_optimizer(FLAGS.optimizer, rate, FLAGS.weight_decay,
                                          loss_scale=precision == "mixed_float16",
                                          fresh_start_variables=late)
        optimizer.build(model.trainable_variables)

    backup_dir = os.path.join(model_dir, "backup")
    backup = loop.Backup(backup_dir, model, optimizer, distribute.worker_dir(backup_dir, strategy),
                         constant_learning_rate=rate if isinstance(rate, float) else None,
                         precision=precision)
    backup.load()
    # the run folder is written only now: bad flags, data and backups have failed before this
    os.makedirs(model_dir, exist_ok=True)
    if is_chief:
        _write_flags(model_dir)
        # with or without an export: evaluate and predict read it next to best.keras too
        spec.save(model_dir)
        if plan is not None:
            planning.write(plan, model_dir, budget, machine)
    start_epoch = backup.latest_epoch()
    trained_in = backup.saved_precision()
    if start_epoch and trained_in and trained_in != precision:
        scale = ""
        if precision == "mixed_float16":
            scale = "; the float16 loss scale starts at its initial value"
        elif trained_in == "mixed_float16":
            scale = "; its float16 loss scale is dropped"
        _log(f"resuming a {trained_in} run in {precision}: the weights and the optimizer's "
             f"step, moments and schedule position carry over{scale}")

    def train_fn(context):
        dataset = train_input(context, start_epoch * steps)
        if FLAGS.data_service:
            # decode + augment run on the service workers (sharding: see segdata/service.py)
            from segdata import service
            dataset = service.distribute(dataset, FLAGS.data_service)
        return dataset

    def eval_dataset(split):
        return strategy.distribute_datasets_from_function(
            lambda context: pipeline.evaluation_dataset(
                data_dir, split, spec, context.get_per_replica_batch_size(FLAGS.batch_size),
                input_context=context, pad_batches=True, **reading))

    freeze = (model.get_layer("encoder"), FLAGS.freeze_encoder_epochs) \
        if FLAGS.freeze_encoder_epochs else None
    trainer = loop.Trainer(strategy, model, optimizer, loss_fn, num_classes, ignore,
                           preprocess, FLAGS.jit_compile, FLAGS.steps_per_loop, freeze)
    sample = next(iter(pipeline.evaluation_dataset(data_dir, "val", spec, 4, **reading))) \
        if is_chief else None
    run_callbacks = callbacks.make_callbacks(
        model_dir, FLAGS.monitor, FLAGS.mode, FLAGS.patience, FLAGS.min_delta, is_chief,
        start_epoch, (sample["image"], sample["mask"]) if sample else None)
    if timed_budget:
        run_callbacks.append(callbacks.Deadline(STARTED + 0.9 * budget.amount * 60))
    callback_list = keras.callbacks.CallbackList(run_callbacks, model=model)
    bar = functools.partial(progress.EpochProgress, interval_s=FLAGS.progress_interval_s)
    try:
        summary = trainer.fit(strategy.distribute_datasets_from_function(train_fn),
                              eval_dataset("val"), FLAGS.epochs, steps, callback_list, backup,
                              _log, FLAGS.step_timeout_s,
                              bar if is_chief and FLAGS.progress else None, FLAGS.batch_size,
                              manifest.get("class_names"))
    except tf.errors.DataLossError:
        bad = records.find_corrupt_shards(data_dir, "train") + records.find_corrupt_shards(
            data_dir, "val")
        raise records.RecordsError(f"corrupt records: {bad or 'unknown shard'}; re-run "
                                   "tools/prepare_dataset.py")
    # every worker scores the test split with the best weights: the chief wrote them
    distribute.barrier(strategy)
    if os.path.isfile(os.path.join(model_dir, "best.keras")):
        model.set_weights(keras.saving.load_model(os.path.join(model_dir, "best.keras"),
                                                  compile=False).get_weights())
    test = trainer.evaluate(eval_dataset("test" if manifest["splits"]["test"]["count"] else "val"))
    if not is_chief:
        return 0
    results.write(model_dir, results.run_result(test, backup, FLAGS.monitor,
                                                manifest.get("class_names"),
                                                summary["start_epoch"]))
    _log(f"test: dice={test['dice']:.4f} per_class_dice="
         f"{[round(v, 4) for v in test['per_class_dice']]} mean_iou={test['mean_iou']:.4f} "
         f"pixel_accuracy={test['pixel_accuracy']:.4f}")
    if FLAGS.export:
        # statistics of a global batch are a training matter, and a TensorFlow-only option
        # that other Keras backends refuse to load
        segmodels.layers.synchronize_batch_norm(model, False)
        if windows:
            # exported at the canvas: every format, and serving's signature, has one input size
            served = segmodels.build_model(FLAGS.model, spec.image_size + (channels,),
                                           num_classes, **model_options)
            served.set_weights(model.get_weights())
            model = served
        callbacks.save_atomically(model, os.path.join(model_dir, "model.keras"))
        export.export_saved_model(model, os.path.join(model_dir, "export"), spec)
        # the contract itself was written before training; the SavedModel carries a copy
        _log(f"saved {model_dir}/model.keras and {model_dir}/export/ (SavedModel, with "
             f"{serving.FILENAME} among its assets)")
    return 0


def main(argv):
    if len(argv) > 1:
        sys.stderr.write(f"train.py: error: unexpected arguments {argv[1:]}\n")
        return 2
    startup.quiet_python_logs()  # TF's INFO lines (saver sharding...) drown ours
    from segdata.records import RecordsError
    from segtrain.loop import NanLossError
    try:
        return run()
    except (ValueError, RecordsError, NanLossError, FileNotFoundError) as err:  # PlanError too
        sys.stderr.write(f"train.py: error: {err}\n")
        return 1


if __name__ == "__main__":
    app.run(main)
