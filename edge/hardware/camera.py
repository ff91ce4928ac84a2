"""The camera: one small interface for every backend, and the check every frame passes.

The head drives a hardware-triggered camera: ``arm()`` readies it for the next trigger, the ring
light's trigger line starts the exposure, ``grab(timeout)`` returns the RAW frame. A real
industrial camera backend implements :class:`Camera`; the simulated head uses
:class:`edge.sim.camera.SimCamera` and :class:`edge.sim.camera.ReplayCamera`.

:func:`check_frame` refuses what the pipeline must never see: a wrong shape or dtype, values
beyond the bit depth, a constant frame (the sensor delivered no image: a dark-field frame always
has read noise) and a frame mostly at full scale (ambient light or a runaway exposure would hide
any scratch). Saturated *specks* are normal: dust and stains often saturate.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numba
import numpy as np

from edge.hardware import HardwareError

# a frame with more than this share of its pixels at full scale is refused
SATURATED_SHARE = 0.25


class CameraError(HardwareError):
    """The camera did not deliver a usable frame; the message says which and why."""


class CameraTimeout(CameraError):
    pass


class FrameError(CameraError):
    pass


class Camera(ABC):
    """A hardware-triggered RAW camera."""

    shape: tuple[int, int]
    bit_depth: int
    #: the camera's serial number, which a calibration is bound to ("": unknown, not checked)
    serial: str = ""

    @abstractmethod
    def configure(self, exposure_ms: float, gain: float = 1.0) -> None: ...

    @abstractmethod
    def arm(self) -> None:
        """Accept the next trigger pulse; a frame not armed for is not taken."""

    @abstractmethod
    def grab(self, timeout_s: float) -> np.ndarray:
        """The frame of the last trigger, or :class:`CameraTimeout` after ``timeout_s``."""

    def close(self) -> None:  # noqa: B027 - optional for backends without resources
        pass

    def __enter__(self) -> Camera:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@numba.njit(cache=True, nogil=True)
def _stats(flat, full):
    """(min, max, count >= full) of a uint16 frame. Branch-free, in blocks with small
    accumulators, so LLVM vectorises it: 1.8 ms for a 3504 x 3120 frame against 9.3 ms for the
    plain loop, which the head spends once per frame between a grab and the next trigger."""
    n = flat.size
    lo, hi, sat = np.uint16(65535), np.uint16(0), 0
    for start in range(0, n, 4096):
        blo, bhi, bsat = np.uint16(65535), np.uint16(0), np.int32(0)
        for i in range(start, min(start + 4096, n)):
            v = flat[i]
            blo = min(blo, v)
            bhi = max(bhi, v)
            bsat += np.int32(v >= full)
        lo, hi, sat = min(lo, blo), max(hi, bhi), sat + bsat
    return lo, hi, sat


def check_frame(frame: np.ndarray, shape: tuple[int, int], bit_depth: int, what: str) -> np.ndarray:
    """``frame`` if the pipeline can use it, else :class:`FrameError` naming ``what``."""
    if not isinstance(frame, np.ndarray) or frame.dtype != np.uint16:
        raise FrameError(f"{what}: expected a uint16 RAW frame, got "
                         f"{getattr(frame, 'dtype', type(frame).__name__)}")
    if frame.shape != tuple(shape):
        raise FrameError(f"{what}: expected a {shape[1]} x {shape[0]} px frame, got "
                         f"{frame.shape[-1]} x {frame.shape[0] if frame.ndim else 0}")
    full = (1 << bit_depth) - 1
    lo, hi, sat = _stats(np.ascontiguousarray(frame).reshape(-1), full)
    if hi > full:
        raise FrameError(f"{what}: value {hi} beyond the {bit_depth}-bit range (max {full}); "
                         "the camera's pixel format does not match the head file")
    if lo == hi:
        raise FrameError(f"{what}: every pixel is {lo} DN; the camera delivered no image")
    if sat > SATURATED_SHARE * frame.size:
        raise FrameError(f"{what}: {100.0 * sat / frame.size:.0f} % of the pixels are saturated; "
                         "ambient light or a wrong exposure")
    return frame
