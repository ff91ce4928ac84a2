"""The ring light's 6 LED groups and the camera trigger, as gpiozero output devices.

Pins are the 40-pin header's physical numbers from the head file (``BOARD<n>`` in gpiozero), so
the same code drives a Jetson (through :class:`edge.hardware.jetson.JetsonFactory`) and gpiozero's
``MockFactory`` in tests and the simulated head.

Safety rules, enforced here and nowhere else:

* **interlock**: at most one group is lit. Lighting a group while another is lit darkens all
  and raises :class:`LedFault` (a sequencing bug must not expose a frame under two directions);
* **watchdog**: a group lit longer than ``max_on_ms`` is darkened by a timer thread, and the
  fault is kept: every later call raises it, so the inspection ends in ERROR. Each trip is
  counted (``trip_count``, ``trip_times()``); only a watchdog trip can be cleared
  (:meth:`RingLight.rearm`), by whoever has checked the ring since (the head's self-test,
  :meth:`edge.head.Head.self_test`), never an interlock fault, which is a sequencing bug;
* **dark on every exit path**: ``close()``, the context manager, an ``atexit`` hook and
  :func:`darken_on_signals` (SIGTERM, SIGINT) all switch every group off.
"""

from __future__ import annotations

import atexit
import signal
import threading
import time
import weakref
from collections import deque

from gpiozero import DigitalOutputDevice

from edge.config import Illumination
from edge.hardware import HardwareError
from edge.hardware.light import Light

TRIGGER_PULSE_S = 0.0002
# trip times kept for the head's window count; the head file's watchdog_max_trips is at most this
TRIPS_KEPT = 100


class LedFault(HardwareError):
    """The ring light refused or stopped lighting; the LEDs are dark."""


class RingLight(Light):
    def __init__(self, illumination: Illumination, pin_factory=None):
        self.max_on_s = illumination.max_on_ms / 1000.0
        self.angles = illumination.angles_deg
        self._lock = threading.RLock()
        self._lit: int | None = None
        self._lit_at = 0.0
        self._timer: threading.Timer | None = None
        self.fault: str | None = None
        self._tripped = False  # the fault is the watchdog's (clearable), not an interlock's
        self._trips: deque[float] = deque(maxlen=TRIPS_KEPT)  # time.monotonic() of each trip
        self.trip_count = 0
        self.groups: list[DigitalOutputDevice] = []
        try:
            for s in illumination.states:
                self.groups.append(DigitalOutputDevice(f"BOARD{s.pin}", initial_value=False,
                                                       pin_factory=pin_factory))
            self.trigger = DigitalOutputDevice(f"BOARD{illumination.trigger_pin}",
                                               initial_value=False, pin_factory=pin_factory)
        except Exception:
            self._close_devices()
            raise
        ref = weakref.ref(self)
        atexit.register(lambda: (r := ref()) is not None and r.all_dark())

    # -- state -----------------------------------------------------------------------------
    @property
    def lit(self) -> int | None:
        """The group that is on, or None."""
        return self._lit

    @property
    def tripped(self) -> bool:
        """The ring is stopped by a watchdog trip (not by an interlock fault)."""
        return self._tripped

    def trip_times(self) -> list[float]:
        """``time.monotonic()`` of the last watchdog trips, oldest first."""
        with self._lock:
            return list(self._trips)

    def check(self) -> None:
        if self.fault is not None:
            raise LedFault(self.fault)

    def rearm(self) -> None:
        """Clear a watchdog trip so the ring lights again; every group dark first. The caller
        decides that the cause is gone (the head self-tests the ring right after). An interlock
        fault is refused: it means the sequencing is wrong, which a retry does not fix."""
        with self._lock:
            if self.fault is None:
                return
            if not self._tripped:
                raise LedFault(f"{self.fault}; only a watchdog trip is cleared without a restart")
            self.all_dark()
            self.fault, self._tripped = None, False

    # -- switching -------------------------------------------------------------------------
    def on(self, state: int) -> None:
        with self._lock:
            self.check()
            if not 0 <= state < len(self.groups):
                raise LedFault(f"no LED group {state}; the ring has {len(self.groups)}")
            others = [k for k, g in enumerate(self.groups) if g.value and k != state]
            if others or (self._lit is not None and self._lit != state):
                lit = others or [self._lit]
                self.all_dark()
                self.fault = (f"interlock: LED group {lit[0]} was still lit when group {state} "
                              "was asked for; all groups switched off")
                raise LedFault(self.fault)
            self.groups[state].on()
            self._lit, self._lit_at = state, time.monotonic()
            self._timer = threading.Timer(self.max_on_s, self._expire, (state, self._lit_at))
            self._timer.daemon = True
            self._timer.start()

    def off(self) -> None:
        with self._lock:
            self._cancel()
            for g in self.groups:
                g.off()
            self._lit = None
            self.check()

    def pulse_trigger(self, width_s: float = TRIGGER_PULSE_S) -> None:
        with self._lock:
            self.check()
            self.trigger.on()
            try:
                time.sleep(width_s)
            finally:
                self.trigger.off()

    def all_dark(self) -> None:
        """Every group and the trigger off, now; safe from any thread and after close."""
        with self._lock:
            self._cancel()
            for d in (*self.groups, getattr(self, "trigger", None)):
                if d is not None and not d.closed:
                    d.off()
            self._lit = None

    def _cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expire(self, state: int, since: float) -> None:
        with self._lock:
            if self._lit == state and self._lit_at == since:
                self.all_dark()
                self.fault = (f"watchdog: LED group {state} was lit for more than its maximum "
                              f"on-time of {self.max_on_s * 1000:g} ms and was switched off")
                self._tripped = True
                self._trips.append(time.monotonic())
                self.trip_count += 1

    # -- lifetime --------------------------------------------------------------------------
    def _close_devices(self) -> None:
        for d in (*self.groups, getattr(self, "trigger", None)):
            if d is not None and not d.closed:
                d.off()
                d.close()

    def close(self) -> None:
        with self._lock:
            self._cancel()
            self._close_devices()
            self._lit = None

    def __enter__(self) -> RingLight:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def darken_on_signals(ring: RingLight, signals=(signal.SIGTERM, signal.SIGINT)) -> None:
    """On SIGTERM or SIGINT: all LEDs dark first, then the usual exit (SystemExit 143 or
    KeyboardInterrupt), so the ``finally`` blocks of the inspection still run."""

    def handler(signum, frame):
        ring.all_dark()
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise SystemExit(128 + signum)

    for s in signals:
        signal.signal(s, handler)
