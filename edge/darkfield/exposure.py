"""Whether a single dark-field frame is exposed so that the window classifier can judge it.

A frame the classifier cannot judge must be ERROR, never PASS. Three ways a frame is not
judgeable pass every other check (the file reads, its size fits, and its noise can match the
camera model's):

* **Flat:** every pixel the same value (a blank or synthetic file, a dead camera).
* **Overexposed:** more than :data:`MAX_SATURATED` of the pixels at full scale. A scratch in a
  saturated area gives no light above it, so a PASS would vouch for glass nobody saw. The
  simulated training frames have at most 0.001 % saturated (bright dust); 1 % of a 2,048 px
  frame is already a 205 px square.
* **Too dark:** the frame's haze, its median above the camera's black level, under
  :data:`MIN_HAZE` of full scale. With the ring light off the shipped classifier gave PASS (9 of
  225 windows positive, none reaching the region threshold) on a frame of nothing but read noise.
  It was trained on haze of 10-30 % of full scale at the optical centre (frame medians 8.8-27 %).
  On the 100 development frames rendered with darker haze (``glass-inspect evaluate-windows
  --on development --images 100 --haze 0.02,0.03``, ``0.03,0.06`` and ``0.06,0.10``; 300
  scratch-free renderings, each by its median), the region threshold failed clean frames at
  these rates: median under 2 %: 29 of 29; 2-3 %: 85 of 86; 3-4 %: 26 of 42; 4-5 %: 3 of 39;
  5-6 %: 0 of 24; 6-8 %: 5 of 63; 8-12 %: 2 of 17 (in the trained haze: 10 of 100). In the
  lower noise of a dim frame faint dust stands out as a scratch would. So the floor is 4 %:
  below it a clean part fails more often than not. A model trained for a darker light says its
  own floor in its ``haze_floor`` metadata (a fraction of full scale; ``glass-inspect export
  onnx --haze-floor``).

A **bright** haze is judged, with a warning: on the 100 development frames rendered with 40-60
% haze (``--haze 0.4,0.6``, with the trained frames' 100 for the lower medians), clean frames
failed by their median: 30-40 %, 4 of 31; 40-50 %, 19 of 62 (in the trained haze, 10 of 100).
Three times as many false rejects is worse, not meaningless, so a frame above
:data:`BRIGHT_HAZE` is classified and its line says so (its region threshold should be checked on
the line's clean parts).

The median needs no noise model, only the camera model's black level; a model that does not say
its camera is not checked (:mod:`edge.darkfield.frame_prep`).
"""

from __future__ import annotations

import json
import math

import numpy as np

MIN_HAZE = 0.04  # of full scale above black: the shipped classifier's floor (module docstring)
MAX_SATURATED = 0.01  # share of pixels at full scale
BRIGHT_HAZE = 0.40  # above it the shipped classifier fails about three times as many clean parts


class ExposureError(ValueError):
    """A frame the classifier cannot judge; the message says why and what was expected."""


def haze_floor(metadata: dict) -> float:
    """The model's ``haze_floor`` metadata when it says a valid one, else :data:`MIN_HAZE`."""
    try:
        value = float(json.loads(metadata.get("haze_floor") or "null"))
    except (TypeError, ValueError, AttributeError):
        return MIN_HAZE
    return value if math.isfinite(value) and 0.0 <= value < 1.0 else MIN_HAZE


def check(pixels: np.ndarray, black: float = 0.0, floor: float = MIN_HAZE) -> float:
    """The frame's haze (median above ``black``, a fraction of full scale) when the frame can be
    judged; ExposureError when it is flat, overexposed or darker than ``floor``. ``pixels``
    H x W in [0, 1]."""
    px = np.asarray(pixels)
    lo, hi = float(px.min()), float(px.max())
    if lo == hi:
        raise ExposureError(f"is flat: every pixel is {100 * lo:.1f} % of full scale; expected "
                            "a dark-field frame (a blank or synthetic file, or a dead camera?)")
    saturated = float(np.count_nonzero(px >= 1.0)) / px.size
    if saturated > MAX_SATURATED:
        raise ExposureError(
            f"is overexposed: {100 * saturated:.1f} % of its pixels at full scale; expected at "
            f"most {100 * MAX_SATURATED:g} % (bright dust), since a scratch in a saturated area "
            "cannot be seen: shorten the exposure or lower the gain")
    haze = float(np.median(px[::3, ::3])) - black  # every 3rd: each Bayer site, 1/9 the sort
    if haze < floor:
        raise ExposureError(
            f"is too dark: its haze (median) is {100 * haze:.1f} % of full scale above the "
            f"black level; expected at least {100 * floor:g} %, the darkest light the "
            "classifier's verdicts hold for: is the ring light on, the exposure long enough, "
            "the bit depth right (12-bit data in 16-bit words needs --bit-depth 12)? A darker "
            "line needs a classifier trained for it (model card)")
    return haze
