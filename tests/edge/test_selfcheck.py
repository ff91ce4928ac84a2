"""The per-sample hardware self-check (edge.selfcheck) on frames of the optics simulator.

The small head (two 1024 px RoIs side by side, 2 mm overlap) at the real pixel footprint; the
faults are made here by hand from the simulator's parts (a state rendered with no LED lit, a
scene blurred, frames scaled about the dark level, a RoI rendered where the stage did not go),
and through the simulated head in tests/edge/sim/test_silent_faults.py.
"""

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from edge import calibration as calib
from edge.config import N_STATES
from edge.selfcheck import SelfCheck, SelfCheckFailed
from edge.sim import OpticsRenderer
from edge.sim.sample import generate_sample
from edge.truth import GlassObject, Sample


@pytest.fixture(scope="module")
def optics(small_cfg):
    return OpticsRenderer(small_cfg)


def roi_frames(optics, sample, index, seed, lit=None, blur=0.0, shift_mm=(0.0, 0.0)):
    """One RoI's 6 frames; ``lit[k]``: the groups really lit for state k (default: k)."""
    grid = optics.cfg.stage.roi_grid
    ox, oy = grid.roi_origin_mm(index)
    scene = optics.scene(sample, (ox + shift_mm[0], oy + shift_mm[1]))
    if blur:
        scene.layers = np.stack([gaussian_filter(layer, blur) for layer in scene.layers])
        scene.occupied[:] = 1
    return np.stack([optics.expose(scene, [k] if lit is None else lit[k], seed * 100 + k)
                     for k in range(N_STATES)])


def gained(frames, g, dark=64.0):
    rng = np.random.default_rng(0)
    out = dark + g * (frames.astype(np.float32) - dark) + rng.uniform(-0.5, 0.5, frames.shape)
    return np.clip(np.floor(out + 0.5), 0, 4095).astype(np.uint16)


def check_sample(cfg, rois, check=None, calibration=None):
    """Feed the RoIs (index, frames) to a sample check; the measures of each."""
    chk = (check or SelfCheck(cfg)).sample("S", calibration)
    grid = cfg.stage.roi_grid
    for index, frames in rois:
        chk.roi(index, grid.roi_origin_mm(index), frames)
    chk.finish()
    return chk


def dusty(cfg, seed=1, n=24) -> Sample:
    """Glass with dust (most of it small and sharp) and a stain, no scratch."""
    from edge.sim.sample import make_dust, make_stain

    rng = np.random.default_rng(seed)
    extent = cfg.stage.roi_grid.extent_mm
    objects = [make_dust(rng, extent) for _ in range(n)] + [make_stain(rng, extent)]
    # dust in the overlap of the two RoIs, so that the stage's position can be seen there
    objects.append(GlassObject("dust", ((cfg.stage.roi_grid.roi_origin_mm(1)[0] + 1.0, 5.0),),
                               40.0, 1500.0, 99))
    return Sample(f"DUSTY{seed}", extent, tuple(objects), seed)


def test_normal_samples_are_not_refused(small_cfg, optics):
    """Random samples of the simulator (scratches, dust, stains, fibres) pass, one check
    carrying the noise history across them."""
    check = SelfCheck(small_cfg)
    for seed in range(6):
        sample = generate_sample(500 + seed, small_cfg.stage.roi_grid.extent_mm, 0.5)
        chk = check_sample(small_cfg, [(i, roi_frames(optics, sample, i, seed))
                                       for i in range(2)], check)
        assert len(chk.rois) == 2 and not chk.rois[0].by_dark
        assert all(m.light.min() > 0.3 for m in chk.rois)  # colour contrast of a lit haze
    assert len(check.noise_history) == 6


def test_a_dark_ring_or_a_capped_lens_is_no_light_at_all(small_cfg, optics):
    sample = dusty(small_cfg)
    dark = [()] * N_STATES
    with pytest.raises(SelfCheckFailed, match=r"^hardware self-check: no light in any of the 6 "
                                              r"LED states \(the ring is dark or the lens is "
                                              r"capped\)"):
        check_sample(small_cfg, [(0, roi_frames(optics, sample, 0, 1, lit=dark))])


@pytest.mark.parametrize("group", [0, 3, 5])
def test_a_dead_group_is_named(small_cfg, optics, group):
    sample = dusty(small_cfg)
    lit = [() if k == group else (k,) for k in range(N_STATES)]
    s = small_cfg.illumination.states[group]
    with pytest.raises(SelfCheckFailed,
                       match=rf"an LED group gives no light \(a dead driver or cable\): LED "
                             rf"group {group} \({s.angle_deg:g} deg, header pin {s.pin}\)"):
        check_sample(small_cfg, [(0, roi_frames(optics, sample, 0, 2, lit=lit))])


def test_with_a_calibration_the_light_is_measured_above_its_dark_level(tmp_path, small_cfg,
                                                                        optics):
    """A calibration's dark level (here the simulated camera's offset, as the dark step
    measures it) replaces the colour: light in DN above dark, lit at self_test_min_dn."""
    cfg = small_cfg
    path = calib.save(tmp_path / "cal.npz", dark=np.full(N_STATES, 64.0, np.float32),
                      head=cfg, camera_serial="")
    cal = calib.load(path)
    sample = dusty(cfg)
    chk = check_sample(cfg, [(0, roi_frames(optics, sample, 0, 3))], calibration=cal)
    assert chk.rois[0].by_dark
    # haze 3 DN at the G sites, 0.62 / 0.78 at R / B, under each group's field: 2-3 DN
    assert chk.rois[0].light.min() > 1.5 and chk.rois[0].light.max() < 3.5
    lit = [(k,) if k != 4 else () for k in range(N_STATES)]
    with pytest.raises(SelfCheckFailed, match=r"LED group 4 .* DN above the calibrated dark"):
        check_sample(cfg, [(0, roi_frames(optics, sample, 0, 3, lit=lit))], calibration=cal)


def test_a_group_unlike_the_calibrations_balance(tmp_path, small_cfg, optics):
    """Flat-field gains that expect group 2 at half the others' light (gain 2): its light as
    the camera sees it must be half theirs; equal light is a group that changed."""
    cfg = small_cfg
    gain = np.ones(N_STATES, np.float32)
    gain[2] = 2.0
    path = calib.save(tmp_path / "cal.npz", dark=np.full(N_STATES, 64.0, np.float32),
                      gain=gain, head=cfg, camera_serial="")
    with pytest.raises(SelfCheckFailed, match=r"LED balance unlike the calibration's: LED "
                                              r"group 2 \(60 deg, header pin 32\) 1[6-9]\d %"):
        check_sample(cfg, [(0, roi_frames(optics, dusty(cfg), 0, 4))],
                     calibration=calib.load(path))


def test_a_gain_that_changes_during_the_sample(small_cfg, optics):
    sample = dusty(small_cfg)
    for g in (2.0, 0.5):
        first = roi_frames(optics, sample, 0, 5)
        second = gained(roi_frames(optics, sample, 1, 6), g)
        with pytest.raises(SelfCheckFailed, match=r"the camera's gain changed during the "
                                                  r"sample: its noise is"):
            check_sample(small_cfg, [(0, first), (1, second)])


def test_a_gain_that_drifted_between_samples(small_cfg, optics):
    check = SelfCheck(small_cfg)
    for seed in range(3):
        sample = generate_sample(700 + seed, small_cfg.stage.roi_grid.extent_mm, 0.3)
        check_sample(small_cfg, [(i, roi_frames(optics, sample, i, seed)) for i in range(2)],
                     check)
    sample = generate_sample(710, small_cfg.stage.roi_grid.extent_mm, 0.3)
    drifted = [(i, gained(roi_frames(optics, sample, i, 9), 2.0)) for i in range(2)]
    with pytest.raises(SelfCheckFailed, match=r"the camera's gain drifted: its noise is 4\.\d+ "
                                              r"DN .* last 3 samples"):
        check_sample(small_cfg, drifted, check)
    assert len(check.noise_history) == 3  # a refused sample teaches nothing


def test_a_bright_stain_filling_a_roi_is_not_a_gain_change(small_cfg, optics):
    """Shot noise of a stain over a whole RoI raises its noise less than its light: more light
    on the glass, not another gain."""
    extent = small_cfg.stage.roi_grid.extent_mm
    # stains over RoI 0, clear of the overlap with RoI 1 (from 9.7 mm)
    blobs = tuple(GlassObject("stain", ((float(x), float(y)),), 3000.0, 1500.0,
                              int(100 * x + 10 * y))
                  for x in np.arange(0.5, 7.6, 0.7) for y in np.arange(0.5, 11.5, 0.7))
    sample = Sample("STAINED", extent, blobs, 5)
    chk = check_sample(small_cfg, [(0, roi_frames(optics, sample, 0, 7)),
                                   (1, roi_frames(optics, sample, 1, 8))])
    stained, clean = chk.rois
    assert stained.noise_dn.min() > 1.5 * clean.noise_dn.max()  # well beyond NOISE_SPREAD


def test_out_of_focus(small_cfg, optics):
    sample = dusty(small_cfg, seed=3)
    chk = check_sample(small_cfg, [(i, roi_frames(optics, sample, i, 10 + i))
                                   for i in range(2)])
    assert sum(m.sharp for m in chk.rois) >= 4
    for blur in (3.0, 4.0):
        with pytest.raises(SelfCheckFailed, match=r"^hardware self-check: the camera is out of "
                                                  r"focus: [01] of \d+ bright spots"):
            check_sample(small_cfg, [(i, roi_frames(optics, sample, i, 12 + i, blur=blur))
                                     for i in range(2)])


def test_focus_is_not_judged_on_spotless_glass(small_cfg, optics):
    clean = Sample("CLEAN", small_cfg.stage.roi_grid.extent_mm, ())
    chk = check_sample(small_cfg, [(i, roi_frames(optics, clean, i, 14 + i, blur=4.0))
                                   for i in range(2)])
    assert sum(m.peaks for m in chk.rois) == 0  # the hot pixels are on the sensor


def test_a_roi_taken_where_the_stage_did_not_go(small_cfg, optics):
    sample = dusty(small_cfg, seed=4)
    first = roi_frames(optics, sample, 0, 20)
    chk = check_sample(small_cfg, [(0, first), (1, roi_frames(optics, sample, 1, 21))])
    assert chk._overlap.compared[0][2] > 0.8
    for slip in ((-2.0, 0.0), (0.0, 1.5), (1.0, 0.0)):
        with pytest.raises(SelfCheckFailed, match=r"RoI 0 and RoI 1 do not show the same glass "
                                                  r"where they overlap .* \(lost steps\?\)"):
            check_sample(small_cfg, [(0, first),
                                     (1, roi_frames(optics, sample, 1, 22, shift_mm=slip))])


def test_a_position_error_is_invisible_where_the_overlap_shows_nothing(small_cfg, optics):
    """Clean glass has nothing in the overlap to compare: no evidence, no verdict on it."""
    clean = Sample("CLEAN", small_cfg.stage.roi_grid.extent_mm, ())
    chk = check_sample(small_cfg, [(0, roi_frames(optics, clean, 0, 30)),
                                   (1, roi_frames(optics, clean, 1, 31, shift_mm=(-2.0, 0)))])
    assert chk._overlap.compared == [(0, 1, None)]


def test_frames_the_pipeline_refuses_are_not_measured(small_cfg):
    chk = SelfCheck(small_cfg).sample("S")
    assert chk.roi(0, (0.0, 0.0), None) is None
    assert chk.roi(0, (0.0, 0.0), np.zeros((5, 64, 64), np.uint16)) is None
    chk.finish()


def test_inspect_sample_gives_error_with_the_self_checks_reason(small_cfg, optics):
    """The one fail-safe path: the self-check's failure is the verdict's ERROR reason."""
    pytest.importorskip("onnxruntime")
    from edge.engine import open_engine
    from edge.inspection import RoiInput, inspect_sample
    from edge.verdict import Status
    from tests.conftest import SHIPPED_MODEL

    sample = dusty(small_cfg, seed=5)
    grid = small_cfg.stage.roi_grid
    # RoI 1 taken 2 mm short of its place: each RoI alone looks like any other
    shift = {0: (0.0, 0.0), 1: (-2.0, 0.0)}
    rois = [RoiInput(i, grid.roi_origin_mm(i),
                     lambda i=i: roi_frames(optics, sample, i, 40 + i, shift_mm=shift[i]))
            for i in range(2)]
    with open_engine(SHIPPED_MODEL, threads=2, max_batch=4) as engine:
        v = inspect_sample("SLIPPED", rois, grid.count, engine, None, small_cfg)
    assert v.status is Status.ERROR
    assert v.reason.startswith("RoI 1: hardware self-check: RoI 0 and RoI 1 do not show the "
                               "same glass where they overlap"), v.reason
    assert len(v.rois) == 2 and "self_check" in v.timings_s


def test_recorded_samples_with_dark_states_are_error_not_pass(tmp_path, small_cfg, optics):
    """The issue's measurement, as `glass-inspect inspect` runs it: a scratched sample recorded
    with every state dark (the ring dark, a lens cap) or with one state dark (a dead group)."""
    pytest.importorskip("onnxruntime")
    import time

    from edge.inspection import inspect_recorded
    from edge.recording import SampleWriter
    from edge.sim.sample import arc
    from edge.verdict import Status

    cfg = small_cfg
    grid = cfg.stage.roi_grid
    pts = arc((3.0, 4.0), 20.0, 12.0, 0.0)
    scratch = GlassObject("scratch", tuple(map(tuple, pts)), 22.0, 600.0, 5, "triangular")
    sample = Sample("SCRATCHED", grid.extent_mm, (scratch, *dusty(cfg).objects), 1)
    cases = {"ALL-DARK": [()] * N_STATES,
             "ONE-DARK": [(k,) if k != 2 else () for k in range(N_STATES)],
             "AS-LIT": None}
    for name, lit in cases.items():
        w = SampleWriter(tmp_path, name, cfg)
        for i in range(grid.count):
            w.add_roi(i, grid.roi_origin_mm(i), roi_frames(optics, sample, i, 50 + i, lit=lit),
                      [time.time()] * N_STATES)
        w.close()
    verdicts = {v.sample_id: v for v in inspect_recorded(
        [tmp_path / n for n in cases], cfg)}
    assert verdicts["AS-LIT"].status is Status.FAIL, verdicts["AS-LIT"].reason
    # ERROR: from the training envelope of the pipeline where the model has one (it runs
    # first), else from the self-check; either way never PASS, nor FAIL for scratches unseen
    for name in ("ALL-DARK", "ONE-DARK"):
        assert verdicts[name].status is Status.ERROR, verdicts[name].reason
    # the self-check's own reading of the recorded frames
    from edge.recording import open_sample

    expect = {"ALL-DARK": r"no light in any of the 6 LED states",
              "ONE-DARK": r"an LED group gives no light .*LED group 2 \(60 deg"}
    for name, pattern in expect.items():
        rec = open_sample(tmp_path / name)
        with pytest.raises(SelfCheckFailed, match=pattern):
            check_sample(cfg, [(i, np.asarray(rec.frames(i))) for i in range(grid.count)])
