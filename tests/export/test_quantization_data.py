"""Which tiles INT8 quantization calibrates on: spread over samples, RoIs and tile positions.

The recorded samples are fakes (a manifest's RoIs and the frame shape), and the runtime's tiling
is replaced by one that labels each tile with (sample, RoI, tile); the real tiling is checked in
test_quantize_parity.py.
"""

from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import export.quantization_data as qd
from edge.kernels.space_to_depth import plan_tiles


class FakeSample:
    """A recorded sample of ``rois`` RoIs of (6, H, W) frames; remembers which RoIs were read."""

    def __init__(self, number: int, rois: int, height: int, width: int, reads: list):
        self.number = number
        self.shape = (6, height, width)
        self.manifest = SimpleNamespace(rois=[SimpleNamespace(index=10 + i) for i in range(rois)])
        self._reads = reads

    def frames(self, index: int, verify: bool = True):
        self._reads.append((self.number, index))
        return np.broadcast_to(np.uint16(100 * self.number + index), self.shape)  # no memory


@pytest.fixture
def samples(monkeypatch, cfg):
    """Three samples (4, 4 and 2 RoIs; 4 tiles a RoI at the default 512-pixel tile)."""
    reads: list = []
    side = 2 * (cfg.pipeline.tile_size + 300)
    specs = {"s0": (0, 4), "s1": (1, 4), "s2": (2, 2)}
    made = {name: FakeSample(n, r, side, side, reads) for name, (n, r) in specs.items()}

    def find_samples(root):
        return [Path(root) / name for name in sorted(made)]

    def open_sample(d):
        return made[Path(d).name]

    def prepare_tiles(frames, calibration, cfg_, dtype=np.float32):
        p = cfg_.pipeline
        grid = plan_tiles(frames.shape[1] // 2, frames.shape[2] // 2, p.tile_size, p.tile_overlap)
        tiles = np.zeros((grid.count, 24, 2, 2), dtype)
        sample, roi = divmod(int(frames[0, 0, 0]), 100)
        for t in range(grid.count):
            tiles[t, 0], tiles[t, 1], tiles[t, 2] = sample, roi, t
        return grid, tiles

    monkeypatch.setattr(qd, "find_samples", find_samples)
    monkeypatch.setattr(qd, "open_sample", open_sample)
    monkeypatch.setattr(qd, "prepare_tiles", prepare_tiles)
    return SimpleNamespace(reads=reads, roots=["recorded"], tiles_per_roi=4, total=40)


def _labels(tiles) -> list[tuple[int, int, int]]:
    return [(int(t[0, 0, 0]), int(t[1, 0, 0]), int(t[2, 0, 0])) for t in tiles]


def test_the_fake_samples_have_four_tiles_a_roi(samples, cfg):
    tiles = list(qd.calibration_tiles(samples.roots, cfg, limit=1000))
    assert len(tiles) == samples.total and len(set(_labels(tiles))) == samples.total


def test_tiles_are_drawn_round_robin_over_the_samples(samples, cfg):
    labels = _labels(qd.calibration_tiles(samples.roots, cfg, limit=6))
    assert Counter(s for s, _, _ in labels) == {0: 2, 1: 2, 2: 2}


def test_tiles_are_spread_over_the_rois_of_a_sample_and_over_positions_in_a_roi(samples, cfg):
    labels = _labels(qd.calibration_tiles(samples.roots, cfg, limit=12))
    assert Counter(s for s, _, _ in labels) == {0: 4, 1: 4, 2: 4}
    # one tile from each RoI of the 4-RoI samples, two from each RoI of the 2-RoI sample
    assert Counter((s, r) for s, r, _ in labels) == {
        (0, 10): 1, (0, 11): 1, (0, 12): 1, (0, 13): 1,
        (1, 10): 1, (1, 11): 1, (1, 12): 1, (1, 13): 1, (2, 10): 2, (2, 11): 2}
    # two tiles of one RoI are not neighbours in the cutting order, nor the same position
    s2 = sorted(t for s, r, t in labels if (s, r) == (2, 10))
    assert s2[1] - s2[0] >= 2
    assert len({t for _, _, t in labels}) > 1


def test_only_the_rois_it_takes_tiles_from_are_read(samples, cfg):
    list(qd.calibration_tiles(samples.roots, cfg, limit=6))
    assert len(samples.reads) == len(set(samples.reads)) == 6  # each read once
    assert Counter(s for s, _ in samples.reads) == {0: 2, 1: 2, 2: 2}


def test_a_sample_with_fewer_tiles_leaves_its_share_to_the_others(samples, cfg):
    labels = _labels(qd.calibration_tiles(samples.roots, cfg, limit=36))
    assert Counter(s for s, _, _ in labels) == {0: 14, 1: 14, 2: 8}
    assert len(set(labels)) == 36


def test_the_choice_is_deterministic(samples, cfg):
    a = _labels(qd.calibration_tiles(samples.roots, cfg, limit=10))
    b = _labels(qd.calibration_tiles(samples.roots, cfg, limit=10))
    assert a == b and len(set(a)) == 10


def test_batches_are_full_and_spread(samples, cfg):
    batches = qd.quantization_batches(samples.roots, cfg, batch=4, limit=10)
    assert [b.shape[0] for b in batches] == [4, 4]  # 10 asked, 8 make full batches
    labels = _labels(np.concatenate(batches))
    assert {s for s, _, _ in labels} == {0, 1, 2} and len(set(labels)) == 8
    with pytest.raises(ValueError, match="at least one batch of 64"):
        qd.quantization_batches(samples.roots, cfg, batch=64, limit=1000)
