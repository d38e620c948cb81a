"""The PNG writer SegFlow needs: 8-bit gray class-index masks, fast; and 16-bit gray or RGB
frames, which Pillow cannot write in colour.

Pillow's encoder (even at compress_level=1) tries several row filters per line and cost
~0.9 ms for a 512x512 mask, more than decoding it; masks are long runs of a few values,
so unfiltered rows through zlib level 1 compress them well at half the time
(tools/benchmark_prepare.py measures the whole tool). Output is deterministic, so reruns
stay byte-identical.
"""

import struct
import zlib

import numpy as np

SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _chunk(tag, data):
    return (struct.pack(">I", len(data)) + tag + data
            + struct.pack(">I", zlib.crc32(data, zlib.crc32(tag))))


def _png(rows, width, height, bit_depth, colour_type):
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return (SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(rows, 1))
            + _chunk(b"IEND", b""))


def encode_gray(array):
    """uint8 (H, W) array -> PNG bytes (8-bit grayscale, no interlace, filter 0 on every row)."""
    array = np.asarray(array)
    if array.dtype != np.uint8 or array.ndim != 2:
        raise ValueError(f"encode_gray needs a 2-D uint8 array, got {array.dtype} {array.shape}")
    height, width = array.shape
    rows = np.zeros((height, width + 1), np.uint8)  # a leading 0 per row: filter type "None"
    rows[:, 1:] = array
    return _png(rows, width, height, 8, 0)


def encode_16_bit(array):
    """uint16 (H, W) or (H, W, 1 or 3) array -> PNG bytes (16-bit gray or RGB)."""
    array = np.asarray(array)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.dtype != np.uint16 or array.ndim not in (2, 3) or (
            array.ndim == 3 and array.shape[-1] != 3):
        raise ValueError(f"encode_16_bit needs a uint16 (H, W) or (H, W, 3) array, got "
                         f"{array.dtype} {array.shape}")
    height, width = array.shape[:2]
    samples = array.astype(">u2").view(np.uint8).reshape(height, -1)  # PNG is big-endian
    rows = np.zeros((height, samples.shape[1] + 1), np.uint8)
    rows[:, 1:] = samples
    return _png(rows, width, height, 16, 2 if array.ndim == 3 else 0)
