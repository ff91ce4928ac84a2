"""Dark-field optics and sensor: renders a :class:`~edge.sim.sample.Sample` into RAW frames.

The model follows the glass paper (sections 3-4) and its Fig. 3:

* Clean glass is almost black: a faint haze (``background_dn``) plus the sensor's dark level.
* A scratch scatters directionally. Its signal under a state lit from azimuth ``theta`` follows
  the angle ``delta`` between ``theta`` and the scratch's local normal (the direction across it),
  modulo 180 degrees because each state lights an opposite facet pair:
  ``R = b + (1 - b) * exp(-delta**2 / (2 * s**2))`` with a sharp peak (``s`` 8-14 degrees) and a
  small floor ``b`` (2-6 %). Curved scratches change their normal, and so their brightest state,
  along the length. "Rugged" scratches add one or two secondary lobes 25-75 degrees away, a higher
  floor, and lobe weights that drift along the length: a less regular response.
* Dust scatters isotropically (+-5 % between states) and is often brighter than full scale; stains
  are diffuse blobs built from several Gaussians with a weak ``cos 2(theta - psi)`` modulation
  (5-25 %); fibres are thick curved threads, isotropic (+-6 %).
* The other factory's glass (:mod:`edge.sim.sample`): a "polished" scratch has a double-edged
  cross-section (two walls at +-0.3 of its width, each 0.35 of it wide, over a floor a quarter
  as bright, the sum's peak at ``intensity_dn``) and one broad lobe (``s`` 14-22 degrees, floor
  3-8 %). Water spots (a drying ring, slightly out of round and uneven along its circumference,
  20-45 um wide, over a faint fill) and fingerprints (ridges across an oval patch, each a line
  100-200 um wide, brightest near the middle of the patch, with gaps) are residues that scatter
  diffusely: like dust, the same under every state (+-5 %), whatever a ridge's or a ring
  segment's direction, unlike a scratch's narrow lobes across its normal. They are lines and
  spots (:func:`area_primitives`); their tightly curved lines are drawn each pixel once, from
  the nearest segment (:func:`_draw_curve`).
* Each LED group lights the RoI unevenly: a radial fall-off whose centre is off-axis, a tilt
  along the group's azimuth (the two facets of a pair differ), and a brightness of its own (LED
  balance). These belong to the head (fixed by ``head_seed``), not to the sample: calibration
  measures them with flat fields.
* The camera's mounting (``scale_error``, ``rotation_deg``, ``origin_offset_mm`` of the head's
  ``[simulation]`` section, see :class:`CameraGeometry`): the true mapping from sample mm to
  pixels may differ from the head file's by a scale about the frame centre, a rotation about it
  and a shift. Every object is placed through that one mapping; all 0 is the file's mapping.
* The sensor: Bayer colour gain per channel (white LEDs through an RGB filter array), shot noise
  (variance = signal x conversion gain), Gaussian read noise, a dark offset, hot pixels at fixed
  places with a level that scales with exposure, 12-bit quantisation with clipping (saturation).

Signals are defined at a reference exposure of 20 ms and scale linearly with the configured one.

Besides glass samples, the renderer takes the calibration targets of :mod:`edge.sim.targets`
(a diffusing plate, a dot grid, a lens cap): each paints its own :class:`Scene`, which the same
sensor pass then exposes.

Speed: the scene (defects) is rasterised sparsely into float32 layers, one per state, touching
only the pixels near a defect and marking 16 x 16 blocks as occupied; the sensor pass then walks
every pixel once, reads the layers only in occupied blocks, and draws its noise from a
counter-based hash (splitmix64 of the pixel index and a per-frame key) through a 65536-entry
inverse-normal table, so frames are the same whatever the thread count.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from statistics import NormalDist
from typing import TYPE_CHECKING

import numba as nb
import numpy as np

from edge.config import N_STATES, HeadConfig
from edge.truth import AREA_KINDS, GlassObject, Sample

if TYPE_CHECKING:
    from edge.sim.targets import Target

REFERENCE_EXPOSURE_MS = 20.0
BLOCK_SHIFT = 4  # occupancy blocks of 16 x 16 px
MASK_ENVELOPE = 0.25  # faded ends of a scratch below this share of its brightness are not labelled

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


@lru_cache(maxsize=1)
def _normal_table() -> np.ndarray:
    nd = NormalDist()
    return np.array([nd.inv_cdf((i + 0.5) / 65536) for i in range(65536)], dtype=np.float32)


@nb.njit(inline="always")
def _splitmix(z):
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


@nb.njit(cache=True, nogil=True)
def _draw_polyline(scene, occ, mask, verts, amp, env, sigma, mask_r):
    """Add a line of Gaussian cross-section ``sigma`` (px) along ``verts`` (V x 2, x/y px).

    ``amp`` (V x S) is the per-state peak at each vertex, interpolated along each segment. A
    pixel belongs to the segment it projects onto, so joints are neither doubled nor dropped.
    Where ``mask_r`` > 0, pixels within ``mask_r`` of the centre line are set in ``mask``.
    """
    n_states, h, w = scene.shape
    reach = 3.5 * sigma + 1.0
    n = verts.shape[0]
    for i in range(n - 1):
        ax, ay = verts[i, 0], verts[i, 1]
        dx, dy = verts[i + 1, 0] - ax, verts[i + 1, 1] - ay
        seg = math.sqrt(dx * dx + dy * dy)
        if seg < 1e-9:
            continue
        ux, uy = dx / seg, dy / seg
        last = i == n - 2
        c0 = max(0, int(math.floor(min(ax, ax + dx) - reach)))
        c1 = min(w - 1, int(math.ceil(max(ax, ax + dx) + reach)))
        r0 = max(0, int(math.floor(min(ay, ay + dy) - reach)))
        r1 = min(h - 1, int(math.ceil(max(ay, ay + dy) + reach)))
        for r in range(r0, r1 + 1):
            py = r - ay
            for c in range(c0, c1 + 1):
                px = c - ax
                t = px * ux + py * uy
                if t < 0.0 or t > seg or (t == seg and not last):
                    continue
                d = abs(px * uy - py * ux)
                if d > reach:
                    continue
                wgt = math.exp(-0.5 * (d / sigma) ** 2)
                f = t / seg
                for s in range(n_states):
                    scene[s, r, c] += wgt * ((1.0 - f) * amp[i, s] + f * amp[i + 1, s])
                occ[r >> BLOCK_SHIFT, c >> BLOCK_SHIFT] = 1
                if d <= mask_r and (1.0 - f) * env[i] + f * env[i + 1] >= MASK_ENVELOPE:
                    mask[r, c] = True


@nb.njit(inline="always")
def _seg_dist(verts, i, px, py):
    """Distance of (px, py) from segment i of ``verts``, and where along it (0-1) it is nearest."""
    ax, ay = verts[i, 0], verts[i, 1]
    dx, dy = verts[i + 1, 0] - ax, verts[i + 1, 1] - ay
    len2 = dx * dx + dy * dy
    f = 0.0 if len2 < 1e-18 else min(1.0, max(0.0, ((px - ax) * dx + (py - ay) * dy) / len2))
    ex, ey = px - ax - f * dx, py - ay - f * dy
    return math.sqrt(ex * ex + ey * ey), f


@nb.njit(cache=True, nogil=True)
def _draw_curve(scene, occ, verts, amp, sigma, closed):
    """Add a line of Gaussian cross-section ``sigma`` (px) along ``verts`` (V x 2, x/y px), each
    pixel once, from the segment nearest to it (its neighbours compared), with round ends.

    For tightly curved lines (a water spot's ring, a fingerprint's wavy ridges): there
    :func:`_draw_polyline`'s rule (a pixel belongs to every segment it projects onto) counts
    pixels on the inside of a bend twice and drops some on the outside. It needs a radius of
    curvature larger than the line's reach. ``closed``: the last vertex is the first.
    """
    n_states, h, w = scene.shape
    reach = 3.5 * sigma + 1.0
    n_seg = verts.shape[0] - 1
    for i in range(n_seg):
        ax, ay = verts[i, 0], verts[i, 1]
        bx, by = verts[i + 1, 0], verts[i + 1, 1]
        c0 = max(0, int(math.floor(min(ax, bx) - reach)))
        c1 = min(w - 1, int(math.ceil(max(ax, bx) + reach)))
        r0 = max(0, int(math.floor(min(ay, by) - reach)))
        r1 = min(h - 1, int(math.ceil(max(ay, by) + reach)))
        prev = i - 1 if i > 0 else (n_seg - 1 if closed else -1)
        nxt = i + 1 if i < n_seg - 1 else (0 if closed else -1)
        for r in range(r0, r1 + 1):
            for c in range(c0, c1 + 1):
                d, f = _seg_dist(verts, i, c, r)
                if d > reach:
                    continue
                # drawn by the nearest of the three; a tie by the lowest index: once at a joint
                if prev >= 0:
                    dp = _seg_dist(verts, prev, c, r)[0]
                    if dp < d or (dp == d and prev < i):
                        continue
                if nxt >= 0:
                    dn = _seg_dist(verts, nxt, c, r)[0]
                    if dn < d or (dn == d and nxt < i):
                        continue
                wgt = math.exp(-0.5 * (d / sigma) ** 2)
                for s in range(n_states):
                    scene[s, r, c] += wgt * ((1.0 - f) * amp[i, s] + f * amp[i + 1, s])
                occ[r >> BLOCK_SHIFT, c >> BLOCK_SHIFT] = 1


@nb.njit(cache=True, nogil=True)
def _draw_blob(scene, occ, cx, cy, sigma, amp):
    """Add an isotropic Gaussian spot centred at (cx, cy) px with per-state peaks ``amp``."""
    n_states, h, w = scene.shape
    reach = 4.0 * sigma + 1.0
    c0, c1 = max(0, int(math.floor(cx - reach))), min(w - 1, int(math.ceil(cx + reach)))
    r0, r1 = max(0, int(math.floor(cy - reach))), min(h - 1, int(math.ceil(cy + reach)))
    k = -0.5 / (sigma * sigma)
    for r in range(r0, r1 + 1):
        dy2 = (r - cy) ** 2
        for c in range(c0, c1 + 1):
            wgt = math.exp(k * ((c - cx) ** 2 + dy2))
            for s in range(n_states):
                scene[s, r, c] += wgt * amp[s]
            occ[r >> BLOCK_SHIFT, c >> BLOCK_SHIFT] = 1


@nb.njit(cache=True, nogil=True, parallel=True, fastmath=True)
def _expose(out, scene, occ, lit, field, chan, background, dark, read_var, shot_k, key, table,
            max_dn):
    """One RAW frame: light the scene with the states in ``lit`` and read it out.

    ``lit`` holds the indexes of the lit states; ``field[s]`` is (brightness, cx, cy, fall-off,
    tilt x, tilt y) of state ``s``'s illumination field over normalised coordinates [-1, 1];
    ``background`` the radiance everywhere under every state (the haze of clean glass, or a
    calibration plate). The field formula is repeated in :meth:`OpticsRenderer.field_maps`.
    """
    h, w = out.shape
    wu = np.uint64(w)
    for r in nb.prange(h):
        yn = 2.0 * (r + 0.5) / h - 1.0
        row_key = key + np.uint64(r) * wu
        for c in range(w):
            xn = 2.0 * (c + 0.5) / w - 1.0
            busy = occ[r >> BLOCK_SHIFT, c >> BLOCK_SHIFT] != 0
            sig = 0.0
            for j in range(lit.shape[0]):
                s = lit[j]
                ddx = xn - field[s, 1]
                ddy = yn - field[s, 2]
                f = field[s, 0] * (1.0 - 0.5 * field[s, 3] * (ddx * ddx + ddy * ddy))
                f *= 1.0 + field[s, 4] * xn + field[s, 5] * yn
                rad = background
                if busy:
                    rad += scene[s, r, c]
                sig += rad * f
            sig *= chan[r & 1, c & 1]
            z = table[_splitmix((row_key + np.uint64(c)) * _GOLDEN) >> np.uint64(48)]
            v = dark + sig + math.sqrt(read_var + shot_k * sig) * z + 0.5
            if v < 0.0:
                v = 0.0
            elif v > max_dn:
                v = max_dn
            out[r, c] = np.uint16(v)


_CHANNELS = {"R": 0, "G": 1, "B": 2}


@dataclass
class Scene:
    """One RoI's defects rasterised per state, before light falls on the sensor."""

    layers: np.ndarray  # (6, H, W) float32, DN at the reference exposure and a flat field
    occupied: np.ndarray  # (H/16, W/16) uint8
    mask: np.ndarray  # (H, W) bool: scratch ground truth
    origin_mm: tuple[float, float]
    defect_ids: tuple[int, ...]  # indexes into the sample's defects that reach this RoI
    # radiance everywhere, the same under every state (DN at the reference exposure), in place
    # of the haze of clean glass (``background_dn``): a calibration plate; None: clean glass
    radiance: float | None = None


@dataclass(frozen=True)
class CameraGeometry:
    """Where a simulated camera's pixels really look on the sample.

    The head file's mapping puts pixel centre ``(c, r)`` (pixel centres at integers) of an RoI
    whose origin is sample ``(ox, oy)`` mm at ``(ox + (c + 0.5) sx, oy + (r + 0.5) sy)``, with
    ``(sx, sy)`` = ``nominal_mm_per_px`` (RoI size / pixels). The camera as mounted differs: its
    pixels see ``1 + scale_error`` times that footprint, its pixel axes are turned by
    ``rotation_deg`` (from +x toward +y) against the stage's, both about the frame centre, and
    the whole field of view is moved by ``origin_offset_mm``. So the frame centre, pixel
    ``((w - 1) / 2, (h - 1) / 2)``, sees ``origin + (w sx / 2, h sy / 2) + offset``, and one
    pixel step along x (y) moves ``sx' (cos a, sin a)`` (``sy' (-sin a, cos a)``) mm on the
    sample, ``sx' = sx (1 + scale_error)``.
    """

    nominal_mm_per_px: tuple[float, float]
    shape: tuple[int, int]  # (height, width) px
    scale_error: float = 0.0
    rotation_deg: float = 0.0
    origin_offset_mm: tuple[float, float] = (0.0, 0.0)

    @property
    def identity(self) -> bool:
        """True when the camera sits exactly as the head file says."""
        return (self.scale_error == 0.0 and self.rotation_deg == 0.0
                and self.origin_offset_mm[0] == 0.0 and self.origin_offset_mm[1] == 0.0)

    @property
    def mm_per_px(self) -> tuple[float, float]:
        """The true footprint of one pixel along its own axes, x and y."""
        k = 1.0 + self.scale_error
        return (self.nominal_mm_per_px[0] * k, self.nominal_mm_per_px[1] * k)

    @property
    def matrix(self) -> np.ndarray:
        """(2, 2): sample mm moved per pixel step; column 0 along the pixel x axis, 1 along y."""
        a = math.radians(self.rotation_deg)
        sx, sy = self.mm_per_px
        return np.array([[sx * math.cos(a), -sy * math.sin(a)],
                         [sx * math.sin(a), sy * math.cos(a)]])

    def _centres(self, origin_mm: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
        h, w = self.shape
        sx, sy = self.nominal_mm_per_px
        mm = np.array([origin_mm[0] + 0.5 * w * sx + self.origin_offset_mm[0],
                       origin_mm[1] + 0.5 * h * sy + self.origin_offset_mm[1]])
        return mm, np.array([0.5 * w - 0.5, 0.5 * h - 0.5])

    def to_px(self, pts_mm: np.ndarray, origin_mm: tuple[float, float]) -> np.ndarray:
        """Sample mm (N x 2) -> pixel coordinates of the RoI at ``origin_mm``."""
        pts_mm = np.asarray(pts_mm, dtype=np.float64)
        if self.identity:  # the head file's mapping, exactly as it always was computed
            sx, sy = self.nominal_mm_per_px
            return np.stack([(pts_mm[:, 0] - origin_mm[0]) / sx - 0.5,
                             (pts_mm[:, 1] - origin_mm[1]) / sy - 0.5], axis=1)
        c_mm, c_px = self._centres(origin_mm)
        return np.linalg.solve(self.matrix, (pts_mm - c_mm).T).T + c_px

    def to_mm(self, pts_px: np.ndarray, origin_mm: tuple[float, float]) -> np.ndarray:
        """Pixel coordinates (N x 2, x/y) of the RoI at ``origin_mm`` -> sample mm."""
        pts_px = np.asarray(pts_px, dtype=np.float64)
        c_mm, c_px = self._centres(origin_mm)
        return (pts_px - c_px) @ self.matrix.T + c_mm

    def footprint_mm(self, origin_mm: tuple[float, float]) -> tuple[float, float, float, float]:
        """x0, y0, x1, y1: the sample area the frame sees (the box around it when rotated)."""
        h, w = self.shape
        if self.identity:
            sx, sy = self.nominal_mm_per_px
            return (origin_mm[0], origin_mm[1], origin_mm[0] + w * sx, origin_mm[1] + h * sy)
        corners = self.to_mm(np.array([[-0.5, -0.5], [w - 0.5, -0.5], [-0.5, h - 0.5],
                                       [w - 0.5, h - 0.5]]), origin_mm)
        (x0, y0), (x1, y1) = corners.min(axis=0), corners.max(axis=0)
        return (float(x0), float(y0), float(x1), float(y1))


@dataclass
class RoiRender:
    frames: np.ndarray  # (6, H, W) uint16, RAW Bayer
    mask: np.ndarray  # (H, W) bool
    origin_mm: tuple[float, float]
    defect_ids: tuple[int, ...]


def _wrap90(deg: np.ndarray) -> np.ndarray:
    return (deg + 90.0) % 180.0 - 90.0


def _arc_length(p: np.ndarray) -> np.ndarray:
    return np.concatenate([[0.0], np.cumsum(np.hypot(*np.diff(p, axis=0).T))])


def _envelope(rng: np.random.Generator, t: np.ndarray, taper_mm: float, depth: float) -> np.ndarray:
    total = t[-1]
    ta = max(min(taper_mm, total / 3.0), 1e-9)
    taper = np.clip(np.minimum(t, total - t) / ta, 0.0, 1.0)
    wave = 1.0 + depth * np.sin(2 * np.pi * t / rng.uniform(1.0, 6.0) + rng.uniform(0, 2 * np.pi))
    return taper * wave


def line_response(d: GlassObject, angles_deg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-vertex, per-state peak signal (V x S) and brightness envelope (V) of a line defect."""
    rng = np.random.default_rng(d.seed)
    p = d.points
    t = _arc_length(p)
    if d.kind == "fibre":
        env = _envelope(rng, t, 0.05, 0.25)
        jitter = 1.0 + rng.normal(0.0, 0.06, angles_deg.size)
        return d.intensity_dn * env[:, None] * jitter[None, :], env
    tangent = np.gradient(p, axis=0)
    normal_deg = np.degrees(np.arctan2(tangent[:, 1], tangent[:, 0])) + 90.0
    delta = _wrap90(angles_deg[None, :] - normal_deg[:, None])  # V x S
    if d.profile == "rugged":
        env = _envelope(rng, t, 0.3, 0.35)
        n_lobes = int(rng.integers(2, 4))
        side = rng.choice([-1, 1], n_lobes - 1)
        offsets = np.concatenate([[rng.normal(0, 8.0)], side * rng.uniform(25, 75, n_lobes - 1)])
        widths = rng.uniform(6.0, 12.0, n_lobes)
        weights = np.concatenate([[1.0], rng.uniform(0.3, 0.8, n_lobes - 1)])
        floor = rng.uniform(0.06, 0.15)
        grid = np.arange(-90.0, 90.0, 0.5)
        peak = max((weights * np.exp(-0.5 * (_wrap90(grid[:, None] - offsets) / widths) ** 2))
                   .sum(axis=1))
        phase = rng.uniform(0, 2 * np.pi, n_lobes)
        period = rng.uniform(0.5, 4.0, n_lobes)
        drift = weights * (1 + 0.5 * np.sin(2 * np.pi * t[:, None] / period + phase))  # V x L
        lobes = np.exp(-0.5 * (_wrap90(delta[:, :, None] - offsets) / widths) ** 2)  # V x S x L
        resp = floor + (1 - floor) * (lobes * drift[:, None, :]).sum(axis=2) / peak
    elif d.profile == "polished":
        env = _envelope(rng, t, 0.3, 0.10)
        width = rng.uniform(14.0, 22.0)  # smooth walls scatter into a broader cone
        floor = rng.uniform(0.03, 0.08)
        resp = floor + (1 - floor) * np.exp(-0.5 * (delta / width) ** 2)
    else:
        env = _envelope(rng, t, 0.3, 0.15)
        width = rng.uniform(8.0, 14.0)
        floor = rng.uniform(0.02, 0.06)
        resp = floor + (1 - floor) * np.exp(-0.5 * (delta / width) ** 2)
    return d.intensity_dn * env[:, None] * resp, env


def polished_section(width_px: float) -> list[tuple[float, float, float]]:
    """(offset px across the line, sigma px, weight) of the Gaussian lines that make a polished
    scratch's cross-section of apparent width ``width_px``: two walls and the floor between
    them, weighted so that the sum peaks at 1."""
    parts = [(-0.3 * width_px, max(0.5, 0.15 * width_px), 1.0),
             (0.3 * width_px, max(0.5, 0.15 * width_px), 1.0),
             (0.0, max(0.5, 0.3 * width_px), 0.25)]
    x = np.linspace(-width_px, width_px, 801)
    peak = sum(w * np.exp(-0.5 * ((x - o) / s) ** 2) for o, s, w in parts).max()
    return [(o, s, w / peak) for o, s, w in parts]


def _offset(verts: np.ndarray, by: float) -> np.ndarray:
    """A polyline (V x 2 px) moved ``by`` px along its local normal."""
    tangent = np.gradient(verts, axis=0)
    normal = np.stack([-tangent[:, 1], tangent[:, 0]], axis=1)
    return verts + by * normal / np.maximum(np.hypot(*normal.T), 1e-12)[:, None]


Blob = tuple[float, float, float, np.ndarray]
# a line of an area object: vertices (V x 2 mm), per-vertex per-state peak (V x S), sigma (mm)
Line = tuple[np.ndarray, np.ndarray, float]


def blob_primitives(d: GlassObject, angles_deg: np.ndarray) -> list[Blob]:
    """(x mm, y mm, sigma mm, per-state peak) of the Gaussians that make up a dust or stain."""
    rng = np.random.default_rng(d.seed)
    (cx, cy), = d.points_mm
    diam = d.width_um * 1e-3
    if d.kind == "dust":
        amp = d.intensity_dn * (1.0 + rng.normal(0.0, 0.05, angles_deg.size))
        return [(cx, cy, diam / 2.355, amp)]
    depth, psi = rng.uniform(0.05, 0.25), rng.uniform(0, 180)
    modulation = 1.0 + depth * np.cos(np.radians(2 * (angles_deg - psi)))
    parts = []
    for _ in range(int(rng.integers(3, 8))):
        ox, oy = rng.normal(0.0, 0.15 * diam, 2)
        sigma = 0.5 * diam * rng.uniform(0.25, 0.6) / 2.0
        parts.append((cx + ox, cy + oy, sigma, d.intensity_dn * rng.uniform(0.4, 1.0) * modulation))
    return parts


def _diffuse(rng: np.random.Generator, n_states: int) -> np.ndarray:
    """A residue's response to the states: the same under each, to within +-5 % (as dust)."""
    return 1.0 + rng.normal(0.0, 0.05, n_states)


def _water_spot(d: GlassObject, angles_deg: np.ndarray) -> tuple[list[Line], list[Blob]]:
    rng = np.random.default_rng(d.seed)
    (cx, cy), = d.points_mm
    jitter = _diffuse(rng, angles_deg.size)
    a2, a3 = rng.uniform(0.0, 0.08), rng.uniform(0.0, 0.05)
    p2, p3, p1 = rng.uniform(0, 2 * np.pi, 3)
    radius = 0.5 * d.width_um * 1e-3 / (1.0 + a2 + a3)  # out of round, within the diameter
    n = max(48, math.ceil(2 * math.pi * radius / 0.05))
    # closed: the last vertex is exactly the first (how the renderer knows a ring)
    phi = np.append(np.linspace(0.0, 2 * np.pi, n, endpoint=False), 0.0)
    r = radius * (1.0 + a2 * np.cos(2 * phi + p2) + a3 * np.cos(3 * phi + p3))
    pts = np.stack([cx + r * np.cos(phi), cy + r * np.sin(phi)], axis=1)
    # the residue piles up unevenly along the rim as the drop dries
    along = 1.0 + rng.uniform(0.1, 0.4) * np.sin(phi + p1) + 0.15 * np.sin(3 * phi + p2)
    along = np.clip(along, 0.2, None) / np.clip(along, 0.2, None).max()
    ring_sigma = rng.uniform(20.0, 45.0) * 1e-3 / 2.355
    lines = [(pts, d.intensity_dn * along[:, None] * jitter[None, :], ring_sigma)]
    fill = d.intensity_dn * rng.uniform(0.03, 0.15) * jitter
    return lines, [(cx, cy, 0.35 * radius, fill)]


def _fingerprint(d: GlassObject, angles_deg: np.ndarray) -> tuple[list[Line], list[Blob]]:
    """Ridges across an oval patch (``width_um`` its long axis, ridges stacked along it, as they
    run across a finger), each bowed into an arch, slightly wavy, broken by a few gaps."""
    rng = np.random.default_rng(d.seed)
    (cx, cy), = d.points_mm
    jitter = _diffuse(rng, angles_deg.size)
    half_u = 0.5 * d.width_um * 1e-3
    half_v = half_u * rng.uniform(0.6, 0.85)
    turn = rng.uniform(0, np.pi)
    rot = np.array([[math.cos(turn), -math.sin(turn)], [math.sin(turn), math.cos(turn)]])
    spacing = rng.uniform(0.4, 0.5)
    bow = rng.uniform(0.1, 0.3) * half_v
    sigma = rng.uniform(100.0, 200.0) * 1e-3 / 2.355
    v = np.linspace(-half_v, half_v, max(3, math.ceil(2 * half_v / 0.1) + 1))
    arch = bow * (1.0 - (v / half_v) ** 2)
    raw: list[tuple[np.ndarray, np.ndarray]] = []
    for u0 in np.arange(-half_u - bow + rng.uniform(0, spacing), half_u, spacing):
        u = u0 + arch + 0.03 * np.sin(2 * np.pi * v / rng.uniform(1.0, 3.0)
                                      + rng.uniform(0, 2 * np.pi))
        r2 = (u / half_u) ** 2 + (v / half_v) ** 2
        # pressed hardest in the middle: brightness falls toward the oval's edge
        bright = rng.uniform(0.5, 1.0) * np.sqrt(np.clip(1.0 - r2, 0.0, None))
        keep = r2 < 1.0
        for _ in range(int(rng.integers(0, 3))):  # ridge endings and breaks
            at, gap = rng.uniform(-half_v, half_v), rng.uniform(0.2, 0.6)
            keep &= np.abs(v - at) > 0.5 * gap
        edges = np.flatnonzero(np.diff(np.concatenate([[0], keep.astype(np.int8), [0]])))
        for a, b in zip(edges[::2], edges[1::2], strict=True):
            if b - a >= 2:
                local = np.stack([u[a:b], v[a:b]], axis=1)
                raw.append((local @ rot.T + (cx, cy), bright[a:b]))
    top = max((float(b.max()) for _, b in raw), default=0.0)
    if top <= 0:
        return [], []
    return [(pts, d.intensity_dn * (b / top)[:, None] * jitter[None, :], sigma)
            for pts, b in raw], []


def area_primitives(d: GlassObject, angles_deg: np.ndarray) -> tuple[list[Line], list[Blob]]:
    """The lines (vertices mm, per-vertex per-state peak, sigma mm) and spots that make up a
    water spot or a fingerprint."""
    if d.kind == "water_spot":
        return _water_spot(d, angles_deg)
    if d.kind == "fingerprint":
        return _fingerprint(d, angles_deg)
    raise ValueError(f"{d.kind!r} is not one of the area objects {AREA_KINDS}")


class OpticsRenderer:
    """Renders a sample into RAW frames as a simulated head's camera and ring light would take them
    (fixed by its config and ``head_seed``), the camera mounted as ``[simulation]`` says.

    ``shape`` (height, width) renders a smaller window at the same pixel footprint, for tests
    (its mounting rotation and scale act about the window's centre). ``mm_per_px`` is the head
    file's footprint; ``geometry`` the camera's true mapping.
    """

    def __init__(self, cfg: HeadConfig, shape: tuple[int, int] | None = None):
        sim = cfg.simulation
        if sim is None:
            raise ValueError(
                f"head configuration {cfg.source} has no [simulation] section: it describes a "
                "real head, which cannot be simulated"
            )
        h, w = shape if shape is not None else (cfg.camera.height, cfg.camera.width)
        if h < 2 or w < 2 or h % 2 or w % 2:
            raise ValueError(f"frame size must be even and at least 2 x 2, got {h} x {w}")
        self.cfg = cfg
        self.shape = (h, w)
        self.angles_deg = np.asarray(cfg.illumination.angles_deg, dtype=np.float64)
        self.mm_per_px = cfg.mm_per_px
        self.geometry = CameraGeometry(self.mm_per_px, (h, w), sim.scale_error, sim.rotation_deg,
                                       tuple(sim.origin_offset_mm))
        self.max_dn = float(cfg.camera.max_dn)
        self.exposure_scale = cfg.camera.exposure_ms / REFERENCE_EXPOSURE_MS
        pattern = cfg.camera.bayer_pattern
        gains = sim.channel_gain
        per_channel = (gains.R, gains.G, gains.B)
        # colour response of each site of the 2x2 Bayer cell, then with the exposure folded in
        self.bayer_gain = np.array(
            [per_channel[_CHANNELS[ch]] for ch in pattern], dtype=np.float64).reshape(2, 2)
        self.chan = self.exposure_scale * self.bayer_gain
        rng = np.random.default_rng(sim.head_seed)
        theta = np.radians(self.angles_deg)
        tilt = sim.field_tilt * rng.uniform(-1, 1, N_STATES)
        self.field = np.stack([
            1.0 + sim.led_balance * rng.uniform(-1, 1, N_STATES),
            rng.uniform(-0.15, 0.15, N_STATES),
            rng.uniform(-0.15, 0.15, N_STATES),
            sim.field_vignetting * rng.uniform(0.8, 1.2, N_STATES),
            tilt * np.cos(theta),
            tilt * np.sin(theta),
        ], axis=1)
        n_hot = round(sim.hot_pixel_fraction * h * w)
        self.hot_index = np.sort(rng.choice(h * w, size=n_hot, replace=False))
        self.hot_dn = np.exp(rng.uniform(np.log(50.0), np.log(2000.0), n_hot))
        self.sim = sim

    # -- geometry -------------------------------------------------------------------------------
    def to_px(self, pts_mm: np.ndarray, origin_mm: tuple[float, float]) -> np.ndarray:
        """Sample mm -> pixel coordinates of this window (pixel centres at integers), through
        the camera's true mounting."""
        return self.geometry.to_px(pts_mm, origin_mm)

    def footprint_mm(self, origin_mm: tuple[float, float]) -> tuple[float, float, float, float]:
        """The sample area (x0, y0, x1, y1 mm) the window sees at ``origin_mm``."""
        return self.geometry.footprint_mm(origin_mm)

    @property
    def px_mm(self) -> float:
        """The true size of a pixel on the sample (mean of x and y), for widths in pixels."""
        return float(np.mean(self.geometry.mm_per_px))

    def radiance_for_fill(self, fill: float) -> float:
        """The radiance (DN at the reference exposure) at which the brightest Bayer channel of
        this head sits at ``fill`` of the range from the dark level to full scale where the
        illumination field is 1."""
        return fill * (self.max_dn - self.sim.dark_offset_dn) / float(self.chan.max())

    def field_maps(self) -> np.ndarray:
        """(6, H, W) float32: each LED group's multiplicative illumination field over this window
        (LED balance, off-axis fall-off, tilt), as the sensor pass applies it."""
        h, w = self.shape
        yn = (2.0 * (np.arange(h) + 0.5) / h - 1.0)[:, None]
        xn = (2.0 * (np.arange(w) + 0.5) / w - 1.0)[None, :]
        out = np.empty((N_STATES, h, w), np.float32)
        for s, (b, cx, cy, fall, tx, ty) in enumerate(self.field):
            out[s] = b * (1.0 - 0.5 * fall * ((xn - cx) ** 2 + (yn - cy) ** 2)) * (
                1.0 + tx * xn + ty * yn)
        return out

    # -- rendering ------------------------------------------------------------------------------
    def empty_scene(self, origin_mm: tuple[float, float], radiance: float | None = None) -> Scene:
        """A scene with nothing drawn yet: clean glass, or ``radiance`` everywhere."""
        h, w = self.shape
        layers = np.zeros((N_STATES, h, w), np.float32)  # calloc: untouched pages cost nothing
        occ = np.zeros(((h >> BLOCK_SHIFT) + 1, (w >> BLOCK_SHIFT) + 1), np.uint8)
        mask = np.zeros((h, w), np.bool_)
        if radiance is not None:
            radiance = float(radiance)
        return Scene(layers, occ, mask, (float(origin_mm[0]), float(origin_mm[1])), (), radiance)

    def scene(self, sample: Sample | Target, origin_mm: tuple[float, float]) -> Scene:
        """The scene of the RoI at ``origin_mm`` (sample mm): a glass sample's objects, or a
        calibration target (:mod:`edge.sim.targets`), which paints its own."""
        if not isinstance(sample, Sample):
            return sample.paint(self, origin_mm)
        sc = self.empty_scene(origin_mm)
        layers, occ, mask = sc.layers, sc.occupied, sc.mask
        x0, y0, x1, y1 = self.footprint_mm(origin_mm)
        px_mm = self.px_mm
        seen = []
        for i, d in enumerate(sample.objects):
            # the faintest tail drawn: 4 sigma of a line or dust, half a diameter past a stain;
            # a ring's or a ridge's line (at most 200 um wide) stays within 0.3 mm of the oval
            pad = 0.3 if d.kind in AREA_KINDS else d.width_um * 1e-3 * 2.0
            bx0, by0, bx1, by1 = d.bounds_mm(pad_mm=pad)
            if bx1 < x0 or bx0 > x1 or by1 < y0 or by0 > y1:
                continue
            seen.append(i)
            if d.kind in ("scratch", "fibre"):
                amp, env = line_response(d, self.angles_deg)
                sigma = max(0.5, d.width_um * 1e-3 / px_mm / 2.355)
                # label the line's core: the pixel nearest the centre line at least
                mask_r = max(0.71, 1.55 * sigma) if d.kind == "scratch" else -1.0
                verts = self.to_px(d.points, origin_mm)
                if d.profile != "polished":
                    _draw_polyline(layers, occ, mask, verts, np.ascontiguousarray(amp), env,
                                   sigma, mask_r)
                    continue
                for off, sig, wgt in polished_section(d.width_um * 1e-3 / px_mm):
                    # the floor line (offset 0) carries the label, the walls only light
                    _draw_polyline(layers, occ, mask, _offset(verts, off),
                                   np.ascontiguousarray(amp * wgt), env, sig,
                                   mask_r if off == 0.0 else -1.0)
            elif d.kind in AREA_KINDS:
                lines, blobs = area_primitives(d, self.angles_deg)
                for pts, amp, sig_mm in lines:
                    _draw_curve(layers, occ, self.to_px(pts, origin_mm),
                                np.ascontiguousarray(amp), max(0.5, sig_mm / px_mm),
                                bool(np.array_equal(pts[0], pts[-1])))
                for bx, by, sig_mm, amp in blobs:
                    (cx, cy), = self.to_px(np.array([[bx, by]]), origin_mm)
                    _draw_blob(layers, occ, cx, cy, max(0.5, sig_mm / px_mm), amp)
            else:
                for bx, by, sig_mm, amp in blob_primitives(d, self.angles_deg):
                    (cx, cy), = self.to_px(np.array([[bx, by]]), origin_mm)
                    _draw_blob(layers, occ, cx, cy, max(0.5, sig_mm / px_mm), amp)
        return Scene(layers, occ, mask, (float(origin_mm[0]), float(origin_mm[1])), tuple(seen))

    def expose(self, scene: Scene, lit: Sequence[int], noise_key: int,
               exposure_factor: float = 1.0) -> np.ndarray:
        """A RAW frame of ``scene`` with the LED groups in ``lit`` on (none: a dark frame),
        exposed ``exposure_factor`` times the head file's exposure (light and hot pixels scale
        with it; offset and read noise do not)."""
        lit_arr = np.asarray(sorted(set(lit)), dtype=np.int64)
        if lit_arr.size and (lit_arr.min() < 0 or lit_arr.max() >= N_STATES):
            raise ValueError(f"lit states must be within 0..{N_STATES - 1}, got {list(lit)}")
        if not exposure_factor > 0:
            raise ValueError(f"the exposure factor must be positive, got {exposure_factor}")
        sim, k = self.sim, self.exposure_scale * exposure_factor
        chan = self.chan if exposure_factor == 1.0 else self.chan * exposure_factor
        out = np.empty(self.shape, np.uint16)
        background = sim.background_dn if scene.radiance is None else scene.radiance
        _expose(out, scene.layers, scene.occupied, lit_arr, self.field, chan,
                background, sim.dark_offset_dn, sim.read_noise_dn ** 2,
                sim.conversion_gain_dn_per_e, np.uint64(noise_key), _normal_table(), self.max_dn)
        flat = out.reshape(-1)
        flat[self.hot_index] = np.minimum(flat[self.hot_index] + self.hot_dn * k, self.max_dn)
        return out

    def render(self, sample: Sample | Target, origin_mm: tuple[float, float],
               noise_seed: int, exposure_factors=None) -> RoiRender:
        """The 6 frames of one RoI, one per illumination state, and its scratch mask;
        ``exposure_factors``: per state, the exposure over the head file's (a calibration's
        LED balance), None: all 1."""
        sc = self.scene(sample, origin_mm)
        keys = np.random.SeedSequence(noise_seed).generate_state(N_STATES, np.uint64)
        factors = [1.0] * N_STATES if exposure_factors is None else list(exposure_factors)
        frames = np.stack([self.expose(sc, [s], int(keys[s]), float(factors[s]))
                           for s in range(N_STATES)])
        return RoiRender(frames, sc.mask, sc.origin_mm, sc.defect_ids)
