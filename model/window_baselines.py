"""Traditional detectors for single dark-field windows, the weak-scratch paper's comparison
(section III.E: Otsu [27] and the Gabor-filter method [6]), recast as window classifiers so that
they are scored on exactly the windows and labels the attention fusion network is
(:mod:`model.window_eval`).

Both take windows ``(N, 1, W, W)`` (or ``(N, W, W)``) float in [0, 1], reduce each window to a
score, and call a window positive when its score reaches a threshold. The threshold (and the
Gabor method's response level) is tuned on the *validation* windows only, never on the test
windows (:meth:`fit`, :func:`best_threshold`): the largest accuracy, on a tie the higher
threshold (the fewer false alarms). Choice: accuracy, not F1, because the network is scored at
``p >= 0.5``, the decision a cross-entropy classifier makes to be right most often, so the
baselines get the same kind of operating point; and because with about half the windows
holding a scratch, F1 is maximised by a baseline that calls every window a scratch (F1 0.72 on
the default validation set, precision 0.56), which says nothing about the method. numpy and
numba, no OpenCV.

**Otsu** (:class:`OtsuWindow`). The paper's Otsu result is a binary image, not a verdict; a
verdict per window needs a rule, and ours is:

1. Otsu's threshold of the window's own histogram (:func:`model.baselines.otsu_threshold`,
   1024 bins between the window's min and max); foreground = pixels above it;
2. the largest 8-connected foreground component (:func:`largest_component`);
3. its shape from second moments: the principal variances ``l1 >= l2`` of its pixel coordinates
   give a length ``sqrt(12 l1)`` (exact for a thin segment) and a width
   ``sqrt(12 max(l2, 1/12))`` (a one-pixel line has width 1, not 0);
4. score = length / width, the component's aspect ratio, when the length reaches
   :data:`MIN_LINE_PX`; 0 otherwise (a dust speck is not a line however round). Positive when
   the score reaches the tuned threshold: "the largest thing Otsu finds looks like a line".

No flat-fielding is done before Otsu: the paper's baseline is the plain adaptive binarisation,
and its failure on haze, vignetting and dust (Fig. 1, Fig. 8) is what the comparison shows.

**Gabor filter bank** (:class:`GaborWindow`), after the paper's reference [6] (the paper only
names it and its four hand-set rule thresholds 30, 5, 5, 40 for 8-bit images, which do not
carry over to our scaling; we keep its core, oriented even Gabor filtering of a thin bright
line, and tune its thresholds on validation windows instead):

1. the window's least-squares plane is taken out (the local slope of haze and vignetting),
   the rest mirrored out by the kernel's half-size (no seam from the FFT's wrap-around; without
   the plane, a mirrored slope would fold into a bright ridge along the window's edge, a false
   line in every vignetted window) and correlated with :data:`GABOR_ORIENTATIONS` (12, every
   15 degrees) even-symmetric Gabor kernels
   ``exp(-(u^2 / 2 s_u^2 + v^2 / 2 s_v^2)) cos(2 pi u / lambda)``, ``u`` across and ``v``
   along the line: wavelength 6 px and ``s_u`` 1.5 px (a central lobe about 3 px wide,
   the simulated scratches' 1.2-3 px), ``s_v`` 6 px along the line (it sums the line over about
   15 px, which lifts a scratch weaker than the noise of one pixel). Each kernel has zero mean
   (a flat or linearly varying background, haze and vignetting, gives no response) and unit
   norm (the noise of every orientation's response is the same);
2. per pixel the largest response over the orientations (a bright line at any angle);
3. normalised per window to a robust z-score: minus the median, over 1.4826 x the median
   absolute deviation (the window's own noise level, which follows its haze);
4. score = the number of pixels with ``z > tau``; positive when it reaches ``n_min``. ``tau``
   (one of :data:`GABOR_TAUS`) and ``n_min`` are tuned together on the validation windows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from model.baselines import otsu_threshold

BASELINE_NAMES = ("otsu", "gabor")
MIN_LINE_PX = 16.0  # a component shorter than this is a speck, not a scratch
GABOR_WAVELENGTH = 6.0
GABOR_SIGMA_ACROSS = 1.5
GABOR_SIGMA_ALONG = 6.0
GABOR_ORIENTATIONS = 12
GABOR_TAUS = (3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 12.0)
CHUNK = 8  # windows filtered at once: 8 x 12 orientations x 292^2 float32 is ~33 MB


def _as_windows(windows: np.ndarray) -> np.ndarray:
    """``(N, 1, W, W)`` or ``(N, W, W)`` -> ``(N, W, W)`` float32; a clear error otherwise."""
    w = np.asarray(windows)
    if w.ndim == 4 and w.shape[1] == 1:
        w = w[:, 0]
    if w.ndim != 3 or w.shape[1] != w.shape[2] or w.shape[0] < 1:
        raise ValueError(f"expected windows N x 1 x W x W (single-frame, square), got "
                         f"{' x '.join(map(str, np.shape(windows)))}")
    return w.astype(np.float32, copy=False)


def best_threshold(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """The threshold ``t`` (positive iff ``score >= t``) with the largest accuracy on these
    windows, and that accuracy. Candidates are the scores themselves and +inf (nothing
    positive); on a tie the higher threshold wins (fewer false alarms, as right as often)."""
    s = np.asarray(scores, np.float64)
    y = np.asarray(labels).astype(bool)
    if s.shape != y.shape or s.ndim != 1:
        raise ValueError(f"scores and labels must be two vectors of one length, got {s.shape} "
                         f"and {y.shape}")
    if not y.any():
        raise ValueError("tuning a threshold needs at least one scratch window")
    order = np.argsort(-s, kind="stable")
    s_sorted, y_sorted = s[order], y[order]
    tp = np.cumsum(y_sorted)
    fp = np.cumsum(~y_sorted)
    # only the last index of a run of equal scores is a real cut (ties go in together)
    last = np.r_[s_sorted[1:] != s_sorted[:-1], True]
    negatives = int((~y).sum())
    correct = np.r_[negatives, tp[last] + negatives - fp[last]]  # first: +inf, none positive
    cuts = np.r_[np.inf, s_sorted[last]]
    k = int(np.argmax(correct))  # descending cuts: the first best one is the highest
    return float(cuts[k]), float(correct[k] / len(y))


# -- Otsu -----------------------------------------------------------------------------------
def largest_component(fg: np.ndarray) -> tuple[int, float, float, float]:
    """The largest 8-connected component of a boolean image: (pixels, var_row, var_col,
    cov_row_col) of its pixel coordinates; (0, 0, 0, 0) when nothing is foreground. Of equal
    ones, the first in raster order."""
    labels, count = ndimage.label(fg, structure=np.ones((3, 3), bool))
    if count == 0:
        return 0, 0.0, 0.0, 0.0
    k = int(np.argmax(np.bincount(labels.ravel())[1:])) + 1
    r, c = np.nonzero(labels == k)
    dr, dc = r - r.mean(), c - c.mean()
    return len(r), float(np.mean(dr * dr)), float(np.mean(dc * dc)), float(np.mean(dr * dc))


def line_shape(var_r: float, var_c: float, cov: float) -> tuple[float, float]:
    """(length, width) in px of a component from its coordinate (co)variances."""
    mean = 0.5 * (var_r + var_c)
    half = math.sqrt(max(0.0, 0.25 * (var_r - var_c) ** 2 + cov * cov))
    l1, l2 = mean + half, max(mean - half, 1.0 / 12.0)
    return math.sqrt(12.0 * l1), math.sqrt(12.0 * l2)


@dataclass
class OtsuWindow:
    """Otsu's binarisation per window; positive when the largest component is a line (module
    docstring). ``threshold`` is the aspect ratio from which a window is positive."""

    threshold: float | None = None
    validation_accuracy: float | None = None
    name: str = "otsu"

    def scores(self, windows: np.ndarray) -> np.ndarray:
        w = _as_windows(windows)
        out = np.zeros(len(w), np.float64)
        for i, win in enumerate(w):
            t = otsu_threshold(win)
            n, vr, vc, cv = largest_component(win > t)
            if n == 0:
                continue
            length, width = line_shape(vr, vc, cv)
            out[i] = length / width if length >= MIN_LINE_PX else 0.0
        return out

    def fit(self, windows: np.ndarray, labels: np.ndarray) -> OtsuWindow:
        return self.fit_scores(self.scores(windows), labels)

    def fit_scores(self, scores: np.ndarray, labels: np.ndarray) -> OtsuWindow:
        self.threshold, self.validation_accuracy = best_threshold(scores, labels)
        return self

    def decide(self, scores: np.ndarray) -> np.ndarray:
        if self.threshold is None:
            raise RuntimeError("the Otsu baseline has no threshold yet: fit it on validation "
                               "windows first")
        return np.asarray(scores) >= self.threshold

    def predict(self, windows: np.ndarray) -> np.ndarray:
        return self.decide(self.scores(windows))

    def params(self) -> dict:
        return {"rule": "aspect ratio of the largest 8-connected component above Otsu's "
                        "threshold, components shorter than MIN_LINE_PX scoring 0",
                "min_line_px": MIN_LINE_PX, "aspect_threshold": _plain(self.threshold),
                "validation_accuracy": self.validation_accuracy}


# -- Gabor ----------------------------------------------------------------------------------
def gabor_kernels(wavelength: float = GABOR_WAVELENGTH, sigma_across: float = GABOR_SIGMA_ACROSS,
                  sigma_along: float = GABOR_SIGMA_ALONG,
                  orientations: int = GABOR_ORIENTATIONS) -> np.ndarray:
    """``(orientations, k, k)`` even Gabor kernels, zero mean, unit norm; kernel ``j`` answers
    a line at ``180 j / orientations`` degrees from the column axis."""
    half = int(math.ceil(3.0 * max(sigma_across, sigma_along)))
    y, x = np.mgrid[-half:half + 1, -half:half + 1].astype(np.float64)
    out = np.empty((orientations, 2 * half + 1, 2 * half + 1), np.float64)
    for j in range(orientations):
        a = math.pi * j / orientations
        along = x * math.cos(a) + y * math.sin(a)
        across = -x * math.sin(a) + y * math.cos(a)
        k = np.exp(-0.5 * ((across / sigma_across) ** 2 + (along / sigma_along) ** 2)) * np.cos(
            2.0 * math.pi * across / wavelength)
        k -= k.mean()
        out[j] = k / np.linalg.norm(k)
    return out.astype(np.float32)


@dataclass
class GaborWindow:
    """Oriented Gabor bank, max over orientations, robust z per window, pixels above ``tau``
    counted (module docstring); positive when the count reaches ``n_min``."""

    tau: float | None = None
    n_min: float | None = None
    validation_accuracy: float | None = None
    name: str = "gabor"
    _spectra: dict = field(default_factory=dict, repr=False)

    def _kernel_spectra(self, side: int) -> tuple[np.ndarray, int]:
        if side not in self._spectra:
            k = gabor_kernels()
            half = k.shape[-1] // 2
            n = side + 2 * half
            # each kernel centred on pixel (0, 0) of the padded grid: the FFT product is then
            # the correlation (= convolution, the kernels are point-symmetric) without a shift
            grid = np.zeros((len(k), n, n), np.float32)
            grid[:, :k.shape[1], :k.shape[2]] = k
            grid = np.roll(grid, (-half, -half), axis=(1, 2))
            self._spectra[side] = (np.fft.rfft2(grid), half)
        return self._spectra[side]

    def response(self, windows: np.ndarray) -> np.ndarray:
        """``(N, W, W)`` robust z-score of the largest orientation response per pixel."""
        w = _as_windows(windows)
        side = w.shape[-1]
        spectra, half = self._kernel_spectra(side)
        n = side + 2 * half
        out = np.empty(w.shape, np.float32)
        c = np.arange(side, dtype=np.float32) - np.float32((side - 1) / 2)
        c2 = np.float32((c * c).sum() * side)
        for start in range(0, len(w), CHUNK):
            x = w[start:start + CHUNK]
            # least-squares plane out (centred coordinates are orthogonal, so each slope is
            # a projection); a mirrored ramp would fold into a ridge along the window's edge
            slope_r = np.einsum("nij,i->n", x, c) / c2
            slope_c = np.einsum("nij,j->n", x, c) / c2
            x = (x - x.mean(axis=(1, 2), keepdims=True) - slope_r[:, None, None] * c[:, None]
                 - slope_c[:, None, None] * c[None, :])
            x = np.pad(x, ((0, 0), (half, half), (half, half)), mode="reflect")
            resp = np.fft.irfft2(np.fft.rfft2(x)[:, None] * spectra[None], s=(n, n))
            r = resp[:, :, half:half + side, half:half + side].max(axis=1)
            flat = r.reshape(len(r), -1)
            med = np.median(flat, axis=1)
            mad = np.median(np.abs(flat - med[:, None]), axis=1)
            # a window without noise (a synthetic flat one) must not divide by zero
            scale = np.maximum(1.4826 * mad, 1e-12)
            out[start:start + len(r)] = (r - med[:, None, None]) / scale[:, None, None]
        return out

    def scores(self, windows: np.ndarray) -> np.ndarray:
        """``(N, len(GABOR_TAUS))``: pixels above each candidate ``tau``."""
        z = self.response(windows).reshape(len(windows), -1)
        return np.stack([(z > t).sum(axis=1) for t in GABOR_TAUS], axis=1).astype(np.float64)

    def fit(self, windows: np.ndarray, labels: np.ndarray) -> GaborWindow:
        return self.fit_scores(self.scores(windows), labels)

    def fit_scores(self, scores: np.ndarray, labels: np.ndarray) -> GaborWindow:
        best = None
        for j, tau in enumerate(GABOR_TAUS):
            n_min, accuracy = best_threshold(scores[:, j], labels)
            # ">=": on a tie the higher tau (taus ascend), the stricter rule, as for n_min
            if best is None or accuracy >= best[2]:
                best = (tau, n_min, accuracy)
        self.tau, self.n_min, self.validation_accuracy = best
        return self

    def decide(self, scores: np.ndarray) -> np.ndarray:
        if self.tau is None:
            raise RuntimeError("the Gabor baseline has no thresholds yet: fit it on validation "
                               "windows first")
        return np.asarray(scores)[:, GABOR_TAUS.index(self.tau)] >= self.n_min

    def predict(self, windows: np.ndarray) -> np.ndarray:
        return self.decide(self.scores(windows))

    def params(self) -> dict:
        return {"rule": "pixels whose robust z of the max oriented even-Gabor response "
                        "exceeds tau, at least n_min of them",
                "wavelength_px": GABOR_WAVELENGTH, "sigma_across_px": GABOR_SIGMA_ACROSS,
                "sigma_along_px": GABOR_SIGMA_ALONG, "orientations": GABOR_ORIENTATIONS,
                "tau": self.tau, "n_min": _plain(self.n_min),
                "validation_accuracy": self.validation_accuracy}


def _plain(threshold: float | None) -> float | str | None:
    """A threshold for JSON: +inf (nothing is positive) as the string "inf"."""
    return "inf" if threshold is not None and math.isinf(threshold) else threshold


def make_baseline(name: str) -> OtsuWindow | GaborWindow:
    if name == "otsu":
        return OtsuWindow()
    if name == "gabor":
        return GaborWindow()
    raise ValueError(f"unknown window baseline {name!r}; expected one of {BASELINE_NAMES}")
