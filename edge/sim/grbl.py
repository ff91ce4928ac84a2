"""A GRBL 1.1 subset on a pseudo-terminal: the simulated XY stage of tests and the demo.

It talks bytes over a pty from its own thread, so the driver opens it like any serial device
(``GrblSimulator().start()`` returns the path). What it does, as the real controllers do:

* a banner on start and after Ctrl-X (``Grbl 1.1h ['$' for help]``, or grblHAL's);
* with homing enabled, it starts in Alarm (``[MSG:'$H'|'$X' to unlock]``) and locks G-code out
  (``error:9``) until ``$H`` (takes the time of the travel home) or ``$X``;
* ``G0``/``G1`` with ``X``/``Y``/``F``, ``G90``/``G91``, ``G21``, ``G94``, ``G4 P<s>`` (a dwell
  that waits for the planner to empty before its ``ok``), ``$X``, ``$H``; anything else is
  ``error:20``, a bad number ``error:2``;
* moves take the time their distance, the feed rate and the acceleration say (trapezoidal
  profile); ``ok`` comes when a line enters the planner, up to its 16 blocks, not when it ends;
* ``?`` answers ``<State|MPos:x,y,z|FS:feed,0>`` with the interpolated position; ``!`` holds
  (``Hold:1`` while decelerating, then ``Hold:0``), ``~`` resumes;
* soft limits: a target beyond the travel raises ``ALARM:2`` and drops the planner;
* Ctrl-X while moving raises ``ALARM:3`` (position lost); after a completed hold it does not;
* ``flavor="grblhal"``: after an ``error:N`` every further line is answered with the same error
  until an empty line arrives.

Faults for tests, as a real stage shows them: :meth:`trip_limit` (hard limit switch,
``ALARM:1``), :attr:`silent` (the controller stops answering, as with a pulled cable), and
``homing_fails`` (``ALARM:9``).
"""

from __future__ import annotations

import contextlib
import math
import os
import pty
import select
import threading
import time
import tty
from collections import deque
from dataclasses import dataclass

BANNERS = {"grbl": "Grbl 1.1h ['$' for help]",
           "grblhal": "GrblHAL 1.1f ['$' or '$HELP' for help]"}
PLANNER_BLOCKS = 16


@dataclass
class _Move:
    start: tuple[float, float]
    end: tuple[float, float]
    feed_mm_s: float
    t0: float = 0.0
    duration: float = 0.0
    dwell: bool = False


def move_time(dist: float, feed_mm_s: float, accel: float) -> float:
    """Trapezoidal (or triangular, when the move is short) profile from rest to rest."""
    if dist <= 0:
        return 0.0
    ramp = feed_mm_s * feed_mm_s / accel
    if dist >= ramp:
        return dist / feed_mm_s + feed_mm_s / accel
    return 2.0 * math.sqrt(dist / accel)


def _along(m: _Move, t: float, accel: float) -> tuple[float, float]:
    """Position ``t`` seconds into move ``m`` under the same profile."""
    dist = math.dist(m.start, m.end)
    if dist == 0 or t >= m.duration:
        return m.end
    v = m.feed_mm_s
    ta = min(v / accel, m.duration / 2.0)
    vpk = accel * ta
    if t < ta:
        s = 0.5 * accel * t * t
    elif t < m.duration - ta:
        s = 0.5 * accel * ta * ta + vpk * (t - ta)
    else:
        r = m.duration - t
        s = dist - 0.5 * accel * r * r
    f = min(max(s / dist, 0.0), 1.0)
    return (m.start[0] + f * (m.end[0] - m.start[0]), m.start[1] + f * (m.end[1] - m.start[1]))


class GrblSimulator:
    def __init__(self, travel_mm: tuple[tuple[float, float], tuple[float, float]] = ((0, 200),
                 (0, 200)), flavor: str = "grbl", homing: bool = True, accel_mm_s2: float = 800.0,
                 home_s: float = 0.3):
        if flavor not in BANNERS:
            raise ValueError(f"flavor must be one of {sorted(BANNERS)}, got {flavor!r}")
        self.travel, self.flavor, self.homing = travel_mm, flavor, homing
        self.accel, self.home_s = accel_mm_s2, home_s
        self.silent = False
        self.homing_fails = False
        self.received: list[str] = []  # every line, for tests
        self._lock = threading.RLock()
        self._pos = (0.0, 0.0)
        self._queue: deque[_Move] = deque()
        self._feed = 0.0
        self._absolute = True
        self._hold: float | None = None  # when the hold began
        self._state = "Idle"
        self._sticky_error: int | None = None
        self._pending_ok: deque[str] = deque()  # 'move' or 'dwell' lines waiting for their ok
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.master = self.slave = -1
        self.path = ""

    # -- lifetime ---------------------------------------------------------------------------
    def start(self) -> str:
        self.master, self.slave = pty.openpty()
        tty.setraw(self.slave)
        self.path = os.ttyname(self.slave)
        self._power_on()
        self._thread = threading.Thread(target=self._run, name="grbl-sim", daemon=True)
        self._thread.start()
        return self.path

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
        for fd in (self.master, self.slave):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.master = self.slave = -1

    def __enter__(self) -> GrblSimulator:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- what tests look at -------------------------------------------------------------------
    @property
    def position(self) -> tuple[float, float]:
        with self._lock:
            self._advance(time.monotonic())
            return self._where(time.monotonic())

    @property
    def state(self) -> str:
        with self._lock:
            self._advance(time.monotonic())
            return self._state_now(time.monotonic())

    def trip_limit(self) -> None:
        """A hard limit switch closes: motion stops dead, ALARM:1, position lost."""
        with self._lock:
            self._pos = self._where(time.monotonic())
            self._queue.clear()
            self._pending_ok.clear()
            self._alarm(1)

    # -- the wire -----------------------------------------------------------------------------
    def _send(self, text: str) -> None:
        if self.silent or self.master < 0:
            return
        with contextlib.suppress(OSError):
            os.write(self.master, text.encode("ascii") + b"\r\n")

    def _run(self) -> None:
        line = bytearray()
        while not self._stop.is_set():
            try:
                ready, _, _ = select.select([self.master], [], [], 0.005)
            except (OSError, ValueError):
                return
            now = time.monotonic()
            with self._lock:
                self._advance(now)
                self._release_pending(now)
            if not ready:
                continue
            try:
                data = os.read(self.master, 4096)
            except OSError:
                return
            for b in data:
                if self.silent:
                    continue
                c = bytes([b])
                with self._lock:
                    if c == b"?":
                        self._report()
                    elif c == b"!":
                        self._feed_hold()
                    elif c == b"~":
                        self._cycle_start()
                    elif c == b"\x18":
                        line.clear()
                        self._soft_reset()
                    elif c == b"\n":
                        text = line.decode("ascii", "replace").strip()
                        line.clear()
                        self.received.append(text)
                        self._line(text)
                    elif c != b"\r" and len(line) < 256:
                        line += c

    # -- state --------------------------------------------------------------------------------
    def _power_on(self) -> None:
        self._send(BANNERS[self.flavor])
        if self.homing:
            self._state = "Alarm"
            self._send("[MSG:'$H'|'$X' to unlock]")

    def _where(self, now: float) -> tuple[float, float]:
        if not self._queue:
            return self._pos
        m = self._queue[0]
        t = (self._hold if self._hold is not None else now) - m.t0
        return m.start if m.dwell else _along(m, t, self.accel)

    def _advance(self, now: float) -> None:
        """Retire the moves that have finished by ``now``; start the next ones."""
        if self._hold is not None:
            return
        while self._queue:
            m = self._queue[0]
            if now < m.t0 + m.duration:
                return
            self._pos = m.end
            self._queue.popleft()
            if self._queue:
                nxt = self._queue[0]
                nxt.t0 = m.t0 + m.duration
                nxt.start = self._pos
                if not nxt.dwell:
                    nxt.duration = move_time(math.dist(nxt.start, nxt.end), nxt.feed_mm_s,
                                             self.accel)
        if self._state in ("Run",):
            self._state = "Idle"

    def _state_now(self, now: float) -> str:
        if self._state == "Alarm":
            return "Alarm"
        if self._hold is not None:
            return "Hold:1" if now - self._hold < self._decel_s() else "Hold:0"
        return "Run" if self._queue else "Idle"

    def _decel_s(self) -> float:
        return (self._feed / 60.0) / self.accel if self._queue else 0.0

    def _report(self) -> None:
        now = time.monotonic()
        self._advance(now)
        x, y = self._where(now)
        st = self._state_now(now)
        feed = self._feed if st == "Run" else 0.0
        self._send(f"<{st}|MPos:{x:.3f},{y:.3f},0.000|FS:{feed:g},0>")

    def _alarm(self, code: int) -> None:
        self._state = "Alarm"
        self._hold = None
        self._send(f"ALARM:{code}")

    def _feed_hold(self) -> None:
        if self._queue and self._hold is None and self._state != "Alarm":
            self._hold = time.monotonic()

    def _cycle_start(self) -> None:
        if self._hold is not None:
            now = time.monotonic()
            here = self._where(now)
            m = self._queue[0]
            self._hold = None
            m.start, m.t0 = here, now
            if not m.dwell:
                m.duration = move_time(math.dist(here, m.end), m.feed_mm_s, self.accel)

    def _soft_reset(self) -> None:
        now = time.monotonic()
        self._advance(now)
        moving = bool(self._queue) and (self._hold is None or now - self._hold < self._decel_s())
        self._pos = self._where(now)
        self._queue.clear()
        self._pending_ok.clear()
        self._hold = None
        self._sticky_error = None
        if moving:
            self._alarm(3)
        self._send("")
        self._send(BANNERS[self.flavor])
        if self._state == "Alarm":
            self._send("[MSG:'$H'|'$X' to unlock]")

    def _release_pending(self, now: float) -> None:
        while self._pending_ok:
            kind = self._pending_ok[0]
            if kind == "dwell" and self._queue:
                return
            if kind == "move" and len(self._queue) >= PLANNER_BLOCKS:
                return
            self._pending_ok.popleft()
            self._send("ok")

    # -- G-code -------------------------------------------------------------------------------
    def _error(self, code: int) -> None:
        if self.flavor == "grblhal":
            self._sticky_error = code
        self._send(f"error:{code}")

    def _line(self, text: str) -> None:
        if not text:
            self._sticky_error = None
            self._send("ok")
            return
        if self._sticky_error is not None:
            self._send(f"error:{self._sticky_error}")
            return
        up = text.upper().replace(" ", "")
        if up == "$X":
            if self._state == "Alarm":
                self._state = "Idle"
                self._send("[MSG:Caution: Unlocked]")
            self._send("ok")
            return
        if up == "$H":
            self._home()
            return
        if up.startswith("$"):
            self._error(3)
            return
        if self._state == "Alarm":
            self._error(9)
            return
        words = _words(up)
        if words is None:
            self._error(2)
            return
        if not words:
            self._error(1)
            return
        target = list(self._queue[-1].end if self._queue else self._pos)
        motion = dwell = None
        for letter, value in words:
            if letter == "G":
                if value in (0.0, 1.0):
                    motion = value
                elif value == 90.0:
                    self._absolute = True
                elif value == 91.0:
                    self._absolute = False
                elif value == 4.0:
                    dwell = 0.0
                elif value not in (21.0, 94.0, 17.0):
                    self._error(20)
                    return
            elif letter in "XY":
                k = "XY".index(letter)
                target[k] = value if self._absolute else target[k] + value
                motion = 0.0 if motion is None else motion
            elif letter == "F":
                if value <= 0:
                    self._error(4)
                    return
                self._feed = value
            elif letter == "P" and dwell is not None:
                dwell = value
            elif letter == "Z":
                continue
            else:
                self._error(20)
                return
        if dwell is not None:
            self._queue.append(_Move(tuple(target), tuple(target), 1.0, dwell=True))
            self._schedule_tail(time.monotonic(), dwell)
            self._pending_ok.append("dwell")
            return
        if motion is not None and any(w[0] in "XY" for w in words):
            (x0, x1), (y0, y1) = self.travel
            if not (x0 <= target[0] <= x1 and y0 <= target[1] <= y1):
                self._pos = self._where(time.monotonic())
                self._queue.clear()
                self._alarm(2)
                return
            if self._feed <= 0:
                self._error(22)
                return
            m = _Move((0.0, 0.0), (target[0], target[1]), self._feed / 60.0)
            self._queue.append(m)
            self._schedule_tail(time.monotonic(), None)
            self._state = "Run"
            self._pending_ok.append("move")
            self._release_pending(time.monotonic())
            return
        self._send("ok")

    def _schedule_tail(self, now: float, dwell: float | None) -> None:
        """Give the newly appended block its start; only the head of the queue runs now."""
        m = self._queue[-1]
        if len(self._queue) == 1:
            m.start, m.t0 = self._pos, now
            m.duration = dwell if dwell is not None else move_time(
                math.dist(m.start, m.end), m.feed_mm_s, self.accel)
        elif dwell is not None:
            m.duration = dwell

    def _home(self) -> None:
        if self._queue:
            self._error(8)
            return
        if self.homing_fails:
            self._alarm(9)
            return
        # homing travels to the switches at the minimum of each axis; the answer waits for it
        dist = math.dist(self._pos, (self.travel[0][0], self.travel[1][0]))
        time.sleep(self.home_s + dist / 100.0 * 0.1)
        self._pos = (self.travel[0][0], self.travel[1][0])
        self._state = "Idle"
        self._send("ok")


def _words(text: str) -> list[tuple[str, float]] | None:
    """``G1X10.5Y3`` -> [("G", 1.0), ("X", 10.5), ("Y", 3.0)]; None on a bad number."""
    out, i = [], 0
    while i < len(text):
        letter = text[i]
        if not letter.isalpha():
            return None
        j = i + 1
        while j < len(text) and (text[j].isdigit() or text[j] in ".-+"):
            j += 1
        try:
            out.append((letter, float(text[i + 1:j])))
        except ValueError:
            return None
        i = j
    return out
