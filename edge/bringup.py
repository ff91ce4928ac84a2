"""Bringing a head up part by part: what ``glass-inspect check stage|lights|camera|trigger`` does.

Each check builds only the parts it needs (:func:`edge.assembly.build_parts`), so the others may
still be missing: no camera plugged in does not stop the stage check, no stage the camera check.
Each reports as it goes, through ``say``, one line per move, LED group or frame, in plain words
with units, and returns an :class:`Outcome`: passed or not, the reason, and the numbers.

* **stage**: get ready (home or unlock, as the controller needs; ``home=True`` homes anyway, to
  try the switches), then tour the head's RoIs in the head's serpentine order; per move the
  driver's planned time (its trapezoidal profile from the feed and the controller's
  acceleration), the measured time (command sent to Idle reported) and the position error (the
  controller's reported position against the target). It passes when every move ends within the
  tolerance of its target.
* **lights**: each LED group in turn, lit ``flashes`` times for ``on_ms`` under the ring light's
  watchdog, named by index, direction and header pin, so a technician sees which group is which.
  Every group is dark on every way out (an error, Ctrl-C, SIGTERM).
* **camera**: frames at the head's exposure, every LED dark or one group lit: level (mean and
  median over the black level), temporal noise (from frame pairs), saturated share, a focus
  measure, and each frame as PNG.
* **trigger**: each frame's time stamp against its trigger edge and its LED group's edges: the
  delay per frame and its spread; a frame before its trigger, or outside the window its trigger
  allows, is flagged.

Choices, where the sources leave room:

* **Stage tolerance**: 0.01 mm, or one step where the controller's resolution (``$100``,
  ``$101``) is coarser: a stepper stops on its step grid, so half a step off is normal and a
  whole one is not. The position compared is the controller's own step count (GRBL has no
  encoder): a move that lost steps is found by homing again, not here.
* **Noise** is the standard deviation of the difference of two frames taken one after the other,
  divided by sqrt(2): fixed patterns (hot pixels, the scene, vignetting) cancel, only temporal
  noise is left.
* **Focus** is the variance of the 4-neighbour Laplacian of the green plane (the mean of the two
  green sites of each Bayer cell, so the colour mosaic adds no edges). Nothing is trimmed: in
  dark field the sharp things are few bright pixels (dust, a scratch), which a trimmed measure
  would throw away; so hot pixels count too, and the measure compares frames of one scene (while
  focusing), not heads. What temporal noise alone gives is measured beside it (the same measure
  on the difference of consecutive frames, halved): a value near it means there is nothing sharp
  under the camera to focus on (put a target with edges there: the calibration dot grid).
* **Black level**: ``black`` when given, else the calibration's dark level (the head file's
  calibration file, at the group's exposure), else the simulated sensor's offset for a simulated
  camera; a real camera without either is measured from 0 DN, and the report says so.
* **Time stamps**: all on the monotonic clock (``time.monotonic()``, CLOCK_MONOTONIC). Trigger
  and LED edges on the simulated head are the simulated wiring's own pin edges (gpiozero's
  MockFactory pins); on real GPIO they are taken on the host at the moment the pin is written
  (libgpiod sets a line synchronously). A V4L2 frame's stamp is the driver's buffer time stamp
  when the driver keeps it on the monotonic clock: the start of the exposure or the end of the
  frame, as its flags say; otherwise, and for the simulated camera, the moment the frame was
  handed over. The window a frame must fall in: a start-of-exposure stamp between the trigger
  and the moment its LED went dark; an end-of-frame or hand-over stamp no earlier than the
  exposure's end and no later than the head's grab timeout after the trigger
  (``camera.grab_timeout_ms``: the head's own limit for a late frame).
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge.assembly import CAMERA, GPIO, STAGE, Bench, build_parts
from edge.config import HeadConfig
from edge.hardware import HardwareError
from edge.hardware.camera import check_frame
from edge.hardware.v4l2_device import DQBUF, V4L2Device

log = logging.getLogger(__name__)

Say = Callable[[str], None]

DEFAULT_TOLERANCE_MM = 0.01
#: the share of the LED's maximum on-time a lighting takes by default: the watchdog's timer thread
#: must not lose a race against a slow ``off()``
ON_TIME_SHARE = 0.8
#: what the stamp of a frame marks
START_OF_EXPOSURE, END_OF_FRAME, HANDED_OVER = "start of exposure", "end of frame", "handed over"

# V4L2 buffer flags (linux/videodev2.h): which clock the time stamp is on, and what it marks
_TIMESTAMP_MASK, _TIMESTAMP_MONOTONIC = 0x0000E000, 0x00002000
_TSTAMP_SRC_MASK, _TSTAMP_SRC_SOE = 0x00070000, 0x00010000


class CheckError(ValueError):
    """Arguments a check cannot run with (an on-time over the watchdog's, no trigger to time)."""


@dataclass
class Outcome:
    """What one check found: ``ok`` (exit status 0, else 1), ``reason`` when not, ``summary`` (its
    last line) and the measurements (moves, lightings, frames) for whoever wants the numbers."""

    part: str
    ok: bool
    reason: str = ""
    summary: str = ""
    measurements: list = field(default_factory=list)
    numbers: dict = field(default_factory=dict)


def _failed(part: str, reason: str, say: Say, measurements=None, numbers=None) -> Outcome:
    say(f"FAILED: {reason}")
    return Outcome(part, False, reason, f"FAILED: {reason}", list(measurements or []),
                   dict(numbers or {}))


def _passed(part: str, line: str, say: Say, measurements, numbers) -> Outcome:
    say(line)
    return Outcome(part, True, "", line, list(measurements), dict(numbers))


@contextlib.contextmanager
def _dark_on_signals(ring=None):
    """On SIGTERM and SIGINT every LED dark first (``ring``, when there is one), then the usual
    way out, so the ``finally`` and ``except`` blocks run (the stage stops its axes): SIGTERM's
    default would end the process without them. The previous handlers come back afterwards.
    Only the main thread can have handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        if ring is not None:
            ring.all_dark()
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise SystemExit(128 + signum)

    before = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        if ring is not None:
            ring.all_dark()
        for s, h in before.items():
            signal.signal(s, h)


def _head_line(cfg: HeadConfig, part: str) -> str:
    kind = "simulated" if cfg.simulated else "real"
    return f"check {part}: head '{cfg.name}' ({kind}, {cfg.source})"


# -- stage ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Move:
    roi: int
    target: tuple[float, float]
    planned_s: float
    measured_s: float
    reached: tuple[float, float]

    @property
    def error_mm(self) -> float:
        return math.dist(self.reached, self.target)

    @property
    def over_plan_s(self) -> float:
        return self.measured_s - self.planned_s


def stage_tolerance_mm(settings: dict[int, float]) -> float:
    """The default tolerance: :data:`DEFAULT_TOLERANCE_MM`, or one step of the controller's
    coarser axis (``$100``/``$101`` steps per mm) where that is more."""
    steps = [settings[k] for k in (100, 101) if settings.get(k, 0) > 0]
    return max([DEFAULT_TOLERANCE_MM] + [1.0 / s for s in steps])


def roi_tour(cfg: HeadConfig, here: Sequence[float] = ()) -> list[tuple[int, tuple[float, float]]]:
    """The head's RoIs in its serpentine order, from the end nearer to ``here``: (index, stage
    position of the RoI, mm)."""
    from edge.head import serpentine

    grid = cfg.stage.roi_grid
    stops = []
    for index in serpentine(grid.columns, grid.rows):
        ox, oy = grid.roi_origin_mm(index)
        stops.append((index, (grid.origin_mm[0] + ox, grid.origin_mm[1] + oy)))
    if len(here) >= 2 and math.dist(here[:2], stops[-1][1]) < math.dist(here[:2], stops[0][1]):
        stops.reverse()
    return stops


def _plan_s(stage, start: Sequence[float], target: tuple[float, float]) -> float:
    """The driver's own plan for the move (its trapezoidal profile)."""
    from edge.hardware.grbl import move_time

    return move_time(math.dist(start[:2], target), stage.feed / 60.0, stage.accel)


def _xy(p: Sequence[float]) -> str:
    return f"({p[0]:8.3f}, {p[1]:8.3f})"


def check_stage(cfg: HeadConfig, *, tolerance_mm: float | None = None, home: bool = False,
                say: Say = print, sim_options=None) -> Outcome:
    """Ready the stage, tour the RoIs, compare each move with its plan and its target."""
    if home and not cfg.stage.homing:
        raise CheckError("the head file says the stage has no homing switches "
                         "(stage.homing = false): nothing to home")
    with build_parts(cfg, [STAGE], sim_options=sim_options) as bench, _dark_on_signals():
        stage = bench.stage
        say(_head_line(cfg, "stage"))
        say(f"stage: {bench.parts[STAGE]}")
        tol = tolerance_mm if tolerance_mm is not None else stage_tolerance_mm(stage.settings)
        t0 = time.monotonic()
        try:
            if home:
                say("homing (asked for)...")
                stage.command("$H", stage.home_timeout_s)
            stage.ready()
        except (HardwareError, OSError) as exc:
            stage.abort()
            return _failed("stage", f"getting the stage ready (homing or unlocking) failed: "
                                    f"{exc}", say)
        except BaseException:
            stage.abort()
            raise
        accel = (f"acceleration {stage.accel:g} mm/s^2" if stage.accel
                 else "acceleration unknown (planned at constant feed)")
        say(f"ready in {time.monotonic() - t0:.2f} s ({'homed' if stage.homed else 'unlocked'}), "
            f"at {_xy(stage.position).strip()} mm; feed {stage.feed:g} mm/min, {accel}")
        stops = roi_tour(cfg, stage.position)
        say(f"touring {len(stops)} RoIs; a move passes within {tol:.3f} mm of its target")
        say(" RoI  target x, y (mm)      planned  measured  over plan  reached x, y (mm)     "
            "error")
        moves: list[Move] = []
        index, target = stops[0]
        try:
            for index, target in stops:
                planned = _plan_s(stage, stage.position, target)
                took = stage.move_to(*target)
                m = Move(index, target, planned, took, tuple(stage.position[:2]))
                moves.append(m)
                far = "  TOO FAR" if m.error_mm > tol else ""
                say(f"{index:4d}  {_xy(target)}  {planned:6.3f} s  {took:6.3f} s  "
                    f"{1000 * m.over_plan_s:+7.0f} ms  {_xy(m.reached)}  {m.error_mm:.3f} mm{far}")
        except (HardwareError, OSError) as exc:
            stage.abort()
            return _failed("stage", f"the move to RoI {index} at {_xy(target).strip()} mm "
                                    f"failed: {exc}", say, moves)
        except BaseException:  # Ctrl-C, SIGTERM: stop the axes before anything else
            stage.abort()
            raise
    return _stage_outcome(moves, tol, say)


def _stage_outcome(moves: list[Move], tol: float, say: Say) -> Outcome:
    worst = max(moves, key=lambda m: m.error_mm)
    late = max(moves, key=lambda m: m.over_plan_s)
    planned, measured = sum(m.planned_s for m in moves), sum(m.measured_s for m in moves)
    timing = (f"{measured:.2f} s moving against {planned:.2f} s planned "
              f"({100 * (measured / planned - 1) if planned else 0:+.1f} %); a move ended "
              f"{1000 * statistics.mean(m.over_plan_s for m in moves):.0f} ms after its plan on "
              f"average, {1000 * late.over_plan_s:.0f} ms at most (RoI {late.roi})")
    numbers = {"moves": len(moves), "largest_error_mm": worst.error_mm, "tolerance_mm": tol,
               "planned_s": planned, "measured_s": measured}
    far = [m for m in moves if m.error_mm > tol]
    say(f"time: {timing}")
    if far:
        reason = (f"{len(far)} of {len(moves)} moves ended farther than {tol:.3f} mm from their "
                  f"target (largest {worst.error_mm:.3f} mm, RoI {worst.roi})")
        return _failed("stage", reason, say, moves, numbers)
    line = (f"passed: {len(moves)} moves, each within {tol:.3f} mm of its target (largest error "
            f"{worst.error_mm:.3f} mm, RoI {worst.roi})")
    return _passed("stage", line, say, moves, numbers)


# -- lights --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Lighting:
    group: int
    on_s: float  # when the group came on (monotonic)
    lit_s: float  # for how long it was lit
    others: tuple[int, ...] = ()  # header pins of other groups that went high meanwhile


class _Edges:
    """The edges of the head's pins: the simulated wiring's own, or stamps taken on the host at
    the moment each pin is written (real GPIO)."""

    def __init__(self, bench: Bench):
        self.wiring = bench.wiring
        self.source = ("the simulated wiring's pin edges" if self.wiring is not None
                       else "host clock at each GPIO write")
        self._own: list[tuple[float, int, bool]] = []

    def write(self, pin: int, value: bool, call: Callable[[], None]) -> None:
        """``call()``, which switches ``pin`` to ``value``; its time kept (real GPIO)."""
        before = time.monotonic()
        call()
        if self.wiring is None:  # libgpiod sets the line inside the call: its middle
            self._own.append((0.5 * (before + time.monotonic()), pin, value))

    def since(self, t: float) -> list[tuple[float, int, bool]]:
        edges = list(self.wiring.edges) if self.wiring is not None else self._own
        return [e for e in edges if e[0] >= t]

    @staticmethod
    def first(edges, pin: int, value: bool, after: float = -math.inf) -> float | None:
        return next((t for t, p, v in edges if p == pin and v == value and t >= after), None)


def check_lights(cfg: HeadConfig, *, on_ms: float | None = None, flashes: int = 3,
                 between: Callable[[int], None] | None = None, say: Say = print,
                 sim_options=None) -> Outcome:
    """Each LED group lit in turn, ``flashes`` times for ``on_ms`` (default 80 % of the head's
    maximum on-time) with as long dark between; ``between(group)`` is called before each group
    (a technician pressing Enter)."""
    ill = cfg.illumination
    on_ms = ON_TIME_SHARE * ill.max_on_ms if on_ms is None else on_ms
    if not 0 < on_ms < ill.max_on_ms:
        raise CheckError(f"an LED group may be lit for less than the head's maximum on-time "
                         f"(illumination.max_on_ms = {ill.max_on_ms:g} ms), not {on_ms:g} ms")
    if flashes < 1:
        raise CheckError(f"flashes must be at least 1, not {flashes}")
    pins = [s.pin for s in ill.states]
    with build_parts(cfg, [GPIO], sim_options=sim_options) as bench, _dark_on_signals(bench.ring):
        ring, edges = bench.ring, _Edges(bench)
        say(_head_line(cfg, "lights"))
        say(f"GPIO: {bench.parts[GPIO]}; trigger on header pin {ill.trigger_pin}")
        say(f"each group lit {flashes} x {on_ms:g} ms, dark {on_ms:g} ms between (maximum "
            f"on-time {ill.max_on_ms:g} ms, watchdog on); edges from {edges.source}")
        done: list[Lighting] = []
        try:
            for group, state in enumerate(ill.states):
                if between is not None:
                    between(group)
                line = ring.groups[group].pin.info.name if hasattr(ring, "groups") else ""
                say(f"group {group}: {state.angle_deg:g} deg (the facets at "
                    f"{state.angle_deg:g} and {state.angle_deg + 180:g} deg), header pin "
                    f"{state.pin}" + (f" ({line})" if line and line != str(state.pin) else ""))
                lit = []
                for k in range(flashes):
                    if k:
                        time.sleep(on_ms / 1000.0)
                    t = time.monotonic()
                    edges.write(state.pin, True, lambda g=group: ring.on(g))
                    time.sleep(on_ms / 1000.0)
                    edges.write(state.pin, False, ring.off)
                    got = edges.since(t)
                    rise = edges.first(got, state.pin, True)
                    fall = edges.first(got, state.pin, False, rise or t)
                    if rise is None or fall is None:
                        return _failed("lights", f"group {group}: header pin {state.pin} did "
                                                 "not switch", say, done)
                    others = tuple(sorted({p for _, p, v in got if v and p != state.pin
                                           and p in pins}))
                    lit.append(Lighting(group, rise, fall - rise, others))
                done += lit
                lo, hi = (f"{f(1000 * x.lit_s for x in lit):.1f}" for f in (min, max))
                say(f"  lit {len(lit)} x {lo if lo == hi else f'{lo} to {hi}'} ms")
                if others := sorted({p for x in lit for p in x.others}):
                    return _failed("lights", f"group {group}: header pin(s) "
                                             f"{', '.join(map(str, others))} of other groups went "
                                             "high while it was lit", say, done)
        except HardwareError as exc:  # the watchdog or the interlock darkened the ring
            return _failed("lights", f"{exc}", say, done)
        finally:
            ring.all_dark()
    line = (f"passed: {len(ill.states)} groups lit "
            f"{'once' if flashes == 1 else f'{flashes} times'} each, "
            f"{max(x.lit_s for x in done) * 1000:.1f} ms at most; every group dark now")
    return _passed("lights", line, say, done,
                   {"groups": len(ill.states), "longest_ms": max(x.lit_s for x in done) * 1000})


# -- camera --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FrameStats:
    index: int
    mean_dn: float  # over black
    median_dn: float  # over black
    saturated: float  # share of pixels at full scale
    focus: float  # variance of the green plane's Laplacian, DN^2
    refused: str | None = None  # why the head would refuse it (edge.hardware.camera.check_frame)


def green(frame: np.ndarray, bayer_pattern: str) -> np.ndarray:
    from edge.preview import green_plane

    return green_plane(frame, bayer_pattern)


def laplacian_variance(img: np.ndarray) -> float:
    """Variance of the 4-neighbour Laplacian (a focus measure: sharp edges raise it)."""
    c = img[1:-1, 1:-1]
    lap = img[:-2, 1:-1] + img[2:, 1:-1] + img[1:-1, :-2] + img[1:-1, 2:] - 4.0 * c
    return float(lap.var(dtype=np.float64))


def temporal_noise(a: np.ndarray, b: np.ndarray) -> float:
    """The temporal noise of two frames of one scene (DN): std of their difference / sqrt(2)."""
    d = a.astype(np.float32) - b.astype(np.float32)
    return float(d.std(dtype=np.float64) / math.sqrt(2.0))


def frame_stats(index: int, frame: np.ndarray, black: float, cfg: HeadConfig,
                shape: tuple[int, int]) -> FrameStats:
    cam = cfg.camera
    try:
        check_frame(frame, shape, cam.bit_depth, f"frame {index}")
        refused = None
    except HardwareError as exc:
        refused = str(exc)
    return FrameStats(index, float(frame.mean(dtype=np.float64)) - black,
                      float(np.median(frame)) - black,
                      float(np.count_nonzero(frame >= cam.max_dn)) / frame.size,
                      laplacian_variance(green(frame, cam.bayer_pattern)), refused)


def black_level(cfg: HeadConfig, group: int | None, black: float | None) -> tuple[float, str]:
    """The black level frames are measured from, and where it comes from (module docstring)."""
    if black is not None:
        return black, "given"
    if cfg.calibration.file:
        from edge import calibration as calib

        try:
            cal = calib.load(cfg.resolve(cfg.calibration.file))
        except (calib.CalibrationError, OSError) as exc:
            log.warning("calibration not used for the black level: %s", exc)
        else:
            if cal.dark is not None:
                d = cal.dark
                per_state = d.ndim in (1, 3)
                level = float(np.median(d[group] if per_state and group is not None else d))
                return level, f"the calibration's dark level ({cal.source})"
    if cfg.camera.kind == "sim" and cfg.simulation is not None:
        return cfg.simulation.dark_offset_dn, "the simulated sensor's offset"
    return 0.0, "unknown: measured from 0 DN (give --black or a calibration file)"


def write_pngs(frame: np.ndarray, cfg: HeadConfig, black: float, path: Path) -> list[Path]:
    """The frame as a 16-bit PNG (every bit of it, shifted so full scale is white) and an 8-bit
    picture to look at (the green plane, stretched from black to its 99.9th percentile)."""
    from PIL import Image

    from edge.preview import stretch

    cam = cfg.camera
    full = np.minimum(frame, cam.max_dn).astype(np.uint16) << (16 - cam.bit_depth)
    raw, view = path.with_suffix(".png"), path.with_name(path.stem + "_view.png")
    Image.fromarray(full).save(raw, compress_level=1)
    g = green(frame, cam.bayer_pattern)
    white = max(float(np.percentile(g, 99.9)), black + 16.0)
    Image.fromarray(stretch(g, black, white)).save(view, compress_level=1)
    return [raw, view]


def _take(bench: Bench, group: int | None, edges: _Edges | None, triggered: bool):
    """One frame as the head takes it (:meth:`edge.head.Head.expose`): light, settle, arm,
    trigger, expose, darken, grab; (frame, monotonic time it was handed over, trigger stamp)."""
    cfg, ring, cam = bench.cfg, bench.ring, bench.camera
    ill = cfg.illumination
    trig = None
    try:
        if group is not None:
            pin = ill.states[group].pin
            if edges is not None:
                edges.write(pin, True, lambda: ring.on(group))
            else:
                ring.on(group)
            time.sleep(ill.settle_ms / 1000.0)
        cam.arm()
        if triggered:
            trig = time.monotonic()  # the rise comes first in the call: stamped just before
            ring.pulse_trigger()
        time.sleep(cfg.camera.exposure_ms / 1000.0)
        if group is not None:
            if edges is not None:
                edges.write(pin, False, ring.off)
            else:
                ring.off()
        frame = cam.grab(cfg.camera.grab_timeout_ms / 1000.0)
        return frame, time.monotonic(), trig
    finally:
        if ring is not None:
            ring.all_dark()


def _parts_for_frames(cfg: HeadConfig, group: int | None, free_run: bool) -> list[str]:
    if free_run and cfg.camera.kind != "v4l2":
        raise CheckError("the simulated camera takes a frame only on its trigger input: "
                         "free-run is for a real camera whose trigger is not wired yet")
    if free_run and group is not None:
        raise CheckError("a free-running camera is not in step with the LEDs: light a group "
                         "(--group) only with the trigger")
    if group is not None and not 0 <= group < len(cfg.illumination.states):
        raise CheckError(f"no LED group {group}; the ring has groups 0 to "
                         f"{len(cfg.illumination.states) - 1}")
    return [CAMERA] if free_run else [GPIO, CAMERA]


def check_camera(cfg: HeadConfig, *, frames: int = 4, group: int | None = None,
                 out_dir: str | Path | None = None, black: float | None = None,
                 free_run: bool = False, say: Say = print, sim_options=None) -> Outcome:
    """``frames`` frames at the head's exposure, every LED dark or ``group`` lit: their level,
    noise, saturated share and focus; each written as PNG under ``out_dir``. Fails when the head
    would refuse a frame (:func:`edge.hardware.camera.check_frame`) or a frame does not come."""
    if frames < 1:
        raise CheckError(f"frames must be at least 1, not {frames}")
    free_run = free_run or cfg.camera.trigger == "free-run"
    parts = _parts_for_frames(cfg, group, free_run)
    cam_cfg = cfg.camera
    out = Path(out_dir) if out_dir else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    with build_parts(cfg, parts, sim_options=sim_options,
                     camera_trigger="free-run" if free_run else None) as bench, \
            _dark_on_signals(bench.ring):
        say(_head_line(cfg, "camera"))
        say(f"camera: {bench.parts[CAMERA]}")
        lit = "every LED dark" if group is None else (
            f"LED group {group} lit ({cfg.illumination.states[group].angle_deg:g} deg)")
        blk, where = black_level(cfg, group, black)
        say(f"{frames} frame(s) at {cam_cfg.exposure_ms:g} ms exposure, gain {cam_cfg.gain:g}, "
            f"{lit}{'' if not free_run else ', camera running free'}; black level {blk:g} DN "
            f"({where}); full scale {cam_cfg.max_dn} DN")
        bench.camera.configure(cam_cfg.exposure_ms, cam_cfg.gain)
        say("frame  mean over black  median over black  saturated  noise     focus")
        stats: list[FrameStats] = []
        noise, focus_noise, written = [], [], []
        prev = None
        try:
            for k in range(frames):
                frame = _take(bench, group, None, not free_run)[0]
                s = frame_stats(k, frame, blk, cfg, bench.camera.shape)
                stats.append(s)
                g = green(frame, cam_cfg.bayer_pattern)
                pair = ""
                if prev is not None:  # consecutive frames of one scene: temporal noise only
                    noise.append(temporal_noise(prev[0], frame))
                    focus_noise.append(laplacian_variance(prev[1] - g) / 2.0)
                    pair = f"{noise[-1]:5.2f} DN"
                prev = (frame, g)
                say(f"{k:5d}  {s.mean_dn:9.1f} DN     {s.median_dn:9.1f} DN      "
                    f"{100 * s.saturated:6.3f} %  {pair:8s}  {s.focus:8.1f} DN^2"
                    + (f"  REFUSED: {s.refused}" if s.refused else ""))
                if out is not None:
                    written += write_pngs(frame, cfg, blk, out / f"camera_{k:02d}")
        except (HardwareError, OSError) as exc:
            return _failed("camera", f"frame {len(stats)}: {exc}", say, stats)
    return _camera_outcome(stats, noise, focus_noise, written, say)


def _camera_outcome(stats: list[FrameStats], noise: list[float], focus_noise: list[float],
                    written: list[Path], say: Say) -> Outcome:
    numbers = {"mean_dn": statistics.mean(s.mean_dn for s in stats),
               "median_dn": statistics.median(s.median_dn for s in stats),
               "saturated": max(s.saturated for s in stats),
               "focus": statistics.mean(s.focus for s in stats),
               "noise_dn": statistics.mean(noise) if noise else None}
    if noise:
        floor = statistics.mean(focus_noise)
        numbers["focus_noise_floor"] = floor
        say(f"noise {numbers['noise_dn']:.2f} DN (temporal, from {len(noise)} frame pair(s)); "
            f"focus {numbers['focus']:.1f} DN^2, where noise alone gives {floor:.1f}"
            + ("" if numbers["focus"] > 1.2 * floor else
               ": nothing sharp under the camera to focus on (put a target with edges there)"))
    else:
        say("noise: needs at least 2 frames")
    if written:
        say(f"PNGs: {len(written)} files in {written[0].parent} (camera_NN.png: 16-bit, every "
            "bit; camera_NN_view.png: to look at)")
    if refused := [s for s in stats if s.refused]:
        reason = (f"the head would refuse {len(refused)} of {len(stats)} frames: "
                  f"{refused[0].refused}")
        return _failed("camera", reason, say, stats, numbers)
    line = (f"passed: {len(stats)} frames, median {numbers['median_dn']:.1f} DN over black, "
            f"at most {100 * numbers['saturated']:.3f} % saturated")
    return _passed("camera", line, say, stats, numbers)


# -- trigger -------------------------------------------------------------------------------------
class StampedV4L2Device(V4L2Device):
    """:class:`V4L2Device` that keeps the driver's time stamp of the last buffer it handed over
    (the camera has no use for it; the trigger check has): ``stamp`` is (seconds, flags)."""

    stamp: tuple[float, int] | None = None

    def _ioctl(self, request: int, arg):
        arg = super()._ioctl(request, arg)
        if request == DQBUF:
            self.stamp = (arg.timestamp[0] + arg.timestamp[1] * 1e-6, arg.flags)
        return arg


class _StampingOpener:
    """The camera's ``opener``: makes the :class:`StampedV4L2Device` and keeps it at hand."""

    device: StampedV4L2Device | None = None

    def __call__(self, path: str) -> StampedV4L2Device:
        self.device = StampedV4L2Device(path)
        return self.device


def buffer_stamp(stamp: tuple[float, int] | None) -> tuple[float, str] | None:
    """A V4L2 buffer's (seconds, flags) as (monotonic seconds, what it marks); None when the
    driver's clock is not the monotonic one (then only the hand-over time is known)."""
    if stamp is None or stamp[1] & _TIMESTAMP_MASK != _TIMESTAMP_MONOTONIC:
        return None
    src = stamp[1] & _TSTAMP_SRC_MASK
    return stamp[0], START_OF_EXPOSURE if src == _TSTAMP_SRC_SOE else END_OF_FRAME


@dataclass(frozen=True)
class FrameTiming:
    """One frame's time stamp against its trigger and LED edges (monotonic seconds)."""

    index: int
    trigger_s: float | None  # the trigger's rising edge; None: none was seen
    frame_s: float
    stamp: str  # what frame_s marks: START_OF_EXPOSURE, END_OF_FRAME or HANDED_OVER
    led_on_s: float | None = None
    led_off_s: float | None = None
    flags: tuple[str, ...] = ()

    @property
    def delay_ms(self) -> float | None:
        return None if self.trigger_s is None else 1000.0 * (self.frame_s - self.trigger_s)


def judge_timing(t: FrameTiming, exposure_ms: float, settle_ms: float,
                 grab_timeout_ms: float) -> FrameTiming:
    """``t`` with its flags: what makes it a frame not taken as the head means (module
    docstring: the window a frame must fall in)."""
    flags = []
    if t.trigger_s is None:
        return FrameTiming(**{**t.__dict__, "flags": ("no trigger edge was seen",)})
    d = t.delay_ms
    if d < 0:
        flags.append(f"came {-d:.1f} ms before its trigger (camera running free, or triggered "
                     "by something else)")
    elif t.stamp == START_OF_EXPOSURE:
        dark_at = (t.led_off_s - t.trigger_s) * 1000 if t.led_off_s is not None else exposure_ms
        if d > dark_at:
            flags.append(f"its exposure started {d:.1f} ms after the trigger, after the LED went "
                         f"dark ({dark_at:.1f} ms)")
    elif d < exposure_ms:
        flags.append(f"done {d:.1f} ms after its trigger, before its {exposure_ms:g} ms exposure "
                     "could have ended: not this trigger's frame")
    elif d > grab_timeout_ms:
        flags.append(f"came {d:.1f} ms after its trigger, later than the head's grab timeout "
                     f"({grab_timeout_ms:g} ms)")
    if t.led_on_s is not None and (lead := (t.trigger_s - t.led_on_s) * 1000) < settle_ms:
        flags.append(f"the trigger came {lead:.2f} ms after the LED was switched on, under the "
                     f"head's settle time ({settle_ms:g} ms)")
    if t.led_off_s is not None and (lit := (t.led_off_s - t.trigger_s) * 1000) < exposure_ms:
        flags.append(f"the LED went dark {lit:.1f} ms into the {exposure_ms:g} ms exposure")
    return FrameTiming(**{**t.__dict__, "flags": tuple(flags)})


def check_trigger(cfg: HeadConfig, *, frames: int = 10, group: int | None = 0, say: Say = print,
                  sim_options=None) -> Outcome:
    """``frames`` triggered frames (LED group ``group`` lit, None: dark): each frame's stamp
    against its trigger and LED edges, the delay and its spread; flagged frames fail it."""
    if frames < 1:
        raise CheckError(f"frames must be at least 1, not {frames}")
    if cfg.camera.trigger != "external":
        raise CheckError(f"the head's camera runs free (camera.trigger = "
                         f"'{cfg.camera.trigger}'): there is no trigger to time its frames by")
    parts = _parts_for_frames(cfg, group, False)
    ill, cam_cfg = cfg.illumination, cfg.camera
    opener = _StampingOpener() if cam_cfg.kind == "v4l2" else None
    with build_parts(cfg, parts, sim_options=sim_options, camera_opener=opener) as bench, \
            _dark_on_signals(bench.ring):
        edges = _Edges(bench)
        say(_head_line(cfg, "trigger"))
        say(f"camera: {bench.parts[CAMERA]}; trigger on header pin {ill.trigger_pin}")
        lit = "every LED dark" if group is None else (
            f"LED group {group} (header pin {ill.states[group].pin}) lit")
        say(f"{frames} frames at {cam_cfg.exposure_ms:g} ms exposure, {lit}; edges from "
            f"{edges.source}")
        bench.camera.configure(cam_cfg.exposure_ms, cam_cfg.gain)
        say("frame  LED on before trigger  frame after trigger  LED dark after trigger")
        timings: list[FrameTiming] = []
        try:
            for k in range(frames):
                t0 = time.monotonic()
                if opener is not None and opener.device is not None:
                    opener.device.stamp = None
                _, handed, trig = _take(bench, group, edges, True)
                t = _timing(k, bench, edges, t0, handed, trig, group, opener)
                t = judge_timing(t, cam_cfg.exposure_ms, ill.settle_ms, cam_cfg.grab_timeout_ms)
                timings.append(t)
                say(_timing_line(t))
        except (HardwareError, OSError) as exc:
            return _failed("trigger", f"frame {len(timings)}: {exc}", say, timings)
    return _trigger_outcome(timings, say)


def _timing(k: int, bench: Bench, edges: _Edges, t0: float, handed: float, trig: float | None,
            group: int | None, opener: _StampingOpener | None) -> FrameTiming:
    ill = bench.cfg.illumination
    got = edges.since(t0)
    if bench.wiring is not None:  # the wiring's own edge, not the host's stamp before the call
        trig = edges.first(got, ill.trigger_pin, True)
    on = off = None
    if group is not None:
        pin = ill.states[group].pin
        on = edges.first(got, pin, True)
        off = edges.first(got, pin, False, on if on is not None else t0)
    stamped = buffer_stamp(opener.device.stamp) if opener and opener.device else None
    frame_s, what = stamped if stamped is not None else (handed, HANDED_OVER)
    return FrameTiming(k, trig, frame_s, what, on, off)


def _ms(t: float | None, ref: float | None) -> str:
    return "       -" if t is None or ref is None else f"{1000 * (t - ref):+8.2f} ms"


def _timing_line(t: FrameTiming) -> str:
    line = (f"{t.index:5d}  {_ms(t.trigger_s, t.led_on_s):>21s}  "
            f"{_ms(t.frame_s, t.trigger_s):>19s}  {_ms(t.led_off_s, t.trigger_s):>22s}")
    return line + "".join(f"\n       FLAG: {f}" for f in t.flags)


def _trigger_outcome(timings: list[FrameTiming], say: Say) -> Outcome:
    delays = [t.delay_ms for t in timings if t.delay_ms is not None]
    numbers: dict = {"frames": len(timings), "stamp": timings[0].stamp}
    if delays:
        numbers.update(median_ms=statistics.median(delays), min_ms=min(delays),
                       max_ms=max(delays),
                       std_ms=statistics.pstdev(delays) if len(delays) > 1 else 0.0)
        say(f"frame {timings[0].stamp} after its trigger: median {numbers['median_ms']:.2f} ms, "
            f"spread {numbers['min_ms']:.2f} to {numbers['max_ms']:.2f} ms (standard deviation "
            f"{numbers['std_ms']:.2f} ms)")
    flagged = [t for t in timings if t.flags]
    if flagged:
        reason = (f"{len(flagged)} of {len(timings)} frames flagged; frame {flagged[0].index}: "
                  f"{flagged[0].flags[0]}")
        return _failed("trigger", reason, say, timings, numbers)
    line = f"passed: {len(timings)} frames, each within the window its trigger allows"
    return _passed("trigger", line, say, timings, numbers)
