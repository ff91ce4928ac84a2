"""The inspection head: one sample = home if needed, then per RoI move, settle, 6 frames.

Two threads per sample:

* the **caller's thread acquires**: it owns the hardware (stage, ring light, camera) and is the
  thread that SIGTERM and SIGINT interrupt, so the way out of any failure passes through here:
  per RoI it moves the stage, waits for it to settle, then 6 times lights one LED group, pulses
  the camera trigger, keeps the group lit for the exposure, darkens it and grabs the frame;
* **one worker runs the pipeline** (:func:`edge.inspection.inspect_sample`) on RoI k while RoI
  k+1 is being acquired. A queue of one RoI between them bounds the memory to three RoIs (one
  in the pipeline, one queued, one being acquired).

Fail-safe: a camera timeout, a bad frame, a stage error or alarm, the LED watchdog, an abort
from the line controller, or an engine error all end in an ERROR verdict naming the RoI and the
cause. On every way out the LEDs are dark, and if the stage was moving it gets a feed hold and a
soft reset. An acquisition failure travels to the worker inside the queue, so the one loop that
builds verdicts (``inspect_sample``) also builds this one; a pipeline failure stops the
acquisition at its next step.

**After an LED watchdog trip** (a group lit past ``max_on_ms``, e.g. the acquisition thread
starved of CPU between lighting and darkening) the sample ends in ERROR with the LEDs dark, as
for any fault. The next sample first checks the ring: every trip is counted (``time.monotonic``
of each, kept by the light), and ``watchdog_max_trips`` trips within ``watchdog_window_s`` keep
the head down, every later verdict ERROR with that reason, until it is restarted; below that
the trip is cleared and :meth:`Head.self_test` lights each group once under the watchdog, at its
own exposure, where the stage stands (the sample just placed: its haze is what a dark-field
camera sees), and compares each frame's mean with a dark frame's. A group that does not show
``self_test_min_dn`` above the dark frame also keeps the head down (a dead driver, a cut wire:
the frames would pass scratches along that direction); a self-test that cannot finish (another
trip, a camera timeout) gives this sample ERROR and is tried again with the next one. The
self-test costs seven frame times once per trip, so it runs before the sample rather than
delaying the tripped sample's verdict. :meth:`Head.watchdog_health` is what the health file
shows.

Choices: the RoIs are visited in serpentine order (row by row, every other row backwards),
starting from whichever end of that path is nearer to the stage, so the next sample starts
where the last one ended; the verdict does not depend on the order. ``acquisition_s`` counts
the stage moves (including their settle time) and one frame time per frame: the time the optics
need, which the software should hide behind.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from edge import calibration as calib
from edge.config import N_STATES, HeadConfig
from edge.engine import Engine
from edge.hardware import HardwareError
from edge.hardware.camera import Camera, check_frame
from edge.hardware.light import Light
from edge.hardware.stage import MoveCancelled, Stage, StageError
from edge.inspection import RoiInput, inspect_sample, reason_of
from edge.recording import SampleWriter
from edge.selfcheck import SelfCheck
from edge.truth import Sample
from edge.verdict import RoiResult, Status, Verdict, error

log = logging.getLogger(__name__)

_PUT_POLL_S = 0.05


ABORTED = "inspection aborted on request"


def abort_reason(abort: threading.Event) -> str:
    """Why ``abort`` was set: its ``reason`` when whoever set it gave one (the verdict server
    stopping on SIGTERM), else a request (the line controller, the operator)."""
    return getattr(abort, "reason", None) or ABORTED


class Aborted(HardwareError):
    """The inspection was stopped on request (line controller, operator)."""


class SelfTestFailed(HardwareError):
    """The ring's self-test did not see every LED group; the message names them."""


class AcquisitionFailed(HardwareError):
    """Acquiring RoI ``index`` failed while doing ``what``; ``cause`` says why."""

    def __init__(self, index: int, what: str, cause: BaseException):
        self.index, self.cause = index, cause
        reason = str(cause) if isinstance(cause, HardwareError) else (
            f"internal error ({type(cause).__name__}: {cause})")
        where = f"RoI {index}" if index >= 0 else "before the first RoI"
        super().__init__(f"{where}, {what}: {reason}" if what else f"{where}: {reason}")


@dataclass
class Acquisition:
    """What the optics did for one sample, for the verdict's timings and the benchmark."""

    moves_s: float = 0.0
    frames: int = 0
    frame_time_s: float = 0.0
    busy_s: float = 0.0  # wall time of the acquisition thread, moves to last frame
    current: int = -1  # the RoI being acquired
    timestamps: dict[int, list[float]] = field(default_factory=dict)

    @property
    def optics_s(self) -> float:
        return self.moves_s + self.frames * self.frame_time_s


def exposures_ms(cfg: HeadConfig, calibration: calib.Calibration | None) -> tuple[float, ...]:
    """Per LED group, the exposure the head takes its frame with: the head file's, times the
    calibration's LED balance (``led_exposure_scale``) when it has one. Each group's light dose
    is set by its exposure because the LED stays lit for the whole exposure; the camera's
    exposure control is set before each group's trigger, so a sensor must apply it to the next
    triggered frame (V4L2 controls do; the calibration's balance check would show a sensor
    that does not). :meth:`edge.calibration.Calibration.check_for` refuses scales that break the
    LED on-time limit or the frame time."""
    base = cfg.camera.exposure_ms
    scale = calibration.led_exposure_scale if calibration is not None else None
    if not scale:
        return (base,) * N_STATES
    return tuple(base * float(k) for k in scale)


def serpentine(columns: int, rows: int) -> list[int]:
    order = []
    for r in range(rows):
        cols = range(columns) if r % 2 == 0 else range(columns - 1, -1, -1)
        order += [r * columns + c for c in cols]
    return order


class Head:
    def __init__(self, cfg: HeadConfig, ring: Light, stage: Stage, camera: Camera,
                 engine: Engine, calibration: calib.Calibration | None = None,
                 record_dir: str | None = None):
        self.cfg, self.ring, self.stage, self.camera = cfg, ring, stage, camera
        self.engine, self.calibration, self.record_dir = engine, calibration, record_dir
        self.shape = camera.shape
        self.grid = cfg.stage.roi_grid
        self.exposures_ms = exposures_ms(cfg, calibration)
        camera.configure(cfg.camera.exposure_ms, cfg.camera.gain)
        self._exposure_ms = cfg.camera.exposure_ms  # what the camera is set to now
        self.last: Acquisition | None = None
        self.down: str | None = None  # why the head inspects nothing until it is restarted
        self._unverified: str | None = None  # a cleared watchdog trip awaiting its self-test
        self.self_tests = 0  # self-tests passed
        self.self_test_levels: list[float] = []  # the last one's, DN above dark per group
        self.clock = time.monotonic  # the clock of the light's trip times
        # the per-sample hardware self-check (edge.selfcheck), in the pipeline worker: it keeps
        # the camera noise of the samples that passed, for the next ones
        self.self_check = SelfCheck(cfg)

    # -- geometry -------------------------------------------------------------------------------
    def stage_target(self, index: int) -> tuple[float, float]:
        ox, oy = self.grid.roi_origin_mm(index)
        return (self.grid.origin_mm[0] + ox, self.grid.origin_mm[1] + oy)

    def route(self) -> list[int]:
        order = serpentine(self.grid.columns, self.grid.rows)
        here = self.stage.position[:2] if len(self.stage.position) >= 2 else None
        if here is not None and (math.dist(here, self.stage_target(order[-1]))
                                 < math.dist(here, self.stage_target(order[0]))):
            order.reverse()
        return order

    # -- one sample -----------------------------------------------------------------------------
    def inspect(self, sample_id: str, abort: threading.Event | None = None,
                progress: Callable[[int, int], None] | None = None,
                on_roi: Callable[[RoiResult, np.ndarray], None] | None = None,
                truth: Sample | None = None,
                status: Callable[[str], None] | None = None) -> Verdict:
        """Inspect the sample on the stage. Never raises for a hardware or pipeline failure (the
        verdict is ERROR); SystemExit and KeyboardInterrupt pass through, after the LEDs went
        dark and the stage was stopped."""
        abort = abort or threading.Event()
        total = self.grid.count
        acq = Acquisition(frame_time_s=self.cfg.camera.frame_time_ms / 1000.0)
        self.last = acq
        before, tests = time.monotonic(), self.self_tests
        refused = self._ring_ready(status)
        ready_s = time.monotonic() - before
        if refused is not None:
            return error(sample_id, refused, engine=self.engine.identity,
                         calibration=self.calibration.identity if self.calibration else None,
                         timings_s={"self_test": ready_s, "moves": 0.0, "frames": 0.0,
                                    "acquisition": 0.0})
        handoff: queue.Queue = queue.Queue(maxsize=1)
        done = threading.Event()  # the worker has finished, early or not
        out: dict[str, Verdict] = {}
        writer = self._writer(sample_id, truth)
        finished = [0]

        def processed(r: RoiResult, frames: np.ndarray) -> None:
            finished[0] += 1
            if writer is not None:
                self._record(writer, r, frames, acq)
            if on_roi is not None:
                on_roi(r, frames)
            if progress is not None:
                progress(finished[0], total)

        def fed():
            for _ in range(total):
                item = handoff.get()
                if abort.is_set():  # do not finish the queued RoIs first
                    yield _failed(AcquisitionFailed(acq.current, "",
                                                    Aborted(abort_reason(abort))))
                if item is None:
                    return
                yield item

        def work() -> None:
            try:
                out["verdict"] = inspect_sample(
                    sample_id, fed(), total, self.engine, self.calibration, self.cfg,
                    on_roi=processed if (writer or on_roi or progress) else None,
                    self_check=self.self_check, exposures_ms=self.exposures_ms,
                    position_lost=self.stage.lose_position)
            finally:
                done.set()

        worker = threading.Thread(target=work, name=f"pipeline-{sample_id}", daemon=True)
        worker.start()
        t0 = time.monotonic()
        try:
            self._acquire(handoff, done, abort, acq, status)
        except AcquisitionFailed as failure:
            self.ring.all_dark()
            if isinstance(failure.__cause__, StageError):  # moving, or unknown: stop it for sure
                self.stage.abort()
            self._hand(handoff, _failed(failure), done)
        except BaseException:  # SIGTERM, Ctrl-C: dark, stopped, and out
            self.ring.all_dark()
            self.stage.abort()
            self._hand(handoff, None, done)
            raise
        finally:
            self.ring.all_dark()
            acq.busy_s = time.monotonic() - t0
        if abort.is_set():
            self._hand(handoff, None, done)
        worker.join()
        verdict = out.get("verdict") or error(sample_id, "the pipeline stopped without a verdict")
        if abort.is_set() and verdict.status is not Status.ERROR:
            verdict = error(sample_id, abort_reason(abort), verdict.rois, verdict.engine,
                            verdict.calibration)
        verdict.timings_s.update(moves=acq.moves_s, frames=acq.frames * acq.frame_time_s,
                                 acquisition=acq.optics_s)
        if self.self_tests != tests:
            verdict.timings_s["self_test"] = ready_s
        if self.ring.tripped and verdict.status is Status.ERROR:
            verdict.reason += f" ({self._trip_outlook()})"
        if writer is not None:
            self._close_writer(writer)
        return verdict

    # -- the ring after a watchdog trip -----------------------------------------------------
    def recent_trips(self, now: float | None = None) -> int:
        """Watchdog trips within the head file's window, up to ``now`` (:attr:`clock`)."""
        now = self.clock() if now is None else now
        window = self.cfg.illumination.watchdog_window_s
        return sum(1 for t in self.ring.trip_times() if now - t <= window)

    def _too_many_trips(self, recent: int) -> str:
        ill = self.cfg.illumination
        # the line sees the first 64 characters of a reason: the count and the window first
        times = "time" if recent == 1 else "times"
        return (f"LED watchdog tripped {recent} {times} in {ill.watchdog_window_s:g} s: down until "
                f"restarted (watchdog_max_trips = {ill.watchdog_max_trips}); the last trip: "
                f"{self.ring.fault}")

    def _trip_outlook(self) -> str:
        ill = self.cfg.illumination
        recent = self.recent_trips()
        if recent >= ill.watchdog_max_trips:
            if self.down is None:  # decided now, so a run stops before its next sample
                self.down = self._too_many_trips(recent)
                log.error("%s", self.down)
            return (f"trip {recent} within {ill.watchdog_window_s:g} s, the limit: the head "
                    "stays down until it is restarted")
        return (f"trip {recent} of {ill.watchdog_max_trips} allowed within "
                f"{ill.watchdog_window_s:g} s: the ring is self-tested before the next sample")

    def _ring_ready(self, status: Callable[[str], None] | None) -> str | None:
        """None when the ring may light for this sample; else why the sample is ERROR (the
        head down, or a self-test after a watchdog trip that could not finish)."""
        if self.down is not None:
            return self.down
        ring = self.ring
        if ring.tripped:
            recent = self.recent_trips()
            if recent >= self.cfg.illumination.watchdog_max_trips:
                self.down = self._too_many_trips(recent)
                log.error("%s", self.down)
                return self.down
            self._unverified = ring.fault
            ring.rearm()
        if self._unverified is None:
            return None
        if status:
            status("self-test of the LED ring after a watchdog trip")
        try:
            levels = self.self_test()
        except SelfTestFailed as exc:
            self.down = (f"LED self-test failed: {exc}; down until restarted (it ran after a "
                         f"watchdog trip: {self._unverified})")
            log.error("%s", self.down)
            return self.down
        except Exception as exc:  # another trip, a camera timeout: says nothing about the ring
            why = (f"LED self-test after a watchdog trip did not finish: {reason_of(exc)}; "
                   "tried again before the next sample")
            log.error("%s", why)
            return why
        self._unverified = None
        self.self_tests += 1
        log.warning("LED ring self-test passed after a watchdog trip (%d within %g s): "
                    "DN above dark per group %s; serving again", self.recent_trips(),
                    self.cfg.illumination.watchdog_window_s, [round(v, 2) for v in levels])
        return None

    def self_test(self) -> list[float]:
        """Each LED group's mean level above a dark frame, in DN, from one frame per group at
        its own exposure under the watchdog, the stage where it stands. Raises
        :class:`SelfTestFailed` naming every group under ``self_test_min_dn``; the LEDs are dark
        on every way out.

        The mean, not a median: clean glass in dark field lifts a 12-bit frame by a few DN,
        finer than one DN step of a median, while over a whole frame the mean's noise is
        thousandths of a DN; hot pixels and the black level are in both frames and cancel."""
        ill = self.cfg.illumination
        try:
            dark = float(np.mean(self.expose(None)[0], dtype=np.float64))
            levels = [float(np.mean(self.expose(k)[0], dtype=np.float64)) - dark
                      for k in range(N_STATES)]
        finally:
            self.ring.all_dark()
        self.self_test_levels = levels
        unseen = [k for k, v in enumerate(levels) if v < ill.self_test_min_dn]
        if unseen:
            what = ", ".join(f"group {k} ({ill.states[k].angle_deg:g} deg, header pin "
                             f"{ill.states[k].pin}) {levels[k]:.2f} DN" for k in unseen)
            raise SelfTestFailed(
                f"group{'s' if len(unseen) > 1 else ''} {', '.join(map(str, unseen))} not seen "
                f"({what} above the dark frame of {dark:.1f} DN, at least "
                f"{ill.self_test_min_dn:g} DN expected)")
        return levels

    def watchdog_health(self) -> dict:
        """The LED watchdog as the health file shows it: trips since the start and within the
        window, the limit, and ``state``: ``ok``, ``self-test due`` or ``down`` (with why)."""
        ill = self.cfg.illumination
        recent = self.recent_trips()
        down = self.down
        if down is None and self.ring.tripped and recent >= ill.watchdog_max_trips:
            down = self._too_many_trips(recent)  # decided for good at the next sample
        state = ("down" if down is not None else
                 "self-test due" if self.ring.tripped or self._unverified else "ok")
        out = {"state": state, "trips": self.ring.trip_count, "recent": recent,
               "window_s": ill.watchdog_window_s, "max_trips": ill.watchdog_max_trips,
               "self_tests_passed": self.self_tests}
        if down is not None:
            out["reason"] = down
        return out

    def _hand(self, handoff: queue.Queue, item, done: threading.Event) -> bool:
        """Put ``item`` for the worker unless it has finished; never blocks forever."""
        while not done.is_set():
            try:
                handoff.put(item, timeout=_PUT_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def expose(self, state: int | None,
               exposure_ms: float | None = None) -> tuple[np.ndarray, float]:
        """One checked frame under LED group ``state`` (None: every group dark, a dark frame):
        light, let the LEDs settle, arm, trigger, expose, darken, grab. Returns the frame and the
        time of its trigger. On a failure the caller darkens the ring (see :meth:`inspect`).

        The exposure is the group's (the calibration's LED balance, :func:`exposures_ms`), or
        ``exposure_ms`` when given (the calibration measuring at its own exposures); the
        camera's exposure control is set only when it changes."""
        cfg = self.cfg
        if exposure_ms is None:
            exposure_ms = (cfg.camera.exposure_ms if state is None
                           else self.exposures_ms[state])
        if exposure_ms != self._exposure_ms:
            self.camera.configure(exposure_ms, cfg.camera.gain)
            self._exposure_ms = exposure_ms
        if state is not None:
            self.ring.on(state)
            time.sleep(cfg.illumination.settle_ms / 1000.0)
        self.camera.arm()
        # stamped before the pulse: a thread pre-empted after it must not date the frame late
        # (the next frame cannot start before this one was grabbed)
        stamp = time.time()
        self.ring.pulse_trigger()
        time.sleep(exposure_ms / 1000.0)
        if state is not None:
            self.ring.off()
        frame = self.camera.grab(cfg.camera.grab_timeout_ms / 1000.0)
        return check_frame(frame, self.shape, cfg.camera.bit_depth, "the frame"), stamp

    def _acquire(self, handoff: queue.Queue, done: threading.Event, abort: threading.Event,
                 acq: Acquisition, status: Callable[[str], None] | None) -> None:
        cfg = self.cfg
        settle_s = cfg.stage.settle_ms / 1000.0
        angles = cfg.illumination.angles_deg

        def stop() -> bool:
            return done.is_set() or abort.is_set()

        index, what = -1, "getting the stage ready"
        try:
            self.stage.ready()
            for index in self.route():
                if stop():
                    return
                acq.current = index
                x, y = self.stage_target(index)
                what = f"the move to ({x:.1f}, {y:.1f}) mm"
                if status:
                    status(f"RoI {index}: moving to ({x:.1f}, {y:.1f}) mm")
                acq.moves_s += self.stage.move_to(x, y, cancel=stop)
                time.sleep(settle_s)
                acq.moves_s += settle_s
                if status:
                    status(f"RoI {index}: taking {N_STATES} frames")
                frames = np.empty((N_STATES, *self.shape), np.uint16)
                stamps = []
                for state in range(N_STATES):
                    if stop():
                        return
                    what = f"LED group {state} ({angles[state]:g} deg)"
                    frames[state], stamp = self.expose(state)
                    stamps.append(stamp)
                    acq.frames += 1
                acq.timestamps[index] = stamps
                self._hand(handoff, RoiInput(index, self.grid.roi_origin_mm(index),
                                             lambda f=frames: f), done)
        except MoveCancelled as exc:
            cause = Aborted(abort_reason(abort)) if abort.is_set() else exc
            raise AcquisitionFailed(index, what, cause) from exc
        except Exception as exc:
            raise AcquisitionFailed(index, what, exc) from exc

    # -- raw recording --------------------------------------------------------------------------
    def _writer(self, sample_id: str, truth: Sample | None) -> SampleWriter | None:
        if not self.record_dir:
            return None
        cal_id = self.calibration.identity.get("sha256") if self.calibration else None
        try:
            w = SampleWriter(self.record_dir, sample_id, self.cfg, cal_id, shape=self.shape,
                             exposures_ms=self.exposures_ms)
            if truth is not None:
                w.set_truth(truth)
            return w
        except Exception as exc:  # recording is a by-product: it never changes a verdict
            log.error("%s: not recording this sample: %s", sample_id, exc)
            return None

    def _record(self, writer: SampleWriter, r: RoiResult, frames: np.ndarray,
                acq: Acquisition) -> None:
        try:
            writer.add_roi(r.index, r.origin_mm, frames, acq.timestamps[r.index])
        except Exception as exc:
            log.error("recording RoI %d failed: %s", r.index, exc)

    def _close_writer(self, writer: SampleWriter) -> None:
        try:
            writer.close()
        except Exception as exc:
            log.error("the recording of this sample is incomplete: %s", exc)


def _failed(failure: AcquisitionFailed) -> RoiInput:
    """A RoI whose frames never came: the worker raises the failure where it would read them."""

    def frames():
        raise failure

    return RoiInput(failure.index, (0.0, 0.0), frames)
