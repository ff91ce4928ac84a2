"""A pixel's local level and its deviation from it: the shared step of balancing a Bayer
mosaic's colour sites (:mod:`edge.darkfield.mosaic`) and matching a frame's noise to the camera
model (:mod:`edge.darkfield.noise`), as one Numba kernel (running sums, one pass, a 2,048 px frame
in tens of ms); ``tests/edge/test_mosaic.py`` holds the plain numpy formula it is tested against."""

from __future__ import annotations

import math

import numba as nb
import numpy as np

# side of the square a pixel's local level is the mean of: wide enough that its own noise and a
# faint scratch's light barely move the mean (1/225 of it), narrow against the haze's changes
LEVEL_PX = 15


@nb.njit(cache=True, nogil=True)
def rescale_plane(src, dst, g, black, read2, k, half, extra):  # pragma: no cover - compiled
    """``src`` into ``dst`` (same shape; ``dst`` already holds a copy of ``src``): each pixel's
    local level (the mean of the square of side ``2 half + 1`` around it, near the borders over
    the pixels inside) goes to ``black + (level - black) / g``, and its
    deviation from the level is scaled by the camera's noise sigma at the new level over the
    one at the old, times ``extra``. Pixels at full scale are left alone. Running sums row by
    row: a column sum per column, then a running sum along the row."""
    h, w = src.shape
    cols = np.zeros(w, np.float64)  # column sums over the rows of row i's square
    for i in range(min(half + 1, h)):
        for j in range(w):
            cols[j] += src[i, j]
    for i in range(h):
        n_rows = min(i + half, h - 1) - max(i - half, 0) + 1
        s = 0.0
        for j in range(min(half + 1, w)):
            s += cols[j]
        for j in range(w):
            n = n_rows * (min(j + half, w - 1) - max(j - half, 0) + 1)
            level = s / n
            if j + 1 + half < w:
                s += cols[j + 1 + half]
            if j - half >= 0:
                s -= cols[j - half]
            v = src[i, j]
            if v >= 1.0:
                continue  # saturated stays saturated (dst holds the copy)
            above = level - black
            ratio = (math.sqrt(read2 + k * max(above / g, 0.0))
                     / math.sqrt(read2 + k * max(above, 0.0)))
            dst[i, j] = black + above / g + (v - level) * ratio * extra
        if i + 1 + half < h:
            for j in range(w):
                cols[j] += src[i + 1 + half, j]
        if i - half >= 0:
            for j in range(w):
                cols[j] -= src[i - half, j]
