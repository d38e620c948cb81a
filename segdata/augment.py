"""Joint image/mask augmentation: one seed per example, one draw of every random value,
one resampling per example.

Every geometric step (resize policy, flips, rotation, shear, zoom, shift, scale-crop) is
a 3x3 matrix; they are multiplied into ONE matrix. Elastic deformation (the UNet paper's
key augmentation for few labelled images) adds a smooth displacement to each output
coordinate before that matrix maps it. `draw` decides every random value of an example
once, as a `Draw`; a kernel (segdata/kernels.py) then resamples image and mask from the
same source coordinates (bilinear / nearest), so they always share geometry and masks
never gain new values, and applies the photometric changes.

Matrices map OUTPUT pixel coordinates to INPUT pixel coordinates (the convention of
ImageProjectiveTransformV3), with pixel centres at +0.5. All randomness is stateless:
draw k of an example is `fold_in(seed, k)` of its seed, so the same seed gives the same
augmentation on the host, on a device, eagerly or in a tf.data map.
"""

import dataclasses
import math
from typing import NamedTuple, Optional

import tensorflow as tf

from segdata import kernels

RESIZE_POLICIES = ("stretch", "pad", "crop")
FILL_MODES = kernels.FILL_MODES


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
    elastic_alpha: float = 0.0  # elastic displacement: stddev in output pixels on the grid
    elastic_grid: int = 3     # coarse grid of displacement vectors (3: 3x3, as the UNet paper)
    brightness: float = 0.0   # add U[-b, b] * 255
    contrast: float = 0.0     # scale around the frame's mean by U[1 - c, 1 + c]
    saturation: float = 0.0   # RGB only: factor U[1 - s, 1 + s]
    hue: float = 0.0          # RGB only: shift U[-h, h] (fraction of the colour wheel)
    noise: float = 0.0        # gaussian noise, stddev in grey levels
    fill_mode: str = "constant"  # outside the image: constant (mask -> mask_fill), reflect, nearest
    xla: bool = True          # kernels.xla on the host (else kernels.reference)

    @classmethod
    def from_flags(cls, flag_values, prefix="aug_"):
        """Fields from the `aug_<field>` flags that `flag_values` defines (absl FlagValues)."""
        return cls(**{f.name: flag_values[prefix + f.name].value for f in dataclasses.fields(cls)
                      if prefix + f.name in flag_values})

    @property
    def warps(self):
        return any((self.rotation, self.shear, self.zoom, self.shift, self.crop,
                    self.elastic_alpha))

    @property
    def photometric(self):
        return any((self.brightness, self.contrast, self.saturation, self.hue, self.noise))

    def __post_init__(self):
        if self.fill_mode not in FILL_MODES:
            raise ValueError(f"fill_mode={self.fill_mode!r}: expected one of {FILL_MODES}")
        for name in ("rotation", "shear", "zoom", "shift", "crop", "elastic_alpha",
                     "brightness", "contrast", "saturation", "hue", "noise"):
            if getattr(self, name) < 0:
                raise ValueError(f"aug_{name}={getattr(self, name)}: must be >= 0")
        if self.zoom >= 1 or self.crop >= 1:
            raise ValueError("aug_zoom and aug_crop must be < 1")
        if self.elastic_grid < 2:
            raise ValueError(f"aug_elastic_grid={self.elastic_grid}: needs >= 2 points a side")


class Draw(NamedTuple):
    """Every random value of one example (or, batched, of each example: a leading axis).
    None: that step is off (decided by the config, so traced once per config).

    matrix: (3, 3) output -> input pixel: resize policy and geometric augmentation, flips
        included; None when nothing resamples (a plain stretch, already at the output size).
    displacement: (g, g, 2) elastic displacements (dy, dx) in output pixels on a coarse grid.
    flip_x, flip_y: bool; used (when the matrix is None) for the unresampled frame.
    gain, bias, saturation, hue: photometric factors; noise: (H, W, C) grey levels.
    centre: the contrast centre, the frame's mean before any warp (not random: set by
        augment_example / augment_batch from the frame).
    """
    matrix: Optional[tf.Tensor] = None
    displacement: Optional[tf.Tensor] = None
    flip_x: Optional[tf.Tensor] = None
    flip_y: Optional[tf.Tensor] = None
    gain: Optional[tf.Tensor] = None
    bias: Optional[tf.Tensor] = None
    saturation: Optional[tf.Tensor] = None
    hue: Optional[tf.Tensor] = None
    noise: Optional[tf.Tensor] = None
    centre: Optional[tf.Tensor] = None


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


def _flips(seed, config):
    return (_uniform(seed, 1, 0, 1) < 0.5 if config.hflip else None,
            _uniform(seed, 2, 0, 1) < 0.5 if config.vflip else None)


def augmentation_matrix(seed, config, out_size):
    """Output pixel -> pre-augmentation output pixel; random flips/rotation/shear/zoom/shift/crop."""
    out_h, out_w = float(out_size[0]), float(out_size[1])
    centre = _translate((out_w - 1) / 2, (out_h - 1) / 2)
    uncentre = _translate(-(out_w - 1) / 2, -(out_h - 1) / 2)
    m = tf.eye(3)
    flip_x, flip_y = _flips(seed, config)
    if flip_x is not None:
        m = _scale(tf.where(flip_x, -1.0, 1.0), 1.0) @ m
    if flip_y is not None:
        m = _scale(1.0, tf.where(flip_y, -1.0, 1.0)) @ m
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


def resamples(config, policy, training):
    """Whether an example is resampled (a warp or a non-stretch resize) rather than only
    resized by tf.image.resize and flipped."""
    return (training and config.warps) or policy != "stretch"


def draw(seed, config, in_size, out_size, channels, policy="stretch", training=True):
    """The Draw of one example: its seed (int64 [2]), its frame's size, the output size
    and channels. Photometric and elastic draws only when training."""
    config = config or AugmentConfig()
    flips = training and (config.hflip or config.vflip)
    values = {}
    if resamples(config, policy, training):
        matrix = resize_matrix(in_size, out_size, policy, seed, training)
        if training and (config.warps or flips):
            # flips fold into the one matrix; the same draws (fold_in keys) as _flips
            matrix = matrix @ augmentation_matrix(seed, config, out_size)
        values["matrix"] = matrix
    elif flips:
        values["flip_x"], values["flip_y"] = _flips(seed, config)
    if not training:
        return Draw(**values)
    if config.elastic_alpha:
        values["displacement"] = tf.random.stateless_normal(
            [config.elastic_grid, config.elastic_grid, 2],
            tf.random.experimental.stateless_fold_in(seed, 26), stddev=config.elastic_alpha)
    if config.contrast:
        values["gain"] = _uniform(seed, 21, 1 - config.contrast, 1 + config.contrast)
    if config.brightness:
        values["bias"] = _uniform(seed, 22, -config.brightness, config.brightness) * 255
    if config.saturation and channels == 3:
        values["saturation"] = _uniform(seed, 23, 1 - config.saturation, 1 + config.saturation)
    if config.hue and channels == 3:
        values["hue"] = _uniform(seed, 24, -config.hue, config.hue)
    if config.noise:
        values["noise"] = tf.random.stateless_normal(
            [out_size[0], out_size[1], channels],
            tf.random.experimental.stateless_fold_in(seed, 25), stddev=config.noise)
    return Draw(**values)


def _batched(one):
    return Draw(*[None if v is None else v[None] for v in one])


def _does_something(d):
    return any(v is not None for v in d)


def _gray(image):
    """uint8 (h, w, 3) -> (h, w, 1) with tf.image.rgb_to_grayscale's weights, rounded."""
    gray = tf.image.rgb_to_grayscale(tf.cast(image, tf.float32))
    return tf.cast(tf.clip_by_value(tf.round(gray), 0, 255), tf.uint8)


# Op by op this is four passes through a float32 copy three times the image's size
_gray_xla = tf.function(_gray, jit_compile=True, autograph=False)


def to_gray(image, xla=True):
    return (_gray_xla if xla else _gray)(image)


# Inputs to the XLA kernel are padded up to a multiple of this, so that datasets of many
# frame sizes compile a few times, not once per size (each compile stalls its worker).
_PAD_TO = 64


def _pad_to_bucket(x):
    size = tf.shape(x)[:2]
    extra = -size % _PAD_TO
    # tf.pad copies even when nothing is added
    return tf.cond(tf.reduce_any(extra > 0),
                   lambda: tf.pad(x, [[0, extra[0]], [0, extra[1]], [0, 0]]), lambda: x)


def augment_example(image, mask, seed, out_size, config=None, policy="stretch", training=True,
                    mask_fill=255, channels=None):
    """(h, w, c) uint8 image and (h, w, 1) mask -> out_size, jointly augmented.

    `config=None` (evaluation) applies only the resize policy. `channels=3` returns a
    1-channel image as RGB, repeated last (everything else runs on 1 channel).
    """
    if image.shape.rank != 3 or image.shape[-1] not in (1, 3):
        raise ValueError(f"augment_example: image shape {image.shape}: expected (h, w, 1) or "
                         "(h, w, 3) with the channels known, e.g. decode_png(..., channels=3)")
    config = config or AugmentConfig()
    out_size = tuple(int(v) for v in out_size)
    in_size = tf.shape(image)[:2]
    d = draw(seed, config, in_size, out_size, image.shape[-1], policy, training)
    if d.gain is not None:
        # contrast centres on the frame's mean: a warp's fill pixels do not pull it down
        d = d._replace(centre=kernels.frame_mean(image[None])[0])
    if d.matrix is None:
        # plain stretch: resize only when the size differs (pre-resized records skip it)
        same = tf.reduce_all(tf.equal(in_size, out_size))
        image, mask = tf.cond(
            same, lambda: (image, mask),
            lambda: (tf.cast(tf.round(tf.image.resize(image, out_size, antialias=False)),
                             tf.uint8),
                     tf.image.resize(mask, out_size, method="nearest")))
        image = tf.ensure_shape(image, [out_size[0], out_size[1], None])
        in_size = tf.constant(out_size)
    if _does_something(d):
        kernel = kernels.xla if config.xla else kernels.reference
        if config.xla and d.matrix is not None:
            image, mask = _pad_to_bucket(image), _pad_to_bucket(mask)
        image, mask = kernel(image[None], mask[None], in_size[None], _batched(d), out_size,
                             config.fill_mode, mask_fill, channels)
        image, mask = image[0], mask[0]
    if channels == 3 and image.shape[-1] == 1:  # no kernel ran: nothing else to do
        image = tf.tile(image, [1, 1, 3])
    return (tf.ensure_shape(image, [out_size[0], out_size[1], None]),
            tf.ensure_shape(mask, [out_size[0], out_size[1], 1]))


def augment_batch(images, masks, seeds, config, mask_fill=255):
    """Device-side variant: (batch, H, W, c) already resized; every example's own draw,
    one batched kernel call (kernels.reference)."""
    out_size = tuple(int(v) for v in images.shape[1:3])
    channels = images.shape[-1]
    example = draw(seeds[0], config, out_size, out_size, channels, "stretch", True)
    specs = {name: tf.TensorSpec(value.shape, value.dtype)
             for name, value in example._asdict().items() if value is not None}
    if not specs:
        return images, masks
    values = tf.map_fn(lambda seed: {name: value for name, value in draw(
        seed, config, out_size, out_size, channels, "stretch", True)._asdict().items()
        if name in specs}, seeds, fn_output_signature=specs)
    d = Draw(**values)
    if d.gain is not None:
        # each example's contrast centre is its mean before the warp, as on the host
        d = d._replace(centre=kernels.frame_mean(images))
    return kernels.reference(images, masks, None, d, out_size, config.fill_mode, mask_fill)
