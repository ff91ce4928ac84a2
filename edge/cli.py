"""``glass-inspect``: the one command-line entry point, with a subcommand per job.

The CLI only parses arguments, calls the library and reports in words an operator understands;
every error that the library raises for bad input (config, recording, arguments) becomes one
message on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections import Counter
from pathlib import Path

from edge import __version__, config

log = logging.getLogger("glass-inspect")


class UsageError(ValueError):
    """Arguments that do not fit together."""


def _size(text: str) -> tuple[int, int]:
    """WIDTHxHEIGHT -> (height, width)."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected WIDTHxHEIGHT, e.g. 1024x768, got {text!r}") from None
    if w < 16 or h < 16 or w % 2 or h % 2:
        raise argparse.ArgumentTypeError(f"frame size must be even and at least 16x16, got {text}")
    return h, w


def _share(text: str) -> float:
    v = float(text)
    if not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a share between 0 and 1, got {text}")
    return v


def _write_previews(sample_dir: Path, out_dir: Path | None = None) -> list[Path]:
    from edge.preview import outlines_for, states_panel
    from edge.recording import open_sample

    rec = open_sample(sample_dir)
    m = rec.manifest
    truth = rec.truth()
    out = out_dir or sample_dir / "preview"
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for entry in m.rois:
        frames = rec.frames(entry.index)
        outlines = (outlines_for(truth.defects, entry.origin_mm, m.mm_per_px, frames.shape[1:])
                    if truth else [])
        img = states_panel(frames, m.camera.bayer_pattern, (1 << m.camera.bit_depth) - 1,
                           m.illumination_deg, outlines)
        path = out / f"roi_{entry.index:02d}.png"
        img.save(path)
        written.append(path)
    return written


def _describe(sample) -> str:
    counts = Counter(d.kind for d in sample.defects)
    plural = {"scratch": "scratches", "dust": "dust specks", "stain": "stains", "fibre": "fibres"}
    return ", ".join(f"{counts.get(k, 0)} {name}" for k, name in plural.items())


def cmd_simulate(args: argparse.Namespace) -> int:
    from edge.recording import find_samples
    from edge.sim import SimHead, generate_sample
    from edge.sim.recorder import record_sample

    if args.samples is None:
        if not isinstance(args.preview, str):
            raise UsageError("simulate: give --samples N --out DIR, or --preview DIR")
        for sample_dir in find_samples(args.preview):
            for p in _write_previews(sample_dir):
                print(p)
        return 0
    if args.out is None:
        raise UsageError("simulate: --samples needs --out DIR")
    if isinstance(args.preview, str):
        raise UsageError("simulate: with --samples, give --preview without a folder; "
                         "the previews go into each sample's preview/ folder")
    cfg = config.load(args.config)
    head = SimHead(cfg, shape=args.size)
    extent = cfg.stage.roi_grid.extent_mm
    for k in range(args.samples):
        sample = generate_sample(args.seed + k, extent, args.scratch_share)
        path = record_sample(cfg, head, sample, args.out, progress=not args.quiet)
        log.info("sample %s: %s -> %s", sample.sample_id, _describe(sample), path)
        if args.preview:
            for p in _write_previews(path):
                log.info("  preview %s", p)
    return 0


def cmd_preview(args: argparse.Namespace) -> int:
    from edge.recording import find_samples

    for sample_dir in find_samples(args.sample_dir):
        out = Path(args.out) / sample_dir.name if args.out else None
        for p in _write_previews(sample_dir, out):
            print(p)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from edge.recording import MANIFEST, open_sample
    from edge.sim import SimHead, generate_sample
    from edge.sim.recorder import record_sample

    cfg = config.load(args.config)
    head = SimHead(cfg, shape=args.size)
    out = Path(args.out)
    log.info("head: %s (%s), %d RoIs of %s mm, %d x %d px frames, 6 illumination states",
             cfg.name, cfg.source, cfg.stage.roi_grid.count, cfg.stage.roi_grid.size_mm,
             head.shape[1], head.shape[0])
    sample = generate_sample(args.seed, cfg.stage.roi_grid.extent_mm, scratch_share=1.0)
    log.info("simulating sample %s: %s", sample.sample_id, _describe(sample))
    sample_dir = out / sample.sample_id
    manifest = sample_dir / MANIFEST
    if manifest.exists():
        old = open_sample(sample_dir).manifest
        if old.head_config_sha256 == cfg.digest() and old.camera.height == head.shape[0] \
                and old.camera.width == head.shape[1]:
            log.info("already recorded by this head: %s", sample_dir)
        else:
            manifest.unlink()  # recorded by another head: record again
    if not manifest.exists():
        record_sample(cfg, head, sample, out)
        log.info("recorded sample: %s", sample_dir)
    previews = _write_previews(sample_dir)
    for s in sample.scratches:
        x, y = s.points_mm[0]
        log.info("  scratch from (%.1f, %.1f) mm, %.2f mm long, peak %.0f DN, %s profile",
                 x, y, s.length_mm, s.intensity_dn, s.profile)
    log.info("previews (6 states side by side, ground truth outlined): %s", previews[0].parent)
    return _demo_inspect(cfg, sample_dir)


def _demo_inspect(cfg, sample_dir: Path) -> int:
    """Inspect the recorded sample with the head's network, if this installation can run it."""
    import importlib.util

    from edge.inspection import inspect_sample, load_engine, recorded_rois
    from edge.overlay import overlay_writer
    from edge.verdict import Status

    model = cfg.resolve(cfg.engine.artifact)
    if importlib.util.find_spec("onnxruntime") is None or not model.is_file():
        log.info("no inspection: needs onnxruntime and the network %s", model)
        return 0
    overlays = sample_dir / "overlay"
    with load_engine(cfg) as engine:
        rec, rois = recorded_rois(sample_dir, cfg)
        log.info("inspecting with %s on %s ...", model.name, engine.backend)
        v = inspect_sample(rec.sample_id, rois, cfg.stage.roi_grid.count, engine, None, cfg,
                           tuple(rec.manifest.mm_per_px), on_roi=overlay_writer(overlays, cfg))
    log.info("verdict: %s", v.summary())
    for d in v.defects:
        log.info("  scratch at (%.1f, %.1f) mm, %.1f mm long, peak score %.2f", *d.centre_mm,
                 d.length_mm, d.peak_score)
    log.info("overlays (brightest state, scratch score, kept boxes): %s", overlays)
    return 1 if v.status is Status.ERROR else 0


def cmd_config(args: argparse.Namespace) -> int:
    if args.action == "default":
        sys.stdout.write(config.default_text())
        return 0
    cfg = config.load(args.file)
    if args.action == "check":
        g = cfg.stage.roi_grid
        print(f"{cfg.source}: valid head configuration '{cfg.name}'")
        print(f"  camera {cfg.camera.width} x {cfg.camera.height} px, "
              f"{cfg.camera.bit_depth}-bit {cfg.camera.bayer_pattern}, "
              f"{cfg.mm_per_px[0] * 1000:.2f} x {cfg.mm_per_px[1] * 1000:.2f} um per pixel")
        print(f"  {g.count} RoIs ({g.columns} x {g.rows}) of {g.size_mm[0]} x {g.size_mm[1]} mm, "
              f"covering {g.extent_mm[0]:.1f} x {g.extent_mm[1]:.1f} mm")
        print(f"  config sha256 {cfg.digest()}")
    else:
        import json

        print(json.dumps(cfg.model_dump(mode="json"), indent=2))
    return 0


def _require(module: str, what: str, extra: str) -> None:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise UsageError(f"{what} needs {module}, which this installation lacks; install the "
                         f"{extra} extra: pip install -e '.[{extra}]'")


def cmd_train(args: argparse.Namespace) -> int:
    _require("torch", "training", "train")
    import torch

    from model.train import CheckpointError, Trainer, TrainSettings

    cfg = config.load(args.config)
    try:
        settings = TrainSettings(
            network=args.network, loss=args.loss, alpha=args.alpha, width=args.width,
            levels=args.levels, nested=not args.no_nested, epochs=args.epochs,
            steps_per_epoch=args.steps, batch_size=args.batch, scratch_per_batch=args.scratch,
            val_patches=args.val_patches, lr=args.lr, seed=args.seed, patch=args.patch,
            input_compression=args.compress,
            samples=[str(p) for p in args.samples])
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


def cmd_export_onnx(args: argparse.Namespace) -> int:
    _require("torch", "ONNX export", "train")
    from export.onnx import ExportError, export_onnx
    from model.train import CheckpointError

    try:
        r = export_onnx(args.checkpoint, args.out, tile=args.tile, all_scales=args.all_scales)
    except (CheckpointError, ExportError) as exc:
        raise UsageError(str(exc)) from None
    print(f"wrote {r.path} ({r.bytes / 1e6:.2f} MB, {r.parameters:,} parameters, outputs "
          f"{', '.join(r.outputs)}); ONNX Runtime matches torch within {r.parity_max_abs:.2e}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    import json

    _require("onnxruntime", "evaluation", "cpu")
    from model.evaluate import describe, evaluate

    cfg = config.load(args.config)
    models = {}
    for path in args.models:
        p = Path(path)
        if not p.is_file():
            raise UsageError(f"{p}: no such model file")
        models[p.stem if p.stem not in models else str(p)] = p
    results = evaluate(models, cfg, args.samples, args.seed, args.scratch_share, args.threads,
                       progress=not args.quiet)
    print(describe(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
        print(f"details: {args.json}")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from edge.inspection import load_calibration, load_engine, reason_of
    from edge.recording import find_samples
    from edge.verdict import Status

    cfg = config.load(args.config)
    samples = find_samples(args.sample_dir)
    engine = calibration = None
    try:
        engine = load_engine(cfg, args.engine)
        calibration = load_calibration(cfg, args.calibration)
    except Exception as exc:  # no usable engine or calibration: every sample is an ERROR
        setup_error = reason_of(exc)
    else:
        setup_error = None
    if engine is not None:
        log.info("engine: %s on %s", engine.path.name, engine.backend)
    verdicts = []
    for d in samples:
        v = _inspect_one(d, cfg, engine, calibration, setup_error, args.overlay)
        verdicts.append(v)
        print(v.summary())
        _print_defects(v)
        for r in v.rois:
            for note in r.notes:
                log.debug("  RoI %d: %s", r.index, note)
        if v.rois and v.rois[0].notes:
            log.info("  note: %s", v.rois[0].notes[0])
    if engine is not None:
        engine.close()
    if args.json:
        import json

        Path(args.json).write_text(json.dumps([v.to_dict() for v in verdicts], indent=1) + "\n")
        print(f"verdicts: {args.json}")
    return 1 if any(v.status is Status.ERROR for v in verdicts) else 0


def _print_defects(v, write=print) -> None:
    for k, x in enumerate(v.defects):
        cx, cy = x.centre_mm
        write(f"  scratch {k + 1}: centre ({cx:.2f}, {cy:.2f}) mm, {x.length_mm:.2f} mm long, "
              f"peak score {x.peak_score:.2f}, RoI {', '.join(map(str, x.rois))}")


def _truth_line(v, truth) -> tuple[str, bool | None]:
    """The ground truth beside a verdict, and whether the verdict agrees with it."""
    from edge.verdict import Status

    lengths = sorted((d.length_mm for d in truth.scratches), reverse=True)
    said = (f"{len(lengths)} scratch{'es' if len(lengths) != 1 else ''} "
            f"({', '.join(f'{x:.1f}' for x in lengths)} mm)" if lengths else "no scratch")
    if v.status is Status.ERROR:
        return f"truth: {said}", None
    ok = (v.status is Status.FAIL) == bool(lengths)
    judged = "agrees" if ok else ("MISSED" if lengths else "FALSE ALARM")
    return f"truth: {said} -> {judged}", ok


def cmd_run(args: argparse.Namespace) -> int:
    import random

    from tqdm import tqdm

    from edge.hardware.leds import darken_on_signals
    from edge.inspection import load_calibration, load_engine, reason_of
    from edge.sim.rig import SimRig

    if not args.sim:
        raise UsageError("this build has no camera backend for a real head yet; add --sim to run "
                         "the simulated head (MockFactory LEDs, GRBL simulator, SimCamera)")
    cfg = config.load(args.config)
    if cfg.simulation is None:
        raise UsageError(f"{cfg.source} describes a real head (no [simulation] section); "
                         "--sim needs a simulated one")
    try:
        engine = load_engine(cfg, args.engine)
        calibration = load_calibration(cfg, args.calibration)
    except Exception as exc:
        print(f"glass-inspect run: cannot start: {reason_of(exc)}", file=sys.stderr)
        return 1
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 31)
    grid = cfg.stage.roi_grid
    log.info("simulated head %r: %d RoIs of %d x %d px, frame time %g ms, stage %g mm/min, "
             "engine %s on %s", cfg.name, grid.count, cfg.camera.width, cfg.camera.height,
             cfg.camera.frame_time_ms, cfg.stage.feed_mm_min, engine.path.name, engine.backend)
    log.info("samples from seed %d, %d%% with scratches", seed, round(100 * args.scratch_share))
    verdicts: list = []
    with SimRig(cfg, engine, flavor=args.grbl, trace=args.trace, record_dir=args.record,
                calibration=calibration) as rig:
        darken_on_signals(rig.ring)
        log.info("stage: %s on %s", rig.stage.banner, rig.grbl.path)
        bar = tqdm(total=args.samples * grid.count, unit="RoI", dynamic_ncols=True,
                   disable=args.quiet or None, leave=False)
        try:
            _run_samples(args, rig, bar, seed, verdicts, cfg)
        except SystemExit:
            bar.close()
            log.error("stopped by a signal: LEDs dark, stage stopped; %d sample(s) done",
                      len(verdicts))
            raise
        bar.close()
    agree = sum(ok for _, ok in verdicts if ok is not None)
    judged = sum(ok is not None for _, ok in verdicts)
    verdicts = [v for v, _ in verdicts]
    counts = Counter(v.status.value for v in verdicts)
    mean = sum(v.timings_s.get("sample", 0.0) for v in verdicts) / max(1, len(verdicts))
    optics = sum(v.timings_s.get("acquisition", 0.0) for v in verdicts) / max(1, len(verdicts))
    print(f"{len(verdicts)} samples: {counts['PASS']} PASS, {counts['FAIL']} FAIL, "
          f"{counts['ERROR']} ERROR; verdict agrees with the ground truth on {agree} of {judged}; "
          f"{mean:.1f} s per sample, of which the stage and camera need {optics:.1f} s")
    if args.overlay:
        print(f"overlays: {args.overlay}")
    if args.record:
        print(f"recorded samples: {args.record}")
    if args.json:
        import json

        Path(args.json).write_text(json.dumps([v.to_dict() for v in verdicts], indent=1) + "\n")
    engine.close()
    return 1 if counts["ERROR"] else 0


def _run_samples(args, rig, bar, seed: int, verdicts: list, cfg) -> None:
    """Inspect ``args.samples`` random samples on ``rig``; (verdict, agrees) into ``verdicts``."""
    import threading

    from edge.overlay import overlay_writer

    count = cfg.stage.roi_grid.count
    for n in range(args.samples):
        sample = rig.random_sample(seed + n, args.scratch_share)
        rig.place(sample)
        on_roi = overlay_writer(Path(args.overlay) / sample.sample_id, cfg) if args.overlay \
            else None

        def status(text: str, sid: str = sample.sample_id) -> None:
            bar.set_postfix_str(f"{sid} {text}", refresh=True)

        v = rig.head.inspect(sample.sample_id, threading.Event(),
                             progress=lambda done, total: bar.update(1), on_roi=on_roi,
                             truth=sample, status=status)
        bar.n = (n + 1) * count
        bar.refresh()
        line, ok = _truth_line(v, sample)
        verdicts.append((v, ok))
        t = v.timings_s
        bar.write(f"{v.summary()}\n  {line}; {t.get('sample', 0):.1f} s "
                  f"(stage and camera {t.get('acquisition', 0):.1f} s)")
        _print_defects(v, bar.write)


def _inspect_one(sample_dir: Path, cfg, engine, calibration, setup_error: str | None,
                 overlay_dir: str | None):
    from edge.inspection import inspect_sample, reason_of, recorded_rois
    from edge.overlay import overlay_writer
    from edge.verdict import error

    if setup_error is not None:
        return error(sample_dir.name, setup_error)
    try:
        rec, rois = recorded_rois(sample_dir, cfg)
    except Exception as exc:
        return error(sample_dir.name, reason_of(exc), engine=engine.identity)
    out = Path(overlay_dir) / rec.sample_id if overlay_dir else None
    v = inspect_sample(rec.sample_id, rois, cfg.stage.roi_grid.count, engine, calibration, cfg,
                       tuple(rec.manifest.mm_per_px),
                       on_roi=overlay_writer(out, cfg) if out else None)
    if out:
        log.info("  overlays: %s", out)
    try:
        truth = rec.truth()
    except Exception:
        truth = None
    if truth is not None:
        log.info("  ground truth: %d scratch(es)", len(truth.scratches))
    return v


def cmd_export_engine(args: argparse.Namespace) -> int:
    from edge.engine import EngineError
    from export.tensorrt import BuildError, build_engine

    cfg = config.load(args.config)
    batches = None
    if args.precision == "int8":
        batches = _calibration_batches(args, cfg, max(cfg.engine.batch_sizes))
    out = Path(args.out) if args.out else Path(args.model).with_suffix(f".{args.precision}.engine")
    try:
        r = build_engine(args.model, out, args.precision, cfg.engine.batch_sizes,
                         cfg.pipeline.tile_size, args.workspace_mb, args.timing_cache, batches,
                         args.strongly_typed, None if args.no_cache else args.cache_dir)
    except (BuildError, EngineError) as exc:
        raise UsageError(str(exc)) from None
    how = "from the engine cache" if r.from_cache else f"built in {r.seconds:.0f} s"
    print(f"wrote {r.path} ({r.sidecar.precision}, TensorRT {r.sidecar.tensorrt_version}, "
          f"{r.sidecar.device}, batches {list(r.sidecar.batch_sizes)}; {how})")
    return 0


def _calibration_batches(args: argparse.Namespace, cfg, batch: int) -> list:
    from edge.inspection import load_calibration
    from export.calibration_data import calibration_batches

    if not args.samples:
        raise UsageError("INT8 needs --samples SAMPLE_DIR (recorded samples to calibrate on)")
    try:
        return calibration_batches(args.samples, cfg, batch, load_calibration(cfg), args.tiles)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def cmd_export_qdq(args: argparse.Namespace) -> int:
    _require("onnxruntime", "Q/DQ quantization", "cpu")
    from export.quantize import quantize_qdq

    cfg = config.load(args.config)
    batches = _calibration_batches(args, cfg, 1)  # ONNX Runtime's calibrator takes any batch
    out = Path(args.out) if args.out else Path(args.model).with_suffix(".qdq.onnx")
    quantize_qdq(args.model, out, batches, args.method)
    print(f"wrote {out} (INT8 Q/DQ, {sum(len(b) for b in batches)} calibration tiles, "
          f"{args.method}); check it with: glass-inspect export parity {args.model} {out}")
    return 0


def cmd_export_parity(args: argparse.Namespace) -> int:
    import json

    import numpy as np

    from edge.engine import EngineError, open_engine
    from edge.inspection import load_calibration
    from edge.recording import find_samples, open_sample
    from export.parity import compare

    cfg = config.load(args.config)
    try:
        ref = open_engine(args.reference, "onnxruntime", cfg.engine.threads,
                          max(cfg.engine.batch_sizes))
        cand = open_engine(args.candidate, "auto", cfg.engine.threads,
                           max(cfg.engine.batch_sizes))
    except EngineError as exc:
        raise UsageError(str(exc)) from None

    def rois():
        if args.samples:
            for d in find_samples(args.samples):
                rec = open_sample(d)
                for e in rec.manifest.rois[:args.rois]:
                    yield e.index, np.asarray(rec.frames(e.index))
            return
        from edge.sim import SimHead, generate_sample

        head = SimHead(cfg, shape=args.size)
        sample = generate_sample(args.seed, cfg.stage.roi_grid.extent_mm, scratch_share=1.0)
        for i in range(min(args.rois, cfg.stage.roi_grid.count)):
            r = head.render(sample, cfg.stage.roi_grid.roi_origin_mm(i), noise_seed=i)
            yield i, r.frames

    rep = compare(ref, cand, rois(), cfg, load_calibration(cfg))
    print(json.dumps(rep.to_dict(), indent=1))
    print(f"max abs difference {rep.max_abs:.3g} over {rep.rois} RoIs; defects "
          f"{'agree' if rep.defects_agree else 'DISAGREE in RoIs ' + str(rep.disagreeing_rois)} "
          f"({rep.defects_reference} vs {rep.defects_candidate})")
    return 0 if rep.defects_agree else 1


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="glass-inspect",
        description="Dark-field scratch inspection of smartphone cover glass on an edge device.",
        epilog="Run 'glass-inspect COMMAND --help' for the options of one command.",
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="log more detail")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def head_option(q: argparse.ArgumentParser) -> None:
        q.add_argument("--config", metavar="HEAD.toml",
                       help="head configuration file (default: the embedded simulated head)")

    d = sub.add_parser("demo", help="simulate one scratched sample on the simulated head and "
                                    "write previews of it",
                       description="Simulate one sample with scratches on the simulated head, "
                                   "record it, and write a preview PNG per RoI.")
    head_option(d)
    d.add_argument("--out", default="demo", metavar="DIR", help="where to write (default: demo)")
    d.add_argument("--seed", type=int, default=1, help="sample seed (default: 1)")
    d.add_argument("--size", type=_size, metavar="WxH", help="render smaller frames (tests)")
    d.set_defaults(func=cmd_demo)

    s = sub.add_parser(
        "simulate", help="render random glass samples into recorded-sample folders",
        description="Render random glass samples with the optics simulator and write them as "
                    "recorded samples (manifest, one TIFF of 6 RAW frames per RoI, ground truth). "
                    "With --preview DIR alone: write preview PNGs of recorded samples in DIR.")
    head_option(s)
    s.add_argument("--samples", type=int, metavar="N", help="number of samples to simulate")
    s.add_argument("--out", metavar="DIR", help="folder to write the sample folders into")
    s.add_argument("--seed", type=int, default=0,
                   help="seed of the first sample; sample k uses seed+k (default: 0)")
    s.add_argument("--scratch-share", type=_share, default=0.3, metavar="P",
                   help="share of samples with scratches (default: 0.3, as in the glass paper)")
    s.add_argument("--preview", nargs="?", const=True, default=False, metavar="DIR",
                   help="with --samples: also write previews; alone: preview the recorded "
                        "samples in DIR (each into its preview/ folder)")
    s.add_argument("--size", type=_size, metavar="WxH",
                   help="render smaller frames than the camera's (same pixel footprint)")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=cmd_simulate)

    v = sub.add_parser("preview", help="write preview PNGs of recorded samples",
                       description="One PNG per RoI: the 6 states side by side, ground truth "
                                   "outlined where the recording has it.")
    v.add_argument("sample_dir", metavar="SAMPLE_DIR",
                   help="a recorded sample folder, or a folder of them")
    v.add_argument("--out", metavar="DIR", help="write here instead of SAMPLE_DIR/preview")
    v.set_defaults(func=cmd_preview)

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
    t.add_argument("--network", choices=("unet", "fusion"), default="unet",
                   help="unet: the glass paper's segmentation network (default); fusion: the "
                        "weak-scratch paper's classifier on 256 x 256 windows")
    t.add_argument("--loss", choices=("autoencoder", "bce"), default="autoencoder",
                   help="U-Net loss: the paper's autoencoder L2 (default) or cross-entropy")
    t.add_argument("--alpha", type=_share, default=0.7,
                   help="weight of false positives in the autoencoder loss (default: 0.7)")
    t.add_argument("--width", type=float, default=0.125,
                   help="feature-count multiplier; 1 is the paper's network (default: 0.125)")
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
    t.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's)")
    t.add_argument("--resume", action="store_true", help="continue from --out/last.pt")
    t.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("export", help="export stage: checkpoint -> ONNX -> TensorRT engine",
                       description="Export stage. 'onnx': a training checkpoint -> an ONNX file "
                                   "(opset 17, input 'frames', dynamic batch), checked with "
                                   "onnx.checker, shape inference and parity with torch. "
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
    eo.set_defaults(func=cmd_export_onnx)

    ee = esub.add_parser(
        "engine", help="ONNX -> TensorRT engine (FP32, FP16 or INT8) with its sidecar",
        description="Build a serialized TensorRT engine for this device: one optimization "
                    "profile over the head's batch sizes at its tile size, a workspace limit, a "
                    "reusable timing cache; INT8 calibrated on recorded samples through the "
                    "runtime's preprocessing. Writes FILE.engine and FILE.engine.json (the "
                    "sidecar the runtime checks) and keeps a copy in the engine cache. Needs "
                    "TensorRT and pycuda (a Jetson or a machine with an NVIDIA GPU).")
    head_option(ee)
    ee.add_argument("model", metavar="MODEL.onnx")
    ee.add_argument("--out", metavar="FILE.engine",
                    help="(default: MODEL.<precision>.engine)")
    ee.add_argument("--precision", choices=("fp32", "fp16", "int8"), default="fp16",
                    help="(default: fp16)")
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
    eq.add_argument("--method", choices=("entropy", "minmax", "percentile"), default="entropy",
                    help="how activation ranges are chosen (default: entropy, as TensorRT's)")
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
    ep.add_argument("--size", type=_size, metavar="WxH", help="simulate smaller frames")
    ep.set_defaults(func=cmd_export_parity)

    i = sub.add_parser(
        "inspect", help="inspect recorded samples: verdict, defects in mm, overlays",
        description="Run recorded samples through the pipeline (correction, space-to-depth, "
                    "tiled inference, DBSCAN post-processing, merging across RoIs) and print "
                    "one verdict per sample: PASS, FAIL with its scratches in sample mm, or "
                    "ERROR with the reason. Exit status 1 when any verdict is ERROR.")
    head_option(i)
    i.add_argument("sample_dir", metavar="SAMPLE_DIR",
                   help="a recorded sample folder, or a folder of them")
    i.add_argument("--engine", metavar="PATH",
                   help="model (.onnx) or TensorRT engine (default: the head's engine.artifact)")
    i.add_argument("--calibration", metavar="FILE",
                   help="calibration file (default: the head's calibration.file)")
    i.add_argument("--overlay", metavar="DIR",
                   help="write a picture per RoI: brightest state, scores, kept boxes")
    i.add_argument("--json", metavar="FILE", help="also write the verdicts as JSON")
    i.set_defaults(func=cmd_inspect)

    r = sub.add_parser(
        "run", help="the inspection head at work: random samples through the whole simulated "
                    "head (--sim), each verdict beside its ground truth",
        description="Inspect N random simulated samples on a whole simulated head: the ring "
                    "light's 6 LED groups and the camera trigger on gpiozero's MockFactory, the "
                    "GRBL stage simulator on a pseudo-terminal driven by the real GRBL driver, a "
                    "camera that renders whatever the lit LEDs and the stage position show, and "
                    "the head's network on ONNX Runtime. Per sample: home if needed, then per "
                    "RoI move, settle and take 6 frames while the previous RoI runs through the "
                    "pipeline. Prints each verdict with the ground truth beside it. Exit status "
                    "1 when any verdict is ERROR. SIGTERM or Ctrl-C switch the LEDs off first.")
    head_option(r)
    r.add_argument("--sim", action="store_true",
                   help="run the simulated head (required: no real camera backend yet)")
    r.add_argument("--samples", type=int, default=3, metavar="N",
                   help="samples to inspect (default 3)")
    r.add_argument("--seed", type=int, help="first sample's seed (default: random; printed)")
    r.add_argument("--scratch-share", type=_share, default=0.5, metavar="P",
                   help="share of samples with scratches (default 0.5)")
    r.add_argument("--engine", metavar="PATH", help="model or engine (default: the head's)")
    r.add_argument("--calibration", metavar="FILE", help="calibration file (default: the head's)")
    r.add_argument("--overlay", metavar="DIR", help="write a picture per RoI under DIR/SAMPLE")
    r.add_argument("--record", metavar="DIR",
                   help="record every inspected sample's RAW frames (recorded-sample format)")
    r.add_argument("--json", metavar="FILE", help="also write the verdicts as JSON")
    r.add_argument("--grbl", choices=("grbl", "grblhal"), default="grbl",
                   help="firmware the stage simulator speaks (default grbl 1.1h)")
    r.add_argument("--trace", metavar="FILE",
                   help="log every GPIO edge (time, header pin, level) to FILE")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    r.set_defaults(func=cmd_run)

    q = sub.add_parser(
        "evaluate", help="score ONNX networks on held-out simulated samples (FN and FP rates)",
        description="Render N held-out samples on the full-size simulated head, run every MODEL "
                    "on the same frames with the runtime's post-processing, and report sample-, "
                    "image- and scratch-level rates as the glass paper's Table 1 counts them.")
    head_option(q)
    q.add_argument("models", nargs="+", metavar="MODEL.onnx")
    q.add_argument("--samples", type=int, default=50, help="(default: 50)")
    q.add_argument("--seed", type=int, default=900_000,
                   help="seed of the first sample (default: 900000, away from training seeds)")
    q.add_argument("--scratch-share", type=_share, default=0.3, metavar="P",
                   help="share of samples with scratches (default: 0.3)")
    q.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads (default: all)")
    q.add_argument("--json", metavar="FILE", help="also write the full results as JSON")
    q.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    q.set_defaults(func=cmd_evaluate)

    c = sub.add_parser("config", help="check, show or print the default head configuration",
                       description="check: validate a head file and summarise it; show: print it "
                                   "as validated JSON; default: print the embedded default TOML "
                                   "(a starting point for a real head).")
    c.add_argument("action", choices=("check", "show", "default"))
    c.add_argument("file", nargs="?", metavar="HEAD.toml",
                   help="head configuration (default: the embedded simulated head)")
    c.set_defaults(func=cmd_config)
    # the verdict link to the line controller: serve (head side) and line-sim (line side)
    from firmware_bridge.cli import add_commands

    add_commands(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    from edge.recording import RecordingError

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(message)s")
    try:
        return args.func(args)
    except (config.ConfigError, RecordingError, UsageError) as exc:
        print(f"glass-inspect {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"glass-inspect {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
