"""Inject every fault the head must survive into ``glass-inspect serve``; is each one fail-safe?

The head runs as the product runs it: ``glass-inspect serve`` in its own process (so SIGTERM
and SIGKILL are real signals to a real process), on a reduced simulated head
(``serve_rig.reduced_head``: 256 x 224 px frames, 2 RoIs, 20 ms frames, 15 ms exposures, LED
``max_on_ms`` 150), with the whole chain underneath (GRBL driver and simulator, ring light on
the mock pins with a GPIO trace, SimCamera, the shipped network on ONNX Runtime, the verdict
journal). The line
controller is :class:`firmware_bridge.client.LineClient` (what ``glass-inspect line-sim``
drives) on a pseudo-terminal whose head end serve opens through a symlink, so the cable can be
pulled and plugged back in. Each fault is repeated ``--runs`` times (default 3) on a fresh
serve process and journal of its own.

Faults inside the head are injected by the simulated parts themselves
(:mod:`edge.sim.faults`, a plan in ``GLASS_INSPECT_SIM_FAULTS``; ``F`` below is the prefix of
the faulted sample ids, each run's faulted sample being followed by a clean one, ``C``):

=================  ==========================================================================
``camera_timeout`` ``camera_timeout@3/F``: the 3rd frame's trigger is never seen by the camera;
                   expected: ERROR "camera delivered no frame", and the next sample inspected
``bad_frame``      ``bad_frame@5/F``: the 5th frame arrives with half its rows; expected:
                   ERROR "expected a 256 x 224 px frame", next sample inspected
``stage_alarm``    ``stage_alarm@1/F``: the hard limit switch trips during the sample's first
                   move (``GrblSimulator.trip_limit()``); expected: ERROR "stage alarm 1",
                   the next sample re-homes and is inspected
``stage_unplug``   ``stage_unplug@1/F``: the stage's pty is closed during the first move;
                   expected: ERROR naming the stage port, and ERROR (never PASS) for the next
                   sample too (the stage is gone); serve restarted for each run
``engine_nan``     ``engine_nan@1/F``: the sample's first engine batch is NaN; expected:
                   ERROR "NaN or infinite scores", next sample inspected
``led_stall``      ``led_stall@2/F``: arming the camera for the 2nd frame hangs for 2 x
                   ``max_on_ms`` with the LED group lit; expected: the watchdog darkens it,
                   ERROR "watchdog"; the next sample self-tests the ring and is inspected;
                   serve restarted for each run (trips add up to ``watchdog_max_trips``)
=================  ==========================================================================

Silent faults: the frames still come, of the right size and on time; only the per-sample
hardware self-check (:mod:`edge.selfcheck`) and, where the network carries one, the training
envelope (:mod:`edge.envelope`, which runs first and names the statistic that moved: the
right state's haze or balance, the noise) can tell. Each lasts from its event to the end of
the faulted sample (``lost_steps`` until the stage is homed again):

==================  =========================================================================
``dead_led_group``  ``dead_led_group@2/F``: the group lit for the 2nd frame (group 1) gives
                    no light from then on; expected: ERROR "an LED group gives no light"
                    naming group 1, the next sample inspected
``ring_dark``       ``ring_dark@1/F``: no group gives light; expected: ERROR "no light in any
                    of the 6 LED states", the next sample inspected
``lens_cap``        ``lens_cap@1/F``: no light reaches the sensor; expected: the same ERROR
                    (it names both causes: without ambient light the frames are alike)
``defocus``         ``defocus@1/F``: the scene blurred by a Gaussian of 4 px; expected: ERROR
                    "out of focus", the next sample inspected
``gain_drift``      ``gain_drift@4/F``: the camera's gain doubles from the 4th frame on;
                    expected: ERROR "gain changed during the sample", the next sample
                    inspected
``lost_steps``      ``lost_steps@2/F``: the carriage ends 2 mm short of the second move's
                    target while the controller reports it there; expected: ERROR "do not show
                    the same glass where they overlap ... lost steps"; serve restarted for
                    each run (nothing re-homes the stage, so the carriage stays 2 mm off and
                    the next sample, every RoI off alike, is inspected unnoticed: see
                    ``notes``; a move of length 0 is no move, so a run's second move is the
                    one between its two RoIs only after a fresh start)
==================  =========================================================================

Faults around the head, injected here:

=================  ==========================================================================
``line_unplug``    the line cable is pulled once the first PROGRESS arrived (serve reads EIO,
                   the port disappears), plugged back 1 s later (a new pty behind the same
                   symlink; serve reopens it); expected: the verdict, journaled meanwhile,
                   arrives once after the head's ``ERROR,LINK`` event
``sigterm``        SIGTERM to serve right after an LED group was lit (read from the GPIO
                   trace); expected: exit status 0, LEDs dark; restarted, the head announces
                   ``ERROR,RESTART``, the line asks again and gets one verdict
``sigkill``        the same with SIGKILL, then restart
``full_disk``      the journal lies on a 512 KiB tmpfs that is filled up between two samples
                   (a real ENOSPC: ``unshare -Urm`` gives serve its own mount namespace with
                   the tmpfs, so no root is needed where user namespaces are allowed; as root
                   without them, a plain ``mount -t tmpfs``; neither: the fault is skipped
                   and says so); samples are then inspected until a journal write needs a
                   block (the journal's last block may hold a record or two more); expected:
                   that verdict still reaches the line once, with an ``ERROR,JOURNAL`` event
                   (``enospc_named``: runs whose event names "No space left on device"); once
                   the space is freed, the next verdict is journaled again
``torn_journal``   serve is killed (SIGKILL) as soon as a verdict record is in the journal,
                   what it sent after that is dropped from the wire (the power went first),
                   and the journal is cut in the middle of that record; expected: the restart
                   cuts the torn line off ("cut short" in its log) and the line, asking
                   again, gets exactly one verdict
=================  ==========================================================================

Faults of the other verdict links (issue 32), each run in this process against the link's
server on a journal of its own, with a scripted inspector (:class:`firmware_bridge.inspector.
ScriptedInspector`: a set share of FAIL and ERROR verdicts, 2 RoIs of 5 ms) instead of the
head, since the fault is in the link and not in the optics, 5 samples per run; ``samples``
are the jobs the line
asked for, ``false_pass`` the PASS results read for a sample whose verdict was not PASS,
``lost`` the jobs without exactly one verdict the line could read (or inspections nobody
asked for):

=================  ==========================================================================
``plc_no_ack``     io link with ACK wired and a 30 ms hold time; the simulated PLC never
                   acknowledges; expected: each result readable at its strobe, the outputs
                   drop after the hold, the verdicts stay unacknowledged in the journal, the
                   next trigger is served
``io_bounce``      io link, 4 ms debounce; every trigger bounces 6 times (0.4 ms pulses)
                   before it settles, and a lone 0.5 ms glitch follows each cycle; expected:
                   one inspection per trigger, none for a glitch
``rtu_crc_burst``  Modbus RTU on a pseudo-terminal pair; before each START, a burst of 8 START
                   frames for another sample with a corrupted CRC; expected: no inspection of
                   that sample, the real START answered, its verdict read and acknowledged
``opcua_drop``     OPC UA: a client starts a single job and drops its connection mid-job
                   (its socket closed without a goodbye); expected: the verdict journaled once
                   and readable in ResultManagement/LastResult by the next client, the state
                   back to Ready
``tcp_client_hangs`` Modbus TCP; before each sample two more clients connect and hang (one
                   silent, one stopping after 5 of a request header's 7 bytes), neither
                   reading, all kept to the end; the line's client connects afresh for each
                   sample; expected: it is served, each verdict read and acknowledged
``rtu_unplugged``  Modbus RTU through a USB RS-485 adapter that is pulled 30 ms into the
                   inspection (its path, a symlink as udev's by-id links are, disappears and
                   its terminal hangs up) and plugged back 0.5 s later as a new terminal;
                   expected: the link notices, opens the port again within ``reopen_s``
                   (0.5 s, serve's default), and the verdict, finished meanwhile, is read
=================  ==========================================================================

Printed: one JSON object ``{"faults": [...], ...}``, per fault: ``runs``, ``samples`` (INSPECT
requests the line made), ``verdicts`` (verdicts delivered), ``false_pass`` (PASS for a sample
whose inspection the fault hit, or one after a latched fault: must be 0),
``error_right_reason`` (runs where the expected ERROR came with its reason: the verdict's for
faults in the head, the link event's for ``line_unplug``, ``sigterm``, ``sigkill``,
``full_disk``; for ``torn_journal`` the replay's report of the torn line), ``leds_dark`` (runs
after which every LED group was dark), ``dark_ms_max`` (the longest time from the fault to
every LED group dark, from the GPIO trace; 0 when none was lit; for ``led_stall`` from the end
of the group's allowed on-time; for ``sigterm`` until they were dark for good, i.e. the last
group to go dark before the exit, ``first_dark_ms_max`` being the first moment all were dark;
target < 100), ``lost`` (requests without exactly one verdict
id: must be 0), ``recovered`` (runs whose next sample was inspected normally, where the head is
expected to recover), ``relit_after_fault`` (LED groups lit after a fault in the head and
before its verdict, or after SIGTERM before the exit), ``fault_to_verdict_ms_max``, ``expect``
and ``reasons`` (the distinct reasons seen, as journaled; the wire carries them shortened).
On this reduced head the shipped network reads most glass as FAIL (it was not made for 256 px
frames), so a fault that went unnoticed would more likely give FAIL than PASS: that is why
``error_right_reason`` must equal ``runs`` for the faults in the head, not only ``false_pass``
be 0. ``sigkill`` cannot darken anything (no code runs after SIGKILL): it reports
``lit_at_signal`` and, as ``dark_ms_max``, the time until the restarted serve held the pins
dark, which on a device is only as good as what a released GPIO line does (see ``notes``).
Top level: ``no_false_pass_no_loss`` (every fault ran, none with a false PASS or a lost
verdict), ``enospc_mechanism``, the reduced head, ``seconds``. Progress goes to stderr.

    python benchmarks/faults.py [--runs N] [--only NAME[,NAME...]] [--keep DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from serve_rig import (
    Events,
    LinePort,
    Serve,
    Trace,
    point_at,
    raw_pty,
    reduced_head,
    say,
    wait_until,
)

from edge import config
from edge.verdict import Status
from firmware_bridge.client import LinkRefused, LinkTimeout

# the pipeline's training envelope (edge.envelope) runs before the hardware self-check and may
# name a silent fault first, by the statistic it moved
ENVELOPE = r"frames unlike the training frames: "
HEAD = {"rois": 2, "width": 256, "height": 224, "exposure_ms": 15.0, "frame_time_ms": 20.0,
        "max_on_ms": 150.0, "grab_timeout_ms": 300.0}
TIMEOUT_S = 60.0
DARK_TARGET_MS = 100.0


@dataclass
class Spec:
    name: str
    plan: str = ""  # GLASS_INSPECT_SIM_FAULTS for the serve process
    reason: str = ""  # regex the faulted sample's ERROR reason must match
    latched: bool = False  # the fault outlives the sample: serve restarted per run
    fresh: bool = False  # serve restarted per run all the same: the runs must not add up
    expect: str = ""
    note: str = ""  # what the result does not show, for the output's notes


HEAD_FAULTS = [
    Spec("camera_timeout", "camera_timeout@3/F", r"camera delivered no frame within",
         expect="ERROR naming the camera timeout; the next sample inspected"),
    Spec("bad_frame", "bad_frame@5/F", r"expected a \d+ x \d+ px frame, got",
         expect="ERROR naming the short frame; the next sample inspected"),
    Spec("stage_alarm", "stage_alarm@1/F", r"stage alarm 1\b.*hard limit",
         expect="ERROR naming alarm 1 (hard limit); the next sample re-homes and is inspected"),
    Spec("stage_unplug", "stage_unplug@1/F", r"stage controller port .*(failed|Input/output)",
         latched=True, expect="ERROR naming the stage port; the next sample ERROR too"),
    Spec("engine_nan", "engine_nan@1/F", r"NaN or infinite scores",
         expect="ERROR naming the NaN scores; the next sample inspected"),
    Spec("led_stall", "led_stall@2/F", r"watchdog: LED group \d",
         fresh=True, expect="the watchdog darkens the group, ERROR naming it; the next sample "
                            "self-tests the ring and is inspected"),
    Spec("dead_led_group", "dead_led_group@2/F",
         r"hardware self-check: an LED group gives no light .*LED group 1 \(30 deg"
         rf"|{ENVELOPE}(balance|haze) of state 1\b",
         expect="ERROR naming the dead group (group 1); the next sample inspected"),
    Spec("ring_dark", "ring_dark@1/F",
         rf"hardware self-check: no light in any of the 6 LED|{ENVELOPE}haze of state",
         expect="ERROR: no light in any state; the next sample inspected"),
    Spec("lens_cap", "lens_cap@1/F",
         rf"hardware self-check: no light .*lens is capped|{ENVELOPE}haze of state",
         expect="ERROR: no light in any state (ring dark or lens capped); the next sample "
                "inspected"),
    Spec("defocus", "defocus@1/F", r"hardware self-check: the camera is out of focus",
         expect="ERROR: out of focus; the next sample inspected"),
    Spec("gain_drift", "gain_drift@4/F",
         rf"hardware self-check: the camera's gain changed during the sample|{ENVELOPE}noise",
         expect="ERROR: the gain changed during the sample; the next sample inspected"),
    Spec("lost_steps", "lost_steps@2/F",
         r"hardware self-check: RoI \d and RoI \d do not show the same glass .*lost steps",
         fresh=True, expect="ERROR: the overlap of the two RoIs shows different glass",
         note="the carriage stays 2 mm off after the fault (nothing re-homes the stage); the "
              "next sample, every RoI off alike, cannot be told from one in place (no edge "
              "or fiducial in view): 'recovered' counts it inspected, not in place"),
]
LINK_FAULTS = {
    "line_unplug": "the verdict arrives once after the cable is back (ERROR,LINK event)",
    "sigterm": "exit status 0, LEDs dark; after the restart (ERROR,RESTART) one verdict",
    "sigkill": "after the restart (ERROR,RESTART) one verdict",
    "full_disk": "the verdict still arrives once, with an ERROR,JOURNAL event; journaled "
                 "again once there is space",
    "torn_journal": "the torn record is cut off on restart ('cut short'); one verdict",
}
LINK_RUNNERS = {
    "line_unplug": lambda rig, runs: line_unplug(rig, runs),
    "sigterm": lambda rig, runs: signalled(rig, runs, signal.SIGTERM),
    "sigkill": lambda rig, runs: signalled(rig, runs, signal.SIGKILL),
    "torn_journal": lambda rig, runs: torn_journal(rig, runs),
}
NEW_LINK_FAULTS = {
    "plc_no_ack": "each result readable at its strobe; outputs drop after the hold; verdicts "
                  "stay unacknowledged; the next trigger served",
    "io_bounce": "one inspection per bouncing trigger, none for a glitch",
    "rtu_crc_burst": "frames with a bad CRC ignored; the real START answered and its verdict "
                     "read",
    "opcua_drop": "the verdict journaled once and readable by the next client; Ready again",
    "tcp_client_hangs": "clients that connect and hang (silent, or half a request) hold no "
                        "one up: the line's client is served, every verdict read",
    "rtu_unplugged": "the RS-485 adapter pulled mid-inspection and plugged back: the link "
                     "listens again after reopen_s and the verdict is read",
}
ORDER = ["camera_timeout", "bad_frame", "stage_alarm", "stage_unplug", "line_unplug",
         "engine_nan", "led_stall", "dead_led_group", "ring_dark", "lens_cap", "defocus",
         "gain_drift", "lost_steps", "sigterm", "sigkill", "full_disk", "torn_journal",
         *NEW_LINK_FAULTS]


@dataclass
class Run:
    sample: str
    status: str | None = None
    reason: str = ""
    right: bool = False
    false_pass: int = 0
    dark_ms: float | None = None
    leds_dark: bool | None = None
    recovered: bool | None = None
    lit_at_signal: bool | None = None
    extra: dict = field(default_factory=dict)


class Rig:
    """One fault's serve process, line cable, client, trace and journal."""

    def __init__(self, base: Path, name: str, head: Path, plan: str = "",
                 wrap: tuple[str, ...] = (), journal: Path | None = None) -> None:
        self.dir = base / name
        self.dir.mkdir(parents=True)
        self.trace_path = self.dir / "gpio-trace.txt"
        self.fault_log = self.dir / "faults.jsonl"
        self.journal = journal or self.dir / "journal.jsonl"
        self.port = LinePort(self.dir)
        env = {"GLASS_INSPECT_SIM_TRACE": str(self.trace_path),
               "GLASS_INSPECT_SIM_FAULT_LOG": str(self.fault_log),
               "GLASS_INSPECT_SIM_FAULTS": plan}
        self.serve = Serve(head, self.port.path, self.journal, self.dir / "serve.log", env=env,
                           wrap=wrap)
        cfg = config.load(head)
        self.max_on_s = cfg.illumination.max_on_ms / 1000.0
        self.trace = Trace(self.trace_path, [s.pin for s in cfg.illumination.states])
        self.events = Events()
        self.client = self.port.client()
        self.samples = 0
        self.verdicts: dict[str, list] = {}
        self.lost = 0

    def start(self) -> None:
        self.serve.start()
        t = time.monotonic()
        self.client.hello(TIMEOUT_S)
        say(f"    serve up in {time.monotonic() - t:.1f} s (pid {self.serve.pid})")

    def restart(self) -> float:
        """Start serve again; when the line heard it announce itself."""
        t = time.monotonic()
        self.serve.start()
        return t

    def fired(self, sample: str) -> list[dict]:
        if not self.fault_log.exists():
            return []
        recs = [json.loads(line) for line in self.fault_log.read_text().splitlines() if line]
        return [r for r in recs if r["sample_id"] == sample]

    def inspect(self, sample: str):
        self.samples += 1
        return self._verdict(self.client.inspect, sample)

    def wait_verdict(self, sample: str):
        return self._verdict(self.client.wait_verdict, sample)

    def _verdict(self, ask, sample: str):
        """``ask(sample)``'s verdict, kept; None (counted lost) when none came."""
        try:
            v = ask(sample, TIMEOUT_S)
        except (LinkTimeout, LinkRefused) as exc:
            say(f"    {sample}: NO VERDICT ({exc})")
            self.lost += 1
            return None
        self.verdicts.setdefault(sample, []).append(v)
        return v

    def full_reason(self, v) -> str:
        """The head's reason for verdict ``v`` as journaled (the wire carries it shortened
        to fit the line), else the wire's."""
        with contextlib.suppress(OSError):
            for raw in self.journal.read_bytes().splitlines():
                with contextlib.suppress(ValueError):
                    rec = json.loads(raw)
                    if rec.get("rec") == "verdict" and rec.get("verdict_id") == v.verdict_id \
                            and rec.get("sample_id") == v.sample_id:
                        return str(rec["verdict"].get("reason", v.reason))
        return v.reason

    def doubled(self) -> int:
        got = {s: {v.verdict_id for v in vs} for s, vs in self.verdicts.items()}
        extra = sum(len(ids) - 1 for ids in got.values())
        extra += sum(1 for v in self.client.unsolicited
                     if v.sample_id in got and v.verdict_id not in got[v.sample_id])
        return extra

    def leds_dark_now(self) -> bool:
        return not self.trace.lit_at(time.monotonic())

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.poll(0.3)  # acknowledge what is still coming
        self.serve.stop()
        self.client.close()
        self.port.close()
        self.events.close()


def _ms(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round((a - b) * 1000.0, 1)


# -- faults inside the head -------------------------------------------------------------------

def head_fault(rig: Rig, spec: Spec, runs: int) -> list[Run]:
    out = []
    for r in range(1, runs + 1):
        if r > 1 and (spec.latched or spec.fresh):
            rig.serve.stop()
            rig.start()
        run = Run(f"F{r:02d}")
        v = rig.inspect(run.sample)
        t_verdict = time.monotonic()
        fired = rig.fired(run.sample)
        if v is not None:
            run.status, run.reason = v.status.value, rig.full_reason(v)
            run.right = v.status is Status.ERROR and bool(re.search(spec.reason, run.reason))
            run.false_pass += v.status is Status.PASS
        if fired:
            t = fired[0]["t"]
            run.extra["to_verdict_ms"] = _ms(t_verdict, t)
            # lit again between the fault and the verdict: the acquisition went on
            run.extra["relit"] = rig.trace.rises_between(t, t_verdict)
            if spec.name == "led_stall":  # from the end of the allowed on-time
                on = rig.trace.on_off_around(t)
                if on is not None and on[1] is not None:
                    run.dark_ms = _ms(on[1], on[0] + rig.max_on_s)
                    run.extra["lit_ms"] = _ms(on[1], on[0])
            else:
                run.dark_ms = _ms(rig.trace.dark_after(t), t)
        else:
            run.extra["not_fired"] = True
        after = rig.inspect(f"C{r:02d}")
        if after is not None:
            if spec.latched:
                run.false_pass += after.status is Status.PASS
                run.extra["after"] = after.status.value
            else:
                run.recovered = after.status is not Status.ERROR
        run.leds_dark = rig.leds_dark_now() and run.dark_ms is not None
        out.append(run)
        say(f"    run {r}: {run.status} ({run.reason[:90]}); dark {run.dark_ms} ms"
            + (f"; next sample {'inspected' if run.recovered else 'ERROR'}"
               if run.recovered is not None else ""))
    return out


# -- faults around the head -------------------------------------------------------------------

def line_unplug(rig: Rig, runs: int) -> list[Run]:
    out = []
    for r in range(1, runs + 1):
        run = Run(f"F{r:02d}")
        seen: list[int] = []
        rig.client.on_progress = lambda s, d, t, seen=seen: seen.append(d)
        rig.samples += 1
        rig.client.start_inspect(run.sample, TIMEOUT_S)
        end = time.monotonic() + 20
        while not seen and time.monotonic() < end:
            rig.client.poll(0.01)
        t = time.monotonic()
        rig.port.unplug()
        rig.client.link.close()
        time.sleep(1.0)  # the head finishes the sample with the cable out
        rig.port.plug()
        v = rig.wait_verdict(run.sample)
        run.extra["to_verdict_ms"] = _ms(time.monotonic(), t)
        rig.client.on_progress = None
        events = rig.events.since(t)
        if v is not None:
            run.status, run.reason = v.status.value, v.reason
            run.right = any("port reopened" in e for e in events)
        run.dark_ms = _ms(rig.trace.dark_after(t), t)
        run.leds_dark = rig.leds_dark_now()
        run.extra["progress_before_unplug"] = bool(seen)
        out.append(run)
        say(f"    run {r}: {run.status} after the cable came back; link event "
            f"{'seen' if run.right else 'MISSING'}; dark {run.dark_ms} ms")
    return out


def signalled(rig: Rig, runs: int, signum: int) -> list[Run]:
    out = []
    for r in range(1, runs + 1):
        run = Run(f"F{r:02d}")
        rig.samples += 1
        t0 = time.monotonic()
        rig.client.start_inspect(run.sample, TIMEOUT_S)
        rise = wait_until(lambda t0=t0: rig.trace.first_rise_after(t0), 20.0, 0.002)
        t = rig.serve.signal(signum)
        run.lit_at_signal = bool(rig.trace.lit_at(t))
        rc = rig.serve.wait(30)
        if signum == signal.SIGTERM:
            # dark for good: the last LED group to go dark before the exit (the acquisition
            # may light another group or two until the server loop has seen the signal)
            t_exit = time.monotonic()
            first = rig.trace.dark_after(t)
            last = rig.trace.last_fall_between(t, t_exit)
            run.dark_ms = _ms(max(first, last or first), t) if first is not None else None
            run.extra["first_dark_ms"] = _ms(first, t)
            run.extra["exit_status"] = rc
            run.extra["relit"] = rig.trace.rises_between(t, t_exit)
        t_restart = rig.restart()
        v = rig.wait_verdict(run.sample)
        run.extra["to_verdict_ms"] = _ms(time.monotonic(), t)
        # the verdict may have come before the restart (an inspection stopped by SIGTERM ends
        # in an ERROR verdict at once): wait for the restarted head to say it is up
        deadline = time.monotonic() + 30.0
        while True:
            ready = [ts for ts, m in rig.events.records
                     if ts >= t_restart and "head started" in m]
            if ready or time.monotonic() > deadline:
                break
            rig.client.poll(0.1)  # read what the head sends, so its announcement is heard
        if signum == signal.SIGKILL:
            # nothing runs after SIGKILL: the pins are dark again once the restarted serve
            # claimed them (its ring light holds every group dark before it answers)
            run.extra["restart_to_pins_dark_ms"] = _ms(ready[0], t) if ready else None
            run.dark_ms = (_ms(ready[0], t) if ready else None) if run.lit_at_signal else 0.0
        if v is not None:
            run.status, run.reason = v.status.value, v.reason
            run.right = bool(ready) and (signum != signal.SIGTERM or rc == 0)
        run.leds_dark = rig.leds_dark_now()
        run.extra["lit_before_signal"] = rise is not None
        out.append(run)
        say(f"    run {r}: signal {signum} with an LED {'lit' if run.lit_at_signal else 'dark'} "
            f"(first dark {run.extra.get('first_dark_ms')} ms, relit {run.extra.get('relit')})"
            f"; dark {run.dark_ms} ms; after the restart {run.status}")
    return out


def torn_journal(rig: Rig, runs: int) -> list[Run]:
    out = []
    for r in range(1, runs + 1):
        run = Run(f"F{r:02d}")
        rig.samples += 1
        rig.client.start_inspect(run.sample, TIMEOUT_S)
        needle = f'"sample_id":"{run.sample}"'.encode()

        def journaled(needle: bytes = needle) -> bool:
            data = rig.journal.read_bytes()
            return data.endswith(b"\n") and needle in data.rsplit(b"\n", 2)[-2]

        if not wait_until(journaled, 30.0, 0.002):
            raise RuntimeError(f"{run.sample}: no verdict record appeared in the journal")
        t = rig.serve.signal(signal.SIGKILL)
        rig.serve.wait(30)
        run.extra["dropped_bytes"] = rig.port.drain()  # never reached the line
        data = rig.journal.read_bytes()
        start = data.rstrip(b"\n").rfind(b"\n") + 1
        cut = start + (len(data) - start) // 2
        with open(rig.journal, "r+b") as f:
            f.truncate(cut)
        run.extra["cut_bytes"] = len(data) - cut
        log_before = len(rig.serve.text())
        rig.restart()
        v = rig.wait_verdict(run.sample)
        run.extra["to_verdict_ms"] = _ms(time.monotonic(), t)
        replay = rig.serve.text()[log_before:]
        records = [json.loads(x) for x in rig.journal.read_bytes().splitlines() if x.strip()]
        mine = [x for x in records if x.get("rec") == "verdict" and x["sample_id"] == run.sample]
        if v is not None:
            run.status, run.reason = v.status.value, v.reason
            run.right = "cut short" in replay and len(mine) == 1
        run.dark_ms = _ms(rig.trace.dark_after(t), t)
        run.leds_dark = rig.leds_dark_now()
        out.append(run)
        say(f"    run {r}: cut {run.extra['cut_bytes']} bytes off the last record; replay "
            f"{'cut it off' if 'cut short' in replay else 'DID NOT REPORT IT'}; {run.status}")
    return out


# -- a full disk under the journal ------------------------------------------------------------

def _tmpfs_wrap(mount_dir: Path) -> tuple[tuple[str, ...], str] | None:
    """How to give serve a tiny tmpfs at ``mount_dir``: (command prefix, how)."""
    size = "size=512k"
    if shutil.which("unshare"):
        probe = subprocess.run(["unshare", "-Urm", "sh", "-c",
                                f'mount -t tmpfs -o {size} tmpfs "$0"', str(mount_dir)],
                               capture_output=True, timeout=20)
        if probe.returncode == 0:
            return (("unshare", "-Urm", "sh", "-c",
                     f'mount -t tmpfs -o {size} tmpfs "$0" && exec "$@"', str(mount_dir)),
                    "tmpfs of 512 KiB in serve's own mount namespace (unshare -Urm)")
    if os.geteuid() == 0:
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", size, "tmpfs", str(mount_dir)],
                           capture_output=True, timeout=20)
        if r.returncode == 0:
            return (), "tmpfs of 512 KiB (mount as root)"
    return None


def _fill(folder: Path) -> int:
    """Fill the filesystem of ``folder`` to the last byte; how many bytes it took."""
    n = 0
    with open(folder / "filler", "wb", buffering=0) as f:
        for chunk in (65536, 4096, 512, 1):
            while True:
                try:
                    n += f.write(b"\0" * chunk)
                except OSError:
                    break
    return n


def full_disk(base: Path, head: Path, runs: int) -> tuple[list[Run], Rig | None, str]:
    mount_dir = base / "full_disk-journal"
    mount_dir.mkdir()
    how = _tmpfs_wrap(mount_dir)
    if how is None:
        return [], None, ("not injected: no way to mount a small tmpfs here (no user "
                          "namespaces, not root)")
    wrap, mechanism = how
    rig = Rig(base, "full_disk", head, wrap=wrap, journal=mount_dir / "journal.jsonl")
    rig.start()
    # serve's view of the folder (its own mount namespace when unshared)
    seen_dir = (Path(f"/proc/{rig.serve.pid}/root") / mount_dir.relative_to("/")) if wrap \
        else mount_dir
    out = []
    try:
        for r in range(1, runs + 1):
            run = Run(f"F{r:02d}")
            rig.inspect(f"A{r:02d}")
            filled = _fill(seen_dir)
            t = time.monotonic()
            # The journal's last page may still have room for a record or two (a filesystem
            # gives out whole blocks): inspect until a record needs a block there is not.
            for k in range(1, 9):
                v = rig.inspect(f"F{r:02d}-{k}")
                events = rig.events.since(t)
                run.right = any("JOURNAL" in e for e in events)
                if v is None or run.right:
                    break
            run.extra["verdicts_on_the_full_disk"] = k
            (seen_dir / "filler").unlink()
            after = rig.inspect(f"C{r:02d}")
            journal = (seen_dir / "journal.jsonl").read_bytes()
            if v is not None:
                run.status, run.reason = v.status.value, v.reason
            run.recovered = after is not None and \
                f'"sample_id":"C{r:02d}"'.encode() in journal
            run.dark_ms = _ms(rig.trace.dark_after(t), t)
            run.leds_dark = rig.leds_dark_now()
            run.extra["filled_bytes"] = filled
            run.extra["journal_events"] = [e for e in events if "JOURNAL" in e][:2]
            run.extra["enospc_named"] = any("No space left on device" in e for e in events)
            out.append(run)
            say(f"    run {r}: disk full ({filled} bytes filled): {k} verdict(s) until the journal "
                f"needed a block: {run.status}, journal event "
                f"{'seen' if run.right else 'MISSING'}; space back: next verdict "
                f"{'journaled' if run.recovered else 'NOT journaled'}")
    finally:
        if not wrap:
            rig.close()
            subprocess.run(["umount", str(mount_dir)], capture_output=True)
    return out, rig, mechanism


# -- faults of the io, Modbus RTU and OPC UA links (in this process) --------------------------

def _scripted():
    from firmware_bridge.inspector import ScriptedInspector

    return ScriptedInspector(roi_time_s=0.005, rois=2, fail_share=0.4, error_share=0.2)


def _expected(insp, sid: str) -> str:
    return insp._plan(sid)[0].value


def _io_fault(base: Path, runs: int, name: str) -> dict:
    import threading

    from gpiozero.pins.mock import MockFactory

    from firmware_bridge.io_link import IoLink
    from firmware_bridge.io_plc_sim import PlcTimeout, SimPlc
    from firmware_bridge.journal import Journal

    pins = dict(trigger_pin=11, busy_pin=12, pass_pin=13, fail_pin=16, error_pin=18,
                strobe_pin=22, ack_pin=35)
    timing = ({"hold_ms": 30.0, "debounce_ms": 2.0} if name == "plc_no_ack" else
              {"debounce_ms": 4.0})
    settings = config.VerdictLink(kind="io", strobe_ms=5.0, settle_ms=1.0, **pins, **timing)
    factory, insp = MockFactory(), _scripted()
    link = IoLink(settings, insp, Journal(base / f"{name}.jsonl"), pin_factory=factory,
                  name=name)
    plc = SimPlc(factory, settings, ack=name != "plc_no_ack")
    stop = threading.Event()
    t = threading.Thread(target=link.run, args=(stop,), daemon=True)
    t.start()
    link.ready.wait(10)
    false_pass = lost = 0
    try:
        for k in range(runs):
            before = set(link.journal.by_id)
            try:
                c = plc.cycle(10.0, bounces=6 if name == "io_bounce" else 0, bounce_s=0.0004)
            except PlcTimeout as exc:
                say(f"    cycle {k}: {exc}")
                lost += 1
                continue
            new = [link.journal.by_id[v] for v in set(link.journal.by_id) - before]
            if len(new) != 1 or not c.valid or c.status != new[0].status:
                lost += 1
                continue
            if c.status == "PASS" and _expected(insp, new[0].sample_id) != "PASS":
                false_pass += 1
            if name == "io_bounce":  # a lone glitch, shorter than the debounce
                plc.pins["trigger"].drive_high()
                time.sleep(0.0005)
                plc.pins["trigger"].drive_low()
                time.sleep(0.02)
        extra = len(link.journal.by_id) - runs  # inspections nobody asked for
        lost += abs(extra)
        unacked = len(link.journal.unacknowledged())
    finally:
        stop.set()
        t.join(10)
        factory.close()
    res = {"samples": runs, "verdicts": len(link.journal.by_id), "false_pass": false_pass,
           "lost": lost, "triggers_seen": link.triggers}
    if name == "plc_no_ack":
        res["unacknowledged_in_journal"] = unacked
    return res


def _rtu_crc_burst(base: Path, runs: int) -> dict:
    import threading

    from pymodbus.client import ModbusSerialClient

    from firmware_bridge import modbus_link as M
    from firmware_bridge.journal import Journal
    from firmware_bridge.port import relayed_ptys

    head, line, close = relayed_ptys()
    settings = config.VerdictLink(kind="modbus-rtu", port=head, baud=115200, parity="none",
                                  unit_id=1)
    insp = _scripted()
    link = M.ModbusLink(settings, insp, Journal(base / "rtu.jsonl"), reopen_s=0.1)
    stop = threading.Event()
    t = threading.Thread(target=link.run, args=(stop,), daemon=True)
    t.start()
    link.listening.wait(10)
    client = ModbusSerialClient(line, baudrate=115200, parity="N", timeout=1, retries=3)
    client.connect()
    false_pass = lost = 0
    try:
        for k in range(runs):
            sid = f"CRC{k:04d}"
            bogus = _rtu_frame([M.CMD_START, 0, 0] + M.pack_text(f"BAD{k:04d}"))
            for _ in range(8):  # a burst of noise: START frames whose CRC is wrong
                client.socket.write(bogus[:-2] + bytes([bogus[-2] ^ 0x5A, bogus[-1]]))
                time.sleep(0.003)
            time.sleep(0.05)
            r = client.write_registers(0, [M.CMD_START, 0, 0] + M.pack_text(sid), device_id=1)
            if r.isError():
                say(f"    {sid}: START refused: {r}")
                lost += 1
                continue
            end = time.monotonic() + 10
            regs = None
            while time.monotonic() < end:
                rr = client.read_input_registers(0, count=M.IR_COUNT, device_id=1)
                if not rr.isError() and rr.registers[M.IR_UNACKED] and \
                        M.unpack_text(rr.registers[M.IR_VERDICT_SAMPLE_ID:
                                                   M.IR_VERDICT_SAMPLE_ID + 32]) == sid:
                    regs = rr.registers
                    break
                time.sleep(0.01)
            if regs is None or sum(e.sample_id == sid for e in link.journal.by_id.values()) != 1:
                lost += 1
                continue
            status = {1: "PASS", 2: "FAIL", 3: "ERROR"}[regs[M.IR_VERDICT]]
            if status == "PASS" and _expected(insp, sid) != "PASS":
                false_pass += 1
            seq = regs[M.IR_VERDICT_SEQ] << 16 | regs[M.IR_VERDICT_SEQ + 1]
            client.write_registers(0, [M.CMD_ACK, seq >> 16, seq & 0xFFFF], device_id=1)
        phantom = [e.sample_id for e in link.journal.by_id.values()
                   if e.sample_id.startswith("BAD")]
        lost += len(phantom)  # inspections nobody asked for
        verdicts = len(link.journal.by_id)
    finally:
        client.close()
        stop.set()
        t.join(10)
        close()
    return {"samples": runs, "verdicts": verdicts, "false_pass": false_pass, "lost": lost,
            "bad_crc_frames": 8 * runs, "inspections_from_bad_frames": len(phantom)}


def _rtu_frame(values: list[int], unit: int = 1) -> bytes:
    """An FC16 write of ``values`` at address 0 with its CRC (as pymodbus computes it)."""
    from pymodbus.framer.rtu import FramerRTU

    pdu = bytes([unit, 16, 0, 0, 0, len(values), 2 * len(values)]) + b"".join(
        v.to_bytes(2, "big") for v in values)
    return pdu + FramerRTU.compute_CRC(pdu).to_bytes(2, "big")


def _opcua_drop(base: Path, runs: int) -> dict:
    import asyncio
    import socket
    import threading

    from asyncua import Client, ua

    from firmware_bridge import modbus_link as M
    from firmware_bridge.journal import Journal
    from firmware_bridge.opcua_server import NAMESPACE, OpcuaServer

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    settings = config.Opcua(endpoint=f"opc.tcp://127.0.0.1:{port}/gi/", username="mes",
                            password="pw")
    insp = _scripted()
    insp.roi_time_s = 0.1  # long enough to drop the client mid-job
    link = M.ModbusLink(config.VerdictLink(kind="modbus-tcp", tcp_port=0), insp,
                        Journal(base / "opcua.jsonl"))
    server = OpcuaServer(settings, link, head="faults", head_digest="", model_sha256="",
                         backend="scripted")
    stop = threading.Event()
    t = threading.Thread(target=link.run, args=(stop,), daemon=True)
    t.start()
    server.start()
    address = f"opc.tcp://mes:pw@127.0.0.1:{port}/gi/"
    SM = "VisionSystem.VisionStateMachine"  # noqa: N806

    async def one(sid: str) -> tuple[str, str, str] | None:
        c = Client(address, timeout=5)
        await c.connect()
        idx = await c.get_namespace_index(NAMESPACE)
        auto = c.get_node(ua.NodeId(f"{SM}.AutomaticMode", idx))
        if await c.get_node(ua.NodeId(f"{SM}.CurrentState", idx)).read_value() == "Halted":
            await c.get_node(ua.NodeId(SM, idx)).call_method(f"{idx}:SelectModeAutomatic")
        await auto.call_method(f"{idx}:StartSingleJob", sid)
        c.uaclient.protocol.transport.abort()  # the cable is pulled: no CloseSession
        with contextlib.suppress(Exception):
            await c.disconnect()
        await asyncio.sleep(0.1)
        async with Client(address, timeout=5) as c2:
            last = "VisionSystem.ResultManagement.LastResult"
            mode = c2.get_node(ua.NodeId(f"{SM}.AutomaticMode.CurrentState", idx))
            for _ in range(300):
                got = await c2.get_node(ua.NodeId(f"{last}.SampleId", idx)).read_value()
                if got == sid and await mode.read_value() == "Ready":
                    v = await c2.get_node(ua.NodeId(f"{last}.Verdict", idx)).read_value()
                    return got, v, await mode.read_value()
                await asyncio.sleep(0.02)
        return None

    false_pass = lost = 0
    try:
        for k in range(runs):
            sid = f"UA{k:04d}"
            got = asyncio.run(one(sid))
            n = sum(1 for e in link.journal.by_id.values() if e.sample_id == sid)
            if got is None or n != 1:
                lost += 1
                continue
            if got[1] == "PASS" and _expected(insp, sid) != "PASS":
                false_pass += 1
    finally:
        server.stop()
        stop.set()
        t.join(10)
    return {"samples": runs, "verdicts": len(link.journal.by_id), "false_pass": false_pass,
            "lost": lost}


def _modbus_cycle(client, link, insp, sid: str, unit: int = 1) -> tuple[int, int]:
    """One START, poll until the verdict of ``sid`` is readable, ACK: (false PASS, lost)."""
    from firmware_bridge import modbus_link as M

    r = client.write_registers(0, [M.CMD_START, 0, 0] + M.pack_text(sid), device_id=unit)
    if r.isError():
        say(f"    {sid}: START refused: {r}")
        return 0, 1
    return _modbus_read_ack(client, link, insp, sid, unit)


def _modbus_read_ack(client, link, insp, sid: str, unit: int = 1,
                     timeout: float = 10.0) -> tuple[int, int]:
    from firmware_bridge import modbus_link as M

    end, regs = time.monotonic() + timeout, None
    while time.monotonic() < end:
        rr = client.read_input_registers(0, count=M.IR_COUNT, device_id=unit)
        if not rr.isError() and rr.registers[M.IR_UNACKED] and M.unpack_text(
                rr.registers[M.IR_VERDICT_SAMPLE_ID:M.IR_VERDICT_SAMPLE_ID + 32]) == sid:
            regs = rr.registers
            break
        time.sleep(0.01)
    if regs is None or sum(e.sample_id == sid for e in link.journal.by_id.values()) != 1:
        say(f"    {sid}: no verdict readable")
        return 0, 1
    status = {1: "PASS", 2: "FAIL", 3: "ERROR"}[regs[M.IR_VERDICT]]
    seq = regs[M.IR_VERDICT_SEQ] << 16 | regs[M.IR_VERDICT_SEQ + 1]
    ack = client.write_registers(0, [M.CMD_ACK, seq >> 16, seq & 0xFFFF], device_id=unit)
    if ack.isError():
        say(f"    {sid}: ACK refused: {ack}")
        return 0, 1
    return int(status == "PASS" and _expected(insp, sid) != "PASS"), 0


def _tcp_client_hangs(base: Path, runs: int) -> dict:
    import socket
    import threading

    from pymodbus.client import ModbusTcpClient

    from firmware_bridge import modbus_link as M
    from firmware_bridge.journal import Journal

    insp = _scripted()
    link = M.ModbusLink(config.VerdictLink(kind="modbus-tcp", host="127.0.0.1", tcp_port=0,
                                           unit_id=1), insp, Journal(base / "tcp.jsonl"))
    stop = threading.Event()
    t = threading.Thread(target=link.run, args=(stop,), daemon=True)
    t.start()
    if not link.listening.wait(10):
        raise RuntimeError("the Modbus TCP server did not start")
    address = ("127.0.0.1", link.address[1])
    hangers: list[socket.socket] = []
    false_pass = lost = 0
    cycle_ms: list[float] = []
    try:
        for k in range(runs):
            # Two more clients that hang, kept to the end (so 2 x runs at the last sample):
            # one silent after connecting, one that stops half way through a request's
            # header; neither ever reads what it is sent.
            silent = socket.create_connection(address, timeout=2)
            half = socket.create_connection(address, timeout=2)
            half.sendall(bytes([0x00, 0x07, 0x00, 0x00, 0x00]))  # 5 of the 7 MBAP bytes
            hangers += [silent, half]
            time.sleep(0.02)
            # the line's client: a fresh connection per sample, accepted beside the hangers
            client = ModbusTcpClient(address[0], port=address[1], timeout=2)
            t0 = time.monotonic()
            if not client.connect():
                say(f"    sample {k}: the line's client could not connect")
                lost += 1
                continue
            try:
                fp, ls = _modbus_cycle(client, link, insp, f"TCP{k:04d}")
            finally:
                client.close()
            cycle_ms.append((time.monotonic() - t0) * 1000.0)
            false_pass += fp
            lost += ls
        lost += len(link.journal.by_id) - runs  # inspections nobody asked for
        verdicts = len(link.journal.by_id)
    finally:
        for s in hangers:
            s.close()
        stop.set()
        t.join(10)
    return {"samples": runs, "verdicts": verdicts, "false_pass": false_pass, "lost": lost,
            "hanging_clients_at_end": len(hangers),
            "inspection_ms": round(insp.roi_time_s * insp.rois * 1000.0, 1),
            "cycle_ms_max": round(max(cycle_ms), 1) if cycle_ms else None}


class _Rs485Cable:
    """A USB RS-485 adapter that can be pulled: the head opens ``path`` (a symlink to a
    pseudo-terminal, as udev's /dev/serial/by-id links are), the line's end is a second
    pseudo-terminal that stays; a thread relays the bytes. Unplugged, the head's terminal is
    hung up (its reads fail) and the path is gone until plugged again, on a new terminal."""

    def __init__(self, folder: Path) -> None:
        import threading

        self.path = folder / "rs485-adapter"
        self.line_master, line_slave = raw_pty()
        self.line_slave = line_slave  # kept open: the line's end never reads EOF
        self.line = os.ttyname(line_slave)
        self.head_master = self.head_slave = -1
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.plug()
        self.thread = threading.Thread(target=self._relay, name="rs485-relay", daemon=True)
        self.thread.start()

    def plug(self) -> None:
        master, slave = raw_pty()
        with self.lock:
            self.head_master, self.head_slave = master, slave
        point_at(self.path, os.ttyname(slave))

    def unplug(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        with self.lock:
            for fd in (self.head_master, self.head_slave):
                if fd >= 0:
                    with contextlib.suppress(OSError):
                        os.close(fd)
            self.head_master = self.head_slave = -1

    def _relay(self) -> None:
        import select

        while not self.stop.is_set():
            with self.lock:
                head = self.head_master
            fds = [self.line_master] + ([head] if head >= 0 else [])
            try:
                ready, _, _ = select.select(fds, [], [], 0.02)
            except OSError:  # the head's end was pulled meanwhile
                continue
            for fd in ready:
                try:
                    data = os.read(fd, 4096)
                    if fd == head:
                        os.write(self.line_master, data)
                    elif head >= 0:
                        os.write(head, data)
                    # unplugged: what the line sends is lost on the wire
                except OSError:
                    pass

    def close(self) -> None:
        self.stop.set()
        self.thread.join(2)
        self.unplug()
        for fd in (self.line_master, self.line_slave):
            with contextlib.suppress(OSError):
                os.close(fd)


def _rtu_unplugged(base: Path, runs: int, out_s: float = 0.5) -> dict:
    import threading

    from pymodbus.client import ModbusSerialClient

    from firmware_bridge import modbus_link as M
    from firmware_bridge.journal import Journal

    cable = _Rs485Cable(base)
    settings = config.VerdictLink(kind="modbus-rtu", port=str(cable.path), baud=115200,
                                  parity="none", unit_id=1)
    insp = _scripted()
    insp.roi_time_s = 0.1  # long enough to pull the adapter mid-inspection
    # reopen_s as serve runs it (modbus_link.open_link's default)
    link = M.ModbusLink(settings, insp, Journal(base / "rtu.jsonl"), reopen_s=0.5)
    stop = threading.Event()
    t = threading.Thread(target=link.run, args=(stop,), daemon=True)
    t.start()
    if not link.listening.wait(10):
        raise RuntimeError("the Modbus RTU server did not start")
    client = ModbusSerialClient(cable.line, baudrate=115200, parity="N", timeout=0.5,
                                retries=3)
    client.connect()
    false_pass = lost = mid = noticed = 0
    relisten_ms: list[float] = []
    to_verdict_ms: list[float] = []
    try:
        for k in range(runs):
            sid = f"UNPLUG{k:04d}"
            r = client.write_registers(0, [M.CMD_START, 0, 0] + M.pack_text(sid),
                                       device_id=1)
            if r.isError():
                say(f"    {sid}: START refused: {r}")
                lost += 1
                continue
            time.sleep(0.03)
            with link.lock:
                busy = link.service.busy_job()
            mid += busy is not None and busy.sample_id == sid
            t_out = time.monotonic()
            cable.unplug()
            noticed += bool(wait_until(lambda: not link.listening.is_set(), out_s, 0.005))
            time.sleep(max(0.0, out_s - (time.monotonic() - t_out)))
            t_in = time.monotonic()
            cable.plug()
            if not link.listening.wait(10):
                say(f"    {sid}: the link did not listen again")
                lost += 1
                continue
            relisten_ms.append((time.monotonic() - t_in) * 1000.0)
            fp, ls = _modbus_read_ack(client, link, insp, sid)
            to_verdict_ms.append((time.monotonic() - t_out) * 1000.0)
            false_pass += fp
            lost += ls
        lost += len(link.journal.by_id) - runs  # inspections nobody asked for
        verdicts = len(link.journal.by_id)
    finally:
        client.close()
        stop.set()
        t.join(10)
        cable.close()
    return {"samples": runs, "verdicts": verdicts, "false_pass": false_pass, "lost": lost,
            "unplugged_mid_inspection": mid, "loss_noticed": noticed, "unplugged_s": out_s,
            "reopen_s": link.reopen_s,
            "replug_to_listening_ms_max": round(max(relisten_ms), 1) if relisten_ms else None,
            "unplug_to_verdict_read_ms_max":
                round(max(to_verdict_ms), 1) if to_verdict_ms else None}


NEW_LINK_RUNNERS = {
    "plc_no_ack": lambda base, runs: _io_fault(base, runs, "plc_no_ack"),
    "io_bounce": lambda base, runs: _io_fault(base, runs, "io_bounce"),
    "rtu_crc_burst": _rtu_crc_burst,
    "opcua_drop": _opcua_drop,
    "tcp_client_hangs": _tcp_client_hangs,
    "rtu_unplugged": _rtu_unplugged,
}


# -- the matrix -------------------------------------------------------------------------------

def summarise(name: str, runs: list[Run], rig: Rig | None, expect: str, seconds: float,
              notes: list[str]) -> dict:
    darks = [r.dark_ms for r in runs]
    res = {"name": name, "runs": len(runs),
           "samples": rig.samples if rig else 0,
           "verdicts": sum(len(v) for v in rig.verdicts.values()) if rig else 0,
           "false_pass": sum(r.false_pass for r in runs),
           "error_right_reason": sum(r.right for r in runs),
           "leds_dark": sum(bool(r.leds_dark) for r in runs),
           "dark_ms_max": None if not darks or None in darks else max(darks),
           "lost": (rig.lost + rig.doubled()) if rig else 0,
           "expect": expect,
           "reasons": sorted({re.sub(r"/dev/pts/\d+", "/dev/pts/N", r.reason)[:160]
                              for r in runs if r.reason})[:4],
           "seconds": round(seconds, 1)}
    if any(r.recovered is not None for r in runs):
        res["recovered"] = sum(bool(r.recovered) for r in runs)
    if any(r.lit_at_signal is not None for r in runs):
        res["lit_at_signal"] = sum(bool(r.lit_at_signal) for r in runs)
    if any("first_dark_ms" in r.extra for r in runs):
        firsts = [r.extra["first_dark_ms"] for r in runs]
        res["first_dark_ms_max"] = None if None in firsts else max(firsts)
    if any("relit" in r.extra for r in runs):
        res["relit_after_fault"] = sum(r.extra.get("relit", 0) for r in runs)
    waits = [r.extra["to_verdict_ms"] for r in runs if r.extra.get("to_verdict_ms") is not None]
    if waits:
        res["fault_to_verdict_ms_max"] = max(waits)
    if any("enospc_named" in r.extra for r in runs):
        res["enospc_named"] = sum(bool(r.extra["enospc_named"]) for r in runs)
        res["journal_event"] = next((r.extra["journal_events"][0] for r in runs
                                     if r.extra.get("journal_events")), None)
        if res["enospc_named"] < len(runs):
            notes.append("the JOURNAL event did not name 'No space left on device' in "
                         f"{len(runs) - res['enospc_named']} run(s): the failing write was a "
                         "short one (the disk filled up part way through the record), which "
                         "the journal reports as 'only N of M bytes were written'")
    if any("lit_ms" in r.extra for r in runs):
        res["lit_ms_max"] = max(r.extra["lit_ms"] for r in runs if "lit_ms" in r.extra)
    if any(r.extra.get("not_fired") for r in runs):
        missed = sum(bool(r.extra.get("not_fired")) for r in runs)
        notes.append(f"the fault did not fire in {missed} run(s)")
    if name == "sigkill":
        res["leds_dark"] = None
        notes.append("no code runs after SIGKILL, so nothing can darken the LEDs; in the "
                     "simulation the mock pins die with the process, on a device a released "
                     "GPIO line keeps its level until the restarted serve claims it dark: "
                     "dark_ms_max is that time (lit_at_signal runs), not a software reaction")
    if notes:
        res["notes"] = notes
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3, help="repeats per fault (default 3)")
    ap.add_argument("--only", default="", metavar="NAME[,NAME...]",
                    help=f"only these faults ({', '.join(ORDER)})")
    ap.add_argument("--keep", metavar="DIR", help="work in DIR and keep it (logs, traces)")
    args = ap.parse_args()
    names = [n.strip() for n in args.only.split(",") if n.strip()] or ORDER
    unknown = [n for n in names if n not in ORDER]
    if unknown or args.runs < 1:
        ap.error(f"unknown fault(s) {unknown}; known: {', '.join(ORDER)}" if unknown
                 else "--runs must be at least 1")

    base = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="glass-faults-"))
    base.mkdir(parents=True, exist_ok=True)
    head = reduced_head(base, **HEAD)
    t_all = time.monotonic()
    results = []
    extra: dict = {}
    specs = {s.name: s for s in HEAD_FAULTS}
    try:
        for name in names:
            say(f"{name}:")
            t = time.monotonic()
            notes: list[str] = []
            rig = None
            try:
                if name in NEW_LINK_RUNNERS:
                    (base / name).mkdir(parents=True, exist_ok=True)
                    res = {"name": name, "runs": args.runs,
                           **NEW_LINK_RUNNERS[name](base / name, args.runs * 5),
                           "expect": NEW_LINK_FAULTS[name],
                           "seconds": round(time.monotonic() - t, 1)}
                    results.append(res)
                    continue
                if name == "full_disk":
                    runs, rig, mechanism = full_disk(base, head, args.runs)
                    extra["enospc_mechanism"] = mechanism
                    if rig is None:
                        notes.append(mechanism)
                    expect = LINK_FAULTS[name]
                else:
                    spec = specs.get(name)
                    rig = Rig(base, name, head, plan=spec.plan if spec else "")
                    rig.start()
                    if spec is not None:
                        runs, expect = head_fault(rig, spec, args.runs), spec.expect
                        if spec.note:
                            notes.append(spec.note)
                    else:
                        expect = LINK_FAULTS[name]
                        runs = LINK_RUNNERS[name](rig, args.runs)
                res = summarise(name, runs, rig, expect, time.monotonic() - t, notes)
            except Exception as exc:  # one broken fault must not hide the others
                say(f"    FAILED: {type(exc).__name__}: {exc}")
                res = {"name": name, "runs": 0, "error": f"{type(exc).__name__}: {exc}",
                       "seconds": round(time.monotonic() - t, 1)}
            finally:
                if rig is not None:
                    rig.close()
            results.append(res)
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    ok = all(r.get("false_pass") == 0 and r.get("lost") == 0 and r.get("runs") for r in results)
    print(json.dumps({"faults": results, "runs_per_fault": args.runs,
                      "head": HEAD, **extra,
                      "dark_target_ms": DARK_TARGET_MS, "no_false_pass_no_loss": ok,
                      "seconds": round(time.monotonic() - t_all, 1)}, indent=1))


if __name__ == "__main__":
    sys.exit(main())
