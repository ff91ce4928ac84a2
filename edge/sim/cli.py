"""The ``simulate``, ``simulate-darkfield`` and ``demo`` subcommands, for ``glass-inspect`` to
register."""

from __future__ import annotations

import argparse
import importlib.util
import logging
from pathlib import Path

from edge.cli_common import UsageError, head_option, load_head, share, size, whole

log = logging.getLogger("glass-inspect")


def cmd_simulate(args: argparse.Namespace) -> int:
    from edge.preview import write_previews
    from edge.recording import find_samples

    if args.samples is None:
        if not isinstance(args.preview, str):
            raise UsageError("simulate: give --samples N --out DIR, or --preview DIR")
        for sample_dir in find_samples(args.preview):
            for p in write_previews(sample_dir):
                print(p)
        return 0
    if args.out is None:
        raise UsageError("simulate: --samples needs --out DIR")
    if isinstance(args.preview, str):
        raise UsageError("simulate: with --samples, give --preview without a folder; "
                         "the previews go into each sample's preview/ folder")
    from edge.sim.recorder import simulate_samples

    done = simulate_samples(load_head(args), args.samples, args.out, args.seed,
                            args.scratch_share, args.size, progress=not args.quiet)
    for sample, path in done:
        log.info("sample %s: %s -> %s", sample.sample_id, sample.describe(), path)
        if args.preview:
            for p in write_previews(path):
                log.info("  preview %s", p)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from edge.inspection import inspect_recorded
    from edge.preview import write_previews
    from edge.sim.recorder import record_demo
    from edge.verdict import Status

    cfg = load_head(args)
    g = cfg.stage.roi_grid
    log.info("head: %s (%s), %d RoIs of %s mm", cfg.name, cfg.source, g.count, g.size_mm)
    sample, sample_dir, new = record_demo(cfg, args.out, args.seed, args.size)
    log.info("sample %s: %s; %s %s", sample.sample_id, sample.describe(),
             "recorded" if new else "already recorded by this head:", sample_dir)
    previews = write_previews(sample_dir)
    for s in sample.scratches:
        x, y = s.points_mm[0]
        log.info("  scratch from (%.1f, %.1f) mm, %.2f mm long, peak %.0f DN, %s profile",
                 x, y, s.length_mm, s.intensity_dn, s.profile)
    log.info("previews (states side by side, ground truth outlined): %s", previews[0].parent)
    model = cfg.resolve(cfg.engine.artifact)
    if importlib.util.find_spec("onnxruntime") is None or not model.is_file():
        log.info("no inspection: needs onnxruntime and the network %s", model)
        return 0
    overlays = sample_dir.parent / "overlay"
    (v,) = inspect_recorded([sample_dir], cfg, overlay_dir=overlays)
    log.info("verdict: %s", v.summary())
    for line in v.defect_lines():
        log.info("%s", line)
    log.info("overlays (brightest state, scratch score, kept boxes): %s",
             overlays / sample.sample_id)
    return 1 if v.status is Status.ERROR else 0


def _frame_side(text: str) -> int:
    from edge.sim.darkfield_files import MIN_SIDE_PX

    try:
        v = int(text)
    except ValueError:
        v = 0
    if v < MIN_SIDE_PX or v % 2:
        raise argparse.ArgumentTypeError(f"expected an even number of pixels, at least "
                                         f"{MIN_SIDE_PX} (one classifier window), got {text!r}")
    return v


def _texture(text: str) -> str:
    from edge.sim.darkfield_texture import TEXTURES  # at parse time only when given

    if text not in TEXTURES:
        raise argparse.ArgumentTypeError(f"expected one of {', '.join(TEXTURES)}, got {text!r}")
    return text


def cmd_simulate_darkfield(args: argparse.Namespace) -> int:
    from edge.sim.darkfield_files import TRUTH, darkfield_config, write_darkfield_frames

    if args.clean > args.count:
        raise UsageError(f"--clean {args.clean} asks for more scratch-free frames than the "
                         f"{args.count} of --count")
    seeds = list(range(args.seed, args.seed + args.count))
    try:
        write_darkfield_frames(
            args.out_dir, seeds,
            darkfield_config(args.size, args.bit_depth, args.bayer, args.texture),
            args.format, clean_seeds=seeds[len(seeds) - args.clean:] if args.clean else (),
            broken=args.broken, progress=not args.quiet)
    except OSError as exc:  # OUT_DIR is a file, not writable, the disk is full, ...
        raise UsageError(f"cannot write into {args.out_dir}: {exc.strerror or exc} "
                         f"({exc.filename or args.out_dir})") from None
    what = f"{args.count} frame{'s' * (args.count != 1)}"
    if args.clean:
        what += f" ({args.clean} scratch-free)"
    if args.broken:
        what += " and 2 broken files"
    print(f"{what} in {args.out_dir}; ground truth: {Path(args.out_dir) / TRUTH}")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    d = sub.add_parser("demo", help="simulate one scratched sample on the simulated head and "
                                    "write previews of it",
                       description="Simulate one sample with scratches on the simulated head, "
                                   "record it, write a preview PNG per RoI and inspect it.")
    head_option(d)
    d.add_argument("--out", default="demo", metavar="DIR", help="where to write (default: demo)")
    d.add_argument("--seed", type=int, default=1, help="sample seed (default: 1)")
    d.add_argument("--size", type=size, metavar="WxH", help="render smaller frames (tests)")
    d.set_defaults(func=cmd_demo)

    s = sub.add_parser(
        "simulate", help="render random glass samples into recorded-sample folders",
        description="Render random glass samples with the optics simulator and write them as "
                    "recorded samples (manifest, one TIFF of the RAW frames per RoI, ground "
                    "truth). With --preview DIR alone: write preview PNGs of recorded samples "
                    "in DIR.")
    head_option(s)
    s.add_argument("--samples", type=int, metavar="N", help="number of samples to simulate")
    s.add_argument("--out", metavar="DIR", help="folder to write the sample folders into")
    s.add_argument("--seed", type=int, default=0,
                   help="seed of the first sample; sample k uses seed+k (default: 0)")
    s.add_argument("--scratch-share", type=share, default=0.3, metavar="P",
                   help="share of samples with scratches (default: 0.3, as in the glass paper)")
    s.add_argument("--preview", nargs="?", const=True, default=False, metavar="DIR",
                   help="with --samples: also write previews; alone: preview the recorded "
                        "samples in DIR (each into its preview/ folder)")
    s.add_argument("--size", type=size, metavar="WxH",
                   help="render smaller frames than the camera's (same pixel footprint)")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=cmd_simulate)

    f = sub.add_parser(
        "simulate-darkfield",
        help="write simulated single-image dark-field frames as TIFF or PNG files (input for "
             "'classify')",
        description="Render single-image dark-field frames (the weak-scratch paper's: one frame "
                    "of the part under the whole ring light, haze, vignetting, dust, faint "
                    "scratches, sensor noise) and write each as an image file named for what "
                    "it holds (darkfield-SEED-scratched or darkfield-SEED-clean), with "
                    "truth.json: per file its seed, bit depth, mosaic, scratches (length, peak "
                    "DN) and scratch-mask pixel count. 12- and 16-bit data go into 16-bit "
                    "samples (classify them with --bit-depth 12 for 12-bit data), 8-bit data "
                    "into 8-bit samples.",
        epilog="Example: glass-inspect simulate-darkfield shots/ --count 4 --clean 2 --broken "
               "--size 1024, then glass-inspect classify shots/ --bit-depth 12")
    f.add_argument("out_dir", metavar="OUT_DIR", help="folder to write into (made if missing)")
    f.add_argument("--count", type=whole(1), default=4, metavar="N",
                   help="frames to write (default 4)")
    f.add_argument("--seed", type=whole(0), default=0, metavar="S",
                   help="seed of the first frame; frame k uses S+k (default 0)")
    f.add_argument("--clean", type=whole(0), default=0, metavar="K",
                   help="render the last K frames without scratches (clean glass; default 0)")
    f.add_argument("--size", type=_frame_side, default=2048, metavar="PX",
                   help="side of the square frames in px, even, at least 256; scratch lengths "
                        "scale with it as in training (default 2048, the paper's)")
    f.add_argument("--bit-depth", type=int, choices=(8, 12, 16), default=12, metavar="BITS",
                   help="bits of the data: 8, 12 or 16 (default 12)")
    f.add_argument("--format", choices=("tiff", "png"), default="tiff",
                   help="file format (default tiff)")
    f.add_argument("--bayer", action="store_true",
                   help="RAW GRBG Bayer mosaics instead of grey frames (a TIFF says CFA; "
                        "classify them with --bayer)")
    f.add_argument("--texture", type=_texture, default="none", metavar="FAMILY",
                   help="real-glass texture (edge.sim.darkfield_texture): 'mixed' (the training "
                        "mix), 'heldout' (kept out of training: an unseen camera) or one element "
                        "such as 'grain', 'pits', 'glare', 'seam' (default none)")
    f.add_argument("--broken", action="store_true",
                   help="also write two broken files for demos: broken-truncated.tiff (cut to "
                        "half its bytes) and broken-too-small.png (100 x 100 px, smaller than a "
                        "window); classify reports them as ERROR")
    f.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    f.set_defaults(func=cmd_simulate_darkfield)
