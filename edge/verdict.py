"""What an inspection answers: defects in sample millimetres, per-RoI results, the verdict.

Decisions (the glass paper, section 6: one scratch rejects a sample):

* **image level** (one RoI): flagged when the pipeline kept at least one scratch in it;
* **sample level**: FAIL when a defect the reject rule rejects remains after merging (a scratch
  at least ``[reject_rule] min_length_mm`` long, :class:`edge.config.RejectRule`); PASS when
  every RoI was inspected and none did (shorter scratches are listed in the verdict and said
  in its reason, but do not fail the sample); ERROR when anything kept the inspection from
  completing (a missing RoI, a camera, stage, engine or calibration problem): never PASS on an
  incomplete inspection.

Merging: the RoIs overlap by about 2 mm, so a scratch crossing an overlap is seen twice (or
once in each half). Defects of *different* RoIs whose millimetre boxes touch within
``MERGE_GAP_MM`` are one defect (union-find over all pairs, so a chain across several RoIs
merges too): its box is the union, its peak the highest, its length the shorter of the summed
parts and the union box's diagonal (the parts overlap, and a line is not longer than its box).
Defects of one RoI are never merged: DBSCAN already separated them.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from enum import Enum

MERGE_GAP_MM = 0.3

# A sample's name on disk (recorded samples) and on the line (firmware_bridge): 1-64 letters,
# digits, '_', '.', '-', not starting with a punctuation mark. Kept here, in a module without
# the image stack, so the line side can share it cheaply.
SAMPLE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class Status(str, Enum):
    PASS = "PASS"
    FAIL = "FAIL"
    ERROR = "ERROR"


@dataclass(frozen=True)
class Defect:
    """One scratch: its box in sample mm (x0, y0, x1, y1), its length and its peak score."""

    box_mm: tuple[float, float, float, float]
    length_mm: float
    peak_score: float
    rois: tuple[int, ...]
    box_px: tuple[int, int, int, int] | None = None  # x0, y0, x1, y1 in its RoI's RAW pixels

    @property
    def centre_mm(self) -> tuple[float, float]:
        x0, y0, x1, y1 = self.box_mm
        return ((x0 + x1) / 2.0, (y0 + y1) / 2.0)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["box_mm"] = [round(v, 3) for v in self.box_mm]
        d["length_mm"] = round(self.length_mm, 3)
        d["peak_score"] = round(self.peak_score, 4)
        d["rois"] = list(self.rois)
        d["box_px"] = list(self.box_px) if self.box_px is not None else None
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Defect:
        return cls(tuple(d["box_mm"]), float(d["length_mm"]), float(d["peak_score"]),
                   tuple(d["rois"]), tuple(d["box_px"]) if d.get("box_px") else None)


@dataclass
class RoiResult:
    """The pipeline's answer for one RoI (its score map only kept when asked, for overlays)."""

    index: int
    origin_mm: tuple[float, float]
    defects: list[Defect]
    timings_s: dict[str, float]
    tiles: int
    corrected: bool
    notes: list[str] = field(default_factory=list)
    score: object = None  # np.ndarray (H/2, W/2) float32 when kept

    @property
    def flagged(self) -> bool:
        return bool(self.defects)

    def to_dict(self) -> dict:
        return {"index": self.index, "origin_mm": list(self.origin_mm),
                "flagged": self.flagged, "defects": len(self.defects), "tiles": self.tiles,
                "corrected": self.corrected, "notes": self.notes,
                "timings_s": {k: round(v, 4) for k, v in self.timings_s.items()}}


def _touch(a: tuple, b: tuple, gap: float) -> bool:
    return (a[0] <= b[2] + gap and b[0] <= a[2] + gap
            and a[1] <= b[3] + gap and b[1] <= a[3] + gap)


def merge_defects(results: list[RoiResult], gap_mm: float = MERGE_GAP_MM) -> list[Defect]:
    """All RoIs' defects in sample coordinates, one per physical scratch."""
    items = [d for r in results for d in r.defects]
    parent = list(range(len(items)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i in range(len(items)):
        for j in range(i + 1, len(items)):
            if set(items[i].rois) & set(items[j].rois):
                continue
            if _touch(items[i].box_mm, items[j].box_mm, gap_mm):
                parent[find(j)] = find(i)
    groups: dict[int, list[Defect]] = {}
    for i, d in enumerate(items):
        groups.setdefault(find(i), []).append(d)
    merged = []
    for parts in groups.values():
        if len(parts) == 1:
            merged.append(parts[0])
            continue
        box = (min(p.box_mm[0] for p in parts), min(p.box_mm[1] for p in parts),
               max(p.box_mm[2] for p in parts), max(p.box_mm[3] for p in parts))
        diag = math.hypot(box[2] - box[0], box[3] - box[1])
        merged.append(Defect(box, min(sum(p.length_mm for p in parts), diag),
                             max(p.peak_score for p in parts),
                             tuple(sorted({r for p in parts for r in p.rois}))))
    return sorted(merged, key=lambda d: (d.box_mm[1], d.box_mm[0]))


@dataclass
class Verdict:
    sample_id: str
    status: Status
    reason: str
    defects: list[Defect]
    rois: list[RoiResult]
    timings_s: dict[str, float]
    engine: dict
    calibration: dict | None
    created_utc: str = field(
        default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="milliseconds"))

    @property
    def flagged_rois(self) -> list[int]:
        return [r.index for r in self.rois if r.flagged]

    def to_dict(self) -> dict:
        return {"sample_id": self.sample_id, "status": self.status.value, "reason": self.reason,
                "defects": [d.to_dict() for d in self.defects],
                "flagged_rois": self.flagged_rois,
                "rois": [r.to_dict() for r in self.rois],
                "timings_s": {k: round(v, 4) for k, v in self.timings_s.items()},
                "engine": self.engine, "calibration": self.calibration,
                "created_utc": self.created_utc}

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, d: dict) -> Verdict:
        rois = [RoiResult(r["index"], tuple(r["origin_mm"]), [], r["timings_s"], r["tiles"],
                          r["corrected"], list(r["notes"])) for r in d["rois"]]
        return cls(d["sample_id"], Status(d["status"]), d["reason"],
                   [Defect.from_dict(x) for x in d["defects"]], rois, d["timings_s"],
                   d["engine"], d["calibration"], d["created_utc"])

    def summary(self) -> str:
        """One line for an operator."""
        if self.status is Status.ERROR:
            return f"{self.sample_id}: ERROR - {self.reason}"
        if self.status is Status.PASS:
            return f"{self.sample_id}: PASS - {self.reason}"
        longest = max(d.length_mm for d in self.defects)
        return (f"{self.sample_id}: FAIL - {len(self.defects)} scratch"
                f"{'es' if len(self.defects) > 1 else ''} (longest {longest:.1f} mm) in RoIs "
                f"{', '.join(map(str, self.flagged_rois))}")

    def defect_lines(self) -> list[str]:
        """One line per scratch found, for an operator."""
        return [f"  scratch {k + 1}: centre ({d.centre_mm[0]:.2f}, {d.centre_mm[1]:.2f}) mm, "
                f"{d.length_mm:.2f} mm long, peak score {d.peak_score:.2f}, RoI "
                f"{', '.join(map(str, d.rois))}" for k, d in enumerate(self.defects)]


def rejected(defects: list[Defect], min_length_mm: float) -> list[Defect]:
    """The defects that fail a sample under the reject rule (``RejectRule.min_length_mm``)."""
    return [d for d in defects if d.length_mm >= min_length_mm]


def decide(sample_id: str, results: list[RoiResult], expected_rois: int, engine: dict,
           calibration: dict | None, timings_s: dict[str, float],
           min_length_mm: float = 0.0) -> Verdict:
    """The sample-level decision over complete per-RoI results, under the reject rule
    ``min_length_mm`` (0: every scratch fails the sample)."""
    done = sorted(r.index for r in results)
    if len(done) != expected_rois:
        return Verdict(sample_id, Status.ERROR,
                       f"only {len(done)} of {expected_rois} RoIs were inspected",
                       [], results, timings_s, engine, calibration)
    defects = merge_defects(results)
    failing = rejected(defects, min_length_mm)
    short = len(defects) - len(failing)
    if failing:
        status, reason = Status.FAIL, f"{len(failing)} scratch(es) found"
    elif short:
        status, reason = Status.PASS, (f"{short} scratch(es) shorter than the reject rule's "
                                       f"{min_length_mm:g} mm, none longer")
    else:
        status, reason = Status.PASS, f"no scratch in {expected_rois} RoIs"
    return Verdict(sample_id, status, reason, defects, results, timings_s, engine, calibration)


def error(sample_id: str, reason: str, results: list[RoiResult] | None = None,
          engine: dict | None = None, calibration: dict | None = None,
          timings_s: dict[str, float] | None = None) -> Verdict:
    return Verdict(sample_id, Status.ERROR, reason, [], results or [], timings_s or {},
                   engine or {}, calibration)
