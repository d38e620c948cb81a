"""Joint image/mask augmentation: one seed per example, one warp per example.

Every geometric step (resize policy, flips, rotation, shear, zoom, shift,
scale-crop) is a 3x3 matrix; they are multiplied into ONE matrix that
`ImageProjectiveTransformV3` applies once to the image (bilinear) and once
to the mask (nearest). Image and mask therefore always get the same geometry,
masks never gain new values, and resizing costs no extra pass.

Matrices map OUTPUT pixel coordinates to INPUT pixel coordinates (the
convention of ImageProjectiveTransformV3), with pixel centres at +0.5.
All randomness is stateless: each random draw is `fold_in(seed, k)` of the
example's seed, so the same seed gives the same augmentation anywhere.
"""

import dataclasses
import math

import tensorflow as tf

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
    contrast: float = 0.0     # scale around the mean by U[1 - c, 1 + c]
    saturation: float = 0.0   # RGB only: factor U[1 - s, 1 + s]
    hue: float = 0.0          # RGB only: shift U[-h, h] (fraction of the colour wheel)
    noise: float = 0.0        # gaussian noise, stddev in grey levels
    fill_mode: str = "constant"  # outside the image: constant (mask -> mask_fill), reflect, nearest
    xla: bool = True          # unwarped flips + photometric as one XLA-compiled stage

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
    # benchmark_warp.py: 1.8 vs 3.2 ms for 1 channel, 4.2 vs 5.5 ms for 3), so uint8
    # images detour through float32; photometric then continues on the floats.
    detour = images.dtype == tf.uint8 and interpolation == "BILINEAR"
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=tf.cast(images, tf.float32) if detour else images, transforms=transforms,
        output_shape=tf.constant(out_size, tf.int32),
        fill_value=tf.cast(fill_value, tf.float32),
        interpolation=interpolation, fill_mode=fill_mode.upper())
    return tf.cast(tf.round(out), tf.uint8) if detour and not keep_float else out


def to_uint8(pixels, channels=None):
    """float32 (h, w, c) pixels -> rounded, clipped uint8; `channels=3` expands a gray image.

    The expansion is a (pixels, 1) x (1, 3) matmul on the floats about to be cast anyway:
    +0.5 ms at 512x512, where expanding the uint8 result costs +0.85 ms (tf.tile,
    tf.broadcast_to and grayscale_to_rgb all take a slow strided path; benchmark_warp.py).
    """
    x = tf.clip_by_value(tf.round(pixels), 0, 255)
    if channels == 3 and x.shape[-1] == 1:
        size = tf.shape(x)[:2]
        x = tf.reshape(tf.matmul(tf.reshape(x, [-1, 1]), tf.ones([1, 3])),
                       tf.concat([size, [3]], 0))
    return tf.cast(x, tf.uint8)


def _photometric_draws(seed, config, image):
    """Every random value of the photometric stage, drawn outside any XLA cluster: XLA's
    stateless RNG gives other numbers, and the fused and plain paths must agree."""
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
            tf.shape(image), tf.random.experimental.stateless_fold_in(seed, 25),
            stddev=config.noise)
    return draws


def _mean(image):
    if image.dtype.is_integer:
        # An integer sum is exact and, unlike a float one, XLA can vectorise it.
        total = tf.reduce_sum(tf.cast(image, tf.int64))
        return tf.cast(total, tf.float32) / tf.cast(tf.size(image), tf.float32)
    return tf.reduce_mean(image)


def _photometric_pixels(image, draws, channels):
    x = tf.cast(image, tf.float32)
    if "gain" in draws or "bias" in draws:
        # brightness and contrast folded into one affine pass over the pixels
        gain = draws.get("gain", 1.0)
        mean = _mean(image) if "gain" in draws else 0.0
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
    return to_uint8(x, channels)


def photometric(image, seed, config, channels=None):
    """Image-only colour changes on a uint8 (or not yet rounded float32) (h, w, c) image;
    returns uint8 (`channels=3`: a gray image comes back expanded to RGB)."""
    return _photometric_pixels(image, _photometric_draws(seed, config, image), channels)


def _flip_draws(seed, config):
    return (_uniform(seed, 1, 0, 1) < 0.5 if config.hflip else tf.constant(False),
            _uniform(seed, 2, 0, 1) < 0.5 if config.vflip else tf.constant(False))


def _reverse(x, axis):
    if x.shape[-1] == 1:
        # Reversing (h, w, 1) takes Eigen's slow path (2x the time of the same pixels as (h, w))
        return tf.reverse(x[..., 0], [axis])[..., None]
    return tf.reverse(x, [axis])


def _pixel_stage(image, mask, flips, draws, channels):
    """Flips (when no warp took them), photometric and the cast back to uint8."""
    for flip, axis in zip(flips, (1, 0)):
        image, mask = tf.cond(flip, lambda: (_reverse(image, axis), _reverse(mask, axis)),
                              lambda: (image, mask))
    return _photometric_pixels(image, draws, channels), mask


# On a uint8 image (no warp) flips + photometric through XLA are one fused pass over the
# pixels instead of a copy per reverse plus one per arithmetic op: the stage is 1.5-2x faster
# at 512x512x3 (tools/benchmark_warp.py), a small gain end to end (BENCHMARKS.md §2). After a
# warp the image is already float and XLA was no faster there, so that path stays op by op.
# One compile per (shape, channels, set of draws): the pipeline's shapes are fixed by
# --image_size, so once per run. AugmentConfig.xla=False (--noaug_xla) turns it off.
_pixel_stage_xla = tf.function(_pixel_stage, jit_compile=True)


def warps_image(config, policy, training):
    """Whether augment_example warps (geometric augmentation or a non-stretch resize); the
    pipeline asks too, to decide how many channels to decode."""
    return (training and config is not None and config.warps) or policy != "stretch"


def augment_example(image, mask, seed, out_size, config=None, policy="stretch", training=True,
                    mask_fill=255, channels=None):
    """(h, w, c) uint8 image and (h, w, 1) mask -> out_size, jointly augmented.

    `config=None` (evaluation) applies only the resize policy. `channels=3` returns a
    1-channel image as RGB, expanded at the last float step (after the warp, which costs
    per channel).
    """
    config = config or AugmentConfig()
    in_size = tf.shape(image)[:2]
    geometric = training and config.warps
    flips = training and (config.hflip or config.vflip)
    if warps_image(config, policy, training):
        matrix = resize_matrix(in_size, out_size, policy, seed, training)
        if geometric or flips:
            # flips fold into the one warp; same draws (fold_in keys) as _flip_draws
            matrix = matrix @ augmentation_matrix(seed, config, out_size)
            flips = False
        image = warp(image[None], matrix[None], out_size, "BILINEAR", 0, config.fill_mode,
                     keep_float=True)[0]
        mask = warp(mask[None], matrix[None], out_size, "NEAREST", mask_fill, config.fill_mode)[0]
    else:
        # Plain stretch: resize only when the size differs (pre-resized records skip it).
        same = tf.reduce_all(tf.equal(in_size, out_size))
        image, mask = tf.cond(
            same, lambda: (image, mask),
            lambda: (tf.cast(tf.round(tf.image.resize(image, out_size, antialias=False)), tf.uint8),
                     tf.image.resize(mask, out_size, method="nearest")))
    image = tf.ensure_shape(image, [out_size[0], out_size[1], None])
    mask = tf.ensure_shape(mask, [out_size[0], out_size[1], 1])
    if flips or (training and config.photometric):
        # Flips alone need no warp: a reverse is a copy, a warp costs milliseconds.
        draws = _photometric_draws(seed, config, image)  # {} unless photometric is on
        flip_draws = _flip_draws(seed, config) if flips else (tf.constant(False),) * 2
        stage = _pixel_stage_xla if config.xla and image.dtype == tf.uint8 else _pixel_stage
        return stage(image, mask, flip_draws, draws, channels)
    if image.dtype != tf.uint8:
        return to_uint8(image, channels), mask
    if channels == 3 and image.shape[-1] == 1:
        return tf.image.grayscale_to_rgb(image), mask
    return image, mask


def augment_batch(images, masks, seeds, config, mask_fill=255):
    """Device-side variant: (batch, H, W, c) already resized; one batched warp for all examples."""
    out_size = tuple(int(v) for v in images.shape[1:3])
    if config.warps or config.hflip or config.vflip:
        matrices = tf.map_fn(lambda s: augmentation_matrix(s, config, out_size), seeds,
                             fn_output_signature=tf.float32)
        images = warp(images, matrices, out_size, "BILINEAR", 0, config.fill_mode)
        masks = warp(masks, matrices, out_size, "NEAREST", mask_fill, config.fill_mode)
    if config.photometric:
        images = tf.map_fn(lambda args: photometric(args[0], args[1], config), (images, seeds),
                           fn_output_signature=images.dtype)
    return images, masks
