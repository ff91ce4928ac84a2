"""What every package's subcommands share: the head option, argument types, the usage error.

Each package contributes its own subcommands to ``glass-inspect`` (``add_commands(sub)`` in
``edge.cli``, ``edge.sim.cli``, ``model.cli``, ``model.train_cli``, ``export.cli``,
``firmware_bridge.cli``); each command parses its arguments and calls one library function.
"""

from __future__ import annotations

import argparse
import importlib.util

from edge import config
from edge.config import default_head_path
from edge.errors import UserError


class UsageError(UserError, ValueError):
    """Arguments that do not fit together, or a missing optional part of the installation."""


def head_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--head", "--config", dest="head", metavar="HEAD.toml",
                   help="head file (default: $GLASS_INSPECT_HEAD, else the embedded simulated "
                        "head)")


def load_head(args: argparse.Namespace) -> config.HeadConfig:
    return config.load(getattr(args, "head", None) or default_head_path())


def head_for(args: argparse.Namespace, verb: str) -> config.HeadConfig:
    """The head a command that drives hardware works on: ``--head FILE`` (or
    ``$GLASS_INSPECT_HEAD``), or with ``--sim`` alone the embedded simulated head; ``--sim``
    with a file that names a real camera is refused."""
    path = args.head or (None if args.sim else default_head_path())
    if path is None and not args.sim:
        raise UsageError(f"say which head to {verb}: --head HEAD.toml (a real head: write one "
                         "with 'glass-inspect config default'), or --sim for the simulated head")
    cfg = config.load(path)
    if args.sim and cfg.camera.kind == "v4l2":
        raise UsageError(f"--sim {verb}s a simulated head, but {cfg.source} names a real camera "
                         f"({cfg.camera.device}); leave out --sim to {verb} it")
    return cfg


def size(text: str) -> tuple[int, int]:
    """WIDTHxHEIGHT -> (height, width)."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected WIDTHxHEIGHT, e.g. 1024x768, got {text!r}") from None
    if w < 16 or h < 16 or w % 2 or h % 2:
        raise argparse.ArgumentTypeError(f"frame size must be even and at least 16x16, got {text}")
    return h, w


def whole(lo: int, hi: int | None = None):
    """An argparse type: a whole number from ``lo`` (to ``hi``), else a message saying so."""
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            v = lo - 1
        if v < lo or (hi is not None and v > hi):
            span = f"{lo} to {hi}" if hi is not None else f"at least {lo}"
            raise argparse.ArgumentTypeError(f"expected a whole number {span}, got {text!r}")
        return v

    return parse


def share(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        v = -1.0
    if not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a share between 0 and 1, got {text}")
    return v


def require(module: str, what: str, extra: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise UsageError(f"{what} needs {module}, which this installation lacks; install the "
                         f"{extra} extra: pip install -e '.[{extra}]'")
