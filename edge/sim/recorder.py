"""Simulated acquisition of whole samples into recorded-sample folders.

Timestamps follow the head's timing: the stage travels between RoIs at the configured feed (plus
a settle time), and the 6 frames of a RoI follow each other at the camera's frame time, so a
recording made here has the same rhythm as one made on a head.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

from tqdm import tqdm

from edge.config import HeadConfig
from edge.recording import SampleWriter
from edge.sim.optics import SimHead
from edge.sim.sample import Sample


def record_sample(cfg: HeadConfig, head: SimHead, sample: Sample, root: str | Path,
                  progress: bool = True, start_s: float | None = None) -> Path:
    """Render every RoI of ``sample`` through ``head`` and write it under ``root``."""
    grid = cfg.stage.roi_grid
    writer = SampleWriter(root, sample.sample_id, cfg, shape=head.shape)
    writer.set_truth(sample)
    t = time.time() if start_s is None else start_s
    pos = (0.0, 0.0)
    bar = tqdm(range(grid.count), desc=f"simulating {sample.sample_id}", unit="RoI",
               disable=not progress, leave=False)
    for index in bar:
        origin = grid.roi_origin_mm(index)
        t += math.dist(pos, origin) / cfg.stage.feed_mm_min * 60.0 + cfg.stage.settle_ms / 1000.0
        pos = origin
        frame_s = cfg.camera.frame_time_ms / 1000.0
        stamps = [t + k * frame_s for k in range(6)]
        t = stamps[-1] + frame_s
        # noise differs per sample and per RoI; the defects do not (they belong to the sample)
        r = head.render(sample, origin, noise_seed=(sample.seed << 8) + index)
        writer.add_roi(index, origin, r.frames, stamps, mask=r.mask)
    return writer.close()
