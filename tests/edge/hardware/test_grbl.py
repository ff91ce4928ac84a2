"""The GRBL driver against the GRBL simulator (both firmware flavours, as real firmware behaves)
on a real pseudo-terminal, and over TCP."""

import math
import socket
import threading
import time

import pytest

import edge.hardware.grbl as grbl_driver
from edge.hardware.grbl import (
    ALARMS,
    ERRORS,
    FAST_POLL_S,
    FAST_WINDOW_S,
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


# grbl; grblHAL with homing required ($22=5: boots in ALARM:11) and without ($22=1: boots
# Idle, not homed, no H: field)
MODES = [("grbl", True), ("grblhal", True), ("grblhal", False)]


@pytest.mark.parametrize(("flavor", "required"), MODES,
                         ids=["grbl", "grblhal-22=5", "grblhal-22=1"])
def test_the_whole_life_cycle(flavor, required):
    """Connect, home, 10 RoIs, a bad line, an abort, a limit alarm and its recovery, and a
    reconnect: as the head lives it, against firmware that behaves as the real one."""
    with GrblSimulator(TRAVEL, flavor=flavor, homing_required=required) as sim:
        stage = stage_for(sim)
        assert stage.flavor == flavor and stage.settings[110] > 0
        assert stage.settings[22] == (1 if not required else (5 if flavor == "grblhal" else 1))
        first = stage.status()
        if required:
            assert first.name == "Alarm"  # homing switches: locked until homed
        else:  # Idle, and nothing in the report says it is not homed
            assert first.name == "Idle" and first.homed is None
        stage.ready()
        assert sim.received.count("$H") == 1
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


@pytest.mark.parametrize("flavor", FLAVORS)
def test_homing_failure_is_an_alarm_and_the_next_ready_homes(flavor):
    """ALARM:9, then the firmware resets itself: the driver reads that banner, so the next
    bare ready() does not take it for a surprise reset."""
    limits = ((0.0, 20.0), (0.0, 20.0))
    with GrblSimulator(((0.0, 22.0), (0.0, 22.0)), flavor=flavor, settings={25: 6000.0}) as sim:
        stage = stage_for(sim, limits=limits, feed=3000.0)
        sim.homing_fails = True
        with pytest.raises(GrblAlarm) as e:
            stage.ready()
        assert e.value.code == 9 and not stage.homed
        sim.homing_fails = False
        stage.ready()
        assert stage.status().name == "Idle" and sim.homed
        assert sim.received.count("$H") == 2
        stage.move_to(5.0, 5.0)
        stage.close()


def test_grbl_reset_waits_out_the_pause_after_an_alarm():
    """Classic grbl loses a Ctrl-X sent within 0.5 s of ALARM:n (cleared before a limit
    alarm's lock): the driver waits the pause out and one Ctrl-X does (a driver that resets at
    once needs a second one, RESET_RETRY_S later, and one too early for that loses it again)."""
    with GrblSimulator(TRAVEL) as sim:
        stage = stage_for(sim)
        stage.ready()
        sent = []
        write = stage._write
        stage._write = lambda data: (sent.append(data), write(data))[1]
        sim.trip_limit()
        with pytest.raises(GrblAlarm) as e:
            stage.status()
        assert e.value.code == 1 and stage.critical
        stage.reset()  # at once: the driver waits until the pause is over
        assert sent.count(grbl_driver.SOFT_RESET) == 1
        assert stage.status().name == "Alarm" and not stage.critical
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


def test_status_is_polled_from_the_planned_end_fast_then_slow(rig):
    """Against the simulator's late-ending moves: nothing before the planned end, then no
    faster than every FAST_POLL_S, and the slow rate past the fast window."""
    sim, stage = rig
    stage.ready()
    polls = []
    status = stage.status
    stage.status = lambda: (polls.append(time.monotonic()), status())[1]
    t0 = time.monotonic()
    stage.move_to(100.0, 150.0)
    assert sim.position == pytest.approx((100.0, 150.0), abs=1e-3)
    planned = grbl_driver.move_time(math.dist((199.0, 199.0), (100.0, 150.0)), FEED / 60.0,
                                    stage.accel)
    assert polls and polls[0] - t0 >= planned  # the driver waits out the planned move first
    gaps = [b - a for a, b in zip(polls, polls[1:], strict=False)]
    assert all(g >= FAST_POLL_S for g in gaps)
    late = [b - a for a, b in zip(polls, polls[1:], strict=False)
            if a - t0 - planned >= FAST_WINDOW_S]
    assert all(g >= 1.0 / POLL_HZ for g in late)


class SimClock:
    """Simulated time for the poll schedule: sleeping advances it, nothing else does."""

    def __init__(self) -> None:
        self.t = 100.0

    def now(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        self.t += s


@pytest.mark.parametrize("late_s", [0.0, 0.004, 0.021, 0.038, 0.055, 0.06])
def test_a_late_end_is_noticed_within_one_fast_poll(rig, late_s):
    """Real motion ends up to 60 ms after the plan: the driver notices within one fast poll
    (at 5 Hz alone it noticed up to 0.2 s late)."""
    _, stage = rig
    clock = SimClock()
    stage._clock, stage._sleep = clock.now, clock.sleep
    planned, answer = 0.84, 0.003  # a ? and its report take 3 ms on the wire
    start = clock.t
    end = start + planned + late_s
    polls = []

    def status():
        polls.append(clock.t)
        clock.t += answer
        return StatusReport("Idle" if clock.t >= end else "Run", (0.0, 0.0, 0.0))

    stage.status = status
    stage.wait_idle(5.0, "a move", expected_s=planned)
    assert polls[0] == pytest.approx(start + planned)
    assert clock.t - end <= FAST_POLL_S + answer + 1e-9
    assert len(polls) <= late_s / FAST_POLL_S + 2


def test_a_stalled_move_falls_back_to_the_slow_rate(rig):
    _, stage = rig
    clock = SimClock()
    stage._clock, stage._sleep = clock.now, clock.sleep
    planned = 0.5
    polls = []

    def status():
        polls.append(clock.t - 100.0)
        return StatusReport("Run", (0.0, 0.0, 0.0))

    stage.status = status
    with pytest.raises(StageTimeout, match="did not reach Idle"):
        stage.wait_idle(3.0, "a stalled move", expected_s=planned)
    fast = [t for t in polls if t < planned + FAST_WINDOW_S]
    assert len(fast) <= FAST_WINDOW_S / FAST_POLL_S + 1  # the fast window is bounded
    slow = [t for t in polls if t >= planned + FAST_WINDOW_S]
    gaps = [b - a for a, b in zip(slow, slow[1:], strict=False)]
    assert gaps and all(g == pytest.approx(1.0 / POLL_HZ) for g in gaps)


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
