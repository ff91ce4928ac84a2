"""A whole simulated inspection head, assembled from the same parts as a real one.

The ring light is the real :class:`edge.hardware.leds.RingLight` on gpiozero's ``MockFactory``
(through :class:`edge.sim.camera.SimWiring`), the stage the real :class:`GrblStage` driver on a
pseudo-terminal served by :class:`edge.sim.grbl.GrblSimulator`, the camera a
:class:`edge.sim.camera.SimCamera` wired to the trigger and LED pins, and the engine whatever
the head file names (ONNX Runtime on a CPU). Only the sample handling is simulated beyond the
parts: :meth:`SimRig.place` puts a sample on the stage.

``led_pins`` is the *physical* wiring of the ring's 6 facet pairs (0, 30, ... 150 degrees) to
header pins; by default the head file's. A head file that disagrees with the wiring lights the
wrong facets, and the frames show it.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from edge.config import HeadConfig
from edge.engine import Engine
from edge.hardware.grbl import GrblStage
from edge.hardware.leds import RingLight
from edge.head import Head
from edge.sim.camera import SimCamera, SimWiring
from edge.sim.grbl import GrblSimulator
from edge.sim.optics import SimHead
from edge.sim.sample import Sample, generate_sample
from edge.verdict import Verdict


class SimRig:
    def __init__(self, cfg: HeadConfig, engine: Engine, shape: tuple[int, int] | None = None,
                 led_pins: Sequence[int] | None = None, trigger_pin: int | None = None,
                 flavor: str = "grbl", trace: str | Path | None = None,
                 record_dir: str | None = None, calibration=None, scratch_share: float = 0.5):
        self.cfg, self.scratch_share = cfg, scratch_share
        self.optics = SimHead(cfg, shape)
        self._closers = []
        try:
            self.wiring = SimWiring(trace)
            self._closers.append(self.wiring.close)
            lim = cfg.stage.soft_limits_mm
            self.grbl = GrblSimulator((lim.x, lim.y), flavor=flavor, homing=cfg.stage.homing,
                                      accel_mm_s2=cfg.simulation.stage_accel_mm_s2)
            port = self.grbl.start()
            self._closers.append(self.grbl.close)
            self.ring = RingLight(cfg.illumination, pin_factory=self.wiring.factory)
            self._closers.append(self.ring.close)
            self.stage = GrblStage(port, cfg.stage.baud, (lim.x, lim.y), cfg.stage.feed_mm_min,
                                   home=cfg.stage.homing)
            self._closers.append(self.stage.close)
            ill = cfg.illumination
            self.camera = SimCamera(
                self.optics, self.wiring,
                ill.trigger_pin if trigger_pin is None else trigger_pin,
                [s.pin for s in ill.states] if led_pins is None else led_pins,
                lambda: self.grbl.position, cfg.stage.roi_grid.origin_mm,
                cfg.camera.frame_time_ms / 1000.0)
            self._closers.append(self.camera.close)
            self.head = Head(cfg, self.ring, self.stage, self.camera, engine, calibration,
                             record_dir)
        except BaseException:
            self.close()
            raise

    def place(self, sample: Sample | None) -> None:
        self.camera.load(sample)

    def random_sample(self, seed: int, scratch_share: float = 0.5,
                      sample_id: str | None = None) -> Sample:
        extent = self.cfg.stage.roi_grid.extent_mm
        return generate_sample(seed, extent, scratch_share, sample_id)

    def inspect(self, sample_id: str, abort: threading.Event,
                progress: Callable[[int, int], None]) -> Verdict:
        """The inspector the verdict server drives: the handler has put glass ``sample_id``
        on the stage (here: a random sample seeded by the id, so an id always shows the same
        glass), and the head inspects it."""
        seed = int.from_bytes(hashlib.sha256(sample_id.encode()).digest()[:4], "big")
        sample = self.random_sample(seed, self.scratch_share, sample_id)
        self.place(sample)
        return self.head.inspect(sample_id, abort, progress, truth=sample)

    def close(self) -> None:
        while self._closers:
            # one part failing to close must not keep the others (the LEDs) from closing
            with contextlib.suppress(Exception):
                self._closers.pop()()

    def __enter__(self) -> SimRig:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
