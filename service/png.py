"""PNG answers, written with numpy and zlib: one filter for the whole image, Huffman-only deflate.

Pillow's PNG writer tries the five PNG filters on every row and keeps the best, which costs more
than the compression itself at the fastest zlib settings. The ``Up`` filter (each byte minus the
one above it) for every row, computed in one numpy pass, takes a third of the time for files up to
~12 % larger (2 cores, photo-like images: 1 MP 111 -> 28 ms, 1.88 -> 1.97 MB; 12 MP 1.24 -> 0.41 s;
a translated 12-MP JPEG photo 15.2 -> 17.1 MB). Huffman-only coding skips zlib's match search,
which finds little in the filtered rows of a photo.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np

SIGNATURE = b"\x89PNG\r\n\x1a\n"
COLOR_TYPES = {1: 0, 2: 4, 3: 2, 4: 6}  # channels -> PNG colour type: grey, grey+alpha, RGB, RGBA
UP = 2  # the PNG filter type byte of "Up"


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(data, zlib.crc32(tag)))


def encode_png(pixels: np.ndarray) -> bytes:
    """H x W or H x W x C (C = 1 grey, 2 grey+alpha, 3 RGB, 4 RGBA) uint8 -> the bytes of a PNG file."""
    arr = np.asarray(pixels)
    if arr.dtype != np.uint8:
        raise ValueError(f"PNG answers are 8-bit: got {arr.dtype}")
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in COLOR_TYPES or 0 in arr.shape:
        raise ValueError(f"expected H x W x 1..4 pixels, got shape {arr.shape}")
    h, w, c = arr.shape
    rows = arr.reshape(h, w * c)
    filtered = np.empty((h, w * c + 1), np.uint8)
    filtered[:, 0] = UP
    filtered[0, 1:] = rows[0]  # the row above the first is zeros
    np.subtract(rows[1:], rows[:-1], out=filtered[1:, 1:])  # uint8 arithmetic wraps: modulo 256, as PNG wants
    deflate = zlib.compressobj(1, zlib.DEFLATED, 15, 9, zlib.Z_HUFFMAN_ONLY)
    data = deflate.compress(filtered) + deflate.flush()
    header = struct.pack(">IIBBBBB", w, h, 8, COLOR_TYPES[c], 0, 0, 0)
    return SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", data) + _chunk(b"IEND", b"")
