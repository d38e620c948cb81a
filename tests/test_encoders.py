"""UNet on keras.applications encoders: built with random weights (nothing downloaded)."""

import keras
import numpy as np
import pytest

import segmodels
from harness import train
from segmodels import encoders, losses

NAMES = sorted(encoders.ENCODERS)
# the independent reference for each encoder's in-model preprocessing
PREPROCESS_INPUT = {
    "resnet50": keras.applications.resnet50.preprocess_input,
    "mobilenetv2": keras.applications.mobilenet_v2.preprocess_input,
    "efficientnetb0": keras.applications.efficientnet.preprocess_input,
}


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("size", [64, 128])
def test_each_encoder_builds_and_trains_a_step(name, size):
    keras.utils.set_random_seed(0)
    model = segmodels.build_model("unet", (size, size, 1), 3, base_filters=4, encoder=name)
    assert model.get_layer("encoder") is not None
    assert model.output_shape == (None, size, size, 3)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (2, size, size, 1)).astype("uint8")
    masks = rng.integers(0, 3, (2, size, size, 1)).astype("uint8")
    # one eager step: tracing these networks for a single step costs ten times the step
    import tensorflow as tf
    optimizer = keras.optimizers.Adam(1e-3)
    stem = model.get_layer("encoder").trainable_weights[0]
    before = np.array(stem)
    with tf.GradientTape() as tape:
        loss = losses.dice_ce(masks, model(images, training=True))
    optimizer.apply(tape.gradient(loss, model.trainable_variables), model.trainable_variables)
    assert np.isfinite(float(loss))
    assert not np.array_equal(np.array(stem), before)  # the encoder trains


@pytest.mark.parametrize("name", ["resnet50", "mobilenetv2"])
@pytest.mark.parametrize("channels", [1, 3])
def test_in_model_preprocessing_is_the_family_preprocess_input(name, channels):
    images = np.random.default_rng(1).integers(0, 256, (2, 32, 32, channels)).astype("uint8")
    layer = encoders.EncoderPreprocess(encoders.ENCODERS[name][1])
    rgb = np.repeat(images, 3, axis=-1) if channels == 1 else images
    expected = PREPROCESS_INPUT[name](rgb.astype("float32"))
    np.testing.assert_allclose(np.asarray(layer(images)), np.asarray(expected), atol=1e-4)


def _imagenet_like_file(name, path):
    """A no-top file with random weights in the layout Keras downloads; EfficientNet's
    Normalization holds the ImageNet statistics, as the real file's does."""
    keras.utils.set_random_seed(5)
    network = encoders.ENCODERS[name][0](include_top=False, weights=None, input_shape=(64, 64, 3))
    for layer in network.layers:
        if isinstance(layer, keras.layers.Normalization):
            layer.set_weights([np.array([0.485, 0.456, 0.406], "float32"),
                               np.array([0.229, 0.224, 0.225], "float32"), np.array(0)])
    network.save_weights(path)


def _as_keras_builds_it_for_imagenet(name, path, monkeypatch):
    """keras.applications' network with weights="imagenet", its download answered by `path`
    (offline tests; the file's hash is not checked once get_file returns it)."""
    from keras.src.utils import file_utils
    monkeypatch.setattr(file_utils, "get_file", lambda *args, **kwargs: path)
    return encoders.ENCODERS[name][0](include_top=False, weights="imagenet", input_shape=(64, 64, 3))


@pytest.mark.parametrize("name", NAMES)
def test_an_encoder_from_a_weights_file_sees_what_the_imagenet_network_sees(
        name, tmp_path, monkeypatch):
    """--encoder_weights=PATH: the UNet's encoder (its in-model preprocessing, then the
    network) gives the features of the keras.applications network built for ImageNet with
    the same file, fed the family's preprocess_input. Keras adds EfficientNet's last input
    rescale only for weights="imagenet", so the network it builds from a path is fed ~2x off
    scale: the test tells the two apart there."""
    path = str(tmp_path / f"{name}_notop.weights.h5")
    _imagenet_like_file(name, path)
    reference = _as_keras_builds_it_for_imagenet(name, path, monkeypatch)
    model = segmodels.build_model("unet", (64, 64, 1), 2, base_filters=4, encoder=name,
                                  encoder_weights=path)
    images = np.random.default_rng(3).integers(0, 256, (2, 64, 64, 1)).astype("uint8")
    rgb = np.repeat(images, 3, axis=-1).astype("float32")
    layers = encoders.ENCODERS[name][2]
    probe = keras.Model(reference.input, reference.get_layer(layers[0]).output)
    expected = np.asarray(probe(PREPROCESS_INPUT[name](rgb)))
    got = np.asarray(model.get_layer("encoder")(model.get_layer("preprocess")(images))[0])
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    if name == "efficientnetb0":
        from_path = keras.applications.EfficientNetB0(include_top=False, weights=path,
                                                      input_shape=(64, 64, 3))
        keras_path = np.asarray(keras.Model(from_path.input, from_path.get_layer(
            layers[0]).output)(PREPROCESS_INPUT[name](rgb)))
        assert np.abs(keras_path - expected).max() > 100 * 1e-4


def test_a_saved_encoder_h5_loads_into_a_new_model(tmp_path):
    """The no-top network's weights saved by Keras (the layout of the ImageNet files) load
    into a new UNet: its encoder then gives the same features, where a fresh one differs."""
    keras.utils.set_random_seed(1)
    source = keras.applications.MobileNetV2(include_top=False, weights=None,
                                            input_shape=(64, 64, 3))
    path = str(tmp_path / "mobilenetv2_notop.weights.h5")
    source.save_weights(path)
    keras.utils.set_random_seed(2)
    loaded = segmodels.build_model("unet", (64, 64, 3), 2, base_filters=4, encoder="mobilenetv2",
                                   encoder_weights=path)
    fresh = segmodels.build_model("unet", (64, 64, 3), 2, base_filters=4, encoder="mobilenetv2")
    x = np.asarray(encoders.EncoderPreprocess("tf")(
        np.random.default_rng(3).integers(0, 256, (1, 64, 64, 3)).astype("uint8")))
    expected = np.asarray(source(x))
    np.testing.assert_allclose(np.asarray(loaded.get_layer("encoder")(x)[-1]), expected,
                               rtol=1e-5, atol=1e-5)
    # the first skip (stride 2) of a fresh encoder differs (deep random features saturate)
    skip = np.asarray(loaded.get_layer("encoder")(x)[0])
    assert not np.allclose(np.asarray(fresh.get_layer("encoder")(x)[0]), skip, atol=1e-3)
    with pytest.raises(ValueError, match="no such file"):
        segmodels.build_model("unet", (64, 64, 3), 2, encoder="resnet50",
                              encoder_weights=str(tmp_path / "nope.h5"))
    with pytest.raises(ValueError, match="not the no-top resnet50 weights"):
        segmodels.build_model("unet", (64, 64, 3), 2, encoder="resnet50", encoder_weights=path)


@pytest.mark.parametrize("name", NAMES)
def test_sizes_not_a_multiple_of_32_name_the_nearest(name):
    with pytest.raises(ValueError, match="nearest valid sizes: 96 or 128"):
        segmodels.build_model("unet", (100, 128, 3), 2, encoder=name)


def test_mixed_precision_keeps_float32_logits():
    keras.mixed_precision.set_dtype_policy("mixed_bfloat16")
    try:
        model = segmodels.build_model("unet", (64, 64, 1), 2, base_filters=4,
                                      encoder="efficientnetb0")
    finally:
        keras.mixed_precision.set_dtype_policy("float32")
    logits = model(np.zeros((1, 64, 64, 1), "uint8"))
    assert model.get_layer("encoder").compute_dtype == "bfloat16"
    assert logits.dtype == "float32"
    assert np.isfinite(float(losses.dice_loss(np.zeros((1, 64, 64, 1), "int32"), logits)))


def test_freeze_encoder_epochs_through_train_py(binary_records, tmp_path):
    """--freeze_encoder_epochs=1 over 2 epochs: the backup after epoch 1 holds exactly the
    encoder weights file it started from (BatchNorm statistics included) while the decoder
    moved; after epoch 2 the encoder moved too."""
    import tensorflow as tf
    keras.utils.set_random_seed(4)
    start = keras.applications.MobileNetV2(include_top=False, weights=None,
                                           input_shape=(64, 64, 3))
    path = str(tmp_path / "start.weights.h5")
    start.save_weights(path)
    run = tmp_path / "run"
    flags = ["--image_size=64", "--base_filters=4", "--steps_per_epoch=3", "--encoder=mobilenetv2",
             f"--encoder_weights={path}", "--freeze_encoder_epochs=1", "--export=false",
             "--patience=5", "--epochs=2"]
    result = train(binary_records, run, *flags)
    assert "encoder: frozen (epoch 1, --freeze_encoder_epochs=1)" in result.stdout
    assert "encoder: trained from now on (epoch 2, --freeze_encoder_epochs=1)" in result.stdout
    # a given --base_filters wins over the encoder UNet's default width, said nowhere
    assert "the encoder UNet's decoder width" not in result.stdout
    assert "--base_filters=4" in (run / "flags.txt").read_text()

    def after(epoch):
        model = segmodels.build_model("unet", (64, 64, 1), 2, base_filters=4,
                                      encoder="mobilenetv2")
        tf.train.Checkpoint(model=model).read(str(run / "backup" / f"ckpt-{epoch}")).expect_partial()
        return model.get_layer("encoder").get_weights(), model.get_layer("up0_conv1").get_weights()
    (encoder_1, decoder_1), (encoder_2, decoder_2) = after(1), after(2)
    for got, expected in zip(encoder_1, start.get_weights()):
        np.testing.assert_array_equal(got, expected)
    assert any(not np.array_equal(a, b) for a, b in zip(encoder_2, encoder_1))
    assert any(not np.array_equal(a, b) for a, b in zip(decoder_2, decoder_1))
    fresh = segmodels.build_model("unet", (64, 64, 1), 2, base_filters=4, encoder="mobilenetv2",
                                  encoder_weights=path)
    assert any(not np.array_equal(a, b) for a, b in zip(
        decoder_1, fresh.get_layer("up0_conv1").get_weights()))  # epoch 1 trained the decoder
    bad = train(binary_records, tmp_path / "x", "--freeze_encoder_epochs=2", check=False)
    assert bad.returncode == 1 and "--freeze_encoder_epochs needs" in bad.stderr
    assert "Traceback" not in bad.stderr and not (tmp_path / "x").exists()
