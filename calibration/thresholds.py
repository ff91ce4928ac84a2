"""Thresholds: the post-processing settings that catch the scratched golden samples with the
fewest false alarms, on this head, through its calibration.

Golden samples are recorded samples whose truth is known (``truth.json``: known good and known
scratched glass). Each goes through the pipeline once with the head's engine and the calibration
just measured, and its score maps are kept; the post-processing (T_low, T_high, DBSCAN's
min_samples) is then swept over a grid on those maps, which needs no more inference.

Counts follow the head's reject rule (``[reject_rule] min_length_mm``), as the verdict and the
evaluation do: a golden sample *must fail* when it holds a scratch at least that long, is *clean*
when it holds none, and otherwise counts neither way; a sample is flagged when one of its RoIs
keeps a scratch at least that long. Choice: lengths are per RoI here (the verdict merges a
scratch cut by a RoI border first), so a long scratch split in two short halves counts as
missed here: the sweep errs towards catching.

The operating point: the fewest must-fail samples missed first (a miss is what the line must
never see), then the fewest clean samples flagged, then the point nearest the head file's
settings (a tie is not a reason to move). Its sample-level FN and FP on the golden samples are
reported with it. Choice: the grid is small and fixed (:data:`T_LOW`, :data:`T_HIGH`,
:data:`MIN_SAMPLES`): a few golden samples cannot support a finer search without fitting their
noise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

T_LOW = (0.1, 0.15, 0.25, 0.35, 0.5)
T_HIGH = (0.5, 0.6, 0.75, 0.85, 0.95)
MIN_SAMPLES = (8, 16, 32)


@dataclass
class Golden:
    name: str
    scratched: bool  # must fail under the reject rule
    scores: list[np.ndarray]  # one score map per RoI
    clean: bool = True  # holds no scratch at all
    px_mm: float = 0.0  # one score-map pixel's length on the glass (2 RAW pixels)


def golden_scores(sample_dirs: Sequence[str | Path], cfg, engine, calibration) -> list[Golden]:
    """Run each golden sample through the pipeline once; its score maps and its truth."""
    from edge.inspection import recorded_rois
    from edge.pipeline import process_roi
    from edge.recording import find_samples

    out = []
    for d in (p for root in sample_dirs for p in find_samples(root)):
        rec, rois = recorded_rois(d, cfg)
        truth = rec.truth()
        if truth is None:
            raise ValueError(f"golden sample {d} has no ground truth (truth.json): it cannot "
                             "say whether a verdict is right")
        # recorded at the head's exposures of the time, perhaps before this LED balance
        cal = (calibration.for_exposures(rec.manifest.camera.per_state_ms, cfg)
               if calibration is not None else None)
        scores = [process_roi(r.frames(), cal, engine, cfg, r.index, keep_score=True).score
                  for r in rois]
        rule = cfg.reject_rule
        mapping = calibration.mapping(cfg) if calibration is not None else None
        px_mm = 2.0 * (mapping.px_mm if mapping is not None else float(np.mean(cfg.mm_per_px)))
        out.append(Golden(rec.sample_id, any(rule.rejects(d.length_mm) for d in truth.scratches),
                          scores, not truth.has_scratch, px_mm))
    if not any(g.scratched for g in out) or not any(g.clean for g in out):
        raise ValueError("the golden samples need known-good glass and glass with a scratch the "
                         "reject rule rejects, both")
    return out


def sweep(goldens: Sequence[Golden], pipeline, min_length_mm: float = 0.0) -> list[dict]:
    """Sample-level FN and FP of every grid point (T_low <= T_high) under the reject rule."""
    from edge.postprocess import find_scratches

    rows = []
    for t_low in T_LOW:
        for t_high in T_HIGH:
            if t_low > t_high:
                continue
            for ms in MIN_SAMPLES:
                p = pipeline.model_copy(update={"t_low": t_low, "t_high": t_high,
                                                "dbscan_min_samples": ms})
                fn = fp = 0
                for g in goldens:
                    flagged = any((find_scratches(s, p).length * g.px_mm >= min_length_mm).any()
                                  for s in g.scores)
                    fn += g.scratched and not flagged
                    fp += g.clean and flagged
                rows.append({"t_low": t_low, "t_high": t_high, "dbscan_min_samples": ms,
                             "fn": int(fn), "fp": int(fp)})
    return rows


def choose(rows: Sequence[dict], pipeline, goldens: Sequence[Golden]) -> dict:
    """The operating point (see the module docstring), with its rates on the golden samples."""
    def distance(r: dict) -> float:
        return (abs(r["t_low"] - pipeline.t_low) + abs(r["t_high"] - pipeline.t_high)
                + abs(np.log2(r["dbscan_min_samples"] / pipeline.dbscan_min_samples)) / 4)

    best = min(rows, key=lambda r: (r["fn"], r["fp"], distance(r)))
    scratched = sum(g.scratched for g in goldens)
    clean = sum(g.clean for g in goldens)
    return dict(best, samples=len(goldens), scratched=scratched,
                fn_rate=round(best["fn"] / scratched, 4), fp_rate=round(best["fp"] / clean, 4))
