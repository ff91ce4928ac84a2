"""Pictures of RAW frames for people: the 6 illumination states side by side, defects outlined.

Choices: a preview shows the green channel (two of every four Bayer sites, the least noisy and
the one the sensor is most sensitive to) at half resolution, reduced further by a max-filter so
that a 1 px scratch survives the shrink. Brightness goes through an asinh stretch above the
frame's dark level, which shows a scratch just above the noise and saturated dust in one picture.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

# outline colours per ground-truth kind
COLOURS = {"scratch": (255, 60, 60), "dust": (80, 170, 255), "stain": (255, 200, 0),
           "fibre": (180, 110, 255), "water_spot": (60, 220, 200), "fingerprint": (255, 140, 200)}


@dataclass(frozen=True)
class Outline:
    """A ground-truth object to outline: its kind and its pixel bounding box (x0, y0, x1, y1)."""

    kind: str
    box_px: tuple[float, float, float, float]


def green_plane(frame: np.ndarray, bayer_pattern: str) -> np.ndarray:
    """Mean of the two green sites of each 2 x 2 Bayer cell: (H/2, W/2) float32."""
    sites = [(0, 0), (0, 1), (1, 0), (1, 1)]
    g = [sites[i] for i, ch in enumerate(bayer_pattern) if ch == "G"]
    (a, b), (c, d) = g
    return 0.5 * (frame[a::2, b::2].astype(np.float32) + frame[c::2, d::2])


def max_shrink(img: np.ndarray, factor: int) -> np.ndarray:
    if factor <= 1:
        return img
    h, w = (img.shape[0] // factor) * factor, (img.shape[1] // factor) * factor
    return img[:h, :w].reshape(h // factor, factor, w // factor, factor).max(axis=(1, 3))


def stretch(img: np.ndarray, black: float, white: float, softness: float = 12.0) -> np.ndarray:
    """asinh stretch of [black, white] to 0..255 (uint8)."""
    x = np.clip(img - black, 0, None) / softness
    y = np.arcsinh(x) / np.arcsinh(max(white - black, 1.0) / softness)
    return (np.clip(y, 0, 1) * 255).astype(np.uint8)


def states_panel(frames: np.ndarray, bayer_pattern: str, max_dn: int,
                 angles_deg: Sequence[float], outlines: Sequence[Outline] = (),
                 panel_width: int = 700, columns: int = 3) -> Image.Image:
    """One picture: each state's frame in a panel, labelled with its angle, objects outlined."""
    planes = [green_plane(f, bayer_pattern) for f in frames]
    factor = max(1, int(np.ceil(planes[0].shape[1] / panel_width)))
    small = [max_shrink(p, factor) for p in planes]
    black = float(np.median(planes[0]))  # dark level + haze of clean glass
    scale = 2 * factor  # RAW px per panel px
    ph, pw = small[0].shape
    label_h, gap = 22, 6
    rows = -(-len(small) // columns)
    canvas = Image.new("RGB", (columns * pw + (columns - 1) * gap,
                               rows * (ph + label_h + gap) + label_h), (40, 40, 40))
    draw = ImageDraw.Draw(canvas)
    for k, img in enumerate(small):
        r, c = divmod(k, columns)
        x0, y0 = c * (pw + gap), r * (ph + label_h + gap)
        grey = stretch(img, black, max_dn)
        canvas.paste(Image.fromarray(grey).convert("RGB"), (x0, y0 + label_h))
        draw.text((x0 + 4, y0 + 4), f"state {k}: lit from {angles_deg[k]:g} deg",
                  fill=(230, 230, 230))
        for o in outlines:
            bx0, by0, bx1, by1 = (v / scale for v in o.box_px)
            pad, top = 4, y0 + label_h
            box = (x0 + bx0 - pad, top + by0 - pad, x0 + bx1 + pad, top + by1 + pad)
            # keep outlines inside their own panel
            box = (max(box[0], x0), max(box[1], y0 + label_h), min(box[2], x0 + pw - 1),
                   min(box[3], y0 + label_h + ph - 1))
            if box[2] > box[0] and box[3] > box[1]:
                draw.rectangle(box, outline=COLOURS.get(o.kind, (255, 255, 255)), width=1)
    x, y = 4, canvas.height - label_h + 5
    draw.text((x, y), "ground truth:", fill=(200, 200, 200))
    x += 90
    for kind, colour in COLOURS.items():
        draw.rectangle((x, y + 1, x + 10, y + 11), outline=colour)
        draw.text((x + 16, y), kind, fill=colour)
        x += 16 + 8 * len(kind) + 16
    return canvas


def outlines_for(defects, origin_mm: tuple[float, float], mm_per_px: tuple[float, float],
                 shape: tuple[int, int]) -> list[Outline]:
    """Pixel boxes of the defects (sample mm) that fall inside a frame at ``origin_mm``."""
    h, w = shape
    out = []
    for d in defects:
        x0, y0, x1, y1 = d.bounds_mm()
        box = ((x0 - origin_mm[0]) / mm_per_px[0], (y0 - origin_mm[1]) / mm_per_px[1],
               (x1 - origin_mm[0]) / mm_per_px[0], (y1 - origin_mm[1]) / mm_per_px[1])
        if box[2] >= 0 and box[3] >= 0 and box[0] < w and box[1] < h:
            out.append(Outline(d.kind, box))
    return out


def write_previews(sample_dir: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    """One PNG per RoI of a recorded sample (``roi_XX.png``, into ``SAMPLE/preview`` unless
    ``out_dir`` is given): the states side by side, the ground truth outlined where known."""
    from edge.recording import open_sample

    rec = open_sample(sample_dir)
    m = rec.manifest
    truth = rec.truth()
    out = Path(out_dir) if out_dir else Path(sample_dir) / "preview"
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for entry in m.rois:
        frames = rec.frames(entry.index)
        outlines = (outlines_for(truth.objects, entry.origin_mm, m.mm_per_px, frames.shape[1:])
                    if truth else [])
        img = states_panel(frames, m.camera.bayer_pattern, (1 << m.camera.bit_depth) - 1,
                           m.illumination_deg, outlines)
        path = out / f"roi_{entry.index:02d}.png"
        img.save(path)
        written.append(path)
    return written
