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
# Native resolution (train.py --train_crop): the frame scaled by a factor, not to a size
SCALE = "scale"
POLICIES = RESIZE_POLICIES + (SCALE,)
FILL_MODES = kernels.FILL_MODES
# A mapping that shrinks a frame more than this (input pixels per output pixel) blurs it
# first (antialias): a bilinear read of every n-th pixel aliases thin structures
ANTIALIAS_ABOVE = 1.5
MAX_BLUR_LEVELS = 4


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
    # the "scale" policy's windows (train.py --train_crop):
    scale: tuple = (1.0, 1.0)  # random factor on the run's data_scale, log-uniform in [min, max]
    # P(window centred on a pixel of a random present foreground class)
    crop_foreground: float = 0.0

    # fields whose flag is not `aug_<field>`
    _FLAG_NAMES = {"crop_foreground": "crop_foreground"}

    @classmethod
    def from_flags(cls, flag_values, prefix="aug_"):
        """Fields from the `aug_<field>` flags that `flag_values` defines (absl FlagValues)."""
        names = {f.name: cls._FLAG_NAMES.get(f.name, prefix + f.name)
                 for f in dataclasses.fields(cls)}
        return cls(**{field: flag_values[flag].value for field, flag in names.items()
                      if flag in flag_values})

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
        try:
            scale = tuple(float(v) for v in self.scale)
        except (TypeError, ValueError):
            scale = ()
        if len(scale) == 1:
            scale = scale * 2
        if len(scale) != 2 or not 0 < scale[0] <= scale[1]:
            raise ValueError(f"--aug_scale={','.join(str(v) for v in self.scale)}: expected "
                             "MIN,MAX with 0 < MIN <= MAX, e.g. 0.7,1.4")
        object.__setattr__(self, "scale", scale)
        if not 0 <= self.crop_foreground <= 1:
            raise ValueError(f"--crop_foreground={self.crop_foreground}: a probability in [0, 1]")


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


# Every uniform value an example may draw has its place in the example's one vector of
# uniforms: one random op per example, not one per value
(_FLIP_X, _FLIP_Y, _ZOOM, _SHEAR, _ROTATION, _CROP_KEEP, _CROP_X, _CROP_Y, _SHIFT_X, _SHIFT_Y,
 _GAIN, _BIAS, _SATURATION, _HUE, _RESIZE_CROP_X, _RESIZE_CROP_Y, _SCALE, _FOREGROUND,
 _FOREGROUND_CLASS, _FOREGROUND_PIXEL, _WINDOW_Y, _WINDOW_X, _UNIFORMS) = range(23)


class Randoms(NamedTuple):
    """The random numbers of one example, drawn from its seed by TensorFlow's stateless ops.

    They are drawn op by op even where the rest of the draw runs XLA-compiled: XLA's random
    ops give other numbers for the same seed, and the host (compiled) and the device (op by
    op) must augment an example alike.
    uniform: (_UNIFORMS,) U[0, 1), or None when not training (nothing random then).
    displacement: (g, g, 2) elastic displacements; noise: (H, W, C) grey levels.
    foreground: (centred, y, x) for a window centred on a foreground pixel (--crop_foreground).
    """
    uniform: Optional[tf.Tensor] = None
    displacement: Optional[tf.Tensor] = None
    noise: Optional[tf.Tensor] = None
    foreground: Optional[tuple] = None


def _between(uniform, k, low, high):
    return low + uniform[k] * (high - low)


def _matrix(rows):
    return tf.stack([tf.stack([tf.cast(v, tf.float32) for v in row]) for row in rows])


def _translate(dx, dy):
    return _matrix([[1, 0, dx], [0, 1, dy], [0, 0, 1]])


def _scale(sx, sy):
    return _matrix([[sx, 0, 0], [0, sy, 0], [0, 0, 1]])


def _window_offset(uniform, k, scaled, out, centre, centred):
    """Where a window of `out` pixels starts in a scaled side of `scaled` pixels: anywhere
    it overlaps the most frame (inside it, or holding all of it when the frame is smaller),
    or as near as that allows to centring on `centre` (scaled pixels)."""
    low, high = tf.minimum(0.0, scaled - out), tf.maximum(0.0, scaled - out)
    anywhere = low + uniform[k] * (high - low)
    return tf.where(centred, tf.clip_by_value(centre - out / 2, low, high), anywhere)


def foreground_pixel(mask, uniform, ignore_label=255):
    """(found, y, x): a random pixel (float32 centre) of a class drawn uniformly among the
    foreground classes (not 0, not `ignore_label`) present in the (h, w, 1) mask."""
    labels = tf.cast(mask[..., 0], tf.int32)
    present = tf.math.bincount(tf.reshape(labels, [-1]), minlength=256, maxlength=256) > 0
    present = present & (tf.range(256) != 0) & (tf.range(256) != ignore_label)
    classes = tf.cast(tf.where(present)[:, 0], tf.int32)
    found = tf.size(classes) > 0

    def pick():
        which = tf.cast(uniform[_FOREGROUND_CLASS] * tf.cast(tf.size(classes), tf.float32),
                        tf.int32)
        pixels = tf.where(tf.equal(labels, classes[tf.minimum(which, tf.size(classes) - 1)]))
        count = tf.shape(pixels)[0]
        index = tf.minimum(tf.cast(uniform[_FOREGROUND_PIXEL] * tf.cast(count, tf.float32),
                                   tf.int32), count - 1)
        return tf.cast(pixels[index], tf.float32) + 0.5
    y_x = tf.cond(found, pick, lambda: tf.zeros([2]))
    return found, y_x[0], y_x[1]


def _scale_matrix(in_size, out_size, data_scale, config, uniform, training, foreground):
    in_h, in_w = tf.cast(in_size[0], tf.float32), tf.cast(in_size[1], tf.float32)
    out_h, out_w = float(out_size[0]), float(out_size[1])
    scale = tf.constant(data_scale, tf.float32)
    if not training:
        # x_in = (x_out + 0.5) / scale - 0.5: the frame at the top left, the rest padding
        return _translate(-0.5, -0.5) @ _scale(1 / scale, 1 / scale) @ _translate(0.5, 0.5)
    low, high = config.scale
    if high > low:
        scale = scale * tf.exp(_between(uniform, _SCALE, math.log(low), math.log(high)))
    centred, cy, cx = foreground or (tf.constant(False), 0.0, 0.0)
    oy = _window_offset(uniform, _WINDOW_Y, in_h * scale, out_h, cy * scale, centred)
    ox = _window_offset(uniform, _WINDOW_X, in_w * scale, out_w, cx * scale, centred)
    # x_in = (x_out + 0.5 + ox) / scale - 0.5
    return _translate(-0.5, -0.5) @ _scale(1 / scale, 1 / scale) @ _translate(ox + 0.5, oy + 0.5)


def resize_matrix(in_size, out_size, policy="stretch", uniform=None, training=False,
                  data_scale=1.0, config=None, foreground=None):
    """Output pixel -> input pixel for the resize policy.

    stretch: fill the output, ignoring aspect ratio (the classic recipe).
    pad:     keep aspect, fit inside, pad the rest (fill value / mask_fill).
    crop:    keep aspect, cover the output, crop: random offset in training, centred otherwise.
    scale:   scale the frame by `data_scale`; training: times `config.scale`'s random factor,
             then a window of the output size at random or centred on `foreground`'s
             pixel (Randoms.foreground); otherwise the frame at the top left.
    `uniform`: the example's Randoms.uniform (training only).
    """
    if policy == SCALE:
        if not data_scale > 0:
            raise ValueError(f"--data_scale={data_scale}: must be > 0 (1 = native)")
        return _scale_matrix(in_size, out_size, data_scale, config or AugmentConfig(), uniform,
                             training, foreground)
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
        fx, fy = (uniform[_RESIZE_CROP_X], uniform[_RESIZE_CROP_Y]) if training else (0.5, 0.5)
        ox, oy = (in_w - out_w * s) * fx, (in_h - out_h * s) * fy
    else:
        raise ValueError(f"resize policy {policy!r}: expected one of {POLICIES}")
    # x_in = (x_out + 0.5) * sx - 0.5 + ox
    return _translate(ox - 0.5, oy - 0.5) @ _scale(sx, sy) @ _translate(0.5, 0.5)


def after_prepared_resize(matrix, in_size, prepared_size):
    """`matrix` (output -> a frame of `prepared_size`) preceded by the stretch of an
    `in_size` raw frame to that size (prepare --resize), as one matrix; None: `matrix`."""
    if prepared_size is None:
        return matrix
    return resize_matrix(in_size, prepared_size) @ matrix


def _flips(uniform, config):
    return (uniform[_FLIP_X] < 0.5 if config.hflip else None,
            uniform[_FLIP_Y] < 0.5 if config.vflip else None)


def augmentation_matrix(seed, config, out_size):
    """Output pixel -> pre-augmentation output pixel: random flips, rotation, shear, zoom,
    shift and crop."""
    return _augmentation_matrix(_uniforms(seed), config, out_size)


def _augmentation_matrix(uniform, config, out_size):
    out_h, out_w = float(out_size[0]), float(out_size[1])
    centre = _translate((out_w - 1) / 2, (out_h - 1) / 2)
    uncentre = _translate(-(out_w - 1) / 2, -(out_h - 1) / 2)
    m = tf.eye(3)
    between = lambda k, low, high: _between(uniform, k, low, high)  # noqa: E731
    flip_x, flip_y = _flips(uniform, config)
    if flip_x is not None:
        m = _scale(tf.where(flip_x, -1.0, 1.0), 1.0) @ m
    if flip_y is not None:
        m = _scale(1.0, tf.where(flip_y, -1.0, 1.0)) @ m
    if config.zoom:
        z = between(_ZOOM, 1 - config.zoom, 1 + config.zoom)
        m = _scale(1 / z, 1 / z) @ m
    if config.shear:
        k = tf.tan(between(_SHEAR, -config.shear, config.shear) * (math.pi / 180))
        m = _matrix([[1, k, 0], [0, 1, 0], [0, 0, 1]]) @ m
    if config.rotation:
        a = between(_ROTATION, -config.rotation, config.rotation) * (math.pi / 180)
        c, s = tf.cos(a), tf.sin(a)
        m = _matrix([[c, -s, 0], [s, c, 0], [0, 0, 1]]) @ m
    if config.crop:
        keep = between(_CROP_KEEP, 1 - config.crop, 1.0)
        slack = (1 - keep) / 2
        m = _translate(between(_CROP_X, -slack, slack) * out_w,
                       between(_CROP_Y, -slack, slack) * out_h) @ _scale(keep, keep) @ m
    if config.shift:
        m = _translate(between(_SHIFT_X, -config.shift, config.shift) * out_w,
                       between(_SHIFT_Y, -config.shift, config.shift) * out_h) @ m
    return centre @ m @ uncentre


def resamples(config, policy, training):
    """Whether an example is resampled (a warp or a non-stretch resize) rather than only
    resized by tf.image.resize and flipped."""
    return (training and config.warps) or policy != "stretch"


def _uniforms(seed):
    return tf.random.stateless_uniform([_UNIFORMS],
                                       tf.random.experimental.stateless_fold_in(seed, 0))


def random_numbers(seed, config, out_size, channels, policy="stretch", training=True, mask=None,
                   ignore_label=255):
    """The Randoms of one example from its seed (int64 [2]): nothing when not training; the
    foreground centre (the scale policy with config.crop_foreground) from its `mask`."""
    config = config or AugmentConfig()
    if not training:
        return Randoms()
    fold = lambda k: tf.random.experimental.stateless_fold_in(seed, k)  # noqa: E731
    uniform = _uniforms(seed)
    values = {"uniform": uniform}
    if config.elastic_alpha:
        values["displacement"] = tf.random.stateless_normal(
            [config.elastic_grid, config.elastic_grid, 2], fold(26), stddev=config.elastic_alpha)
    if config.noise:
        values["noise"] = tf.random.stateless_normal(
            [out_size[0], out_size[1], channels], fold(25), stddev=config.noise)
    if policy == SCALE and config.crop_foreground and mask is not None:
        values["foreground"] = tf.cond(
            uniform[_FOREGROUND] < config.crop_foreground,
            lambda: foreground_pixel(mask, uniform, ignore_label),
            lambda: (tf.constant(False), tf.constant(0.0), tf.constant(0.0)))
    return Randoms(**values)


def draw(seed, config, in_size, out_size, channels, policy="stretch", training=True,
         data_scale=1.0, mask=None, ignore_label=255):
    """The Draw of one example: its seed (int64 [2]), its frame's size, the output size
    and channels (and for the scale policy the run's data_scale and the mask). Photometric and
    elastic draws only when training."""
    return draw_from(random_numbers(seed, config, out_size, channels, policy, training, mask,
                                    ignore_label),
                     config, in_size, out_size, channels, policy, training, data_scale)


def draw_from(randoms, config, in_size, out_size, channels, policy="stretch", training=True,
              data_scale=1.0):
    """`draw` from the example's Randoms: arithmetic only, so it compiles with the kernel."""
    config = config or AugmentConfig()
    uniform = randoms.uniform
    flips = training and (config.hflip or config.vflip)
    values = {}
    if resamples(config, policy, training):
        matrix = resize_matrix(in_size, out_size, policy, uniform, training, data_scale, config,
                               randoms.foreground)
        if training and (config.warps or flips):
            # flips fold into the one matrix; the same uniforms as _flips
            matrix = matrix @ _augmentation_matrix(uniform, config, out_size)
        values["matrix"] = matrix
    elif flips:
        values["flip_x"], values["flip_y"] = _flips(uniform, config)
    if not training:
        return Draw(**values)
    values["displacement"], values["noise"] = randoms.displacement, randoms.noise
    if config.contrast:
        values["gain"] = _between(uniform, _GAIN, 1 - config.contrast, 1 + config.contrast)
    if config.brightness:
        values["bias"] = _between(uniform, _BIAS, -config.brightness, config.brightness) * 255
    if config.saturation and channels == 3:
        values["saturation"] = _between(uniform, _SATURATION, 1 - config.saturation,
                                        1 + config.saturation)
    if config.hue and channels == 3:
        values["hue"] = _between(uniform, _HUE, -config.hue, config.hue)
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


# Inputs to the XLA kernel are padded up to a multiple of this, so that frames of many sizes
# compile a few times, not once per size (each compile stalls its worker); the pipeline pads
# to one canvas per dataset instead (`pad_to`): one compile per run.
_PAD_TO = 64


def _pad_for_kernel(x, pad_to=None):
    size = tf.shape(x)[:2]
    extra = tf.maximum(tf.constant(pad_to) - size, 0) if pad_to else -size % _PAD_TO
    # tf.pad copies even when nothing is added, and costs more than this tf.cond
    return tf.cond(tf.reduce_any(extra > 0),
                   lambda: tf.pad(x, [[0, extra[0]], [0, extra[1]], [0, 0]]), lambda: x)


def shrink_factor(matrix):
    """Input pixels per output pixel of an output -> input matrix, along its less shrunk
    axis (a blur for the other would soften this one too)."""
    return tf.minimum(tf.norm(matrix[:2, 0]), tf.norm(matrix[:2, 1]))


def blur_levels(shrink):
    """0 up to ANTIALIAS_ABOVE, then one more per doubling of the shrink."""
    levels = tf.floor(tf.math.log(shrink / ANTIALIAS_ABOVE) / math.log(2.0)) + 1
    return tf.cast(tf.clip_by_value(levels, 0, MAX_BLUR_LEVELS), tf.int32)


def antialias(image, levels, size=None):
    """`levels` passes of the [1, 2, 1] / 4 filter along each axis, dilated 1, 2, 4, ...:
    the a-trous B-spline pyramid kept at full resolution, a centred low-pass ~2^(levels+1)
    pixels wide, so the resampling that follows reads the same coordinates, only from a
    frame without the detail it cannot represent. Edges repeat their pixel: the frame's
    own, at `size` (h, w) when the array is padded past it."""
    def smooth(x, step, axis):
        index = tf.range(tf.shape(x)[axis])
        length = tf.shape(x)[axis] if size is None else size[axis]  # past it: padding, unread
        before = tf.gather(x, tf.maximum(index - step, 0), axis=axis)
        after = tf.gather(x, tf.minimum(index + step, length - 1), axis=axis)
        return (before + 2 * x + after) / 4
    x = tf.cast(image, tf.float32)
    for level in range(MAX_BLUR_LEVELS):
        x = tf.cond(level < levels,
                    lambda x=x, step=2 ** level: smooth(smooth(x, step, 0), step, 1),
                    lambda x=x: x)
    return tf.cast(tf.clip_by_value(tf.round(x), 0, 255), image.dtype)


def _antialiased_for(image, matrix, size=None):
    """The image blurred as much as `matrix` (output -> input) shrinks it, if at all."""
    levels = blur_levels(shrink_factor(matrix))
    return tf.cond(levels > 0, lambda: antialias(image, levels, size), lambda: image)


def _resize_plain(image, mask, out_size):
    """The plain stretch (no matrix): tf.image.resize, antialiased past ANTIALIAS_ABOVE."""
    in_size = tf.cast(tf.shape(image)[:2], tf.float32)
    shrink = tf.reduce_min(in_size / tf.constant(out_size, tf.float32))
    resized = tf.cond(shrink > ANTIALIAS_ABOVE,
                      lambda: tf.image.resize(image, out_size, antialias=True),
                      lambda: tf.image.resize(image, out_size, antialias=False))
    return (tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8),
            tf.image.resize(mask, out_size, method="nearest"))


def augment_example(image, mask, seed, out_size, config=None, policy="stretch", training=True,
                    mask_fill=255, channels=None, data_scale=1.0, ignore_label=255, pad_to=None,
                    prepared_size=None):
    """(h, w, c) uint8 image and (h, w, 1) mask -> out_size, jointly augmented.

    `config=None` (evaluation) applies only the resize policy. `channels=3` returns a
    1-channel image as RGB, repeated last (everything else runs on 1 channel).
    `data_scale`: the "scale" policy's; `ignore_label`: not a foreground class
    (config.crop_foreground). `pad_to`: (h, w) the XLA kernel's input canvas (every frame of
    the dataset fits), else frames are padded to multiples of 64.
    `prepared_size`: (h, w) a raw frame is stretched to first (serving a model whose records
    prepare resized), folded into the same one resampling.
    A mapping that shrinks the frame past ANTIALIAS_ABOVE blurs the image first; the mask
    stays nearest.
    """
    if image.shape.rank != 3 or image.shape[-1] not in (1, 3):
        raise ValueError(f"augment_example: image shape {image.shape}: expected (h, w, 1) or "
                         "(h, w, 3) with the channels known, e.g. decode_png(..., channels=3)")
    config = config or AugmentConfig()
    out_size = tuple(int(v) for v in out_size)
    in_size = tf.shape(image)[:2]
    randoms = random_numbers(seed, config, out_size, image.shape[-1], policy, training, mask,
                             ignore_label)
    settings = dict(out_size=out_size, config=config, policy=policy, training=training,
                    data_scale=data_scale, prepared_size=prepared_size, mask_fill=mask_fill)
    if config.xla and resamples(config, policy, training):
        # the config goes in as its values: tf.function tells objects apart by identity, so
        # every equal AugmentConfig would trace (and compile) again
        image, mask = _resample_compiled(_pad_for_kernel(image, pad_to),
                                         _pad_for_kernel(mask, pad_to), in_size, randoms,
                                         **dict(settings, config=_as_values(config)))
        if channels == 3 and image.shape[-1] == 1:
            image = kernels.gray_to_rgb(image[None])[0]
    else:
        image, mask = _augment_op_by_op(image, mask, in_size, randoms, channels=channels,
                                        **settings)
    return (tf.ensure_shape(image, [out_size[0], out_size[1], None]),
            tf.ensure_shape(mask, [out_size[0], out_size[1], 1]))


def _draw_for_frame(image, in_size, randoms, out_size, config, policy, training, data_scale,
                    prepared_size):
    """The example's Draw with prepare's resize folded in and the contrast centre set; the
    image may be padded past `in_size` (with zeros, which add nothing to its sum)."""
    d = draw_from(randoms, config, prepared_size or in_size, out_size, image.shape[-1], policy,
                  training, data_scale)
    if d.matrix is not None:
        # (a plain stretch of a stretch is one stretch: nothing to fold in then)
        d = d._replace(matrix=after_prepared_resize(d.matrix, in_size, prepared_size))
    if d.gain is not None:
        # contrast centres on the frame's mean: a warp's fill pixels do not pull it down
        d = d._replace(centre=kernels.frame_mean(image[None], in_size[None])[0])
    return d


def _as_values(config):
    return tuple(sorted(dataclasses.asdict(config).items()))


def _resample(image, mask, in_size, randoms, out_size, config, policy, training, data_scale,
              prepared_size, mask_fill):
    """Draw, antialias and resample one example (padded to the kernel's canvas) in ONE
    XLA computation: op by op, the draw's few dozen scalar ops and the blur were over a
    quarter of a window's augmentation time on the host (BENCHMARKS.md §12.2).
    `config`: an AugmentConfig's values (_as_values)."""
    config = AugmentConfig(**dict(config))
    d = _draw_for_frame(image, in_size, randoms, out_size, config, policy, training, data_scale,
                        prepared_size)
    image = _antialiased_for(image, d.matrix, in_size)
    image, mask = kernels.warp_for_xla(image[None], mask[None], in_size[None], _batched(d),
                                       out_size, config.fill_mode, mask_fill)
    return image[0], mask[0]


# One compile per (padded input shape, settings); no AutoGraph: no tensor-dependent Python
# control flow to convert
_resample_compiled = tf.function(_resample, jit_compile=True, autograph=False)


def xla_traces():
    """How many times the host's XLA computations were traced (each trace is one compile)."""
    return _resample_compiled.experimental_get_tracing_count() + kernels.xla_traces()


def _augment_op_by_op(image, mask, in_size, randoms, out_size, config, policy, training,
                      data_scale, prepared_size, mask_fill, channels):
    """Everything but the compiled resampling: plain stretches and flips (the XLA kernel or
    tf.image.resize) and, with config.xla off, the reference kernel."""
    d = _draw_for_frame(image, in_size, randoms, out_size, config, policy, training, data_scale,
                        prepared_size)
    if d.matrix is None:
        # plain stretch: resize only when the size differs (pre-resized records skip it)
        same = tf.reduce_all(tf.equal(in_size, out_size))
        image, mask = tf.cond(same, lambda: (image, mask),
                              lambda: _resize_plain(image, mask, out_size))
        image = tf.ensure_shape(image, [out_size[0], out_size[1], None])
        in_size = tf.constant(out_size)
    else:
        image = _antialiased_for(image, d.matrix)
    if _does_something(d):
        kernel = kernels.xla if config.xla else kernels.reference
        image, mask = kernel(image[None], mask[None], in_size[None], _batched(d), out_size,
                             config.fill_mode, mask_fill, channels)
        image, mask = image[0], mask[0]
    if channels == 3 and image.shape[-1] == 1:  # no kernel ran: nothing else to do
        image = tf.tile(image, [1, 1, 3])
    return image, mask


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
