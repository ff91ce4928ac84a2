"""A Bayer RAW mosaic made grey for the single-frame classifier, without demosaicing.

The attention fusion classifier (:mod:`edge.classify`) was trained on grey frames: every pixel
the same response to the ring's white light. On a colour sensor each site of the 2 x 2 cell
sees that light through its own filter (the simulated camera: R 0.6, G 1.0, B 0.75 of G), so a
raw mosaic carries a checkerboard of tens of noise sigmas on a bright haze, which the network's
whitening reads as texture: on four test frames the shipped classifier found 26 of 44 scratch
windows of the mosaics against 38 of the same frames in grey.

Choices:

* **Balance, not demosaic.** Each site is brought to the brightest site's response at its own
  pixel, so the frame keeps full resolution and independent noise from pixel to pixel, as in the
  grey frames the network knows. A demosaic or a 2 x 2 mean would blur a 1-3 px scratch and
  correlate the noise.
* **Noise matched, not only level.** Scaling a site by ``1 / gain`` is not enough: a dimmer
  site collects fewer electrons, so scaled up it is noisier than a grey pixel at the same level
  (1.29 times for R where shot noise rules), and the network reads noise above the camera
  model it was trained with as texture. Measured on the first four test frames of 2,048 px
  (225 windows each): the raw mosaic gave 26 of 44 scratch windows (grey: 38); a plain
  ``1 / gain`` 433 false windows of 856 (grey: 37), every clean frame failed; the matched
  balance 38 of 44 and 38 false, as grey. So each site is split into its local level (the mean
  of a :data:`LEVEL_PX` square of its own pixels) and the deviation from it. The level goes
  to the brightest site's response, ``black + (level - black) / gain``; the deviation is
  scaled by the ratio of the camera's noise sigma at the balanced level to the one at the
  site's own (``sqrt(read^2 + k (level - black))``, the noise figures the model was trained
  with). A scratch's light is part of the deviation, so every pixel keeps its own
  signal-to-noise: what the whitening in front of the network turns into the same noise units
  as on a grey frame. The brightest site is left as it is.
* **Gains from the frame itself.** Dark-field haze (light scattered by the part and the optics)
  has the ring's own spectrum, the same as a scratch's light, and covers the frame. Each site's
  gain is the median of its pixels above black over the brightest site's: the haze is smooth,
  the four sites sample the same field, and the few scratch, dust and dead pixels do not move a
  median. The sites are named by position in the cell, not by colour, so no pattern (RGGB,
  GRBG, ...) needs to be known; the brightest site gets gain 1.
* **Too dark to balance is an error.** Every site's median must stand :data:`MIN_LEVEL_DN`
  (20 DN at 12 bits, eight times the simulated camera's read noise) above black; otherwise the
  gains would be guesses and the image is not classified (ERROR, never PASS).
* **Saturation stays full scale.** A pixel at full scale stays there, and a balanced value
  above it is clipped, as a grey sensor with the brightest site's response would have
  saturated there.
* **The camera's figures are the model's** (:class:`Sensor`): black level, read noise and
  conversion gain of the spec it was trained with (12-bit DN), as fractions of full scale,
  which is the same at any bit depth.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numba as nb
import numpy as np

REFERENCE_FULL_SCALE = 4095.0  # the model's DN figures are at 12 bits (model.attention)
MIN_LEVEL_DN = 20.0  # at 12 bits; see the module docstring
LEVEL_PX = 15  # side of a site's local level, in pixels of its plane (30 px of the frame)


class MosaicError(ValueError):
    """A mosaic whose colour sites cannot be balanced; the message says why."""


@dataclass(frozen=True)
class Sensor:
    """The camera's noise model as fractions of full scale: ``black`` level, ``read`` noise
    sigma, and ``gain``, the variance added per unit of signal above black (the conversion gain
    in DN per electron, over full scale)."""

    black: float
    read: float
    gain: float

    @classmethod
    def from_metadata(cls, metadata: dict) -> Sensor | None:
        """The figures a classifier was trained with, from its ``spec`` metadata (``black_dn``,
        ``read_noise_dn``, ``conversion_gain`` at 12 bits); None when it does not say them all."""
        try:
            spec = json.loads(metadata.get("spec") or "{}")
            black, read, k = (float(spec[n]) for n in ("black_dn", "read_noise_dn",
                                                        "conversion_gain"))
        except (ValueError, TypeError, KeyError, AttributeError):
            return None
        if not (math.isfinite(black) and 0.0 <= black < REFERENCE_FULL_SCALE
                and math.isfinite(read) and read > 0 and math.isfinite(k) and k > 0):
            return None
        fs = REFERENCE_FULL_SCALE
        return cls(black / fs, read / fs, k / fs)

    def sigma(self, level: np.ndarray) -> np.ndarray:
        """Noise sigma at ``level`` above black (clamped at 0), same scale."""
        return np.sqrt(np.float32(self.read ** 2) + np.float32(self.gain) * np.maximum(level, 0))


def sites(pixels: np.ndarray) -> list[np.ndarray]:
    """The four site planes of the 2 x 2 cell, row-major: (0, 0), (0, 1), (1, 0), (1, 1)."""
    return [pixels[..., r::2, c::2] for r in (0, 1) for c in (0, 1)]


def site_gains(pixels: np.ndarray, black: float) -> np.ndarray:
    """(2, 2) float32: each site's median level above ``black`` over the brightest site's.

    ``pixels``: an (H, W) mosaic scaled to [0, 1] whose first row and column are the cell's
    (0, 0) site (H and W even); ``black`` on the same scale."""
    if pixels.ndim != 2 or pixels.shape[0] % 2 or pixels.shape[1] % 2:
        raise MosaicError(f"a Bayer mosaic needs an even height and width, got "
                          f"{' x '.join(map(str, pixels.shape))}")
    # every other row and column of each site: a quarter of its pixels, as good a median of a
    # smooth haze, four times faster
    levels = np.array([float(np.median(s[::2, ::2])) - black for s in sites(pixels)])
    low = MIN_LEVEL_DN / REFERENCE_FULL_SCALE
    if not np.all(np.isfinite(levels)) or levels.min() < low:
        dn = ", ".join(f"{v * REFERENCE_FULL_SCALE:.1f}" for v in levels)
        raise MosaicError(
            f"is too dark to balance its Bayer colour sites: their median levels stand {dn} DN "
            f"(12-bit) above black; expected at least {MIN_LEVEL_DN:g} DN on every site, a "
            "dark-field haze to measure each filter's response on")
    return (levels / levels.max()).reshape(2, 2).astype(np.float32)


def box_mean(plane: np.ndarray, size: int = LEVEL_PX) -> np.ndarray:
    """Mean over the ``size`` x ``size`` square around each pixel, near the borders over the
    pixels inside (float32, the plane's shape)."""
    out = plane.astype(np.float64)
    half = size // 2
    for axis in (0, 1):
        n = out.shape[axis]
        c = np.cumsum(out, axis=axis)
        c = np.concatenate([np.zeros_like(np.take(c, [0], axis=axis)), c], axis=axis)
        hi = np.minimum(np.arange(n) + half + 1, n)
        lo = np.maximum(np.arange(n) - half, 0)
        count = (hi - lo).astype(np.float64)
        shape = [1, 1]
        shape[axis] = n
        out = (np.take(c, hi, axis=axis) - np.take(c, lo, axis=axis)) / count.reshape(shape)
    return out.astype(np.float32)


def balance(pixels: np.ndarray, gains: np.ndarray, sensor: Sensor) -> np.ndarray:
    """``pixels`` (H x W, [0, 1]) with every site brought to gain 1, noise matched (module
    docstring): a new float32 array of the same shape. The local level is :func:`box_mean`'s,
    computed by running sums in a Numba kernel."""
    src = np.asarray(pixels, dtype=np.float32)
    out = np.array(src, copy=True)
    for (r, c), g in np.ndenumerate(np.asarray(gains, np.float32)):
        if g != 1.0:
            _balance_plane(src[r::2, c::2], out[r::2, c::2], float(g), float(sensor.black),
                           float(sensor.read ** 2), float(sensor.gain), LEVEL_PX // 2)
    np.minimum(out, np.float32(1.0), out=out)
    return out


@nb.njit(cache=True, nogil=True)
def _balance_plane(src, dst, g, black, read2, k, half):  # pragma: no cover - compiled
    """One site's plane ``src`` balanced into ``dst``: its level is the mean of the square of
    side ``2 half + 1`` around each pixel (borders over the pixels inside), by running sums row
    by row: a column sum per column, then a running sum along the row."""
    h, w = src.shape
    cols = np.zeros(w, np.float64)  # column sums over the rows of row i's square
    for i in range(min(half + 1, h)):
        for j in range(w):
            cols[j] += src[i, j]
    for i in range(h):
        n_rows = min(i + half, h - 1) - max(i - half, 0) + 1
        s = 0.0
        for j in range(min(half + 1, w)):
            s += cols[j]
        for j in range(w):
            n = n_rows * (min(j + half, w - 1) - max(j - half, 0) + 1)
            level = s / n
            if j + 1 + half < w:
                s += cols[j + 1 + half]
            if j - half >= 0:
                s -= cols[j - half]
            v = src[i, j]
            if v >= 1.0:
                continue  # saturated stays saturated (dst holds the copy)
            above = level - black
            ratio = (math.sqrt(read2 + k * max(above / g, 0.0))
                     / math.sqrt(read2 + k * max(above, 0.0)))
            dst[i, j] = black + above / g + (v - level) * ratio
        if i + 1 + half < h:
            for j in range(w):
                cols[j] += src[i + 1 + half, j]
        if i - half >= 0:
            for j in range(w):
                cols[j] -= src[i - half, j]
