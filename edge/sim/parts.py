"""The simulated parts a head file can choose, for :mod:`edge.assembly` to build a head from.

The assembly builds every head the same way: pin factory, stage, camera, ring light, head. When
the head file names simulated parts (``illumination.pin_factory = "mock"``, ``stage.port =
"sim"``, ``camera.device = "sim"`` or ``"replay:DIR"``), their builders come from here:

* :class:`SimParts` holds the simulated wiring (gpiozero's ``MockFactory`` through
  :class:`edge.sim.camera.SimWiring`) and the GRBL simulator on a pseudo-terminal, which the
  real :class:`edge.hardware.grbl.GrblStage` driver then talks to;
* the cameras see the LEDs through that wiring and the stage through its simulator;
* a *glass loader* stands in for whoever puts glass on a real head's stage (an operator, the
  line): :class:`SimGlass` places rendered samples (random, or seeded by the sample id so that an
  id always shows the same glass) or calibration targets (:mod:`edge.sim.targets`: a reference
  plate, a dot grid, a lens cap), :class:`ReplayGlass` recorded ones.

``SimOptions`` are the knobs only a simulation has: which firmware the stage simulator speaks,
a GPIO trace file, a smaller frame, a physical wiring that differs from the head file (to
show what a mis-wired head does), and a fault plan (:mod:`edge.sim.faults`: parts that break on
purpose, for the fault benchmark and its tests). A process that cannot be given options
(``glass-inspect serve``) takes the fault plan and the trace file from the environment
(``GLASS_INSPECT_SIM_FAULTS``, ``GLASS_INSPECT_SIM_TRACE``); unset, nothing changes.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from edge.config import HeadConfig
from edge.recording import find_samples, open_sample
from edge.sim.camera import ReplayCamera, SimCamera, SimWiring, TriggeredSimCamera
from edge.sim.faults import FaultInjector, make_injector, trace_from_env
from edge.sim.grbl import GrblSimulator
from edge.sim.optics import OpticsRenderer
from edge.sim.sample import generate_sample, head_glass
from edge.sim.targets import Target
from edge.truth import Sample

SIM_PULL_OFF_MARGIN_MM = 2.0


@dataclass(frozen=True)
class SimOptions:
    flavor: str = "grbl"  # the stage simulator's firmware: grbl (1.1h) or grblhal
    trace: str | Path | None = None  # log every GPIO edge here
    shape: tuple[int, int] | None = None  # render smaller frames (height, width)
    led_pins: Sequence[int] | None = None  # physical wiring of the 6 facet pairs, if not the file's
    trigger_pin: int | None = None  # the pin the camera's trigger input is wired to
    scratch_share: float = 0.5  # share of random samples with scratches
    # faults to inject (edge.sim.faults, e.g. "camera_timeout@3"); None: $GLASS_INSPECT_SIM_FAULTS
    faults: str | None = None


class SimParts:
    """The simulated wiring and stage controller of one head, and what closes them."""

    def __init__(self, cfg: HeadConfig, options: SimOptions):
        self.cfg, self.options = cfg, options
        self.wiring: SimWiring | None = None
        self.grbl: GrblSimulator | None = None
        self._closers: list[Callable[[], None]] = []
        # None unless a fault plan asks for faults; the camera and the stage are hooked to it
        self.faults: FaultInjector | None = make_injector(cfg.illumination.max_on_ms,
                                                          options.faults)
        if self.faults is not None:
            self._closers.append(self.faults.close)

    def pin_factory(self):
        self.wiring = SimWiring(self.options.trace or trace_from_env())
        self._closers.append(self.wiring.close)
        return self.wiring.factory

    def stage_port(self) -> str:
        """Start the GRBL simulator; the path of its pseudo-terminal, for the real driver."""
        cfg = self.cfg
        lim = cfg.stage.soft_limits_mm
        accel = cfg.simulation.stage_accel_mm_s2 if cfg.simulation else 800.0
        # a real stage travels a little beyond the head's working limits: grblHAL keeps its
        # pull-off ($27, 1 mm) clear of both ends
        travel = tuple((lo, hi + 2 * SIM_PULL_OFF_MARGIN_MM) for lo, hi in (lim.x, lim.y))
        self.grbl = GrblSimulator(travel, flavor=self.options.flavor,
                                  homing=cfg.stage.homing, accel_mm_s2=accel)
        port = self.grbl.start()
        self._closers.append(self.grbl.close)
        if self.faults is not None:
            self.faults.attach_stage(self.grbl)
        return port

    def camera(self, folder: Path | None = None) -> TriggeredSimCamera:
        """The simulated camera the head file names: ``sim`` renders, ``replay:DIR`` replays."""
        cfg, o = self.cfg, self.options
        if self.wiring is None or self.grbl is None:
            raise RuntimeError("a simulated camera needs the simulated wiring and stage first")
        ill = cfg.illumination
        trigger = ill.trigger_pin if o.trigger_pin is None else o.trigger_pin
        leds = [s.pin for s in ill.states] if o.led_pins is None else list(o.led_pins)
        grbl = self.grbl  # the camera sees the glass where the carriage is, lost steps or not
        frame_s = cfg.camera.frame_time_ms / 1000.0
        if folder is None:
            cam = SimCamera(OpticsRenderer(cfg, o.shape), self.wiring, trigger, leds,
                            lambda: grbl.carriage_position, cfg.stage.roi_grid.origin_mm, frame_s)
            # render once now, LEDs dark: the renderer's Numba kernels compile (or load) here,
            # not in the camera's thread while the head keeps an LED group lit
            cam.expose((0,), cfg.stage.roi_grid.origin_mm)
        else:
            first = open_sample(find_samples(folder)[0])
            cam = ReplayCamera(first, self.wiring, trigger, leds,
                               lambda: grbl.carriage_position, frame_s)
        if self.faults is not None:
            self.faults.attach_camera(cam)
        self._closers.append(cam.close)
        return cam

    def close(self) -> None:
        while self._closers:
            with contextlib.suppress(Exception):  # one part failing must not keep the others
                self._closers.pop()()


class SimGlass:
    """Puts rendered glass, or a calibration target, on the simulated stage."""

    def __init__(self, camera: SimCamera, cfg: HeadConfig, scratch_share: float = 0.5):
        self.camera, self.cfg, self.scratch_share = camera, cfg, scratch_share

    def place(self, sample: Sample | Target | None) -> Sample | Target | None:
        """Put ``sample`` on the stage: glass (its ground truth), a calibration target such as
        ``DotGrid()`` or ``ReferencePlate()``, or None (an empty stage); returns it."""
        self.camera.load(sample)
        if sample is not None and not isinstance(sample, Sample):
            # a target paints with Numba kernels of its own (edge.sim.targets): render once now,
            # LEDs dark, so they compile (or load) here and not in the camera's thread while the
            # head keeps a group lit (a first compile there outlasted the LED watchdog)
            self.camera.expose((0,), self.cfg.stage.roi_grid.origin_mm)
        return sample

    def random(self, seed: int, sample_id: str | None = None) -> Sample:
        return generate_sample(seed, self.cfg.stage.roi_grid.extent_mm, self.scratch_share,
                               sample_id, glass=head_glass(self.cfg))

    def next(self, k: int, seed: int) -> tuple[str, Sample]:
        """The ``k``-th glass of a run that starts at ``seed``: its id and ground truth."""
        sample = self.place(self.random(seed + k))
        return sample.sample_id, sample

    def load(self, sample_id: str) -> Sample:
        """Glass for ``sample_id``, the same glass for the same id (the verdict server's case)."""
        seed = int.from_bytes(hashlib.sha256(sample_id.encode()).digest()[:4], "big")
        return self.place(self.random(seed, sample_id))


class ReplayGlass:
    """Puts recorded glass on the simulated stage: the samples recorded in one folder."""

    def __init__(self, camera: ReplayCamera, folder: Path):
        self.camera, self.folder = camera, folder
        self.samples = find_samples(folder)

    def _place(self, path: Path) -> tuple[str, Sample | None]:
        rec = open_sample(path)
        self.camera.load(rec)
        return rec.sample_id, rec.truth()

    def next(self, k: int, seed: int = 0) -> tuple[str, Sample | None]:
        """The ``k``-th recorded sample of the folder, in name order (wrapping around)."""
        return self._place(self.samples[k % len(self.samples)])

    def load(self, sample_id: str) -> Sample | None:
        for path in self.samples:
            if path.name == sample_id:
                return self._place(path)[1]
        from edge.recording import RecordingError

        raise RecordingError(f"{self.folder}: no recording of sample {sample_id!r} to replay")
