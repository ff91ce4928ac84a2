"""argparse types of the bridge's commands (``serve``, ``start``, ``line-sim``): each turns one
option's text into its value or an ``ArgumentTypeError`` that says what was expected."""

from __future__ import annotations

import argparse


def seconds(text: str, allow_zero: bool = True) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not (v >= 0 if allow_zero else v > 0) or v == float("inf"):
        raise argparse.ArgumentTypeError(
            f"expected a {'' if allow_zero else 'positive '}number of seconds, got {text}")
    return v


def positive_seconds(text: str) -> float:
    return seconds(text, allow_zero=False)


def mebibytes(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a size in MiB, got {text!r}") from None
    if not 0 <= v < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a size in MiB, 0 or more, got {text}")
    return v


def whole_count(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number, 0 or more, got {v}")
    return v


def sample_prefix(text: str) -> str:
    from firmware_bridge.protocol import valid_sample_id

    if not valid_sample_id(f"{text}00000-0000"):
        raise argparse.ArgumentTypeError(
            f"prefix {text!r} must start with a letter or digit and use only A-Z a-z 0-9 _ . - "
            "(sample ids are at most 64 characters)")
    return text
