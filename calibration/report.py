"""The calibration report: pictures a field engineer looks at, and the figures as JSON.

* ``dark.png``: the dark level map (stretched between its 1st and 99.9th percentile) with the
  defective pixels ringed: hot red, dead blue, stuck yellow;
* ``flat.png``: the 6 LED groups' fields side by side, on one colour scale, so an unevenly lit
  or weak group shows at a glance;
* ``geometry.png``: the dot-grid frame with each found dot marked;
* ``report.json``: every step's figures (what :mod:`calibration.procedure` kept).

Maps are shrunk by block means to at most ``WIDTH`` pixels across, so a report stays small.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

WIDTH = 700
# a perceptually ordered dark-blue -> teal -> yellow ramp for maps
_RAMP = np.array([[48, 18, 59], [50, 101, 187], [27, 170, 166], [122, 209, 81], [250, 231, 35]],
                 dtype=np.float64)


def _colour(v: np.ndarray) -> np.ndarray:
    x = np.clip(v, 0.0, 1.0) * (len(_RAMP) - 1)
    i = np.minimum(x.astype(int), len(_RAMP) - 2)
    f = (x - i)[..., None]
    return (_RAMP[i] * (1 - f) + _RAMP[i + 1] * f).astype(np.uint8)


def _shrink(img: np.ndarray, width: int = WIDTH) -> tuple[np.ndarray, int]:
    k = max(1, int(np.ceil(img.shape[1] / width)))
    h, w = (img.shape[0] // k) * k, (img.shape[1] // k) * k
    return img[:h, :w].reshape(h // k, k, w // k, k).mean(axis=(1, 3)), k


def _stretch(img: np.ndarray, lo_pct: float = 1.0, hi_pct: float = 99.9) -> np.ndarray:
    lo, hi = np.percentile(img, [lo_pct, hi_pct])
    return (img - lo) / max(hi - lo, 1e-9)


def dark_picture(level: np.ndarray, hot: np.ndarray, dead: np.ndarray | None = None,
                 stuck: np.ndarray | None = None) -> Image.Image:
    small, k = _shrink(level)
    im = Image.fromarray(_colour(_stretch(small)))
    draw = ImageDraw.Draw(im)
    for mask, colour in ((hot, (255, 40, 40)), (dead, (60, 140, 255)), (stuck, (255, 220, 0))):
        if mask is None:
            continue
        for y, x in np.argwhere(mask)[:5000]:  # a head with more has a bigger problem than this
            draw.ellipse([x / k - 3, y / k - 3, x / k + 3, y / k + 3], outline=colour)
    return im


def flat_picture(fields: np.ndarray) -> Image.Image:
    shrunk = [_shrink(f, WIDTH // 3)[0] for f in fields]
    hi = max(float(np.percentile(s, 99.5)) for s in shrunk)
    tiles = [Image.fromarray(_colour(s / max(hi, 1e-9))) for s in shrunk]
    w, h = tiles[0].size
    sheet = Image.new("RGB", (3 * w + 20, 2 * h + 10), (255, 255, 255))
    for n, t in enumerate(tiles):
        sheet.paste(t, ((n % 3) * (w + 10), (n // 3) * (h + 10)))
        ImageDraw.Draw(sheet).text(((n % 3) * (w + 10) + 6, (n // 3) * (h + 10) + 4),
                                   f"LED group {n}", fill=(255, 255, 255))
    return sheet


def geometry_picture(frame: np.ndarray, dots_px: np.ndarray) -> Image.Image:
    small, k = _shrink(frame)
    im = Image.fromarray((np.clip(_stretch(small, 1.0, 99.0), 0, 1) * 255).astype(np.uint8))
    im = im.convert("RGB")
    draw = ImageDraw.Draw(im)
    for u, v in dots_px:
        draw.line([u / k - 4, v / k, u / k + 4, v / k], fill=(255, 60, 60))
        draw.line([u / k, v / k - 4, u / k, v / k + 4], fill=(255, 60, 60))
    return im


def write_report(run, out: str | Path) -> list[Path]:
    """Write the pictures and ``report.json`` of ``run`` (:class:`calibration.procedure.Run`)
    into ``out``; the files written."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    a = run.arrays
    if "dark" in a:
        flat = a.get("flat", {})
        p = out / "dark.png"
        dark_picture(a["dark"]["level"], a["dark"]["hot"], flat.get("dead"),
                     flat.get("stuck")).save(p)
        written.append(p)
    if "flat" in a:
        p = out / "flat.png"
        flat_picture(a["flat"]["fields_preview"]).save(p)
        written.append(p)
    if "geometry" in a:
        p = out / "geometry.png"
        geometry_picture(a["geometry"]["frame_preview"], a["geometry"]["dots_preview"]).save(p)
        written.append(p)
    p = out / "report.json"
    p.write_text(json.dumps(run.summary, indent=1) + "\n")
    written.append(p)
    return written
