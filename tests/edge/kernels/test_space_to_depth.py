import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from edge.kernels.space_to_depth import (
    _BLOCK,
    ShapeError,
    defect_table,
    plan_tiles,
    space_to_depth,
    space_to_depth_tiles,
    stitch,
    tile_positions,
)


def literal(frames, dark=None, gain=None, bit_depth=12):
    """Formula (1), one element at a time: S[i, j, k] = I[2i + k%2, 2j + (k//2)%2, k//4]."""
    _, h, w = frames.shape
    dark = np.zeros(frames.shape) if dark is None else np.broadcast_to(
        np.asarray(dark, float).reshape((6, 1, 1) if np.ndim(dark) == 1 else np.shape(dark)),
        frames.shape)
    gain = np.ones(frames.shape) if gain is None else np.broadcast_to(
        np.asarray(gain, float).reshape((6, 1, 1) if np.ndim(gain) == 1 else np.shape(gain)),
        frames.shape)
    out = np.zeros((24, h // 2, w // 2))
    for i in range(h // 2):
        for j in range(w // 2):
            for k in range(24):
                y, x, s = 2 * i + k % 2, 2 * j + (k // 2) % 2, k // 4
                corrected = (frames[s, y, x] - dark[s, y, x]) * gain[s, y, x]
                out[k, i, j] = corrected / (2**bit_depth - 1)
    return out


even = st.integers(1, 9).map(lambda v: 2 * v)
stacks = st.tuples(even, even).flatmap(
    lambda hw: arrays(np.uint16, (6, *hw), elements=st.integers(0, 4095)))


@settings(max_examples=60, deadline=None)
@given(frames=stacks)
def test_equals_a_literal_loop_over_formula_1(frames):
    np.testing.assert_allclose(space_to_depth(frames), literal(frames), rtol=1e-6, atol=1e-7)


@settings(max_examples=40, deadline=None)
@given(frames=stacks, data=st.data())
def test_fused_correction(frames, data):
    dark = data.draw(arrays(np.float32, 6, elements=st.floats(0, 200, width=32)))
    gain = data.draw(arrays(np.float32, frames.shape, elements=st.floats(0.5, 2, width=32)))
    np.testing.assert_allclose(space_to_depth(frames, dark=dark, gain=gain),
                               literal(frames, dark, gain), rtol=1e-5, atol=1e-6)
    dmap = np.broadcast_to(dark[:, None, None], frames.shape).astype(np.float32)
    np.testing.assert_allclose(space_to_depth(frames, dark=dmap, gain=gain),
                               literal(frames, dark, gain), rtol=1e-5, atol=1e-6)


def test_one_map_for_every_state_is_the_same_map_six_times():
    rng = np.random.default_rng(8)
    frames = rng.integers(0, 4096, (6, 20, 24), dtype=np.uint16)
    level = rng.uniform(50, 70, (20, 24)).astype(np.float32)
    flat = rng.uniform(0.8, 1.2, (20, 24)).astype(np.float32)
    six = np.stack([level] * 6), np.stack([flat] * 6)
    for dtype in (np.float32, np.float16):
        assert np.array_equal(space_to_depth(frames, level, flat, dtype=dtype),
                              space_to_depth(frames, *six, dtype=dtype))
        assert np.array_equal(space_to_depth(frames, level, 1.5, dtype=dtype),
                              space_to_depth(frames, six[0], np.full(6, 1.5), dtype=dtype))
        assert np.array_equal(space_to_depth(frames, 64.0, flat, dtype=dtype),
                              space_to_depth(frames, np.full(six[0].shape, 64, np.float32),
                                             six[1], dtype=dtype))


def test_float16_is_numpys_rounding_bit_for_bit():
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 65535, (6, 32, 48), dtype=np.uint16)
    gains = np.array([1e-4, 1e-2, 1.0, 10.0, 1e3, 2e5], np.float32)  # subnormal .. overflow
    f32 = space_to_depth(frames, dark=300.0, gain=gains, bit_depth=16)
    with np.errstate(over="ignore"):
        expected = f32.astype(np.float16)
    f16 = space_to_depth(frames, dark=300.0, gain=gains, bit_depth=16, dtype=np.float16)
    assert f16.dtype == np.float16
    assert np.array_equal(f16.view(np.uint16), expected.view(np.uint16))


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_tiles_hold_the_map_and_zero_outside(dtype):
    rng = np.random.default_rng(2)
    frames = rng.integers(0, 4096, (6, 2 * 90, 2 * 70), dtype=np.uint16)
    full = space_to_depth(frames, dtype=dtype)
    grid = plan_tiles(90, 70, tile=32, overlap=8)
    tiles = space_to_depth_tiles(frames, grid, dtype=dtype)
    assert tiles.shape == (grid.count, 24, 32, 32) and tiles.dtype == dtype
    for n, (y, x) in enumerate(grid.origins()):
        assert np.array_equal(tiles[n], full[:, y:y + 32, x:x + 32])
    small = plan_tiles(10, 12, tile=32, overlap=8)  # map smaller than a tile: zero-padded
    tiny = frames[:, :20, :24].copy()
    t = space_to_depth_tiles(tiny, small, dtype=dtype)
    assert np.array_equal(t[0, :, :10, :12], space_to_depth(tiny, dtype=dtype))
    assert not t[0, :, 10:, :].any() and not t[0, :, :, 12:].any()


@settings(max_examples=60, deadline=None)
@given(h=st.integers(1, 300), w=st.integers(1, 300), tile=st.sampled_from([16, 32, 64]),
       overlap=st.integers(0, 7))
def test_tile_then_stitch_identity_gives_the_map_back(h, w, tile, overlap):
    grid = plan_tiles(h, w, tile, overlap)
    m = np.arange(h * w, dtype=np.float32).reshape(h, w)
    tiles = np.zeros((grid.count, tile, tile), np.float32)
    for n, (y, x) in enumerate(grid.origins()):
        patch = m[y:y + tile, x:x + tile]
        tiles[n, :patch.shape[0], :patch.shape[1]] = patch
    assert np.array_equal(stitch(tiles, grid), m)
    assert np.array_equal(stitch(tiles[:, None], grid), m)


def test_tile_positions_cover_with_overlap_and_end_flush():
    pos = tile_positions(1560, 512, 64)
    assert pos[0] == 0 and pos[-1] == 1560 - 512
    assert (np.diff(pos) <= 512 - 64).all()
    assert tile_positions(100, 512, 64).tolist() == [0]
    with pytest.raises(ShapeError, match="overlap"):
        tile_positions(100, 32, 32)


@pytest.mark.parametrize(
    ("frames", "words"),
    [
        (np.zeros((6, 11, 12), np.uint16), "even height and width"),
        (np.zeros((6, 12, 13), np.uint16), "even height and width"),
        (np.zeros((5, 12, 12), np.uint16), r"\(6, H, W\)"),
        (np.zeros((6, 12, 12), np.float32), "uint16"),
        (np.zeros((12, 12), np.uint16), r"\(6, H, W\)"),
    ],
)
def test_bad_shapes_are_refused_clearly(frames, words):
    with pytest.raises(ShapeError, match=words):
        space_to_depth(frames)


def test_bad_calibration_and_outputs_refused():
    frames = np.zeros((6, 8, 8), np.uint16)
    with pytest.raises(ShapeError, match="dark must be one number"):
        space_to_depth(frames, dark=np.zeros(5))
    with pytest.raises(ShapeError, match="float32 or float16"):
        space_to_depth(frames, dtype=np.float64)
    with pytest.raises(ShapeError, match="tile grid is for"):
        space_to_depth_tiles(frames, plan_tiles(8, 8, 16, 0))
    with pytest.raises(ShapeError, match="out must be"):
        space_to_depth(frames, out=np.zeros((24, 4, 5), np.float32))
    with pytest.raises(ShapeError, match="tiles must be"):
        stitch(np.zeros((2, 16, 16)), plan_tiles(4, 4, 16, 0))


# -- defective pixels --------------------------------------------------------------------------
def s2d_numpy(corrected):
    """(6, H, W) corrected full-resolution planes -> (24, H/2, W/2), formula (1) by reshaping."""
    _, h, w = corrected.shape
    return corrected.reshape(6, h // 2, 2, w // 2, 2).transpose(0, 4, 2, 1, 3).reshape(
        24, h // 2, w // 2)


def repaired_reference(frames, rows, cols, dark=None, gain=None, bit_depth=12):
    """Plain NumPy: correct every pixel, then give each listed pixel the mean of its usable
    same-site neighbours (distance 2 along row and column; else the diagonal ones; else 0)."""
    _, h, w = frames.shape
    dark = 0.0 if dark is None else np.asarray(dark, np.float64).reshape(
        (6, 1, 1) if np.ndim(dark) == 1 else np.shape(dark))
    gain = 1.0 if gain is None else np.asarray(gain, np.float64).reshape(
        (6, 1, 1) if np.ndim(gain) == 1 else np.shape(gain))
    corrected = (frames - dark) * gain / (2**bit_depth - 1)
    listed = set(zip(np.asarray(rows).tolist(), np.asarray(cols).tolist(), strict=True))
    out = corrected.copy()
    for r, c in listed:
        for offsets in (((-2, 0), (2, 0), (0, -2), (0, 2)), ((-2, -2), (-2, 2), (2, -2), (2, 2))):
            usable = [(r + dy, c + dx) for dy, dx in offsets
                      if 0 <= r + dy < h and 0 <= c + dx < w and (r + dy, c + dx) not in listed]
            if usable:
                break
        out[:, r, c] = (np.mean([corrected[:, y, x] for y, x in usable], axis=0) if usable
                        else 0.0)
    return s2d_numpy(out)


@st.composite
def frames_with_defects(draw):
    frames = draw(stacks)
    _, h, w = frames.shape
    # up to a third of the pixels: isolated ones, clusters, borders, whole same-site blocks
    idx = draw(st.lists(st.integers(0, h * w - 1), max_size=h * w // 3, unique=True))
    idx = np.array(idx, np.int64)
    return frames, idx // w, idx % w


@settings(max_examples=80, deadline=None)
@given(case=frames_with_defects(), data=st.data())
def test_defects_repaired_as_the_numpy_reference(case, data):
    frames, rows, cols = case
    dark = data.draw(st.one_of(
        st.none(), arrays(np.float32, 6, elements=st.floats(0, 200, width=32)),
        arrays(np.float32, frames.shape, elements=st.floats(0, 200, width=32))))
    gain = data.draw(st.one_of(
        st.none(), arrays(np.float32, frames.shape, elements=st.floats(0.5, 2, width=32))))
    got = space_to_depth(frames, dark=dark, gain=gain, defects=(rows, cols))
    np.testing.assert_allclose(got, repaired_reference(frames, rows, cols, dark, gain),
                               rtol=1e-5, atol=1e-6)
    # the same table, prepared once, gives the same bits; float16 is the float32 rounded
    table = defect_table(rows, cols, *frames.shape[1:])
    assert np.array_equal(space_to_depth(frames, dark=dark, gain=gain, defects=table), got)
    f16 = space_to_depth(frames, dark=dark, gain=gain, defects=table, dtype=np.float16)
    assert np.array_equal(f16.view(np.uint16), got.astype(np.float16).view(np.uint16))


def test_only_listed_pixels_change_and_every_state_is_repaired():
    rng = np.random.default_rng(5)
    frames = rng.integers(0, 4096, (6, 20, 24), dtype=np.uint16)
    rows, cols = np.array([0, 7, 19, 10]), np.array([0, 4, 23, 11])
    frames[:, rows, cols] = 4095  # hot in every state
    plain = space_to_depth(frames)
    fixed = space_to_depth(frames, defects=(rows, cols))
    changed = np.argwhere(plain != fixed)
    # each defect is one (channel, i, j) per state: 4 defects x 6 states
    assert len(changed) == 24
    for r, c in zip(rows, cols, strict=True):
        for s in range(6):
            k = 4 * s + 2 * (c % 2) + r % 2
            assert fixed[k, r // 2, c // 2] != plain[k, r // 2, c // 2]
    # a hot pixel amid a flat field takes the field's value
    flat = np.full((6, 20, 24), 1000, np.uint16)
    flat[:, 7, 4] = 4095
    assert np.allclose(space_to_depth(flat, defects=([7], [4])), 1000 / 4095)


def test_neighbours_fall_back_to_diagonals_then_zero():
    frames = np.arange(6 * 16 * 16, dtype=np.uint16).reshape(6, 16, 16)
    # (8, 8) with its 4 axial same-site neighbours listed: the diagonal ones are used
    rows, cols = [8, 6, 10, 8, 8], [8, 8, 8, 6, 10]
    t = defect_table(rows, cols, 16, 16)
    i = int(np.flatnonzero((t.rows == 8) & (t.cols == 8))[0])
    offsets = sorted(zip(t.nb_dy[i].tolist(), t.nb_dx[i].tolist(), strict=True))
    assert t.nb_n[i] == 4 and offsets == [(-2, -2), (-2, 2), (2, -2), (2, 2)]
    # the whole (0, 0) Bayer site listed: no pixel of it has a usable neighbour, all are 0
    ys, xs = np.meshgrid(np.arange(0, 16, 2), np.arange(0, 16, 2), indexing="ij")
    got = space_to_depth(frames, defects=(ys.ravel(), xs.ravel()))
    assert not got[0::4].any()  # the whole (0, 0) site of every state
    assert np.array_equal(got[1::4], space_to_depth(frames)[1::4])


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_defects_near_tile_edges_are_repaired_the_same_in_every_tile(dtype):
    rng = np.random.default_rng(6)
    h2, w2, tile, overlap = 90, 70, 32, 8
    frames = rng.integers(0, 4096, (6, 2 * h2, 2 * w2), dtype=np.uint16)
    grid = plan_tiles(h2, w2, tile=tile, overlap=overlap)
    # every RAW row/column on or next to a tile edge (both Bayer sites), and the frame border
    edges_y = sorted({v for y in grid.ys for v in (2 * y - 1, 2 * y, 2 * y + 1,
                                                   2 * (y + tile) - 2, 2 * (y + tile) - 1,
                                                   2 * (y + tile))} | {0, 1, 2 * h2 - 1})
    edges_x = sorted({v for x in grid.xs for v in (2 * x - 1, 2 * x, 2 * x + 1,
                                                   2 * (x + tile) - 2, 2 * (x + tile) - 1,
                                                   2 * (x + tile))} | {0, 1, 2 * w2 - 1})
    edges_y = [y for y in edges_y if 0 <= y < 2 * h2]
    edges_x = [x for x in edges_x if 0 <= x < 2 * w2]
    keep = {(y, x) for y in edges_y for x in rng.choice(2 * w2, 12)}
    keep |= {(y, x) for x in edges_x for y in rng.choice(2 * h2, 12)}
    rows, cols = (np.array(v) for v in zip(*sorted(keep), strict=True))
    dark = rng.uniform(50, 70, frames.shape).astype(np.float32)
    gain = rng.uniform(0.8, 1.2, frames.shape).astype(np.float32)
    table = defect_table(rows, cols, 2 * h2, 2 * w2)
    full = space_to_depth(frames, dark, gain, dtype=dtype, defects=table)
    np.testing.assert_allclose(full.astype(np.float32),
                               repaired_reference(frames, rows, cols, dark, gain),
                               rtol=2e-3 if dtype == np.float16 else 1e-5, atol=1e-6)
    tiles = space_to_depth_tiles(frames, grid, dark, gain, dtype=dtype, defects=table)
    for n, (y, x) in enumerate(grid.origins()):
        assert np.array_equal(tiles[n], full[:, y:y + tile, x:x + tile])
    small = plan_tiles(10, 12, tile=32, overlap=8)  # map smaller than one tile: zero-padded
    tiny = frames[:, :20, :24].copy()
    t = space_to_depth_tiles(tiny, small, dtype=dtype, defects=([0, 19, 5], [23, 0, 6]))
    assert np.array_equal(t[0, :, :10, :12],
                          space_to_depth(tiny, dtype=dtype, defects=([0, 19, 5], [23, 0, 6])))
    assert not t[0, :, 10:, :].any() and not t[0, :, :, 12:].any()


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_defects_on_every_row_across_row_blocks(dtype):
    """The kernel repairs one output row behind, in blocks of ``_BLOCK`` rows: a defect on every
    RAW row, over whole blocks and a partial one, in the map and in tiles that start mid-block,
    with a map shared by the states (all states in one step) and with per-state maps."""
    rng = np.random.default_rng(9)
    h2, w2 = 2 * _BLOCK + 3, 21
    frames = rng.integers(0, 4096, (6, 2 * h2, 2 * w2), dtype=np.uint16)
    rows = np.arange(2 * h2)
    cols = rng.integers(0, 2 * w2, rows.size)
    shared = rng.uniform(50, 70, (2 * h2, 2 * w2)).astype(np.float32)
    per_state = rng.uniform(0.8, 1.2, frames.shape).astype(np.float32)
    grid = plan_tiles(h2, w2, tile=_BLOCK + 5, overlap=4)
    assert grid.ys.size > 1 and _BLOCK < grid.tile < 2 * _BLOCK
    for dark, gain in ((None, None), (shared, None), (None, per_state), (shared, per_state)):
        full = space_to_depth(frames, dark, gain, dtype=dtype, defects=(rows, cols))
        f32 = space_to_depth(frames, dark, gain, defects=(rows, cols))
        np.testing.assert_allclose(f32, repaired_reference(frames, rows, cols, dark, gain),
                                   rtol=1e-5, atol=1e-6)
        assert np.array_equal(full, f32.astype(dtype))
        tiles = space_to_depth_tiles(frames, grid, dark, gain, dtype=dtype, defects=(rows, cols))
        for n, (y, x) in enumerate(grid.origins()):
            t = grid.tile
            assert np.array_equal(tiles[n], full[:, y:y + t, x:x + t])


def test_no_defects_changes_nothing():
    rng = np.random.default_rng(7)
    frames = rng.integers(0, 4096, (6, 20, 24), dtype=np.uint16)
    none = defect_table([], [], 20, 24)
    assert none.count == 0
    assert np.array_equal(space_to_depth(frames, defects=none), space_to_depth(frames))


def test_bad_defect_lists_refused():
    frames = np.zeros((6, 8, 8), np.uint16)
    with pytest.raises(ShapeError, match="inside the 8 x 8 frame"):
        space_to_depth(frames, defects=([8], [0]))
    with pytest.raises(ShapeError, match="inside the 8 x 8 frame"):
        space_to_depth(frames, defects=([0], [-1]))
    with pytest.raises(ShapeError, match=r"\(row 1, column 2\) is listed twice"):
        space_to_depth(frames, defects=([1, 1], [2, 2]))
    with pytest.raises(ShapeError, match="2 rows but 1 columns"):
        space_to_depth(frames, defects=([1, 2], [2]))
    with pytest.raises(ShapeError, match="defect table is for 8 x 10 frames, got 8 x 8"):
        space_to_depth(frames, defects=defect_table([1], [1], 10, 8))
