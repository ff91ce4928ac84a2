"""Labels of single dark-field frames as people draw them: where the scratches are, per image.

The format is ``docs/labels_darkfield.md``'s; in short, per image one of:

* **JSON** (``STEM.json``): ``{"scratches": [{"points_px": [[x, y], ...], "width_px": w}, ...]}``
  for an image with scratches, ``{"clean": true}`` for one without. Points are pixel
  coordinates, ``x`` the column and ``y`` the row, with pixel centres at whole numbers (the
  simulator's convention, :mod:`edge.sim.darkfield`), so a point lies in a W x H image when
  ``-0.5 <= x <= W - 0.5`` and ``-0.5 <= y <= H - 0.5``. ``width_px`` is the scratch's full width
  at half maximum. Optional: ``format`` and ``version`` (checked when given), ``image`` (the
  image's file name) and ``size_px`` (``[W, H]``; both checked against the image, which catches
  a label of another or a resized image), ``note`` (free text, at the top and per scratch).
  Choice: a JSON with no scratch must say ``"clean": true``, so that an image someone has not
  labelled yet is never read as clean; ``clean`` with scratches is a contradiction and refused.
* **PNG mask** (``STEM.png``, the image's size): nonzero pixels are scratch, one channel or
  several (any nonzero channel counts); a mask without a nonzero pixel is a clean image. Masks
  are read from a labels folder only, never from beside the image: there ``STEM.png`` may be an
  image.

**Lookup** (:func:`find_label`): in the labels folder when one is given, else beside the image;
``STEM.json`` and ``STEM.png`` both there is ambiguous and refused, and so is none.

**Rasterisation** (:func:`scratch_mask`): the rule the simulator marks its truth with, so that a
real window and a simulated one are labelled alike: a pixel is scratch when its centre lies
within ``max(0.71, 1.55 sigma)`` px of the centre line, ``sigma = max(0.5, width / 2.355)`` (the
simulator's floor on sigma included). The distance is to the polyline itself, its ends
included; the simulator counts only pixels that project onto a segment, so it leaves out a cap
of about one radius beyond each end and, at a sharp bend, a wedge outside it (its vertices are
0.5 px apart, where neither matters; a person's polyline has few vertices, where the wedge
would). The simulator's fades at a scratch's ends, where it stops marking, are a person's
choice of where to end the line.

Errors (:class:`LabelError`) name the file, the field (``scratches[2].points_px[5]``) and what was
expected, and the reader collects every problem of a file before raising.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge.errors import UserError

FORMAT = "glass-inspect-darkfield-labels"
VERSION = 1
MASK_MIN_RADIUS_PX = 0.71  # the simulator's: a pixel's own centre-line distance at a diagonal
MASK_SIGMAS = 1.55  # radius in sigmas of the cross-section
FWHM_PER_SIGMA = 2.355
MIN_SIGMA_PX = 0.5  # the simulator never draws a narrower cross-section
_TOP_KEYS = {"format", "version", "image", "size_px", "clean", "scratches", "note"}
_SCRATCH_KEYS = {"points_px", "width_px", "note"}


class LabelError(UserError, ValueError):
    """A label that cannot be read or does not fit its image; the message names the file and
    the field and says what was expected."""


@dataclass(frozen=True)
class Scratch:
    points_px: np.ndarray  # (n, 2) float64 x (column), y (row); pixel centres at whole numbers
    width_px: float  # full width at half maximum of the cross-section


@dataclass(frozen=True)
class Label:
    """One image's label: a JSON's scratches (none when clean) or a PNG mask."""

    source: Path
    scratches: tuple[Scratch, ...] = ()
    pixels: np.ndarray | None = None  # a PNG mask, H x W bool
    image: str | None = None  # the image's file name, when the label says it
    size_px: tuple[int, int] | None = None  # (W, H), when the label says it

    @property
    def clean(self) -> bool:
        return not self.scratches if self.pixels is None else not self.pixels.any()

    def mask(self, shape: tuple[int, int]) -> np.ndarray:
        """The scratch pixels of an image of ``shape`` (H, W), bool."""
        if self.pixels is not None:
            if self.pixels.shape != tuple(shape):
                raise LabelError(f"{self.source}: the mask is {_wh(self.pixels.shape)} px, the "
                                 f"image {_wh(shape)} px; expected the image's size")
            return self.pixels
        return scratch_mask(self.scratches, shape)

    def check_image(self, image: Path, shape: tuple[int, int]) -> None:
        """Raise :class:`LabelError` when the label does not fit ``image`` of ``shape``
        (H, W): another name or size than it says, a point outside it, a mask of another size."""
        h, w = shape
        problems = []
        if self.image is not None and self.image != image.name:
            problems.append(f"image: {self.image!r}, but it labels {image.name!r}; expected the "
                            "image's file name")
        if self.size_px is not None and self.size_px != (w, h):
            problems.append(f"size_px: {list(self.size_px)}, but {image.name} is {w} x {h} px; "
                            "expected the image's size (a label of a resized image?)")
        if self.pixels is not None and self.pixels.shape != (h, w):
            problems.append(f"the mask is {_wh(self.pixels.shape)} px, {image.name} {w} x {h} "
                            "px; expected the image's size")
        for i, s in enumerate(self.scratches):
            x, y = s.points_px[:, 0], s.points_px[:, 1]
            out = np.flatnonzero((x < -0.5) | (x > w - 0.5) | (y < -0.5) | (y > h - 0.5))
            if out.size:
                k = int(out[0])
                problems.append(
                    f"scratches[{i}].points_px[{k}]: [{x[k]:g}, {y[k]:g}] lies outside "
                    f"{image.name} ({w} x {h} px); expected x within -0.5..{w - 0.5:g} and y "
                    f"within -0.5..{h - 0.5:g} (pixel centres at whole numbers)"
                    + (f", and {out.size - 1} more points outside" if out.size > 1 else ""))
        _raise(self.source, problems)


def _wh(shape: Sequence[int]) -> str:
    return f"{shape[1]} x {shape[0]}"


def _raise(source: Path, problems: list[str]) -> None:
    if problems:
        raise LabelError(f"{source}: " + "; ".join(problems))


def mask_radius(width_px: float) -> float:
    """How far from the centre line a pixel is scratch (module docstring)."""
    return max(MASK_MIN_RADIUS_PX, MASK_SIGMAS * max(MIN_SIGMA_PX, width_px / FWHM_PER_SIGMA))


def scratch_mask(scratches: Iterable[Scratch], shape: tuple[int, int]) -> np.ndarray:
    """The pixels of an image of ``shape`` (H, W) within :func:`mask_radius` of any scratch's
    centre line (its segments and ends), bool."""
    h, w = shape
    mask = np.zeros((h, w), bool)
    for s in scratches:
        r = mask_radius(s.width_px)
        pts = np.asarray(s.points_px, np.float64)
        if len(pts) == 1:
            pts = np.repeat(pts, 2, axis=0)
        for (ax, ay), (bx, by) in zip(pts[:-1], pts[1:], strict=True):
            c0, c1 = max(0, math.floor(min(ax, bx) - r)), min(w - 1, math.ceil(max(ax, bx) + r))
            r0, r1 = max(0, math.floor(min(ay, by) - r)), min(h - 1, math.ceil(max(ay, by) + r))
            if c0 > c1 or r0 > r1:
                continue
            yy, xx = np.mgrid[r0:r1 + 1, c0:c1 + 1]
            dx, dy = bx - ax, by - ay
            seg2 = dx * dx + dy * dy
            t = (np.clip(((xx - ax) * dx + (yy - ay) * dy) / seg2, 0.0, 1.0) if seg2 > 0
                 else np.zeros(xx.shape))
            d2 = (xx - ax - t * dx) ** 2 + (yy - ay - t * dy) ** 2
            mask[r0:r1 + 1, c0:c1 + 1] |= d2 <= r * r
    return mask


# -- reading --------------------------------------------------------------------------------
def _number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _scratch(i: int, item: object, problems: list[str]) -> Scratch | None:
    at = f"scratches[{i}]"
    if not isinstance(item, dict):
        problems.append(f"{at}: {type(item).__name__}; expected an object with points_px and "
                        "width_px")
        return None
    unknown = sorted(set(item) - _SCRATCH_KEYS)
    if unknown:
        problems.append(f"{at}: unknown field {unknown[0]!r}; expected points_px, width_px "
                        "(and note)")
    width = item.get("width_px")
    ok = True
    if "width_px" not in item:
        problems.append(f"{at}.width_px: missing; expected the scratch's width in px (full "
                        "width at half maximum), such as 2")
        ok = False
    elif not _number(width) or width <= 0:
        problems.append(f"{at}.width_px: {width!r}; expected a positive number of px")
        ok = False
    pts = item.get("points_px")
    if "points_px" not in item:
        problems.append(f"{at}.points_px: missing; expected a polyline [[x, y], ...] in px")
        return None
    if not isinstance(pts, list) or len(pts) < 2:
        problems.append(f"{at}.points_px: {_short(pts)}; expected a list of at least two "
                        "points [x, y] in px")
        return None
    for k, p in enumerate(pts):
        if not (isinstance(p, list) and len(p) == 2 and all(_number(v) for v in p)):
            problems.append(f"{at}.points_px[{k}]: {_short(p)}; expected [x, y], two finite "
                            "numbers (px)")
            return None
    return Scratch(np.array(pts, np.float64), float(width)) if ok else None


def _short(v: object) -> str:
    text = json.dumps(v) if not isinstance(v, str) else repr(v)
    return text if len(text) <= 40 else text[:37] + "..."


def parse_label(doc: object, source: Path) -> Label:
    """A label from a JSON document read from ``source`` (named in errors)."""
    if not isinstance(doc, dict):
        raise LabelError(f"{source}: a JSON {type(doc).__name__}; expected an object such as "
                         '{"scratches": [{"points_px": [[x, y], ...], "width_px": 2}]} or '
                         '{"clean": true}')
    problems = []
    unknown = sorted(set(doc) - _TOP_KEYS)
    if unknown:
        problems.append(f"unknown field {unknown[0]!r}; expected some of "
                        f"{', '.join(sorted(_TOP_KEYS))}")
    if "format" in doc and doc["format"] != FORMAT:
        problems.append(f"format: {_short(doc['format'])}; expected {FORMAT!r}")
    if "version" in doc and doc["version"] != VERSION:
        problems.append(f"version: {_short(doc['version'])}; expected {VERSION}")
    image = doc.get("image")
    if image is not None and not isinstance(image, str):
        problems.append(f"image: {_short(image)}; expected the image's file name")
    size = doc.get("size_px")
    if size is not None and not (isinstance(size, list) and len(size) == 2 and all(
            isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)):
        problems.append(f"size_px: {_short(size)}; expected [width, height], whole px")
        size = None
    clean = doc.get("clean", False)
    if not isinstance(clean, bool):
        problems.append(f"clean: {_short(clean)}; expected true or false")
        clean = False
    raw = doc.get("scratches", [])
    if not isinstance(raw, list):
        problems.append(f"scratches: {_short(raw)}; expected a list of scratches")
        raw = []
    scratches = tuple(s for i, item in enumerate(raw)
                      if (s := _scratch(i, item, problems)) is not None)
    if clean and raw:
        problems.append(f"clean: true, and {len(raw)} scratch{'es' * (len(raw) != 1)} given; "
                        "expected one or the other")
    elif not clean and not raw and not problems:
        problems.append('no scratch, and not "clean": true; expected scratches, or "clean": '
                        "true for an image without any (a label left empty is not read as "
                        "clean)")
    _raise(source, problems)
    return Label(source, scratches, image=image,
                 size_px=None if size is None else (size[0], size[1]))


def read_json_label(path: Path) -> Label:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise LabelError(f"{path}: cannot be read ({getattr(exc, 'strerror', None) or exc})"
                         ) from None
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise LabelError(f"{path}: not JSON ({exc}); expected a label document "
                         "(docs/labels_darkfield.md)") from None
    return parse_label(doc, path)


def read_mask_label(path: Path) -> Label:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            if im.format != "PNG":
                raise LabelError(f"{path}: a {im.format} file; expected a PNG mask")
            arr = np.asarray(im)
    except (OSError, UnidentifiedImageError) as exc:
        raise LabelError(f"{path}: cannot be read as a PNG mask ({exc})") from None
    if arr.ndim == 3:
        arr = arr.any(axis=2)
    return Label(path, pixels=np.ascontiguousarray(arr != 0))


def find_label(image: Path, labels_dir: Path | None = None) -> Path:
    """The label file of ``image`` (module docstring: lookup); :class:`LabelError` when there
    is none or two."""
    folder = image.parent if labels_dir is None else Path(labels_dir)
    names = [f"{image.stem}.json"]
    if labels_dir is not None and folder.resolve() != image.parent.resolve():
        names.append(f"{image.stem}.png")
    found = [folder / n for n in names if (folder / n).is_file()]
    if not found:
        where = " or ".join(str(folder / n) for n in names)
        raise LabelError(f"{image}: no label; expected {where} (an image without scratches "
                         'needs {"clean": true})')
    if len(found) > 1:
        raise LabelError(f"{image}: two labels, {found[0]} and {found[1]}; expected one: "
                         "remove the other")
    return found[0]


def read_label(image: Path, labels_dir: Path | None = None) -> Label:
    """The label of ``image``, read and checked in itself (:meth:`Label.check_image` checks
    it against the image)."""
    path = find_label(image, labels_dir)
    return read_mask_label(path) if path.suffix == ".png" else read_json_label(path)


# -- writing --------------------------------------------------------------------------------
def label_document(scratches: Sequence[Scratch], image: str | None = None,
                   size_px: tuple[int, int] | None = None, digits: int = 2) -> dict:
    """The JSON document of a label: ``{"clean": true}`` when ``scratches`` is empty."""
    doc: dict = {"format": FORMAT, "version": VERSION}
    if image is not None:
        doc["image"] = image
    if size_px is not None:
        doc["size_px"] = [int(size_px[0]), int(size_px[1])]
    if not scratches:
        doc["clean"] = True
        return doc
    doc["scratches"] = [{"points_px": [[round(float(x), digits), round(float(y), digits)]
                                       for x, y in s.points_px],
                         "width_px": round(float(s.width_px), 3)} for s in scratches]
    return doc


def write_label(path: str | Path, scratches: Sequence[Scratch], image: str | None = None,
                size_px: tuple[int, int] | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(label_document(scratches, image, size_px)) + "\n")
    return path
