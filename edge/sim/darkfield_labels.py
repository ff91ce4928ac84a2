"""A labelled folder of simulated single dark-field frames, as a user would label real ones:
images and one label JSON each (:mod:`edge.darkfield.labels`, ``docs/labels_darkfield.md``),
for ``glass-inspect evaluate-windows --images DIR --labels DIR`` demos and tests.

* **Images** in ``OUT/images``, named as :mod:`edge.sim.darkfield_files` names them
  (``darkfield-0003-scratched.png``), PNG (8-bit grey, or 16-bit words for deeper data) or BMP
  (8 bits only: what the real dark-field sets of issue 29 are). Frames are
  :func:`edge.sim.darkfield_files.darkfield_config`'s at the side asked for.
* **Labels** in ``OUT/labels``, ``STEM.json``: each scratch's centre line where the simulator
  marks it as truth, with its width. Choice: the simulator stops marking where a scratch fades
  out at its ends, and its polylines run on outside the frame; a person draws only what is
  there. So a label's polylines are the runs of the scratch's vertices whose own pixel is a
  truth-mask pixel (inside the frame, not faded), every 8th vertex kept (4 px apart: on the
  tightest simulated arc the chord is off the arc by under 0.1 px). A frame with no such run
  is ``{"clean": true}``. Rasterised by :func:`edge.darkfield.labels.scratch_mask` they cover
  the truth mask but for about a pixel at each end (tests: IoU).

``python -m edge.sim.darkfield_labels OUT --seeds 0-3 --clean 2`` writes one from the shell.
"""

from __future__ import annotations

import argparse
from collections.abc import Collection, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from edge.darkfield.labels import Scratch, write_label
from edge.sim.darkfield import DarkfieldConfig, DarkfieldFrame, DarkfieldRenderer, check_seed
from edge.sim.darkfield_files import darkfield_config, encode, frame_name, write_atomic

FORMATS = ("png", "bmp")
KEEP_EVERY = 8  # vertices are 0.5 px apart: one in 8, every 4 px


def label_scratches(frame: DarkfieldFrame) -> list[Scratch]:
    """The polylines a person would draw on ``frame`` (module docstring)."""
    h, w = frame.mask.shape
    out = []
    for s in frame.scratches:
        col = np.rint(s.points_px[:, 0]).astype(np.int64)
        row = np.rint(s.points_px[:, 1]).astype(np.int64)
        inside = (col >= 0) & (col < w) & (row >= 0) & (row < h)
        on = np.zeros(len(col), bool)
        on[inside] = frame.mask[row[inside], col[inside]]
        # runs of consecutive marked vertices
        edges = np.flatnonzero(np.diff(np.concatenate([[0], on.astype(np.int8), [0]])))
        for a, b in zip(edges[::2], edges[1::2], strict=True):
            if b - a < 2:
                continue
            keep = np.unique(np.concatenate([np.arange(a, b, KEEP_EVERY), [b - 1]]))
            out.append(Scratch(s.points_px[keep], float(s.width_px)))
    return out


def _encode(image: np.ndarray, fmt: str, bit_depth: int) -> bytes:
    if fmt == "png":
        return encode(image, "png", bit_depth)
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image.astype(np.uint8)).save(buf, format="BMP")
    return buf.getvalue()


def write_labelled_frames(out_dir: str | Path, seeds: Sequence[int], frame_px: int = 512,
                          fmt: str = "png", bit_depth: int = 8, clean_seeds: Collection[int] = (),
                          config: DarkfieldConfig | None = None) -> list[tuple[Path, Path]]:
    """Render one frame per seed (those in ``clean_seeds`` without scratches) and write it to
    ``out_dir/images`` with its label in ``out_dir/labels``; returns (image, label) paths in
    seed order. ``config`` overrides :func:`darkfield_config` (``frame_px``, ``bit_depth``)."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    cfg = config if config is not None else darkfield_config(frame_px, bit_depth)
    if fmt == "bmp" and cfg.bit_depth != 8:
        raise ValueError(f"a BMP holds 8-bit frames; got bit depth {cfg.bit_depth} (use png)")
    seeds = [check_seed(s) for s in seeds]
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct and at least one, got {seeds}")
    clean = {check_seed(s, "clean seed") for s in clean_seeds}
    if not clean <= set(seeds):
        raise ValueError(f"clean seeds {sorted(clean - set(seeds))} are not among the seeds")
    images, labels = Path(out_dir) / "images", Path(out_dir) / "labels"
    images.mkdir(parents=True, exist_ok=True)
    labels.mkdir(parents=True, exist_ok=True)
    renderers = {False: DarkfieldRenderer(cfg),
                 True: DarkfieldRenderer(replace(cfg, scratch_share=0.0))}
    written = []
    for seed in seeds:
        frame = renderers[seed in clean].render(seed)
        scratches = label_scratches(frame)
        name = frame_name(seed, bool(scratches), fmt)
        image = write_atomic(images / name, _encode(frame.image, fmt, cfg.bit_depth))
        h, w = cfg.shape
        written.append((image, write_label(labels / f"{image.stem}.json", scratches, name,
                                           (w, h))))
    return written


def _seeds(text: str) -> list[int]:
    """``0-3,7`` -> [0, 1, 2, 3, 7]."""
    out = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        out += list(range(int(lo), int(hi or lo) + 1))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m edge.sim.darkfield_labels",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("out", help="folder to write images/ and labels/ into")
    p.add_argument("--seeds", type=_seeds, default=_seeds("0-3"),
                   help="frame seeds, such as 0-3,7 (default: 0-3)")
    p.add_argument("--clean", type=_seeds, default=[], help="of those, the scratch-free ones")
    p.add_argument("--frame-px", type=int, default=512, help="side in px (default: 512)")
    p.add_argument("--format", choices=FORMATS, default="png")
    p.add_argument("--bit-depth", type=int, choices=(8, 12, 16), default=8)
    a = p.parse_args(argv)
    try:
        pairs = write_labelled_frames(a.out, a.seeds, a.frame_px, a.format, a.bit_depth,
                                      a.clean)
    except ValueError as exc:
        p.error(str(exc))
    print(f"{len(pairs)} images in {Path(a.out) / 'images'}, labels in {Path(a.out) / 'labels'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
