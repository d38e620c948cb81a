"""Raw images of any size to model input and model output back to their pixels, exactly
as training mapped them: the one inference path of the SavedModel signature, predict and
evaluate.

The model input comes from the evaluation path of the training pipeline itself (gray or
RGB conversion as the pipeline does it, then `augment.augment_example` with the resize
policy), so a deployed model sees the pixels its validation split saw. The logits go back
through the inverse of the same resize matrix. `model_fn` is any callable from a uint8
batch (N, H, W, C) at the model's input size to logits (N, H, W, K): a Keras model, a
SavedModel signature, a TFLite interpreter behind a function. This module never imports
segmodels.

Options, each a wrapper around the one mapping:
- tiled: overlapping windows at a tile size (default the model's input), each window mapped
  as a whole image, logits blended; for images larger than the model (whole-slide EM,
  aerial tiles), where resizing down would lose thin structures. Memory grows with the
  batch of windows and the output, not with a resized copy of the image.
- tta: logits averaged over flipped copies, each flipped back.

Every op here is a plain TensorFlow op (kernels.reference, never the XLA-compiled kernels
the host training pipeline uses): TF Serving builds run without XLA's JIT, so a SavedModel
holding XLA-only functions would not serve. The two kernels agree up to a grey level at
float rounding (tests/test_kernels.py).
"""
import tensorflow as tf

from segdata import augment, intensity, kernels, spec

# The saved form of the run's InputSpec: the model's input contract
InputContract = spec.InputSpec
FILENAME = spec.FILENAME
TTA = ("none", "hflip", "hvflip")
# Above this, neighbouring windows overlap so much that each pixel is computed more than
# 16 times (1 / (1 - overlap) per side); 0.99 meant a stride of 5 px and millions of windows.
MAX_TILE_OVERLAP = 0.75


def model_pixels(image, contract):
    """uint8 pixels of a frame: a 16-bit one mapped by the contract's intensity rule, as the
    training pipeline mapped the records."""
    image = intensity.apply(image, contract.intensity)
    if image.dtype == tf.uint16:
        raise ValueError("a 16-bit frame, but the model was trained on 8-bit frames: convert "
                         "it to 8 bits as its training data was")
    return tf.convert_to_tensor(image, tf.uint8)


def _to_channels(image, channels):
    """As the pipeline does: RGB asked for as gray is grayed first (augment.to_gray); gray
    asked for as RGB is expanded after the resize, by augment_example."""
    if image.shape[-1] == 3 and channels == 1:
        return augment.to_gray(image, False)
    return image


def with_model_channels(image, contract):
    """uint8 (h, w, 1 or 3) -> (h, w, contract.channels): grayed as the pipeline grays, gray
    repeated (the values augment_example's expansion gives after a resize)."""
    image = _to_channels(model_pixels(image, contract), contract.channels)
    if image.shape[-1] == 1 and contract.channels == 3:
        image = tf.repeat(image, 3, axis=-1)
    return image


def to_model_input(image, contract, mask=None):
    """uint8 (h, w, c) (or uint16 with an intensity rule) [and its mask] -> (model input
    (H, W, C), resized mask or None, output->input matrix)."""
    size = contract.image_size
    config = augment.AugmentConfig(xla=False)
    image = _to_channels(model_pixels(image, contract), contract.channels)
    prepared = contract.prepared_size
    matrix = augment.after_prepared_resize(
        augment.resize_matrix(prepared or tf.shape(image)[:2], size, contract.resize,
                              training=False, data_scale=contract.data_scale),
        tf.shape(image)[:2], prepared)
    dummy = mask if mask is not None else tf.zeros_like(image[..., :1])
    model_input, resized_mask = augment.augment_example(
        image, dummy, tf.constant([0, 0], tf.int64), size, config, contract.resize,
        training=False, mask_fill=contract.ignore_label, channels=contract.channels,
        data_scale=contract.data_scale, prepared_size=contract.prepared_size)
    return model_input, (resized_mask if mask is not None else None), matrix


def to_original(logits, matrix, original_size):
    """(H, W, K) logits -> (h, w, K) logits and a validity map (False where the model never
    saw the pixel, e.g. outside a centre crop). Past the outermost logit centres the edge
    value extends: a fill of 0 would pull logits and probabilities toward 0 / 0.5 there."""
    inverse = tf.linalg.inv(matrix)
    logits = tf.cast(logits, tf.float32)
    back = kernels.projective_warp(logits[None], inverse[None], original_size, "BILINEAR",
                                   fill_mode="nearest")[0]
    seen = kernels.projective_warp(tf.ones_like(logits[None, ..., :1]), inverse[None],
                                   original_size, "NEAREST", fill_value=0)[0]
    return back, seen[..., 0] > 0


def whole_image_logits(model_fn, image, contract):
    """One image through the training mapping: (logits (h, w, K) float32, seen (h, w))."""
    model_input, _, matrix = to_model_input(image, contract)
    logits = tf.cast(model_fn(model_input[None]), tf.float32)[0]
    return to_original(logits, matrix, tf.shape(image)[:2])


def _scaled_logits(model_fn, image, contract, overlap, batch_size):
    """The "scale" policy: a frame that fits the canvas at data_scale is mapped whole, as
    validation saw it; a larger one in overlapping canvas-sized windows (a side shorter
    than the canvas padded as the canvas pads it)."""
    if contract.prepared_size:  # every frame is stretched to the size prepare gave them
        return whole_image_logits(model_fn, image, contract)
    canvas = contract.source_canvas()
    height, width = tf.shape(image)[0], tf.shape(image)[1]

    def windows():
        padded = tf.pad(image, [[0, tf.maximum(canvas[0] - height, 0)],
                                [0, tf.maximum(canvas[1] - width, 0)], [0, 0]])
        logits, seen = _tiled(model_fn, padded, contract, canvas, overlap, batch_size)
        return logits[:height, :width], seen[:height, :width]
    return tf.cond(tf.logical_and(height <= canvas[0], width <= canvas[1]),
                   lambda: whole_image_logits(model_fn, image, contract), windows)


def _origins(length, tile, stride):
    """Window starts along one side: every `stride`, the last one flush with the end."""
    count = (length - tile + stride - 1) // stride + 1
    return tf.minimum(tf.range(count) * stride, length - tile)


def _side_weights(tile, overlap_px, inner_start, inner_end):
    """(tile,) blend weights of one window side by side: 1 in the middle; over the overlap
    with a neighbour, 0 for the outer quarter (where the window's own zero padding changes
    the logits) rising linearly to 1 at half the overlap. A side on the image border
    keeps weight 1: no other window covers it. Any pixel that two windows share gets
    weight > 0 from at least one of them."""
    skip = tf.cast(overlap_px // 4, tf.float32)
    full = tf.maximum(tf.cast(overlap_px // 2, tf.float32), skip + 1)
    distance = tf.range(tile, dtype=tf.float32)
    ramp = lambda d: tf.clip_by_value((d - skip + 1) / (full - skip + 1), 0.0, 1.0)  # noqa: E731
    weight = tf.ones([tile])
    weight = tf.where(inner_start, tf.minimum(weight, ramp(distance)), weight)
    return tf.where(inner_end, tf.minimum(weight, ramp(tile - 1 - distance)), weight)


def tiled_logits(model_fn, image, contract, tile=None, overlap=0.25, batch_size=8):
    """Logits (h, w, K) from overlapping windows of `tile` (default: the model's input size),
    each mapped to the model as a whole image, blended by _side_weights. An image smaller
    than a tile in either side is mapped whole instead. Returns (logits, seen)."""
    tile = tuple(int(v) for v in (tile or contract.image_size))
    check_tile_overlap(overlap)
    if batch_size < 1:
        raise ValueError(f"--batch_size={batch_size}: expected >= 1")
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    fits = tf.logical_and(height >= tile[0], width >= tile[1])
    return tf.cond(fits, lambda: _tiled(model_fn, image, contract, tile, overlap, batch_size),
                   lambda: whole_image_logits(model_fn, image, contract))


def _tiled(model_fn, image, contract, tile, overlap, batch_size):
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    # overlap may be a tensor (the SavedModel's tiled signature takes it as an input)
    overlap = tf.cast(overlap, tf.float32)
    strides = [tf.maximum(1, tf.cast(tf.round(side * (1 - overlap)), tf.int32)) for side in tile]
    overlaps = [side - stride for side, stride in zip(tile, strides)]
    ys = _origins(height, tile[0], strides[0])
    xs = _origins(width, tile[1], strides[1])
    origins = tf.reshape(tf.stack(tf.meshgrid(ys, xs, indexing="ij"), -1), [-1, 2])
    count = tf.shape(origins)[0]
    image = with_model_channels(image, contract)
    channels = contract.channels
    pixel_grid = tf.stack(tf.meshgrid(tf.range(tile[0]), tf.range(tile[1]), indexing="ij"), -1)

    def window_logits(windows):
        if tile == contract.image_size:  # the mapping is the identity: skip it
            return tf.cast(model_fn(windows), tf.float32)
        return tf.map_fn(lambda w: whole_image_logits(model_fn, w, contract)[0], windows,
                         fn_output_signature=tf.TensorSpec(tile + (contract.logit_channels,),
                                                           tf.float32))

    def weights_of(origin):
        y, x = origin[0], origin[1]
        rows = _side_weights(tile[0], overlaps[0], y > 0, y + tile[0] < height)
        cols = _side_weights(tile[1], overlaps[1], x > 0, x + tile[1] < width)
        return rows[:, None, None] * cols[None, :, None]

    def step(start, total, weight_sum):
        batch = origins[start:start + batch_size]
        windows = tf.map_fn(
            lambda o: tf.slice(image, [o[0], o[1], 0], [tile[0], tile[1], channels]), batch,
            fn_output_signature=tf.TensorSpec(tile + (channels,), image.dtype))
        logits = window_logits(windows)
        weights = tf.map_fn(weights_of, batch, fn_output_signature=tf.float32)
        where = batch[:, None, None, :] + pixel_grid[None]
        return (start + batch_size, tf.tensor_scatter_nd_add(total, where, logits * weights),
                tf.tensor_scatter_nd_add(weight_sum, where, weights))

    total = tf.zeros([height, width, contract.logit_channels])
    weight_sum = tf.zeros([height, width, 1])
    _, total, weight_sum = tf.while_loop(lambda start, *_: start < count, step,
                                         (tf.constant(0), total, weight_sum))
    return total / weight_sum, tf.ones([height, width], tf.bool)


def check_tile_overlap(overlap):
    """0 <= overlap <= MAX_TILE_OVERLAP, or one clear error: a ValueError for a number, an
    InvalidArgumentError from the graph for a tensor (the SavedModel's tiled signature)."""
    rule = (f"expected 0 <= overlap <= {MAX_TILE_OVERLAP} (more recomputes every pixel over "
            "16 times: millions of windows near 1)")
    if isinstance(overlap, (int, float)):
        if not 0 <= overlap <= MAX_TILE_OVERLAP:
            raise ValueError(f"--tile_overlap={overlap}: {rule}")
        return
    message = f"--tile_overlap: {rule}"
    overlap = tf.cast(overlap, tf.float32)
    tf.debugging.assert_greater_equal(overlap, 0.0, message=message)
    tf.debugging.assert_less_equal(overlap, MAX_TILE_OVERLAP, message=message)


def _flips(tta):
    if tta not in TTA:
        raise ValueError(f"--tta={tta!r}: expected one of {TTA}")
    return {"none": [()], "hflip": [(), (1,)], "hvflip": [(), (1,), (0,), (0, 1)]}[tta]


def flip_averaged(fn, image, tta):
    """fn(image) -> (h, w, ...) tensors (or a tuple of them), over the copies of `image`
    flipped as `tta` says, each output flipped back: float outputs averaged, bool ones
    (validity maps) and-ed."""
    flips = _flips(tta)
    total = None
    for axes in flips:
        out = fn(tf.reverse(image, axes) if axes else image)
        if axes:
            out = tf.nest.map_structure(lambda t: tf.reverse(t, axes), out)
        total = out if total is None else tf.nest.map_structure(
            lambda a, b: tf.logical_and(a, b) if a.dtype == tf.bool else a + b, total, out)
    return tf.nest.map_structure(
        lambda t: t if t.dtype == tf.bool else t / len(flips), total)


def predict_logits(model_fn, image, contract, tile=None, overlap=0.25, tta="none",
                   batch_size=8):
    """The one inference path: (logits (h, w, K) float32, seen (h, w) bool) for a uint8
    image (h, w, c). tile: None for the whole-image mapping, or "model" / (H, W) for tiled
    windows; tta: none, hflip or hvflip (logits averaged over the flipped copies, each
    flipped back)."""
    scaled = contract.resize == augment.SCALE
    if tile == "model":
        tile = contract.source_canvas() if scaled else contract.image_size
    image = model_pixels(image, contract)

    def once(picture):
        if tile is None and scaled:
            return _scaled_logits(model_fn, picture, contract, overlap, batch_size)
        if tile is None:
            return whole_image_logits(model_fn, picture, contract)
        return tiled_logits(model_fn, picture, contract, tile, overlap, batch_size)
    return flip_averaged(once, image, tta)


def classes(logits):
    """(…, K) logits -> uint8 class indices (1 channel: sigmoid > 0.5)."""
    if logits.shape[-1] == 1:
        return tf.cast(logits[..., 0] > 0, tf.uint8)
    return tf.cast(tf.argmax(logits, -1), tf.uint8)


def probabilities(logits):
    return tf.sigmoid(logits) if logits.shape[-1] == 1 else tf.nn.softmax(logits)


def mask_of(logits, seen, ignore_label):
    """Class indices, `ignore_label` where the model never saw the pixel."""
    return tf.where(seen, classes(logits), tf.cast(ignore_label, tf.uint8))
