"""The per-sample hardware self-check: does the head's own hardware agree with itself?

A head fails quietly more often than loudly. An LED group whose driver or cable died, a ring
that stays dark, a lens cap left on, a camera out of focus, a gain that drifted, a stepper that
lost steps: each still delivers frames of the right size on time, and the network judges them.
Measured on two scratched recorded samples (issue 30): with every state dark the head said PASS,
with one state dark it reported 12-19 scratches that were not there. This module looks at the
frames the head took anyway, once per RoI as they pass through :func:`edge.inspection.
inspect_sample`, and raises :class:`SelfCheckFailed` (an ERROR verdict naming the fault) when
the hardware does not agree with itself. It is not the per-RoI envelope of the pipeline
(frames unlike the training frames); it asks whether the sample's frames are consistent with a
working ring, camera and stage.

What is measured, and against what:

* **Each state's light.** Per state and Bayer site, a robust level: the trimmed mean of block
  means over a subset of whole row pairs (about :data:`LEVEL_PIXELS` pixels per frame), so dust,
  a scratch or a hot pixel do not move it. *With a calibration that holds a dark level* the
  light is the level above it, in DN, per unit of each state's exposure; a state is lit when it
  is at least ``illumination.self_test_min_dn`` above dark (the head file's figure for "the
  camera sees this group", also used by the ring's self-test). *Without one* the dark level is
  not known, so the light is measured by its colour: a white LED's haze reaches the green sites
  of the Bayer mosaic more than the red and blue ones, while the dark level is the same on all
  four sites, so the green minus the other sites' level is zero in the dark and proportional to
  the light otherwise (assumption: one black level for the four sites, as on the simulated
  camera and sensors with one black-level register; a calibrated head subtracts its dark map and
  does not need it). No state lit (none :data:`LIT_SIGMAS` sigmas of its measurement above
  zero): the ring is dark or the lens capped (ERROR). A state with less than :data:`DEAD_SHARE`
  of the brightest state's light: that LED group is dead (ERROR). Both are judged per RoI and
  again at the end on the RoIs' light pooled, which a dim head needs. Where the calibration
  measured flat fields, each state's light times its flat-field gain must also stay within
  :data:`BALANCE_RANGE` of the others' (a group that lost part of its LEDs since it was
  calibrated).
* **The camera's noise.** Per state, the noise of the haze: second differences of same-colour
  neighbours along rows (the haze's slope cancels), only where the level is near the haze's
  (shot noise on dust does not count), as a clipped RMS. A camera's gain scales its noise and
  the light alike, while more light on the glass (a stain filling a small RoI, hazier glass)
  adds only shot noise, at most the square root of the light's ratio: so two frames whose
  noise differs by more than :data:`NOISE_SPREAD` and by more than :data:`NOISE_VS_LIGHT`
  times the square root of their light's ratio were taken at different gains. Within a sample
  every pair of frames is compared (a gain that changed during the sample); the sample's
  quietest frame is compared with the median of the quietest frames of the last
  :data:`NOISE_HISTORY` samples that passed on the same :class:`SelfCheck` (a gain that changed
  between samples; the first :data:`NOISE_HISTORY_MIN` samples have nothing to compare with,
  and a gain wrong from the start is for the training envelope to see). Where the glass's
  shot noise outweighs the read noise (hazy glass on a sensitive camera) a gain change looks
  like more light and is not seen; on the default head clean glass lifts the frames by a few
  DN and the read noise dominates.
* **Focus.** Out of focus, nothing on the glass is sharp any more: in the brightest state of
  every RoI, the significant local maxima (at least :data:`PEAK_SIGMAS` noise sigmas above the
  ring around them, not saturated, and not a single pixel: hot pixels sit on the sensor,
  behind the lens) are measured by their curvature, the second difference at the peak over
  the peak's height, on the 2 x 2 binned (colour-neutral) frame. Dust and scratches in focus
  reach 0.6-1.9; blurred by a Gaussian of 4 px, at most 0.5. At the end of the sample: at least
  :data:`FOCUS_MIN_PEAKS` such peaks and fewer than :data:`FOCUS_MIN_SHARP` of them sharp
  (:data:`SHARP_CURVATURE`) is ERROR. Clean glass shows no peaks, so its focus cannot be
  judged and is not (nothing the network could miss is blurred there either, except a
  scratch; a faint blurred scratch on otherwise spotless glass escapes this check).
* **The stage's position.** The simulated glass has no edge in view (the optics render the
  glass's haze everywhere, :mod:`edge.sim.optics`; :mod:`edge.sim.targets` has no fiducial on
  glass), and the head carries no fiducial either, so nothing in a frame says where the glass
  is in absolute terms. What can say it: neighbouring RoIs overlap by the grid's
  ``overlap_mm`` and must show the same glass there. Per pair of neighbours the overlap is
  binned into cells centred on the same sample points in both views, a few pixels inside both
  frames' edges (the 6 states summed, hot pixels clipped, the smooth background of block
  medians removed, in noise sigmas, faint content below :data:`CONTENT_SIGMAS` dropped), and
  the two views are correlated, allowing for a shift of up to
  :data:`SHIFT_TOL_MM` (a third of the overlap at most) for an uncalibrated mounting. When
  either view holds content (dust, a stain, a scratch) and the best correlation is under
  :data:`MATCH_NCC`, the stage was not where its controller said for one of them: lost steps
  (ERROR). Limits: an overlap without content says nothing, and steps lost before the
  sample's first RoI shift every RoI alike, so the overlaps still agree; only an edge or a
  fiducial would show that.

Cost: per RoI, the level and noise subset of each frame, one binned frame for focus, and the
overlap bands (the full frames are not copied); a few tens of ms on a full-size RoI.
Everything here is NumPy; nothing is imported from the simulator.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from edge.config import N_STATES, HeadConfig
from edge.hardware import HardwareError

log = logging.getLogger(__name__)

LEVEL_PIXELS = 250_000  # pixels per frame used for levels (whole row pairs)
NOISE_PIXELS = 16_000  # per Bayer site, of those, for the noise
BLOCK_COLS = 32  # block means over this many same-colour pixels of a row ...
BLOCK_ROWS = 4  # ... and this many row pairs
TRIM = 0.6  # the middle share of block means a level is the mean of
DEAD_SHARE = 0.2  # a state with less light than this share of the brightest one's is dead
LIT_SIGMAS = 5.0  # with no state this many sigmas of its light above zero, nothing is lit
LIT_FLOOR_DN = 0.02  # ... nor this many DN
BALANCE_RANGE = (0.6, 1.6)  # a state's calibrated light over the states' median
NOISE_SPREAD = 1.5  # one frame's noise over another's, within a sample or against the history
NOISE_VS_LIGHT = 1.15  # ... and over this times the square root of their light's ratio
NOISE_HISTORY = 16
NOISE_HISTORY_MIN = 3
CLIP = 4.0  # the noise's RMS is taken over |u| under this many of itself
CLIP_BIAS = 0.99932  # a normal variable's RMS within +-4 sigma, in sigmas
PEAK_SIGMAS = 50.0  # a focus peak's height above its ring, in noise sigmas of the binned frame
PEAK_RING = 4  # binned pixels from the peak to its ring
SPIKE_SHARE = 0.7  # one RAW pixel with more than this share of its 2 x 2 bin: a hot pixel
SHARP_CURVATURE = 0.6  # in focus: dust and scratches 0.6-1.9; blurred by 4 px: <= 0.5
FOCUS_MIN_PEAKS = 6
FOCUS_MIN_SHARP = 2
MATCH_NCC = 0.5  # the overlap's two views must correlate at least this well
SHIFT_TOL_MM = 0.5  # misregistration allowed between two views (mounting, stage accuracy)
CONTENT_SIGMAS = 6.0  # cells below this many sigmas are noise (or too faint to compare)
MIN_CONTENT = 400.0  # sum of squared content (in sigmas) for a view to hold something
CELLS_ACROSS = 20  # about this many cells across an overlap
EDGE_PX = 4  # the overlap is compared this far inside both frames' edges
BACKGROUND_CELLS = 16  # the least length of band over which its background is a median


class SelfCheckFailed(HardwareError):
    """The sample's frames show a hardware fault; the message names it in operator words."""


class PositionLost(SelfCheckFailed):
    """Neighbouring RoIs do not show the same glass: the stage was not where it said."""


@dataclass
class RoiMeasure:
    """What the self-check measured on one RoI (for logs and tests)."""

    index: int
    light: np.ndarray  # (6,) per unit of exposure: DN above dark, or colour contrast in DN
    light_sigma: float
    noise_dn: np.ndarray  # (6,)
    by_dark: bool  # light measured above a calibrated dark level (else by colour)
    peaks: int = 0  # significant focus peaks
    sharp: int = 0
    curvatures: list[float] = field(default_factory=list)


def _row_pairs(height: int, width: int) -> np.ndarray:
    """The rows (whole Bayer row pairs, evenly spread) levels and noise are measured on."""
    pairs = height // 2
    step = max(1, (height * width) // LEVEL_PIXELS)
    first = np.arange(0, pairs, step) * 2
    return np.sort(np.concatenate([first, first + 1]))


def _bin2(frame: np.ndarray) -> np.ndarray:
    """The frame summed over 2 x 2 cells (one Bayer cell each: colour-neutral), float32."""
    h, w = frame.shape
    rows = frame[0: h - 1: 2].astype(np.uint32)
    rows += frame[1::2][: rows.shape[0]]
    return (rows[:, 0: w - 1: 2] + rows[:, 1::2][:, : (w // 2)]).astype(np.float32)


def _sites(rows_frame: np.ndarray) -> list[np.ndarray]:
    """The four Bayer sites' planes (row-major over the 2 x 2 cell) of a row-pair subset."""
    return [rows_frame[dy::2, dx::2] for dy in (0, 1) for dx in (0, 1)]


def _robust_level(plane: np.ndarray) -> float:
    """The mean of the middle :data:`TRIM` share of block means: a level that dust, scratches
    and hot pixels (in the blocks left out) do not move, nearly as precise as a plain mean
    (a median would be 1.25 times noisier)."""
    n, w = plane.shape
    bh = min(BLOCK_ROWS, n)
    bw = min(BLOCK_COLS, w)
    blocks = plane[: n - n % bh, : w - w % bw].reshape(n // bh, bh, w // bw, bw)
    means = np.sort(blocks.mean(axis=(1, 3), dtype=np.float64).ravel())
    cut = int(means.size * (1.0 - TRIM) / 2)
    return float(means[cut: means.size - cut].mean())


def _haze_noise(plane: np.ndarray, level: float, max_dn: float) -> float:
    """The noise sigma of the haze (DN) in one site's plane: second differences along rows of
    same-colour neighbours, ``u = v[x] - (v[x-1] + v[x+1]) / 2`` (variance 1.5 sigma^2),
    where the three pixels' mean is near the haze level and none is saturated."""
    plane = plane[:: max(1, plane.size // NOISE_PIXELS)]
    a, b, c = plane[:, :-2], plane[:, 1:-1], plane[:, 2:]
    u = (b - 0.5 * (a + c)).ravel()
    m = ((a + b + c) / 3.0).ravel()
    top = np.maximum(np.maximum(a, b), c).ravel()
    ok = top < max_dn
    med = float(np.median(np.abs(u[ok]))) if ok.any() else 0.0
    s = max(1.4826 * med / math.sqrt(1.5), 0.3)
    ok &= m < level + 6.0 * s
    u = u[ok]
    if u.size < 100:
        return float("nan")
    for _ in range(3):
        kept = u[np.abs(u) < CLIP * s * math.sqrt(1.5)]
        if kept.size < 100:
            break
        s = math.sqrt(float(np.mean(kept.astype(np.float64) ** 2)) / 1.5) / CLIP_BIAS
    return s


def _noise_jump(noise_a: float, light_a: float, noise_b: float,
                light_b: float) -> float | None:
    """Frame a's noise over frame b's when it is more than their light explains, else None.

    A camera's gain scales its noise and the light alike; more light on the glass (a stain,
    hazier glass, a brighter group) only adds shot noise, at most the square root of the
    light's ratio. So a gain change shows as noise that rose more than that (and beyond
    :data:`NOISE_SPREAD`, for the read noise's sake), in frames where the read noise counts:
    where the glass's light is small, as on clean glass in dark field."""
    if noise_b <= 0 or light_a <= 0 or light_b <= 0:
        return None
    ratio = noise_a / noise_b
    if ratio > NOISE_SPREAD and ratio > NOISE_VS_LIGHT * math.sqrt(max(light_a / light_b, 1.0)):
        return ratio
    return None


class SelfCheck:
    """The self-check of one head (or one run over recordings): the head file, and the camera
    noise of the samples that passed, which later samples are compared with."""

    def __init__(self, cfg: HeadConfig):
        self.cfg = cfg
        # (noise DN, light DN) of the quietest frame of each recent sample that passed
        self.noise_history: deque[tuple[float, float]] = deque(maxlen=NOISE_HISTORY)

    def sample(self, sample_id: str, calibration=None,
               exposures_ms: Sequence[float] | None = None,
               mm_per_px: tuple[float, float] | None = None) -> SampleCheck:
        """The check of one sample, with the calibration its frames are corrected with (its dark
        level and flat fields), the exposure each state was taken at (None: the head file's,
        times the calibration's LED balance) and the pixel footprint (None: the head file's)."""
        if exposures_ms is None:
            base = self.cfg.camera.exposure_ms
            scale = calibration.led_exposure_scale if calibration is not None else None
            exposures_ms = [base * float(k) for k in (scale or (1.0,) * N_STATES)]
        return SampleCheck(self, sample_id, calibration, tuple(float(e) for e in exposures_ms),
                           mm_per_px if mm_per_px is not None else self.cfg.mm_per_px)


class SampleCheck:
    """Fed the sample's RoIs one by one (:meth:`roi`), then :meth:`finish`; each raises
    :class:`SelfCheckFailed` on a fault. Frames of another type or shape are the pipeline's to
    refuse and are not measured here."""

    def __init__(self, owner: SelfCheck, sample_id: str, calibration,
                 exposures_ms: tuple[float, ...], mm_per_px: tuple[float, float]):
        self.owner, self.cfg, self.sample_id = owner, owner.cfg, sample_id
        self.calibration = calibration
        base = self.cfg.camera.exposure_ms
        self.exposure = np.array([e / base for e in exposures_ms])
        self.mm_per_px = mm_per_px
        self.rois: list[RoiMeasure] = []
        self._shape: tuple[int, int] | None = None
        self._rows: np.ndarray | None = None
        self._dark: np.ndarray | None = None  # (6, 4) per state and site, DN
        self._gain: np.ndarray | None = None  # (6, 4) mean flat-field gain
        self._overlap: _Overlaps | None = None

    # -- per RoI ------------------------------------------------------------------------------
    def roi(self, index: int, origin_mm: tuple[float, float], frames) -> RoiMeasure | None:
        if not (isinstance(frames, np.ndarray) and frames.dtype == np.uint16
                and frames.ndim == 3 and frames.shape[0] == N_STATES
                and frames.shape[1] >= 8 and frames.shape[2] >= 8):
            return None
        self._setup(frames.shape[1:])
        m = self._levels(index, frames)
        self.rois.append(m)
        where = "hardware self-check"
        # the noise first: a gain that changed also changes the light
        self._check_noise_spread(where)
        self._check_light(m.light, m.light_sigma, m.by_dark, where)
        self._focus(m, frames)
        self._overlap.add(index, origin_mm, frames, m)
        return m

    def _setup(self, shape: tuple[int, int]) -> None:
        if self._shape == shape:
            return
        self._shape = shape
        self._rows = _row_pairs(*shape)
        cal = self.calibration
        self._dark = self._per_site(cal.dark) if cal is not None and cal.dark is not None \
            else None
        self._gain = self._per_site(cal.gain) if cal is not None and cal.gain is not None \
            else None
        self._overlap = _Overlaps(self.cfg, cal, self.mm_per_px, shape)

    def _per_site(self, arr: np.ndarray) -> np.ndarray | None:
        """A calibration map, ``(6,)``, ``(6, H, W)`` or ``(H, W)``, as (6, 4): its mean per
        state and Bayer site over the rows the levels are measured on."""
        a = np.asarray(arr, np.float32)
        if a.shape == (N_STATES,):
            return np.repeat(a[:, None].astype(np.float64), 4, axis=1)
        if a.ndim == 2:
            a = a[None]
        if a.shape[1:] != self._shape:
            return None  # another frame size: the pipeline refuses the calibration
        out = np.empty((N_STATES, 4))
        for k in range(N_STATES):
            sub = a[min(k, a.shape[0] - 1)][self._rows]
            out[k] = [float(p.mean(dtype=np.float64)) for p in _sites(sub)]
        return out

    def _levels(self, index: int, frames: np.ndarray) -> RoiMeasure:
        max_dn = float(self.cfg.camera.max_dn)
        levels = np.empty((N_STATES, 4))
        noise = np.empty(N_STATES)
        per_site = 0
        for k in range(N_STATES):
            sub = frames[k][self._rows].astype(np.float32)
            planes = _sites(sub)
            per_site = planes[0].size
            levels[k] = [_robust_level(p) for p in planes]
            var = [_haze_noise(p, lv, max_dn) ** 2 for p, lv in zip(planes, levels[k],
                                                                       strict=True)]
            noise[k] = math.sqrt(float(np.nanmean(var))) if np.isfinite(var).any() \
                else float("nan")
        sigma = float(np.nanmedian(noise)) if np.isfinite(noise).any() else 1.0
        # the trimmed mean of block means is a little noisier than the plain mean
        site_sigma = 1.1 * sigma / math.sqrt(max(per_site, 1))
        if self._dark is not None:
            light = (levels - self._dark).mean(axis=1)
            light_sigma = site_sigma / 2.0
            by_dark = True
        else:
            green = [i for i, ch in enumerate(self.cfg.camera.bayer_pattern) if ch == "G"]
            other = [i for i in range(4) if i not in green]
            light = levels[:, green].mean(axis=1) - levels[:, other].mean(axis=1)
            light_sigma = site_sigma * math.sqrt(1 / len(green) + 1 / len(other))
            by_dark = False
        return RoiMeasure(index, light / self.exposure, light_sigma / float(self.exposure.min()),
                          noise, by_dark)

    def _state(self, k: int) -> str:
        s = self.cfg.illumination.states[k]
        return f"LED group {k} ({s.angle_deg:g} deg, header pin {s.pin})"

    def _check_light(self, light: np.ndarray, light_sigma: float, by_dark: bool,
                     where: str) -> None:
        if by_dark:
            floor = self.cfg.illumination.self_test_min_dn
            unit = "DN above the calibrated dark level"
        else:
            floor = max(LIT_SIGMAS * light_sigma, LIT_FLOOR_DN)
            unit = "DN of colour contrast (green over red and blue sites)"
        top = float(light.max())
        values = ", ".join(f"{v:.2f}" for v in light)
        if top < floor:
            raise SelfCheckFailed(
                f"{where}: no light in any of the {N_STATES} LED states (the ring is dark or "
                f"the lens is capped): {values} {unit}, a lit state shows at least "
                f"{floor:.2f}")
        dead = [k for k in range(N_STATES) if light[k] < DEAD_SHARE * top]
        if dead:
            names = "; ".join(f"{self._state(k)} {100 * light[k] / top:.0f} %" for k in dead)
            one = len(dead) == 1
            raise SelfCheckFailed(
                f"{where}: {'an LED group gives' if one else 'LED groups give'} no light "
                f"(a dead driver or cable): {names} of the brightest group's light, at least "
                f"{100 * DEAD_SHARE:.0f} % expected ({values} {unit})")
        if self._gain is not None:
            # the flat-field gain brings each group to the reference head's balance: the raw
            # light (at the state's own exposure) times it must agree across the groups
            corrected = light * self.exposure * self._gain.mean(axis=1)
            share = corrected / float(np.median(corrected))
            lo, hi = BALANCE_RANGE
            off = [k for k in range(N_STATES) if not lo <= share[k] <= hi]
            if off:
                names = "; ".join(f"{self._state(k)} {100 * share[k]:.0f} %" for k in off)
                raise SelfCheckFailed(
                    f"{where}: LED balance unlike the calibration's: {names} of the groups' "
                    f"median after the flat-field correction ({100 * lo:.0f}-{100 * hi:.0f} % "
                    "expected): LEDs of a group failed, or the ring changed since it was "
                    "calibrated")

    def _frames_noise(self) -> list[tuple[int, int, float, float]]:
        """(RoI, state, noise DN, light as taken) of every frame measured so far."""
        out = []
        for r in self.rois:
            taken = np.maximum(r.light * self.exposure, r.light_sigma)
            out += [(r.index, k, float(r.noise_dn[k]), float(taken[k]))
                    for k in range(N_STATES) if math.isfinite(r.noise_dn[k])]
        return out

    def _check_noise_spread(self, where: str) -> None:
        frames = self._frames_noise()
        worst = None
        for a in frames:
            for b in frames:
                ratio = _noise_jump(a[2], a[3], b[2], b[3])
                if ratio is not None and (worst is None or ratio > worst[0]):
                    worst = (ratio, a, b)
        if worst is not None:
            ratio, hi, lo = worst
            raise SelfCheckFailed(
                f"{where}: the camera's gain changed during the sample: its noise is "
                f"{hi[2]:.2f} DN in RoI {hi[0]} state {hi[1]} and {lo[2]:.2f} DN in RoI {lo[0]} "
                f"state {lo[1]} ({ratio:.2f} x, with {hi[3] / lo[3]:.2f} x the light; on a "
                f"working camera within {NOISE_SPREAD:g} x or {NOISE_VS_LIGHT:g} x the square "
                "root of the light's ratio)")

    # -- focus --------------------------------------------------------------------------------
    def _focus(self, m: RoiMeasure, frames: np.ndarray) -> None:
        k = int(np.argmax(m.light))
        frame = frames[k]
        binned = _bin2(frame)
        sigma = 2.0 * float(m.noise_dn[k]) if math.isfinite(m.noise_dn[k]) else 0.0
        if sigma <= 0:
            return
        r0 = PEAK_RING + 1
        core = binned[r0:-r0, r0:-r0]
        if core.size == 0:
            return
        thresh = PEAK_SIGMAS * sigma
        background = float(np.median(core[:: max(1, core.shape[0] // 64),
                                           :: max(1, core.shape[1] // 64)]))
        rr, cc = np.nonzero(core - background > thresh)
        rr, cc = rr + r0, cc + r0
        if rr.size == 0:
            return
        v = binned[rr, cc]
        local_max = np.ones(rr.size, bool)
        for dr in (-1, 0, 1):
            for dc in (-1, 0, 1):
                if dr or dc:
                    nb = binned[rr + dr, cc + dc]
                    # ties: the first in row-major order keeps the peak
                    local_max &= (v > nb) | ((v == nb) & ((dr > 0) | ((dr == 0) & (dc > 0))))
        rr, cc, v = rr[local_max], cc[local_max], v[local_max]
        if rr.size == 0:
            return
        d = PEAK_RING
        offs = [(-d, j) for j in range(-d, d + 1)] + [(d, j) for j in range(-d, d + 1)]
        offs += [(i, -d) for i in range(-d + 1, d)] + [(i, d) for i in range(-d + 1, d)]
        ring = np.median(np.stack([binned[rr + i, cc + j] for i, j in offs]), axis=0)
        amp = v - ring
        keep = amp >= thresh
        rr, cc, v, ring, amp = rr[keep], cc[keep], v[keep], ring[keep], amp[keep]
        if rr.size == 0:
            return
        # not saturated anywhere near, and not one RAW pixel (a hot pixel is on the sensor)
        max_dn = self.cfg.camera.max_dn
        win = np.stack([frame[2 * rr + i, 2 * cc + j] for i in range(-2, 4)
                        for j in range(-2, 4)])
        raw = np.stack([frame[2 * rr + i, 2 * cc + j] for i in (0, 1) for j in (0, 1)]
                       ).astype(np.float32) - ring / 4.0
        keep = (win.max(axis=0) < max_dn) & (raw.max(axis=0) <= SPIKE_SHARE * raw.sum(axis=0))
        rr, cc, v, amp = rr[keep], cc[keep], v[keep], amp[keep]
        if rr.size == 0:
            return
        kx = (2 * v - binned[rr, cc - 1] - binned[rr, cc + 1]) / amp
        ky = (2 * v - binned[rr - 1, cc] - binned[rr + 1, cc]) / amp
        curv = np.maximum(kx, ky)
        m.peaks = int(curv.size)
        m.sharp = int((curv >= SHARP_CURVATURE).sum())
        m.curvatures = sorted((float(c) for c in curv), reverse=True)

    # -- the end of the sample ----------------------------------------------------------------
    def finish(self) -> None:
        """The checks over the whole sample: focus, and the camera's noise against the recent
        samples'. A sample that passes adds its noise to the head's history."""
        where = "hardware self-check"
        if not self.rois:
            return
        if len(self.rois) > 1:
            # every RoI's light together: a dim head's dead group stands out of the noise
            # better than in one RoI
            pooled = np.mean([r.light for r in self.rois], axis=0)
            sigma = float(np.mean([r.light_sigma for r in self.rois])) / math.sqrt(
                len(self.rois))
            self._check_light(pooled, sigma, self.rois[0].by_dark,
                              f"{where} over the sample's {len(self.rois)} RoIs")
        peaks = sum(r.peaks for r in self.rois)
        sharp = sum(r.sharp for r in self.rois)
        if peaks >= FOCUS_MIN_PEAKS and sharp < FOCUS_MIN_SHARP:
            best = sorted((c for r in self.rois for c in r.curvatures), reverse=True)[:3]
            raise SelfCheckFailed(
                f"{where}: the camera is out of focus: {sharp} of {peaks} bright spots and "
                f"lines on the glass are sharp (curvature at their peak at least "
                f"{SHARP_CURVATURE:g}; the sharpest {', '.join(f'{c:.2f}' for c in best)}), at "
                f"least {FOCUS_MIN_SHARP} expected in focus")
        frames = self._frames_noise()
        if not frames:
            return
        # the quietest frame: the glass's own light adds least to the camera's noise there
        _, _, now, light = min(frames, key=lambda f: f[2])
        hist = self.owner.noise_history
        if len(hist) >= NOISE_HISTORY_MIN:
            ref = float(np.median([h[0] for h in hist]))
            ref_light = float(np.median([h[1] for h in hist]))
            up = _noise_jump(now, light, ref, ref_light)
            down = _noise_jump(ref, ref_light, now, light)
            if up is not None or down is not None:
                raise SelfCheckFailed(
                    f"{where}: the camera's gain drifted: its noise is {now:.2f} DN with "
                    f"{light:.2f} DN of light, against {ref:.2f} DN with {ref_light:.2f} in the "
                    f"last {len(hist)} samples ({now / ref:.2f} x the noise for "
                    f"{light / ref_light:.2f} x the light)")
        hist.append((now, light))
        log.debug("%s: self-check passed: noise %.2f DN, %d focus peaks (%d sharp)",
                  self.sample_id, now, peaks, sharp)


# -- the overlaps between neighbouring RoIs -----------------------------------------------------
class _Affine:
    """RAW pixel (x, y) of a RoI -> sample mm: ``mm = A @ px + c + origin``."""

    def __init__(self, a: np.ndarray, c: np.ndarray):
        self.a, self.c = a, c
        self.inv = np.linalg.inv(a)

    def to_mm(self, px: np.ndarray, origin) -> np.ndarray:
        return px @ self.a.T + self.c + np.asarray(origin, float)

    def to_px(self, mm: np.ndarray, origin) -> np.ndarray:
        return (mm - self.c - np.asarray(origin, float)) @ self.inv.T


def _affine(cfg: HeadConfig, calibration, mm_per_px: tuple[float, float]) -> _Affine:
    """The pipeline's pixel-to-mm mapping: the calibration's measured geometry where it has one
    (:class:`edge.calibration.SampleMapping`), else ``origin + (x, y) * mm_per_px``."""
    mapping = calibration.mapping(cfg) if calibration is not None else None
    if mapping is None:
        return _Affine(np.diag([float(mm_per_px[0]), float(mm_per_px[1])]), np.zeros(2))
    t = math.radians(mapping.rotation_deg)
    rot = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
    a = rot @ np.diag(mapping.mm_per_px)
    c = np.asarray(mapping.centre_mm, float) - a @ np.asarray(mapping.centre_px, float)
    return _Affine(a, c)


@dataclass
class _Band:
    """One RoI's view of an overlap: content in noise sigmas on cells of ``cell`` px whose
    top-left pixel is ``(x0, y0)``."""

    x0: int
    y0: int
    cell: int
    content: np.ndarray  # (rows, cols) float32, >= 0


def _background(cells: np.ndarray) -> np.ndarray:
    """The smooth background of a band of cells (the haze under the illumination field): the
    median of blocks over the band's whole width and at least :data:`BACKGROUND_CELLS` cells
    of its length, interpolated along the length. Blocks that wide and long keep a dust's
    halo or a stain under half of their cells, and both views of an overlap, whose bands
    differ by the shift tolerance, get nearly the same background."""
    vertical = cells.shape[0] >= cells.shape[1]
    grid = cells if vertical else cells.T
    n, width = grid.shape
    size = max(BACKGROUND_CELLS, width)
    starts = list(range(0, max(n - size, 0) + 1, max(size // 2, 1)))
    if starts[-1] + size < n:
        starts.append(n - size)
    centres = np.array([min(a + size, n) / 2.0 + a / 2.0 - 0.5 for a in starts])
    medians = np.array([float(np.median(grid[a:a + size])) for a in starts])
    bg = np.interp(np.arange(n), centres, medians)[:, None]
    return bg if vertical else bg.T


class _Overlaps:
    """Keeps each RoI's views of its overlaps until the neighbour arrives, then compares."""

    def __init__(self, cfg: HeadConfig, calibration, mm_per_px: tuple[float, float],
                 shape: tuple[int, int]):
        self.cfg, self.shape = cfg, shape
        self.map = _affine(cfg, calibration, mm_per_px)
        px_mm = float(np.mean(np.abs(np.linalg.eigvals(self.map.a))))
        self.px_mm = px_mm
        grid = cfg.stage.roi_grid
        self.overlap_mm = float(grid.overlap_mm)
        over_px = self.overlap_mm / px_mm
        self.cell = int(min(16, max(2, 2 * round(over_px / CELLS_ACROSS / 2))))
        self.tol_mm = min(SHIFT_TOL_MM, self.overlap_mm / 3.0)
        self.tol_cells = int(math.ceil(self.tol_mm / (self.cell * px_mm)))
        self.seen: dict[int, tuple[tuple[float, float], dict[int, _Band]]] = {}
        self.origins = {i: tuple(grid.roi_origin_mm(i)) for i in range(grid.count)}
        self.compared: list[tuple[int, int, float | None]] = []  # (i, j, ncc or None)

    def _footprint(self, origin) -> tuple[float, float, float, float]:
        h, w = self.shape
        corners = self.map.to_mm(np.array([[0, 0], [w, 0], [0, h], [w, h]], float), origin)
        (x0, y0), (x1, y1) = corners.min(axis=0), corners.max(axis=0)
        return float(x0), float(y0), float(x1), float(y1)

    def _shared(self, a, b) -> tuple[float, float, float, float] | None:
        """The sample box both RoIs at origins ``a`` and ``b`` see, if it is an overlap."""
        fa, fb = self._footprint(a), self._footprint(b)
        box = (max(fa[0], fb[0]), max(fa[1], fb[1]), min(fa[2], fb[2]), min(fa[3], fb[3]))
        short, long = sorted((box[2] - box[0], box[3] - box[1]))
        # side by side, not diagonal neighbours (whose corners overlap by the overlap squared)
        if short < 0.5 * self.overlap_mm or long < 4.0 * self.overlap_mm:
            return None
        return box

    def add(self, index: int, origin, frames: np.ndarray, m: RoiMeasure) -> None:
        if self.overlap_mm <= 0:
            return
        origin = (float(origin[0]), float(origin[1]))
        bands: dict[int, _Band] = {}
        for j, other in self.origins.items():
            if j == index:
                continue
            box = self._shared(origin, other)
            if box is None:
                continue
            band = self._band(frames, origin, box)
            if band is None:
                continue
            if j in self.seen:
                o_origin, o_bands = self.seen[j]
                if index in o_bands:
                    self._compare(j, o_origin, o_bands.pop(index), index, origin, band, box)
            else:
                bands[j] = band
        self.seen[index] = (origin, bands)

    def _grid(self, box) -> tuple[np.ndarray, np.ndarray]:
        """The sample points (mm) an overlap is compared at: one per cell, inside the box by
        :data:`EDGE_PX` (its sides are frame edges: an object on one is cut off in one view
        only)."""
        step = self.cell * self.px_mm
        edge = EDGE_PX * self.px_mm
        return (np.arange(box[0] + edge + step / 2, box[2] - edge, step),
                np.arange(box[1] + edge + step / 2, box[3] - edge, step))

    def _band(self, frames: np.ndarray, origin, box) -> _Band | None:
        """This RoI's view of the sample ``box``, on cells centred on the compared points (so
        both views' cells cover the same glass to a pixel), with the shift tolerance and one
        cell more around it."""
        xs, ys = self._grid(box)
        if xs.size < 2 or ys.size < 2:
            return None
        h, w = self.shape
        c = self.cell
        pad = self.tol_cells + 1
        first = self.map.to_px(np.array([[xs[0], ys[0]]]), origin)[0]
        corners = self.map.to_px(np.array([[xs[0], ys[0]], [xs[-1], ys[0]], [xs[0], ys[-1]],
                                           [xs[-1], ys[-1]]]), origin)

        def span(anchor: float, lo: float, hi: float, size: int) -> tuple[int, int]:
            start = int(round(anchor - c / 2))
            a = start - c * (int(math.ceil((start - lo + c / 2) / c)) + pad)
            b = start + c * (int(math.ceil((hi - start + c / 2) / c)) + pad)
            if a < 0:
                a += c * int(math.ceil(-a / c))
            if b > size:
                b -= c * int(math.ceil((b - size) / c))
            return a, b

        cx0, cx1 = span(first[0], corners[:, 0].min(), corners[:, 0].max(), w)
        cy0, cy1 = span(first[1], corners[:, 1].min(), corners[:, 1].max(), h)
        if cx1 - cx0 < 2 * c or cy1 - cy0 < 2 * c:
            return None
        acc = frames[0, cy0:cy1, cx0:cx1].astype(np.uint32)
        for k in range(1, frames.shape[0]):
            acc += frames[k, cy0:cy1, cx0:cx1]
        crop = acc.astype(np.float32)
        # hot pixels sit on the sensor, not on the glass: no pixel may exceed the brightest of
        # its four same-colour neighbours
        ph, pw = crop.shape
        pad = np.pad(crop, 2, mode="reflect")  # the same colour two pixels in
        nb = np.maximum(np.maximum(pad[:-4, 2:-2], pad[4:, 2:-2]),
                        np.maximum(pad[2:-2, :-4], pad[2:-2, 4:]))
        crop = np.minimum(crop, nb)
        cells = crop.reshape(ph // c, c, pw // c, c).sum(axis=(1, 3), dtype=np.float64)
        resid = cells - _background(cells)
        sigma = 1.4826 * float(np.median(np.abs(resid - np.median(resid))))
        if not sigma > 0:
            return None
        z = resid / sigma - CONTENT_SIGMAS
        return _Band(cx0, cy0, c, np.maximum(z, 0.0).astype(np.float32))

    def _lookup(self, band: _Band, px: np.ndarray, shift=(0, 0)) -> np.ndarray:
        col = np.floor((px[:, 0] - band.x0) / band.cell).astype(int) + shift[0]
        row = np.floor((px[:, 1] - band.y0) / band.cell).astype(int) + shift[1]
        rows, cols = band.content.shape
        ok = (row >= 0) & (row < rows) & (col >= 0) & (col < cols)
        out = np.full(px.shape[0], np.nan, np.float32)
        out[ok] = band.content[row[ok], col[ok]]
        return out

    def _compare(self, i: int, oi, bi: _Band, j: int, oj, bj: _Band, box) -> None:
        xs, ys = self._grid(box)
        gx, gy = np.meshgrid(xs, ys)
        mm = np.stack([gx.ravel(), gy.ravel()], axis=1)
        pi, pj = self.map.to_px(mm, oi), self.map.to_px(mm, oj)
        a = self._lookup(bi, pi)
        b0 = self._lookup(bj, pj)
        ok0 = np.isfinite(a) & np.isfinite(b0)
        energy = max(float(np.sum(a[ok0] ** 2)), float(np.sum(b0[ok0] ** 2)))
        if energy < MIN_CONTENT:
            self.compared.append((i, j, None))  # nothing on the glass there: no evidence
            return
        best = -1.0
        t = self.tol_cells
        # where they agree as they are (the usual case) no shift need be tried
        shifts = [(0, 0)] + [(dx, dy) for dy in range(-t, t + 1) for dx in range(-t, t + 1)
                             if dx or dy]
        for dx, dy in shifts:
            if best >= MATCH_NCC:
                break
            b = self._lookup(bj, pj, (dx, dy))
            ok = np.isfinite(a) & np.isfinite(b)
            ea, eb = float(np.sum(a[ok] ** 2)), float(np.sum(b[ok] ** 2))
            if ea <= 0 or eb <= 0:
                continue
            best = max(best, float(np.sum(a[ok] * b[ok])) / math.sqrt(ea * eb))
        self.compared.append((i, j, best))
        if best < MATCH_NCC:
            raise PositionLost(
                f"hardware self-check: RoI {i} and RoI {j} do not show the same glass where "
                f"they overlap (correlation {max(best, 0.0):.2f} at the best shift within "
                f"{self.tol_mm:.2f} mm, at least {MATCH_NCC:g} expected): the stage was not "
                "where its controller reported for one of them (lost steps?)")
