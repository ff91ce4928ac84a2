"""The picture of one inspected RoI: what the camera saw, what the network scored, what it kept.

Left: the brightest of the 6 states per pixel (green sites, max-shrunk so a 1 px line survives,
asinh stretch as in :mod:`edge.preview`). Right: the scratch score (tanh output, -1..1) as a heat
map in which only scores above T_low are coloured. Kept scratches are boxed in red on both.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from edge.preview import green_plane, max_shrink, stretch
from edge.verdict import RoiResult

KEPT = (255, 50, 50)


def heat(score: np.ndarray, t_low: float) -> np.ndarray:
    """Scores to RGB: dark grey below T_low, then yellow through red to white at 1."""
    s = np.clip((score - t_low) / max(1.0 - t_low, 1e-6), 0.0, 1.0)
    rgb = np.stack([np.clip(0.4 + 1.2 * s, 0, 1), np.clip(1.4 * s - 0.2, 0, 1),
                    np.clip(2.0 * s - 1.0, 0, 1)], axis=-1)
    rgb[score < t_low] = 0.12
    return (rgb * 255).astype(np.uint8)


def roi_overlay(frames: np.ndarray, result: RoiResult, bayer_pattern: str, max_dn: int,
                t_low: float, panel_width: int = 800) -> Image.Image:
    if result.score is None:
        raise ValueError("the RoI result holds no score map; run the pipeline with keep_score")
    brightest = np.max([green_plane(f, bayer_pattern) for f in frames], axis=0)
    factor = max(1, int(np.ceil(brightest.shape[1] / panel_width)))
    left = stretch(max_shrink(brightest, factor), float(np.median(brightest)), max_dn)
    right = heat(max_shrink(np.asarray(result.score, np.float32), factor), t_low)
    h, w = left.shape
    gap, label = 6, 22
    canvas = Image.new("RGB", (2 * w + gap, h + label), (40, 40, 40))
    canvas.paste(Image.fromarray(left).convert("RGB"), (0, label))
    canvas.paste(Image.fromarray(right[:h, :w]), (w + gap, label))
    draw = ImageDraw.Draw(canvas)
    draw.text((4, 4), f"RoI {result.index}: brightest of 6 states", fill=(230, 230, 230))
    draw.text((w + gap + 4, 4), f"scratch score >= {t_low:g}; {len(result.defects)} kept",
              fill=(230, 230, 230))
    scale = 2 * factor  # RAW px per picture px
    for d in result.defects:
        x0, y0, x1, y1 = (v / scale for v in d.box_px)
        for off in (0, w + gap):
            draw.rectangle((off + x0 - 3, label + y0 - 3, off + x1 + 3, label + y1 + 3),
                           outline=KEPT, width=2)
            draw.text((off + x0, label + max(y0 - 16, 0)), f"{d.length_mm:.1f} mm",
                      fill=KEPT)
    return canvas


def write_overlay(path: str | Path, frames: np.ndarray, result: RoiResult, bayer_pattern: str,
                  max_dn: int, t_low: float) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    roi_overlay(frames, result, bayer_pattern, max_dn, t_low).save(path)
    return path


def overlay_writer(out_dir: str | Path, cfg) -> Callable[[RoiResult, np.ndarray], None]:
    """An ``on_roi`` callback for :func:`edge.inspection.inspect_sample` writing roi_XX.png."""
    out_dir = Path(out_dir)

    def write(result: RoiResult, frames: np.ndarray) -> None:
        if result.score is None:  # a RoI the pipeline refused: no score map to show
            return
        write_overlay(out_dir / f"roi_{result.index:02d}.png", frames, result,
                      cfg.camera.bayer_pattern, cfg.camera.max_dn, cfg.pipeline.t_low)

    return write
