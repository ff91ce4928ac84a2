import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from edge.kernels.space_to_depth import (
    ShapeError,
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
