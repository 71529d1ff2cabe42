"""Image grids: rows of images tiled into one image (numpy only).

The one grid builder behind the zoo's sample grids (``training.grids``), the training loop's
TensorBoard previews (``training.loop.image_grid``) and the service's ``/sample`` grids
(``service.imaging.make_grid``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def tile(
    rows: Sequence[Sequence[np.ndarray]], pad: int = 2, pad_value: float = 0, border: bool = True
) -> np.ndarray:
    """Rows of ``H x W x C`` (or ``H x W``) arrays -> one ``H' x W' x C`` array of their dtype.

    Images go left to right, rows top to bottom, ``pad`` pixels of ``pad_value`` between them and,
    with ``border``, around the whole grid. Rows may differ in length and images in size: a row is
    as high as its highest image, the grid as wide as its widest row, each image at the top left of
    its place.
    """
    rows = [[a[..., None] if a.ndim == 2 else a for a in map(np.asarray, row)] for row in rows]
    images = [a for row in rows for a in row]
    if not images:
        raise ValueError("an image grid needs at least one image")
    edge = pad if border else 0
    heights = [max((a.shape[0] for a in row), default=0) for row in rows]
    widths = [sum(a.shape[1] for a in row) + pad * (len(row) - 1) for row in rows]
    shape = (sum(heights) + pad * (len(rows) - 1) + 2 * edge, max(widths) + 2 * edge, images[0].shape[2])
    grid = np.full(shape, pad_value, np.result_type(*images))
    y = edge
    for row, height in zip(rows, heights, strict=True):
        x = edge
        for a in row:
            grid[y : y + a.shape[0], x : x + a.shape[1]] = a
            x += a.shape[1] + pad
        y += height + pad
    return grid
