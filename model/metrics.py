"""Pixel- and object-level quality of score maps against scratch masks (numpy only).

Object level: the ground-truth scratches of a map are the 8-connected components of its mask;
a component is found when a kept cluster's box, grown by ``margin`` pixels, covers one of its
pixels; a kept cluster is correct when its grown box covers any scratch pixel.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from edge.config import Pipeline
from edge.postprocess import Scratches, find_scratches


def components(mask: np.ndarray) -> list[np.ndarray]:
    """8-connected components of a boolean map, each as an ``(n, 2)`` array of (row, col), in
    raster order of their first pixel."""
    labels, count = ndimage.label(mask, structure=np.ones((3, 3), bool))
    if not count:
        return []
    pts = np.argwhere(labels)
    order = np.argsort(labels[labels > 0], kind="stable")
    splits = np.flatnonzero(np.diff(labels[labels > 0][order])) + 1
    return np.split(pts[order], splits)


def covered(points: np.ndarray, boxes: np.ndarray, margin: float) -> np.ndarray:
    """(n_boxes,) whether each grown box covers any of ``points``."""
    if not len(points) or not len(boxes):
        return np.zeros(len(boxes), bool)
    r, c = points[:, 0][None, :], points[:, 1][None, :]
    b = boxes[:, :, None]
    inside = ((r >= b[:, 0] - margin) & (r < b[:, 2] + margin)
              & (c >= b[:, 1] - margin) & (c < b[:, 3] + margin))
    return inside.any(axis=1)


@dataclass
class Tally:
    """Counts that add up over maps; the rates are derived."""

    pixel_tp: int = 0
    pixel_fp: int = 0
    pixel_fn: int = 0
    scratches: int = 0
    found: int = 0
    clusters: int = 0
    correct_clusters: int = 0
    maps: int = 0
    maps_with_scratch: int = 0
    map_fn: int = 0  # maps with a scratch where nothing was kept
    map_fp: int = 0  # maps without a scratch where something was kept

    def add(self, score: np.ndarray, mask: np.ndarray, p: Pipeline, margin: int = 4) -> Scratches:
        hit = score >= p.t_low
        self.pixel_tp += int(np.count_nonzero(hit & mask))
        self.pixel_fp += int(np.count_nonzero(hit & ~mask))
        self.pixel_fn += int(np.count_nonzero(~hit & mask))
        kept = find_scratches(score, p)
        comps = components(mask)
        self.scratches += len(comps)
        self.found += sum(bool(covered(c, kept.boxes, margin).any()) for c in comps)
        self.clusters += kept.count
        self.correct_clusters += int(covered(np.argwhere(mask), kept.boxes, margin).sum())
        self.maps += 1
        if comps:
            self.maps_with_scratch += 1
            self.map_fn += kept.count == 0
        else:
            self.map_fp += kept.count > 0
        return kept

    def summary(self) -> dict:
        def ratio(a: int, b: int) -> float | None:
            return round(a / b, 4) if b else None

        clean = self.maps - self.maps_with_scratch
        return {
            "pixel_precision": ratio(self.pixel_tp, self.pixel_tp + self.pixel_fp),
            "pixel_recall": ratio(self.pixel_tp, self.pixel_tp + self.pixel_fn),
            "pixel_iou": ratio(self.pixel_tp, self.pixel_tp + self.pixel_fp + self.pixel_fn),
            "scratch_recall": ratio(self.found, self.scratches),
            "scratch_precision": ratio(self.correct_clusters, self.clusters),
            "map_fn_rate": ratio(self.map_fn, self.maps_with_scratch),
            "map_fp_rate": ratio(self.map_fp, clean),
            "maps": self.maps,
            "scratches": self.scratches,
        }


def tally(scores: Iterable[np.ndarray], masks: Iterable[np.ndarray], p: Pipeline) -> Tally:
    t = Tally()
    for s, m in zip(scores, masks, strict=True):
        t.add(s, m, p)
    return t


def rate_line(what: str, k: int, n: int, rate: float | None, ci, none: str) -> str:
    """``  what: k/n = r % (95 % interval lo-hi %)``, or ``  what: none`` when ``n`` is 0: one
    cross-validated rate as the fold drivers print it (:mod:`model.folds`,
    :mod:`model.label_folds`)."""
    if not n:
        return f"  {what}: {none}"
    lo, hi = ci
    return f"  {what}: {k}/{n} = {100 * rate:.1f} % (95 % interval {100 * lo:.1f}-{100 * hi:.1f} %)"
