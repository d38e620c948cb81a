"""One harness for every registry entry (keras-hub style), plus numerics vs numpy."""
import importlib.util
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import segmodels
from conftest import ROOT
from segmodels import losses, metrics

TINY = {
    "unet": {"base_filters": 4, "depth": 2},
    # dropout off: at these widths it is noise larger than 15 steps of learning
    "fcn32s": {"width": 4, "fc_filters": 8, "dropout": 0.0},
    "fcn16s": {"width": 4, "fc_filters": 8, "dropout": 0.0},
    "fcn8s": {"width": 4, "fc_filters": 8, "dropout": 0.0},
    "deeplabv3plus": {"encoder": "mobilenetv2", "aspp_filters": 8},
}


def _batch(num_classes, size=64, channels=3, seed=0, block=32):
    """Noisy images whose class is constant over block x block cells: coarse enough that even
    FCN-32s (one logit per 32x32 cell) can fit it, so every model has something to learn."""
    rng = np.random.default_rng(seed)
    cells = size // block
    labels = rng.integers(0, num_classes, (4, cells, cells, 1))
    masks = labels.repeat(block, 1).repeat(block, 2).astype("uint8")
    noise = rng.integers(0, 40, (4, size, size, channels))
    images = masks * (200 // (num_classes - 1)) + noise
    return images.astype("uint8"), masks


def test_registry_matches_expected_names():
    assert set(segmodels.MODELS) == set(TINY)


@pytest.mark.parametrize("name", sorted(TINY))
@pytest.mark.parametrize("num_classes", [2, 3])
def test_model_harness(name, num_classes, tmp_path):
    keras.utils.set_random_seed(0)  # an unlucky init once left fcn8s flat after 15 steps
    model = segmodels.build_model(name, (64, 64, 3), num_classes, **TINY[name])
    images, masks = _batch(num_classes)
    assert model.output_shape == (None, 64, 64, 1 if num_classes == 2 else num_classes)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=segmodels.build_loss("dice_ce"),
                  metrics=[metrics.DiceCoefficient(num_classes)])
    first = float(model.train_on_batch(images, masks)[0])
    for _ in range(15):
        last = float(model.train_on_batch(images, masks)[0])
    assert last < 0.98 * first, (first, last)
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)  # no custom_objects: everything is registered
    np.testing.assert_allclose(loaded.predict(images, verbose=0), model.predict(images, verbose=0),
                               rtol=1e-5, atol=1e-5)


def _unet_params(c_in, k, f, depth, dropout_irrelevant=True):
    conv = lambda i, o, s: s * s * i * o + o  # noqa: E731
    total, prev = 0, c_in
    for level in range(depth + 1):
        width = f * 2 ** level
        total += conv(prev, width, 3) + conv(width, width, 3)
        prev = width
    for level in reversed(range(depth)):
        width = f * 2 ** level
        total += conv(prev, width, 2) + conv(2 * width, width, 3) + conv(width, width, 3)
        prev = width
    return total + conv(prev, 1 if k == 2 else k, 1)


def test_unet_parameter_count_formula():
    model = segmodels.build_model("unet", (512, 512, 3), 2)
    assert model.count_params() == _unet_params(3, 2, 64, 4)
    assert 30e6 < model.count_params() < 32e6
    small = segmodels.build_model("unet", (64, 64, 1), 5, base_filters=8, depth=3)
    assert small.count_params() == _unet_params(1, 5, 8, 3)


@pytest.mark.parametrize("name,size,message", [("unet", 102, "100 or 104"),
                                               ("fcn8s", 80, "64 or 96")])
def test_invalid_input_size_names_nearest(name, size, message):
    with pytest.raises(ValueError, match=message):
        segmodels.build_model(name, (size, size, 3), 2, **TINY[name])


def test_imagenet_without_file_says_how():
    with pytest.raises(ValueError, match="never downloads"):
        segmodels.build_model("fcn32s", (32, 32, 3), 2, backbone_weights="imagenet")


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_logits_are_float32(policy):
    keras.mixed_precision.set_dtype_policy(policy)
    try:
        for name in ("unet", "fcn8s", "deeplabv3plus"):
            model = segmodels.build_model(name, (32, 32, 3), 3, **TINY[name])
            out = model(_batch(3, size=32, block=16)[0])
            assert keras.backend.standardize_dtype(out.dtype) == "float32"
            assert any(layer.compute_dtype != "float32" for layer in model.layers)
    finally:
        keras.mixed_precision.set_dtype_policy("float32")


def test_bilinear_initializer_upsamples_constant_exactly():
    layer = keras.layers.Conv2DTranspose(1, 4, strides=2, padding="same", use_bias=False,
                                         kernel_initializer=segmodels.layers.BilinearUpsampleInitializer())
    out = np.asarray(layer(np.ones((1, 6, 6, 1), "float32")))
    np.testing.assert_allclose(out[0, 1:-1, 1:-1, 0], 1.0, atol=1e-6)  # interior of a constant stays constant


# ---------------------------------------------------------------------------
# numerics against numpy


def _np_probs(logits):
    logits = logits.astype(np.float64)
    if logits.shape[-1] == 1:
        p = 1 / (1 + np.exp(-logits))
        return np.concatenate([1 - p, p], -1)
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _np_dice(y, logits, ignore=255, eps=1.0):
    probs = _np_probs(logits)
    k = probs.shape[-1]
    valid = (y[..., 0] != ignore)
    out = []
    for c in range(k):
        p = probs[..., c][valid]
        t = (y[..., 0][valid] == c).astype(np.float64)
        out.append((2 * (p * t).sum() + eps) / (p.sum() + t.sum() + eps))
    return np.array(out)


def _np_ce(y, logits, ignore=255):
    probs = _np_probs(logits)
    valid = y[..., 0] != ignore
    labels = np.where(valid, y[..., 0], 0)
    picked = np.take_along_axis(probs, labels[..., None].astype(int), -1)[..., 0]
    return -(np.log(picked) * valid).sum() / valid.sum()


def _np_focal(y, logits, ignore=255, gamma=2.0):
    probs = _np_probs(logits)
    valid = y[..., 0] != ignore
    labels = np.where(valid, y[..., 0], 0)
    pt = np.take_along_axis(probs, labels[..., None].astype(int), -1)[..., 0]
    return (-((1 - pt) ** gamma) * np.log(pt) * valid).sum() / valid.sum()


@pytest.mark.parametrize("channels", [1, 4])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_losses_match_numpy(channels, seed):
    rng = np.random.default_rng(seed)
    k = max(channels, 2)
    y = rng.integers(0, k, (2, 9, 7, 1)).astype("int32")
    y[rng.random(y.shape) < 0.2] = 255  # ignore pixels
    logits = rng.normal(0, 3, (2, 9, 7, channels)).astype("float32")
    np.testing.assert_allclose(float(losses.dice_loss(y, logits)), 1 - _np_dice(y, logits).mean(),
                               rtol=1e-5)
    np.testing.assert_allclose(float(losses.cross_entropy(y, logits)), _np_ce(y, logits), rtol=1e-5)
    np.testing.assert_allclose(float(losses.focal(y, logits)), _np_focal(y, logits), rtol=1e-4)
    weights = rng.uniform(0.5, 2, k)
    np.testing.assert_allclose(float(losses.dice_loss(y, logits, class_weights=weights)),
                               1 - (_np_dice(y, logits) * weights).sum() / weights.sum(), rtol=1e-5)


@pytest.mark.parametrize("power", [1.0, 0.5])
def test_class_weights_from_pixel_counts(power):
    rng = np.random.default_rng(int(power * 10))
    counts = rng.integers(1, 10 ** 6, 6).tolist() + [0]  # a class with no pixels
    frequency = np.array(counts, float) / sum(counts)
    median = np.sort(frequency[frequency > 0])[3]  # six present: the upper middle one
    expected = np.where(frequency > 0, (median / np.maximum(frequency, 1e-12)) ** power, 0)
    weights = losses.class_weights_from_pixels(counts, power=power)
    np.testing.assert_allclose(weights, expected, rtol=1e-9)
    assert weights[-1] == 0


def test_dice_golden_and_empty_cases():
    # 1x2 image, binary, logits 0 -> p = 0.5 everywhere; truth [0, 1].
    y = np.array([[[[0], [1]]]], "int32")
    logits = np.zeros((1, 1, 2, 1), "float32")
    # each class: intersection 0.5, sums 1 + 1 -> (2*0.5+1)/(2+1) = 2/3 ; loss = 1/3
    np.testing.assert_allclose(float(losses.dice_loss(y, logits)), 1 / 3, rtol=1e-6)
    # empty prediction (very negative logits) on an empty mask: Dice 1 for both classes, loss ~0
    empty = np.zeros((1, 4, 4, 1), "int32")
    assert float(losses.dice_loss(empty, np.full((1, 4, 4, 1), -50.0, "float32"))) < 1e-6
    # all pixels ignored: finite
    all_ignored = np.full((1, 4, 4, 1), 255, "int32")
    for fn in (losses.cross_entropy, losses.dice_loss, losses.focal):
        assert np.isfinite(float(fn(all_ignored, np.zeros((1, 4, 4, 1), "float32"))))


def test_float16_logits_at_512_do_not_overflow():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, (2, 512, 512, 1)).astype("int32")
    logits = rng.normal(0, 2, (2, 512, 512, 1)).astype("float16")
    for fn in (losses.dice_loss, losses.cross_entropy, losses.focal, losses.dice_ce):
        value = float(fn(y, logits))
        assert np.isfinite(value)
    np.testing.assert_allclose(float(losses.dice_loss(y, logits)),
                               1 - _np_dice(y, logits.astype("float32")).mean(), rtol=1e-3)


def test_metrics_accumulate_like_numpy_confusion():
    rng = np.random.default_rng(3)
    k = 3
    dice, iou, acc = metrics.DiceCoefficient(k), metrics.MeanIoU(k), metrics.PixelAccuracy(k)
    cm = np.zeros((k, k))
    for _ in range(3):
        y = rng.integers(0, k, (2, 8, 8, 1)).astype("int32")
        y[rng.random(y.shape) < 0.1] = 255
        logits = rng.normal(size=(2, 8, 8, k)).astype("float32")
        pred = logits.argmax(-1)
        valid = y[..., 0] != 255
        np.add.at(cm, (y[..., 0][valid], pred[valid]), 1)
        for m in (dice, iou, acc):
            m.update_state(y, logits)
    tp = np.diag(cm)
    fp, fn = cm.sum(0) - tp, cm.sum(1) - tp
    np.testing.assert_allclose(float(dice.result()), (2 * tp / (2 * tp + fp + fn)).mean(), rtol=1e-6)
    np.testing.assert_allclose(float(iou.result()), (tp / (tp + fp + fn)).mean(), rtol=1e-6)
    np.testing.assert_allclose(float(acc.result()), tp.sum() / cm.sum(), rtol=1e-6)
    # IoU is not Dice (a peer's bug): they differ on imperfect predictions
    assert abs(float(dice.result()) - float(iou.result())) > 0.01


@pytest.mark.parametrize("k", [2, 3, 21, 150])
def test_confusion_matrix_matches_np_add_at(k):
    """Random labels with ignore pixels and an out-of-range label, eager and XLA-compiled."""
    import tensorflow as tf
    rng = np.random.default_rng(k)
    y = rng.integers(0, k, (2, 24, 20, 1)).astype("int32")
    y[rng.random(y.shape) < 0.1] = 255
    y[0, 0, 0, 0] = k  # not a class and not the ignore label: counted nowhere
    channels = 1 if k == 2 else k
    logits = rng.normal(size=(2, 24, 20, channels)).astype("float32")
    pred = (logits[..., 0] > 0).astype(int) if k == 2 else logits.argmax(-1)
    truth = y[..., 0]
    valid = truth < k
    expected = np.zeros((k, k), np.int64)
    np.add.at(expected, (truth[valid], pred[valid]), 1)
    eager = np.asarray(metrics.confusion_matrix(y, logits, k))
    compiled = tf.function(lambda a, b: metrics.confusion_matrix(a, b, k), jit_compile=True)
    np.testing.assert_array_equal(eager, expected)
    np.testing.assert_array_equal(compiled(y, logits).numpy(), expected)
    assert eager.dtype == np.int32 and expected.sum() == valid.sum() > 0


def test_majority_class_prediction_is_exposed():
    # 78% "cell" (1), 22% membrane (0), model predicts all cell
    y = np.ones((1, 10, 10, 1), "int32")
    y[0, :, :2] = 0
    y[0, 0, 2:4] = 0
    s = metrics.scores(metrics.confusion_matrix(y, np.full((1, 10, 10, 1), 5.0, "float32"), 2))
    per_class = np.asarray(s["per_class_dice"])
    assert per_class[0] == 0 and per_class[1] > 0.87
    assert float(s["dice"]) < 0.45


@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="jax not installed")
def test_models_train_under_jax_backend():
    code = (
        "import keras, numpy as np, segmodels\n"
        "assert keras.backend.backend() == 'jax'\n"
        "x = np.random.default_rng(0).integers(0, 255, (2, 32, 32, 3)).astype('uint8')\n"
        "y = (x[..., :1] > 128).astype('int32')\n"
        f"tiny = {TINY!r}\n"
        "for name in segmodels.MODELS:\n"
        "    m = segmodels.build_model(name, (32, 32, 3), 2, **tiny[name])\n"
        "    m.compile(optimizer='adam', loss=segmodels.build_loss('dice'))\n"
        "    assert np.isfinite(float(m.train_on_batch(x, y)))\n"
        "print('ok')\n")
    env = dict(os.environ, KERAS_BACKEND="jax", PYTHONPATH=ROOT)
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "ok" in result.stdout


def test_fcn_backbone_weights_from_file(tmp_path):
    """A VGG16 no-top weights file on disk is copied in by layer name (nothing downloaded);
    the first conv's input channels are flipped because the file's kernels read BGR."""
    reference = keras.applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3))
    path = str(tmp_path / "vgg16_notop.weights.h5")
    reference.save_weights(path)
    model = segmodels.build_model("fcn32s", (32, 32, 3), 2, fc_filters=8, backbone_weights=path)
    np.testing.assert_array_equal(model.get_layer("block3_conv2").get_weights()[0],
                                  reference.get_layer("block3_conv2").get_weights()[0])
    np.testing.assert_array_equal(model.get_layer("block1_conv1").get_weights()[0],
                                  reference.get_layer("block1_conv1").get_weights()[0][:, :, ::-1])
    with pytest.raises(ValueError, match="no such file"):
        segmodels.build_model("fcn32s", (32, 32, 3), 2, backbone_weights=str(tmp_path / "nope.h5"))
