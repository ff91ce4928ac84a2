"""The XY stage: a GRBL 1.1 controller (classic grbl 1.1h or grblHAL) over pyserial.

The driver speaks GRBL's *send-response* protocol: one G-code line at a time, each answered by
``ok`` or ``error:N`` before the next is sent. The head sends a handful of lines per RoI, so
character-counting streaming would buy nothing and cost a harder recovery after an error.

What real firmware does, and how the driver meets it (grbl 1.1h and grblHAL, read in their
sources; the simulator :mod:`edge.sim.grbl` behaves the same):

* **Opening**: any pyserial URL (``/dev/ttyUSB0``, ``socket://host:port``, ``rfc2217://...``, a
  pty path). A soft reset (Ctrl-X), so the controller starts from a known state, then its
  banner (``Grbl 1.1h ['$' for help]`` or ``GrblHAL 1.1f ['$' or '$HELP' for help]``). Both
  firmwares drop a Ctrl-X that arrives while they boot, so it is sent again every
  ``RESET_RETRY_S`` until the banner comes; classic grbl may answer a line the alarm cut short
  with a stale ``ok`` before the banner, which is ignored.
* **Settings** (``$$``) are read at connection: a configured feed above the controller's
  maximum rate (``$110``, ``$111``) is refused (the firmware would cap it silently and every
  move would take longer than planned); move time limits come from the feed and the
  acceleration (``$120``, ``$121``); homing enabled (``$22``) must match the head file; with soft
  limits on (``$20``) the head's soft limits must lie inside the controller's envelope.
* **Coordinates**: after homing, real firmware sits near machine position 0 at the + end of
  each axis (its default homing direction) or near ``-$13x`` (homing toward -), and its envelope
  is ``[-$13x, 0]`` in machine coordinates (grblHAL with hard limits on: ``$27`` less at each
  end). The head's stage coordinates are the controller's G54 work coordinates: the head file
  says where the machine origin lies in them (``stage.machine_origin_mm``, default: the soft
  limits' maxima), the driver sets G54 to match (``G10 L2 P1``, written only when it differs: it
  lives in the controller's EEPROM) and clears G92 (grblHAL keeps G92 across resets), and it
  converts the ``MPos`` of status reports with the work offset (``WCO``, which the reports
  repeat every 10 to 30 reports).
* **Ready**: a controller in Alarm (after power-up with homing required, after a limit or a
  reset while moving) is homed (``$H``) or, when the head is configured not to home, unlocked
  (``$X``). One that is Idle is homed when grblHAL says it is not: ``H:0`` in a report, or the
  ``[HOME:x,y,z:mask]`` line of ``$#`` without X and Y in its mask. grblHAL with homing enabled
  but not required (``$22=1``) boots Idle with no alarm and no ``H:`` field (it sends ``H:``
  only after ``$H``, ``$G`` or a ``$13x`` change), so ``$#`` is what tells. Classic grbl keeps
  no such flag: an Idle grbl is trusted (its homing init lock makes it boot in Alarm; a soft
  reset keeps the position). After a limit alarm (``ALARM:1``/``ALARM:2``) classic grbl answers
  nothing, not even ``?``, until a reset, and grblHAL refuses ``$H`` and ``$X`` with
  ``error:79``: the driver resets first.
* **Moves** are absolute (``G90 G1 X.. Y.. F..``) in work coordinates. The target is checked
  against the soft limits *before* anything is sent; the controller's own soft limits stay on as
  a second line of defence (they raise ``ALARM:2``).
* **Completion**: the driver waits the time the move needs (trapezoidal profile from the feed
  and acceleration), then polls the real-time status (``?``) until ``Idle``: every
  ``FAST_POLL_S`` (20 ms) for ``FAST_WINDOW_S`` after the planned end, since real motion ends
  30-60 ms after the plan (stepper segments, the last deceleration steps), then at ``POLL_HZ``
  (GRBL's interface guide: no more than 5 Hz). At 5 Hz alone the first poll sees ``Run`` and
  the next comes 0.2 s later; the bounded window costs the firmware at most a dozen reports
  per move. A stalled or silent controller is noticed at the move's time limit.
* **Alarms that reset the firmware**: a failed homing cycle (``ALARM:6``-``ALARM:9``) makes both
  firmwares reset themselves (``mc_reset()``) after the alarm's pause (grbl 0.5 s, grblHAL
  0.1 s): the driver reads that banner (and grbl's stale ``ok`` before it) before it reports the
  alarm, so the next status query does not take it for an unexpected reset. A Ctrl-X in that
  pause is lost (grbl clears it before a limit alarm's lock), so :meth:`GrblStage.reset` waits
  out the pause after an alarm it saw, and sends Ctrl-X again every ``RESET_RETRY_S`` anyway.
* **Errors**: ``error:N`` becomes :class:`GrblError`, ``ALARM:N`` :class:`GrblAlarm`, both
  carrying the firmware's meaning of the code (grblHAL's tables where they differ). grblHAL
  rejects every later G-code line with the same error until an empty line or a ``$`` command,
  so after any ``error:N`` the driver sends one empty line before it reports the error.
* **Abort**: feed hold (``!``) so the axes decelerate without losing steps, then a soft reset
  (Ctrl-X) that flushes the planner. Reset while moving costs the position (``ALARM:3``); after
  a completed hold it does not, and the next sample re-homes only when the controller says so.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edge.hardware.stage import MoveCancelled, Stage, StageError, StageTimeout

log = logging.getLogger(__name__)

# real-time commands: no newline, acted on at once
STATUS_QUERY = b"?"
FEED_HOLD = b"!"
CYCLE_START = b"~"
SOFT_RESET = b"\x18"

BANNER_QUIET_S = 0.1
RESET_RETRY_S = 0.3  # a Ctrl-X the firmware dropped while booting is sent again after this
POLL_HZ = 5.0  # status queries per second while waiting (GRBL's interface guide)
FAST_POLL_S = 0.02  # near a move's planned end: real motion ends 30-60 ms after the plan
FAST_WINDOW_S = 0.25  # how long after the planned end the driver polls fast
# after printing ALARM:n the firmware sleeps (report_alarm_message); a Ctrl-X meanwhile is lost
ALARM_PAUSE_S = {"grbl": 0.5, "grblhal": 0.1}
SELF_RESET_ALARMS = {6, 7, 8, 9}  # homing failures: limits_go_home() calls mc_reset()
BANNER = re.compile(r"^(Grbl|GrblHAL)\s+(\S+)\s*\[.*\]\s*$", re.IGNORECASE)
STATUS = re.compile(r"^<([^|>]+)(.*)>$")
SETTING = re.compile(r"^\$(\d+)=(-?[0-9.]+)")
OFFSET = re.compile(r"^\[(G54|G92):(-?[0-9.]+),(-?[0-9.]+)")
HOME = re.compile(r"^\[HOME:[^:\]]*:(\d+)\]")  # grblHAL's home position and homed axes mask
XY_MASK = 0b011

# GRBL 1.1's documented meanings, worded for an operator; grblHAL shares 1-38.
ERRORS = {
    1: "G-code words need a letter and a value; the letter was missing",
    2: "a value is missing or its number format is not valid",
    3: "the '$' system command was not recognised",
    4: "a negative value was given where a positive one is needed",
    5: "homing is not enabled in the controller's settings ($22)",
    6: "the step pulse must be longer than 3 microseconds",
    7: "the controller's settings memory could not be read; defaults restored",
    8: "'$' commands are only accepted while the controller is Idle",
    9: "G-code is locked out while the controller is in Alarm or jogging",
    10: "soft limits need homing to be enabled",
    11: "the line is longer than the controller accepts",
    12: "the setting would exceed the maximum step rate",
    13: "the safety door is open",
    14: "the build info or start-up line does not fit in the settings memory",
    15: "the jog target is beyond the machine's travel",
    16: "the jog command is not valid",
    17: "laser mode needs a PWM output",
    20: "unsupported or invalid G-code command",
    21: "more than one command of the same modal group in one line",
    22: "the feed rate has not been set",
    23: "the command needs an integer value",
    24: "more than one command in the line needs axis words",
    25: "a G-code word is repeated in the line",
    26: "the command needs axis words and has none",
    27: "the line number is not valid",
    28: "the command is missing a required value word",
    29: "work coordinate systems G59.1-G59.3 are not supported",
    30: "G53 is only allowed with G0 and G1",
    31: "axis words given where no command uses them",
    32: "an arc needs at least one axis word in its plane",
    33: "the motion target is not valid",
    34: "the arc radius is not valid",
    35: "an arc needs at least one offset word in its plane",
    36: "unused value words in the line",
    37: "the tool length offset is not on the tool length axis",
    38: "the tool number is above the maximum",
}
ALARMS = {
    1: "hard limit switch triggered; the position is lost, re-home the stage",
    2: "soft limit: the motion target is beyond the machine's travel; the position is kept",
    3: "reset while in motion; the position may be lost, re-home the stage",
    4: "probe failed: the probe was not in its expected initial state",
    5: "probe failed: the probe did not touch within its travel",
    6: "homing failed: the cycle was reset",
    7: "homing failed: the safety door opened during the cycle",
    8: "homing failed: pulling off did not clear the limit switch",
    9: "homing failed: no limit switch found within the search distance",
    10: "homing failed: the second switch of a dual-motor axis was not found",
}
# grblHAL's own codes (its 1-38 and alarms 1-9 are grbl's)
HAL_ERRORS = {
    39: "the value is out of range",
    40: "not allowed while a tool change is pending",
    41: "the spindle is not running",
    42: "threading needs the ZX plane",
    43: "the feed rate is above the maximum",
    44: "the spindle speed is out of range",
    45: "only homing is allowed while a limit switch is engaged",
    46: "the stage must be homed first ($H)",
    47: "the current tool is not set",
    48: "conflicting value words",
    49: "the controller's power-on self-test failed",
    50: "the emergency stop is active",
    51: "a motor reported a fault",
    52: "the setting value is out of range",
    53: "the setting is not available",
    54: "the retract position is below the drill depth",
    55: "two auto-squared axes cannot be homed at once",
    56: "the coordinate system is locked",
    79: "not allowed while a limit or emergency alarm is active; reset the controller first",
}
HAL_ALARMS = {
    10: "emergency stop: clear the stop, then reset the controller",
    11: "homing required: the stage must be homed ($H) before it moves",
    12: "a limit switch is engaged at start-up; move the stage off it",
    13: "the probe protection was triggered",
    14: "the spindle did not reach its speed in time",
    15: "homing failed: the second switch of an auto-squared axis was not found",
    16: "the controller's power-on self-test failed",
    17: "a motor reported a fault",
    18: "homing failed: the homing configuration is not valid",
}


def meaning(kind: str, code: int, flavor: str = "grbl") -> str:
    """The firmware's meaning of ``error:N`` (``kind`` "error") or ``ALARM:N`` ("alarm")."""
    table, hal = (ERRORS, HAL_ERRORS) if kind == "error" else (ALARMS, HAL_ALARMS)
    if flavor == "grblhal" and code in hal:
        return hal[code]
    return table.get(code) or hal.get(code) or "no description known for this code"


class GrblError(StageError):
    def __init__(self, code: int, line: str, flavor: str = "grbl"):
        self.code, self.line = code, line
        super().__init__(f"stage controller refused {line!r}: error:{code} "
                         f"({meaning('error', code, flavor)})")


class GrblAlarm(StageError):
    def __init__(self, code: int, during: str, flavor: str = "grbl"):
        self.code = code
        super().__init__(f"stage alarm {code} during {during}: {meaning('alarm', code, flavor)}")


# the alarms after which the firmware stops until it is reset (grbl: silent; grblHAL: $H and $X
# refused with error:79)
CRITICAL_ALARMS = {1, 2, 10, 17}


@dataclass(frozen=True)
class StatusReport:
    """One real-time status report: the state (``Idle``, ``Run``, ``Hold:0``, ``Alarm``...),
    the position as reported (machine ``MPos`` by default, work ``WPos`` with ``$10=0``: see
    ``machine``), and when present the work offset ``WCO`` and grblHAL's homed flag ``H``."""

    state: str
    position: tuple[float, ...]
    machine: bool = True  # position is MPos (else WPos)
    wco: tuple[float, ...] | None = None
    homed: bool | None = None  # grblHAL's H:1 / H:0; None: not reported

    @property
    def name(self) -> str:
        return self.state.split(":", 1)[0]

    @classmethod
    def parse(cls, line: str) -> StatusReport | None:
        m = STATUS.match(line)
        if not m:
            return None
        pos: tuple[float, ...] = ()
        machine, wco, homed = True, None, None
        try:
            for field in m.group(2).split("|"):
                key, _, value = field.partition(":")
                if key in ("MPos", "WPos"):
                    pos = tuple(float(v) for v in value.split(","))
                    machine = key == "MPos"
                elif key == "WCO":
                    wco = tuple(float(v) for v in value.split(","))
                elif key == "H":
                    homed = value.split(",", 1)[0].strip() == "1"
        except ValueError:
            return None
        return cls(m.group(1), pos, machine, wco, homed)


def _fmt(v: float) -> str:
    return f"{v:.3f}"


def move_time(dist: float, feed_mm_s: float, accel: float) -> float:
    """Seconds of a move from rest to rest: trapezoidal profile, triangular when short."""
    if dist <= 0:
        return 0.0
    if accel <= 0:
        return dist / feed_mm_s
    ramp = feed_mm_s * feed_mm_s / accel
    if dist >= ramp:
        return dist / feed_mm_s + feed_mm_s / accel
    return 2.0 * math.sqrt(dist / accel)


class GrblStage(Stage):
    """One GRBL controller on a serial port.

    ``_clock`` and ``_sleep`` are what :meth:`wait_idle` measures and waits with (a test can
    drive the poll schedule with a simulated clock).

    ``limits`` are ``((xmin, xmax), (ymin, ymax))`` in the head's stage coordinates (mm),
    ``feed_mm_min`` the feed of every move; ``home`` says whether the controller has homing
    switches (``$H``) or is unlocked; ``machine_origin`` is where the controller's machine
    origin lies in the head's coordinates (default: the limits' maxima, where GRBL's default
    homing toward + ends; for grblHAL with hard limits, ``$27`` beyond them, since it keeps the
    pull-off clear of each end).
    """

    _clock = staticmethod(time.monotonic)
    _sleep = staticmethod(time.sleep)

    def __init__(self, url: str, baud: int, limits: tuple[tuple[float, float], ...],
                 feed_mm_min: float, home: bool = True, timeout_s: float = 2.0,
                 home_timeout_s: float = 60.0,
                 machine_origin: tuple[float, float] | None = None):
        import serial  # pyserial; imported here so `edge` imports without the serial stack

        self.url, self.limits, self.feed = url, limits, feed_mm_min
        self.home_enabled = home
        self.timeout_s, self.home_timeout_s = timeout_s, home_timeout_s
        self.origin_given = machine_origin is not None
        self.origin = (tuple(machine_origin) if machine_origin is not None
                       else (limits[0][1], limits[1][1]))
        self.banner = ""
        self.flavor = "grbl"
        self.position: tuple[float, ...] = ()  # work (head) coordinates
        self.wco: tuple[float, ...] | None = None  # machine minus work, as the controller has it
        self.settings: dict[int, float] = {}
        self.homed = False
        self.critical = False  # a limit alarm: the firmware waits for a reset
        self.accel = 0.0  # mm/s^2 along a move, 0: unknown
        self.polls = 0  # status queries sent while waiting for moves, for the log and tests
        self._resync = False  # the firmware reset itself and its banner was not seen: reset
        self._alarm_at = -math.inf  # when the driver last saw an ALARM line (monotonic)
        self._buf = b""
        self._lock = threading.RLock()
        try:
            self.port = serial.serial_for_url(url, baudrate=baud, timeout=0.02,
                                              write_timeout=timeout_s)
        except (serial.SerialException, OSError, ValueError) as exc:
            raise StageError(f"cannot open the stage controller's port {url}: {exc}") from None
        self._serial_errors = (serial.SerialException, OSError)
        try:
            self.reset()
            self._check_settings()
        except Exception:
            self.port.close()
            raise

    # -- the wire -----------------------------------------------------------------------------
    def _write(self, data: bytes) -> None:
        try:
            self.port.write(data)
            self.port.flush()
        except self._serial_errors as exc:
            raise StageError(f"stage controller port {self.url} failed: {exc}") from None

    def _readline(self, deadline: float, waiting_for: str) -> str:
        while True:
            nl = self._buf.find(b"\n")
            if nl >= 0:
                raw, self._buf = self._buf[:nl], self._buf[nl + 1:]
                line = raw.decode("ascii", "replace").strip()
                if line:
                    return line
                continue
            if time.monotonic() > deadline:
                raise StageTimeout(f"stage controller on {self.url} did not answer within the "
                                   f"time allowed while waiting for {waiting_for}")
            try:
                chunk = self.port.read(max(1, self.port.in_waiting))
            except self._serial_errors as exc:
                raise StageError(f"stage controller port {self.url} failed: {exc}") from None
            self._buf += chunk

    def _handle_async(self, line: str, during: str) -> bool:
        """Lines that can arrive at any time; True when consumed."""
        if line.startswith("ALARM:"):
            code = _code(line)
            self._alarm_at = time.monotonic()
            self.homed = self.homed and code == 2
            self.critical = self.critical or code in CRITICAL_ALARMS
            if code in SELF_RESET_ALARMS:
                self._await_self_reset()
            raise GrblAlarm(code, during, self.flavor)
        if BANNER.match(line):
            raise StageError(f"stage controller reset itself during {during} ({line})")
        if line.startswith("["):
            if "Reset to continue" in line:
                self.critical = True
            log.debug("stage: %s", line)
            return True
        status = StatusReport.parse(line)
        if status is not None:
            self._note(status)
            return True
        return False

    def _note(self, st: StatusReport) -> None:
        """Keep the work offset and the position (in work coordinates) a report carries."""
        if st.wco is not None:
            self.wco = st.wco
        if st.homed is not None:
            self.homed = st.homed
        if not st.position:
            return
        if st.machine and self.wco is not None:
            self.position = tuple(p - o for p, o in zip(st.position, self.wco, strict=False))
        elif not st.machine:
            self.position = st.position

    # -- commands -----------------------------------------------------------------------------
    def command(self, line: str, timeout_s: float | None = None) -> list[str]:
        """Send one line and wait for its ``ok``; the lines it printed before (``$$``, ``$#``,
        ``$G``), messages left out."""
        with self._lock:
            deadline = time.monotonic() + (timeout_s or self.timeout_s)
            self._write(line.encode("ascii") + b"\n")
            out = []
            while True:
                reply = self._readline(deadline, f"the answer to {line!r}")
                if reply == "ok":
                    return out
                if reply.startswith("error:"):
                    self._clear_error()
                    raise GrblError(_code(reply), line, self.flavor)
                # what the command prints: settings, [G54:..], [HOME:..], [GC:..], [VER:..];
                # a [MSG:..] may come at any time and is not part of it
                if reply.startswith("$") or (reply.startswith("[")
                                             and not reply.startswith("[MSG:")):
                    out.append(reply)
                    continue
                if not self._handle_async(reply, repr(line)):
                    log.debug("stage: ignoring %r", reply)

    def _clear_error(self) -> None:
        # grblHAL rejects every G-code line after an error until it sees an empty one
        deadline = time.monotonic() + self.timeout_s
        self._write(b"\n")
        while True:
            reply = self._readline(deadline, "the answer to an empty line")
            if reply == "ok" or reply.startswith("error:"):
                return
            self._handle_async(reply, "error recovery")

    def _await_self_reset(self) -> None:
        """The firmware resets itself after this alarm: read up to its banner (classic grbl's
        stale ``ok`` of the cut-short line comes first) and what follows it."""
        pause = max(ALARM_PAUSE_S.values())
        deadline = time.monotonic() + pause + self.timeout_s
        while True:
            try:
                line = self._readline(deadline, "")
            except StageTimeout:
                self._resync = True  # no banner seen: the next ready() resets first
                return
            if BANNER.match(line):
                self._settle(line)
                return
            st = StatusReport.parse(line)
            if st is not None:
                self._note(st)

    def status(self) -> StatusReport:
        with self._lock:
            deadline = time.monotonic() + self.timeout_s
            self._write(STATUS_QUERY)
            while True:
                reply = self._readline(deadline, "a status report")
                st = StatusReport.parse(reply)
                if st is not None:
                    self._note(st)
                    return st
                if not self._handle_async(reply, "a status query"):
                    log.debug("stage: ignoring %r", reply)

    def reset(self) -> None:
        """Soft reset until the banner comes (a Ctrl-X during boot is dropped: sent again)."""
        with self._lock:
            self._discard_input()
            # a Ctrl-X within the pause after ALARM:n is lost: wait it out
            wait = self._alarm_at + ALARM_PAUSE_S[self.flavor] + 0.02 - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            pause = max(ALARM_PAUSE_S.values())  # an alarm the driver did not see
            deadline = time.monotonic() + max(self.timeout_s, pause + 2 * RESET_RETRY_S)
            while True:
                self._write(SOFT_RESET)
                retry = min(time.monotonic() + RESET_RETRY_S, deadline)
                line = self._await_banner(retry)
                if line is not None:
                    self.banner = line
                    break
                if time.monotonic() >= deadline:
                    raise StageTimeout(f"stage controller on {self.url} sent no banner after "
                                       "repeated resets (is it powered, and is this its port "
                                       "and baud rate?)")
            self._settle(self.banner)

    def _settle(self, banner: str) -> None:
        """After a banner: what the firmware prints at once (``ALARM:11``, messages), and any
        later banner of an earlier reset; then the controller is known afresh."""
        with self._lock:
            self.banner = banner
            # a banner of an earlier reset (power-up, a previous session) may still be in
            # transit: take the last one, so none arrives later as a surprise reset
            quiet = time.monotonic() + BANNER_QUIET_S
            while True:
                try:
                    line = self._readline(quiet, "")
                except StageTimeout:
                    break
                if BANNER.match(line):
                    self.banner, quiet = line, time.monotonic() + BANNER_QUIET_S
                elif line.startswith("ALARM:"):
                    self.homed = False
            self.flavor = "grblhal" if self.banner.lower().startswith("grblhal") else "grbl"
            self.critical = self._resync = False
            self.wco = None  # reports repeat it; ready() sets it
            log.debug("stage: %s on %s", self.banner, self.url)

    def _discard_input(self) -> None:
        """Drop what the controller sent and nobody read, noting an alarm among it (the pause
        after it swallows a Ctrl-X)."""
        pending = self._buf
        with contextlib.suppress(self._serial_errors):
            pending += self.port.read(self.port.in_waiting)
        if b"ALARM:" in pending:
            self._alarm_at = time.monotonic()
        self._buf = b""
        with contextlib.suppress(self._serial_errors):
            self.port.reset_input_buffer()

    def _await_banner(self, deadline: float) -> str | None:
        while True:
            try:
                line = self._readline(deadline, "the controller's banner after a reset")
            except StageTimeout:
                return None
            if BANNER.match(line):
                return line
            if line.startswith("ALARM:"):
                self.homed = False
                self._alarm_at = time.monotonic()
            # anything else ("ok" of a line the alarm cut short, messages) belongs to before

    # -- the controller's settings ------------------------------------------------------------
    def read_settings(self) -> dict[int, float]:
        out = {}
        for line in self.command("$$"):
            m = SETTING.match(line)
            if m:
                out[int(m.group(1))] = float(m.group(2))
        self.settings = out
        return out

    def _check_settings(self) -> None:
        """The controller must be able to do what the head file asks (module docstring)."""
        s = self.read_settings()
        where = f"the stage controller on {self.url}"
        for axis, key in (("x", 110), ("y", 111)):
            if key in s and self.feed > s[key] + 1e-6:
                raise StageError(f"stage.feed_mm_min = {self.feed:g} is above {where}'s maximum "
                                 f"{axis} rate (${key}={s[key]:g} mm/min); lower the feed or "
                                 "raise the controller's setting")
        if 120 in s and 121 in s:
            self.accel = min(s[120], s[121])
        homing = s.get(22)
        if homing is not None and self.home_enabled and not int(homing) & 1:
            raise StageError(f"the head file homes the stage (stage.homing = true) but {where} "
                             "has homing disabled ($22=0)")
        if not s.get(20):  # soft limits off: the driver's own check is the only one
            log.warning("stage: %s has its soft limits off ($20=0)", where)
            return
        pull = s.get(27, 0.0) if (self.flavor == "grblhal" and s.get(21)) else 0.0
        if not self.origin_given:  # grblHAL keeps $27 off each end of the travel
            self.origin = (self.limits[0][1] + pull, self.limits[1][1] + pull)
        for k, (axis, key) in enumerate((("x", 130), ("y", 131))):
            if key not in s:
                continue
            lo, hi = (v - self.origin[k] for v in self.limits[k])
            env = (-s[key] + pull, -pull)
            if lo < env[0] - 1e-3 or hi > env[1] + 1e-3:
                raise StageError(
                    f"the head's {axis} soft limits {list(self.limits[k])} mm are machine "
                    f"positions [{lo:g}, {hi:g}] with the machine origin at "
                    f"{self.origin[k]:g} (stage.machine_origin_mm), outside {where}'s travel "
                    f"[{env[0]:g}, {env[1]:g}] (${key}={s[key]:g}); check the head file's "
                    "limits and machine origin, or the controller's travel and homing")

    def _work_coordinates(self, offsets: list[str]) -> None:
        """G54 so that work coordinates are the head's; G92 cleared (grblHAL keeps it).
        ``offsets``: the lines of ``$#``."""
        want = (-self.origin[0], -self.origin[1])
        g54 = g92 = None
        for line in offsets:
            m = OFFSET.match(line)
            if m:
                xy = (float(m.group(2)), float(m.group(3)))
                g54, g92 = (xy, g92) if m.group(1) == "G54" else (g54, xy)
        if g54 is None or max(abs(a - b) for a, b in zip(g54, want, strict=True)) > 5e-4:
            # the offset lives in the controller's EEPROM: written only when it differs
            self.command(f"G10 L2 P1 X{_fmt(want[0])} Y{_fmt(want[1])}")
        if g92 is not None and any(abs(v) > 5e-4 for v in g92):
            self.command("G92.1")
        self.command("G21 G90 G94 G54")  # mm, absolute, feed per minute, these coordinates
        self.wco = (want[0], want[1], 0.0)

    # -- the stage's jobs ---------------------------------------------------------------------
    def ready(self) -> None:
        """Reset after a limit alarm (or a reset whose banner was missed); home (or unlock)
        when the controller is in Alarm or says it is not homed (a report's ``H:0``, or
        grblHAL's ``$#`` mask); set up the work coordinates."""
        if self.critical or self._resync:
            self.reset()
        try:
            st = self.status()
        except StageTimeout:  # classic grbl answers nothing in a limit alarm until a reset
            self.reset()
            st = self.status()
        # $# says what the report may not: grblHAL's homed axes (and the offsets set below)
        offsets = self.command("$#")
        mask = next((int(m.group(1)) for m in map(HOME.match, offsets) if m), None)
        unhomed = st.homed is False or (st.homed is None and mask is not None
                                        and mask & XY_MASK != XY_MASK)
        if self.rehome and not self.home_enabled:
            log.warning("the stage lost its position (the frames said so), but the head file "
                        "gives it no homing switches: set it back to its origin by hand")
        needs = st.name == "Alarm" or (self.home_enabled and (unhomed or self.rehome))
        if needs:
            if self.home_enabled:
                log.info("homing the stage%s",
                         " (it lost its position)" if self.rehome else "")
                self.command("$H", self.home_timeout_s)
                self.homed, self.rehome = True, False
            else:
                self.command("$X")
            st = self.status()
        elif st.name == "Idle":
            # grbl keeps no homed flag: Idle means homed or unlocked since power-up
            self.homed = self.homed or self.home_enabled
        if st.name != "Idle":
            raise StageError(f"stage controller is {st.state}, not Idle, after homing/unlock")
        self._work_coordinates(offsets)  # homing changes neither G54 nor G92
        self.status()  # the position in work coordinates

    def check_target(self, x: float, y: float) -> None:
        for axis, v, (lo, hi) in (("x", x, self.limits[0]), ("y", y, self.limits[1])):
            if not (math.isfinite(v) and lo <= v <= hi):
                raise StageError(f"stage target {axis} = {v:.3f} mm is outside the soft limits "
                                 f"[{lo}, {hi}] mm; not sent")

    def move_to(self, x: float, y: float, cancel: Callable[[], bool] | None = None) -> float:
        """Absolute move at the configured feed; returns once the stage is Idle there. Returns
        the seconds the move took. ``cancel`` is polled while the stage moves."""
        self.check_target(x, y)
        t0 = time.monotonic()
        here = self.position[:2] if len(self.position) >= 2 else (x, y)
        expected = move_time(math.dist(here, (x, y)), self.feed / 60.0, self.accel)
        # twice the planned time, for acceleration the settings do not tell and slow serial
        budget = 2.0 * expected + self.timeout_s
        with self._lock:
            self.command(f"G1 X{_fmt(x)} Y{_fmt(y)} F{self.feed:g}")
            self.wait_idle(budget, f"the move to ({x:.3f}, {y:.3f}) mm", cancel, expected)
        return time.monotonic() - t0

    def wait_idle(self, timeout_s: float, what: str,
                  cancel: Callable[[], bool] | None = None, expected_s: float = 0.0) -> None:
        """Wait ``expected_s`` without asking, then poll until Idle: every ``FAST_POLL_S`` for
        ``FAST_WINDOW_S`` after the planned end, at ``POLL_HZ`` after that."""
        clock = self._clock
        start = clock()
        deadline = start + timeout_s
        planned_end = start + expected_s
        next_poll = planned_end
        while True:
            now = clock()
            if cancel is not None and cancel():
                raise MoveCancelled(f"{what} was cancelled")
            if now < next_poll:
                self._sleep(min(0.02, next_poll - now))  # cancel stays responsive
                continue
            self.polls += 1
            st = self.status()
            if st.name == "Idle":
                return
            if st.name == "Alarm":
                raise StageError(f"stage controller went into Alarm during {what}")
            now = clock()
            if now > deadline:
                raise StageTimeout(f"stage did not reach Idle within {timeout_s:.1f} s during "
                                   f"{what} (last state {st.state})")
            next_poll = now + poll_interval(now - planned_end)

    def abort(self) -> None:
        """Stop now: feed hold, wait for the axes to stop, soft reset. Never raises."""
        try:
            with self._lock:
                if self.critical:  # a limit alarm already stopped it; grbl answers nothing now
                    self.reset()
                    return
                self._write(FEED_HOLD)
                deadline = time.monotonic() + 1.0
                while time.monotonic() < deadline:
                    try:
                        st = self.status()
                    except StageError:
                        break
                    if st.state in ("Hold:0", "Idle", "Alarm"):
                        break
                    time.sleep(1.0 / POLL_HZ)
                self.reset()
        except Exception as exc:  # abort runs on the way out of a failure: report, never raise
            log.warning("stage: stopping the controller failed: %s", exc)

    def close(self) -> None:
        with contextlib.suppress(self._serial_errors):
            self.port.close()

    def __enter__(self) -> GrblStage:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def poll_interval(since_planned_end: float) -> float:
    """Seconds to the next status query, ``since_planned_end`` seconds after a move's planned
    end (negative: before it): fast while the real end is due, slow after."""
    return FAST_POLL_S if since_planned_end < FAST_WINDOW_S else 1.0 / POLL_HZ


def _code(line: str) -> int:
    try:
        return int(line.split(":", 1)[1].strip())
    except (IndexError, ValueError):
        return -1


def probe(url: str) -> str | None:
    """Why the controller's port cannot be opened, without opening it; None when it may be.

    Only a local device path can be checked this way; a network URL (``socket://``,
    ``rfc2217://``) is only known to work once it is opened."""
    if "://" in url:
        return None
    path = Path(url)
    if not path.exists():
        return f"serial port {url} does not exist (is the controller plugged in and powered?)"
    if not path.is_char_device():
        return f"{url} is not a serial device"
    if not os.access(path, os.R_OK | os.W_OK):
        return (f"no permission to open serial port {url}; add this user to the group that "
                f"owns it ({_group_of(path)}), e.g. dialout")
    return None


def _group_of(path: Path) -> str:
    try:
        return path.group()
    except (KeyError, OSError):
        return f"gid {path.stat().st_gid}"
