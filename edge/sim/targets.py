"""Calibration targets for the simulated stage, and the simulated head's ground truth.

A field calibration puts known things under the camera and fits the head to what it sees. The
targets here are put on the stage like glass (``SimGlass.place(target)``, or
``OpticsRenderer.render(target, origin_mm, noise_seed)`` directly) and pass through the same
renderer and sensor as a sample: LED fields, vignetting, LED balance, Bayer gains, dark offset,
noise, hot pixels and the camera's mounting all apply. They are not ground-truth glass objects
(:mod:`edge.truth`): nothing on them is a defect, and a render of one has an empty scratch mask.

* :class:`ReferencePlate`: a diffusing plate larger than any RoI that scatters the same radiance
  into the lens under every LED group, so a frame of it under one group is that group's field
  (what a flat-field calibration measures). Its brightness is given as ``fill``: the share of the
  range from the dark level to full scale the brightest Bayer channel reaches where the field is
  1 (0.6 by default, so a field's bright side stays well below saturation).
* :class:`DotGrid`: bright, isotropically scattering dots of ``diameter_mm`` on a square
  ``pitch_mm`` grid whose dot (0, 0) lies at ``origin_mm`` (sample mm), over ``bounds_mm`` (or
  the whole stage); what a geometry calibration fits. Every ``marker_every``-th dot in both
  directions is ``marker_scale`` times larger, so a fit can tell which dot is which even when
  the camera is mounted several pitches off (10 mm marker spacing: unambiguous for offsets below
  the 5 mm the head file allows).
* :class:`LensCap`: no light reaches the sensor whatever is lit: dark frames through the normal
  capture sequence. (An empty stage with no group lit gives the same darks: the sensor pass adds
  the dark offset, read noise and hot pixels to every frame, lit or not.)

:func:`head_truth` gives what a calibration of a simulated head should find: its per-group
field maps, Bayer gains, dark offset, hot pixels and true camera geometry.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numba as nb
import numpy as np

from edge.config import N_STATES, HeadConfig
from edge.sim.optics import BLOCK_SHIFT, CameraGeometry, OpticsRenderer, Scene


@nb.njit(cache=True, nogil=True)
def _draw_discs(scene, occ, centres, radii_mm, amp, px_to_mm, px_mm):
    """Add flat discs of radius ``radii_mm`` centred at ``centres`` (N x 2, x/y px) with
    per-state radiance ``amp``; ``px_to_mm`` (2 x 2) maps a pixel step to sample mm, so a disc
    stays round on the sample whatever the camera's scale and rotation. The edge is anti-aliased
    over one pixel (coverage falls linearly with the distance to the rim)."""
    n_states, h, w = scene.shape
    a, b, c, d = px_to_mm[0, 0], px_to_mm[0, 1], px_to_mm[1, 0], px_to_mm[1, 1]
    smallest = min(math.hypot(a, c), math.hypot(b, d))
    for i in range(centres.shape[0]):
        cx, cy, rad = centres[i, 0], centres[i, 1], radii_mm[i]
        reach = rad / smallest + 1.5
        c0, c1 = max(0, int(math.floor(cx - reach))), min(w - 1, int(math.ceil(cx + reach)))
        r0, r1 = max(0, int(math.floor(cy - reach))), min(h - 1, int(math.ceil(cy + reach)))
        for r in range(r0, r1 + 1):
            dv = r - cy
            for col in range(c0, c1 + 1):
                du = col - cx
                dist = math.hypot(a * du + b * dv, c * du + d * dv)
                cover = (rad - dist) / px_mm + 0.5
                if cover <= 0.0:
                    continue
                if cover > 1.0:
                    cover = 1.0
                for s in range(n_states):
                    scene[s, r, col] += cover * amp[s]
                occ[r >> BLOCK_SHIFT, col >> BLOCK_SHIFT] = 1


def _check_fill(fill: float) -> None:
    if not 0.0 < fill <= 1.5:
        raise ValueError(f"fill must be within (0, 1.5] of the range to full scale, got {fill}")


@dataclass(frozen=True)
class ReferencePlate:
    """A diffusing plate that scatters the same radiance into the lens under every LED group.

    ``fill``: how bright, as the share of the range from the dark level to full scale that the
    head's brightest Bayer channel reaches at its exposure where the illumination field is 1.
    """

    fill: float = 0.6
    name: str = "reference-plate"

    def __post_init__(self) -> None:
        _check_fill(self.fill)

    def radiance_dn(self, optics: OpticsRenderer) -> float:
        """The plate's radiance on ``optics``' head, DN at the reference exposure."""
        return optics.radiance_for_fill(self.fill)

    def paint(self, optics: OpticsRenderer, origin_mm: tuple[float, float]) -> Scene:
        return optics.empty_scene(origin_mm, self.radiance_dn(optics))


@dataclass(frozen=True)
class LensCap:
    """A cap on the lens: no light reaches the sensor, whatever is lit (dark frames)."""

    name: str = "lens-cap"

    def paint(self, optics: OpticsRenderer, origin_mm: tuple[float, float]) -> Scene:
        return optics.empty_scene(origin_mm, 0.0)


@dataclass(frozen=True)
class DotGrid:
    """Bright round dots on a square grid, at known sample coordinates, on clean glass.

    Dot ``(i, j)`` (any integers) is centred at ``origin_mm + pitch_mm * (i, j)``; only dots
    whose centres lie within ``bounds_mm`` (x0, y0, x1, y1 sample mm) exist, everywhere when it
    is None. Dots scatter the same under every LED group (``fill`` as for
    :class:`ReferencePlate`); where ``i`` and ``j`` are both multiples of ``marker_every`` (0:
    never) the dot is ``marker_scale`` times wider.
    """

    pitch_mm: float = 1.0
    diameter_mm: float = 0.2
    origin_mm: tuple[float, float] = (0.0, 0.0)
    bounds_mm: tuple[float, float, float, float] | None = None
    fill: float = 0.6
    marker_every: int = 10
    marker_scale: float = 2.0
    name: str = "dot-grid"

    def __post_init__(self) -> None:
        _check_fill(self.fill)
        if self.marker_every < 0 or self.marker_scale <= 0:
            raise ValueError("marker_every must be >= 0 and marker_scale positive")
        widest = self.diameter_mm * (max(1.0, self.marker_scale) if self.marker_every else 1.0)
        if not (self.diameter_mm > 0.0 and widest < self.pitch_mm):
            raise ValueError(f"dots of {self.diameter_mm} mm (markers x{self.marker_scale}) do "
                             f"not fit a {self.pitch_mm} mm pitch")

    def dots(self, x0: float, y0: float, x1: float, y1: float
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The dots centred within the box x0..x1, y0..y1 mm: centres (N x 2, mm), grid indexes
        (N x 2, i/j) and diameters (N, mm), row by row."""
        if self.bounds_mm is not None:
            bx0, by0, bx1, by1 = self.bounds_mm
            x0, y0, x1, y1 = max(x0, bx0), max(y0, by0), min(x1, bx1), min(y1, by1)
        gx, gy, p = self.origin_mm[0], self.origin_mm[1], self.pitch_mm
        i = np.arange(math.ceil((x0 - gx) / p), math.floor((x1 - gx) / p) + 1)
        j = np.arange(math.ceil((y0 - gy) / p), math.floor((y1 - gy) / p) + 1)
        jj, ii = np.meshgrid(j, i, indexing="ij")
        index = np.stack([ii.ravel(), jj.ravel()], axis=1).astype(np.int64)
        centres = np.stack([gx + p * index[:, 0], gy + p * index[:, 1]], axis=1).astype(float)
        diam = np.full(len(index), self.diameter_mm)
        if self.marker_every:
            marker = ((index % self.marker_every) == 0).all(axis=1)
            diam[marker] *= self.marker_scale
        return centres, index, diam

    def radiance_dn(self, optics: OpticsRenderer) -> float:
        return optics.radiance_for_fill(self.fill)

    def paint(self, optics: OpticsRenderer, origin_mm: tuple[float, float]) -> Scene:
        sc = optics.empty_scene(origin_mm)
        x0, y0, x1, y1 = optics.footprint_mm(origin_mm)
        reach = 0.5 * self.diameter_mm * max(1.0, self.marker_scale)
        centres, _, diam = self.dots(x0 - reach, y0 - reach, x1 + reach, y1 + reach)
        if len(centres):
            amp = np.full(N_STATES, self.radiance_dn(optics))
            _draw_discs(sc.layers, sc.occupied, optics.to_px(centres, origin_mm), 0.5 * diam,
                        amp, optics.geometry.matrix, optics.px_mm)
        return sc


Target = ReferencePlate | DotGrid | LensCap
TARGETS = (ReferencePlate, DotGrid, LensCap)


@dataclass(frozen=True)
class HeadTruth:
    """What a perfect calibration of a simulated head finds, for a frame of ``shape``.

    A pixel's mean reading under group ``s`` is ``dark_offset_dn + radiance x response(s)``
    (radiance in DN at the reference exposure), plus ``hot_dn`` at the hot pixels, clipped to
    ``max_dn``; its noise is ``read_noise_dn`` plus shot noise (variance = signal x
    ``conversion_gain_dn_per_e``).
    """

    shape: tuple[int, int]
    field: np.ndarray  # (6, H, W) float32: each group's multiplicative field, LED balance included
    bayer_gain: np.ndarray  # (2, 2): relative gain of each site of the Bayer cell (G = 1)
    exposure_scale: float  # the head's exposure / the reference exposure
    dark_offset_dn: float
    read_noise_dn: float
    conversion_gain_dn_per_e: float
    background_dn: float  # haze of clean glass, DN at the reference exposure
    hot_rows: np.ndarray  # (N,) int
    hot_cols: np.ndarray  # (N,) int
    hot_dn: np.ndarray  # (N,) DN the hot pixel adds at the head's exposure
    max_dn: float
    geometry: CameraGeometry  # the camera's true mapping (mm_per_px, rotation, offset)

    @property
    def mm_per_px(self) -> tuple[float, float]:
        """The true pixel footprint, x and y, scale error included."""
        return self.geometry.mm_per_px

    @property
    def rotation_deg(self) -> float:
        return self.geometry.rotation_deg

    @property
    def origin_offset_mm(self) -> tuple[float, float]:
        return self.geometry.origin_offset_mm

    @property
    def hot_mask(self) -> np.ndarray:
        """(H, W) bool: True at the hot pixels."""
        mask = np.zeros(self.shape, bool)
        mask[self.hot_rows, self.hot_cols] = True
        return mask

    def bayer_map(self) -> np.ndarray:
        """(H, W): the Bayer gain of every pixel."""
        h, w = self.shape
        return np.tile(self.bayer_gain, (h // 2, w // 2))

    def response(self, state: int) -> np.ndarray:
        """(H, W) float32: DN above the dark level per DN of radiance (reference exposure)
        under group ``state``: exposure x Bayer gain x field."""
        return (self.field[state] * (self.exposure_scale * self.bayer_map())).astype(np.float32)


def head_truth(cfg: HeadConfig | OpticsRenderer, shape: tuple[int, int] | None = None
               ) -> HeadTruth:
    """The ground truth of the simulated head ``cfg`` (a head config or its renderer) for frames
    of ``shape`` (default: the camera's): fields, sensor, hot pixels and geometry."""
    optics = cfg if isinstance(cfg, OpticsRenderer) else OpticsRenderer(cfg, shape)
    if shape is not None and tuple(shape) != optics.shape:
        raise ValueError(f"the renderer draws {optics.shape} frames, not {tuple(shape)}")
    sim, h, w = optics.sim, *optics.shape
    rows, cols = np.divmod(optics.hot_index, w)
    k = optics.exposure_scale
    return HeadTruth(
        shape=(h, w),
        field=optics.field_maps(),
        bayer_gain=optics.bayer_gain.copy(),
        exposure_scale=k,
        dark_offset_dn=sim.dark_offset_dn,
        read_noise_dn=sim.read_noise_dn,
        conversion_gain_dn_per_e=sim.conversion_gain_dn_per_e,
        background_dn=sim.background_dn,
        hot_rows=rows,
        hot_cols=cols,
        hot_dn=optics.hot_dn * k,
        max_dn=optics.max_dn,
        geometry=optics.geometry,
    )
