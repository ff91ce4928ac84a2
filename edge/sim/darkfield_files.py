"""Simulated single-image dark-field frames (:mod:`edge.sim.darkfield`) written as image files,
for ``glass-inspect classify`` demos and tests: ``glass-inspect simulate-darkfield``.

* **Files.** One image per seed, named for what it holds: ``darkfield-0003-scratched.tiff``
  (rendered with the configuration's scratch share, 1.0 by default: every such frame has
  scratches), ``darkfield-0004-clean.tiff`` (rendered with ``scratch_share=0.0``: the same kind
  of glass, haze, dust and noise, no scratch). A frame without scratches is named ``clean``
  whichever way it was rendered.
* **Encoding** (tifffile and Pillow, never a hand-written encoder). TIFF: 8-bit data as 8-bit
  samples; 12- and 16-bit data as 16-bit samples, the 12 bits in the low bits of each word (what
  a camera writes; nothing in the file says 12, so ``classify`` needs ``--bit-depth 12``). A
  Bayer frame is a CFA TIFF with its GRBG pattern (CFARepeatPatternDim and CFAPattern tags).
  PNG: 8-bit data as mode L, 12- and 16-bit data as 16-bit grey, the same rule.
* **Truth** (``truth.json``): per file its seed, bit depth, sample bits, mosaic, label, the
  scratches (length, peak DN above the background at the frame's bit depth, width, chain) and the
  number of mask (scratch) pixels; the broken files with the reason they are broken. It is
  written last: a complete ``truth.json`` means a complete set.
* **Broken files** (``broken=True``), for demos and tests of error handling:
  ``broken-truncated.tiff``, the first frame as a TIFF cut to half its bytes, and
  ``broken-too-small.png``, its top-left 100 x 100 px, smaller than one 256 px window.
* **Writing** is atomic per file: a hidden temporary file in the same folder (``.NAME.*.part``,
  which ``classify`` skips: it starts with a dot and has no image suffix), renamed over the
  name when complete, so a half-written file never looks complete. Files an earlier run listed
  in ``truth.json`` that this run does not write again are removed, so the folder holds one set.
"""

from __future__ import annotations

import errno
import io
import json
import logging
import os
import secrets
from collections.abc import Collection, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from edge.sim.darkfield import (
    DARKFIELD_VERSION,
    FRAME_PX,
    DarkfieldConfig,
    DarkfieldFrame,
    DarkfieldRenderer,
    check_seed,
    frames_at,
)

log = logging.getLogger(__name__)

FORMATS = ("tiff", "png")
TRUTH = "truth.json"
TRUTH_FORMAT = "glass-inspect-darkfield-files"
MIN_SIDE_PX = 256  # one classifier window (edge.darkfield.classify.WINDOW)
TRUNCATED = "broken-truncated.tiff"
TOO_SMALL = "broken-too-small.png"
TOO_SMALL_PX = 100
# GRBG: the 2 x 2 cell's colours row by row, TIFF/EP CFAPattern codes (0 red, 1 green, 2 blue)
_GRBG = bytes([1, 0, 2, 1])
_PROGRESS_FROM = 3  # frames from which a progress bar is shown


def darkfield_config(frame_px: int = FRAME_PX, bit_depth: int = 12,
                     bayer: bool = False, texture: str = "none") -> DarkfieldConfig:
    """The frames the classifier is trained and evaluated on (:func:`frames_at`) at a side of
    ``frame_px``, ``bit_depth`` bits, grey or a GRBG mosaic, with a ``texture`` family of
    :mod:`edge.sim.darkfield_texture`."""
    if isinstance(frame_px, bool) or not isinstance(frame_px, int) or frame_px < MIN_SIDE_PX:
        raise ValueError(f"frame size must be an even number of at least {MIN_SIDE_PX} px, "
                         f"got {frame_px!r}")
    return replace(frames_at(frame_px, texture), bit_depth=bit_depth, bayer=bayer)


def frame_name(seed: int, scratched: bool, fmt: str) -> str:
    return f"darkfield-{seed:04d}-{'scratched' if scratched else 'clean'}.{fmt}"


def container_bits(bit_depth: int) -> int:
    """Bits per sample in the file: 8 for 8-bit data, else 16."""
    return 8 if bit_depth <= 8 else 16


def _samples(image: np.ndarray, bit_depth: int) -> np.ndarray:
    return image.astype(np.uint8) if container_bits(bit_depth) == 8 else image.astype(np.uint16)


def encode(image: np.ndarray, fmt: str, bit_depth: int, bayer: bool = False) -> bytes:
    """One frame (uint16 at ``bit_depth``) as the bytes of a TIFF or PNG file."""
    buf = io.BytesIO()
    data = _samples(image, bit_depth)
    if fmt == "tiff":
        import tifffile

        if bayer:
            tifffile.imwrite(buf, data, photometric="cfa", metadata=None,
                             extratags=[(33421, "H", 2, (2, 2), False),  # CFARepeatPatternDim
                                        (33422, "B", 4, _GRBG, False)])  # CFAPattern
        else:
            tifffile.imwrite(buf, data, photometric="minisblack", metadata=None)
    elif fmt == "png":
        from PIL import Image

        # uint8 -> mode L; uint16 -> mode I;16, saved as 16-bit grey
        Image.fromarray(data).save(buf, format="PNG")
    else:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    return buf.getvalue()


def write_atomic(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a hidden temporary file in the same folder, renamed
    over ``path`` when complete."""
    # not tempfile.mkstemp: its files are private (0600); this one gets the umask's permissions
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.part")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def frame_truth(name: str, frame: DarkfieldFrame, clean: bool) -> dict:
    cfg = frame.config
    return {
        "file": name, "broken": False,
        "label": "scratched" if frame.scratches else "clean",
        "seed": frame.seed, "bit_depth": cfg.bit_depth,
        "sample_bits": container_bits(cfg.bit_depth),
        "bayer": "GRBG" if cfg.bayer else None,
        "size_px": [cfg.shape[1], cfg.shape[0]],
        "scratch_share": 0.0 if clean else cfg.scratch_share,
        "scratch_count": len(frame.scratches),
        "scratches": [{"length_px": round(s.length_px, 2), "peak_dn": round(s.peak_dn, 2),
                       "width_px": round(s.width_px, 3), "chain": s.chain}
                      for s in frame.scratches],
        "mask_pixels": int(np.count_nonzero(frame.mask)),
    }


def _describe(entry: dict) -> str:
    n = entry["scratch_count"]
    what = ", ".join(f"{s['length_px']:.0f} px at {s['peak_dn']:.0f} DN"
                     for s in entry["scratches"])
    scratches = f"{n} scratch{'es' * (n != 1)} ({what})" if n else "no scratch"
    kind = "GRBG mosaic" if entry["bayer"] else "grey"
    return (f"seed {entry['seed']}, {entry['bit_depth']}-bit {kind}, {scratches}, "
            f"{entry['mask_pixels']} mask px")


def _previous_files(out_dir: Path) -> list[str]:
    """Files an earlier run listed in ``truth.json`` (plain names in ``out_dir`` only)."""
    try:
        doc = json.loads((out_dir / TRUTH).read_text())
        if doc.get("format") != TRUTH_FORMAT:
            return []
        names = [e["file"] for e in doc["files"]]
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return []
    return [n for n in names if isinstance(n, str) and n and Path(n).name == n
            and n not in (".", "..", TRUTH)]


def write_darkfield_frames(out_dir: str | Path, seeds: Sequence[int],
                           config: DarkfieldConfig | None = None, fmt: str = "tiff",
                           clean_seeds: Collection[int] = (), broken: bool = False,
                           progress: bool = True) -> list[Path]:
    """Render one frame per seed with ``config`` (default: :func:`darkfield_config`), those in
    ``clean_seeds`` with ``scratch_share=0.0``, and write them into ``out_dir`` as ``fmt``
    (``"tiff"`` or ``"png"``), with ``truth.json`` and, with ``broken``, the two broken files.
    Returns the image files written, frames first, in seed order; ``truth.json`` is
    ``out_dir / TRUTH``."""
    cfg = config if config is not None else darkfield_config()
    seeds = [check_seed(s) for s in seeds]
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    if not seeds:
        raise ValueError("no seeds: give at least one frame to render")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct (one file per seed), got {seeds}")
    clean = {check_seed(s, "clean seed") for s in clean_seeds}
    if not clean <= set(seeds):
        raise ValueError(f"clean seeds {sorted(clean - set(seeds))} are not among the seeds")
    h, w = cfg.shape
    if h < MIN_SIDE_PX or w < MIN_SIDE_PX:
        raise ValueError(f"frames of {w} x {h} px are smaller than one {MIN_SIDE_PX} px "
                         "classifier window")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "it is a file, not a folder", str(out))
    out.mkdir(parents=True, exist_ok=True)
    stale = _previous_files(out)

    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    renderers = {False: DarkfieldRenderer(cfg)}
    if clean:
        renderers[True] = DarkfieldRenderer(replace(cfg, scratch_share=0.0))
    written: list[Path] = []
    entries: list[dict] = []
    first: np.ndarray | None = None
    with logging_redirect_tqdm():
        bar = tqdm(seeds, desc="rendering dark-field frames", unit="frame", leave=False,
                   disable=not progress or len(seeds) < _PROGRESS_FROM)
        for seed in bar:
            is_clean = seed in clean
            frame = renderers[is_clean].render(seed)
            name = frame_name(seed, bool(frame.scratches), fmt)
            write_atomic(out / name, encode(frame.image, fmt, cfg.bit_depth, cfg.bayer))
            entry = frame_truth(name, frame, is_clean)
            log.info("%s: %s", out / name, _describe(entry))
            written.append(out / name)
            entries.append(entry)
            if first is None:
                first = frame.image
        bar.close()
    if broken:
        assert first is not None
        whole = encode(first, "tiff", cfg.bit_depth, cfg.bayer)
        cut = len(whole) // 2
        small = np.ascontiguousarray(first[:TOO_SMALL_PX, :TOO_SMALL_PX])
        for name, data, reason in (
                (TRUNCATED, whole[:cut],
                 f"a TIFF of the frame of seed {seeds[0]} cut to half its bytes ({cut} of "
                 f"{len(whole)}): the image data ends early"),
                (TOO_SMALL, encode(small, "png", cfg.bit_depth, cfg.bayer),
                 f"{TOO_SMALL_PX} x {TOO_SMALL_PX} px (the top-left corner of the frame of "
                 f"seed {seeds[0]}), smaller than one {MIN_SIDE_PX} x {MIN_SIDE_PX} px "
                 f"window")):
            write_atomic(out / name, data)
            log.info("%s: broken on purpose: %s", out / name, reason)
            written.append(out / name)
            entries.append({"file": name, "broken": True, "label": "broken",
                            "bit_depth": cfg.bit_depth,
                            "sample_bits": container_bits(cfg.bit_depth), "reason": reason})
    doc = {
        "format": TRUTH_FORMAT, "version": 1, "darkfield_version": DARKFIELD_VERSION,
        "file_format": fmt, "size_px": [w, h], "bit_depth": cfg.bit_depth,
        "sample_bits": container_bits(cfg.bit_depth), "bayer": "GRBG" if cfg.bayer else None,
        "camera": cfg.camera, "sensor_seed": cfg.sensor_seed,
        "scratch_length_px": list(cfg.scratch_length_px),
        "files": entries,
    }
    write_atomic(out / TRUTH, (json.dumps(doc, indent=1) + "\n").encode())
    log.info("%s: ground truth of %d file%s", out / TRUTH, len(entries),
             "s" * (len(entries) != 1))
    keep = {p.name for p in written}
    for name in stale:
        if name not in keep and (out / name).is_file():
            (out / name).unlink()
            log.info("%s: removed (an earlier run's, not written by this one)", out / name)
    return written
