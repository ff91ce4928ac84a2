"""The ``serve``, ``start``, ``health`` and ``line-sim`` subcommands, for ``glass-inspect``.

``add_commands(sub)`` adds them to the main parser's subparsers; ``python -m firmware_bridge``
runs them on their own. Each command returns an exit status and reports problems as one
message on stderr (exit 2), like the rest of the CLI; ``health`` answers 0 (healthy) or 1, the
two statuses Docker's HEALTHCHECK knows. ``start`` is ``serve`` after a first start that builds
the engine where needed (:mod:`export.provision`).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading

from firmware_bridge.cli_types import (
    mebibytes,
    positive_seconds,
    sample_prefix,
    seconds,
    whole_count,
)

log = logging.getLogger("glass-inspect.bridge")


def _link_settings(args: argparse.Namespace) -> tuple[str, int]:
    """Port and baud: the options, else the head configuration's [verdict_link]."""
    port, baud = args.port, args.baud
    if port is None or baud is None:
        from edge.cli_common import load_head

        cfg = load_head(args)
        port = port or cfg.verdict_link.port
        baud = baud or cfg.verdict_link.baud
    return port, baud


def _verdict_link(args: argparse.Namespace):
    """The head file's [verdict_link] (its kind: ascii, modbus-rtu, modbus-tcp), with --port
    and --baud in place of the file's serial port and baud rate."""
    from edge.cli_common import load_head
    from edge.config import ConfigError

    link = load_head(args).verdict_link
    if link.kind == "modbus-tcp" and (args.port or args.baud):
        raise ConfigError("--port and --baud are for a serial link; this head's [verdict_link] "
                          f"is modbus-tcp on {link.host}:{link.tcp_port}")
    update = {k: v for k, v in (("port", args.port), ("baud", args.baud)) if v is not None}
    return link.model_copy(update=update)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--head", "--config", dest="head", metavar="HEAD.toml",
                   default=argparse.SUPPRESS,
                   help="head file: the head that inspects, and its link to the line "
                        "controller ([verdict_link]: kind ascii, modbus-rtu, modbus-tcp or io; "
                        "[opcua] beside it) "
                        "(default: $GLASS_INSPECT_HEAD, else the embedded simulated head)")
    p.add_argument("--port", metavar="URL",
                   help="serial port: a device path or any pyserial URL (default: the head "
                        "configuration's verdict_link.port; 'sim' for serve makes a "
                        "pseudo-terminal and prints its path)")
    p.add_argument("--baud", type=int, help="baud rate (default: verdict_link.baud)")


def _serve_options(s: argparse.ArgumentParser, engine: bool = True) -> None:
    """The options of ``serve``, which ``start`` shares."""
    _common(s)
    if engine:
        s.add_argument("--engine", metavar="PATH",
                       help="model (.onnx) or TensorRT engine to serve (default: the head "
                            "file's engine.artifact); only the 'head' inspector uses it")
    s.add_argument("--health", metavar="FILE", default=os.environ.get("GLASS_INSPECT_HEALTH"),
                   help="keep a heartbeat in FILE for 'glass-inspect health' (default: "
                        "$GLASS_INSPECT_HEALTH; none when unset)")
    s.add_argument("--journal", default="verdict-journal.jsonl", metavar="PATH",
                   help="verdict journal, kept across restarts "
                        "(default: verdict-journal.jsonl)")
    s.add_argument("--journal-max-mb", type=mebibytes, default=64.0, metavar="MB",
                   help="rotate the journal once it passes MB MiB: unacknowledged and recent "
                        "verdicts go on in a new file, the old one becomes PATH.1 "
                        "(default: 64; 0 = never)")
    s.add_argument("--journal-keep", type=whole_count, default=4, metavar="N",
                   help="old journal files to keep, PATH.1 (newest) to PATH.N (default: 4)")
    s.add_argument("--inspector", choices=["head", "scripted"], default="head",
                   help="what inspects: 'head' = the head of the head file, real or simulated "
                        "(default; on the simulated head each sample id shows its own random "
                        "glass), 'scripted' = a fast deterministic stand-in for integration "
                        "tests")
    s.add_argument("--roi-time", type=seconds, default=0.2, metavar="S",
                   help="scripted inspector: seconds per RoI (default: 0.2)")
    s.add_argument("--repeat", type=positive_seconds, default=1.0, metavar="S",
                   help="send an unacknowledged verdict again every S seconds (default: 1)")
    s.add_argument("--abort-grace", type=positive_seconds, default=2.0, metavar="S",
                   help="after ABORT, answer ERROR within S seconds even if the inspection "
                        "has not stopped (default: 2)")
    s.add_argument("--inspect-timeout", type=positive_seconds, default=300.0, metavar="S",
                   help="stop an inspection after S seconds with ERROR (default: 300)")
    s.add_argument("--reopen", type=positive_seconds, default=0.5, metavar="S",
                   help="when the port is gone, try to reopen it every S seconds (default: 0.5)")
    s.add_argument("--metrics", metavar="HOST:PORT",
                   help="serve Prometheus metrics at http://HOST:PORT/metrics (docs/metrics.md; "
                        "PORT alone binds 127.0.0.1; default: off)")
    s.add_argument("--web", metavar="HOST:PORT",
                   help="serve the operator web page at http://HOST:PORT/ (docs/web.md; PORT "
                        "alone binds 127.0.0.1; labels and abort need the head file's [web] "
                        "token or $GLASS_INSPECT_WEB_TOKEN; default: off)")


def add_commands(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser(
        "serve", help="answer the line controller's inspection requests over the verdict link",
        description="Own the verdict link: take inspection requests from the line controller, "
                    "run one inspection at a time, journal each verdict and deliver it until it "
                    "is acknowledged. The head file's [verdict_link] kind picks the link: "
                    "ascii (docs/protocol.md), modbus-rtu or modbus-tcp (docs/modbus.md), io "
                    "(docs/io_link.md); [opcua] adds an OPC UA server (docs/opcua.md).")
    _serve_options(s)
    s.set_defaults(func=cmd_serve)

    st = sub.add_parser(
        "start", help="first start on the device: build the engine if needed, then serve",
        description="The entry point of the Jetson image. Build the TensorRT engine of the "
                    "head file's ONNX model into the engine cache (first start, or when the "
                    "model, the TensorRT version or the GPU changed; otherwise the cached engine "
                    "is loaded), check it, then serve as 'serve' does. Where TensorRT cannot be "
                    "used, say so and serve the ONNX model on ONNX Runtime, unless "
                    "--require-tensorrt. A failed build ends with one message and exit status 2, "
                    "and nothing is served. docs/deploy.md.")
    _serve_options(st, engine=False)
    st.add_argument("--cache", metavar="DIR",
                    help="engine cache folder (default: $GLASS_INSPECT_ENGINES, else "
                         "~/.cache/glass-inspect/engines)")
    st.add_argument("--precision", choices=("fp16", "fp32"), default="fp16",
                    help="engine precision (default: fp16; INT8 needs calibration samples: "
                         "'export engine')")
    st.add_argument("--workspace-mb", type=int, default=1024, metavar="MB",
                    help="TensorRT builder workspace limit in MiB (default: 1024)")
    st.add_argument("--require-tensorrt", action="store_true",
                    help="refuse to start without TensorRT instead of serving the ONNX model on "
                         "ONNX Runtime (the Jetson image sets it)")
    st.set_defaults(func=cmd_start)

    h = sub.add_parser(
        "health", help="is the serving head healthy? (exit 0 yes, 1 no: Docker's HEALTHCHECK)",
        description="Read the heartbeat that 'serve --health FILE' keeps and print one line: "
                    "healthy when the serve process is alive, its loop reported within "
                    "--max-age seconds, the line controller's port is open and the verdict "
                    "journal's disk has room. Exit status 0 when healthy, else 1.")
    h.add_argument("--file", metavar="FILE", default=os.environ.get("GLASS_INSPECT_HEALTH"),
                   help="the heartbeat file (default: $GLASS_INSPECT_HEALTH)")
    h.add_argument("--max-age", type=positive_seconds, default=30.0, metavar="S",
                   help="a heartbeat older than S seconds means a stuck loop (default: 30)")
    h.add_argument("--min-free-mb", type=float, default=64.0, metavar="MB",
                   help="least free space for the verdict journal, in MiB (default: 64)")
    h.set_defaults(func=cmd_health)

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
    ls.add_argument("--prefix", type=sample_prefix, default="LS",
                    help="sample id prefix (default: LS)")
    ls.add_argument("--timeout", type=positive_seconds, default=60.0, metavar="S",
                    help="seconds to wait for each verdict (default: 60)")
    ls.add_argument("--stall", type=positive_seconds, default=5.0, metavar="S",
                    help="ask again when nothing was heard of a sample for S seconds "
                         "(default: 5)")
    ls.add_argument("--tolerate-noise", action="store_true",
                    help="report lines with a bad CRC without failing (for a noisy test wire)")
    ls.add_argument("--json", metavar="PATH", help="also write the answers as JSON")
    ls.set_defaults(func=cmd_line_sim)

    from firmware_bridge.fleet_cli import add_command as add_fleet

    add_fleet(sub)


def _make_inspector(args: argparse.Namespace):
    """The inspector and what to close when serving ends."""
    if args.inspector == "head":
        from edge.assembly import build_head
        from edge.cli_common import load_head
        from edge.hardware.leds import darken_on_signals
        from firmware_bridge.inspector import HeadInspector

        asm = build_head(load_head(args), engine_path=getattr(args, "engine", None))
        if threading.current_thread() is threading.main_thread():
            darken_on_signals(asm.ring, (signal.SIGINT,))  # SIGTERM stops the server cleanly
        for part, what in asm.parts.items():
            log.info("%s: %s", part, what)
        return HeadInspector(asm), asm.close
    from firmware_bridge.inspector import ScriptedInspector

    return ScriptedInspector(roi_time_s=args.roi_time), lambda: None


def cmd_serve(args: argparse.Namespace) -> int:
    from edge.cli_common import load_head
    from firmware_bridge.service import serve

    link = _verdict_link(args)
    head = load_head(args)  # [fleet]: where the head reports, if anywhere
    return serve(link.port, link.baud, args.journal, lambda: _make_inspector(args),
                 health=getattr(args, "health", None), repeat_s=args.repeat,
                 abort_grace_s=args.abort_grace, inspect_timeout_s=args.inspect_timeout,
                 reopen_s=args.reopen, label=args.inspector,
                 engine=getattr(args, "engine", None),
                 journal_max_bytes=int(args.journal_max_mb * 1024 * 1024),
                 journal_keep=args.journal_keep, link=link, metrics=args.metrics,
                 fleet=head.fleet, head_id=head.name, web=_web_page(args, head), head=head)


def _web_page(args: argparse.Namespace, head):
    """The page of ``--web``, or None (checked before anything starts)."""
    if not getattr(args, "web", None):
        return None
    from firmware_bridge.web.server import WebPage

    return WebPage(args.web, head, health_file=getattr(args, "health", None))


def _heartbeat(args: argparse.Namespace):
    """The heartbeat of ``--health``, or None."""
    if not getattr(args, "health", None):
        return None
    from firmware_bridge.health import Heartbeat

    return Heartbeat(args.health)


def cmd_start(args: argparse.Namespace) -> int:
    from edge.cli_common import load_head
    from export.provision import ProvisionError, start

    cfg = load_head(args)
    heartbeat = _heartbeat(args)
    if heartbeat is not None:
        heartbeat.write("provisioning", doing="preparing the engine")

    def serve(prepared) -> int:
        args.engine = str(prepared.path)
        return cmd_serve(args)

    try:
        return start(cfg, serve, cache_dir=args.cache, precision=args.precision,
                     require_tensorrt=args.require_tensorrt, workspace_mb=args.workspace_mb)
    except ProvisionError as exc:
        print(f"glass-inspect start: {exc}", file=sys.stderr)
        if heartbeat is not None:
            heartbeat.write("failed", doing=str(exc))
        return 2


def cmd_health(args: argparse.Namespace) -> int:
    from firmware_bridge.health import check_health

    if not args.file:
        print("unhealthy: no heartbeat file to read: give --file FILE or set "
              "GLASS_INSPECT_HEALTH (the one 'serve --health FILE' writes)")
        return 1
    ok, line = check_health(args.file, args.max_age, args.min_free_mb)
    print(line if ok else f"unhealthy: {line}")
    return 0 if ok else 1


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
