"""The calibration file of one head: what the field calibration measured, read and checked here.

``glass-inspect calibrate`` measures a head and writes the file with :func:`save`; the runtime
reads it with :func:`load` and the assembly checks it against the head with
:meth:`Calibration.check_for`. This module is the one writer and the one reader, so the two cannot
drift apart. The format is described in ``docs/calibration_file.md``; in short, a NumPy ``.npz``
(an uncompressed zip) holding ``meta`` (a JSON string) and, where measured, ``dark`` and
``gain`` (float32: one number per state ``(6,)``, one full-resolution map per state
``(6, H, W)`` or one map for every state ``(H, W)``; since version 3 the gain usually as
``gain_grid``, a coarse grid per state and Bayer site expanded at load: :func:`gain_grid`) and
the defective pixels (``defect_rows``, ``defect_cols``, ``defect_kinds``).

What the runtime does with it:

* the space-to-depth kernel applies ``(raw - dark) * gain / (2**bit_depth - 1)`` and replaces
  the defective pixels from their same-colour neighbours, in the same pass
  (:mod:`edge.kernels.space_to_depth`);
* the pipeline converts defect boxes to sample mm with the measured geometry, and runs the
  post-processing with the tuned thresholds (:mod:`edge.pipeline`);
* the head takes each LED group's frame at the head file's exposure times the LED exposure
  scale (:func:`edge.head.exposures_ms`); :meth:`Calibration.check_for` refuses a scale that
  breaks the LED on-time limit or the frame time.

Version 1 files (dark and gain only, no identity) and version 2 files (no gain grid) are still
read. A file that does not fit is
refused with one :class:`CalibrationError` naming the file and the problem, rather than
correcting with the wrong maps: another head or camera, another frame size, a damaged or
truncated file, NaN or infinite values, a wrong shape.
"""

from __future__ import annotations

import json
import math
import os
import re
import warnings
import zipfile
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path

import numpy as np
from pydantic import ValidationError

from edge import __version__
from edge.config import N_STATES, HeadConfig
from edge.errors import UserError
from edge.hashing import sha256_file
from edge.kernels.space_to_depth import DefectTable, ShapeError, defect_table

FORMAT = "glass-inspect-calibration"
VERSION = 3
READS = (1, 2, 3)
GAIN_BLOCK = 16  # default cell of the gain grid, in pixels of one Bayer plane (32 RAW pixels)

KINDS = ("hot", "dead", "stuck")  # defect_kinds holds the index into this
THRESHOLDS = ("t_low", "t_high", "dbscan_eps", "dbscan_min_samples")
MAX_ROTATION_DEG = 45.0
FINGERPRINT_MIN_HOT = 8  # hot pixels a calibration needs to fingerprint its sensor
FINGERPRINT_SHARE = 0.3  # of them hot in one dark frame of the same sensor
FINGERPRINT_MIN_DN = 8.0
ON_TIME_SHARE = 0.8  # of the LED on-time limit an exposure may use: the rest for the grab

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_META_KEYS = {"format", "version", "width", "height", "created_utc", "head_digest",
              "camera_serial", "software_version", "geometry", "led_exposure_scale",
              "thresholds", "gain_block"}
_GEOMETRY_KEYS = {"mm_per_px", "rotation_deg", "stage_origin_mm"}
_DEFECT_ARRAYS = ("defect_rows", "defect_cols", "defect_kinds")


class CalibrationError(UserError, ValueError):
    """A calibration file that cannot be used; the message names the file and the problem."""


def head_digest(cfg: HeadConfig) -> str:
    """The head digest a calibration is bound to: :meth:`HeadConfig.digest` of the head with its
    ``calibration.file`` left empty, so that naming the new file in the head file (which the
    operator does after calibrating) does not unbind it."""
    blank = cfg.model_copy(update={"calibration": cfg.calibration.model_copy(update={"file": ""})})
    return blank.digest()


@dataclass(frozen=True)
class DefectivePixels:
    """Defective RAW pixels (row, column), each of a kind (:data:`KINDS`)."""

    rows: np.ndarray  # (n,) int32
    cols: np.ndarray  # (n,) int32
    kinds: np.ndarray  # (n,) uint8, index into KINDS

    @classmethod
    def of(cls, hot=None, dead=None, stuck=None) -> DefectivePixels:
        """From ``(rows, cols)`` per kind; a kind not given has none."""
        parts = [(np.asarray(p[0]).ravel(), np.asarray(p[1]).ravel(), k)
                 for k, p in enumerate((hot, dead, stuck)) if p is not None]
        if not parts:
            return cls(np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros(0, np.uint8))
        return cls(np.concatenate([r for r, _, _ in parts]).astype(np.int32),
                   np.concatenate([c for _, c, _ in parts]).astype(np.int32),
                   np.concatenate([np.full(r.size, k, np.uint8) for r, _, k in parts]))

    @property
    def count(self) -> int:
        return int(self.rows.size)

    def of_kind(self, kind: str) -> tuple[np.ndarray, np.ndarray]:
        sel = self.kinds == KINDS.index(kind)
        return self.rows[sel], self.cols[sel]


@dataclass(frozen=True)
class Geometry:
    """How the camera sees the sample, where measured (None: the head file's nominal value).

    ``mm_per_px``: footprint of one pixel on the sample along the image's x (columns) and y (rows).
    ``rotation_deg``: angle from the stage's +x axis to the image's +x axis, positive towards the
    stage's +y (the image's y points down); the image turns about the frame centre.
    ``stage_origin_mm``: the measured stage position of the RoI grid's origin (the head file's
    ``stage.roi_grid.origin_mm`` is the nominal one): with the stage there, the frame centre sees
    the sample point ``(W/2 * sx, H/2 * sy)`` with the head file's footprint ``(sx, sy)``, the
    nominal centre of RoI 0. Scale and rotation act about the frame centre, so the frame's
    position is its centre's.
    """

    mm_per_px: tuple[float, float] | None = None
    rotation_deg: float = 0.0
    stage_origin_mm: tuple[float, float] | None = None

    @classmethod
    def measured(cls, cfg: HeadConfig, mm_per_px: tuple[float, float] | None = None,
                 rotation_deg: float = 0.0,
                 origin_offset_mm: tuple[float, float] | None = None) -> Geometry:
        """From a fit that gives ``origin_offset_mm``: where the frame centre really lies on the
        sample minus where the head file puts it (``calibration.geometry.fit_geometry``)."""
        g = cfg.stage.roi_grid.origin_mm
        origin = (None if origin_offset_mm is None else
                  (g[0] - origin_offset_mm[0], g[1] - origin_offset_mm[1]))
        return cls(None if mm_per_px is None else tuple(mm_per_px), rotation_deg, origin)


@dataclass(frozen=True)
class SampleMapping:
    """RAW pixel coordinates of a RoI (x right, y down; pixel ``(x, y)`` covers ``[x, x + 1)``)
    to sample mm, for a head and its calibrated geometry::

        X = ox + cx + cos(t) * (x - W/2) * sx - sin(t) * (y - H/2) * sy
        Y = oy + cy + sin(t) * (x - W/2) * sx + cos(t) * (y - H/2) * sy

    ``(ox, oy)``: the RoI's origin (sample mm); ``(sx, sy)``: the measured footprint; ``t``: the
    rotation; ``(cx, cy)`` = ``centre_mm``: where the frame centre lies from the RoI's origin,
    ``(W/2 * sx0, H/2 * sy0)`` with the nominal footprint, plus the nominal minus the measured
    stage origin. With the nominal geometry this is ``ox + x * sx0`` (to rounding).
    """

    mm_per_px: tuple[float, float]
    rotation_deg: float
    centre_px: tuple[float, float]  # (W/2, H/2)
    centre_mm: tuple[float, float]

    def to_mm(self, x, y, roi_origin_mm: tuple[float, float]):
        sx, sy = self.mm_per_px
        t = math.radians(self.rotation_deg)
        c, s = math.cos(t), math.sin(t)
        u, v = (x - self.centre_px[0]) * sx, (y - self.centre_px[1]) * sy
        return (roi_origin_mm[0] + self.centre_mm[0] + c * u - s * v,
                roi_origin_mm[1] + self.centre_mm[1] + s * u + c * v)

    def box_mm(self, box_px: tuple[float, float, float, float],
               roi_origin_mm: tuple[float, float]) -> tuple[float, float, float, float]:
        """The axis-aligned sample box ``(x0, y0, x1, y1)`` holding the pixel box's corners."""
        x0, y0, x1, y1 = box_px
        xs, ys = zip(*(self.to_mm(x, y, roi_origin_mm)
                       for x, y in ((x0, y0), (x1, y0), (x0, y1), (x1, y1))), strict=True)
        return (float(min(xs)), float(min(ys)), float(max(xs)), float(max(ys)))

    @property
    def px_mm(self) -> float:
        """Length of one pixel along a line (the mean of x and y)."""
        return (self.mm_per_px[0] + self.mm_per_px[1]) / 2.0


@dataclass(frozen=True)
class Calibration:
    # (6,) per state, (6, H, W) a map per state, (H, W) one map for every state; float32
    dark: np.ndarray | None  # DN; None: not measured (0)
    gain: np.ndarray | None  # unitless, > 0; None: not measured (1)
    width: int
    height: int
    source: str
    sha256: str
    version: int = VERSION
    defects: DefectivePixels | None = None
    geometry: Geometry | None = None
    led_exposure_scale: tuple[float, ...] | None = None  # (6,), per LED group
    thresholds: dict = field(default_factory=dict)  # a subset of THRESHOLDS
    head_digest: str | None = None  # None: bound to no head (version 1, tests)
    camera_serial: str | None = None  # None: not recorded; "": a camera without one
    software_version: str | None = None
    created_utc: str | None = None

    @property
    def identity(self) -> dict:
        return {"file": Path(self.source).name, "sha256": self.sha256}

    @cached_property
    def defect_table(self) -> DefectTable | None:
        """The defective pixels as the kernel takes them (built once), or None."""
        if self.defects is None or not self.defects.count:
            return None
        return defect_table(self.defects.rows, self.defects.cols, self.height, self.width)

    def check_frames(self, shape: tuple[int, ...]) -> None:
        if tuple(shape[1:]) != (self.height, self.width):
            raise CalibrationError(
                f"calibration {self.source} is for {self.width} x {self.height} frames, the "
                f"camera delivers {shape[2]} x {shape[1]}")

    def check_for(self, cfg: HeadConfig, camera_serial: str | None = None) -> None:
        """Refuse this calibration for head ``cfg`` (and the camera whose serial is given; None:
        not known here, not checked) unless it was made for them."""
        cam = cfg.camera
        if (cam.width, cam.height) != (self.width, self.height):
            raise CalibrationError(
                f"calibration {self.source} is for {self.width} x {self.height} frames, the head "
                f"{cfg.source} has a {cam.width} x {cam.height} camera")
        if self.head_digest is not None and self.head_digest != (mine := head_digest(cfg)):
            raise CalibrationError(
                f"calibration {self.source} was made for head configuration "
                f"{self.head_digest[:12]}, this head ({cfg.source}) is {mine[:12]}: another head, "
                f"or its head file changed since; calibrate it again")
        if (camera_serial is not None and self.camera_serial is not None
                and camera_serial != self.camera_serial):
            raise CalibrationError(
                f"calibration {self.source} was made with camera {_serial(self.camera_serial)}, "
                f"the head's camera is {_serial(camera_serial)}: calibrate it again")
        self._check_exposures(cfg)
        self.pipeline_for(cfg)

    def _check_exposures(self, cfg: HeadConfig) -> None:
        """The LED balance must keep every group within the LED on-time limit (settle plus
        exposure, with a margin for the grab) and the frame time."""
        if not self.led_exposure_scale:
            return
        cam, ill = cfg.camera, cfg.illumination
        longest = cam.exposure_ms * max(self.led_exposure_scale)
        on_ms = ill.settle_ms + longest
        if on_ms > ON_TIME_SHARE * ill.max_on_ms or longest > cam.frame_time_ms:
            raise CalibrationError(
                f"calibration {self.source}: its LED balance exposes a group for "
                f"{longest:.1f} ms, so the LEDs stay lit {on_ms:.1f} ms: over "
                f"{ON_TIME_SHARE:.0%} of illumination.max_on_ms ({ill.max_on_ms:g}) or over "
                f"camera.frame_time_ms ({cam.frame_time_ms:g}); calibrate again")

    def pipeline_for(self, cfg: HeadConfig):
        """The head's ``[pipeline]`` section with the tuned thresholds in force."""
        if not self.thresholds:
            return cfg.pipeline
        try:
            return type(cfg.pipeline).model_validate({**cfg.pipeline.model_dump(),
                                                      **self.thresholds})
        except ValidationError as exc:
            why = "; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors())
            raise CalibrationError(f"calibration {self.source}: its thresholds "
                                   f"{self.thresholds} do not fit the head: {why}") from None

    def check_sensor(self, dark_frame: np.ndarray) -> None:
        """Refuse this calibration for a sensor whose hot pixels are not the calibration's.

        Why: a CSI sensor on a Jetson has no serial number, so the camera check of
        :meth:`check_for` cannot tell two of them apart; but every sensor has its own hot
        pixels, fixed in place, and a calibration lists them. In one dark frame (every LED dark)
        at least ``FINGERPRINT_SHARE`` of them must stand out from the frame (above its median
        by 5 robust sigmas and at least ``FINGERPRINT_MIN_DN``, the calibration's own floor); a
        hot pixel near that floor shows in one frame about half the time, and another sensor
        shares practically none (at 1e-5 hot pixels, two sensors share one in 1e5). Needs
        ``FINGERPRINT_MIN_HOT`` listed hot pixels; with fewer it is not checked.
        """
        if self.defects is None:
            return
        rows, cols = self.defects.of_kind("hot")
        if rows.size < FINGERPRINT_MIN_HOT or dark_frame.shape != (self.height, self.width):
            return
        frame = dark_frame.astype(np.float32)
        med = float(np.median(frame[::7, ::7]))
        sigma = 1.4826 * float(np.median(np.abs(frame[::7, ::7] - med)))
        level = med + max(5.0 * sigma, FINGERPRINT_MIN_DN)
        found = int((frame[rows, cols] > level).sum())
        if found < FINGERPRINT_SHARE * rows.size:
            raise CalibrationError(
                f"calibration {self.source} was made with another camera sensor: only {found} of "
                f"the {rows.size} hot pixels it lists are hot in this camera's dark frame "
                f"(at least {FINGERPRINT_SHARE:.0%} expected); calibrate this head again")

    def for_exposures(self, taken_ms, cfg: HeadConfig) -> Calibration:
        """This calibration for frames taken at the per-state exposures ``taken_ms`` (a
        recording made before this calibration's LED balance, or without it): the gains are
        for frames at ``exposure_ms * led_exposure_scale``, so each state's gain is scaled by
        that exposure over the one it was taken at. Itself when they agree."""
        scale = self.led_exposure_scale or (1.0,) * N_STATES
        ratio = np.array([cfg.camera.exposure_ms * k / t for k, t in zip(scale, taken_ms,
                                                                         strict=True)])
        if np.allclose(ratio, 1.0, rtol=1e-6):
            return self
        if self.gain is None:
            gain = ratio.astype(np.float32)
        elif self.gain.ndim == 2:
            gain = self.gain[None] * ratio[:, None, None].astype(np.float32)
        else:
            shape = (N_STATES,) + (1,) * (self.gain.ndim - 1)
            gain = self.gain * ratio.reshape(shape).astype(np.float32)
        return replace(self, gain=np.ascontiguousarray(gain, np.float32))

    def mapping(self, cfg: HeadConfig) -> SampleMapping | None:
        """Pixels to sample mm with the measured geometry; None when none was measured."""
        g = self.geometry
        if g is None:
            return None
        nominal = cfg.stage.roi_grid.origin_mm
        stage = g.stage_origin_mm if g.stage_origin_mm is not None else nominal
        sx0, sy0 = cfg.mm_per_px
        w2, h2 = self.width / 2.0, self.height / 2.0
        return SampleMapping(g.mm_per_px if g.mm_per_px is not None else cfg.mm_per_px,
                             g.rotation_deg, (w2, h2),
                             (w2 * sx0 + nominal[0] - stage[0], h2 * sy0 + nominal[1] - stage[1]))


def _serial(s: str) -> str:
    return f"serial {s!r}" if s else "without a serial number (the simulator)"


# -- the flat-field gain on a coarse grid ------------------------------------------------------
# Why a grid: the fields of a ring light are smooth, so full-resolution gain maps (6 float32
# frames: 262 MB at 3504 x 3120) mostly store the noise of the frames they were measured from,
# and that noise would be multiplied into every corrected frame. The file keeps, per state and
# per Bayer site (the four pixels of the 2 x 2 cell: sensor colours and LED spectra differ), the
# median gain of each ``block`` x ``block`` cell of that site's plane; the reader expands it
# bilinearly to the full frame once, at load. Pixels that do not follow the field (hot, dead,
# stuck) are listed and repaired separately.
def gain_grid(gain: np.ndarray, block: int = GAIN_BLOCK) -> np.ndarray:
    """Full-resolution gains ``(6, H, W)`` -> the grid ``(6, 2, 2, ceil(H/2/block),
    ceil(W/2/block))`` of per-cell medians, per state and Bayer site. NaN gains (pixels the
    flat field could not measure) are left out; a cell of only those takes its plane's median
    (1 if the whole plane is NaN)."""
    n, h, w = gain.shape
    gh, gw = -(-h // 2 // block), -(-w // 2 // block)
    out = np.empty((n, 2, 2, gh, gw), np.float32)
    pad = np.full((gh * block, gw * block), np.nan, np.float32)
    for k in range(n):
        for dy in (0, 1):
            for dx in (0, 1):
                plane = gain[k, dy::2, dx::2]
                pad[:plane.shape[0], :plane.shape[1]] = plane
                cells = pad.reshape(gh, block, gw, block).transpose(0, 2, 1, 3)
                with warnings.catch_warnings():  # an all-NaN cell is handled below
                    warnings.simplefilter("ignore", RuntimeWarning)
                    med = np.nanmedian(cells.reshape(gh, gw, -1), axis=2)
                    fill = np.nanmedian(med) if np.isfinite(med).any() else 1.0
                out[k, dy, dx] = np.where(np.isfinite(med), med, fill)
                pad[:] = np.nan
    return out


def _interp_matrix(n: int, cells: int, block: int) -> np.ndarray:
    """``(n, cells)``: bilinear weights from cell centres to each of ``n`` plane pixels (constant
    beyond the outer centres)."""
    centres = (np.arange(cells) + 0.5) * block - 0.5
    pos = np.clip(np.arange(n, dtype=np.float64), centres[0], centres[-1])
    i0 = np.clip(np.searchsorted(centres, pos, side="right") - 1, 0, max(cells - 2, 0))
    m = np.zeros((n, cells), np.float32)
    if cells == 1:
        m[:, 0] = 1.0
        return m
    t = (pos - centres[i0]) / block
    m[np.arange(n), i0] = 1.0 - t
    m[np.arange(n), i0 + 1] = t
    return m


def expand_gain_grid(grid: np.ndarray, height: int, width: int, block: int) -> np.ndarray:
    """The grid of :func:`gain_grid` back to full-resolution gains ``(6, H, W)`` float32."""
    n, _, _, gh, gw = grid.shape
    ry = _interp_matrix(height // 2, gh, block)
    rx = _interp_matrix(width // 2, gw, block)
    out = np.empty((n, height, width), np.float32)
    for k in range(n):
        for dy in (0, 1):
            for dx in (0, 1):
                out[k, dy::2, dx::2] = ry @ grid[k, dy, dx] @ rx.T
    return out


def _grid(arr, block, width: int, height: int, source: str) -> np.ndarray | None:
    if arr is None:
        return None
    if not (isinstance(block, int) and not isinstance(block, bool) and 1 <= block <= 1024):
        raise CalibrationError(f"calibration {source}: 'gain_block' must be an integer from 1 to "
                               f"1024, got {block!r}")
    arr = np.asarray(arr)
    want = (N_STATES, 2, 2, -(-height // 2 // block), -(-width // 2 // block))
    if arr.shape != want:
        raise CalibrationError(f"calibration {source}: 'gain_grid' has shape {arr.shape}, "
                               f"expected {want} for {width} x {height} frames in cells of "
                               f"{block} px")
    if arr.dtype.kind != "f" or not np.isfinite(arr).all():
        raise CalibrationError(f"calibration {source}: 'gain_grid' holds NaN, infinite or "
                               "non-float values")
    if (arr <= 0).any():
        raise CalibrationError(f"calibration {source}: 'gain_grid' must be positive everywhere")
    return arr.astype(np.float32)


# -- validation, shared by the writer and the reader --------------------------------------------
def _map(name: str, arr, width: int, height: int, source: str) -> np.ndarray | None:
    if arr is None:
        return None
    arr = np.asarray(arr)
    if arr.shape not in ((N_STATES,), (N_STATES, height, width), (height, width)):
        raise CalibrationError(f"calibration {source}: '{name}' has shape {arr.shape}, expected "
                               f"({N_STATES},), ({N_STATES}, {height}, {width}) or "
                               f"({height}, {width})")
    if arr.dtype.kind not in "fiu":
        raise CalibrationError(f"calibration {source}: '{name}' holds {arr.dtype}, not numbers")
    arr = arr.astype(np.float32, copy=False)
    if not np.isfinite(arr).all():
        raise CalibrationError(f"calibration {source}: '{name}' holds NaN or infinite values")
    if name == "gain" and (arr <= 0).any():
        raise CalibrationError(f"calibration {source}: 'gain' must be positive everywhere")
    return np.ascontiguousarray(arr)


def _defects(d: DefectivePixels | None, width: int, height: int,
             source: str) -> DefectivePixels | None:
    if d is None:
        return None
    rows, cols, kinds = (np.asarray(a) for a in (d.rows, d.cols, d.kinds))
    for name, a in (("defect_rows", rows), ("defect_cols", cols), ("defect_kinds", kinds)):
        if a.ndim != 1 or a.dtype.kind not in "iu":
            raise CalibrationError(f"calibration {source}: '{name}' must be a list of integers, "
                                   f"got {a.dtype} of shape {a.shape}")
    if not rows.shape == cols.shape == kinds.shape:
        raise CalibrationError(f"calibration {source}: the defective pixel list has "
                               f"{rows.size} rows, {cols.size} columns and {kinds.size} kinds")
    if kinds.size and kinds.max() >= len(KINDS):
        raise CalibrationError(f"calibration {source}: defect kind {int(kinds.max())} is not "
                               f"one of {list(enumerate(KINDS))}")
    try:
        defect_table(rows, cols, height, width)  # in the frame, none listed twice
    except ShapeError as exc:
        raise CalibrationError(f"calibration {source}: {exc}") from None
    order = np.lexsort((cols, rows))
    return DefectivePixels(rows[order].astype(np.int32), cols[order].astype(np.int32),
                           kinds[order].astype(np.uint8))


def _numbers(name: str, value, n: int, source: str, positive: bool = False) -> tuple:
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        out = ()
    if len(out) != n or not all(map(math.isfinite, out)) or (positive and min(out) <= 0):
        what = "positive " if positive else ""
        raise CalibrationError(f"calibration {source}: '{name}' must be {n} finite {what}numbers, "
                               f"got {value!r}")
    return out


def _geometry(g, source: str) -> Geometry | None:
    if g is None:
        return None
    if isinstance(g, dict):
        unknown = set(g) - _GEOMETRY_KEYS
        if unknown:
            raise CalibrationError(f"calibration {source}: unknown geometry keys {sorted(unknown)}")
        g = Geometry(g.get("mm_per_px"), g.get("rotation_deg", 0.0), g.get("stage_origin_mm"))
    mm = (_numbers("geometry.mm_per_px", g.mm_per_px, 2, source, positive=True)
          if g.mm_per_px is not None else None)
    rot = _numbers("geometry.rotation_deg", [g.rotation_deg], 1, source)[0]
    if abs(rot) > MAX_ROTATION_DEG:
        raise CalibrationError(f"calibration {source}: 'geometry.rotation_deg' is {rot}, beyond "
                               f"+-{MAX_ROTATION_DEG} (the camera is mounted wrongly)")
    origin = (_numbers("geometry.stage_origin_mm", g.stage_origin_mm, 2, source)
              if g.stage_origin_mm is not None else None)
    return Geometry(mm, rot, origin)


def _thresholds(t, source: str) -> dict:
    t = dict(t or {})
    unknown = set(t) - set(THRESHOLDS)
    if unknown:
        raise CalibrationError(f"calibration {source}: unknown thresholds {sorted(unknown)}; "
                               f"expected some of {list(THRESHOLDS)}")
    out = {}
    for k, v in t.items():
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        if k == "dbscan_min_samples":
            ok = ok and float(v).is_integer() and v >= 1
            v = int(v) if ok else v
        elif k == "dbscan_eps":
            ok = ok and v > 0
        else:
            ok = ok and -1 <= v <= 1
        if not ok:
            raise CalibrationError(f"calibration {source}: threshold '{k}' = {v!r} is not valid")
        out[k] = v if k == "dbscan_min_samples" else float(v)
    if "t_low" in out and "t_high" in out and out["t_low"] > out["t_high"]:
        raise CalibrationError(f"calibration {source}: t_low ({out['t_low']}) exceeds t_high "
                               f"({out['t_high']})")
    return out


def _identity(digest, serial, source: str) -> tuple[str | None, str | None]:
    if digest is not None and not (isinstance(digest, str) and _HEX64.match(digest)):
        raise CalibrationError(f"calibration {source}: 'head_digest' must be 64 hex digits, got "
                               f"{digest!r}")
    if serial is not None and not isinstance(serial, str):
        raise CalibrationError(f"calibration {source}: 'camera_serial' must be a string, got "
                               f"{serial!r}")
    return digest, serial


# -- writer ------------------------------------------------------------------------------------
def save(path: str | Path, dark=None, gain=None, width: int | None = None,
         height: int | None = None, *, head: HeadConfig | None = None,
         camera_serial: str | None = None, defects: DefectivePixels | None = None,
         geometry: Geometry | None = None, led_exposure_scale=None,
         thresholds: dict | None = None, digest: str | None = None,
         created_utc: str | None = None, gain_grid=None, gain_block: int = GAIN_BLOCK) -> Path:
    """Write a version-3 calibration file (atomically) and return its path.

    The flat field goes either as ``gain`` (per state, one map or one number) or as
    ``gain_grid`` (:func:`gain_grid` of the full-resolution gains, in cells of ``gain_block``
    pixels of one Bayer plane), which keeps the file a few MB.

    ``head``: the head it was measured on (binds the file to :func:`head_digest` of it, and gives
    ``width``/``height`` when those are not given); ``digest`` binds to a digest directly.
    ``camera_serial``: the measured camera's serial ("" for one without, as the simulator).
    Every part is optional (see ``docs/calibration_file.md``), but not all of them. The same
    checks as :func:`load` apply, so a file this writes is one the runtime reads.
    """
    path = Path(path)
    src = str(path)
    if head is not None:
        width = head.camera.width if width is None else width
        height = head.camera.height if height is None else height
        digest = head_digest(head) if digest is None else digest
    if width is None or height is None:
        raise CalibrationError(f"calibration {src}: the frame size is needed (width and height, "
                               "or the head)")
    width, height = int(width), int(height)
    dark = _map("dark", dark, width, height, src)
    gain = _map("gain", gain, width, height, src)
    if gain is not None and gain_grid is not None:
        raise CalibrationError(f"calibration {src}: give 'gain' or 'gain_grid', not both")
    grid = _grid(gain_grid, gain_block, width, height, src)
    defects = _defects(defects, width, height, src)
    geometry = _geometry(geometry, src)
    scale = (_numbers("led_exposure_scale", led_exposure_scale, N_STATES, src, positive=True)
             if led_exposure_scale is not None else None)
    thresholds = _thresholds(thresholds, src)
    digest, camera_serial = _identity(digest, camera_serial, src)
    if all(x is None for x in (dark, gain, grid, defects, geometry, scale)) and not thresholds:
        raise CalibrationError(f"calibration {src} would hold nothing: give at least one of "
                               "dark, gain, defects, geometry, led_exposure_scale, thresholds")
    meta = {"format": FORMAT, "version": VERSION, "width": width, "height": height,
            "created_utc": created_utc or datetime.now(timezone.utc).isoformat(
                timespec="seconds"),
            "head_digest": digest, "camera_serial": camera_serial,
            "software_version": __version__,
            "geometry": None if geometry is None else {
                "mm_per_px": None if geometry.mm_per_px is None else list(geometry.mm_per_px),
                "rotation_deg": geometry.rotation_deg,
                "stage_origin_mm": (None if geometry.stage_origin_mm is None
                                    else list(geometry.stage_origin_mm))},
            "led_exposure_scale": None if scale is None else list(scale),
            "thresholds": thresholds or None}
    arrays = {"meta": np.array(json.dumps(meta, allow_nan=False))}
    if dark is not None:
        arrays["dark"] = dark
    if gain is not None:
        arrays["gain"] = gain
    if grid is not None:
        arrays["gain_grid"] = grid
        meta["gain_block"] = int(gain_block)
        arrays["meta"] = np.array(json.dumps(meta, allow_nan=False))
    if defects is not None:
        arrays.update(defect_rows=defects.rows, defect_cols=defects.cols,
                      defect_kinds=defects.kinds)
    tmp = path.with_name(path.name + ".partial.npz")
    try:
        with tmp.open("wb") as f:  # on disk before it replaces the old file (power cuts)
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


# -- reader ------------------------------------------------------------------------------------
def _read(path: str | Path, src: str) -> dict[str, np.ndarray]:
    try:
        z = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise CalibrationError(f"calibration file {src} does not exist") from None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise CalibrationError(f"calibration file {src} is not a readable .npz: {exc}") from None
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise CalibrationError(f"calibration file {src} is not a readable .npz: it holds a "
                               "single array")
    try:
        with z:
            return {k: z[k] for k in z.files}
    except Exception as exc:  # a damaged member: CRC, truncated data, bad header
        raise CalibrationError(f"calibration file {src} is damaged (truncated or corrupt): "
                               f"{type(exc).__name__}: {exc}") from None


def load(path: str | Path) -> Calibration:
    """Read and check a calibration file (version 1, 2 or 3)."""
    src = str(path)
    arrays = _read(path, src)
    if "meta" not in arrays:
        missing = {"dark", "gain", "meta"} - arrays.keys()
        raise CalibrationError(f"calibration {src} lacks {sorted(missing)}")
    try:
        meta = json.loads(str(arrays["meta"]))
        width, height = int(meta["width"]), int(meta["height"])
    except (ValueError, KeyError, TypeError):
        raise CalibrationError(f"calibration {src}: 'meta' is not the expected JSON") from None
    if meta.get("format") != FORMAT or meta.get("version") not in READS:
        raise CalibrationError(f"calibration {src} is format {meta.get('format')!r} version "
                               f"{meta.get('version')!r}; expected {FORMAT} version "
                               f"{' or '.join(map(str, READS))}")
    if not (0 < width <= 16384 and 0 < height <= 16384):
        raise CalibrationError(f"calibration {src}: frame size {width} x {height} is not valid")
    if meta["version"] == 1:
        missing = {"dark", "gain"} - arrays.keys()
        if missing:
            raise CalibrationError(f"calibration {src} lacks {sorted(missing)}")
        return Calibration(_map("dark", arrays["dark"], width, height, src),
                           _map("gain", arrays["gain"], width, height, src),
                           width, height, src, sha256_file(Path(path)), version=1,
                           created_utc=meta.get("created_utc"))
    return _load_v2(path, src, arrays, meta, width, height)


def _load_v2(path, src: str, arrays: dict, meta: dict, width: int, height: int) -> Calibration:
    unknown = set(meta) - _META_KEYS
    if meta["version"] == 2 and "gain_block" in meta:  # came with version 3
        unknown.add("gain_block")
    if unknown:
        raise CalibrationError(f"calibration {src}: unknown keys in 'meta': {sorted(unknown)}")
    missing = {"created_utc", "head_digest", "camera_serial", "software_version"} - meta.keys()
    if missing:
        raise CalibrationError(f"calibration {src}: 'meta' lacks {sorted(missing)}")
    members = set(arrays) - {"meta"}
    unknown = members - {"dark", "gain", *_DEFECT_ARRAYS} - (
        {"gain_grid"} if meta["version"] >= 3 else set())
    if unknown:
        raise CalibrationError(f"calibration {src}: unknown members {sorted(unknown)}")
    have = [a for a in _DEFECT_ARRAYS if a in arrays]
    if have and len(have) != len(_DEFECT_ARRAYS):
        raise CalibrationError(f"calibration {src}: the defective pixel list needs "
                               f"{list(_DEFECT_ARRAYS)}, the file has {have}")
    defects = (DefectivePixels(*(arrays[a] for a in _DEFECT_ARRAYS)) if have else None)
    digest, serial = _identity(meta["head_digest"], meta["camera_serial"], src)
    geometry = meta.get("geometry")
    if geometry is not None and not isinstance(geometry, dict):
        raise CalibrationError(f"calibration {src}: 'geometry' must be an object")
    thresholds = meta.get("thresholds")
    if thresholds is not None and not isinstance(thresholds, dict):
        raise CalibrationError(f"calibration {src}: 'thresholds' must be an object")
    scale = meta.get("led_exposure_scale")
    gain = _map("gain", arrays.get("gain"), width, height, src)
    if "gain_grid" in arrays:
        if gain is not None:
            raise CalibrationError(f"calibration {src} holds both 'gain' and 'gain_grid'")
        if "gain_block" not in meta:
            raise CalibrationError(f"calibration {src}: 'gain_grid' needs 'gain_block' in 'meta'")
        block = meta["gain_block"]
        gain = expand_gain_grid(_grid(arrays["gain_grid"], block, width, height, src), height,
                                width, block)
    cal = Calibration(
        _map("dark", arrays.get("dark"), width, height, src), gain,
        width, height, src, sha256_file(Path(path)), version=int(meta["version"]),
        defects=_defects(defects, width, height, src),
        geometry=_geometry(geometry, src),
        led_exposure_scale=(None if scale is None else
                            _numbers("led_exposure_scale", scale, N_STATES, src, positive=True)),
        thresholds=_thresholds(thresholds, src),
        head_digest=digest, camera_serial=serial,
        software_version=str(meta["software_version"]), created_utc=str(meta["created_utc"]))
    if (all(x is None for x in (cal.dark, cal.gain, cal.defects, cal.geometry,
                                cal.led_exposure_scale)) and not cal.thresholds):
        raise CalibrationError(f"calibration {src} holds nothing to apply")
    return cal
