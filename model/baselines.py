"""Detectors without training, scored through the same post-processing and counts as networks.

Each turns one RoI's 6 RAW frames into a score map in [0, 1] at half resolution (the network's
output grid), so :func:`edge.postprocess.find_scratches` and the evaluation treat it exactly as
they treat a network. Per state the map works on the sum of each 2 x 2 Bayer cell (all four
colours: the sensor's full response, and the space-to-depth grid), in raw DN; no calibration is
needed, which is what an uncalibrated head gives.

* :class:`OtsuScorer`, **Otsu on the brightest of the 6 frames**: what a dark-field system that
  cannot tell contamination from scratches does. Per pixel the brightest state; Otsu's
  threshold on that image (:func:`otsu_threshold`); score 1 above it, 0 below. Dust, fibres and
  stains are as bright as scratches here, so this baseline flags them all.

* :class:`PhysicsScorer`, **the physics of the six-state ring light**: a scratch is a line, and
  it scatters into the camera only under the LED groups nearly across it (bright in few
  states); a dust speck or a stain scatters under every group. Per pixel:

  1. ``contrast`` = brightest state minus the mean of the three dimmest (the dark offset and
     the haze cancel, and a contaminant that is bright in every state is left small);
  2. a ``gate`` on how much of the light comes from few states: ``contrast`` over the mean
     signal above the background (the median of the dimmest state); a scratch lit by one or two
     groups of six reaches 2-5, a contaminant lit by all stays below 1; the gate ramps from 0 at
     ``GATE_LOW`` to 1 at ``GATE_HIGH``;
  3. the gated contrast averaged along a line of ``LINE_PX`` pixels in each of 12 orientations,
     the best orientation kept (:func:`line_response`): a line adds up along itself, speckle
     and noise do not;
  4. the response minus its median, over its robust spread (1.4826 x the median absolute
     deviation) of the RoI: ``z``; score ``1 - exp(-max(z - Z0, 0) / Z0)``, so T_low 0.25 sits
     near 3.9 sigma and T_high 0.75 near 7.2 sigma. Choice: normalising per RoI makes the
     score independent of the head's exposure and gain, as the thresholds of a network are.

The numbers (``LINE_PX`` 11 score pixels, about 0.25 mm; the gate from 1.0 to 2.0; ``Z0`` 3)
were set by looking at simulated validation RoIs (seeds below the held-out ones), not at the
held-out set.
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np

from edge.config import N_STATES

LINE_PX = 11
ORIENTATIONS = 12
GATE_LOW, GATE_HIGH = 1.0, 2.0
Z0 = 3.0


def cell_sums(frames: np.ndarray) -> np.ndarray:
    """``(6, H, W)`` RAW -> ``(6, H/2, W/2)`` float32: the sum of each 2 x 2 Bayer cell."""
    n, h, w = frames.shape
    f = frames[:, :h - h % 2, :w - w % 2].astype(np.float32)
    return (f[:, 0::2, 0::2] + f[:, 0::2, 1::2] + f[:, 1::2, 0::2] + f[:, 1::2, 1::2])


def otsu_threshold(img: np.ndarray, bins: int = 1024) -> float:
    """Otsu's threshold: the histogram split (over ``bins`` equal bins) with the largest
    between-class variance; returns the value at the split (values above it are foreground)."""
    x = np.asarray(img, np.float64).ravel()
    lo, hi = float(x.min()), float(x.max())
    if hi <= lo:
        return hi
    hist, edges = np.histogram(x, bins=bins, range=(lo, hi))
    p = hist / hist.sum()
    centres = (edges[:-1] + edges[1:]) / 2.0
    w0 = np.cumsum(p)
    m = np.cumsum(p * centres)
    mt = m[-1]
    w1 = 1.0 - w0
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mt * w0 - m) ** 2 / (w0 * w1)
    between[~np.isfinite(between)] = -1.0
    k = int(np.argmax(between[:-1]))
    return float(edges[k + 1])


class OtsuScorer:
    """Otsu's threshold on the brightest of the 6 frames; score 1 above it, else 0."""

    name = "otsu-brightest"

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        brightest = cell_sums(frames).max(axis=0)
        t = otsu_threshold(brightest)
        return (brightest > t).astype(np.float32)


def _line_offsets(length: int, orientations: int) -> np.ndarray:
    """``(orientations, length, 2)`` int32 (dy, dx) of a centred line per orientation."""
    half = (length - 1) / 2.0
    out = np.empty((orientations, length, 2), np.int32)
    for j in range(orientations):
        a = math.pi * j / orientations
        for i in range(length):
            t = i - half
            out[j, i, 0] = int(round(t * math.sin(a)))
            out[j, i, 1] = int(round(t * math.cos(a)))
    return out


@nb.njit(parallel=True, cache=True)
def _best_line_mean(img, offsets, pad):  # pragma: no cover - compiled
    h, w = img.shape
    n_or, n_tap, _ = offsets.shape
    out = np.zeros((h, w), np.float32)
    for r in nb.prange(h):
        inner_row = pad <= r < h - pad
        for c in range(w):
            best = -1e30
            if inner_row and pad <= c < w - pad:  # no clamping: the bulk of the map
                for j in range(n_or):
                    s = 0.0
                    for i in range(n_tap):
                        s += img[r + offsets[j, i, 0], c + offsets[j, i, 1]]
                    if s > best:
                        best = s
            else:
                for j in range(n_or):
                    s = 0.0
                    for i in range(n_tap):
                        rr = r + offsets[j, i, 0]
                        cc = c + offsets[j, i, 1]
                        rr = 0 if rr < 0 else (h - 1 if rr >= h else rr)
                        cc = 0 if cc < 0 else (w - 1 if cc >= w else cc)
                        s += img[rr, cc]
                    if s > best:
                        best = s
            out[r, c] = best / n_tap
    return out


def line_response(img: np.ndarray, length: int = LINE_PX,
                  orientations: int = ORIENTATIONS) -> np.ndarray:
    """Per pixel, the largest mean of ``img`` along a centred line of ``length`` pixels over
    ``orientations`` directions (edges repeated)."""
    offsets = _line_offsets(length, orientations)
    return _best_line_mean(np.ascontiguousarray(img, np.float32), offsets,
                           int(np.abs(offsets).max()))


@nb.njit(parallel=True, cache=True)
def _contrast_gate(frames):  # pragma: no cover - compiled
    """Per 2 x 2 Bayer cell of the RAW frames: brightest state minus the mean of the three
    dimmest, the dimmest, and the mean over states (one pass, no cell-sum image)."""
    n, hr, wr = frames.shape
    h, w = hr // 2, wr // 2
    contrast = np.empty((h, w), np.float32)
    dimmest = np.empty((h, w), np.float32)
    mean = np.empty((h, w), np.float32)
    for r in nb.prange(h):
        v = np.empty(n, np.float32)
        for c in range(w):
            total = 0.0
            for k in range(n):
                x = (np.float32(frames[k, 2 * r, 2 * c]) + np.float32(frames[k, 2 * r, 2 * c + 1])
                     + np.float32(frames[k, 2 * r + 1, 2 * c])
                     + np.float32(frames[k, 2 * r + 1, 2 * c + 1]))
                total += x
                j = k  # insertion sort: 6 values, sorted as they come
                while j > 0 and v[j - 1] > x:
                    v[j] = v[j - 1]
                    j -= 1
                v[j] = x
            contrast[r, c] = v[n - 1] - (v[0] + v[1] + v[2]) / 3.0
            dimmest[r, c] = v[0]
            mean[r, c] = total / n
    return contrast, dimmest, mean


class PhysicsScorer:
    """Few-state brightness, gated, along lines (module docstring)."""

    name = "physics"

    def __init__(self, line_px: int = LINE_PX, gate=(GATE_LOW, GATE_HIGH), z0: float = Z0):
        self.line_px, self.gate, self.z0 = line_px, gate, z0

    def response(self, frames: np.ndarray) -> np.ndarray:
        """The gated line response (before the per-RoI normalisation), DN of a cell sum."""
        if frames.shape[0] != N_STATES:
            raise ValueError(f"expected {N_STATES} frames, got {frames.shape[0]}")
        contrast, dimmest, mean = _contrast_gate(np.ascontiguousarray(frames))
        background = float(np.median(dimmest))
        signal = np.maximum(mean - background, 1.0)
        ratio = contrast / signal
        lo, hi = self.gate
        gate = np.clip((ratio - lo) / (hi - lo), 0.0, 1.0)
        return line_response(contrast * gate, self.line_px)

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        r = self.response(frames)
        med = float(np.median(r))
        spread = 1.4826 * float(np.median(np.abs(r - med)))
        z = (r - med) / max(spread, 1e-3)
        return (1.0 - np.exp(-np.maximum(z - self.z0, 0.0) / self.z0)).astype(np.float32)


BASELINES = {"otsu-brightest": OtsuScorer, "physics": PhysicsScorer}
