"""The simulated head's wires and cameras.

:class:`SimWiring` is gpiozero's ``MockFactory`` with pins that tell listeners about every
change, as the copper between the Jetson's header and the LED drivers and the camera's trigger
input would; it can also log every change like a logic analyser (one line per edge, flushed, so
a test can read it after the process is gone).

The cameras are hardware-triggered like a real one: a rising edge on the trigger pin *while
armed* starts an exposure. At that moment the camera reads which LED groups are lit (from the
pins, through the physical wiring it was given, not from what the head meant to do) and where
the stage is (from the stage simulator), then renders in its own thread; the frame is ready a
frame time after the trigger. So a wrong LED order or a frame taken mid-move shows in the image.

* :class:`SimCamera` renders the sample on the stage through :class:`edge.sim.optics.OpticsRenderer`
  (the scene of a RoI is built once per stage position, the noise differs per frame), mounted as
  the head's ``[simulation]`` says; the thing on the stage may also be a calibration target
  (:mod:`edge.sim.targets`);
* :class:`ReplayCamera` returns the recorded frame of the RoI under the camera for the lit group
  (several or no groups lit: a black frame, which the frame check refuses).
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from abc import abstractmethod
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from gpiozero.pins.mock import MockFactory, MockPin

from edge.hardware.camera import Camera, CameraTimeout
from edge.recording import RecordedSample, RecordingError
from edge.sim.optics import OpticsRenderer, Scene
from edge.sim.targets import Target
from edge.truth import Sample

log = logging.getLogger(__name__)

RENDER_LIMIT_S = 60.0  # a render slower than this is a bug in the simulator, not a slow host


# edges kept in memory: a real pin keeps no history, and a simulated head serving for hours
# must not grow with it (the trace file, when asked for, keeps every edge)
EDGE_HISTORY = 10_000


class _WiredPin(MockPin):
    def _change_state(self, value):
        changed = super()._change_state(value)
        if changed and len(self.states) > EDGE_HISTORY:  # gpiozero's own history, bounded
            del self.states[:-EDGE_HISTORY // 2]
        if changed:
            wiring = getattr(self.factory, "wiring", None)
            if wiring is not None:
                wiring._changed(self.info.number, bool(value))
        return changed


class SimWiring:
    """A ``MockFactory`` whose pin changes reach listeners (and an optional trace file)."""

    def __init__(self, trace: str | Path | None = None):
        self.factory = MockFactory(pin_class=_WiredPin)
        self.factory.wiring = self
        self._listeners: dict[int, list[Callable[[bool, float], None]]] = {}
        self.edges: deque[tuple[float, int, bool]] = deque(maxlen=EDGE_HISTORY)
        self._trace = open(trace, "a", buffering=1) if trace else None  # noqa: SIM115
        self._lock = threading.Lock()

    def state(self, header_pin: int) -> bool:
        return bool(self.factory.pin(f"BOARD{header_pin}").state)

    def listen(self, header_pin: int, callback: Callable[[bool, float], None]) -> None:
        self._listeners.setdefault(header_pin, []).append(callback)

    def _changed(self, header_pin: int, value: bool) -> None:
        t = time.monotonic()
        with self._lock:
            self.edges.append((t, header_pin, value))
            if self._trace is not None:
                self._trace.write(f"{t:.6f} {header_pin} {int(value)}\n")
        for cb in self._listeners.get(header_pin, ()):
            cb(value, t)

    def close(self) -> None:
        if self._trace is not None:
            self._trace.close()
            self._trace = None
        self.factory.close()


class TriggeredSimCamera(Camera):
    """What every simulated camera shares: arming, the trigger edge, frame timing, grabbing."""

    def __init__(self, wiring: SimWiring, trigger_pin: int, led_pins: Sequence[int],
                 stage_position: Callable[[], tuple[float, float]],
                 shape: tuple[int, int], bit_depth: int, frame_time_s: float):
        self.wiring, self.led_pins = wiring, list(led_pins)
        self.stage_position = stage_position
        self.shape, self.bit_depth, self.frame_time_s = shape, bit_depth, frame_time_s
        self.exposure_ms, self.gain = 0.0, 1.0
        self.triggers = 0
        self.render_s = 0.0  # CPU time spent making frames: on a real head, the camera's own
        self._armed = False
        self._in_flight = 0  # triggered frames not yet rendered
        self._count_lock = threading.Lock()
        self._jobs: queue.Queue = queue.Queue()
        self._frames: queue.Queue = queue.Queue()
        self._closed = False
        self._worker = threading.Thread(target=self._render_loop, name="sim-camera", daemon=True)
        self._worker.start()
        wiring.listen(trigger_pin, self._edge)

    def configure(self, exposure_ms: float, gain: float = 1.0) -> None:
        self.exposure_ms, self.gain = exposure_ms, gain

    def arm(self) -> None:
        while not self._frames.empty():  # a frame nobody grabbed belongs to no one now
            self._frames.get_nowait()
        self._armed = True

    def _edge(self, rising: bool, t: float) -> None:
        if not rising or not self._armed or self._closed:
            return
        self._armed = False
        self.triggers += 1
        lit = tuple(k for k, pin in enumerate(self.led_pins) if self.wiring.state(pin))
        with self._count_lock:
            self._in_flight += 1
        self._jobs.put((lit, self.stage_position(), t, self.exposure_ms))

    def _render_loop(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            lit, pos, t, exposure_ms = job
            t0 = time.perf_counter()
            try:
                frame = self.expose(lit, pos, exposure_ms)
            except Exception as exc:  # handed to grab(), which reports it as a camera error
                frame = exc
            self.render_s += time.perf_counter() - t0
            with self._count_lock:
                self._in_flight -= 1
            self._frames.put((frame, t + self.frame_time_s))

    def grab(self, timeout_s: float) -> np.ndarray:
        try:
            frame, ready_at = self._frames.get(timeout=timeout_s)
        except queue.Empty:
            self._armed = False
            if self._in_flight == 0:
                raise CameraTimeout(f"camera delivered no frame within {timeout_s:.2f} s of "
                                    "being armed (is the trigger wired and pulsed?)") from None
            # triggered, still rendering: the simulator's CPU time is not the camera's, so a
            # busy host must not look like a broken camera
            log.debug("simulated camera: rendering takes longer than %.2f s", timeout_s)
            frame, ready_at = self._frames.get(timeout=RENDER_LIMIT_S)
        if isinstance(frame, Exception):
            raise frame
        wait = ready_at - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        return frame

    @abstractmethod
    def expose(self, lit: tuple[int, ...], stage_mm: tuple[float, float],
               exposure_ms: float | None = None) -> np.ndarray:
        """The RAW frame with groups ``lit`` on and the stage at ``stage_mm``, exposed for
        ``exposure_ms`` (None: the head file's exposure)."""

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._jobs.put(None)
            self._worker.join(timeout=5.0)


class SimCamera(TriggeredSimCamera):
    """Renders the sample (or calibration target) on the stage. ``grid_origin_mm`` is the stage
    position of the sample's origin (the RoI grid's origin), so stage mm minus it are sample mm;
    where the camera really looks from there is the renderer's business (its mounting)."""

    def __init__(self, optics: OpticsRenderer, wiring: SimWiring, trigger_pin: int,
                 led_pins: Sequence[int],
                 stage_position: Callable[[], tuple[float, float]],
                 grid_origin_mm: tuple[float, float], frame_time_s: float):
        super().__init__(wiring, trigger_pin, led_pins, stage_position, optics.shape,
                         optics.cfg.camera.bit_depth, frame_time_s)
        self.optics, self.grid_origin = optics, grid_origin_mm
        self.exposure_ms = optics.cfg.camera.exposure_ms
        self.sample: Sample | Target | None = None
        # a lens out of focus (edge.sim.faults' defocus): the scene blurred by a Gaussian of
        # this sigma in px before the sensor reads it; 0: in focus
        self.blur_px = 0.0
        self._scene = None
        self._scene_key = None
        self._wide: dict[int, OpticsRenderer] = {}  # renderers of the view plus a margin

    def load(self, sample: Sample | Target | None) -> None:
        """The sample or calibration target now on the stage (the handler placed it)."""
        self.sample, self._scene, self._scene_key = sample, None, None

    def expose(self, lit: tuple[int, ...], stage_mm: tuple[float, float],
               exposure_ms: float | None = None) -> np.ndarray:
        origin = (round(stage_mm[0] - self.grid_origin[0], 4),
                  round(stage_mm[1] - self.grid_origin[1], 4))
        sample = self.sample or Sample("empty", (0.0, 0.0))
        blur = self.blur_px
        key = (id(sample), origin, blur)
        if key != self._scene_key:
            scene = self._defocused(sample, origin, blur) if blur > 0 else \
                self.optics.scene(sample, origin)
            self._scene, self._scene_key = scene, key
        seed = hash((getattr(sample, "seed", 0), origin, lit, self.triggers)) & 0xFFFF_FFFF_FFFF
        nominal = self.optics.cfg.camera.exposure_ms
        factor = 1.0 if not exposure_ms else exposure_ms / nominal
        return self.optics.expose(self._scene, lit, seed, factor)

    def _defocused(self, sample: Sample | Target, origin: tuple[float, float],
                   sigma: float) -> Scene:
        """The scene as a lens out of focus forms it: the glass's light (not the sensor's
        noise, which comes after the lens) blurred by a Gaussian of ``sigma`` px. It is
        rendered over the view plus a margin of 4 sigma, so that what lies just outside the
        view blurs into it as it would, then cut to the view. A renderer whose window is
        larger by the margin on every side, at an origin moved back by it, has the same
        centre and so the same mounting (:class:`edge.sim.optics.CameraGeometry`)."""
        from scipy.ndimage import gaussian_filter

        m = 2 * math.ceil(2.0 * sigma)
        h, w = self.optics.shape
        wide = self._wide.get(m)
        if wide is None:
            wide = self._wide[m] = OpticsRenderer(self.optics.cfg, (h + 2 * m, w + 2 * m))
        sx, sy = self.optics.mm_per_px
        big = wide.scene(sample, (origin[0] - m * sx, origin[1] - m * sy))
        layers = np.empty((big.layers.shape[0], h, w), np.float32)
        for k, layer in enumerate(big.layers):
            layers[k] = gaussian_filter(layer, sigma, mode="constant")[m:m + h, m:m + w]
        view = self.optics.empty_scene(origin, big.radiance)
        view.occupied[:] = 1  # blurred light reaches everywhere
        return Scene(layers, view.occupied, np.ascontiguousarray(big.mask[m:m + h, m:m + w]),
                     view.origin_mm, big.defect_ids, big.radiance)


class ReplayCamera(TriggeredSimCamera):
    """Replays a recorded sample: the RoI recorded at the stage position, the lit state."""

    def __init__(self, recorded: RecordedSample, wiring: SimWiring, trigger_pin: int,
                 led_pins: Sequence[int], stage_position: Callable[[], tuple[float, float]],
                 frame_time_s: float):
        _, h, w = recorded.shape
        cam = recorded.manifest.camera
        super().__init__(wiring, trigger_pin, led_pins, stage_position, (h, w), cam.bit_depth,
                         frame_time_s)
        self.recorded = recorded
        self._cache: tuple[int, np.ndarray] | None = None

    def load(self, recorded: RecordedSample) -> None:
        """The recorded sample now on the stage; it must have been taken by this camera."""
        if recorded.shape[1:] != self.shape:
            raise RecordingError(f"{recorded.dir}: recorded {recorded.shape[2]} x "
                                 f"{recorded.shape[1]} px frames, the camera takes "
                                 f"{self.shape[1]} x {self.shape[0]}")
        self.recorded, self._cache = recorded, None

    def expose(self, lit: tuple[int, ...], stage_mm: tuple[float, float],
               exposure_ms: float | None = None) -> np.ndarray:
        """The recorded frame (taken at whatever exposure the recording head used)."""
        best = min(self.recorded.manifest.rois, key=lambda e: math.dist(e.stage_mm, stage_mm))
        if math.dist(best.stage_mm, stage_mm) > 0.05 or len(lit) != 1:
            return np.zeros(self.shape, np.uint16)  # nothing recorded there: a black frame
        if self._cache is None or self._cache[0] != best.index:
            self._cache = (best.index, self.recorded.frames(best.index))
        return self._cache[1][lit[0]]
