"""Shared timing helper of the benchmark scripts."""

from __future__ import annotations

import time
from collections.abc import Callable


def best_of(fn: Callable[[], object], repeat: int, warm: bool = True) -> float:
    """Seconds of the fastest of ``repeat`` calls; ``warm`` first makes one untimed call (JIT or
    cache load, first touch of output pages)."""
    if warm:
        fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)
