"""glass-inspect check: each part of a head brought up alone, the others absent; on the
simulated head (MockFactory pins, the GRBL simulator on a pty, the simulated camera) and on a
"real" head file whose stage port is the simulator's pty while its camera and GPIO are missing."""

import argparse
import ctypes
import math

import numpy as np
import pytest

from edge import bringup, config
from edge.assembly import GPIO, STAGE, AssemblyError, build_head, build_parts
from edge.bringup import (
    END_OF_FRAME,
    HANDED_OVER,
    START_OF_EXPOSURE,
    CheckError,
    FrameTiming,
    Move,
    buffer_stamp,
    judge_timing,
)
from edge.check_cli import add_commands
from edge.cli_common import UsageError
from edge.sim.grbl import GrblSimulator
from edge.sim.parts import SIM_PULL_OFF_MARGIN_MM, SimOptions
from tests.conftest import real_head_toml, small_head_data


def run_check(argv: list[str], capsys) -> tuple[int, str]:
    """The command as glass-inspect runs it: its parser added to a fresh one, then its func."""
    p = argparse.ArgumentParser(prog="glass-inspect")
    add_commands(p.add_subparsers(dest="command", required=True))
    args = p.parse_args(["check", *argv])
    rc = args.func(args)
    return rc, capsys.readouterr().out


@pytest.fixture
def small_sim(tmp_path):
    """The simulated head with small frames and a 2 x 1 RoI grid."""
    return config.parse(small_head_data(), str(tmp_path / "small-head.toml"))


@pytest.fixture
def grbl_pty():
    """A stage controller on a serial device, as the default head's stage simulator is made."""
    cfg = config.load(None)
    lim = cfg.stage.soft_limits_mm
    travel = tuple((lo, hi + 2 * SIM_PULL_OFF_MARGIN_MM) for lo, hi in (lim.x, lim.y))
    with GrblSimulator(travel, homing=True, accel_mm_s2=800.0) as sim:
        yield sim, sim.start()


def _real_head(tmp_path, port: str, rows: int = 2):
    path = real_head_toml(tmp_path, port=port)
    text = path.read_text()
    path.write_text(text.replace("rows = 5", f"rows = {rows}", 1))
    return path


# -- stage -------------------------------------------------------------------------------------
def test_stage_alone_on_a_real_head_whose_camera_and_gpio_are_missing(tmp_path, grbl_pty,
                                                                    capsys):
    _, port = grbl_pty
    head = _real_head(tmp_path, port)
    cfg = config.load(head)
    # the whole head cannot start here: its camera and GPIO are not on this machine
    with pytest.raises(AssemblyError) as e:
        build_head(cfg, engine_path=tmp_path / "missing.onnx")
    assert [p.split(":")[0] for p in e.value.problems] == [
        "GPIO (ring light and trigger)", "camera", "engine"]
    rc, out = run_check(["stage", "--head", str(head)], capsys)
    assert rc == 0, out
    lines = out.splitlines()
    assert f"on {port}" in lines[1] and "Grbl 1.1h" in lines[1]
    assert "homed" in lines[2]  # grbl 1.1h with $22=1 powers up locked: the check homed it
    moves = [ln for ln in lines if ln.strip().endswith(" mm") and ln.strip()[0].isdigit()]
    assert len(moves) == cfg.stage.roi_grid.columns * 2
    for ln in moves:  # planned, measured, over plan, error: all there, with units
        assert ln.count(" s ") >= 2 and " ms " in ln and ln.endswith(" mm")
    assert lines[-1].startswith("passed: 4 moves, each within 0.010 mm of its target")
    assert lines[-2].startswith("time: ") and "planned" in lines[-2]


def test_stage_reports_each_move_against_plan_and_target(small_sim):
    lines = []
    out = bringup.check_stage(small_sim, say=lines.append)
    assert out.ok, out.reason
    grid = small_sim.stage.roi_grid
    assert sorted(m.roi for m in out.measurements) == list(range(grid.count))
    for m in out.measurements:
        assert m.error_mm <= out.numbers["tolerance_mm"]
        # the driver returns once the controller reports Idle: never before its own plan
        assert m.measured_s >= m.planned_s > 0
    assert math.isclose(out.numbers["planned_s"], sum(m.planned_s for m in out.measurements))


def test_a_stage_that_alarms_mid_tour_fails_with_the_move_named(tmp_path, grbl_pty):
    sim, port = grbl_pty
    cfg = config.load(_real_head(tmp_path, port))
    lines = []

    def say(line: str) -> None:
        lines.append(line)
        if line.endswith(" mm") and line.strip()[0].isdigit():
            sim.trip_limit()  # a hard limit switch after the first move

    out = bringup.check_stage(cfg, say=say)
    assert not out.ok and len(out.measurements) == 1
    assert out.reason.startswith("the move to RoI") and "failed" in out.reason
    assert lines[-1] == f"FAILED: {out.reason}"


def test_stage_verdict_and_tolerance():
    good = Move(0, (10.0, 10.0), 1.0, 1.05, (10.0, 10.004))
    bad = Move(1, (48.0, 10.0), 0.5, 0.52, (48.03, 10.0))
    lines = []
    out = bringup._stage_outcome([good, bad], 0.01, lines.append)
    assert not out.ok and out.reason.startswith("1 of 2 moves ended farther than 0.010 mm")
    assert "0.030 mm, RoI 1" in out.reason
    assert bringup._stage_outcome([good], 0.01, lines.append).ok
    # a stage coarser than 0.01 mm per step passes within one of its steps
    assert bringup.stage_tolerance_mm({100: 250.0, 101: 250.0}) == 0.01
    assert bringup.stage_tolerance_mm({100: 40.0, 101: 80.0}) == pytest.approx(0.025)


def test_tour_starts_at_the_end_nearer_the_stage(small_sim):
    grid = small_sim.stage.roi_grid
    first = bringup.roi_tour(small_sim, ())
    assert [i for i, _ in first] == [0, 1]
    far_end = first[-1][1]
    assert [i for i, _ in bringup.roi_tour(small_sim, (far_end[0] + 1, far_end[1]))] == [1, 0]
    assert first[0][1] == tuple(grid.origin_mm)


# -- lights ------------------------------------------------------------------------------------
def _trace(path) -> list[tuple[float, int, int]]:
    return [(float(t), int(p), int(v)) for t, p, v in
            (ln.split() for ln in path.read_text().splitlines())]


def test_lights_each_group_in_turn_named_by_direction_and_pin(tmp_path, small_sim):
    trace = tmp_path / "gpio.txt"
    lines = []
    out = bringup.check_lights(small_sim, on_ms=30, flashes=2, say=lines.append,
                               sim_options=SimOptions(trace=trace))
    assert out.ok, out.reason
    states = small_sim.illumination.states
    for k, s in enumerate(states):
        named = [ln for ln in lines if ln.startswith(f"group {k}: ")]
        assert len(named) == 1 and f"header pin {s.pin}" in named[0]
        assert f"{s.angle_deg:g} deg" in named[0]
    # the wiring saw each group's pin rise twice, in group order, one group at a time
    edges = _trace(trace)
    rises = [p for _, p, v in edges if v == 1]
    assert rises == [s.pin for s in states for _ in range(2)]
    lit: set[int] = set()
    for _, p, v in edges:
        (lit.add if v else lit.discard)(p)
        assert len(lit) <= 1
    assert not lit
    assert all(x.lit_s * 1000 >= 29.9 for x in out.measurements)  # sleep never ends early


def test_lights_dark_when_interrupted(tmp_path, small_sim):
    trace = tmp_path / "gpio.txt"

    def between(group: int) -> None:
        if group == 2:
            raise KeyboardInterrupt  # Ctrl-C while the technician was asked for Enter

    with pytest.raises(KeyboardInterrupt):
        bringup.check_lights(small_sim, on_ms=20, flashes=1, between=between,
                             say=lambda line: None, sim_options=SimOptions(trace=trace))
    level: dict[int, int] = {}
    for _, p, v in _trace(trace):
        level[p] = v
    assert level and not any(level.values())
    assert {p for p, _ in level.items()} >= {s.pin for s in small_sim.illumination.states[:2]}


def test_lights_on_time_is_bounded_by_the_watchdog(small_sim, capsys):
    with pytest.raises(CheckError, match="maximum on-time"):
        bringup.check_lights(small_sim, on_ms=small_sim.illumination.max_on_ms)
    with pytest.raises(UsageError, match="max_on_ms = 250 ms"):
        run_check(["lights", "--sim", "--on-ms", "300"], capsys)


# -- camera ------------------------------------------------------------------------------------
def test_camera_frames_numbers_and_pngs(tmp_path, small_sim):
    from PIL import Image

    lines = []
    dark = bringup.check_camera(small_sim, frames=3, out_dir=tmp_path / "png",
                                say=lines.append)
    assert dark.ok, dark.reason
    sim = small_sim.simulation
    # every LED dark: the black level is the simulated sensor's offset, little over it
    assert "the simulated sensor's offset" in lines[2]
    assert abs(dark.numbers["median_dn"]) <= 2.0
    # temporal noise from frame pairs: at least the sensor's read noise, well under twice
    assert sim.read_noise_dn * 0.9 < dark.numbers["noise_dn"] < 2 * sim.read_noise_dn
    pngs = sorted((tmp_path / "png").glob("*.png"))
    assert len(pngs) == 6
    with Image.open(tmp_path / "png" / "camera_00.png") as im:
        raw = np.asarray(im)
        assert im.mode.startswith("I;16") and raw.shape == (small_sim.camera.height,
                                                             small_sim.camera.width)
        assert raw.max() % 16 == 0  # 12 bits shifted to the top of 16
    lit = bringup.check_camera(small_sim, frames=2, group=0, say=lines.append)
    assert lit.ok and lit.numbers["mean_dn"] > dark.numbers["mean_dn"]


def test_focus_measure_sees_edges_and_noise_floor():
    rng = np.random.default_rng(1)
    flat = rng.normal(100, 2, (256, 256)).astype(np.float32)
    edges = flat.copy()
    edges[:, ::16] += 200  # lines: sharp edges
    assert bringup.laplacian_variance(edges) > 50 * bringup.laplacian_variance(flat)
    # white noise alone: 20 sigma^2
    assert bringup.laplacian_variance(flat) == pytest.approx(20 * 4, rel=0.05)
    other = rng.normal(100, 2, (256, 256)).astype(np.float32)
    assert bringup.temporal_noise(flat, other) == pytest.approx(2.0, rel=0.05)


def test_camera_alone_needs_camera_and_trigger_not_the_stage(tmp_path, capsys):
    head = real_head_toml(tmp_path)  # camera, GPIO and stage all missing here
    cfg = config.load(head)
    with pytest.raises(AssemblyError) as e:
        bringup.check_camera(cfg)
    assert [p.split(":")[0] for p in e.value.problems] == ["GPIO (ring light and trigger)",
                                                           "camera"]
    with pytest.raises(AssemblyError) as e:
        bringup.check_camera(cfg, free_run=True)
    assert [p.split(":")[0] for p in e.value.problems] == ["camera"]
    with pytest.raises(CheckError, match="only with the trigger"):
        bringup.check_camera(cfg, free_run=True, group=1)
    with pytest.raises(AssemblyError) as e:
        bringup.check_lights(cfg)
    assert [p.split(":")[0] for p in e.value.problems] == ["GPIO (ring light and trigger)"]


def test_build_parts_builds_only_what_is_asked(small_sim):
    with build_parts(small_sim, [STAGE]) as bench:
        assert bench.stage is not None and bench.ring is None and bench.camera is None
    with build_parts(small_sim, [GPIO]) as bench:
        assert bench.ring is not None and bench.stage is None and bench.wiring is not None
    with pytest.raises(ValueError, match="no part"):
        build_parts(small_sim, ["engine"])


# -- trigger -----------------------------------------------------------------------------------
def test_trigger_times_frames_against_the_wiring_edges(small_sim):
    lines = []
    out = bringup.check_trigger(small_sim, frames=4, group=1, say=lines.append)
    assert len(out.measurements) == 4
    frame_ms = small_sim.camera.frame_time_ms
    for t in out.measurements:
        assert t.stamp == HANDED_OVER and t.trigger_s is not None
        # the simulated camera hands a frame over a frame time after its trigger, never sooner
        assert t.delay_ms >= frame_ms - 0.5
        assert t.led_on_s < t.trigger_s < t.led_off_s
        assert not any("before its trigger" in f or "LED" in f for f in t.flags)
    assert "median" in lines[-2] and "spread" in lines[-2]


def test_a_trigger_wired_to_another_pin_fails_the_check(small_sim):
    out = bringup.check_trigger(small_sim, frames=2, say=lambda line: None,
                                sim_options=SimOptions(trigger_pin=11))
    assert not out.ok and out.reason.startswith("frame 0: ")
    assert "trigger" in out.reason


def test_frame_windows():
    def judge(delay_ms, stamp=END_OF_FRAME, on=-3.0, off=21.0):
        t = FrameTiming(0, 10.0, 10.0 + delay_ms / 1000, stamp, 10.0 + on / 1000,
                        10.0 + off / 1000)
        return judge_timing(t, exposure_ms=20.0, settle_ms=2.0, grab_timeout_ms=1000.0).flags

    assert judge(60.0) == ()
    assert "before its trigger" in judge(-5.0)[0]
    assert "could have ended" in judge(10.0)[0]
    assert "grab timeout" in judge(1200.0)[0]
    assert judge(0.05, START_OF_EXPOSURE) == ()
    assert "after the LED went dark" in judge(25.0, START_OF_EXPOSURE)[0]
    assert "settle time" in judge(60.0, on=-1.0)[0]
    assert "went dark 15.0 ms into" in judge(60.0, off=15.0)[0]
    assert judge_timing(FrameTiming(0, None, 1.0, HANDED_OVER), 20, 2, 1000).flags == (
        "no trigger edge was seen",)


def test_v4l2_buffer_stamps(monkeypatch):
    from edge.hardware import v4l2_device

    assert buffer_stamp((5.25, 0x2000)) == (5.25, END_OF_FRAME)
    assert buffer_stamp((5.25, 0x2000 | 0x10000)) == (5.25, START_OF_EXPOSURE)
    assert buffer_stamp((5.25, 0x4000)) is None  # copied stamp: not the monotonic clock
    assert buffer_stamp(None) is None

    def ioctl(fd, request, arg):  # the driver fills the buffer it hands over
        assert request == v4l2_device.DQBUF
        arg.index, arg.bytesused, arg.flags = 2, 4096, 0x2000 | 0x10000
        arg.timestamp[0], arg.timestamp[1] = 12, 345678
        return 0

    monkeypatch.setattr(v4l2_device.fcntl, "ioctl", ioctl)
    dev = bringup.StampedV4L2Device.__new__(bringup.StampedV4L2Device)
    dev.fd, dev._maps = -1, []
    assert dev.dequeue() == (2, 4096, 0x2000 | 0x10000)
    assert dev.stamp == (pytest.approx(12.345678), 0x2000 | 0x10000)
    assert ctypes.sizeof(v4l2_device._Buffer) == 88  # the layout the stamp is read from


def test_trigger_needs_a_triggered_camera(tmp_path):
    head = real_head_toml(tmp_path)
    text = head.read_text().replace('trigger = "external"', 'trigger = "free-run"', 1)
    head.write_text(text)
    with pytest.raises(CheckError, match="runs free"):
        bringup.check_trigger(config.load(head))


def test_lights_dark_on_sigterm(tmp_path, small_sim):
    import os
    import signal
    import threading

    trace = tmp_path / "gpio.txt"

    def between(group: int) -> None:
        if group == 1:  # the service manager stops the check while group 1 is lit
            threading.Timer(0.05, os.kill, (os.getpid(), signal.SIGTERM)).start()

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as e:
        bringup.check_lights(small_sim, on_ms=200, flashes=3, between=between,
                             say=lambda line: None, sim_options=SimOptions(trace=trace))
    assert e.value.code == 128 + signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is before
    level: dict[int, int] = {}
    for _, p, v in _trace(trace):
        level[p] = v
    assert small_sim.illumination.states[1].pin in level and not any(level.values())
