"""Native-resolution training (--train_crop): scaled windows, foreground centring, the
whole-frame evaluation canvas, serving frames larger than it, antialiasing."""
import csv
import json
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from harness import TINY_WINDOWS, tool, train
from segdata import records
from segdata import augment, serving

WINDOW = (32, 32)


def _ramp(size=(200, 200)):
    """uint8 frame whose value is the column index: the slope along a row of any resampled
    window is source pixels per output pixel."""
    return np.broadcast_to(np.arange(size[1], dtype=np.uint8)[None, :, None],
                           size + (1,)).copy()


def _window(image, mask, seed, data_scale=1.0, **config):
    out_image, out_mask = augment.augment_example(
        tf.constant(image), tf.constant(mask), tf.constant([seed, 3], tf.int64), WINDOW,
        augment.AugmentConfig(**config), augment.SCALE, training=True, data_scale=data_scale)
    return out_image.numpy().astype(float), out_mask.numpy()


def _slope(window):
    return float(np.mean(window[:, 24, 0] - window[:, 8, 0]) / 16)


@pytest.mark.parametrize("xla", [True, False])
def test_windows_are_cut_at_the_drawn_scale(xla):
    image, mask = _ramp(), np.zeros((200, 200, 1), np.uint8)
    half = [_slope(_window(image, mask, s, 0.5, xla=xla)[0]) for s in range(5)]
    np.testing.assert_allclose(half, 2.0, atol=0.07)  # data_scale 0.5: 2 source px a pixel
    jittered = [_slope(_window(image, mask, s, scale=(0.5, 2.0), xla=xla)[0])
                for s in range(30)]
    assert 0.5 - 0.07 <= min(jittered) < 0.75 and 1.5 < max(jittered) <= 2.0 + 0.07
    # log-uniform: as many windows magnified as shrunk
    assert 8 <= sum(slope < 1 for slope in jittered) <= 22
    # every window lies inside the frame (scaled, it is larger than the window)
    origins = [_window(image, mask, s, xla=xla)[0][0, 0, 0] for s in range(30)]
    assert min(origins) >= 0 and max(origins) <= 200 - 32 and len(set(origins)) > 10


def test_compiled_host_path_gives_the_op_by_op_example():
    """The host draws, blurs and resamples a window in one XLA computation on a frame padded
    to the dataset's canvas; op by op (--noaug_xla) the same seed gives the same example:
    every draw (scale, foreground centre, flips, rotation, elastic, contrast around the
    frame's own mean, not the padding's), shrinks that blur first included."""
    rng = np.random.default_rng(4)
    image = rng.integers(0, 256, (45, 61, 1), dtype=np.uint8)
    mask = np.zeros((45, 61, 1), np.uint8)
    mask[30:33, 50:53] = 2
    blurred = 0
    for seed in range(6):
        out = {}
        for xla in (True, False):
            config = augment.AugmentConfig(xla=xla, scale=(0.3, 1.5), crop_foreground=0.5,
                                           hflip=True, rotation=20, elastic_alpha=3.0,
                                           contrast=0.3, fill_mode="reflect")
            out[xla] = [x.numpy().astype(int) for x in augment.augment_example(
                tf.constant(image), tf.constant(mask), tf.constant([seed, 5], tf.int64), WINDOW,
                config, augment.SCALE, training=True, pad_to=(64, 128))]
        assert np.abs(out[True][0] - out[False][0]).max() <= 1
        assert (out[True][1] == out[False][1]).mean() > 0.995
        # a window of the 0.3-0.67x draws holds more than its 32 px of frame: it was blurred
        blurred += out[True][0].std() < 0.7 * image.std()
    assert blurred >= 1


def _rare_object_frame():
    """128x128: class 1 over the left quarter, one 3x3 object of class 2 at (100, 100)."""
    mask = np.zeros((128, 128, 1), np.uint8)
    mask[:, :32] = 1
    mask[99:102, 99:102] = 2
    image = (mask * 60 + 20).astype(np.uint8)
    return image, mask


def test_crop_foreground_centres_windows_on_present_classes():
    image, mask = _rare_object_frame()
    with_object = lambda p: [(_window(image, mask, s, crop_foreground=p)[1] == 2).any()  # noqa
                             for s in range(40)]
    centred = with_object(1.0)
    # a class drawn uniformly among the two present: about half the windows hold the object
    assert 10 <= sum(centred) <= 30
    windows = [_window(image, mask, s, crop_foreground=1.0)[1] for s in range(40)]
    assert all(((w == 1) | (w == 2)).any() for w in windows)  # never only background
    # at random, a 32 px window holds the 3x3 object in ~(34/128)^2 = 7% of draws
    assert sum(with_object(0.0)) <= 8


@pytest.mark.parametrize("xla", [True, False])
def test_evaluation_places_the_whole_frame_on_the_canvas(xla):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (40, 56, 1), dtype=np.uint8)
    mask = rng.integers(0, 3, (40, 56, 1), dtype=np.uint8)
    got_image, got_mask = augment.augment_example(
        tf.constant(image), tf.constant(mask), tf.constant([0, 0], tf.int64), (64, 64),
        augment.AugmentConfig(xla=xla, scale=(0.5, 2.0), crop_foreground=1.0),  # training's
        augment.SCALE, training=False, mask_fill=255)
    np.testing.assert_array_equal(got_image.numpy()[:40, :56], image)
    np.testing.assert_array_equal(got_mask.numpy()[:40, :56], mask)
    assert (got_image.numpy()[40:] == 0).all() and (got_image.numpy()[:, 56:] == 0).all()
    assert (got_mask.numpy()[40:] == 255).all() and (got_mask.numpy()[:, 56:] == 255).all()


def _scale_contract(canvas=(32, 32), data_scale=1.0):
    return serving.InputContract(canvas, augment.SCALE, 1, 2, data_scale=data_scale,
                                 train_crop=(16, 16))


@pytest.mark.parametrize("size", [(20, 24), (50, 70), (20, 90)])
def test_serving_maps_every_pixel_of_any_frame(size):
    """A model whose logit is its input pixel: the served logits are the frame itself,
    whole on the canvas (20x24) or in canvas windows (larger on either side)."""
    image = np.random.default_rng(1).integers(0, 256, size + (1,), dtype=np.uint8)
    identity = lambda x: tf.cast(x[..., :1], tf.float32)  # noqa: E731
    logits, seen = serving.predict_logits(identity, tf.constant(image), _scale_contract())
    assert logits.shape == size + (1,) and bool(tf.reduce_all(seen))
    np.testing.assert_allclose(logits.numpy(), image.astype(np.float32), atol=1e-3)


@pytest.mark.parametrize("values, message", [
    (dict(scale=(2, 1)), "--aug_scale=2,1: expected MIN,MAX with 0 < MIN <= MAX"),
    (dict(scale=("0.7", "x")), "--aug_scale=0.7,x: expected MIN,MAX"),
    (dict(scale=(0, 1)), "--aug_scale=0,1: expected MIN,MAX"),
    (dict(crop_foreground=1.5), "--crop_foreground=1.5: a probability in [0, 1]"),
])
def test_bad_window_augmentation_values_are_named(values, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        augment.AugmentConfig(**values)


def test_contract_round_trips_and_old_contracts_load():
    contract = _scale_contract((64, 96), 0.5)
    again = serving.InputContract.from_json(contract.to_json())
    assert again == contract and again.source_canvas() == (128, 192)
    old = json.loads(serving.InputContract((32, 32), "stretch", 1, 2).to_json())
    for key in ("data_scale", "train_crop"):
        del old[key]
    assert serving.InputContract.from_json(json.dumps(old)).data_scale is None
    with pytest.raises(ValueError, match="--data_scale=None: must be > 0"):
        serving.InputContract((32, 32), augment.SCALE, 1, 2)


# -- antialiasing ------------------------------------------------------------------------

@pytest.mark.parametrize("path", ["plain", "warp", "scale"])
def test_shrinking_is_antialiased_like_tf_image_resize(path):
    """A 4x shrink of random noise: tf.image.resize(antialias=True) keeps ~1/4 of the
    noise's spread; reading every 4th pixel keeps all of it (aliasing). Smooth content
    comes out as the antialiased resize gives it."""
    rng = np.random.default_rng(2)
    noise = rng.integers(0, 256, (256, 256, 1), dtype=np.uint8)
    yy, xx = np.mgrid[:256, :256]
    smooth = (128 + 60 * np.sin(xx / 23.0) * np.cos(yy / 31.0)).astype(np.uint8)[..., None]
    mask = np.zeros((256, 256, 1), np.uint8)

    def shrunk(image):
        if path == "scale":
            return augment.augment_example(
                tf.constant(image), tf.constant(mask), tf.constant([0, 0], tf.int64), (64, 64),
                None, augment.SCALE, training=False, data_scale=0.25)[0]
        config = augment.AugmentConfig(rotation=1e-4) if path == "warp" else None
        return augment.augment_example(tf.constant(image), tf.constant(mask),
                                       tf.constant([0, 0], tf.int64), (64, 64), config,
                                       "stretch", training=path == "warp")[0]

    def reference(image, antialias):
        return tf.image.resize(tf.constant(image, tf.float32), (64, 64),
                               antialias=antialias).numpy()
    ours = shrunk(noise).numpy().astype(float)
    assert 0.6 < ours.std() / reference(noise, True).std() < 1.6
    assert reference(noise, False).std() > 2 * ours.std()
    assert np.abs(shrunk(smooth).numpy() - reference(smooth, True)).mean() < 2.0


# -- through train.py and the tools, as a user runs them --------------------------------

CROP = ["--train_crop=32", "--aug_scale=0.8,1.25", "--crop_foreground=0.5", "--epochs=2",
        "--steps_per_epoch=3"]


@pytest.fixture(scope="module")
def many_sizes_records(tmp_path_factory):
    from conftest import make_records
    sizes = [(40 + 7 * (i % 4), 48 + 9 * (i // 4)) for i in range(12)]
    return make_records(str(tmp_path_factory.mktemp("sizes")), "sizes", count=36, size=sizes,
                        num_classes=3)


def test_deeplab_for_any_size_computes_what_the_fixed_size_export_computes():
    """--train_crop builds DeepLabV3+ for any input size (its image pooling repeated by a
    broadcast), and exports it at the canvas (UpSampling2D): the same weights give the
    same logits, and the any-size model takes other sizes too."""
    import segmodels
    options = dict(encoder="mobilenetv2", aspp_filters=8)
    anysize = segmodels.build_model("deeplabv3plus", (None, None, 1), 3, **options)
    fixed = segmodels.build_model("deeplabv3plus", (64, 96, 1), 3, **options)
    fixed.set_weights(anysize.get_weights())
    images = np.random.default_rng(3).integers(0, 255, (2, 64, 96, 1)).astype("uint8")
    np.testing.assert_allclose(np.asarray(anysize(images)), np.asarray(fixed(images)),
                               atol=1e-5)
    assert anysize(images[:, :32, :48]).shape == (2, 32, 48, 3)


def test_crop_training_scores_are_what_the_export_gives(many_sizes_records, tmp_path):
    """Validation and test run on whole frames of 12 sizes on one canvas; the test split's
    confusion matrix in metrics.json equals tools/evaluate.py's with the exported
    model.keras and SavedModel, at the model's resolution and mapped back to the frames."""
    run_dir = str(tmp_path / "run")
    out = train(many_sizes_records, run_dir, *CROP, base=TINY_WINDOWS).stdout
    splits = records.load_manifest(many_sizes_records)["splits"]
    largest = np.max([splits[s]["max_size"] for s in ("val", "test")], axis=0)
    assert len({tuple(s) for s in (splits["val"]["min_size"], largest)}) == 2  # sizes vary
    canvas = tuple(int(-(-side // 4) * 4) for side in largest)  # depth 2: multiples of 4
    assert f"eval_canvas={canvas}" in out
    contract = serving.InputContract.load(run_dir)
    assert contract.resize == augment.SCALE and contract.train_crop == (32, 32)
    with open(os.path.join(run_dir, "metrics.json")) as handle:
        expected = json.load(handle)["confusion_matrix"]
    assert sum(map(sum, expected)) > 0
    for exported, extra in (("model.keras", []), ("export", []),
                            ("model.keras", ["--original_size"])):
        result_path = str(tmp_path / f"eval_{exported}_{len(extra)}.json")
        tool("evaluate.py", f"--model={os.path.join(run_dir, exported)}",
             f"--data_dir={many_sizes_records}", "--split=test", f"--output={result_path}",
             *extra)
        with open(result_path) as handle:
            assert json.load(handle)["confusion_matrix"] == expected, (exported, extra)


def test_a_run_without_export_scores_its_best_checkpoint(many_sizes_records, tmp_path):
    """--noexport still writes the input contract: evaluate.py scores the any-size
    best.keras on whole frames as the loop did (metrics.json's test confusion matrix)."""
    run_dir = tmp_path / "run"
    train(many_sizes_records, str(run_dir), *CROP, "--noexport", base=TINY_WINDOWS)
    assert not (run_dir / "model.keras").exists()
    expected = json.loads((run_dir / "metrics.json").read_text())["confusion_matrix"]
    result_path = tmp_path / "eval.json"
    tool("evaluate.py", f"--model={run_dir / 'best.keras'}", f"--data_dir={many_sizes_records}",
         "--split=test", f"--output={result_path}")
    assert json.loads(result_path.read_text())["confusion_matrix"] == expected


@pytest.mark.parametrize("flags, message", [
    (["--aug_scale=0.5,2"], "--aug_scale: only with --train_crop"),
    (["--train_crop=32", "--image_size=32"], "--image_size and --train_crop"),
    (["--train_crop=30"], "--train_crop=30: --model=unet needs sides that are multiples of 4"),
    (["--train_crop=32", "--aug_scale=2,1"], "--aug_scale=2,1: expected MIN,MAX with 0 < MIN"),
    (["--train_crop=40", "--model=deeplabv3plus", "--encoder=mobilenetv2"],
     "--train_crop=40: --model=deeplabv3plus needs sides that are multiples of 16"),
])
def test_bad_crop_flags_get_one_line_and_write_nothing(binary_records, tmp_path, flags,
                                                       message):
    run_dir = tmp_path / "run"
    result = train(binary_records, str(run_dir), *flags, check=False, base=TINY_WINDOWS)
    assert result.returncode == 1, result.stderr[-2000:]
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not run_dir.exists()


def test_frames_of_many_sizes_compile_the_kernel_once(tmp_path):
    """Every frame is padded to the dataset's largest for the XLA kernel: one compile for
    a first epoch over 8 sizes, not one per size bucket (tools/benchmark_frame_sizes.py)."""
    out = tool("benchmark_frame_sizes.py", f"--work={tmp_path}", "--sizes=8", "--count=16",
               "--image_size=64", "--json").stdout
    result = json.loads(out.strip().splitlines()[-1])
    assert result["frames"] == 16 and result["min_size"] != result["max_size"]
    assert result["compiles"] == 1


def test_frames_prepare_resized_are_served_through_the_same_resize(tmp_path):
    """prepare --resize=32,32 stretched 48x64 frames; a model trained on them with the pad
    policy must see a raw 48x64 frame stretched to 32x32 first (the contract records
    prepare's size), not padded with its own aspect ratio."""
    from segdata import prepare, synthetic
    files = synthetic.generate(str(tmp_path / "files"), count=6, size=(48, 64))
    out = str(tmp_path / "records")
    prepare.prepare(prepare.PrepareConfig(input=files, output=out, resize=(32, 32),
                                          progress=False, workers=1))
    stored = records.read_split(out, "train")[0]
    raw = np.asarray(Image.open(os.path.join(files, "frames",
                                             f"frame_{stored['id']}.png")))[..., None]
    contract = serving.InputContract((32, 32), "pad", 1, 2, prepared_size=(32, 32))
    as_trained = serving.to_model_input(tf.constant(stored["image"]), contract)[0].numpy()
    served = serving.to_model_input(tf.constant(raw), contract)[0].numpy()
    unaware = serving.to_model_input(
        tf.constant(raw), serving.InputContract((32, 32), "pad", 1, 2))[0].numpy()
    error = lambda x: np.abs(x.astype(float) - as_trained).mean()  # noqa: E731
    assert error(served) < 4 and error(unaware) > 4 * error(served)


@pytest.mark.parametrize("extra", [
    ["--strategy=mirrored", "--logical_cpus=2", "--augment_on=device",
     "--mixed_precision=mixed_bfloat16", "--aug_rotation=10"],
    ["--data_service={address}", "--aug_rotation=10"],
], ids=["2replicas-device-bf16", "data_service"])
def test_windows_on_replicas_device_augmentation_and_the_data_service(
        many_sizes_records, data_service_address, tmp_path, extra):
    """The configurations users run: windows cut on the host (or a tf.data service worker),
    augmented there or on the device, over 2 replicas; training learns and the whole-frame
    evaluation covers every test pixel once."""
    run_dir = tmp_path / "run"
    flags = [flag.format(address=data_service_address) for flag in extra]
    out = train(many_sizes_records, str(run_dir), *CROP, "--epochs=3", "--batch_norm", *flags,
                base=TINY_WINDOWS).stdout
    assert "train_crop=(32, 32)" in out
    losses = [float(row["loss"]) for row in csv.DictReader(open(run_dir / "log.csv"))]
    assert losses[-1] < losses[0]
    manifest = records.load_manifest(many_sizes_records)
    test_pixels = sum(e["mask"].size for e in records.read_split(many_sizes_records, "test"))
    matrix = json.loads((run_dir / "metrics.json").read_text())["confusion_matrix"]
    assert sum(map(sum, matrix)) == test_pixels and manifest["splits"]["test"]["count"] > 1
