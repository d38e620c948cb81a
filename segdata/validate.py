"""Checks and converts one frame/mask pair (runs in worker processes).

Only Pillow and numpy here: worker processes must start fast and never touch
TensorFlow. A bad pair returns an error string naming the file, never raises.
"""

import io
import json

import numpy as np
from PIL import Image

from segdata import fingerprint, intensity, png

# Pillow refuses "decompression bombs" with a warning-as-error; real
# segmentation frames can be large, so only absurd sizes are refused.
Image.MAX_IMAGE_PIXELS = 20000 * 20000

MIN_SIDE = 4
MASK_KINDS = ("auto", "binary", "index", "palette", "rgb")


def load_palette(path):
    """JSON {"#rrggbb" or "r,g,b": class_index} -> {(r, g, b): class_index}."""
    with open(path) as handle:
        raw = json.load(handle)
    palette = {}
    for colour, index in raw.items():
        text = colour.strip()
        if text.startswith("#") and len(text) == 7:
            rgb = tuple(int(text[i:i + 2], 16) for i in (1, 3, 5))
        else:
            rgb = tuple(int(part) for part in text.split(","))
        if len(rgb) != 3:
            raise ValueError(f"{path}: colour {colour!r} is neither '#rrggbb' nor 'r,g,b'")
        palette[rgb] = int(index)
    return palette


DEEP_MODES = ("I;16", "I;16B", "I;16L", "I")  # 16-bit (or 32-bit integer) gray
# Pillow decodes a 16-bit colour frame (PNG, TIFF) to the upper byte of each value, silently:
# 12-bit values 0..4095 became 0..15. Its unpacker for the other byte order reads the other
# byte, so a second decode with the order swapped gives the lower bytes.
_SWAPPED = {";16B": ";16L", ";16L": ";16B"}


def _rawmode(tile):
    return tile.args if isinstance(tile.args, str) else tile.args[0]


def _sixteen_bit_colour(image):
    """The raw mode of an opened, not yet decoded 16-bit colour frame; None for others."""
    if image.mode not in ("RGB", "RGBA") or not image.tile:
        return None
    rawmode = _rawmode(image.tile[0])
    return rawmode if ";16" in rawmode else None


def _in_other_byte_order(tile):
    """The tile decoded by the unpacker for the other byte order; ValueError when the raw
    mode has no such twin (native order)."""
    mode = _rawmode(tile)
    order = mode[mode.index(";16"):][:4]
    if order not in _SWAPPED:
        raise ValueError(f"no byte-order twin for raw mode {mode}")
    mode = mode.replace(order, _SWAPPED[order])
    return tile._replace(args=mode if isinstance(tile.args, str) else (mode, *tile.args[1:]))


def _lower_bytes(data, rawmode, path):
    """The lower byte of each value of a 16-bit colour frame (Pillow's decode gives the upper)."""
    with Image.open(io.BytesIO(data)) as image:
        try:
            image.tile = [_in_other_byte_order(tile) for tile in image.tile]
            image.load()  # ValueError: no unpacker for the twin (16-bit gray with alpha)
        except ValueError:
            raise _BadFile(f"{path}: a 16-bit {rawmode} frame, which cannot be read at full "
                           "depth; save it as a 16-bit gray or RGB PNG (no alpha)") from None
        return np.asarray(image)


def _deep_gray(image, path):
    """A 16-bit (or 32-bit integer) gray frame as uint16, at full depth."""
    array = np.asarray(image)
    if array.size and (array.min() < 0 or array.max() > 65535):
        raise ValueError(f"{path}: gray values {int(array.min())}..{int(array.max())} do not fit "
                         "16 bits; store the frame as 8- or 16-bit")
    return array.astype(np.uint16)


def _gray_or_rgb(image):
    """A decoded 8-bit PIL frame as mode L or RGB: CMYK, RGBA, palette and LA frames become
    RGB."""
    if image.mode not in ("L", "RGB"):
        return image.convert("RGB")
    return image


def read_frame(path):
    """An image file as uint8 (h, w, 1) or (h, w, 3), converted as prepare converts frames,
    or uint16 (h, w, 1 or 3) for a 16-bit frame (the model's input contract maps it);
    ValueError naming the file when it cannot be read (missing, truncated, not an image)."""
    try:
        _, image, colour = _read_image(path)
    except _BadFile as err:
        raise ValueError(str(err))
    if colour is not None:
        return colour
    if image.mode in DEEP_MODES:
        return _deep_gray(image, path)[..., None]
    array = np.asarray(_gray_or_rgb(image))
    return array[..., None] if array.ndim == 2 else array


def _deep_payload(array, keep, resize):
    """A 16-bit frame: (16-bit PNG bytes or None to keep the file, its intensity sample)."""
    if resize is not None:
        channels = array[..., None] if array.ndim == 2 else array
        array = np.stack([np.asarray(Image.fromarray(channels[..., c].astype(np.float32), "F")
                                     .resize((resize[1], resize[0]), Image.BILINEAR))
                          for c in range(channels.shape[-1])], -1)
        array = np.clip(np.round(array), 0, 65535).astype(np.uint16)
    if keep:
        return None, intensity.sample(array)
    return png.encode_16_bit(array), intensity.sample(array)


def _frame_payload(image, colour, resize, path):
    """Returns (bytes, format, channels, bits, intensity sample or None). Bytes are None when
    the file is kept as it is (TF can decode it): the shard writer reads it then, from the
    page cache, because pickling every frame back through the pool cost more than decoding
    it. `colour`: a 16-bit colour frame's full-depth pixels (_read_image)."""
    png_file = resize is None and (image.format or "").upper() == "PNG"
    if colour is not None:  # alpha dropped as for 8-bit frames; TF decodes RGB PNGs as kept
        payload, values = _deep_payload(colour, png_file and image.mode == "RGB", resize)
        return payload, "png", 3, 16, values
    if image.mode in DEEP_MODES:
        payload, values = _deep_payload(_deep_gray(image, path), png_file and image.mode == "I;16",
                                        resize)
        return payload, "png", 1, 16, values
    fmt = (image.format or "").upper()
    keep = resize is None and fmt in ("PNG", "JPEG") and image.mode in ("L", "RGB")
    if keep:
        return None, fmt.lower(), 1 if image.mode == "L" else 3, 8, None
    image = _gray_or_rgb(image)
    if resize is not None:
        image = image.resize((resize[1], resize[0]), Image.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue(), "png", 1 if image.mode == "L" else 3, 8, None


def _value_counts(array):
    return np.bincount(array.ravel(), minlength=256)


def mask_to_indices(image, mask_kind, palette):
    """PIL mask -> (uint8 class indices, per-value pixel counts, changed?), or ValueError.

    mask_kind "auto" reads gray values as class indices here: prepare decides binary
    vs index for the whole dataset first (dataset_mask_kind) and passes the answer.

    One histogram serves the binary check, the range check and the manifest's class
    pixel counts, and binary masks are remapped with one bitwise and: this function runs
    once per pair and used to cost more than decoding it.
    """
    if mask_kind == "rgb" or (mask_kind == "auto" and palette is not None):
        if palette is None:
            raise ValueError("mask_kind=rgb needs --palette=FILE.json (colour -> class)")
        rgb = np.asarray(image.convert("RGB"), dtype=np.uint32)
        keys = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
        out = np.full(keys.shape, -1, dtype=np.int32)
        for colour, index in palette.items():
            out[keys == ((colour[0] << 16) | (colour[1] << 8) | colour[2])] = index
        if (out < 0).any():
            unknown = keys[out < 0][0]
            raise ValueError(
                f"colour #{int(unknown):06x} is not in the palette file; add it there")
        out = out.astype(np.uint8)
        return out, _value_counts(out), True
    if image.mode == "P":
        if mask_kind not in ("auto", "palette", "index"):
            raise ValueError(f"palette PNG but --mask_kind={mask_kind}")
        array = np.asarray(image, dtype=np.uint8)  # palette indices, never the colours
        return array, _value_counts(array), True
    changed = image.mode != "L"
    if image.mode in ("RGB", "RGBA"):
        rgb = np.asarray(image.convert("RGB"))
        if not ((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()):
            raise ValueError("RGB colour mask: pass --palette=FILE.json mapping colours to classes")
        array = rgb[..., 0]
    elif image.mode == "L":
        array = np.asarray(image)
        # Pillow's C histogram is 3x faster than np.bincount and gives the same 256 counts.
        counts = np.asarray(image.histogram(), np.int64)
    else:
        array = np.asarray(image)
        if array.ndim == 3:
            array = array[..., 0]
    if array.dtype != np.uint8:
        if array.max(initial=0) > 255 or array.min(initial=0) < 0:
            raise ValueError(f"mask values up to {int(array.max())}: class indices must fit in "
                             "0..255")
        array, changed = array.astype(np.uint8), True
    if image.mode != "L":
        counts = _value_counts(array)
    present = set(np.flatnonzero(counts).tolist())
    if mask_kind == "binary":
        if not present <= {0, 1, 255}:
            raise ValueError(f"binary mask has values {sorted(present)}; expected 0/1 or 0/255")
        binary = np.zeros(256, np.int64)
        binary[0], binary[1] = counts[0], counts[1] + counts[255]
        return array & 1, binary, True  # 0 -> 0, 1 -> 1, 255 -> 1; 60x faster than a LUT
    return array, counts, changed


def frame_bits(path):
    """16 for a 16-bit (or 32-bit integer) grey frame, 8 for others, from the header only;
    None for a file the full check will report."""
    try:
        with Image.open(path) as image:
            return 16 if image.mode in DEEP_MODES or _sixteen_bit_colour(image) else 8
    except Exception:  # noqa: BLE001  check_pair names the file and the problem
        return None


def mask_values(path):
    """The set of values in a gray (or gray-as-RGB) mask file; "palette" for a palette PNG
    (its values are class indices whatever they are); None for a file the full check will
    report."""
    try:
        with Image.open(path) as image:
            if image.mode == "P":
                return "palette"
            if image.mode not in ("L", "I", "I;16", "I;16B", "I;16L"):
                image = image.convert("RGB").getchannel(0)
            counts = np.asarray(image.histogram()[:256] if image.mode == "L"
                                else _value_counts(np.clip(np.asarray(image), 0, 256)))
    except Exception:  # noqa: BLE001  check_pair names the file and the problem
        return None
    return set(np.flatnonzero(counts).tolist())


def dataset_mask_kind(value_sets):
    """--mask_kind=auto decided once for a dataset from every mask's values (mask_values).

    binary (255 -> 1) only when every mask is gray and holds nothing but 0 and 255: a
    class-index set whose masks include one of only background and ignore (0 and 255)
    stays index, so its ignore pixels stay ignored. Returns (kind, the gray values seen).
    """
    seen = set().union(*[v for v in value_sets if isinstance(v, set)])
    binary = 255 in seen and seen <= {0, 255} and "palette" not in value_sets
    return ("binary" if binary else "index"), sorted(seen)


class _BadFile(Exception):
    pass


def _read_image(path, frame=True):
    """(bytes, fully decoded PIL image, uint16 (h, w, 3) pixels of a 16-bit colour frame or
    None), or _BadFile whose message names the file. Masks (frame=False) are read as
    Pillow reads them: their values are class labels or palette colours, not intensities."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
        if not data:
            raise _BadFile(f"{path}: empty file")
        with Image.open(io.BytesIO(data)) as image:
            rawmode = _sixteen_bit_colour(image) if frame else None
            image.load()  # decodes every pixel: catches truncated files, not just bad headers
    except _BadFile:
        raise
    except Exception as err:  # noqa: BLE001  a decoder can raise anything on hostile bytes
        raise _BadFile(f"{path}: unreadable or truncated image ({type(err).__name__}: {err})")
    colour = None
    if rawmode is not None:
        upper = np.asarray(image)[..., :3].astype(np.uint16)
        colour = (upper << 8) | _lower_bytes(data, rawmode, path)[..., :3]
    return data, image, colour


def check_pair(pair, options):
    """pair: (id, frame_path, mask_path, split). Returns a result dict or {"error": ...}."""
    example_id, frame_path, mask_path, split = pair
    try:
        _, frame, colour = _read_image(frame_path)  # kept frames: re-read by the shard writer
        mask_data, mask_image, _ = _read_image(mask_path, frame=False)
    except _BadFile as err:
        return {"error": str(err), "id": example_id}
    if frame.size != mask_image.size:
        return {"error": f"{mask_path}: size {mask_image.size[0]}x{mask_image.size[1]} differs "
                         f"from its frame {frame_path} ({frame.size[0]}x{frame.size[1]})",
                "id": example_id}
    if min(frame.size) < MIN_SIDE:
        return {"error": f"{frame_path}: {frame.size[0]}x{frame.size[1]} is too small "
                         f"(each side needs at least {MIN_SIDE} px)", "id": example_id}
    try:
        mask, counts, changed = mask_to_indices(mask_image, options["mask_kind"],
                                                options["palette"])
    except ValueError as err:
        return {"error": f"{mask_path}: {err}", "id": example_id}
    num_classes, ignore = options["num_classes"], options["ignore_label"]
    if num_classes:
        bad = [v for v in np.flatnonzero(counts) if v >= num_classes and v != ignore]
        if bad:
            return {"error": f"{mask_path}: mask values {bad} outside [0, {num_classes}) and not "
                             f"the ignore label {ignore}; fix the mask or --num_classes",
                    "id": example_id}
    try:
        image_bytes, image_format, channels, bits, values = _frame_payload(
            frame, colour, options["resize"], frame_path)
    except (OSError, ValueError) as err:
        return {"error": f"{frame_path}: cannot convert ({err})", "id": example_id}
    if changed or options["resize"] is not None or (mask_image.format or "").upper() != "PNG":
        if options["resize"] is not None:
            mask = np.asarray(Image.fromarray(mask, "L").resize(
                (options["resize"][1], options["resize"][0]), Image.NEAREST))
        mask_png = png.encode_gray(mask)
    else:
        mask_png = mask_data  # already a gray PNG of class indices: stored as it came
    height, width = (options["resize"] or (frame.size[1], frame.size[0]))
    stats = fingerprint.frame_statistics(
        None if bits > 8 else _gray_or_rgb(frame), mask, counts, options["ignore_label"],
        example_id in options.get("measure_objects", ()))
    return {
        "id": example_id, "split": split, "image_bytes": image_bytes, "format": image_format,
        "height": height, "width": width, "channels": channels,
        "mask_png": mask_png, "counts": counts, "bits": bits, "intensity_sample": values,
        "frame": frame_path, "statistics": stats,
    }
