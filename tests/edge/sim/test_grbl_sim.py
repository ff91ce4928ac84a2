"""The GRBL simulator against the real firmwares' behaviour, raw bytes over its pty.

Each test speaks to :class:`edge.sim.grbl.GrblSimulator` as a host would, byte by byte, and
checks what classic grbl 1.1h and grblHAL answer (read in their sources). Small travel and fast
homing rates keep the whole file short.
"""

from __future__ import annotations

import os
import select
import threading
import time

import pytest

from edge.sim.grbl import BANNERS, LINE_BUFFER, GrblSimulator, move_time

TRAVEL = ((0.0, 20.0), (0.0, 20.0))
FAST = {24: 600.0, 25: 2400.0, 26: 5}  # locate 10 mm/s, seek 40 mm/s, 5 ms debounce
UNLOCK = "[MSG:'$H'|'$X' to unlock]"
FLAVORS = ["grbl", "grblhal"]


class Port:
    """The host's end of the pty: raw writes, reads split into lines."""

    def __init__(self, sim: GrblSimulator):
        self.fd = os.open(sim.path, os.O_RDWR | os.O_NOCTTY)
        self.buf = b""

    def close(self) -> None:
        os.close(self.fd)

    def send(self, data: bytes | str) -> None:
        os.write(self.fd, data if isinstance(data, bytes) else data.encode("ascii"))

    def _fill(self, timeout: float) -> None:
        r, _, _ = select.select([self.fd], [], [], max(timeout, 0.0))
        if r:
            self.buf += os.read(self.fd, 4096)

    def line(self, timeout: float = 1.0) -> str:
        end = time.monotonic() + timeout
        while b"\r\n" not in self.buf:
            left = end - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no line within {timeout} s (buffer {self.buf!r})")
            self._fill(left)
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line.decode("ascii")

    def until(self, pred, timeout: float = 1.0) -> list[str]:
        """Lines up to and including the first one ``pred`` accepts."""
        end = time.monotonic() + timeout
        out = [self.line(end - time.monotonic())]
        while not pred(out[-1]):
            out.append(self.line(end - time.monotonic()))
        return out

    def quiet(self, seconds: float) -> list[str]:
        """Every line that comes within ``seconds``."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            self._fill(left)
        lines = self.buf.split(b"\r\n")
        self.buf = lines.pop()
        return [x.decode("ascii") for x in lines]

    def cmd(self, text: str, timeout: float = 1.0) -> list[str]:
        """Send a line; the lines up to its ``ok`` or ``error:N``."""
        self.send(text + "\n")
        return self.until(lambda x: x == "ok" or x.startswith("error:"), timeout)

    def report(self, timeout: float = 1.0) -> str:
        self.send(b"?")
        return self.until(lambda x: x.startswith("<"), timeout)[-1]


def fields(report: str) -> dict[str, str]:
    """``<Idle|MPos:1,2,3|FS:0,0>`` -> {"state": "Idle", "MPos": "1,2,3", "FS": "0,0"}"""
    parts = report.strip("<>").split("|")
    return {"state": parts[0], **dict(p.split(":", 1) for p in parts[1:])}


def mpos(report: str) -> tuple[float, ...]:
    return tuple(float(v) for v in fields(report)["MPos"].split(","))


@pytest.fixture
def rig():
    """``rig(flavor, **kw)``: a started simulator and the host's port, past its banner."""
    made: list[tuple[GrblSimulator, Port]] = []

    def make(flavor: str, read_banner: bool = True, **kw) -> tuple[GrblSimulator, Port]:
        kw.setdefault("settings", dict(FAST))
        kw.setdefault("accel_mm_s2", 4000.0)  # short moves
        kw.setdefault("boot_s", 0.01)
        sim = GrblSimulator(TRAVEL, flavor=flavor, **kw)
        sim.start()
        port = Port(sim)
        made.append((sim, port))
        if read_banner:
            port.until(lambda x: x.startswith("Grbl"))
            port.quiet(0.01)  # what follows the banner comes at once
        return sim, port

    yield make
    for sim, port in made:
        port.close()
        sim.close()


def wait_idle(port: Port, timeout: float = 2.0) -> str:
    """Poll until the stage is Idle; that report."""
    end = time.monotonic() + timeout
    while fields(report := port.report())["state"] != "Idle":
        if time.monotonic() > end:
            raise TimeoutError(f"not Idle after {timeout} s: {report}")
        time.sleep(0.01)
    return report


def home(port: Port, flavor: str) -> list[str]:
    if flavor == "grblhal":  # grblHAL refuses $X while homing is required: home
        return port.cmd("$H", 3.0)
    port.cmd("$X")
    return port.cmd("$H", 3.0)


# -- power-up, boot, banners ------------------------------------------------------------------
@pytest.mark.parametrize("flavor", FLAVORS)
def test_power_up_with_homing_required(rig, flavor):
    sim, port = rig(flavor, read_banner=False)
    if flavor == "grbl":  # init lock: Alarm without an ALARM line
        assert port.until(lambda x: x == UNLOCK) == ["", BANNERS["grbl"], UNLOCK]
        assert port.cmd("$X") == ["[MSG:Caution: Unlocked]", "ok"]
    else:
        assert port.until(lambda x: x.startswith("[MSG")) == [
            "", BANNERS["grblhal"], "ALARM:11", "[MSG:Homing cycle required]"]
        assert port.cmd("$X") == ["error:46"]  # home machine to continue
        assert port.cmd("G0 X1") == ["error:9"]
        assert fields(port.report())["state"] == "Alarm"


@pytest.mark.parametrize("flavor", FLAVORS)
def test_ctrl_x_while_booting_is_dropped(rig, flavor):
    sim, port = rig(flavor, read_banner=False, homing=False, boot_s=0.15)
    port.send(b"\x18?")  # during boot: lost, as are any other bytes
    lines = port.quiet(0.25)
    assert lines == ["", BANNERS[flavor]]
    port.send(b"\x18")  # after boot: a second banner
    assert port.until(lambda x: x.startswith("Grbl"))[-2:] == ["", BANNERS[flavor]]


# -- homing -----------------------------------------------------------------------------------
def expected_homing_s(seek_mm: float, sim: GrblSimulator) -> float:
    s, a = sim.settings, sim.accel
    seek, locate, pull = s[25] / 60.0, s[24] / 60.0, s[27]
    return (move_time(seek_mm, seek, a) + 2 * move_time(pull, seek, a)
            + move_time(pull, locate, a) + 4 * s[26] / 1000.0)


@pytest.mark.parametrize("flavor", FLAVORS)
def test_homing_takes_its_time_and_ends_at_minus_pulloff(rig, flavor):
    sim, port = rig(flavor, start_mm=(-12.0, -5.0))
    if flavor == "grbl":
        port.cmd("$X")
    t0 = time.monotonic()
    port.send("$H\n")
    if flavor == "grblhal":  # one unsolicited report as the cycle starts
        assert fields(port.line())["state"] == "Home"
    time.sleep(0.05)
    port.send(b"?")  # not answered during the cycle: once, at its end
    port.send(b"?")
    lines = port.until(lambda x: x == "ok", 3.0)
    took = time.monotonic() - t0
    expected = expected_homing_s(12.0 - 1.0, sim) + (0.1 if flavor == "grblhal" else 0.0)
    assert expected * 0.95 <= took <= expected + 0.3
    assert lines[0].startswith("<Home|MPos:-1.000,-1.000,0.000|")
    assert lines[1:] == (["[MSG:]", "ok"] if flavor == "grblhal" else ["ok"])
    st = fields(port.report())
    assert st["state"] == "Idle" and st["MPos"] == "-1.000,-1.000,0.000"
    assert ("H" in st) == (flavor == "grblhal") and st.get("H", "1") == "1"
    assert sim.machine_position == (-1.0, -1.0, 0.0) and sim.homed


@pytest.mark.parametrize("flavor", FLAVORS)
def test_homing_toward_minus_ends_at_pulloff_above_minus_travel(rig, flavor):
    sim, port = rig(flavor, settings={**FAST, 23: 3}, start_mm=(-18.0, -18.0))
    home(port, flavor)
    assert mpos(port.report()) == (-19.0, -19.0, 0.0)  # -$130 + $27


@pytest.mark.parametrize("flavor", FLAVORS)
def test_homing_failure_alarm_9_then_reset(rig, flavor):
    sim, port = rig(flavor, settings={**FAST, 25: 6000.0})
    sim.homing_fails = True
    if flavor == "grbl":
        port.cmd("$X")
    port.send("$H\n")
    lines = port.until(lambda x: x.startswith("[MSG") and x != "[MSG:]", 3.0)
    lines = [x for x in lines if not x.startswith("<")]
    if flavor == "grbl":  # mc_reset() inside $H: a stale ok, then the banner
        assert lines == ["ALARM:9", "ok", "", BANNERS["grbl"], UNLOCK]
    else:
        assert lines == ["ALARM:9", "", BANNERS["grblhal"], "ALARM:11",
                         "[MSG:Homing cycle required]"]


@pytest.mark.parametrize("flavor", FLAVORS)
def test_ctrl_x_during_homing_is_alarm_6(rig, flavor):
    sim, port = rig(flavor, start_mm=(-15.0, -15.0))
    if flavor == "grbl":
        port.cmd("$X")
    port.send("$H\n")
    time.sleep(0.15)
    port.send(b"\x18")
    lines = [x for x in port.until(lambda x: x.startswith("[MSG") and x != "[MSG:]")
             if not x.startswith("<")]
    assert lines[0] == "ALARM:6"
    assert ("ok" in lines) == (flavor == "grbl")  # the stale ok of the cut-short $H


# -- coordinates, soft limits -----------------------------------------------------------------
@pytest.mark.parametrize("flavor", FLAVORS)
def test_work_coordinates_g10_g53_g92_and_wpos(rig, flavor):
    sim, port = rig(flavor)
    home(port, flavor)
    port.quiet(0.02)
    assert port.cmd("G10 L2 P1 X-20 Y-20") == ["ok"]
    assert fields(port.report())["WCO"] == "-20.000,-20.000,0.000"  # right after the change
    assert port.cmd("G90 G0 X5 Y6") == ["ok"]
    assert mpos(wait_idle(port)) == (-15.0, -14.0, 0.0)
    assert sim.position == pytest.approx((5.0, 6.0))
    assert sim.machine_position == pytest.approx((-15.0, -14.0, 0.0))
    assert port.cmd("$10=0") == ["ok"]  # WPos instead of MPos
    assert fields(port.report())["WPos"] == "5.000,6.000,0.000"
    port.cmd("$10=" + ("1" if flavor == "grbl" else "511"))
    assert port.cmd("G53 G0 X-2 Y-3") == ["ok"]  # machine coordinates
    assert mpos(wait_idle(port)) == (-2.0, -3.0, 0.0)
    assert port.cmd("G10 L20 P1 X0 Y0") == ["ok"]  # here is work zero
    assert fields(port.report())["WCO"] == "-2.000,-3.000,0.000"
    assert port.cmd("$#")[0] == "[G54:-2.000,-3.000,0.000]"
    assert port.cmd("G92 X1 Y1") == ["ok"]
    assert fields(port.report())["WCO"] == "-3.000,-4.000,0.000"
    assert port.cmd("G92.1") == ["ok"]
    assert port.cmd("G55") == ["ok"]  # G55 is still zero
    assert fields(port.report())["WCO"] == "0.000,0.000,0.000"
    assert port.cmd("G10 L2 P7 X0") == ["error:29"]
    port.cmd("")  # grblHAL's sticky error
    assert port.cmd("G10 P1 X0") == ["error:28"]


@pytest.mark.parametrize("flavor", FLAVORS)
def test_soft_limit_envelope_in_machine_coordinates(rig, flavor):
    sim, port = rig(flavor)
    home(port, flavor)
    lo, hi = (-20.0, 0.0) if flavor == "grbl" else (-19.0, -1.0)  # grblHAL: $27 in from each end
    assert port.cmd(f"G53 G0 X{lo} Y{hi}") == ["ok"]
    assert mpos(wait_idle(port)) == (lo, hi, 0.0)
    port.send(f"G53 G0 X{lo} Y{hi + 0.5}\n")
    assert port.line() == "ALARM:2"
    assert port.line() == "[MSG:Reset to continue]"
    assert sim.machine_position == (lo, hi, 0.0)  # the target was refused before any motion
    assert sim.alarm == 2


def test_grblhal_soft_limits_only_on_homed_axes(rig):
    _, port = rig("grblhal", homing_required=False)
    assert port.cmd("G0 X5 Y5") == ["ok"]  # not homed: no envelope, MPos 5 is fine
    grbl, gport = rig("grbl", homing_required=False)
    gport.send("G0 X5 Y5\n")
    assert gport.line() == "ALARM:2"  # classic grbl assumes a homed machine


# -- status reports ---------------------------------------------------------------------------
def test_grbl_wco_and_ov_refresh_counters(rig):
    sim, port = rig("grbl", homing=False)
    reports = [fields(port.report()) for _ in range(12)]
    assert [i for i, r in enumerate(reports, 1) if "WCO" in r] == [1, 11]
    assert [i for i, r in enumerate(reports, 1) if "Ov" in r] == [2, 12]
    assert all("Bf" not in r and "MPos" in r for r in reports)  # $10=1
    port.cmd("$10=3")
    assert fields(port.report())["Bf"] == "15,128"


@pytest.mark.parametrize("flavor", FLAVORS)
def test_pn_while_a_limit_switch_is_held(rig, flavor):
    sim, port = rig(flavor, homing=False, settings={21: 0})
    sim.trip_limit("Y", held=True)  # hard limits off: no alarm, only the pin
    assert fields(port.report())["Pn"] == "Y"
    sim.release_limit()
    assert "Pn" not in fields(port.report())


def test_grblhal_reports_bf_always_and_h_after_homing_or_g(rig):
    sim, port = rig("grblhal")
    reports = [fields(port.report()) for _ in range(3)]
    assert all(r["Bf"] == "100,1023" for r in reports)  # 100 planner blocks, 1024-byte ring
    assert all("H" not in r for r in reports)
    port.cmd("$H", 3.0)
    assert fields(port.report())["H"] == "1"
    assert "H" not in fields(port.report())
    port.cmd("$G")
    assert fields(port.report())["H"] == "1"


# -- $ commands -------------------------------------------------------------------------------
@pytest.mark.parametrize("flavor", FLAVORS)
def test_settings_listed_and_written(rig, flavor):
    sim, port = rig(flavor, homing=False)
    lines = port.cmd("$$")
    settings = dict(x.split("=") for x in lines[:-1])
    assert lines[-1] == "ok"
    assert [int(k[1:]) for k in settings] == sorted(int(k[1:]) for k in settings)
    assert settings["$110"] == "10000.000" and settings["$120"] == "4000.000"
    assert settings["$130"] == "20.000" and settings["$131"] == "20.000"
    assert settings["$27"] == "1.000"
    assert settings["$23"] == "0" and settings["$26"] == "5" and settings["$22"] == "0"
    if flavor == "grbl":  # 34 settings, 3 decimals or none
        assert len(settings) == 34 and settings["$10"] == "1"
        assert settings["$24"] == "600.000" and settings["$0"] == "10"
        assert settings["$100"] == "250.000"
    else:  # 83 settings, each with its own format's decimals
        assert len(settings) == 83 and settings["$10"] == "511"
        assert settings["$24"] == "600.0" and settings["$0"] == "10.0"
        assert settings["$100"] == "250.00000" and settings["$398"] == "100"
        assert settings["$341"] == "0" and settings["$58"] == "-5.0"
    assert {"$20", "$21", "$25", "$111", "$121"} <= settings.keys()
    assert port.cmd("$110=500") == ["ok"]
    assert "$110=500.000" in port.cmd("$$") and sim.settings[110] == 500.0
    assert port.cmd("$110=-1") == ["error:4"]
    assert port.cmd("$999=1") == ["error:3"]
    assert port.cmd("$20=1") == ["error:10"]  # soft limits need homing


@pytest.mark.parametrize("flavor", FLAVORS)
def test_build_info_and_parser_state(rig, flavor):
    _, port = rig(flavor)
    info = port.cmd("$I")
    gc = port.cmd("$G")
    if flavor == "grbl":
        assert info == ["[VER:1.1h.20190825:]", "[OPT:V,15,128]", "ok"]
        assert gc == ["[GC:G0 G54 G17 G21 G90 G94 M5 M9 T0 F0 S0]", "ok"]
    else:
        assert info[0].startswith("[VER:1.1f.") and "[FIRMWARE:grblHAL]" in info
        assert gc[0].startswith("[GC:G0 G54 G17 G21 G90 G94 G40 G49 G98 G50 M5 M9 T0 F0")
        assert gc[-1] == "ok"


# -- motion -----------------------------------------------------------------------------------
@pytest.mark.parametrize("flavor", FLAVORS)
def test_feed_above_max_rate_is_capped_silently(rig, flavor):
    sim, port = rig(flavor, homing=False, settings={110: 600.0, 111: 600.0})
    t0 = time.monotonic()
    assert port.cmd("G1 X6 F6000") == ["ok"]  # no error: the planner caps it
    time.sleep(0.2)
    assert float(fields(port.report())["FS"].split(",")[0]) <= 600.0
    while fields(port.report())["state"] != "Idle":
        time.sleep(0.01)
    took = time.monotonic() - t0
    assert took >= move_time(6.0, 10.0, sim.accel) * 0.95  # 10 mm/s, not 100
    assert port.cmd("$G")[0].endswith("F6000 S0]")  # the programmed feed


@pytest.mark.parametrize("flavor", FLAVORS)
def test_ok_when_a_line_enters_the_planner(rig, flavor):
    sim, port = rig(flavor, homing=False, settings={110: 3000.0, 111: 3000.0}, late_s=0.0)
    usable = sim.planner_blocks - 1
    assert usable == (15 if flavor == "grbl" else 100)
    assert port.cmd("G0 X10") == ["ok"]  # 0.2 s, then short ones
    for i in range(1, usable):  # every usable block: all accepted at once
        assert port.cmd(f"G0 X{10 + i / 50:.2f}", 0.1) == ["ok"]
    port.send("G0 X13\n")
    with pytest.raises(TimeoutError):  # waits for a block to finish
        port.line(0.05)
    assert port.line(1.0) == "ok"
    t0 = time.monotonic()
    assert port.cmd("G4 P0.1", 5.0) == ["ok"]  # after the planner empties, then 0.1 s
    assert time.monotonic() - t0 >= 0.1
    assert sim.machine_position == (13.0, 0.0, 0.0)


@pytest.mark.parametrize("flavor", FLAVORS)
def test_feed_hold_resume_and_reset_after_a_completed_hold(rig, flavor):
    sim, port = rig(flavor, homing=False, accel_mm_s2=100.0)
    port.cmd("G1 X15 F600")
    time.sleep(0.15)
    port.send(b"!")
    assert fields(port.report())["state"] == "Hold:1"  # decelerating, for 0.1 s
    time.sleep(0.12)
    st = fields(port.report())
    assert st["state"] == "Hold:0"
    where = mpos(port.report())
    time.sleep(0.05)
    assert mpos(port.report()) == where
    port.send(b"~")
    time.sleep(0.05)
    assert fields(port.report())["state"] == "Run"
    port.send(b"!")
    time.sleep(0.1)
    port.send(b"\x18")  # after a completed hold: no alarm, the position is kept
    assert port.until(lambda x: x.startswith("Grbl")) == ["", BANNERS[flavor]]
    assert fields(port.report())["state"] == "Idle"


@pytest.mark.parametrize("flavor", FLAVORS)
def test_reset_while_moving_is_alarm_3(rig, flavor):
    sim, port = rig(flavor)
    home(port, flavor)
    port.cmd("G53 G1 X-15 F600")
    time.sleep(0.1)
    port.send(b"\x18")
    lines = port.until(lambda x: x.startswith("[MSG"))
    if flavor == "grbl":
        assert lines == ["ALARM:3", "", BANNERS["grbl"], UNLOCK]
    else:  # grblHAL lost its homed state: homing is required again
        assert lines == ["ALARM:3", "", BANNERS["grblhal"], "ALARM:11",
                         "[MSG:Homing cycle required]"]


# -- limit alarms -----------------------------------------------------------------------------
@pytest.mark.parametrize("flavor", FLAVORS)
def test_hard_limit_alarm_then_reset(rig, flavor):
    sim, port = rig(flavor)
    home(port, flavor)
    port.cmd("G53 G1 X-15 F600")
    port.send("G4 P1\n")  # a line under way when the switch closes
    threading.Timer(0.1, sim.trip_limit).start()
    assert port.line() == "ALARM:1"
    t0 = time.monotonic()
    assert port.line() == "[MSG:Reset to continue]"
    waited = time.monotonic() - t0
    stopped = sim.machine_position[0]
    assert -15.0 < stopped < -1.0
    if flavor == "grbl":
        assert waited >= 0.4  # report.c's delay_ms(500)
        port.send("?$X\n$H\nG0 X1\n")
        assert port.quiet(0.2) == []  # nothing is answered, not even ?
        port.send(b"\x18")
        assert port.until(lambda x: x.startswith("[MSG")) == [
            "ok", "", BANNERS["grbl"], UNLOCK]  # the dwell's stale ok
        assert fields(port.report())["state"] == "Alarm"
        assert port.cmd("G0 X1") == ["error:9"]  # the RX buffer was flushed
    else:
        assert fields(port.report())["state"] == "Alarm"
        assert port.cmd("G0 X1") == ["error:9"]
        assert port.cmd("$X") == ["error:79"]
        assert port.cmd("$H") == ["error:79"]
        assert port.cmd("$G")[-1] == "ok"
        assert port.cmd("") == ["ok"]
        port.send(b"\x18")  # no stale ok; moving at the alarm: homed lost
        assert port.until(lambda x: x.startswith("[MSG")) == [
            "", BANNERS["grblhal"], "ALARM:11", "[MSG:Homing cycle required]"]
        assert port.cmd("$X") == ["error:46"]
    home(port, flavor)
    assert fields(port.report())["state"] == "Idle"


def test_grbl_limit_switch_release_and_check_limits_at_reset(rig):
    sim, port = rig("grbl")
    home(port, "grbl")
    sim.trip_limit("X", held=True)
    assert port.until(lambda x: x.startswith("[MSG")) == ["ALARM:1", "[MSG:Reset to continue]"]
    port.send(b"\x18")
    assert port.until(lambda x: x == UNLOCK) == ["", BANNERS["grbl"], "[MSG:Check Limits]", UNLOCK]
    assert fields(port.report())["Pn"] == "X"
    port.cmd("$X")
    sim.release_limit()  # any pin change fires grbl's limit interrupt
    assert port.line() == "ALARM:1"


@pytest.mark.parametrize("flavor", FLAVORS)
def test_soft_limit_mid_move_stops_first_then_alarm_2(rig, flavor):
    sim, port = rig(flavor)
    home(port, flavor)
    port.cmd("$120=200")  # a longer deceleration to see
    port.cmd("G53 G1 X-15 F1200")
    time.sleep(0.1)
    port.send("G53 G1 X5\n")  # beyond: a controlled stop, then the alarm
    assert fields(port.report())["state"] == "Hold:1"
    assert port.until(lambda x: x.startswith("ALARM"))[-1] == "ALARM:2"
    port.until(lambda x: x.startswith("[MSG"))
    port.send(b"\x18")
    lines = port.until(lambda x: x.startswith("[MSG"))
    assert lines[0] == ("ok" if flavor == "grbl" else "")  # the cut-short line's stale ok
    if flavor == "grblhal":  # stopped under control: still homed, no ALARM:11
        assert lines[-1] == UNLOCK
        assert port.cmd("$X") == ["[MSG:Caution: Unlocked]", "ok"]


# -- errors -----------------------------------------------------------------------------------
@pytest.mark.parametrize("flavor", FLAVORS)
def test_sticky_gcode_error_is_grblhal_only(rig, flavor):
    sim, port = rig(flavor, homing=False)
    assert port.cmd("G38.2 X5") == ["error:20"]
    if flavor == "grbl":
        assert port.cmd("G0 X1") == ["ok"]  # each line stands alone
        return
    assert port.cmd("G0 X1") == ["error:20"]  # not executed
    assert port.cmd("$G")[-1] == "ok"  # $ commands are never blocked, and clear it
    assert port.cmd("G0 X1") == ["ok"]
    assert port.cmd("G1 X2 F-1") == ["error:4"]
    assert port.cmd("G0 X3") == ["error:4"]
    assert port.cmd("") == ["ok"]  # an empty line clears it too
    assert port.cmd("G0 X3") == ["ok"]
    time.sleep(0.3)
    assert sim.machine_position == pytest.approx((3.0, 0.0, 0.0))


@pytest.mark.parametrize("flavor", FLAVORS)
def test_parser_error_codes(rig, flavor):
    _, port = rig(flavor, homing=False)
    cases = {"G0 G1 X1": 21, "X1 X2": 25, "G1 X1 F0": 22, "G4": 28, "G10 L2 P1": 26,
             "G0 X1 P2": 36, "G0 X-": 2, "G0 X1.2.3": 1, "*": 1, "G1.5 X1": 23,
             "G10 L2 P1 G0 X1": 24, "G2 X1": 20}
    for line, code in cases.items():
        assert port.cmd(line) == [f"error:{code}"], line
        port.cmd("")  # grblHAL's sticky error
    assert port.cmd("G0X" + "1" * LINE_BUFFER[flavor]) == ["error:11"]  # line overflow
    port.cmd("")
    assert port.cmd("g0 x1 (comment) ; more") == ["ok"]


@pytest.mark.parametrize("flavor", FLAVORS)
def test_cr_lf(rig, flavor):
    _, port = rig(flavor, homing=False)
    port.send("G0 X1\r\n")
    # grbl ends a line at CR and at LF: the empty second line gets its own ok
    assert port.quiet(0.1) == (["ok", "ok"] if flavor == "grbl" else ["ok"])


@pytest.mark.parametrize("flavor", FLAVORS)
def test_silent_controller_answers_nothing(rig, flavor):
    sim, port = rig(flavor, homing=False)
    sim.silent = True
    port.send("?$$\nG0 X1\n")
    assert port.quiet(0.1) == []
    sim.silent = False
    assert port.cmd("") == ["ok"]


# -- issue 34: grblHAL $22=1, late ends on the step grid, the alarm pause, grblHAL's reports --
def test_grblhal_homing_enabled_not_required_boots_idle_and_says_so_only_in_hash(rig):
    """$22=1: no alarm at power-up and no H: field; [HOME:...:mask] says "not homed"."""
    sim, port = rig("grblhal", read_banner=False, homing_required=False)
    assert port.until(lambda x: x.startswith("Grbl")) == ["", BANNERS["grblhal"]]
    assert port.quiet(0.05) == []  # no ALARM:11, no message
    assert "$22=1" in port.cmd("$$")
    reports = [fields(port.report()) for _ in range(3)]
    assert all(r["state"] == "Idle" and "H" not in r for r in reports)
    assert "[HOME:0.000,0.000,0.000:0]" in port.cmd("$#")
    assert port.cmd("G0 X-5 Y-5") == ["ok"]  # moves are accepted unhomed
    wait_idle(port)
    home(port, "grblhal")
    assert "[HOME:-1.000,-1.000,0.000:3]" in port.cmd("$#")  # X and Y homed: mask 3


def test_grblhal_hash_g_and_report_fields(rig):
    sim, port = rig("grblhal")
    home(port, "grblhal")
    offsets = port.cmd("$#")
    assert "[TLO:0.000,0.000,0.000]" in offsets and "[TLO:0.000]" not in offsets
    assert port.cmd("G92 X1") == ["ok"]
    assert port.cmd("$G")[0].startswith("[GC:G0 G54 G92 G17 G21 G90 G94 G40 G49")
    port.cmd("G92.1")
    port.report()
    assert "A" not in fields(port.report())
    assert port.cmd("M5 M9") == ["ok"]  # the parser set spindle and coolant: reported once
    r = fields(port.report())
    assert r["A"] == "" and r["Bf"] == "100,1023"
    assert "A" not in fields(port.report())
    assert port.cmd("$TLR") == ["ok"]  # no probe result: the reference is cleared
    assert fields(port.report())["TLR"] == "0"
    assert "TLR" not in fields(port.report())
    _, gport = rig("grbl")
    assert gport.cmd("$#")[-3:] == ["[TLO:0.000]", "[PRB:0.000,0.000,0.000:0]", "ok"]
    assert gport.cmd("$TLR") == ["error:3"]


def test_moves_end_late_by_up_to_60_ms_seeded():
    """The profile's time, then the late end; the same seed gives the same late ends."""
    ends = []
    for seed in (7, 7, 8):
        with GrblSimulator(TRAVEL, homing=False, seed=seed, accel_mm_s2=4000.0) as sim:
            port = Port(sim)
            try:
                port.until(lambda x: x.startswith("Grbl"))
                for k in range(6):
                    port.cmd(f"G0 X{1 + k} Y{1 + k}")
                    wait_idle(port)
            finally:
                port.close()
            ends.append(list(sim.late_ends))
    assert ends[0] == ends[1] != ends[2]
    assert all(0.0 <= t <= 0.06 for t in ends[0]) and len(set(ends[0])) == 6


def test_a_late_move_still_runs_at_its_planned_end():
    from edge.sim.grbl import _Move

    m = _Move((0.0, 0.0, 0.0), (10.0, 0.0, 0.0), speed=50.0, accel=1000.0, late=0.04)
    m.plan(0.0)
    planned = move_time(10.0, 50.0, 1000.0)
    assert m.duration == pytest.approx(planned + 0.04)
    s, v = m.travelled(planned)
    assert s < 10.0 and v > 0.0  # not there yet: the firmware still reports Run
    assert m.travelled(m.duration) == (10.0, 0.0)
    ss = [m.travelled(m.duration * k / 49)[0] for k in range(50)]
    assert all(b >= a for a, b in zip(ss, ss[1:], strict=False))  # it only moves forward


@pytest.mark.parametrize("flavor", FLAVORS)
def test_positions_are_whole_steps(rig, flavor):
    sim, port = rig(flavor, homing=False, settings={100: 200.0, 101: 200.0})  # 0.005 mm steps
    port.cmd("G1 X7.0074 Y3.0031 F600")
    seen = []
    while fields(report := port.report())["state"] != "Idle":
        seen.append(mpos(report))
        time.sleep(0.02)
    seen.append(mpos(report))
    assert len(seen) > 3
    for p in seen:
        for v in p[:2]:
            assert v * 200.0 == pytest.approx(round(v * 200.0), abs=1e-6)
    assert seen[-1] == (7.005, 3.005, 0.0)  # the target rounded to the nearest step
    assert port.cmd("$G")[0].split()[0] == "[GC:G1"


def test_grbl_ctrl_x_in_the_pause_after_a_limit_alarm_is_lost(rig):
    """report_alarm_message's delay_ms(500), then the lock clears any reset it got."""
    sim, port = rig("grbl")
    home(port, "grbl")
    sim.trip_limit()
    assert port.line() == "ALARM:1"
    port.send(b"\x18")  # within the pause: cleared before the lock
    assert port.line() == "[MSG:Reset to continue]"
    assert port.quiet(0.2) == []  # no banner: still locked
    port.send(b"\x18")
    assert port.until(lambda x: x == UNLOCK) == ["", BANNERS["grbl"], UNLOCK]


@pytest.mark.parametrize("flavor", FLAVORS)
def test_homing_failure_resets_after_the_pause_and_a_ctrl_x_in_it_is_merged(rig, flavor):
    sim, port = rig(flavor, settings={**FAST, 25: 6000.0})
    sim.homing_fails = True
    if flavor == "grbl":
        port.cmd("$X")
    port.send("$H\n")
    assert port.until(lambda x: x.startswith("ALARM"), 3.0)[-1] == "ALARM:9"
    port.send(b"\x18?")  # lost in the pause: one reset, one banner, no report
    lines = port.quiet(0.8)
    assert lines.count(BANNERS[flavor]) == 1
    assert not any(x.startswith("<") for x in lines)
    assert ("ok" in lines) == (flavor == "grbl")  # the $H's stale ok, before the banner
