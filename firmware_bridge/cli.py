"""The ``serve`` and ``line-sim`` subcommands, for ``glass-inspect`` to register.

``add_commands(sub)`` adds both to the main parser's subparsers; ``python -m firmware_bridge``
runs them on their own. Each command returns an exit status and reports problems as one
message on stderr (exit 2), like the rest of the CLI.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading

log = logging.getLogger("glass-inspect.bridge")


def _seconds(text: str, allow_zero: bool = True) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not (v >= 0 if allow_zero else v > 0) or v == float("inf"):
        raise argparse.ArgumentTypeError(
            f"expected a {'' if allow_zero else 'positive '}number of seconds, got {text}")
    return v


def _positive(text: str) -> float:
    return _seconds(text, allow_zero=False)


def _prefix(text: str) -> str:
    from firmware_bridge.protocol import valid_sample_id

    if not valid_sample_id(f"{text}00000-0000"):
        raise argparse.ArgumentTypeError(
            f"prefix {text!r} must start with a letter or digit and use only A-Z a-z 0-9 _ . - "
            "(sample ids are at most 64 characters)")
    return text


def _link_settings(args: argparse.Namespace) -> tuple[str, int]:
    """Port and baud: the options, else the head configuration's [verdict_link]."""
    port, baud = args.port, args.baud
    if port is None or baud is None:
        from edge.cli_common import load_head

        cfg = load_head(args)
        port = port or cfg.verdict_link.port
        baud = baud or cfg.verdict_link.baud
    return port, baud


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--head", "--config", dest="head", metavar="HEAD.toml",
                   default=argparse.SUPPRESS,
                   help="head file: the head that inspects, and the port and baud rate of the "
                        "link (default: $GLASS_INSPECT_HEAD, else the embedded simulated head)")
    p.add_argument("--port", metavar="URL",
                   help="serial port: a device path or any pyserial URL (default: the head "
                        "configuration's verdict_link.port; 'sim' for serve makes a "
                        "pseudo-terminal and prints its path)")
    p.add_argument("--baud", type=int, help="baud rate (default: verdict_link.baud)")


def add_commands(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser(
        "serve", help="answer the line controller's inspection requests over the serial link",
        description="Own the verdict link: take INSPECT requests from the line controller, run "
                    "one inspection at a time, journal each verdict and send it until it is "
                    "acknowledged. Protocol: docs/protocol.md.")
    _common(s)
    s.add_argument("--journal", default="verdict-journal.jsonl", metavar="PATH",
                   help="verdict journal, kept across restarts "
                        "(default: verdict-journal.jsonl)")
    s.add_argument("--inspector", choices=["head", "scripted"], default="head",
                   help="what inspects: 'head' = the head of the head file, real or simulated "
                        "(default; on the simulated head each sample id shows its own random "
                        "glass), 'scripted' = a fast deterministic stand-in for integration "
                        "tests")
    s.add_argument("--roi-time", type=_seconds, default=0.2, metavar="S",
                   help="scripted inspector: seconds per RoI (default: 0.2)")
    s.add_argument("--repeat", type=_positive, default=1.0, metavar="S",
                   help="send an unacknowledged verdict again every S seconds (default: 1)")
    s.add_argument("--abort-grace", type=_positive, default=2.0, metavar="S",
                   help="after ABORT, answer ERROR within S seconds even if the inspection "
                        "has not stopped (default: 2)")
    s.add_argument("--inspect-timeout", type=_positive, default=300.0, metavar="S",
                   help="stop an inspection after S seconds with ERROR (default: 300)")
    s.add_argument("--reopen", type=_positive, default=0.5, metavar="S",
                   help="when the port is gone, try to reopen it every S seconds (default: 0.5)")
    s.set_defaults(func=cmd_serve)

    ls = sub.add_parser(
        "line-sim", help="act as the line controller: ask for verdicts and check the answers",
        description="Simulate a line controller: send sample ids to a head running 'serve', "
                    "one at a time, and check that each gets exactly one verdict with a good "
                    "CRC. Exit status 1 if an answer was missing or doubled, or a line from the "
                    "head had a bad CRC.")
    _common(ls)
    ls.add_argument("--samples", type=int, default=10, metavar="N",
                    help="how many samples (default: 10)")
    ls.add_argument("--seed", type=int, default=1, help="sample id series (default: 1)")
    ls.add_argument("--prefix", type=_prefix, default="LS", help="sample id prefix (default: LS)")
    ls.add_argument("--timeout", type=_positive, default=60.0, metavar="S",
                    help="seconds to wait for each verdict (default: 60)")
    ls.add_argument("--stall", type=_positive, default=5.0, metavar="S",
                    help="ask again when nothing was heard of a sample for S seconds "
                         "(default: 5)")
    ls.add_argument("--tolerate-noise", action="store_true",
                    help="report lines with a bad CRC without failing (for a noisy test wire)")
    ls.add_argument("--json", metavar="PATH", help="also write the answers as JSON")
    ls.set_defaults(func=cmd_line_sim)


def _make_inspector(args: argparse.Namespace):
    """The inspector and what to close when serving ends."""
    if args.inspector == "head":
        from edge.assembly import build_head
        from edge.cli_common import load_head
        from edge.hardware.leds import darken_on_signals
        from firmware_bridge.inspector import HeadInspector

        asm = build_head(load_head(args))
        if threading.current_thread() is threading.main_thread():
            darken_on_signals(asm.ring, (signal.SIGINT,))  # SIGTERM stops the server cleanly
        for part, what in asm.parts.items():
            log.info("%s: %s", part, what)
        return HeadInspector(asm), asm.close
    from firmware_bridge.inspector import ScriptedInspector

    return ScriptedInspector(roi_time_s=args.roi_time), lambda: None


def cmd_serve(args: argparse.Namespace) -> int:
    from firmware_bridge.journal import Journal, JournalError
    from firmware_bridge.port import Link, sim_port
    from firmware_bridge.server import VerdictServer

    url, baud = _link_settings(args)
    try:
        journal = Journal(args.journal)
    except JournalError as exc:
        print(f"glass-inspect serve: {exc}", file=sys.stderr)
        return 2
    # the head first: one with missing parts stops here (exit 2), before the line sees a port
    try:
        inspector, close = _make_inspector(args)
    except BaseException:
        journal.close()
        raise
    opener = None
    if url == "sim":
        opener, url = sim_port()
        print(f"line controller port: {url}  (e.g. glass-inspect line-sim --port {url})",
              flush=True)
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        log.info("stopping (signal %d)", signum)
        stop.set()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_signal)
    try:
        link = Link(url, baud, name="line controller port", reopen_s=args.reopen,
                    opener=opener)
        server = VerdictServer(link, inspector, journal, repeat_s=args.repeat,
                               abort_grace_s=args.abort_grace,
                               inspect_timeout_s=args.inspect_timeout)
        log.info("serving verdicts on %s at %d baud with the %s inspector", url, baud,
                 args.inspector)
        server.run(stop)
    except KeyboardInterrupt:
        log.info("stopped")
    finally:
        close()
        journal.close()
    return 0


def cmd_line_sim(args: argparse.Namespace) -> int:
    from firmware_bridge import linesim

    url, baud = _link_settings(args)
    if url == "sim":
        print("glass-inspect line-sim: give --port with the path that 'glass-inspect serve' "
              "printed (the configuration says 'sim')", file=sys.stderr)
        return 2
    if args.samples < 1:
        print("glass-inspect line-sim: --samples must be at least 1", file=sys.stderr)
        return 2
    return linesim.main(url, baud, args.samples, args.seed, args.prefix, args.timeout,
                        args.tolerate_noise, args.json, args.stall)
