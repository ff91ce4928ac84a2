"""Reading single dark-field images for the window classifier: files to grey [0, 1] frames.

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
  (:mod:`edge.darkfield.mosaic`, which says why), so the network trained on grey frames sees a grey
  frame at full resolution; the gains go into the results. A multi-channel file cannot be a mosaic
  and is refused, and so is one of odd width or height: on an even frame every window origin
  is even, so every window starts on the same phase of the pattern.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge.darkfield.windows import WINDOW

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".bmp")
LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601


class ClassifyError(ValueError):
    """One image that cannot be classified; the message names the file, the problem and what
    was expected."""


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
