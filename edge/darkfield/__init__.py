"""The single-image weak-scratch mode: one dark-field frame, judged window by window.

``glass-inspect classify`` reads frames (:mod:`~edge.darkfield.reading`), prepares them for the
classifier's camera model (:mod:`~edge.darkfield.frame_prep`: Bayer sites
:mod:`~edge.darkfield.mosaic`, exposure :mod:`~edge.darkfield.exposure`, noise
:mod:`~edge.darkfield.noise`), runs the attention fusion classifier over a grid of windows
(:mod:`~edge.darkfield.windows`, :mod:`~edge.darkfield.classify`), merges the positive windows into
regions (:mod:`~edge.darkfield.regions`) and draws them (:mod:`~edge.darkfield.overlay`); the
command is :mod:`~edge.darkfield.cli`.

The names other packages use (``model``, ``export``, ``benchmarks``) are importable from here.
They load on first use, so that importing one light module (the window grid, the command's
parser) does not pull in the engine, Numba kernels and image libraries.
"""

from __future__ import annotations

from edge.lazy import lazy_exports

_EXPORTS = {
    "WINDOW": "windows", "STRIDE": "windows", "window_origins": "windows",
    "Frame": "reading", "ClassifyError": "reading", "read_image": "reading",
    "collect_inputs": "reading",
    "Region": "regions", "merge_windows": "regions",
    "Classifier": "classify", "ImageResult": "classify", "ModelError": "classify",
    "classify_paths": "classify", "resolve_model": "classify",
    "FramePrep": "frame_prep", "PrepError": "frame_prep",
    "Sensor": "noise", "REFERENCE_FULL_SCALE": "noise",
    "write_overlay": "overlay",
}

__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
