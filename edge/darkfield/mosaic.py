"""A Bayer RAW mosaic made grey for the single-frame classifier, without demosaicing.

The attention fusion classifier (:mod:`edge.darkfield.classify`) was trained on grey frames: every
pixel the same response to the ring's white light. On a colour sensor each site of the 2 x 2 cell
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
  of a 15 px square of its own pixels, 30 px of the frame) and the deviation from it. The level goes
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
* **The camera's figures are the model's** (:class:`edge.darkfield.noise.Sensor`): black level, read
  noise and
  conversion gain of the spec it was trained with (12-bit DN), as fractions of full scale,
  which is the same at any bit depth.
"""

from __future__ import annotations

import numpy as np

from edge.darkfield.noise import REFERENCE_FULL_SCALE, Sensor
from edge.kernels.local_level import LEVEL_PX, rescale_plane

MIN_LEVEL_DN = 20.0  # at 12 bits; see the module docstring


class MosaicError(ValueError):
    """A mosaic whose colour sites cannot be balanced; the message says why."""


def sites(pixels: np.ndarray) -> list[np.ndarray]:
    """The four site planes of the 2 x 2 cell, row-major: (0, 0), (0, 1), (1, 0), (1, 1)."""
    return [pixels[..., r::2, c::2] for r in (0, 1) for c in (0, 1)]


def site_gains(pixels: np.ndarray, black: float) -> np.ndarray:
    """(2, 2) float32: each site's median level above ``black`` over the brightest site's.

    ``pixels``: an (H, W) mosaic scaled to [0, 1] whose first row and column are the cell's
    (0, 0) site (H and W even); ``black`` on the same scale."""
    if pixels.ndim != 2 or pixels.shape[0] % 2 or pixels.shape[1] % 2:
        raise MosaicError(f"a Bayer mosaic needs an even height and width, got "
                          f"{' x '.join(map(str, pixels.shape[::-1]))} px (width x height)")
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


def balance(pixels: np.ndarray, gains: np.ndarray, sensor: Sensor) -> np.ndarray:
    """``pixels`` (H x W, [0, 1]) with every site brought to gain 1, noise matched (module
    docstring): a new float32 array of the same shape."""
    src = np.asarray(pixels, dtype=np.float32)
    out = np.array(src, copy=True)
    for (r, c), g in np.ndenumerate(np.asarray(gains, np.float32)):
        if g != 1.0:
            rescale_plane(src[r::2, c::2], out[r::2, c::2], float(g), float(sensor.black),
                          float(sensor.read ** 2), float(sensor.gain), LEVEL_PX // 2, 1.0)
    np.minimum(out, np.float32(1.0), out=out)
    return out
