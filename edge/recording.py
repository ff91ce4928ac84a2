"""Recorded samples on disk: one folder per sample, a JSON manifest, one TIFF per RoI.

Layout (see ``docs/recorded_samples.md``)::

    <sample_id>/
      manifest.json        what, when, with which head; one entry per RoI with its SHA-256
      roi_00.tif           the 6 RAW frames of RoI 0: uint16, 6 x H x W, uncompressed, contiguous
      roi_00_mask.png      ground-truth scratch mask of RoI 0 (1 bit), where known
      truth.json           the sample's defect list in mm, where known

Why TIFF: any image tool opens it (Fiji, Python, MATLAB), and uncompressed contiguous data can be
memory-mapped, so the pipeline reads a RoI without copying it. The manifest is written last and
atomically: a folder without one is an interrupted recording and is refused, and a writer never
leaves a manifest that names files it did not finish. Every file's SHA-256 is checked on read, so
a truncated or altered file is caught before it reaches the pipeline.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import tifffile
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edge.config import N_STATES, HeadConfig, Pair, describe_errors
from edge.errors import UserError
from edge.hashing import sha256_file
from edge.truth import Sample
from edge.verdict import SAMPLE_ID

FORMAT = "glass-inspect-sample"
VERSION = 1
MANIFEST = "manifest.json"


class RecordingError(UserError, ValueError):
    """A recorded sample that cannot be read as it claims to be; names the file and the problem."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
FileName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+$")]  # no paths: stays in the folder


class RoiEntry(_Strict):
    index: int = Field(ge=0)
    row: int = Field(ge=0)
    column: int = Field(ge=0)
    origin_mm: Pair  # top-left corner of the RoI in sample coordinates
    stage_mm: Pair  # stage position when it was taken
    file: FileName
    sha256: Sha256
    # seconds since the epoch, UTC, one per state
    timestamps: list[float] = Field(min_length=N_STATES, max_length=N_STATES)
    mask: FileName | None = None
    mask_sha256: Sha256 | None = None


class CameraEntry(_Strict):
    width: int = Field(ge=2, multiple_of=2)
    height: int = Field(ge=2, multiple_of=2)
    bit_depth: int = Field(ge=8, le=16)
    bayer_pattern: Literal["GRBG", "RGGB", "GBRG", "BGGR"]
    exposure_ms: float = Field(gt=0)
    # per state, when the head took the groups at different exposures (a calibration's LED
    # balance); absent: every state at exposure_ms
    exposures_ms: list[Annotated[float, Field(gt=0)]] | None = Field(
        default=None, min_length=N_STATES, max_length=N_STATES)

    @property
    def per_state_ms(self) -> tuple[float, ...]:
        return tuple(self.exposures_ms or [self.exposure_ms] * N_STATES)


class Manifest(_Strict):
    format: Literal["glass-inspect-sample"]
    version: Literal[1]
    sample_id: Annotated[str, Field(pattern=SAMPLE_ID.pattern)]
    created_utc: str
    head_name: str
    head_config_sha256: Sha256
    calibration_id: str | None
    camera: CameraEntry
    illumination_deg: list[float] = Field(min_length=N_STATES, max_length=N_STATES)
    mm_per_px: Pair
    rois: list[RoiEntry] = Field(min_length=1)
    truth: FileName | None = None
    truth_sha256: Sha256 | None = None


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".part")
    with tmp.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


class SampleWriter:
    """Writes one recorded sample, RoI by RoI, so memory holds one RoI at a time."""

    def __init__(self, root: str | Path, sample_id: str, cfg: HeadConfig,
                 calibration_id: str | None = None, shape: tuple[int, int] | None = None,
                 exposures_ms: Sequence[float] | None = None):
        if not SAMPLE_ID.match(sample_id):
            raise RecordingError(
                f"sample id {sample_id!r} is not allowed: use 1-64 letters, digits, '_', '.', '-'"
            )
        self.dir = Path(root) / sample_id
        if (self.dir / MANIFEST).exists():
            raise RecordingError(f"{self.dir} already holds a recorded sample; not overwriting it")
        self.dir.mkdir(parents=True, exist_ok=True)
        h, w = shape if shape is not None else (cfg.camera.height, cfg.camera.width)
        self.shape = (N_STATES, h, w)
        self.cfg = cfg
        self._head = dict(
            format=FORMAT, version=VERSION, sample_id=sample_id,
            head_name=cfg.name, head_config_sha256=cfg.digest(), calibration_id=calibration_id,
            camera=dict(width=w, height=h, bit_depth=cfg.camera.bit_depth,
                        bayer_pattern=cfg.camera.bayer_pattern,
                        exposure_ms=cfg.camera.exposure_ms),
            illumination_deg=list(cfg.illumination.angles_deg),
            mm_per_px=list(cfg.mm_per_px),
        )
        if exposures_ms is not None and any(e != cfg.camera.exposure_ms for e in exposures_ms):
            self._head["camera"]["exposures_ms"] = [float(e) for e in exposures_ms]
        self.rois: list[dict] = []
        self.truth: dict | None = None

    def add_roi(self, index: int, origin_mm: tuple[float, float], frames: np.ndarray,
                timestamps: Sequence[float], mask: np.ndarray | None = None) -> None:
        if frames.dtype != np.uint16 or frames.shape != self.shape:
            raise RecordingError(
                f"RoI {index}: frames must be uint16 of shape {self.shape}, "
                f"got {frames.dtype} {frames.shape}"
            )
        grid = self.cfg.stage.roi_grid
        row, column = divmod(index, grid.columns)
        name = f"roi_{index:02d}.tif"
        path = self.dir / name
        tifffile.imwrite(path, frames, photometric="minisblack", contiguous=True,
                         metadata={"axes": "SYX"})
        entry = dict(index=index, row=row, column=column, origin_mm=list(origin_mm),
                     stage_mm=[grid.origin_mm[0] + origin_mm[0], grid.origin_mm[1] + origin_mm[1]],
                     file=name, sha256=sha256_file(path), timestamps=[float(t) for t in timestamps])
        if mask is not None:
            mname = f"roi_{index:02d}_mask.png"
            Image.fromarray(mask.astype(bool)).save(self.dir / mname, optimize=True)
            entry.update(mask=mname, mask_sha256=sha256_file(self.dir / mname))
        self.rois.append(entry)

    def set_truth(self, sample: Sample) -> None:
        data = json.dumps(sample.to_dict(), indent=1).encode()
        _atomic_write(self.dir / "truth.json", data)
        self.truth = dict(truth="truth.json", truth_sha256=hashlib.sha256(data).hexdigest())

    def close(self) -> Path:
        manifest = dict(self._head, created_utc=datetime.now(timezone.utc).isoformat(),
                        rois=self.rois, **(self.truth or {}))
        Manifest.model_validate(manifest)  # never write a manifest that the reader refuses
        _atomic_write(self.dir / MANIFEST, json.dumps(manifest, indent=1).encode())
        return self.dir


@dataclass
class RecordedSample:
    """A recorded sample opened for reading; RoIs are loaded (and verified) on demand."""

    dir: Path
    manifest: Manifest

    @property
    def sample_id(self) -> str:
        return self.manifest.sample_id

    @property
    def shape(self) -> tuple[int, int, int]:
        return (N_STATES, self.manifest.camera.height, self.manifest.camera.width)

    def roi_entry(self, index: int) -> RoiEntry:
        for r in self.manifest.rois:
            if r.index == index:
                return r
        raise RecordingError(f"{self.dir / MANIFEST}: no RoI {index} in this sample")

    def _checked(self, name: str, sha: str | None, verify: bool) -> Path:
        path = self.dir / name
        if not path.is_file():
            raise RecordingError(f"{path}: missing (the manifest lists it)")
        if verify and sha is not None and sha256_file(path) != sha:
            raise RecordingError(
                f"{path}: content does not match the manifest's SHA-256 (file truncated, altered "
                "or from another recording)"
            )
        return path

    def frames(self, index: int, verify: bool = True) -> np.ndarray:
        """The 6 frames of RoI ``index``, memory-mapped read-only: (6, H, W) uint16."""
        entry = self.roi_entry(index)
        path = self.dir / entry.file
        expected = int(np.prod(self.shape)) * 2
        if path.is_file() and path.stat().st_size < expected:
            raise RecordingError(
                f"{path}: truncated ({path.stat().st_size} bytes, the frames alone need {expected})"
            )
        self._checked(entry.file, entry.sha256, verify)
        try:
            arr = tifffile.memmap(path, mode="r")
        except Exception as exc:  # tifffile raises many kinds on a damaged file
            raise RecordingError(f"{path}: not a readable uncompressed TIFF ({exc})") from None
        if arr.dtype != np.uint16 or arr.shape != self.shape:
            raise RecordingError(
                f"{path}: holds {arr.dtype} {arr.shape}, the manifest says uint16 {self.shape}"
            )
        return arr

    def mask(self, index: int, verify: bool = True) -> np.ndarray | None:
        entry = self.roi_entry(index)
        if entry.mask is None:
            return None
        path = self._checked(entry.mask, entry.mask_sha256, verify)
        try:
            with Image.open(path) as im:
                m = np.array(im.convert("1"), dtype=bool)
        except Exception as exc:
            raise RecordingError(f"{path}: not a readable PNG mask ({exc})") from None
        if m.shape != self.shape[1:]:
            raise RecordingError(f"{path}: mask is {m.shape}, the frames are {self.shape[1:]}")
        return m

    def truth(self) -> Sample | None:
        m = self.manifest
        if m.truth is None:
            return None
        path = self._checked(m.truth, m.truth_sha256, True)
        try:
            return Sample.from_dict(json.loads(path.read_text()))
        except (ValueError, KeyError, TypeError) as exc:
            raise RecordingError(f"{path}: not a valid defect list ({exc})") from None


def open_sample(path: str | Path) -> RecordedSample:
    """Open a recorded sample folder; its manifest is validated now, its files when read."""
    d = Path(path)
    mpath = d / MANIFEST
    if not d.is_dir():
        raise RecordingError(f"{d}: not a folder (expected a recorded sample folder)")
    if not mpath.is_file():
        raise RecordingError(
            f"{d}: no {MANIFEST} (an interrupted recording, or not a recorded sample folder)"
        )
    try:
        data = json.loads(mpath.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise RecordingError(f"{mpath}: not valid JSON ({exc})") from None
    try:
        manifest = Manifest.model_validate(data)
    except ValidationError as exc:
        problems = "\n  ".join(describe_errors(exc))
        raise RecordingError(f"{mpath}: invalid manifest:\n  {problems}") from None
    indexes = [r.index for r in manifest.rois]
    if len(set(indexes)) != len(indexes):
        raise RecordingError(f"{mpath}: RoI indexes repeat: {indexes}")
    return RecordedSample(d, manifest)


def find_samples(path: str | Path) -> list[Path]:
    """The sample folder itself, or the sample folders directly inside ``path``."""
    p = Path(path)
    if (p / MANIFEST).is_file():
        return [p]
    found = sorted(q for q in p.iterdir() if (q / MANIFEST).is_file()) if p.is_dir() else []
    if not found:
        raise RecordingError(f"{p}: no recorded sample here (no {MANIFEST} in it or below it)")
    return found
