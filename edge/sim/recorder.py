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

from edge.config import N_STATES, HeadConfig
from edge.recording import MANIFEST, SampleWriter, open_sample
from edge.sim.optics import OpticsRenderer
from edge.sim.sample import generate_sample, head_glass
from edge.truth import Sample


def record_sample(cfg: HeadConfig, optics: OpticsRenderer, sample: Sample, root: str | Path,
                  progress: bool = True, start_s: float | None = None) -> Path:
    """Render every RoI of ``sample`` through ``optics`` and write it under ``root``."""
    grid = cfg.stage.roi_grid
    writer = SampleWriter(root, sample.sample_id, cfg, shape=optics.shape)
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
        stamps = [t + k * frame_s for k in range(N_STATES)]
        t = stamps[-1] + frame_s
        # noise differs per sample and per RoI; the defects do not (they belong to the sample)
        r = optics.render(sample, origin, noise_seed=(sample.seed << 8) + index)
        writer.add_roi(index, origin, r.frames, stamps, mask=r.mask)
    return writer.close()


def simulate_samples(cfg: HeadConfig, count: int, out: str | Path, seed: int = 0,
                     scratch_share: float = 0.3, shape: tuple[int, int] | None = None,
                     progress: bool = True) -> list[tuple[Sample, Path]]:
    """Render ``count`` random samples (seeds ``seed``, ``seed + 1``, ...) of the head's glass
    population (``[simulation] glass``) into ``out``."""
    optics = OpticsRenderer(cfg, shape=shape)
    extent = cfg.stage.roi_grid.extent_mm
    done = []
    for k in range(count):
        sample = generate_sample(seed + k, extent, scratch_share, glass=head_glass(cfg))
        done.append((sample, record_sample(cfg, optics, sample, out, progress=progress)))
    return done


def record_demo(cfg: HeadConfig, out: str | Path, seed: int = 1,
                shape: tuple[int, int] | None = None) -> tuple[Sample, Path, bool]:
    """The demo's scratched sample recorded under ``out``: (sample, folder, newly recorded).
    A recording this head made already is kept; one made by another head is made again."""
    optics = OpticsRenderer(cfg, shape=shape)
    sample = generate_sample(seed, cfg.stage.roi_grid.extent_mm, scratch_share=1.0,
                             glass=head_glass(cfg))
    sample_dir = Path(out) / sample.sample_id
    manifest = sample_dir / MANIFEST
    if manifest.exists():
        old = open_sample(sample_dir).manifest
        if (old.head_config_sha256, old.camera.height, old.camera.width) == (
                cfg.digest(), *optics.shape):
            return sample, sample_dir, False
        manifest.unlink()
    return sample, record_sample(cfg, optics, sample, out), True
