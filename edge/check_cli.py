"""``glass-inspect check PART``: bring a head up part by part (:mod:`edge.bringup`).

Each part alone, the others may still be missing. Exit status 0 when the part passed, 1 when it
did not (the last line says why), 2 when the head file, the arguments or the part itself are not
there (one message).
"""

from __future__ import annotations

import argparse
import sys

from edge.cli_common import UsageError, head_for, head_option, whole


def _number(lo: float, what: str):
    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            v = lo - 1.0
        if not v > lo:
            raise argparse.ArgumentTypeError(f"expected {what} above {lo:g}, got {text!r}")
        return v

    return parse


def _say(line: str) -> None:
    print(line, flush=True)


def cmd_check(args: argparse.Namespace) -> int:
    from edge import bringup

    cfg = head_for(args, "check")
    sim_options, flavor = None, getattr(args, "grbl", "grbl")
    if cfg.simulated:
        from edge.assembly import sim_options as options

        sim_options = options(flavor=flavor)
    elif flavor != "grbl":
        raise UsageError("--grbl chooses the stage simulator's firmware; this head's stage is "
                         f"real ({cfg.stage.port})")
    try:
        if args.part == "stage":
            out = bringup.check_stage(cfg, tolerance_mm=args.tolerance, home=args.home,
                                      say=_say, sim_options=sim_options)
        elif args.part == "lights":
            out = bringup.check_lights(cfg, on_ms=args.on_ms, flashes=args.flashes,
                                       between=_waiter(args.wait), say=_say,
                                       sim_options=sim_options)
        elif args.part == "camera":
            out = bringup.check_camera(cfg, frames=args.frames, group=args.group,
                                       out_dir=args.out, black=args.black,
                                       free_run=args.free_run, say=_say,
                                       sim_options=sim_options)
        else:
            out = bringup.check_trigger(cfg, frames=args.frames,
                                        group=None if args.dark else args.group, say=_say,
                                        sim_options=sim_options)
    except bringup.CheckError as exc:
        raise UsageError(str(exc)) from None
    return 0 if out.ok else 1


def _waiter(wait: bool):
    if not wait:
        return None
    if not sys.stdin.isatty():
        print("--wait: the input is not a terminal; not waiting between groups", flush=True)
        return None
    return lambda group: input(f"press Enter to light group {group} (Ctrl-C stops, LEDs dark) ")


def add_commands(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser(
        "check", help="bring a head up part by part: stage, lights, camera, trigger",
        description="Check one part of a head alone, the others may still be missing: "
                    "'stage' homes (if needed) and tours the RoIs, each move's time against "
                    "its plan and its position error; 'lights' lights each LED group in turn, "
                    "named by direction and header pin; 'camera' takes frames and measures "
                    "level, noise, saturation and focus; 'trigger' times each frame against its "
                    "trigger and LED edges. Exit status 0: passed; 1: not (the last line says "
                    "why); 2: the head file, the arguments or the part are not there.")
    parts = c.add_subparsers(dest="part", required=True, metavar="PART")

    def part(name: str, help: str, description: str) -> argparse.ArgumentParser:
        p = parts.add_parser(name, help=help, description=description)
        head_option(p)
        p.add_argument("--sim", action="store_true",
                       help="the embedded simulated head (or --head FILE, which must be "
                            "simulated)")
        p.set_defaults(func=cmd_check)
        return p

    s = part("stage", "home (if needed) and tour the RoIs: time and position per move",
             "Ready the stage (home or unlock as the controller needs), move to every RoI in "
             "the head's order and print per move the planned and the measured time and the "
             "position error (the controller's reported position against the target). Passes "
             "when every move ends within the tolerance. Ctrl-C stops the axes.")
    s.add_argument("--tolerance", type=_number(0.0, "a distance in mm"), metavar="MM",
                   help="largest position error that passes (default 0.01 mm, or one step of "
                        "the controller where that is more)")
    s.add_argument("--home", action="store_true",
                   help="home even when the controller says it is homed (tries the switches)")
    s.add_argument("--grbl", choices=("grbl", "grblhal"), default="grbl",
                   help="simulated head: the firmware the stage simulator speaks (default grbl)")

    lt = part("lights", "light each LED group in turn, named by direction and header pin",
              "Light each LED group in turn under the watchdog, a few times for a set time, and "
              "print its index, direction and header pin, so you see which group is which. "
              "Every LED is dark on every way out, Ctrl-C included.")
    lt.add_argument("--on-ms", type=_number(0.0, "a time in ms"), metavar="MS",
                    help="how long each lighting lasts; under the head's maximum on-time "
                         "(default 80 %% of it)")
    lt.add_argument("--flashes", type=whole(1, 100), default=3, metavar="N",
                    help="lightings per group (default 3)")
    lt.add_argument("--wait", action="store_true",
                    help="wait for Enter before each group (when the input is a terminal)")

    cam = part("camera", "frames at the head's exposure: level, noise, saturation, focus, PNGs",
               "Take frames at the head's exposure, every LED dark or one group lit, and print "
               "per frame the level over black (mean, median), the saturated share, the "
               "temporal noise (from consecutive frames) and a focus measure (variance of the "
               "Laplacian of the green plane, beside what noise alone gives). Fails when the "
               "head would refuse a frame or none comes.")
    cam.add_argument("--frames", type=whole(1, 1000), default=4, metavar="N",
                     help="frames to take (default 4; noise needs 2)")
    cam.add_argument("--group", type=whole(0), metavar="G", help="light LED group G (0-5)")
    cam.add_argument("--out", metavar="DIR", help="write each frame as PNG here")
    cam.add_argument("--black", type=float, metavar="DN",
                     help="the black level (default: the calibration's dark level, else the "
                          "simulated sensor's; else 0)")
    cam.add_argument("--free-run", action="store_true",
                     help="real camera: take frames without the trigger (LEDs dark), for a "
                          "bench whose trigger is not wired yet")

    t = part("trigger", "each frame's time stamp against its trigger and LED edges",
             "Take triggered frames with an LED group lit and print per frame when the LED came "
             "on, when the frame was stamped and when the LED went dark, all against the "
             "trigger's rising edge, then the delay's spread. A frame before its trigger, or "
             "outside the window its trigger allows, is flagged and fails the check.")
    t.add_argument("--frames", type=whole(1, 1000), default=10, metavar="N",
                   help="frames to time (default 10)")
    t.add_argument("--group", type=whole(0), default=0, metavar="G",
                   help="the LED group lit for each frame (default 0)")
    t.add_argument("--dark", action="store_true", help="every LED dark: the trigger alone")
