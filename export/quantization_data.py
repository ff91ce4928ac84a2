"""Tiles for INT8 quantization (TensorRT calls it calibration), cut from recorded samples exactly
as the runtime cuts them. Not to be confused with the head's calibration file (dark and flat
fields), which these tiles are corrected with, as on the head.

The same tiling (``pipeline.tile_size`` / ``tile_overlap``), the same fused correction and
space-to-depth (with the head's calibration file when there is one), in the same dtype: the
ranges TensorRT or the Q/DQ quantizer measure are the ranges the engine will see.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from edge.calibration import Calibration
from edge.config import HeadConfig
from edge.pipeline import prepare_tiles
from edge.recording import find_samples, open_sample


def calibration_tiles(samples: Sequence[str | Path], cfg: HeadConfig,
                      calibration: Calibration | None = None,
                      limit: int = 64) -> Iterator[np.ndarray]:
    """Up to ``limit`` tiles ``(24, t, t)`` float32, RoI by RoI over the recorded samples."""
    n = 0
    for root in samples:
        for d in find_samples(root):
            rec = open_sample(d)
            for entry in rec.manifest.rois:
                _, tiles = prepare_tiles(np.asarray(rec.frames(entry.index)), calibration, cfg)
                for t in tiles:
                    yield t
                    n += 1
                    if n >= limit:
                        return


def quantization_batches(samples: Sequence[str | Path], cfg: HeadConfig, batch: int,
                        calibration: Calibration | None = None,
                        limit: int = 64) -> list[np.ndarray]:
    """The calibration tiles grouped into full batches ``(batch, 24, t, t)``."""
    tiles = list(calibration_tiles(samples, cfg, calibration, limit))
    if len(tiles) < batch:
        raise ValueError(f"the calibration samples gave {len(tiles)} tiles; at least one batch "
                         f"of {batch} is needed")
    usable = len(tiles) - len(tiles) % batch
    return [np.stack(tiles[i:i + batch]) for i in range(0, usable, batch)]
