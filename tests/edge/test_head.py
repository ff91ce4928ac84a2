"""The inspection head on the whole simulated head: pins, stage, camera, pipeline, failures."""

import threading
import time

import numpy as np
import pytest

from edge import config
from edge.assembly import build_head
from edge.engine import EngineError, open_engine
from edge.recording import open_sample
from edge.sim.parts import SimOptions
from edge.sim.sample import arc
from edge.truth import GlassObject, Sample
from edge.verdict import Status
from tests.conftest import SHIPPED_MODEL, small_head_data

pytest.importorskip("onnxruntime")


def fast_head(**camera) -> config.HeadConfig:
    """The small head (two 1024 px RoIs) with a short frame time, so a sample takes ~0.5 s."""
    d = small_head_data()
    d["camera"].update({"frame_time_ms": 30.0, "grab_timeout_ms": 3000.0, **camera})
    d["stage"]["settle_ms"] = 10.0
    return config.parse(d, "fast-head.toml")


@pytest.fixture(scope="module")
def cfg():
    return fast_head()


@pytest.fixture(scope="module")
def engine():
    with open_engine(SHIPPED_MODEL, threads=2, max_batch=4) as e:
        yield e


def clean(cfg) -> Sample:
    return Sample("CLEAN", cfg.stage.roi_grid.extent_mm, ())


def scratched(cfg) -> tuple[Sample, GlassObject]:
    pts = arc((3.0, 4.0), 20.0, 5.0, 0.0)
    d = GlassObject("scratch", tuple(map(tuple, pts)), 22.0, 800.0, 5, "triangular")
    return Sample("SCRATCHED", cfg.stage.roi_grid.extent_mm, (d,), 1), d


def led_levels(rig) -> list[bool]:
    return [rig.sim.wiring.state(s.pin) for s in rig.cfg.illumination.states] + [
        rig.sim.wiring.state(rig.cfg.illumination.trigger_pin)]


@pytest.mark.parametrize("flavor", ["grbl", "grblhal"])
def test_exact_pin_sequence_per_roi_and_a_pass(cfg, engine, flavor):
    ill = cfg.illumination
    pins = [s.pin for s in ill.states]
    with build_head(cfg, engine=engine, sim_options=SimOptions(flavor=flavor)) as rig:
        rig.glass.place(clean(cfg))
        v = rig.head.inspect("CLEAN")
        assert v.status is Status.PASS, v.reason
        edges = [(p, level) for _, p, level in rig.sim.wiring.edges]
        per_roi = []
        for p in pins:
            per_roi += [(p, True), (ill.trigger_pin, True), (ill.trigger_pin, False), (p, False)]
        assert edges == per_roi * cfg.stage.roi_grid.count
        moves = [line for line in rig.sim.grbl.received if line.startswith("G1 ")]
        # from the nearer end of the route: homing left the stage at the far (+) corner
        assert sorted(moves) == [f"G1 X{rig.head.stage_target(i)[0]:.3f} "
                                 f"Y{rig.head.stage_target(i)[1]:.3f} F6000" for i in (0, 1)]
        assert v.timings_s["acquisition"] > 0 and v.timings_s["frames"] == pytest.approx(
            12 * 0.03)


def test_scratch_found_where_it_lies_and_the_next_sample_starts_at_the_near_end(cfg, engine):
    sample, d = scratched(cfg)
    with build_head(cfg, engine=engine) as rig:
        rig.glass.place(sample)
        v = rig.head.inspect(sample.sample_id)
        assert v.status is Status.FAIL, v.reason
        (found,) = v.defects
        x0, y0, x1, y1 = found.box_mm
        for x, y in (d.points_mm[0], d.points_mm[-1]):
            assert x0 - 0.3 <= x <= x1 + 0.3 and y0 - 0.3 <= y <= y1 + 0.3
        visited = list(rig.head.last.timestamps)  # in the order the stage went
        assert rig.head.route()[0] == visited[-1]  # the next sample starts where this ended
        rig.glass.place(clean(cfg))
        assert rig.head.inspect("CLEAN").status is Status.PASS


def test_exception_in_the_middle_of_a_roi_leaves_the_leds_dark(cfg, engine):
    with build_head(cfg, engine=engine) as rig:
        rig.glass.place(clean(cfg))
        grab, calls = rig.camera.grab, []

        def failing(timeout_s):
            calls.append(1)
            if len(calls) == 3:
                raise ValueError("frame grabber driver crashed")
            return grab(timeout_s)

        rig.camera.grab = failing
        rig.head.stage.ready()
        first = rig.head.route()[0]  # the RoI nearer the stage: after homing, the + corner's
        v = rig.head.inspect("S1")
        assert v.status is Status.ERROR
        assert v.reason.startswith(f"RoI {first}, LED group 2 (60 deg): internal error "
                                   "(ValueError")
        assert led_levels(rig) == [False] * 7
        assert rig.ring.lit is None
        rig.camera.grab = grab  # the head recovers for the next sample
        assert rig.head.inspect("S2").status is Status.PASS


def test_stage_soft_limit_alarm_gives_error(cfg, engine):
    with build_head(cfg, engine=engine) as rig:
        rig.glass.place(clean(cfg))
        rig.sim.grbl.travel = ((0.0, 15.0), (0.0, 200.0))  # RoI 1 is beyond the controller's travel
        v = rig.head.inspect("S")
        assert v.status is Status.ERROR
        assert "stage alarm 2" in v.reason and "soft limit" in v.reason
        assert led_levels(rig) == [False] * 7


def test_stage_error_gives_error(cfg, engine):
    with build_head(cfg, engine=engine) as rig:
        rig.glass.place(clean(cfg))
        rig.stage.feed = -5.0  # the controller refuses a negative feed: error:4
        v = rig.head.inspect("S")
        assert v.status is Status.ERROR
        assert "error:4" in v.reason and "negative value" in v.reason


def test_silent_stage_times_out_to_error(cfg, engine):
    with build_head(cfg, engine=engine) as rig:
        rig.glass.place(clean(cfg))
        rig.head.stage.timeout_s = 0.3
        rig.head.inspect("WARM")
        rig.sim.grbl.silent = True
        v = rig.head.inspect("S")
        assert v.status is Status.ERROR
        assert "did not answer" in v.reason or "sent no banner" in v.reason


def test_camera_that_never_answers_gives_error_within_its_timeout(engine):
    cfg = fast_head(grab_timeout_ms=300.0)
    wired_elsewhere = SimOptions(trigger_pin=3)  # the camera listens on another pin
    with build_head(cfg, engine=engine, sim_options=wired_elsewhere) as rig:
        rig.glass.place(clean(cfg))
        rig.head.stage.ready()
        first = rig.head.route()[0]
        t0 = time.monotonic()
        v = rig.head.inspect("S")
        took = time.monotonic() - t0
        assert v.status is Status.ERROR
        assert (f"RoI {first}, LED group 0 (0 deg): camera delivered no frame within 0.30 s"
                in v.reason)
        assert took < 5.0  # one timeout plus one move, not a hang
        assert led_levels(rig) == [False] * 7


def test_led_watchdog_ends_in_error(engine):
    d = small_head_data()
    d["camera"].update(frame_time_ms=30.0)
    d["illumination"]["max_on_ms"] = 5.0  # shorter than the 20 ms exposure
    cfg = config.parse(d, "watchdog.toml")
    with build_head(cfg, engine=engine) as rig:
        rig.glass.place(clean(cfg))
        v = rig.head.inspect("S")
        assert v.status is Status.ERROR and "watchdog: LED group 0" in v.reason
        assert led_levels(rig) == [False] * 7


class FailingEngine:
    """The shipped engine, failing from its first batch on (a GPU that fell off the bus)."""

    def __init__(self, engine):
        self._e = engine

    def __getattr__(self, name):
        return getattr(self._e, name)

    def infer(self, batch):
        raise EngineError("TensorRT execution failed (simulated)")

    def infer_stream(self, batches):
        for _ in batches:
            raise EngineError("TensorRT execution failed (simulated)")
        yield from ()


def test_engine_error_stops_the_acquisition_and_the_stage(cfg, engine):
    with build_head(cfg, engine=engine) as rig:
        rig.head.engine = FailingEngine(engine)  # the GPU falls off after the start-up
        rig.glass.place(clean(cfg))
        rig.head.stage.ready()
        first = rig.head.route()[0]
        v = rig.head.inspect("S")
        assert v.status is Status.ERROR and "TensorRT execution failed" in v.reason
        assert v.reason.startswith(f"RoI {first}")
        assert rig.sim.grbl.state in ("Idle", "Alarm", "Hold:0")  # not moving
        assert led_levels(rig) == [False] * 7


def test_abort_mid_inspection_gives_error(cfg, engine):
    with build_head(cfg, engine=engine) as rig:
        rig.glass.place(clean(cfg))
        rig.head.stage.ready()
        first = rig.head.route()[0]
        abort = threading.Event()
        threading.Timer(0.1, abort.set).start()
        v = rig.head.inspect("S", abort)
        assert v.status is Status.ERROR and "aborted" in v.reason
        assert v.reason.startswith(f"RoI {first}")
        assert rig.sim.grbl.state != "Run"  # stopped mid-move
        assert led_levels(rig) == [False] * 7


def test_recording_every_inspected_sample(tmp_path, cfg, engine):
    sample, _ = scratched(cfg)
    with build_head(cfg, engine=engine, record_dir=str(tmp_path)) as rig:
        rig.glass.place(sample)
        v = rig.head.inspect(sample.sample_id, truth=sample)
    rec = open_sample(tmp_path / sample.sample_id)
    assert sorted(e.index for e in rec.manifest.rois) == [0, 1]
    assert rec.truth().sample_id == sample.sample_id and len(rec.truth().scratches) == 1
    frames = rec.frames(0)
    assert frames.shape == (6, 1024, 1024) and frames.dtype == np.uint16
    ts = rec.manifest.rois[0].timestamps
    assert all(b - a >= 0.03 * 0.9 for a, b in zip(ts, ts[1:], strict=False))  # a frame apart
    assert v.status is Status.FAIL


def test_each_led_group_is_exposed_as_the_calibrations_led_balance_says(tmp_path, cfg, engine):
    from edge import calibration as calib

    scale = [1.0, 2.0, 1.0, 0.5, 1.0, 1.0]
    path = calib.save(tmp_path / "cal.npz", head=cfg, camera_serial="",
                      led_exposure_scale=scale)
    with build_head(cfg, engine=engine, calibration=calib.load(path)) as rig:
        rig.glass.place(clean(cfg))
        head = rig.head
        assert head.exposures_ms == tuple(cfg.camera.exposure_ms * k for k in scale)
        level = [float(np.mean(head.expose(k)[0])) - cfg.simulation.dark_offset_dn
                 for k in (0, 1, 3)]
        nominal = float(np.mean(head.expose(1, exposure_ms=cfg.camera.exposure_ms)[0]))
        assert led_levels(rig) == [False] * 7
    # group 1 at twice, group 3 at half its nominal exposure: the glass's haze follows
    group1 = nominal - cfg.simulation.dark_offset_dn
    assert level[1] == pytest.approx(2 * group1, rel=0.1)
    assert level[2] < 0.75 * level[0]


def test_an_led_balance_beyond_the_on_time_limit_is_refused(tmp_path, cfg):
    from edge import calibration as calib

    long = cfg.illumination.max_on_ms / cfg.camera.exposure_ms  # lit past the limit
    path = calib.save(tmp_path / "cal.npz", head=cfg, led_exposure_scale=[1.0] * 5 + [long])
    with pytest.raises(calib.CalibrationError, match="LED balance exposes a group for"):
        calib.load(path).check_for(cfg)


# -- after an LED watchdog trip -------------------------------------------------------------------

def starve(rig, at: set[int]) -> list[int]:
    """The acquisition thread starved of CPU while a group is lit: before the ``at``-th trigger
    pulses (counted from 1) it stalls past the LED on-time limit, as under a CPU hog."""
    pulse, calls = rig.ring.pulse_trigger, []
    stall_s = rig.cfg.illumination.max_on_ms / 1000.0 + 0.15

    def starved(*args):
        calls.append(1)
        if len(calls) in at and rig.ring.lit is not None:
            time.sleep(stall_s)
        return pulse(*args)

    rig.ring.pulse_trigger = starved
    return calls


def self_test_edges(cfg) -> list[tuple[int, bool]]:
    """The self-test on the pins: a dark frame (trigger only), then each group once."""
    ill = cfg.illumination
    edges = [(ill.trigger_pin, True), (ill.trigger_pin, False)]
    for s in ill.states:
        edges += [(s.pin, True), (ill.trigger_pin, True), (ill.trigger_pin, False),
                  (s.pin, False)]
    return edges


def edges_since(rig, n: int) -> list[tuple[int, bool]]:
    return [(p, level) for _, p, level in list(rig.sim.wiring.edges)[n:]]


def test_a_spurious_watchdog_trip_is_self_tested_and_the_head_serves_again(cfg, engine):
    sample, _ = scratched(cfg)
    with build_head(cfg, engine=engine) as rig:
        rig.glass.place(clean(cfg))
        starve(rig, at={3})
        tripped = rig.head.inspect("S1")
        assert tripped.status is Status.ERROR
        assert "watchdog: LED group 2 was lit for more than its maximum" in tripped.reason
        assert "trip 1 of 3 allowed within 3600 s: the ring is self-tested" in tripped.reason
        assert led_levels(rig) == [False] * 7
        assert rig.head.watchdog_health() == {
            "state": "self-test due", "trips": 1, "recent": 1, "window_s": 3600.0,
            "max_trips": 3, "self_tests_passed": 0}

        rig.glass.place(sample)
        n = len(rig.sim.wiring.edges)
        v = rig.head.inspect(sample.sample_id)
        assert v.status is Status.FAIL, v.reason  # judged as any other sample
        assert len(v.defects) == 1 and v.timings_s["self_test"] > 0
        test = self_test_edges(cfg)
        assert edges_since(rig, n)[:len(test)] == test  # each group once, before the first move
        assert all(level > cfg.illumination.self_test_min_dn
                   for level in rig.head.self_test_levels)
        health = rig.head.watchdog_health()
        assert (health["state"], health["trips"], health["self_tests_passed"]) == ("ok", 1, 1)

        rig.glass.place(clean(cfg))
        n = len(rig.sim.wiring.edges)
        v = rig.head.inspect("CLEAN")
        assert v.status is Status.PASS and "self_test" not in v.timings_s  # tested once
        assert edges_since(rig, n)[:4] != test[:4]


def test_a_group_the_self_test_does_not_see_keeps_the_head_down(cfg, engine):
    with build_head(cfg, engine=engine) as rig:
        rig.glass.place(clean(cfg))
        starve(rig, at={1})
        assert rig.head.inspect("S1").status is Status.ERROR
        rig.camera.led_pins[3] = 11  # group 3's driver no longer lights its facets
        v = rig.head.inspect("S2")
        assert v.status is Status.ERROR
        assert v.reason.startswith("LED self-test failed: group 3 not seen (group 3 (90 deg, "
                                   "header pin 33)")
        assert "down until restarted" in v.reason and "watchdog: LED group 0" in v.reason
        assert led_levels(rig) == [False] * 7
        assert rig.head.watchdog_health()["state"] == "down"
        n = len(rig.sim.wiring.edges)
        again = rig.head.inspect("S3")
        assert again.status is Status.ERROR and again.reason == v.reason
        assert edges_since(rig, n) == []  # the ring is not lit again


def test_too_many_trips_within_the_window_keep_the_head_down(engine):
    d = small_head_data()
    d["camera"].update(frame_time_ms=30.0, grab_timeout_ms=3000.0)
    d["stage"]["settle_ms"] = 10.0
    d["illumination"].update(watchdog_max_trips=2, watchdog_window_s=600.0)
    cfg = config.parse(d, "two-trips.toml")
    with build_head(cfg, engine=engine) as rig:
        rig.glass.place(clean(cfg))
        starve(rig, at={2})
        assert rig.head.inspect("S1").status is Status.ERROR
        assert rig.head.inspect("S2").status is Status.PASS  # self-tested, serving again
        # an old trip falls out of the window: the head only counts the recent ones
        assert rig.head.recent_trips(time.monotonic() + 601.0) == 0
        starve(rig, at={3})  # counted from this sample on
        third = rig.head.inspect("S3")
        assert third.status is Status.ERROR and "watchdog: LED group" in third.reason
        assert "trip 2 within 600 s, the limit: the head stays down" in third.reason
        health = rig.head.watchdog_health()
        assert health["state"] == "down" and health["recent"] == 2
        n = len(rig.sim.wiring.edges)
        for sid in ("S4", "S5"):
            v = rig.head.inspect(sid)
            assert v.status is Status.ERROR
            # what the line controller's 64 characters carry
            assert v.reason[:64].startswith("LED watchdog tripped 2 times in 600 s: down until "
                                            "restarted")
            assert "watchdog_max_trips = 2" in v.reason
        assert edges_since(rig, n) == []


def test_trips_outside_the_window_do_not_count(engine):
    d = small_head_data()
    d["camera"].update(frame_time_ms=30.0, grab_timeout_ms=3000.0)
    d["stage"]["settle_ms"] = 10.0
    d["illumination"].update(watchdog_max_trips=2, watchdog_window_s=60.0)
    cfg = config.parse(d, "two-trips-a-minute.toml")
    with build_head(cfg, engine=engine) as rig:
        rig.glass.place(clean(cfg))
        starve(rig, at={1})
        assert rig.head.inspect("S1").status is Status.ERROR
        rig.ring._trips[0] -= 61.0  # that trip was more than a minute ago
        assert rig.head.recent_trips() == 0
        starve(rig, at={9})  # after the self-test's 7 frames: one trip within the minute
        v = rig.head.inspect("S2")
        assert v.status is Status.ERROR and "trip 1 of 2 allowed within 60 s" in v.reason
        assert rig.head.down is None
        assert rig.head.inspect("S3").status is Status.PASS
        assert rig.head.watchdog_health()["trips"] == 2


def test_a_run_stops_when_the_head_stays_down(engine):
    from edge.runner import run_head

    d = small_head_data()
    d["camera"].update(frame_time_ms=30.0, grab_timeout_ms=3000.0)
    d["stage"]["settle_ms"] = 10.0
    d["illumination"]["watchdog_max_trips"] = 1
    cfg = config.parse(d, "one-trip.toml")
    with build_head(cfg, engine=engine) as rig:
        starve(rig, at={14})  # the second sample's second frame (12 frames per sample)
        summary = run_head(rig, 5, seed=3)
    assert [r.verdict.status for r in summary.results][-1] is Status.ERROR
    assert len(summary.results) == 2  # the first sample, then the one that tripped
    assert summary.stopped.startswith("the head is down: LED watchdog tripped 1 time in 3600 s")
    assert "stopped early: the head is down" in summary.line()
