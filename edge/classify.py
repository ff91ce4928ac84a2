"""Single dark-field images classified window by window (the weak-scratch paper's sliding window).

The attention fusion classifier (``model.attention``, exported by ``export.onnx`` with input
``frames`` ``N x 1 x 256 x 256`` float32 in [0, 1] and output ``logit`` ``N``) says of one
256 x 256 window whether it holds a scratch. This module runs it over whole images, through the
engine interface (:mod:`edge.engine`), without torch. Choices:

* **Reading.** TIFF (tifffile), PNG and BMP (Pillow), recognised by their first bytes, not by
  their names. The bit depth is the file's (8 or 16; a packed 12-bit TIFF says 12) unless one
  is given: 12-bit data in 16-bit words needs ``bit_depth=12``, since nothing in such a file
  says so. A given depth wider than the file's samples (12 for an 8-bit file in the same
  folder) leaves that file at its own depth. A value above ``2**bits - 1`` is an error, never
  clipped: it means the depth is wrong and every probability would be off. Pixels are scaled by
  ``2**bits - 1`` to [0, 1].
* **Colour.** An RGB image becomes grey by the ITU-R BT.601 luma (0.299 R + 0.587 G + 0.114 B),
  logged; one whose three channels are equal is read as grey. Alpha is ignored. A Bayer RAW
  mosaic (``bayer=True``, or a TIFF that says CFA) is not demosaiced: its four colour sites are
  balanced to one response, each scaled by a gain measured on the frame's own haze
  (:mod:`edge.mosaic`, which says why), so the network trained on grey frames sees a grey frame
  at full resolution; the gains go into the results. A multi-channel file cannot be a mosaic
  and is refused, and so is one of odd width or height: on an even frame every window origin
  is even, so every window starts on the same phase of the pattern.
* **Noise.** The network works in the noise units of its camera model, and a frame a few per
  cent noisier floods it with false windows (an 8-bit file's quantisation is such noise).
  Each frame's noise is measured against the model's camera and, when off by more than 3.5 %
  from the training frames', matched to them; far off (outside 0.5-2 times) the image is an
  ERROR (:mod:`edge.noise`). The ratio goes into the results.
* **Windows.** 256 x 256 px every 128 px (the paper's "redundancy" of 128), the last window of
  each row and column flush with the image's edge, so every pixel is seen and no window is
  padded (:func:`window_origins`). An image needs 256 px on each side.
* **Positive window:** ``sigmoid(logit) >= threshold``, default 0.5. The export shifts a
  classifier's logit so that 0.5 is the operating point its validation chose (best F1 on the
  validation windows; ``operating_point`` in the model's metadata, :mod:`export.onnx`), so the
  default is that point on every engine; ``--threshold`` moves it (higher: fewer false alarms).
* **Region threshold** (ours, the glass paper's T_high in spirit): one window of an image's 225
  decides its verdict, so a window-level false-alarm rate of a few per cent flags nearly every
  clean image. A region therefore counts only when its most probable window reaches the region
  threshold; the others are reported as weak and do not fail the image. The threshold is
  ``--region-threshold``, else the model's own (``region_threshold`` in its metadata, chosen on
  the validation images and written by ``glass-inspect export onnx --region-threshold``), else
  the window threshold (every region counts, the paper's rule). A TensorRT engine reads the
  metadata its sidecar copied from the ONNX model at build time (engines built before that have
  none: give the threshold on the command line, the model card says which).
* **Regions** (the paper: "the contour of all sliding windows containing scratches is the
  localized defect area"): the union of the positive windows' footprints, cut into cells by all
  window edges (128 px cells, narrower next to a flush window), split into connected components
  with 4-connectivity: windows that overlap or share an edge are one region, windows that touch
  only at a corner are two. Each region has its box, its positive-window count and the highest
  window probability in it.
* **Contour:** a boundary trace of the region's cells: a polygon along cell edges, clockwise on
  screen, collinear vertices dropped; at a corner where two cells of the region touch only
  diagonally the trace turns towards the region, which keeps it consistent with 4-connectivity.
  Holes (windows not positive, enclosed by positive ones) are traced too and listed apart.
  Coordinates are pixel edges: ``x = 256`` is the right edge of pixel 255, so a box is
  ``(x0, y0, x1, y1)`` with ``x1 - x0`` its width. With a scale (mm per px) boxes are also given
  in mm, in the image's own frame (origin at its top-left corner).
* **Verdict:** FAIL when any region remains, PASS when none; ERROR for an image that could not be
  classified (unreadable, wrong depth, too small, too dark, overexposed or flat to judge:
  :mod:`edge.exposure`; the engine failed, a non-finite logit): never PASS for an image the
  network did not see whole or cannot judge.
* **Overlay** (PNG, the image's size): the image under an asinh stretch above its median (the
  dark level; a faint scratch and saturated dust both visible), positive windows tinted red,
  region contours in yellow (weak regions are tinted and not outlined), the verdict written on
  it.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from edge import exposure
from edge.engine.base import Engine, EngineError, open_engine
from edge.frame_prep import FramePrep, PrepError
from edge.verdict import Status

log = logging.getLogger(__name__)

WINDOW = 256
STRIDE = 128
DEFAULT_THRESHOLD = 0.5
DEFAULT_BATCH = 8
DEFAULT_MODEL = "shipped:attention_fusion.onnx"
IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".bmp")
LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601
TINT = (255, 40, 40)
CONTOUR = (255, 220, 0)


class ClassifyError(ValueError):
    """One image that cannot be classified; the message names the file, the problem and what
    was expected."""


class ModelError(RuntimeError):
    """The classifier model is missing or is not a single-frame window classifier."""


def window_origins(size: int, window: int = WINDOW, stride: int | None = None) -> list[int]:
    """Window starts along one side: every ``stride`` (default half a window, the paper's 128 px
    redundancy for 256 px windows), the last one flush with the edge."""
    stride = window // 2 if stride is None else stride
    if window < 1 or stride < 1:
        raise ValueError(f"window and stride must be positive, got {window} and {stride}")
    if size < window:
        raise ValueError(f"a side of {size} px is smaller than the {window} px window")
    starts = list(range(0, size - window + 1, stride))
    if starts[-1] != size - window:
        starts.append(size - window)
    return starts


# -- reading ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Frame:
    """An image ready for the classifier: ``pixels`` H x W float32 in [0, 1]."""

    path: Path
    pixels: np.ndarray
    bit_depth: int
    file_format: str  # TIFF, PNG or BMP
    # "grey", "bayer mosaic" ("bayer mosaic, colour sites balanced" once classified) or "RGB
    # converted to grey"
    kind: str
    notes: tuple[str, ...] = ()

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) in px."""
        return self.pixels.shape[1], self.pixels.shape[0]


_MAGIC = ((b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"), (b"II+\x00", "TIFF"), (b"MM\x00+", "TIFF"),
          (b"\x89PNG\r\n\x1a\n", "PNG"), (b"BM", "BMP"))
_EXPECTED = "expected a TIFF, PNG or BMP image"


def _fail(path: Path, what: str) -> ClassifyError:
    return ClassifyError(f"{path}: {what}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _sniff(path: Path) -> str:
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except IsADirectoryError:
        raise _fail(path, f"is a folder; {_EXPECTED} file") from None
    except OSError as exc:
        raise _fail(path, f"cannot be opened ({exc.strerror or _first_line(exc)})") from None
    if not head:
        raise _fail(path, f"is empty (0 bytes); {_EXPECTED}")
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            return kind
    raise _fail(path, f"is not a TIFF, PNG or BMP image (its first bytes are {head[:4]!r}); "
                      "expected one of those, grey, RGB or a Bayer mosaic")


def _read_tiff(path: Path) -> tuple[np.ndarray, int, str, list[str]]:
    """(samples as YX or YXS, bits per sample, photometric name, notes)."""
    import tifffile

    notes = []
    with tifffile.TiffFile(path) as tf:
        if not tf.series:
            raise _fail(path, "is a TIFF file without an image")
        series = tf.series[0]
        page = getattr(series, "keyframe", None) or tf.pages[0]
        if len(tf.series) > 1:
            notes.append(f"the TIFF holds {len(tf.series)} images; the first is classified")
        arr = series.asarray()
        bits = int(page.bitspersample)
        photometric = getattr(page.photometric, "name", str(page.photometric))
        axes = series.axes
    keep = [i for i, a in enumerate(axes) if a in "YXS" or arr.shape[i] != 1]
    arr = arr.reshape([arr.shape[i] for i in keep])
    axes = "".join(axes[i] for i in keep)
    if axes == "SYX":
        arr, axes = np.moveaxis(arr, 0, -1), "YXS"
    if axes not in ("YX", "YXS"):
        raise _fail(path, f"holds {' x '.join(map(str, arr.shape))} samples (axes {axes}); "
                          "expected one frame, grey or RGB (a recorded RoI's 6 frames are "
                          "classified one frame per file)")
    if photometric == "MINISWHITE":
        arr = np.iinfo(arr.dtype).max - arr if arr.dtype.kind == "u" else arr
        notes.append("white-is-zero TIFF inverted")
    elif photometric not in ("MINISBLACK", "RGB", "CFA"):
        raise _fail(path, f"is a {photometric} TIFF; expected grey, RGB or a Bayer (CFA) "
                          "mosaic")
    return arr, bits, photometric, notes


def _read_pillow(path: Path) -> tuple[np.ndarray, int, list[str]]:
    """(samples as YX or YXS, container bits, notes)."""
    from PIL import Image

    notes = []
    with Image.open(path) as im:
        im.load()
        mode = im.mode
        if mode == "1":
            return np.asarray(im.convert("L")), 8, ["1-bit image read as 0 / 255"]
        if mode in ("L", "LA"):
            if mode == "LA":
                notes.append("alpha channel ignored")
            return np.asarray(im.getchannel("L")), 8, notes
        if mode.startswith("I;16"):
            return np.asarray(im).astype(np.uint16), 16, notes
        if mode == "I":  # 16-bit PNG in Pillow versions without I;16
            arr = np.asarray(im)
            if arr.size and (arr.min() < 0 or arr.max() > 0xFFFF):
                raise _fail(path, "holds 32-bit integers; expected 8- or 16-bit samples")
            return arr.astype(np.uint16), 16, notes
        if mode == "F":
            raise _fail(path, "holds floating-point samples; expected 8-, 12- or 16-bit "
                              "unsigned integers")
        if mode in ("RGBA", "PA", "LA") or "transparency" in im.info:
            notes.append("alpha channel ignored")
        return np.asarray(im.convert("RGB")), 8, notes


TWELVE_BIT_TOP = 4095


def read_image(path: str | Path, bit_depth: int | None = None, bayer: bool = False) -> Frame:
    """Read and scale one image; raises :class:`ClassifyError` saying what is wrong with it."""
    path = Path(path)
    kind = _sniff(path)
    try:
        if kind == "TIFF":
            raw, bits, photometric, notes = _read_tiff(path)
        else:
            raw, bits, notes = _read_pillow(path)
            photometric = "RGB" if raw.ndim == 3 else "MINISBLACK"
    except ClassifyError:
        raise
    except MemoryError:
        raise _fail(path, "is too large to read into memory") from None
    except Exception as exc:  # tifffile and Pillow raise many kinds on a damaged file
        raise _fail(path, f"cannot be read as a {kind} image ({_first_line(exc)}); the file "
                          "is truncated or damaged") from None
    if raw.dtype not in (np.uint8, np.uint16):
        raise _fail(path, f"holds {raw.dtype} samples; expected 8-, 12- or 16-bit unsigned "
                          "integers")
    if raw.size == 0:
        raise _fail(path, "holds an empty image (0 px)")
    container = min(bits, 8 * raw.dtype.itemsize)
    if bit_depth is not None and not 1 <= bit_depth <= 16:
        raise _fail(path, f"bit depth {bit_depth} asked for; expected 1 to 16")
    depth = container if bit_depth is None else min(bit_depth, container)
    if bit_depth is not None and bit_depth > container:
        # an 8-bit file in a folder of 12-bit ones: it cannot hold more than its own bits
        notes.append(f"{container}-bit file read as {container}-bit, not {bit_depth}-bit")
    top = (1 << depth) - 1
    peak = int(raw.max())
    if peak > top:
        raise _fail(path, f"holds the value {peak}, above {top}, the largest {depth}-bit "
                          f"value; expected {depth}-bit data (is the bit depth right? the file "
                          f"stores up to {container} bits)")
    if bit_depth is None and container == 16 and 0 < peak <= TWELVE_BIT_TOP:
        # nothing in such a file says 12 bits, and read as 16 every pixel is 16 times too dark
        notes.append(f"no value above {TWELVE_BIT_TOP}: 12-bit data in 16-bit words? if so, "
                     "give the bit depth 12 (--bit-depth 12); read as 16-bit")
    if raw.ndim == 3:
        channels = raw.shape[2]
        if bayer:
            raise _fail(path, f"has {channels} channels; a Bayer RAW mosaic has one (raw sensor "
                              "values, not demosaiced): leave out the Bayer option to classify "
                              "it converted to grey")
        if channels in (2, 4):
            notes.append("alpha channel ignored")
        rgb = raw[..., :3]
        if channels < 3:
            image_kind = "grey"
            pixels = raw[..., 0].astype(np.float32) / np.float32(top)
        elif (np.array_equal(rgb[..., 0], rgb[..., 1])
              and np.array_equal(rgb[..., 1], rgb[..., 2])):
            image_kind = "grey"
            notes.append("RGB with equal channels, read as grey")
            pixels = rgb[..., 0].astype(np.float32) / np.float32(top)
        else:
            image_kind = "RGB converted to grey"
            luma = sum(w * rgb[..., c].astype(np.float32) for c, w in enumerate(LUMA))
            pixels = (luma / np.float32(top)).astype(np.float32)
            notes.append("RGB image converted to grey (0.299 R + 0.587 G + 0.114 B)")
    else:
        image_kind = "bayer mosaic" if bayer or photometric == "CFA" else "grey"
        pixels = raw.astype(np.float32) / np.float32(top)
    h, w = pixels.shape
    if h < WINDOW or w < WINDOW:
        raise _fail(path, f"is {w} x {h} px; the classifier's window is {WINDOW} x {WINDOW} px, "
                          f"so an image needs at least {WINDOW} px on each side")
    if image_kind == "bayer mosaic" and (h % 2 or w % 2):
        # window origins (multiples of 128, the last flush) are even only on an even frame, so
        # that every window starts on the same phase of the pattern, as in training
        raise _fail(path, f"is a {w} x {h} px Bayer mosaic; expected an even width and height "
                          "(whole 2 x 2 cells)")
    return Frame(path, np.ascontiguousarray(pixels), depth, kind, image_kind, tuple(notes))


# -- inputs -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Input:
    """One item to classify: an image path, or a problem found before reading (no such path, a
    folder without images)."""

    path: Path
    problem: str = ""


def collect_inputs(paths: Iterable[str | Path]) -> list[Input]:
    """Files as given; folders expanded to their image files (by suffix, sorted by name, not
    recursive). A path named twice is classified once."""
    items: list[Input] = []
    seen: set[Path] = set()

    def add(p: Path, problem: str = "") -> None:
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            items.append(Input(p, problem))

    for arg in paths:
        p = Path(arg).expanduser()
        if p.is_dir():
            files = sorted((f for f in p.iterdir() if f.is_file() and not f.name.startswith(".")),
                           key=lambda f: f.name)
            images = [f for f in files if f.suffix.lower() in IMAGE_SUFFIXES]
            if not images:
                add(p, f"{p}: folder holds no image files; expected "
                       f"{', '.join(IMAGE_SUFFIXES)} files")
                continue
            if len(images) < len(files):
                log.info("%s: %d image files (%d other files skipped)", p, len(images),
                         len(files) - len(images))
            for f in images:
                add(f)
        elif p.exists():
            add(p)
        else:
            add(p, f"{p}: no such file or folder; expected an image file or a folder of them")
    return items


# -- regions ------------------------------------------------------------------------------------
Point = tuple[int, int]


@dataclass(frozen=True)
class Region:
    """Positive windows merged: box and contour in px (pixel edges), window count, peak."""

    windows: int
    max_probability: float
    box_px: tuple[int, int, int, int]
    contour_px: tuple[Point, ...]
    holes_px: tuple[tuple[Point, ...], ...] = ()

    def box_mm(self, mm_per_px: tuple[float, float] | None) -> tuple[float, ...] | None:
        if mm_per_px is None:
            return None
        sx, sy = mm_per_px
        x0, y0, x1, y1 = self.box_px
        return (x0 * sx, y0 * sy, x1 * sx, y1 * sy)

    def to_dict(self, mm_per_px: tuple[float, float] | None = None) -> dict:
        mm = self.box_mm(mm_per_px)
        return {"windows": self.windows, "max_probability": round(self.max_probability, 6),
                "box_px": list(self.box_px),
                "box_mm": None if mm is None else [round(v, 4) for v in mm],
                "contour_px": [list(p) for p in self.contour_px],
                "holes_px": [[list(p) for p in hole] for hole in self.holes_px]}


def _edges(origins: Sequence[int], window: int) -> list[int]:
    return sorted(set(origins) | {o + window for o in origins})


def _components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """4-connected labels of a small boolean grid (1, 2, ...; 0 outside)."""
    labels = np.zeros(mask.shape, np.int32)
    count = 0
    rows, cols = mask.shape
    for r0, c0 in zip(*np.nonzero(mask), strict=True):
        if labels[r0, c0]:
            continue
        count += 1
        labels[r0, c0] = count
        stack = [(r0, c0)]
        while stack:
            r, c = stack.pop()
            for rr, cc in ((r - 1, c), (r + 1, c), (r, c - 1), (r, c + 1)):
                if 0 <= rr < rows and 0 <= cc < cols and mask[rr, cc] and not labels[rr, cc]:
                    labels[rr, cc] = count
                    stack.append((rr, cc))
    return labels, count


_RIGHT_TURN = {(1, 0): (0, 1), (0, 1): (-1, 0), (-1, 0): (0, -1), (0, -1): (1, 0)}


def _trace(mask: np.ndarray) -> list[list[Point]]:
    """Boundary loops of a boolean cell grid, in vertex (cell-edge index) coordinates, each
    clockwise on screen around the cells (holes the other way), collinear vertices dropped."""
    rows, cols = mask.shape
    padded = np.zeros((rows + 2, cols + 2), bool)
    padded[1:-1, 1:-1] = mask
    out: dict[Point, list[Point]] = {}

    def edge(a: Point, b: Point) -> None:
        out.setdefault(a, []).append(b)

    for r, c in zip(*np.nonzero(mask), strict=True):
        pr, pc = r + 1, c + 1
        if not padded[pr - 1, pc]:
            edge((c, r), (c + 1, r))
        if not padded[pr, pc + 1]:
            edge((c + 1, r), (c + 1, r + 1))
        if not padded[pr + 1, pc]:
            edge((c + 1, r + 1), (c, r + 1))
        if not padded[pr, pc - 1]:
            edge((c, r + 1), (c, r))
    loops = []
    while out:
        # start where the way on is unambiguous, so the corner rule below decides every turn
        single = [v for v, targets in out.items() if len(targets) == 1]
        start = min(single) if single else min(out)
        loop, here, heading = [start], start, None
        while True:
            targets = out[here]
            nxt = targets[0]
            if len(targets) > 1 and heading is not None:
                # two cells touching only at this corner: turn towards the cell we came along
                want = _RIGHT_TURN[heading]
                nxt = next((t for t in targets if (t[0] - here[0], t[1] - here[1]) == want),
                           nxt)
            targets.remove(nxt)
            if not targets:
                del out[here]
            heading = (nxt[0] - here[0], nxt[1] - here[1])
            here = nxt
            if here == start:
                break
            loop.append(here)
        loops.append(_simplify(loop))
    return loops


def _simplify(loop: list[Point]) -> list[Point]:
    n = len(loop)
    keep = []
    for i, (x, y) in enumerate(loop):
        (ax, ay), (bx, by) = loop[i - 1], loop[(i + 1) % n]
        if (x - ax) * (by - y) - (y - ay) * (bx - x) != 0:
            keep.append((x, y))
    return keep


def _area2(poly: Sequence[Point]) -> int:
    return sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(poly, [*poly[1:], poly[0]],
                                                                 strict=True))


def merge_windows(positive: np.ndarray, probability: np.ndarray, ys: Sequence[int],
                  xs: Sequence[int], window: int = WINDOW) -> list[Region]:
    """Regions of the positive windows (``positive`` and ``probability``: rows ``ys`` x columns
    ``xs`` of window origins), ordered by their top-left corner."""
    ye, xe = _edges(ys, window), _edges(xs, window)
    yi = {v: i for i, v in enumerate(ye)}
    xi = {v: i for i, v in enumerate(xe)}
    cells = np.zeros((len(ye) - 1, len(xe) - 1), bool)
    wins = list(zip(*np.nonzero(positive), strict=True))
    for r, c in wins:
        cells[yi[ys[r]]:yi[ys[r] + window], xi[xs[c]]:xi[xs[c] + window]] = True
    labels, count = _components(cells)
    members: dict[int, list[tuple[int, int]]] = {k: [] for k in range(1, count + 1)}
    for r, c in wins:
        members[int(labels[yi[ys[r]], xi[xs[c]]])].append((r, c))
    regions = []
    for k, own in members.items():
        loops = [[(xe[vx], ye[vy]) for vx, vy in loop] for loop in _trace(labels == k)]
        loops.sort(key=_area2, reverse=True)
        x0 = min(xs[c] for _, c in own)
        y0 = min(ys[r] for r, _ in own)
        x1 = max(xs[c] for _, c in own) + window
        y1 = max(ys[r] for r, _ in own) + window
        regions.append(Region(
            windows=len(own), max_probability=float(max(probability[r, c] for r, c in own)),
            box_px=(x0, y0, x1, y1), contour_px=tuple(loops[0]),
            holes_px=tuple(tuple(h) for h in loops[1:])))
    regions.sort(key=lambda g: (g.box_px[1], g.box_px[0]))
    return regions


# -- classifying --------------------------------------------------------------------------------
def sigmoid(x: np.ndarray) -> np.ndarray:
    """Without overflow for any logit."""
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(x, np.float64)))


@dataclass
class ImageResult:
    """What one image gave; ``error`` set (and the verdict ERROR) when it could not be
    classified."""

    path: Path
    verdict: Status
    seconds: float = 0.0
    error: str = ""
    frame: Frame | None = None
    ys: list[int] = field(default_factory=list)
    xs: list[int] = field(default_factory=list)
    probability: np.ndarray | None = None  # rows ys x columns xs
    threshold: float = DEFAULT_THRESHOLD
    regions: list[Region] = field(default_factory=list)
    mm_per_px: tuple[float, float] | None = None
    overlay: Path | None = None
    region_threshold: float | None = None  # None: the window threshold
    weak_regions: int = 0  # regions of positive windows none of which reached region_threshold
    site_gains: np.ndarray | None = None  # a Bayer mosaic's 2 x 2 site gains (edge.mosaic)
    noise_ratio: float | None = None  # the frame's noise over the model's camera (edge.noise)
    noise_matched: bool = False  # whether the frame's noise was matched to the model's
    haze: float | None = None  # its median above black, of full scale (edge.exposure)

    @property
    def windows(self) -> int:
        return 0 if self.probability is None else int(self.probability.size)

    @property
    def positive(self) -> np.ndarray:
        if self.probability is None:
            return np.zeros((0, 0), bool)
        return self.probability >= self.threshold

    @property
    def positives(self) -> int:
        return int(self.positive.sum())

    def summary(self) -> str:
        if self.verdict is Status.ERROR:
            return f"{self.path}: ERROR: {self.error}"
        n = len(self.regions)
        weak = (f", {self.weak_regions} weak region{'s' * (self.weak_regions != 1)} below p "
                f"{self.region_threshold:g} ignored" if self.weak_regions else "")
        noisy = (f", its noise matched ({self.noise_ratio:.2f} times the model camera's)"
                 if self.noise_matched else "")
        return (f"{self.path}: {self.verdict.value}, {n} region{'s' * (n != 1)} "
                f"({self.positives} of {self.windows} windows positive{weak}){noisy}, "
                f"{self.seconds:.2f} s")

    def region_lines(self) -> list[str]:
        lines = []
        for k, g in enumerate(self.regions, 1):
            x0, y0, x1, y1 = g.box_px
            text = (f"  region {k}: {g.windows} window{'s' * (g.windows != 1)}, p max "
                    f"{g.max_probability:.3f}, x {x0}-{x1} y {y0}-{y1} px")
            mm = g.box_mm(self.mm_per_px)
            if mm is not None:
                text += f" (x {mm[0]:.2f}-{mm[2]:.2f} y {mm[1]:.2f}-{mm[3]:.2f} mm)"
            lines.append(text)
        return lines

    def to_dict(self) -> dict:
        f = self.frame
        entry = {
            "path": str(self.path), "verdict": self.verdict.value,
            "seconds": round(self.seconds, 4), "error": self.error or None,
            "size_px": None if f is None else list(f.size),
            "bit_depth": None if f is None else f.bit_depth,
            "image": None if f is None else f.kind,
            "notes": [] if f is None else list(f.notes),
            "windows": self.windows if self.probability is not None else None,
            "positives": self.positives if self.probability is not None else None,
            "threshold": self.threshold,
            "region_threshold": self.region_threshold,
            "weak_regions": self.weak_regions,
            "site_gains": (None if self.site_gains is None
                           else [[round(float(g), 4) for g in row] for row in self.site_gains]),
            "noise_ratio": None if self.noise_ratio is None else round(self.noise_ratio, 4),
            "noise_matched": self.noise_matched,
            "haze": None if self.haze is None else round(self.haze, 4),
            "positive_windows": [],
            "regions": [g.to_dict(self.mm_per_px) for g in self.regions],
            "overlay": None if self.overlay is None else str(self.overlay),
        }
        if self.probability is not None:
            entry["positive_windows"] = [
                {"x": self.xs[c], "y": self.ys[r],
                 "probability": round(float(self.probability[r, c]), 6)}
                for r, c in zip(*np.nonzero(self.positive), strict=True)]
        return entry


def _model_region_threshold(engine: Engine) -> tuple[float | None, str]:
    """The region threshold the model file carries (``region_threshold`` in an ONNX model's
    metadata, :mod:`export.onnx`) and where it came from; (None, ...) when it has none."""
    meta = engine.metadata
    text = meta.get("region_threshold")
    if text in (None, "", "null"):
        return None, ("none in the model" if meta else
                      "none (the engine carries no metadata: rebuild it, or give "
                      "--region-threshold)")
    try:
        value = float(text)
    except ValueError:
        raise ModelError(f"{engine.path.name}: its region_threshold {text!r} is not a "
                         "number") from None
    if not 0.0 <= value <= 1.0:
        raise ModelError(f"{engine.path.name}: its region_threshold {value} is outside [0, 1]")
    return value, "the model's"


def resolve_model(spec: str | Path) -> Path:
    """``shipped:NAME`` (a file in ``edge/models``, as a head file names its artifact) or a path;
    a missing file says how to make one."""
    from edge import config

    text = str(spec)
    path = (config.shipped(text[len(config.SHIPPED):]) if text.startswith(config.SHIPPED)
            else Path(text).expanduser())
    if not path.is_file():
        what = (f"the shipped classifier {text} ({path}) is not there: none is shipped yet"
                if text.startswith(config.SHIPPED) else f"model {path} does not exist")
        raise ModelError(
            f"{what}. Make one: 'glass-inspect train --network fusion --data darkfield --out "
            "runs/fusion' (the attention fusion network on single-frame dark-field windows), "
            "'glass-inspect export onnx runs/fusion/best.pt --out FILE.onnx', and pass --model "
            "FILE.onnx (or copy it to edge/models/attention_fusion.onnx)")
    return path


class Classifier:
    """A window classifier on an engine: logits of every window of an image, then regions."""

    def __init__(self, engine: Engine, threshold: float = DEFAULT_THRESHOLD,
                 batch: int = DEFAULT_BATCH, region_threshold: float | None = None):
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be within [0, 1], got {threshold}")
        self.region_threshold_source = "given"
        if region_threshold is None:
            region_threshold, self.region_threshold_source = _model_region_threshold(engine)
        if region_threshold is not None and not threshold <= region_threshold <= 1.0:
            raise ValueError(f"the region threshold must be within [threshold {threshold:g}, 1], "
                             f"got {region_threshold:g}")
        self.region_threshold = region_threshold
        if batch < 1:
            raise ValueError(f"batch must be at least 1, got {batch}")
        spec_in, spec_out = engine.input, engine.output
        shape = spec_in.shape
        ok_in = (len(shape) == 4 and shape[1] == 1
                 and all(d in (None, WINDOW) for d in shape[2:]))
        if not ok_in or len(spec_out.shape) != 1:
            raise ModelError(
                f"{engine.path.name} takes {spec_in.describe()} and gives "
                f"{spec_out.describe()}; expected the single-frame window classifier: input "
                f"N x 1 x {WINDOW} x {WINDOW}, one logit per window (N)")
        self.engine = engine
        self.threshold = threshold
        self.prep = FramePrep.for_model(engine.metadata, f"the model {engine.path.name}")
        self.batch = min(batch, engine.max_batch)
        self._buf = np.empty((self.batch, 1, WINDOW, WINDOW), spec_in.dtype)

    @classmethod
    def open(cls, model: str | Path = DEFAULT_MODEL, threshold: float = DEFAULT_THRESHOLD,
             batch: int = DEFAULT_BATCH, threads: int = 0, backend: str = "auto",
             region_threshold: float | None = None) -> Classifier:
        engine = open_engine(resolve_model(model), backend, threads=threads, max_batch=batch)
        try:
            return cls(engine, threshold, batch, region_threshold)
        except Exception:
            engine.close()
            raise

    @property
    def identity(self) -> dict:
        return self.engine.identity

    def close(self) -> None:
        self.engine.close()

    def __enter__(self) -> Classifier:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def logits(self, pixels: np.ndarray) -> tuple[list[int], list[int], np.ndarray]:
        """Window origins (rows, columns) and the logit of every window, rows x columns."""
        h, w = pixels.shape
        ys, xs = window_origins(h), window_origins(w)
        origins = [(y, x) for y in ys for x in xs]
        logits = np.empty(len(origins), np.float32)
        buf = self._buf
        for start in range(0, len(origins), self.batch):
            chunk = origins[start:start + self.batch]
            for k, (y, x) in enumerate(chunk):
                buf[k, 0] = pixels[y:y + WINDOW, x:x + WINDOW]
            # the engine's output buffer is reused by its next call: copy out now
            logits[start:start + len(chunk)] = self.engine.infer(buf[:len(chunk)])
        return ys, xs, logits.reshape(len(ys), len(xs))

    def classify(self, frame: Frame, mm_per_px: tuple[float, float] | None = None
                 ) -> ImageResult:
        t0 = time.perf_counter()
        bayer = frame.kind == "bayer mosaic"
        try:
            prep = self.prep(frame.pixels, bayer)
        except PrepError as exc:
            raise _fail(frame.path, str(exc)) from None
        if bayer:
            log.info("%s: Bayer colour sites balanced, gains %s (row by row, brightest 1)",
                     frame.path, " ".join(f"{g:.3f}" for g in prep.site_gains.ravel()))
            frame = replace(frame, kind="bayer mosaic, colour sites balanced")
        if prep.noise_matched:
            log.info("%s: noise %.2f times the classifier's camera model: matched to its "
                     "training frames'", frame.path, prep.noise_ratio)
        if prep.haze is not None and prep.haze > exposure.BRIGHT_HAZE:
            log.warning("%s: haze %.0f %% of full scale, brighter than %.0f %%: the classifier "
                        "fails about three times as many clean parts in such light (model card); "
                        "check the region threshold on clean parts", frame.path,
                        100 * prep.haze, 100 * exposure.BRIGHT_HAZE)
        frame = replace(frame, pixels=prep.pixels)
        ys, xs, logits = self.logits(frame.pixels)
        if not np.all(np.isfinite(logits)):
            raise _fail(frame.path, f"the model gave {int(np.sum(~np.isfinite(logits)))} "
                                    "non-finite logits; expected finite numbers (a broken "
                                    "model or engine)")
        prob = sigmoid(logits)
        positive = prob >= self.threshold
        found = merge_windows(positive, prob, ys, xs)
        top = self.threshold if self.region_threshold is None else self.region_threshold
        regions = [g for g in found if g.max_probability >= top]
        return ImageResult(frame.path, Status.FAIL if regions else Status.PASS,
                           time.perf_counter() - t0, frame=frame, ys=ys, xs=xs,
                           probability=prob, threshold=self.threshold, regions=regions,
                           mm_per_px=mm_per_px, region_threshold=self.region_threshold,
                           weak_regions=len(found) - len(regions),
                           site_gains=prep.site_gains, noise_ratio=prep.noise_ratio,
                           haze=prep.haze,
                           noise_matched=prep.noise_matched)


def classify_inputs(items: Sequence[Input], classifier: Classifier, *,
                    bit_depth: int | None = None, bayer: bool = False,
                    mm_per_px: tuple[float, float] | None = None,
                    overlay_dir: str | Path | None = None) -> Iterator[ImageResult]:
    """One result per item, in order; an image that fails gives an ERROR result and the rest
    go on."""
    names: set[str] = set()
    for item in items:
        t0 = time.perf_counter()
        if item.problem:
            yield ImageResult(item.path, Status.ERROR, error=item.problem,
                              threshold=classifier.threshold)
            continue
        try:
            frame = read_image(item.path, bit_depth, bayer)
            for note in frame.notes:
                log.info("%s: %s", item.path, note)
            result = classifier.classify(frame, mm_per_px)
            if overlay_dir is not None:
                result.overlay = write_overlay(_overlay_path(Path(overlay_dir), item.path, names),
                                               result)
        except ClassifyError as exc:
            result = ImageResult(item.path, Status.ERROR, error=str(exc),
                                 threshold=classifier.threshold)
        except EngineError as exc:
            result = ImageResult(item.path, Status.ERROR, threshold=classifier.threshold,
                                 error=f"{item.path}: the engine failed ({exc})")
        except OSError as exc:  # the overlay folder: full, read-only, ...
            result = ImageResult(item.path, Status.ERROR, threshold=classifier.threshold,
                                 error=f"{item.path}: overlay not written "
                                       f"({exc.strerror or _first_line(exc)}: "
                                       f"{exc.filename or overlay_dir})")
        result.seconds = time.perf_counter() - t0
        yield result


def _overlay_path(folder: Path, image: Path, taken: set[str]) -> Path:
    name, k = f"{image.stem}.png", 1
    while name in taken:  # same stem from two folders or two formats
        k += 1
        name = f"{image.stem}_{k}.png"
    taken.add(name)
    return folder / name


def classify_paths(paths: Iterable[str | Path], classifier: Classifier,
                   on_result: Callable[[ImageResult], None] | None = None,
                   **options) -> list[ImageResult]:
    """Files and folders to results (see :func:`classify_inputs` for ``options``)."""
    results = []
    for r in classify_inputs(collect_inputs(paths), classifier, **options):
        results.append(r)
        if on_result is not None:
            on_result(r)
    return results


def report(results: Sequence[ImageResult], classifier: Classifier | None = None,
           mm_per_px: tuple[float, float] | None = None) -> dict:
    """The JSON document: settings, counts, one entry per image."""
    counts = {s.value: sum(r.verdict is s for r in results) for s in Status}
    return {
        "format": "glass-inspect-classify", "version": 1,
        "model": None if classifier is None else classifier.identity,
        "threshold": None if classifier is None else classifier.threshold,
        "region_threshold": None if classifier is None else classifier.region_threshold,
        "window": WINDOW, "stride": STRIDE,
        "mm_per_px": None if mm_per_px is None else list(mm_per_px),
        "counts": counts,
        "images": [r.to_dict() for r in results],
    }


def write_json(path: str | Path, results: Sequence[ImageResult],
               classifier: Classifier | None = None,
               mm_per_px: tuple[float, float] | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report(results, classifier, mm_per_px), indent=1) + "\n")
    return path


# -- overlay ------------------------------------------------------------------------------------
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
