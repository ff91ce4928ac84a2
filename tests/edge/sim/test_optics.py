import numba
import numpy as np
import pytest

from edge.sim import OpticsRenderer, arc
from edge.truth import GlassObject, Sample
from tests.conftest import with_changes

SHAPE = (192, 256)  # small window at the real pixel footprint


def straight(kind, angle_deg, intensity, width_um=25.0, length_mm=1.6, seed=1,
             centre=(1.45, 1.1), profile="triangular"):
    a = np.radians(angle_deg)
    start = (centre[0] - 0.5 * length_mm * np.cos(a), centre[1] - 0.5 * length_mm * np.sin(a))
    pts = tuple(map(tuple, arc(start, angle_deg, length_mm)))
    return GlassObject(kind, pts, width_um, intensity, seed, profile if kind == "scratch" else "")


def spot(kind, intensity, width_um, centre=(1.45, 1.1), seed=2):
    return GlassObject(kind, (centre,), width_um, intensity, seed)


def only(*defects):
    return Sample("T", (3.0, 3.0), tuple(defects))


@pytest.fixture(scope="module")
def head(cfg):
    return OpticsRenderer(cfg, shape=SHAPE)


def state_signals(head, defect, noise_seed=3, region=None):
    """Per-state sum of the signal above the clean-glass level over the defect's pixels."""
    r = head.render(only(defect), (0.0, 0.0), noise_seed)
    if region is None:
        region = r.mask if r.mask.any() else head.scene(only(defect), (0, 0)).layers.max(0) > (
            0.2 * defect.intensity_dn)
    f = r.frames.astype(np.float64)
    clean = np.median(f, axis=(1, 2))
    return np.array([(f[s][region] - clean[s]).sum() for s in range(6)])


def test_frames_are_raw_12bit_bayer(head, cfg):
    r = head.render(only(straight("scratch", 30, 800)), (0.0, 0.0), 1)
    assert r.frames.dtype == np.uint16
    assert r.frames.shape == (6, *SHAPE)
    assert r.mask.shape == SHAPE and r.mask.dtype == bool
    assert r.frames.max() <= 4095
    full = OpticsRenderer(cfg)
    assert full.shape == (3120, 3504)


def test_bayer_layout_follows_the_pattern():
    gains = {"R": 0.5, "G": 1.0, "B": 0.25}
    sim = {"background_dn": 1500.0, "channel_gain": gains, "field_vignetting": 0.0,
           "field_tilt": 0.0, "led_balance": 0.0, "hot_pixel_fraction": 0.0}
    for pattern in ("GRBG", "RGGB", "BGGR"):
        cfg = with_changes(camera={"bayer_pattern": pattern}, simulation=sim)
        optics = OpticsRenderer(cfg, shape=(64, 64))
        frame = optics.render(only(), (0, 0), 1).frames[0].astype(float)
        sites = [frame[0::2, 0::2], frame[0::2, 1::2], frame[1::2, 0::2], frame[1::2, 1::2]]
        for site, ch in zip(sites, pattern, strict=True):
            expected = 64 + 1500 * gains[ch]
            assert abs(site.mean() - expected) < 0.02 * expected, (pattern, ch)


def test_clean_glass_is_dark_with_sensor_noise(head, cfg):
    sim = cfg.simulation
    frame = head.render(only(), (0.0, 0.0), 9).frames[0].astype(float)
    assert sim.dark_offset_dn < np.median(frame) < sim.dark_offset_dn + 3 * sim.background_dn
    # read noise plus the shot noise of the faint haze (robust: hot pixels are outliers)
    core = frame[np.abs(frame - np.median(frame)) < 10 * sim.read_noise_dn]
    assert core.size > 0.99 * frame.size
    assert sim.read_noise_dn < core.std() < sim.read_noise_dn * 1.2


def test_dark_frame_has_hot_pixels_and_no_light(cfg):
    head = OpticsRenderer(with_changes(simulation={"hot_pixel_fraction": 1e-3}), shape=(256, 256))
    sc = head.scene(only(spot("dust", 20000, 40)), (0, 0))
    dark = head.expose(sc, [], 5).astype(float)
    lit = head.expose(sc, [0], 5).astype(float)
    assert abs(np.median(dark) - 64) < 1
    hot = np.unravel_index(head.hot_index, (256, 256))
    assert (dark[hot] > 64 + 20).mean() > 0.9  # hot pixels show without light
    assert lit.max() > 3000 > dark[dark < 1000].max()


@pytest.mark.parametrize("normal_state", range(6))
@pytest.mark.parametrize("offset", [-6.0, 0.0, 5.0])
def test_scratch_is_brightest_when_lit_perpendicular(head, normal_state, offset):
    normal = 30.0 * normal_state + offset
    s = state_signals(head, straight("scratch", normal - 90.0, 600, seed=normal_state))
    assert int(np.argmax(s)) == normal_state, s


def test_scratch_varies_across_states_far_more_than_dust_and_stains(head):
    def ratio(sig):
        return sig.max() / max(sig.min(), 1e-9)

    scratches = [ratio(state_signals(head, straight("scratch", a, 600, seed=k)))
                 for k, a in enumerate((3, 47, 101, 160))]
    rugged = [ratio(state_signals(head, straight("scratch", a, 600, seed=k, profile="rugged")))
              for k, a in enumerate((3, 47, 101, 160))]
    dust = [ratio(state_signals(head, spot("dust", i, 40, seed=k)))
            for k, i in enumerate((500, 2000, 20000))]
    stains = [ratio(state_signals(head, spot("stain", 300, 1200, seed=k))) for k in range(4)]
    fibres = [ratio(state_signals(head, straight("fibre", 20, 800, width_um=60, seed=k)))
              for k in range(3)]
    negatives = max(dust + stains + fibres)
    assert negatives < 2.0
    # a scratch midway between two states (47 deg) modulates least: still several times more
    assert min(scratches) > 4.0 and min(scratches) > 3 * negatives
    assert np.median(scratches) > 10 * negatives
    assert min(rugged) > 2 * negatives


def test_dust_often_saturates(head):
    r = head.render(only(spot("dust", 20000, 40)), (0, 0), 1)
    assert (r.frames == 4095).any(axis=(1, 2)).all()


def test_mask_marks_scratches_only(head):
    sample = only(straight("scratch", 20, 400), spot("dust", 5000, 40, centre=(0.5, 0.5)),
                  straight("fibre", 120, 800, width_um=60, centre=(2.2, 1.6)))
    r = head.render(sample, (0.0, 0.0), 1)
    # about 1.6 mm / 11.3 um = 140 px long, 1-3 px wide
    assert 100 < r.mask.sum() < 140 * 4
    rows, cols = np.nonzero(r.mask)
    assert cols.min() > 40 and cols.max() < 220  # nowhere near the dust at (44, 44)
    assert r.defect_ids == (0, 1, 2)


def test_same_seed_same_frames_any_thread_count(head):
    sample = only(straight("scratch", 20, 400), spot("stain", 200, 1000))
    numba.set_num_threads(1)
    a = head.render(sample, (0, 0), 42).frames
    numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    b = head.render(sample, (0, 0), 42).frames
    c = head.render(sample, (0, 0), 43).frames
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_a_defect_renders_the_same_in_overlapping_rois(head, cfg):
    sample = only(straight("scratch", 75, 900, length_mm=2.5, centre=(1.5, 1.0), profile="rugged"),
                  spot("stain", 200, 800, centre=(1.6, 1.3)))
    shift_px = 64
    a = head.scene(sample, (0.0, 0.0)).layers
    b = head.scene(sample, (shift_px * cfg.mm_per_px[0], 0.0)).layers
    np.testing.assert_allclose(a[:, :, shift_px:], b[:, :, :-shift_px], rtol=1e-4, atol=1e-3)


def test_exposure_scales_the_signal():
    sample = only(spot("stain", 300, 1000))
    sigs = []
    for exposure in (10.0, 20.0):
        head = OpticsRenderer(with_changes(camera={"exposure_ms": exposure}), shape=SHAPE)
        sigs.append(head.render(sample, (0, 0), 1).frames.astype(float).sum() - 64 * 6 * 192 * 256)
    assert 1.8 < sigs[1] / sigs[0] < 2.2


def test_led_groups_light_the_field_unevenly(cfg):
    flat = with_changes(simulation={"background_dn": 2000.0, "hot_pixel_fraction": 0.0})
    frames = OpticsRenderer(flat, shape=(128, 128)).render(only(), (0, 0), 1).frames.astype(float)
    g = frames[:, 0::2, 0::2]
    means = g.mean(axis=(1, 2))
    assert means.max() / means.min() > 1.02  # LED balance
    centre, corner = g[:, 28:36, 28:36].mean(axis=(1, 2)), g[:, :6, :6].mean(axis=(1, 2))
    assert (corner < centre).any()  # fall-off toward the corners


def test_real_head_cannot_be_simulated(default_data):
    from edge.config import parse

    del default_data["simulation"]
    default_data["camera"]["device"] = "/dev/video0"
    default_data["illumination"]["pin_factory"] = "jetson"
    with pytest.raises(ValueError, match="no \\[simulation\\]"):
        OpticsRenderer(parse(default_data, "real.toml"))


def test_odd_window_rejected(cfg):
    with pytest.raises(ValueError, match="even"):
        OpticsRenderer(cfg, shape=(101, 100))


def test_a_curved_scratch_changes_its_brightest_state_along_its_length(head):
    # an arc turning 90 degrees: its normal sweeps 90 degrees, so does the best-lit state
    pts = tuple(map(tuple, arc((0.4, 0.3), 0.0, 2.4, turn_deg=90.0)))
    sample = only(GlassObject("scratch", pts, 25.0, 800.0, 5, "triangular"))
    sc = head.scene(sample, (0.0, 0.0))
    ys, xs = np.nonzero(sc.mask)
    start = sc.layers[:, ys[xs < xs.min() + 10], xs[xs < xs.min() + 10]].sum(axis=1)
    end = sc.layers[:, ys[ys > ys.max() - 10], xs[ys > ys.max() - 10]].sum(axis=1)
    assert int(np.argmax(start)) == 3  # heading 0 deg: normal at 90 deg
    assert int(np.argmax(end)) == 0  # heading 90 deg: normal at 0 deg


def test_hot_pixels_belong_to_the_head_not_the_sample(cfg):
    a, b = OpticsRenderer(cfg, shape=SHAPE), OpticsRenderer(cfg, shape=SHAPE)
    assert np.array_equal(a.hot_index, b.hot_index) and np.array_equal(a.field, b.field)
    other = OpticsRenderer(with_changes(simulation={"head_seed": 1}), shape=SHAPE)
    assert not np.array_equal(a.field, other.field)
