"""Single-image dark-field frames of large optical parts (weak-scratch paper, section III.A).

The product's main path takes six frames, one per LED state (:mod:`edge.sim.optics`). The
weak-scratch mode takes ONE frame of the part under a whole ring light (line-scan or area camera)
and classifies 256 x 256 windows of it. Those frames look different from the six-state ones, and
a classifier trained on an easier world fails on the real one, so this renderer draws what the
paper's Figs. 1, 3, 6, 8 and 9 show. Everything below is drawn from the seed; every DN figure is
given for 12 bits and scaled by ``2 ** (bit_depth - 12)`` (the same photons, quantised finer or
coarser), so an 8-bit frame loses the faintest scratches to quantisation as a real one would.

Image (per frame, from the scene stream of the seed):

* Haze: clean optics under a whole ring is not black but a bright veil (the paper's binarisation
  at grey 41 of 255 already picks up background, Fig. 1). Level at the optical centre uniform
  10-30 % of full scale (``haze``), all LED groups lit.
* Vignetting: ``F = 1 - v (r / R) ** 2``, floored at 0.05. ``r`` is the distance to the optical
  centre, ``R`` half the frame diagonal (an area camera) or half the width (a line-scan camera,
  whose lens falls off along the sensor line only; every scanned line is lit alike). ``v``
  uniform 0.35-0.65: strong, the farthest corner at 15-65 % of the centre. The optical centre
  is off the frame centre by up to 15 % of each half side (``centre_offset``): ring, lens and
  part are never coaxial. With only some LED groups lit the field keeps its shape and takes
  the lit share of the ring (a simplification: a real subset also tilts it toward its side).
* Mottle: the haze is not smooth; surface roughness and cleaning marks modulate it by a factor
  ``1 + m M(x, y)``, ``m`` uniform 1-4 %, ``M`` in [-1, 1] a 6 x 6 grid of uniform values blended
  by Gaussian bumps (scale ~ a sixth of the frame): low-frequency, so it shifts the local
  background by far more than a weak scratch's contrast without looking like a line.

Scratches (1 + Poisson(1), at most 6, in a share ``scratch_share`` of frames; the paper's images
are all defective, so 1.0 by default):

* Geometry: length log-uniform 30-1500 px (the paper's "large spans"), midpoint uniform in the
  frame (an end may leave it), heading uniform; half straight, half a circular arc turning
  uniformly +-45 degrees over the length ("gently curved"). Vertices every 0.5 px, so the beads of
  a chain are resolved. Width (FWHM of a Gaussian cross-section) uniform 1.2-3 px.
* Brightness: ``peak_dn`` log-uniform 3-300 DN above the local background, as the frame shows it
  with all groups lit (grey, or the G sites of a mosaic; before noise): the weakest are below one
  noise sigma per pixel and only visible integrated along their length, as in the paper. Along
  the length the brightness follows the illumination field, fades in over 5-25 px at each end,
  and waves by +-10-35 % with a period of 40-400 px. A share ``chain_share`` (25 %) break up into
  a chain of points (the paper's "discontinuous point-like scratches", Fig. 9): beads every
  5-20 px (+-40 %), each 0.6-1.5 px long (sigma) with a weight uniform 0.4-1.
* Direction: a scratch scatters most when lit across it. Each LED group is an arc of the ring
  (``ring_groups`` 8, the usual segmented dark-field ring; group ``g`` centred at azimuth
  ``g * 360 / n``). The lobe of :mod:`edge.sim.optics`, in simplified form, is a Gaussian in
  the angle between the light's azimuth and the scratch's normal (modulo 180 degrees; sigma
  uniform 8-14 degrees) over a floor uniform 2-6 %. The response is
  ``floor + (1 - floor) * (lobe mass over the lit arcs) / (lobe mass over the whole ring)``: 1
  for any orientation with all groups lit (a continuous ring has no preferred direction), about
  half with a single group lit across the scratch, the floor when lit only along it.
  Isotropic scatterers (haze, dust, points) take the lit share of the ring instead.
* Truth: the mask marks pixels within ``max(0.71, 1.55 sigma)`` of the centre line where the
  envelope (end fades and wave) is at least 0.25, the rule of :mod:`edge.sim.optics`. The gaps of
  a chain are labelled too: the groove is there, it only scatters intermittently, and an
  annotator draws one line along it.

Distractors (the paper: dust, point-like defects, noise, dark pixels):

* Dust: Poisson(12 per megapixel) events, 30 % of them a loose cluster of 2-5 specks (offsets
  normal, 3-12 px): the chains' look-alike. Each speck a Gaussian, sigma log-uniform 0.7-4 px,
  peak log-uniform 5-4000 DN (faint ones as weak as scratches; the brightest saturate).
* Point-like defects (digs, pits): Poisson(4 per megapixel), sharp (sigma 0.5-0.8 px), peak
  log-uniform 10-1000 DN.
* Shadows: Poisson(2 per megapixel) dark spots where a particle blocks the light, sigma
  0.7-3 px, removing 30-90 % of the light at the centre.
* Dead pixels: 2e-5 of the sensor's pixels respond with 0-30 % of the light. They belong to the
  camera (``sensor_seed``), not the frame; on a line-scan camera a dead pixel of the line makes a
  dark column.

Sensor (fixed by the configuration, not drawn):

* Shot noise ``conversion_gain`` 0.08 DN per electron (a full well of about 51 000 e-, a
  large-pixel inspection sensor) and Gaussian read noise 2.5 DN; the normal approximation of
  Poisson is exact enough at the tens of electrons and more seen here.
* Black level 64 DN, the same on both taps (clamped per tap).
* Two taps: the left and right halves are read through amplifiers with unequal gain; the right
  half's signal (and its noise) is ``tap_gain_ratio`` (1.05) times the left's, a seam down the
  middle of every frame.
* Optional Bayer GRBG mosaic: white LEDs through the colour filters; relative responses
  R 0.6, G 1.0, B 0.75 (``bayer_gains``). Grey frames are the G response everywhere.
* Quantisation: round to the nearest DN and clip to ``[0, 2 ** bit_depth - 1]``.

Texture (``texture``, :mod:`edge.sim.darkfield_texture`): real glass and cameras add grain in
the haze, pits, glare, dust clusters, seams, dark lines, 8-bit levels and other noise levels.
``"none"`` (the default) draws none of it and renders exactly the frames above; ``"mixed"`` is
the randomised training mix; ``"heldout"`` is kept out of training as a stand-in for an unseen
camera. That module's docstring lists the families and their ranges.

Streams: the seed is split into independent streams for the scene, the noise and the texture,
so a seed renders the same scratches, dust and field whatever the LED groups, bit depth, mosaic,
noise or texture setting: two renderings that differ in one of those differ in nothing else
(a texture's seam also rescales the scratch light so its recorded peak stays what it shows).

Speed: rasterisation touches only the pixels near a defect (the numba kernels of
:mod:`edge.sim.optics`); the rest is a handful of vectorised float32 passes over the frame
(about 0.2-0.3 s for 2048 x 2048 on one core).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from edge.sim import darkfield_texture as tx
from edge.sim.optics import BLOCK_SHIFT, _draw_blob, _draw_polyline

# bump when a change alters the frames a seed renders: caches of windows key on it
DARKFIELD_VERSION = 1
REFERENCE_BITS = 12  # every DN figure of the configuration is given at this depth
BIT_DEPTHS = (8, 12, 16)
VERTEX_STEP_PX = 0.5  # fine enough to resolve a chain's 0.6 px beads by linear interpolation
MIN_FIELD = 0.05  # vignetting never reaches black: the ring still lights the corners a little
MAX_SHADOW = 0.95  # a shadow leaves some light: overlapping spots do not go negative
MOTTLE_GRID = 6
ANGLE_STEP_DEG = 0.5  # resolution of the lobe integral over the ring and of its lookup table
_STREAM_SCENE, _STREAM_NOISE = 0, 1


@dataclass(frozen=True)
class DarkfieldConfig:
    """How single-image dark-field frames are made. Ranges ``(lo, hi)`` are drawn per frame;
    DN values are at 12 bits (scaled to ``bit_depth``); the module docstring says why each."""

    shape: tuple[int, int] = (2048, 2048)  # (height, width) px, the paper's frames
    bit_depth: int = 12
    bayer: bool = False  # True: a RAW GRBG mosaic; False: grey
    bayer_gains: tuple[float, float, float] = (0.6, 1.0, 0.75)  # R, G, B response
    camera: Literal["area", "line"] = "area"
    ring_groups: int = 8
    lit_groups: tuple[int, ...] | None = None  # None: every group on
    haze: tuple[float, float] = (0.10, 0.30)  # share of full scale at the optical centre
    vignetting: tuple[float, float] = (0.35, 0.65)  # fall-off at R from the optical centre
    centre_offset: float = 0.15  # largest offset of the optical centre, share of a half side
    mottle: tuple[float, float] = (0.01, 0.04)
    tap_gain_ratio: float = 1.05  # right half over left half
    dark_offset_dn: float = 64.0
    read_noise_dn: float = 2.5
    conversion_gain: float = 0.08  # DN per electron
    noise: bool = True  # False: the expected frame (tests, illustrations)
    scratch_share: float = 1.0
    scratch_peak_dn: tuple[float, float] = (3.0, 300.0)
    scratch_length_px: tuple[float, float] = (30.0, 1500.0)
    scratch_width_px: tuple[float, float] = (1.2, 3.0)
    chain_share: float = 0.25
    dust_per_mpx: float = 12.0
    points_per_mpx: float = 4.0
    shadows_per_mpx: float = 2.0
    dead_fraction: float = 2e-5
    sensor_seed: int = 0
    texture: str = "none"  # a family of edge.sim.darkfield_texture.TEXTURES

    def __post_init__(self) -> None:
        problems = []
        h, w = self.shape
        if h < 16 or w < 16 or h % 2 or w % 2:
            problems.append(f"shape must be even and at least 16 x 16, got {h} x {w}")
        if self.bit_depth not in BIT_DEPTHS:
            problems.append(f"bit_depth must be one of {BIT_DEPTHS}, got {self.bit_depth}")
        if self.camera not in ("area", "line"):
            problems.append(f"camera must be 'area' or 'line', got {self.camera!r}")
        if self.ring_groups < 1:
            problems.append(f"ring_groups must be at least 1, got {self.ring_groups}")
        if self.lit_groups is not None:
            lit = list(self.lit_groups)
            if not lit or len(set(lit)) != len(lit) or any(
                    not 0 <= g < self.ring_groups for g in lit):
                problems.append(f"lit_groups must be distinct groups within "
                                f"0..{self.ring_groups - 1}, at least one, got {self.lit_groups}")
        for name in ("haze", "vignetting", "mottle"):
            lo, hi = getattr(self, name)
            if not 0.0 <= lo <= hi <= 1.0:
                problems.append(f"{name} must be a range within [0, 1], got {(lo, hi)}")
        for name in ("scratch_peak_dn", "scratch_length_px", "scratch_width_px"):
            lo, hi = getattr(self, name)
            if not 0.0 < lo <= hi:
                problems.append(f"{name} must be a positive range (lo <= hi), got {(lo, hi)}")
        for name in ("centre_offset", "scratch_share", "chain_share", "dead_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                problems.append(f"{name} must be within [0, 1], got {getattr(self, name)}")
        for name in ("tap_gain_ratio", "conversion_gain"):
            if not getattr(self, name) > 0.0:
                problems.append(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("dark_offset_dn", "read_noise_dn", "dust_per_mpx", "points_per_mpx",
                     "shadows_per_mpx"):
            if not getattr(self, name) >= 0.0:
                problems.append(f"{name} must not be negative, got {getattr(self, name)}")
        if len(self.bayer_gains) != 3 or not all(g > 0 for g in self.bayer_gains):
            problems.append(f"bayer_gains must be three positive numbers, got {self.bayer_gains}")
        if not isinstance(self.sensor_seed, int) or self.sensor_seed < 0:
            problems.append(f"sensor_seed must be a non-negative integer, got {self.sensor_seed}")
        if self.texture not in tx.TEXTURES:
            problems.append(f"texture must be one of {', '.join(tx.TEXTURES)}, "
                            f"got {self.texture!r}")
        if problems:
            raise ValueError("invalid dark-field configuration: " + "; ".join(problems))

    @property
    def full_scale(self) -> int:
        return 2 ** self.bit_depth - 1

    @property
    def dn_scale(self) -> float:
        """DN at ``bit_depth`` per DN at 12 bits."""
        return 2.0 ** (self.bit_depth - REFERENCE_BITS)

    @property
    def lit(self) -> tuple[int, ...]:
        return tuple(range(self.ring_groups)) if self.lit_groups is None else tuple(
            sorted(self.lit_groups))

    @property
    def lit_share(self) -> float:
        return len(self.lit) / self.ring_groups


@dataclass(frozen=True)
class ScratchTruth:
    id: int
    points_px: np.ndarray  # (n, 2) centre line, x (column) and y (row), pixel centres at integers
    length_px: float
    peak_dn: float  # brightest point above the local background as rendered (before noise)
    width_px: float  # FWHM of the cross-section
    chain: bool  # broken into a chain of points


@dataclass(frozen=True)
class Speck:
    kind: Literal["dust", "point", "shadow", "pit", "glare"]
    x: float
    y: float
    sigma_px: float
    # dust, points, glare: peak DN above the background; shadow: light removed; pit: haze removed
    amplitude: float


@dataclass
class DarkfieldFrame:
    image: np.ndarray  # (H, W) uint16, grey or GRBG mosaic
    mask: np.ndarray  # (H, W) bool, scratch pixels
    scratches: tuple[ScratchTruth, ...]
    specks: tuple[Speck, ...]
    dead_pixels: np.ndarray  # (k, 2) int64 row, column
    background: np.ndarray  # (H, W) float32: clean glass, expected DN (haze, field, taps, sites)
    haze_dn: float  # haze at the optical centre, all groups lit, before taps
    vignetting: float
    optical_centre: tuple[float, float]  # x, y px
    seed: int
    config: DarkfieldConfig = field(repr=False)
    # per-pixel signal-to-noise of the scratch light at each mask pixel, in the order of
    # ``np.flatnonzero(mask)``: expected scratch DN over the noise sigma there (module docstring)
    scratch_snr: np.ndarray = field(repr=False)
    texture: tx.Texture | None = None  # what the texture drew; None for "none"


def check_seed(seed: object, what: str = "seed") -> int:
    """``seed`` as an int, or ValueError: numpy seeds must be non-negative integers."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"{what} must be a non-negative integer, got {seed!r}")
    return int(seed)


def _log_uniform(rng: np.random.Generator, lo: float, hi: float, size=None):
    return np.exp(rng.uniform(math.log(lo), math.log(hi), size))


def _wrap90(deg: np.ndarray) -> np.ndarray:
    return (deg + 90.0) % 180.0 - 90.0


def _bumps(coord: np.ndarray, size: int) -> np.ndarray:
    """(len(coord), MOTTLE_GRID) weights of Gaussian bumps spread over ``size``; rows sum to 1,
    so a grid of values in [-1, 1] blends into a smooth field in [-1, 1]."""
    step = size / MOTTLE_GRID
    centres = (np.arange(MOTTLE_GRID) + 0.5) * step
    wgt = np.exp(-0.5 * ((coord[:, None] - centres[None, :]) / (0.8 * step)) ** 2)
    return wgt / wgt.sum(axis=1, keepdims=True)


class DarkfieldRenderer:
    """Renders :class:`DarkfieldFrame` s for one configuration; ``render(seed)`` is pure."""

    def __init__(self, config: DarkfieldConfig | None = None):
        self.config = cfg = config if config is not None else DarkfieldConfig()
        h, w = cfg.shape
        self._phi = np.arange(0.0, 360.0, ANGLE_STEP_DEG)
        half = 180.0 / cfg.ring_groups
        lit = np.zeros(self._phi.size, bool)
        for g in cfg.lit:
            centre = g * 360.0 / cfg.ring_groups
            lit |= np.abs((self._phi - centre + 180.0) % 360.0 - 180.0) < half
        self._lit_arc = lit
        self._nu = np.arange(0.0, 180.0, ANGLE_STEP_DEG)
        # dead pixels belong to the camera: the same in every frame of this configuration
        rng = np.random.default_rng([cfg.sensor_seed, h, w, 0xDEAD])
        if cfg.camera == "area":
            n_dead = round(cfg.dead_fraction * h * w)
            flat = np.sort(rng.choice(h * w, size=n_dead, replace=False))
            self.dead_pixels = np.stack(np.divmod(flat, w), axis=1).astype(np.int64)
        else:
            cols = np.sort(rng.choice(w, size=round(cfg.dead_fraction * w), replace=False))
            rows, cc = np.meshgrid(np.arange(h), cols, indexing="ij")
            self.dead_pixels = np.stack([rows.ravel(), cc.ravel()], axis=1).astype(np.int64)
        self.dead_response = rng.uniform(0.0, 0.3, len(self.dead_pixels)).astype(np.float32)
        if cfg.camera == "line" and len(self.dead_pixels):
            # one sensor pixel per column: the same response all the way down the column
            per_col = rng.uniform(0.0, 0.3, len(cols)).astype(np.float32)
            self.dead_response = np.tile(per_col, h)

    # -- the illumination field -------------------------------------------------------------
    def _vignette(self, x: np.ndarray, y: np.ndarray, v: float, cx: float, cy: float):
        h, w = self.config.shape
        if self.config.camera == "line":
            r2 = ((x - cx) / (0.5 * w)) ** 2 + 0.0 * y
        else:
            r2 = ((x - cx) ** 2 + (y - cy) ** 2) / ((0.5 * w) ** 2 + (0.5 * h) ** 2)
        return np.maximum(MIN_FIELD, 1.0 - v * r2)

    def _tap(self, x: np.ndarray) -> np.ndarray:
        w = self.config.shape[1]
        return np.where(np.rint(x) >= w // 2, self.config.tap_gain_ratio, 1.0)

    def _response(self, normal_deg: np.ndarray, lobe_sigma: float, floor: float) -> np.ndarray:
        """Scatter of a scratch with local normals ``normal_deg`` under the lit groups, 1 when
        every group is lit."""
        if self._lit_arc.all():
            return np.ones_like(normal_deg)
        lobe = np.exp(-0.5 * (_wrap90(self._phi[None, :] - self._nu[:, None]) / lobe_sigma) ** 2)
        table = floor + (1.0 - floor) * lobe[:, self._lit_arc].sum(axis=1) / lobe.sum(axis=1)
        return np.interp(normal_deg % 180.0, self._nu, table, period=180.0)

    # -- rendering --------------------------------------------------------------------------
    def render(self, seed: int) -> DarkfieldFrame:
        seed = check_seed(seed)
        cfg = self.config
        h, w = cfg.shape
        k = cfg.dn_scale
        scene_ss, noise_ss = np.random.SeedSequence(seed).spawn(2)
        rng = np.random.default_rng(scene_ss)
        tex = tx.draw_texture(cfg.texture, seed, (h, w))
        if tex is None or tex.seam is None:
            tap = self._tap
        else:
            def tap(x: np.ndarray) -> np.ndarray:
                return self._tap(x) * tx.column_gain(tex, x)

        haze_dn = float(rng.uniform(*cfg.haze)) * cfg.full_scale
        v = float(rng.uniform(*cfg.vignetting))
        cx = (w - 1) / 2 + float(rng.uniform(-1, 1)) * cfg.centre_offset * w / 2
        cy = (h - 1) / 2 + float(rng.uniform(-1, 1)) * cfg.centre_offset * h / 2
        m = float(rng.uniform(*cfg.mottle))
        grid = rng.uniform(-1.0, 1.0, (MOTTLE_GRID, MOTTLE_GRID))

        def field_at(x: np.ndarray, y: np.ndarray) -> np.ndarray:
            mot = np.einsum("ni,ij,nj->n", _bumps(y, h), grid, _bumps(x, w))
            return self._vignette(x, y, v, cx, cy) * (1.0 + m * mot)

        xs = np.arange(w, dtype=np.float32)
        ys = np.arange(h, dtype=np.float32)
        mottle = ((_bumps(ys, h) @ grid).astype(np.float32) @ _bumps(xs, w).T.astype(np.float32))
        vig = self._vignette(xs[None, :], ys[:, None], v, cx, cy)
        light = vig * (1.0 + np.float32(m) * mottle)  # the illumination field, all groups lit
        del mottle, vig

        layer = np.zeros((1, h, w), np.float32)  # light scattered by defects, DN
        shade = np.zeros((1, h, w), np.float32)  # share of light blocked by shadows
        occ = np.zeros(((h >> BLOCK_SHIFT) + 1, (w >> BLOCK_SHIFT) + 1), np.uint8)
        mask = np.zeros((h, w), np.bool_)

        scratches = []
        n_scratch = 1 + min(5, int(rng.poisson(1.0))) if rng.random() < cfg.scratch_share else 0
        for i in range(n_scratch):
            scratches.append(self._scratch(i, rng, field_at, layer, occ, mask, tap))
        at = np.flatnonzero(mask)
        scratch_dn = layer[0].ravel()[at]  # scratches only: the specks are not drawn yet

        specks: list[Speck] = []
        mpx = h * w / 1e6
        lit_share = cfg.lit_share
        for _ in range(int(rng.poisson(cfg.dust_per_mpx * mpx))):
            x0, y0 = rng.uniform(0, w), rng.uniform(0, h)
            n = int(rng.integers(2, 6)) if rng.random() < 0.3 else 1
            spread = rng.uniform(3.0, 12.0)
            for j in range(n):
                x, y = (x0, y0) if j == 0 else (x0 + rng.normal(0, spread),
                                                y0 + rng.normal(0, spread))
                specks.append(Speck("dust", float(x), float(y),
                                    float(_log_uniform(rng, 0.7, 4.0)),
                                    float(_log_uniform(rng, 5.0, 4000.0)) * k))
        for _ in range(int(rng.poisson(cfg.points_per_mpx * mpx))):
            specks.append(Speck("point", float(rng.uniform(0, w)), float(rng.uniform(0, h)),
                                float(rng.uniform(0.5, 0.8)),
                                float(_log_uniform(rng, 10.0, 1000.0)) * k))
        for _ in range(int(rng.poisson(cfg.shadows_per_mpx * mpx))):
            specks.append(Speck("shadow", float(rng.uniform(0, w)), float(rng.uniform(0, h)),
                                float(rng.uniform(0.7, 3.0)), float(rng.uniform(0.3, 0.9))))
        drawn = []
        for s in specks:
            if s.kind == "shadow":
                _draw_blob(shade, occ, s.x, s.y, s.sigma_px, np.array([s.amplitude]))
                drawn.append(s)
                continue
            # an isotropic scatterer: lit by the field where it sits and the lit share of the
            # ring; its amplitude is recorded as the frame shows it (taps included)
            xy = np.array([s.x]), np.array([s.y])
            amp = s.amplitude * lit_share * float(field_at(*xy)[0])
            _draw_blob(layer, occ, s.x, s.y, s.sigma_px, np.array([amp]))
            drawn.append(Speck(s.kind, s.x, s.y, s.sigma_px, amp * float(tap(xy[0])[0])))

        # the sensor: light (textured: grain, pits, glare, dust) -> site colour -> dead pixels
        # -> noise -> tap gain -> offset (textured: seam, dark lines, 8-bit levels)
        sig = light * np.float32(haze_dn * lit_share)
        site = self._site_gains()
        if tex is None:
            background = sig.copy()
            haze_at = light.ravel()[at] * np.float32(haze_dn * lit_share)
        else:
            background, haze_at = self._texture_light(tex, sig, light, haze_dn * lit_share, at,
                                                      drawn, tap)
        sig += layer[0]
        del layer
        if any(s.kind == "shadow" for s in drawn):
            sig *= 1.0 - np.minimum(shade[0], np.float32(MAX_SHADOW))
        del shade
        for (r, c), g in site.items():
            sig[r::2, c::2] *= g
            background[r::2, c::2] *= g
        if len(self.dead_pixels):
            rr, cc = self.dead_pixels[:, 0], self.dead_pixels[:, 1]
            sig[rr, cc] *= self.dead_response
        if cfg.noise:
            z = np.random.default_rng(noise_ss).standard_normal((h, w), dtype=np.float32)
            std = np.sqrt(np.float32((cfg.read_noise_dn * k) ** 2)
                          + np.float32(cfg.conversion_gain * k) * sig)
            if tex is not None and tex.noise_factor != 1.0:
                std *= np.float32(tex.noise_factor)
            sig += std * z
            del z, std
        ratio = np.float32(cfg.tap_gain_ratio)
        sig[:, w // 2:] *= ratio
        background[:, w // 2:] *= ratio
        offset = np.float32(cfg.dark_offset_dn * k)
        if tex is None:
            background += offset
            sig += offset + np.float32(0.5)
            np.clip(sig, 0.0, np.float32(cfg.full_scale), out=sig)
            image = sig.astype(np.uint16)  # truncation after +0.5: rounding to the nearest DN
        else:
            tx.apply_readout(tex, background, k, offset)
            tx.apply_readout(tex, sig, k, offset)
            image = tx.quantise(tex, sig, cfg.bit_depth)
        snr = self._scratch_snr(at, scratch_dn, haze_at, 1.0 if tex is None else tex.noise_factor)
        return DarkfieldFrame(image, mask, tuple(scratches), tuple(drawn), self.dead_pixels,
                              background, haze_dn, v, (cx, cy), seed, cfg, snr, tex)

    def _texture_light(self, tex: tx.Texture, sig: np.ndarray, light: np.ndarray, haze: float,
                       at: np.ndarray, drawn: list[Speck], tap) -> tuple[np.ndarray, np.ndarray]:
        """In place on the haze ``sig``: grain, pits, then glare and dust; appends those
        distractors to ``drawn``. Gives the background (the haze with its grain: clean glass)
        and the haze at the mask pixels ``at`` (grain and pits: what the scratch sits on)."""
        cfg = self.config
        gain = tx.haze_gain(tex, cfg.shape)
        if gain is not None:
            sig *= gain
        del gain
        background = sig.copy()
        pits = tx.pit_share(tex, cfg.shape)
        if pits is not None:
            sig *= np.float32(1.0) - pits
            drawn.extend(Speck("pit", p.x, p.y, p.sigma_px, p.amplitude) for p in tex.pits)
        del pits
        haze_at = sig.ravel()[at]
        added, blobs = tx.added_light(tex, light, haze, cfg.dn_scale * cfg.lit_share)
        if added is not None:
            sig += added
        for kind, b, amp in blobs:
            drawn.append(Speck(kind, b.x, b.y, b.sigma_px, amp * float(tap(np.array([b.x]))[0])))
        return background, haze_at

    def _scratch_snr(self, at: np.ndarray, scratch_dn: np.ndarray, haze_at: np.ndarray,
                     noise_factor: float = 1.0) -> np.ndarray:
        """Expected scratch DN over the noise sigma at the mask pixels ``at``, from the same
        noise model the frame is drawn with (the tap gain scales signal and noise alike, so it
        drops out); ``haze_at`` is the haze there before site gains, ``noise_factor`` the
        texture's noise scale; dead pixels and shadows are left out: they are rare on a
        scratch."""
        cfg = self.config
        k = cfg.dn_scale
        gain = np.ones(at.size, np.float32)
        w = cfg.shape[1]
        for (r, c), g in self._site_gains().items():
            gain[((at // w) % 2 == r) & ((at % w) % 2 == c)] = g
        s = scratch_dn * gain
        back = haze_at * gain
        var = np.float32((cfg.read_noise_dn * k) ** 2) + np.float32(cfg.conversion_gain * k) * (
            back + s)
        if noise_factor != 1.0:
            var *= np.float32(noise_factor) ** 2
        return (s / np.sqrt(var)).astype(np.float32)

    def _site_gains(self) -> dict[tuple[int, int], np.float32]:
        """Gains of the 2 x 2 GRBG sites relative to G; empty for grey frames."""
        if not self.config.bayer:
            return {}
        r, g, b = self.config.bayer_gains
        return {(0, 0): np.float32(1.0), (0, 1): np.float32(r / g), (1, 0): np.float32(b / g),
                (1, 1): np.float32(1.0)}

    def _scratch(self, sid: int, rng: np.random.Generator, field_at, layer, occ, mask, tap):
        cfg = self.config
        h, w = cfg.shape
        length = float(_log_uniform(rng, *cfg.scratch_length_px))
        mid = np.array([rng.uniform(0, w - 1), rng.uniform(0, h - 1)])
        heading0 = rng.uniform(0.0, 360.0)
        turn = 0.0 if rng.random() < 0.5 else rng.uniform(-45.0, 45.0)
        width = float(rng.uniform(*cfg.scratch_width_px))
        peak = float(_log_uniform(rng, *cfg.scratch_peak_dn)) * cfg.dn_scale
        taper = min(rng.uniform(5.0, 25.0), length / 3.0)
        depth, period, phase = rng.uniform(0.1, 0.35), rng.uniform(40, 400), rng.uniform(0, 6.3)
        lobe_sigma, floor = rng.uniform(8.0, 14.0), rng.uniform(0.02, 0.06)
        chain = bool(rng.random() < cfg.chain_share)
        bead_spacing = rng.uniform(5.0, 20.0)
        n_beads = int(length / (0.6 * bead_spacing)) + 2
        gaps = bead_spacing * rng.uniform(0.6, 1.4, n_beads)
        bead_at = rng.uniform(0.0, bead_spacing) + np.concatenate([[0.0], np.cumsum(gaps[:-1])])
        bead_sigma = rng.uniform(0.6, 1.5, n_beads)
        bead_weight = rng.uniform(0.4, 1.0, n_beads)

        n = max(2, math.ceil(length / VERTEX_STEP_PX) + 1)
        s = np.linspace(0.0, length, n)
        heading = np.radians(heading0 + turn * (s / length - 0.5))
        ds = np.diff(s)
        x = np.concatenate([[0.0], np.cumsum(0.5 * (np.cos(heading[1:]) + np.cos(heading[:-1]))
                                             * ds)])
        y = np.concatenate([[0.0], np.cumsum(0.5 * (np.sin(heading[1:]) + np.sin(heading[:-1]))
                                             * ds)])
        half = n // 2
        pts = np.stack([x - x[half] + mid[0], y - y[half] + mid[1]], axis=1)

        env = np.clip(np.minimum(s, length - s) / taper, 0.0, 1.0) * (
            1.0 + depth * np.sin(2 * np.pi * s / period + phase))
        if chain:
            # nearest bead on either side of each vertex: beads are spaced wider than they are long
            j = np.clip(np.searchsorted(bead_at, s), 1, n_beads - 1)
            beads = np.maximum(*(bead_weight[i] * np.exp(-0.5 * ((s - bead_at[i]) / bead_sigma[i])
                                                          ** 2) for i in (j - 1, j)))
        else:
            beads = np.ones_like(s)
        inside = (pts[:, 0] > -0.5) & (pts[:, 0] < w - 0.5) & (pts[:, 1] > -0.5) & (
            pts[:, 1] < h - 0.5)
        lit_by = field_at(pts[:, 0], pts[:, 1])
        seen = env * beads * lit_by * tap(pts[:, 0])  # all groups lit, up to a scale
        scale = peak / float(seen[inside].max())
        normal = np.degrees(heading) + 90.0
        amp = scale * env * beads * lit_by * self._response(normal, lobe_sigma, floor)
        sigma = max(0.5, width / 2.355)
        _draw_polyline(layer, occ, mask, pts, np.ascontiguousarray(amp[:, None]), env, sigma,
                       max(0.71, 1.55 * sigma))
        actual = float((amp * tap(pts[:, 0]))[inside].max())
        return ScratchTruth(sid, pts, length, actual, width, chain)


FRAME_PX = 2048  # the paper's frames, DarkfieldConfig's default side
REFERENCE_SCRATCH_PX = (30.0, 1500.0)  # DarkfieldConfig's scratch lengths at FRAME_PX


def frames_at(frame_px: int = FRAME_PX, texture: str = "none") -> DarkfieldConfig:
    """The default frames at a side of ``frame_px``; scratch lengths scale with the side (the
    longest stays three quarters of it), the shortest stays 30 px, so smaller frames (tests,
    smoke runs) keep the same mix of short and long scratches per window. The classifier is
    trained and evaluated on these (:mod:`model.window_eval`); ``texture`` picks a family of
    :mod:`edge.sim.darkfield_texture` (``"mixed"`` to train, ``"heldout"`` to test)."""
    if isinstance(frame_px, bool) or not isinstance(frame_px, int) or frame_px < 256 \
            or frame_px % 2:
        raise ValueError(f"frame_px must be an even number of at least 256 px, got {frame_px!r}")
    lo, hi = REFERENCE_SCRATCH_PX
    return DarkfieldConfig(shape=(frame_px, frame_px),
                           scratch_length_px=(lo, max(lo, hi * frame_px / FRAME_PX)),
                           texture=tx.check_texture(texture))


def render_darkfield(seed: int, config: DarkfieldConfig | None = None) -> DarkfieldFrame:
    """One frame: :meth:`DarkfieldRenderer.render` of a renderer made for ``config``."""
    return DarkfieldRenderer(config).render(seed)
