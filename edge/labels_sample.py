"""Labels of recorded samples: what a person (or the simulator's truth) says lies on the glass.

The format is ``docs/recorded_samples.md``'s ("Labels"); in short, ``labels.json`` in the
sample's folder::

    {"format": "glass-inspect-sample-labels", "version": 1, "sample_id": "S17",
     "clean": false,
     "scratches": [{"points_mm": [[12.3, 4.1], [18.0, 6.2]], "width_um": 11.3}],
     "contaminants": [{"kind": "dust", "points_mm": [[40.2, 12.0]], "width_um": 60}]}

Points are sample millimetres, the head's coordinates (x right, y down, (0, 0) the top-left
corner of the area the RoI grid covers), as in ``truth.json`` and the verdict. A scratch is a
polyline along its centre line (at least two points) with its apparent width in micrometres; a
contaminant (optional) is one centre point for a blob or a polyline for a fibre, with its
width or diameter. Choices: ``clean`` is required either way, so a file someone began and left
is never read as a clean sample; ``clean: true`` with a scratch, and ``clean: false`` without
one, are contradictions and refused; contaminants do not make a sample unclean (clean means no
scratch, the reject rule's business). A scratch must touch the sample's area (1 mm of slack),
which catches pixel coordinates and labels of another head; a scratch may run off the glass's
edge, as the simulator's do. The reader collects every problem of a file before raising one
:class:`SampleLabelError` naming the file and field.

Two ways to make one without drawing: :func:`from_truth` (the simulator's truth stands in for
the operator) and :func:`from_verdict` (the network's kept defects, for the operator to confirm,
reject or edit: ``glass-inspect label``).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from edge.errors import UserError
from edge.truth import Sample

FORMAT = "glass-inspect-sample-labels"
VERSION = 1
LABELS = "labels.json"
CONTAMINANT_KINDS = ("dust", "stain", "fibre", "water_spot", "fingerprint", "other")
SOURCES = ("network", "operator", "truth")
SLACK_MM = 1.0  # how far outside the sample's area a label may lie and still touch it
_TOP = {"format", "version", "sample_id", "clean", "scratches", "contaminants", "labelled_by",
        "labelled_utc", "note"}
_SCRATCH = {"points_mm", "width_um", "source", "note"}
_CONTAMINANT = {"kind", "points_mm", "width_um", "note"}


class SampleLabelError(UserError, ValueError):
    """Labels that cannot be read or do not fit their sample; names the file and the field."""


Points = tuple[tuple[float, float], ...]


@dataclass(frozen=True)
class Scratch:
    points_mm: Points
    width_um: float
    source: str | None = None  # network, operator or truth: who put it there
    note: str | None = None

    @property
    def length_mm(self) -> float:
        p = np.asarray(self.points_mm)
        return float(np.hypot(*np.diff(p, axis=0).T).sum())

    def to_dict(self) -> dict:
        d = {"points_mm": [[round(x, 4), round(y, 4)] for x, y in self.points_mm],
             "width_um": round(self.width_um, 2)}
        return d | {k: v for k, v in (("source", self.source), ("note", self.note)) if v}


@dataclass(frozen=True)
class Contaminant:
    kind: str
    points_mm: Points
    width_um: float
    note: str | None = None

    def to_dict(self) -> dict:
        d = {"kind": self.kind, "points_mm": [[round(x, 4), round(y, 4)]
                                              for x, y in self.points_mm],
             "width_um": round(self.width_um, 2)}
        return d | ({"note": self.note} if self.note else {})


@dataclass(frozen=True)
class SampleLabels:
    sample_id: str
    clean: bool
    scratches: tuple[Scratch, ...] = ()
    contaminants: tuple[Contaminant, ...] = ()
    labelled_by: str | None = None
    labelled_utc: str | None = None
    note: str | None = None

    def to_dict(self) -> dict:
        d = {"format": FORMAT, "version": VERSION, "sample_id": self.sample_id,
             "clean": self.clean, "scratches": [s.to_dict() for s in self.scratches],
             "contaminants": [c.to_dict() for c in self.contaminants]}
        extra = (("labelled_by", self.labelled_by), ("labelled_utc", self.labelled_utc),
                 ("note", self.note))
        return d | {k: v for k, v in extra if v}


# -- reading and checking --------------------------------------------------------------------
def _number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _points(v: object, where: str, least: int, problems: list[str]) -> Points:
    if not isinstance(v, list) or len(v) < least:
        problems.append(f"{where}: expected a list of at least {least} point(s) [x, y] in mm, "
                        f"got {v!r}"[:200])
        return ()
    out = []
    for k, p in enumerate(v):
        if isinstance(p, list) and len(p) == 2 and all(_number(c) for c in p):
            out.append((float(p[0]), float(p[1])))
        else:
            problems.append(f"{where}[{k}]: expected [x, y], two numbers in mm, got {p!r}")
    return tuple(out)


def _width(v: object, where: str, problems: list[str]) -> float:
    if _number(v) and v > 0:
        return float(v)
    problems.append(f"{where}: expected a positive number of micrometres, got {v!r}")
    return 1.0


def _text(d: dict, key: str, where: str, problems: list[str]) -> str | None:
    v = d.get(key)
    if v is not None and not isinstance(v, str):
        problems.append(f"{where}{key}: expected text, got {v!r}")
        return None
    return v


def _unknown(d: dict, known: set[str], where: str, problems: list[str]) -> None:
    for k in sorted(set(d) - known):
        problems.append(f"{where}{k}: unknown field (expected one of {', '.join(sorted(known))})")


def _items(data: dict, key: str, problems: list[str]) -> list:
    v = data.get(key, [])
    if not isinstance(v, list):
        problems.append(f"{key}: expected a list, got {v!r}"[:200])
        return []
    return v


def parse_labels(data: object, source: str | Path = LABELS) -> SampleLabels:
    """Labels from their JSON mapping; every problem at once in one :class:`SampleLabelError`."""
    problems: list[str] = []
    if not isinstance(data, dict):
        raise SampleLabelError(f"{source}: expected a JSON object with sample_id, clean and "
                               f"scratches, got {type(data).__name__}")
    _unknown(data, _TOP, "", problems)
    if data.get("format") != FORMAT:
        problems.append(f"format: expected {FORMAT!r}, got {data.get('format')!r}")
    if data.get("version") != VERSION:
        problems.append(f"version: expected {VERSION}, got {data.get('version')!r} (this "
                        "reader knows version 1 only)")
    sid = data.get("sample_id")
    if not isinstance(sid, str) or not sid:
        problems.append(f"sample_id: expected the sample's id (text), got {sid!r}")
    clean = data.get("clean")
    if not isinstance(clean, bool):
        problems.append(f"clean: required, true (no scratch on the sample) or false, got "
                        f"{clean!r}")
    scratches = []
    for k, s in enumerate(_items(data, "scratches", problems)):
        where = f"scratches[{k}]"
        if not isinstance(s, dict):
            problems.append(f"{where}: expected an object with points_mm and width_um")
            continue
        _unknown(s, _SCRATCH, where + ".", problems)
        for key in ("points_mm", "width_um"):
            if key not in s:
                problems.append(f"{where}.{key}: required field is missing")
        src = _text(s, "source", where + ".", problems)
        if src is not None and src not in SOURCES:
            problems.append(f"{where}.source: expected one of {', '.join(SOURCES)}, got {src!r}")
        scratches.append(Scratch(_points(s.get("points_mm"), f"{where}.points_mm", 2, problems),
                                 _width(s.get("width_um"), f"{where}.width_um", problems),
                                 src, _text(s, "note", where + ".", problems)))
    contaminants = []
    for k, c in enumerate(_items(data, "contaminants", problems)):
        where = f"contaminants[{k}]"
        if not isinstance(c, dict):
            problems.append(f"{where}: expected an object with kind, points_mm and width_um")
            continue
        _unknown(c, _CONTAMINANT, where + ".", problems)
        kind = c.get("kind")
        if kind not in CONTAMINANT_KINDS:
            problems.append(f"{where}.kind: expected one of {', '.join(CONTAMINANT_KINDS)}, "
                            f"got {kind!r}")
        contaminants.append(Contaminant(
            str(kind), _points(c.get("points_mm"), f"{where}.points_mm", 1, problems),
            _width(c.get("width_um"), f"{where}.width_um", problems),
            _text(c, "note", where + ".", problems)))
    if clean is True and scratches:
        problems.append(f"clean: true, but {len(scratches)} scratch(es) are listed: a clean "
                        "sample has none (set clean to false, or remove them)")
    if clean is False and not scratches and "scratches" in data:
        problems.append("clean: false, but no scratch is listed: give each scratch's polyline, "
                        "or set clean to true")
    elif clean is False and not scratches:
        problems.append("scratches: required when clean is false")
    meta = {k: _text(data, k, "", problems) for k in ("labelled_by", "labelled_utc", "note")}
    if problems:
        raise SampleLabelError(f"{source}: invalid labels:\n  " + "\n  ".join(problems))
    return SampleLabels(sid, clean, tuple(scratches), tuple(contaminants), **meta)


def sample_area_mm(sample_dir: str | Path) -> tuple[str, tuple[float, float]] | None:
    """The recorded sample's id and the width and height of the area its RoIs cover (mm), or
    None for a folder without a manifest (a kept ERROR verdict before the first RoI)."""
    from edge.recording import MANIFEST, open_sample

    if not (Path(sample_dir) / MANIFEST).is_file():
        return None
    m = open_sample(sample_dir).manifest
    mx, my = m.mm_per_px
    w, h = m.camera.width * mx, m.camera.height * my
    return m.sample_id, (max(r.origin_mm[0] + w for r in m.rois),
                         max(r.origin_mm[1] + h for r in m.rois))


def pixel_um(sample_dir: str | Path) -> float:
    """One RAW pixel's footprint on the sample (um, the mean of x and y): the width given to a
    scratch whose width nobody measured, which the rasteriser draws as its centre line."""
    from edge.recording import open_sample

    mx, my = open_sample(sample_dir).manifest.mm_per_px
    return round(1000 * (mx + my) / 2, 1)


def check_against(labels: SampleLabels, sample_id: str, extent_mm: tuple[float, float],
                  source: str | Path = LABELS) -> None:
    """Refuse labels of another sample, or whose objects lie outside the sample's area."""
    problems = []
    if labels.sample_id != sample_id:
        problems.append(f"sample_id: {labels.sample_id!r}, but the sample here is {sample_id!r} "
                        "(labels of another sample?)")
    ex, ey = extent_mm
    items = [(f"scratches[{k}]", s.points_mm) for k, s in enumerate(labels.scratches)]
    items += [(f"contaminants[{k}]", c.points_mm) for k, c in enumerate(labels.contaminants)]
    for where, pts in items:
        p = np.asarray(pts)
        if (p[:, 0].max() < -SLACK_MM or p[:, 0].min() > ex + SLACK_MM
                or p[:, 1].max() < -SLACK_MM or p[:, 1].min() > ey + SLACK_MM):
            problems.append(f"{where}.points_mm: lies outside the sample's {ex:.1f} x {ey:.1f} "
                            "mm (sample millimetres expected, not pixels)")
    if problems:
        raise SampleLabelError(f"{source}: labels do not fit the sample:\n  "
                               + "\n  ".join(problems))


def read_labels(sample_dir: str | Path) -> SampleLabels:
    """A sample folder's ``labels.json``, checked, and checked against the sample's manifest."""
    path = Path(sample_dir) / LABELS
    if not path.is_file():
        raise SampleLabelError(f"{path}: no labels (glass-inspect label {sample_dir} makes them)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise SampleLabelError(f"{path}: not valid JSON ({exc})") from None
    labels = parse_labels(data, path)
    area = sample_area_mm(sample_dir)
    if area is not None:
        check_against(labels, *area, path)
    return labels


def write_labels(sample_dir: str | Path, labels: SampleLabels, overwrite: bool = False) -> Path:
    """Write ``labels.json`` (checked first, as the reader would; written atomically)."""
    path = Path(sample_dir) / LABELS
    if path.exists() and not overwrite:
        raise SampleLabelError(f"{path} already exists; not overwriting it (--force does)")
    data = labels.to_dict()
    parse_labels(data, path)
    area = sample_area_mm(sample_dir)
    if area is not None:
        check_against(labels, *area, path)
    tmp = path.with_name(LABELS + ".part")
    tmp.write_text(dumps(data), encoding="utf-8")
    os.replace(tmp, path)
    return path


def dumps(data: dict) -> str:
    """The labels as JSON a person reads and edits: one key per line, one object per line."""
    lines = []
    for k, v in data.items():
        if isinstance(v, list) and v:
            items = ",\n".join(f"  {json.dumps(x)}" for x in v)
            lines.append(f' "{k}": [\n{items}\n ]')
        else:
            lines.append(f" {json.dumps(k)}: {json.dumps(v)}")
    return "{\n" + ",\n".join(lines) + "\n}\n"


def now_utc() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# -- making them -----------------------------------------------------------------------------
def from_truth(truth: Sample, labelled_by: str = "simulator truth") -> SampleLabels:
    """The simulator's ground truth as labels: its scratches, its dust, stains and fibres as
    contaminants."""
    scratches = tuple(Scratch(d.points_mm, d.width_um, "truth") for d in truth.scratches)
    contaminants = tuple(Contaminant(d.kind, d.points_mm, d.width_um)
                         for d in truth.objects if d.kind != "scratch")
    return SampleLabels(truth.sample_id, not scratches, scratches, contaminants, labelled_by,
                        now_utc())


def _slope_sign(sample_dir: Path, box: tuple[float, float, float, float], rois: list[int],
                origins: dict[int, tuple[float, float]], mm_per_px: tuple[float, float]
                ) -> float | None:
    """The sign of the x-y covariance of the score ridge inside ``box``, over the kept score
    maps of ``rois`` (+: the line runs top-left to bottom-right); None without score maps."""
    from edge.review import read_scores

    xs, ys, ws = [], [], []
    sx, sy = 2 * mm_per_px[0], 2 * mm_per_px[1]  # a score pixel is 2 x 2 RAW pixels
    for i in rois:
        score = read_scores(sample_dir, i)
        if score is None or i not in origins:
            continue
        ox, oy = origins[i]
        c0, c1 = int((box[0] - ox) // sx), int(math.ceil((box[2] - ox) / sx)) + 1
        r0, r1 = int((box[1] - oy) // sy), int(math.ceil((box[3] - oy) / sy)) + 1
        c0, r0 = max(c0, 0), max(r0, 0)
        sub = score[r0:r1, c0:c1]
        if sub.size < 2:
            continue
        w = np.clip(sub - (sub.min() + sub.max()) / 2, 0, None)  # the ridge, not the haze
        rr, cc = np.nonzero(w)
        xs.append(ox + (cc + c0 + 0.5) * sx)
        ys.append(oy + (rr + r0 + 0.5) * sy)
        ws.append(w[rr, cc])
    if not ws or sum(len(w) for w in ws) < 2:
        return None
    x, y, w = np.concatenate(xs), np.concatenate(ys), np.concatenate(ws)
    mx, my = np.average(x, weights=w), np.average(y, weights=w)
    return float(np.sign(np.average((x - mx) * (y - my), weights=w)))


def from_verdict(sample_dir: str | Path) -> tuple[list[Scratch], dict]:
    """The network's kept defects of a sample kept for review (:mod:`edge.review`) as scratch
    labels to confirm, and the verdict record.

    A defect is a box in sample mm, not a line: the proposal is the box's diagonal that the
    kept score map's ridge follows (the sign of its x-y covariance; the longer side through the
    centre when no score map was kept). The network does not measure widths: the proposal is
    one RAW pixel's footprint, which the rasteriser draws as the centre line (the recorded
    masks' rule); the operator edits it where the scratch is visibly wider."""
    from edge.recording import open_sample
    from edge.review import VERDICT

    d = Path(sample_dir)
    path = d / VERDICT
    if not path.is_file():
        return [], {}
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        defects = [(tuple(map(float, x["box_mm"])), float(x["length_mm"]),
                    float(x["peak_score"]), [int(i) for i in x["rois"]])
                   for x in record.get("defects", [])]
    except (ValueError, KeyError, TypeError) as exc:
        raise SampleLabelError(f"{path}: not a kept verdict ({exc})") from None
    area = sample_area_mm(d)
    if area is None:
        return [], record
    m = open_sample(d).manifest
    origins = {r.index: tuple(r.origin_mm) for r in m.rois}
    mmx, mmy = m.mm_per_px
    width = pixel_um(d)
    out = []
    for box, length, peak, rois in defects:
        x0, y0, x1, y1 = box
        sign = _slope_sign(d, box, rois, origins, (mmx, mmy))
        if sign is None:  # no score map: along the longer side
            cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
            pts = ((x0, cy), (x1, cy)) if x1 - x0 >= y1 - y0 else ((cx, y0), (cx, y1))
        else:
            pts = ((x0, y0), (x1, y1)) if sign >= 0 else ((x0, y1), (x1, y0))
        out.append(Scratch(pts, width, "network",
                           f"network: {length:.2f} mm long, peak score {peak:.2f}"))
    return out, record
