"""Are a RoI's six frames like the frames the network was trained on? Statistics and the check.

The network learned one camera and one ring light: a dark level, a haze of a few DN per LED
group, the balance between the groups, the camera's noise at that haze, a vignetting. A head
whose camera gain, noise, black level or LED balance is far from those gives the network frames
it has never seen, and its scores on them mean nothing; a PASS on such frames vouches for glass
nobody judged. So every RoI is measured here and compared with the **envelope** the export
measured on simulated training frames (``glass-inspect export envelope``,
:mod:`export.envelope_fit`) and stored as JSON in the model's metadata under
:data:`METADATA_KEY`. Outside it the pipeline gives ERROR naming the statistic, its value and
the trained range ("RoI 3: frames unlike the training frames: noise 2.1 x the trained range
(2.31 x the camera model's; trained 0.76 to 1.27)"), never PASS or FAIL.
The statistic furthest out, by its ratio to the range's nearer end, is named first.

The statistics (:data:`STATISTICS`), all in DN of the training camera (12 bits):

* ``dark``: the 0.5th percentile of every sampled pixel of the six frames: the black level
  under the haze's noise (about 60 DN on the default head: black 64 less 2.6 noise sigmas
  plus the haze). A camera with another black level, or frames with their light gone, move it.
* ``haze0``..``haze5``: each state's level above the training camera's black level: the mean
  of the frame's pixels within 4 robust sigmas of its median (dust, stains and scratches, bright
  and few, drop out; the mean of what is left is exact where a median of 12-bit integers would
  sit on their 1 DN steps, 30 % of a 3 DN haze). A camera gain, exposure or LED current other
  than the training head's scales these.
* ``balance0``..``balance5``: each state's haze over the mean of the six: an LED group that is
  dimmer or brighter than the others, relative to the training head's own spread.
* ``noise``: the RMS of same-site second differences ``(2 v[x] - v[x - 2] - v[x + 2])`` along
  the sampled rows, each divided by ``sqrt(6)`` times the camera model's sigma at the three
  pixels' mean level (read noise and shot noise above black), clipped at 4 RMS and corrected for
  the clip: the estimator of :mod:`edge.darkfield.noise` (its constants, its camera model
  :class:`~edge.darkfield.noise.Sensor`), on pixels two apart so that each run holds one
  Bayer colour. Runs with a saturated pixel are left out. 1.0: the camera model's noise.
* ``contrast``: the median over the sampled Bayer cells of the network's first fixed layer,
  ``contrast`` = the brightest state's cell sum minus the mean of the three dimmest
  (:mod:`model.hybrid`), DN of a cell sum: on clean glass noise and LED balance set it.
* ``falloff``: the haze (above black, all states) in the frame's outer band (normalised radius
  above 0.9, the corners) over the haze at its centre (below 0.5), each the mean of the pixels
  within 2 robust sigmas of the state's median: the shape of the light, which a flat-field
  calibration corrects and an uncorrected head with other optics does not. (The tight clip
  makes it read about 80 % of the true fall-off, the same on training and runtime frames.)
* ``saturated``: the share of sampled pixels at the camera's full scale.

Frames as the pipeline prepares them: an uncorrected head's RAW frames; a calibrated head's
``(raw - dark) * gain`` (the calibration's maps, so its flat field corrects the field shape and
LED balance) with the training camera's black level added back, so that a dark level the
calibration removed is compared with the training frames' one and a dark level that drifted
since the calibration shows. A camera of another bit depth is scaled to 12 bits, as the network's
input ``raw / (2**bits - 1)`` scales it. Known gap (the check does not judge it): a calibrated
head feeds the network dark-subtracted frames, while it was trained on RAW frames with their
black level of 64 DN; the fixed layers' contrast, signal and dirt are free of that offset, their
background channel is not.

Cost: :data:`ROWS` Bayer cell rows spread evenly over the frame, every column, all six states
(1.0 M pixels of a 3504 x 3120 RoI, 1.5 % of it; noise runs every 4th column): one pass of a
Numba kernel into histograms, parallel over the states, one over the sampled Bayer cells for
the contrast, then a few NumPy steps on histograms of about a thousand bins. Each statistic's
spread over the training RoIs is far inside its range at this sampling (``export``'s
docstring); ``benchmarks/envelope.py`` measures the time against the ``prepare`` stage.

The envelope (``export``): per statistic the 0.1 and 99.9 percentiles over the training RoIs,
widened by a margin stated in the metadata (:mod:`export.envelope_fit`); the runtime reads only
``version``, ``ranges`` and ``camera`` (the training camera's black level, read noise and
conversion gain, which the noise is judged against and the levels are taken above). A
statistic that cannot be measured (no haze to take a balance from, every pixel saturated) is
outside. A model without an envelope is not checked (logged once per model, and each RoI's
notes say so); an envelope this runtime cannot read is an error, not a reason to skip the
check.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import lru_cache

import numba as nb
import numpy as np

from edge.config import N_STATES
from edge.darkfield.noise import CLIP, CLIP_BIAS, REFERENCE_FULL_SCALE, Sensor

METADATA_KEY = "envelope"
VERSION = 1
ROWS = 24  # Bayer cell rows sampled per frame (module docstring: cost)
# Frames smaller than this on a side are windows, not RoIs: a stain (up to 3 mm, 260 px) or a
# fibre can fill most of one, and its statistics are then the stain's, so the pipeline does not
# judge them (every camera of a real head is far larger; test rigs of 256 x 224 px are not)
MIN_FRAME_PX = 512

LEVEL_BIN0 = -128  # level histogram: 1 DN bins centred on -128 .. 895 DN (12-bit scale)
LEVEL_BINS = 1024
NOISE_BIN = 0.02  # |u| / sigma histogram: bins of 0.02 up to 10
NOISE_BINS = 500
NOISE_STEP = 4  # a run of three same-site pixels every 4th column: runs that do not overlap
CONTRAST_BIN = 1.0 / 3.0  # DN of a cell sum (bins centred on the 1/3 DN steps of 12-bit data)
CONTRAST_BINS = 768  # up to 256 DN
INNER_R2 = 0.5 ** 2  # normalised radius squared of the centre disc ...
OUTER_R2 = 0.9 ** 2  # ... and of the outer band's inner edge
REGIONS = 3  # centre, between, outer
DARK_QUANTILE = 0.005
HAZE_CLIP = 4.0  # robust sigmas about the median a pixel counts toward its state's haze
# ... and toward the levels of the centre and the corners: tighter, since a stain or a fibre
# in a corner of a small window moves those few pixels' mean (876 x 780 windows: fall-off
# 0.75-0.94 at 4 sigmas, 0.85-0.92 at 2)
FALLOFF_CLIP = 2.0
MIN_HAZE_DN = 0.2  # a mean haze below this has no balance and no fall-off to measure

# name -> (words for the operator, unit after a value)
STATISTICS: dict[str, tuple[str, str]] = {"dark": ("dark level", " DN")}
STATISTICS.update({f"haze{k}": (f"haze of state {k}", " DN above black") for k in range(N_STATES)})
STATISTICS.update({f"balance{k}": (f"balance of state {k}", " of the six states' mean")
                   for k in range(N_STATES)})
STATISTICS.update({
    "noise": ("noise", " x the camera model's"),
    "contrast": ("contrast (fixed layers)", " DN of a Bayer cell"),
    "falloff": ("fall-off (corners over centre)", ""),
    "saturated": ("saturated share", ""),
})


class EnvelopeMetadataError(ValueError):
    """An envelope in a model's metadata that this runtime cannot read."""


@dataclass(frozen=True)
class Camera:
    """The training camera, in 12-bit DN: black level, read noise sigma, conversion gain (the
    shot-noise variance per DN of signal, DN per electron)."""

    black_dn: float
    read_noise_dn: float
    conversion_gain: float

    def to_dict(self) -> dict:
        return {"black_dn": self.black_dn, "read_noise_dn": self.read_noise_dn,
                "conversion_gain": self.conversion_gain}

    @classmethod
    def from_dict(cls, d) -> Camera:
        # the classifier's camera model reads the same three figures (edge.darkfield.noise)
        s = Sensor.from_metadata({"spec": json.dumps(d)}) if isinstance(d, dict) else None
        if s is None:
            raise EnvelopeMetadataError(
                f"its camera {d!r} needs black_dn in [0, {REFERENCE_FULL_SCALE:g}), "
                "read_noise_dn > 0 and conversion_gain > 0")
        fs = REFERENCE_FULL_SCALE
        return cls(s.black * fs, s.read * fs, s.gain * fs)


@dataclass(frozen=True)
class Envelope:
    camera: Camera
    ranges: dict[str, tuple[float, float]]

    def to_json(self, **extra) -> str:
        d = {"version": VERSION, "camera": self.camera.to_dict(),
             "ranges": {k: [lo, hi] for k, (lo, hi) in self.ranges.items()}, **extra}
        return json.dumps(d, sort_keys=True)


def parse_document(text: str, version: int, error: type[Exception]) -> dict:
    """An envelope's metadata text -> its JSON object, refused with ``error`` when it is not
    JSON or not of ``version`` (shared with :mod:`edge.darkfield.frame_envelope`)."""
    try:
        d = json.loads(text)
    except ValueError as exc:
        raise error(f"is not JSON ({exc})") from None
    if not isinstance(d, dict) or d.get("version") != version:
        got = d.get("version") if isinstance(d, dict) else type(d).__name__
        raise error(f"has version {got!r}; this runtime reads version {version}")
    return d


def parse_ranges(raw: object, statistics, error: type[Exception]) -> dict[str, tuple[float, float]]:
    """The ``ranges`` of an envelope's metadata, ``{name: [lo, hi]}`` -> ``{name: (lo, hi)}``;
    ``error`` (the caller's exception) names the first fault: no ranges, a statistic not in
    ``statistics``, a range that is not two finite numbers with ``lo <= hi``. Shared by the
    six-state envelope and the single-frame one (:mod:`edge.darkfield.frame_envelope`)."""
    if not isinstance(raw, dict) or not raw:
        raise error("has no ranges")
    ranges = {}
    for name, r in raw.items():
        if name not in statistics:
            raise error(f"has a range for {name!r}, a statistic this runtime does not measure "
                        f"(it measures {', '.join(statistics)})")
        ok = (isinstance(r, list) and len(r) == 2
              and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                      and math.isfinite(v) for v in r) and r[0] <= r[1])
        if not ok:
            raise error(f"has range {r!r} for {name!r}; expected [lo, hi], two finite numbers, "
                        "lo <= hi")
        ranges[name] = (float(r[0]), float(r[1]))
    return ranges


@lru_cache(maxsize=16)
def parse(text: str) -> Envelope:
    """The envelope in a model's ``envelope`` metadata; EnvelopeMetadataError naming the fault."""
    d = parse_document(text, VERSION, EnvelopeMetadataError)
    camera = Camera.from_dict(d.get("camera"))
    ranges = parse_ranges(d.get("ranges"), STATISTICS, EnvelopeMetadataError)
    return Envelope(camera, ranges)


def of_metadata(metadata) -> Envelope | None:
    """The model's envelope, None when it has none."""
    text = metadata.get(METADATA_KEY) if metadata else None
    return parse(text) if text else None


# -- measuring ----------------------------------------------------------------------------------
@nb.njit(inline="always")
def _hist(buf, lo, hi, count, total):  # pragma: no cover - compiled
    for c in range(lo, hi):
        v = buf[c]
        # truncation is floor for the positive values; a negative one is clamped to bin 0 anyway
        b = min(max(int(v + np.float32(0.5 - LEVEL_BIN0)), 0), LEVEL_BINS - 1)
        count[b] += 1
        total[b] += v


@nb.njit(cache=True, nogil=True, parallel=True, fastmath=True)
def _sample(frames, dark, gain, offset, scale, max_raw, rows, inv_sigma,  # pragma: no cover
            w, lev_n, lev_s, noise_n, sat_n):
    """Per state, parallel over the states: the sampled rows corrected into ``w``; the level
    histograms per region (counts and sums of the values); the histogram of the same-site
    second differences over the camera model's sigma at their level (``inv_sigma``: 1 / (sigma
    sqrt(6) NOISE_BIN) per quarter DN of level from LEVEL_BIN0); the saturated pixels."""
    n_states, h, width = frames.shape
    # a calibration's map or number per state, broadcast: step 0 along an axis of length 1
    d0, d1, d2 = min(dark.shape[0] - 1, 1), min(dark.shape[1] - 1, 1), min(dark.shape[2] - 1, 1)
    g0, g1, g2 = min(gain.shape[0] - 1, 1), min(gain.shape[1] - 1, 1), min(gain.shape[2] - 1, 1)
    top = inv_sigma.shape[0] - 1
    for s in nb.prange(n_states):
        buf = np.empty(width, np.float32)
        ok = np.empty(width, np.bool_)
        for i in range(rows.shape[0]):
            for t in range(2):
                r = rows[i] + t
                drow = dark[s * d0, r * d1]
                grow = gain[s * g0, r * g1]
                row = frames[s, r]
                for c in range(width):
                    ok[c] = row[c] < max_raw
                # the common cases as loops LLVM vectorises: numbers, or maps, for both
                if d2 == 0 and g2 == 0:
                    dv, gv = drow[0], grow[0]
                    for c in range(width):
                        buf[c] = ((np.float32(row[c]) - dv) * gv + offset) * scale
                elif d2 == 1 and g2 == 1:
                    for c in range(width):
                        buf[c] = ((np.float32(row[c]) - drow[c]) * grow[c] + offset) * scale
                else:
                    for c in range(width):
                        buf[c] = ((np.float32(row[c]) - drow[c * d2]) * grow[c * g2]
                                  + offset) * scale
                o = 2 * i + t
                w[s, o] = buf
                n_sat = 0
                for c in range(width):
                    n_sat += not ok[c]
                sat_n[s] += n_sat
                # regions by normalised radius: the columns of the centre disc and of the
                # outer band on this row (five spans, no test per pixel)
                yn = 2.0 * (r + 0.5) / h - 1.0
                ci = math.sqrt(max(INNER_R2 - yn * yn, 0.0))
                co = math.sqrt(max(OUTER_R2 - yn * yn, 0.0))
                i0 = min(max(int(math.ceil((1.0 - ci) * width / 2.0 - 0.5)), 0), width)
                i1 = min(max(int(math.ceil((1.0 + ci) * width / 2.0 - 0.5)), i0), width)
                o0 = min(max(int(math.ceil((1.0 - co) * width / 2.0 - 0.5)), 0), i0)
                o1 = min(max(int(math.ceil((1.0 + co) * width / 2.0 - 0.5)), i1), width)
                _hist(buf, 0, o0, lev_n[s, 2], lev_s[s, 2])
                _hist(buf, o0, i0, lev_n[s, 1], lev_s[s, 1])
                _hist(buf, i0, i1, lev_n[s, 0], lev_s[s, 0])
                _hist(buf, i1, o1, lev_n[s, 1], lev_s[s, 1])
                _hist(buf, o1, width, lev_n[s, 2], lev_s[s, 2])
                hist = noise_n[s]
                for c in range(2, width - 2, NOISE_STEP):
                    a, m, z = buf[c - 2], buf[c], buf[c + 2]
                    q = int((a + m + z) * np.float32(4.0 / 3.0) - np.float32(4 * LEVEL_BIN0))
                    q = min(max(q, 0), top)
                    b = min(int(abs(np.float32(2.0) * m - a - z) * inv_sigma[q]), NOISE_BINS - 1)
                    # a run with a saturated pixel goes to the last bin, which is not read
                    hist[b if ok[c - 2] & ok[c] & ok[c + 2] else NOISE_BINS] += 1


@nb.njit(cache=True, nogil=True, parallel=True, fastmath=True)
def _contrast(w, out):  # pragma: no cover - compiled
    """Per sampled cell row: the histogram (bins of CONTRAST_BIN) of the brightest state's
    Bayer-cell sum minus the mean of the three dimmest, the six sorted by the hybrid network's
    own sorting network (model.hybrid.SORT6)."""
    n_states, n_rows, width = w.shape
    cells = width // 2
    for i in nb.prange(n_rows // 2):
        cs = np.empty((n_states, cells), np.float32)
        for s in range(n_states):
            a, b = w[s, 2 * i], w[s, 2 * i + 1]
            for j in range(cells):
                cs[s, j] = a[2 * j] + a[2 * j + 1] + b[2 * j] + b[2 * j + 1]
        hist = out[i]
        for j in range(cells):
            v0, v1, v2, v3, v4, v5 = cs[0, j], cs[1, j], cs[2, j], cs[3, j], cs[4, j], cs[5, j]
            v1, v2 = min(v1, v2), max(v1, v2)
            v4, v5 = min(v4, v5), max(v4, v5)
            v0, v2 = min(v0, v2), max(v0, v2)
            v3, v5 = min(v3, v5), max(v3, v5)
            v0, v1 = min(v0, v1), max(v0, v1)
            v3, v4 = min(v3, v4), max(v3, v4)
            v1, v4 = min(v1, v4), max(v1, v4)
            v0, v3 = min(v0, v3), max(v0, v3)
            v2, v5 = min(v2, v5), max(v2, v5)
            v1, v3 = min(v1, v3), max(v1, v3)
            v2, v4 = min(v2, v4), max(v2, v4)
            v2, v3 = min(v2, v3), max(v2, v3)
            # 3 x (brightest - mean of three), to the nearest whole: the bin of width 1/3 DN
            k = int(np.float32(3.0) * v5 - (v0 + v1 + v2) + np.float32(0.5))
            hist[min(max(k, 0), CONTRAST_BINS - 1)] += 1


@lru_cache(maxsize=8)
def _inv_sigma(camera: Camera) -> np.ndarray:
    """1 / (sqrt(6) sigma NOISE_BIN) per quarter DN of level from LEVEL_BIN0: sigma the camera
    model's at that level (read noise and shot noise above black)."""
    level = LEVEL_BIN0 + (np.arange(4 * LEVEL_BINS) + 0.5) / 4.0
    var = camera.read_noise_dn ** 2 + camera.conversion_gain * np.maximum(level - camera.black_dn,
                                                                           0.0)
    return (1.0 / (np.sqrt(6.0 * var) * NOISE_BIN)).astype(np.float32)


def sampled_rows(height: int, rows: int = ROWS) -> np.ndarray:
    """The even RAW rows starting the sampled Bayer cell rows, spread evenly over the frame."""
    cells = height // 2
    n = max(1, min(rows, cells))
    return (np.round(np.linspace(0, cells - 1, n)).astype(np.int64) * 2)


def _as3d(a, fill: float) -> np.ndarray:
    """A calibration's per-state (6,), per-state map (6, H, W) or shared map (H, W) as a
    broadcastable (S, H', W') float32 view; None: the constant ``fill``."""
    if a is None:
        return np.full((1, 1, 1), fill, np.float32)
    a = np.asarray(a, np.float32)
    if a.ndim == 1:
        return a.reshape(-1, 1, 1)
    if a.ndim == 2:
        return a[None]
    return np.ascontiguousarray(a)


def _quantile(hist: np.ndarray, q: float, first: float, width: float) -> float:
    """The ``q`` quantile of grouped data: bin ``b`` covers ``first + b * width`` to the next,
    values spread evenly within it (NaN for an empty histogram)."""
    n = float(hist.sum())
    if n <= 0:
        return math.nan
    cum = np.cumsum(hist, dtype=np.float64)
    target = q * n
    b = int(np.searchsorted(cum, target, side="left"))
    b = min(b, hist.size - 1)
    before = cum[b - 1] if b else 0.0
    inside = float(hist[b])
    frac = (target - before) / inside if inside > 0 else 0.0
    return first + (b + frac) * width


def measure(frames: np.ndarray, camera: Camera, dark=None, gain=None, offset: float = 0.0,
            bit_depth: int = 12, rows: int = ROWS) -> dict[str, float]:
    """The statistics of one RoI's six frames (module docstring), ``(raw - dark) * gain +
    offset`` in DN, scaled to 12 bits. ``dark``/``gain``: a calibration's (None: 0 and 1)."""
    n, h, width = frames.shape
    max_raw = (1 << bit_depth) - 1
    r = sampled_rows(h, rows)
    w = np.empty((n, 2 * r.size, width), np.float32)
    lev_n = np.zeros((n, REGIONS, LEVEL_BINS), np.int64)
    lev_s = np.zeros((n, REGIONS, LEVEL_BINS), np.float64)
    noise_n = np.zeros((n, NOISE_BINS + 1), np.int64)
    sat_n = np.zeros(n, np.int64)
    _sample(frames, _as3d(dark, 0.0), _as3d(gain, 1.0), np.float32(offset),
            np.float32(REFERENCE_FULL_SCALE / max_raw), max_raw, r, _inv_sigma(camera),
            w, lev_n, lev_s, noise_n, sat_n)
    con = np.zeros((r.size, CONTRAST_BINS), np.int64)
    _contrast(w, con)
    return _statistics(lev_n, lev_s, noise_n, con.sum(axis=0), int(sat_n.sum()), w.size,
                       camera.black_dn)


def _statistics(lev_n, lev_s, noise_n, con, saturated: int, total: int,
                black: float) -> dict[str, float]:
    first = LEVEL_BIN0 - 0.5  # bins are centred on whole DN
    out = {"dark": _quantile(lev_n.sum(axis=(0, 1)), DARK_QUANTILE, first, 1.0)}
    centres = LEVEL_BIN0 + np.arange(LEVEL_BINS)
    haze, inner, outer = [], [], []
    for s in range(lev_n.shape[0]):
        tot = lev_n[s].sum(axis=0)
        med = _quantile(tot, 0.5, first, 1.0)
        sigma = (_quantile(tot, 0.75, first, 1.0) - _quantile(tot, 0.25, first, 1.0)) / 1.349
        finite = math.isfinite(sigma)
        keep = np.abs(centres - med) <= (max(HAZE_CLIP * sigma, 2.0) if finite else math.nan)
        near = np.abs(centres - med) <= (max(FALLOFF_CLIP * sigma, 2.0) if finite else math.nan)

        def level(count, sums, keep):
            c = float(count[keep].sum())
            return float(sums[keep].sum()) / c - black if c else math.nan

        haze.append(level(tot, lev_s[s].sum(axis=0), keep))
        inner.append(level(lev_n[s, 0], lev_s[s, 0], near))
        outer.append(level(lev_n[s, 2], lev_s[s, 2], near))
    mean = float(np.mean(haze))
    for s, v in enumerate(haze):
        out[f"haze{s}"] = v
    for s, v in enumerate(haze):
        out[f"balance{s}"] = v / mean if mean > MIN_HAZE_DN else math.nan
    out["noise"] = _noise(noise_n[:, :NOISE_BINS].sum(axis=0))
    out["contrast"] = _quantile(con, 0.5, -CONTRAST_BIN / 2, CONTRAST_BIN)
    c_in, c_out = float(np.mean(inner)), float(np.mean(outer))
    out["falloff"] = c_out / c_in if c_in > MIN_HAZE_DN else math.nan
    out["saturated"] = saturated / total if total else math.nan
    return out


def _noise(hist: np.ndarray) -> float:
    """The clipped RMS of |u| from its histogram, as :func:`edge.darkfield.noise.noise_ratio`
    takes it from the values: start at 1.4826 x the median, iterate the RMS within CLIP of it."""
    if hist.sum() == 0:
        return math.nan
    centres = (np.arange(hist.size) + 0.5) * NOISE_BIN
    rms = 1.4826 * _quantile(hist, 0.5, 0.0, NOISE_BIN)
    for _ in range(8):
        inside = centres < CLIP * rms
        n = hist[inside].sum()
        if n == 0:
            break
        new = math.sqrt(float((hist[inside] * centres[inside] ** 2).sum()) / float(n))
        done = abs(new - rms) < 1e-4 * rms
        rms = new
        if done:
            break
    return rms / CLIP_BIAS


# -- the check ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Outside:
    name: str
    value: float
    lo: float
    hi: float

    @property
    def factor(self) -> float | None:
        """value over the nearer end of the range when both are positive (None: no ratio)."""
        end = self.hi if self.value > self.hi else self.lo
        if math.isfinite(self.value) and self.value > 0 and end > 0:
            return self.value / end
        return None

    @property
    def severity(self) -> float:
        """How far out, for the order of the message: the log of the factor; a value with no
        factor (a level that went negative: measured above a black level that is not the
        frames') after those, one that could not be measured last."""
        f = self.factor
        if f is not None:
            return abs(math.log(f))
        return -1.0 if math.isfinite(self.value) else -2.0

    def describe(self) -> str:
        words, unit = STATISTICS[self.name]
        trained = f"trained {_num(self.lo)} to {_num(self.hi)}"
        if not math.isfinite(self.value):
            return f"{words} cannot be measured ({trained})"
        f = self.factor
        where = (f"{f:.2g} x the trained range" if f is not None else
                 ("above" if self.value > self.hi else "below") + " the trained range")
        return f"{words} {where} ({_num(self.value)}{unit}; {trained})"


def _num(v: float) -> str:
    a = abs(v)
    if a != 0 and (a < 0.01 or a >= 1e4):
        return f"{v:.2e}"
    return f"{v:.3g}" if a < 100 else f"{v:.1f}"


def outside(values: dict[str, float], envelope: Envelope) -> list[Outside]:
    """The statistics outside the envelope, the furthest out first (:attr:`Outside.severity`)."""
    found = [Outside(k, values[k], lo, hi) for k, (lo, hi) in envelope.ranges.items()
             if not (lo <= values[k] <= hi)]  # NaN is outside
    return sorted(found, key=lambda o: -o.severity)


PREFIX = "frames unlike the training frames"


def reason(found: list[Outside]) -> str:
    """``frames unlike the training frames: noise 2.1 x the trained range (...)``, and the names
    of the others outside."""
    text = f"{PREFIX}: {found[0].describe()}"
    if len(found) > 1:
        others = [STATISTICS[o.name][0] for o in found[1:]]
        more = f", {len(others) - 4} more" if len(others) > 4 else ""
        text += f"; also outside: {', '.join(others[:4])}{more}"
    return text
