"""The pictures of the web page: a verdict drawn in sample millimetres (for an SVG), and the
kept frames of a sample as PNGs (its RoIs with the kept scratches outlined, the six states of
one RoI side by side).

Choices: the map of a verdict needs nothing but the verdict (every verdict has one, kept or
not, the scripted inspector's too), so the live page draws one per verdict for free. The PNGs
are made from a sample kept for review (:mod:`edge.review`: the RAW frames and score maps),
with the pictures of :mod:`edge.overlay` and :mod:`edge.preview`, when a browser asks, in the
page's thread; the last few are cached. Their width is bounded (``ROI_PANEL``,
``STATES_PANEL`` pixels a panel), so a head with large frames sends pictures of the same size.
"""

from __future__ import annotations

import io
import json
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROI_PANEL = 360  # px per panel of a RoI picture (two panels: brightest state, score)
STATES_PANEL = 300  # px per state of the six-state picture
CACHED = 24


@dataclass(frozen=True)
class Box:
    x: float
    y: float
    w: float
    h: float
    label: str = ""


@dataclass(frozen=True)
class Map:
    """A verdict in sample mm: its RoIs (flagged or not) and its defects, for an SVG."""

    width: float
    height: float
    rois: tuple[tuple[Box, bool], ...]
    defects: tuple[Box, ...]

    @property
    def unit(self) -> float:
        """A hundredth of the map's larger side: text and lines scale with the sample."""
        return max(self.width, self.height) / 100


def verdict_map(record: dict, roi_mm: tuple[float, float]) -> Map:
    """The map of a verdict record (:meth:`edge.verdict.Verdict.to_dict`); ``roi_mm`` is one
    RoI's size. Defects are drawn at least 0.6 mm wide so a hairline stays visible."""
    w, h = roi_mm
    flagged = set(record.get("flagged_rois") or [])
    rois = tuple((Box(r["origin_mm"][0], r["origin_mm"][1], w, h, str(r["index"])),
                  r["index"] in flagged) for r in record.get("rois") or [])
    defects = []
    for d in record.get("defects") or []:
        x0, y0, x1, y1 = d["box_mm"]
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        bw, bh = max(x1 - x0, 0.6), max(y1 - y0, 0.6)
        defects.append(Box(cx - bw / 2, cy - bh / 2, bw, bh,
                           f"{d['length_mm']:.1f} mm, {d['peak_score']:.2f}"))
    extent = [(b.x + b.w, b.y + b.h) for b, _ in rois] + [(b.x + b.w, b.y + b.h)
                                                          for b in defects]
    width = max([x for x, _ in extent], default=w)
    height = max([y for _, y in extent], default=h)
    return Map(round(width, 3), round(height, 3), rois, tuple(defects))


def _png(image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=False, compress_level=3)
    return out.getvalue()


def _defects_in(folder: Path, index: int, origin_mm, mm_per_px) -> list:
    """The kept verdict's defects that RoI ``index`` saw, with their box in its RAW px."""
    from edge.review import VERDICT
    from edge.verdict import Defect

    record = json.loads((folder / VERDICT).read_text(encoding="utf-8"))
    out = []
    for d in record.get("defects") or []:
        if index not in d.get("rois", []):
            continue
        x0, y0, x1, y1 = d["box_mm"]
        ox, oy = origin_mm
        box = ((x0 - ox) / mm_per_px[0], (y0 - oy) / mm_per_px[1],
               (x1 - ox) / mm_per_px[0], (y1 - oy) / mm_per_px[1])
        out.append(Defect(tuple(d["box_mm"]), float(d["length_mm"]), float(d["peak_score"]),
                          (index,), tuple(int(round(v)) for v in box)))
    return out


def roi_picture(folder: Path, index: int, t_low: float) -> bytes:
    """RoI ``index`` of a kept sample: the brightest of its states beside its score map, the
    kept scratches boxed with their length (:func:`edge.overlay.roi_overlay`)."""
    from edge.overlay import roi_overlay
    from edge.recording import open_sample
    from edge.review import read_scores
    from edge.verdict import RoiResult

    rec = open_sample(folder)
    m = rec.manifest
    entry = next(r for r in m.rois if r.index == index)
    frames = rec.frames(index)
    score = read_scores(folder, index)
    if score is None:  # kept without its score map: the left panel alone says something
        score = np.full((frames.shape[1] // 2, frames.shape[2] // 2), -1.0, np.float32)
    defects = _defects_in(folder, index, entry.origin_mm, m.mm_per_px)
    result = RoiResult(index, tuple(entry.origin_mm), defects, {}, 0, False, [], score)
    image = roi_overlay(frames, result, m.camera.bayer_pattern, (1 << m.camera.bit_depth) - 1,
                        t_low, panel_width=ROI_PANEL)
    return _png(image)


def states_picture(folder: Path, index: int) -> bytes:
    """The six states of RoI ``index`` side by side, the kept scratches outlined
    (:func:`edge.preview.states_panel`)."""
    from edge.preview import Outline, states_panel
    from edge.recording import open_sample

    rec = open_sample(folder)
    m = rec.manifest
    entry = next(r for r in m.rois if r.index == index)
    outlines = [Outline("scratch", d.box_px)
                for d in _defects_in(folder, index, entry.origin_mm, m.mm_per_px)]
    image = states_panel(rec.frames(index), m.camera.bayer_pattern,
                         (1 << m.camera.bit_depth) - 1, m.illumination_deg, outlines,
                         panel_width=STATES_PANEL)
    # without its last row: the legend there names ground-truth kinds, and these outlines are
    # the network's kept scratches
    return _png(image.crop((0, 0, image.width, image.height - 22)))


class Cache:
    """The last ``size`` pictures, keyed by what they show and when the sample was written
    (a sample kept again under the same name is drawn again)."""

    def __init__(self, size: int = CACHED) -> None:
        self.size = size
        self._items: OrderedDict[tuple, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple, make) -> bytes:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        data = make()
        with self._lock:
            self._items[key] = data
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return data
