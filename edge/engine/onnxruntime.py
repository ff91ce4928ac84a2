"""ONNX Runtime on the CPU: the engine wherever there is no GPU, and the reference for parity.

Buffers are reused: the output of each batch size is bound once (``IOBinding`` onto a NumPy array
this engine owns), so a run allocates nothing; the array returned is that buffer.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edge.engine.base import Engine, EngineError, TensorSpec
from edge.hashing import sha256_file

_DTYPES = {"tensor(float)": np.dtype(np.float32), "tensor(float16)": np.dtype(np.float16)}
SCORES = "scores"


def _spec(arg) -> TensorSpec:
    if arg.type not in _DTYPES:
        raise EngineError(f"tensor '{arg.name}' has type {arg.type}; expected float or float16")
    shape = tuple(d if isinstance(d, int) else None for d in arg.shape)
    return TensorSpec(arg.name, _DTYPES[arg.type], shape)


class OnnxRuntimeEngine(Engine):
    backend = "onnxruntime"

    def __init__(self, path: str | Path, threads: int = 0, max_batch: int = 4,
                 model_sha256: str = ""):
        try:
            import onnxruntime as ort
        except ImportError:
            raise EngineError("the ONNX Runtime engine needs the onnxruntime package: "
                              "pip install 'glass-inspect[cpu]'") from None
        self.path = Path(path)
        self.sha256 = sha256_file(self.path)
        if model_sha256 and model_sha256 != self.sha256:
            raise EngineError(f"model {self.path.name} has SHA-256 {self.sha256[:12]}, the head is "
                              f"qualified with model {model_sha256[:12]}")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(self.path), opts,
                                                providers=["CPUExecutionProvider"])
        except Exception as exc:  # ORT raises its own types for every kind of bad file
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise EngineError(f"ONNX Runtime cannot load {self.path}: {first}") from None
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1:
            raise EngineError(f"{self.path.name} has {len(inputs)} inputs; a scratch network "
                              "has one (the frames)")
        self.input = _spec(inputs[0])
        named = [o for o in outputs if o.name == SCORES]
        self.output = _spec(named[0] if named else outputs[0])
        if len(self.input.shape) != 4:
            raise EngineError(f"{self.path.name} takes {self.input.describe()}; expected "
                              "N x C x H x W")
        if len(self.output.shape) not in (1, 4):
            raise EngineError(f"{self.path.name} outputs {self.output.describe()}; expected "
                              "N x 1 x H x W scores or N logits")
        # a model with a fixed channel count (the single-frame classifier's 1) keeps it; a
        # dynamic one is fed the pipeline's 24-channel space-to-depth stack
        channels = self.input.shape[1] or 24
        self.input = TensorSpec(self.input.name, self.input.dtype,
                                (None, channels) + self.input.shape[2:])
        self.max_batch = max_batch
        self.threads = threads
        self._binding = self.session.io_binding()
        self._out: dict[tuple[int, ...], np.ndarray] = {}
        meta = self.session.get_modelmeta().custom_metadata_map
        self.metadata = dict(meta)

    @property
    def identity(self) -> dict:
        return {"backend": self.backend, "artifact": self.path.name, "sha256": self.sha256,
                "model_sha256": self.sha256, "precision": np.dtype(self.input.dtype).name,
                "device": "cpu", "threads": self.threads}

    def _run(self, batch: np.ndarray) -> np.ndarray:
        n, _, h, w = batch.shape
        shape = (n,) if len(self.output.shape) == 1 else (n, 1, h, w)
        out = self._out.get(shape)
        if out is None:
            out = self._out[shape] = np.empty(shape, self.output.dtype)
        b = self._binding
        b.bind_cpu_input(self.input.name, batch)
        b.bind_output(self.output.name, "cpu", 0, out.dtype, shape, out.ctypes.data)
        try:
            self.session.run_with_iobinding(b)
        except Exception as exc:
            raise EngineError(f"ONNX Runtime failed on a batch of {list(batch.shape)}: "
                              f"{str(exc).strip().splitlines()[0]}") from None
        return out if out.dtype == np.float32 else out.astype(np.float32)

    def close(self) -> None:
        self._out.clear()
        self.session = None
