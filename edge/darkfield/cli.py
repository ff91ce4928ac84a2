"""The ``classify`` subcommand, for ``glass-inspect`` to register: single dark-field images through
the weak-scratch paper's window classifier. The work is :mod:`edge.darkfield.classify`'s; this
parses, shows progress and prints.
"""

from __future__ import annotations

import argparse
import logging

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


def cmd_classify(args: argparse.Namespace) -> int:
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    # the classifier loads the engine, Numba kernels and image libraries: only when it runs
    from edge.darkfield.classify import Classifier, ModelError, classify_inputs, write_json
    from edge.darkfield.reading import collect_inputs
    from edge.engine.base import EngineError
    from edge.verdict import Status

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
    with classifier, logging_redirect_tqdm():
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
    counts = {s: sum(r.verdict is s for r in results) for s in Status}
    print(f"{len(results)} image{'s' * (len(results) != 1)}: "
          + ", ".join(f"{n} {s.value}" for s, n in counts.items()))
    if args.overlay:
        print(f"overlays: {args.overlay}")
    if args.json:
        print(f"results: {write_json(args.json, results, classifier, mm_per_px)}")
    return 1 if counts[Status.ERROR] else 0


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
                    f"not the classifier's camera's), which is reported and the rest go on. "
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
    c.set_defaults(func=cmd_classify)
