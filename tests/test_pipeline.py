import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

from segdata import augment, pipeline, records, spec


def _training(records_dir, size, config=None, batch=4, channels=0, **options):
    input_spec = spec.InputSpec.for_records(records_dir, size, channels=channels)
    return pipeline.training_dataset(records_dir, input_spec, batch, config, **options)


def _evaluation(records_dir, split, size, batch, channels=0, policy="stretch", **options):
    input_spec = spec.InputSpec.for_records(records_dir, size, policy, channels)
    return pipeline.evaluation_dataset(records_dir, split, input_spec, batch, **options)

WARP_CASES = {
    "hflip": augment.AugmentConfig(hflip=True),
    "vflip": augment.AugmentConfig(vflip=True),
    "rotation": augment.AugmentConfig(rotation=30),
    "shear": augment.AugmentConfig(shear=15),
    "zoom": augment.AugmentConfig(zoom=0.3),
    "shift": augment.AugmentConfig(shift=0.2),
    "crop": augment.AugmentConfig(crop=0.5),
    "all": augment.AugmentConfig(hflip=True, vflip=True, rotation=30, shear=10, zoom=0.2,
                                 shift=0.1, crop=0.3),
}


def _smooth_image(seed, size=96):
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, (3, 3)).astype(np.float32)
    image = tf.image.resize(coarse[None, :, :, None], (size, size), method="bicubic")[0]
    return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)


@pytest.mark.parametrize("name", sorted(WARP_CASES))
@pytest.mark.parametrize("mode", ["eager", "dataset_map"])
def test_joint_geometry_mask_follows_image(name, mode):
    """The mask is a threshold of the image; after augmentation it must still be (up to
    the pixels a contour crosses, where bilinear and nearest may disagree: more of them
    when the draw magnifies, hence a mean and a floor)."""
    config = WARP_CASES[name]
    agree, changed = [], 0
    for seed in range(6):
        image = _smooth_image(seed)
        mask = tf.cast(image > 128, tf.uint8)
        run = lambda im, m, s: augment.augment_example(im, m, s, (96, 96), config, "stretch")  # noqa
        key = tf.constant([7, seed], tf.int64)
        if mode == "eager":
            out_image, out_mask = run(image, mask, key)
        else:
            ds = tf.data.Dataset.from_tensors((image, mask, key)).map(run)
            out_image, out_mask = next(iter(ds))
        reference = (out_image.numpy() > 128).astype(np.uint8)
        got = out_mask.numpy()
        # away from borders: pixels >= 2 px from the fill region and from the output's edge
        inside = np.pad(got[..., 0] != 255, 2, constant_values=False)
        inside = np.min([np.roll(np.roll(inside, dy, 0), dx, 1)
                         for dy in range(-2, 3) for dx in range(-2, 3)], axis=0)[2:-2, 2:-2, None]
        agree.append((reference[inside] == got[inside]).mean())
        plain = mask.numpy()
        changed += int((plain != got).any())
    assert np.mean(agree) >= 0.99 and min(agree) >= 0.985
    assert changed >= 2, "the augmentation never changed anything"


def test_hflip_matches_numpy_flip():
    image = tf.constant(np.random.default_rng(0).integers(0, 255, (16, 20, 1), dtype=np.uint8))
    mask = tf.constant(np.random.default_rng(1).integers(0, 3, (16, 20, 1), dtype=np.uint8))
    config = augment.AugmentConfig(hflip=True)
    flipped = 0
    for seed in range(8):
        out_image, out_mask = augment.augment_example(image, mask, tf.constant([0, seed], tf.int64),
                                                      (16, 20), config)
        if np.array_equal(out_mask.numpy(), mask.numpy()[:, ::-1]):
            flipped += 1
            np.testing.assert_array_equal(out_image.numpy(), image.numpy()[:, ::-1])
        else:
            np.testing.assert_array_equal(out_image.numpy(), image.numpy())
    assert 0 < flipped < 8


@pytest.mark.parametrize("policy", augment.RESIZE_POLICIES)
def test_resize_policies_shapes_and_mask_values(binary_records, policy):
    ds = _evaluation(binary_records, "val", (40, 56), 3, channels=3, policy=policy)
    for batch in ds:
        image, mask = batch["image"], batch["mask"]
        assert image.dtype == tf.uint8 and mask.dtype == tf.uint8
        assert image.shape[1:] == (40, 56, 3) and mask.shape[1:] == (40, 56, 1)
        values = set(np.unique(mask.numpy()).tolist())
        assert values <= {0, 1, 255}
        if policy == "pad":
            assert 255 in values  # 64x64 into 40x56 leaves padded columns = ignore label
        else:
            assert 255 not in values


def test_augmented_mask_values_subset(multiclass_records):
    config = augment.AugmentConfig(hflip=True, rotation=40, zoom=0.3, shear=10, brightness=0.2,
                                   contrast=0.2, saturation=0.3, hue=0.05, noise=5)
    ds = _training(multiclass_records, (32, 32), config, seed=3)
    for batch in ds.take(5):
        image, mask = batch["image"], batch["mask"]
        assert set(np.unique(mask.numpy()).tolist()) <= {0, 1, 2, 3, 255}
        assert image.shape == (4, 32, 32, 3)


def test_determinism_and_seed_sensitivity(binary_records):
    config = augment.AugmentConfig(hflip=True, rotation=20, brightness=0.1, noise=3)
    make = lambda seed: _training(binary_records, (32, 32), config, seed=seed)  # noqa: E731
    first = [b["image"].numpy() for b in make(5).take(3)]
    again = [b["image"].numpy() for b in make(5).take(3)]
    other = [b["image"].numpy() for b in make(6).take(3)]
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for a, b in zip(first, other))
    # epochs differ: the stream keeps going with new seeds, so epoch 2 is not epoch 1 again
    steps = 28 // 4
    stream = [b["image"].numpy() for b in make(5).take(2 * steps)]
    assert not all(np.array_equal(stream[i], stream[i + steps]) for i in range(steps))


def test_eval_split_yields_every_example_once(binary_records):
    ds = _evaluation(binary_records, "val", (64, 64), 3, with_ids=True)
    ids = [i.decode() for batch in ds for i in batch["id"].numpy()]
    expected = [e["id"] for e in records.read_split(binary_records, "val")]
    assert ids == expected and len(ids) == 8


def test_device_augmentation_matches_shapes(binary_records):
    config = augment.AugmentConfig(hflip=True, rotation=20)
    ds = _training(binary_records, (48, 48), config, augment_on="device")
    batch = next(iter(ds))
    images, masks, seeds = batch["image"], batch["mask"], batch["seed"]
    out_images, out_masks = tf.function(augment.augment_batch)(images, masks, seeds, config)
    assert out_images.shape == images.shape and out_masks.shape == masks.shape
    assert not np.array_equal(out_masks.numpy(), masks.numpy())
    assert set(np.unique(out_masks.numpy()).tolist()) <= {0, 1, 255}


@pytest.mark.parametrize("xla", [True, False])
def test_contrast_centres_on_the_frame_mean_on_host_and_device(xla):
    """Host (XLA or op by op) and device augmentation agree, contrast included: both centre
    it on the frame's mean, not on the warped image's, whose fill pixels pull it down."""
    rng = np.random.default_rng(4)
    image = tf.constant(rng.integers(60, 255, (40, 40, 1), dtype=np.uint8))
    mask = tf.constant(rng.integers(0, 2, (40, 40, 1), dtype=np.uint8))
    seed = tf.constant([3, 11], tf.int64)
    config = augment.AugmentConfig(rotation=40, zoom=0.3, contrast=0.5, xla=xla)
    host, _ = augment.augment_example(image, mask, seed, (40, 40), config)
    device, _ = augment.augment_batch(image[None], mask[None], seed[None], config)
    # the device warp rounds to uint8 before the contrast; the host keeps floats
    diff = np.abs(host.numpy().astype(int) - device[0].numpy().astype(int))
    assert diff.max() <= 2 and (diff == 0).mean() > 0.5
    gain = augment.draw(seed, config, (40, 40), (40, 40), 1).gain.numpy()
    assert abs(gain - 1) > 0.1  # a gain this far from 1 would expose another centre


def test_worker_sharding_partitions_examples(binary_records):
    seen = []
    for worker in range(2):
        context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=worker)
        ds = _evaluation(binary_records, "val", (64, 64), 2, with_ids=True,
                         input_context=context)
        seen.append([i.decode() for b in ds for i in b["id"].numpy()])
    assert not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == sorted(e["id"] for e in records.read_split(binary_records, "val"))


def test_corrupt_shard_and_missing_manifest(binary_records, tmp_path):
    bad = str(tmp_path / "bad")
    shutil.copytree(binary_records, bad)
    shard = os.path.join(bad, "train-00000-of-00001.tfrecord")
    data = bytearray(open(shard, "rb").read())
    data[len(data) // 2] ^= 0xFF
    open(shard, "wb").write(bytes(data))
    with pytest.raises(records.RecordsError, match="train-00000-of-00001.tfrecord"):
        records.list_shards(bad, "train", verify=True)
    assert records.find_corrupt_shards(bad, "train") == [shard]
    with pytest.raises(tf.errors.DataLossError):
        for _ in _training(bad, (32, 32), batch=2, repeat=False):
            pass
    survived = sum(b["image"].shape[0] for b in _training(
        bad, (32, 32), batch=1, repeat=False, shuffle=False, skip_corrupt=True))
    assert 0 < survived < 28
    with pytest.raises(records.RecordsError, match="manifest.json"):
        _training(str(tmp_path), (32, 32))


def test_manifest_cannot_escape_records_folder(binary_records, tmp_path):
    import json
    evil = str(tmp_path / "evil")
    shutil.copytree(binary_records, evil)
    path = os.path.join(evil, "manifest.json")
    manifest = json.load(open(path))
    manifest["splits"]["train"]["shards"][0]["file"] = "../outside.tfrecord"
    json.dump(manifest, open(path, "w"))
    with pytest.raises(records.RecordsError, match="refusing"):
        records.list_shards(evil, "train")


def test_photometric_same_eagerly_and_in_dataset_map():
    """Image-only ops: identical results eagerly and in Dataset.map for the same seed,
    masks untouched, and a numpy reference for brightness + contrast."""
    rng = np.random.default_rng(4)
    image = tf.constant(rng.integers(0, 255, (24, 20, 3), dtype=np.uint8))
    mask = tf.constant(rng.integers(0, 3, (24, 20, 1), dtype=np.uint8))
    config = augment.AugmentConfig(brightness=0.2, contrast=0.3, saturation=0.4, hue=0.1, noise=4)
    seed = tf.constant([3, 9], tf.int64)
    run = lambda im, m, s: augment.augment_example(im, m, s, (24, 20), config)  # noqa: E731
    eager = run(image, mask, seed)
    mapped = next(iter(tf.data.Dataset.from_tensors((image, mask, seed)).map(run)))
    np.testing.assert_array_equal(eager[0].numpy(), mapped[0].numpy())
    np.testing.assert_array_equal(eager[1].numpy(), mask.numpy())
    assert not np.array_equal(eager[0].numpy(), image.numpy())
    # brightness + contrast alone against numpy with the example's own draws
    simple = augment.AugmentConfig(brightness=0.2, contrast=0.3)
    got = augment.augment_example(image, mask, seed, (24, 20), simple)[0].numpy()
    d = augment.draw(seed, simple, (24, 20), (24, 20), 3)
    gain, bias = float(d.gain), float(d.bias)
    x = image.numpy().astype(np.float64)
    expected = np.clip(np.round((x - x.mean()) * gain + x.mean() + bias), 0, 255)
    assert np.abs(got - expected).max() <= 1  # float32 vs float64 rounding at .5
    assert abs(gain - 1) > 0.05 and abs(bias) > 5  # the draws are not neutral


@pytest.mark.parametrize("aug,on,split", [
    (None, "host", "val"),                                        # expansion only
    (dict(hflip=True, brightness=0.2, contrast=0.2), "host", "train"),  # XLA, no resampling
    (dict(rotation=30, zoom=0.2), "host", "train"),               # XLA warp
    (dict(rotation=30, contrast=0.2, elastic_alpha=3), "host", "train"),  # XLA, everything
    (dict(rotation=30, contrast=0.2, xla=False), "host", "train"),  # reference kernel
    (dict(hflip=True, contrast=0.2, xla=False), "host", "train"),   # reference, no resampling
    (dict(rotation=30, contrast=0.2), "device", "train"),         # host only decodes
])
def test_gray_asked_as_rgb_is_the_gray_output_repeated(binary_records, aug, on, split):
    config = augment.AugmentConfig(**aug) if aug else None
    make = lambda channels: (  # noqa: E731
        _evaluation(binary_records, split, (48, 40), 4, channels) if split != "train" else
        _training(binary_records, (48, 40), config, channels=channels, seed=5, augment_on=on))
    for gray, rgb in zip(make(1).take(2), make(3).take(2)):
        assert gray["image"].shape[-1] == 1 and rgb["image"].shape[-1] == 3
        np.testing.assert_array_equal(rgb["image"].numpy(), np.repeat(gray["image"].numpy(), 3, axis=-1))
        np.testing.assert_array_equal(rgb["mask"].numpy(), gray["mask"].numpy())


@pytest.mark.parametrize("aug", [dict(rotation=30, zoom=0.2, contrast=0.3),
                                 dict(hflip=True, vflip=True, brightness=0.2)])
def test_rgb_asked_as_gray_is_the_rgb_output_grayed(multiclass_records, aug):
    """RGB records asked for as gray are grayed before the warp (one channel to augment
    instead of three); the result is the RGB pipeline's output grayed, up to rounding,
    wherever no colour channel was clipped at 0 or 255 (gray first clips only the gray) and
    up to the contrast centre (the gray image's mean, not the mean over R, G and B)."""
    make = lambda channels: _training(  # noqa: E731
        multiclass_records, (48, 40), augment.AugmentConfig(**aug), channels=channels, seed=5)
    for gray, rgb in zip(make(1).take(2), make(3).take(2)):
        assert gray["image"].shape[-1] == 1
        expected = tf.image.rgb_to_grayscale(tf.cast(rgb["image"], tf.float32)).numpy()
        unclipped = np.all((rgb["image"].numpy() > 0) & (rgb["image"].numpy() < 255), -1, keepdims=True)
        diff = np.abs(gray["image"].numpy().astype(np.float32) - expected)[unclipped]
        # rounding twice, and contrast centred on the gray mean instead of the channels' mean:
        # within 3 grey levels; a wrong weight or channel would be tens of levels off
        assert unclipped.mean() > 0.5 and diff.max() <= 3 and diff.mean() < 1
        assert expected.std() > 10  # real images, not a flat frame
        np.testing.assert_array_equal(gray["mask"].numpy(), rgb["mask"].numpy())


@pytest.mark.parametrize("xla", [True, False])
def test_to_gray_like_numpy(xla):
    rgb = np.random.default_rng(7).integers(0, 256, (9, 11, 3)).astype(np.uint8)
    expected = np.round(rgb.astype(np.float64) @ [0.2989, 0.5870, 0.1140])[..., None]
    got = augment.to_gray(tf.constant(rgb), xla).numpy()
    assert got.dtype == np.uint8 and got.shape == (9, 11, 1)
    assert np.abs(got - expected).max() <= 1 and (got == expected).mean() > 0.95


def test_augment_example_needs_known_channels():
    unknown = tf.function(lambda raw: augment.augment_example(
        tf.io.decode_png(raw), tf.zeros([8, 8, 1], tf.uint8), tf.constant([0, 1], tf.int64),
        (8, 8)))
    with pytest.raises(ValueError, match="channels known"):
        unknown.get_concrete_function(tf.TensorSpec([], tf.string))
