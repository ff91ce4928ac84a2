"""TensorRT on the Jetson's GPU, through the TensorRT >= 10 tensor API and pycuda.

* The sidecar (:mod:`edge.engine.sidecar`) is checked before the plan is deserialized: the
  file's hash, the TensorRT version, the GPU (its name, compute capability, SM count and memory
  class: every Orin module's GPU is named "Orin") and, when the head names one, the model.
* Any batch from 1 to ``max_batch`` is taken (the pipeline's last batch of a RoI is whatever is
  left). Engines are built with an optimization profile from batch 1; one built with a higher
  minimum (before the profile started at 1) gets a shorter batch padded with zeros up to that
  minimum, and only the batch's own scores come back.
* The tensors' shapes come from the engine itself (:func:`input_shape`, :func:`output_shape`):
  the input's channel count and any fixed height and width as built, a dynamic height or width
  at the sidecar's tile size; so one class serves the U-Net (``N x 24 x t x t`` in,
  ``N x 1 x t x t`` out) and the window classifier (``N x 1 x 256 x 256`` in, ``N`` logits out).
* Buffers are allocated once, for the largest batch at those shapes: two sets of
  page-locked host and device buffers, and one CUDA stream. On one stream the GPU does each
  batch's copy in, network and copy out one after the other: the copies do not overlap the
  network. What overlaps is the CPU with the GPU: in ``infer_stream`` batch n+1 is staged and
  queued (copy in, run, copy out) before the engine waits for batch n, so while the GPU works on
  n+1 the caller stitches batch n's scores and the next batch is prepared.
* The CUDA context is the device's primary context, pushed around each call, so the engine can
  be used from the pipeline's worker thread.

Only this module imports ``tensorrt`` and ``pycuda``, and only when an engine is opened.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from edge.engine.base import Engine, EngineError, TensorSpec
from edge.engine.sidecar import Gpu, Sidecar, SidecarError
from edge.hashing import sha256_file


def import_tensorrt():
    try:
        import tensorrt as trt
    except ImportError:
        raise EngineError(
            "a TensorRT engine (.engine/.plan) needs the tensorrt Python module. On a Jetson it "
            "comes with JetPack, not from pip: the apt package python3-libnvinfer (part of "
            "nvidia-jetpack) installs it for the system's python3, and a virtual environment "
            "sees it only when created with --system-site-packages (python3 -m venv "
            "--system-site-packages .venv). On an x86_64 machine with an NVIDIA GPU: pip install "
            "tensorrt. On a machine without an NVIDIA GPU use the .onnx model with ONNX Runtime"
        ) from None
    return trt


def import_pycuda():
    try:
        import pycuda.driver as cuda
    except ImportError:
        raise EngineError(
            "the TensorRT engine needs pycuda for its buffers and stream: pip install "
            "'glass-inspect[jetson]'. pip compiles pycuda against the CUDA toolkit, so nvcc and "
            "the CUDA headers must be found first: on a Jetson, JetPack's toolkit (apt install "
            "nvidia-jetpack) in /usr/local/cuda, with PATH=/usr/local/cuda/bin:$PATH (or "
            "CUDA_ROOT=/usr/local/cuda), plus python3-dev and a C++ compiler"
        ) from None
    return cuda


def gpu_of(cuda) -> Gpu:
    """GPU 0 as the sidecar records it: name, compute capability, multiprocessor count and
    total memory (``cuDeviceTotalMem``; on a Jetson the memory CUDA may use, shared with the
    CPU)."""
    cuda.init()
    dev = cuda.Device(0)
    major, minor = dev.compute_capability()
    sms = dev.get_attribute(cuda.device_attribute.MULTIPROCESSOR_COUNT)
    return Gpu(dev.name(), f"{major}.{minor}", int(sms), int(dev.total_memory()) >> 20)


def _dims(dims) -> tuple[int, ...]:
    return tuple(int(d) for d in dims)


def _show(dims: tuple[int, ...]) -> str:
    return " x ".join("?" if d < 0 else str(d) for d in dims)


def input_shape(dims, tile: int, name: str = "input") -> tuple[int | None, ...]:
    """The input's :class:`TensorSpec` shape from ``engine.get_tensor_shape`` (``-1`` for a
    dynamic dimension): ``(None, C, H, W)``, the batch dynamic, the channel count as built, a
    fixed height or width as built, a dynamic one at the sidecar's ``tile``."""
    dims = _dims(dims)
    if len(dims) != 4:
        raise EngineError(f"input '{name}' has shape [{_show(dims)}]; expected N x C x H x W")
    channels = dims[1]
    if channels <= 0:
        what = "a dynamic channel count" if channels < 0 else "0 channels"
        raise EngineError(f"input '{name}' [{_show(dims)}] has {what}; an engine needs a fixed, "
                          "positive channel count: rebuild it from an ONNX model that fixes it")
    if tile <= 0:
        raise EngineError(f"tile {tile} is not a positive size")
    if any(d == 0 or d < -1 for d in dims[2:]):
        raise EngineError(f"input '{name}' has shape [{_show(dims)}]; its height and width must "
                          "be positive or dynamic")
    return (None, channels, *(tile if d == -1 else d for d in dims[2:]))


def output_shape(dims, tile: int, name: str = "output",
                 at: tuple[int, ...] | None = None) -> tuple[int | None, ...]:
    """The output's :class:`TensorSpec` shape from ``engine.get_tensor_shape``: ``(None,)`` for
    one logit per row, ``(None, C, H, W)`` for score maps, the batch dynamic, fixed dimensions
    as they are, a dynamic height or width at ``tile``. A dynamic dimension that is neither
    (a channel count TensorRT could not fix at build time) is taken from ``at``, the output's
    shape in an execution context whose input shape is set; without it, it is an error."""
    dims = _dims(dims)
    if not dims or dims[0] != -1:
        why = ("has no dimensions" if not dims else
               f"has its first dimension fixed at {dims[0]}")
        raise EngineError(f"output '{name}' [{_show(dims)}] {why}: no batch dimension, so it "
                          "cannot hold one result per row of a batch; rebuild the engine from an "
                          "ONNX model whose output's first axis is the dynamic batch")
    if len(dims) not in (1, 4):
        raise EngineError(f"output '{name}' has shape [{_show(dims)}]; expected N x C x H x W "
                          "scores or N logits")
    shape: list[int | None] = [None]
    for i, d in enumerate(dims[1:], start=1):
        if d > 0:
            shape.append(d)
        elif d == -1 and i >= 2:  # height, width: run at the tile size
            shape.append(tile)
        elif d == -1 and at is not None and len(at) == len(dims) and int(at[i]) > 0:
            shape.append(int(at[i]))
        else:
            raise EngineError(f"output '{name}' has shape [{_show(dims)}]: dimension {i} is "
                              f"{'dynamic' if d == -1 else d}; expected a fixed channel count")
    return tuple(shape)


def row_elements(shape: tuple[int | None, ...]) -> int:
    """Elements of one row (batch item) of a tensor of ``shape``; ``shape[0]`` is the batch."""
    return int(np.prod(shape[1:], dtype=np.int64))


class _Slot:
    """One set of buffers: page-locked host input/output, device input/output, an event."""

    def __init__(self, cuda, in_count: int, in_dtype, out_count: int):
        self.host_in = cuda.pagelocked_empty(in_count, in_dtype)
        self.host_out = cuda.pagelocked_empty(out_count, np.float32)
        self.dev_in = cuda.mem_alloc(self.host_in.nbytes)
        self.dev_out = cuda.mem_alloc(self.host_out.nbytes)
        self.done = cuda.Event()

    def free(self) -> None:
        self.dev_in.free()
        self.dev_out.free()


class TensorRTEngine(Engine):
    backend = "tensorrt"

    def __init__(self, path: str | Path, max_batch: int = 4, model_sha256: str = ""):
        trt = import_tensorrt()
        cuda = import_pycuda()
        self.path = Path(path)
        self._cuda = cuda
        try:
            self.sidecar = Sidecar.read(self.path)
            self.metadata = dict(self.sidecar.model_metadata)
            self.gpu = gpu_of(cuda)
            self.device, self.compute_capability = self.gpu.name, self.gpu.compute_capability
            self.sidecar.check(sha256_file(self.path), trt.__version__, self.gpu, model_sha256)
        except SidecarError as exc:
            raise EngineError(str(exc)) from None
        self._ctx = cuda.Device(0).retain_primary_context()
        self._ctx.push()
        try:
            self._load(trt, max_batch)
        finally:
            cuda.Context.pop()

    def _load(self, trt, max_batch: int) -> None:
        cuda, sc = self._cuda, self.sidecar
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        engine = self._runtime.deserialize_cuda_engine(self.path.read_bytes())
        if engine is None:
            raise EngineError(f"TensorRT could not deserialize {self.path} (see its log above)")
        self._engine = engine
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        modes = {n: engine.get_tensor_mode(n) for n in names}
        if sc.input_name not in names or sc.output_name not in names:
            raise EngineError(f"{self.path.name} has tensors {names}; its sidecar names input "
                              f"'{sc.input_name}' and output '{sc.output_name}'")
        if modes[sc.input_name] != trt.TensorIOMode.INPUT:
            raise EngineError(f"'{sc.input_name}' is not an input of {self.path.name}")
        in_dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(sc.input_name)))
        out_dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(sc.output_name)))
        if out_dtype != np.float32:
            raise EngineError(f"{self.path.name} outputs {out_dtype}; the pipeline reads float32")
        profile_min, _, profile_max = engine.get_tensor_profile_shape(sc.input_name, 0)
        self.max_batch = min(int(profile_max[0]), max(max_batch, 1))
        self._min_batch = max(int(profile_min[0]), 1)  # > 1: shorter batches are padded
        rows = max(self.max_batch, self._min_batch)
        self._context = engine.create_execution_context()
        try:
            in_shape, out_shape = self._shapes(engine, rows)
        except EngineError as exc:
            raise EngineError(f"{self.path.name}: {exc}") from None
        self.input = TensorSpec(sc.input_name, in_dtype, in_shape)
        self.output = TensorSpec(sc.output_name, out_dtype, out_shape)
        self._stream = cuda.Stream()
        n_in, n_out = rows * row_elements(in_shape), rows * row_elements(out_shape)
        self._slots = [_Slot(cuda, n_in, in_dtype, n_out) for _ in range(2)]

    def _shapes(self, engine, rows: int) -> tuple[tuple, tuple]:
        """The input's and the output's spec shapes, from the engine's own tensor shapes."""
        sc = self.sidecar
        in_shape = input_shape(engine.get_tensor_shape(sc.input_name), sc.tile, sc.input_name)
        out_dims = _dims(engine.get_tensor_shape(sc.output_name))
        at = None
        if len(out_dims) == 4 and out_dims[1] == -1:
            # a channel count TensorRT left dynamic: ask it for the largest batch's output shape
            if not self._context.set_input_shape(sc.input_name, (rows, *in_shape[1:])):
                raise EngineError(f"TensorRT refused input shape {[rows, *in_shape[1:]]}")
            at = _dims(self._context.get_tensor_shape(sc.output_name))
        return in_shape, output_shape(out_dims, sc.tile, sc.output_name, at)

    @property
    def identity(self) -> dict:
        sc = self.sidecar
        return {"backend": self.backend, "artifact": self.path.name,
                "sha256": sc.engine_sha256, "model_sha256": sc.onnx_sha256,
                "precision": sc.precision, "device": self.device,
                "sm_count": self.gpu.sm_count, "memory_mib": self.gpu.memory_mib,
                "tensorrt": sc.tensorrt_version}

    def _enqueue(self, slot: _Slot, batch: np.ndarray) -> tuple[int, ...]:
        """Queue copy in, run and copy out of ``batch``; the shape of its own scores."""
        cuda, ctx = self._cuda, self._context
        n = batch.shape[0]
        shape = (max(n, self._min_batch), *batch.shape[1:])
        flat = slot.host_in[:int(np.prod(shape))]
        flat[:batch.size] = batch.ravel()
        flat[batch.size:] = 0  # padding up to the profile's smallest batch, if any
        cuda.memcpy_htod_async(slot.dev_in, flat, self._stream)
        if not ctx.set_input_shape(self.input.name, shape):
            raise EngineError(f"TensorRT refused input shape {list(shape)}; the engine's "
                              f"profile allows batches of {self._min_batch} to "
                              f"{self.max_batch} of {_show(_dims(self.input.shape[1:]))}")
        ctx.set_tensor_address(self.input.name, int(slot.dev_in))
        ctx.set_tensor_address(self.output.name, int(slot.dev_out))
        if not ctx.execute_async_v3(stream_handle=self._stream.handle):
            raise EngineError(f"TensorRT failed to enqueue a batch of {list(shape)}")
        out_shape = tuple(ctx.get_tensor_shape(self.output.name))
        count = int(np.prod(out_shape))
        cuda.memcpy_dtoh_async(slot.host_out[:count], slot.dev_out, self._stream)
        slot.done.record(self._stream)
        return (n, *out_shape[1:])  # the padded rows' scores are not handed out

    def infer_stream(self, batches: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        self._ctx.push()
        try:
            pending = None
            for i, batch in enumerate(batches):
                self.check_batch(batch)
                slot = self._slots[i % 2]
                shape = self._enqueue(slot, np.ascontiguousarray(batch))
                if pending is not None:
                    yield self._finish(*pending)
                pending = (slot, shape)
            if pending is not None:
                yield self._finish(*pending)
        finally:
            self._cuda.Context.pop()

    def _finish(self, slot: _Slot, shape: tuple[int, ...]) -> np.ndarray:
        slot.done.synchronize()
        return slot.host_out[:int(np.prod(shape))].reshape(shape)

    def _run(self, batch: np.ndarray) -> np.ndarray:
        (out,) = self.infer_stream([batch])
        return out

    def infer(self, batch: np.ndarray) -> np.ndarray:
        return self._run(batch)  # infer_stream checks the batch

    def close(self) -> None:
        slots = getattr(self, "_slots", [])
        if slots:
            self._ctx.push()
            try:
                self._stream.synchronize()
                for s in slots:
                    s.free()
                self._slots = []
                self._context = None
                self._engine = None
            finally:
                self._cuda.Context.pop()
