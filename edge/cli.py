"""``glass-inspect``: the one command-line entry point, with a subcommand per job.

This module holds the entry point and the head's own commands (run, inspect, preview, config).
Every package adds its own commands through the ``glass_inspect.commands`` entry-point group
(:data:`COMMAND_GROUP`), this module's included, so ``edge`` imports none of the packages above
it; a package whose commands fail to load shows as one command that says why. A command parses,
calls one library function and reports in words an operator understands; every error the
library raises for bad input (:class:`edge.errors.UserError`: head file, recording, a missing
part, arguments) becomes one message on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
from pathlib import Path

from edge import __version__, config
from edge.cli_common import head_for, head_option, load_head, share
from edge.errors import UserError

log = logging.getLogger("glass-inspect")


def cmd_preview(args: argparse.Namespace) -> int:
    from edge.preview import write_previews
    from edge.recording import find_samples

    for sample_dir in find_samples(args.sample_dir):
        for p in write_previews(sample_dir, Path(args.out) / sample_dir.name if args.out else None):
            print(p)
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    if args.action == "default":
        sys.stdout.write(config.default_text())
        return 0
    cfg = config.load(args.file)
    if args.action == "check":
        print("\n".join(cfg.summary()))
    else:
        print(json.dumps(cfg.model_dump(mode="json"), indent=2))
    return 0


def _write_json(path: str | None, verdicts) -> None:
    if path:
        Path(path).write_text(json.dumps([v.to_dict() for v in verdicts], indent=1) + "\n")
        print(f"verdicts: {path}")


def cmd_inspect(args: argparse.Namespace) -> int:
    from edge.inspection import inspect_recorded
    from edge.recording import find_samples
    from edge.verdict import Status

    def report(v) -> None:
        print(v.summary())
        for line in v.defect_lines():
            print(line)
        for r in v.rois:
            for note in r.notes:
                log.debug("  RoI %d: %s", r.index, note)

    verdicts = inspect_recorded(find_samples(args.sample_dir), load_head(args), args.engine,
                                args.calibration, args.overlay, on_verdict=report)
    _write_json(args.json, verdicts)
    return 1 if any(v.status is Status.ERROR for v in verdicts) else 0


def cmd_run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from edge.assembly import build_head
    from edge.hardware.leds import darken_on_signals
    from edge.runner import run_head

    cfg = head_for(args, "run")
    sim_options = None
    if cfg.simulated:
        from edge.sim.parts import SimOptions

        sim_options = SimOptions(flavor=args.grbl, trace=args.trace,
                                 scratch_share=args.scratch_share)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 31)
    grid = cfg.stage.roi_grid
    with build_head(cfg, engine_path=args.engine, calibration_path=args.calibration,
                    record_dir=args.record, sim_options=sim_options) as asm:
        darken_on_signals(asm.ring)
        log.info("%s head %r: %d RoIs of %d x %d px, frame time %g ms, stage %g mm/min",
                 "simulated" if cfg.simulated else "real", cfg.name, grid.count,
                 cfg.camera.width, cfg.camera.height, cfg.camera.frame_time_ms,
                 cfg.stage.feed_mm_min)
        for part, what in asm.parts.items():
            log.info("  %s: %s", part, what)
        if cfg.camera.kind == "sim":
            log.info("samples from seed %d, %d%% with scratches", seed,
                     round(100 * args.scratch_share))
        bar = tqdm(total=args.samples * grid.count, unit="RoI", dynamic_ncols=True,
                   disable=args.quiet or None, leave=False)

        def result(r) -> None:
            t = r.verdict.timings_s
            bar.write(r.verdict.summary())
            if r.said is not None:
                bar.write(f"  truth: {r.said}")
            bar.write(f"  {t.get('sample', 0):.1f} s (stage and camera "
                      f"{t.get('acquisition', 0):.1f} s)")
            for line in r.verdict.defect_lines():
                bar.write(line)

        def between(k: int) -> None:
            bar.clear()
            if sys.stdin.isatty():
                input(f"place sample {k + 1} of {args.samples} and press Enter (Ctrl-C stops) ")

        try:
            summary = run_head(
                asm, args.samples, seed=seed, overlay_dir=args.overlay, between=between,
                status=lambda sid, text: bar.set_postfix_str(f"{sid} {text}", refresh=True),
                roi_done=lambda: bar.update(1), on_result=result)
        except SystemExit:
            log.error("stopped by a signal: LEDs dark, stage stopped")
            raise
        finally:
            bar.close()
    print(summary.line())
    for what, path in (("overlays", args.overlay), ("recorded samples", args.record)):
        if path:
            print(f"{what}: {path}")
    _write_json(args.json, [r.verdict for r in summary.results])
    return 1 if summary.errors else 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    r = sub.add_parser(
        "run", help="the inspection head at work: a real head (--head) or the simulated one "
                    "(--sim)",
        description="Build the head its head file describes (real parts: the Jetson's GPIO, a "
                    "GRBL stage on a serial port, a V4L2 camera; or simulated ones) and inspect "
                    "N samples: per RoI move, settle and take one frame per LED group while the "
                    "previous RoI runs through the pipeline. A simulated head places its own "
                    "glass and shows the ground truth beside each verdict; on a real head the "
                    "operator places each sample. A head whose parts are missing stops at once "
                    "with one line per part, LEDs untouched (exit 2). Exit status 1 when any "
                    "verdict is ERROR. SIGTERM or Ctrl-C switch the LEDs off first.")
    head_option(r)
    r.add_argument("--sim", action="store_true",
                   help="run the embedded simulated head (or --head FILE, which must be "
                        "simulated): MockFactory LEDs, GRBL simulator, simulated camera")
    r.add_argument("--samples", type=int, default=3, metavar="N",
                   help="samples to inspect (default 3)")
    r.add_argument("--seed", type=int,
                   help="simulated head: first sample's seed (default: random; printed)")
    r.add_argument("--scratch-share", type=share, default=0.5, metavar="P",
                   help="simulated head: share of samples with scratches (default 0.5)")
    r.add_argument("--engine", metavar="PATH", help="model or engine (default: the head's)")
    r.add_argument("--calibration", metavar="FILE", help="calibration file (default: the head's)")
    r.add_argument("--overlay", metavar="DIR", help="write a picture per RoI under DIR/SAMPLE")
    r.add_argument("--record", metavar="DIR",
                   help="record every inspected sample's RAW frames (recorded-sample format)")
    r.add_argument("--json", metavar="FILE", help="also write the verdicts as JSON")
    r.add_argument("--grbl", choices=("grbl", "grblhal"), default="grbl",
                   help="simulated head: firmware the stage simulator speaks (default grbl)")
    r.add_argument("--trace", metavar="FILE",
                   help="simulated head: log every GPIO edge (time, header pin, level) to FILE")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    r.set_defaults(func=cmd_run)

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

    v = sub.add_parser("preview", help="write preview PNGs of recorded samples",
                       description="One PNG per RoI: the illumination states side by side, "
                                   "ground truth outlined where the recording has it.")
    v.add_argument("sample_dir", metavar="SAMPLE_DIR",
                   help="a recorded sample folder, or a folder of them")
    v.add_argument("--out", metavar="DIR", help="write here instead of SAMPLE_DIR/preview")
    v.set_defaults(func=cmd_preview)

    c = sub.add_parser("config", help="check, show or print the default head file",
                       description="check: validate a head file and summarise it; show: print it "
                                   "as validated JSON; default: print the embedded default TOML "
                                   "(a starting point for a real head).")
    c.add_argument("action", choices=("check", "show", "default"))
    c.add_argument("file", nargs="?", metavar="HEAD.toml",
                   help="head file (default: the embedded simulated head)")
    c.set_defaults(func=cmd_config)


#: The entry-point group through which each package adds its subcommands to ``glass-inspect``
#: (``pyproject.toml``: ``[project.entry-points."glass_inspect.commands"]``, one
#: ``NAME = "module:add_commands"`` line per package), as gpiozero finds its pin factories.
COMMAND_GROUP = "glass_inspect.commands"
#: The order in which ``--help`` lists the hooks' commands: the head's own first, then by what a
#: person does next. Hooks not named here (a third party's) follow, by name.
HOOK_ORDER = ("head", "check", "label", "classify", "calibration", "simulation", "training",
              "models", "export", "bridge")


def command_hooks() -> list:
    """The entry points of :data:`COMMAND_GROUP`, in :data:`HOOK_ORDER`."""
    from importlib.metadata import entry_points

    rank = {name: k for k, name in enumerate(HOOK_ORDER)}
    found = {ep.name: ep for ep in entry_points(group=COMMAND_GROUP)}
    return [found[n] for n in sorted(found, key=lambda n: (rank.get(n, len(rank)), n))]


def _unavailable(sub: argparse._SubParsersAction, hook, exc: BaseException) -> None:
    """A hook that cannot be loaded becomes one command that says why, instead of taking every
    other command down with it (Polygraphy's tool registry does the same)."""
    reason = f"{type(exc).__name__}: {exc}".strip().splitlines()[0]
    p = sub.add_parser(hook.name, help=f"(unavailable: {reason})",
                       description=f"The commands of {hook.value} could not be loaded: {reason}")
    p.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)

    def fail(args: argparse.Namespace) -> int:
        print(f"glass-inspect: the commands of {hook.value} are unavailable: {reason} "
              "(is the package installed with its extras? 'pip install -e .[...]')",
              file=sys.stderr)
        return 2

    p.set_defaults(func=fail)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="glass-inspect",
        description="Dark-field scratch inspection of smartphone cover glass on an edge device.",
        epilog="Run 'glass-inspect COMMAND --help' for the options of one command.",
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="log more detail")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    hooks = command_hooks()
    if not hooks:  # run from a source tree that was never installed: its own commands at least
        log.warning("no %s entry points are installed (pip install -e .): only the head's own "
                    "commands are listed", COMMAND_GROUP)
        add_commands(sub)
    for hook in hooks:
        try:
            hook.load()(sub)
        except Exception as exc:  # noqa: BLE001 - any failure of a hook is that hook's alone
            _unavailable(sub, hook, exc)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(message)s")
    try:
        return args.func(args)
    except UserError as exc:
        print(f"glass-inspect {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"glass-inspect {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
