"""Quality of exported networks on held-out simulated samples, as the glass paper's Table 1 counts.

Each sample is rendered RoI by RoI on the full-size simulated head; every network sees the same
frames and is scored exactly as the device runs it: the runtime's pipeline without a calibration
file (space-to-depth, tiles of the head's size on ONNX Runtime, stitching; see
:class:`EngineScorer`), then the runtime's post-processing
(:func:`edge.postprocess.find_scratches`).

Counts (ground truth from the simulator), under the head's reject rule
(``[reject_rule] min_length_mm``, :class:`edge.config.RejectRule`), which the verdict applies too:

* a scratch of the sample is *labelled* when a point of its centre line lies within 2 px of its
  RoI's mask (it is visible there); it *must be caught* when it is labelled and its length is at
  least the rule's;
* **sample level**: a sample *must fail* when it holds a scratch that must be caught, is *clean*
  when it holds no labelled scratch, and otherwise (only scratches shorter than the rule) counts
  neither way. It is predicted FAIL exactly when the runtime's verdict is
  (:func:`edge.verdict.decide` over its RoIs' results: merged across RoIs, then the rule). FN
  rate = missed must-fail samples / must-fail samples, FP rate = clean samples predicted FAIL /
  clean samples;
* **image level** (one RoI): the same per RoI (a RoI must be flagged when a scratch that must be
  caught is visible in it; it is flagged when it keeps a scratch the rule rejects);
* **scratch level**: a labelled scratch is *found* when a kept box (grown by ``MARGIN_MM``) holds
  a point of it, whatever its length; recall = found / labelled, also by length. A kept box is
  *correct* when it holds a point of any scratch; precision = correct / kept. Boxes are counted
  per RoI (a scratch in the overlap of two RoIs counts in both).

Every rate comes with its 95 % Wilson score interval (``*_ci``): with 150 samples a rate of
2 % is known only to within about -1.3/+3.5 points.
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
    sample_clean: int = 0
    image_clean: int = 0
    min_length_mm: float = 0.0
    labelled: int = 0
    found: int = 0
    kept: int = 0
    correct: int = 0
    infer_s: float = 0.0
    by_length: dict = field(default_factory=dict)

    def summary(self) -> dict:
        def r(a, b):
            return round(a / b, 4) if b else None

        out = {
            "samples": self.samples, "samples_must_fail": self.sample_pos,
            "samples_clean": self.sample_clean,
            "sample_fn_rate": r(self.sample_fn, self.sample_pos),
            "sample_fp_rate": r(self.sample_fp, self.sample_clean),
            "images": self.images, "images_must_flag": self.image_pos,
            "images_clean": self.image_clean,
            "image_fn_rate": r(self.image_fn, self.image_pos),
            "image_fp_rate": r(self.image_fp, self.image_clean),
            "scratches_labelled": self.labelled, "scratch_recall": r(self.found, self.labelled),
            "kept": self.kept, "scratch_precision": r(self.correct, self.kept),
            "recall_by_length_mm": {k: r(*self.by_length[k]) for k in LENGTH_BIN_NAMES
                                    if k in self.by_length},
            "scratches_by_length_mm": {k: self.by_length[k][1] for k in LENGTH_BIN_NAMES
                                       if k in self.by_length},
            "min_length_mm": self.min_length_mm,
            "infer_s": round(self.infer_s, 1),
        }
        for key, k, n in (("sample_fn_rate", self.sample_fn, self.sample_pos),
                          ("sample_fp_rate", self.sample_fp, self.sample_clean),
                          ("image_fn_rate", self.image_fn, self.image_pos),
                          ("image_fp_rate", self.image_fp, self.image_clean),
                          ("scratch_recall", self.found, self.labelled),
                          ("scratch_precision", self.correct, self.kept)):
            out[key + "_ci"] = wilson(k, n)
        return out


def wilson(k: int, n: int, z: float = 1.959964) -> list[float] | None:
    """95 % Wilson score interval of the rate k / n ([low, high]); None when n is 0."""
    if n <= 0:
        return None
    p = k / n
    den = 1.0 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return [round(max(0.0, mid - half), 4), round(min(1.0, mid + half), 4)]


LENGTH_BINS = ((0.0, 0.5), (0.5, 1.0), (1.0, 5.0), (5.0, 1e9))
LENGTH_BIN_NAMES = ("0-0.5", "0.5-1", "1-5", ">=5")


def _length_bin(length: float) -> str:
    for (lo, hi), name in zip(LENGTH_BINS, LENGTH_BIN_NAMES, strict=True):
        if lo <= length < hi:
            return name
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

    def __call__(self, frames: np.ndarray, index: int = 0,
                 origin_mm: tuple[float, float] = (0.0, 0.0)):
        """The RoI's :class:`edge.verdict.RoiResult`, as the runtime makes it."""
        from edge.pipeline import process_roi

        return process_roi(frames, self.calibration, self.engine, self.cfg, index, origin_mm)


def score_boxes(result) -> np.ndarray:
    """A RoI result's kept boxes ``(K, 4)`` row0, col0, row1, col1 in half-resolution pixels."""
    # RAW pixel boxes (x0, y0, x1, y1) back to the score map's (row, col), 2 x 2 per pixel
    return np.array([[d.box_px[1] // 2, d.box_px[0] // 2, d.box_px[3] // 2, d.box_px[2] // 2]
                     for d in result.defects], np.int64).reshape(-1, 4)


def _points_in_roi(points_mm: np.ndarray, origin, mm_per_px, shape) -> np.ndarray:
    """Centre-line points -> (row, col) at half resolution, those inside the map."""
    col = (points_mm[:, 0] - origin[0]) / mm_per_px[0] / 2.0
    row = (points_mm[:, 1] - origin[1]) / mm_per_px[1] / 2.0
    rc = np.stack([row, col], axis=1)
    inside = (rc[:, 0] >= 0) & (rc[:, 0] < shape[0]) & (rc[:, 1] >= 0) & (rc[:, 1] < shape[1])
    return rc[inside]


def _labelled(sample, origin, mmpp, mask: np.ndarray) -> dict[int, np.ndarray]:
    """The sample's scratches visible in this RoI: object index -> centre-line points (row, col)
    in the half-resolution map."""
    h2, w2 = mask.shape
    out = {}
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
            out[i] = pts
    return out


def evaluate(models: dict[str, str | Path], cfg: HeadConfig, n_samples: int = 50,
             seed: int = HELD_OUT_SEED, scratch_share: float = 0.3, threads: int = 0,
             progress: bool = True, calibration=None) -> dict[str, dict]:
    """Run every model on the same ``n_samples`` simulated samples -> summary per model; with
    ``calibration`` (an :class:`edge.calibration.Calibration` of this head) the frames are
    corrected as the runtime corrects them."""
    from edge.verdict import Status, decide

    rule = cfg.reject_rule
    head = OpticsRenderer(cfg)
    # frames as the head takes them: each group at its calibrated exposure (the LED balance)
    exposures = calibration.led_exposure_scale if calibration is not None else None
    scorers = {name: EngineScorer(path, cfg, threads, calibration)
               for name, path in models.items()}
    counts = {name: Counts(min_length_mm=rule.min_length_mm) for name in models}
    grid = cfg.stage.roi_grid
    mmpp = cfg.mm_per_px
    margin_px = MARGIN_MM / (2.0 * float(np.mean(mmpp)))
    t0 = time.perf_counter()
    bar = tqdm(total=n_samples * grid.count, desc="evaluating", unit="RoI", disable=not progress)
    for k in range(n_samples):
        sample = generate_sample(seed + k, grid.extent_mm, scratch_share)
        results = {name: [] for name in models}
        labelled_ids: set[int] = set()
        found_ids = {name: set() for name in models}
        for roi in range(grid.count):
            origin = grid.roi_origin_mm(roi)
            r = head.render(sample, origin, noise_seed=(sample.seed << 8) + roi,
                            exposure_factors=exposures)
            h2, w2 = r.frames.shape[1] // 2, r.frames.shape[2] // 2
            mask = r.mask.reshape(h2, 2, w2, 2).any(axis=(1, 3))
            lines = _labelled(sample, origin, mmpp, mask)
            labelled_ids |= lines.keys()
            must = any(rule.rejects(sample.objects[i].length_mm) for i in lines)
            clean = not lines
            for name, scorer in scorers.items():
                ts = time.perf_counter()
                result = scorer(r.frames, roi, origin)
                counts[name].infer_s += time.perf_counter() - ts
                results[name].append(result)
                boxes = score_boxes(result)
                flagged = any(rule.rejects(d.length_mm) for d in result.defects)
                c = counts[name]
                c.images += 1
                c.image_pos += must
                c.image_clean += clean
                c.image_fn += must and not flagged
                c.image_fp += clean and flagged
                c.kept += len(boxes)
                correct = np.zeros(len(boxes), bool)
                for i, pts in lines.items():
                    hits = covered(pts, boxes, margin_px)
                    correct |= hits
                    if hits.any():
                        found_ids[name].add(i)
                c.correct += int(correct.sum())
            bar.update()
        must = any(rule.rejects(sample.objects[i].length_mm) for i in labelled_ids)
        clean = not labelled_ids
        for name in models:
            verdict = decide(f"held-out-{k}", results[name], grid.count, {}, None, {},
                             rule.min_length_mm)
            failed = verdict.status is Status.FAIL
            c = counts[name]
            c.samples += 1
            c.sample_pos += must
            c.sample_clean += clean
            c.sample_fn += must and not failed
            c.sample_fp += clean and failed
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
