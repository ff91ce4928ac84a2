"""The ``export`` subcommand (onnx, envelope, frame-envelope, engine, qdq, parity), for
``glass-inspect`` to register; the envelopes' commands live beside their fits."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from edge.cli_common import UsageError, head_option, load_head, require, size


def cmd_export_onnx(args: argparse.Namespace) -> int:
    require("torch", "ONNX export", "train")
    from export.onnx import ExportError, export_onnx
    from model.train import CheckpointError

    try:
        r = export_onnx(args.checkpoint, args.out, tile=args.tile, all_scales=args.all_scales,
                        raw_logit=args.raw_logit, region_threshold=args.region_threshold,
                        haze_floor=args.haze_floor)
    except (CheckpointError, ExportError) as exc:
        raise UsageError(str(exc)) from None
    print(f"wrote {r.path} ({r.bytes / 1e6:.2f} MB, {r.parameters:,} parameters, outputs "
          f"{', '.join(r.outputs)}); ONNX Runtime matches torch within {r.parity_max_abs:.2e}")
    if r.operating_point is not None:
        print(f"operating point: the network's probability {r.operating_point:g} (best F1 on "
              "its validation windows) is the exported model's 0.5")
    return 0


def cmd_export_engine(args: argparse.Namespace) -> int:
    from edge.engine import EngineError
    from export.tensorrt import (
        BuildError,
        build_engine,
        check_precision,
        read_model_io,
        resolve_tile,
    )

    cfg = load_head(args)
    try:  # the model's own input decides the tile and whether INT8 can be calibrated
        io = read_model_io(args.model)
        tile = resolve_tile(io, args.tile, cfg.pipeline.tile_size)
        check_precision(io, args.precision, Path(args.model).name)
    except BuildError as exc:
        raise UsageError(str(exc)) from None
    batches = None
    if args.precision == "int8":
        batches = _quantization_batches(args, cfg, max(cfg.engine.batch_sizes))
    out = Path(args.out) if args.out else Path(args.model).with_suffix(f".{args.precision}.engine")
    try:
        r = build_engine(args.model, out, args.precision, cfg.engine.batch_sizes,
                         tile, args.workspace_mb, args.timing_cache, batches,
                         args.strongly_typed, None if args.no_cache else args.cache_dir)
    except (BuildError, EngineError) as exc:
        raise UsageError(str(exc)) from None
    how = "from the engine cache" if r.from_cache else f"built in {r.seconds:.0f} s"
    print(f"wrote {r.path} ({r.sidecar.precision}, TensorRT {r.sidecar.tensorrt_version}, "
          f"{r.sidecar.device}, batches {list(r.sidecar.batch_sizes)}, tile {r.sidecar.tile}; "
          f"{how})")
    return 0


def _need_samples(args: argparse.Namespace) -> None:
    if not args.samples:
        raise UsageError("INT8 needs --samples SAMPLE_DIR (recorded samples to calibrate on)")


def _quantization_batches(args: argparse.Namespace, cfg, batch: int) -> list:
    from edge.inspection import load_calibration
    from export.quantization_data import quantization_batches

    _need_samples(args)
    try:
        return quantization_batches(args.samples, cfg, batch, load_calibration(cfg), args.tiles)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def cmd_export_qdq(args: argparse.Namespace) -> int:
    require("onnxruntime", "Q/DQ quantization", "cpu")
    from edge.inspection import load_calibration
    from export.quantization_data import calibration_tiles
    from export.quantize import quantize_qdq

    cfg = load_head(args)
    _need_samples(args)
    out = Path(args.out) if args.out else Path(args.model).with_suffix(".qdq.onnx")
    used = []

    def batches():  # one tile at a time: memory holds one tile's activations, not all tiles'
        for tile in calibration_tiles(args.samples, cfg, load_calibration(cfg), args.tiles):
            used.append(1)
            yield tile[None]

    try:
        quantize_qdq(args.model, out, batches(), args.method)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    print(f"wrote {out} (INT8 Q/DQ, {len(used)} calibration tiles, {args.method}); check it "
          f"with: glass-inspect export parity {args.model} {out}")
    return 0


def cmd_export_parity(args: argparse.Namespace) -> int:
    from edge.engine import EngineError, open_engine
    from edge.inspection import load_calibration
    from export.parity import compare, parity_rois

    cfg = load_head(args)
    batch = max(cfg.engine.batch_sizes)
    ref = cand = None
    try:
        ref = open_engine(args.reference, "onnxruntime", cfg.engine.threads, batch)
        cand = open_engine(args.candidate, "auto", cfg.engine.threads, batch)
        rois = parity_rois(cfg, args.samples, args.rois, args.seed, args.size)
        rep = compare(ref, cand, rois, cfg, load_calibration(cfg))
    except EngineError as exc:
        raise UsageError(str(exc)) from None
    finally:
        for e in (ref, cand):
            if e is not None:
                e.close()
    print(json.dumps(rep.to_dict(), indent=1))
    print(f"max abs difference {rep.max_abs:.3g} over {rep.rois} RoIs; defects "
          f"{'agree' if rep.defects_agree else 'DISAGREE in RoIs ' + str(rep.disagreeing_rois)} "
          f"({rep.defects_reference} vs {rep.defects_candidate})")
    return 0 if rep.defects_agree else 1


def add_commands(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser("export", help="export stage: checkpoint -> ONNX -> TensorRT engine",
                       description="Export stage. 'onnx': a training checkpoint -> an ONNX file "
                                   "(opset 17, input 'frames', dynamic batch), checked with "
                                   "onnx.checker, shape inference and parity with torch. "
                                   "'envelope': the training frames' statistics into the "
                                   "model's metadata. "
                                   "'engine': ONNX -> TensorRT engine. 'qdq': ONNX -> INT8 Q/DQ "
                                   "ONNX. 'parity': ONNX Runtime against an engine.")
    esub = e.add_subparsers(dest="what", required=True, metavar="WHAT")
    eo = esub.add_parser("onnx", help="checkpoint -> ONNX",
                         description="Write CHECKPOINT as ONNX; refuses to write a file whose "
                                     "ONNX Runtime output differs from torch by more than 1e-4.")
    eo.add_argument("checkpoint", metavar="CHECKPOINT", help="a .pt file written by 'train'")
    eo.add_argument("--out", metavar="FILE.onnx", help="(default: CHECKPOINT with .onnx)")
    eo.add_argument("--tile", type=int, default=512,
                    help="side of the example input and the parity check (default: 512)")
    eo.add_argument("--all-scales", action="store_true",
                    help="also output the half- and quarter-resolution maps")
    eo.add_argument("--raw-logit", action="store_true",
                    help="a window classifier: export the network's own logit, not shifted to "
                         "the operating point its validation chose (best_threshold)")
    eo.add_argument("--region-threshold", type=float, metavar="P",
                    help="a window classifier: the probability one window of a region must "
                         "reach to fail an image in 'glass-inspect classify' (choose it with "
                         "'glass-inspect evaluate-windows --on validation'); kept in the model")
    eo.add_argument("--haze-floor", type=float, metavar="F",
                    help="a whitening window classifier trained for a darker light: the haze "
                         "(a frame's median above black, a fraction of full scale) under which "
                         "'glass-inspect classify' refuses a frame as too dark to judge "
                         "(default when not given: 0.04, the shipped classifier's); kept in "
                         "the model")
    eo.set_defaults(func=cmd_export_onnx)

    from export.envelope_cli import add_command as add_envelope  # the six-state envelope
    add_envelope(esub)

    ee = esub.add_parser(
        "engine", help="ONNX -> TensorRT engine (FP32, FP16 or INT8) with its sidecar",
        description="Build a serialized TensorRT engine for this device: one optimization "
                    "profile over the head's batch sizes at the tile size (--tile), with the "
                    "model's own input and output (the U-Net's or the window classifier's), a "
                    "workspace limit, a "
                    "reusable timing cache; INT8 calibrated on recorded samples through the "
                    "runtime's preprocessing. Writes FILE.engine and FILE.engine.json (the "
                    "sidecar the runtime checks) and keeps a copy in the engine cache. Needs "
                    "TensorRT and pycuda (a Jetson or a machine with an NVIDIA GPU).")
    head_option(ee)
    ee.add_argument("model", metavar="MODEL.onnx")
    ee.add_argument("--out", metavar="FILE.engine",
                    help="(default: MODEL.<precision>.engine)")
    ee.add_argument("--precision", choices=("fp32", "fp16", "int8"), default="fp16",
                    help="(default: fp16; int8 only for the 24-channel six-state networks)")
    ee.add_argument("--tile", type=int, default=None,
                    help="side of the input the engine takes (default: the model's own where it "
                         "fixes one; 256, the classify window, for a window classifier; else "
                         "the head's pipeline.tile_size)")
    ee.add_argument("--samples", metavar="SAMPLE_DIR", nargs="*", default=[],
                    help="recorded samples for INT8 calibration")
    ee.add_argument("--tiles", type=int, default=64,
                    help="calibration tiles to use at most (default: 64)")
    ee.add_argument("--workspace-mb", type=int, default=1024,
                    help="builder workspace limit in MiB (default: 1024)")
    ee.add_argument("--timing-cache", metavar="FILE", default="timing.cache",
                    help="kernel timing cache, read and updated (default: timing.cache)")
    typing_ = ee.add_mutually_exclusive_group()
    typing_.add_argument("--strongly-typed", dest="strongly_typed", action="store_true",
                         default=None, help="types from the ONNX (Q/DQ for INT8); the default on "
                                            "TensorRT 11")
    typing_.add_argument("--weakly-typed", dest="strongly_typed", action="store_false",
                         help="builder precision flags and an INT8 calibrator (TensorRT 10)")
    ee.add_argument("--cache-dir", default=str(Path.home() / ".cache/glass-inspect/engines"),
                    help="engine cache folder (default: ~/.cache/glass-inspect/engines)")
    ee.add_argument("--no-cache", action="store_true", help="always build, keep no copy")
    ee.set_defaults(func=cmd_export_engine)

    eq = esub.add_parser(
        "qdq", help="ONNX -> INT8 Q/DQ ONNX (explicit quantization, for TensorRT 11)",
        description="Quantize MODEL.onnx to INT8 with explicit QuantizeLinear/DequantizeLinear "
                    "(symmetric, per-channel weights), calibrated on recorded samples through "
                    "the runtime's preprocessing. Runs on any CPU; the result runs on ONNX "
                    "Runtime, so 'export parity' can check it before a GPU builds it.")
    head_option(eq)
    eq.add_argument("model", metavar="MODEL.onnx")
    eq.add_argument("--samples", metavar="SAMPLE_DIR", nargs="+", required=True)
    eq.add_argument("--out", metavar="FILE.onnx", help="(default: MODEL.qdq.onnx)")
    eq.add_argument("--tiles", type=int, default=64, help="(default: 64)")
    eq.add_argument("--method", choices=("entropy", "minmax", "percentile"), default="percentile",
                    help="how activation ranges are chosen (default: percentile, 99.999 %% of |x|: "
                         "the most accurate on simulated samples; entropy: TensorRT's KL search)")
    eq.set_defaults(func=cmd_export_qdq)

    ep = esub.add_parser(
        "parity", help="run the same RoIs through ONNX Runtime and an engine, compare",
        description="Run the same RoIs (recorded with --samples, else simulated) through the "
                    "pipeline with REFERENCE.onnx on ONNX Runtime and with CANDIDATE (.engine or "
                    ".onnx); print the max abs difference of the score maps and whether the "
                    "kept defects agree. Exit status 1 when they do not.")
    head_option(ep)
    ep.add_argument("reference", metavar="REFERENCE.onnx")
    ep.add_argument("candidate", metavar="CANDIDATE")
    ep.add_argument("--samples", metavar="SAMPLE_DIR", help="recorded samples (default: simulate)")
    ep.add_argument("--rois", type=int, default=2, help="RoIs per sample (default: 2)")
    ep.add_argument("--seed", type=int, default=1, help="simulated sample seed (default: 1)")
    ep.add_argument("--size", type=size, metavar="WxH", help="simulate smaller frames")
    ep.set_defaults(func=cmd_export_parity)
    from export.frame_envelope_fit import add_command  # the window classifier's envelope
    add_command(esub)
