"""``python -m firmware_bridge serve|line-sim``: the link's commands without the full CLI."""

from __future__ import annotations

import argparse
import logging
import sys

from firmware_bridge.cli import add_commands


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m firmware_bridge",
                                description="The verdict link to the line controller.")
    p.add_argument("-v", "--verbose", action="store_true", help="log more detail")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_commands(sub)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(message)s")
    try:
        return args.func(args)
    except ValueError as exc:  # edge.config.ConfigError and other bad input
        print(f"{p.prog} {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
