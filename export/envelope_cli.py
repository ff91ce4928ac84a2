"""``glass-inspect export envelope``: the six-state network's training envelope into its
metadata (:mod:`export.envelope_fit`), for :mod:`export.cli` to register (imports nothing
heavy)."""

from __future__ import annotations

import argparse
from pathlib import Path

from edge.cli_common import UsageError, head_option, load_head, require, size


def cmd_export_envelope(args: argparse.Namespace) -> int:
    require("onnx", "writing a model's metadata", "train")
    from edge.hashing import sha256_file
    from export.envelope_fit import describe, fit, model_training_seed
    from export.onnx import ExportError, set_metadata

    cfg = load_head(args)
    if cfg.simulation is None:
        raise UsageError(f"export envelope: head {cfg.source} has no [simulation] section; the "
                         "envelope is measured on the simulated head the network was trained on")
    model = Path(args.model)
    if not model.is_file():
        raise UsageError(f"export envelope: {model} does not exist")
    seed = args.seed
    if seed is None:
        try:
            seed = model_training_seed(model)
        except ValueError as exc:
            raise UsageError(f"export envelope: {exc}") from None

    def tick(done: int, total: int) -> None:
        if not args.quiet and (done % 10 == 0 or done == total):
            print(f"  {done} / {total} RoIs measured", flush=True)

    try:
        f = fit(cfg, args.samples, seed, args.size, progress=tick, recorded=args.recorded)
    except ValueError as exc:
        raise UsageError(f"export envelope: {exc}") from None
    before = sha256_file(model)
    try:
        out = set_metadata(model, {"envelope": f.to_json()}, args.out)
    except ExportError as exc:
        raise UsageError(str(exc)) from None
    print("\n".join(describe(f)))
    also = f"; {len(f.recorded)} recorded samples" if f.recorded else ""
    print(f"wrote the envelope of {f.rois} training RoIs ({f.samples} samples, training seed "
          f"{seed}{also}) into {out}; SHA-256 {before[:12]} -> {sha256_file(out)[:12]} "
          "(weights unchanged: a head file's engine.model_sha256 and engines built from the "
          "old file name the old hash)")
    return 0


def add_command(esub: argparse._SubParsersAction) -> None:
    ev = esub.add_parser(
        "envelope", help="measure the training frames' envelope into an ONNX model's metadata",
        description="Render whole RoIs of the samples the network was trained on (the "
                    "training seed in the model's settings metadata, or --seed) on the head "
                    "file's simulated head, measure each with the runtime's statistics (dark "
                    "level, haze and balance per LED group, noise against the camera model, the "
                    "fixed layers' contrast, fall-off, saturation) and write the widened range "
                    "of each into the model's 'envelope' metadata. The pipeline then gives "
                    "ERROR for a RoI outside it. Only the metadata changes (the graph is checked "
                    "byte for byte); the file's SHA-256 does, so rebuild engines from it. With "
                    "--recorded, the RoIs of recorded samples the network was fine-tuned on "
                    "join the fit.")
    head_option(ev)
    ev.add_argument("model", metavar="MODEL.onnx")
    ev.add_argument("--samples", type=int, default=20,
                    help="training samples to measure, all their RoIs (default: 20)")
    ev.add_argument("--seed", type=int, default=None,
                    help="training seed (default: the model's, from its settings metadata)")
    ev.add_argument("--size", type=size, metavar="WxH",
                    help="render smaller frames (default: the head's camera; the envelope is "
                         "for frames like those it was measured on)")
    ev.add_argument("--recorded", nargs="+", default=(), metavar="DIR",
                    help="also every RoI of these recorded samples, which the network was "
                         "fine-tuned on (train --recorded)")
    ev.add_argument("--out", metavar="FILE.onnx", help="(default: MODEL, in place)")
    ev.add_argument("--quiet", action="store_true", help="no progress lines")
    ev.set_defaults(func=cmd_export_envelope)
