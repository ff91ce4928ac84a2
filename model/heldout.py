"""The held-out set: simulated samples rendered once, their truth and every detector's score maps
cached on disk, so comparing post-processing settings re-renders and re-infers nothing.

A set is fixed by the head (:func:`render_identity`: camera, optics, RoI grid, tiling), the first
seed, the number of samples and the share of scratched ones. Per sample it keeps:

* ``truth/NNNN.npz``: per RoI the labelled scratches (visible in that RoI's mask) as centre-line
  points on the score-map grid, their ids and lengths (mm), and whether the RoI's mask is empty;
* ``scores/KEY/NNNN.npz``: per RoI the detector's score map, quantised to 8 bits over its own
  range (the thresholds are swept in steps of 0.05: 1/255 of the range is far below that),
  compressed. ``KEY`` names the detector and what it was computed with: a network by its file's
  SHA-256 and the calibration's, a baseline by its name and :data:`BASELINE_VERSION`.

A detector missing for a sample is computed when the set is scored, which renders that sample
once for all missing detectors. Choice: the frames themselves are not cached. A full-size RoI is
131 MB (about 40 MB compressed), so 150 samples of 10 RoIs would be 60 GB; rendering is about a
third of the time a network takes on the same RoI, so caching the maps saves most of the time
at 1 % of the space.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from edge.config import HeadConfig
from edge.hashing import sha256_file
from edge.sim import OpticsRenderer, generate_sample

BASELINE_VERSION = 1  # bump when a baseline's maths changes: its cached maps are stale
DEFAULT_CACHE = Path(os.environ.get("GLASS_INSPECT_CACHE",
                                    Path.home() / ".cache" / "glass-inspect")) / "heldout"


@dataclass
class RoiTruth:
    lines: dict[int, np.ndarray]  # scratch id -> (n, 2) centre-line points (row, col), map grid
    lengths: dict[int, float]  # scratch id -> its whole length, mm


@dataclass
class SampleTruth:
    seed: int
    rois: list[RoiTruth]

    @property
    def labelled(self) -> dict[int, float]:
        return {i: r.lengths[i] for r in self.rois for i in r.lines}


def _points_in_roi(points_mm: np.ndarray, origin, mm_per_px, shape) -> np.ndarray:
    """Centre-line points -> (row, col) at half resolution, those inside the map."""
    col = (points_mm[:, 0] - origin[0]) / mm_per_px[0] / 2.0
    row = (points_mm[:, 1] - origin[1]) / mm_per_px[1] / 2.0
    rc = np.stack([row, col], axis=1)
    inside = (rc[:, 0] >= 0) & (rc[:, 0] < shape[0]) & (rc[:, 1] >= 0) & (rc[:, 1] < shape[1])
    return rc[inside]


def roi_truth(sample, origin, mmpp, mask: np.ndarray) -> RoiTruth:
    """The sample's scratches visible in this RoI (a centre-line point within 1 map pixel of its
    mask, at half resolution)."""
    h2, w2 = mask.shape
    lines, lengths = {}, {}
    for i, d in enumerate(sample.objects):
        if d.kind != "scratch":
            continue
        pts = _points_in_roi(d.points, origin, mmpp, (h2, w2))
        if not len(pts):
            continue
        ij = np.clip(np.round(pts).astype(int), 0, [h2 - 1, w2 - 1])
        near = np.zeros_like(mask)
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                near[np.clip(ij[:, 0] + dy, 0, h2 - 1), np.clip(ij[:, 1] + dx, 0, w2 - 1)] = True
        if (near & mask).any():
            lines[i], lengths[i] = pts, float(d.length_mm)
    return RoiTruth(lines, lengths)


def _save_truth(path: Path, t: SampleTruth) -> None:
    arrays, meta = {}, {"seed": t.seed, "rois": []}
    for k, r in enumerate(t.rois):
        meta["rois"].append({str(i): r.lengths[i] for i in r.lines})
        for i, pts in r.lines.items():
            arrays[f"r{k}_{i}"] = pts.astype(np.float32)
    arrays["meta"] = np.array(json.dumps(meta))
    _atomic_savez(path, arrays)


def _load_truth(path: Path) -> SampleTruth:
    with np.load(path) as z:
        meta = json.loads(str(z["meta"]))
        rois = []
        for k, lens in enumerate(meta["rois"]):
            ids = {int(i): float(v) for i, v in lens.items()}
            rois.append(RoiTruth({i: z[f"r{k}_{i}"].astype(np.float64) for i in ids}, ids))
    return SampleTruth(int(meta["seed"]), rois)


def _atomic_savez(path: Path, arrays: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part.npz")
    np.savez_compressed(tmp, **arrays)
    tmp.replace(path)


def quantise(score: np.ndarray) -> tuple[np.ndarray, float, float]:
    lo, hi = float(score.min()), float(score.max())
    if hi <= lo:
        return np.zeros(score.shape, np.uint8), lo, lo
    q = np.round((score - lo) * (255.0 / (hi - lo)))
    return q.astype(np.uint8), lo, hi


def dequantise(q: np.ndarray, lo: float, hi: float) -> np.ndarray:
    if hi <= lo:
        return np.full(q.shape, lo, np.float32)
    return (lo + q.astype(np.float32) * ((hi - lo) / 255.0)).astype(np.float32)


@dataclass
class Detector:
    """One thing that scores RoIs: its cache key and ``score(frames, roi_index, origin_mm)``."""

    name: str
    key: str
    score: Callable[[np.ndarray, int, tuple[float, float]], np.ndarray]


def network_detector(name: str, path: str | Path, cfg: HeadConfig, threads: int = 0,
                     calibration=None) -> Detector:
    """An ONNX network through the runtime's own tiling, engine and stitching."""
    from edge.engine import open_engine
    from edge.pipeline import process_roi

    engine = open_engine(path, "onnxruntime", threads, max(cfg.engine.batch_sizes))
    cal = calibration.sha256[:12] if calibration is not None else "raw"
    key = f"net-{sha256_file(Path(path))[:16]}-{cal}"

    def score(frames, index, origin):
        return process_roi(frames, calibration, engine, cfg, index, origin, keep_score=True).score

    return Detector(name, key, score)


def baseline_detector(name: str) -> Detector:
    from model.baselines import BASELINES

    if name not in BASELINES:
        raise ValueError(f"unknown baseline {name!r}; the baselines are {sorted(BASELINES)}")
    scorer = BASELINES[name]()
    return Detector(name, f"base-{name}-v{BASELINE_VERSION}",
                    lambda frames, index, origin: scorer(frames))


def render_identity(cfg: HeadConfig) -> str:
    """SHA-256 of what the frames, the truth and a network's maps depend on: the camera, the
    LED groups' angles, the RoI grid, the simulated sensor and optics, and the tiling. Not the
    whole head file: its stage port, limits, post-processing or reject rule change no map."""
    d = cfg.model_dump(mode="json")
    keep = {"camera": d["camera"], "angles": [s["angle_deg"] for s in d["illumination"]["states"]],
            "roi_grid": d["stage"]["roi_grid"], "simulation": d["simulation"],
            "tiles": [d["pipeline"]["tile_size"], d["pipeline"]["tile_overlap"]]}
    return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()


class HeldOutSet:
    """``n`` simulated samples from ``seed`` on head ``cfg``, cached under ``root``."""

    def __init__(self, cfg: HeadConfig, n: int, seed: int, scratch_share: float,
                 root: str | Path | None = None, calibration=None):
        self.cfg, self.n, self.seed, self.share = cfg, n, seed, scratch_share
        self.calibration = calibration
        ident = json.dumps({"head": render_identity(cfg), "seed": seed, "share": scratch_share})
        self.dir = Path(root or DEFAULT_CACHE) / hashlib.sha256(ident.encode()).hexdigest()[:16]

    def _truth_path(self, k: int) -> Path:
        return self.dir / "truth" / f"{self.seed + k}.npz"

    def _score_path(self, key: str, k: int) -> Path:
        return self.dir / "scores" / key / f"{self.seed + k}.npz"

    def missing(self, detectors: list[Detector]) -> int:
        """How many samples still need rendering for these detectors."""
        return sum(not self._truth_path(k).exists()
                   or any(not self._score_path(d.key, k).exists() for d in detectors)
                   for k in range(self.n))

    def fill(self, detectors: list[Detector], progress: bool = True) -> None:
        """Render each sample that lacks a detector's maps (or its truth) once, and cache."""
        cfg = self.cfg
        grid = cfg.stage.roi_grid
        todo = [k for k in range(self.n) if not self._truth_path(k).exists()
                or any(not self._score_path(d.key, k).exists() for d in detectors)]
        if not todo:
            return
        optics = OpticsRenderer(cfg)
        exposures = (self.calibration.led_exposure_scale
                     if self.calibration is not None else None)
        bar = tqdm(total=len(todo) * grid.count, desc="rendering and scoring held-out RoIs",
                   unit="RoI", disable=not progress)
        for k in todo:
            sample = generate_sample(self.seed + k, grid.extent_mm, self.share)
            need = [d for d in detectors if not self._score_path(d.key, k).exists()]
            maps: dict[str, list] = {d.key: [] for d in need}
            rois = []
            for roi in range(grid.count):
                origin = grid.roi_origin_mm(roi)
                r = optics.render(sample, origin, noise_seed=(sample.seed << 8) + roi,
                                  exposure_factors=exposures)
                h2, w2 = r.frames.shape[1] // 2, r.frames.shape[2] // 2
                mask = r.mask.reshape(h2, 2, w2, 2).any(axis=(1, 3))
                rois.append(roi_truth(sample, origin, cfg.mm_per_px, mask))
                for d in need:
                    maps[d.key].append(quantise(d.score(r.frames, roi, origin)))
                bar.update()
            for d in need:
                q = maps[d.key]
                _atomic_savez(self._score_path(d.key, k),
                              {"q": np.stack([m for m, _, _ in q]),
                               "range": np.array([[lo, hi] for _, lo, hi in q], np.float64)})
            if not self._truth_path(k).exists():
                _save_truth(self._truth_path(k), SampleTruth(sample.seed, rois))
        bar.close()

    def samples(self, key: str) -> Iterator[tuple[SampleTruth, list[np.ndarray]]]:
        """Per sample its truth and the detector's score maps, one per RoI."""
        for k in range(self.n):
            truth = _load_truth(self._truth_path(k))
            with np.load(self._score_path(key, k)) as z:
                q, rng = z["q"], z["range"]
            yield truth, [dequantise(q[i], *rng[i]) for i in range(len(q))]
