"""The GRBL driver against the GRBL simulator on a real pseudo-terminal (and over TCP)."""

import socket
import threading
import time

import pytest

from edge.hardware.grbl import (
    ALARMS,
    ERRORS,
    GrblAlarm,
    GrblError,
    GrblStage,
    MoveCancelled,
    StageError,
    StageTimeout,
    StatusReport,
)
from edge.sim.grbl import GrblSimulator, move_time

LIMITS = ((0.0, 200.0), (0.0, 200.0))
FEED = 6000.0


@pytest.fixture(params=["grbl", "grblhal"])
def rig(request):
    sim = GrblSimulator(LIMITS, flavor=request.param, home_s=0.05)
    path = sim.start()
    stage = GrblStage(path, 115200, LIMITS, FEED, timeout_s=1.0)
    yield sim, stage
    stage.close()
    sim.close()


def test_banner_homing_and_a_timed_move(rig):
    sim, stage = rig
    assert stage.banner.lower().startswith("grbl")
    assert stage.status().name == "Alarm"  # homing switches: locked until homed
    stage.ready()
    assert sim.received[:2] == ["$H", "G21 G90 G94"]
    took = stage.move_to(60.0, 80.0)
    assert stage.position[:2] == pytest.approx((60.0, 80.0))
    assert sim.position == pytest.approx((60.0, 80.0))
    # the simulator takes the time the distance, feed and acceleration say
    assert took >= move_time(100.0, FEED / 60.0, sim.accel) * 0.95
    assert sim.received[-1] == "G1 X60.000 Y80.000 F6000"


def test_error_carries_grbl_meaning_and_the_controller_accepts_the_next_line(rig):
    sim, stage = rig
    stage.ready()
    with pytest.raises(GrblError) as e:
        stage.command("G38.2 X5")
    assert e.value.code == 20 and ERRORS[20] in str(e.value)
    # grblHAL rejects everything after an error until an empty line: the driver sent it
    assert sim.received[-1] == ""
    stage.move_to(5.0, 5.0)
    assert sim.position == pytest.approx((5.0, 5.0))


def test_grblhal_without_the_empty_line_keeps_rejecting():
    with GrblSimulator(LIMITS, flavor="grblhal", homing=False) as sim:
        stage = GrblStage(sim.path, 115200, LIMITS, FEED, timeout_s=1.0)
        stage._clear_error = lambda: None  # a driver that forgets grblHAL's rule
        with pytest.raises(GrblError):
            stage.command("G38.2 X5")
        with pytest.raises(GrblError) as e:
            stage.command("G1 X1 Y1 F100")
        assert e.value.code == 20  # the same error again, and no motion
        assert sim.position == (0.0, 0.0)
        stage.close()


def test_soft_limits_checked_before_sending(rig):
    sim, stage = rig
    stage.ready()
    sent = len(sim.received)
    with pytest.raises(StageError, match="outside the soft limits"):
        stage.move_to(250.0, 10.0)
    with pytest.raises(StageError, match="outside the soft limits"):
        stage.move_to(float("nan"), 10.0)
    assert len(sim.received) == sent


def test_controller_soft_limit_alarm(rig):
    sim, stage = rig
    stage.ready()
    sim.travel = ((0.0, 100.0), (0.0, 100.0))  # the controller's travel is shorter than ours
    with pytest.raises(GrblAlarm) as e:
        stage.move_to(150.0, 10.0)
    assert e.value.code == 2 and ALARMS[2] in str(e.value)
    assert stage.status().name == "Alarm"
    with pytest.raises(GrblError) as e:  # locked out until homed or unlocked
        stage.command("G1 X1 Y1")
    assert e.value.code == 9
    stage.ready()
    stage.move_to(50.0, 50.0)


def test_hard_limit_mid_move(rig):
    sim, stage = rig
    stage.ready()
    threading.Timer(0.2, sim.trip_limit).start()
    with pytest.raises(StageError) as e:
        stage.move_to(190.0, 190.0)
    assert "alarm" in str(e.value).lower()
    assert 0.0 < sim.position[0] < 190.0  # stopped where the switch closed


def test_silent_controller_times_out(rig):
    sim, stage = rig
    stage.ready()
    sim.silent = True
    t0 = time.monotonic()
    with pytest.raises(StageTimeout, match="did not answer"):
        stage.move_to(10.0, 10.0)
    assert time.monotonic() - t0 < 10.0


def test_homing_failure_is_an_alarm(rig):
    sim, stage = rig
    sim.homing_fails = True
    with pytest.raises(GrblAlarm) as e:
        stage.ready()
    assert e.value.code == 9


def test_abort_mid_move_holds_then_resets_without_losing_position(rig):
    sim, stage = rig
    stage.ready()
    stop = threading.Event()
    threading.Timer(0.15, stop.set).start()
    with pytest.raises(MoveCancelled):
        stage.move_to(150.0, 150.0, cancel=stop.is_set)
    stage.abort()
    where = sim.position
    assert 0.0 < where[0] < 150.0
    time.sleep(0.1)
    assert sim.position == where  # stopped, planner flushed
    # a completed feed hold keeps the position: no ALARM:3, no re-homing needed
    assert stage.status().name == "Idle"


def test_reset_while_moving_loses_position():
    with GrblSimulator(LIMITS) as sim:
        stage = GrblStage(sim.path, 115200, LIMITS, FEED, timeout_s=1.0)
        stage.ready()
        assert stage.homed
        stage.command("G1 X150 Y150 F6000")  # ok on entering the planner, not on arrival
        time.sleep(0.1)
        stage.reset()
        assert stage.status().name == "Alarm"  # ALARM:3: must be re-homed
        assert not stage.homed
        stage.ready()
        assert sim.received[-2:] == ["$H", "G21 G90 G94"]
        stage.close()


def test_status_report_parsing():
    st = StatusReport.parse("<Run|MPos:12.500,3.000,0.000|FS:6000,0|Ov:100,100,100>")
    assert st.name == "Run" and st.position == (12.5, 3.0, 0.0)
    assert StatusReport.parse("<Hold:0|WPos:1,2,3>").name == "Hold"
    assert StatusReport.parse("ok") is None
    assert StatusReport.parse("<Idle|MPos:x,y>") is None


def test_unreachable_port_is_one_clear_error():
    with pytest.raises(StageError, match="cannot open the stage controller's port"):
        GrblStage("/dev/does-not-exist", 115200, LIMITS, FEED)


def test_any_pyserial_url_socket(tmp_path):
    """The same driver over ``socket://``: a TCP bridge in front of the simulator's pty."""
    import os
    import select

    sim = GrblSimulator(LIMITS, homing=False)
    sim.start()
    fd = os.open(sim.path, os.O_RDWR | os.O_NOCTTY)
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    stop = threading.Event()

    def bridge():
        conn, _ = server.accept()
        while not stop.is_set():
            r, _, _ = select.select([conn, fd], [], [], 0.02)
            if conn in r:
                data = conn.recv(4096)
                if not data:
                    break
                os.write(fd, data)
            if fd in r:
                conn.sendall(os.read(fd, 4096))
        conn.close()

    t = threading.Thread(target=bridge, daemon=True)
    t.start()
    try:
        stage = GrblStage(f"socket://127.0.0.1:{port}", 115200, LIMITS, FEED, timeout_s=2.0,
                          home=False)
        stage.ready()
        stage.move_to(3.0, 4.0)
        assert sim.position == pytest.approx((3.0, 4.0))
        stage.close()
    finally:
        stop.set()
        t.join(2)
        server.close()
        os.close(fd)
        sim.close()
