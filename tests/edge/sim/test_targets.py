"""Simulated heads mounted with tolerances, calibration targets, and the head's ground truth."""

import math
import types

import numpy as np
import pytest

from edge.config import ConfigError
from edge.sim import OpticsRenderer, arc, generate_sample
from edge.sim.camera import SimCamera, SimWiring
from edge.sim.parts import SimGlass
from edge.sim.targets import DotGrid, LensCap, ReferencePlate, head_truth
from edge.truth import GlassObject, Sample
from tests.conftest import with_changes

SHAPE = (256, 320)  # a small window at the real pixel footprint
MOUNTINGS = [
    {"scale_error": 0.03},
    {"rotation_deg": -2.5},
    {"origin_offset_mm": [0.7, -0.45]},
    {"scale_error": -0.02, "rotation_deg": 1.7, "origin_offset_mm": [-1.3, 2.2]},
]


def mounted(noise_free_hot=True, **sim):
    if noise_free_hot:
        sim.setdefault("hot_pixel_fraction", 0.0)
    return with_changes(simulation=sim)


def expected_px(cfg, shape, origin, pts_mm):
    """The spec, written out: the frame centre sees origin + half the frame + offset; a pixel
    step along x (y) moves sx (1 + e) (cos a, sin a) (sy (1 + e) (-sin a, cos a)) mm."""
    sim = cfg.simulation
    h, w = shape
    sx, sy = cfg.mm_per_px
    k, a = 1.0 + sim.scale_error, math.radians(sim.rotation_deg)
    cx = origin[0] + 0.5 * w * sx + sim.origin_offset_mm[0]
    cy = origin[1] + 0.5 * h * sy + sim.origin_offset_mm[1]
    dx, dy = pts_mm[:, 0] - cx, pts_mm[:, 1] - cy
    u = (math.cos(a) * dx + math.sin(a) * dy) / (sx * k) + 0.5 * w - 0.5
    v = (-math.sin(a) * dx + math.cos(a) * dy) / (sy * k) + 0.5 * h - 0.5
    return np.stack([u, v], axis=1)


def corrected(frame, truth, state):
    """A frame made flat: dark removed, divided by the true response, haze removed."""
    flat = (frame.astype(float) - truth.dark_offset_dn) / truth.response(state)
    return flat - truth.background_dn


def centroids(img, pts_px, half=12):
    """Centroids of the bright spots near ``pts_px``, for those whose window fits the frame."""
    h, w = img.shape
    found, where = [], []
    for cx, cy in pts_px:
        r0, c0 = int(round(cy)), int(round(cx))
        if not (half <= r0 < h - half and half <= c0 < w - half):
            continue
        win = img[r0 - half:r0 + half + 1, c0 - half:c0 + half + 1]
        yy, xx = np.mgrid[r0 - half:r0 + half + 1, c0 - half:c0 + half + 1]
        wgt = np.where(win > 0.1 * win.max(), win, 0.0)
        found.append(((wgt * xx).sum() / wgt.sum(), (wgt * yy).sum() / wgt.sum()))
        where.append((cx, cy))
    return np.array(found), np.array(where)


# -- the default head -------------------------------------------------------------------------
def test_default_head_renders_bit_for_bit_as_before(cfg):
    """Tolerances at 0 take the head file's mapping as it was always computed, so renders equal a
    renderer whose mapping is the old code's (the drawing and sensor kernels are shared)."""
    sim = cfg.simulation
    assert (sim.scale_error, sim.rotation_deg, tuple(sim.origin_offset_mm)) == (0.0, 0.0, (0, 0))
    new = OpticsRenderer(cfg, SHAPE)
    assert new.geometry.identity and new.geometry.mm_per_px == cfg.mm_per_px

    old = OpticsRenderer(cfg, SHAPE)
    sx, sy = cfg.mm_per_px
    h, w = SHAPE

    def old_to_px(pts_mm, origin_mm):
        return np.stack([(pts_mm[:, 0] - origin_mm[0]) / sx - 0.5,
                         (pts_mm[:, 1] - origin_mm[1]) / sy - 0.5], axis=1)

    def old_footprint(origin_mm):
        return (origin_mm[0], origin_mm[1], origin_mm[0] + w * sx, origin_mm[1] + h * sy)

    old.to_px, old.footprint_mm = old_to_px, old_footprint
    old.geometry = types.SimpleNamespace(mm_per_px=cfg.mm_per_px)  # px_mm: mean of the file's
    for seed in range(3):
        sample = generate_sample(40 + seed, (6.0, 6.0), scratch_share=1.0)
        origin = (0.37 * seed, 0.21 * seed)
        a, b = new.render(sample, origin, seed), old.render(sample, origin, seed)
        assert np.array_equal(a.frames, b.frames) and np.array_equal(a.mask, b.mask)
        assert a.defect_ids == b.defect_ids and len(a.defect_ids) > 0
        pts = np.random.default_rng(seed).uniform(-3, 9, (50, 2))
        assert np.array_equal(new.to_px(pts, origin), old_to_px(pts, origin))
        assert new.footprint_mm(origin) == old_footprint(origin)
    zeros = with_changes(simulation={"scale_error": 0.0, "rotation_deg": 0.0,
                                     "origin_offset_mm": [0.0, 0.0]})
    assert zeros.simulation == cfg.simulation and zeros.digest() == cfg.digest()


def test_tolerance_keys_are_validated(default_data):
    from edge.config import parse

    def load(**changes):
        data = {**default_data, "simulation": {**default_data["simulation"], **changes}}
        return parse(data, "mounted.toml")

    cfg = load(scale_error=-0.049, rotation_deg=4.99, origin_offset_mm=[3.0, -3.9])
    assert cfg.simulation.origin_offset_mm == (3.0, -3.9)
    ints = load(scale_error=0, rotation_deg=-1, origin_offset_mm=[0, 1])  # TOML integers
    assert ints.simulation.rotation_deg == -1.0
    bad = [({"scale_error": 0.05}, "simulation.scale_error"),
           ({"scale_error": -0.07}, "simulation.scale_error"),
           ({"scale_error": "1%"}, "simulation.scale_error"),
           ({"rotation_deg": 5.0}, "simulation.rotation_deg"),
           ({"rotation_deg": -12.0}, "simulation.rotation_deg"),
           ({"rotation_deg": True}, "simulation.rotation_deg"),
           ({"origin_offset_mm": [4.0, 3.0]}, "5 mm or more"),  # 5 mm away
           ({"origin_offset_mm": [-6.0, 0.0]}, "5 mm or more"),
           ({"origin_offset_mm": [1.0]}, "simulation.origin_offset_mm"),
           ({"origin_offset_mm": [1.0, 2.0, 3.0]}, "simulation.origin_offset_mm"),
           ({"origin_offset_mm": [float("nan"), 0.0]}, "5 mm or more")]
    for changes, said in bad:
        with pytest.raises(ConfigError, match=said.replace(".", r"\.")) as err:
            load(**changes)
        assert "mounted.toml" in str(err.value)


# -- geometry ---------------------------------------------------------------------------------
@pytest.mark.parametrize("mounting", MOUNTINGS)
def test_dots_land_where_the_mounting_puts_them(mounting):
    cfg = mounted(**mounting)
    head = OpticsRenderer(cfg, SHAPE)
    truth = head_truth(head)
    origin = (2.0, 3.0)
    grid = DotGrid(origin_mm=(0.13, 0.27), marker_every=0)
    frame = head.render(grid, origin, 5).frames[2]
    x0, y0, x1, y1 = head.footprint_mm(origin)
    centres, _, _ = grid.dots(x0, y0, x1, y1)
    predicted = expected_px(cfg, SHAPE, origin, centres)
    np.testing.assert_allclose(truth.geometry.to_px(centres, origin), predicted, atol=1e-9)
    np.testing.assert_allclose(truth.geometry.to_mm(predicted, origin), centres, atol=1e-9)
    found, where = centroids(corrected(frame, truth, 2), predicted)
    assert len(found) >= 6
    assert np.abs(found - where).max() < 0.1
    nominal = (centres - origin) / np.array(cfg.mm_per_px) - 0.5
    assert np.abs(predicted - nominal).max() > 3  # the mounting moves them visibly


@pytest.mark.parametrize("mounting", MOUNTINGS[1:])
def test_every_kind_of_object_follows_the_mounting(mounting):
    cfg = mounted(**mounting)
    head = OpticsRenderer(cfg, SHAPE)
    origin = (1.0, 1.0)
    x0, y0, x1, y1 = head.footprint_mm(origin)
    mid = np.array([0.5 * (x0 + x1), 0.5 * (y0 + y1)])
    pts = arc(tuple(mid - [0.8, 0.3]), 20.0, 1.7)
    scratch = GlassObject("scratch", tuple(map(tuple, pts)), 25.0, 800.0, 3, "triangular")
    dust = GlassObject("dust", (tuple(mid + [0.2, 0.6]),), 60.0, 2000.0, 4)
    sc = head.scene(Sample("T", (9.0, 9.0), (scratch, dust)), origin)
    # the scratch's mask hugs the predicted line
    a, b = expected_px(cfg, SHAPE, origin, pts[[0, -1]])
    rows, cols = np.nonzero(sc.mask)
    along = b - a
    dist = np.abs((cols - a[0]) * along[1] - (rows - a[1]) * along[0]) / np.hypot(*along)
    assert dist.max() < 1.6 and sc.mask.sum() > 0.9 * np.hypot(*along)
    # the dust's light is centred on the predicted pixel
    (u, v), = expected_px(cfg, SHAPE, origin, np.array([mid + [0.2, 0.6]]))
    layer = sc.layers[0].astype(float)
    found, _ = centroids(np.where(sc.mask, 0.0, layer), [(u, v)], half=8)
    assert np.hypot(*(found[0] - (u, v))) < 0.1


def test_the_camera_renders_the_target_at_the_stage_position():
    cfg = mounted(rotation_deg=1.2, origin_offset_mm=[0.5, 0.3], scale_error=0.01)
    head = OpticsRenderer(cfg, SHAPE)
    truth = head_truth(cfg, SHAPE)
    grid_origin = cfg.stage.roi_grid.origin_mm
    stage = [grid_origin[0] + 12.0, grid_origin[1] + 20.0]
    wiring = SimWiring()
    cam = SimCamera(head, wiring, cfg.illumination.trigger_pin,
                    [s.pin for s in cfg.illumination.states], lambda: tuple(stage), grid_origin,
                    0.01)
    try:
        grid = DotGrid(marker_every=0)
        assert SimGlass(cam, cfg).place(grid) is grid
        frame = cam.expose((4,), tuple(stage))
        origin = (12.0, 20.0)  # sample mm = stage mm - grid origin
        x0, y0, x1, y1 = truth.geometry.footprint_mm(origin)
        predicted = truth.geometry.to_px(grid.dots(x0, y0, x1, y1)[0], origin)
        found, where = centroids(corrected(frame, truth, 4), predicted)
        assert len(found) >= 6 and np.abs(found - where).max() < 0.1
        dark = cam.expose((), tuple(stage))
        assert abs(np.median(dark) - truth.dark_offset_dn) <= 1
    finally:
        cam.close()
        wiring.close()


def test_placing_a_target_renders_it_once_before_any_trigger(cfg):
    """A target's own kernels compile at placing, not in the camera's thread while the head
    keeps an LED group lit (the watchdog darkened a group during a first compile); glass,
    whose kernels the camera compiled when it was made, is not rendered twice."""
    calls = []
    fake = types.SimpleNamespace(load=lambda sample: None,
                                 expose=lambda lit, pos: calls.append((lit, pos)))
    glass = SimGlass(fake, cfg)
    glass.place(DotGrid())
    assert calls == [((0,), cfg.stage.roi_grid.origin_mm)]
    glass.place(glass.random(3))
    glass.place(None)
    assert len(calls) == 1


# -- targets ----------------------------------------------------------------------------------
def test_the_plate_shows_each_groups_true_field():
    cfg = mounted(noise_free_hot=False, rotation_deg=2.0, hot_pixel_fraction=1e-4)
    head = OpticsRenderer(cfg, SHAPE)
    truth = head_truth(head)
    plate = ReferencePlate()
    r = head.render(plate, (0.0, 0.0), 11)
    assert not r.mask.any() and r.defect_ids == ()
    green = r.frames[:, 0::2, 0::2]  # GRBG: the green sites of even rows
    level = np.median(green, axis=(1, 2)) / truth.max_dn
    assert ((level > 0.45) & (level < 0.67)).all(), level  # half to two thirds of full scale
    rad = plate.radiance_dn(head)
    good = ~truth.hot_mask
    signal = r.frames.astype(float) - truth.dark_offset_dn
    for s in range(6):
        ratio = signal[s][good] / (rad * truth.response(s)[good])
        noise = np.sqrt(truth.read_noise_dn ** 2 + truth.conversion_gain_dn_per_e * signal[s][good])
        assert abs(ratio.mean() - 1) < 1e-3
        assert 0.9 < (ratio.std() / (noise / signal[s][good]).mean()) < 1.1  # only noise remains
    # what a flat-field calibration measures: group-to-group field ratios, in 16 x 16 blocks
    def blocks(a):
        return a.reshape(16, 16, 20, 16).mean(axis=(1, 3))

    g = truth.hot_mask
    for s in range(1, 6):
        measured = blocks(np.where(g, np.nan, signal[s])) / blocks(np.where(g, np.nan, signal[0]))
        true = blocks(truth.field[s]) / blocks(truth.field[0])
        ok = np.isfinite(measured)
        assert np.abs(measured[ok] / true[ok] - 1).max() < 0.01
    fields = truth.field.mean(axis=(1, 2))
    assert fields.max() / fields.min() > 1.02  # the groups differ, as the head's LEDs do


def test_dark_frames_hold_the_offset_noise_and_hot_pixels():
    cfg = mounted(noise_free_hot=False, hot_pixel_fraction=5e-4, scale_error=0.01)
    head = OpticsRenderer(cfg, SHAPE)
    truth = head_truth(head)
    assert len(truth.hot_rows) == round(5e-4 * SHAPE[0] * SHAPE[1])
    plate = head.scene(ReferencePlate(), (0.0, 0.0))
    darks = [head.expose(plate, (), 1),  # LEDs off, whatever lies there
             head.expose(head.scene(Sample("none", (1.0, 1.0)), (0.0, 0.0)), [], 2),
             head.render(LensCap(), (0.0, 0.0), 3).frames[5]]  # lit, but capped
    for dark in darks:
        d = dark.astype(float)
        cold = d[~truth.hot_mask]
        assert abs(cold.mean() - truth.dark_offset_dn) < 0.1
        assert abs(cold.std() / truth.read_noise_dn - 1) < 0.05
        assert cold.max() < truth.dark_offset_dn + 8 * truth.read_noise_dn
        hot = d[truth.hot_rows, truth.hot_cols] - truth.dark_offset_dn
        expect = np.minimum(truth.hot_dn, truth.max_dn - truth.dark_offset_dn)
        assert np.abs(hot - expect).max() < 6 * truth.read_noise_dn + 1
    # hot pixels scale with the exposure
    long = head_truth(with_changes(camera={"exposure_ms": 40.0},
                                   simulation={"hot_pixel_fraction": 5e-4}), SHAPE)
    assert np.array_equal(long.hot_rows, truth.hot_rows)
    np.testing.assert_allclose(long.hot_dn, 2 * truth.hot_dn)


def test_dot_grid_layout_and_markers(cfg):
    grid = DotGrid(origin_mm=(0.5, 0.25), pitch_mm=1.0, diameter_mm=0.2,
                   bounds_mm=(0.0, 0.0, 25.0, 12.0))
    centres, index, diam = grid.dots(-5.0, -5.0, 100.0, 100.0)
    assert len(centres) == 25 * 12  # x 0.5 .. 24.5, y 0.25 .. 11.25
    np.testing.assert_allclose(centres, 0.5 + np.array([0.0, -0.25]) + index * 1.0)
    markers = diam > 0.2
    assert set(map(tuple, index[markers])) == {(0, 0), (10, 0), (20, 0), (0, 10), (10, 10),
                                               (20, 10)}
    head = OpticsRenderer(with_changes(simulation={"hot_pixel_fraction": 0.0}), SHAPE)
    sc = head.scene(grid, (-0.5, -0.6))  # the marker at dot (0, 0) and its neighbours
    px = head.to_px(centres[:3], (-0.5, -0.6)).round().astype(int)
    spot = [sc.layers[0, v - 20:v + 21, u - 20:u + 21].sum() for u, v in px]
    assert 3.9 < spot[0] / spot[1] < 4.1 and abs(spot[2] / spot[1] - 1) < 0.01
    # a dot's area: pi r^2 of the true pixel footprint
    area_px = math.pi * 0.1 ** 2 / np.prod(cfg.mm_per_px)
    assert abs(spot[1] / grid.radiance_dn(head) / area_px - 1) < 0.01
    for bad in ({"diameter_mm": 1.2}, {"marker_scale": 6.0}, {"fill": 0.0}, {"marker_every": -1}):
        with pytest.raises(ValueError):
            DotGrid(**bad)
    with pytest.raises(ValueError):
        ReferencePlate(fill=2.0)


def test_head_truth_describes_the_head():
    cfg = mounted(noise_free_hot=False, scale_error=0.02, rotation_deg=-1.0,
                  origin_offset_mm=[0.5, -0.25], hot_pixel_fraction=1e-4)
    truth = head_truth(cfg, SHAPE)
    head = OpticsRenderer(cfg, SHAPE)
    sx, sy = cfg.mm_per_px
    assert truth.mm_per_px == pytest.approx((sx * 1.02, sy * 1.02), rel=1e-12)
    assert truth.rotation_deg == -1.0 and truth.origin_offset_mm == (0.5, -0.25)
    assert truth.field.shape == (6, *SHAPE) and truth.field.dtype == np.float32
    assert np.array_equal(truth.field, head.field_maps())
    assert truth.bayer_gain.tolist() == [[1.0, 0.62], [0.78, 1.0]]  # GRBG
    assert truth.dark_offset_dn == 64.0 and truth.exposure_scale == 1.0
    assert np.array_equal(np.ravel_multi_index((truth.hot_rows, truth.hot_cols), SHAPE),
                          head.hot_index)
    full = head_truth(cfg)
    assert full.shape == (cfg.camera.height, cfg.camera.width)
    # a pixel maps to sample mm and back
    px = np.array([[0.0, 0.0], [319.0, 255.0], [100.5, 7.25]])
    np.testing.assert_allclose(truth.geometry.to_px(truth.geometry.to_mm(px, (3, 4)), (3, 4)),
                               px, atol=1e-9)
    with pytest.raises(ValueError):
        head_truth(head, (64, 64))
