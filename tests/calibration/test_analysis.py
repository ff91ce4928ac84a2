"""The calibration's measurements on frames made with known answers."""

import math

import numpy as np
import pytest

from calibration.dark import measure_dark
from calibration.flat import gains, measure_flats, rms_mismatch_pct
from calibration.geometry import find_dots, fit_geometry

RNG = np.random.default_rng(3)


def test_dark_level_noise_and_hot_pixels():
    h, w = 64, 80
    hot = np.zeros((h, w), bool)
    hot[RNG.integers(0, h, 12), RNG.integers(0, w, 12)] = True
    extra = np.where(hot, RNG.uniform(20, 400, (h, w)), 0.0)
    frames = [np.round(64 + extra + RNG.normal(0, 2.2, (h, w))).astype(np.uint16)
              for _ in range(8)]
    d = measure_dark(frames)
    assert d.offset_dn == pytest.approx(64, abs=0.5)
    assert d.read_noise_dn == pytest.approx(2.2, rel=0.15)
    assert (d.hot == hot).all()
    with pytest.raises(ValueError, match="at least 2 frames"):
        measure_dark(frames[:1])


def test_flat_fields_gains_and_dead_and_stuck_pixels():
    h, w = 48, 64
    yy, xx = np.mgrid[0:h, 0:w]
    dark = np.full((h, w), 64.0)
    truth = [1500 * (1 - 0.2 * ((xx - w / 2) ** 2 + (yy - h / 2) ** 2) / (w * w / 4)) * (1 + k / 10)
             for k in range(6)]
    dead, stuck = (10, 10), (20, 30)
    dark[stuck] = 900.0
    per_state = []
    for t in truth:
        frames = []
        for _ in range(4):
            f = dark + t + RNG.normal(0, 3, (h, w))
            f[dead] = 64.0
            f[stuck] = 900.0
            frames.append(np.round(f).astype(np.uint16))
        per_state.append(frames)
    r = measure_flats(per_state, dark.astype(np.float32), 64.0)
    assert np.argwhere(r.dead).tolist() == [list(dead)]
    assert np.argwhere(r.stuck).tolist() == [list(stuck)]
    ref = np.stack([np.full((h, w), 1000.0)] * 6)
    g = gains(r.fields, ref)
    ok = ~(r.dead | r.stuck)
    assert rms_mismatch_pct((r.fields * g)[:, ok], ref[:, ok]) < 1e-4
    assert rms_mismatch_pct(np.stack(truth)[:, ok], r.fields[:, ok]) < 0.5


def dot_frame(shape, mm_per_px, rotation_deg, centre_mm, pitch, dot_mm=0.2, grid0=(0.0, 0.0)):
    """Gaussian dots of a grid seen by a camera of the given geometry (about the frame centre;
    the camera turned by ``rotation_deg`` shows the sample turned the other way)."""
    h, w = shape
    cu, cv = (w - 1) / 2, (h - 1) / 2
    th = -math.radians(rotation_deg)
    rot = np.array([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]])
    img = np.full(shape, 64.0)
    half = max(w * mm_per_px[0], h * mm_per_px[1])
    gx = np.arange(grid0[0] + pitch * math.floor((centre_mm[0] - half - grid0[0]) / pitch),
                   centre_mm[0] + half, pitch)
    gy = np.arange(grid0[1] + pitch * math.floor((centre_mm[1] - half - grid0[1]) / pitch),
                   centre_mm[1] + half, pitch)
    sigma = dot_mm / 2.355 / mm_per_px[0]
    yy, xx = np.mgrid[0:h, 0:w]
    for x in gx:
        for y in gy:
            d = np.array([x - centre_mm[0], y - centre_mm[1]])
            u, v = rot @ (d / np.array(mm_per_px)) + (cu, cv)
            if -10 < u < w + 10 and -10 < v < h + 10:
                r0, r1 = int(max(0, v - 8)), int(min(h, v + 9))
                c0, c1 = int(max(0, u - 8)), int(min(w, u + 9))
                img[r0:r1, c0:c1] += 2000 * np.exp(
                    -((xx[r0:r1, c0:c1] - u) ** 2 + (yy[r0:r1, c0:c1] - v) ** 2) / (2 * sigma ** 2))
    return img + RNG.normal(0, 2, shape)


def test_dot_grid_fit_recovers_scale_rotation_and_centre():
    shape, nominal = (600, 700), (0.0114, 0.0112)
    true_px = (nominal[0] * 1.01, nominal[1] * 1.01)
    nominal_centre = (10.0, 8.0)
    centre = (10.3, 7.8)
    img = dot_frame(shape, true_px, 0.3, centre, pitch=1.0)
    dots = find_dots(img - 64.0, 2.0, 0.2 / true_px[0])
    g = fit_geometry(dots, shape, nominal, nominal_centre, (0.0, 0.0), 1.0)
    assert g.dots >= 30 and g.residual_px < 0.3
    assert g.mm_per_px[0] == pytest.approx(true_px[0], rel=1e-3)
    assert g.mm_per_px[1] == pytest.approx(true_px[1], rel=1e-3)
    assert g.rotation_deg == pytest.approx(0.3, abs=0.02)
    assert g.origin_offset_mm == pytest.approx((0.3, -0.2), abs=0.02)


def test_too_few_dots_say_what_to_check():
    with pytest.raises(ValueError, match="dot-grid target under the camera"):
        fit_geometry(np.zeros((3, 2)), (10, 10), (0.01, 0.01), (0, 0), (0, 0), 1.0)
