"""Geometry: where the camera really looks, from a frame of a dot-grid target.

The target carries dots on a known pitch, at known sample coordinates. The dots are found in the
frame (bright blobs: local maxima of a 4x reduced frame, then an intensity centroid in the full
frame), each is paired with the grid dot it must be, and an affine map from sample mm to pixels
is fitted by least squares: ``[u, v] = A [x, y] + b``. From it:

* **mm per pixel**, x and y: the lengths of A's columns, inverted;
* **rotation** of the camera against the stage axes, in degrees, positive when the camera's
  pixel rows are turned from the stage's +x toward its +y (the simulator's convention): the
  stage's x axis then runs at minus that angle in the image;
* **origin offset**: where the frame's centre really lies on the sample minus where the head
  file puts it, in mm. Rotation is about the frame centre, so centre and rotation do not trade
  off against each other in the fit.

Pairing: a dot's nominal position (from the head file's geometry) can be off by the mounting
tolerances. So the fit starts from the dots nearest the centre, where the nominal guess is best,
and widens ring by ring, pairing with the last fit. A periodic grid only fixes the origin modulo
its pitch: the target's pitch must exceed twice the largest origin error expected (1 mm pitch:
up to 0.5 mm of mounting tolerance).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

REDUCE = 4  # dot search on a 4x reduced frame: a 0.2 mm dot is ~4 px there


@dataclass
class Geometry:
    mm_per_px: tuple[float, float]
    rotation_deg: float
    centre_mm: tuple[float, float]  # the sample point under the frame's centre
    origin_offset_mm: tuple[float, float]  # centre_mm minus where the head file puts it
    dots: int  # dots fitted
    residual_px: float  # RMS distance of the fitted dots from the fit

    def summary(self) -> dict:
        return {"mm_per_px": [round(v, 8) for v in self.mm_per_px],
                "rotation_deg": round(self.rotation_deg, 5),
                "origin_offset_mm": [round(v, 5) for v in self.origin_offset_mm],
                "dots": self.dots, "residual_px": round(self.residual_px, 4)}


def _block_mean(img: np.ndarray, k: int) -> np.ndarray:
    h, w = (img.shape[0] // k) * k, (img.shape[1] // k) * k
    return img[:h, :w].reshape(h // k, k, w // k, k).mean(axis=(1, 3))


def _local_max(img: np.ndarray, size: int) -> np.ndarray:
    pad = size // 2
    p = np.pad(img, pad, mode="constant", constant_values=-np.inf)
    rows = sliding_window_view(p, size, axis=0).max(axis=-1)
    return sliding_window_view(rows, size, axis=1).max(axis=-1)


def find_dots(img: np.ndarray, noise_dn: float, dot_px: float) -> np.ndarray:
    """Intensity centroids (u, v) in pixels of the bright dots of a dark-subtracted frame."""
    small = _block_mean(img.astype(np.float32), REDUCE)
    size = max(3, int(round(dot_px / REDUCE)) * 2 + 1)
    level = np.median(small) + max(8.0 * noise_dn / REDUCE, 0.25 * (small.max() - np.median(small)))
    peaks = np.argwhere((small == _local_max(small, size)) & (small > level))
    r = int(math.ceil(dot_px))  # full-frame window half-size: the whole dot and a margin
    out = []
    h, w = img.shape
    for py, px in peaks:
        cy, cx = py * REDUCE + REDUCE // 2, px * REDUCE + REDUCE // 2
        y0, y1, x0, x1 = cy - r, cy + r + 1, cx - r, cx + r + 1
        if y0 < 0 or x0 < 0 or y1 > h or x1 > w:
            continue  # a dot cut by the frame's edge has a biased centroid
        win = img[y0:y1, x0:x1].astype(np.float64)
        win = np.clip(win - np.median(img[y0:y1, x0:x1]), 0.0, None)
        total = win.sum()
        if total <= 0:
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1]
        out.append(((xx * win).sum() / total, (yy * win).sum() / total))
    return np.asarray(out, dtype=np.float64).reshape(-1, 2)


def _fit(mm: np.ndarray, px: np.ndarray) -> np.ndarray:
    """M (3 x 2) with px = [x, y, 1] @ M."""
    design = np.column_stack([mm, np.ones(len(mm))])
    m, *_ = np.linalg.lstsq(design, px, rcond=None)
    return m


def fit_geometry(dots_px: np.ndarray, shape: tuple[int, int],
                 nominal_mm_per_px: tuple[float, float],
                 nominal_centre_mm: tuple[float, float], grid_origin_mm: tuple[float, float],
                 pitch_mm: float) -> Geometry:
    """The camera's geometry from dot centroids ``dots_px`` (u, v) of a frame of ``shape``."""
    if len(dots_px) < 6:
        raise ValueError(f"only {len(dots_px)} dots found; the geometry needs at least 6 "
                         "(is the dot-grid target under the camera and lit?)")
    h, w = shape
    cu, cv = (w - 1) / 2.0, (h - 1) / 2.0
    sx, sy = nominal_mm_per_px
    # nominal px -> mm, then improved by each fit
    to_mm = np.array([[sx, 0.0], [0.0, sy], [nominal_centre_mm[0] - cu * sx,
                                             nominal_centre_mm[1] - cv * sy]])
    grid0 = np.asarray(grid_origin_mm, dtype=np.float64)
    dist = np.hypot(dots_px[:, 0] - cu, dots_px[:, 1] - cv)
    order = np.argsort(dist)
    m = None
    for share in (0.15, 0.35, 0.6, 1.0):
        use = order[:max(6, int(len(order) * share))]
        guess = np.column_stack([dots_px[use], np.ones(len(use))]) @ to_mm
        paired = grid0 + np.round((guess - grid0) / pitch_mm) * pitch_mm
        m = _fit(paired, dots_px[use])
        # invert the affine map for the next round's pairing: mm = (px - b) A^-1
        a, b = m[:2], m[2]
        a_inv = np.linalg.inv(a)
        to_mm = np.vstack([a_inv, -b @ a_inv])
    resid = np.column_stack([paired, np.ones(len(paired))]) @ m - dots_px[use]
    a, b = m[:2], m[2]  # px = mm @ a + b: a's rows are d(px)/dx and d(px)/dy
    col_x, col_y = a[0], a[1]
    mm_per_px = (1.0 / float(np.hypot(*col_x)), 1.0 / float(np.hypot(*col_y)))
    rotation = -math.degrees(math.atan2(col_x[1], col_x[0]))
    centre = (np.array([cu, cv]) - b) @ np.linalg.inv(a)
    return Geometry(mm_per_px, rotation, (float(centre[0]), float(centre[1])),
                    (float(centre[0] - nominal_centre_mm[0]),
                     float(centre[1] - nominal_centre_mm[1])),
                    len(use), float(np.sqrt(np.mean(np.sum(resid * resid, axis=1)))))
