"""The one inference path: the SavedModel serves what the Keras model sees through
segdata.serving, tiles blend to the whole-image answer, flips average, TFLite agrees."""
import numpy as np
import pytest
import tensorflow as tf

import keras
import segmodels
from segdata import augment, serving
from segtrain import export

SIZES = [(40, 56), (64, 64), (33, 90), (100, 30), (97, 131)]


def _unet(channels, num_classes, size=(32, 32)):
    keras.utils.set_random_seed(3)
    return segmodels.build_model("unet", size + (channels,), num_classes, base_filters=4,
                                 depth=2, dropout=0.0, batch_norm=True)


def _near_ties(logits, tolerance=1e-4):
    """Pixels whose two best classes (or a sigmoid logit and 0) are within `tolerance`."""
    if logits.shape[-1] == 1:
        return np.abs(logits[..., 0]) < tolerance
    top = np.sort(logits, axis=-1)
    return top[..., -1] - top[..., -2] < tolerance


@pytest.mark.parametrize("policy", augment.RESIZE_POLICIES)
def test_savedmodel_masks_equal_keras_through_the_same_mapping(policy, tmp_path):
    """Every policy, random images of several sizes and aspect ratios: the exported
    signature's masks are the Keras model's through serving.predict_logits, pixel for pixel,
    except where two logits are within float rounding of each other."""
    channels, num_classes = (3, 3) if policy == "pad" else (1, 2)
    model = _unet(channels, num_classes)
    contract = serving.InputContract((32, 32), policy, channels, num_classes)
    served = tf.saved_model.load(export.export_saved_model(model, str(tmp_path / "sm"), contract))
    assert serving.InputContract.from_json(served.input_contract.numpy().decode()) == contract
    assert (tmp_path / "sm" / "assets" / serving.FILENAME).exists()
    rng = np.random.default_rng(0)
    differ = ties = total = 0
    for height, width in SIZES:
        image = rng.integers(0, 256, (height, width, channels), dtype=np.uint8)
        logits, seen = serving.predict_logits(lambda x: model(x, training=False), image, contract)
        expected = serving.mask_of(logits, seen, 255).numpy()
        out = served.signatures["serving_default"](images=tf.constant(image[None]))
        got = out["mask"].numpy()[0, ..., 0]
        assert got.shape == (height, width) and out["logits"].shape[1:3] == (height, width)
        np.testing.assert_allclose(out["probabilities"].numpy()[0],
                                   serving.probabilities(out["logits"][0]).numpy(), atol=1e-6)
        mismatch = got != expected
        near = _near_ties(logits.numpy()) & seen.numpy()
        assert not (mismatch & ~near).any(), f"{policy} {height}x{width}"
        differ += int(mismatch.sum())
        ties += int(near.sum())
        total += height * width
        if policy == "crop":  # outside the centre crop the model saw nothing: ignore label
            assert (got[~seen.numpy()] == 255).all()
    assert differ <= 0.001 * total
    print(f"\n{policy}: {differ} of {total} pixels differ, all near-ties ({ties} near-ties)")


def _pointwise_model(channels=1, classes=3):
    """A 1x1-convolution network, fully convolutional: flip-equivariant exactly, and a
    window of it sees what the whole image sees."""
    inputs = keras.Input((None, None, channels), dtype="uint8")
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    x = keras.layers.Conv2D(classes, 1, kernel_initializer=keras.initializers.RandomNormal(seed=1),
                            bias_initializer="ones")(x)
    return keras.Model(inputs, x)


def _three_by_three_model(channels=1, classes=3):
    """A 3x3 convolution ('same' zero padding): receptive field radius 1, smaller than the
    quarter of the overlap a window discards at its inner edges (2 px at 32 px, 0.25)."""
    inputs = keras.Input((None, None, channels), dtype="uint8")
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    x = keras.layers.Conv2D(classes, 3, padding="same",
                            kernel_initializer=keras.initializers.RandomNormal(seed=2))(x)
    return keras.Model(inputs, x)


def test_tiled_logits_equal_the_whole_image_for_a_small_receptive_field():
    model = _three_by_three_model()
    contract = serving.InputContract((32, 32), "stretch", 1, 3)
    rng = np.random.default_rng(1)
    for height, width in ((100, 77), (128, 128), (32, 200)):  # 4x the model's side, and more
        image = tf.constant(rng.integers(0, 256, (height, width, 1), dtype=np.uint8))
        tiled, seen = serving.predict_logits(model, image, contract, tile="model", overlap=0.25,
                                             batch_size=3)
        whole = model(image[None])[0].numpy()
        np.testing.assert_allclose(tiled.numpy(), whole, atol=1e-5)
        assert seen.numpy().all()
    # no overlap: windows' zero-padded edges are not blended away and do differ
    untidy, _ = serving.predict_logits(model, image, contract, tile=(32, 40), overlap=0.0)
    assert np.abs(untidy.numpy() - whole).max() > 1e-3


def test_images_smaller_than_a_tile_are_mapped_whole():
    model = _unet(1, 2)
    contract = serving.InputContract((32, 32), "stretch", 1, 2)
    rng = np.random.default_rng(2)
    for shape in ((1, 1, 1), (1, 50, 1), (20, 200, 1)):
        image = tf.constant(rng.integers(0, 256, shape, dtype=np.uint8))
        tiled, seen = serving.predict_logits(model, image, contract, tile="model")
        whole, whole_seen = serving.predict_logits(model, image, contract)
        assert tiled.shape == shape[:2] + (1,)
        np.testing.assert_array_equal(tiled.numpy(), whole.numpy())
        np.testing.assert_array_equal(seen.numpy(), whole_seen.numpy())
    with pytest.raises(ValueError, match="--tile_overlap"):
        serving.predict_logits(model, image, contract, tile="model", overlap=1.0)


@pytest.mark.parametrize("tta", ["hflip", "hvflip"])
def test_flip_tta_of_a_flip_equivariant_model_is_the_plain_prediction(tta):
    model = _pointwise_model()
    contract = serving.InputContract((32, 32), "stretch", 1, 3)
    image = tf.constant(np.random.default_rng(3).integers(0, 256, (45, 61, 1), dtype=np.uint8))
    plain, _ = serving.predict_logits(model, image, contract)
    flipped, _ = serving.predict_logits(model, image, contract, tta=tta)
    np.testing.assert_allclose(flipped.numpy(), plain.numpy(), atol=1e-5)
    # a model that is not flip-equivariant gives another answer
    ramp = _three_by_three_model()
    a, _ = serving.predict_logits(ramp, image, contract)
    b, _ = serving.predict_logits(ramp, image, contract, tta=tta)
    assert np.abs(a.numpy() - b.numpy()).max() > 1e-3


def test_savedmodel_tiled_signature_equals_the_keras_tiled_path(tmp_path):
    model = _unet(1, 2)
    contract = serving.InputContract((32, 32), "stretch", 1, 2)
    served = tf.saved_model.load(export.export_saved_model(model, str(tmp_path / "sm"), contract))
    image = np.random.default_rng(4).integers(0, 256, (70, 90, 1), dtype=np.uint8)
    for overlap in (0.25, 0.5):
        logits, _ = serving.predict_logits(lambda x: model(x, training=False), image, contract,
                                           tile="model", overlap=overlap)
        out = served.signatures["tiled"](images=tf.constant(image[None]),
                                         tile_overlap=tf.constant(overlap))
        np.testing.assert_allclose(out["logits"].numpy()[0], logits.numpy(), atol=1e-4)


def test_contract_round_trip_and_contradicting_flags(tmp_path):
    contract = serving.InputContract((48, 64), "pad", 3, 4, 255, ("a", "b", "c", "d"))
    contract.save(str(tmp_path))
    assert serving.InputContract.load(str(tmp_path)) == contract
    contract.check(resize="pad", image_size=(48, 64))
    with pytest.raises(ValueError, match=r"--resize=crop contradicts .*resize=pad"):
        contract.check(resize="crop")
    with pytest.raises(ValueError, match="no input contract"):
        serving.InputContract.load(str(tmp_path / "nothing"))


def test_float32_copy_of_a_mixed_precision_model_computes_the_same(tmp_path):
    keras.mixed_precision.set_dtype_policy("mixed_bfloat16")
    try:
        mixed = _unet(1, 3)
    finally:
        keras.mixed_precision.set_dtype_policy("float32")
    copy = export.float32_copy(mixed)
    assert all(layer.compute_dtype == "float32" for layer in copy.layers[1:])
    images = np.random.default_rng(5).integers(0, 256, (2, 32, 32, 1), dtype=np.uint8)
    a, b = np.asarray(mixed(images), np.float32), np.asarray(copy(images))
    assert (a.argmax(-1) == b.argmax(-1)).mean() > 0.95  # bf16 rounding apart


def _ops_and_xla_marks(saved_model_dir):
    """Every op of a SavedModel's graph and functions, and whether any function or node
    carries _XlaMustCompile (which TF Serving, built without XLA's JIT, cannot run)."""
    from tensorflow.core.protobuf import saved_model_pb2
    proto = saved_model_pb2.SavedModel()
    with open(f"{saved_model_dir}/saved_model.pb", "rb") as handle:
        proto.ParseFromString(handle.read())
    ops, marked = set(), False
    for graph in proto.meta_graphs:
        functions = list(graph.graph_def.library.function)
        nodes = list(graph.graph_def.node) + [n for f in functions for n in f.node_def]
        ops |= {node.op for node in nodes}
        marked |= any(n.attr["_XlaMustCompile"].b for n in nodes if "_XlaMustCompile" in n.attr)
        marked |= any(f.attr["_XlaMustCompile"].b for f in functions if "_XlaMustCompile" in f.attr)
    return ops, marked


@pytest.mark.parametrize("policy", augment.RESIZE_POLICIES)
@pytest.mark.parametrize("channels", [1, 3])
def test_exported_graph_runs_without_xla(policy, channels, tmp_path):
    """A contract trained with the XLA kernels (the host default) still exports a graph of
    plain TF ops: no Xla* op, nothing marked _XlaMustCompile."""
    contract = serving.InputContract((32, 32), policy, channels, 2, xla=True)
    path = export.export_saved_model(_unet(channels, 2), str(tmp_path / "sm"), contract)
    ops, marked = _ops_and_xla_marks(path)
    assert "ImageProjectiveTransformV3" in ops or "GatherNd" in ops or policy == "stretch"
    assert not marked and not sorted(op for op in ops if op.startswith("Xla"))


@pytest.mark.parametrize("policy", ["stretch", "pad"])
def test_logits_keep_their_value_up_to_the_border(policy):
    """A constant logit map scaled back 4x: every pixel the model saw holds the constant,
    corners too (a zero fill past the outermost logit centres scaled a corner by ~0.4)."""
    size = (128, 96) if policy == "pad" else (128, 128)
    matrix = augment.resize_matrix(tf.constant(size), (32, 32), policy)
    back, seen = serving.to_original(tf.fill([32, 32, 2], 3.0), matrix, tf.constant(size))
    seen = seen.numpy()
    assert seen[0, 0] and seen[-1, -1] and seen.mean() > 0.99
    np.testing.assert_allclose(back.numpy()[seen], 3.0, rtol=1e-6)


def test_tile_overlap_is_bounded_in_the_signature_and_the_tools(tmp_path):
    with pytest.raises(ValueError, match="--tile_overlap=0.99"):
        serving.check_tile_overlap(0.99)
    serving.check_tile_overlap(serving.MAX_TILE_OVERLAP)
    contract = serving.InputContract((32, 32), "stretch", 1, 2)
    served = tf.saved_model.load(export.export_saved_model(_unet(1, 2), str(tmp_path / "sm"),
                                                           contract))
    images = tf.zeros([1, 64, 64, 1], tf.uint8)
    out = served.signatures["tiled"](images=images, tile_overlap=tf.constant(0.5))
    assert out["mask"].shape[1:3] == (64, 64)
    with pytest.raises(tf.errors.InvalidArgumentError, match="tile_overlap"):
        served.signatures["tiled"](images=images, tile_overlap=tf.constant(0.99))
