"""The one PNG writer SegFlow needs: 8-bit gray class-index masks, fast.

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


def encode_gray(array):
    """uint8 (H, W) array -> PNG bytes (8-bit grayscale, no interlace, filter 0 on every row)."""
    array = np.asarray(array)
    if array.dtype != np.uint8 or array.ndim != 2:
        raise ValueError(f"encode_gray needs a 2-D uint8 array, got {array.dtype} {array.shape}")
    height, width = array.shape
    rows = np.zeros((height, width + 1), np.uint8)  # a leading 0 per row: filter type "None"
    rows[:, 1:] = array
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(rows, 1))
            + _chunk(b"IEND", b""))
