import dataclasses

import numpy as np
import pytest

from edge.sim.darkfield import DarkfieldConfig, DarkfieldRenderer, render_darkfield
from model.windows import (
    FAINT,
    MODES,
    ROSE_SNR,
    WINDOW_MIN_PIXELS,
    WindowSampler,
    check_limit,
    config_key,
    heldout_windows,
    image_split,
    image_windows,
    relabel,
    window_origins,
)

# frames four windows wide keep scratches as sparse per window as in 2048 x 2048 frames with
# fewer pixels to render; scratch lengths shrink with the frame
CFG = DarkfieldConfig(shape=(1024, 1024), scratch_length_px=(30.0, 750.0))
SMALL = DarkfieldConfig(shape=(512, 512))


def expected_label(f, r, c, win=256):
    """Reference: the window's label from a dense map of the frame's scratch signal-to-noise."""
    snr = np.zeros(f.mask.shape)
    snr.flat[np.flatnonzero(f.mask)] = f.scratch_snr
    n = int(f.mask[r:r + win, c:c + win].sum())
    vis = float(np.sqrt((snr[r:r + win, c:c + win] ** 2).sum()))
    if n < WINDOW_MIN_PIXELS:
        return 0, vis
    return (1 if vis >= ROSE_SNR else FAINT), vis


def test_windows_are_deterministic_by_seed_and_index_in_any_access_order():
    a = WindowSampler(range(5), SMALL, seed=3, per_image=4)
    b = WindowSampler(range(5), SMALL, seed=3, per_image=4, cache_images=1)
    forward = [a.sample(i) for i in range(12)]
    backward = [b.sample(i) for i in reversed(range(12))][::-1]
    for x, y in zip(forward, backward, strict=True):
        assert np.array_equal(x.image, y.image)
        assert (x.label, x.mode, x.image_seed, x.origin) == (y.label, y.mode, y.image_seed,
                                                             y.origin)
    c = WindowSampler(range(5), SMALL, seed=4, per_image=4)
    assert [c.sample(i).origin for i in range(12)] != [x.origin for x in forward]


def test_window_is_the_scaled_raw_crop_with_the_mask_rule_label():
    sampler = WindowSampler([21, 22], SMALL, seed=1, per_image=8)
    frames = {s: render_darkfield(s, SMALL) for s in (21, 22)}
    labels = set()
    for i in range(16):
        w = sampler.sample(i)
        f = frames[w.image_seed]
        r, c = w.origin
        assert w.image.shape == (1, 256, 256) and w.image.dtype == np.float32
        assert w.image.min() >= 0.0 and w.image.max() <= 1.0
        crop = f.image[r:r + 256, c:c + 256]
        assert np.array_equal(w.image[0], crop.astype(np.float32) / np.float32(4095))
        n = int(f.mask[r:r + 256, c:c + 256].sum())
        label, vis = expected_label(f, r, c)
        assert w.scratch_pixels == n and w.label == label
        assert w.visibility == pytest.approx(vis, rel=1e-6, abs=1e-9)
        image, label = sampler[i]
        assert np.array_equal(image, w.image) and label == w.label
        labels.add(w.label)
    assert {0, 1} <= labels


def test_consecutive_windows_share_a_frame_and_a_pass_visits_every_frame():
    sampler = WindowSampler([5, 6, 7], SMALL, seed=2, per_image=4)
    seeds = [sampler.image_seed_of(i) for i in range(12)]
    assert all(len(set(seeds[k:k + 4])) == 1 for k in range(0, 12, 4))
    assert sorted(set(seeds)) == [5, 6, 7]


def test_gaussian_windows_are_mostly_scratch_grid_and_random_mostly_background():
    sampler = WindowSampler(range(8), CFG, seed=0, per_image=40)
    drawn = [sampler.sample(i) for i in range(320)]
    share = {m: np.mean([w.label != 0 for w in drawn if w.mode == m]) for m in MODES}
    counts = {m: sum(w.mode == m for w in drawn) for m in MODES}
    assert share["gaussian"] > 0.85
    assert share["uniform"] < 0.4 and share["random"] < 0.4
    assert share["gaussian"] > 2.5 * max(share["uniform"], share["random"])
    assert abs(counts["gaussian"] / 320 - 0.5) < 0.08 and abs(counts["uniform"] / 320 - 0.3) < 0.08
    grid = set(window_origins(1024))
    assert all(set(w.origin) <= grid for w in drawn if w.mode == "uniform")
    # only random windows may start off the grid; uniform ones cover it
    assert len({w.origin for w in drawn if w.mode == "uniform"}) > 20


def test_a_frame_without_scratches_gives_random_instead_of_gaussian():
    cfg = dataclasses.replace(SMALL, scratch_share=0.0)
    sampler = WindowSampler([1], cfg, mix=(1.0, 0.0, 0.0), per_image=6)
    drawn = [sampler.sample(i) for i in range(6)]
    assert {w.mode for w in drawn} == {"random"} and all(w.label == 0 for w in drawn)


def test_bayer_windows_start_on_a_g_r_row():
    cfg = dataclasses.replace(SMALL, bayer=True)
    sampler = WindowSampler([3], cfg, per_image=20)
    for i in range(20):
        r, c = sampler.sample(i).origin
        assert r % 2 == 0 and c % 2 == 0


def test_heldout_set_is_written_once_and_read_back_identically(tmp_path, monkeypatch):
    seeds = image_split(first_seed=500, n_train=2, n_validation=1, n_test=2).test
    first = heldout_windows(tmp_path, seeds, SMALL, count=10, per_image=5)
    assert first.path is not None and first.path.parent == tmp_path and first.path.exists()
    assert len(list(tmp_path.iterdir())) == 1  # no temporary file left behind
    stamp = first.path.stat().st_mtime_ns

    def no_render(self, seed):
        raise AssertionError("a cached set must not be rendered again")

    monkeypatch.setattr(DarkfieldRenderer, "render", no_render)
    again = heldout_windows(tmp_path, seeds, SMALL, count=10, per_image=5)
    monkeypatch.undo()
    assert again.path == first.path and first.path.stat().st_mtime_ns == stamp
    for name in ("raw", "labels", "modes", "image_seeds", "origins", "scratch_pixels",
                 "visibility"):
        assert np.array_equal(getattr(first, name), getattr(again, name)), name
    assert again.raw.dtype == np.uint16 and again.raw.shape == (10, 256, 256)
    sampler = WindowSampler(seeds, SMALL, per_image=5)
    for i in range(10):
        image, label = again[i]
        w = sampler.sample(i)
        assert np.array_equal(image, w.image) and label == w.label
        assert tuple(again.origins[i]) == w.origin and MODES[again.modes[i]] == w.mode
    assert np.array_equal(again.images(2, 4), np.stack([sampler[i][0] for i in (2, 3)]))
    # other settings: another file; a damaged file: rebuilt
    other = heldout_windows(tmp_path, seeds, SMALL, count=10, per_image=5, seed=1)
    assert other.path != first.path
    first.path.write_bytes(b"not a zip file")
    rebuilt = heldout_windows(tmp_path, seeds, SMALL, count=10, per_image=5)
    assert np.array_equal(rebuilt.raw, first.raw)


def test_image_windows_cover_the_frame_on_the_sliding_grid():
    f = render_darkfield(4, SMALL)
    origins, wins, labels = image_windows(f)
    assert origins.tolist() == [[r, c] for r in (0, 128, 256) for c in (0, 128, 256)]
    assert wins.shape == (9, 1, 256, 256) and wins.dtype == np.float32
    for (r, c), win, label in zip(origins, wins, labels, strict=True):
        assert np.array_equal(win[0], f.image[r:r + 256, c:c + 256] / np.float32(4095))
        assert label == expected_label(f, r, c)[0]
    assert (labels == 1).any()


def test_image_split_follows_the_paper_and_is_disjoint():
    split = image_split()
    assert (len(split.train), len(split.validation), len(split.test)) == (80, 12, 20)
    assert not set(split.train) & set(split.test) and not set(split.validation) & set(split.test)
    assert window_origins(2048) == list(range(0, 1793, 128))
    assert window_origins(300, 256) == [0, 44]


@pytest.mark.parametrize("kwargs,match", [
    ({"window": 600}, "does not fit"),
    ({"window": 0}, "window"),
    ({"seed": -1}, "non-negative"),
    ({"image_seeds": []}, "at least one"),
    ({"image_seeds": [1, 1]}, "distinct"),
    ({"image_seeds": [-2]}, "non-negative"),
    ({"mix": (1.0, -1.0, 0.5)}, "mix"),
    ({"mix": (0.0, 0.0, 0.0)}, "mix"),
    ({"per_image": 0}, "per_image"),
    ({"sigma": 0.0}, "sigma"),
])
def test_bad_sampler_arguments_are_refused(kwargs, match):
    args = {"image_seeds": [1], "config": SMALL, **kwargs}
    with pytest.raises(ValueError, match=match):
        WindowSampler(args.pop("image_seeds"), **args)


def test_other_bad_arguments_are_refused(tmp_path):
    sampler = WindowSampler([1], SMALL)
    with pytest.raises(ValueError, match="index"):
        sampler.sample(-1)
    with pytest.raises(ValueError, match="count"):
        heldout_windows(tmp_path, [1], SMALL, count=0)
    with pytest.raises(ValueError, match="does not fit"):
        heldout_windows(tmp_path, [1], SMALL, window=1024)
    with pytest.raises(ValueError, match="first_seed"):
        image_split(first_seed=-5)
    with pytest.raises(ValueError, match="n_test"):
        image_split(n_test=0)
    with pytest.raises(ValueError, match="smaller than"):
        window_origins(100, 256)
    with pytest.raises(ValueError, match="even"):
        WindowSampler([1], dataclasses.replace(SMALL, bayer=True), window=255)
    assert not list(tmp_path.iterdir())


def test_a_scratch_too_faint_to_see_is_labelled_faint_and_a_bright_one_scratch():
    faint = WindowSampler([2, 3], dataclasses.replace(SMALL, scratch_peak_dn=(1.0, 1.0)),
                          mix=(1.0, 0.0, 0.0), per_image=8)
    bright = WindowSampler([2, 3], dataclasses.replace(SMALL, scratch_peak_dn=(300.0, 300.0)),
                           mix=(1.0, 0.0, 0.0), per_image=8)
    dim = [faint.sample(i) for i in range(16)]
    lit = [bright.sample(i) for i in range(16)]
    # the same seeds draw the same grooves: only their light differs
    assert [w.origin for w in dim] == [w.origin for w in lit]
    for a, b in zip(dim, lit, strict=True):
        assert a.scratch_pixels == b.scratch_pixels
        if b.scratch_pixels >= WINDOW_MIN_PIXELS:
            assert b.label == 1 and b.visibility >= ROSE_SNR
    assert sum(w.label == FAINT for w in dim) >= 4
    assert all(w.label != 1 or w.visibility >= ROSE_SNR for w in dim)


def test_alt_seeds_are_rendered_with_the_alt_config_and_the_others_not():
    faint = dataclasses.replace(SMALL, scratch_peak_dn=(3.0, 4.0))
    sampler = WindowSampler([1, 2], SMALL, per_image=2, alt_config=faint, alt_seeds=[2])
    for seed, cfg in [(1, SMALL), (2, faint)]:
        image, _ = sampler._frame(seed)
        np.testing.assert_array_equal(image, DarkfieldRenderer(cfg).render(seed).image)
    with pytest.raises(ValueError, match="need an alt_config"):
        WindowSampler([1, 2], SMALL, alt_seeds=[2])
    with pytest.raises(ValueError, match=r"among image_seeds, got \[3\]"):
        WindowSampler([1, 2], SMALL, alt_config=faint, alt_seeds=[2, 3])
    with pytest.raises(ValueError, match="shape, bit depth and mosaic"):
        WindowSampler([1, 2], SMALL, alt_config=dataclasses.replace(SMALL, bit_depth=8),
                      alt_seeds=[2])


def test_relabel_makes_scratch_windows_under_the_limit_faint_and_leaves_the_rest():
    labels = np.array([1, 1, 1, 0, 0, FAINT])
    vis = np.array([5.0, 7.99, 8.0, 0.0, 12.0, 3.0])
    np.testing.assert_array_equal(relabel(labels, vis, 8.0), [FAINT, FAINT, 1, 0, 0, FAINT])
    np.testing.assert_array_equal(relabel(labels, vis, ROSE_SNR), labels)
    np.testing.assert_array_equal(labels, [1, 1, 1, 0, 0, FAINT])  # the input is not touched
    for bad in (4.9, float("nan"), True, "8"):
        with pytest.raises(ValueError, match="visibility limit"):
            check_limit(bad)


def test_image_windows_at_a_higher_limit_turn_only_dim_scratch_windows_faint():
    f = render_darkfield(4, dataclasses.replace(SMALL, scratch_peak_dn=(4.0, 12.0)))
    _, _, at5 = image_windows(f)
    _, _, at8 = image_windows(f, limit=8.0)
    _, _, at_inf = image_windows(f, limit=1e9)
    assert ((at5 == 1) & (at8 == FAINT)).any() or (at5 != 1).all()
    np.testing.assert_array_equal(at8 == 0, at5 == 0)
    assert (at8[at5 == FAINT] == FAINT).all()
    assert not (at_inf == 1).any() and (at_inf[at5 == 1] == FAINT).all()


def test_window_set_keys_leave_out_an_untextured_frames_texture_and_keep_any_other():
    """Sets and checkpoints made before frames had a texture keep their keys."""
    plain = WindowSampler([1], SMALL).settings()
    assert "texture" not in plain["config"]
    grainy = dataclasses.replace(SMALL, texture="grain")
    s = WindowSampler([1, 2], SMALL, alt_config=grainy, alt_seeds=[2]).settings()
    assert s["alt_config"]["texture"] == "grain" and "texture" not in s["config"]
    assert config_key(dataclasses.replace(SMALL, texture="heldout"))["texture"] == "heldout"
    keys = set(dataclasses.asdict(SMALL)) - {"texture"}
    assert set(config_key(SMALL)) == keys
