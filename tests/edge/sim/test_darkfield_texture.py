"""Real-glass textures of the dark-field simulator (:mod:`edge.sim.darkfield_texture`)."""

import dataclasses
import hashlib

import numpy as np
import pytest
import tifffile
from scipy.ndimage import gaussian_filter

from edge.cli import main
from edge.sim import darkfield_texture as tx
from edge.sim.darkfield import DarkfieldConfig, frames_at, render_darkfield

PX = 256
BASE = frames_at(PX)
# haze and the sensor only, one tap: the texture can be read off directly
PLAIN = dataclasses.replace(BASE, scratch_share=0.0, dust_per_mpx=0.0, points_per_mpx=0.0,
                            shadows_per_mpx=0.0, dead_fraction=0.0, tap_gain_ratio=1.0)
FLAT = dataclasses.replace(PLAIN, vignetting=(0.0, 0.0), mottle=(0.0, 0.0))


def textured(cfg, texture):
    return dataclasses.replace(cfg, texture=texture)


def digest(frame) -> str:
    h = hashlib.sha256()
    for a in (frame.image, frame.mask, frame.background, frame.scratch_snr):
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


def whitened_band_power(frame) -> float:
    """Mean power at scales of about 2-10 px (Gaussian 1 px minus 5 px) of the frame less its
    smooth background (Gaussian 16 px), over the camera model's noise sigma there: white
    camera noise alone gives about 0.07."""
    cfg = frame.config
    k = cfg.dn_scale
    img = frame.image.astype(np.float64) - cfg.dark_offset_dn * k
    smooth = gaussian_filter(img, 16)
    sigma = np.sqrt((cfg.read_noise_dn * k) ** 2 + cfg.conversion_gain * k
                    * np.maximum(smooth, 0.0))
    r = (img - smooth) / sigma
    band = gaussian_filter(r, 1) - gaussian_filter(r, 5)
    return float(np.mean(band[32:-32, 32:-32] ** 2))


def autocorrelation_fwhm(field: np.ndarray) -> float:
    f = field - field.mean()
    ac = np.fft.ifft2(np.abs(np.fft.fft2(f)) ** 2).real[0]
    ac /= ac[0]
    i = int(np.argmax(ac < 0.5))
    return 2.0 * (i - 1 + (ac[i - 1] - 0.5) / (ac[i - 1] - ac[i]))


# SHA-256 (first 16 hex digits) of image, mask, background and scratch_snr as rendered by the
# renderer before textures existed (commit b5ac683); x86-64, numpy 2.4, this venv's numba
@pytest.mark.parametrize("cfg, seed, expected", [
    (DarkfieldConfig(shape=(512, 512)), 7, "f059dca88e064bb6"),
    (dataclasses.replace(frames_at(512), bayer=True, bit_depth=8), 11, "0b55097d23c0dabe"),
    (DarkfieldConfig(shape=(384, 256), camera="line", bit_depth=16, lit_groups=(1, 2)), 3,
     "85444ac446799ed2"),
])
def test_the_default_renders_the_frames_it_rendered_before_textures(cfg, seed, expected):
    assert cfg.texture == "none"
    f = render_darkfield(seed, cfg)
    assert f.texture is None
    assert digest(f) == expected
    assert digest(render_darkfield(seed, textured(cfg, "none"))) == expected


@pytest.mark.parametrize("texture", tx.TEXTURES[1:])
def test_same_seed_same_frame_in_every_family(texture):
    cfg = textured(BASE, texture)
    a, b = render_darkfield(5, cfg), render_darkfield(5, cfg)
    assert a.texture == b.texture and a.texture.family == texture
    assert digest(a) == digest(b) and a.specks == b.specks
    c = render_darkfield(6, cfg)
    assert c.texture != a.texture or texture == "quantised"  # 8 bits: nothing to draw
    assert not np.array_equal(a.image, c.image)
    assert a.texture.elements == (("pupil", "seam", "lines", "quantised", "noise")
                                  if texture == "heldout" else
                                  a.texture.elements if texture == "mixed" else (texture,))


@pytest.mark.parametrize("texture", tx.TEXTURES[1:])
def test_texture_never_changes_the_scratches_or_their_mask(texture):
    for seed in (9, 10):
        plain = render_darkfield(seed, BASE)
        f = render_darkfield(seed, textured(BASE, texture))
        assert np.array_equal(f.mask, plain.mask) and f.mask.any()
        assert all(np.array_equal(s.points_px, t.points_px) and s.width_px == t.width_px
                   and s.chain == t.chain
                   for s, t in zip(f.scratches, plain.scratches, strict=True))
        # the renderer's own distractors stay where they were; texture adds its own after them
        own = [(s.kind, s.x, s.y) for s in plain.specks]
        assert [(s.kind, s.x, s.y) for s in f.specks[:len(own)]] == own
        assert {s.kind for s in f.specks[len(own):]} <= {"pit", "glare", "dust"}


def test_grain_leaves_the_scratch_light_as_it_was():
    # noise-free: frame less background on the mask is the scratch light, with or without grain
    cfg = dataclasses.replace(BASE, noise=False, dust_per_mpx=0.0, points_per_mpx=0.0,
                              shadows_per_mpx=0.0, dead_fraction=0.0)
    for seed in (1, 2, 3):
        plain = render_darkfield(seed, cfg)
        f = render_darkfield(seed, textured(cfg, "grain"))
        assert f.texture.grain[0].strength > 0
        on = f.mask
        assert np.abs(f.background - plain.background)[on].max() > 0.1  # the grain is there
        light = f.image.astype(np.float64)[on] - f.background[on]
        ref = plain.image.astype(np.float64)[on] - plain.background[on]
        assert np.abs(light - ref).max() <= 1.0  # rounding to the DN, twice


def test_scratch_peak_stays_what_the_frame_shows_under_a_seam():
    # the seam's gain scales the scratch light like the taps do, and the renderer scales the
    # scratch so its brightest point still shows the recorded peak: the same as without a seam
    cfg = dataclasses.replace(BASE, noise=False, dust_per_mpx=0.0, points_per_mpx=0.0,
                              shadows_per_mpx=0.0, dead_fraction=0.0)
    for seed in range(4):
        plain = render_darkfield(seed, cfg)
        f = render_darkfield(seed, textured(cfg, "seam"))
        assert [s.peak_dn for s in f.scratches] == pytest.approx(
            [s.peak_dn for s in plain.scratches], rel=1e-9)
        shown = (f.image.astype(np.float64) - f.background)[f.mask].max()
        assert shown == pytest.approx(
            (plain.image.astype(np.float64) - plain.background)[plain.mask].max(), abs=1.0)


def test_grain_raises_the_whitened_background_power_at_2_to_10_px():
    ratios = []
    for seed in range(6):
        plain = whitened_band_power(render_darkfield(seed, PLAIN))
        assert 0.06 < plain < 0.085  # camera noise only
        f = render_darkfield(seed, textured(PLAIN, "grain"))
        ratios.append((f.texture.grain[0].strength, whitened_band_power(f) / plain))
    assert all(r > 1.2 for _, r in ratios), ratios
    assert max(r for _, r in ratios) > 10.0, ratios  # and strong grain among them
    held = render_darkfield(0, textured(PLAIN, "heldout"))
    assert whitened_band_power(held) > 100 * 0.085


def test_grain_scales_are_the_fwhm_of_their_autocorrelation():
    for size in (4.0, 8.0):
        g = tx.lognormal_grain((PX, PX), 0.05, size, 1)
        assert g.mean() == pytest.approx(1.0, abs=0.01)
        assert autocorrelation_fwhm(g) == pytest.approx(size, rel=0.1)
        s = tx.pupil_speckle((PX, PX), size, 1)
        assert s.mean() == pytest.approx(1.0, abs=1e-4)
        assert autocorrelation_fwhm(s) == pytest.approx(size, rel=0.1)
        # fully developed speckle: exponential intensity, std equal to the mean
        assert s.std() == pytest.approx(1.0, abs=0.1) and (s < 0.05).mean() > 0.03


def test_grain_follows_the_haze():
    # multiplicative in the haze: the grain's DN swing is larger where the haze is brighter
    cfg = dataclasses.replace(PLAIN, vignetting=(0.65, 0.65), centre_offset=0.0, noise=False)
    f = render_darkfield(0, textured(cfg, "grain"))
    plain = render_darkfield(0, cfg)
    swing = np.abs(f.image.astype(np.float64) - plain.image)
    centre, corner = swing[96:160, 96:160].mean(), swing[:40, :40].mean()
    assert centre > 1.4 * corner > 0


def test_seam_steps_gain_and_offset_at_its_column():
    for seed in range(3):
        f = render_darkfield(seed, textured(FLAT, "seam"))
        seam = f.texture.seam
        assert 0.45 * PX <= seam.column <= 0.55 * PX
        img = f.image.astype(np.float64) - FLAT.dark_offset_dn
        left = np.median(img[:, seam.column - 8:seam.column])
        right = np.median(img[:, seam.column:seam.column + 8])
        assert right == pytest.approx(left * seam.gain + seam.offset_dn, abs=2.0)
        assert abs(right - left) > 0.5 * abs(left * (seam.gain - 1) + seam.offset_dn)
    held = render_darkfield(0, textured(FLAT, "heldout"))
    assert held.texture.seam.column == PX // 2


def test_dark_lines_are_dark_and_the_heldout_last_row_too():
    seen = 0
    for seed in range(8):
        f = render_darkfield(seed, textured(PLAIN, "lines"))
        img = f.image.astype(np.float64)
        for r, g in f.texture.dark_rows:
            ref = img[r - 1 if r else 1]
            assert np.median(img[r]) == pytest.approx(g * np.median(ref), abs=0.05 * np.median(
                ref) + 2)
            seen += 1
        for c, g in f.texture.dark_cols:
            ref = img[:, c - 1 if c else 1]
            assert np.median(img[:, c]) == pytest.approx(g * np.median(ref), abs=0.05 * np.median(
                ref) + 2)
            seen += 1
    assert seen >= 5
    held = render_darkfield(1, textured(PLAIN, "heldout"))
    assert held.image[-1].mean() < 0.35 * held.image[-2].mean()


@pytest.mark.parametrize("bits, step", [(12, 16), (16, 256)])
def test_quantised_frames_have_the_256_levels_of_an_8_bit_camera(bits, step):
    for texture in ("quantised", "heldout"):
        f = render_darkfield(3, dataclasses.replace(BASE, bit_depth=bits, texture=texture))
        assert f.texture.quantise_bits == 8
        assert (f.image % step == 0).all() and f.image.max() <= 255 * step
        assert 40 < len(np.unique(f.image)) <= 2 ** 8
    plain = render_darkfield(3, dataclasses.replace(BASE, bit_depth=bits))
    assert len(np.unique(plain.image)) > 2 ** 8


def test_quantising_an_8_bit_frame_changes_nothing():
    cfg = dataclasses.replace(BASE, bit_depth=8)
    assert np.array_equal(render_darkfield(4, textured(cfg, "quantised")).image,
                          render_darkfield(4, cfg).image)


def test_noise_family_scales_the_noise_and_the_scratch_snr():
    for seed in range(3):
        plain = render_darkfield(seed, FLAT)
        f = render_darkfield(seed, textured(FLAT, "noise"))
        factor = f.texture.noise_factor
        assert 0.7 <= factor <= 1.8
        ratio = (f.image - f.background).std() / (plain.image - plain.background).std()
        assert ratio == pytest.approx(factor, rel=0.03)
        scratched = render_darkfield(seed, BASE)
        noisy = render_darkfield(seed, textured(BASE, "noise"))
        np.testing.assert_allclose(noisy.scratch_snr * factor, scratched.scratch_snr, rtol=1e-5)
    assert 1.26 <= render_darkfield(0, textured(FLAT, "heldout")).texture.noise_factor <= 1.34


def test_pits_darken_and_glare_brightens_the_haze_as_distractors():
    f = render_darkfield(2, textured(dataclasses.replace(PLAIN, noise=False), "pits"))
    pits = [s for s in f.specks if s.kind == "pit"]
    assert pits and not f.mask.any()
    for p in pits:
        r, c = round(p.y), round(p.x)
        if 0 <= r < PX and 0 <= c < PX:
            assert f.image[r, c] < f.background[r, c] - 0.2 * p.amplitude * (
                f.background[r, c] - PLAIN.dark_offset_dn)
    f = render_darkfield(2, textured(dataclasses.replace(PLAIN, noise=False), "glare"))
    glare = [s for s in f.specks if s.kind == "glare"]
    assert glare
    for g in glare:
        r, c = round(g.y), round(g.x)
        if 0 <= r < PX and 0 <= c < PX:
            assert f.image[r, c] - f.background[r, c] == pytest.approx(g.amplitude, rel=0.05,
                                                                      abs=1.0)


def test_dust_clusters_are_tight_groups_of_many_specks():
    f = render_darkfield(3, textured(PLAIN, "dust"))
    dust = np.array([(s.x, s.y) for s in f.specks if s.kind == "dust"])
    assert len(dust) >= 5
    # every speck has neighbours within a few tens of px: clusters, not a sprinkle
    d = np.hypot(*(dust[:, None, :] - dust[None, :, :]).transpose(2, 0, 1))
    np.fill_diagonal(d, np.inf)
    assert np.median(d.min(axis=1)) < 15.0


def test_heldout_is_never_drawn_by_the_training_families(monkeypatch):
    assert tx.HELDOUT not in tx.TRAINING_TEXTURES and "mixed" in tx.TRAINING_TEXTURES
    counts = dict.fromkeys(tx.ELEMENTS, 0)
    n = 400
    for seed in range(n):
        t = tx.draw_texture("mixed", seed, (PX, PX))
        assert t.family == "mixed" and "pupil" not in t.elements
        assert all(g.kind == "lognormal" for g in t.grain)
        for e in t.elements:
            counts[e] += 1
    # every element of the mix is drawn at about its chance
    for e, chance in tx.MIX_CHANCE.items():
        assert counts[e] / n == pytest.approx(chance, abs=0.08), e
    # and the held-out generator is never run when rendering training frames
    def refuse(*args, **kwargs):
        raise AssertionError("the held-out speckle was rendered")

    monkeypatch.setattr(tx, "pupil_speckle", refuse)
    for texture in tx.TRAINING_TEXTURES:
        for seed in range(3 if texture != "mixed" else 12):
            render_darkfield(seed, textured(BASE, texture))
    with pytest.raises(AssertionError, match="held-out speckle"):
        render_darkfield(0, textured(BASE, tx.HELDOUT))


def test_texture_stream_leaves_the_scene_and_noise_streams_alone():
    # a texture with nothing but 8-bit levels changes only the rounding of the same frame
    plain = render_darkfield(8, BASE)
    f = render_darkfield(8, textured(BASE, "quantised"))
    assert np.abs(f.image.astype(np.int64) - plain.image).max() <= 8
    assert np.array_equal(f.background, plain.background)


@pytest.mark.parametrize("bad", ["bogus", "", None, "Mixed"])
def test_bad_texture_names_are_refused(bad):
    with pytest.raises(ValueError, match="texture must be one of"):
        DarkfieldConfig(texture=bad)
    with pytest.raises(ValueError, match="texture must be one of"):
        frames_at(PX, bad)


def test_simulate_darkfield_writes_textured_frames(tmp_path, capsys):
    rc = main(["simulate-darkfield", "--quiet", str(tmp_path / "a"), "--count", "1", "--size",
               str(PX), "--texture", "heldout"])
    assert rc == 0
    written = tifffile.imread(next((tmp_path / "a").glob("*.tiff")))
    expected = render_darkfield(0, textured(BASE, "heldout")).image
    assert np.array_equal(written, expected)
    with pytest.raises(SystemExit) as exc:
        main(["simulate-darkfield", str(tmp_path / "b"), "--texture", "bogus"])
    assert exc.value.code == 2
    assert "expected one of none, grain" in capsys.readouterr().err
