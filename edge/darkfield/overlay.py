"""The picture of a classified image, for people.

* **Overlay** (PNG, the image's size): the image under an asinh stretch above its median (the
  dark level; a faint scratch and saturated dust both visible), positive windows tinted red,
  region contours in yellow (weak regions are tinted and not outlined), the verdict written on
  it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edge.darkfield.regions import Point
from edge.darkfield.windows import WINDOW
from edge.verdict import Status

if TYPE_CHECKING:
    from edge.darkfield.classify import ImageResult

TINT = (255, 40, 40)
CONTOUR = (255, 220, 0)


def display(pixels: np.ndarray) -> np.ndarray:
    """[0, 1] pixels to uint8 for people: asinh stretch above the median (the dark level)."""
    black = float(np.median(pixels))
    white = float(pixels.max())
    span = white - black
    if span <= 0:
        return np.zeros(pixels.shape, np.uint8)
    soft = span / 50.0
    y = np.arcsinh(np.clip(pixels - black, 0, None) / soft) / np.arcsinh(span / soft)
    return (np.clip(y, 0, 1) * 255).astype(np.uint8)


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the small bitmap font
        return ImageFont.load_default()


def render_overlay(result: ImageResult):
    """The overlay of a classified image as a Pillow RGB image of the image's size."""
    from PIL import Image, ImageDraw

    frame = result.frame
    if frame is None or result.probability is None:
        raise ValueError(f"{result.path} was not classified; it has no overlay")
    grey = display(frame.pixels)
    rgb = np.repeat(grey[..., None], 3, axis=2).astype(np.float32)
    tinted = np.zeros(grey.shape, bool)
    for r, c in zip(*np.nonzero(result.positive), strict=True):
        y, x = result.ys[r], result.xs[c]
        tinted[y:y + WINDOW, x:x + WINDOW] = True
    rgb[tinted] = 0.6 * rgb[tinted] + 0.4 * np.asarray(TINT, np.float32)
    im = Image.fromarray(rgb.astype(np.uint8))
    draw = ImageDraw.Draw(im)
    w, h = frame.size
    line = max(2, min(w, h) // 300)
    font = _font(max(14, min(w, h) // 30))

    def px(p: Point) -> tuple[int, int]:  # pixel edges to the last pixel inside
        return (min(p[0], w - 1), min(p[1], h - 1))

    for k, g in enumerate(result.regions, 1):
        for poly in (g.contour_px, *g.holes_px):
            pts = [px(p) for p in poly]
            draw.line([*pts, pts[0]], fill=CONTOUR, width=line, joint="curve")
        x0, y0 = px(g.box_px[:2])
        draw.text((x0 + 2 * line, y0 + 2 * line), f"{k}: p {g.max_probability:.2f}",
                  fill=CONTOUR, font=font)
    text = overlay_caption(result)
    box = draw.textbbox((0, 0), text, font=font)
    pad = line * 2
    draw.rectangle((0, 0, box[2] + 2 * pad, box[3] + 2 * pad), fill=(0, 0, 0))
    colour = (255, 80, 80) if result.verdict is Status.FAIL else (90, 230, 90)
    draw.text((pad, pad), text, fill=colour, font=font)
    return im


def overlay_caption(result: ImageResult) -> str:
    """The line written on an overlay: the verdict, and why some tinted windows have no
    outline (weak regions, which do not fail the image)."""
    n = len(result.regions)
    text = (f"{result.verdict.value}  {n} region{'s' * (n != 1)}, {result.positives} of "
            f"{result.windows} windows >= {result.threshold:g}")
    if result.weak_regions:
        k = result.weak_regions
        text += (f"; {k} weak region{'s' * (k != 1)} under p {result.region_threshold:g} "
                 "(tinted, not outlined)")
    return text


def write_overlay(path: str | Path, result: ImageResult) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    render_overlay(result).save(path, format="PNG")
    return path
