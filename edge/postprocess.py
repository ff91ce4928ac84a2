"""Scratch map -> scratches (glass paper, section 5.5): two thresholds around a grid DBSCAN.

Pixels scoring at least ``t_low`` are clustered on the ``downscale``-times smaller grid; a cluster
whose best pixel stays below ``t_high`` is dropped; each remaining cluster is one scratch. The
training validation, the evaluation and the pipeline all call this one function, so a model is
judged by the post-processing it will run under.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edge.config import Pipeline
from edge.kernels.dbscan import dbscan_map, max_downscale


@dataclass(frozen=True)
class Scratches:
    """Kept clusters of one score map."""

    boxes: np.ndarray  # (K, 4) int64 row0, col0, row1, col1 (exclusive) in score-map pixels
    max_score: np.ndarray  # (K,) float32
    cells: np.ndarray  # (K,) int64 grid cells (downscaled pixels) in each cluster
    length: np.ndarray  # (K,) float64 extent along the cluster's main axis, score-map pixels

    @property
    def count(self) -> int:
        return int(self.max_score.size)


def main_axis_length(rows: np.ndarray, cols: np.ndarray, cell: int, band: float = 3.0) -> float:
    """Extent of grid cells along their principal axis, plus one cell, in map pixels.

    Why not the box diagonal: a short scratch at 45 degrees and a blob have the same box; the
    principal axis measures the line itself. Cells farther than ``band`` cells from the axis
    are left out of the extent: DBSCAN lets isolated pixels above T_low (a hot pixel, a speck)
    join a scratch's cluster as border points, and they would stretch its length. An arc comes
    out a little short, never long.
    """
    pts = np.stack([rows, cols], axis=1).astype(np.float64) * cell
    if len(pts) < 2:
        return float(cell)
    centred = pts - pts.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    along, across = centred @ vt[0], centred @ vt[1]
    near = np.abs(across) <= band * cell
    if near.sum() >= 2:
        along = along[near]
    return float(along.max() - along.min() + cell)


class PooledScore:
    """A score map with its max-downscaled grids kept (made once per factor), for trying many
    post-processing settings on one map (the evaluation's sweep)."""

    def __init__(self, score: np.ndarray):
        self.score = np.ascontiguousarray(score, dtype=np.float32)
        self.shape = self.score.shape
        self.max = float(np.max(self.score)) if self.score.size else -np.inf
        if not np.isfinite(self.max) and self.score.size:
            raise ValueError("score map holds NaN or infinite values")
        self._grids: dict[int, np.ndarray] = {}

    def grid(self, factor: int) -> np.ndarray:
        if factor not in self._grids:
            self._grids[factor] = max_downscale(self.score, factor)
        return self._grids[factor]


_NONE = Scratches(np.zeros((0, 4), np.int64), np.zeros(0, np.float32), np.zeros(0, np.int64),
                  np.zeros(0, np.float64))


def find_scratches(score: np.ndarray | PooledScore, p: Pipeline) -> Scratches:
    if isinstance(score, PooledScore):
        if not score.max >= p.t_low:  # nothing to cluster (NaN was refused when pooled)
            return _NONE
        clusters = dbscan_map(None, p.t_low, p.dbscan_eps, p.dbscan_min_samples, p.downscale,
                              pooled=score.grid(p.downscale))
    else:
        clusters = dbscan_map(score, p.t_low, p.dbscan_eps, p.dbscan_min_samples, p.downscale)
    keep = np.flatnonzero(clusters.max_score >= p.t_high)
    boxes = clusters.bbox_full()[keep].astype(np.int64)
    h, w = np.shape(score) if not isinstance(score, PooledScore) else score.shape
    boxes[:, 2] = np.minimum(boxes[:, 2], h)
    boxes[:, 3] = np.minimum(boxes[:, 3], w)
    length = np.array([
        main_axis_length(clusters.rows[clusters.point_labels == k],
                         clusters.cols[clusters.point_labels == k], p.downscale)
        for k in keep], dtype=np.float64)
    return Scratches(boxes, clusters.max_score[keep].astype(np.float32),
                     clusters.pixels[keep].astype(np.int64), length)
