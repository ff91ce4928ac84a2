"""The overlay as people see it (issue 29, item 5): a saturated speck does not darken the
picture, the caption fits a 256 px image, and no region label hides under the caption."""

from pathlib import Path

import numpy as np
import pytest

from edge.darkfield.classify import ImageResult
from edge.darkfield.overlay import display, overlay_caption, overlay_layout, render_overlay
from edge.darkfield.reading import Frame
from edge.darkfield.regions import merge_windows
from edge.darkfield.windows import window_origins
from edge.verdict import Status


def _frame(side: int = 512, speck: bool = False) -> np.ndarray:
    """Haze at 0.1 with noise, a faint horizontal scratch 0.03 above it on rows 300-301 (0.8 %
    of the pixels), and with ``speck`` one saturated pixel."""
    rng = np.random.default_rng(7)
    px = (0.1 + rng.normal(0.0, 0.004, (side, side))).astype(np.float32)
    px[300:302, 50:450] += 0.03
    if speck:
        px[20, 20] = 1.0
    return px


def _intersect(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _result(pixels: np.ndarray, positive_at=(), weak: int = 0, p: float = 0.97) -> ImageResult:
    h, w = pixels.shape
    ys, xs = window_origins(h), window_origins(w)
    prob = np.full((len(ys), len(xs)), 0.1)
    for r, c in positive_at:
        prob[r, c] = p
    regions = merge_windows(prob >= 0.5, prob, ys, xs)
    return ImageResult(Path("f.png"), Status.FAIL if regions else Status.PASS,
                       frame=Frame(Path("f.png"), pixels, 8, "PNG", "grey"), ys=ys, xs=xs,
                       probability=prob, threshold=0.5, regions=regions,
                       region_threshold=0.9 if weak else None, weak_regions=weak)


def test_one_saturated_pixel_does_not_darken_the_picture():
    plain, specked = display(_frame()), display(_frame(speck=True))
    scratch = np.s_[300:302, 60:440]
    # the scratch keeps its brightness: the stretch's top is a percentile, not the maximum
    assert np.median(specked[scratch]) >= 0.95 * np.median(plain[scratch])
    assert np.median(specked[scratch]) > 200
    # and the background above the median (its noise, the haze's texture) stays visible
    background = np.concatenate([specked[:280].ravel(), specked[320:].ravel()])
    assert np.percentile(background, 90) > 60
    assert specked[20, 20] == 255  # the speck itself: white, still seen


def test_a_frame_whose_bright_pixels_are_fewer_than_the_percentile_still_shows_them():
    px = np.zeros((300, 300), np.float32)
    px[10, 10] = 0.5  # the 99.5th percentile is the median: the maximum sets the top
    out = display(px)
    assert out[10, 10] == 255 and out[0, 0] == 0
    assert not display(np.full((64, 64), 0.3, np.float32)).any()  # flat: black, no division


def _caption_pixels(im: np.ndarray) -> np.ndarray:
    """Where the caption's red FAIL text is drawn (antialiased edges included)."""
    r, g, b = (im[..., k].astype(int) for k in range(3))
    return (r > 120) & (r > 2 * g) & (r > 2 * b)


def test_the_caption_fits_a_256_px_image():
    res = _result(_frame(256) * 0, positive_at=[(0, 0)], weak=2)
    text = overlay_caption(res)
    lay = overlay_layout(res)
    assert len(lay.caption) > 1 and " ".join(lay.caption) == " ".join(text.split())
    x0, y0, x1, y1 = lay.caption_box
    assert x0 >= 0 and x1 <= 256 and y1 < 256 * 0.5
    ov = np.asarray(render_overlay(res))
    text_px = _caption_pixels(ov[:y1])
    cols = np.flatnonzero(text_px.any(axis=0))
    assert cols.size and cols.max() < 256 - lay.line  # the text ends inside the image


@pytest.mark.parametrize("side, at", [(256, (0, 0)), (512, (0, 1)), (1024, (0, 6))])
def test_a_region_label_in_the_first_row_stays_clear_of_the_caption(side, at):
    res = _result(_frame(side) * 0, positive_at=[at])
    lay = overlay_layout(res)
    (label,) = lay.labels
    assert not _intersect(label.box, lay.caption_box)
    assert label.box[0] >= 0 and label.box[2] <= side and label.box[3] <= side
    # drawn: the label's yellow text is seen just below the band, inside the region
    ov = np.asarray(render_overlay(res)).astype(int)
    yellow = (ov[..., 0] > 180) & (ov[..., 1] > 150) & (ov[..., 2] < 90)
    x0, y0, x1, y1 = label.box
    inner = yellow[y0:y1, x0 + 1:x1]  # clear of the contour down the region's left edge
    assert inner.sum() > 10
    cx0, cy0, cx1, cy1 = lay.caption_box
    assert not yellow[cy0:cy1, cx0:cx1].any()  # nothing yellow left under the band


def test_a_label_clear_of_the_band_stays_at_its_region():
    res = _result(_frame(1024) * 0, positive_at=[(3, 3)])  # x, y 384: far from the caption
    (label,) = overlay_layout(res).labels
    assert label.xy[0] > 384 and 384 < label.xy[1] < 384 + 20
