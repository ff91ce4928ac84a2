"""Dark frames: the sensor's dark level, its read noise, and the hot pixels.

With every LED group dark (or the lens capped), N frames at the head's exposure. Per pixel the
mean is the dark level (offset plus the dark current of a hot pixel), and the spread over the N
frames is the temporal noise.

Choices:

* The dark level is kept as a map: hot pixels sit far above the sensor's offset, and the
  runtime subtracts the map (a real sensor's offset also varies by column and by region).
* The read noise is one figure, the median of the per-pixel temporal standard deviations (robust
  against the few hot pixels, whose shot noise is higher).
* A pixel is **hot** when its mean dark level is above the frame's median by more than
  ``HOT_SIGMA`` times the read noise and at least ``HOT_MIN_DN`` DN. The mean over N frames has
  a noise of read_noise / sqrt(N), so at N = 8 a threshold of 6 sigma of one frame is 17 sigma
  of the mean: a false hot pixel from noise alone is practically impossible, and a hot pixel as
  dim as ~15 DN above the offset is still found.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

HOT_SIGMA = 6.0
HOT_MIN_DN = 8.0


@dataclass
class DarkResult:
    level: np.ndarray  # (H, W) float32, DN: the mean dark frame
    read_noise_dn: float
    offset_dn: float  # the median dark level: the sensor's offset
    hot: np.ndarray  # (H, W) bool

    def summary(self) -> dict:
        return {"offset_dn": round(self.offset_dn, 3),
                "read_noise_dn": round(self.read_noise_dn, 3), "hot_pixels": int(self.hot.sum())}


class RunningStats:
    """Per-pixel mean and variance of frames that arrive one at a time (Welford), so N full
    frames never sit in memory at once."""

    def __init__(self) -> None:
        self.n = 0
        self.mean: np.ndarray | None = None
        self._m2: np.ndarray | None = None

    def add(self, frame: np.ndarray) -> None:
        x = frame.astype(np.float64)
        if self.mean is None:
            self.mean, self._m2 = np.zeros_like(x), np.zeros_like(x)
        self.n += 1
        delta = x - self.mean
        self.mean += delta / self.n
        self._m2 += delta * (x - self.mean)

    @property
    def std(self) -> np.ndarray:
        if self.n < 2:
            raise ValueError("the spread of a pixel needs at least 2 frames")
        return np.sqrt(self._m2 / (self.n - 1))


def measure_dark(frames) -> DarkResult:
    """The dark level map, read noise and hot pixels of ``frames`` (an iterable of (H, W) RAW
    frames taken dark, at least 2)."""
    stats = RunningStats()
    for f in frames:
        stats.add(f)
    if stats.n < 2:
        raise ValueError(f"dark calibration needs at least 2 frames, got {stats.n}")
    level = stats.mean
    noise = float(np.median(stats.std))
    offset = float(np.median(level))
    hot = level > offset + max(HOT_SIGMA * noise, HOT_MIN_DN)
    return DarkResult(level.astype(np.float32), noise, offset, hot)
