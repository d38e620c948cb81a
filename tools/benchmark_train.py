"""Training and inference speed of a model: images/s and step-time percentiles.

    python tools/benchmark_train.py --model=unet --image_size=512 --batch_size=8 \
        --precision=float32,mixed --input=synthetic [--json]
    python tools/benchmark_train.py --input=synthetic,records --data_dir=RECORDS   # TF backend

--input=synthetic keeps one random batch on the device: the device's own speed.
--input=records runs the real tf.data pipeline end to end (TensorFlow backend only);
with both, the records/synthetic ratio says whether the input pipeline is the
bottleneck. Under KERAS_BACKEND=jax only synthetic input works, and TensorFlow is
never imported (the GPU machines this was measured on have JAX but no TensorFlow).
"""
import json
import sys
import time

from absl import app, flags

if not __package__:  # run as a file (python tools/x.py), not as tools.x
    import _bootstrap  # noqa: F401  (puts the project on sys.path)
from segtrain import cli

FLAGS = flags.FLAGS
flags.DEFINE_string("model", "unet", "segmodels.MODELS key.")
flags.DEFINE_string("image_size", "512", "'512' or 'H,W'.")
flags.DEFINE_integer("batch_size", 8, "Batch size.")
flags.DEFINE_integer("channels", 3, "Input channels (synthetic input).")
flags.DEFINE_integer("num_classes", 2, "Classes (2: one sigmoid channel).")
flags.DEFINE_list("precision", ["float32"], "Any of float32, mixed (mixed_float16 on GPU, "
                  "mixed_bfloat16 on CPU), mixed_float16, mixed_bfloat16.")
flags.DEFINE_list("input", ["synthetic"], "synthetic and/or records.")
flags.DEFINE_string("data_dir", "", "Records folder for --input=records.")
flags.DEFINE_list("jit", ["on"], "XLA on and/or off.")
flags.DEFINE_list("mode", ["train", "infer"], "train and/or infer.")
flags.DEFINE_integer("steps", 20, "Timed steps.")
flags.DEFINE_integer("warmup", 3, "Untimed steps first (compilation).")
flags.DEFINE_integer("base_filters", 64, "UNet width.")
flags.DEFINE_integer("depth", 4, "UNet depth.")
flags.DEFINE_integer("fc_filters", 4096, "FCN fc6/fc7 width.")
flags.DEFINE_string("encoder", "none", "UNet encoder (segmodels.ENCODER_CHOICES), random weights.")
flags.DEFINE_enum("strategy", "default", ["default", "one_device", "mirrored"],
                  "tf.distribute strategy (TensorFlow backend; model.train_on_batch runs under "
                  "it). mirrored uses all GPUs, or --logical_cpus CPU devices; over logical CPUs "
                  "use --jit=off (XLA then fails: variables live on another device).")
flags.DEFINE_integer("logical_cpus", 0, "Split the CPU into N devices for --strategy=mirrored.")
flags.DEFINE_bool("any_size", False, "Build the model for any input size, (None, None, C), "
                  "as --train_crop builds it; timed at --image_size.")
flags.DEFINE_bool("json", False, "Print one JSON object instead of a table.")
flags.DEFINE_string("output", "", "Also write the JSON here.")


def _backend():
    import keras
    return keras.backend.backend()


def _on_gpu():
    if _backend() == "jax":
        import jax
        return any(d.platform == "gpu" for d in jax.devices())
    import tensorflow as tf
    return bool(tf.config.list_physical_devices("GPU"))


def _policy(name):
    if name == "mixed":
        return "mixed_float16" if _on_gpu() else "mixed_bfloat16"
    return name


def conv_flops(model):
    """Forward multiply-adds x 2 of every Conv2D/Conv2DTranspose, per image."""
    import keras
    total = 0
    for layer in model.layers:
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.Conv2DTranspose)):
            kh, kw = layer.kernel_size
            cin = layer.input.shape[-1]
            if isinstance(layer, keras.layers.Conv2DTranspose):
                h, w = layer.input.shape[1:3]  # each input pixel scatters a full kernel
            else:
                h, w = layer.output.shape[1:3]
            total += 2 * h * w * kh * kw * cin * layer.filters
    return total


def _percentiles(times):
    import numpy as np
    ms = np.asarray(times) * 1000
    return {"p50_ms": float(np.percentile(ms, 50)), "p90_ms": float(np.percentile(ms, 90)),
            "p99_ms": float(np.percentile(ms, 99))}


def _time(step, steps, warmup):
    for _ in range(warmup):
        step()
    times = []
    start = time.perf_counter()
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return time.perf_counter() - start, times


def _sync(value):
    """Blocks until the device finished (every backend: fetch to host)."""
    import keras
    return keras.ops.convert_to_numpy(value)


_STRATEGY = []


def _strategy_scope():
    """The --strategy scope (created once: TF allows one logical-device split per process)."""
    import contextlib
    if FLAGS.strategy == "default" or _backend() != "tensorflow":
        return contextlib.nullcontext()
    if not _STRATEGY:
        from segtrain import distribute
        _STRATEGY.append(distribute.make_strategy(FLAGS.strategy, FLAGS.logical_cpus))
    return _STRATEGY[0].scope()


def run_case(precision, source, jit, mode, image_size):
    import keras
    import numpy as np

    import segmodels
    keras.mixed_precision.set_dtype_policy(precision)
    keras.utils.set_random_seed(0)
    options = segmodels.model_options(FLAGS.model, FLAGS.flag_values_dict())
    shape = image_size + (FLAGS.channels,)
    built_for = (None, None, FLAGS.channels) if FLAGS.any_size else shape
    with _strategy_scope():
        model = segmodels.build_model(FLAGS.model, built_for, FLAGS.num_classes, **options)
        model.compile(optimizer=keras.optimizers.Adam(1e-4), loss=segmodels.build_loss("dice"),
                      jit_compile=jit)
    rng = np.random.default_rng(0)
    batch = FLAGS.batch_size
    if source == "synthetic":
        images = keras.ops.convert_to_tensor(
            rng.integers(0, 255, (batch,) + shape).astype("uint8"))
        masks = keras.ops.convert_to_tensor(
            rng.integers(0, 2, (batch,) + image_size + (1,)).astype("int32"))
        next_batch = lambda: (images, masks)  # noqa: E731
    else:
        from segdata import augment, pipeline, spec
        input_spec = spec.InputSpec.for_records(FLAGS.data_dir, image_size,
                                                channels=FLAGS.channels)
        dataset = pipeline.training_dataset(FLAGS.data_dir, input_spec, batch,
                                            augment.AugmentConfig(hflip=True))
        iterator = iter(dataset.map(lambda batch: (batch["image"], batch["mask"])))
        next_batch = lambda: next(iterator)  # noqa: E731
    if mode == "train":
        step = lambda: model.train_on_batch(*next_batch())  # noqa: E731  (returns host loss: synced)
    else:
        step = lambda: _sync(model.predict_on_batch(next_batch()[0]))  # noqa: E731
    total, times = _time(step, FLAGS.steps, FLAGS.warmup)
    # counted on a fixed-size twin: an any-size model's layers have no spatial shape
    sized = segmodels.build_model(FLAGS.model, shape, FLAGS.num_classes, **options) \
        if FLAGS.any_size else model
    flops = conv_flops(sized) * (3 if mode == "train" else 1)
    images_per_s = batch * FLAGS.steps / total
    keras.mixed_precision.set_dtype_policy("float32")
    return dict(model=FLAGS.model, encoder=FLAGS.encoder, parameters=model.count_params(),
                image_size=list(image_size), any_size=FLAGS.any_size, batch_size=batch,
                precision=precision, input=source, xla=jit, mode=mode, strategy=FLAGS.strategy,
                images_per_s=images_per_s, tflop_per_image=flops / 1e12,
                achieved_tflops=images_per_s * flops / 1e12, **_percentiles(times))


def main(argv):
    del argv
    try:
        image_size = cli.parse_image_size(FLAGS.image_size)
    except ValueError as err:
        sys.stderr.write(f"benchmark_train: error: {err}\n")
        return 1
    if FLAGS.strategy != "default" and _backend() != "tensorflow":
        sys.stderr.write("benchmark_train: --strategy needs the TensorFlow backend\n")
        return 1
    if "records" in FLAGS.input and (_backend() != "tensorflow" or not FLAGS.data_dir):
        sys.stderr.write("benchmark_train: --input=records needs the TensorFlow backend and "
                         "--data_dir\n")
        return 1
    results = []
    for precision in FLAGS.precision:
        for source in FLAGS.input:
            for jit in FLAGS.jit:
                for mode in FLAGS.mode:
                    results.append(run_case(_policy(precision), source, jit == "on", mode,
                                            image_size))
    synthetic = {(r["precision"], r["xla"], r["mode"]): r["images_per_s"] for r in results
                 if r["input"] == "synthetic"}
    for r in results:
        if r["input"] == "records" and (r["precision"], r["xla"], r["mode"]) in synthetic:
            r["records_vs_synthetic"] = r["images_per_s"] / synthetic[(r["precision"], r["xla"],
                                                                       r["mode"])]
            r["input_bound"] = r["records_vs_synthetic"] < 0.9
    report = {"backend": _backend(), "gpu": _on_gpu(), "results": results}
    if FLAGS.output:
        with open(FLAGS.output, "w") as handle:
            json.dump(report, handle, indent=2)
    if FLAGS.json:
        print(json.dumps(report))
        return 0
    print(f"backend={report['backend']} gpu={report['gpu']} model={FLAGS.model} "
          f"encoder={FLAGS.encoder} parameters={results[0]['parameters']:,} "
          f"built_for={'any size' if FLAGS.any_size else 'image_size'}")
    print(f"{'precision':16} {'input':10} {'xla':5} {'mode':6} {'img/s':>9} {'p50 ms':>8} "
          f"{'p90 ms':>8} {'TFLOP/s':>8}")
    for r in results:
        print(f"{r['precision']:16} {r['input']:10} {str(r['xla']):5} {r['mode']:6} "
              f"{r['images_per_s']:9.1f} {r['p50_ms']:8.1f} {r['p90_ms']:8.1f} "
              f"{r['achieved_tflops']:8.2f}"
              + (f"  records/synthetic={r['records_vs_synthetic']:.2f}"
                 + (" (input-bound)" if r['input_bound'] else "")
                 if "records_vs_synthetic" in r else ""))
    return 0


if __name__ == "__main__":
    app.run(main)
