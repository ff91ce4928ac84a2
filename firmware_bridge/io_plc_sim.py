"""A simulated PLC on the io link's mock pins: what the simulated head, the tests and the
benchmarks put on the other end of the wires.

It does what a PLC program for a smart camera does: with the head idle it drives the trigger
edge (optionally bouncing first, as a relay contact does), holds it until BUSY rises, reads
PASS, FAIL and ERROR at the strobe's rise, and then acknowledges (ACK to active until the
outputs drop) or, without ACK or when told not to, waits for the hold time to drop them.

Electrical levels follow the head file: the trigger's idle level is the opposite of its
``trigger_edge``; ACK and the outputs are active high unless ``active_high = false``.
Times of the head's edges are taken from gpiozero's own record of each mock pin's changes
(``MockPin.states``: the time since the previous change), not from this thread's polling, so
a strobe's width is what the head drove, to the microsecond.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

log = logging.getLogger("glass-inspect.plc-sim")

RESULTS = ("pass", "fail", "error")
OUTPUTS = ("busy", "strobe", *RESULTS)


class PlcTimeout(Exception):
    """The head did not answer as a PLC expects within the cycle's timeout."""


@dataclass
class Cycle:
    """One trigger as the PLC saw it. Times in ms from the trigger's final edge."""

    status: str | None = None  # PASS, FAIL or ERROR read at the strobe's rise
    at_strobe: dict[str, bool] = field(default_factory=dict)  # every result output then
    busy_ms: float | None = None
    result_ms: float | None = None  # the result output rose
    strobe_ms: float | None = None  # the strobe rose (busy fell)
    strobe_width_ms: float | None = None
    drop_ms: float | None = None  # the result output fell
    acked: bool = False
    t_trigger: float = 0.0  # time.monotonic() of the trigger's final edge

    @property
    def settle_ms(self) -> float | None:
        if self.strobe_ms is None or self.result_ms is None:
            return None
        return self.strobe_ms - self.result_ms

    @property
    def valid(self) -> bool:
        """Exactly one result output was on at the strobe."""
        return sum(self.at_strobe.values()) == 1


def edges(pin) -> list[tuple[float, bool]]:
    """(time.monotonic(), level) of each recorded change of a mock pin, oldest first."""
    states, t = list(pin.states), pin._last_change
    out = []
    for st in reversed(states[1:]):  # the first entry is the state when the record began
        out.append((t, bool(st.state)))
        t -= st.timestamp
    return out[::-1]


class SimPlc:
    def __init__(self, factory, settings, *, ack: bool = True, pause_s: float = 1.0,
                 poll_s: float = 0.0002) -> None:
        self.settings = settings
        self.pins = {sig: factory.pin(f"BOARD{n}") for sig, n in settings.io_pins.items()}
        self.ack = ack and "ack" in self.pins
        self.pause_s = pause_s
        self.poll_s = poll_s
        self.cycles: list[Cycle] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._active = settings.active_high
        self._trigger_active = settings.trigger_edge == "rising"
        self._drive("trigger", not self._trigger_active)
        if "ack" in self.pins:
            self._drive("ack", not self._active)

    # -- the wires -----------------------------------------------------------------------------

    def _drive(self, sig: str, level: bool) -> None:
        pin = self.pins[sig]
        pin.drive_high() if level else pin.drive_low()

    def on(self, sig: str) -> bool:
        """An output of the head is active."""
        return bool(self.pins[sig].state) == self._active

    def _wait(self, ok, what: str, deadline: float) -> None:
        while not ok():
            if self._stop.is_set():
                raise PlcTimeout("stopped")
            if time.monotonic() > deadline:
                raise PlcTimeout(f"the head did not {what}")
            time.sleep(self.poll_s)

    def _idle(self) -> bool:
        return not any(self.on(s) for s in OUTPUTS)

    # -- one cycle -----------------------------------------------------------------------------

    def cycle(self, timeout_s: float = 10.0, *, ack: bool | None = None, bounces: int = 0,
              bounce_s: float = 0.0003) -> Cycle:
        """Trigger once and follow the handshake to the end. ``bounces``: short pulses of
        ``bounce_s`` before the trigger settles (shorter than the head's debounce)."""
        ack = self.ack if ack is None else ack
        deadline = time.monotonic() + timeout_s
        self._wait(self._idle, "drop its outputs before the trigger", deadline)
        c = Cycle()
        for _ in range(bounces):
            self._drive("trigger", self._trigger_active)
            time.sleep(bounce_s)
            self._drive("trigger", not self._trigger_active)
            time.sleep(bounce_s)
        c.t_trigger = time.monotonic()
        self._drive("trigger", self._trigger_active)
        try:
            self._wait(lambda: self.on("busy") or self.on("strobe"), "raise BUSY", deadline)
        finally:
            self._drive("trigger", not self._trigger_active)
        self._wait(lambda: self.on("strobe"), "raise the strobe", deadline)
        c.at_strobe = {s: self.on(s) for s in RESULTS}
        on = [s for s, v in c.at_strobe.items() if v]
        c.status = on[0].upper() if len(on) == 1 else None
        if ack:
            self._drive("ack", self._active)
            c.acked = True
        try:
            self._wait(self._idle, "drop its outputs", deadline)
        finally:
            if ack:
                self._drive("ack", not self._active)
        self._timing(c)
        self.cycles.append(c)
        return c

    def _timing(self, c: Cycle) -> None:
        """The head's edges after the trigger, from the pins' own records."""
        def first(sig: str, level: bool) -> float | None:
            want = level == self._active
            t = next((t for t, v in edges(self.pins[sig]) if v == want and t >= c.t_trigger),
                     None)
            return None if t is None else (t - c.t_trigger) * 1000.0

        c.busy_ms = first("busy", True)
        c.strobe_ms = first("strobe", True)
        fall = first("strobe", False)
        c.strobe_width_ms = None if fall is None or c.strobe_ms is None else fall - c.strobe_ms
        if c.status is not None:
            c.result_ms = first(c.status.lower(), True)
            c.drop_ms = first(c.status.lower(), False)

    # -- cycle after cycle ---------------------------------------------------------------------

    def run_in_background(self, ready: threading.Event | None = None) -> None:
        """Cycle until :meth:`stop`, ``pause_s`` between cycles (the simulated head's line)."""

        def loop() -> None:
            if ready is not None:
                ready.wait()
            while not self._stop.wait(self.pause_s):
                try:
                    c = self.cycle()
                except PlcTimeout as exc:
                    if not self._stop.is_set():
                        log.warning("simulated PLC: %s", exc)
                    continue
                except Exception:  # noqa: BLE001 - the pins were closed under it
                    if not self._stop.is_set():
                        log.exception("simulated PLC stopped")
                    return
                log.info("simulated PLC: %s at the strobe (%.1f ms after the trigger), "
                         "%s", c.status or f"no single result {c.at_strobe}", c.strobe_ms,
                         "acknowledged" if c.acked else "held")

        self._thread = threading.Thread(target=loop, name="plc-sim", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(2)
