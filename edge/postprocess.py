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
from edge.kernels.dbscan import dbscan_map


@dataclass(frozen=True)
class Scratches:
    """Kept clusters of one score map."""

    boxes: np.ndarray  # (K, 4) int64 row0, col0, row1, col1 (exclusive) in score-map pixels
    max_score: np.ndarray  # (K,) float32
    cells: np.ndarray  # (K,) int64 grid cells (downscaled pixels) in each cluster

    @property
    def count(self) -> int:
        return int(self.max_score.size)


def find_scratches(score: np.ndarray, p: Pipeline) -> Scratches:
    clusters = dbscan_map(score, p.t_low, p.dbscan_eps, p.dbscan_min_samples, p.downscale)
    keep = clusters.max_score >= p.t_high
    boxes = clusters.bbox_full()[keep].astype(np.int64)
    h, w = np.shape(score)
    boxes[:, 2] = np.minimum(boxes[:, 2], h)
    boxes[:, 3] = np.minimum(boxes[:, 3], w)
    return Scratches(boxes, clusters.max_score[keep].astype(np.float32),
                     clusters.pixels[keep].astype(np.int64))
