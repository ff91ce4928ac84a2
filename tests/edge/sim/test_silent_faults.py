"""The silent faults of the simulator's fault plan (edge.sim.faults) through the simulated head:
each ends its sample in ERROR with a reason that names it (the self-check, edge.selfcheck),
the samples around it are inspected, the LEDs end dark."""

import re
import types
from dataclasses import replace

import numpy as np
import pytest

from edge import config
from edge.assembly import build_head
from edge.sim.faults import Fault, FaultPlan, FaultPlanError, make_injector
from edge.sim.parts import SimOptions
from edge.truth import GlassObject, Sample
from edge.verdict import Status
from tests.conftest import SHIPPED_MODEL, small_head_data

pytest.importorskip("onnxruntime")


def bench_head() -> config.HeadConfig:
    """The fault benchmark's head: two RoIs of 256 x 224 px, 15 ms exposures (2-3 DN of
    haze), short frames and moves."""
    d = small_head_data()
    d["camera"].update(width=256, height=224, exposure_ms=15.0, frame_time_ms=20.0,
                       grab_timeout_ms=300.0)
    d["illumination"]["max_on_ms"] = 150.0
    d["stage"]["settle_ms"] = 5.0
    d["stage"]["soft_limits_mm"] = {"x": [0.0, 30.0], "y": [0.0, 30.0]}
    d["stage"]["roi_grid"].update(size_mm=[256 * 40 / 3504, 224 * 35 / 3120], overlap_mm=0.2)
    d["pipeline"].update(tile_size=128, tile_overlap=16)
    d["engine"].update(artifact=str(SHIPPED_MODEL), threads=1)
    return config.parse(d, "bench-head.toml")


def leds_dark(rig) -> bool:
    return not any(rig.sim.wiring.state(s.pin) for s in rig.cfg.illumination.states)


def test_plan_values():
    plan = FaultPlan.parse("defocus:2.5@1/DF,gain_drift:0.5@4,lost_steps@2/LS,ring_dark@1")
    assert plan.faults == (Fault("defocus", 1, "DF", 2.5), Fault("gain_drift", 4, "", 0.5),
                           Fault("lost_steps", 2, "LS"), Fault("ring_dark", 1))
    assert [f.amount for f in plan.faults[:3]] == [2.5, 0.5, 2.0]
    assert str(plan) == "defocus:2.5@1/DF,gain_drift:0.5@4,lost_steps@2/LS,ring_dark@1"
    for bad, why in [("ring_dark:2@1", "takes no value"), ("gain_drift:0@1", "within"),
                     ("defocus:x@1", "expected KIND@N"), ("lost_steps:99@1", "within")]:
        with pytest.raises(FaultPlanError, match=why):
            FaultPlan.parse(bad)


def test_a_replay_camera_refuses_the_silent_faults():
    injector = make_injector(150.0, "defocus@1")
    replay = types.SimpleNamespace(load=lambda s: None, arm=lambda: None,
                                   grab=lambda t: None, expose=lambda *a: None)
    with pytest.raises(FaultPlanError, match="needs the optics simulator"):
        injector.attach_camera(replay)


PLAN = ("dead_led_group@2/DG,ring_dark@1/RD,lens_cap@3/LC,defocus@1/DF,gain_drift@4/GD,"
        "gain_drift:0.5@7/GH")
EXPECT = {
    "DG1": r"^RoI \d: hardware self-check: an LED group gives no light \(a dead driver or "
           r"cable\): LED group 1 \(30 deg, header pin 31\)",
    "RD1": r"^RoI \d: hardware self-check: no light in any of the 6 LED states \(the ring is "
           r"dark or the lens is capped\)",
    # from the 3rd frame on: groups 2-5 dark in the first RoI
    "LC1": r"^RoI \d: hardware self-check: LED groups give no light .*LED group 2 .*LED group "
           r"5 ",
    "DF1": r"^hardware self-check: the camera is out of focus: [01] of \d+ bright spots",
    "GD1": r"^RoI \d: hardware self-check: the camera's gain changed during the sample",
    "GH1": r"^RoI \d: hardware self-check: the camera's gain changed during the sample",
}


def test_each_silent_fault_ends_its_sample_in_error_naming_it():
    cfg = bench_head()
    with build_head(cfg, sim_options=SimOptions(faults=PLAN)) as rig:
        verdicts = {}
        for sid in ("OK1", "DG1", "OK2", "RD1", "LC1", "DF1", "GD1", "GH1", "OK3"):
            rig.load_glass(sid)
            verdicts[sid] = rig.head.inspect(sid)
            assert leds_dark(rig)
        fired = [(f["fault"], f["sample_id"]) for f in rig.sim.faults.fired]
    assert fired == [("dead_led_group", "DG1"), ("ring_dark", "RD1"), ("lens_cap", "LC1"),
                     ("defocus", "DF1"), ("gain_drift", "GD1"), ("gain_drift", "GH1")]
    for sid, pattern in EXPECT.items():
        v = verdicts[sid]
        assert v.status is Status.ERROR and v.reason, (sid, v.reason)
        assert re.search(pattern, v.reason), (sid, v.reason)
    for sid in ("OK1", "OK2", "OK3"):  # the faults end with their sample
        assert verdicts[sid].status is not Status.ERROR, (sid, verdicts[sid].reason)


def test_lost_steps_show_in_the_overlap_and_the_head_homes_before_the_next_sample():
    cfg = bench_head()
    rich = Sample("LS1", cfg.stage.roi_grid.extent_mm, tuple(
        GlassObject("dust", ((float(x), float(y)),), 40.0, 2000.0, int(x * 100 + y * 10))
        for x in np.arange(2.5, 3.2, 0.15) for y in np.arange(0.2, 2.5, 0.4)))
    with build_head(cfg, sim_options=SimOptions(faults="lost_steps@2/LS")) as rig:
        grbl = rig.sim.grbl
        rig.glass.place(rich)
        v = rig.head.inspect("LS1")
        assert v.status is Status.ERROR
        assert "do not show the same glass where they overlap" in v.reason, v.reason
        assert v.reason.endswith("(lost steps?)")
        (fx, fy), (cx, cy) = grbl.position, grbl.carriage_position
        assert abs(fx - cx) == pytest.approx(2.0, abs=1e-6) and fy == pytest.approx(cy)
        assert [f["fault"] for f in rig.sim.faults.fired] == ["lost_steps"]
        assert rig.stage.rehome  # the frames overrule the controller
        # the next sample homes first: the switches put the carriage back where it is said
        rig.glass.place(replace(rich, sample_id="HOMED"))
        v = rig.head.inspect("HOMED")
        assert v.status is not Status.ERROR, v.reason
        assert not rig.stage.rehome
        assert grbl.carriage_position == pytest.approx(grbl.position)
        assert leds_dark(rig)


def test_a_defocused_camera_blurs_the_glass_not_the_sensor():
    """The blurred scene keeps the light (flux), spreads it, and takes in what lies just
    outside the view; hot pixels and noise stay as sharp as the sensor makes them."""
    cfg = bench_head()
    sx, _ = cfg.mm_per_px
    ext = cfg.stage.roi_grid.extent_mm
    with build_head(cfg) as rig:
        cam, origin = rig.camera, cfg.stage.roi_grid.origin_mm
        mid = GlassObject("dust", ((100 * sx, 1.2),), 30.0, 800.0, 1)
        outside = GlassObject("dust", ((-5 * sx, 0.8),), 30.0, 3000.0, 2)
        rig.glass.place(Sample("D", ext, (mid, outside), 3))
        sharp = cam.expose((0,), origin).astype(float) - 64
        cam.blur_px = 4.0
        blurred = cam.expose((0,), origin).astype(float) - 64
        cam.blur_px = 0.0
    row = int(round(1.2 / cfg.mm_per_px[1]))
    win = (slice(row - 20, row + 20), slice(80, 120))
    assert blurred[win].sum() == pytest.approx(sharp[win].sum(), rel=0.1)
    assert blurred[win].max() < 0.2 * sharp[win].max()
    edge_row = int(round(0.8 / cfg.mm_per_px[1]))
    first_cols = (slice(edge_row - 4, edge_row + 5), slice(0, 3))
    assert sharp[first_cols].mean() < 5 < blurred[first_cols].mean()
