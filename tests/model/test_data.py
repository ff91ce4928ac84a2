import numpy as np
import pytest

from edge.sim import OpticsRenderer
from edge.sim.sample import arc
from edge.truth import GlassObject, Sample
from model.data import (
    GRBG_CODES,
    PatchSampler,
    RawWindow,
    SimulatedPatches,
    bayer_augment,
    state_permutation,
    to_patch,
)

ANGLES = (0.0, 30.0, 60.0, 90.0, 120.0, 150.0)
TRANSFORMS = [(t, f) for t in range(4) for f in (False, True)]


def test_quarter_turn_moves_each_state_by_90_degrees_and_a_flip_mirrors_them():
    assert list(state_permutation(ANGLES, 1, False)) == [3, 4, 5, 0, 1, 2]
    assert list(state_permutation(ANGLES, 0, True)) == [0, 5, 4, 3, 2, 1]
    assert list(state_permutation(ANGLES, 0, False)) == list(range(6))
    # a ring that a quarter turn does not map onto itself: that transform is not offered
    assert state_permutation((0, 20, 40, 60, 80, 100), 1, False) is None


@pytest.mark.parametrize("turns,flip", TRANSFORMS)
def test_every_flip_and_turn_keeps_the_grbg_phase(turns, flip):
    size = 10
    codes = np.tile(GRBG_CODES, (size // 2, size // 2))
    frames = np.stack([codes * 10 + k for k in range(6)]).astype(np.uint16)
    out, mask = bayer_augment(RawWindow(frames, np.zeros((size, size), bool)), turns, flip,
                              ANGLES, patch=size - 2)
    assert out.shape == (6, 8, 8) and mask.shape == (8, 8)
    assert np.array_equal(out[0] // 10, np.tile(GRBG_CODES, (4, 4)))


def _line_sample(angle_deg: float) -> Sample:
    pts = arc((1.0, 3.0), angle_deg, 4.0)
    d = GlassObject(kind="scratch", points_mm=tuple(map(tuple, pts)), width_um=25.0,
               intensity_dn=1500.0, seed=5)
    return Sample(sample_id="LINE", extent_mm=(8.0, 8.0), objects=(d,), seed=5)


@pytest.mark.parametrize("turns,flip", [(1, False), (0, True), (3, True)])
def test_augmented_scratch_keeps_a_physical_directional_signature(cfg, turns, flip):
    head = OpticsRenderer(cfg, shape=(514, 514))
    r = head.render(_line_sample(20.0), (0.5, 0.5), noise_seed=1)
    before = int(np.argmax(r.frames.reshape(6, -1).astype(np.int64).sum(axis=1)))
    frames, mask = bayer_augment(RawWindow(r.frames, r.mask), turns, flip, ANGLES, patch=512)
    after = int(np.argmax(frames.reshape(6, -1).astype(np.int64).sum(axis=1)))
    # the line itself turned or mirrored: its brightest state moved the same way
    expected = state_permutation(ANGLES, turns, flip).tolist().index(before)
    assert after == expected
    assert expected != before  # these transforms all move a 20-degree line's best state
    assert mask.any()


def test_patch_is_space_to_depth_with_pooled_mask(cfg):
    head = OpticsRenderer(cfg, shape=(64, 64))
    r = head.render(_line_sample(45.0), (0.5, 2.5), noise_seed=3)
    p = to_patch(r.frames, r.mask)
    assert p.image.shape == (24, 32, 32) and p.image.dtype == np.float32
    assert p.mask.shape == (32, 32)
    assert p.mask.sum() >= r.mask.sum() / 4 and p.mask.any() == r.mask.any()
    assert np.allclose(p.brightest, p.image.max(axis=0))
    assert p.image[0, 0, 0] == pytest.approx(r.frames[0, 0, 0] / 4095)


def test_sampler_fixes_scratch_patches_per_batch_and_drops_empty_ones(cfg):
    src = SimulatedPatches(cfg, seed=3, patch=256)
    sampler = PatchSampler(src, ANGLES, batch_size=4, scratch_per_batch=1)
    batch = sampler.batch(0)
    assert [p.has_scratch for p in batch] == [True, False, False, False]
    assert all(p.has_information for p in batch)
    again = PatchSampler(src, ANGLES, batch_size=4, scratch_per_batch=1).batch(0)
    assert all(np.array_equal(a.image, b.image) for a, b in zip(batch, again, strict=True))
    with pytest.raises(ValueError):
        PatchSampler(src, ANGLES, batch_size=2, scratch_per_batch=3)


def test_cached_windows_render_each_window_once_and_cycle_over_the_pool(tmp_path):
    from model.data import CachedWindows, RawWindow

    class Source:
        seed, patch, calls = 5, 64, 0

        def window(self, index, scratch):
            Source.calls += 1
            frames = np.full((6, 66, 66), index + 100 * scratch, np.uint16)
            return RawWindow(frames, np.zeros((66, 66), bool))

    cached = CachedWindows(Source(), tmp_path, pool=3, ident="head")
    first = [cached.window(i, False).frames[0, 0, 0] for i in range(6)]
    assert first == [0, 1, 2, 0, 1, 2] and Source.calls == 3  # the pool, rendered once
    assert cached.window(4, True).frames[0, 0, 0] == 101 and Source.calls == 4
    again = CachedWindows(Source(), tmp_path, pool=3, ident="head")  # a resumed run
    assert again.window(2, False).frames[0, 0, 0] == 2 and again.rendered == 0
    (tmp_path / "glass-head-5-64-1.npz").write_bytes(b"torn")  # a damaged file: made again
    assert again.window(1, False).frames[0, 0, 0] == 1 and again.rendered == 1
    assert not list(tmp_path.glob("*.part.npz"))


def test_glass_windows_draw_the_contaminant_kind_first():
    from types import SimpleNamespace

    from model.data import pick_object

    objects = ([SimpleNamespace(kind="dust")] * 25 + [SimpleNamespace(kind="stain")] * 2
               + [SimpleNamespace(kind="fibre")])
    rng = np.random.default_rng(0)
    kinds = [pick_object(objects, rng).kind for _ in range(3000)]
    for kind in ("dust", "stain", "fibre"):  # a third each, not 25 : 2 : 1
        assert abs(kinds.count(kind) / 3000 - 1 / 3) < 0.04, kind
