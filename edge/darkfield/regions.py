"""Positive windows merged into regions, each with its box and contour.

* **Regions** (the paper: "the contour of all sliding windows containing scratches is the
  localized defect area"): the union of the positive windows' footprints, cut into cells by all
  window edges (128 px cells, narrower next to a flush window), split into connected components
  with 4-connectivity: windows that overlap or share an edge are one region, windows that touch
  only at a corner are two. Each region has its box, its positive-window count and the highest
  window probability in it.
* **Contour:** a boundary trace of the region's cells: a polygon along cell edges, clockwise on
  screen, collinear vertices dropped; at a corner where two cells of the region touch only
  diagonally the trace turns towards the region, which keeps it consistent with 4-connectivity.
  Holes (windows not positive, enclosed by positive ones) are traced too and listed apart.
  Coordinates are pixel edges: ``x = 256`` is the right edge of pixel 255, so a box is
  ``(x0, y0, x1, y1)`` with ``x1 - x0`` its width. With a scale (mm per px) boxes are also given
  in mm, in the image's own frame (origin at its top-left corner).

The components are scipy.ndimage's ``label``. The trace is ours: no well-kept library draws a
boundary along cell edges (scikit-image's ``find_contours``, marching squares, cuts every corner
diagonally; OpenCV's ``findContours`` follows the centres of the boundary cells), and the overlay
and the JSON want the windows' own edges.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from edge.darkfield.windows import WINDOW

Point = tuple[int, int]
_FOUR = ndimage.generate_binary_structure(2, 1)  # edge neighbours only


@dataclass(frozen=True)
class Region:
    """Positive windows merged: box and contour in px (pixel edges), window count, peak."""

    windows: int
    max_probability: float
    box_px: tuple[int, int, int, int]
    contour_px: tuple[Point, ...]
    holes_px: tuple[tuple[Point, ...], ...] = ()

    def box_mm(self, mm_per_px: tuple[float, float] | None) -> tuple[float, ...] | None:
        if mm_per_px is None:
            return None
        sx, sy = mm_per_px
        x0, y0, x1, y1 = self.box_px
        return (x0 * sx, y0 * sy, x1 * sx, y1 * sy)

    def to_dict(self, mm_per_px: tuple[float, float] | None = None) -> dict:
        mm = self.box_mm(mm_per_px)
        return {"windows": self.windows, "max_probability": round(self.max_probability, 6),
                "box_px": list(self.box_px),
                "box_mm": None if mm is None else [round(v, 4) for v in mm],
                "contour_px": [list(p) for p in self.contour_px],
                "holes_px": [[list(p) for p in hole] for hole in self.holes_px]}


def _edges(origins: Sequence[int], window: int) -> list[int]:
    return sorted(set(origins) | {o + window for o in origins})


_RIGHT_TURN = {(1, 0): (0, 1), (0, 1): (-1, 0), (-1, 0): (0, -1), (0, -1): (1, 0)}


def _trace(mask: np.ndarray) -> list[list[Point]]:
    """Boundary loops of a boolean cell grid, in vertex (cell-edge index) coordinates, each
    clockwise on screen around the cells (holes the other way), collinear vertices dropped."""
    rows, cols = mask.shape
    padded = np.zeros((rows + 2, cols + 2), bool)
    padded[1:-1, 1:-1] = mask
    out: dict[Point, list[Point]] = {}

    def edge(a: Point, b: Point) -> None:
        out.setdefault(a, []).append(b)

    for r, c in zip(*np.nonzero(mask), strict=True):
        pr, pc = r + 1, c + 1
        if not padded[pr - 1, pc]:
            edge((c, r), (c + 1, r))
        if not padded[pr, pc + 1]:
            edge((c + 1, r), (c + 1, r + 1))
        if not padded[pr + 1, pc]:
            edge((c + 1, r + 1), (c, r + 1))
        if not padded[pr, pc - 1]:
            edge((c, r + 1), (c, r))
    loops = []
    while out:
        # start where the way on is unambiguous, so the corner rule below decides every turn
        single = [v for v, targets in out.items() if len(targets) == 1]
        start = min(single) if single else min(out)
        loop, here, heading = [start], start, None
        while True:
            targets = out[here]
            nxt = targets[0]
            if len(targets) > 1 and heading is not None:
                # two cells touching only at this corner: turn towards the cell we came along
                want = _RIGHT_TURN[heading]
                nxt = next((t for t in targets if (t[0] - here[0], t[1] - here[1]) == want),
                           nxt)
            targets.remove(nxt)
            if not targets:
                del out[here]
            heading = (nxt[0] - here[0], nxt[1] - here[1])
            here = nxt
            if here == start:
                break
            loop.append(here)
        loops.append(_simplify(loop))
    return loops


def _simplify(loop: list[Point]) -> list[Point]:
    n = len(loop)
    keep = []
    for i, (x, y) in enumerate(loop):
        (ax, ay), (bx, by) = loop[i - 1], loop[(i + 1) % n]
        if (x - ax) * (by - y) - (y - ay) * (bx - x) != 0:
            keep.append((x, y))
    return keep


def _area2(poly: Sequence[Point]) -> int:
    return sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(poly, [*poly[1:], poly[0]],
                                                                 strict=True))


def merge_windows(positive: np.ndarray, probability: np.ndarray, ys: Sequence[int],
                  xs: Sequence[int], window: int = WINDOW) -> list[Region]:
    """Regions of the positive windows (``positive`` and ``probability``: rows ``ys`` x columns
    ``xs`` of window origins), ordered by their top-left corner."""
    ye, xe = _edges(ys, window), _edges(xs, window)
    yi = {v: i for i, v in enumerate(ye)}
    xi = {v: i for i, v in enumerate(xe)}
    cells = np.zeros((len(ye) - 1, len(xe) - 1), bool)
    wins = list(zip(*np.nonzero(positive), strict=True))
    for r, c in wins:
        cells[yi[ys[r]]:yi[ys[r] + window], xi[xs[c]]:xi[xs[c] + window]] = True
    labels, count = ndimage.label(cells, structure=_FOUR)
    members: dict[int, list[tuple[int, int]]] = {k: [] for k in range(1, count + 1)}
    for r, c in wins:
        members[int(labels[yi[ys[r]], xi[xs[c]]])].append((r, c))
    regions = []
    for k, own in members.items():
        loops = [[(xe[vx], ye[vy]) for vx, vy in loop] for loop in _trace(labels == k)]
        loops.sort(key=_area2, reverse=True)
        x0 = min(xs[c] for _, c in own)
        y0 = min(ys[r] for r, _ in own)
        x1 = max(xs[c] for _, c in own) + window
        y1 = max(ys[r] for r, _ in own) + window
        regions.append(Region(
            windows=len(own), max_probability=float(max(probability[r, c] for r, c in own)),
            box_px=(x0, y0, x1, y1), contour_px=tuple(loops[0]),
            holes_px=tuple(tuple(h) for h in loops[1:])))
    regions.sort(key=lambda g: (g.box_px[1], g.box_px[0]))
    return regions
