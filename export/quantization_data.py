"""Tiles for INT8 quantization (TensorRT calls it calibration), cut from recorded samples exactly
as the runtime cuts them. Not to be confused with the head's calibration file (dark and flat
fields), which these tiles are corrected with, as on the head.

The same tiling (``pipeline.tile_size`` / ``tile_overlap``), the same fused correction and
space-to-depth (with the head's calibration file when there is one), in the same dtype: the
ranges TensorRT or the Q/DQ quantizer measure are the ranges the engine will see.

Which tiles: not the first ones found (the RoIs of one sample), but a deterministic even spread:
round-robin over the samples, each sample's share over its RoIs, each RoI's share over the tile
positions. Only the RoIs that give tiles are read, one at a time, and only the chosen tiles are
kept, so memory holds the chosen tiles and one RoI's, never whole samples.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from edge.calibration import Calibration
from edge.config import HeadConfig
from edge.kernels.space_to_depth import plan_tiles
from edge.pipeline import prepare_tiles
from edge.recording import RecordedSample, find_samples, open_sample

# (sample, RoI index, tiles the runtime cuts from each of its RoIs)
_Found = tuple[RecordedSample, list[int], int]


def _inventory(samples: Sequence[str | Path], cfg: HeadConfig) -> list[_Found]:
    """The recorded samples, their RoIs and how many tiles a RoI gives, from the manifests and
    the head's tiling alone (no frames read)."""
    p = cfg.pipeline
    found = []
    for root in samples:
        for d in find_samples(root):
            rec = open_sample(d)
            _, h, w = rec.shape
            count = plan_tiles(h // 2, w // 2, p.tile_size, p.tile_overlap).count
            found.append((rec, [e.index for e in rec.manifest.rois], count))
    return found


def _share(total: int, capacities: Sequence[int]) -> list[int]:
    """``total`` dealt one at a time round the parts, none above its capacity."""
    given = [0] * len(capacities)
    left = min(total, sum(capacities))
    while left > 0:
        for i, cap in enumerate(capacities):
            if left and given[i] < cap:
                given[i] += 1
                left -= 1
    return given


def _spread(n: int, k: int, phase: int = 0) -> list[int]:
    """``k`` distinct numbers of ``range(n)``, evenly spaced (the middle of each of ``k`` equal
    parts), turned round by ``phase`` so that successive calls do not all pick the same ones."""
    return sorted(((2 * i + 1) * n // (2 * k) + phase) % n for i in range(min(k, n)))


def _plan(found: list[_Found], limit: int) -> list[tuple[RecordedSample, int, list[int]]]:
    """Which tiles of which RoIs: ``limit`` tiles dealt round-robin over the samples (a sample
    with fewer tiles leaves the rest of its share to the others), a sample's share spread evenly
    over its RoIs, and a RoI's tiles spread over the tile positions, the phase turning from RoI
    to RoI so that the positions taken vary (edges and middle of the glass). Deterministic."""
    quotas = _share(limit, [len(rois) * count for _, rois, count in found])
    plan, turn = [], 0
    for s, ((rec, rois, count), quota) in enumerate(zip(found, quotas, strict=True)):
        if quota == 0:
            continue
        base, extra = divmod(quota, len(rois))
        more = set(_spread(len(rois), extra, phase=s)) if extra else set()
        for j, index in enumerate(rois):
            k = base + (j in more)
            if k:
                plan.append((rec, index, _spread(count, k, phase=turn)))
                turn += 1
    return plan


def _cut(plan, cfg: HeadConfig, calibration: Calibration | None) -> Iterator[np.ndarray]:
    """The planned tiles, cut by the runtime's own preparation; only the planned RoIs are read,
    one at a time, and only the chosen tiles are kept (copied out of the RoI's tiles)."""
    for rec, index, picks in plan:
        _, tiles = prepare_tiles(np.asarray(rec.frames(index)), calibration, cfg)
        chosen = [np.array(tiles[i]) for i in picks if i < len(tiles)]
        del tiles
        yield from chosen


def calibration_tiles(samples: Sequence[str | Path], cfg: HeadConfig,
                      calibration: Calibration | None = None,
                      limit: int = 64) -> Iterator[np.ndarray]:
    """Up to ``limit`` tiles ``(24, t, t)`` float32, spread over the recorded samples, their
    RoIs and the tile positions (see :func:`_plan`)."""
    yield from _cut(_plan(_inventory(samples, cfg), limit), cfg, calibration)


def quantization_batches(samples: Sequence[str | Path], cfg: HeadConfig, batch: int,
                         calibration: Calibration | None = None,
                         limit: int = 64) -> list[np.ndarray]:
    """Calibration tiles in full batches ``(batch, 24, t, t)``: as many as ``limit`` and the
    samples allow, rounded down to whole batches before the tiles are chosen, so that the
    spread covers every tile used."""
    found = _inventory(samples, cfg)
    available = min(limit, sum(len(rois) * count for _, rois, count in found))
    if available < batch:
        raise ValueError(f"the calibration samples gave {available} tiles; at least one batch "
                         f"of {batch} is needed")
    batches, current = [], []
    for t in _cut(_plan(found, available - available % batch), cfg, calibration):
        current.append(t)
        if len(current) == batch:
            batches.append(np.stack(current))
            current = []
    return batches
