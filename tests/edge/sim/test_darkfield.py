import dataclasses

import numpy as np
import pytest

from edge.sim.darkfield import DarkfieldConfig, DarkfieldRenderer, render_darkfield

SMALL = DarkfieldConfig(shape=(512, 512))
# nothing but haze and the sensor: the field and the taps can be read off directly
PLAIN = dataclasses.replace(SMALL, scratch_share=0.0, dust_per_mpx=0.0, points_per_mpx=0.0,
                            shadows_per_mpx=0.0, dead_fraction=0.0, mottle=(0.0, 0.0))


def patch_median(img, row, col, half=8):
    return float(np.median(img[row - half:row + half, col - half:col + half]))


def test_same_seed_same_frame_and_streams_are_independent():
    a, b = render_darkfield(7, SMALL), render_darkfield(7, SMALL)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask)
    assert [s.peak_dn for s in a.scratches] == [s.peak_dn for s in b.scratches]
    c = render_darkfield(8, SMALL)
    assert not np.array_equal(a.image, c.image)
    # the scene does not depend on the noise, the bit depth or the mosaic
    for other in (dataclasses.replace(SMALL, noise=False), dataclasses.replace(SMALL, bayer=True),
                  dataclasses.replace(SMALL, bit_depth=16)):
        d = render_darkfield(7, other)
        assert np.array_equal(a.mask, d.mask)
        assert all(np.array_equal(s.points_px, t.points_px)
                   for s, t in zip(a.scratches, d.scratches, strict=True))


def test_frame_types_and_shapes():
    f = render_darkfield(1, SMALL)
    assert f.image.dtype == np.uint16 and f.image.shape == (512, 512)
    assert f.mask.dtype == bool and f.mask.shape == (512, 512)
    assert f.background.dtype == np.float32
    assert 1 <= len(f.scratches) <= 6 and f.mask.any()


def test_two_taps_leave_a_seam_of_the_configured_gain_ratio():
    cfg = dataclasses.replace(PLAIN, tap_gain_ratio=1.2, vignetting=(0.0, 0.0))
    f = render_darkfield(3, cfg)
    img = f.image.astype(np.float64) - cfg.dark_offset_dn
    ratio = np.median(img[:, 256:]) / np.median(img[:, :256])
    assert ratio == pytest.approx(1.2, abs=0.005)
    # with the default strong, off-centre vignetting the seam still shows at the middle columns
    f = render_darkfield(4, SMALL)
    img = f.image.astype(np.float64) - SMALL.dark_offset_dn
    seam = np.median(img[:, 256:260]) / np.median(img[:, 252:256])
    assert seam == pytest.approx(SMALL.tap_gain_ratio, abs=0.01)


def test_corners_are_darker_than_the_centre_by_the_configured_vignetting():
    cfg = dataclasses.replace(PLAIN, vignetting=(0.5, 0.5), centre_offset=0.0, tap_gain_ratio=1.0)
    f = render_darkfield(5, cfg)
    img = f.image.astype(np.float64) - cfg.dark_offset_dn
    centre = patch_median(img, 256, 256)
    r_max2 = 256.0 ** 2 + 256.0 ** 2
    for row, col in ((8, 8), (8, 504), (504, 8), (504, 504)):
        expected = 1.0 - 0.5 * ((row - 0.5 - 255.5) ** 2 + (col - 0.5 - 255.5) ** 2) / r_max2
        assert patch_median(img, row, col) / centre == pytest.approx(expected, abs=0.01)
        assert patch_median(img, row, col) / centre < 0.55


def test_the_optical_centre_is_off_the_frame_centre_and_fall_off_is_strong_by_default():
    cfg = dataclasses.replace(PLAIN, tap_gain_ratio=1.0)
    offsets, falls = [], []
    for seed in range(6):
        f = render_darkfield(seed, cfg)
        r, c = np.unravel_index(np.argmax(f.background), f.background.shape)
        cx, cy = f.optical_centre
        assert abs(c - cx) <= 1 and abs(r - cy) <= 1
        offsets.append(np.hypot(cx - 255.5, cy - 255.5))
        corners = [f.background[r, c] for r in (0, 511) for c in (0, 511)]
        falls.append(min(corners) - cfg.dark_offset_dn)
        falls[-1] /= f.background.max() - cfg.dark_offset_dn
    assert max(offsets) > 10
    assert max(falls) < 0.65


def test_line_scan_falls_off_along_the_line_only_and_dead_pixels_are_columns():
    cfg = dataclasses.replace(PLAIN, camera="line", dead_fraction=0.01)
    f = render_darkfield(2, cfg)
    assert np.ptp(f.background, axis=0).max() < 1e-3  # every scanned line lit alike
    assert np.ptp(f.background[:, :256]) > 0.2 * f.background.max()
    cols = np.unique(f.dead_pixels[:, 1])
    assert len(cols) == 5 and len(f.dead_pixels) == 5 * 512
    img = f.image.astype(np.float64)
    assert (np.median(img[:, cols], axis=0) < 0.5 * np.median(f.background[:, cols], axis=0)).all()


def test_scratch_peaks_are_log_uniform_from_a_few_dn():
    peaks = []
    for seed in range(60):
        peaks += [s.peak_dn for s in render_darkfield(seed, DarkfieldConfig(
            shape=(256, 256), dust_per_mpx=0.0, points_per_mpx=0.0)).scratches]
    peaks = np.array(peaks)
    assert len(peaks) > 100
    assert peaks.min() >= 3.0 - 1e-9 and peaks.max() <= 300.0 + 1e-9
    assert 0.38 < np.mean(peaks < 30.0) < 0.62  # the log-uniform median of 3-300
    assert np.mean(peaks < 10.0) > 0.15  # many scratches only a few DN above the haze


def test_rendered_scratches_stand_their_peak_above_the_local_background():
    cfg = dataclasses.replace(PLAIN, scratch_share=1.0, chain_share=0.0, noise=False)
    checked = 0
    for seed in range(8):
        f = render_darkfield(seed, cfg)
        diff = f.image.astype(np.float64) - f.background
        for s in f.scratches:
            px = np.rint(s.points_px).astype(int)
            px = px[(px >= 0).all(axis=1) & (px < 512).all(axis=1)]
            top = diff[px[:, 1], px[:, 0]].max()
            assert top >= 0.75 * s.peak_dn - 0.5  # pixels sample the profile near its crest
            if len(f.scratches) == 1:  # no other scratch crossing it adds light
                assert top <= s.peak_dn + 0.5
                checked += 1
    assert checked >= 2
    weak = dataclasses.replace(cfg, scratch_peak_dn=(3.0, 6.0))
    f = render_darkfield(1, weak)
    diff = f.image.astype(np.float64) - f.background
    assert 2.0 <= diff[f.mask].max() <= 6.5
    noisy = render_darkfield(1, dataclasses.replace(weak, noise=True))
    on = noisy.image.astype(np.float64)[f.mask] - f.background[f.mask]
    assert 0.0 < on.mean() < 6.0  # a few DN above the background, well inside the noise
    assert (noisy.image.astype(np.float64) - noisy.background)[~f.mask].std() > 3.0


@pytest.mark.parametrize("bayer", [False, True])
def test_scratch_snr_is_the_expected_scratch_light_over_the_noise_sigma(bayer):
    """Reference from the frame itself: a noise-free render of scratches alone, its excess over
    the background divided by the noise model's sigma at each mask pixel."""
    cfg = dataclasses.replace(PLAIN, scratch_share=1.0, noise=False, bayer=bayer,
                              scratch_peak_dn=(20.0, 200.0))
    f = render_darkfield(3, cfg)
    assert f.scratch_snr.shape == (int(f.mask.sum()),) and f.scratch_snr.dtype == np.float32
    at = np.flatnonzero(f.mask)
    img = f.image.astype(np.float64).ravel()[at]
    back = f.background.astype(np.float64).ravel()[at]
    right = (at % 512) >= 256
    tap = np.where(right, cfg.tap_gain_ratio, 1.0)
    s = (img - back) / tap  # before the tap's gain, which scales signal and noise alike
    sigma = np.sqrt(cfg.read_noise_dn ** 2 + cfg.conversion_gain * (img - cfg.dark_offset_dn)
                    / tap)
    # quantisation: the image is rounded to whole DN
    assert np.abs(f.scratch_snr - s / sigma).max() <= 0.6 / sigma.min() + 1e-3
    assert f.scratch_snr.max() > 2.0
    # the same seed with noise: the same truth
    noisy = render_darkfield(3, dataclasses.replace(cfg, noise=True))
    assert np.array_equal(noisy.scratch_snr, f.scratch_snr)


def test_mask_covers_each_scratch_and_nothing_else():
    cfg = dataclasses.replace(SMALL, chain_share=0.5)
    for seed in range(4):
        f = render_darkfield(seed, cfg)
        verts = []
        for s in f.scratches:
            step = 0.5
            core = s.points_px[int(30 / step):-int(30 / step)]
            px = np.rint(core).astype(int)
            px = px[(px >= 0).all(axis=1) & (px < 512).all(axis=1)]
            assert f.mask[px[:, 1], px[:, 0]].all()  # gaps of a chain are labelled too
            verts.append(s.points_px)
        verts = np.concatenate(verts)
        rows, cols = np.nonzero(f.mask)
        for r, c in zip(rows[::7], cols[::7], strict=True):
            assert np.hypot(verts[:, 0] - c, verts[:, 1] - r).min() < 2.5


def test_chains_break_into_points():
    cfg = dataclasses.replace(PLAIN, scratch_share=1.0, chain_share=1.0, noise=False,
                              scratch_length_px=(300.0, 400.0))
    f = render_darkfield(3, cfg)
    s = f.scratches[0]
    assert s.chain
    diff = f.image.astype(np.float64) - f.background
    px = np.rint(s.points_px).astype(int)
    px = px[(px >= 0).all(axis=1) & (px < 512).all(axis=1)]
    along = diff[px[:, 1], px[:, 0]]
    assert (along < 0.2 * along.max()).mean() > 0.4  # dark between the beads
    assert f.mask[px[len(px) // 4:3 * len(px) // 4, 1], px[len(px) // 4:3 * len(px) // 4, 0]].all()


def test_distractors_dust_points_shadows_and_dead_pixels():
    f = render_darkfield(0, DarkfieldConfig())
    kinds = {k: [s for s in f.specks if s.kind == k] for k in ("dust", "point", "shadow")}
    assert len(kinds["dust"]) > 20 and len(kinds["point"]) > 3 and len(kinds["shadow"]) > 0
    img = f.image.astype(np.float64)
    dead = f.dead_pixels
    assert len(dead) == round(2e-5 * 2048 * 2048)
    assert (img[dead[:, 0], dead[:, 1]] < f.background[dead[:, 0], dead[:, 1]]).mean() > 0.95
    assert np.array_equal(render_darkfield(1, DarkfieldConfig()).dead_pixels, dead)  # the camera's
    for s in kinds["shadow"]:
        r, c = int(round(s.y)), int(round(s.x))
        if s.amplitude > 0.5 and s.sigma_px > 1.0 and 0 <= r < 2048 and 0 <= c < 2048:
            assert img[r, c] < f.background[r, c]
    for s in kinds["dust"]:
        r, c = int(round(s.y)), int(round(s.x))
        if s.amplitude > 200 and s.sigma_px > 1.0 and 0 <= r < 2048 and 0 <= c < 2048:
            bg = f.background[r, c]
            assert img[r, c] > bg + 0.5 * min(s.amplitude, 4095 - bg)
    assert (f.image == 4095).any()  # the brightest dust saturates


@pytest.mark.parametrize("bits", [8, 12, 16])
def test_bit_depth_scales_and_clips(bits):
    cfg = dataclasses.replace(SMALL, bit_depth=bits, noise=False)
    ref = render_darkfield(6, dataclasses.replace(cfg, bit_depth=12)).image.astype(np.float64)
    img = render_darkfield(6, cfg).image
    assert img.dtype == np.uint16 and int(img.max()) <= 2 ** bits - 1
    assert np.abs(img - ref * 2.0 ** (bits - 12)).max() <= max(1.0, 2.0 ** (bits - 12))
    bright = dataclasses.replace(PLAIN, bit_depth=bits, haze=(0.97, 0.97), vignetting=(0.0, 0.0))
    sat = render_darkfield(6, bright).image
    assert int(sat.max()) == 2 ** bits - 1 and (sat == 2 ** bits - 1).mean() > 0.4


def test_bayer_mosaic_differs_by_site():
    cfg = dataclasses.replace(PLAIN, bayer=True, vignetting=(0.0, 0.0), tap_gain_ratio=1.0)
    img = render_darkfield(2, cfg).image.astype(np.float64) - cfg.dark_offset_dn
    g1, r, b, g2 = (np.median(img[i::2, j::2]) for i, j in ((0, 0), (0, 1), (1, 0), (1, 1)))
    assert g1 == pytest.approx(g2, rel=0.005)
    assert r / g1 == pytest.approx(0.6, abs=0.01)
    assert b / g1 == pytest.approx(0.75, abs=0.01)
    grey = render_darkfield(2, dataclasses.replace(cfg, bayer=False)).image
    assert np.median(grey.astype(np.float64) - cfg.dark_offset_dn) == pytest.approx(g1, rel=0.01)


def test_a_scratch_is_brightest_when_lit_across_it():
    base = dataclasses.replace(PLAIN, scratch_share=1.0, chain_share=0.0, noise=False)
    f = render_darkfield(11, base)
    s = f.scratches[0]
    d = np.diff(s.points_px[[0, -1]], axis=0)[0]
    normal = (np.degrees(np.arctan2(d[1], d[0])) + 90.0) % 180.0
    across = int(round(normal / 45.0)) % 8
    along = int(round((normal + 90.0) / 45.0)) % 8
    lit_across = render_darkfield(11, dataclasses.replace(base, lit_groups=(across,)))
    lit_along = render_darkfield(11, dataclasses.replace(base, lit_groups=(along,)))
    a, b = lit_across.scratches[0], lit_along.scratches[0]
    assert np.array_equal(a.points_px, s.points_px)
    assert a.peak_dn > 5.0 * b.peak_dn
    assert 0.3 * s.peak_dn < a.peak_dn < 0.6 * s.peak_dn  # one arc of a ring that lights both
    # haze and dust scatter alike in every direction: the lit share of the ring
    one = np.median(lit_along.background - base.dark_offset_dn)
    assert one / np.median(f.background - base.dark_offset_dn) == pytest.approx(1 / 8, rel=1e-3)


@pytest.mark.parametrize("changes,match", [
    ({"bit_depth": 10}, "bit_depth"),
    ({"shape": (511, 512)}, "even"),
    ({"lit_groups": (8,)}, "lit_groups"),
    ({"lit_groups": ()}, "lit_groups"),
    ({"haze": (0.3, 0.1)}, "haze"),
    ({"camera": "fisheye"}, "camera"),
    ({"tap_gain_ratio": 0.0}, "tap_gain_ratio"),
    ({"scratch_peak_dn": (0.0, 3.0)}, "scratch_peak_dn"),
    ({"sensor_seed": -1}, "sensor_seed"),
])
def test_bad_configuration_is_refused(changes, match):
    with pytest.raises(ValueError, match=match):
        dataclasses.replace(SMALL, **changes)


@pytest.mark.parametrize("seed", [-1, 1.5, True, "3"])
def test_bad_seeds_are_refused(seed):
    with pytest.raises(ValueError, match="non-negative integer"):
        DarkfieldRenderer(SMALL).render(seed)
