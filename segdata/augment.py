"""Joint image/mask augmentation: one seed per example, one warp per example.

Every geometric step (resize policy, flips, rotation, shear, zoom, shift,
scale-crop) is a 3x3 matrix; they are multiplied into ONE matrix that is
applied once to the image (bilinear) and once to the mask (nearest), with
ImageProjectiveTransformV3's arithmetic: by XLA-compiled gathers that share
each source coordinate between image channels and mask (the default), or by
the op itself (AugmentConfig.xla=False). Image and mask therefore always get
the same geometry, masks never gain new values, and resizing costs no extra
pass.

Matrices map OUTPUT pixel coordinates to INPUT pixel coordinates (the
convention of ImageProjectiveTransformV3), with pixel centres at +0.5.
All randomness is stateless: each random draw is `fold_in(seed, k)` of the
example's seed, so the same seed gives the same augmentation anywhere.
"""

import dataclasses
import math

import tensorflow as tf
# What Keras's TensorFlow backend uses for an XLA dynamic-update-slice (no public TF op lowers
# to one with a loop-varying offset)
from tensorflow.compiler.tf2xla.python.xla import dynamic_update_slice

RESIZE_POLICIES = ("stretch", "pad", "crop")
FILL_MODES = ("constant", "reflect", "nearest")


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Each field is one train.py flag of the same name (prefixed `aug_`)."""
    hflip: bool = False
    vflip: bool = False
    rotation: float = 0.0     # max degrees; angle ~ U[-rotation, rotation]
    shear: float = 0.0        # max degrees of x-shear
    zoom: float = 0.0         # scale ~ U[1 - zoom, 1 + zoom]; >1 magnifies
    shift: float = 0.0        # translation ~ U[-shift, shift] * side
    crop: float = 0.0         # random scale-crop: keep U[1 - crop, 1] of each side
    brightness: float = 0.0   # add U[-b, b] * 255
    contrast: float = 0.0     # scale around the frame's mean by U[1 - c, 1 + c]
    saturation: float = 0.0   # RGB only: factor U[1 - s, 1 + s]
    hue: float = 0.0          # RGB only: shift U[-h, h] (fraction of the colour wheel)
    noise: float = 0.0        # gaussian noise, stddev in grey levels
    fill_mode: str = "constant"  # outside the image: constant (mask -> mask_fill), reflect, nearest
    xla: bool = True          # warp (or flips) + photometric as one XLA-compiled stage

    @classmethod
    def from_flags(cls, flag_values, prefix="aug_"):
        """Fields from the `aug_<field>` flags that `flag_values` defines (absl FlagValues)."""
        return cls(**{f.name: flag_values[prefix + f.name].value for f in dataclasses.fields(cls)
                      if prefix + f.name in flag_values})

    @property
    def warps(self):
        return any((self.rotation, self.shear, self.zoom, self.shift, self.crop))

    @property
    def photometric(self):
        return any((self.brightness, self.contrast, self.saturation, self.hue, self.noise))

    def __post_init__(self):
        if self.fill_mode not in FILL_MODES:
            raise ValueError(f"fill_mode={self.fill_mode!r}: expected one of {FILL_MODES}")
        for name in ("rotation", "shear", "zoom", "shift", "crop", "brightness", "contrast",
                     "saturation", "hue", "noise"):
            if getattr(self, name) < 0:
                raise ValueError(f"aug_{name}={getattr(self, name)}: must be >= 0")
        if self.zoom >= 1 or self.crop >= 1:
            raise ValueError("aug_zoom and aug_crop must be < 1")


def _uniform(seed, k, low, high):
    return tf.random.stateless_uniform([], tf.random.experimental.stateless_fold_in(seed, k),
                                       low, high, dtype=tf.float32)


def _matrix(rows):
    return tf.stack([tf.stack([tf.cast(v, tf.float32) for v in row]) for row in rows])


def _translate(dx, dy):
    return _matrix([[1, 0, dx], [0, 1, dy], [0, 0, 1]])


def _scale(sx, sy):
    return _matrix([[sx, 0, 0], [0, sy, 0], [0, 0, 1]])


def resize_matrix(in_size, out_size, policy="stretch", seed=None, training=False):
    """Output pixel -> input pixel for the resize policy.

    stretch: fill the output, ignoring aspect ratio (the classic recipe).
    pad:     keep aspect, fit inside, pad the rest (fill value / mask_fill).
    crop:    keep aspect, cover the output, crop: random offset in training, centred otherwise.
    """
    in_h, in_w = tf.cast(in_size[0], tf.float32), tf.cast(in_size[1], tf.float32)
    out_h, out_w = float(out_size[0]), float(out_size[1])
    if policy == "stretch":
        sx, sy, ox, oy = in_w / out_w, in_h / out_h, 0.0, 0.0
    elif policy == "pad":
        s = tf.maximum(in_w / out_w, in_h / out_h)
        sx = sy = s
        ox, oy = -(out_w - in_w / s) / 2 * s, -(out_h - in_h / s) / 2 * s
    elif policy == "crop":
        s = tf.minimum(in_w / out_w, in_h / out_h)
        sx = sy = s
        fx, fy = (_uniform(seed, 101, 0, 1), _uniform(seed, 102, 0, 1)) if training else (0.5, 0.5)
        ox, oy = (in_w - out_w * s) * fx, (in_h - out_h * s) * fy
    else:
        raise ValueError(f"resize policy {policy!r}: expected one of {RESIZE_POLICIES}")
    # x_in = (x_out + 0.5) * sx - 0.5 + ox
    return _translate(ox - 0.5, oy - 0.5) @ _scale(sx, sy) @ _translate(0.5, 0.5)


def augmentation_matrix(seed, config, out_size):
    """Output pixel -> pre-augmentation output pixel; random flips/rotation/shear/zoom/shift/crop."""
    out_h, out_w = float(out_size[0]), float(out_size[1])
    centre = _translate((out_w - 1) / 2, (out_h - 1) / 2)
    uncentre = _translate(-(out_w - 1) / 2, -(out_h - 1) / 2)
    m = tf.eye(3)
    if config.hflip:
        m = _scale(tf.where(_uniform(seed, 1, 0, 1) < 0.5, -1.0, 1.0), 1.0) @ m
    if config.vflip:
        m = _scale(1.0, tf.where(_uniform(seed, 2, 0, 1) < 0.5, -1.0, 1.0)) @ m
    if config.zoom:
        z = _uniform(seed, 3, 1 - config.zoom, 1 + config.zoom)
        m = _scale(1 / z, 1 / z) @ m
    if config.shear:
        k = tf.tan(_uniform(seed, 4, -config.shear, config.shear) * (math.pi / 180))
        m = _matrix([[1, k, 0], [0, 1, 0], [0, 0, 1]]) @ m
    if config.rotation:
        a = _uniform(seed, 5, -config.rotation, config.rotation) * (math.pi / 180)
        c, s = tf.cos(a), tf.sin(a)
        m = _matrix([[c, -s, 0], [s, c, 0], [0, 0, 1]]) @ m
    if config.crop:
        keep = _uniform(seed, 6, 1 - config.crop, 1.0)
        slack = (1 - keep) / 2
        m = _translate(_uniform(seed, 7, -slack, slack) * out_w,
                       _uniform(seed, 8, -slack, slack) * out_h) @ _scale(keep, keep) @ m
    if config.shift:
        m = _translate(_uniform(seed, 9, -config.shift, config.shift) * out_w,
                       _uniform(seed, 10, -config.shift, config.shift) * out_h) @ m
    return centre @ m @ uncentre


def warp(images, matrices, out_size, interpolation, fill_value=0, fill_mode="constant",
         keep_float=False):
    """images: (batch, h, w, c) any dtype the op takes (uint8 stays uint8); matrices: (batch, 3, 3).

    keep_float: a uint8 image that took the float32 detour comes back as float32, for a
    caller (photometric, to_uint8) that would otherwise cast it straight back.
    """
    matrices = tf.reshape(matrices, [-1, 9])
    transforms = matrices[:, :8] / matrices[:, 8:9]
    # The op's bilinear kernel is faster on float32 than on uint8 (512x512, tools/
    # benchmark_warp.py: 2.8 vs 3.2 ms for 1 channel, 7.1 vs 8.0 ms for 3), so uint8
    # images detour through float32; photometric then continues on the floats.
    detour = images.dtype == tf.uint8 and interpolation == "BILINEAR"
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=tf.cast(images, tf.float32) if detour else images, transforms=transforms,
        output_shape=tf.convert_to_tensor(out_size, tf.int32),
        fill_value=tf.cast(fill_value, tf.float32),
        interpolation=interpolation, fill_mode=fill_mode.upper())
    return tf.cast(tf.round(out), tf.uint8) if detour and not keep_float else out


def _map_coordinate(coord, length, fill_mode):
    """Where a source coordinate outside [0, length) reads from: ImageProjectiveTransformV3's
    MapCoordinate for each fill mode ("constant" leaves it outside, to read the fill value)."""
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


def _read(flat, channels, row_stride, size, y, x, fill_value):
    """pixel (y, x) of a flattened (h, row_stride, channels) image for integer maps y, x of
    the output's shape; fill_value outside `size`. One scalar gather per channel: XLA
    vectorises those, not a gather of (channels,) rows."""
    inside = (y >= 0) & (y < size[0]) & (x >= 0) & (x < size[1])
    pixel = tf.clip_by_value(y, 0, size[0] - 1) * row_stride + tf.clip_by_value(x, 0, size[1] - 1)
    values = tf.gather(flat, pixel[..., None] * channels + tf.range(channels))
    return tf.where(inside[..., None], values, tf.cast(fill_value, flat.dtype))


def _warp_stage(image, mask, size, matrix, draws, out_size, fill_mode, mask_fill, first_row=0):
    """The one affine warp (image bilinear, mask nearest), photometric and the cast to uint8.

    The same arithmetic as ImageProjectiveTransformV3 written as gathers, so that XLA
    compiles it into one loop over the output pixels that computes each source coordinate
    once for the image and the mask (the op recomputes it per channel, per tensor): 4.5-5.0x
    faster for a gray or RGB 512x512 pair (tools/benchmark_warp.py). image/mask may be
    padded past `size` (their true height, width), which is what bounds the reads.
    Computes output rows first_row .. first_row + out_size[0] - 1 (see _in_bands).
    """
    t = tf.reshape(matrix, [9]) / matrix[2, 2]  # affine: the bottom row is (0, 0, 1)
    # a column and a row that broadcast: a meshgrid (x * ones) is constant-folded by XLA
    # into a stored grid, read back by a kernel of its own
    out_y = tf.cast(tf.range(out_size[0]) + first_row, tf.float32)[:, None]
    out_x = tf.range(out_size[1], dtype=tf.float32)[None, :]
    x = _map_coordinate(t[0] * out_x + t[1] * out_y + t[2], size[1], fill_mode)
    y = _map_coordinate(t[3] * out_x + t[4] * out_y + t[5], size[0], fill_mode)
    stride, depth = tf.shape(image)[1], image.shape[-1]
    # gathers read the stored pixels; only the values read are converted to float
    flat = tf.reshape(image, [-1])
    read = lambda r, c: tf.cast(_read(flat, depth, stride, size, r, c, 0),  # noqa: E731
                                tf.float32)
    x0, y0 = tf.floor(x), tf.floor(y)
    left, top = tf.cast(x0, tf.int32), tf.cast(y0, tf.int32)
    wx, wy = (x - x0)[..., None], (y - y0)[..., None]
    row = lambda r: (1 - wx) * read(r, left) + wx * read(r, left + 1)  # noqa: E731
    warped = (1 - wy) * row(top) + wy * row(top + 1)
    # std::round (half away from zero), as the op's nearest-neighbour read
    nearest = lambda v: tf.cast(tf.sign(v) * tf.floor(tf.abs(v) + 0.5), tf.int32)  # noqa: E731
    mask = _read(tf.reshape(mask, [-1]), 1, stride, size, nearest(y), nearest(x), mask_fill)
    return _photometric_pixels(warped, draws), mask


def _in_bands(compute, height, outputs, bands=4):
    """Tensors `outputs` ((shape, dtype) each, `height` rows) filled by compute(first_row,
    rows), which returns those rows of each, `bands` bands of rows one after the other,
    each written into the outputs in place. For XLA-compiled stages.

    Why: XLA:CPU splits every large kernel into as many tasks as TensorFlow's intra-op pool
    has threads and hands them to that pool, though tf.data already runs one example per
    core, and those hand-offs cost the pipeline about a tenth of its 2-core throughput
    (BENCHMARKS.md §2). A kernel that ends in an in-place dynamic-update-slice is never
    split, so each band runs as one task on the thread that runs the stage.
    """
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


def _band_draws(draws, first, rows):
    """The photometric draws for output rows first .. first + rows - 1."""
    if "noise" not in draws:
        return draws
    return dict(draws, noise=tf.slice(draws["noise"], [first, 0, 0], [rows, -1, -1]))


def _warp_in_bands(image, mask, size, matrix, draws, out_size, fill_mode, mask_fill):
    """_warp_stage (same arguments; out_size static) in bands of output rows (_in_bands)."""
    if "gain" in draws and "centre" not in draws:
        # a band's own mean is not the frame's
        raise ValueError("_warp_in_bands: contrast needs draws['centre'] (see _with_centre)")
    height, width = (int(v) for v in out_size)

    def rows_of(first, rows):
        return _warp_stage(image, mask, size, matrix, _band_draws(draws, first, rows),
                           (rows, width), fill_mode, mask_fill, first)
    return _in_bands(rows_of, height, [((height, width, image.shape[-1]), tf.uint8),
                                       ((height, width, 1), mask.dtype)])


# One compile per (padded input shape, out_size, fill mode, set of draws): inputs
# are padded up to a multiple of _PAD_TO so that datasets of many frame sizes compile a few
# times, not once per size (each compile stalls its worker for a fraction of a second).
_warp_stage_xla = tf.function(_warp_in_bands, jit_compile=True)
_PAD_TO = 64


def _expand(image, channels):
    """uint8 (h, w, 1) -> (h, w, 3) when channels == 3. Each pixel times 0x01010101 is a
    uint32 whose four bytes are all that pixel, on any byte order; its first three bytes
    are the RGB triple. Under XLA one vectorised pass: 0.08 ms at 512x512, where a concat
    costs 0.19 and tf.image.grayscale_to_rgb 0.76 ms (tools/benchmark_warp.py)."""
    if channels != 3 or image.shape[-1] != 1:
        return image
    return tf.bitcast(tf.cast(image[..., 0], tf.uint32) * 0x01010101, tf.uint8)[..., :3]


# Its own cluster after a warp: fused into the warp's cluster, any expansion makes XLA
# compute the warp once per output channel (tools/benchmark_warp.py). The pixel stage
# expands inside its cluster: recomputing its flips + photometric is cheaper than a launch.
_expand_xla = tf.function(_expand, jit_compile=True)


def _gray(image):
    """uint8 (h, w, 3) -> (h, w, 1) with tf.image.rgb_to_grayscale's weights, rounded."""
    return to_uint8(tf.image.rgb_to_grayscale(tf.cast(image, tf.float32)))


# Op by op this is four passes through a float32 copy three times the image's size
_gray_xla = tf.function(_gray, jit_compile=True)


def to_gray(image, xla=True):
    return (_gray_xla if xla else _gray)(image)


def _pad_to_bucket(x):
    size = tf.shape(x)[:2]
    extra = -size % _PAD_TO
    # tf.pad copies even when nothing is added
    return tf.cond(tf.reduce_any(extra > 0),
                   lambda: tf.pad(x, [[0, extra[0]], [0, extra[1]], [0, 0]]), lambda: x)


def to_uint8(pixels):
    """float32 pixels -> rounded, clipped uint8."""
    return tf.cast(tf.clip_by_value(tf.round(pixels), 0, 255), tf.uint8)


def _photometric_draws(seed, config, shape):
    """Every random value of the photometric stage for an image of `shape`, drawn outside
    any XLA cluster: XLA's stateless RNG gives other numbers, and the fused and plain paths
    must agree."""
    draws = {}
    if config.contrast:
        draws["gain"] = _uniform(seed, 21, 1 - config.contrast, 1 + config.contrast)
    if config.brightness:
        draws["bias"] = _uniform(seed, 22, -config.brightness, config.brightness) * 255
    if config.saturation:
        draws["saturation"] = _uniform(seed, 23, 1 - config.saturation, 1 + config.saturation)
    if config.hue:
        draws["hue"] = _uniform(seed, 24, -config.hue, config.hue)
    if config.noise:
        draws["noise"] = tf.random.stateless_normal(
            shape, tf.random.experimental.stateless_fold_in(seed, 25),
            stddev=config.noise)
    return draws


def _mean(image):
    """Mean pixel value of an (h, w, c) image; exact for integer pixels."""
    if image.dtype.is_integer:
        # int32 per row (exact below 8M values a row), int64 over the rows: one int64 sum
        # widens every pixel to 8 bytes first (14% of an RGB warp stage, benchmark_warp.py)
        rows = tf.reduce_sum(tf.cast(image, tf.int32), [1, 2])
        total = tf.cast(tf.reduce_sum(tf.cast(rows, tf.int64)), tf.float32)
    else:
        total = tf.reduce_sum(image)
    return total / tf.cast(tf.size(image), tf.float32)


def _with_centre(draws, image):
    """draws plus the contrast centre, the mean of `image` (the frame before any warp).

    Summed once, before any stage, so the XLA stages, the op-by-op path and the device path
    (augment_batch) all centre on the same value; inside an XLA stage it costs the same
    (tools/benchmark_warp.py)."""
    return dict(draws, centre=_mean(image)) if "gain" in draws else draws


def _photometric_pixels(image, draws):
    """draws["centre"]: the contrast centre (default: this image's mean)."""
    x = tf.cast(image, tf.float32)
    if "gain" in draws or "bias" in draws:
        # brightness and contrast folded into one affine pass over the pixels
        gain = draws.get("gain", 1.0)
        mean = 0.0 if "gain" not in draws else draws.get("centre")
        if mean is None:
            mean = _mean(image)
        x = (x - mean) * gain + mean + draws.get("bias", 0.0)
    if image.shape[-1] == 3 and ("saturation" in draws or "hue" in draws):
        x = tf.clip_by_value(x, 0, 255) / 255
        if "saturation" in draws:
            x = tf.image.adjust_saturation(x, draws["saturation"])
        if "hue" in draws:
            x = tf.image.adjust_hue(x, draws["hue"])
        x = x * 255
    if "noise" in draws:
        x = x + draws["noise"]
    return to_uint8(x)


def photometric(image, seed, config, centre=None):
    """Image-only colour changes on a uint8 (or not yet rounded float32) (h, w, c) image;
    returns uint8. `centre`: the contrast centre (default: this image's mean)."""
    draws = _photometric_draws(seed, config, tf.shape(image))
    return _photometric_pixels(image, draws if centre is None else dict(draws, centre=centre))


def _flip_draws(seed, config):
    return (_uniform(seed, 1, 0, 1) < 0.5 if config.hflip else tf.constant(False),
            _uniform(seed, 2, 0, 1) < 0.5 if config.vflip else tf.constant(False))


def _reverse(x, axis):
    if x.shape[-1] == 1:
        # Reversing (h, w, 1) takes Eigen's slow path (5x the time of the same pixels as (h, w))
        return tf.reverse(x[..., 0], [axis])[..., None]
    return tf.reverse(x, [axis])


def _switch_flips(flips, branch):
    """tf.switch_case with one branch(flip_x, flip_y) per flip combination."""
    which = tf.cast(flips[0], tf.int32) + 2 * tf.cast(flips[1], tf.int32)
    return tf.switch_case(which, [branch(False, False), branch(True, False),
                                  branch(False, True), branch(True, True)])


def _pixel_stage(image, mask, flips, draws, channels=None):
    """Flips (when no warp took them), photometric, the cast back to uint8 and
    (channels=3) gray -> RGB.

    One branch per flip combination, each running the whole stage: under XLA each branch is
    one fused loop that reads the pixels in flipped order, where a branch per flip wrote
    each flipped copy out first (RGB: 0.43 vs 0.38 ms at 512x512, tools/benchmark_warp.py)."""
    def branch(flip_x, flip_y):
        def run():
            flipped, flipped_mask = image, mask
            for flip, axis in ((flip_x, 1), (flip_y, 0)):
                if flip:
                    flipped, flipped_mask = _reverse(flipped, axis), _reverse(flipped_mask, axis)
            return _expand(_photometric_pixels(flipped, draws), channels), flipped_mask
        return run
    return _switch_flips(flips, branch)


def _pixel_stage_in_bands(image, mask, flips, draws, channels=None):
    """_pixel_stage for XLA, in bands of rows (_in_bands) when the size is static.

    Each band gathers its source rows (in reverse order for a vertical flip): a band that
    dynamic-slices the image ran 5x slower on one core; gathered, about as fast as one
    piece (tools/benchmark_warp.py), and the light pipeline scales better on 2 cores
    (BENCHMARKS.md §2)."""
    height, width = image.shape[:2]
    if height is None or width is None:
        return _pixel_stage(image, mask, flips, draws, channels)
    outputs = [((height, width, 3 if channels == 3 else image.shape[-1]), tf.uint8),
               ((height, width, 1), mask.dtype)]
    if "gain" in draws and "centre" not in draws:
        draws = _with_centre(draws, image)  # the whole frame's mean, not each band's

    def branch(flip_x, flip_y):
        def rows_of(first, rows):
            out_rows = tf.range(rows) + first
            source_rows = height - 1 - out_rows if flip_y else out_rows
            source, source_mask = tf.gather(image, source_rows), tf.gather(mask, source_rows)
            if flip_x:
                source, source_mask = _reverse(source, 1), _reverse(source_mask, 1)
            pixels = _photometric_pixels(source, _band_draws(draws, first, rows))
            return _expand(pixels, channels), source_mask
        return lambda: tuple(_in_bands(rows_of, height, outputs))
    return _switch_flips(flips, branch)


# On an unwarped image flips + photometric through XLA are one fused pass over the pixels
# instead of a copy per reverse plus one per arithmetic op: 2-3x faster at 512x512 when it
# flips (tools/benchmark_warp.py). One compile per (shape, set of draws): the pipeline's shapes
# are fixed by --image_size, so once per run. AugmentConfig.xla=False (--noaug_xla) runs
# this stage and the warp op by op instead.
_pixel_stage_xla = tf.function(_pixel_stage_in_bands, jit_compile=True)


def warps_image(config, policy, training):
    """Whether augment_example warps (geometric augmentation or a non-stretch resize)."""
    return (training and config is not None and config.warps) or policy != "stretch"


def augment_example(image, mask, seed, out_size, config=None, policy="stretch", training=True,
                    mask_fill=255, channels=None):
    """(h, w, c) uint8 image and (h, w, 1) mask -> out_size, jointly augmented.

    `config=None` (evaluation) applies only the resize policy. `channels=3` returns a
    1-channel image as RGB, expanded last (everything else runs on 1 channel).
    """
    if image.shape.rank != 3 or image.shape[-1] not in (1, 3):
        raise ValueError(f"augment_example: image shape {image.shape}: expected (h, w, 1) or "
                         "(h, w, 3) with the channels known, e.g. decode_png(..., channels=3)")
    config = config or AugmentConfig()
    in_size = tf.shape(image)[:2]
    flips = training and (config.hflip or config.vflip)
    out_shape = tf.concat([out_size, tf.shape(image)[-1:]], 0)
    draws = _photometric_draws(seed, config, out_shape) if training and config.photometric else {}
    # Contrast centres on the frame's mean (a warp's fill pixels do not pull it down)
    draws = _with_centre(draws, image)
    if warps_image(config, policy, training):
        matrix = resize_matrix(in_size, out_size, policy, seed, training)
        if training and (config.warps or flips):
            # flips fold into the one warp; same draws (fold_in keys) as _flip_draws
            matrix = matrix @ augmentation_matrix(seed, config, out_size)
        if config.xla:
            image, mask = _warp_stage_xla(_pad_to_bucket(image), _pad_to_bucket(mask), in_size,
                                          matrix, draws, out_size, config.fill_mode, mask_fill)
        else:
            image = warp(image[None], matrix[None], out_size, "BILINEAR", 0, config.fill_mode,
                         keep_float=True)[0]
            mask = warp(mask[None], matrix[None], out_size, "NEAREST", mask_fill,
                        config.fill_mode)[0]
            image = _photometric_pixels(image, draws)
    else:
        # Plain stretch: resize only when the size differs (pre-resized records skip it).
        same = tf.reduce_all(tf.equal(in_size, out_size))
        image, mask = tf.cond(
            same, lambda: (image, mask),
            lambda: (tf.cast(tf.round(tf.image.resize(image, out_size, antialias=False)),
                             tf.uint8),
                     tf.image.resize(mask, out_size, method="nearest")))
        image = tf.ensure_shape(image, [out_size[0], out_size[1], None])
        if flips or draws:
            # Flips alone need no warp: a reverse is a copy, a warp costs milliseconds.
            flip_draws = _flip_draws(seed, config) if flips else (tf.constant(False),) * 2
            stage = _pixel_stage_xla if config.xla else _pixel_stage
            image, mask = stage(image, mask, flip_draws, draws, channels)  # expands inside
    if channels == 3 and image.shape[-1] == 1:
        image = (_expand_xla if config.xla else _expand)(image, channels)
    return (tf.ensure_shape(image, [out_size[0], out_size[1], None]),
            tf.ensure_shape(mask, [out_size[0], out_size[1], 1]))


def augment_batch(images, masks, seeds, config, mask_fill=255):
    """Device-side variant: (batch, H, W, c) already resized; one batched warp for all examples."""
    out_size = tuple(int(v) for v in images.shape[1:3])
    # the contrast centre of each example is its mean before the warp, as on the host
    centres = (tf.map_fn(_mean, images, fn_output_signature=tf.float32) if config.contrast
               else tf.zeros(tf.shape(images)[:1]))
    if config.warps or config.hflip or config.vflip:
        matrices = tf.map_fn(lambda s: augmentation_matrix(s, config, out_size), seeds,
                             fn_output_signature=tf.float32)
        images = warp(images, matrices, out_size, "BILINEAR", 0, config.fill_mode)
        masks = warp(masks, matrices, out_size, "NEAREST", mask_fill, config.fill_mode)
    if config.photometric:
        images = tf.map_fn(lambda args: photometric(*args[:2], config, centre=args[2]),
                           (images, seeds, centres), fn_output_signature=tf.uint8)
    return images, masks
