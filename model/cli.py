"""The ``train`` and ``evaluate`` subcommands, for ``glass-inspect`` to register.

torch is imported only when training runs, so ``--help`` and ``evaluate`` work without it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from edge.cli_common import UsageError, head_option, load_head, require, share


def cmd_train(args: argparse.Namespace) -> int:
    require("torch", "training", "train")
    import torch

    from model.train import CheckpointError, Trainer, TrainSettings

    cfg = load_head(args)
    try:
        settings = TrainSettings(
            network=args.network, loss=args.loss, alpha=args.alpha, width=args.width,
            features=args.features,
            levels=args.levels, nested=not args.no_nested, epochs=args.epochs,
            steps_per_epoch=args.steps, batch_size=args.batch, scratch_per_batch=args.scratch,
            val_patches=args.val_patches, lr=args.lr, seed=args.seed, patch=args.patch,
            input_compression=args.compress,
            samples=[str(p) for p in args.samples], window_cache=args.window_cache,
            window_pool=args.window_pool)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        best = Trainer(settings, cfg, args.out, progress=not args.quiet).run(resume=args.resume)
    except CheckpointError as exc:
        raise UsageError(str(exc)) from None
    print(f"best checkpoint: {best}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    require("onnxruntime", "evaluation", "cpu")
    from model.evaluate import best_setting, describe, evaluate, sweep

    cfg = load_head(args)
    models = {}
    for path in args.models:
        p = Path(path)
        if not p.is_file():
            raise UsageError(f"{p}: no such model file")
        models[p.stem if p.stem not in models else str(p)] = p
    baselines = list(dict.fromkeys(args.baseline or []))
    if not models and not baselines:
        raise UsageError("name at least one MODEL.onnx or --baseline")
    if args.sweep:
        if args.calibration:
            raise UsageError("--sweep tunes the head file's post-processing: leave out "
                             "--calibration")
        rows = sweep(models, cfg, args.samples, args.seed, args.scratch_share,
                     threads=args.threads, progress=not args.quiet, baselines=baselines,
                     cache=args.cache)
        best = {name: best_setting(r) for name, r in rows.items()}
        for name, b in best.items():
            print(f"{name}: best setting {b}")
        Path(args.sweep).write_text(json.dumps({"rows": rows, "best": best}, indent=1) + "\n")
        print(f"sweep: {args.sweep}")
        return 0
    from edge.inspection import load_calibration

    calibration = load_calibration(cfg, args.calibration) if args.calibration else None
    settings = None
    if args.settings_from:
        try:
            settings = json.loads(Path(args.settings_from).read_text())["best"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise UsageError(f"{args.settings_from}: not a sweep file written by --sweep "
                             f"({exc})") from None
    results = evaluate(models, cfg, args.samples, args.seed, args.scratch_share, args.threads,
                       progress=not args.quiet, calibration=calibration, baselines=baselines,
                       cache=args.cache, settings=settings)
    print(describe(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
        print(f"details: {args.json}")
    return 0


# model.baselines.BASELINES' names, here so that --help does not compile Numba kernels
BASELINE_NAMES = ("otsu-brightest", "physics")


def add_commands(sub: argparse._SubParsersAction) -> None:
    t = sub.add_parser(
        "train", help="train the scratch network (or the window classifier) on simulated or "
                      "recorded samples",
        description="Train the glass paper's U-Net with the autoencoder loss (or cross-entropy), "
                    "or the weak-scratch paper's attention fusion classifier, on 1024 x 1024 RAW "
                    "patches simulated on the fly or cut from recorded samples. Writes last.pt, "
                    "best.pt, history.json and loss.png into --out; --resume continues. Needs the "
                    "'train' extra (torch).")
    head_option(t)
    t.add_argument("--out", default="runs/unet", metavar="DIR",
                   help="run folder (default: runs/unet)")
    t.add_argument("--samples", nargs="*", default=[], metavar="SAMPLE_DIR",
                   help="recorded samples with masks (default: simulate samples on the fly)")
    t.add_argument("--network", choices=("unet", "fusion", "hybrid"), default="unet",
                   help="unet: the glass paper's segmentation network (default); fusion: the "
                        "weak-scratch paper's classifier on 256 x 256 windows; hybrid: the ring "
                        "light's physics as fixed layers and a small learned head (model.hybrid)")
    t.add_argument("--loss", choices=("autoencoder", "bce"), default="autoencoder",
                   help="U-Net and hybrid loss: the paper's autoencoder L2 (default) or "
                        "cross-entropy")
    t.add_argument("--alpha", type=share, default=0.7,
                   help="weight of false positives in the autoencoder loss (default: 0.7)")
    t.add_argument("--width", type=float, default=0.125,
                   help="feature-count multiplier; 1 is the paper's network (default: 0.125)")
    t.add_argument("--features", type=int, default=16,
                   help="hybrid network: features of the learned head (default: 16)")
    t.add_argument("--levels", type=int, default=6, choices=(4, 5, 6),
                   help="encoder levels (default: 6, as in the paper)")
    t.add_argument("--no-nested", action="store_true", help="own kernels for every convolution")
    t.add_argument("--epochs", type=int, default=10, help="(default: 10)")
    t.add_argument("--steps", type=int, default=50, help="batches per epoch (default: 50)")
    t.add_argument("--batch", type=int, default=4, help="patches per batch (default: 4)")
    t.add_argument("--scratch", type=int, default=1,
                   help="scratch patches per batch (default: 1, as in the paper)")
    t.add_argument("--val-patches", type=int, default=16,
                   help="held-out validation patches, half with scratches (default: 16)")
    t.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate (default: 1e-4)")
    t.add_argument("--seed", type=int, default=0, help="(default: 0)")
    t.add_argument("--patch", type=int, default=1024,
                   help="RAW patch side in px (default: 1024, as in the paper)")
    t.add_argument("--compress", type=float, default=0.0, metavar="K",
                   help="U-Net input compression log1p(K x) / log1p(K); 0: none (default)")
    t.add_argument("--window-cache", default="", metavar="DIR",
                   help="keep the training windows here and cycle over a pool of them, so "
                        "later epochs and resumed runs render nothing (default: render each)")
    t.add_argument("--window-pool", type=int, default=2000, metavar="N",
                   help="windows of each kind in the pool (default: 2000; 3.2 MB each at "
                        "1024 px)")
    t.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's)")
    t.add_argument("--resume", action="store_true", help="continue from --out/last.pt")
    t.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    t.set_defaults(func=cmd_train)

    q = sub.add_parser(
        "evaluate", help="score ONNX networks and baselines on held-out simulated samples",
        description="Render N held-out samples on the full-size simulated head, run every MODEL "
                    "and --baseline on the same frames with the runtime's post-processing and "
                    "verdict (under the head's reject rule), and report sample-, image- and "
                    "scratch-level rates as the glass paper's Table 1 counts them, with 95 % "
                    "Wilson intervals. Score maps are cached (--cache): a second run, or a "
                    "--sweep of post-processing settings, renders and infers nothing again.")
    head_option(q)
    q.add_argument("models", nargs="*", metavar="MODEL.onnx")
    q.add_argument("--baseline", action="append", choices=BASELINE_NAMES,
                   help="also score this detector without training (repeatable): Otsu on the "
                        "brightest of the 6 frames, or the few-state line physics")
    q.add_argument("--cache", metavar="DIR",
                   help="where score maps are kept (default: $GLASS_INSPECT_CACHE/heldout, "
                        "else ~/.cache/glass-inspect/heldout)")
    q.add_argument("--settings-from", metavar="SWEEP.json",
                   help="count each detector with the best post-processing a --sweep found for "
                        "it (a fair comparison), not the head file's")
    q.add_argument("--sweep", metavar="FILE",
                   help="instead: try post-processing settings (downscale, min_samples, T_low, "
                        "T_high) on these samples (use validation seeds, not the held-out ones) "
                        "and write every setting's rates and the best per detector to FILE")
    q.add_argument("--samples", type=int, default=50, help="(default: 50)")
    q.add_argument("--seed", type=int, default=900_000,
                   help="seed of the first sample (default: 900000, away from training seeds)")
    q.add_argument("--scratch-share", type=share, default=0.3, metavar="P",
                   help="share of samples with scratches (default: 0.3)")
    q.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads (default: all)")
    q.add_argument("--calibration", metavar="FILE",
                   help="correct the frames with this calibration of the head (default: none)")
    q.add_argument("--json", metavar="FILE", help="also write the full results as JSON")
    q.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    q.set_defaults(func=cmd_evaluate)
