"""Do two artifacts of one model give the same answer? ONNX Runtime against an engine.

The same RoIs (recorded samples, or samples simulated on the spot) go through the runtime's own
pipeline with each engine; reported: the max abs difference of the stitched score maps, and
whether the kept defects agree (same number per RoI, each box of one overlapping a box of the
other). A lower precision changes scores a little; what matters for the line is the second.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np

from edge.calibration import Calibration
from edge.config import HeadConfig
from edge.engine import Engine
from edge.pipeline import process_roi


@dataclass
class ParityReport:
    reference: dict
    candidate: dict
    rois: int = 0
    max_abs: float = 0.0
    mean_abs: float = 0.0
    defects_reference: int = 0
    defects_candidate: int = 0
    disagreeing_rois: list[int] = field(default_factory=list)

    @property
    def defects_agree(self) -> bool:
        return not self.disagreeing_rois

    def to_dict(self) -> dict:
        return {"reference": self.reference, "candidate": self.candidate, "rois": self.rois,
                "max_abs_diff": self.max_abs, "mean_abs_diff": self.mean_abs,
                "defects_reference": self.defects_reference,
                "defects_candidate": self.defects_candidate,
                "defects_agree": self.defects_agree, "disagreeing_rois": self.disagreeing_rois}


def _overlaps(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def boxes_agree(a: list, b: list) -> bool:
    if len(a) != len(b):
        return False
    return (all(any(_overlaps(x, y) for y in b) for x in a)
            and all(any(_overlaps(y, x) for x in a) for y in b))


def compare(reference: Engine, candidate: Engine, rois: Iterable[tuple[int, np.ndarray]],
            cfg: HeadConfig, calibration: Calibration | None = None) -> ParityReport:
    rep = ParityReport(reference.identity, candidate.identity)
    total, count = 0.0, 0
    for index, frames in rois:
        a = process_roi(frames, calibration, reference, cfg, index, keep_score=True)
        b = process_roi(frames, calibration, candidate, cfg, index, keep_score=True)
        diff = np.abs(a.score - b.score)
        rep.max_abs = max(rep.max_abs, float(diff.max()))
        total += float(diff.sum())
        count += diff.size
        rep.rois += 1
        rep.defects_reference += len(a.defects)
        rep.defects_candidate += len(b.defects)
        if not boxes_agree([d.box_px for d in a.defects], [d.box_px for d in b.defects]):
            rep.disagreeing_rois.append(index)
    rep.mean_abs = total / count if count else 0.0
    return rep


def parity_rois(cfg: HeadConfig, samples: str | None = None, rois: int = 2, seed: int = 1,
                shape: tuple[int, int] | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """The RoIs a parity check runs: the first ``rois`` of each recorded sample under
    ``samples``, else the first ``rois`` of one scratched sample simulated from ``seed``."""
    if samples:
        from edge.recording import find_samples, open_sample

        for d in find_samples(samples):
            rec = open_sample(d)
            for e in rec.manifest.rois[:rois]:
                yield e.index, np.asarray(rec.frames(e.index))
        return
    from edge.sim import OpticsRenderer, generate_sample

    optics = OpticsRenderer(cfg, shape=shape)
    sample = generate_sample(seed, cfg.stage.roi_grid.extent_mm, scratch_share=1.0)
    for i in range(min(rois, cfg.stage.roi_grid.count)):
        yield i, optics.render(sample, cfg.stage.roi_grid.roi_origin_mm(i), noise_seed=i).frames
