"""DBSCAN in 2-D on a uniform grid, with scikit-learn's semantics.

Semantics (as ``sklearn.cluster.DBSCAN`` with the Euclidean metric and exact distances, i.e. its
tree algorithms): a point is *core* when at least ``min_samples`` points, itself included, lie
within ``eps`` (``sqrt(dx*dx + dy*dy) <= eps``, evaluated without the root through an exact bound
on the squared distance). Core points within ``eps`` of each other share a
cluster; a non-core point within ``eps`` of a core point is a *border* point and joins the cluster
of one such core point (scikit-learn: whichever cluster reaches it first; here: the first core
neighbour found, scanning cells in a fixed order); every other point is noise (-1).

Why a grid: the glass paper clusters on an 8x coarser map only because its DBSCAN was quadratic
(section 5.5). Here points are binned into square cells of side just under ``eps / sqrt(2)``, so
any two points of one cell are within ``eps`` of each other and all neighbours of a point lie in
the 5 x 5 block of cells around its own:

* core detection: a cell holding ``min_samples`` points makes them all core at once; otherwise
  each point counts its own cell and then real distances in the other 24 cells, stopping as soon
  as it reaches ``min_samples``;
* clusters: all core points of a cell belong together, so union-find runs over cells, joining two
  neighbouring cells when some core pair between them lies within ``eps``;
* border points: the first core point within ``eps`` in the 5 x 5 block gives the label.

Cells are indexed densely (a counting sort) when the grid is small, else by sorted cell keys and
binary search, so a tiny ``eps`` over a wide spread of points costs memory in points, not area.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numba as nb
import numpy as np

# the cell side is eps / sqrt(2) shrunk by this much, so that rounding never puts two points of
# one cell farther apart than eps
_SHRINK = 1.0 - 1e-9
_DENSE_CELLS = 1 << 22


@nb.njit(inline="always")
def _find(parent, i):
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i


@nb.njit(inline="always")
def _core_within(px, py, core, p, q0, q1, eps2):
    """Whether some core point among q0..q1-1 lies within eps of point p."""
    for q in range(q0, q1):
        if core[q]:
            ddx = px[q] - px[p]
            ddy = py[q] - py[p]
            if ddx * ddx + ddy * ddy <= eps2:
                return True
    return False


@nb.njit(inline="always")
def _cell_index(cx, cy, gx, gy, dense, keys):
    """Index of cell (cx, cy) in the cell arrays, or -1 if it is outside or empty-and-unlisted."""
    if cx < 0 or cy < 0 or cx >= gx or cy >= gy:
        return -1
    key = cy * gx + cx
    if dense:
        return key
    pos = np.searchsorted(keys, key)
    if pos < keys.shape[0] and keys[pos] == key:
        return pos
    return -1


@nb.njit(cache=True, nogil=True)
def _bin(cx, cy, gx, gy, dense):
    """Sort the points by cell: the order, cell start offsets, and (sparse) the cell keys."""
    n = cx.shape[0]
    key = cy * gx + cx
    if dense:
        n_cells = gx * gy
        start = np.zeros(n_cells + 1, np.int64)
        for i in range(n):
            start[key[i] + 1] += 1
        for c in range(n_cells):
            start[c + 1] += start[c]
        fill = start[:-1].copy()
        order = np.empty(n, np.int64)
        for i in range(n):
            order[fill[key[i]]] = i
            fill[key[i]] += 1
        return order, start, np.empty(0, np.int64)
    order = np.argsort(key, kind="mergesort")
    sorted_keys = key[order]
    n_cells = 0
    for i in range(n):
        if i == 0 or sorted_keys[i] != sorted_keys[i - 1]:
            n_cells += 1
    keys = np.empty(n_cells, np.int64)
    start = np.empty(n_cells + 1, np.int64)
    c = -1
    for i in range(n):
        if i == 0 or sorted_keys[i] != sorted_keys[i - 1]:
            c += 1
            keys[c] = sorted_keys[i]
            start[c] = i
    start[n_cells] = n
    return order, start, keys


@nb.njit(cache=True, nogil=True, parallel=True)
def _core(px, py, cell_x, cell_y, start, keys, gx, gy, dense, eps2, min_samples):
    n = px.shape[0]
    core = np.zeros(n, np.bool_)
    n_cells = start.shape[0] - 1
    for c in nb.prange(n_cells):
        a, b = start[c], start[c + 1]
        if b - a >= min_samples:
            core[a:b] = True
            continue
        for p in range(a, b):
            count = b - a  # everything in its own cell is within eps
            for dy in range(-2, 3):
                for dx in range(-2, 3):
                    if dx == 0 and dy == 0:
                        continue
                    cc = _cell_index(cell_x[p] + dx, cell_y[p] + dy, gx, gy, dense, keys)
                    if cc < 0:
                        continue
                    for q in range(start[cc], start[cc + 1]):
                        ddx = px[q] - px[p]
                        ddy = py[q] - py[p]
                        if ddx * ddx + ddy * ddy <= eps2:
                            count += 1
                    if count >= min_samples:
                        break
                if count >= min_samples:
                    break
            core[p] = count >= min_samples
    return core


@nb.njit(cache=True, nogil=True)
def _join(px, py, core, cell_x, cell_y, start, keys, gx, gy, dense, eps2):
    """Union-find over cells with core points; returns each cell's root (-1: no core point)."""
    n_cells = start.shape[0] - 1
    parent = np.arange(n_cells)
    has_core = np.zeros(n_cells, np.bool_)
    for c in range(n_cells):
        for p in range(start[c], start[c + 1]):
            if core[p]:
                has_core[c] = True
                break
    # The 12 cells after a cell in key order (each pair of cells once): touching ones in a first
    # pass, the farther ones in a second, when most of them are already joined through others
    # and need no pair scan.
    offsets = np.array([(1, 0), (-1, 1), (0, 1), (1, 1),
                        (2, 0), (-2, 1), (2, 1), (-2, 2), (-1, 2), (0, 2), (1, 2), (2, 2)])
    for rnd in range(2):
        for c in range(n_cells):
            if not has_core[c]:
                continue
            p0 = start[c]
            rc = _find(parent, c)
            for off in range(4 * rnd, 4 + 8 * rnd):
                dx, dy = offsets[off, 0], offsets[off, 1]
                cc = _cell_index(cell_x[p0] + dx, cell_y[p0] + dy, gx, gy, dense, keys)
                if cc < 0 or not has_core[cc]:
                    continue
                rcc = _find(parent, cc)
                if rc == rcc:
                    continue
                linked = False
                for p in range(start[c], start[c + 1]):
                    if core[p] and _core_within(px, py, core, p, start[cc], start[cc + 1], eps2):
                        linked = True
                        break
                if linked:
                    parent[max(rc, rcc)] = min(rc, rcc)
                    rc = min(rc, rcc)
    root = np.full(n_cells, -1, np.int64)
    for c in range(n_cells):
        if has_core[c]:
            root[c] = _find(parent, c)
    return root


@nb.njit(cache=True, nogil=True, parallel=True)
def _label(px, py, core, cell_x, cell_y, start, keys, gx, gy, dense, eps2, root):
    """Cluster root of each sorted point: its cell's for core points, a core neighbour's for
    border points, -1 for noise."""
    n = px.shape[0]
    n_cells = start.shape[0] - 1
    lab = np.full(n, -1, np.int64)
    for c in nb.prange(n_cells):
        for p in range(start[c], start[c + 1]):
            if core[p]:
                lab[p] = root[c]
                continue
            found = -1
            for dy in range(-2, 3):
                for dx in range(-2, 3):
                    cc = _cell_index(cell_x[p] + dx, cell_y[p] + dy, gx, gy, dense, keys)
                    if cc < 0 or root[cc] < 0:
                        continue
                    if _core_within(px, py, core, p, start[cc], start[cc + 1], eps2):
                        found = root[cc]
                        break
                if found >= 0:
                    break
            lab[p] = found
    return lab


def _check_params(eps: float, min_samples: int) -> None:
    if not (isinstance(eps, (int, float, np.floating, np.integer)) and math.isfinite(eps)
            and eps > 0):
        raise ValueError(f"eps must be a finite number > 0, got {eps!r}")
    if not isinstance(min_samples, (int, np.integer)) or min_samples < 1:
        raise ValueError(f"min_samples must be an integer >= 1, got {min_samples!r}")


def dbscan(points: np.ndarray, eps: float, min_samples: int) -> tuple[np.ndarray, np.ndarray]:
    """Cluster ``points`` (N x 2). Returns ``labels`` (N, int64; -1 noise, clusters numbered
    0.. in the order of their first point) and ``core`` (N, bool)."""
    _check_params(eps, min_samples)
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise ValueError(f"points must be an N x 2 array, got shape {pts.shape}")
    if not np.isfinite(pts).all():
        bad = int(np.flatnonzero(~np.isfinite(pts).all(axis=1))[0])
        raise ValueError(f"points must be finite; point {bad} is {pts[bad].tolist()}")
    return _cluster(np.ascontiguousarray(pts[:, 0]), np.ascontiguousarray(pts[:, 1]), eps,
                    min_samples)


def _cluster(x: np.ndarray, y: np.ndarray, eps: float, min_samples: int):
    n = x.shape[0]
    if n == 0:
        return np.empty(0, np.int64), np.empty(0, bool)
    side = eps / math.sqrt(2.0) * _SHRINK
    cx, gx = _cells(x, side, eps)
    cy, gy = _cells(y, side, eps)
    dense = gx * gy <= max(_DENSE_CELLS, 4 * n)
    order, start, keys = _bin(cx, cy, gx, gy, dense)
    px, py = x[order], y[order]
    cell_x, cell_y = cx[order], cy[order]
    eps2 = _squared_reach(float(eps))
    core_s = _core(px, py, cell_x, cell_y, start, keys, gx, gy, dense, eps2, int(min_samples))
    root = _join(px, py, core_s, cell_x, cell_y, start, keys, gx, gy, dense, eps2)
    lab_s = _label(px, py, core_s, cell_x, cell_y, start, keys, gx, gy, dense, eps2, root)
    labels = np.empty(n, np.int64)
    labels[order] = lab_s
    core = np.empty(n, bool)
    core[order] = core_s
    return _renumber(labels, start.shape[0] - 1), core


def _squared_reach(eps: float) -> float:
    """The largest double ``d2`` with ``sqrt(d2) <= eps``.

    scikit-learn compares the distance itself (a correctly rounded square root) with eps;
    comparing squared distances with this bound gives the same answer without a square root.
    """
    d2 = eps * eps
    while math.sqrt(d2) > eps:
        d2 = math.nextafter(d2, 0.0)
    while math.sqrt(math.nextafter(d2, math.inf)) <= eps:
        d2 = math.nextafter(d2, math.inf)
    return d2


def _cells(v: np.ndarray, side: float, eps: float) -> tuple[np.ndarray, int]:
    """Cell column (or row) of each coordinate, and the number of columns.

    When the points spread over far more cells than there are points (a tiny eps), empty
    stretches wider than 2 cells are shortened to 3: neighbours within 2 cells keep their exact
    offset and the rest stay out of reach, so the result is unchanged and keys fit in int64.
    """
    lo = v.min()
    with np.errstate(over="ignore"):
        span = (v.max() - lo) / side
    if not span < 2.0**62:
        raise ValueError(f"eps {eps!r} is too small for points spread over {v.max() - lo!r}")
    c = ((v - lo) / side).astype(np.int64)
    if span < max(4 * v.size, 1 << 16):
        return c, int(c.max()) + 1
    uniq, inverse = np.unique(c, return_inverse=True)
    squeezed = np.concatenate([[0], np.cumsum(np.minimum(np.diff(uniq), 3))])
    return squeezed[inverse].astype(np.int64), int(squeezed[-1]) + 1


@nb.njit(cache=True, nogil=True)
def _renumber(labels, n_roots):
    """Cluster roots (cell indexes) -> 0, 1, ... in the order of each cluster's first point."""
    rank = np.full(n_roots, -1, np.int64)
    out = np.empty_like(labels)
    k = 0
    for i in range(labels.shape[0]):
        r = labels[i]
        if r < 0:
            out[i] = -1
            continue
        if rank[r] < 0:
            rank[r] = k
            k += 1
        out[i] = rank[r]
    return out


@dataclass(frozen=True)
class MapClusters:
    """Clusters of a score map, in the (downscaled) map's pixel coordinates."""

    shape: tuple[int, int]  # of the (downscaled) map
    rows: np.ndarray  # (N,) row of each pixel >= T_low
    cols: np.ndarray  # (N,) its column
    point_labels: np.ndarray  # (N,) its cluster, -1 for noise
    pixels: np.ndarray  # (K,) pixel count of each cluster
    max_score: np.ndarray  # (K,) highest score in each cluster
    bbox: np.ndarray  # (K, 4) row0, col0, row1, col1 (inclusive) in the downscaled map
    downscale: int

    @property
    def count(self) -> int:
        return int(self.pixels.size)

    @property
    def labels(self) -> np.ndarray:
        """(h, w) int32 map: the cluster of each pixel, -1 below T_low or noise."""
        out = np.full(self.shape, -1, np.int32)
        out[self.rows, self.cols] = self.point_labels
        return out

    def bbox_full(self) -> np.ndarray:
        """Boxes in the input map's pixels: row0, col0, row1 (exclusive), col1 (exclusive)."""
        b = self.bbox.copy()
        b[:, :2] *= self.downscale
        b[:, 2:] = (b[:, 2:] + 1) * self.downscale
        return b


def max_downscale(score: np.ndarray, factor: int) -> np.ndarray:
    """Max over ``factor x factor`` blocks; a partial block at the edge takes what it has (NaN
    propagates, so the caller's NaN check still sees it)."""
    if factor == 1:
        return score
    return _max_pool(np.ascontiguousarray(score, dtype=np.float32), int(factor))


@nb.njit(cache=True, nogil=True, parallel=True)
def _max_pool(score, factor):  # pragma: no cover - compiled
    # one pass over the map (numpy's reshape-and-max made three and cost 20-60 ms a full RoI)
    h, w = score.shape
    hh, ww = (h + factor - 1) // factor, (w + factor - 1) // factor
    out = np.empty((hh, ww), np.float32)
    for i in nb.prange(hh):
        r0, r1 = i * factor, min((i + 1) * factor, h)
        for j in range(ww):
            c0, c1 = j * factor, min((j + 1) * factor, w)
            m = -np.inf
            nan = False
            for r in range(r0, r1):
                for c in range(c0, c1):
                    v = score[r, c]
                    if v != v:
                        nan = True
                    elif v > m:
                        m = v
            out[i, j] = np.nan if nan else m
    return out


@nb.njit(cache=True, nogil=True, parallel=True)
def _above(score, t_low):
    """Row and column of every pixel >= t_low, row-major; and the first NaN's flat index or -1."""
    h, w = score.shape
    counts = np.zeros(h + 1, np.int64)
    nan_row = np.full(h, -1, np.int64)
    for r in nb.prange(h):
        k = 0
        for c in range(w):
            v = score[r, c]
            if v >= t_low:
                k += 1
            elif v != v and nan_row[r] < 0:
                nan_row[r] = r * w + c
        counts[r + 1] = k
    for r in range(h):
        if nan_row[r] >= 0:
            return np.empty(0, np.int64), np.empty(0, np.int64), nan_row[r]
        counts[r + 1] += counts[r]
    rows = np.empty(counts[h], np.int64)
    cols = np.empty(counts[h], np.int64)
    for r in nb.prange(h):
        k = counts[r]
        for c in range(w):
            if score[r, c] >= t_low:
                rows[k] = r
                cols[k] = c
                k += 1
    return rows, cols, -1


@nb.njit(cache=True, nogil=True)
def _map_stats(score, rows, cols, lab, k):
    pixels = np.zeros(k, np.int64)
    max_score = np.full(k, -np.inf, np.float32)
    bbox = np.empty((k, 4), np.int64)
    bbox[:, :2] = np.iinfo(np.int64).max
    bbox[:, 2:] = -1
    for i in range(lab.shape[0]):
        j = lab[i]
        if j < 0:
            continue
        r, c = rows[i], cols[i]
        pixels[j] += 1
        max_score[j] = max(max_score[j], score[r, c])
        bbox[j, 0] = min(bbox[j, 0], r)
        bbox[j, 1] = min(bbox[j, 1], c)
        bbox[j, 2] = max(bbox[j, 2], r)
        bbox[j, 3] = max(bbox[j, 3], c)
    return pixels, max_score, bbox


def dbscan_map(score: np.ndarray, t_low: float, eps: float, min_samples: int,
               downscale: int = 1, pooled: np.ndarray | None = None) -> MapClusters:
    """Cluster the pixels of ``score`` that are >= ``t_low`` (after an optional max-downscale;
    ``pooled``: that downscaled map, already made, as a sweep over thresholds reuses it)."""
    _check_params(eps, min_samples)
    if not isinstance(downscale, (int, np.integer)) or downscale < 1:
        raise ValueError(f"downscale must be an integer >= 1, got {downscale!r}")
    if pooled is None:
        s = np.asarray(score)
        if s.ndim != 2:
            raise ValueError(f"score map must be 2-D, got shape {s.shape}")
        pooled = max_downscale(s, downscale)
    small = np.ascontiguousarray(pooled, dtype=np.float32)
    rows, cols, nan_at = _above(small, np.float32(t_low))
    if nan_at >= 0:
        r, c = divmod(int(nan_at), small.shape[1])
        raise ValueError(f"score map holds NaN (first at row {r}, column {c}"
                         f"{' of the downscaled map' if downscale > 1 else ''})")
    labels_pts, _ = _cluster(cols.astype(np.float64), rows.astype(np.float64), eps, min_samples)
    k = int(labels_pts.max()) + 1 if labels_pts.size else 0
    pixels, max_score, bbox = _map_stats(small, rows, cols, labels_pts, k)
    return MapClusters(small.shape, rows, cols, labels_pts, pixels, max_score, bbox, downscale)
