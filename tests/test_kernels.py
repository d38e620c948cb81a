"""The augmentation's two kernels through their one signature, against each other, numpy
references (projective warp, resize policies, elastic coordinates) and tf.image (colour);
elastic deformation's properties."""
import numpy as np
import pytest
import tensorflow as tf

from segdata import augment, kernels

KERNELS = {"reference": kernels.reference, "xla": kernels.xla}


def _frames(channels, size=(37, 45), seed=0, classes=4):
    rng = np.random.default_rng(seed + channels)
    image = rng.integers(0, 255, size + (channels,), dtype=np.uint8)
    mask = rng.integers(0, classes, size + (1,), dtype=np.uint8)
    return image, mask


def _padded(x, to=(64, 64)):
    """As the host pads frames to a compile bucket: the kernels must read only `sizes`."""
    return np.pad(x, [(0, to[0] - x.shape[0]), (0, to[1] - x.shape[1]), (0, 0)],
                  constant_values=77)


def _run(kernel, image, mask, d, out_size, fill_mode="constant", pad=True):
    size = image.shape[:2]
    if pad:
        image, mask = _padded(image), _padded(mask)
    batched = augment.Draw(*[None if v is None else tf.convert_to_tensor(v)[None] for v in d])
    out_image, out_mask = KERNELS[kernel](tf.constant(image[None]), tf.constant(mask[None]),
                                          tf.constant([size], tf.int32), batched, out_size,
                                          fill_mode, 255)
    return out_image.numpy()[0], out_mask.numpy()[0]


def _np_map_coordinate(coord, size, fill_mode):
    """ImageProjectiveTransformV3's per-axis mapping of a source coordinate (its documented
    fill modes): reflect about the edges (d c b a | a b c d | d c b a), clamp, or none."""
    if fill_mode == "nearest":
        return np.clip(coord, 0, size - 1)
    if fill_mode == "constant":
        return coord
    period = 2.0 * size
    folded = np.mod(coord, period)
    return np.clip(np.where(folded >= size, period - folded - 1, folded), 0, size - 1)


def _np_projective_warp(x, matrix, out_size, interpolation, fill, fill_mode):
    """Numpy reference of a projective warp: output pixel (x, y) reads the source point
    matrix @ (x, y, 1), bilinear from its 4 neighbours or the nearest one (halves away from
    zero); a neighbour outside the frame reads `fill`."""
    h, w = x.shape[:2]
    m = np.asarray(matrix, np.float64)
    ys, xs = np.meshgrid(np.arange(out_size[0]), np.arange(out_size[1]), indexing="ij")
    k = m[2, 0] * xs + m[2, 1] * ys + m[2, 2]
    sx = _np_map_coordinate((m[0, 0] * xs + m[0, 1] * ys + m[0, 2]) / k, w, fill_mode)
    sy = _np_map_coordinate((m[1, 0] * xs + m[1, 1] * ys + m[1, 2]) / k, h, fill_mode)

    def read(r, c):
        inside = (r >= 0) & (r < h) & (c >= 0) & (c < w)
        values = x[np.clip(r, 0, h - 1), np.clip(c, 0, w - 1)].astype(np.float64)
        return np.where(inside[..., None], values, fill)
    if interpolation == "nearest":
        rounded = lambda v: (np.sign(v) * np.floor(np.abs(v) + 0.5)).astype(int)  # noqa: E731
        return read(rounded(sy), rounded(sx))
    y0, x0 = np.floor(sy), np.floor(sx)
    wy, wx = (sy - y0)[..., None], (sx - x0)[..., None]
    y0, x0 = y0.astype(int), x0.astype(int)
    return ((1 - wy) * ((1 - wx) * read(y0, x0) + wx * read(y0, x0 + 1))
            + wy * ((1 - wx) * read(y0 + 1, x0) + wx * read(y0 + 1, x0 + 1)))


@pytest.mark.parametrize("kernel", sorted(KERNELS) + ["ImageProjectiveTransformV3"])
@pytest.mark.parametrize("fill_mode", augment.FILL_MODES)
@pytest.mark.parametrize("channels", [1, 3])
def test_kernels_match_a_numpy_projective_warp(kernel, fill_mode, channels):
    """Affine warps of random pixels, input padded past its true size, against numpy (and
    TF's op against the same numpy): pixels up to float rounding at .5, mask labels except
    where a coordinate lands within float error of a .5."""
    image, mask = _frames(channels)
    config = augment.AugmentConfig(hflip=True, rotation=40, shear=10, zoom=0.3, shift=0.2)
    for seed in range(3):
        key = tf.constant([seed, 1], tf.int64)
        matrix = (augment.resize_matrix(tf.constant([37, 45]), (30, 50))
                  @ augment.augmentation_matrix(key, config, (30, 50)))
        expected_image = np.round(_np_projective_warp(image, matrix.numpy(), (30, 50),
                                                      "bilinear", 0, fill_mode))
        expected_mask = _np_projective_warp(mask, matrix.numpy(), (30, 50), "nearest", 255,
                                            fill_mode)
        if kernel == "ImageProjectiveTransformV3":
            got_image = tf.round(kernels.projective_warp(
                tf.cast(image[None], tf.float32), matrix[None], (30, 50), "BILINEAR", 0,
                fill_mode))[0].numpy()
            got_mask = kernels.projective_warp(mask[None], matrix[None], (30, 50), "NEAREST",
                                               255, fill_mode)[0].numpy()
        else:
            got_image, got_mask = _run(kernel, image, mask, augment.Draw(matrix=matrix),
                                       (30, 50), fill_mode)
            assert got_image.shape == (30, 50, channels) and got_image.dtype == np.uint8
        diff = np.abs(got_image.astype(int) - expected_image)
        assert diff.max() <= 1 and (diff == 0).mean() > 0.99
        assert (got_mask == expected_mask).mean() > 0.995
        if fill_mode == "constant":
            assert (expected_mask == 255).any()  # the test reaches outside the image


def _box_halved(x):
    """2x2 box means: a 2x downscale whose samples fall between 4 source pixels."""
    x = x.astype(np.float64)
    return (x[0::2, 0::2] + x[0::2, 1::2] + x[1::2, 0::2] + x[1::2, 1::2]) / 4


def _antialiased(x):
    """One level of the antialiasing blur in numpy: [1, 2, 1] / 4 along each axis, the edge
    pixel repeated, rounded to integers as the pipeline stores it."""
    x = x.astype(np.float64)
    for axis in (0, 1):
        padded = np.concatenate([np.take(x, [0], axis), x, np.take(x, [-1], axis)], axis)
        before = np.take(padded, range(0, x.shape[axis]), axis)
        after = np.take(padded, range(2, x.shape[axis] + 2), axis)
        x = (before + 2 * x + after) / 4
    return np.round(x)


@pytest.mark.parametrize("xla", [True, False])
@pytest.mark.parametrize("channels", [1, 3])
def test_resize_policies_geometry_like_numpy(xla, channels):
    """A 20x40 frame to 20x20 (pad: the whole frame at half size, centred, rows 5-14; the
    rest fill 0 / ignore) and to 10x10 (crop: a centred half-size window, columns 10-29 of
    the frame). A 2x shrink is antialiased first (one blur level); then each output pixel
    samples between 4 source pixels: the image is their mean, the mask the lower-right one
    (coordinates .5 round away from zero)."""
    image, mask = _frames(channels, size=(20, 40), seed=7)
    blurred = _antialiased(image)
    config = augment.AugmentConfig(xla=xla)
    key = tf.constant([0, 0], tf.int64)
    got_image, got_mask = augment.augment_example(tf.constant(image), tf.constant(mask), key,
                                                  (20, 20), config, "pad", training=False)
    expected_image = np.zeros((20, 20, channels))
    expected_image[5:15] = _box_halved(blurred)
    expected_mask = np.full((20, 20, 1), 255)
    expected_mask[5:15] = mask[1::2, 1::2]
    assert np.abs(got_image.numpy() - np.round(expected_image)).max() <= 1
    np.testing.assert_array_equal(got_mask.numpy(), expected_mask)
    got_image, got_mask = augment.augment_example(tf.constant(image), tf.constant(mask), key,
                                                  (10, 10), config, "crop", training=False)
    assert np.abs(got_image.numpy() - np.round(_box_halved(blurred[:, 10:30]))).max() <= 1
    np.testing.assert_array_equal(got_mask.numpy(), mask[1::2, 11:31:2])


@pytest.mark.parametrize("kernel", sorted(KERNELS))
def test_saturation_and_hue_are_tf_image_adjust(kernel):
    """The elementwise colour steps against tf.image.adjust_saturation / adjust_hue (the
    HSV round trip they replace), on random colours and greys, factors both ways."""
    image, mask = _frames(3, size=(24, 20), seed=11)
    image[:4] = image[:4, :, :1]  # greys: no hue, no saturation
    x = tf.constant(image, tf.float32) / 255
    for saturation, hue in ((1.6, 0.12), (0.4, -0.3), (1.0, 0.5)):
        d = augment.Draw(saturation=tf.constant(saturation), hue=tf.constant(hue))
        got, _ = _run(kernel, image, mask, d, (24, 20), pad=False)
        expected = tf.image.adjust_hue(tf.image.adjust_saturation(x, saturation), hue) * 255
        expected = np.clip(np.round(expected.numpy()), 0, 255)
        diff = np.abs(got.astype(int) - expected)
        assert diff.max() <= 1 and (diff == 0).mean() > 0.98


def _every_draw(channels, seed, elastic=True):
    config = augment.AugmentConfig(hflip=True, vflip=True, rotation=30, zoom=0.2, shear=5,
                                   elastic_alpha=4.0 if elastic else 0.0, brightness=0.2,
                                   contrast=0.3, saturation=0.3, hue=0.05, noise=6)
    d = augment.draw(tf.constant([seed, 9], tf.int64), config, tf.constant([37, 45]), (29, 50),
                     channels, "pad", True)
    return d._replace(centre=tf.constant(101.5))


@pytest.mark.parametrize("fill_mode", augment.FILL_MODES)
@pytest.mark.parametrize("channels", [1, 3])
def test_reference_and_xla_kernels_agree_on_every_draw(fill_mode, channels):
    """Elastic + affine + every photometric draw: the same pixels up to float rounding at .5,
    the same mask labels but where a coordinate lands within float error of a .5."""
    image, mask = _frames(channels, seed=3)
    for seed in range(3):
        d = _every_draw(channels, seed)
        ref_image, ref_mask = _run("reference", image, mask, d, (29, 50), fill_mode)
        xla_image, xla_mask = _run("xla", image, mask, d, (29, 50), fill_mode)
        diff = np.abs(ref_image.astype(int) - xla_image.astype(int))
        assert ref_image.shape == (29, 50, channels) and diff.max() <= 1
        assert (diff == 0).mean() > 0.98
        assert (ref_mask == xla_mask).mean() > 0.995


@pytest.mark.parametrize("kernel", sorted(KERNELS))
def test_unresampled_flips_and_photometric_like_numpy(kernel):
    """No matrix: the flips and brightness + contrast (around the given centre) as numpy
    computes them."""
    image, mask = _frames(1, size=(24, 20))
    x = image.astype(np.float64)
    for flip_x, flip_y in ((False, False), (True, False), (False, True), (True, True)):
        d = augment.Draw(flip_x=tf.constant(flip_x), flip_y=tf.constant(flip_y),
                         gain=tf.constant(1.3), bias=tf.constant(-20.0),
                         centre=tf.constant(float(x.mean())))
        got_image, got_mask = _run(kernel, image, mask, d, (24, 20), pad=False)
        flipped = x[:, ::-1] if flip_x else x
        flipped = flipped[::-1] if flip_y else flipped
        expected = np.clip(np.round((flipped - x.mean()) * 1.3 + x.mean() - 20), 0, 255)
        assert np.abs(got_image - expected).max() <= 1  # float32 vs float64 at .5
        expected_mask = mask[:, ::-1] if flip_x else mask
        np.testing.assert_array_equal(got_mask, expected_mask[::-1] if flip_y else expected_mask)


def test_displacement_field_is_tf_image_resize_bicubic():
    """Within 0.2% of the field's scale (5 px): hundredths of a pixel."""
    coarse = np.random.default_rng(0).normal(0, 5, (2, 3, 3, 2)).astype(np.float32)
    for out_size in ((48, 40), (7, 100)):
        expected = tf.image.resize(coarse, out_size, method="bicubic").numpy()
        got = kernels.displacement_field(tf.constant(coarse), out_size).numpy()
        np.testing.assert_allclose(got, expected, atol=0.01)
        assert np.abs(got).max() > 5  # the field is not flat


def test_elastic_displacement_draws_have_mean_zero_and_stddev_alpha():
    config = augment.AugmentConfig(elastic_alpha=6.0, elastic_grid=4)
    vectors = np.stack([augment.draw(tf.constant([s, 3], tf.int64), config, (64, 64), (64, 64),
                                     1).displacement.numpy() for s in range(300)])
    assert vectors.shape == (300, 4, 4, 2)
    assert abs(vectors.mean()) < 0.15 and abs(vectors.std() - 6.0) < 0.2
    again = augment.draw(tf.constant([7, 3], tf.int64), config, (64, 64), (64, 64), 1)
    np.testing.assert_array_equal(again.displacement.numpy(), vectors[7])  # stateless


@pytest.mark.parametrize("kernel", sorted(KERNELS))
def test_elastic_mask_reads_where_numpy_says(kernel):
    """Elastic alone (identity matrix): each output mask pixel is the input pixel at its
    coordinate plus the field's displacement, rounded, as numpy computes it."""
    image, mask = _frames(1, size=(40, 48), classes=6)
    d = augment.draw(tf.constant([1, 2], tf.int64), augment.AugmentConfig(elastic_alpha=5.0),
                     tf.constant([40, 48]), (40, 48), 1)
    d = augment.Draw(matrix=tf.eye(3), displacement=d.displacement)
    _, got = _run(kernel, image, mask, d, (40, 48))
    field = kernels.displacement_field(d.displacement[None], (40, 48)).numpy()[0]
    y, x = np.meshgrid(np.arange(40), np.arange(48), indexing="ij")
    sy, sx = (np.sign(v) * np.floor(np.abs(v) + 0.5) for v in (y + field[..., 0],
                                                             x + field[..., 1]))
    sy, sx = sy.astype(int), sx.astype(int)
    inside = (sy >= 0) & (sy < 40) & (sx >= 0) & (sx < 48)
    expected = np.where(inside, mask[np.clip(sy, 0, 39), np.clip(sx, 0, 47), 0], 255)
    near_half = np.any([np.abs(np.abs(v) % 1 - 0.5) < 1e-3 for v in (y + field[..., 0],
                                                                    x + field[..., 1])], axis=0)
    assert ((got[..., 0] == expected) | near_half).all()
    assert (got[..., 0] != mask[..., 0]).mean() > 0.3  # the field moved most pixels
    assert (got == 255).any()  # and some read from outside the frame: ignore


def _smooth_image(seed, size=96):
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, (3, 3)).astype(np.float32)
    image = tf.image.resize(coarse[None, :, :, None], (size, size), method="bicubic")[0]
    return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)


@pytest.mark.parametrize("xla", [True, False])
def test_elastic_mask_is_still_a_threshold_of_the_image(xla):
    """The mask is a threshold of the image; elastic + affine moves both by the same
    coordinates, so away from borders it still is (>= 99%); mask values stay within the
    original ones plus the ignore label; the same seed gives the same pair eagerly and in
    a Dataset.map. (Where a contour crosses a pixel, bilinear and nearest may disagree: how
    many such pixels a window holds depends on the draw, hence a mean and a floor.)"""
    config = augment.AugmentConfig(elastic_alpha=8.0, rotation=15, xla=xla)
    run = lambda im, m, s: augment.augment_example(im, m, s, (96, 96), config)  # noqa: E731
    agreement = []
    for seed in range(4):
        image = _smooth_image(seed)
        mask = tf.cast(image > 128, tf.uint8)
        key = tf.constant([5, seed], tf.int64)
        out_image, out_mask = run(image, mask, key)
        mapped = next(iter(tf.data.Dataset.from_tensors((image, mask, key)).map(run)))
        np.testing.assert_array_equal(mapped[0].numpy(), out_image.numpy())
        np.testing.assert_array_equal(mapped[1].numpy(), out_mask.numpy())
        got = out_mask.numpy()
        assert set(np.unique(got).tolist()) <= {0, 1, 255}
        inside = np.pad(got[..., 0] != 255, 2, constant_values=False)
        inside = np.min([np.roll(np.roll(inside, dy, 0), dx, 1)
                         for dy in range(-2, 3) for dx in range(-2, 3)], axis=0)[2:-2, 2:-2, None]
        threshold = (out_image.numpy() > 128).astype(np.uint8)
        agreement.append((threshold[inside] == got[inside]).mean())
        assert (got != mask.numpy()).mean() > 0.02  # it moved
    assert np.mean(agreement) >= 0.99 and min(agreement) >= 0.985


@pytest.mark.parametrize("elastic_alpha", [4.0, 0.0])  # gathers, and the affine op
def test_host_and_device_agree_on_a_batch(elastic_alpha):
    """A frame already at the output size: the host (XLA, one example) and the device path
    (reference, a batch) draw the same field and matrix from the same seed."""
    rng = np.random.default_rng(5)
    images = tf.constant(rng.integers(0, 255, (2, 40, 40, 1), dtype=np.uint8))
    masks = tf.constant(rng.integers(0, 3, (2, 40, 40, 1), dtype=np.uint8))
    seeds = tf.constant([[1, 4], [2, 8]], tf.int64)
    config = augment.AugmentConfig(elastic_alpha=elastic_alpha, rotation=20, hflip=True)
    device_images, device_masks = augment.augment_batch(images, masks, seeds, config)
    for i in range(2):
        host_image, host_mask = augment.augment_example(images[i], masks[i], seeds[i], (40, 40),
                                                        config)
        diff = np.abs(host_image.numpy().astype(int) - device_images[i].numpy().astype(int))
        assert diff.max() <= 1 and (diff == 0).mean() > 0.98
        assert (host_mask.numpy() == device_masks[i].numpy()).mean() > 0.995


def test_frames_of_many_sizes_share_one_compiled_kernel():
    """Inputs are padded to multiples of 64, so frames of different sizes within one bucket
    reuse one traced (and XLA-compiled) kernel, and so do equal configs; a bigger frame
    adds one more."""
    run = lambda h, w: augment.augment_example(  # noqa: E731
        tf.zeros([h, w, 1], tf.uint8), tf.zeros([h, w, 1], tf.uint8),
        tf.constant([0, h * w], tf.int64), (24, 24),
        augment.AugmentConfig(rotation=10, contrast=0.1, fill_mode="reflect"))
    run(33, 47)
    before = augment.xla_traces()
    for h, w in ((37, 45), (64, 64), (50, 61)):
        assert run(h, w)[0].shape == (24, 24, 1)
    assert augment.xla_traces() == before
    run(65, 40)
    assert augment.xla_traces() == before + 1


def test_xla_kernel_takes_one_example():
    image, mask = _frames(1)
    with pytest.raises(ValueError, match="one example at a time"):
        kernels.xla(tf.constant(np.stack([image, image])), tf.constant(np.stack([mask, mask])),
                    tf.constant([[37, 45], [37, 45]]), augment.Draw(matrix=tf.stack([tf.eye(3)] * 2)),
                    (8, 8))
