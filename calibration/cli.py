"""The ``calibrate`` subcommand, for ``glass-inspect`` to register."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from edge.cli_common import UsageError, head_for, head_option

log = logging.getLogger("glass-inspect")


def _steps(text: str) -> list[str]:
    from calibration.procedure import STEPS

    steps = [s.strip() for s in text.split(",") if s.strip()]
    bad = [s for s in steps if s not in STEPS]
    if bad or not steps:
        raise argparse.ArgumentTypeError(f"steps are a comma-separated choice of "
                                         f"{','.join(STEPS)}; got {text!r}")
    return steps


def cmd_calibrate(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from calibration.procedure import Settings, calibrate, write_calibration
    from calibration.report import write_report
    from edge import config
    from edge.assembly import build_head
    from edge.hardware.leds import darken_on_signals

    # a calibration measures the raw head: no earlier calibration applied to its frames
    cfg = head_for(args, "calibrate")
    cfg = cfg.model_copy(update={"calibration": config.Calibration(file="")})
    settings = Settings(frames=args.frames, dot_pitch_mm=args.dot_pitch,
                        dot_diameter_mm=args.dot_diameter,
                        dot_grid_origin_mm=tuple(args.dot_origin), steps=args.steps,
                        redo=args.redo, golden=args.golden)
    with build_head(cfg) as asm:
        darken_on_signals(asm.ring)
        if asm.glass is not None:
            from calibration.targets import sim_placer

            place = sim_placer(asm, args.dot_pitch, args.dot_diameter, tuple(args.dot_origin))
        else:
            def place(what: str) -> None:
                if not sys.stdin.isatty():
                    raise UsageError(f"put the {what} under the camera: calibrating a real head "
                                     "needs an operator at a terminal")
                input(f"put the {what} under the camera and press Enter (Ctrl-C stops) ")

        bars: dict[str, tqdm] = {}

        def progress(what: str, done: int, total: int) -> None:
            bar = bars.get(what)
            if bar is None:
                bar = bars[what] = tqdm(total=total, desc=what, unit="frame", leave=False,
                                        disable=args.quiet or None)
            bar.n = done
            bar.refresh()

        try:
            run = calibrate(asm, args.out, settings, place=place, progress=progress)
        finally:
            for bar in bars.values():
                bar.close()
        written = write_calibration(run, cfg, Path(args.out) / "calibration.npz",
                                    asm.camera.serial)
    for step, figures in run.summary.items():
        shown = {k: v for k, v in figures.items() if not isinstance(v, list) or len(v) <= 6}
        print(f"{step}: {shown}")
    for p in write_report(run, args.out):
        print(f"report: {p}")
    print(f"calibration file: {written}  (name it in the head file: [calibration] file = ...)")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    from calibration.procedure import STEPS

    c = sub.add_parser(
        "calibrate", help="measure a head: dark frames, flat fields, defective pixels, geometry",
        description="Calibrate the head of a head file (or the simulated head: --sim) through "
                    "the same assembly that inspects: dark frames with the lens capped, flat "
                    "fields of a diffusing reference plate under each LED group, then the "
                    "dot-grid target for the geometry. Each step is kept in --out as it "
                    "finishes; running again resumes at the first step not done (--redo "
                    "measures again). On a real head it asks the operator to place each "
                    "target. Writes a report (PNG pictures, report.json).")
    head_option(c)
    c.add_argument("--sim", action="store_true", help="calibrate the embedded simulated head")
    c.add_argument("--out", required=True, metavar="DIR", help="the calibration run's folder")
    c.add_argument("--steps", type=_steps, default=list(STEPS), metavar="LIST",
                   help=f"which steps (default: {','.join(STEPS)})")
    c.add_argument("--frames", type=int, default=8, metavar="N",
                   help="frames per dark and per LED group (default 8)")
    c.add_argument("--dot-pitch", type=float, default=1.0, metavar="MM",
                   help="dot-grid target: pitch (default 1.0 mm)")
    c.add_argument("--dot-diameter", type=float, default=0.2, metavar="MM",
                   help="dot-grid target: dot diameter (default 0.2 mm)")
    c.add_argument("--dot-origin", type=float, nargs=2, default=(0.0, 0.0), metavar=("X", "Y"),
                   help="sample position of one dot of the grid (default 0 0)")
    c.add_argument("--golden", nargs="+", default=[], metavar="SAMPLE_DIR",
                   help="recorded samples of known truth (good and scratched): tune the "
                        "thresholds on them (the 'thresholds' step; none: skipped)")
    c.add_argument("--redo", action="store_true", help="measure steps already done again")
    c.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    c.set_defaults(func=cmd_calibrate)
