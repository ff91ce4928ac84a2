"""The ``classify`` subcommand, for ``glass-inspect`` to register: single dark-field images through
the weak-scratch paper's window classifier. The work is :mod:`edge.darkfield.classify`'s; this
parses, shows progress and prints.

One line per image on stdout (its verdict, its regions), and one summary at the end: the
counts, the images refused as unlike the training frames by the statistic named, and what was
done to the frames (noise matched, colour converted, ...). The details of each image behind
that summary are logged (``extra={"per_image": True}``, :mod:`edge.darkfield.classify`) but
kept off the terminal unless ``-v``: for a folder of hundreds of images two such lines per
image buried the verdicts (issue 29). Other handlers (a log file, a test's capture) still get
them.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections import Counter
from contextlib import contextmanager

from edge.cli_common import UsageError, share, whole
from edge.darkfield.windows import DEFAULT_BATCH, DEFAULT_MODEL, DEFAULT_THRESHOLD, STRIDE, WINDOW

log = logging.getLogger("glass-inspect.classify")


def mm_scale(text: str) -> tuple[float, float]:
    """``S`` (square pixels) or ``SX,SY`` in mm per px."""
    try:
        parts = [float(v) for v in text.split(",")]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or not all(0.0 < v < float("inf") for v in parts):
        raise argparse.ArgumentTypeError(f"expected mm per px as S or SX,SY (positive numbers, "
                                         f"e.g. 0.0114), got {text!r}")
    return parts[0], parts[1]


def camera_options(args: argparse.Namespace) -> tuple[bool, int | None, tuple | None]:
    """(bayer, bit depth, mm per px) of the images: the flags, and for what they leave open
    the ``--head`` file's camera (a RAW Bayer sensor of its bit depth) and geometry."""
    if not args.head:
        return args.bayer, args.bit_depth, args.mm_per_px
    from edge import config

    cfg = config.load(args.head)  # a bad file: one ConfigError, said by the CLI
    cam = cfg.camera
    bit_depth = args.bit_depth or cam.bit_depth
    mm = args.mm_per_px or cfg.mm_per_px
    log.info("%s: %d-bit %s Bayer mosaics, %.4f x %.4f mm per px", cfg.source, bit_depth,
             cam.bayer_pattern, *mm)
    return True, bit_depth, mm


class _NoDetails(logging.Filter):
    """Drops the per-image details (module docstring)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(record, "per_image", False)


@contextmanager
def _details_on_terminal(shown: bool):
    """Unless ``shown``, the per-image details are kept off the handlers that write to the
    terminal (stderr or stdout, as tqdm's redirection finds them); other handlers get them."""
    hide = _NoDetails()
    handlers = [] if shown else [
        h for h in logging.getLogger().handlers
        if isinstance(h, logging.StreamHandler) and h.stream in (sys.stderr, sys.stdout)]
    for h in handlers:
        h.addFilter(hide)
    try:
        yield
    finally:
        for h in handlers:
            h.removeFilter(hide)


def summary(results) -> tuple[str, list[str]]:
    """(the counts line, with the refusals by statistic; the lines that sum up the details
    per image)."""
    from edge.darkfield.frame_envelope import STATISTICS
    from edge.verdict import Status

    counts = {s: sum(r.verdict is s for r in results) for s in Status}
    line = (f"{len(results)} image{'s' * (len(results) != 1)}: "
            + ", ".join(f"{n} {s.value}" for s, n in counts.items()))
    unlike = Counter(r.unlike for r in results if r.unlike)
    if unlike:
        line += (f" ({sum(unlike.values())} unlike the frames the classifier was trained on: "
                 + ", ".join(f"{n} by {STATISTICS[k][0]}" for k, n in unlike.most_common())
                 + ")")
    details = []
    matched = [r.noise_ratio for r in results if r.noise_matched]
    if matched:
        lo, hi = f"{min(matched):.2f}", f"{max(matched):.2f}"
        details.append(f"noise matched to the classifier's camera model on {len(matched)} "
                       f"image{'s' * (len(matched) != 1)} ({lo if lo == hi else lo + '-' + hi} "
                       "times its noise)")
    balanced = sum(r.site_gains is not None for r in results)
    if balanced:
        details.append(f"Bayer colour sites balanced on {balanced} "
                       f"image{'s' * (balanced != 1)}")
    notes = Counter(n for r in results if r.frame is not None for n in r.frame.notes)
    details.extend(f"{note}: {n} image{'s' * (n != 1)}" for note, n in notes.most_common())
    return line, details


def cmd_classify(args: argparse.Namespace) -> int:
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    # the classifier loads the engine, Numba kernels and image libraries: only when it runs
    from edge.darkfield.classify import Classifier, ModelError, classify_inputs, write_json
    from edge.darkfield.reading import collect_inputs
    from edge.engine.base import EngineError
    from edge.verdict import Status

    verbose = args.details or getattr(args, "verbose", False)  # classify -v, or glass-inspect -v
    try:
        classifier = Classifier.open(args.model, threshold=args.threshold, batch=args.batch,
                                     threads=args.threads,
                                     region_threshold=args.region_threshold)
    except (ModelError, EngineError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    if classifier.region_threshold is None:
        log.info("every region of positive windows fails an image (no region threshold: %s)",
                 classifier.region_threshold_source)
    else:
        log.info("a region fails an image when a window of it reaches p %g (%s region "
                 "threshold)", classifier.region_threshold, classifier.region_threshold_source)
    bayer, bit_depth, mm_per_px = camera_options(args)
    items = collect_inputs(args.images)
    results = []
    with classifier, logging_redirect_tqdm(), _details_on_terminal(verbose):
        bar = tqdm(total=len(items), unit="image", dynamic_ncols=True,
                   disable=args.quiet or None, leave=False)
        try:
            for r in classify_inputs(items, classifier, bit_depth=bit_depth,
                                     bayer=bayer, mm_per_px=mm_per_px,
                                     overlay_dir=args.overlay):
                results.append(r)
                bar.write(r.summary())
                for line in r.region_lines():
                    bar.write(line)
                bar.update(1)
        finally:
            bar.close()
    line, details = summary(results)
    print(line)
    if details and not verbose:
        log.info("%s (each image's with -v)", "; ".join(details))
    if args.overlay:
        print(f"overlays: {args.overlay}")
    if args.json:
        print(f"results: {write_json(args.json, results, classifier, mm_per_px)}")
    return 1 if any(r.verdict is Status.ERROR for r in results) else 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser(
        "classify", help="classify single dark-field images window by window (weak-scratch "
                         "paper): PASS / FAIL, scratch regions, overlays",
        description=f"Run the weak-scratch paper's attention fusion classifier over single "
                    f"dark-field images: {WINDOW} x {WINDOW} px windows every {STRIDE} px (the "
                    f"last one flush with the edge), one probability each. A window is positive "
                    f"when its probability reaches --threshold; positive windows that overlap or "
                    f"share an edge merge into one region, outlined by its contour; a region "
                    f"counts when a window of it reaches the region threshold. Verdict per "
                    f"image: FAIL when any region counts, else PASS; ERROR for an image that "
                    f"cannot be classified (unreadable, wrong bit depth, smaller than "
                    f"{WINDOW} px on a side, too dark, overexposed or flat to judge, its noise "
                    f"not the classifier's camera's, or unlike the frames the classifier was "
                    f"trained on: the statistic furthest out named), which is reported and the "
                    f"rest go on. "
                    f"Images: "
                    f"TIFF (8, 12 or 16 bit), PNG, BMP; grey, RGB (converted to grey) or a Bayer "
                    f"RAW mosaic (--bayer). Exit status 1 when any image is ERROR, 2 when the "
                    f"model cannot be used.",
        epilog="Example: glass-inspect classify shots/ --bit-depth 12 --bayer --mm-per-px "
               "0.0114 --overlay out/overlay --json out/classify.json")
    c.add_argument("images", nargs="+", metavar="IMAGE",
                   help="image files, or folders (their .tif/.tiff/.png/.bmp files, sorted, "
                        "not recursive)")
    c.add_argument("--model", default=DEFAULT_MODEL, metavar="PATH",
                   help=f"the classifier: an ONNX file (input N x 1 x {WINDOW} x {WINDOW}, one "
                        f"logit per window), a TensorRT engine built from one ('glass-inspect "
                        f"export engine', on the device) or 'shipped:NAME' in edge/models "
                        f"(default: {DEFAULT_MODEL})")
    c.add_argument("--overlay", metavar="DIR",
                   help="write DIR/NAME.png per image: the image stretched, positive windows "
                        "tinted red, region contours, the verdict")
    c.add_argument("--json", metavar="FILE",
                   help="also write the results as JSON: per image its verdict, windows, "
                        "positive windows, regions (boxes in px and mm, contours) and time, "
                        "or its error")
    c.add_argument("--threshold", type=share, default=DEFAULT_THRESHOLD, metavar="P",
                   help=f"probability from which a window is positive (default "
                        f"{DEFAULT_THRESHOLD})")
    c.add_argument("--region-threshold", type=share, metavar="P",
                   help="probability one window of a region must reach for the region to fail "
                        "the image (default: the model's own, chosen on validation images; "
                        "else --threshold). Weak regions are reported, not failed")
    c.add_argument("--bayer", action="store_true",
                   help="the images are Bayer RAW mosaics (a TIFF that says CFA is one "
                        "anyway): not demosaiced; each of the four colour sites is scaled to "
                        "one response by a gain measured on the frame's haze, its noise "
                        "matched, as the grey-trained network expects (the gains go into the "
                        "JSON); a frame too dark to measure them, or a multi-channel file, is "
                        "an error")
    c.add_argument("--head", metavar="HEAD.toml",
                   help="the head whose camera took the images: they are its RAW Bayer "
                        "mosaics at its bit depth, and its geometry gives the scale "
                        "(--bit-depth and --mm-per-px, when given, win)")
    c.add_argument("--bit-depth", type=whole(1, 16), metavar="BITS",
                   help="bits of the data (default: the file's, 8 or 16): 12-bit camera data "
                        "stored in 16-bit words needs --bit-depth 12 (files with fewer bits, "
                        "such as 8-bit ones, keep theirs); pixels are divided by 2**BITS - 1, "
                        "and a larger value is an error")
    c.add_argument("--mm-per-px", type=mm_scale, metavar="S[,SY]",
                   help="scale of the image in mm per px (one value, or x,y): region boxes are "
                        "also given in mm")
    c.add_argument("--batch", type=whole(1, None), default=DEFAULT_BATCH, metavar="N",
                   help=f"windows per inference batch (default {DEFAULT_BATCH})")
    c.add_argument("--threads", type=whole(0, None), default=0, metavar="N",
                   help="ONNX Runtime threads (default 0: all cores)")
    c.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    c.add_argument("-v", "--verbose", dest="details", action="store_true",
                   help="log each image's details on stderr (its file's notes, a matched "
                        "noise, a mosaic's gains); by default one summary line at the end")
    c.set_defaults(func=cmd_classify)
