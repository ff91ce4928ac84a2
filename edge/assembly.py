"""One assembly: a :class:`~edge.head.Head` built from its head file alone.

Every head, real or simulated, is built here, by the same steps in the same order:

1. **check** every part the head file names, without touching any (:func:`preflight`): the
   GPIO chip, the stage's serial port, the camera device, the engine artifact and the
   calibration file. A head whose parts are missing stops here with one line per missing part,
   before a single pin is claimed: the LEDs are never touched;
2. the **pin factory** (``jetson``: the header over libgpiod; ``mock``: the simulated wiring)
   and at once the **ring light**, which claims the LED groups and drives them low: a head
   restarted after SIGKILL (which nothing survives to darken a lit group) is dark within about
   0.3 s of starting, not after the engine, stage and warm-up (``benchmarks/restart_dark.py``);
3. the **engine** and the **calibration** (no hardware);
4. the **stage** (the GRBL driver on the head file's port; ``sim`` starts the GRBL simulator on
   a pseudo-terminal first) and the **camera** (V4L2; ``sim`` and ``replay:DIR`` are simulated);
5. the pipeline **warmed up** on a synthetic RoI (:func:`edge.pipeline.warm_up`: no kernel
   compiles later while an LED group is lit); then the head.

Simulated parts come from :mod:`edge.sim.parts`, imported only when the head file names one;
the runtime modules never import the simulator. A simulated head given a fault plan
(:mod:`edge.sim.faults`, for the fault benchmark) also gets its engine wrapped here when the plan
breaks the engine; a real head never. A part that fails to open closes the ones
already open and raises :class:`AssemblyError` naming the part.

Bringing a head up (``glass-inspect check``) needs one part at a time while the others may still
be missing: :func:`build_parts` builds only the parts asked for (GPIO, stage, camera), by the
same steps, checking only their own preflight lines (:func:`part_problems`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from edge import calibration as calib
from edge.config import REPLAY, SIM, HeadConfig
from edge.engine import Engine
from edge.errors import UserError
from edge.hardware.camera import Camera
from edge.hardware.light import Light
from edge.hardware.stage import Stage
from edge.head import Head
from edge.inspection import load_calibration, load_engine, reason_of
from edge.truth import Sample


class AssemblyError(UserError, ValueError):
    """A head that cannot be built from its head file: one line per part that is missing."""

    def __init__(self, source: str, problems: list[str]):
        self.problems = problems
        super().__init__(f"cannot start the head of {source}:\n  " + "\n  ".join(problems))


@dataclass
class Assembly:
    """A built head and the parts it is made of; closing it closes every part, LEDs first."""

    cfg: HeadConfig
    head: Head
    engine: Engine
    calibration: calib.Calibration | None
    ring: Light
    stage: Stage
    camera: Camera
    #: puts glass on a simulated stage (``place``/``next``/``load``); None on a real head,
    #: where the operator or the line does
    glass: object | None = None
    #: the simulated wiring and stage controller, when the head file chose them
    sim: object | None = None
    parts: dict[str, str] = field(default_factory=dict)  # part -> what it is, for the log
    _closers: list[Callable[[], None]] = field(default_factory=list)

    def load_glass(self, sample_id: str) -> Sample | None:
        """Glass ``sample_id`` on the stage: its ground truth where the head knows it."""
        return self.glass.load(sample_id) if self.glass is not None else None

    def close(self) -> None:
        while self._closers:
            with contextlib.suppress(Exception):  # one part failing must not keep the others
                self._closers.pop()()

    def __enter__(self) -> Assembly:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


#: The parts :func:`build_parts` builds alone: the header's GPIO (the ring light's LED groups and
#: the camera's trigger line), the stage, the camera.
GPIO, STAGE, CAMERA = "GPIO", "stage", "camera"
PARTS = (GPIO, STAGE, CAMERA)


def part_problems(cfg: HeadConfig, part: str) -> list[str]:
    """Why ``part`` (:data:`PARTS`) of the head is not there, one line each; nothing is opened."""
    problems = []
    cam = cfg.camera
    if part == GPIO and cfg.illumination.pin_factory == "jetson":
        from edge.hardware import jetson

        if (p := jetson.probe()) is not None:
            problems.append(f"GPIO (ring light and trigger): {p}")
    elif part == STAGE and cfg.stage.port != SIM:
        from edge.hardware import grbl

        if (p := grbl.probe(cfg.stage.port)) is not None:
            problems.append(f"stage: {p}")
    elif part == CAMERA and cam.kind == "v4l2":
        from edge.hardware import v4l2_device

        if (p := v4l2_device.probe(cam.device)) is not None:
            problems.append(f"camera: {p.removeprefix('camera ')}")
    elif part == CAMERA and cam.kind == "replay":
        folder = cfg.resolve(cam.device[len(REPLAY):])
        if not folder.is_dir():
            problems.append(f"camera: replay folder {folder} does not exist")
    return problems


def preflight(cfg: HeadConfig, engine_path: str | Path | None = None,
              calibration_path: str | Path | None = None) -> list[str]:
    """One line per part the head file names that is not there; nothing is opened or claimed."""
    problems = [line for part in PARTS for line in part_problems(cfg, part)]
    model = Path(engine_path) if engine_path else cfg.resolve(cfg.engine.artifact)
    if not model.is_file():
        problems.append(f"engine: {model} does not exist")
    cal = calibration_path or cfg.calibration.file
    if cal and not cfg.resolve(str(cal)).is_file():
        problems.append(f"calibration: {cfg.resolve(str(cal))} does not exist")
    return problems


def build_head(cfg: HeadConfig, *, engine: Engine | None = None,
               engine_path: str | Path | None = None,
               calibration: calib.Calibration | None = None,
               calibration_path: str | Path | None = None, record_dir: str | None = None,
               sim_options=None) -> Assembly:
    """The head of ``cfg``, ready to inspect. ``engine`` and ``calibration``, when given, are
    used as they are (and not closed with the head); else the head file's (or the paths') are
    loaded. ``sim_options`` (:class:`edge.sim.parts.SimOptions`) tune simulated parts only."""
    problems = preflight(cfg, None if engine is not None else engine_path,
                         None if calibration is not None else calibration_path)
    if problems:
        raise AssemblyError(cfg.source, problems)
    closers: list[Callable[[], None]] = []
    parts: dict[str, str] = {}
    sim = None
    try:
        if cfg.simulated:
            from edge.sim.parts import SimOptions, SimParts

            sim = SimParts(cfg, sim_options or SimOptions())
            closers.append(sim.close)
        pins = _part("GPIO", lambda: _pin_factory(cfg, sim))
        if cfg.illumination.pin_factory == "jetson":
            closers.append(pins.close)
        from edge.hardware.leds import RingLight

        # first of the parts: a head restarted after SIGKILL (nothing ran to darken a lit
        # group) drives every LED low now, not after the engine, stage and warm-up
        ring = _part("ring light", lambda: RingLight(cfg.illumination, pin_factory=pins))
        closers.append(ring.close)
        parts["ring light"] = f"{cfg.illumination.pin_factory} pins"
        if engine is None:
            engine = _part("engine", lambda: load_engine(cfg, engine_path))
            closers.append(engine.close)
        parts["engine"] = f"{engine.path.name} on {engine.backend}"
        if sim is not None and sim.faults is not None:  # a simulated head told to break
            from edge.sim.faults import with_engine_faults

            engine = with_engine_faults(engine, sim.faults)
        if calibration is None:
            calibration = _part("calibration", lambda: load_calibration(cfg, calibration_path))
        parts["calibration"] = calibration.source if calibration else "none (frames uncorrected)"
        stage = _part("stage", lambda: _stage(cfg, sim))
        closers.append(stage.close)
        parts["stage"] = f"{stage.banner or 'stage controller'} on {cfg.stage.port}" + (
            f" ({sim.grbl.path})" if cfg.stage.port == SIM else "")
        camera = _part("camera", lambda: _camera(cfg, sim))
        closers.append(camera.close)
        parts["camera"] = cfg.camera.device
        if calibration is not None and camera.serial:
            _part("calibration", lambda: calibration.check_for(cfg, camera.serial))
        from edge.pipeline import warm_up

        # while the ring is held dark: no kernel compiles later while an LED group is lit
        _part("pipeline", lambda: warm_up(cfg, engine, calibration, camera.shape))
        head = _part("head", lambda: Head(cfg, ring, stage, camera, engine, calibration,
                                          record_dir))
        if calibration is not None and cfg.camera.kind != "replay":
            # the sensor's own hot pixels, for cameras without a serial number (CSI)
            _part("calibration", lambda: _check_sensor(head, ring, calibration))
    except BaseException:
        for close in reversed(closers):
            with contextlib.suppress(Exception):
                close()
        raise
    asm = Assembly(cfg, head, engine, calibration, ring, stage, camera, sim=sim, parts=parts,
                   _closers=closers)
    if sim is not None:
        asm.glass = _glass(cfg, camera, sim)
    return asm


@dataclass
class Bench:
    """Some of a head's parts, each built alone from the head file (``glass-inspect check``);
    the parts not asked for are None. Closing it closes every part, LEDs first."""

    cfg: HeadConfig
    ring: Light | None = None
    stage: Stage | None = None
    camera: Camera | None = None
    #: the simulated wiring and stage controller, when the head file chose them
    sim: object | None = None
    parts: dict[str, str] = field(default_factory=dict)  # part -> what it is, for the report
    _closers: list[Callable[[], None]] = field(default_factory=list)

    @property
    def wiring(self):
        """The simulated wiring (:class:`edge.sim.camera.SimWiring`: every pin edge, timed), or
        None on real GPIO."""
        return getattr(self.sim, "wiring", None)

    def close(self) -> None:
        while self._closers:
            with contextlib.suppress(Exception):  # one part failing must not keep the others
                self._closers.pop()()

    def __enter__(self) -> Bench:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def build_parts(cfg: HeadConfig, parts, *, sim_options=None, camera_trigger: str | None = None,
                camera_opener=None) -> Bench:
    """The parts of ``cfg`` named in ``parts`` (:data:`PARTS`), each built alone: only their own
    preflight (:func:`part_problems`), no engine, calibration or warm-up, and the parts not asked
    for may be absent. The same steps as :func:`build_head`, in the same order: pins, stage,
    camera, the ring light last (claimed, and held dark, once the others are there).

    A simulated camera sees the LEDs through the simulated wiring and stands where the stage
    simulator stands, so it brings both along (the simulator, not a stage driver). A real
    camera may be opened with another trigger mode than the head file's (``camera_trigger``:
    ``free-run`` for a bench without the trigger wired) and another V4L2 device layer
    (``camera_opener``, :class:`edge.hardware.v4l2.V4L2Camera`'s ``opener``)."""
    wanted = set(parts)
    if unknown := wanted - set(PARTS):
        raise ValueError(f"no part {sorted(unknown)}; the parts are {', '.join(PARTS)}")
    problems = [line for part in PARTS if part in wanted for line in part_problems(cfg, part)]
    if problems:
        raise AssemblyError(cfg.source, problems)
    bench = Bench(cfg)
    closers = bench._closers
    try:
        if cfg.simulated:
            from edge.sim.parts import SimOptions, SimParts

            bench.sim = sim = SimParts(cfg, sim_options or SimOptions())
            closers.append(sim.close)
        sim_camera = CAMERA in wanted and cfg.camera.kind != "v4l2"
        pins = None
        if GPIO in wanted or sim_camera:
            pins = _part("GPIO", lambda: _pin_factory(cfg, bench.sim))
            if cfg.illumination.pin_factory == "jetson":
                closers.append(pins.close)
        if STAGE in wanted:
            bench.stage = _part("stage", lambda: _stage(cfg, bench.sim))
            closers.append(bench.stage.close)
            bench.parts[STAGE] = f"{bench.stage.banner or 'stage controller'} on " + (
                f"the simulator ({bench.sim.grbl.path})" if cfg.stage.port == SIM
                else cfg.stage.port)
        elif sim_camera:
            bench.sim.stage_port()  # the simulator alone: the simulated camera looks from there
        if CAMERA in wanted:
            bench.camera = _part("camera", lambda: _camera(cfg, bench.sim, camera_trigger,
                                                           camera_opener))
            closers.append(bench.camera.close)
            c = cfg.camera
            bench.parts[CAMERA] = (f"{c.device}, {c.width} x {c.height} px {c.bit_depth}-bit "
                                   f"{c.bayer_pattern}, trigger {camera_trigger or c.trigger}")
        if GPIO in wanted:
            from edge.hardware.leds import RingLight

            bench.ring = _part("ring light",
                               lambda: RingLight(cfg.illumination, pin_factory=pins))
            closers.append(bench.ring.close)
            bench.parts[GPIO] = (f"{cfg.illumination.pin_factory} pins, "
                                 f"{len(cfg.illumination.states)} LED groups and the trigger")
    except BaseException:
        bench.close()
        raise
    return bench


def sim_options(**options):
    """:class:`edge.sim.parts.SimOptions` (the knobs only a simulated part has) for a command
    that must not name the simulator itself: only this module reaches it for the runtime."""
    from edge.sim.parts import SimOptions

    return SimOptions(**options)


def _check_sensor(head: Head, ring: Light, calibration: calib.Calibration) -> None:
    if calibration.defects is None or calibration.defects.count == 0:
        return
    try:
        frame = head.expose(None)[0]  # every LED group dark
    finally:
        ring.all_dark()
    calibration.check_sensor(frame)


def _part(name: str, make: Callable):
    """``make()``, with any failure as one :class:`AssemblyError` line naming the part."""
    try:
        return make()
    except AssemblyError:
        raise
    except Exception as exc:
        raise AssemblyError("head", [f"{name}: {reason_of(exc)}"]) from exc


def _pin_factory(cfg: HeadConfig, sim):
    if cfg.illumination.pin_factory == "mock":
        return sim.pin_factory()
    from edge.hardware.jetson import JetsonFactory

    return JetsonFactory()


def _stage(cfg: HeadConfig, sim) -> Stage:
    from edge.hardware.grbl import GrblStage

    s = cfg.stage
    port = sim.stage_port() if s.port == SIM else s.port
    lim = s.soft_limits_mm
    return GrblStage(port, s.baud, (lim.x, lim.y), s.feed_mm_min, home=s.homing,
                     machine_origin=s.machine_origin_mm)


def _camera(cfg: HeadConfig, sim, trigger: str | None = None, opener=None) -> Camera:
    cam = cfg.camera
    if cam.kind == "sim":
        return sim.camera()
    if cam.kind == "replay":
        return sim.camera(cfg.resolve(cam.device[len(REPLAY):]))
    from edge.hardware.v4l2 import V4L2Camera

    extra = {} if opener is None else {"opener": opener}
    return V4L2Camera(cam.device, cam.width, cam.height, cam.bit_depth, cam.bayer_pattern,
                      pixel_format=cam.pixel_format, trigger=trigger or cam.trigger,
                      alignment=cam.alignment, gain_scale=cam.gain_scale or None, **extra)


def _glass(cfg: HeadConfig, camera: Camera, sim):
    from edge.sim.parts import ReplayGlass, SimGlass

    if cfg.camera.kind == "replay":
        return ReplayGlass(camera, cfg.resolve(cfg.camera.device[len(REPLAY):]))
    return SimGlass(camera, cfg, sim.options.scratch_share)

