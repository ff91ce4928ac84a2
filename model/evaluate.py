"""Quality of networks and baselines on held-out simulated samples, as the glass paper's Table 1
counts.

Each sample is rendered RoI by RoI on the full-size simulated head; every detector sees the same
frames (:mod:`model.heldout`, which caches the truth and every detector's score maps on disk): a
network exactly as the device runs it (the runtime's space-to-depth, tiles of the head's size on
ONNX Runtime, stitching; with a calibration, corrected as the runtime corrects), a baseline
(:mod:`model.baselines`) on the raw frames. Every score map then goes through the runtime's
post-processing (:func:`edge.postprocess.find_scratches`), its defect conversion
(:func:`edge.pipeline.to_defects`) and its verdict (:func:`edge.verdict.decide`), so
:func:`sweep` can try post-processing settings on the cached maps without rendering or
inferring again.

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

    def tally(self, level: str, must: bool, clean: bool, flagged: bool) -> None:
        """One image or sample (``level``): must it fail, is it clean, was it flagged."""
        for key, add in (("pos", must), ("clean", clean), ("fn", must and not flagged),
                         ("fp", clean and flagged)):
            name = f"{level}_{key}"
            setattr(self, name, getattr(self, name) + add)

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


def score_boxes(result) -> np.ndarray:
    """A RoI result's kept boxes ``(K, 4)`` row0, col0, row1, col1 in half-resolution pixels."""
    # RAW pixel boxes (x0, y0, x1, y1) back to the score map's (row, col), 2 x 2 per pixel
    return np.array([[d.box_px[1] // 2, d.box_px[0] // 2, d.box_px[3] // 2, d.box_px[2] // 2]
                     for d in result.defects], np.int64).reshape(-1, 4)


def count(samples, cfg: HeadConfig, pipeline=None, calibration=None) -> Counts:
    """The counts of one detector's maps (``samples``: per sample its truth and its score maps,
    as :meth:`model.heldout.HeldOutSet.samples` gives them) under ``pipeline`` (default: the
    head's, or its calibration's thresholds) and the head's reject rule."""
    from edge.pipeline import to_defects
    from edge.postprocess import find_scratches
    from edge.verdict import RoiResult, Status, decide

    rule = cfg.reject_rule
    p = pipeline or (calibration.pipeline_for(cfg) if calibration is not None else cfg.pipeline)
    mapping = calibration.mapping(cfg) if calibration is not None else None
    grid = cfg.stage.roi_grid
    mmpp = cfg.mm_per_px
    margin_px = MARGIN_MM / (2.0 * float(np.mean(mmpp)))
    c = Counts(min_length_mm=rule.min_length_mm)
    for truth, maps in samples:
        results = []
        found_ids: set[int] = set()
        for roi, (t, score) in enumerate(zip(truth.rois, maps, strict=True)):
            origin = grid.roi_origin_mm(roi)
            defects = to_defects(find_scratches(score, p), roi, origin, mmpp, mapping)
            result = RoiResult(roi, origin, defects, {}, 1, calibration is not None)
            results.append(result)
            boxes = score_boxes(result)
            must = any(rule.rejects(t.lengths[i]) for i in t.lines)
            clean = not t.lines
            flagged = any(rule.rejects(d.length_mm) for d in defects)
            c.images += 1
            c.tally("image", must, clean, flagged)
            c.kept += len(boxes)
            correct = np.zeros(len(boxes), bool)
            for i, pts in t.lines.items():
                hits = covered(pts, boxes, margin_px)
                correct |= hits
                if hits.any():
                    found_ids.add(i)
            c.correct += int(correct.sum())
        labelled = truth.labelled
        must = any(rule.rejects(v) for v in labelled.values())
        clean = not labelled
        verdict = decide(f"held-out-{truth.seed}", results, grid.count, {}, None, {},
                         rule.min_length_mm)
        failed = verdict.status is Status.FAIL
        c.samples += 1
        c.tally("sample", must, clean, failed)
        c.labelled += len(labelled)
        c.found += len(labelled.keys() & found_ids)
        for i, length in labelled.items():
            b = _length_bin(length)
            f, n = c.by_length.get(b, (0, 0))
            c.by_length[b] = (f + (i in found_ids), n + 1)
    return c


def detectors(models: dict[str, str | Path], cfg: HeadConfig, baselines: Sequence[str] = (),
              threads: int = 0, calibration=None) -> list:
    from model.heldout import baseline_detector, network_detector

    out = [network_detector(name, path, cfg, threads, calibration)
           for name, path in models.items()]
    return out + [baseline_detector(b) for b in baselines]


def evaluate(models: dict[str, str | Path], cfg: HeadConfig, n_samples: int = 50,
             seed: int = HELD_OUT_SEED, scratch_share: float = 0.3, threads: int = 0,
             progress: bool = True, calibration=None, baselines: Sequence[str] = (),
             cache: str | Path | None = None, pipeline=None,
             settings: dict[str, dict] | None = None) -> dict[str, dict]:
    """Every network and baseline on the same ``n_samples`` held-out samples -> summary per
    detector; with ``calibration`` (an :class:`edge.calibration.Calibration` of this head) the
    frames are taken and corrected as the runtime does. Score maps come from the cache when
    there (``cache``: its folder, default :data:`model.heldout.DEFAULT_CACHE`). ``settings``:
    per detector name, post-processing settings of its own (a sweep's best), which replace the
    head's for that detector."""
    from model.heldout import HeldOutSet

    t0 = time.perf_counter()
    dets = detectors(models, cfg, baselines, threads, calibration)
    heldout = HeldOutSet(cfg, n_samples, seed, scratch_share, cache, calibration)
    heldout.fill(dets, progress)
    filled = time.perf_counter() - t0
    out = {}
    for d in dets:
        t = time.perf_counter()
        own = (settings or {}).get(d.name)
        p = pipeline
        if own:
            base = pipeline or cfg.pipeline
            p = base.model_copy(update={k: v for k, v in own.items() if k in SWEEP_KEYS})
        out[d.name] = count(heldout.samples(d.key), cfg, p, calibration).summary()
        if own:
            out[d.name]["post_processing"] = {k: getattr(p, k) for k in SWEEP_KEYS}
        out[d.name].update(count_s=round(time.perf_counter() - t, 1),
                           render_and_score_s=round(filled, 1), cache=str(heldout.dir))
    return out


SWEEP_KEYS = ("downscale", "dbscan_eps", "dbscan_min_samples", "t_low", "t_high")
# min_samples 2 and T_high 0.45 since the hybrid network: its best settings sat on the grid's edge
SWEEP = {"downscale": (2, 4, 8), "dbscan_eps": (12.0, 25.0),
         "dbscan_min_samples": (2, 4, 8, 16), "t_low": (0.15, 0.3), "t_high": (0.45, 0.6, 0.85)}


def sweep(models: dict[str, str | Path], cfg: HeadConfig, n_samples: int, seed: int,
          scratch_share: float, grid: dict | None = None, threads: int = 0,
          progress: bool = True, baselines: Sequence[str] = (),
          cache: str | Path | None = None) -> dict[str, list[dict]]:
    """Post-processing settings tried on cached maps (validation samples, not the held-out
    ones): per detector, one row per setting of ``grid`` (default :data:`SWEEP`; a key it
    leaves out stays the head's), with its rates. T_low above T_high is skipped."""
    import itertools

    from edge.postprocess import PooledScore
    from model.heldout import HeldOutSet

    grid = grid or SWEEP
    dets = detectors(models, cfg, baselines, threads)
    heldout = HeldOutSet(cfg, n_samples, seed, scratch_share, cache)
    heldout.fill(dets, progress)
    names = list(grid)
    points = [dict(zip(names, v, strict=True)) for v in itertools.product(*grid.values())]
    points = [q for q in points if q.get("t_low", cfg.pipeline.t_low)
              <= q.get("t_high", cfg.pipeline.t_high)]
    out: dict[str, list[dict]] = {}
    bar = tqdm(total=len(points) * len(dets), desc="post-processing sweep", unit="setting",
               disable=not progress)
    for d in dets:
        rows = []
        # read, unpacked and pooled once: one detector in memory at a time
        kept = [(t, [PooledScore(m) for m in maps]) for t, maps in heldout.samples(d.key)]
        for q in points:
            p = cfg.pipeline.model_copy(update=q)
            s = count(kept, cfg, p).summary()
            rows.append({**q, **{k: s[k] for k in ("sample_fn_rate", "sample_fp_rate",
                                                   "image_fn_rate", "image_fp_rate",
                                                   "scratch_recall", "scratch_precision")}})
            bar.update()
        out[d.name] = rows
    bar.close()
    return out


def best_setting(rows: list[dict], max_sample_fp: float = 0.05) -> dict:
    """The setting with the fewest missed samples among those within ``max_sample_fp`` sample
    false alarms (then fewer image false alarms, fewer image misses, higher scratch recall,
    higher scratch precision); when none is within it, the one with the fewest sample false
    alarms (then misses)."""
    def rate(r, k):
        return r[k] if r[k] is not None else 0.0

    ok = [r for r in rows if rate(r, "sample_fp_rate") <= max_sample_fp]
    if ok:
        return min(ok, key=lambda r: (rate(r, "sample_fn_rate"), rate(r, "image_fp_rate"),
                                      rate(r, "image_fn_rate"), -rate(r, "scratch_recall"),
                                      -rate(r, "scratch_precision")))
    return min(rows, key=lambda r: (rate(r, "sample_fp_rate"), rate(r, "sample_fn_rate")))


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
