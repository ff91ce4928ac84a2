"""The simulated twins of the head's parts: optics, GRBL stage, cameras, and a whole simulated
head's parts for the assembly. Chosen by the head file; no runtime module imports this package.

The optics names load on first use, so that the simulator's commands (``edge.sim.cli``) can be
registered with ``glass-inspect`` without compiling the renderer's Numba kernels."""

from __future__ import annotations

from edge.lazy import lazy_exports

_EXPORTS = {"REFERENCE_EXPOSURE_MS": "optics", "OpticsRenderer": "optics", "RoiRender": "optics",
            "Scene": "optics", "arc": "sample", "generate_sample": "sample"}

__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
