"""The calibration file the pipeline reads: dark level and flat-field gain per illumination state.

Format (version 1): a NumPy ``.npz`` holding ``dark`` and ``gain``, each one number per state
``(6,)`` or one full-resolution map per state ``(6, H, W)``, float32, and ``meta``, a JSON string
with ``format``, ``version``, ``width``, ``height`` and ``created_utc``. The space-to-depth
kernel applies ``(raw - dark) * gain`` in the same pass (see :mod:`edge.kernels.space_to_depth`).
The field calibration script writes it; this module is the one reader, so the runtime refuses a
file that does not fit the camera rather than correcting with the wrong maps.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from edge.config import N_STATES
from edge.hashing import sha256_file

FORMAT = "glass-inspect-calibration"
VERSION = 1


class CalibrationError(ValueError):
    """A calibration file that cannot be used; the message names the file and the problem."""


@dataclass(frozen=True)
class Calibration:
    dark: np.ndarray  # (6,) or (6, H, W) float32, DN
    gain: np.ndarray  # (6,) or (6, H, W) float32, unitless
    width: int
    height: int
    source: str
    sha256: str

    @property
    def identity(self) -> dict:
        return {"file": Path(self.source).name, "sha256": self.sha256}

    def check_frames(self, shape: tuple[int, ...]) -> None:
        if tuple(shape[1:]) != (self.height, self.width):
            raise CalibrationError(
                f"calibration {self.source} is for {self.width} x {self.height} frames, the "
                f"camera delivers {shape[2]} x {shape[1]}")


def _check(name: str, arr: np.ndarray, width: int, height: int, source: str) -> np.ndarray:
    if arr.shape not in ((N_STATES,), (N_STATES, height, width)):
        raise CalibrationError(f"calibration {source}: '{name}' has shape {arr.shape}, expected "
                               f"({N_STATES},) or ({N_STATES}, {height}, {width})")
    arr = arr.astype(np.float32, copy=False)
    if not np.isfinite(arr).all():
        raise CalibrationError(f"calibration {source}: '{name}' holds NaN or infinite values")
    if name == "gain" and (arr <= 0).any():
        raise CalibrationError(f"calibration {source}: 'gain' must be positive everywhere")
    return np.ascontiguousarray(arr)


def save(path: str | Path, dark, gain, width: int, height: int) -> Path:
    path = Path(path)
    meta = {"format": FORMAT, "version": VERSION, "width": width, "height": height,
            "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    dark = _check("dark", np.asarray(dark, np.float32), width, height, str(path))
    gain = _check("gain", np.asarray(gain, np.float32), width, height, str(path))
    tmp = path.with_name(path.name + ".partial.npz")
    np.savez(tmp, dark=dark, gain=gain, meta=np.array(json.dumps(meta)))
    tmp.replace(path)
    return path


def load(path: str | Path) -> Calibration:
    src = str(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise CalibrationError(f"calibration file {src} does not exist") from None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise CalibrationError(f"calibration file {src} is not a readable .npz: {exc}") from None
    missing = {"dark", "gain", "meta"} - arrays.keys()
    if missing:
        raise CalibrationError(f"calibration {src} lacks {sorted(missing)}")
    try:
        meta = json.loads(str(arrays["meta"]))
        width, height = int(meta["width"]), int(meta["height"])
    except (ValueError, KeyError, TypeError):
        raise CalibrationError(f"calibration {src}: 'meta' is not the expected JSON") from None
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise CalibrationError(f"calibration {src} is format {meta.get('format')!r} version "
                               f"{meta.get('version')!r}; expected {FORMAT} version {VERSION}")
    return Calibration(_check("dark", arrays["dark"], width, height, src),
                       _check("gain", arrays["gain"], width, height, src),
                       width, height, src, sha256_file(Path(path)))
