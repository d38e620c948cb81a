"""Train, evaluate and export a segmentation model.

    python train.py                                  # built-in synthetic data, CPU-sized
    python train.py --data_dir=RECORDS --model_dir=RUN [--model=unet --image_size=512 ...]

Wiring only: flags -> strategy -> datasets -> model -> the one training loop
(segtrain.loop) -> evaluate on the test split -> model.keras + SavedModel.
Rerunning the same command resumes from RUN/backup.
"""
import json
import math
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import segmodels  # noqa: E402  (registries and choices below become flag enums)
from segtrain import cli, distribute, optim  # noqa: E402

FLAGS = flags.FLAGS
ROOT = os.path.dirname(os.path.abspath(__file__))

# Names scripts and job files depend on: keep them exactly.
flags.DEFINE_string("data_dir", None, "Records folder from tools/prepare_dataset.py. Unset: the "
                    "built-in synthetic dataset (generated once into .cache/) with CPU-sized defaults.")
flags.DEFINE_string("model_dir", None, "Run folder: checkpoints, logs, metrics.json, exports. "
                    "Default runs/<model>; the same folder resumes.")
flags.DEFINE_enum("model", "unet", sorted(segmodels.MODELS), "Model (segmodels.MODELS).")
flags.DEFINE_string("image_size", "512", "Training size: '512' or 'H,W' e.g. '360,480'.")
flags.DEFINE_integer("batch_size", 8, "GLOBAL batch size (divided over replicas).")
flags.DEFINE_integer("epochs", 50, "Maximum epochs (EarlyStopping may stop sooner).")
flags.DEFINE_float("learning_rate", 1e-4, "Peak learning rate.")
flags.DEFINE_enum("optimizer", "adam", optim.OPTIMIZERS, "Optimizer (sgd uses "
                  "Nesterov momentum 0.9).")
flags.DEFINE_enum("loss", "dice", sorted(segmodels.LOSSES), "Loss (segmodels.LOSSES).")
flags.DEFINE_enum("strategy", "auto", distribute.STRATEGIES,
                  "auto: MirroredStrategy over all GPUs when >1, else the default strategy. "
                  "multi_worker: cluster from TF_CONFIG or SLURM.")
flags.DEFINE_enum("mixed_precision", "auto", distribute.PRECISIONS,
                  "auto: mixed_float16 on GPUs with compute capability >= 7.0, else float32.")
flags.DEFINE_integer("seed", 42, "Seed for weights, shuffling and augmentation.")
# Other flags.
flags.DEFINE_integer("num_classes", 0, "Classes; 0 takes the manifest's (a mismatch is an error).")
flags.DEFINE_integer("steps_per_epoch", 0, "0: train split size // batch size.")
flags.DEFINE_enum("lr_schedule", "constant", optim.SCHEDULES, "LR schedule.")
flags.DEFINE_float("warmup_epochs", 0.0, "Linear warm-up from 0 to --learning_rate (any schedule).")
flags.DEFINE_float("weight_decay", 1e-4, "Weight decay (adamw only).")
flags.DEFINE_enum("class_weights", "none", ["none", "manifest"], "manifest: median-frequency "
                  "weights from the manifest's per-class pixel counts.")
flags.DEFINE_integer("base_filters", 64, "UNet width (64 is the classic model).")
flags.DEFINE_integer("depth", 4, "UNet down/up stages.")
flags.DEFINE_bool("batch_norm", False, "UNet: BatchNorm in every conv block.")
flags.DEFINE_float("dropout", 0.5, "Dropout at the UNet bottom / FCN fc6-fc7.")
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
flags.DEFINE_float("aug_brightness", 0.0, "Brightness delta, fraction of 255.")
flags.DEFINE_float("aug_contrast", 0.0, "Contrast factor range [1-c, 1+c].")
flags.DEFINE_float("aug_saturation", 0.0, "Saturation factor range (RGB).")
flags.DEFINE_float("aug_hue", 0.0, "Hue shift range (RGB).")
flags.DEFINE_float("aug_noise", 0.0, "Gaussian noise stddev, grey levels.")
flags.DEFINE_bool("aug_xla", True, "Run each example's warp (or flips) + photometric as one "
                  "XLA-compiled stage (2-4x faster); --noaug_xla runs them op by op "
                  "(ImageProjectiveTransformV3), for TensorFlow builds without XLA's CPU JIT.")
flags.DEFINE_enum("aug_fill_mode", "constant", ["constant", "reflect", "nearest"],
                  "Outside the image after a warp; constant fills masks with --mask_fill.")
flags.DEFINE_integer("mask_fill", -1, "Mask value for padded/warped-in pixels; -1: ignore label.")
flags.DEFINE_enum("augment_on", "host", ["host", "device"], "device: geometric and photometric "
                  "augmentation run batched inside the train step; host CPUs only decode.")
flags.DEFINE_bool("cache", False, "Cache decoded examples in memory.")
flags.DEFINE_integer("intra_op_threads", 0, "TensorFlow's intra-op thread pool size; 0: its "
                     "default (one per core). 1 suits hosts whose CPUs only feed GPUs: the "
                     "augmented input pipeline then yields up to 20% more images/s on 2 "
                     "cores (BENCHMARKS.md §2); a model trained on the CPU needs the default.", lower_bound=0)
flags.DEFINE_bool("deterministic", False, "tf.config.experimental.enable_op_determinism().")
flags.DEFINE_bool("jit_compile", False, "XLA-compile the replica step.")
flags.DEFINE_string("monitor", "val_loss", "Metric for checkpoints and early stopping.")
flags.DEFINE_enum("mode", "auto", ["auto", "min", "max"], "auto: min for losses, max otherwise.")
flags.DEFINE_integer("patience", 3, "EarlyStopping patience, epochs.")
flags.DEFINE_float("min_delta", 0.001, "EarlyStopping minimum improvement.")
flags.DEFINE_bool("verify_records", True, "Check shard checksums against the manifest first.")
flags.DEFINE_bool("skip_corrupt", False, "Warn about corrupt shards and skip records that fail to "
                  "read, instead of stopping.")
flags.DEFINE_integer("logical_cpus", 0, "Split the CPU into N logical devices (tests "
                     "MirroredStrategy without GPUs).")
flags.DEFINE_string("data_service", "", "grpc://HOST:PORT of a tf.data service dispatcher: decode + "
                    "augmentation run on its workers (tools/data_service.py).")
flags.DEFINE_float("step_timeout_s", 900.0, "Exit with a clear error (code 3, backup kept) when no "
                   "step finishes for this long; 0 disables. Covers compilation of step 1.")
flags.DEFINE_bool("export", True, "Write model.keras and the SavedModel after training.")

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


def run():
    import keras
    import tensorflow as tf

    from segdata import augment, pipeline, records
    from segmodels import losses
    from segtrain import callbacks as seg_callbacks
    from segtrain import export, loop

    if FLAGS.intra_op_threads:
        tf.config.threading.set_intra_op_parallelism_threads(FLAGS.intra_op_threads)
    # The strategy comes first: MultiWorkerMirroredStrategy must exist before other TF ops.
    strategy = distribute.make_strategy(FLAGS.strategy, FLAGS.logical_cpus)
    _, _, is_chief = distribute.task_info(strategy)
    if FLAGS.data_dir is None:
        _log("no --data_dir: using the built-in synthetic dataset with CPU-sized settings:")
        _apply_synthetic_defaults()
        data_dir = _synthetic_records()
    else:
        data_dir = FLAGS.data_dir
    model_dir = FLAGS.model_dir or os.path.join(ROOT, "runs", FLAGS.model)
    image_size = cli.parse_image_size(FLAGS.image_size)
    manifest = records.load_manifest(data_dir)
    num_classes = manifest["num_classes"]
    if FLAGS.num_classes and FLAGS.num_classes != num_classes:
        raise ValueError(f"--num_classes={FLAGS.num_classes} but {data_dir}/manifest.json says "
                         f"{num_classes}; drop the flag or re-prepare the data")
    ignore = manifest["ignore_label"]
    mask_fill = ignore if FLAGS.mask_fill < 0 else FLAGS.mask_fill
    channels = FLAGS.channels or manifest.get("channels", 3)
    replicas = strategy.num_replicas_in_sync
    if FLAGS.batch_size % replicas:
        raise ValueError(f"--batch_size={FLAGS.batch_size} does not divide over {replicas} "
                         f"replicas; use a multiple of {replicas}")
    train_count = manifest["splits"]["train"]["count"]
    steps = FLAGS.steps_per_epoch or max(1, train_count // FLAGS.batch_size)
    if FLAGS.skip_corrupt:
        corrupt = sum((records.find_corrupt_shards(data_dir, s) for s in ("train", "val", "test")), [])
        if corrupt:
            _log(f"WARNING: {len(corrupt)} corrupt shard(s), unreadable records will be skipped "
                 f"(--skip_corrupt): {corrupt}")
    elif FLAGS.verify_records:
        for split in ("train", "val", "test"):
            records.list_shards(data_dir, split, manifest, verify=True)

    keras.utils.set_random_seed(FLAGS.seed)
    if FLAGS.deterministic:
        tf.config.experimental.enable_op_determinism()
    precision = distribute.choose_precision(FLAGS.mixed_precision)
    distribute.set_precision(precision)
    os.makedirs(model_dir, exist_ok=True)
    if is_chief:
        FLAGS.append_flags_into_file(os.path.join(model_dir, "flags.txt"))
    _log(f"{distribute.describe(strategy)} precision={precision} model={FLAGS.model} "
         f"image_size={image_size} batch={FLAGS.batch_size} steps/epoch={steps} "
         f"num_classes={num_classes} data={data_dir}")

    config = augment.AugmentConfig.from_flags(FLAGS)
    options = {"unet": dict(base_filters=FLAGS.base_filters, depth=FLAGS.depth,
                            batch_norm=FLAGS.batch_norm, dropout=FLAGS.dropout)}.get(
        FLAGS.model, dict(fc_filters=FLAGS.fc_filters, dropout=FLAGS.dropout,
                          backbone_weights=FLAGS.backbone_weights or None))
    with strategy.scope():
        model = segmodels.build_model(FLAGS.model, image_size + (channels,), num_classes, **options)
        rate = optim.learning_rate(FLAGS.learning_rate, FLAGS.lr_schedule, FLAGS.epochs * steps,
                                   int(FLAGS.warmup_epochs * steps))
        optimizer = optim.build_optimizer(FLAGS.optimizer, rate, FLAGS.weight_decay)
        if precision == "mixed_float16":
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        optimizer.build(model.trainable_variables)
    class_weights = None
    if FLAGS.class_weights == "manifest":
        class_weights = losses.class_weights_from_pixels(manifest["splits"]["train"]["class_pixels"])
        _log(f"class weights from the manifest: {[round(w, 3) for w in class_weights]}")
    loss_impl = segmodels.LOSSES[FLAGS.loss]
    loss_fn = lambda y, logits: loss_impl(y, logits, ignore, class_weights)  # noqa: E731

    backup_dir = os.path.join(model_dir, "backup")
    backup = loop.Backup(backup_dir, model, optimizer,
                         distribute.worker_dir(backup_dir, strategy))
    start_epoch = int(tf.train.load_variable(backup.read_manager.latest_checkpoint,
                                             "epoch/.ATTRIBUTES/VARIABLE_VALUE")) \
        if backup.read_manager.latest_checkpoint else 0

    def train_fn(context):
        per_replica = context.get_per_replica_batch_size(FLAGS.batch_size)
        dataset = pipeline.make_dataset(
            data_dir, "train", per_replica, image_size, config,
            seed=FLAGS.seed + 7919 * context.input_pipeline_id, cache=FLAGS.cache,
            deterministic=FLAGS.deterministic or None, input_context=context,
            resize=FLAGS.resize, channels=channels, mask_fill=mask_fill,
            augment_on=FLAGS.augment_on,
            skip_corrupt=FLAGS.skip_corrupt,
            start_index=start_epoch * steps * per_replica)
        if FLAGS.data_service:
            # decode + augment run on the service workers (sharding: see segdata/service.py)
            from segdata import service
            dataset = service.distribute(dataset, FLAGS.data_service)
        return dataset

    train_dataset = strategy.distribute_datasets_from_function(train_fn)
    eval_dataset = lambda split: pipeline.make_dataset(  # noqa: E731
        data_dir, split, max(1, FLAGS.batch_size // replicas), image_size, config,
        resize=FLAGS.resize, channels=channels, mask_fill=mask_fill, cache=FLAGS.cache,
        skip_corrupt=FLAGS.skip_corrupt)
    preprocess = None
    if FLAGS.augment_on == "device":
        preprocess = lambda batch: augment.augment_batch(  # noqa: E731
            batch[0], batch[1], batch[2], config, mask_fill)
    trainer = loop.Trainer(strategy, model, optimizer, loss_fn, num_classes, ignore,
                           preprocess=preprocess, jit_compile=FLAGS.jit_compile)

    sample = next(iter(eval_dataset("val"))) if is_chief else None
    callbacks = seg_callbacks.make_callbacks(
        model_dir, FLAGS.monitor, FLAGS.mode, FLAGS.patience, FLAGS.min_delta, is_chief,
        resumed=start_epoch > 0, sample_images=(sample[0][:4], sample[1][:4]) if sample else None)
    callback_list = keras.callbacks.CallbackList(callbacks, model=model)
    try:
        summary = trainer.fit(train_dataset, eval_dataset("val"), FLAGS.epochs, steps,
                              callback_list, backup, log=_log,
                              step_timeout_s=FLAGS.step_timeout_s)
    except tf.errors.DataLossError:
        bad = records.find_corrupt_shards(data_dir, "train") + records.find_corrupt_shards(
            data_dir, "val")
        raise records.RecordsError(f"corrupt records: {bad or 'unknown shard'}; re-run "
                                   "tools/prepare_dataset.py")
    if not is_chief:
        return 0
    best_path = os.path.join(model_dir, "best.keras")
    if os.path.isfile(best_path):
        model.set_weights(keras.saving.load_model(best_path, compile=False).get_weights())
    test = trainer.evaluate(eval_dataset("test" if manifest["splits"]["test"]["count"] else "val"))
    epochs_run = int(backup.epoch.numpy())
    result = {
        "dice": test["dice"], "per_class_dice": test["per_class_dice"],
        "mean_iou": test["mean_iou"], "per_class_iou": test["per_class_iou"],
        "pixel_accuracy": test["pixel_accuracy"], "loss": test["loss"],
        "confusion_matrix": test["confusion_matrix"],
        # the backup knows of an early stop even when it happened before a resume
        "stopped_epoch": epochs_run if backup.finished else None,
        "epochs_run": epochs_run,
        "best_epoch": int(backup.best_epoch.numpy()) + 1 if int(backup.best_epoch.numpy()) >= 0 else None,
        "best_" + FLAGS.monitor: None if math.isnan(float(backup.best.numpy())) else float(backup.best.numpy()),
        "class_names": manifest.get("class_names"),
        "resumed_from_epoch": summary["start_epoch"],
    }
    temp = os.path.join(model_dir, "metrics.json.partial")
    with open(temp, "w") as handle:
        json.dump(result, handle, indent=2)
    os.replace(temp, os.path.join(model_dir, "metrics.json"))
    _log(f"test: dice={test['dice']:.4f} per_class_dice="
         f"{[round(v, 4) for v in test['per_class_dice']]} mean_iou={test['mean_iou']:.4f} "
         f"pixel_accuracy={test['pixel_accuracy']:.4f}")
    if FLAGS.export:
        model.save(os.path.join(model_dir, "model.keras"))
        export.export_saved_model(model, os.path.join(model_dir, "export"), image_size, channels)
        _log(f"saved {model_dir}/model.keras and {model_dir}/export/ (SavedModel)")
    return 0


def main(argv):
    if len(argv) > 1:
        sys.stderr.write(f"train.py: error: unexpected arguments {argv[1:]}\n")
        return 2
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # TF's INFO lines (saver sharding...) drown ours
    from segdata.records import RecordsError
    from segtrain.loop import NanLossError
    try:
        return run()
    except (ValueError, RecordsError, NanLossError, FileNotFoundError) as err:
        sys.stderr.write(f"train.py: error: {err}\n")
        return 1


if __name__ == "__main__":
    app.run(main)
