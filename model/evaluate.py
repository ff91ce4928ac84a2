"""Quality of exported networks on held-out simulated samples, as the glass paper's Table 1 counts.

Each sample is rendered RoI by RoI on the full-size simulated head; every network sees the same
frames and is scored exactly as the device runs it: the runtime's pipeline without a calibration
file (space-to-depth, tiles of the head's size on ONNX Runtime, stitching; see
:class:`EngineScorer`), then the runtime's post-processing
(:func:`edge.postprocess.find_scratches`).

Counts (ground truth from the simulator):

* **image level** (one RoI): positive when its scratch mask is not empty; predicted positive
  when at least one scratch is kept. FN rate = missed positives / positives, FP rate = flagged
  negatives / negatives.
* **sample level**: the same over whole samples (positive when any RoI is).
* **scratch level**: a scratch of the sample is *labelled* when a point of its centre line lies
  within 2 px of its RoI's mask; it is *found* when a kept box (grown by ``MARGIN_MM``) holds a
  point of it. Recall = found / labelled. A kept box is *correct* when it holds a point of any
  scratch; precision = correct / kept. Boxes are counted per RoI (a scratch in the overlap of
  two RoIs counts in both; merging across RoIs belongs to the pipeline).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from edge.config import HeadConfig
from edge.sim import OpticsRenderer, generate_sample
from model.metrics import covered

MARGIN_MM = 0.15
HELD_OUT_SEED = 900_000  # far from the seeds training draws samples from


@dataclass
class Counts:
    images: int = 0
    image_pos: int = 0
    image_fn: int = 0
    image_fp: int = 0
    samples: int = 0
    sample_pos: int = 0
    sample_fn: int = 0
    sample_fp: int = 0
    labelled: int = 0
    found: int = 0
    kept: int = 0
    correct: int = 0
    infer_s: float = 0.0
    by_length: dict = field(default_factory=dict)

    def summary(self) -> dict:
        def r(a, b):
            return round(a / b, 4) if b else None

        return {
            "samples": self.samples, "samples_with_scratch": self.sample_pos,
            "sample_fn_rate": r(self.sample_fn, self.sample_pos),
            "sample_fp_rate": r(self.sample_fp, self.samples - self.sample_pos),
            "images": self.images, "images_with_scratch": self.image_pos,
            "image_fn_rate": r(self.image_fn, self.image_pos),
            "image_fp_rate": r(self.image_fp, self.images - self.image_pos),
            "scratches_labelled": self.labelled, "scratch_recall": r(self.found, self.labelled),
            "kept": self.kept, "scratch_precision": r(self.correct, self.kept),
            "recall_by_length_mm": {k: r(f, n) for k, (f, n) in sorted(self.by_length.items())},
            "infer_s": round(self.infer_s, 1),
        }


LENGTH_BINS = ((0.0, 1.0), (1.0, 5.0), (5.0, 1e9))


def _length_bin(length: float) -> str:
    for lo, hi in LENGTH_BINS:
        if lo <= length < hi:
            return f"{lo:g}-{hi:g}" if hi < 1e9 else f">={lo:g}"
    return "?"


class EngineScorer:
    """The runtime's own inference: tiles of the head's size, its engine, stitched back.

    Why not the whole map at once: a map padded to the network's divisor has an edge of zeros
    that a network trained on glass (never on zeros) may score as a line, which would count as a
    false positive the runtime never makes. Scoring through :func:`edge.pipeline.process_roi`
    judges the model exactly as the device runs it.
    """

    def __init__(self, path: str | Path, cfg: HeadConfig, threads: int = 0, calibration=None):
        from edge.engine import open_engine

        self.cfg, self.calibration = cfg, calibration
        self.engine = open_engine(path, "onnxruntime", threads, max(cfg.engine.batch_sizes))

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        """Kept scratch boxes ``(K, 4)`` row0, col0, row1, col1 in half-resolution pixels."""
        from edge.pipeline import process_roi

        result = process_roi(frames, self.calibration, self.engine, self.cfg)
        # RAW pixel boxes (x0, y0, x1, y1) back to the score map's (row, col), 2 x 2 per pixel
        return np.array([[d.box_px[1] // 2, d.box_px[0] // 2, d.box_px[3] // 2,
                          d.box_px[2] // 2] for d in result.defects], np.int64).reshape(-1, 4)


def _points_in_roi(points_mm: np.ndarray, origin, mm_per_px, shape) -> np.ndarray:
    """Centre-line points -> (row, col) at half resolution, those inside the map."""
    col = (points_mm[:, 0] - origin[0]) / mm_per_px[0] / 2.0
    row = (points_mm[:, 1] - origin[1]) / mm_per_px[1] / 2.0
    rc = np.stack([row, col], axis=1)
    inside = (rc[:, 0] >= 0) & (rc[:, 0] < shape[0]) & (rc[:, 1] >= 0) & (rc[:, 1] < shape[1])
    return rc[inside]


def evaluate(models: dict[str, str | Path], cfg: HeadConfig, n_samples: int = 50,
             seed: int = HELD_OUT_SEED, scratch_share: float = 0.3, threads: int = 0,
             progress: bool = True, calibration=None) -> dict[str, dict]:
    """Run every model on the same ``n_samples`` simulated samples -> summary per model; with
    ``calibration`` (an :class:`edge.calibration.Calibration` of this head) the frames are
    corrected as the runtime corrects them."""
    head = OpticsRenderer(cfg)
    scorers = {name: EngineScorer(path, cfg, threads, calibration)
               for name, path in models.items()}
    counts = {name: Counts() for name in models}
    grid = cfg.stage.roi_grid
    mmpp = cfg.mm_per_px
    margin_px = MARGIN_MM / (2.0 * float(np.mean(mmpp)))
    t0 = time.perf_counter()
    bar = tqdm(total=n_samples * grid.count, desc="evaluating", unit="RoI", disable=not progress)
    for k in range(n_samples):
        sample = generate_sample(seed + k, grid.extent_mm, scratch_share)
        flagged = dict.fromkeys(models, False)
        labelled_ids: set[int] = set()
        found_ids = {name: set() for name in models}
        sample_pos = False
        for roi in range(grid.count):
            origin = grid.roi_origin_mm(roi)
            r = head.render(sample, origin, noise_seed=(sample.seed << 8) + roi)
            h2, w2 = r.frames.shape[1] // 2, r.frames.shape[2] // 2
            mask = r.mask.reshape(h2, 2, w2, 2).any(axis=(1, 3))
            positive = bool(mask.any())
            sample_pos |= positive
            lines = {}
            for i, d in enumerate(sample.objects):
                if d.kind != "scratch":
                    continue
                pts = _points_in_roi(d.points, origin, mmpp, (h2, w2))
                if not len(pts):
                    continue
                lines[i] = pts
                ij = np.clip(np.round(pts).astype(int), 0, [h2 - 1, w2 - 1])
                near = np.zeros_like(mask)
                for dy in (-1, 0, 1):
                    for dx in (-1, 0, 1):
                        near[np.clip(ij[:, 0] + dy, 0, h2 - 1),
                             np.clip(ij[:, 1] + dx, 0, w2 - 1)] = True
                if (near & mask).any():
                    labelled_ids.add(i)
            for name, scorer in scorers.items():
                ts = time.perf_counter()
                boxes = scorer(r.frames)
                counts[name].infer_s += time.perf_counter() - ts
                c = counts[name]
                c.images += 1
                c.image_pos += positive
                c.image_fn += positive and len(boxes) == 0
                c.image_fp += (not positive) and len(boxes) > 0
                flagged[name] |= len(boxes) > 0
                c.kept += len(boxes)
                correct = np.zeros(len(boxes), bool)
                for i, pts in lines.items():
                    hits = covered(pts, boxes, margin_px)
                    correct |= hits
                    if hits.any():
                        found_ids[name].add(i)
                c.correct += int(correct.sum())
            bar.update()
        for name in models:
            c = counts[name]
            c.samples += 1
            c.sample_pos += sample_pos
            c.sample_fn += sample_pos and not flagged[name]
            c.sample_fp += (not sample_pos) and flagged[name]
            c.labelled += len(labelled_ids)
            c.found += len(labelled_ids & found_ids[name])
            for i in labelled_ids:
                b = _length_bin(sample.objects[i].length_mm)
                f, n = c.by_length.get(b, (0, 0))
                c.by_length[b] = (f + (i in found_ids[name]), n + 1)
    bar.close()
    out = {name: c.summary() for name, c in counts.items()}
    for v in out.values():
        v["wall_s"] = round(time.perf_counter() - t0, 1)
    return out


def describe(results: dict[str, dict], names: Sequence[str] | None = None) -> str:
    rows = ["model | sample FN | sample FP | image FN | image FP | scratch recall | precision",
            "--- | --- | --- | --- | --- | --- | ---"]
    for name in names or results:
        s = results[name]

        def pct(v):
            return "-" if v is None else f"{100 * v:.1f} %"

        rows.append(f"{name} | {pct(s['sample_fn_rate'])} | {pct(s['sample_fp_rate'])} | "
                    f"{pct(s['image_fn_rate'])} | {pct(s['image_fp_rate'])} | "
                    f"{pct(s['scratch_recall'])} | {pct(s['scratch_precision'])}")
    return "\n".join(rows)
