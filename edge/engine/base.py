"""The engine interface the pipeline talks to, and the choice of engine by artifact.

An engine takes a batch ``N x 24 x H x W`` (the corrected space-to-depth tiles) and returns the
scratch scores ``N x 1 x H x W`` float32; a window classifier (the attention fusion network of
:mod:`edge.darkfield.classify`, ``N x 1 x 256 x 256`` single frames) returns one logit per window,
``N``. The input's channel count is the model's own where it fixes one. The returned array may be a
buffer the engine reuses:
it is valid until the next call, so a caller keeps what it needs by copying (the pipeline
stitches it straight into the map).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import numpy as np

ONNX_SUFFIXES = (".onnx",)
TENSORRT_SUFFIXES = (".engine", ".plan", ".trt")
BACKENDS = ("auto", "onnxruntime", "tensorrt")


class EngineError(RuntimeError):
    """An engine that cannot be opened or run; the message says what and how to fix it."""


@dataclass(frozen=True)
class TensorSpec:
    """One input or output: its name, its dtype and its shape (``None`` for a dynamic axis)."""

    name: str
    dtype: np.dtype
    shape: tuple[int | None, ...]

    def describe(self) -> str:
        dims = " x ".join("?" if d is None else str(d) for d in self.shape)
        return f"'{self.name}' {np.dtype(self.dtype).name} [{dims}]"


class Engine(ABC):
    """A loaded network. Subclasses set these in ``__init__`` and implement ``_run``."""

    backend = "abstract"
    path: Path
    input: TensorSpec
    output: TensorSpec
    max_batch: int
    # the exporter's key/value notes on the model (ONNX metadata_props, carried into a TensorRT
    # engine's sidecar): what a runtime mode may read, e.g. the classifier's region threshold;
    # read-only and empty unless the engine sets its own
    metadata: Mapping[str, str] = MappingProxyType({})

    @property
    @abstractmethod
    def identity(self) -> dict:
        """What the verdict records about the engine: backend, artifact, hash, precision..."""

    @abstractmethod
    def _run(self, batch: np.ndarray) -> np.ndarray:
        """Run one checked batch; returns ``N x 1 x H x W`` (or ``N`` logits) float32."""

    def close(self) -> None:  # noqa: B027 - engines without resources need nothing
        """Free what the engine holds; it cannot be used afterwards."""

    def check_batch(self, batch: np.ndarray) -> None:
        spec = self.input
        ok = (isinstance(batch, np.ndarray) and batch.dtype == spec.dtype
              and batch.ndim == len(spec.shape)
              and all(d is None or d == n for d, n in zip(spec.shape, batch.shape, strict=True))
              and 1 <= batch.shape[0] <= self.max_batch)
        if not ok:
            got = (f"{batch.dtype} {list(batch.shape)}" if isinstance(batch, np.ndarray)
                   else type(batch).__name__)
            raise EngineError(f"engine {self.path.name} takes input {spec.describe()} with a "
                              f"batch of 1 to {self.max_batch}; got {got}")

    def infer(self, batch: np.ndarray) -> np.ndarray:
        self.check_batch(batch)
        return self._run(np.ascontiguousarray(batch))

    def infer_stream(self, batches: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """Scores of each batch in turn; an engine that can overlap copies with compute does."""
        for b in batches:
            yield self.infer(b)

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def backend_for(path: Path, backend: str = "auto") -> str:
    if backend not in BACKENDS:
        raise EngineError(f"unknown engine backend {backend!r}; expected one of {BACKENDS}")
    if backend != "auto":
        return backend
    suffix = path.suffix.lower()
    if suffix in ONNX_SUFFIXES:
        return "onnxruntime"
    if suffix in TENSORRT_SUFFIXES:
        return "tensorrt"
    raise EngineError(f"cannot tell the runtime of {path} from its name: expected a "
                      f"{'/'.join(ONNX_SUFFIXES)} file (ONNX Runtime) or a "
                      f"{'/'.join(TENSORRT_SUFFIXES)} file (TensorRT)")


def open_engine(path: str | Path, backend: str = "auto", threads: int = 0,
                max_batch: int = 4, model_sha256: str = "") -> Engine:
    """Load the artifact at ``path`` with the runtime its name (or ``backend``) says.

    ``model_sha256``, when given, is the SHA-256 of the ONNX model the head is qualified with;
    an artifact made from another model is refused.
    """
    path = Path(path)
    kind = backend_for(path, backend)
    if not path.is_file():
        raise EngineError(f"engine artifact {path} does not exist")
    if kind == "onnxruntime":
        from edge.engine.onnxruntime import OnnxRuntimeEngine

        return OnnxRuntimeEngine(path, threads=threads, max_batch=max_batch,
                                 model_sha256=model_sha256)
    from edge.engine.tensorrt import TensorRTEngine

    return TensorRTEngine(path, max_batch=max_batch, model_sha256=model_sha256)
