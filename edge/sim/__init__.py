"""The simulated twins of the head's parts: optics, GRBL stage, cameras, and a whole simulated
head's parts for the assembly. Chosen by the head file; no runtime module imports this package.

The optics names load on first use, so that the simulator's commands (``edge.sim.cli``) can be
registered with ``glass-inspect`` without compiling the renderer's Numba kernels."""

from __future__ import annotations

import importlib

_EXPORTS = {"REFERENCE_EXPOSURE_MS": "optics", "OpticsRenderer": "optics", "RoiRender": "optics",
            "Scene": "optics", "arc": "sample", "generate_sample": "sample"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
