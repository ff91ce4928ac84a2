"""Fused correction + space-to-depth, written straight into the engine's batch of tiles.

Formula (1) of the glass paper with q = 2, for the stack ``I`` of 6 RAW frames indexed
``I[row, column, state]``::

    S[i, j, k] = I[2i + k % 2, 2j + (k // 2) % 2, k // 4]        k = 0..23

so channel ``k`` holds state ``k // 4`` at the Bayer site (row offset ``k % 2``, column offset
``(k // 2) % 2``). Outputs are channel-first (``24 x H/2 x W/2``), as the network takes them.

In the same pass each RAW value is corrected: ``(raw - dark) * gain / (2**bit_depth - 1)``,
with the dark level and the flat-field gain each one number per state, one map per state or one
map for every state (full resolution, from the calibration file). Writing float16 halves what the
engine copies in; Numba has no float16 type on the CPU, so the kernel asks LLVM for the
conversion directly (round to nearest even, as NumPy does; the tests compare bit for bit).

Defective pixels (the calibration file's hot, dead and stuck pixels; :func:`defect_table`) are
replaced in the same call, in every state: a listed pixel takes the **mean of the corrected values
of its nearest neighbours at the same Bayer site**, i.e. the 4 RAW pixels at distance 2 along its
row and column (above, below, left, right in the RAW grid). Why these: they are the pixels of the
same colour *and* of the same space-to-depth channel (one half-resolution pixel away in that
channel's plane), so Gr and Gb are never mixed and each channel is filled from its own plane; and
each neighbour is corrected with its own dark level and gain (a hot pixel's own dark or gain
value means nothing). Why the mean, not the median: of 4 values the median is the mean of the
middle two, and what a repair must not erase is a thin scratch crossing the pixel, which lights 2
of the 4 (the mean keeps half its contrast, a median over the 8 same-site neighbours would drop
it); outliers among the neighbours are other defects, and those are left out explicitly.
Neighbours outside the frame or themselves listed are left out; when none of the 4 is usable, the
4 diagonal same-site pixels at (+-2, +-2) are used; when none of those either (a large cluster),
the pixel is 0 (the dark level). The value depends only on the frames and the calibration, never
on the tile, so a pixel in an overlap is repaired identically in every tile that holds it.

Where: inside the same parallel pass, one output row behind. A step that has written output row
``i`` of a state repairs the listed pixels of row ``i - 1`` (RAW rows ``2i - 2`` and ``2i - 1``),
whose neighbours (RAW rows up to ``2i + 1``) it has all just read, into the channel rows it has
just written, so the repair reads and writes the cache, not memory; the last row of each block of
``_BLOCK`` rows is repaired after the block. A separate function is called, and only for rows
that hold a listed pixel, so the row loops stay as they are without defects (the plain pass
measured as fast; issue 15 found the row loops 15-20 % slower in-cache when repair code was
written into their body). Cost on the 2-core x86 test machine: about 50 ns per listed pixel and
state on one thread; 0.13-0.18 ms on two for 1e-4 of a full frame's pixels (1093 pixels, 6
states), about 1 % of the float32 pass. The first version repaired in a second parallel loop over
(state, defect) after the pass: 170 ns per pixel and state on one thread, each a few cache misses
in 131 MB of frames, and 0.7-1.0 ms on two in a real call (0.2-0.3 ms when that loop was timed
alone over and over, its few thousand cache lines then staying in the L3 cache).

Speed: each parallel step takes one state's two RAW rows under an output row (all 6 states when
a map of one plane serves them, so each of its rows is fetched from memory once), reads each row
once from its start, both pixels of every Bayer pair in the same loop, and writes the 4 channel
rows they make. LLVM then vectorises every loop: 8-pixel loads and shuffles, vcvtdq2ps, and for
float16 one vcvtps2ph per 8 pixels (x86 F16C; fcvtn on ARMv8). Why this shape: the first version
wrote all 24 channel rows of an output row in one step, each channel's loop reading every other
pixel of a RAW row at ``2 * (x0 + j) + dx``; Numba's negative-index check on that offset index and
the lone member of a stride-2 access left LLVM (Numba 0.68, llvmlite 0.50; Numba 0.60's LLVM 14
vectorised neither loop) with a scalar float32 loop, one vcvtsi2ss per pixel, and a float16 loop
that gathered 8 pixels with 8 vpinsrw. On the 2-core test machine (``benchmarks/space_to_depth.py``)
that was 3.0-3.4 x NumPy and 1.5-1.7 x the copy floor in float32, 1.9-2.7 x and 1.9-2.6 x in
float16; now 5-6 x NumPy and 0.8-1.0 x the copy floor in float32, 6.5-8.5 x and 0.6-0.8 x in
float16, and 3-5 x faster than before with a dark and a gain map.

Tiles: the half-resolution map is cut into ``tile x tile`` tiles that overlap by at least
``overlap`` pixels, the last tile of a row or column aligned to the map's edge (tiles only overflow
when the map is smaller than one tile; the overflow is zero). Stitching takes the centre crop:
each output pixel comes from the one tile in which it lies farthest from the edge (the cut is
the middle of each overlap). Why not blend: a U-Net's output near a tile edge has seen less
context and is the least reliable (the glass paper overlaps its RoIs for the same reason), so
averaging would mix the worst prediction into the best; a crop is also an exact copy, so tiling
and stitching an identity map gives the map back bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba as nb
import numpy as np
from llvmlite import ir
from numba.core import types
from numba.extending import intrinsic

from edge.config import N_STATES

CHANNELS = 4 * N_STATES
# output rows per parallel step: the repair of a block's last row reads a row that is not yet
# in the cache, so not too few; a full map still gives 6 * 98 steps to share among threads
_BLOCK = 16


class ShapeError(ValueError):
    """Input that the kernel cannot take; the message says what was expected."""


@dataclass(frozen=True)
class TileGrid:
    """Where the tiles of a half-resolution map of ``height x width`` lie."""

    height: int
    width: int
    tile: int
    overlap: int
    ys: np.ndarray  # top row of each tile row
    xs: np.ndarray  # left column of each tile column

    @property
    def count(self) -> int:
        return self.ys.size * self.xs.size

    def origins(self) -> np.ndarray:
        """(count, 2) top-left corners, row-major: tile n is (ys[n // nx], xs[n % nx])."""
        yy, xx = np.meshgrid(self.ys, self.xs, indexing="ij")
        return np.stack([yy.ravel(), xx.ravel()], axis=1).astype(np.int64)

    def cuts(self, axis: int) -> np.ndarray:
        """Boundaries of the region each tile keeps when stitching, along ``axis`` (0: rows)."""
        pos, size = (self.ys, self.height) if axis == 0 else (self.xs, self.width)
        mids = (pos[:-1] + self.tile + pos[1:]) // 2
        return np.concatenate([[0], mids, [size]]).astype(np.int64)


def tile_positions(size: int, tile: int, overlap: int) -> np.ndarray:
    """Starts of tiles covering ``size`` with at least ``overlap``, the last flush with the end."""
    if tile <= 0 or not 0 <= overlap < tile:
        raise ShapeError(f"tile {tile} with overlap {overlap}: need tile > 0, 0 <= overlap < tile")
    if size <= tile:
        return np.zeros(1, np.int64)
    step = tile - overlap
    n = -(-(size - tile) // step) + 1
    pos = np.arange(n, dtype=np.int64) * step
    pos[-1] = size - tile
    return pos


def plan_tiles(height: int, width: int, tile: int = 512, overlap: int = 64) -> TileGrid:
    """The tiling of a ``height x width`` half-resolution map."""
    return TileGrid(height, width, tile, overlap, tile_positions(height, tile, overlap),
                    tile_positions(width, tile, overlap))


# -- float32 -> float16 bits, round to nearest even -------------------------------------------
@intrinsic
def _half_bits(typingctx, value):
    """LLVM's fptrunc to half: one vcvtps2ph (x86 F16C) or fcvt (ARMv8) per lane, vectorised."""
    if value != types.float32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(builder.fptrunc(args[0], ir.HalfType()), ir.IntType(16))

    return types.uint16(types.float32), codegen


@nb.njit(inline="always")
def _corrected(raw, dark, gain, use_dark, use_gain, off, mul):
    """``(raw - dark - off) * (gain * mul)``; a map not given is left out of the arithmetic, which
    is bit for bit the same as a dark of 0 and a gain of 1 (``x - 0 == x``, ``1 * m == m``)."""
    d = raw - dark if use_dark else raw
    return (d - off) * (gain * mul if use_gain else mul)


@nb.njit(inline="always")
def _value(frames, dark_map, gain_map, use_dark, use_gain, f, sy, sx, off, mul):
    """One corrected RAW pixel; a map of one plane serves every state."""
    fd = f if dark_map.shape[0] > 1 else 0
    fg = f if gain_map.shape[0] > 1 else 0
    return _corrected(np.float32(frames[f, sy, sx]), dark_map[fd, sy, sx], gain_map[fg, sy, sx],
                      use_dark, use_gain, off, mul)


@nb.njit(inline="always")
def _repaired(frames, dark_map, gain_map, use_dark, use_gain, f, sy, sx, off, mul, nb_dy, nb_dx,
              nb_n, d):
    """Mean of the corrected values of defect ``d``'s usable neighbours (0 when it has none)."""
    n = nb_n[d]
    if n == 0:
        return np.float32(0.0)
    acc = np.float32(0.0)
    for m in range(n):
        acc += _value(frames, dark_map, gain_map, use_dark, use_gain, f, sy + nb_dy[d, m],
                      sx + nb_dx[d, m], off, mul)
    return acc / np.float32(n)


@nb.njit(inline="always")
def _s2d_rows(frames, off, mul, dark_map, gain_map, use_dark, use_gain, n, f, i, gy, x0, jmax, tw,
              out32, out16, half):
    """The 4 channel rows of state ``f`` at output row ``i`` of tile ``n``."""
    fd = f if dark_map.shape[0] > 1 else 0
    fg = f if gain_map.shape[0] > 1 else 0
    for r in range(2):  # row offset of the Bayer site
        k = 4 * f + r  # column offset 0; k + 2: column offset 1
        if jmax > 0:
            sy = 2 * gy + r
            # slices: a row that starts at 0, so the loops index without offsets (an offset
            # index costs Numba's negative-index check per element and the vectorisation)
            src = frames[f, sy, 2 * x0:2 * (x0 + jmax)]
            dk = dark_map[fd, sy, 2 * x0:2 * (x0 + jmax)] if use_dark else dark_map[0, 0]
            gn = gain_map[fg, sy, 2 * x0:2 * (x0 + jmax)] if use_gain else gain_map[0, 0]
            if half:
                a = out16[n, k, i]
                b = out16[n, k + 2, i]
                for j in range(jmax):
                    e = 2 * j
                    a[j] = _half_bits(_corrected(np.float32(src[e]), dk[e], gn[e], use_dark,
                                                 use_gain, off, mul))
                    b[j] = _half_bits(_corrected(np.float32(src[e + 1]), dk[e + 1],
                                                 gn[e + 1], use_dark, use_gain, off, mul))
            else:
                a = out32[n, k, i]
                b = out32[n, k + 2, i]
                for j in range(jmax):
                    e = 2 * j
                    a[j] = _corrected(np.float32(src[e]), dk[e], gn[e], use_dark, use_gain,
                                      off, mul)
                    b[j] = _corrected(np.float32(src[e + 1]), dk[e + 1], gn[e + 1],
                                      use_dark, use_gain, off, mul)
        if jmax < tw:
            if half:
                out16[n, k, i, jmax:] = 0
                out16[n, k + 2, i, jmax:] = 0
            else:
                out32[n, k, i, jmax:] = 0
                out32[n, k + 2, i, jmax:] = 0


@nb.njit(cache=True, nogil=True)
def _repair_rows(frames, off, mul, dark_map, gain_map, use_dark, use_gain, n, f, i, gy, x0, jmax,
                 out32, out16, half, row_ptr, cols, nb_dy, nb_dx, nb_n):
    """The defective pixels of state ``f`` in the 2 RAW rows of output row ``i`` of tile ``n``,
    written over what :func:`_s2d_rows` has just written there."""
    for sy in range(2 * gy, 2 * gy + 2):
        for d in range(row_ptr[sy], row_ptr[sy + 1]):
            sx = cols[d]
            j = (sx >> 1) - x0
            if 0 <= j < jmax:
                k = 4 * f + 2 * (sx & 1) + (sy & 1)
                v = _repaired(frames, dark_map, gain_map, use_dark, use_gain, f, sy, sx, off, mul,
                              nb_dy, nb_dx, nb_n, d)
                if half:
                    out16[n, k, i, j] = _half_bits(v)
                else:
                    out32[n, k, i, j] = v


@nb.njit(cache=True, nogil=True, parallel=True)
def _s2d(frames, offset, scale, dark_map, gain_map, use_dark, use_gain, ys, xs, th, tw, h2, w2,
         out32, out16, half, group, repair, row_ptr, cols, nb_dy, nb_dx, nb_n):
    """out[n, k, i, j] = corrected S[ys[n//nx] + i, xs[n%nx] + j, k]; zero outside the map.

    Writes ``out32`` (float32), or ``out16`` (float16 bits as uint16) when ``half``. Parallel
    over (tile, group of ``group`` states, block of ``_BLOCK`` output rows); for each row and each
    state of its group a step reads the two RAW rows that the output row covers, each once and
    whole (both pixels of every Bayer pair in the same loop), and writes the 4 channel rows they
    make; then it repairs the defective pixels of the row before, whose neighbours it has all
    just read (see the module docstring).
    """
    nx = xs.shape[0]
    n_blocks = (th + _BLOCK - 1) // _BLOCK
    per_tile = (N_STATES // group) * n_blocks
    for q in nb.prange(ys.shape[0] * nx * per_tile):
        n = q // per_tile
        g = (q - n * per_tile) // n_blocks
        b = q - n * per_tile - g * n_blocks
        x0 = xs[n % nx]
        i0 = b * _BLOCK
        i1 = min(i0 + _BLOCK, th)
        for i in range(i0, i1 + 1):
            gy = ys[n // nx] + i
            if i < i1:
                jmax = min(tw, w2 - x0) if gy < h2 else 0  # columns inside the map
                for f in range(g * group, (g + 1) * group):
                    _s2d_rows(frames, offset[f], scale[f], dark_map, gain_map, use_dark,
                              use_gain, n, f, i, gy, x0, jmax, tw, out32, out16, half)
            gy -= 1
            if repair and i > i0 and gy < h2 and row_ptr[2 * gy] < row_ptr[2 * gy + 2]:
                jmax = min(tw, w2 - x0)
                for f in range(g * group, (g + 1) * group):
                    _repair_rows(frames, offset[f], scale[f], dark_map, gain_map, use_dark,
                                 use_gain, n, f, i - 1, gy, x0, jmax, out32, out16, half,
                                 row_ptr, cols, nb_dy, nb_dx, nb_n)


# same-site neighbours of a defective pixel: the 4 at distance 2 along its row and column, and
# when none of those is usable the 4 diagonal ones (see the module docstring)
_AXIAL = ((-2, 0), (2, 0), (0, -2), (0, 2))
_DIAGONAL = ((-2, -2), (-2, 2), (2, -2), (2, 2))


@dataclass(frozen=True)
class DefectTable:
    """Defective RAW pixels of a ``height x width`` frame, ready for the kernel.

    ``rows``/``cols`` sorted by row, then column; ``nb_dy``/``nb_dx`` ``(n, 4)`` the offsets of
    each defect's usable neighbours, the first ``nb_n`` of them; ``row_ptr`` ``(height + 1,)``:
    the defects of RAW row ``y`` are ``row_ptr[y]:row_ptr[y + 1]``.
    """

    height: int
    width: int
    rows: np.ndarray
    cols: np.ndarray
    nb_dy: np.ndarray
    nb_dx: np.ndarray
    nb_n: np.ndarray
    row_ptr: np.ndarray

    @property
    def count(self) -> int:
        return int(self.rows.size)


def defect_table(rows, cols, height: int, width: int) -> DefectTable:
    """The kernel's table of the defective pixels at ``(rows[i], cols[i])`` (RAW coordinates)."""
    r = np.asarray(rows).astype(np.int64, copy=False).ravel()
    c = np.asarray(cols).astype(np.int64, copy=False).ravel()
    if r.shape != c.shape:
        raise ShapeError(f"defective pixels: {r.size} rows but {c.size} columns")
    if r.size and (r.min() < 0 or r.max() >= height or c.min() < 0 or c.max() >= width):
        raise ShapeError(f"defective pixels must lie inside the {width} x {height} frame")
    key = r * width + c
    order = np.argsort(key, kind="stable")
    r, c, key = r[order], c[order], key[order]
    if key.size and (np.diff(key) == 0).any():
        dup = int(key[1:][np.diff(key) == 0][0])
        raise ShapeError(f"defective pixel (row {dup // width}, column {dup % width}) is listed "
                         "twice")
    nb_dy = np.zeros((r.size, 4), np.int64)
    nb_dx = np.zeros((r.size, 4), np.int64)
    nb_n = np.zeros(r.size, np.int64)
    for offsets in (_AXIAL, _DIAGONAL):
        todo = nb_n == 0
        for dy, dx in offsets:
            y, x = r + dy, c + dx
            ok = todo & (y >= 0) & (y < height) & (x >= 0) & (x < width)
            ok[ok] = ~np.isin(y[ok] * width + x[ok], key)
            idx = np.flatnonzero(ok)
            nb_dy[idx, nb_n[idx]] = dy
            nb_dx[idx, nb_n[idx]] = dx
            nb_n[idx] += 1
    row_ptr = np.searchsorted(r, np.arange(height + 1)).astype(np.int64)
    return DefectTable(height, width, r, c, nb_dy, nb_dx, nb_n, row_ptr)


_NO_DEFECTS = defect_table([], [], 0, 0)  # what the kernel gets when no pixel is listed


def _per_state(value, name: str, frames_shape: tuple[int, ...]):
    """-> (per-state scalars (6,) float32, map (6, H, W) or (1, H, W) float32, or None).

    One map for every state ``(H, W)`` becomes a (1, H, W) view of it (no copy), which the kernel
    reads for every state.
    """
    if value is None:
        return None, None
    arr = np.asarray(value, dtype=np.float32)
    if arr.ndim == 0:
        return np.full(N_STATES, arr, np.float32), None
    if arr.shape == (N_STATES,):
        return arr, None
    if arr.shape == frames_shape:
        return None, np.ascontiguousarray(arr)
    if arr.shape == frames_shape[1:]:
        return None, np.ascontiguousarray(arr)[None]
    raise ShapeError(
        f"{name} must be one number, one per state ({N_STATES},), one map per state "
        f"{frames_shape} or one map for every state {frames_shape[1:]}; got shape {arr.shape}"
    )


def _check_frames(frames: np.ndarray) -> tuple[int, int]:
    if not isinstance(frames, np.ndarray) or frames.dtype != np.uint16:
        got = getattr(frames, "dtype", type(frames).__name__)
        raise ShapeError(f"frames must be a uint16 array, got {got}")
    if frames.ndim != 3 or frames.shape[0] != N_STATES:
        raise ShapeError(f"frames must be ({N_STATES}, H, W), got shape {frames.shape}")
    _, h, w = frames.shape
    if h < 2 or w < 2 or h % 2 or w % 2:
        raise ShapeError(
            f"frames must have an even height and width (whole 2 x 2 Bayer cells), got {h} x {w}"
        )
    return h // 2, w // 2


def _defects(defects, frames_shape: tuple[int, ...]) -> DefectTable | None:
    _, h, w = frames_shape
    if defects is None:
        return None
    if not isinstance(defects, DefectTable):
        rows, cols = defects
        return defect_table(rows, cols, h, w)
    if (defects.height, defects.width) != (h, w):
        raise ShapeError(f"defect table is for {defects.width} x {defects.height} frames, got "
                         f"{w} x {h}")
    return defects


def _run(frames, grid_ys, grid_xs, th, tw, dark, gain, bit_depth, dtype, out, defects):
    h2, w2 = _check_frames(frames)
    table = _defects(defects, frames.shape)
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float16):
        raise ShapeError(f"output dtype must be float32 or float16, got {dtype}")
    if not 1 <= bit_depth <= 16:
        raise ShapeError(f"bit_depth must be 1..16, got {bit_depth}")
    dark_s, dark_m = _per_state(dark, "dark", frames.shape)
    gain_s, gain_m = _per_state(gain, "gain", frames.shape)
    norm = np.float32(1.0 / ((1 << bit_depth) - 1))
    offset = dark_s if dark_s is not None else np.zeros(N_STATES, np.float32)
    scale = (gain_s if gain_s is not None else np.ones(N_STATES, np.float32)) * norm
    # a map not given: a one-pixel stand-in that the kernel never reads
    dummy = np.zeros((1, 1, 1), np.float32)
    maps = (dark_m if dark_m is not None else dummy, gain_m if gain_m is not None else dummy,
            dark_m is not None, gain_m is not None)
    shape = (grid_ys.size * grid_xs.size, CHANNELS, th, tw)
    if out is None:
        out = np.empty(shape, dtype)
    elif out.shape != shape or out.dtype != dtype or not out.flags.c_contiguous:
        raise ShapeError(f"out must be a C-contiguous {dtype} array of shape {shape}, "
                         f"got {out.dtype} {out.shape}")
    half = dtype == np.float16
    out32 = np.zeros((1, 1, 1, 1), np.float32) if half else out
    out16 = out.view(np.uint16) if half else np.zeros((1, 1, 1, 1), np.uint16)
    # with a map of one plane for every state, all 6 states of an output row in one step, so each
    # row of that map comes from memory once and from the cache for the other 5 (a third less
    # time); otherwise one state per step: fewer rows streamed at once, 5-15 % faster
    shared = any(m is not None and m.shape[0] == 1 for m in (dark_m, gain_m))
    group = N_STATES if shared else 1
    if table is None or not table.count:
        table = _NO_DEFECTS
    _s2d(frames, offset, scale, *maps, grid_ys, grid_xs, th, tw, h2, w2, out32, out16, half,
         group, table.count > 0, table.row_ptr, table.cols, table.nb_dy, table.nb_dx, table.nb_n)
    return out


def space_to_depth(frames: np.ndarray, dark=None, gain=None, bit_depth: int = 12,
                   dtype=np.float32, out: np.ndarray | None = None,
                   defects: DefectTable | tuple | None = None) -> np.ndarray:
    """The whole corrected 24-channel map, ``(24, H/2, W/2)``.

    ``defects``: a :class:`DefectTable`, or ``(rows, cols)`` of the defective RAW pixels, replaced
    in every state (see the module docstring); None: none.
    """
    h2, w2 = _check_frames(frames)
    if out is not None:
        out = out.reshape(1, *out.shape) if out.ndim == 3 else out
    zero = np.zeros(1, np.int64)
    return _run(frames, zero, zero, h2, w2, dark, gain, bit_depth, dtype, out, defects)[0]


def space_to_depth_tiles(frames: np.ndarray, grid: TileGrid, dark=None, gain=None,
                         bit_depth: int = 12, dtype=np.float32,
                         out: np.ndarray | None = None,
                         defects: DefectTable | tuple | None = None) -> np.ndarray:
    """The corrected map cut into the grid's tiles: ``(grid.count, 24, tile, tile)``."""
    h2, w2 = _check_frames(frames)
    if (grid.height, grid.width) != (h2, w2):
        raise ShapeError(f"tile grid is for a {grid.height} x {grid.width} map, the frames give "
                         f"{h2} x {w2}")
    return _run(frames, grid.ys, grid.xs, grid.tile, grid.tile, dark, gain, bit_depth, dtype, out,
                defects)


def stitch(tiles: np.ndarray, grid: TileGrid, out: np.ndarray | None = None) -> np.ndarray:
    """Per-tile maps ``(count, tile, tile)`` (or ``(count, 1, tile, tile)``) back into one map."""
    t = tiles[:, 0] if tiles.ndim == 4 and tiles.shape[1] == 1 else tiles
    if t.shape != (grid.count, grid.tile, grid.tile):
        raise ShapeError(f"tiles must be ({grid.count}, {grid.tile}, {grid.tile}) for this grid, "
                         f"got {tiles.shape}")
    if out is None:
        out = np.empty((grid.height, grid.width), t.dtype)
    cy, cx = grid.cuts(0), grid.cuts(1)
    nx = grid.xs.size
    for n in range(grid.count):
        iy, ix = divmod(n, nx)
        y0, y1, x0, x1 = cy[iy], cy[iy + 1], cx[ix], cx[ix + 1]
        oy, ox = grid.ys[iy], grid.xs[ix]
        out[y0:y1, x0:x1] = t[n, y0 - oy:y1 - oy, x0 - ox:x1 - ox]
    return out
