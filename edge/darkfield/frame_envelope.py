"""Is a single dark-field frame like the frames the window classifier was trained on?

The attention fusion classifier learned the simulator's world: a smooth haze whose only fine
structure is the camera's white noise, sparse dust, pits and shadows, scratches. Real frames
with per-pixel grain in the haze (speckle of 3-10 px) gave a probability of 0.82 or more on
every window of every image (issue 29): the network answers to texture it never saw, and its
FAIL on such a frame says nothing. So each prepared frame (:mod:`edge.darkfield.frame_prep`:
after its noise was matched) is measured here and compared with the **envelope** of the
classifier's own training frames, which ``glass-inspect export frame-envelope``
(:mod:`export.frame_envelope_fit`) writes as JSON into the model's metadata under
:data:`METADATA_KEY`. Outside it ``classify`` gives ERROR with one line naming the statistic,
its value and the trained range ("unlike the frames this classifier was trained on:
background power at 8 px 61.2 x white noise (trained 0.535-1.72)"), never PASS or FAIL. This
is :mod:`edge.envelope`'s guard of the six-state network, for one frame instead of a RoI.

The statistics (:data:`STATISTICS`), all in the noise units of the model's camera
(:class:`~edge.darkfield.noise.Sensor`: the whitening the network applies itself, so that a
statistic reads the same at any haze):

* ``power_Kpx`` for K in :data:`BAND_PX` (2, 4, 8 px): the background's power in the octave band
  of K px over that of white noise at the camera model's sigma. Means of K x K blocks, their
  fourth differences along rows and along columns (``m[i-2] - 4 m[i-1] + 6 m[i] - 4 m[i+1] +
  m[i+2]``), each divided by what white noise would give there (``sqrt(70) sigma / K``, sigma
  the camera model's at the block's level); the power is the median of their squares over the
  median of a chi-square of one degree (0.455), the lower of the two directions' powers.
  1.0: white noise; grain of 3-10 px at 1 % of the haze reads 30 or more at 8 px.

  Fourth differences, not second ones, cancel the haze's slope and curvature (vignetting,
  mottle): second differences of 32 px blocks read 80 x white noise on a 2,048 px frame. The
  median leaves out scratches and dust, which are sparse; grain covers the frame and moves
  it. The lower direction leaves out what runs one way: the two-tap seam, a step down the
  middle of the frame, and dark rows or columns (at 32 px on a 512 px frame the seam sits in
  a third of the row differences: eight simulated frames, seeds 700-707, read 1.7-3.8 with
  both directions pooled, 1.1-2.0 with the lower one). Grain has no direction.

  Not 16 or 32 px, though measured: the network does not see them (its whitening subtracts a
  15 px mean from every pixel, :mod:`model.attention`), and they read what does not matter to
  it. The noise match scales a frame's deviations from its 15 px mean only, so a matched
  frame keeps its own noise in larger blocks: 300 simulated 512 px frames saved at 8 bits
  read 1.37 x white noise at 16 px (median; up to 2.4) and 1.9 at 32 px (up to 8), where
  12-bit ones read 1.19 and 1.53. And on a 512 px frame a 32 px band reads the haze's mottle.
* ``noise_slope``: the noise (second differences of neighbouring pixels in every other row,
  the estimator of :mod:`edge.darkfield.noise`) in the brighter half of the frame's pixels over
  that in the darker half, each against the camera model at its level. A camera whose read and
  shot noise differ from the model's in another proportion, or grain that grows with the haze,
  moves it off 1.
* ``haze``: the frame's median above the camera's black level, a share of full scale (as
  :mod:`edge.darkfield.exposure` takes it). A bright-field frame (60-76 %) lies far above.
* ``haze_spread``: the 95th minus the 5th percentile of the frame's 32 px block means over
  their median (above black): the shape of the light, from a flat field to a steep blob.
* ``dark_outliers``, ``bright_outliers``: pixels more than :data:`OUTLIER_SIGMAS` noise sigmas
  below or above the local background (the median of their 16 px block, bilinear between the
  blocks), per megapixel: pits, shadows, dead pixels and dark rows; dust, glare and scratches.
* ``window_share``: the share of the frame's windows at the model's own operating point
  (probability 0.5 whatever ``--threshold`` says), measured after inference: a frame all of
  whose windows the network calls positive is a frame it does not understand. Only checked on
  frames of at least :data:`MIN_SHARE_WINDOWS` windows: one scratch can cover most of the nine
  windows of a 512 px frame.

Cost (``benchmarks/frame_envelope.py``, one core of a loaded machine, best of 5): 0.55 s on a
2,048 px frame, 27 % of the inference of its 225 windows on ONNX Runtime with one thread; 33
ms at 512 px. The outliers' block medians are about 40 % of it, the 2 px band a quarter.

The envelope: per statistic a range, the :data:`export.frame_envelope_fit` percentiles of the
training frames widened by a margin; the runtime reads ``version`` and ``ranges`` only. A
statistic that cannot be measured (NaN: a frame without haze) is outside. A model without an
envelope is not checked (``classify`` says so once); an envelope this runtime cannot read is an
error naming the fault, not a reason to skip the check.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import ndimage

from edge.darkfield.noise import REFERENCE_FULL_SCALE, Sensor
from edge.envelope import parse_document, parse_ranges

METADATA_KEY = "frame_envelope"
VERSION = 1
BAND_PX = (2, 4, 8)  # px; not 16 or 32 (module docstring)
SPREAD_PX = 32  # block side of the haze's shape
BACKGROUND_PX = 16  # block side of the outliers' local background
OUTLIER_SIGMAS = 6.0
MIN_SHARE_WINDOWS = 25  # a frame of 768 px or more
SHARE_PROBABILITY = 0.5  # the model's operating point (export.onnx shifts the logit to it)
CHI2_MEDIAN = 0.454936  # median of a chi-square of one degree of freedom
FOURTH = np.array([1.0, -4.0, 6.0, -4.0, 1.0])  # its white-noise gain: sum of squares, 70

# name -> (words for the user, unit after a value)
STATISTICS: dict[str, tuple[str, str]] = {
    f"power_{k}px": (f"background power at {k} px", " x white noise") for k in BAND_PX}
STATISTICS.update({
    "noise_slope": ("noise in the bright haze over the dim", ""),
    "haze": ("haze level", " of full scale"),
    "haze_spread": ("haze spread (5-95 % over the median)", ""),
    "dark_outliers": ("dark outliers", " per megapixel"),
    "bright_outliers": ("bright outliers", " per megapixel"),
    "window_share": ("share of windows positive", ""),
})
AFTER_INFERENCE = ("window_share",)
BEFORE_INFERENCE = tuple(n for n in STATISTICS if n not in AFTER_INFERENCE)
PREFIX = "unlike the frames this classifier was trained on"


class FrameEnvelopeError(ValueError):
    """A ``frame_envelope`` in a model's metadata that this runtime cannot read."""


@dataclass(frozen=True)
class Envelope:
    ranges: dict[str, tuple[float, float]]

    def to_json(self, **extra) -> str:
        d = {"version": VERSION, "ranges": {k: [lo, hi] for k, (lo, hi) in self.ranges.items()},
             **extra}
        return json.dumps(d, sort_keys=True)


@lru_cache(maxsize=16)
def parse(text: str) -> Envelope:
    """The envelope in a model's ``frame_envelope`` metadata; FrameEnvelopeError naming the
    fault."""
    d = parse_document(text, VERSION, FrameEnvelopeError)
    ranges = parse_ranges(d.get("ranges"), STATISTICS, FrameEnvelopeError)
    return Envelope(ranges)


def of_metadata(metadata) -> Envelope | None:
    """The model's frame envelope, None when it has none; FrameEnvelopeError when it cannot be
    read."""
    text = metadata.get(METADATA_KEY) if metadata else None
    return parse(text) if text else None


# -- measuring ----------------------------------------------------------------------------------
def _blocks(dn: np.ndarray, k: int) -> np.ndarray:
    """Means of the whole k x k blocks from the top left (a ragged edge is left out)."""
    h, w = (s // k * k for s in dn.shape)
    return dn[:h, :w].reshape(h // k, k, w // k, k).mean(axis=(1, 3), dtype=np.float64)


def _sigma(level_dn: np.ndarray, sensor: Sensor) -> np.ndarray:
    """The camera model's noise sigma in DN at a level in DN (12-bit scale)."""
    fs = REFERENCE_FULL_SCALE
    above = np.maximum(level_dn - sensor.black * fs, 0.0)
    return np.sqrt((sensor.read * fs) ** 2 + sensor.gain * fs * above)


def _robust_power(u: np.ndarray) -> float:
    """Variance of values whose bulk is normal, from the median of their squares."""
    u = u[np.isfinite(u)]
    return float(np.median(np.square(u))) / CHI2_MEDIAN if u.size else math.nan


def band_power(dn: np.ndarray, k: int, sensor: Sensor) -> float:
    """``power_Kpx`` (module docstring); NaN when the frame holds fewer than 5 x 5 blocks."""
    m = _blocks(dn, k)
    if min(m.shape) < FOURTH.size:
        return math.nan
    gain = math.sqrt(float(np.sum(FOURTH ** 2))) / k
    rows = sum(c * m[:, i:m.shape[1] - 4 + i] for i, c in enumerate(FOURTH))
    cols = sum(c * m[i:m.shape[0] - 4 + i, :] for i, c in enumerate(FOURTH))
    along_rows = _robust_power((rows / (gain * _sigma(m[:, 2:-2], sensor))).ravel())
    along_cols = _robust_power((cols / (gain * _sigma(m[2:-2, :], sensor))).ravel())
    return min(along_rows, along_cols)


def noise_slope(dn: np.ndarray, sensor: Sensor) -> float:
    """``noise_slope`` (module docstring)."""
    rows = dn[::2]
    a, b, c = rows[:, :-2], rows[:, 1:-1], rows[:, 2:]
    level = (a + b + c) / 3.0
    u = (2.0 * b - a - c) / (math.sqrt(6.0) * _sigma(level, sensor))
    top = REFERENCE_FULL_SCALE * 0.999
    ok = (np.maximum(np.maximum(a, b), c) < top).ravel()
    level, u = level.ravel()[ok], u.ravel()[ok]
    if u.size < 1000:
        return math.nan
    bright = level >= np.median(level)
    lo, hi = _robust_power(u[~bright]), _robust_power(u[bright])
    return math.sqrt(hi / lo) if lo > 0 else math.nan


def outliers(dn: np.ndarray, sensor: Sensor) -> tuple[float, float]:
    """(dark, bright) pixels beyond OUTLIER_SIGMAS of the local background, per megapixel."""
    k = BACKGROUND_PX
    h, w = (s // k * k for s in dn.shape)
    if h < 2 * k or w < 2 * k:
        return math.nan, math.nan
    cut = dn[:h, :w]
    med = np.median(cut.reshape(h // k, k, w // k, k).transpose(0, 2, 1, 3)
                    .reshape(h // k, w // k, k * k), axis=-1)
    # block medians at the blocks' centres, bilinear between them, flat beyond the outer ones
    back = ndimage.zoom(med, k, order=1, mode="nearest", grid_mode=True)
    z = (cut - back) / _sigma(back, sensor)
    mpx = cut.size / 1e6
    return (float(np.count_nonzero(z < -OUTLIER_SIGMAS)) / mpx,
            float(np.count_nonzero(z > OUTLIER_SIGMAS)) / mpx)


def measure(pixels: np.ndarray, sensor: Sensor) -> dict[str, float]:
    """The statistics of one prepared frame measured before inference (every one but
    ``window_share``); ``pixels`` H x W in [0, 1], ``sensor`` the model's camera."""
    dn = np.asarray(pixels, np.float32) * np.float32(REFERENCE_FULL_SCALE)
    out = {f"power_{k}px": band_power(dn, k, sensor) for k in BAND_PX}
    out["noise_slope"] = noise_slope(dn, sensor)
    black = sensor.black * REFERENCE_FULL_SCALE
    out["haze"] = (float(np.median(dn[::3, ::3])) - black) / REFERENCE_FULL_SCALE
    blocks = _blocks(dn, SPREAD_PX) - black
    p5, p50, p95 = np.percentile(blocks, [5, 50, 95]) if blocks.size else (math.nan,) * 3
    out["haze_spread"] = float((p95 - p5) / p50) if p50 > 0 else math.nan
    out["dark_outliers"], out["bright_outliers"] = outliers(dn, sensor)
    return out


def window_share(probability: np.ndarray) -> float:
    """``window_share``: the share of windows at the model's operating point or above; NaN for
    a frame of fewer than MIN_SHARE_WINDOWS windows (not judged)."""
    p = np.asarray(probability)
    if p.size < MIN_SHARE_WINDOWS:
        return math.nan
    return float(np.count_nonzero(p >= SHARE_PROBABILITY)) / p.size


# -- the check ----------------------------------------------------------------------------------
def _num(v: float) -> str:
    a = abs(v)
    if a != 0 and (a < 0.01 or a >= 1e4):
        return f"{v:.2e}"
    return f"{v:.3g}" if a < 100 else f"{v:.0f}"


def describe(name: str, value: float, lo: float, hi: float) -> str:
    words, unit = STATISTICS[name]
    trained = f"trained {_num(lo)}-{_num(hi)}"
    if not math.isfinite(value):
        return f"{words} cannot be measured ({trained})"
    return f"{words} {_num(value)}{unit} ({trained})"


def outside(stats: dict[str, float], envelope: Envelope,
            names: tuple[str, ...] | None = None) -> list[str]:
    """The statistics of ``names`` (default: all the envelope has a range for and ``stats``
    holds) outside their range, furthest out first (by the distance over the range's span)."""
    found = []
    for name, (lo, hi) in envelope.ranges.items():
        if (names is not None and name not in names) or name not in stats:
            continue
        v = stats[name]
        if lo <= v <= hi:  # NaN is outside
            continue
        span = max(hi - lo, 1e-12)
        far = (max(lo - v, v - hi) / span) if math.isfinite(v) else -1.0
        found.append((far, name))
    return [name for _, name in sorted(found, key=lambda t: -t[0])]


def check(stats: dict[str, float], envelope: Envelope,
          names: tuple[str, ...] | None = None) -> str | None:
    """None when ``stats`` lie inside ``envelope`` (only ``names``, when given), else the one
    line that says which statistic is furthest out: ``unlike the frames this classifier was
    trained on: <statistic> <value> (trained <lo>-<hi>)``, and the names of others outside."""
    found = outside(stats, envelope, names)
    if not found:
        return None
    first = found[0]
    text = f"{PREFIX}: {describe(first, stats[first], *envelope.ranges[first])}"
    if len(found) > 1:
        more = [STATISTICS[n][0] for n in found[1:]]
        text += f"; also outside: {', '.join(more[:4])}" + (
            f", {len(more) - 4} more" if len(more) > 4 else "")
    return text

