"""The picture of a classified image, for people.

* **Overlay** (PNG, the image's size): the image under an asinh stretch from its median (the
  dark level) to its 99.5th percentile (a faint scratch and saturated dust both visible), positive
  windows tinted red, region contours in yellow (weak regions are tinted and not outlined), the
  verdict written on it.
* **Stretch.** The top of the stretch is a high percentile, not the maximum: one saturated speck
  would otherwise set the white and leave the rest of the picture near black. 99.5 % leaves the
  brightest 0.5 % (dust, a bright scratch) clipped at white, where they are still seen.
* **Caption** on a black band at the top left, in a font scaled to the image (1/30 of its
  shorter side, at least 10 px) and wrapped between words to the image's width, so it is whole
  on a 256 px image too; a single word wider than the image shrinks the font (down to 8 px).
* **Region labels** go at the top-left corner of their region, moved below the caption band and
  inside the image where they would meet the band or the edge: a region in the first row of
  windows starts at y = 0, where the band lies.
"""

from __future__ import annotations

from dataclasses import dataclass
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
WHITE_PERCENTILE = 99.5  # the stretch's top (module docstring)
MIN_FONT_PX, FLOOR_FONT_PX = 10, 8  # the scaled font's least size; the least a long word gets

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 px, x1 and y1 exclusive


def display(pixels: np.ndarray) -> np.ndarray:
    """[0, 1] pixels to uint8 for people: asinh stretch from the median (the dark level) to
    the 99.5th percentile (the maximum where that is no brighter than the median)."""
    black = float(np.median(pixels))
    white = float(np.percentile(pixels, WHITE_PERCENTILE))
    if white <= black:  # bright pixels rarer than 0.5 %: they still deserve a range
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


@dataclass(frozen=True)
class Label:
    text: str
    xy: tuple[int, int]  # where the text is drawn
    box: Box  # what it covers


@dataclass(frozen=True)
class Layout:
    """Where an overlay's words go: the caption's lines on a band, and one label per region."""

    font: object  # a Pillow font
    font_px: int
    line: int  # contour width, px
    caption: tuple[str, ...]  # its lines
    caption_xy: tuple[int, int]
    caption_box: Box  # the black band
    labels: tuple[Label, ...]


def _spacing(font_px: int) -> int:
    return max(1, font_px // 5)


def _wrap(text: str, font, width: float, measure) -> list[str] | None:
    """Greedy lines of ``text`` no wider than ``width``; None when a word alone is wider."""
    lines: list[str] = []
    for word in text.split():
        if measure(word, font) > width:
            return None
        trial = f"{lines[-1]} {word}" if lines else word
        if lines and measure(trial, font) <= width:
            lines[-1] = trial
        else:
            lines.append(word)
    return lines or [""]


def overlay_layout(result: ImageResult) -> Layout:
    """Where the caption and the region labels of ``result``'s overlay go (module docstring)."""
    from PIL import Image, ImageDraw

    w, h = result.frame.size
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))

    def measure(text: str, font) -> float:
        return draw.textlength(text, font=font)

    line = max(2, min(w, h) // 300)
    pad = 2 * line
    size = max(MIN_FONT_PX, min(w, h) // 30)
    text = overlay_caption(result)
    while True:
        font = _font(size)
        lines = _wrap(text, font, w - 2 * pad, measure)
        if lines is not None or size <= FLOOR_FONT_PX:
            break
        size -= 1
    if lines is None:  # even the least font leaves a word too wide: let it run off the edge
        lines = text.split()
    box = draw.multiline_textbbox((pad, pad), "\n".join(lines), font=font,
                                  spacing=_spacing(size))
    band = (0, 0, min(w, box[2] + pad), min(h, box[3] + pad))

    def px(p: Point) -> tuple[int, int]:  # pixel edges to the last pixel inside
        return (min(p[0], w - 1), min(p[1], h - 1))

    labels = []
    for k, g in enumerate(result.regions, 1):
        label = f"{k}: p {g.max_probability:.2f}"
        x0, y0 = px(g.box_px[:2])
        lb = draw.textbbox((0, 0), label, font=font)
        x = max(0, min(x0 + pad, w - lb[2] - line))  # inside the right edge
        y = y0 + pad
        if x + lb[0] < band[2] and y + lb[1] < band[3]:  # it would meet the band: below it
            y = band[3] + line
        labels.append(Label(label, (x, y), (x + lb[0], y + lb[1], x + lb[2], y + lb[3])))
    return Layout(font, size, line, tuple(lines), (pad, pad), band, tuple(labels))


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
    lay = overlay_layout(result)

    def px(p: Point) -> tuple[int, int]:
        return (min(p[0], w - 1), min(p[1], h - 1))

    for g, label in zip(result.regions, lay.labels, strict=True):
        for poly in (g.contour_px, *g.holes_px):
            pts = [px(p) for p in poly]
            draw.line([*pts, pts[0]], fill=CONTOUR, width=lay.line, joint="curve")
        draw.text(label.xy, label.text, fill=CONTOUR, font=lay.font)
    draw.rectangle((lay.caption_box[0], lay.caption_box[1], lay.caption_box[2] - 1,
                    lay.caption_box[3] - 1), fill=(0, 0, 0))
    colour = (255, 80, 80) if result.verdict is Status.FAIL else (90, 230, 90)
    draw.multiline_text(lay.caption_xy, "\n".join(lay.caption), fill=colour, font=lay.font,
                        spacing=_spacing(lay.font_px))
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
