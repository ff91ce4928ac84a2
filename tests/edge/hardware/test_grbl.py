"""The GRBL driver against the GRBL simulator (both firmware flavours, as real firmware behaves)
on a real pseudo-terminal, and over TCP."""

import socket
import threading
import time

import pytest

from edge.hardware.grbl import (
    ALARMS,
    ERRORS,
    HAL_ERRORS,
    POLL_HZ,
    GrblAlarm,
    GrblError,
    GrblStage,
    MoveCancelled,
    StageError,
    StageTimeout,
    StatusReport,
    meaning,
)
from edge.sim.grbl import GrblSimulator

LIMITS = ((0.0, 200.0), (0.0, 200.0))
TRAVEL = ((0.0, 204.0), (0.0, 204.0))  # the stage travels a little beyond the head's limits
FEED = 6000.0
FLAVORS = ["grbl", "grblhal"]


def stage_for(sim, **kw) -> GrblStage:
    return GrblStage(sim.path, 115200, kw.pop("limits", LIMITS), kw.pop("feed", FEED),
                     timeout_s=kw.pop("timeout_s", 1.0), **kw)


@pytest.fixture(params=FLAVORS)
def rig(request):
    sim = GrblSimulator(TRAVEL, flavor=request.param)
    sim.start()
    stage = stage_for(sim)
    yield sim, stage
    stage.close()
    sim.close()


@pytest.mark.parametrize("flavor", FLAVORS)
def test_the_whole_life_cycle(flavor):
    """Connect, home, 10 RoIs, a bad line, an abort, a limit alarm and its recovery, and a
    reconnect: as the head lives it, against firmware that behaves as the real one."""
    with GrblSimulator(TRAVEL, flavor=flavor) as sim:
        stage = stage_for(sim)
        assert stage.flavor == flavor and stage.settings[110] > 0
        assert stage.status().name == "Alarm"  # homing switches: locked until homed
        stage.ready()
        # homed at the + end (machine -$27); work coordinates = the head's: G54 = -origin
        assert sim.homed and sim.machine_position[0] == pytest.approx(-sim.settings[27])
        pull = sim.settings[27] if flavor == "grblhal" else 0.0  # grblHAL: $27 off each end
        o = 200.0 + pull
        assert f"G10 L2 P1 X{-o:.3f} Y{-o:.3f}" in sim.received
        assert stage.position[:2] == pytest.approx((o - 1.0, o - 1.0))
        for k in range(10):  # the RoI route
            x, y = 10.0 + 38.0 * (k % 2), 10.0 + 33.0 * (k // 2)
            stage.move_to(x, y)
            assert sim.position == pytest.approx((x, y), abs=1e-3)
            assert stage.position[:2] == pytest.approx((x, y), abs=1e-3)
        with pytest.raises(GrblError) as e:  # a bad line, then the next one still goes
            stage.command("G38.2 X5")
        assert e.value.code == 20
        stage.move_to(20.0, 20.0)
        stop = threading.Event()  # an abort mid-move keeps the position
        threading.Timer(0.15, stop.set).start()
        with pytest.raises(MoveCancelled):
            stage.move_to(150.0, 150.0, cancel=stop.is_set)
        stage.abort()
        stage.ready()
        assert stage.status().name == "Idle"
        homings = sim.received.count("$H")
        threading.Timer(0.2, sim.trip_limit).start()  # a hard limit mid-move
        with pytest.raises(StageError, match="(?i)alarm"):
            stage.move_to(190.0, 190.0)
        assert stage.critical
        stage.ready()  # reset first (grbl is silent, grblHAL refuses $H), then home
        assert sim.received.count("$H") == homings + 1
        stage.move_to(30.0, 40.0)
        stage.close()
        again = stage_for(sim)  # reconnect: Idle and homed, so no homing this time
        again.ready()
        assert sim.received.count("$H") == homings + 1
        again.move_to(35.0, 40.0)
        assert sim.position == pytest.approx((35.0, 40.0), abs=1e-3)
        again.close()


def test_error_carries_the_firmwares_meaning_and_the_next_line_is_accepted(rig):
    sim, stage = rig
    stage.ready()
    with pytest.raises(GrblError) as e:
        stage.command("G38.2 X5")
    assert e.value.code == 20 and ERRORS[20] in str(e.value)
    # grblHAL rejects every G-code line after an error until an empty line: the driver sent it
    assert sim.received[-1] == ""
    stage.move_to(5.0, 5.0)
    assert sim.position == pytest.approx((5.0, 5.0), abs=1e-3)


def test_grblhal_without_the_empty_line_keeps_rejecting():
    with GrblSimulator(TRAVEL, flavor="grblhal", homing=False) as sim:
        stage = stage_for(sim, home=False)
        stage.ready()
        stage._clear_error = lambda: None  # a driver that forgets grblHAL's rule
        with pytest.raises(GrblError):
            stage.command("G38.2 X5")
        with pytest.raises(GrblError) as e:
            stage.command("G1 X1 Y1 F100")
        assert e.value.code == 20  # the same error again, and no motion
        stage.close()


def test_grblhal_codes_have_their_own_meanings():
    assert "homed first" in meaning("error", 46, "grblhal")
    assert "reset the controller" in HAL_ERRORS[79]
    assert "homing required" in meaning("alarm", 11, "grblhal")
    assert "dual-motor" in meaning("alarm", 10, "grbl")
    assert "emergency stop" in meaning("alarm", 10, "grblhal")


def test_soft_limits_checked_before_sending(rig):
    sim, stage = rig
    stage.ready()
    sent = len(sim.received)
    with pytest.raises(StageError, match="outside the soft limits"):
        stage.move_to(250.0, 10.0)
    with pytest.raises(StageError, match="outside the soft limits"):
        stage.move_to(float("nan"), 10.0)
    assert len(sim.received) == sent


@pytest.mark.parametrize("flavor", FLAVORS)
def test_a_head_that_does_not_fit_the_controller_is_refused_at_connection(flavor):
    with GrblSimulator(((0.0, 100.0), (0.0, 100.0)), flavor=flavor) as sim:
        with pytest.raises(StageError, match=r"outside .* travel .*\$130=100"):
            stage_for(sim)  # the head's 200 mm do not fit in 100 mm of travel
        with pytest.raises(StageError, match=r"above .* maximum x rate \(\$110="):
            stage_for(sim, limits=((0.0, 100.0), (0.0, 100.0)), feed=50_000.0)
    with GrblSimulator(TRAVEL, flavor=flavor, homing=False) as sim, \
            pytest.raises(StageError, match=r"homing disabled \(\$22=0\)"):
        stage_for(sim)


def test_controller_soft_limit_alarm_is_recovered_by_a_reset_and_homing(rig):
    sim, stage = rig
    stage.ready()
    stage.limits = ((-100.0, 200.0), (0.0, 200.0))  # a head whose limits are wrong
    with pytest.raises(GrblAlarm) as e:
        stage.move_to(-50.0, 10.0)
    assert e.value.code == 2 and ALARMS[2] in str(e.value)
    assert stage.critical
    stage.ready()
    stage.move_to(50.0, 50.0)
    assert sim.position == pytest.approx((50.0, 50.0), abs=1e-3)


def test_classic_grbl_is_silent_after_a_limit_until_reset():
    with GrblSimulator(TRAVEL, flavor="grbl") as sim:
        stage = stage_for(sim, timeout_s=0.5)
        stage.ready()
        sim.trip_limit()
        time.sleep(0.7)  # ALARM:1, then [MSG:Reset to continue], then nothing
        with pytest.raises(StageError):
            stage.status()
        stage.ready()
        assert stage.status().name == "Idle"
        stage.close()


def test_silent_controller_times_out(rig):
    sim, stage = rig
    stage.ready()
    sim.silent = True
    t0 = time.monotonic()
    with pytest.raises(StageTimeout, match="did not answer"):
        stage.move_to(10.0, 10.0)
    assert time.monotonic() - t0 < 10.0


def test_homing_failure_is_an_alarm():
    limits = ((0.0, 20.0), (0.0, 20.0))
    with GrblSimulator(limits, settings={25: 6000.0}) as sim:
        stage = stage_for(sim, limits=limits, feed=3000.0)
        sim.homing_fails = True
        with pytest.raises(GrblAlarm) as e:
            stage.ready()
        assert e.value.code == 9
        stage.close()


def test_reset_while_moving_loses_position_and_rehomes(rig):
    sim, stage = rig
    stage.ready()
    stage.command("G1 X20 Y20 F6000")  # ok on entering the planner, not on arrival
    time.sleep(0.1)
    stage.reset()
    assert stage.status().name == "Alarm"  # ALARM:3: must be re-homed
    homings = sim.received.count("$H")
    stage.ready()
    assert sim.received.count("$H") == homings + 1


def test_an_early_reset_is_sent_again_until_the_banner():
    with GrblSimulator(TRAVEL, boot_s=0.5) as sim:  # boots slowly: the first Ctrl-X is lost
        stage = stage_for(sim)
        assert stage.banner.startswith("Grbl 1.1h")
        assert sim.received == ["$$"]
        stage.close()


def test_status_is_polled_no_faster_than_the_interface_guide_says(rig):
    sim, stage = rig
    stage.ready()
    polls = []
    status = stage.status
    stage.status = lambda: (polls.append(time.monotonic()), status())[1]
    stage.move_to(100.0, 150.0)
    gaps = [b - a for a, b in zip(polls, polls[1:], strict=False)]
    assert all(g >= 1.0 / POLL_HZ - 0.01 for g in gaps)
    assert len(polls) <= 3  # the driver waits out the planned move first


def test_status_report_parsing():
    st = StatusReport.parse("<Run|MPos:12.500,3.000,0.000|FS:6000,0|WCO:-200.000,-200.000,0.000>")
    assert st.name == "Run" and st.position == (12.5, 3.0, 0.0) and st.machine
    assert st.wco == (-200.0, -200.0, 0.0)
    hal = StatusReport.parse("<Idle|MPos:-1.000,-1.000,0.000|Bf:35,1023|FS:0,0|H:1,3>")
    assert hal.homed is True and hal.wco is None
    w = StatusReport.parse("<Hold:0|WPos:1,2,3>")
    assert w.name == "Hold" and not w.machine
    assert StatusReport.parse("ok") is None
    assert StatusReport.parse("<Idle|MPos:x,y>") is None


def test_unreachable_port_is_one_clear_error():
    with pytest.raises(StageError, match="cannot open the stage controller's port"):
        GrblStage("/dev/does-not-exist", 115200, LIMITS, FEED)


def test_any_pyserial_url_socket(tmp_path):
    """The same driver over ``socket://``: a TCP bridge in front of the simulator's pty."""
    import os
    import select

    sim = GrblSimulator(TRAVEL, homing=False)
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
        assert sim.position == pytest.approx((3.0, 4.0), abs=1e-3)
        stage.close()
    finally:
        stop.set()
        t.join(2)
        server.close()
        os.close(fd)
        sim.close()
