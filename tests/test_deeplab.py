"""DeepLabV3+ on each encoder, synchronized BatchNorm across replicas, and the encoder UNet's
decoder width default; random weights throughout (nothing downloaded)."""
import csv
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import segmodels
from harness import ROOT, python, run, tool, train
from segmodels import encoders, losses

NAMES = sorted(encoders.ENCODERS)
TINY = ["--model=deeplabv3plus", "--encoder=mobilenetv2", "--aspp_filters=8", "--image_size=64"]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("size", [64, 128])
def test_each_encoder_builds_and_trains_a_step_at_a_batch_of_one(name, size):
    """A batch of ONE (one example per GPU at 1024 px): the step is finite and moves the
    encoder, and the image-pooling branch still tells images apart in training (BatchNorm
    on its 1x1 map would give every image the same output, its offset)."""
    keras.utils.set_random_seed(0)
    model = segmodels.build_model("deeplabv3plus", (size, size, 1), 3, encoder=name,
                                  aspp_filters=8)
    assert model.output_shape == (None, size, size, 3)
    assert model.get_layer("encoder") is not None
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (1, size, size, 1)).astype("uint8")
    masks = rng.integers(0, 3, (1, size, size, 1)).astype("uint8")
    stem = model.get_layer("encoder").trainable_weights[0]
    before = np.array(stem)
    with tf.GradientTape() as tape:
        loss = losses.dice_ce(masks, model(images, training=True))
    keras.optimizers.Adam(1e-3).apply(tape.gradient(loss, model.trainable_variables),
                                      model.trainable_variables)
    assert np.isfinite(float(loss)) and not np.array_equal(np.array(stem), before)
    pooled = keras.Model(model.input, model.get_layer("aspp_pool_upsample").output)
    other = rng.integers(0, 255, (1, size, size, 1)).astype("uint8")
    a, b = (np.asarray(pooled(x, training=True)) for x in (images, other))
    assert a.shape[1:3] == (size // 16, size // 16) and not np.allclose(a, b)


@pytest.mark.parametrize("size,message", [(100, "96 or 112"), (72, "64 or 80")])
def test_sizes_not_a_multiple_of_16_name_the_nearest(size, message):
    with pytest.raises(ValueError, match=message):
        segmodels.build_model("deeplabv3plus", (size, size, 3), 2, encoder="resnet50")


def test_an_encoder_is_required(binary_records, tmp_path):
    with pytest.raises(ValueError, match="needs an --encoder"):
        segmodels.build_model("deeplabv3plus", (64, 64, 3), 2)
    result = train(binary_records, tmp_path / "run", "--model=deeplabv3plus", check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "--model=deeplabv3plus needs an --encoder" in result.stderr
    assert not (tmp_path / "run").exists()


def test_mixed_precision_keeps_float32_logits():
    keras.mixed_precision.set_dtype_policy("mixed_bfloat16")
    try:
        model = segmodels.build_model("deeplabv3plus", (64, 64, 1), 3, encoder="mobilenetv2",
                                      aspp_filters=8)
    finally:
        keras.mixed_precision.set_dtype_policy("float32")
    assert model.get_layer("aspp_project_conv").compute_dtype == "bfloat16"
    logits = model(np.zeros((1, 64, 64, 1), "uint8"))
    assert keras.backend.standardize_dtype(logits.dtype) == "float32"


def test_through_train_py_with_a_frozen_encoder_and_every_export(binary_records, tmp_path):
    """train.py with --freeze_encoder_epochs, then the SavedModel, model.keras and TFLite
    (float32, through tools/export.py) give the same masks."""
    run_dir = tmp_path / "run"
    result = train(binary_records, run_dir, *TINY, "--epochs=2", "--steps_per_epoch=2",
                   "--freeze_encoder_epochs=1")
    assert "encoder: frozen (epoch 1, --freeze_encoder_epochs=1)" in result.stdout
    assert "encoder: trained from now on (epoch 2" in result.stdout
    rows = list(csv.DictReader(open(run_dir / "log.csv")))
    assert len(rows) == 2 and all(np.isfinite(float(r["loss"])) for r in rows)
    model = keras.saving.load_model(str(run_dir / "model.keras"))
    images = np.random.default_rng(0).integers(0, 255, (2, 64, 64, 1)).astype("uint8")
    logits = np.asarray(model(images))[..., 0]
    served = tf.saved_model.load(str(run_dir / "export")).signatures["serving_default"]
    masks = served(images=tf.constant(images))["mask"].numpy()[..., 0]
    decided = np.abs(logits) > 1e-4
    np.testing.assert_array_equal(masks[decided], (logits > 0)[decided])
    tflite = tmp_path / "model.tflite"
    tool("export.py", f"--model={run_dir / 'model.keras'}", "--format=tflite",
         f"--output={tflite}")
    interpreter = tf.lite.Interpreter(model_path=str(tflite))
    interpreter.allocate_tensors()
    (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
    interpreter.resize_tensor_input(inp["index"], images.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(inp["index"], images)
    interpreter.invoke()
    lite = interpreter.get_tensor(out["index"])[..., 0]
    np.testing.assert_allclose(lite, logits, atol=1e-3)


def _moving_statistics(run_dir):
    model = keras.saving.load_model(str(run_dir / "best.keras"))
    layer = model.get_layer("down0_bn1")
    return [np.asarray(w) for w in (layer.moving_mean, layer.moving_variance)]


def test_sync_batch_norm_gives_one_replicas_statistics(binary_records, tmp_path):
    """One step of global batch 8 (no augmentation, learning rate 0, so only BatchNorm's
    moving statistics move): on 2 replicas with --sync_batch_norm they equal one replica's;
    without it each replica normalises by its own 4 examples and the moving statistics
    follow those, not the global batch."""
    common = ["--batch_norm", "--batch_size=8", "--epochs=1", "--steps_per_epoch=1",
              "--learning_rate=0", "--noaug_hflip", "--deterministic", "--export=false"]
    mirrored = ["--strategy=mirrored", "--logical_cpus=2"]
    train(binary_records, tmp_path / "one", *common)
    result = train(binary_records, tmp_path / "sync", *common, *mirrored, "--sync_batch_norm")
    assert '"replicas": 2' in result.stdout and "BatchNorm layers use global-batch" in result.stdout
    train(binary_records, tmp_path / "local", *common, *mirrored)
    one, sync, local = (_moving_statistics(tmp_path / n) for n in ("one", "sync", "local"))
    initial = (0.0, 1.0)  # moving mean and variance before the step
    for got_sync, got_local, expected, start in zip(sync, local, one, initial):
        np.testing.assert_allclose(got_sync, expected, rtol=1e-5, atol=1e-7)
        moved = np.abs(expected - start)
        assert moved.max() > 1e-3  # the step moved them (momentum 0.99)
        assert np.abs(got_local - expected).max() > 0.01 * moved.max()
    no_batch_norm = train(binary_records, tmp_path / "none", "--sync_batch_norm", check=False)
    assert no_batch_norm.returncode == 1 and "--sync_batch_norm" in no_batch_norm.stderr
    assert "Traceback" not in no_batch_norm.stderr and not (tmp_path / "none").exists()


def test_encoder_unet_decoder_width_default(binary_records, tmp_path):
    """--encoder without --base_filters: the encoder UNet's 16, said at start and recorded in
    flags.txt (the classic 64 made the decoder 1024 channels wide at stride 16)."""
    run_dir = tmp_path / "run"
    # not harness.train: its tiny settings give --base_filters
    result = run(python(os.path.join(ROOT, "train.py"), f"--data_dir={binary_records}",
                        f"--model_dir={run_dir}", "--plan=none", "--image_size=64",
                        "--encoder=mobilenetv2",
                        "--batch_size=4", "--epochs=1", "--steps_per_epoch=1",
                        "--mixed_precision=float32", "--export=false"))
    assert "--base_filters=16  (the encoder UNet's decoder width" in result.stdout
    assert "--base_filters=16" in (run_dir / "flags.txt").read_text()
    model = keras.saving.load_model(str(run_dir / "best.keras"))
    expected = segmodels.build_model("unet", (64, 64, 1), 2, encoder="mobilenetv2",
                                     base_filters=16)
    assert model.count_params() == expected.count_params()
    # a given --base_filters winning: test_encoders' --freeze_encoder_epochs run gives one
