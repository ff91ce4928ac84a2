"""A GRBL 1.1 subset on a pseudo-terminal: the simulated XY stage of tests and the demo.

It talks bytes over a pty from its own thread, so a driver opens it like any serial device
(``GrblSimulator().start()`` returns the path). It behaves as the real firmwares do, read in
their sources: classic grbl 1.1h (``flavor="grbl"``) and grblHAL at compatibility level 0
(``flavor="grblhal"``). What it simulates:

Both flavours

* boot: a start-up time (``boot_s``, and a shorter ``reset_s`` after a soft reset) during which
  every byte is lost, a Ctrl-X included; then the banner after an empty line;
* machine coordinates as real firmware counts them: ``MPos`` 0 at power-up wherever the
  carriage is; homing (``$H``, X and Y together) seeks the switches at ``$25``, pulls off
  ``$27``, locates again at ``$24``, pulls off again (``$26`` debounce after each pass), so it
  takes the time these distances and rates say, and ends at ``MPos = -$27`` (homing toward +,
  the default ``$23=0``) or ``-$13x + $27`` (toward -);
* work coordinates: G54..G59 offsets (kept like EEPROM across resets), ``G10 L2``/``L20``,
  ``G92``/``G92.1``, ``G53`` with ``G0``/``G1``, ``G90``/``G91``, ``G21``, ``G94``, ``G17``,
  ``G4 P<s>`` (waits for the planner to empty, then dwells), ``M5``, ``M9``, ``S``, ``T``, ``N``;
  other G/M codes are ``error:20`` (not simulated: arcs, probing, inches, G28/G30, ...); the
  parser's errors: bad number 2, negative value 4, modal group 21, undefined feed 22, two axis
  commands 24, repeated word 25, no axis words 26, missing P/L 28, coordinate system 29, unused
  words 36, line overflow 11;
* motion: trapezoidal profiles from rest to rest, the feed capped silently at the axes' maximum
  rates ``$110``/``$111`` (``G0`` runs at them), the acceleration at ``$120``/``$121``; each
  move ends a random 0-``late_s`` (60 ms) after its profile, as real firmware's do (its stepper
  segments and the last deceleration steps take longer than the plan; seeded with ``seed``);
  positions on the step grid (``$100``-``$102`` steps/mm: ``MPos`` is whole steps, a target is
  rounded to the nearest step as grbl's planner does); ``ok`` when a line enters the planner
  (grbl 15 usable blocks, grblHAL 100); lines wait in a receive buffer while the planner is
  full (bytes beyond it are lost, as a UART's are);
* soft limits (``$20``) in machine coordinates, raising ``ALARM:2`` after a controlled stop;
  ``trip_limit()`` (a hard limit switch, ``$21``) ``ALARM:1``; Ctrl-X while moving ``ALARM:3``,
  during homing ``ALARM:6``; ``homing_fails`` ``ALARM:9`` after the whole search distance;
* feed hold ``!`` (``Hold:1`` while decelerating, ``Hold:0`` stopped) and resume ``~``; a reset
  after a completed hold keeps the position (no alarm);
* every ``ALARM:n`` is followed by the firmware's pause (grbl 0.5 s, grblHAL 0.1 s) in which a
  Ctrl-X is lost: before a limit alarm's ``[MSG:Reset to continue]`` it is cleared, and after
  any other alarm the firmware resets itself once the pause is over (homing failures 6-9:
  ``mc_reset()``), stale ``ok`` (grbl) and banner included;
* ``$$`` (settings as the firmware prints them), ``$n=value``, ``$I``, ``$G``, ``$#``, ``$N``,
  ``$``, ``$X``, ``$H``; status reports ``<State|MPos:..|FS:..>`` (``WPos`` with ``$10`` bit 0
  clear), ``Pn:X`` while a limit switch is held, ``WCO:`` and ``Ov:`` on the firmware's refresh
  counters (10 reports when idle, 30/20 when busy) and ``WCO:`` right after an offset change.

Classic grbl 1.1h

* power-up with homing (init lock): Alarm and ``[MSG:'$H'|'$X' to unlock]``, no ALARM line;
* ``ALARM:1``/``ALARM:2`` are critical: ``[MSG:Reset to continue]`` 0.5 s later, then nothing
  is answered (not ``?``, not ``$X``) and incoming lines are dropped until Ctrl-X;
* a line cut short by a reset or alarm (a move waiting for the planner, a dwell, ``$H``) gets a
  stale ``ok`` before the banner; after the banner ``[MSG:Check Limits]`` if a switch is still
  held with hard limits on, then ``[MSG:'$H'|'$X' to unlock]`` if in Alarm;
* ``?`` is not answered during homing; one delayed ``<Home|..>`` report at its end;
* the hard-limit interrupt fires on any pin change: releasing a held switch (``release_limit``)
  while not in Alarm raises ``ALARM:1`` again;
* reports: ``WCO:`` in the first report after a reset, ``Ov:`` in the one after every ``WCO:``
  report, ``Bf:`` only with ``$10`` bit 1.

grblHAL

* ``$22`` bit 2 (homing on start-up required, ``$22=5``, the default here): ``ALARM:11`` +
  ``[MSG:Homing cycle required]`` at power-up and after every reset until homed; ``$X`` is
  refused with ``error:46`` meanwhile. Without it (``$22=1``, ``homing_required=False``) it
  boots Idle, not homed, with no alarm and no ``H:`` field: only ``$#``'s ``[HOME:x,y,z:0]``
  says so (its last field is the homed axes' mask);
* ``$$``: 83 settings in grblHAL's number format (:data:`HAL_SETTINGS`); ``$G`` with ``G40``,
  ``G92`` right after the coordinate system when an offset is set; ``$#`` with
  ``[TLO:x,y,z]`` (every axis: ``TOOL_LENGTH_OFFSET_AXIS`` is -1 at compatibility level 0);
* reports: ``Bf:100,1023`` when idle; ``|A:`` (accessories: no spindle, no coolant) after the
  parser ran ``M5``/``M9``; ``|TLR:0`` after ``$TLR`` (no probe result: no reference);
* ``ALARM:1``/``ALARM:2``: ``[MSG:Reset to continue]`` 0.1 s later; ``?`` is still answered,
  G-code gets ``error:9``, ``$X``/``$H`` ``error:79``, other ``$`` commands work, until Ctrl-X;
  no stale ``ok``; a reset or hard limit while moving loses the homed state;
* sticky G-code error: after ``error:N`` every G-code line is answered ``error:N`` unexecuted
  until an empty line, any ``$`` command or a reset; ``$`` commands are never blocked;
* homing: one unsolicited ``<Home|..>`` report and 0.1 s before it starts, ``[MSG:]`` at its end;
* soft limits only on homed axes, envelope ``[-$13x + $27, -$27]`` with hard limits on;
* reports: ``$10=511`` (``Bf:`` in every report), ``H:1``/``H:0`` after homing, ``$G`` or a
  ``$13x`` change; G92 offsets survive a reset; CR LF is one line end (grbl answers two).

Not simulated: jogging (``$J=``), check mode, sleep, overrides, the safety door, probing, the
Z axis's homing (Z keeps its position), grblHAL's extra banner when the port opens.

Faults for tests, as a real stage shows them: :meth:`trip_limit` (hard limit switch),
:attr:`silent` (the controller stops answering, as with a pulled cable), ``homing_fails``
(the switches are never found: ``ALARM:9``), :meth:`lose_steps` (the motors slip: the
carriage is not where the controller counts it, :attr:`carriage_position`, until homing).
"""

from __future__ import annotations

import contextlib
import fcntl
import math
import os
import pty
import random
import re
import select
import threading
import time
import tty
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

FLAVORS = ("grbl", "grblhal")
BANNERS = {"grbl": "Grbl 1.1h ['$' for help]",
           "grblhal": "GrblHAL 1.1f ['$' or '$HELP' for help]"}
HELP = {"grbl": "[HLP:$$ $# $G $I $N $x=val $Nx=line $J=line $SLP $C $X $H ~ ! ? ctrl-x]",
        "grblhal": "[HLP:$$ $# $G $I $N $x=val $Nx=line $J=line $SLP $C $X $H $B ~ ! ? ctrl-x]"}
# planner ring buffers, one slot stays empty: grbl 15 usable blocks, grblHAL 100 ($398)
PLANNER_BLOCKS = {"grbl": 16, "grblhal": 101}
RX_BUFFER = {"grbl": 128, "grblhal": 1024}  # serial receive buffer, bytes
# Bf's second number when the buffer is empty: grbl counts 128 free, grblHAL's ring 1023
RX_FREE_EMPTY = {"grbl": 128, "grblhal": 1023}
LINE_BUFFER = {"grbl": 80, "grblhal": 257}  # a longer line is error:11
# report_alarm_message() sleeps after printing ALARM:n (grbl delay_ms(500), grblHAL 100 ms);
# a Ctrl-X in that pause is lost: cleared before a limit alarm's lock, merged into the reset
# that follows any other alarm
ALARM_PAUSE_S = {"grbl": 0.5, "grblhal": 0.1}
LATE_S = 0.06  # real motion ends up to this much after the planned profile (stepper segments)
HAL_HOMING_PAUSE_S = 0.1  # grblHAL's wait after its unsolicited <Home|..> report
AXES = "XYZ"
HOMED_AXES = (0, 1)  # the stage's homing cycle: X and Y; Z has no switch
UNLOCK_MSG = "[MSG:'$H'|'$X' to unlock]"
CRITICAL_ALARMS = (1, 2)
WCO_REFRESH = (10, 30)  # reports between WCO fields: idle, busy (config.h)
OVR_REFRESH = (10, 20)
SEARCH_SCALE = 1.5  # homing searches 1.5 x the longest travel for a switch

# $$ in grbl's order; these are printed with 3 decimals, the others as integers
SETTING_ORDER = (0, 1, 2, 3, 4, 5, 6, 10, 11, 12, 13, 20, 21, 22, 23, 24, 25, 26, 27, 30, 31,
                 32, 100, 101, 102, 110, 111, 112, 120, 121, 122, 130, 131, 132)
FLOAT_SETTINGS = frozenset({11, 12, 24, 25, 27, 100, 101, 102, 110, 111, 112, 120, 121, 122,
                            130, 131, 132})
# grblHAL's $$ (settings.c, a 3-axis build with a PWM spindle, safety door and manual tool
# change, no networking or plugins): 83 settings, id -> (decimals, default). A decimal setting
# prints with as many decimals as its format string has ("#0.0" -> 10.0, "#####0.000##" ->
# 250.00000, and 1 without a point); None: an integer. Defaults are grblHAL's (defaults.h) for
# what the stage does not use; the stage's own ($0-$32, $100-$132) come from the simulator.
HAL_SETTINGS: dict[int, tuple[int | None, float]] = {
    0: (1, 10.0), 1: (None, 25), 2: (None, 0), 3: (None, 0), 4: (None, 0), 5: (None, 0),
    6: (None, 0), 9: (None, 1), 10: (None, 511), 11: (3, 0.01), 12: (3, 0.002), 13: (None, 0),
    14: (None, 0), 15: (None, 0), 16: (None, 0), 17: (None, 0), 18: (None, 0), 19: (None, 0),
    20: (None, 0), 21: (None, 0), 22: (None, 0), 23: (None, 0), 24: (1, 25.0), 25: (1, 500.0),
    26: (None, 250), 27: (3, 1.0), 28: (3, 0.1), 29: (1, 0.0), 30: (3, 1000.0), 31: (3, 0.0),
    32: (None, 0), 33: (1, 5000.0), 34: (1, 0.0), 35: (1, 0.0), 36: (1, 100.0), 37: (None, 0),
    39: (None, 1), 40: (None, 0), 41: (None, 0), 42: (None, 2), 43: (None, 1), 44: (None, 4),
    45: (None, 3), 46: (None, 0), 56: (1, 5.0), 57: (1, 100.0), 58: (1, -5.0), 59: (1, 500.0),
    60: (None, 1), 61: (None, 0), 62: (None, 0), 63: (None, 2), 64: (None, 0), 65: (None, 0),
    100: (5, 250.0), 101: (5, 250.0), 102: (5, 250.0), 110: (3, 500.0), 111: (3, 500.0),
    112: (3, 500.0), 120: (3, 10.0), 121: (3, 10.0), 122: (3, 10.0), 130: (3, 200.0),
    131: (3, 200.0), 132: (3, 200.0), 340: (1, 0.0), 341: (None, 0), 342: (1, 30.0),
    343: (1, 25.0), 344: (1, 200.0), 345: (1, 100.0), 346: (None, 1), 384: (None, 0),
    392: (1, 4.0), 393: (1, 1.0), 394: (1, 0.0), 395: (None, 0), 398: (None, 100),
    481: (None, 0), 484: (None, 1), 486: (None, 0), 539: (1, 0.0),
}

# G codes the simulator runs, by modal group (two of one group in a line: error:21)
G_GROUPS = {0: "motion", 1: "motion", 4: "nonmodal", 10: "nonmodal", 53: "nonmodal",
            92: "nonmodal", 17: "plane", 21: "units", 90: "distance", 91: "distance",
            94: "feedmode", 54: "coord", 55: "coord", 56: "coord", 57: "coord", 58: "coord",
            59: "coord"}
M_GROUPS = {5: "spindle", 9: "coolant"}  # the stage has neither: only "off" is accepted
VALUE_LETTERS = "FIJKLNPRSTXYZ"
NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)")

Vec = tuple[float, float, float]


def move_time(dist: float, feed_mm_s: float, accel: float) -> float:
    """Trapezoidal (or triangular, when the move is short) profile from rest to rest."""
    if dist <= 0:
        return 0.0
    ramp = feed_mm_s * feed_mm_s / accel
    if dist >= ramp:
        return dist / feed_mm_s + feed_mm_s / accel
    return 2.0 * math.sqrt(dist / accel)


def axis_limited(limits: Sequence[float], start: Sequence[float], end: Sequence[float]) -> float:
    """grbl's ``limit_value_by_axis_maximum``: the largest rate (or acceleration) along the
    line from ``start`` to ``end`` that keeps every axis within its own limit."""
    dist = math.dist(start, end)
    out = math.inf
    for lim, a, b in zip(limits, start, end, strict=True):
        if b != a:
            out = min(out, lim * dist / abs(b - a))
    return out


@dataclass
class _Move:
    """One planner block, in machine coordinates; runs from rest to rest."""

    start: Vec
    end: Vec
    speed: float  # mm/s, after the max-rate cap
    accel: float  # mm/s^2 along the line, after the per-axis cap
    t0: float = 0.0
    duration: float = 0.0  # the profile's time and the late end
    checked: bool = False  # against the soft limits, as it was about to enter the planner
    late: float = 0.0  # seconds the real motion takes beyond its profile

    @property
    def length(self) -> float:
        return math.dist(self.start, self.end)

    def plan(self, t0: float) -> None:
        self.t0 = t0
        self.duration = move_time(self.length, self.speed, self.accel) + self.late

    def travelled(self, t: float) -> tuple[float, float]:
        """Distance along the move and speed, ``t`` seconds after it started: the profile,
        stretched over its late end (the carriage runs a little slower than planned)."""
        d = self.length
        if d == 0 or t >= self.duration:
            return d, 0.0
        if t <= 0:
            return 0.0, 0.0
        T = self.duration - self.late
        stretch = T / self.duration
        s, v = self._profile(t * stretch, T)
        return s, v * stretch

    def _profile(self, t: float, T: float) -> tuple[float, float]:
        d, a = self.length, self.accel
        ta = min(self.speed / a, T / 2.0)
        vpk = a * ta
        if t < ta:
            return 0.5 * a * t * t, a * t
        if t < T - ta:
            return 0.5 * a * ta * ta + vpk * (t - ta), vpk
        r = T - t
        return d - 0.5 * a * r * r, a * r

    def point(self, s: float) -> Vec:
        d = self.length
        f = 1.0 if d == 0 else min(max(s / d, 0.0), 1.0)
        return tuple(a + f * (b - a) for a, b in zip(self.start, self.end, strict=True))


@dataclass
class _Homing:
    """A homing cycle under way: legs in physical coordinates (those of a homed machine)."""

    legs: list[tuple[float, float, float, Vec, Vec]]  # start, motion end, leg end, from, to
    offset: Vec  # physical minus machine position before the cycle
    fails: bool
    fail_mpos: Vec | None = None  # where grbl's step count says it is after a failed search

    @property
    def end(self) -> float:
        return self.legs[-1][2]

    def where(self, now: float) -> Vec:
        for t0, t1, t2, a, b in self.legs:
            if now < t2:
                f = 1.0 if t1 <= t0 else min(max((now - t0) / (t1 - t0), 0.0), 1.0)
                return tuple(p + f * (q - p) for p, q in zip(a, b, strict=True))
        return self.legs[-1][4]


class GrblSimulator:
    """A GRBL controller and its XY stage on a pty; see the module docstring.

    ``travel_mm`` is the stage's travel per axis (X, Y) as (min, max): its span sets ``$130`` and
    ``$131``. ``settings`` overrides any ``$n`` (as the controller's EEPROM would hold it);
    ``start_mm`` is where the carriage physically stands at power-up, in the machine
    coordinates of a homed machine (default: where homing leaves it); ``g54_mm`` the stored G54
    offset. ``homing_required`` (default: ``homing``) is grbl's init lock at power-up and
    grblHAL's ``$22`` bit 2 (``$22=5``; False: ``$22=1``). ``home_s`` adds a fixed time to every
    homing cycle. ``late_s`` is the most a move ends after its profile (0: on time), ``seed``
    seeds those delays.
    """

    def __init__(self, travel_mm: tuple[tuple[float, float], tuple[float, float]] = ((0, 200),
                 (0, 200)), flavor: str = "grbl", homing: bool = True, accel_mm_s2: float = 800.0,
                 home_s: float = 0.0, *, homing_required: bool | None = None,
                 boot_s: float = 0.05, reset_s: float = 0.005,
                 settings: dict[int, float] | None = None,
                 start_mm: tuple[float, float] | None = None,
                 g54_mm: tuple[float, float] = (0.0, 0.0), planner_blocks: int | None = None,
                 late_s: float = LATE_S, seed: int | None = None):
        if flavor not in FLAVORS:
            raise ValueError(f"flavor must be one of {sorted(FLAVORS)}, got {flavor!r}")
        self.flavor = flavor
        self.hal = flavor == "grblhal"
        self.home_s, self.boot_s, self.reset_s = home_s, boot_s, reset_s
        self.planner_blocks = planner_blocks or PLANNER_BLOCKS[flavor]
        self.late_s = late_s
        self._rng = random.Random(seed)  # the moves' late ends; seeded: the same every run
        self.silent = False
        self.homing_fails = False
        self.received: list[str] = []  # every line that reached the receive buffer, for tests
        self.late_ends: list[float] = []  # how late each planned move ends, for tests
        self.motion_s: list[float] = []  # each finished move's real duration (benchmarks)
        required = homing if homing_required is None else homing_required
        self._init_lock = homing and required  # grbl's HOMING_INIT_LOCK; grblHAL: $22 bit 2
        self._mins = (float(travel_mm[0][0]), float(travel_mm[1][0]))
        self.settings: dict[int, float] = self._default_settings(travel_mm, homing, accel_mm_s2)
        for k, v in (settings or {}).items():
            if k not in self.settings:
                raise ValueError(f"${k} is not a setting the simulator knows")
            self.settings[k] = v
        # G54..G59 and G92 offsets: the firmware keeps G54..G59 in EEPROM
        self._coords: list[list[float]] = [[0.0, 0.0, 0.0] for _ in range(6)]
        self._coords[0][:2] = [float(g54_mm[0]), float(g54_mm[1])]
        self._g92 = [0.0, 0.0, 0.0]
        home = [self._home_position(i) for i in range(3)]
        phys = (home[0], home[1], 0.0) if start_mm is None else (*start_mm, 0.0)
        self._offset: Vec = tuple(float(p) for p in phys)  # physical minus machine position
        # where the carriage really is minus where the step count says, XY: steps the motors
        # lost (lose_steps); the controller cannot know, only homing finds the switches again
        self._slip: tuple[float, float] = (0.0, 0.0)

        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.master = self.slave = -1
        self.path = ""
        self._reset_state(cold=True)

    # -- configuration ------------------------------------------------------------------------
    def _default_settings(self, travel_mm, homing: bool, accel: float) -> dict[int, float]:
        """grbl's defaults.h, with a machine's own values for rates, travel and homing (fast
        enough that tests and the demo do not wait long for homing). The stage has limit
        switches: hard limits are on (``$21=1``) with or without homing."""
        hal = self.hal
        flags = (1 | (4 if self._init_lock else 0)) if hal else 1
        s = {0: 10, 1: 25, 2: 0, 3: 0, 4: 0, 5: 0, 6: 0, 10: 511 if hal else 1, 11: 0.010,
             12: 0.002, 13: 0, 20: 1 if homing else 0, 21: 1,
             22: flags if homing else 0, 23: 0, 24: 600.0, 25: 3000.0, 26: 25, 27: 1.0, 30: 1000,
             31: 0, 32: 0, 100: 250.0, 101: 250.0, 102: 250.0, 110: 10000.0, 111: 10000.0,
             112: 1000.0, 120: accel, 121: accel, 122: accel,
             130: float(travel_mm[0][1] - travel_mm[0][0]),
             131: float(travel_mm[1][1] - travel_mm[1][0]), 132: 200.0}
        if hal:
            s = {**{k: v for k, (_, v) in HAL_SETTINGS.items()}, **s, 398: PLANNER_BLOCKS[
                "grblhal"] - 1}
        return {k: float(v) for k, v in s.items()}

    @property
    def travel(self) -> tuple[tuple[float, float], tuple[float, float]]:
        """The travel per axis as given at construction; its span is ``$130``/``$131``."""
        s = self.settings
        return ((self._mins[0], self._mins[0] + s[130]), (self._mins[1], self._mins[1] + s[131]))

    @travel.setter
    def travel(self, value: tuple[tuple[float, float], tuple[float, float]]) -> None:
        with self._lock:
            self._mins = (float(value[0][0]), float(value[1][0]))
            self.settings[130] = float(value[0][1] - value[0][0])
            self.settings[131] = float(value[1][1] - value[1][0])

    @property
    def accel(self) -> float:
        return self.settings[120]

    @property
    def homing(self) -> bool:
        return bool(int(self.settings[22]) & 1)

    # -- lifetime -----------------------------------------------------------------------------
    def start(self) -> str:
        self._stop.clear()
        self.master, self.slave = pty.openpty()
        tty.setraw(self.slave)
        # a host that does not read must not stall the controller: output is lost instead
        fl = fcntl.fcntl(self.master, fcntl.F_GETFL)
        fcntl.fcntl(self.master, fcntl.F_SETFL, fl | os.O_NONBLOCK)
        self.path = os.ttyname(self.slave)
        with self._lock:
            # power-up: the machine position restarts at 0 wherever the carriage stands
            phys = tuple(m + o for m, o in zip(self._mpos, self._offset, strict=True))
            self._reset_state(cold=True)
            self._offset = phys
            self._boot(time.monotonic(), self.boot_s)
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

    # -- what tests and the simulated camera look at ------------------------------------------
    @property
    def machine_position(self) -> Vec:
        """``MPos``: X, Y, Z in machine coordinates, as the controller counts them."""
        with self._lock:
            now = time.monotonic()
            self._advance(now)
            return self._where(now)

    @property
    def work_position(self) -> Vec:
        """``WPos``: the machine position less the active work offset (G54..G59 + G92)."""
        with self._lock:
            m, w = self.machine_position, self._wco()
            return tuple(a - b for a, b in zip(m, w, strict=True))

    @property
    def position(self) -> tuple[float, float]:
        """X, Y in work coordinates: where the G-code the controller runs says it is."""
        x, y, _ = self.work_position
        return (x, y)

    @property
    def carriage_position(self) -> tuple[float, float]:
        """X, Y where the carriage (and the glass on it) really is, in the work coordinates of
        :attr:`position`: the same unless the motors lost steps (:meth:`lose_steps`)."""
        x, y = self.position
        with self._lock:
            return (x + self._slip[0], y + self._slip[1])

    def lose_steps(self, mm: float) -> None:
        """The motors slip during the move under way (too fast a ramp, a stall, a loose
        coupling): the carriage ends ``mm`` short of the block's end along its direction,
        while the controller counts every step as made and reports the commanded position,
        as an open-loop stepper does. Nothing happens when no move runs. Homing clears it."""
        with self._lock:
            now = time.monotonic()
            self._advance(now)
            if not self._queue:
                return
            m = self._queue[0]
            dx, dy = m.end[0] - m.start[0], m.end[1] - m.start[1]
            d = math.hypot(dx, dy)
            if d > 0:
                self._slip = (self._slip[0] - mm * dx / d, self._slip[1] - mm * dy / d)

    @property
    def wco(self) -> Vec:
        """The active work offset (``WCO``): the machine position of work zero."""
        with self._lock:
            return self._wco()

    @property
    def coordinate_offsets(self) -> list[Vec]:
        """G54..G59 offsets as stored (``$#``)."""
        with self._lock:
            return [tuple(c) for c in self._coords]

    @property
    def state(self) -> str:
        """The state a status report would show now: Idle, Run, Hold:0/1, Home, Alarm."""
        with self._lock:
            now = time.monotonic()
            self._advance(now)
            return self._state_name(now)

    @property
    def alarm(self) -> int | None:
        """The code of the alarm the controller is in (None when not in Alarm)."""
        with self._lock:
            return self._alarm if self._base == "Alarm" else None

    @property
    def homed(self) -> bool:
        """Every axis of the homing cycle homed since power-up (grblHAL's ``H:1``; classic grbl
        keeps no such flag, the simulator tracks it all the same)."""
        with self._lock:
            return all(self._homed[i] for i in HOMED_AXES)

    def move_duration(self, start: Sequence[float], end: Sequence[float],
                      feed_mm_min: float | None = None) -> float:
        """Seconds the simulator takes from ``start`` to ``end`` (machine coordinates, 2 or 3
        axes) at ``feed_mm_min`` (None: a rapid, ``G0``), after the max-rate cap."""
        a = (*start, 0.0)[:3] if len(start) == 2 else tuple(start)
        b = (*end, 0.0)[:3] if len(end) == 2 else tuple(end)
        speed, accel = self._caps(a, b, None if feed_mm_min is None else feed_mm_min / 60.0)
        return move_time(math.dist(a, b), speed, accel)

    def trip_limit(self, axis: str = "X", held: bool = False) -> None:
        """A hard limit switch closes: with ``$21`` on, motion stops dead and ``ALARM:1``.
        ``held``: the switch stays closed (``Pn:``) until :meth:`release_limit` or homing."""
        with self._lock:
            now = time.monotonic()
            self._advance(now)
            if held:
                self._pins.add(axis.upper())
            # the limit interrupt is off while in Alarm and during homing (which reads them)
            if not int(self.settings[21]) & 1 or self._base in ("Alarm", "Home"):
                return
            self._critical_alarm(1, now)

    def release_limit(self, axis: str | None = None) -> None:
        """A held limit switch opens again. Classic grbl's interrupt fires on any pin change:
        outside Alarm that is another ``ALARM:1``."""
        with self._lock:
            now = time.monotonic()
            released = self._pins if axis is None else self._pins & {axis.upper()}
            if not released:
                return
            self._pins -= released
            if (not self.hal and int(self.settings[21]) & 1
                    and self._base not in ("Alarm", "Home")):
                self._critical_alarm(1, now)

    # -- the wire -----------------------------------------------------------------------------
    def _send(self, text: str) -> None:
        if self.silent or self.master < 0:
            return
        with contextlib.suppress(OSError):  # BlockingIOError too: the host does not read
            os.write(self.master, text.encode("ascii") + b"\r\n")

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                ready, _, _ = select.select([self.master], [], [], 0.002)
            except (OSError, ValueError):
                return
            data = b""
            if ready:
                try:
                    data = os.read(self.master, 4096)
                except BlockingIOError:
                    data = b""
                except OSError:
                    return
            with self._lock:
                self._tick(time.monotonic())
                for b in data:
                    if not self.silent:
                        self._byte(b, time.monotonic())

    def _byte(self, b: int, now: float) -> None:
        """One received byte: real-time commands act at once, the rest fills the RX buffer."""
        if self._booting(now):
            return  # the firmware clears its buffers and flags as it finishes booting
        if b == 0x18:
            self._ctrl_x(now)
        elif b == ord("?"):
            self._query(now)
        elif b == ord("!"):
            self._feed_hold(now)
        elif b == ord("~"):
            self._cycle_start(now)
        elif b > 0x7F:
            return  # extended real-time commands (overrides, jog cancel): not simulated
        elif b in (0x0A, 0x0D):
            # grblHAL does not answer the second half of a CR LF pair as an empty line
            if self.hal and not self._partial and self._eol and self._eol != b:
                self._eol = 0
                return
            self._eol = b
            if self._rx_used() >= RX_BUFFER[self.flavor] - 1:
                return
            raw = self._partial.decode("ascii", "replace")
            self._partial.clear()
            self._rx.append(raw)
            self.received.append(raw.strip())
            self._process_lines(now)
        elif self._rx_used() < RX_BUFFER[self.flavor] - 1:
            self._partial.append(b)  # a full buffer loses the byte, as grbl's serial ISR does

    def _rx_used(self) -> int:
        return sum(len(r) + 1 for r in self._rx) + len(self._partial)

    # -- state --------------------------------------------------------------------------------
    def _reset_state(self, cold: bool) -> None:
        """Power-up: what the firmware holds in RAM starts afresh."""
        self._mpos: Vec = (0.0, 0.0, 0.0)
        self._queue: deque[_Move] = deque()
        self._hold: tuple[float, float, float] | None = None  # when, distance, speed
        self._homing: _Homing | None = None
        self._job: deque[tuple] | None = None  # the line being executed, step by step
        self._rx: deque[str] = deque()
        self._partial = bytearray()
        self._eol = 0
        self._timers: list[tuple[float, int, Callable[[float], None]]] = []
        self._epoch = 0  # a reset cancels the timers of the epoch before it
        self._pins: set[str] = set()
        self._homed = [False, False, False]
        self._home_pos: Vec = (0.0, 0.0, 0.0)
        self._alarm: int | None = None
        self._critical = False
        self._critical_msg = False
        self._reset_after_msg = False
        self._position_lost = False
        self._report_pending = False
        self._report_homed = False
        self._report_acc = self._report_tlr = False
        self._stale_ok = False
        self._wco_counter = self._ovr_counter = 0
        self._hal_wco = self._hal_ovr = False
        self._last_error = 0
        self._boot_until = 0.0
        self._booted: Callable[[], None] | None = None
        self._cold = cold
        # classic grbl's HOMING_INIT_LOCK locks at power-up only (grblHAL decides after boot)
        self._base = "Alarm" if (not self.hal and self._init_lock and self.homing) else "Idle"
        self._gc_init()

    def _gc_init(self) -> None:
        """The G-code parser's state after power-up or a reset."""
        self._motion = 0
        self._coord = 0
        self._absolute = True
        self._feed = 0.0  # mm/min
        self._spindle = 0.0
        self._tool = 0
        self._gc_pos: Vec = self._mpos  # the end of the last planned move, machine coordinates
        if not self.hal:
            self._g92 = [0.0, 0.0, 0.0]  # grblHAL keeps G92 offsets across a reset

    def _boot(self, now: float, seconds: float) -> None:
        self._boot_until = now + seconds
        self._booted = self._after_boot

    def _booting(self, now: float) -> bool:
        """Whether it still boots at ``now``; prints the banner once it is done."""
        if self._booted is None:
            return False
        if now < self._boot_until:
            return True
        done, self._booted = self._booted, None
        done()
        return False

    def _after_boot(self) -> None:
        if self._stale_ok:
            self._stale_ok = False
            self._send("ok")
        self._send("")
        self._send(BANNERS[self.flavor])
        if not self.hal:
            if int(self.settings[21]) & 1 and self._pins:  # CHECK_LIMITS_AT_INIT
                self._base = "Alarm"
                self._send("[MSG:Check Limits]")
            if self._base == "Alarm":
                self._send(UNLOCK_MSG)
        elif self._homing_required():
            self._raise_alarm(11)
            self._send("[MSG:Homing cycle required]")
        elif self._base == "Alarm":
            self._send(UNLOCK_MSG)
        self._cold = False

    def _homing_required(self) -> bool:
        """grblHAL's ``limits_homing_required``: homing on, init lock on, not all homed."""
        flags = int(self.settings[22])
        return bool(self.hal and flags & 1 and flags & 4 and (self._cold or not flags & 64)
                    and not all(self._homed[i] for i in HOMED_AXES))

    def _home_position(self, i: int) -> float:
        """Machine position where homing ends on axis ``i``."""
        s = self.settings
        if int(s[23]) >> i & 1:
            return -s[130 + i] + s[27]
        return -s[27]

    def _wco(self) -> Vec:
        c = self._coords[self._coord]
        return (c[0] + self._g92[0], c[1] + self._g92[1], c[2] + self._g92[2])

    def _tick(self, now: float) -> None:
        """Everything time moves on: boot, timers, motion, homing, the line being executed."""
        self._booting(now)
        for timer in sorted(self._timers, key=lambda t: t[0]):
            if timer[0] <= now and timer in self._timers:
                self._timers.remove(timer)
                if timer[1] == self._epoch:
                    timer[2](timer[0])
        self._advance(now)
        if self._homing is not None and now >= self._homing.end:
            self._homing_done(self._homing.end)
        self._run_job(now)
        self._process_lines(now)

    def _later(self, when: float, fn: Callable[[float], None]) -> None:
        self._timers.append((when, self._epoch, fn))

    # -- motion -------------------------------------------------------------------------------
    def _caps(self, a: Vec, b: Vec, feed_mm_s: float | None) -> tuple[float, float]:
        """Speed and acceleration of a block from ``a`` to ``b``: the feed (None: rapid) capped
        silently at the axes' max rates, as grbl's planner does."""
        s = self.settings
        rapid = axis_limited([s[110] / 60.0, s[111] / 60.0, s[112] / 60.0], a, b)
        accel = axis_limited([s[120], s[121], s[122]], a, b)
        speed = rapid if feed_mm_s is None else min(feed_mm_s, rapid)
        return speed, accel

    def _steps(self, p: Sequence[float]) -> Vec:
        """``p`` on the step grid: grbl counts whole steps (``$100``-``$102`` per mm) and
        reports them divided by steps/mm."""
        s = self.settings
        return tuple(round(v * s[100 + i]) / s[100 + i] for i, v in enumerate(p))

    def _where(self, now: float) -> Vec:
        if self._homing is not None:
            phys = self._homing.where(now)
            return self._steps([p - o for p, o in zip(phys, self._homing.offset, strict=True)])
        if not self._queue:
            return self._mpos
        m = self._queue[0]
        if self._hold is not None:
            return self._steps(m.point(self._hold_travel(now)[0]))
        return self._steps(m.point(m.travelled(now - m.t0)[0]))

    def _hold_travel(self, now: float) -> tuple[float, float]:
        """Distance along the head block and speed while a feed hold decelerates it."""
        th, sh, vh = self._hold
        a = self._queue[0].accel
        dt = now - th
        if dt >= vh / a:
            return min(sh + vh * vh / (2 * a), self._queue[0].length), 0.0
        return min(sh + vh * dt - 0.5 * a * dt * dt, self._queue[0].length), vh - a * dt

    def _speed(self, now: float) -> float:
        if self._homing is not None or not self._queue:
            return 0.0
        if self._hold is not None:
            return self._hold_travel(now)[1]
        m = self._queue[0]
        return m.travelled(now - m.t0)[1]

    def _advance(self, now: float) -> None:
        """Retire the blocks that have finished by ``now``; the next starts where one ends."""
        if self._hold is not None:
            return
        while self._queue:
            m = self._queue[0]
            if now < m.t0 + m.duration:
                return
            self._mpos = m.end
            self._queue.popleft()
            self.motion_s.append(m.duration)
            if self._queue:
                self._queue[0].start = self._mpos
                self._queue[0].plan(m.t0 + m.duration)

    def _in_motion(self, now: float) -> bool:
        if not self._queue:
            return False
        # a hold scheduled to end "now" may leave a rounding speed of 1e-13 mm/s: stopped
        return self._hold is None or self._hold_travel(now)[1] > 1e-6

    def _freeze(self, now: float) -> None:
        """Everything stops where it is now (a reset, an alarm): the planner is flushed."""
        self._advance(now)
        self._mpos = self._where(now)
        if self._homing is not None:
            self._offset = self._homing.offset
            self._homing = None
        self._queue.clear()
        self._hold = None
        self._gc_pos = self._mpos

    def _state_name(self, now: float) -> str:
        if self._base in ("Alarm", "Home"):
            return self._base
        if self._hold is not None:
            return "Hold:1" if self._hold_travel(now)[1] > 0 else "Hold:0"
        return "Run" if self._queue else "Idle"

    def _feed_hold(self, now: float) -> None:
        self._advance(now)
        if self._queue and self._hold is None and self._base == "Idle":
            m = self._queue[0]
            s, v = m.travelled(now - m.t0)
            self._hold = (now, s, v)

    def _cycle_start(self, now: float) -> None:
        # grbl resumes only a completed hold; a ~ while still decelerating is dropped
        if self._hold is None or self._hold_travel(now)[1] > 0:
            return
        m = self._queue[0]
        m.start = m.point(self._hold_travel(now)[0])
        self._hold = None
        m.plan(now)

    # -- alarms and resets --------------------------------------------------------------------
    def _raise_alarm(self, code: int) -> None:
        # grblHAL prints an alarm only when its code changes
        if not (self.hal and self._alarm == code and self._base == "Alarm"):
            self._send(f"ALARM:{code}")
        self._alarm = code
        self._base = "Alarm"

    def _critical_alarm(self, code: int, now: float) -> None:
        """A hard (1) or soft (2) limit: the machine stops, Alarm, and only a reset helps."""
        if self._critical:
            return
        self._position_lost |= self._in_motion(now)
        self._freeze(now)
        if self._job is not None:
            self._job = deque([("stalled",)])  # the line it cut short never finishes
        self._raise_alarm(code)
        self._critical, self._critical_msg = True, False
        if self.hal:
            self._rx.clear()  # grblHAL flushes its input; classic grbl just stops reading it
            self._partial.clear()
        self._later(now + ALARM_PAUSE_S[self.flavor], self._critical_message)

    def _critical_message(self, now: float) -> None:
        self._send("[MSG:Reset to continue]")
        self._critical_msg = True

    def _ctrl_x(self, now: float) -> None:
        self._advance(now)
        if self._critical:
            # a Ctrl-X in the pause after ALARM:n is cleared before the lock ("Disable any
            # existing reset"): only one after [MSG:Reset to continue] resets
            if self._critical_msg:
                self._reset(now)
        elif self._homing is not None:
            self._reset(now, alarm=6)
        elif self._in_motion(now):
            self._reset(now, alarm=3)
        else:
            self._reset(now)

    def _reset(self, now: float, alarm: int | None = None) -> None:
        """Soft reset: flush planner and input, reinitialise, banner after ``reset_s``."""
        self._position_lost |= self._homing is not None or self._in_motion(now)
        self._freeze(now)
        if alarm is not None:
            self._raise_alarm(alarm)
        # the cut-short line returns to grbl's main loop, which still prints its status once
        # the alarm's pause is over, before the banner
        self._stale_ok = not self.hal and self._job is not None
        if self.hal and self._position_lost:
            self._homed = [False, False, False]
        self._position_lost = False
        self._job = None
        self._rx.clear()
        self._partial.clear()
        self._epoch += 1
        self._timers.clear()
        self._critical = self._critical_msg = False
        self._report_pending = False
        self._last_error = 0
        if self.hal:
            self._alarm = None  # sys.alarm is cleared; the state stays Alarm
            self._report_homed = self._hal_wco = self._report_acc = self._report_tlr = False
        else:
            self._wco_counter = self._ovr_counter = 0  # WCO in the first report after reset
        self._gc_init()
        # after ALARM:n the firmware sleeps, then resets: everything received meanwhile is lost
        self._boot(now, self.reset_s + (ALARM_PAUSE_S[self.flavor] if alarm is not None else 0))

    # -- homing -------------------------------------------------------------------------------
    def _start_homing(self, now: float) -> int | None:
        s = self.settings
        if not int(s[22]) & 1:
            return 5
        self._base = "Home"
        t = now
        if self.hal:
            for i in HOMED_AXES:
                self._homed[i] = False
            self._report(now)  # grblHAL's unsolicited report as the cycle starts
            t += HAL_HOMING_PAUSE_S
        self._homing = self._plan_homing(t)
        self._job = deque([("homing",)])
        return None

    def _plan_homing(self, t: float) -> _Homing:
        s = self.settings
        seek, locate, pull = s[25] / 60.0, s[24] / 60.0, s[27]
        debounce = s[26] / 1000.0
        here = tuple(m + o for m, o in zip(self._mpos, self._offset, strict=True))
        sign = [-1.0 if int(s[23]) >> i & 1 else 1.0 for i in range(3)]
        switch, backed = list(here), list(here)
        for i in HOMED_AXES:
            switch[i] = 0.0 if sign[i] > 0 else -s[130 + i]
            backed[i] = switch[i] - sign[i] * pull
        search = SEARCH_SCALE * max(s[130 + i] for i in HOMED_AXES)
        legs: list[tuple[float, float, float, Vec, Vec]] = []

        def leg(target: list[float], rate: float, pause: float) -> None:
            nonlocal t, here
            # each axis runs at ``rate`` (grbl scales the vector rate by sqrt(axes))
            dur = max(move_time(abs(target[i] - here[i]), rate, s[120 + i]) for i in HOMED_AXES)
            legs.append((t, t + dur, t + dur + pause, here, tuple(target)))
            t += dur + pause
            here = tuple(target)

        fails = self.homing_fails or any(abs(switch[i] - here[i]) > search for i in HOMED_AXES)
        fail_mpos = None
        if fails:
            # the switch never closes: grbl counts the whole search while the carriage stalls
            fail = list(self._mpos)
            for i in HOMED_AXES:
                fail[i] += sign[i] * search
            fail_mpos = tuple(fail)
            dur = move_time(search, seek, min(s[120 + i] for i in HOMED_AXES))
            legs.append((t, t + dur, t + dur, here, tuple(switch)))
        else:
            leg(switch, seek, debounce)
            leg(backed, seek, debounce)
            leg(switch, locate, debounce)
            leg(backed, seek, debounce + self.home_s)
        return _Homing(legs, self._offset, fails, fail_mpos)

    def _homing_done(self, now: float) -> None:
        h = self._homing
        if h.fails:
            phys = h.legs[-1][4]
            self._homing = None
            self._mpos = h.fail_mpos
            self._offset = tuple(p - m for p, m in zip(phys, self._mpos, strict=True))
            self._position_lost = True
            # limits_go_home calls mc_reset(): a real soft reset after the alarm
            self._reset(now, alarm=9)
            return
        home = list(h.legs[-1][4])
        for i in HOMED_AXES:
            home[i] = self._home_position(i)
        self._mpos = self._gc_pos = self._steps(home)
        self._homing = None
        if self._report_pending:  # the ? that waited through the cycle, still in state Home
            self._report_pending = False
            self._report(now)
        self._offset = tuple(p - m for p, m in zip(h.legs[-1][4], self._mpos, strict=True))
        self._slip = (0.0, 0.0)  # the switches say where the carriage is again
        self._pins.clear()  # pulled off the switches
        self._base, self._alarm = "Idle", None
        for i in HOMED_AXES:
            self._homed[i] = True
        self._home_pos = self._mpos
        if self.hal:
            self._report_homed = True
            self._send("[MSG:]")
        self._job = deque()  # done: its ok follows

    # -- the line being executed --------------------------------------------------------------
    def _run_job(self, now: float) -> None:
        """Steps of the current line, in order; its ``ok`` when the last one is done."""
        while self._job:
            step = self._job[0]
            kind = step[0]
            if kind == "sync":
                if self._queue:
                    return
            elif kind == "dwell":
                self._job[0] = ("until", now + step[1])
                continue
            elif kind == "until":
                if now < step[1]:
                    return
            elif kind == "move":
                if not self._enter_planner(step[1], now):
                    return
            elif kind == "call":
                step[1]()
            elif kind in ("homing", "stalled"):
                return
            self._job.popleft()
        if self._job is not None:
            self._job = None
            self._send("ok")

    def _enter_planner(self, m: _Move, now: float) -> bool:
        """Soft limit check (once), then wait for a free planner block."""
        if not m.checked:
            m.checked = True
            if self._beyond_limits(m.end):
                self._soft_limit(now)
                return False
        self._advance(now)
        if len(self._queue) >= self.planner_blocks - 1:
            return False
        # the planner's target in whole steps (lround(target * steps/mm)); the parser keeps mm
        m.end = self._steps(m.end)
        m.late = self._rng.uniform(0.0, self.late_s) if self.late_s > 0 else 0.0
        self.late_ends.append(m.late)
        self._queue.append(m)
        if len(self._queue) == 1:
            m.start = self._mpos
            m.plan(now)
        return True

    def _envelope(self, i: int) -> tuple[float, float] | None:
        s = self.settings
        travel, pull = s[130 + i], s[27]
        if not self.hal:
            return (-travel, 0.0)
        if not self._homed[i]:
            return None  # grblHAL checks homed axes only
        if int(s[21]) & 1:
            return (-travel + pull, -pull)
        return (-travel, 0.0)

    def _beyond_limits(self, target: Vec) -> bool:
        if not int(self.settings[20]) & 1:
            return False
        for i, v in enumerate(target):
            env = self._envelope(i)
            if env is not None and not env[0] - 1e-6 <= v <= env[1] + 1e-6:
                return True
        return False

    def _soft_limit(self, now: float) -> None:
        """A target beyond the envelope: a controlled stop (feed hold) first, then ALARM:2."""
        self._job = deque([("stalled",)])
        if self._in_motion(now):
            self._feed_hold(now)
            if self._hold is not None:
                stop = now + self._hold[2] / self._queue[0].accel
                self._later(stop, lambda t: self._critical_alarm(2, t))
                return
        self._critical_alarm(2, now)

    # -- lines --------------------------------------------------------------------------------
    def _blocked(self) -> bool:
        if self._booted is not None:
            return True
        if self._critical:
            return not self.hal  # grbl spins in its alarm loop; grblHAL still reads lines
        return self._job is not None

    def _process_lines(self, now: float) -> None:
        while self._rx and not self._blocked():
            self._line(self._rx.popleft(), now)
            self._run_job(now)

    def _filter(self, raw: str) -> str | None:
        """grbl's line pre-filter: no spaces or comments, upper case; None if too long."""
        out: list[str] = []
        paren = False
        for c in raw:
            if paren:
                paren = c != ")"
            elif c == "(":
                paren = True
            elif c == ";":
                break
            elif c > " ":
                if len(out) >= LINE_BUFFER[self.flavor] - 1:
                    return None
                out.append(c.upper())
        return "".join(out)

    def _reply(self, status: int | None) -> None:
        if status is None:
            return  # a job: its ok comes when it is done
        self._send("ok" if status == 0 else f"error:{status}")

    def _line(self, raw: str, now: float) -> None:
        text = self._filter(raw)
        if self.hal and self._critical:
            # grblHAL's alarm loop: empty lines ok, $ commands run, G-code error:9
            if text is None:
                self._reply(11)
            elif not text or text.startswith("$"):
                self._reply(self._system(text, now) if text else 0)
            else:
                self._reply(9)
            return
        if text is None:
            status = 11
        elif not text:
            status = 0
        elif text.startswith("$"):
            status = self._system(text, now)
        elif self._base == "Alarm":
            status = 9
        elif self.hal and self._last_error:
            status = self._last_error  # the sticky error: not executed
        else:
            status = self._gcode(text, now)
        if self.hal:
            self._last_error = status or 0  # a line under way (None) was accepted
        self._reply(status)

    # -- $ commands ---------------------------------------------------------------------------
    def _system(self, text: str, now: float) -> int | None:
        cmd = text[1:]
        if self.hal and self._critical and (cmd in ("X", "H", "C", "SLP")
                                            or cmd.startswith(("J=", "H"))):
            return 79
        if cmd == "":
            self._send(HELP[self.flavor])
            return 0
        if cmd == "$":
            if not self.hal and self._state_name(now).startswith(("Run", "Hold")):
                return 8  # grbl: too long to print during a cycle
            self._print_settings()
            return 0
        if cmd == "G":
            self._print_modes()
            self._report_homed = self.hal
            return 0
        if cmd == "X":
            return self._unlock()
        if cmd[:1] in ("$", "G", "X", "C"):
            return 3  # $C (check mode) is not simulated
        # the rest needs Idle or Alarm
        if self._base not in ("Idle", "Alarm") or self._queue:
            return 8
        if cmd == "#":
            self._print_offsets()
            return 0
        if cmd == "H":
            return self._start_homing(now)
        if cmd == "I":
            self._print_build_info()
            return 0
        if cmd == "TLR" and self.hal:
            # $TLR without a probe result clears the reference, and says so in the next report
            self._report_tlr = True
            return 0
        if cmd == "N":
            self._send("$N0=")
            self._send("$N1=")
            return 0
        m = re.fullmatch(r"(\d+)=(.*)", cmd)
        if m:
            return self._store_setting(int(m.group(1)), m.group(2))
        return 3

    def _unlock(self) -> int:
        if self.hal and self._homing_required():
            return 46
        if self._base == "Alarm":
            self._send("[MSG:Caution: Unlocked]")
            self._base, self._alarm = "Idle", None
        return 0

    def _store_setting(self, num: int, value_text: str) -> int:
        if not NUMBER.fullmatch(value_text):
            return 2
        value = float(value_text)
        if num not in self.settings:
            return 3
        if value < 0 and not (self.hal and num == 58):  # the parking target is negative
            return 4
        if not self._is_float(num):
            value = float(int(value))
        if num == 20 and value and not int(self.settings[22]) & 1:
            return 10  # soft limits need homing
        self.settings[num] = value
        if num == 22 and not int(value) & 1:
            self.settings[20] = 0.0
        if self.hal and num in (130, 131, 132):
            self._homed[num - 130] = False  # the travel changed: that axis is no longer homed
            self._report_homed = True
        return 0

    def _is_float(self, num: int) -> bool:
        if self.hal:
            return HAL_SETTINGS[num][0] is not None
        return num in FLOAT_SETTINGS

    def _print_settings(self) -> None:
        if self.hal:
            for n, (decimals, _) in HAL_SETTINGS.items():
                v = self.settings[n]
                # ftoa(): always a point, rounded half up, then the decimals
                self._send(f"${n}={int(v)}" if decimals is None else f"${n}={v:.{decimals}f}")
            return
        for n in SETTING_ORDER:
            v = self.settings[n]
            self._send(f"${n}={v:.3f}" if n in FLOAT_SETTINGS else f"${n}={int(v)}")

    def _print_modes(self) -> None:
        words = [f"G{self._motion}", f"G{54 + self._coord}"]
        if self.hal and any(self._g92):
            words.append("G92")  # report.c: right after the coordinate system
        words += ["G17", "G21", "G90" if self._absolute else "G91", "G94"]
        if self.hal:
            words += ["G40", "G49", "G98", "G50"]
        words += ["M5", "M9", f"T{self._tool}", f"F{self._feed:.0f}", f"S{self._spindle:.0f}"]
        self._send(f"[GC:{' '.join(words)}]")

    def _print_offsets(self) -> None:
        names = ["G54", "G55", "G56", "G57", "G58", "G59"]
        coords = [tuple(c) for c in self._coords]
        if self.hal:
            names += ["G59.1", "G59.2", "G59.3"]
            coords += [(0.0, 0.0, 0.0)] * 3
        for name, c in zip(names, coords, strict=True):
            self._send(f"[{name}:{_axes(c)}]")
        self._send(f"[G28:{_axes((0.0, 0.0, 0.0))}]")
        self._send(f"[G30:{_axes((0.0, 0.0, 0.0))}]")
        self._send(f"[G92:{_axes(self._g92)}]")
        if self.hal and self.homing:
            mask = sum(1 << i for i in range(3) if self._homed[i])
            self._send(f"[HOME:{_axes(self._home_pos)}:{mask}]")
        # grblHAL reports the tool length offset of every axis (TOOL_LENGTH_OFFSET_AXIS -1)
        self._send(f"[TLO:{_axes((0.0, 0.0, 0.0))}]" if self.hal else "[TLO:0.000]")
        self._send(f"[PRB:{_axes((0.0, 0.0, 0.0))}:0]")

    def _print_build_info(self) -> None:
        usable = self.planner_blocks - 1
        if self.hal:
            self._send("[VER:1.1f.20250101:]")
            self._send(f"[OPT:VN,{usable},{RX_BUFFER['grblhal']},3,0]")
            self._send("[AXS:3:XYZ]")
            self._send("[NEWOPT:ENUMS,RT+,HOME]")
            self._send("[FIRMWARE:grblHAL]")
            self._send("[DRIVER:edge.sim]")
        else:
            # L: the homing init lock is compiled out
            self._send("[VER:1.1h.20190825:]")
            self._send(f"[OPT:V{'' if self._init_lock else 'L'},{usable},{RX_BUFFER['grbl']}]")

    # -- status reports -----------------------------------------------------------------------
    def _query(self, now: float) -> None:
        if self._critical and not self.hal:
            return  # grbl's alarm loop never answers, and a reset clears the request
        if self._homing is not None:
            self._report_pending = True  # answered once, when the cycle ends
            return
        self._advance(now)
        self._report(now)

    def _report(self, now: float) -> None:
        s = self.settings
        mask = int(s[10])
        st = self._state_name(now)
        busy = st not in ("Idle", "Alarm")
        mpos, wco = self._where(now), self._wco()
        pos = mpos if mask & 1 else tuple(a - b for a, b in zip(mpos, wco, strict=True))
        parts = [st, f"{'MPos' if mask & 1 else 'WPos'}:{_axes(pos)}"]
        free_blocks = self.planner_blocks - 1 - len(self._queue)
        free_rx = RX_FREE_EMPTY[self.flavor] - self._rx_used()
        speed = f"FS:{self._speed(now) * 60.0:.0f},{self._spindle:.0f}"
        pins = "".join(a for a in AXES if a in self._pins)
        if not self.hal:
            if mask & 2:
                parts.append(f"Bf:{free_blocks},{free_rx}")
            parts.append(speed)
            if pins:
                parts.append(f"Pn:{pins}")
            # report.c: WCO when its counter runs out, Ov in the report after
            if self._wco_counter > 0:
                self._wco_counter -= 1
            else:
                self._wco_counter = WCO_REFRESH[busy] - 1
                if self._ovr_counter == 0:
                    self._ovr_counter = 1
                parts.append(f"WCO:{_axes(wco)}")
            if self._ovr_counter > 0:
                self._ovr_counter -= 1
            else:
                self._ovr_counter = OVR_REFRESH[busy] - 1
                parts.append("Ov:100,100,100")
        else:
            if mask & 2:
                parts.append(f"Bf:{free_blocks},{free_rx}")
            if mask & 8:
                parts.append(speed)
            if mask & 16 and pins:
                parts.append(f"Pn:{pins}")
            # grblHAL's report.c: a counter that runs out arms WCO for the *next* report
            if mask & 32:
                if self._wco_counter > 0 and not self._hal_wco:
                    self._wco_counter -= 1
                else:
                    self._wco_counter = WCO_REFRESH[busy] - 1
            else:
                self._hal_wco = False
            if mask & 64:
                if self._ovr_counter > 0 and not self._hal_ovr:
                    self._ovr_counter -= 1
                else:
                    self._hal_ovr = True
                    self._ovr_counter = OVR_REFRESH[busy] - 1
            else:
                self._hal_ovr = False
            if self._hal_wco:
                parts.append(f"WCO:{_axes(wco)}")
            if self._hal_ovr:
                parts.append("Ov:100,100,100")
            if self._report_acc:
                parts.append("A:")  # neither spindle nor coolant: the field is empty
            if self._report_homed and self.homing:
                parts.append(f"H:{int(all(self._homed[i] for i in HOMED_AXES))}")
            if self._report_tlr:
                parts.append("TLR:0")
            self._report_homed = self._hal_ovr = self._report_acc = self._report_tlr = False
            self._hal_wco = bool(mask & 32) and self._wco_counter == 0
        self._send(f"<{'|'.join(parts)}>")

    def _flag_wco_change(self) -> None:
        if self.hal:
            self._hal_wco = True
        else:
            self._wco_counter = 0

    # -- G-code -------------------------------------------------------------------------------
    def _gcode(self, text: str, now: float) -> int | None:
        """Parse and check a whole block as grbl does, then run it: an error leaves no trace."""
        words: list[tuple[str, float]] = []
        i = 0
        while i < len(text):
            letter = text[i]
            if not "A" <= letter <= "Z":
                return 1
            m = NUMBER.match(text, i + 1)
            if not m:
                return 2
            words.append((letter, float(m.group())))
            i = m.end()
        groups: dict[str, int] = {}
        values: dict[str, float] = {}
        g92_clear = False
        for letter, value in words:
            if letter == "G":
                code = int(value)
                mantissa = round(100 * (value - code))
                if code == 92 and mantissa == 10:
                    g92_clear, mantissa = True, 0
                if code not in G_GROUPS:
                    return 20
                if mantissa:
                    return 23
                group = G_GROUPS[code]
                if group in groups:
                    return 21
                groups[group] = code
            elif letter == "M":
                code = int(value)
                if code not in M_GROUPS or value != code:
                    return 20
                if M_GROUPS[code] in groups:
                    return 21
                groups[M_GROUPS[code]] = code
            elif letter in VALUE_LETTERS:
                if letter in values:
                    return 25
                if letter in "FNPST" and value < 0:
                    return 4
                values[letter] = value
            else:
                return 20
        nonmodal = groups.get("nonmodal")
        axes = {AXES.index(k): v for k, v in values.items() if k in AXES}
        if "motion" in groups and nonmodal in (10, 92):
            return 24  # two commands that both want the axis words
        if "N" in values and values["N"] > 10_000_000:
            return 27
        # checks
        feed = values.get("F", self._feed)
        if nonmodal == 4 and "P" not in values:
            return 28
        coord_p = None
        if nonmodal == 10:
            if "L" not in values or "P" not in values:
                return 28
            if values["L"] not in (2, 20):
                return 20
            coord_p = int(values["P"])
            if coord_p > 6:
                return 29
            if not axes:
                return 26
        if nonmodal == 92 and not g92_clear and not axes:
            return 26
        if "P" in values and nonmodal not in (4, 10):
            return 36
        if "L" in values and nonmodal != 10:
            return 36
        if any(k in values for k in "IJKR"):
            return 36
        motion = groups.get("motion", self._motion)
        moves = bool(axes) and nonmodal not in (10, 92)
        if moves and motion == 1 and feed <= 0:
            return 22
        # the block is valid: run it in grbl's order of execution
        steps: list[tuple] = []
        self._feed = feed
        self._spindle = values.get("S", self._spindle)
        self._tool = int(values.get("T", self._tool))
        if self.hal and ("spindle" in groups or "coolant" in groups):
            self._report_acc = True
        if nonmodal == 4:
            steps += [("sync",), ("dwell", values["P"])]
        if "coord" in groups and groups["coord"] - 54 != self._coord:
            self._coord = groups["coord"] - 54
            steps += [("sync",), ("call", self._flag_wco_change)]
        if "distance" in groups:
            self._absolute = groups["distance"] == 90
        if "motion" in groups:
            self._motion = groups["motion"]
        if nonmodal == 10:
            steps += [("sync",), ("call", self._g10_call(int(values["L"]), coord_p, axes))]
        if nonmodal == 92:
            steps += [("sync",), ("call", self._g92_call(g92_clear, axes))]
        if moves:
            wco = self._wco()
            target = list(self._gc_pos)
            for k, v in axes.items():
                if nonmodal == 53:
                    target[k] = v  # machine coordinates, absolute whatever G90/G91 says
                elif self._absolute:
                    target[k] = v + wco[k]
                else:
                    target[k] += v
            end: Vec = tuple(target)
            if end != self._gc_pos:
                speed, accel = self._caps(self._gc_pos, end,
                                          None if motion == 0 else feed / 60.0)
                steps.append(("move", _Move(self._gc_pos, end, speed, accel)))
                self._gc_pos = end
        if not steps:
            return 0
        self._job = deque(steps)
        return None

    def _g10_call(self, l_word: int, p: int, axes: dict[int, float]) -> Callable[[], None]:
        index = self._coord if p == 0 else p - 1

        def run() -> None:
            for k, v in axes.items():
                # L2: the offset itself; L20: the offset that makes here read ``v``
                self._coords[index][k] = v if l_word == 2 else self._gc_pos[k] - self._g92[k] - v
            if index == self._coord:
                self._flag_wco_change()
        return run

    def _g92_call(self, clear: bool, axes: dict[int, float]) -> Callable[[], None]:
        def run() -> None:
            if clear:
                self._g92 = [0.0, 0.0, 0.0]
            else:
                c = self._coords[self._coord]
                for k, v in axes.items():
                    self._g92[k] = self._gc_pos[k] - c[k] - v
            self._flag_wco_change()
        return run


def _num(v: float) -> str:
    r = round(v, 3)
    return f"{0.0 if r == 0 else r:.3f}"  # no "-0.000"


def _axes(values: Sequence[float]) -> str:
    return ",".join(_num(v) for v in values)
