"""Faults injected into the simulated head on purpose: a plan, read from the environment.

The fault benchmark (``benchmarks/faults.py``) runs ``glass-inspect serve`` as a separate
process, so SIGTERM and SIGKILL are real; it cannot reach into that process to break a part.
Instead it sets ``GLASS_INSPECT_SIM_FAULTS`` and the simulated parts break themselves, as the
real ones would, at the planned moment. Only the simulator reads the plan
(:class:`edge.sim.parts.SimParts` when it builds the parts); the runtime never sees it, and a
head without the variable behaves exactly as before.

The plan is a comma-separated list of ``KIND@N`` or ``KIND@N/PREFIX`` (``KIND:VALUE@N...`` for
the kinds that take a value): the fault fires at the ``N``-th event (1-based) of each sample
being inspected, or only of samples whose id starts with ``PREFIX``. The count starts again
whenever glass is placed on the stage (the verdict server places the glass of each INSPECT), so
``camera_timeout@3/CT`` is "the 3rd frame of every sample whose id starts with CT". The first six
kinds happen once; the silent ones below them last from their event to the end of that sample
(a fault of every sample: no prefix, ``@1``), and ``lost_steps`` until the stage is homed again,
as a real carriage stays where it slipped to. The kinds:

========================  ===================================================================
``camera_timeout@N``      the N-th frame of the sample is never taken: the camera is not armed
                          for it, so it ignores its trigger pulse (a trigger lost on the wire,
                          a sensor that dropped it) and the head's grab runs into its
                          ``grab_timeout_ms``
``bad_frame@N``           the N-th frame arrives cut short: only the first half of its rows
                          (a transfer that stopped), which the head's frame check refuses
``led_stall@N``           at the N-th frame, arming the camera stalls, while the LED group is
                          lit, for twice the head's ``max_on_ms`` (plus 20 ms): a driver call
                          that hangs; only the ring light's watchdog can darken the group
``stage_alarm@N``         during the N-th stage move of the sample (counted as the simulator
                          enters ``Run``), the hard limit switch trips: the GRBL simulator's
                          ``trip_limit()`` (``ALARM:1``, motion stops dead)
``stage_unplug@N``        during the N-th move the stage's USB cable is pulled: the simulator
                          closes its pseudo-terminal (``GrblSimulator.close()``), so the driver
                          reads EIO; the stage stays gone for the rest of the process
``engine_nan@N``          the N-th engine batch of the sample returns NaN scores (a broken
                          engine or GPU), which the pipeline refuses
``dead_led_group@N``      from the N-th frame on, the LED group lit for that frame gives no
                          light although its pin goes high (a dead driver or cable): the
                          camera sees the groups that are lit less that one
``ring_dark@N``           from the N-th frame on, no group gives light (the ring's supply)
``lens_cap@N``            from the N-th frame on, no light reaches the sensor: its dark level,
                          noise and hot pixels only (without ambient light the frames are
                          those of ``ring_dark``; the two causes differ, not the frames)
``defocus[:S]@N``         from the N-th frame on, the lens is out of focus: the scene (the
                          glass's light, before the sensor adds its noise) is blurred by a
                          Gaussian of S px (default 4), rendered with a margin so that what
                          lies just outside the view blurs into it
``gain_drift[:G]@N``      from the N-th frame on, the camera's gain is G times what it was
                          (default 2; 0.5 halves it): everything above the dark level, light,
                          shot and read noise and hot pixels, scales by G (then rounded to
                          whole DN and clipped at full scale)
``lost_steps[:D]@N``      the stepper motors slip during the N-th move: the carriage, and the
                          glass on it, ends D mm (default 2) short of the target along the
                          move, while the controller counts the move as made and reports the
                          commanded position (``GrblSimulator.lose_steps()``); the camera sees
                          the glass where the carriage really is, until homing finds the
                          switches again
========================  ===================================================================

The silent faults need the optics simulator (``camera.device = "sim"``); a replay camera
refuses them.

Two more variables, for a process that cannot be given :class:`~edge.sim.parts.SimOptions`:
``GLASS_INSPECT_SIM_TRACE=FILE`` logs every GPIO edge to FILE (``SimOptions.trace``), and
``GLASS_INSPECT_SIM_FAULT_LOG=FILE`` appends one JSON line per fired fault
(``{"t": time.monotonic(), "fault", "sample_id", "n", "pid"}``; the clock is the one the GPIO
trace uses, so a benchmark can measure from the fault to the LEDs going dark).
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)

ENV = "GLASS_INSPECT_SIM_FAULTS"
TRACE_ENV = "GLASS_INSPECT_SIM_TRACE"
LOG_ENV = "GLASS_INSPECT_SIM_FAULT_LOG"

CAMERA_KINDS = ("camera_timeout", "bad_frame", "led_stall")
STAGE_KINDS = ("stage_alarm", "stage_unplug", "lost_steps")
ENGINE_KINDS = ("engine_nan",)
# silent faults of the ring and the camera: from their frame to the end of the sample
OPTICS_KINDS = ("dead_led_group", "ring_dark", "lens_cap", "defocus", "gain_drift")
FRAME_KINDS = CAMERA_KINDS + OPTICS_KINDS
KINDS = CAMERA_KINDS + STAGE_KINDS + ENGINE_KINDS + OPTICS_KINDS
# kinds that take a value (KIND:VALUE@N): its default, and the range it must lie in
VALUES = {"defocus": (4.0, 0.5, 50.0), "gain_drift": (2.0, 0.05, 20.0),
          "lost_steps": (2.0, 0.01, 50.0)}

_ENTRY = re.compile(r"^(?P<kind>[a-z_]+)(?::(?P<value>[0-9]*\.?[0-9]+))?@(?P<n>[0-9]+)"
                    r"(?:/(?P<prefix>[A-Za-z0-9_.-]+))?$")
_POLL_S = 0.002  # how often the stage watcher looks at the simulator's state


class FaultPlanError(ValueError):
    """A fault plan that cannot be read; the message names the entry."""


@dataclass(frozen=True)
class Fault:
    kind: str
    n: int  # the event of the sample it fires at, 1-based
    prefix: str = ""  # only samples whose id starts with it; "" = every sample
    value: float | None = None  # for the kinds in VALUES: given, or None for the default

    def applies(self, sample_id: str | None) -> bool:
        return sample_id is not None and sample_id.startswith(self.prefix)

    @property
    def amount(self) -> float:
        """The value, or the kind's default."""
        return self.value if self.value is not None else VALUES[self.kind][0]

    def __str__(self) -> str:
        value = f":{self.value:g}" if self.value is not None else ""
        return f"{self.kind}{value}@{self.n}" + (f"/{self.prefix}" if self.prefix else "")


@dataclass(frozen=True)
class FaultPlan:
    faults: tuple[Fault, ...] = ()

    @classmethod
    def parse(cls, text: str) -> FaultPlan:
        faults = []
        for raw in text.split(","):
            entry = raw.strip()
            if not entry:
                continue
            m = _ENTRY.match(entry)
            if m is None:
                raise FaultPlanError(f"fault plan entry {entry!r}: expected KIND@N or "
                                     f"KIND@N/PREFIX (KIND one of {', '.join(KINDS)}; "
                                     f"{', '.join(VALUES)} also KIND:VALUE@N)")
            if m["kind"] not in KINDS:
                raise FaultPlanError(f"fault plan entry {entry!r}: unknown fault "
                                     f"{m['kind']!r}; known: {', '.join(KINDS)}")
            if int(m["n"]) < 1:
                raise FaultPlanError(f"fault plan entry {entry!r}: N counts from 1")
            value = None
            if m["value"] is not None:
                if m["kind"] not in VALUES:
                    raise FaultPlanError(f"fault plan entry {entry!r}: {m['kind']} takes no "
                                         f"value; those that do: {', '.join(VALUES)}")
                value = float(m["value"])
                _, lo, hi = VALUES[m["kind"]]
                if not lo <= value <= hi:
                    raise FaultPlanError(f"fault plan entry {entry!r}: {m['kind']}'s value "
                                         f"must lie within {lo:g}-{hi:g}")
            faults.append(Fault(m["kind"], int(m["n"]), m["prefix"] or "", value))
        return cls(tuple(faults))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> FaultPlan:
        environ = os.environ if environ is None else environ
        return cls.parse(environ.get(ENV, ""))

    def __bool__(self) -> bool:
        return bool(self.faults)

    def __str__(self) -> str:
        return ",".join(map(str, self.faults))

    def kinds(self, kinds: Iterable[str]) -> tuple[Fault, ...]:
        wanted = set(kinds)
        return tuple(f for f in self.faults if f.kind in wanted)


class FaultInjector:
    """Counts the events of the sample being inspected and fires the planned faults.

    Built by :class:`edge.sim.parts.SimParts` when the plan is not empty; the camera, the
    stage simulator and the engine are hooked to it as they are built."""

    def __init__(self, plan: FaultPlan, max_on_ms: float = 250.0,
                 log_path: str | None = None) -> None:
        self.plan = plan
        self.stall_s = 2.0 * max_on_ms / 1000.0 + 0.02
        self.log_path = log_path
        self.fired: list[dict] = []
        self._lock = threading.Lock()
        self._sample: str | None = None
        self._counts = {"frame": 0, "move": 0, "batch": 0}
        # the silent faults in force for the rest of the sample: kind -> what it needs
        self._active: dict[str, object] = {}
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None

    # -- bookkeeping ------------------------------------------------------------------------
    def begin(self, sample_id: str | None) -> None:
        """Glass ``sample_id`` was placed on the stage: its counts start from zero."""
        with self._lock:
            self._sample = sample_id
            self._counts = dict.fromkeys(self._counts, 0)
            self._active = {}

    def _next(self, event: str, kinds: tuple[str, ...]) -> Fault | None:
        """Count one ``event`` of the current sample; the fault planned for it, if any."""
        with self._lock:
            self._counts[event] += 1
            n, sample = self._counts[event], self._sample
        for f in self.plan.kinds(kinds):
            if f.n == n and f.applies(sample):
                self._record(f, sample)
                return f
        return None

    def _record(self, f: Fault, sample: str | None) -> None:
        rec = {"t": time.monotonic(), "fault": f.kind, "sample_id": sample, "n": f.n,
               "pid": os.getpid()}
        self.fired.append(rec)
        log.warning("simulated fault: %s in sample %s", f, sample)
        if self.log_path:
            try:
                with open(self.log_path, "a") as out:
                    out.write(json.dumps(rec) + "\n")
            except OSError as exc:  # the fault still happens; only its record is missing
                log.error("cannot write the fault log %s: %s", self.log_path, exc)

    # -- the camera -------------------------------------------------------------------------
    def attach_camera(self, camera) -> None:
        """Hook a simulated camera (``load``, ``arm``, ``grab``, ``expose``) when the plan has
        camera faults; placing glass (``load``) always starts a new sample's counts."""
        load = camera.load

        def placed(sample, *args, **kw):
            self.begin(getattr(sample, "sample_id", None))
            return load(sample, *args, **kw)

        camera.load = placed
        if not self.plan.kinds(FRAME_KINDS):
            return
        silent = self.plan.kinds(OPTICS_KINDS)
        if silent and getattr(camera, "optics", None) is None:
            raise FaultPlanError(f"fault {silent[0]} needs the optics simulator "
                                 "(camera.device = \"sim\"), not a replay camera")
        if silent:
            self._attach_optics(camera)
        arm, grab = camera.arm, camera.grab
        pending: dict[str, Fault | None] = {"frame": None}

        def armed() -> None:
            f = self._next("frame", FRAME_KINDS)
            if f is not None and f.kind in OPTICS_KINDS:
                self._activate(f, camera)
            pending["frame"] = f
            if f is not None and f.kind == "led_stall":
                time.sleep(self.stall_s)  # with the LED group lit
            if f is not None and f.kind == "camera_timeout":
                return  # not armed: the trigger pulse that follows is not seen
            arm()

        def grabbed(timeout_s: float):
            frame = grab(timeout_s)
            f, pending["frame"] = pending["frame"], None
            if f is not None and f.kind == "bad_frame":
                return np.ascontiguousarray(frame[: frame.shape[0] // 2])
            return frame

        camera.arm, camera.grab = armed, grabbed

    def _activate(self, f: Fault, camera) -> None:
        """Silent fault ``f`` holds from now to the end of the sample."""
        if f.kind == "dead_led_group":
            # the group the head lit for this frame (read off the pins, as the camera does)
            lit = {k for k, pin in enumerate(camera.led_pins) if camera.wiring.state(pin)}
            if not lit:
                log.warning("simulated fault %s: no LED group lit at that frame", f)
            value: object = lit
        elif f.kind in ("defocus", "gain_drift"):
            value = f.amount
        else:
            value = True
        with self._lock:
            if f.kind == "dead_led_group":
                value = set(self._active.get(f.kind, set())) | lit
            self._active[f.kind] = value

    def _attach_optics(self, camera) -> None:
        """The camera sees the silent faults: groups that give no light, no light at all, a
        blurred scene, another gain."""
        expose = camera.expose
        dark = float(camera.optics.sim.dark_offset_dn)
        max_dn = float(camera.optics.max_dn)
        rng = np.random.default_rng()

        def exposed(lit, stage_mm, exposure_ms=None):
            with self._lock:
                active = dict(self._active)
            if "ring_dark" in active or "lens_cap" in active:
                lit = ()
            dead = active.get("dead_led_group")
            if dead:
                lit = tuple(k for k in lit if k not in dead)
            camera.blur_px = float(active.get("defocus", 0.0))
            frame = expose(lit, stage_mm, exposure_ms)
            g = active.get("gain_drift")
            if g is not None:
                # the ADC quantises an analogue value with noise on it, not a whole number
                # of DN: the uniform dither keeps halved values from rounding to even ones
                out = dark + float(g) * (frame.astype(np.float32) - dark)
                out += rng.uniform(-0.5, 0.5, out.shape).astype(np.float32)
                frame = np.clip(np.floor(out + 0.5), 0, max_dn).astype(np.uint16)
            return frame

        camera.expose = exposed

    # -- the stage --------------------------------------------------------------------------
    def attach_stage(self, grbl) -> None:
        """Watch the GRBL simulator's moves when the plan has stage faults."""
        if not self.plan.kinds(STAGE_KINDS) or self._watcher is not None:
            return
        self._watcher = threading.Thread(target=self._watch, args=(grbl,),
                                         name="sim-fault-stage", daemon=True)
        self._watcher.start()

    def _watch(self, grbl) -> None:
        running = False
        while not self._stop.wait(_POLL_S):
            with self._lock:
                sample = self._sample
            if sample is None or not any(f.applies(sample)
                                         for f in self.plan.kinds(STAGE_KINDS)):
                running = False
                continue
            try:
                now = grbl.state == "Run"
            except Exception:  # the simulator is gone (unplugged, closed)
                return
            if now and not running:
                f = self._next("move", STAGE_KINDS)
                if f is not None and f.kind == "stage_alarm":
                    grbl.trip_limit()
                elif f is not None and f.kind == "lost_steps":
                    grbl.lose_steps(f.amount)
                elif f is not None and f.kind == "stage_unplug":
                    grbl.close()
                    return
            running = now

    # -- the engine -------------------------------------------------------------------------
    def engine(self, engine):
        """``engine``, or one whose planned batches return NaN."""
        return _NanEngine(engine, self) if self.plan.kinds(ENGINE_KINDS) else engine

    def close(self) -> None:
        self._stop.set()
        if self._watcher is not None and self._watcher is not threading.current_thread():
            self._watcher.join(timeout=1.0)


class _NanEngine:
    """The engine, except that a planned batch comes back as NaN scores."""

    def __init__(self, engine, injector: FaultInjector) -> None:
        self._engine, self._injector = engine, injector

    def __getattr__(self, name: str):
        return getattr(self._engine, name)

    def _spoil(self, out: np.ndarray) -> np.ndarray:
        if self._injector._next("batch", ENGINE_KINDS) is not None:
            return np.full_like(out, np.nan)
        return out

    def infer(self, batch: np.ndarray) -> np.ndarray:
        return self._spoil(self._engine.infer(batch))

    def infer_stream(self, batches: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        for out in self._engine.infer_stream(batches):
            yield self._spoil(out)


def with_engine_faults(engine, injector: FaultInjector | None):
    """For :mod:`edge.assembly` on a simulated head: ``engine`` itself unless the fault plan
    asks for engine faults."""
    return engine if injector is None else injector.engine(engine)


def make_injector(max_on_ms: float, plan: str | None = None,
                  environ: Mapping[str, str] | None = None) -> FaultInjector | None:
    """The injector of ``plan`` (text), else of the plan in ``GLASS_INSPECT_SIM_FAULTS``;
    None when there is none."""
    environ = os.environ if environ is None else environ
    plan = FaultPlan.parse(plan) if plan is not None else FaultPlan.from_env(environ)
    if not plan:
        return None
    log.warning("simulated head with a fault plan: %s", plan)
    return FaultInjector(plan, max_on_ms, environ.get(LOG_ENV) or None)


def trace_from_env(environ: Mapping[str, str] | None = None) -> str | None:
    """The GPIO trace file named by ``GLASS_INSPECT_SIM_TRACE``, or None."""
    environ = os.environ if environ is None else environ
    return environ.get(TRACE_ENV) or None
