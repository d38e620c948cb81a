"""The pixel work of the augmentation: two implementations behind one signature.

    kernel(images, masks, sizes, draw, out_size, fill_mode, mask_fill, channels)
        -> (images, masks)

images uint8 (B, h, w, C), masks (B, h, w, 1), possibly padded past `sizes` (B, 2), each
example's true height and width (None: every frame fills its array); `draw` an
augment.Draw of batched values; the result is uint8 (B, H, W, C) and (B, H, W, 1) for
out_size (H, W); `channels=3` returns a gray image as RGB (the gray values repeated),
everything before running on one channel.

With `draw.matrix` set, every output pixel reads ONE source coordinate, the matrix's
image of the pixel plus the elastic displacement at it: bilinear for the image, nearest
for the mask, `fill_mode` outside the frame (constant: 0 for the image, `mask_fill` for
the mask), with ImageProjectiveTransformV3's arithmetic. Without it (the frame is already
at the output size and nothing moves) only the draw's flips apply. Then brightness,
contrast, saturation, hue and noise, and the round to uint8.

- `reference`: plain TF ops, readable; the device path (a batch inside the train step) and
  --noaug_xla run it. An affine warp is ImageProjectiveTransformV3 itself; with an elastic
  displacement (which the op cannot take), bilinear reads by gather_nd.
- `xla`: one XLA-compiled function of flat scalar gathers, which XLA fuses into one loop
  over the output pixels that computes each source coordinate once for every image
  channel and the mask, in bands of output rows (_in_bands); one example at a time. The
  host pipeline compiles its body (`warp_for_xla`) together with the example's draw and
  antialiasing (augment._resample); `xla` compiles it alone.
Tests hold the two against each other and against ImageProjectiveTransformV3.
"""
import numpy as np
import tensorflow as tf

FILL_MODES = ("constant", "reflect", "nearest")


def cubic_weights(out_length, grid):
    """(out_length, grid) weights that resample `grid` values to `out_length` points like
    tf.image.resize's bicubic (Keys' kernel, a = -0.5, half-pixel centres, taps outside
    the grid dropped and the rest renormalised; within 0.1% of the op): a constant, so the
    field is two small matmuls, which XLA compiles (the op's kernel it cannot)."""
    def keys(t):
        t = abs(t)
        if t <= 1:
            return (1.5 * t - 2.5) * t * t + 1
        return ((-0.5 * t + 2.5) * t - 4) * t + 2 if t < 2 else 0.0
    weights = np.zeros((out_length, grid), np.float32)
    for i in range(out_length):
        u = (i + 0.5) * grid / out_length - 0.5
        taps = [k for k in range(int(np.floor(u)) - 1, int(np.floor(u)) + 3) if 0 <= k < grid]
        for k in taps:
            weights[i, k] = keys(u - k)
        weights[i] /= weights[i].sum()
    return weights


def displacement_field(coarse, out_size, first_row=0, rows=None):
    """(B, g, g, 2) displacements on a coarse grid -> (B, H, W, 2), smooth (bicubic); or
    only output rows first_row .. first_row + rows - 1."""
    grid = coarse.shape[1]
    weights = tf.constant(cubic_weights(out_size[0], grid))
    if rows is not None:
        weights = tf.slice(weights, [first_row, 0], [rows, grid])
    cols = tf.constant(cubic_weights(out_size[1], grid))
    return tf.einsum("hi,bijc,wj->bhwc", weights, coarse, cols)


def source_coordinates(matrices, displacement, out_size, first_row=0, rows=None):
    """(ys, xs), each (B, H, W) float32: where each output pixel reads from (or, with
    `rows`, each pixel of output rows first_row ..). The elastic displacement (output
    pixels) moves the output coordinate before the matrix maps it."""
    rows = out_size[0] if rows is None else rows
    t = tf.reshape(matrices, [-1, 9]) / matrices[:, 2:3, 2]  # affine: bottom row (0, 0, 1)
    t = t[:, :, None, None]
    # a column and a row that broadcast: XLA constant-folds a meshgrid into a stored grid
    y = tf.cast(tf.range(rows) + first_row, tf.float32)[None, :, None]
    x = tf.range(out_size[1], dtype=tf.float32)[None, None, :]
    if displacement is not None:
        field = displacement_field(displacement, out_size, first_row, rows)
        y, x = y + field[..., 0], x + field[..., 1]
    xs = t[:, 0] * x + t[:, 1] * y + t[:, 2]
    ys = t[:, 3] * x + t[:, 4] * y + t[:, 5]
    shape = tf.stack([tf.shape(matrices)[0], rows, out_size[1]])
    return tf.broadcast_to(ys, shape), tf.broadcast_to(xs, shape)


def map_coordinate(coord, length, fill_mode):
    """Where a source coordinate outside [0, length) reads from: ImageProjectiveTransformV3's
    MapCoordinate ("constant" leaves it outside, to read the fill value)."""
    length = tf.cast(length, tf.float32)
    if fill_mode == "constant":
        return coord
    if fill_mode == "reflect":
        # [abcd] -> [dcba|abcd|dcba], periodically
        period = 2 * length
        below = period * tf.floor(-coord / period) + coord
        below = tf.where(below < -length, below + period, -below - 1)
        above = coord - period * tf.floor(coord / period)
        above = tf.where(above >= length, period - above - 1, above)
        coord = tf.where(coord < 0, below, tf.where(coord > length - 1, above, coord))
        coord = tf.where(length <= 1, tf.zeros_like(coord), coord)
    return tf.clip_by_value(coord, 0.0, length - 1)


def round_half_away(v):
    """std::round, as the op's nearest-neighbour read."""
    return tf.cast(tf.sign(v) * tf.floor(tf.abs(v) + 0.5), tf.int32)


def frame_mean(images, sizes=None):
    """(B,) mean pixel of each (B, h, w, c) frame; exact for integer pixels (int32 per row,
    exact below 8M values a row, then int64 over the rows). `sizes` (B, 2): each frame's
    true size in an array zero-padded past it."""
    if images.dtype.is_integer:
        rows = tf.reduce_sum(tf.cast(images, tf.int32), [2, 3])
        total = tf.cast(tf.reduce_sum(tf.cast(rows, tf.int64), 1), tf.float32)
    else:
        total = tf.reduce_sum(images, [1, 2, 3])
    if sizes is None:
        return total / tf.cast(tf.reduce_prod(tf.shape(images)[1:]), tf.float32)
    return total / tf.cast(tf.reduce_prod(sizes, 1) * images.shape[-1], tf.float32)


def _saturated(rgb, factor):
    """tf.image.adjust_saturation's result, elementwise: in HSV only S scales (clipped at 1),
    so each channel c becomes v - (v - c) * min(factor, v / (v - min)). Written out because
    XLA miscompiled the op (and rgb_to_hsv) when fused after the gather warp: channels came
    out swapped (seen with TF 2.21; kernels.reference under jit_compile showed it too)."""
    r, g, b = tf.unstack(rgb, axis=-1)
    v, low = tf.maximum(r, tf.maximum(g, b)), tf.minimum(r, tf.minimum(g, b))
    ratio = tf.minimum(factor, v / tf.maximum(v - low, 1e-12))
    return tf.stack([v - (v - c) * ratio for c in (r, g, b)], -1)


def _hue_shifted(rgb, delta):
    """tf.image.adjust_hue's result, elementwise (see _saturated): the hue, in sixths of
    the wheel, moves by 6 * delta; value and chroma stay."""
    r, g, b = tf.unstack(rgb, axis=-1)
    v, low = tf.maximum(r, tf.maximum(g, b)), tf.minimum(r, tf.minimum(g, b))
    chroma = v - low
    safe = tf.maximum(chroma, 1e-12)
    hue = tf.where(v == r, tf.math.floormod((g - b) / safe, 6.0),
                   tf.where(v == g, (b - r) / safe + 2, (r - g) / safe + 4))
    hue = tf.math.floormod(tf.where(chroma > 0, hue, 0.0) + 6 * delta, 6.0)
    channel = lambda n: v - chroma * tf.clip_by_value(  # noqa: E731
        tf.minimum(tf.math.floormod(n + hue, 6.0), 4 - tf.math.floormod(n + hue, 6.0)), 0, 1)
    return tf.stack([channel(5.0), channel(3.0), channel(1.0)], -1)


def photometric(pixels, draw):
    """float32 (B, H, W, C) -> uint8 with the draw's brightness, contrast (around
    draw.centre, the frame's mean before any warp), saturation, hue and noise."""
    x = tf.cast(pixels, tf.float32)
    per_example = lambda v: tf.reshape(v, [-1, 1, 1, 1])  # noqa: E731
    if draw.gain is not None:
        centre = per_example(draw.centre)
        x = (x - centre) * per_example(draw.gain) + centre
    if draw.bias is not None:
        x = x + per_example(draw.bias)
    if x.shape[-1] == 3 and (draw.saturation is not None or draw.hue is not None):
        x = tf.clip_by_value(x, 0, 255) / 255
        if draw.saturation is not None:
            x = _saturated(x, per_example(draw.saturation)[..., 0])  # (B, 1, 1): per channel
        if draw.hue is not None:
            x = _hue_shifted(x, per_example(draw.hue)[..., 0])
        x = x * 255
    if draw.noise is not None:
        x = x + draw.noise
    return tf.cast(tf.clip_by_value(tf.round(x), 0, 255), tf.uint8)


def flip(images, masks, draw):
    """The draw's flips of frames already at the output size (no resampling)."""
    def each(x, flags, axis):
        flipped = tf.reverse(x, [axis])
        return tf.where(tf.reshape(flags, [-1, 1, 1, 1]), flipped, x)
    for flags, axis in ((draw.flip_x, 2), (draw.flip_y, 1)):
        if flags is not None:
            images, masks = each(images, flags, axis), each(masks, flags, axis)
    return images, masks


# -- reference: plain TF ops ------------------------------------------------------------

def _gather(frames, sizes, ys, xs, fill):
    """frames (B, h, w, C) at integer maps ys, xs (B, H, W); `fill` outside `sizes`."""
    height, width = sizes[:, 0, None, None], sizes[:, 1, None, None]
    inside = (ys >= 0) & (ys < height) & (xs >= 0) & (xs < width)
    where = tf.stack([tf.clip_by_value(ys, 0, height - 1), tf.clip_by_value(xs, 0, width - 1)], -1)
    values = tf.gather_nd(frames, where, batch_dims=1)
    return tf.where(inside[..., None], values, tf.cast(fill, frames.dtype))


def _with_channels(images, channels):
    """Gray -> RGB when channels == 3: each pixel times 0x01010101 is a uint32 whose four
    bytes are all that pixel, on any byte order, so its first three bytes are the RGB
    triple; XLA makes that one vectorised pass (a tile or concat costs twice as much)."""
    if channels == 3 and images.shape[-1] == 1:
        return tf.bitcast(tf.cast(images[..., 0], tf.uint32) * 0x01010101, tf.uint8)[..., :3]
    return images


def projective_warp(images, matrices, out_size, interpolation, fill_value=0,
                    fill_mode="constant"):
    """ImageProjectiveTransformV3 on (B, h, w, c) with (B, 3, 3) output -> input matrices."""
    matrices = tf.reshape(matrices, [-1, 9])
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=images, transforms=matrices[:, :8] / matrices[:, 8:9],
        output_shape=tf.convert_to_tensor(out_size, tf.int32),
        fill_value=tf.cast(fill_value, tf.float32), interpolation=interpolation,
        fill_mode=fill_mode.upper())


def _affine_by_op(images, masks, draw, out_size, fill_mode, mask_fill, channels):
    # ImageProjectiveTransformV3 is 4x faster op by op than the gathers of `reference`, but
    # it reads whole arrays: only frames that fill theirs (unpadded) can take it
    pixels = projective_warp(tf.cast(images, tf.float32), draw.matrix, out_size, "BILINEAR", 0,
                             fill_mode)
    masks = projective_warp(masks, draw.matrix, out_size, "NEAREST", mask_fill, fill_mode)
    return _with_channels(photometric(pixels, draw), channels), masks


def reference(images, masks, sizes, draw, out_size, fill_mode="constant", mask_fill=255,
              channels=None):
    if draw.matrix is None:
        images, masks = flip(images, masks, draw)
        return _with_channels(photometric(images, draw), channels), masks
    if sizes is None:  # every frame fills its array (the device path's resized batch)
        sizes = tf.tile(tf.shape(images)[None, 1:3], [tf.shape(images)[0], 1])
        if draw.displacement is None:
            return _affine_by_op(images, masks, draw, out_size, fill_mode, mask_fill, channels)
    elif draw.displacement is None and images.shape[0] == 1:
        frame = lambda x: x[:, :sizes[0, 0], :sizes[0, 1]]  # noqa: E731  (drop the padding)
        return _affine_by_op(frame(images), frame(masks), draw, out_size, fill_mode, mask_fill,
                             channels)
    ys, xs = source_coordinates(draw.matrix, draw.displacement, out_size)
    sizes = tf.cast(sizes, tf.int32)
    ys = map_coordinate(ys, tf.cast(sizes[:, 0, None, None], tf.float32), fill_mode)
    xs = map_coordinate(xs, tf.cast(sizes[:, 1, None, None], tf.float32), fill_mode)
    y0, x0 = tf.floor(ys), tf.floor(xs)
    wy, wx = (ys - y0)[..., None], (xs - x0)[..., None]
    top, left = tf.cast(y0, tf.int32), tf.cast(x0, tf.int32)
    corner = lambda r, c: tf.cast(_gather(images, sizes, r, c, 0), tf.float32)  # noqa: E731
    pixels = ((1 - wy) * ((1 - wx) * corner(top, left) + wx * corner(top, left + 1))
              + wy * ((1 - wx) * corner(top + 1, left) + wx * corner(top + 1, left + 1)))
    masks = _gather(masks, sizes, round_half_away(ys), round_half_away(xs), mask_fill)
    return _with_channels(photometric(pixels, draw), channels), masks


# -- XLA: flat scalar gathers, one fused loop -------------------------------------------

def _read_flat(flat, channels, row_stride, size, y, x, fill):
    """Pixel (y, x) of a flattened (h, row_stride, channels) frame; one scalar gather per
    channel (XLA vectorises those, not a gather of (channels,) rows)."""
    inside = (y >= 0) & (y < size[0]) & (x >= 0) & (x < size[1])
    pixel = tf.clip_by_value(y, 0, size[0] - 1) * row_stride + tf.clip_by_value(x, 0, size[1] - 1)
    values = tf.gather(flat, pixel[..., None] * channels + tf.range(channels))
    return tf.where(inside[..., None], values, tf.cast(fill, flat.dtype))


def _in_bands(compute, height, outputs, bands=4):
    """Tensors `outputs` ((shape, dtype) each, `height` rows) filled by compute(first_row,
    rows), which returns those rows of each, `bands` bands of rows one after the other,
    each written into the outputs in place.

    Why: XLA:CPU splits every large kernel across TensorFlow's intra-op pool, though
    tf.data already runs one example per core; a kernel that ends in an in-place
    dynamic-update-slice is never split, so each band stays on the thread that runs the
    example (BENCHMARKS.md §2: an A/B of 8 pairs). The update comes from TensorFlow's own
    XLA bindings (what Keras's TensorFlow backend uses; no public op lowers to it with a
    loop-varying offset), imported here so that the reference kernel never loads them.
    """
    from tensorflow.compiler.tf2xla.python.xla import dynamic_update_slice
    rows = -(-height // bands)
    # the last band ends at the last row, overlapping its neighbour when bands do not divide
    starts = tf.constant([min(i * rows, height - rows) for i in range(bands)])

    def band(i, *results):
        first = starts[i]
        return (i + 1,) + tuple(
            dynamic_update_slice(result, part, tf.stack([first] + [0] * (result.shape.rank - 1)))
            for result, part in zip(results, compute(first, rows)))
    _, *results = tf.while_loop(lambda i, *_: i < bands, band,
                                (tf.constant(0),) + tuple(tf.zeros(*out) for out in outputs))
    return results


def _flips_by_branch(images, masks, draw, channels):
    """The unresampled frame: one tf.switch_case branch per flip combination, each of which
    XLA fuses into one loop that reads the pixels in flipped order; a select between the
    flipped and the plain frame reads both (the light pipeline lost 11%)."""
    flags = [tf.constant(False) if f is None else f[0] for f in (draw.flip_x, draw.flip_y)]
    which = tf.cast(flags[0], tf.int32) + 2 * tf.cast(flags[1], tf.int32)

    def branch(flip_x, flip_y):
        def run():
            image, mask = images, masks
            for flipped, axis in ((flip_x, 2), (flip_y, 1)):
                if flipped:
                    image, mask = tf.reverse(image, [axis]), tf.reverse(mask, [axis])
            return _with_channels(photometric(image, draw), channels), mask
        return run
    return tf.switch_case(which, [branch(False, False), branch(True, False),
                                  branch(False, True), branch(True, True)])


def warp_for_xla(images, masks, sizes, draw, out_size, fill_mode="constant", mask_fill=255,
                 channels=None):
    """The XLA kernel, not compiled: for a caller that compiles more around it (the draw)."""
    if images.shape[0] != 1:
        raise ValueError(f"kernels.xla takes one example at a time, got a batch of "
                         f"{images.shape[0]}; use kernels.reference for batches")
    if draw.matrix is None:
        return _flips_by_branch(images, masks, draw, channels)
    size = tf.cast(sizes[0], tf.int32)
    stride, depth = tf.shape(images)[2], images.shape[-1]
    flat = tf.reshape(images, [-1])  # the values read are converted to float, not the frame
    flat_mask = tf.reshape(masks, [-1])
    height, width = (int(v) for v in out_size)

    def rows_of(first, rows):
        ys, xs = source_coordinates(draw.matrix, draw.displacement, out_size, first, rows)
        ys = map_coordinate(ys[0], tf.cast(size[0], tf.float32), fill_mode)
        xs = map_coordinate(xs[0], tf.cast(size[1], tf.float32), fill_mode)
        read = lambda r, c: tf.cast(_read_flat(flat, depth, stride, size, r, c, 0),  # noqa
                                    tf.float32)
        y0, x0 = tf.floor(ys), tf.floor(xs)
        top, left = tf.cast(y0, tf.int32), tf.cast(x0, tf.int32)
        wy, wx = (ys - y0)[..., None], (xs - x0)[..., None]
        row = lambda r: (1 - wx) * read(r, left) + wx * read(r, left + 1)  # noqa: E731
        pixels = (1 - wy) * row(top) + wy * row(top + 1)
        mask = _read_flat(flat_mask, 1, stride, size, round_half_away(ys), round_half_away(xs),
                          mask_fill)
        noise = draw.noise
        if noise is not None:
            noise = tf.slice(noise, [0, first, 0, 0], [-1, rows, -1, -1])
        return photometric(pixels[None], draw._replace(noise=noise))[0], mask
    image, mask = _in_bands(rows_of, height, [((height, width, depth), tf.uint8),
                                              ((height, width, 1), masks.dtype)])
    return image[None], mask[None]


# One compile per (padded input shape, out_size, fill mode, set of draws); the host pads
# frames to buckets so that datasets of many sizes compile a few times. No AutoGraph: the
# kernels have no tensor-dependent Python control flow to convert.
_compiled = tf.function(warp_for_xla, jit_compile=True, autograph=False)
# Its own cluster: fused into the resampling one, a gray -> RGB expansion made XLA compute
# the resampling once per output channel
gray_to_rgb = tf.function(lambda images: _with_channels(images, 3), jit_compile=True,
                          autograph=False)


def xla(images, masks, sizes, draw, out_size, fill_mode="constant", mask_fill=255,
        channels=None):
    resampled = draw.matrix is not None
    images, masks = _compiled(images, masks, sizes, draw, out_size, fill_mode, mask_fill,
                              None if resampled else channels)
    if resampled and channels == 3 and images.shape[-1] == 1:
        images = gray_to_rgb(images)
    return images, masks


def xla_traces():
    """How many times the XLA kernel was traced (each trace is one more compile)."""
    return _compiled.experimental_get_tracing_count()
