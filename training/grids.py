"""The zoo's sample grid: rows of uint8 images as one PNG small enough to ship in a model folder."""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from PIL import Image

from models.grid import tile

GRID_MAX_BYTES = 300_000
PAD = 2  # white pixels between cells


def grid_png(rows: Sequence[Sequence[np.ndarray]], max_bytes: int = GRID_MAX_BYTES, cell: int = 128) -> bytes:
    """A PNG of rows of uint8 images (H x W x C or H x W), each cell resized to ``cell`` px high;
    shrunk until it fits in ``max_bytes``."""
    while True:
        cells = [[_cell(im, cell) for im in row] for row in rows]
        canvas = Image.fromarray(tile(cells, pad=PAD, pad_value=255, border=False))
        buf = io.BytesIO()
        canvas.save(buf, format="PNG", optimize=True)
        if buf.tell() <= max_bytes or cell <= 16:
            return buf.getvalue()
        cell = int(cell * 0.75)


def _cell(im: np.ndarray, cell: int) -> np.ndarray:
    a = np.asarray(im)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    img = Image.fromarray(a).convert("RGB")
    w = max(1, round(img.width * cell / img.height))
    resample = Image.Resampling.BICUBIC if img.height > cell else Image.Resampling.NEAREST
    return np.asarray(img.resize((w, cell), resample))
