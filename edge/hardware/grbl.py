"""The XY stage: a GRBL 1.1 controller (classic grbl 1.1h or grblHAL) over pyserial.

The driver speaks GRBL's *send-response* protocol: one G-code line at a time, each answered by
``ok`` or ``error:N`` before the next is sent. The head sends a handful of lines per RoI, so
character-counting streaming would buy nothing and cost a harder recovery after an error.

* **Opening**: any pyserial URL (``/dev/ttyUSB0``, ``socket://host:port``, ``rfc2217://...``, a
  pty path). A soft reset (Ctrl-X) first, so the controller starts from a known state, then the
  banner (``Grbl 1.1h ['$' for help]`` or ``GrblHAL 1.1f ['$' or '$HELP' for help]``) is awaited.
* **Ready**: a controller in Alarm after power-up (homing enabled) is homed (``$H``) or, when
  the head is configured not to home, unlocked (``$X``).
* **Moves** are absolute (``G90 G1 X.. Y.. F..``) in the controller's work coordinates, which the
  head's soft limits describe (home at the limits' minimum). The target is checked against the
  soft limits *before* anything is sent; the controller's own soft limits stay on as a second
  line of defence (they raise ``ALARM:2``).
* **Completion** by polling the real-time status report (``?``) until the state is ``Idle``; the
  poll gives the position too, which the head logs. Timeouts are derived from the distance and
  the feed rate, so a stalled or silent controller is noticed.
* **Errors**: ``error:N`` becomes :class:`GrblError`, ``ALARM:N`` :class:`GrblAlarm`, both
  carrying GRBL's meaning of the code. grblHAL keeps rejecting every later line with the same
  error until it receives an empty line (classic grbl answers an empty line with ``ok`` too),
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
BANNER = re.compile(r"^(Grbl|GrblHAL)\s+(\S+)\s*\[.*\]\s*$", re.IGNORECASE)
STATUS = re.compile(r"^<([^|>]+)(.*)>$")

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
    10: "emergency stop or homing failure on the second motor of a dual axis",
}


class GrblError(StageError):
    def __init__(self, code: int, line: str):
        self.code, self.line = code, line
        meaning = ERRORS.get(code, "no description known for this code")
        super().__init__(f"stage controller refused {line!r}: error:{code} ({meaning})")


class GrblAlarm(StageError):
    def __init__(self, code: int, during: str):
        self.code = code
        meaning = ALARMS.get(code, "no description known for this code")
        super().__init__(f"stage alarm {code} during {during}: {meaning}")


@dataclass(frozen=True)
class StatusReport:
    """One real-time status report: the state (``Idle``, ``Run``, ``Hold:0``, ``Alarm``...) and
    the machine position (work position when the controller reports that instead)."""

    state: str
    position: tuple[float, ...]

    @property
    def name(self) -> str:
        return self.state.split(":", 1)[0]

    @classmethod
    def parse(cls, line: str) -> StatusReport | None:
        m = STATUS.match(line)
        if not m:
            return None
        pos: tuple[float, ...] = ()
        for field in m.group(2).split("|"):
            key, _, value = field.partition(":")
            if key in ("MPos", "WPos"):
                try:
                    pos = tuple(float(v) for v in value.split(","))
                except ValueError:
                    return None
        return cls(m.group(1), pos)


def _fmt(v: float) -> str:
    return f"{v:.3f}"


class GrblStage(Stage):
    """One GRBL controller on a serial port.

    ``limits`` are ``((xmin, xmax), (ymin, ymax))`` in mm, ``feed_mm_min`` the feed of every
    move; ``home`` says whether the controller has homing switches (``$H``) or is unlocked.
    """

    def __init__(self, url: str, baud: int, limits: tuple[tuple[float, float], ...],
                 feed_mm_min: float, home: bool = True, timeout_s: float = 2.0,
                 home_timeout_s: float = 60.0):
        import serial  # pyserial; imported here so `edge` imports without the serial stack

        self.url, self.limits, self.feed = url, limits, feed_mm_min
        self.home_enabled = home
        self.timeout_s, self.home_timeout_s = timeout_s, home_timeout_s
        self.banner = ""
        self.position: tuple[float, ...] = ()
        self.homed = False
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
            self.homed = self.homed and line.strip() == "ALARM:2"
            raise GrblAlarm(_code(line), during)
        if BANNER.match(line):
            raise StageError(f"stage controller reset itself during {during} ({line})")
        if line.startswith("[MSG:") or line.startswith("["):
            log.debug("stage: %s", line)
            return True
        status = StatusReport.parse(line)
        if status is not None:
            self.position = status.position or self.position
            return True
        return False

    # -- commands -----------------------------------------------------------------------------
    def command(self, line: str, timeout_s: float | None = None) -> None:
        """Send one line and wait for its ``ok``."""
        with self._lock:
            deadline = time.monotonic() + (timeout_s or self.timeout_s)
            self._write(line.encode("ascii") + b"\n")
            while True:
                reply = self._readline(deadline, f"the answer to {line!r}")
                if reply == "ok":
                    return
                if reply.startswith("error:"):
                    self._clear_error()
                    raise GrblError(_code(reply), line)
                if not self._handle_async(reply, repr(line)):
                    log.debug("stage: ignoring %r", reply)

    def _clear_error(self) -> None:
        # grblHAL rejects every line after an error until it sees an empty one
        deadline = time.monotonic() + self.timeout_s
        self._write(b"\n")
        while True:
            reply = self._readline(deadline, "the answer to an empty line")
            if reply == "ok" or reply.startswith("error:"):
                return
            self._handle_async(reply, "error recovery")

    def status(self) -> StatusReport:
        with self._lock:
            deadline = time.monotonic() + self.timeout_s
            self._write(STATUS_QUERY)
            while True:
                reply = self._readline(deadline, "a status report")
                st = StatusReport.parse(reply)
                if st is not None:
                    self.position = st.position or self.position
                    return st
                if not self._handle_async(reply, "a status query"):
                    log.debug("stage: ignoring %r", reply)

    def reset(self) -> None:
        """Soft reset, then wait for the banner."""
        with self._lock:
            self._buf = b""
            with contextlib.suppress(self._serial_errors):
                self.port.reset_input_buffer()
            self._write(SOFT_RESET)
            deadline = time.monotonic() + self.timeout_s
            while True:
                line = self._readline(deadline, "the controller's banner after a reset")
                if BANNER.match(line):
                    self.banner = line
                    break
                if line.startswith("ALARM:"):
                    self.homed = False
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
            log.debug("stage: %s on %s", self.banner, self.url)

    # -- the stage's jobs ---------------------------------------------------------------------
    def ready(self) -> None:
        """Home (or unlock) when the controller is in Alarm or was never homed."""
        st = self.status()
        if st.name == "Alarm" or (self.home_enabled and not self.homed):
            if self.home_enabled:
                log.info("homing the stage")
                self.command("$H", self.home_timeout_s)
                self.homed = True
            else:
                self.command("$X")
            st = self.status()
        if st.name != "Idle":
            raise StageError(f"stage controller is {st.state}, not Idle, after homing/unlock")
        self.command("G21 G90 G94")  # mm, absolute, feed per minute

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
        dist = math.dist(here, (x, y))
        # the time the feed says, plus acceleration and a generous margin
        budget = dist / self.feed * 60.0 * 2.0 + self.timeout_s
        with self._lock:
            self.command(f"G1 X{_fmt(x)} Y{_fmt(y)} F{self.feed:g}")
            self.wait_idle(budget, f"the move to ({x:.3f}, {y:.3f}) mm", cancel)
        return time.monotonic() - t0

    def wait_idle(self, timeout_s: float, what: str,
                  cancel: Callable[[], bool] | None = None) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            if cancel is not None and cancel():
                raise MoveCancelled(f"{what} was cancelled")
            st = self.status()
            if st.name == "Idle":
                return
            if st.name == "Alarm":
                raise StageError(f"stage controller went into Alarm during {what}")
            if time.monotonic() > deadline:
                raise StageTimeout(f"stage did not reach Idle within {timeout_s:.1f} s during "
                                   f"{what} (last state {st.state})")
            time.sleep(0.01)

    def abort(self) -> None:
        """Stop now: feed hold, wait for the axes to stop, soft reset. Never raises."""
        try:
            with self._lock:
                self._write(FEED_HOLD)
                deadline = time.monotonic() + 1.0
                while time.monotonic() < deadline:
                    try:
                        st = self.status()
                    except StageError:
                        break
                    if st.state in ("Hold:0", "Idle", "Alarm"):
                        break
                    time.sleep(0.01)
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
