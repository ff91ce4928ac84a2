"""Inference engines: one small interface, one class per runtime, the artifact chooses.

``open_engine(path)`` gives an :class:`OnnxRuntimeEngine` for ``.onnx`` and a
:class:`TensorRTEngine` for ``.engine`` / ``.plan``. Neither runtime is imported until its
engine is asked for, so ``import edge`` works on a machine that has neither.
"""

from edge.engine.base import Engine, EngineError, TensorSpec, open_engine
from edge.engine.sidecar import Sidecar, SidecarError

__all__ = ["Engine", "EngineError", "Sidecar", "SidecarError", "TensorSpec", "open_engine"]
