"""The discrete I/O link: the head as a smart camera on a PLC's digital inputs and outputs
(header pins through gpiozero), over the inspection service. ``docs/io_link.md`` has the
wiring and the timing diagram.

One cycle: the PLC's trigger edge (debounced) starts an inspection and raises BUSY; when the
verdict is journaled exactly one of PASS, FAIL, ERROR is set, and after ``settle_ms`` the
STROBE rises for ``strobe_ms`` and BUSY drops at the same moment; the result outputs then stay
until the PLC acknowledges (an edge to active on ACK, after the strobe rose) or, ``hold_ms``
after the strobe fell, they drop by themselves. Only then is the next trigger taken.

Choices:

* **The sample id is made here**, since discrete I/O carries none: ``NAME-NNNNNN-TIME``, the
  head's name (characters outside A-Z a-z 0-9 _ . - replaced by ``_``, at most 36 of them),
  the journal's next verdict number (six digits or more; it outlives restarts, so it is also
  the verdict number that sample gets) and the UTC time of the trigger
  (``20250102T030405Z``). The journal, the review store and the log find a sample by it.
* **Inputs are sampled, not interrupt-driven**: the Jetson pin factory has no edge events and
  gpiozero's ``bounce_time`` is a lock-out after the first edge (a glitch would still
  trigger). The loop reads the inputs every ``POLL_S`` and a level counts once it has stayed
  ``debounce_ms``; a trigger is an edge of that debounced level in the configured direction.
  Inputs are read as plain levels (no internal pull: the PLC output drives both levels or the
  wiring has its own resistor, as with every PLC output card).
* **Fail-safe outputs.** A result is only valid on the strobe; a PLC reads PASS only as PASS
  on, FAIL and ERROR off, at the strobe's rise. On shutdown every output goes off (busy too:
  a head that is gone answers no trigger, which the PLC sees as BUSY never rising). On an
  exception in this link's own loop the outputs go to ERROR on, the rest off, with no strobe;
  the link then takes no trigger until it is stopped and the heartbeat says ``failed``. A
  dead head never shows PASS with a strobe.
* **Delivery.** Without ACK wired, a verdict whose hold time ran out counts as delivered and
  is acknowledged in the journal (the strobe and the hold are all the PLC is promised). With
  ACK wired and no acknowledge within ``hold_ms`` (when set), the outputs drop but the
  verdict stays unacknowledged in the journal (and in the heartbeat's count), so a PLC that
  does not acknowledge is visible. Unacknowledged verdicts from before a restart are not
  shown again: without a sample id on the wire, an old result would read as the answer to
  the next trigger. A restart mid-inspection drops BUSY without a strobe; the PLC triggers
  again and the glass is inspected from the start under a new id.
* **Triggers while not idle** (busy, showing a result) are ignored and counted: the PLC waits
  for the outputs to drop (or acknowledges) before the next part.
"""

from __future__ import annotations

import enum
import logging
import re
import threading
import time
from datetime import datetime, timezone

from gpiozero import DigitalOutputDevice, InputDevice

from edge.verdict import Status, error
from firmware_bridge.inspection import InspectionService, Job
from firmware_bridge.journal import Entry, Journal

log = logging.getLogger("glass-inspect.bridge")

POLL_S = 0.0005  # input sampling period; a 1 ms PLC output is seen twice
NAME_CHARS = 36  # 36 + "-" + 6 digits + "-" + 16 time characters = 60 of the 64 allowed
_NOT_ID = re.compile(r"[^A-Za-z0-9_.-]")


class Phase(enum.Enum):
    IDLE = "idle"  # waiting for a trigger; all outputs off
    BUSY = "busy"  # inspecting
    SETTLE = "settle"  # result output set, strobe not yet
    STROBE = "strobe"
    HOLD = "hold"  # result shown, waiting for ACK or the hold time


def sample_prefix(name: str) -> str:
    """The head's name as the first part of a sample id."""
    return (_NOT_ID.sub("_", name).strip("_.-") or "head")[:NAME_CHARS]


class Debounced:
    """A sampled input's level, changed only after the raw level held ``debounce_s``."""

    def __init__(self, level: bool, debounce_s: float, now: float) -> None:
        self.level = self._raw = level
        self.debounce_s = debounce_s
        self._since = now

    def update(self, raw: bool, now: float) -> bool:
        """Feed one sample; True when the debounced level just changed."""
        if raw != self._raw:
            self._raw, self._since = raw, now
        if raw != self.level and now - self._since >= self.debounce_s:
            self.level = raw
            return True
        return False


class IoLink:
    """The discrete I/O server: pins, the handshake's state machine and the service, in the
    one thread of :meth:`run`."""

    def __init__(self, settings, inspector, journal: Journal, *, pin_factory, name: str = "head",
                 heartbeat=None, abort_grace_s: float = 2.0, inspect_timeout_s: float = 300.0,
                 poll_s: float = POLL_S) -> None:
        self.settings = s = settings
        self.journal = journal
        self.heartbeat = heartbeat
        self.poll_s = poll_s
        self.prefix = sample_prefix(name)
        self.service = InspectionService(inspector, journal, abort_grace_s=abort_grace_s,
                                         inspect_timeout_s=inspect_timeout_s)
        self.service.on_verdict = self._verdict_ready
        self.phase = Phase.IDLE
        self.shown: Entry | None = None  # the verdict on the outputs
        self.failed: str | None = None  # why the loop stopped taking triggers
        self.triggers = self.ignored_triggers = 0
        self.ready = threading.Event()  # set once the pins are claimed and the loop runs
        self.plc = None  # the simulated PLC on mock pins, stopped with the link
        self._deadline = 0.0
        self._ack_seen = False
        self.outputs: dict[str, DigitalOutputDevice] = {}
        self.inputs: dict[str, InputDevice] = {}
        pins = s.io_pins
        try:
            for sig in ("busy", "pass", "fail", "error", "strobe"):
                self.outputs[sig] = DigitalOutputDevice(
                    f"BOARD{pins[sig]}", active_high=s.active_high, initial_value=False,
                    pin_factory=pin_factory)
            for sig in ("trigger", "ack"):
                if sig in pins:
                    self.inputs[sig] = InputDevice(f"BOARD{pins[sig]}", pull_up=None,
                                                   active_state=True, pin_factory=pin_factory)
        except BaseException:
            self.close()
            raise
        self._results = {Status.PASS.value: self.outputs["pass"],
                         Status.FAIL.value: self.outputs["fail"],
                         Status.ERROR.value: self.outputs["error"]}

    def describe(self) -> str:
        s = self.settings
        pins = ", ".join(f"{k} {v}" for k, v in s.io_pins.items())
        end = (f"ACK or {s.hold_ms:g} ms hold" if "ack" in self.inputs and s.hold_ms else
               "ACK" if "ack" in self.inputs else f"{s.hold_ms:g} ms hold")
        return (f"discrete I/O on header pins ({pins}), {s.trigger_edge} trigger, "
                f"{s.debounce_ms:g} ms debounce, {s.strobe_ms:g} ms strobe after "
                f"{s.settle_ms:g} ms settle, until {end}, "
                f"active {'high' if s.active_high else 'low'}")

    # -- the inputs ----------------------------------------------------------------------------

    def _level(self, sig: str) -> bool:
        return bool(self.inputs[sig].value)

    def _ack_active(self, level: bool) -> bool:
        return level == self.settings.active_high

    # -- the outputs ---------------------------------------------------------------------------

    def _all_off(self) -> None:
        for d in self.outputs.values():
            if not d.closed:
                d.off()

    def _fail_safe(self) -> None:
        """ERROR on, everything else off; never raises (it runs on the way out of errors)."""
        for sig, d in self.outputs.items():
            try:
                if not d.closed:
                    d.value = sig == "error"
            except Exception:  # noqa: BLE001 - one broken pin must not keep the others
                log.exception("io link: cannot set the %s output", sig)

    # -- the cycle -----------------------------------------------------------------------------

    def sample_id(self) -> str:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        return f"{self.prefix}-{self.journal.next_verdict_id():06d}-{stamp}"

    def _triggered(self, now: float) -> None:
        self.triggers += 1
        if self.phase is not Phase.IDLE or self.failed is not None:
            self.ignored_triggers += 1
            log.warning("io link: trigger ignored (%s)", self.failed or
                        f"{self.phase.value}: wait for the outputs to drop")
            return
        sid = self.sample_id()
        self.outputs["busy"].on()
        self.phase = Phase.BUSY
        busy = self.service.busy_job()
        if busy is None:
            self.service.start(sid)
            return
        # an abandoned inspection still runs: this trigger gets its ERROR at once, journaled
        self.service.finish(Job(sid), error(sid, f"the inspection of {busy.sample_id} did not "
                                                 "stop; the head refuses samples until it does"))

    def _verdict_ready(self, e: Entry) -> None:
        if self.phase is not Phase.BUSY:  # a late verdict with no trigger waiting for it
            log.warning("sample %s: verdict %d came with no trigger waiting; not shown",
                        e.sample_id, e.verdict_id)
            return
        self.shown = e
        out = self._results.get(e.status, self.outputs["error"])
        out.on()
        self.phase, self._deadline = Phase.SETTLE, time.monotonic() + self.settings.settle_ms / 1e3

    def _drop(self, why: str) -> None:
        self._all_off()
        e, self.shown = self.shown, None
        self.phase = Phase.IDLE
        if e is not None:
            log.debug("sample %s: outputs dropped (%s)", e.sample_id, why)

    def _step(self, now: float) -> None:
        s, phase = self.settings, self.phase
        if phase is Phase.SETTLE and now >= self._deadline:
            self.outputs["strobe"].on()
            self.outputs["busy"].off()
            self._ack_seen = False
            self.phase, self._deadline = Phase.STROBE, now + s.strobe_ms / 1e3
        elif phase is Phase.STROBE and now >= self._deadline:
            self.outputs["strobe"].off()
            self.phase, self._deadline = Phase.HOLD, now + s.hold_ms / 1e3
        # an acknowledge during the strobe is kept until it ends: the strobe has its width
        if self.phase is Phase.HOLD and self._ack_seen:
            self.service.acknowledge(self.shown.verdict_id, self.shown.sample_id)
            self._drop("acknowledged")
        elif self.phase is Phase.HOLD and s.hold_ms and now >= self._deadline:
            e = self.shown
            if "ack" in self.inputs:
                log.warning("sample %s: verdict %d not acknowledged within %g ms; outputs "
                            "dropped, the verdict stays unacknowledged in the journal",
                            e.sample_id, e.verdict_id, s.hold_ms)
            else:  # the hold is the delivery this wiring promises
                self.service.acknowledge(e.verdict_id, e.sample_id)
            self._drop("hold time over")

    # -- the loop ------------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Serve until ``stop`` is set."""
        s = self.settings
        pending = self.journal.unacknowledged()
        log.info("verdict journal %s: %d verdict(s), %d unacknowledged from before (not shown "
                 "again: discrete I/O carries no sample id)", self.journal.path,
                 len(self.journal.by_id), len(pending))
        now = time.monotonic()
        trig = Debounced(self._level("trigger"), s.debounce_ms / 1e3, now)
        ack = Debounced(self._level("ack"), s.debounce_ms / 1e3, now) if "ack" in self.inputs \
            else None
        rising = s.trigger_edge == "rising"
        self.ready.set()
        try:
            while not stop.is_set():
                if self.failed is None:
                    try:
                        self._turn(trig, ack, rising)
                    except Exception as exc:
                        log.exception("io link: internal error; ERROR on the outputs, no more "
                                      "triggers taken until the head is restarted")
                        self._fail_safe()
                        self.failed = f"internal error: {type(exc).__name__}: {exc}"
                else:
                    stop.wait(0.1)
                if self.heartbeat is not None and self.heartbeat.due():
                    if self.failed:
                        self.heartbeat.write("failed", doing=self.failed)
                    else:
                        self.heartbeat.write("serving", link_open=True,
                                             unacknowledged=len(self.journal.unacknowledged()))
        finally:
            self.shutdown()

    def _turn(self, trig: Debounced, ack: Debounced | None, rising: bool) -> None:
        self.service.wait(self.poll_s)
        self.service.poll()  # may show a verdict (SETTLE)
        now = time.monotonic()
        if trig.update(self._level("trigger"), now) and trig.level == rising:
            self._triggered(now)
        if ack is not None and ack.update(self._level("ack"), now) and \
                self._ack_active(ack.level) and self.phase in (Phase.STROBE, Phase.HOLD):
            self._ack_seen = True
        self._step(now)

    def abort_now(self, reason: str) -> None:
        self.service.abort_now(reason)

    def shutdown(self) -> None:
        """Every output off and released; the running inspection abandoned; journal closed."""
        try:
            self.close()
        finally:
            self.service.shutdown()

    def close(self) -> None:
        if self.plc is not None:
            self.plc.stop()
        for d in (*self.outputs.values(), *self.inputs.values()):
            try:
                if not d.closed:
                    if isinstance(d, DigitalOutputDevice):
                        d.off()
                    d.close()
            except Exception:  # noqa: BLE001 - one broken pin must not keep the others
                log.exception("io link: cannot release %s", d)


def head_pins(inspector):
    """The pin factory of the head behind ``inspector`` (the one its ring light was built
    on), or None when the inspector has no head (the scripted stand-in)."""
    asm = getattr(inspector, "assembly", None)
    ring = getattr(asm, "ring", None)
    trigger = getattr(ring, "trigger", None)
    return getattr(trigger, "pin_factory", None)


def open_link(settings, inspector, journal: Journal, *, heartbeat=None, repeat_s: float = 1.0,
              abort_grace_s: float = 2.0, inspect_timeout_s: float = 300.0,
              reopen_s: float = 0.5, pin_factory=None, sim_plc: bool | None = None) -> IoLink:
    """The io link of ``settings`` (``[verdict_link]``) on the head's own pins. ``repeat_s``
    and ``reopen_s`` are the serial links': the outputs hold the verdict, there is no port.

    On mock pins (the simulated head, or the scripted inspector, which has no head and gets a
    ``MockFactory`` of its own) a simulated PLC (:mod:`firmware_bridge.io_plc_sim`) drives the
    trigger and acknowledges, cycle after cycle, unless ``sim_plc`` is False."""
    from gpiozero.pins.mock import MockFactory

    factory = pin_factory or head_pins(inspector)
    if factory is None:
        log.warning("the %s inspector has no head: the io link runs on mock pins",
                    type(inspector).__name__)
        factory = MockFactory()
    asm = getattr(inspector, "assembly", None)
    name = asm.cfg.name if asm is not None else "head"
    link = IoLink(settings, inspector, journal, pin_factory=factory, name=name,
                  heartbeat=heartbeat, abort_grace_s=abort_grace_s,
                  inspect_timeout_s=inspect_timeout_s)
    if sim_plc if sim_plc is not None else isinstance(factory, MockFactory):
        from firmware_bridge.io_plc_sim import SimPlc

        link.plc = plc = SimPlc(factory, settings)
        plc.run_in_background(link.ready)
        print("simulated PLC on the mock pins: one trigger every "
              f"{plc.pause_s:g} s after the last cycle", flush=True)
    return link
