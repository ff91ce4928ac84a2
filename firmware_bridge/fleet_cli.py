"""``glass-inspect fleet``: every head's state and yield in one table, from the MQTT broker.

Added by :func:`firmware_bridge.cli.add_commands`. The table is redrawn every ``--refresh``
seconds (on a terminal the screen is cleared first; piped, each table follows the last);
``--once`` listens for ``--timeout`` seconds, prints one table and ends (for scripts and
tests): exit status 0 when at least one head was heard, 1 when none, 2 when the broker cannot
be reached or refused the watcher.
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def add_command(sub: argparse._SubParsersAction) -> None:
    f = sub.add_parser(
        "fleet", help="watch every head on an MQTT broker: state and yield in one table",
        description="Subscribe to the heads' reports on an MQTT broker (each head's [fleet] "
                    "section; docs/fleet.md) and show every head's state, counts and yield in "
                    "one table, refreshed; with --db, every message is also written to a "
                    "SQLite file (tables messages, verdicts, heads).")
    f.add_argument("--broker", required=True, metavar="URL",
                   help="the broker: mqtt://HOST:PORT (mqtts:// for TLS)")
    f.add_argument("--db", metavar="FILE.sqlite", help="write every message to this SQLite file")
    f.add_argument("--once", action="store_true",
                   help="listen for --timeout seconds, print one table and end")
    f.add_argument("--timeout", type=float, default=5.0, metavar="S",
                   help="with --once: seconds to listen (default: 5)")
    f.add_argument("--refresh", type=float, default=2.0, metavar="S",
                   help="redraw the table every S seconds (default: 2)")
    f.add_argument("--client-id", metavar="ID",
                   help="MQTT client id; the broker keeps this watcher's messages while it is "
                        "away under it (default: glass-inspect-fleet-<hostname>)")
    f.add_argument("--username", help="broker login (the password comes from "
                                      "$GLASS_INSPECT_MQTT_PASSWORD)")
    f.add_argument("--ca-file", metavar="PEM", help="the broker's CA, for mqtts://")
    f.set_defaults(func=cmd_fleet)


def _connect(mon, timeout: float) -> str | None:
    """None once subscribed; else why not."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if mon.refused:
            return f"the broker refused the watcher: {mon.refused}"
        if mon.connected.wait(0.1):
            return None
    host, port = mon.address
    return f"no answer from the MQTT broker at {host}:{port} within {timeout:g} s"


def cmd_fleet(args: argparse.Namespace) -> int:
    from firmware_bridge.fleet import Monitor, table

    for name, v in (("--timeout", args.timeout), ("--refresh", args.refresh)):
        if not 0 < v < float("inf"):
            print(f"glass-inspect fleet: {name} must be a positive number of seconds, got {v}",
                  file=sys.stderr)
            return 2
    try:
        mon = Monitor(args.broker, args.db, client_id=args.client_id, username=args.username,
                      password=os.environ.get("GLASS_INSPECT_MQTT_PASSWORD"),
                      ca_file=args.ca_file)
    except ValueError as exc:
        print(f"glass-inspect fleet: {exc}", file=sys.stderr)
        return 2
    try:
        problem = _connect(mon, min(args.timeout, 10.0) if args.once else 10.0)
        if problem:
            print(f"glass-inspect fleet: {problem}", file=sys.stderr)
            return 2
        if args.once:
            end = time.monotonic() + args.timeout
            while (left := end - time.monotonic()) > 0:
                mon.pump(min(left, 0.2))
            print(table(mon.heads))
            return 0 if mon.heads else 1
        clear = sys.stdout.isatty()
        while True:
            end = time.monotonic() + args.refresh
            while (left := end - time.monotonic()) > 0:
                mon.pump(min(left, 0.2))
            if clear:
                sys.stdout.write("\x1b[H\x1b[2J")
            print(f"{time.strftime('%H:%M:%S')}  {len(mon.heads)} head(s) on {args.broker}")
            print(table(mon.heads), flush=True)
    except KeyboardInterrupt:
        return 0
    finally:
        mon.close()
