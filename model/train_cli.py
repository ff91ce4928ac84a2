"""The ``train`` subcommand, for ``glass-inspect`` to register. The work is
:class:`model.train.Trainer`'s; this parses the settings and reports the best checkpoint.

torch is imported only when training runs, so ``--help`` works without it.
"""

from __future__ import annotations

import argparse

from edge.cli_common import UsageError, head_option, load_head, require, share, whole


def cmd_train(args: argparse.Namespace) -> int:
    require("torch", "training", "train")
    import torch

    from model import distributed
    from model.train import CheckpointError, Trainer, TrainSettings

    cfg = load_head(args)
    try:
        ranks = distributed.from_env()  # set by torchrun; one process without it
    except distributed.DistributedError as exc:
        raise UsageError(str(exc)) from None
    if args.folds and ranks.distributed:
        raise UsageError("--folds trains and scores its folds in one process: run it without "
                         "torchrun")
    images = _images(args)
    recorded = _recorded(args)
    try:
        settings = TrainSettings(
            network=args.network, loss=args.loss, alpha=args.alpha, width=args.width,
            features=args.features,
            levels=args.levels, nested=not args.no_nested, epochs=args.epochs,
            steps_per_epoch=args.steps, batch_size=args.batch, scratch_per_batch=args.scratch,
            val_patches=args.val_patches, lr=args.lr, seed=args.seed, patch=args.patch,
            input_compression=args.compress,
            samples=[str(p) for p in args.samples], window_cache=args.window_cache,
            window_pool=args.window_pool, data="darkfield" if images else args.data,
            ba=not args.no_ba,
            sa=not args.no_sa, ca=not args.no_ca, frame_px=args.frame_px,
            train_images=args.train_images, val_images=args.val_images,
            val_windows=args.val_windows, lr_drop_patience=args.lr_drop_patience,
            extra_train_images=args.extra_train_images, extra_peak_dn=args.extra_peak_dn,
            extra_chain_share=args.extra_chain_share, extra_texture=args.extra_texture,
            background_px=args.background_px,
            faint_weight=args.faint_weight, init=args.init or "",
            freeze_norm=args.freeze_norm,
            line_lengths=tuple(args.line_lengths) if args.network == "hybrid" else (),
            recorded=recorded, sim_share=args.sim_share, images=images,
            labels=str(args.labels or ""), images_bit_depth=args.bit_depth or 0)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        if args.folds and images:  # labelled frames: folds by image (model.label_folds)
            from model.label_folds import cross_validate, describe

            print(describe(cross_validate(settings, cfg, args.out, args.folds,
                                          not args.quiet, args.threads)))
        elif args.folds:  # cross-validated rates first, then the network trained on all
            from model.folds import cross_validate, describe

            print(describe(cross_validate(settings, cfg, args.out, args.folds, not args.quiet,
                                          args.threads)))
        best = Trainer(settings, cfg, args.out, progress=not args.quiet).run(resume=args.resume)
    except (CheckpointError, distributed.DistributedError) as exc:
        raise UsageError(str(exc)) from None
    finally:
        distributed.finish()
    if ranks.is_main:
        print(f"best checkpoint: {best}")
    return 0


def _images(args: argparse.Namespace) -> str:
    """``--images`` checked against what fine-tuning on labelled frames needs."""
    if not args.images:
        if args.labels:
            raise UsageError("--labels names the labels of --images DIR: give the images too")
        return ""
    if not args.labels:
        raise UsageError(f"--images {args.images}: fine-tuning needs the labels too: --labels "
                         "DIR (the label files, docs/labels_darkfield.md; may be the same folder)")
    if args.network != "fusion":
        raise UsageError(f"--images trains the window classifier on labelled single dark-field "
                         f"frames: --network fusion, not {args.network}")
    if args.recorded:
        raise UsageError("--images (single dark-field frames) and --recorded (six-state "
                         "samples) train different networks: give one of them")
    return str(args.images)


def _recorded(args: argparse.Namespace) -> list[str]:
    """``--recorded`` as labelled sample folders (unlabelled ones refused, by name)."""
    if args.folds and not args.recorded and not args.images:
        raise UsageError("--folds cross-validates on labelled recorded samples: name them with "
                         "--recorded; or on labelled dark-field frames: --images DIR --labels DIR")
    if not args.recorded:
        return []
    from model.recorded_labels import labelled_samples

    return [str(d) for d in labelled_samples(args.recorded)[0]]


def add_commands(sub: argparse._SubParsersAction) -> None:
    t = sub.add_parser(
        "train", help="train the scratch network (or the window classifier) on simulated or "
                      "recorded samples",
        description="Train the shipped six-state network (the hybrid: the ring light's physics "
                    "as fixed layers and a small learned head, cross-entropy; the defaults are "
                    "the recipe of edge/models/scratch_hybrid.onnx, its model card says so), the "
                    "glass paper's U-Net with its autoencoder loss (--network unet --loss "
                    "autoencoder), or the weak-scratch paper's attention fusion classifier, on "
                    "RAW patches simulated on the fly or cut from recorded samples, or the "
                    "classifier on windows of simulated single dark-field frames (--data "
                    "darkfield; --no-ba/--no-sa/--no-ca for the ablations). Writes last.pt, "
                    "best.pt, history.json and loss.png into --out; --resume continues. Needs the "
                    "'train' extra (torch).")
    head_option(t)
    t.add_argument("--out", default="runs/hybrid", metavar="DIR",
                   help="run folder (default: runs/hybrid)")
    t.add_argument("--samples", nargs="*", default=[], metavar="SAMPLE_DIR",
                   help="recorded samples with masks (default: simulate samples on the fly)")
    t.add_argument("--recorded", nargs="+", default=[], metavar="DIR",
                   help="labelled recorded samples (labels.json; folders, or folders of them): "
                        "their labels become masks, mixed with simulated windows (--sim-share)")
    t.add_argument("--images", metavar="DIR",
                   help="labelled single dark-field frames (with --labels, --network fusion; "
                        "fine-tune with --init): their windows mixed with simulated ones "
                        "(--sim-share); docs/labels_darkfield.md")
    t.add_argument("--labels", metavar="DIR",
                   help="with --images: the folder of their label files")
    t.add_argument("--bit-depth", type=int, metavar="BITS",
                   help="with --images: their bit depth, as classify's --bit-depth (default: "
                        "as read)")
    t.add_argument("--sim-share", type=share, default=0.5, metavar="S",
                   help="with --recorded or --images: share of simulated training windows, "
                        "so nothing the simulator taught is forgotten (default: 0.5)")
    t.add_argument("--folds", type=whole(2), metavar="K",
                   help="with --recorded: first K-fold cross-validation by sample (each fold "
                        "trained into OUT/fold-k, scored on its own samples), printing the "
                        "cross-validated sample FN/FP rates; with --images: by image, printing "
                        "Table II and the clean-image false FAIL rate; then the run on all")
    t.add_argument("--network", choices=("unet", "fusion", "hybrid"), default="hybrid",
                   help="hybrid: the ring light's physics as fixed layers and a small learned "
                        "head (model.hybrid), the shipped network (default); unet: the glass "
                        "paper's segmentation network; fusion: the weak-scratch paper's "
                        "classifier on 256 x 256 windows")
    t.add_argument("--loss", choices=("autoencoder", "bce"), default="bce",
                   help="U-Net and hybrid loss: cross-entropy (default, the shipped network's) "
                        "or the glass paper's autoencoder L2")
    t.add_argument("--alpha", type=share, default=0.7,
                   help="weight of false positives in the autoencoder loss (default: 0.7)")
    t.add_argument("--width", type=float, default=0.125,
                   help="feature-count multiplier; 1 is the paper's network (default: 0.125)")
    t.add_argument("--features", type=int, default=16,
                   help="hybrid network: features of the learned head (default: 16)")
    t.add_argument("--line-lengths", type=int, nargs="*", default=[], metavar="CELLS",
                   help="hybrid network: long-line channels, the gated contrast summed along "
                        "lines of these lengths in quarter-resolution cells, as z-scores "
                        "against the noise (default: none, the shipped recipe; 11 31 91, i.e. "
                        "0.5, 1.4 and 4.2 mm, was tried and not shipped: model card)")
    t.add_argument("--levels", type=int, default=6, choices=(4, 5, 6),
                   help="encoder levels (default: 6, as in the paper)")
    t.add_argument("--no-nested", action="store_true", help="own kernels for every convolution")
    t.add_argument("--epochs", type=int, default=30, help="(default: 30)")
    t.add_argument("--steps", type=int, default=100, help="batches per epoch (default: 100)")
    t.add_argument("--batch", type=int, default=8, help="patches per batch (default: 8)")
    t.add_argument("--scratch", type=int, default=4,
                   help="scratch patches per batch (default: 4; the glass paper: 1)")
    t.add_argument("--val-patches", type=int, default=32,
                   help="held-out validation patches, half with scratches (default: 32)")
    t.add_argument("--lr", type=float, default=2e-3,
                   help="Adam learning rate (default: 2e-3; the U-Net trained with 1e-4)")
    t.add_argument("--seed", type=int, default=7, help="(default: 7)")
    t.add_argument("--patch", type=int, default=512,
                   help="RAW patch side in px (default: 512; the glass paper: 1024)")
    t.add_argument("--compress", type=float, default=0.0, metavar="K",
                   help="U-Net input compression log1p(K x) / log1p(K); 0: none (default)")
    t.add_argument("--window-cache", default="", metavar="DIR",
                   help="keep the training windows here and cycle over a pool of them, so "
                        "later epochs and resumed runs render nothing (default: render each)")
    t.add_argument("--window-pool", type=int, default=2000, metavar="N",
                   help="windows of each kind in the pool (default: 2000; 3.2 MB each at "
                        "1024 px)")
    t.add_argument("--data", choices=("sixstate", "darkfield"), default="sixstate",
                   help="sixstate: 24-channel RAW stacks of the six LED states (default); "
                        "darkfield: windows of simulated single dark-field frames, the "
                        "weak-scratch paper's data (network fusion only; the classifier "
                        "'glass-inspect classify' runs); --window-cache then keeps its fixed "
                        "validation windows")
    t.add_argument("--no-ba", action="store_true",
                   help="fusion: leave out brightness adjustment (Table III ablations)")
    t.add_argument("--no-sa", action="store_true", help="fusion: leave out scale attention")
    t.add_argument("--no-ca", action="store_true", help="fusion: leave out channel attention")
    t.add_argument("--frame-px", type=int, default=2048,
                   help="darkfield: side of the simulated frames (default: 2048, the paper's)")
    t.add_argument("--train-images", type=whole(1), default=80,
                   help="darkfield: training frames, seeds 0.. (default: 80, the paper's)")
    t.add_argument("--val-images", type=whole(1), default=12,
                   help="darkfield: validation frames, the seeds after them (default: 12)")
    t.add_argument("--val-windows", type=whole(1), default=512,
                   help="darkfield: windows of the fixed validation set (default: 512)")
    t.add_argument("--lr-drop-patience", type=int, default=0, metavar="EPOCHS",
                   help="divide the learning rate by 10 after this many epochs without a "
                        "lower validation loss (default: 0, never)")
    t.add_argument("--extra-train-images", type=int, default=0, metavar="N",
                   help="darkfield: N more training frames beyond the split's, from seed "
                        "100000 (validation and test frames stay put; default: 0)")
    t.add_argument("--extra-peak-dn", type=float, nargs=2, metavar=("LO", "HI"),
                   help="darkfield: scratch peak range of the extra frames, DN (default: 3 300)")
    t.add_argument("--extra-chain-share", type=share, metavar="S",
                   help="darkfield: share of the extra frames' scratches that are chains of "
                        "points (default: 0.25)")
    t.add_argument("--extra-texture", default="none", metavar="FAMILY",
                   help="darkfield: texture family of the extra frames (edge.sim."
                        "darkfield_texture: grain, pits, glare, dust, seam, lines, quantised, "
                        "noise, or mixed, the training mix; the held-out family is refused; "
                        "default: none)")
    t.add_argument("--background-px", type=int, default=15, metavar="PX",
                   help="darkfield: odd side of the whitening's background mean (default: 15)")
    t.add_argument("--faint-weight", type=float, default=1.0, metavar="W",
                   help="darkfield: loss weight of scratch windows of visibility below 15, the "
                        "band the classifier misses (default: 1, every window alike)")
    t.add_argument("--init", metavar="CHECKPOINT",
                   help="start from this checkpoint's weights (same network and spec, up to "
                        "the whitening's settings) with a fresh optimiser: fine-tuning")
    t.add_argument("--freeze-norm", action=argparse.BooleanOptionalAction, default=None,
                   help="keep the batch-norm statistics of --init's checkpoint while "
                        "fine-tuning (default: on with --init)")
    t.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's)")
    t.add_argument("--resume", action="store_true", help="continue from --out/last.pt")
    t.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    t.set_defaults(func=cmd_train)
