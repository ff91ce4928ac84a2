"""The ``evaluate`` and ``evaluate-windows`` subcommands, for ``glass-inspect`` to register
(``train`` is :mod:`model.train_cli`'s)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from edge.cli_common import UsageError, head_option, load_head, require, share, whole


def group_list(text: str) -> tuple[int, ...]:
    """An argparse type: LED groups as ``0,1,2,3``; the simulator checks them against its ring."""
    try:
        groups = tuple(int(g) for g in text.split(","))
    except ValueError:
        groups = ()
    if not groups or min(groups) < 0:
        raise argparse.ArgumentTypeError(f"expected LED groups as whole numbers from 0 joined by "
                                         f"commas, such as 0,1,2,3; got {text!r}")
    return groups


def haze_range(text: str) -> tuple[float, float]:
    """An argparse type: a range of shares of full scale as ``LO,HI``, such as 0.03,0.06."""
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        lo = hi = -1.0
    if not 0.0 <= lo <= hi <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a haze range as LO,HI, shares of full scale "
                                         f"with 0 <= LO <= HI <= 1, such as 0.03,0.06; got "
                                         f"{text!r}")
    return lo, hi


def cmd_evaluate_windows(args: argparse.Namespace) -> int:
    require("onnxruntime", "evaluation", "cpu")
    if args.labels is not None or not (args.images or "0").lstrip("-").isdigit():
        from model.label_eval import cmd_evaluate_labels  # a folder of the user's own frames
        return cmd_evaluate_labels(args)
    from model.window_eval import WindowEvalError, describe, evaluate_windows, save_report

    baselines = list(dict.fromkeys(args.baseline or []))
    models = {}
    for path in args.models:
        p = Path(path)
        if not p.is_file():
            raise UsageError(f"{p}: no such model file")
        # keyed by file stem; the path where two stems (or a stem and a baseline) collide
        taken = p.stem in models or p.stem in baselines
        models[str(p) if taken else p.stem] = p
    if not models and not baselines:
        raise UsageError("name at least one MODEL.onnx or --baseline")
    try:
        results = evaluate_windows(
            models, baselines, split=tuple(args.split), frame_px=args.frame_px,
            test_windows=args.windows, val_windows=args.val_windows,
            images=None if args.images is None else int(args.images), cache=args.cache,
            threads=args.threads, batch=args.batch, progress=not args.quiet, on=args.on,
            bayer=args.bayer, bit_depth=args.bit_depth or 12,
            noise_scale=args.noise_scale, noise_match=not args.no_noise_match,
            lit_groups=args.lit_groups, camera=args.camera, haze=args.haze,
            texture=args.texture, visibility_limit=args.visibility_limit)
    except WindowEvalError as exc:
        raise UsageError(str(exc)) from None
    print(describe(results))
    save_report(results, args.json, args.plot)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    require("onnxruntime", "evaluation", "cpu")
    from model.evaluate import describe, evaluate_report, sweep, sweep_record

    cfg = load_head(args)
    from model.evaluate import command_line, model_files

    if args.recorded:
        from model.recorded_eval import cmd_evaluate_recorded
        return cmd_evaluate_recorded(args, cfg)
    models, as_given = model_files(args.models)
    baselines = list(dict.fromkeys(args.baseline or []))
    if not models and not baselines:
        raise UsageError("name at least one MODEL.onnx (or shipped:NAME) or --baseline")
    protocol = args.must_fail is not None or args.clean is not None
    if protocol and (args.samples is not None or args.scratch_share is not None):
        raise UsageError("--must-fail / --clean draw their own samples: leave out --samples "
                         "and --scratch-share")
    if protocol and args.seed is None:
        raise UsageError("--must-fail / --clean make a test set: name its first seed with "
                         "--seed, a block no one has used (docs/evaluation/README.md)")
    if args.clean_seed is not None and not protocol:
        raise UsageError("--clean-seed goes with --clean")
    samples = 50 if args.samples is None else args.samples
    scratch_share = 0.3 if args.scratch_share is None else args.scratch_share
    seed = DEVELOPMENT_SEED if args.seed is None else args.seed
    if args.sweep:
        if args.calibration:
            raise UsageError("--sweep tunes the head file's post-processing: leave out "
                             "--calibration")
        from model.evaluate import sample_sets

        rows = sweep(models, cfg, samples, seed, scratch_share, threads=args.threads,
                     progress=not args.quiet, baselines=baselines, cache=args.cache,
                     must_fail=args.must_fail, clean=args.clean, clean_seed=args.clean_seed)
        blocks = None if not protocol else sample_sets(
            cfg, samples, seed, scratch_share, args.must_fail, args.clean, args.clean_seed,
            args.cache, role="validation")[1]
        record = sweep_record(rows, samples, seed, scratch_share, blocks)
        for name, b in record["best"].items():
            print(f"{name}: best setting {b}")
        Path(args.sweep).write_text(json.dumps(record, indent=1) + "\n")
        print(f"sweep: {args.sweep}")
        return 0
    from edge.inspection import load_calibration
    from model.evaluate import portable
    from model.heldout import sweep_seeds

    calibration = load_calibration(cfg, args.calibration) if args.calibration else None
    settings, validation = None, []
    if args.settings_from:
        try:
            doc = json.loads(Path(args.settings_from).read_text())
            settings = doc["best"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise UsageError(f"{args.settings_from}: not a sweep file written by --sweep "
                             f"({exc})") from None
        validation = sweep_seeds(doc, portable(args.settings_from))
    report = evaluate_report(
        models, cfg, samples, seed, scratch_share, args.threads, progress=not args.quiet,
        calibration=calibration, baselines=baselines, cache=args.cache, settings=settings,
        must_fail=args.must_fail, clean=args.clean, clean_seed=args.clean_seed,
        validation=validation, given=as_given,
        settings_from=portable(args.settings_from) if args.settings_from else None)
    report = {"command": command_line(args), **report}
    print(describe(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
        print(f"details: {args.json}")
    return 0


# model.baselines.BASELINES' names, here so that --help does not compile Numba kernels
BASELINE_NAMES = ("otsu-brightest", "physics")
# model.evaluate's, here so that --help imports no NumPy-heavy module
DEVELOPMENT_SEED = 910_000
CLEAN_OFFSET = 100_000


def add_commands(sub: argparse._SubParsersAction) -> None:
    q = sub.add_parser(
        "evaluate", help="score ONNX networks and baselines on held-out simulated samples",
        description="Render held-out samples on the full-size simulated head, run every MODEL "
                    "and --baseline on the same frames with the runtime's post-processing and "
                    "verdict (under the head's reject rule), and report sample-, image- and "
                    "scratch-level rates as the glass paper's Table 1 counts them (recall also "
                    "by length and by peak signal), with 95 % Wilson intervals. A test set is "
                    "--must-fail N samples that hold a scratch the rule counts and --clean M "
                    "samples without any, from seed blocks that no training or choice has used: "
                    "a block that meets the seeds a network's metadata says it trained on, the "
                    "--settings-from sweep's or an earlier choice's is refused. Score maps are "
                    "cached (--cache): a stopped run continues, and a second run or a --sweep "
                    "renders and infers nothing again. --recorded: labelled recorded samples "
                    "instead. See docs/evaluation/README.md.")
    head_option(q)
    q.add_argument("models", nargs="*", metavar="MODEL.onnx",
                   help="ONNX networks: a path, or shipped:NAME for a model shipped with the "
                        "package (as a head file names it), e.g. shipped:scratch_hybrid.onnx")
    q.add_argument("--baseline", action="append", choices=BASELINE_NAMES, help="also score "
                   "this untrained detector (repeatable): Otsu on the brightest frame, or physics")
    q.add_argument("--cache", metavar="DIR", help="where score maps are kept (default: "
                   "$GLASS_INSPECT_CACHE/heldout, else ~/.cache/glass-inspect/heldout)")
    q.add_argument("--settings-from", metavar="SWEEP.json",
                   help="count each detector with the best post-processing a --sweep found for "
                        "it (a fair comparison), not the head file's; the sweep's seeds are "
                        "validation seeds, which the test may not use")
    q.add_argument("--sweep", metavar="FILE",
                   help="instead: try post-processing settings on these samples (validation "
                        "seeds, never a test range); every setting's rates and the best to FILE")
    q.add_argument("--must-fail", type=whole(1), metavar="N",
                   help="test set: N samples each holding a scratch the reject rule counts "
                        "(drawn all scratched from --seed on, those with only shorter "
                        "scratches skipped before rendering)")
    q.add_argument("--clean", type=whole(1), metavar="M", help="test set: M samples without "
                   "any scratch (from --clean-seed on)")
    q.add_argument("--clean-seed", type=int, metavar="SEED",
                   help=f"first seed of the clean block (default: --seed + {CLEAN_OFFSET})")
    q.add_argument("--samples", type=int, help="a quick look instead of a test set: N "
                   "consecutive samples (default: 50)")
    q.add_argument("--seed", type=int, help="seed of the first sample: required with "
                   f"--must-fail / --clean (an unused block); else {DEVELOPMENT_SEED}, a "
                   "development block, never a test range")
    q.add_argument("--scratch-share", type=share, metavar="P", help="with --samples: share "
                   "of samples with scratches (default: 0.3)")
    q.add_argument("--recorded", nargs="+", metavar="DIR", help="instead: labelled recorded "
                   "samples (folders, or folders of them; MODELs may follow) as the test set")
    q.add_argument("--skip-unlabelled", action="store_true", help="with --recorded: leave "
                   "out samples without labels.json (else refused)")
    q.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads (default: all)")
    q.add_argument("--calibration", metavar="FILE", help="correct the frames with this "
                   "calibration of the head (default: none)")
    q.add_argument("--json", metavar="FILE", help="also write the whole record as JSON (models "
                   "with their SHA-256, the seeds of training, validation and test, every rate)")
    q.add_argument("-q", "--quiet", action="store_true",
                   help="no progress bar (into a file it is redrawn every 30 s)")
    q.set_defaults(func=cmd_evaluate)

    w = sub.add_parser(
        "evaluate-windows",
        help="score window classifiers (ONNX) and the Otsu / Gabor baselines on held-out "
             "dark-field windows and whole images (weak-scratch paper, Tables II-III)",
        description="On held-out simulated single dark-field frames (the test seeds of the "
                    "80 / 12 / 20 split, never used in training or validation): precision, "
                    "recall, F1 and accuracy of every MODEL and --baseline on a fixed set of "
                    "windows, with 95 % intervals (Wilson; F1 by bootstrap); then whole-image "
                    "detection: each test frame rendered with and without scratches, classified "
                    "window by window on the runtime's grid, flagged when any window is "
                    "positive. Baselines tune their thresholds on the validation windows only. "
                    "Window sets are cached (--cache).")
    w.add_argument("models", nargs="*", metavar="MODEL.onnx",
                   help="single-frame window classifiers (input N x 1 x 256 x 256, one logit "
                        "each), keyed by file name; with --images DIR also shipped:NAME (default)")
    w.add_argument("--baseline", action="append", choices=("otsu", "gabor"),
                   help="also score a traditional detector (repeatable): Otsu's binarisation "
                        "with a line rule, or the Gabor filter bank (model.window_baselines)")
    w.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    w.add_argument("--plot", metavar="FILE.png",
                   help="also draw each network's precision-recall curve, its operating point "
                        "and the baselines' points")
    w.add_argument("--windows", type=whole(1),
                   help="held-out windows (default: 1024; 4096 with --on development)")
    w.add_argument("--val-windows", type=whole(1), default=512,
                   help="validation windows the baselines are tuned on (default: 512, the "
                        "trainer's validation set)")
    w.add_argument("--images", metavar="N|DIR",
                   help="test frames for the image level, each also rendered scratch-free "
                        "(default: every test frame; 0 skips it); or instead a folder of your "
                        "own labelled frames, judged as 'classify' does (model.label_eval)")
    w.add_argument("--labels", metavar="DIR",
                   help="the label files of --images DIR (default: beside the images)")
    w.add_argument("--on", choices=("test", "validation", "development"), default="test",
                   help="the frames to evaluate on: the held-out test frames (default); the "
                        "validation frames, to choose a setting such as --region-threshold "
                        "without looking at the test frames; or the 100 development frames "
                        "(seeds 300-399, no model's training, validation or test frames), to "
                        "choose between classifiers by their curves")
    w.add_argument("--bayer", action="store_true",
                   help="render every frame as a RAW GRBG Bayer mosaic (its own window sets) "
                        "and balance its colour sites as 'classify --bayer' does before any "
                        "detector sees it (default: grey frames)")
    w.add_argument("--bit-depth", type=int, choices=(8, 12, 16),
                   help="bits of the simulated frames (default: 12, what the classifier was "
                        "trained on), prepared as 'classify' prepares them; with --images DIR "
                        "as 'classify --bit-depth' (default: each file's own)")
    w.add_argument("--noise-scale", type=float, default=1.0, metavar="S",
                   help="frames from a camera S times as noisy as the trained one (read noise "
                        "x S, conversion gain x S^2; default: 1), prepared as 'classify' does")
    w.add_argument("--no-noise-match", action="store_true",
                   help="with --bayer, --bit-depth or --noise-scale: hand the frames over "
                        "without matching their noise ('classify' always matches)")
    w.add_argument("--lit-groups", type=group_list, metavar="G,G,...",
                   help="light the frames with these LED groups of the 8-group ring only "
                        "(0-7, e.g. 0,1,2,3; default: all, as trained): the haze that share, "
                        "each scratch as bright as the light across it; frames 'classify' would "
                        "refuse as too dark are listed")
    w.add_argument("--haze", type=haze_range, metavar="LO,HI",
                   help="each frame's haze at the optical centre from LO-HI of full scale "
                        "(default: 0.1,0.3, as trained); frames 'classify' refuses are listed")
    w.add_argument("--texture", default="none", metavar="FAMILY", help="frame texture "
                   "(edge.sim.darkfield_texture; heldout: none trained on it; default: none)")
    w.add_argument("--visibility-limit", type=float, default=8.0, metavar="V", help="scratch "
                   "windows below V scored neither way (default: 8; 5's figures beside)")
    w.add_argument("--camera", choices=("area", "line"), default="area",
                   help="an area camera (default, as trained) or a line-scan camera, whose "
                        "lens falls off along the sensor line only")
    w.add_argument("--split", type=whole(1), nargs=3, default=[80, 12, 20],
                   metavar=("TRAIN", "VAL", "TEST"),
                   help="frames per part, seeds from 0 (default: 80 12 20, the paper's; the "
                        "trainer's --train-images / --val-images must match)")
    w.add_argument("--frame-px", type=int, default=2048,
                   help="side of the simulated frames (default: 2048)")
    w.add_argument("--cache", metavar="DIR",
                   help="where window sets are kept (default: $GLASS_INSPECT_CACHE/darkfield, "
                        "else ~/.cache/glass-inspect/darkfield)")
    w.add_argument("--batch", type=whole(1), default=16, help="windows per inference batch "
                                                               "(default: 16)")
    w.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads (default: all)")
    w.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    w.set_defaults(func=cmd_evaluate_windows)
