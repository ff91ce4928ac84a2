"""A frame's noise measured against the camera model the classifier was trained with, and
matched to it.

The attention fusion classifier's whitening (``model.attention``) divides each window by the
noise sigma its camera model gives (black level, read noise, conversion gain: the spec's
figures, :class:`Sensor`), so the network works in noise units, and it learned what noise looks
like in them. A frame noisier than that model looks like texture to it. Measured with the
shipped classifier on the first six clean test frames of 2,048 px (1,350 windows, read as
``glass-inspect classify`` reads them): the frames as simulated gave 57 false windows and failed
2 of 6 clean frames; 5 % more noise 146 and 3 of 6; 10 % more 413 and 6 of 6; 20 % more 1,205
and 6 of 6. An 8-bit file is such a frame too: its 16 DN steps (at 12 bits) add a quantisation
noise of 4.6 DN to a haze noise of 6-10 DN, and 4 clean 8-bit frames gave 476 false windows of
900 (12-bit: 45). A real camera's noise differs from any model by that much (another gain
setting, a warmer sensor), so ``classify`` measures each frame's and matches it.

Choices:

* **Measured from second differences.** ``u = (2 v[x] - v[x - 1] - v[x + 1]) / sqrt(6
  sigma^2)`` along every fourth row, ``sigma`` the model's at the three pixels' mean level:
  the haze changes smoothly and a second difference cancels its slope, so ``u`` holds noise
  only. Runs with a pixel at full scale are left out. The ratio is the RMS of ``u`` over
  ``|u|`` under 4 times that RMS (iterated from the median absolute value, then corrected for
  the clip), so dust, dead pixels and a scratch's edges do not count. A quantile alone fails on
  8-bit data, whose differences take a few values only.
* **Matched around the local level.** The classifier learned the noise of its training
  frames, which this estimator reads as :data:`REFERENCE_RATIO` (1.02: the right tap's 5 %
  higher gain raises its noise in the model's units). A frame whose ratio lies further than
  :data:`TOLERANCE` (0.035) from that has each pixel's deviation from its local level (the
  mean of the 15 x 15 px square around it) scaled by ``1.02 / ratio``. A scratch's light is
  part of the deviation, so the network then sees the frame's own signal-to-noise in the
  noise units it knows. On the 20 test frames (``evaluate-windows --bit-depth 8`` and
  ``--noise-scale 1.1``, with and without ``--no-noise-match``; model card): 8-bit files went
  from F1 0.763 with 19 of 20 clean images failed to 0.883 and 8 (12-bit: 0.883 and 2), a
  camera 10 % noisier from 0.818 and 13 to 0.873 and 2. Within the tolerance a
  frame is left as it is: every simulated frame, grey or mosaic (grey 2,048 px frames read
  1.017-1.019, balanced mosaics 1.021-1.029; 512 px ones up to 1.03 and 1.05), stays exactly
  what the classifier was measured on. The price: a frame up to 3.5 % noisier than the
  training frames is not matched.
* **One ratio per frame.** A camera whose read noise and shot noise are off by different
  factors would need the ratio per level; one ratio corrects most of it, and the model card
  says to measure a new camera's figures and train with them.
* **Only for a network that works in noise units** (``whiten`` in its spec): the paper's raw
  window input has no noise model to match.
* **Out of reach is an error.** A ratio outside :data:`LIMITS` (0.5-2) means another camera or
  a wrong bit depth (12-bit data read as 16-bit is 16 times too dark, and its noise far
  below the model's), not noise to correct: the image is not classified (ERROR, never PASS).
* **A model's own limits.** A model fine-tuned on a user's frames whose background reads as
  more noise (issue 29: the held-out texture's grain reads 2.1-6.4 x) carries its own limits in
  its ``noise_limits`` metadata (:func:`limits_of`, :class:`NoiseLimits`), which ``glass-inspect
  export frame-envelope --images`` writes to cover those frames: ``limits`` (beyond them an
  error, as above) and ``as_is``, the ratios it takes as they come. Grain is not noise: matching
  it scales the scratch down by the same factor (a 30 DN scratch on a frame reading 5.9 x
  becomes 5 DN; the shipped classifier found none of the held-out family's scratches), so
  those frames were trained on unmatched (:mod:`model.label_windows`) and are judged so. The
  frame envelope still judges whether a frame is like them.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np

from edge.kernels.local_level import LEVEL_PX, rescale_plane

REFERENCE_FULL_SCALE = 4095.0  # the model's DN figures are at 12 bits (model.attention)
REFERENCE_RATIO = 1.02  # the training frames' ratio by this estimator (module docstring)
TOLERANCE = 0.035
LIMITS = (0.5, 2.0)  # beyond these a frame is not from the model's camera
LIMITS_KEY = "noise_limits"  # a model's own limits, metadata (limits_of)
ROW_STEP = 4  # every fourth row's runs of three pixels: about a million on a 2,048 px frame
MIN_RUNS = 1000
CLIP = 4.0  # the RMS is taken over |u| under this many of itself
CLIP_BIAS = 0.99932  # a normal variable's RMS within +-4 sigma, in sigmas


class NoiseError(ValueError):
    """A frame whose noise cannot be measured or is out of the model's reach."""


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


def noise_ratio(pixels: np.ndarray, sensor: Sensor) -> float:
    """The frame's noise over the model's (module docstring); ``pixels`` H x W in [0, 1]."""
    rows = np.asarray(pixels, np.float32)[::ROW_STEP]
    a, b, c = rows[:, :-2], rows[:, 1:-1], rows[:, 2:]
    top = np.maximum(np.maximum(a, b), c)
    ok = top < 1.0  # below full scale, and not NaN (a NaN compares False)
    if int(ok.sum()) < MIN_RUNS:
        raise NoiseError(f"has {int(ok.sum())} runs of three neighbouring pixels below full "
                         f"scale on every {ROW_STEP}th row; expected at least {MIN_RUNS} to "
                         "measure its noise")
    a, b, c = a[ok], b[ok], c[ok]
    level = np.maximum((a + b + c) * np.float32(1 / 3) - np.float32(sensor.black), 0)
    var = np.float32(6 * sensor.read ** 2) + np.float32(6 * sensor.gain) * level
    u2 = np.square(2 * b - a - c) / var  # float32: differences of values in [0, 1] are exact
    rms = 1.4826 * math.sqrt(float(np.median(u2)))
    if rms == 0.0:  # more than half the runs flat: coarse data, start from the plain RMS
        rms = math.sqrt(float(np.mean(u2, dtype=np.float64)))
    for _ in range(8):
        inside = u2[u2 < (CLIP * rms) ** 2]
        if inside.size == 0:
            break
        new = math.sqrt(float(np.mean(inside, dtype=np.float64)))
        converged = abs(new - rms) < 1e-4 * rms
        rms = new
        if converged:
            break
    return rms / CLIP_BIAS


def works_in_noise_units(metadata: dict) -> bool:
    """Whether a classifier whitens its windows by its camera model (``whiten`` in its spec)."""
    try:
        return json.loads(metadata.get("spec") or "{}").get("whiten") is True
    except (ValueError, AttributeError):
        return False


@dataclass(frozen=True)
class NoiseLimits:
    """What a model accepts of a frame's noise ratio (``limits``, else an error) and what it
    takes as it comes (``as_is``, else matched to :data:`REFERENCE_RATIO`)."""

    limits: tuple[float, float] = LIMITS
    as_is: tuple[float, float] = (REFERENCE_RATIO - TOLERANCE, REFERENCE_RATIO + TOLERANCE)


CAMERA_MODEL = NoiseLimits()


def limits_of(metadata: dict) -> NoiseLimits:
    """The noise limits a model says in its ``noise_limits`` metadata (JSON ``{"limits": [lo,
    hi], "as_is": [lo, hi]}``, ``as_is`` optional), else the camera model's; NoiseError for
    limits that cannot be read, that leave out the model's own camera (``lo < 1.02 < hi``) or
    take as they come what they refuse."""
    text = metadata.get(LIMITS_KEY)
    if not text:
        return CAMERA_MODEL
    expected = '{"limits": [lo, hi], "as_is": [lo, hi]}, as export frame-envelope writes it'
    try:
        doc = json.loads(text)
        lo, hi = (float(v) for v in doc["limits"])
        a, b = (float(v) for v in doc.get("as_is", CAMERA_MODEL.as_is))
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        raise NoiseError(f"its {LIMITS_KEY} metadata cannot be read ({exc}); expected "
                         f"{expected}") from None
    if not (math.isfinite(hi) and 0.0 < lo < REFERENCE_RATIO < hi and lo <= a < b <= hi):
        raise NoiseError(f"its {LIMITS_KEY} metadata says limits {lo:g}-{hi:g}, as is "
                         f"{a:g}-{b:g}; expected limits around the camera model's own noise "
                         f"(0 < lo < {REFERENCE_RATIO} < hi) holding the as-is range")
    return NoiseLimits((lo, hi), (a, b))


def check(ratio: float, limits: NoiseLimits = CAMERA_MODEL) -> bool:
    """Whether a frame of this ratio is to be matched (False: left alone, within
    ``limits.as_is``); NoiseError when it is out of ``limits.limits`` (the model's:
    :func:`limits_of`)."""
    lo, hi = limits.limits
    if not (math.isfinite(ratio) and lo <= ratio <= hi):
        raise NoiseError(
            f"has noise {ratio:.2f} times the camera model the classifier was trained with; "
            f"expected {lo:g}-{hi:g}: a Bayer mosaic read as grey (--bayer), a wrong bit depth "
            "(12-bit data in 16-bit words needs --bit-depth 12), a background whose texture "
            "(grain, speckle, JPEG blocks) reads as noise: frames unlike the ones the classifier "
            "was trained on, or another camera or gain (measure its black level, read noise and "
            "conversion gain and train with them: model card)")
    a, b = limits.as_is
    return not a <= ratio <= b


def match(pixels: np.ndarray, ratio: float, sensor: Sensor) -> np.ndarray:
    """``pixels`` with each pixel's deviation from its local level scaled by
    ``REFERENCE_RATIO / ratio``: a new float32 array, saturated pixels kept at full scale."""
    src = np.asarray(pixels, dtype=np.float32)
    out = np.array(src, copy=True)
    rescale_plane(src, out, 1.0, float(sensor.black), float(sensor.read ** 2),
                  float(sensor.gain), LEVEL_PX // 2, REFERENCE_RATIO / float(ratio))
    np.minimum(out, np.float32(1.0), out=out)
    return out
