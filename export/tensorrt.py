"""ONNX -> serialized TensorRT engine, for TensorRT 10.3 (JetPack 6) and 10.12+ / 11.

Two ways to set precision, chosen by what the installed TensorRT offers (or forced):

* **weakly typed** (TensorRT 10.x): builder flags ``FP16`` / ``INT8``; INT8 scales come from an
  ``IInt8EntropyCalibrator2`` fed with calibration batches, its table kept in a cache file so a
  rebuild does not calibrate again;
* **strongly typed** (10.12+, the only way on 11, where the flags and calibrators are gone): the
  network is created with ``STRONGLY_TYPED`` and takes every type from the ONNX file, so FP16
  means an ONNX converted to float16 inside (float32 at its input and output) and INT8 means an
  ONNX with explicit Q/DQ scales (:mod:`export.quantize`).

Either way: one optimization profile over the configured batch sizes at the tile size (min =
smallest, opt = max = largest), a workspace limit, and a timing cache file reused across builds
(it holds the kernel timings; reusing it makes a rebuild take seconds). The engine gets a
sidecar (:mod:`edge.engine.sidecar`) and is kept in an engine cache keyed by model hash, TensorRT
version, device, precision, tile and batch sizes, so asking again for the same engine copies it
instead of building.

Everything that talks to TensorRT is in the functions taking ``trt``; the rest (keys, paths,
choice of mode) is plain Python and tested without a GPU.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from edge.engine.sidecar import PRECISIONS, Sidecar, SidecarError
from edge.engine.tensorrt import device_name, import_pycuda, import_tensorrt
from edge.hashing import sha256_file

DEFAULT_CACHE = Path.home() / ".cache" / "glass-inspect" / "engines"
INPUT = "frames"
OUTPUT = "scores"


class BuildError(RuntimeError):
    """TensorRT could not build the engine; the message carries the parser's or builder's words."""


@dataclass(frozen=True)
class BuildResult:
    path: Path
    sidecar: Sidecar
    from_cache: bool
    seconds: float


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-").lower()


def cache_key(onnx_sha256: str, tensorrt_version: str, device: str, precision: str, tile: int,
              batch_sizes: Sequence[int]) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    batches = "-".join(str(b) for b in sorted(set(batch_sizes)))
    return (f"{onnx_sha256[:16]}_trt{_slug(tensorrt_version)}_{_slug(device)}_{precision}"
            f"_t{tile}_b{batches}")


def profile_shapes(batch_sizes: Sequence[int], tile: int) -> tuple[tuple, tuple, tuple]:
    if not batch_sizes or min(batch_sizes) < 1:
        raise ValueError(f"batch sizes must be positive, got {list(batch_sizes)}")
    lo, hi = min(batch_sizes), max(batch_sizes)
    return (lo, 24, tile, tile), (hi, 24, tile, tile), (hi, 24, tile, tile)


def has_weak_typing(trt) -> bool:
    """True where the builder still has precision flags and implicit INT8 calibrators (10.x)."""
    flags = getattr(trt, "BuilderFlag", None)
    return (flags is not None and hasattr(flags, "FP16") and hasattr(flags, "INT8")
            and hasattr(trt, "IInt8EntropyCalibrator2"))


def choose_strong(trt, strongly_typed: bool | None) -> bool:
    weak_ok = has_weak_typing(trt)
    if strongly_typed is None:
        return not weak_ok
    if not strongly_typed and not weak_ok:
        raise BuildError(f"TensorRT {trt.__version__} has no precision flags or implicit INT8 "
                         "calibration; build strongly typed (the default there)")
    return strongly_typed


def network_flags(trt, strong: bool) -> int:
    # explicit batch is the only mode since TensorRT 10 (its flag is gone in 11): nothing to set
    return (1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)) if strong else 0


def _fp16_onnx(onnx_path: Path, out: Path) -> Path:
    import onnx

    try:
        from onnxruntime.transformers.float16 import convert_float_to_float16
    except ImportError:
        raise BuildError("a strongly typed FP16 build converts the ONNX model to float16 with "
                         "onnxruntime's converter: pip install onnxruntime") from None
    model = onnx.load(str(onnx_path))
    onnx.save(convert_float_to_float16(model, keep_io_types=True), str(out))
    return out


def _make_calibrator(trt, cuda, batches: Sequence[np.ndarray], cache_file: Path):
    """An IInt8EntropyCalibrator2 over host batches, its table cached in ``cache_file``."""

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self):
            trt.IInt8EntropyCalibrator2.__init__(self)
            self._batches = [np.ascontiguousarray(b, np.float32) for b in batches]
            self._next = 0
            self._device = cuda.mem_alloc(max(b.nbytes for b in self._batches))

        def get_batch_size(self):
            return int(self._batches[0].shape[0])

        def get_batch(self, names):
            if self._next >= len(self._batches):
                return None
            cuda.memcpy_htod(self._device, self._batches[self._next])
            self._next += 1
            return [int(self._device)]

        def read_calibration_cache(self):
            return cache_file.read_bytes() if cache_file.is_file() else None

        def write_calibration_cache(self, cache):
            cache_file.write_bytes(bytes(cache))

    return EntropyCalibrator()


def _build(trt, cuda, onnx_path: Path, precision: str, strong: bool, batch_sizes: Sequence[int],
           tile: int, workspace_mb: int, timing_cache: Path | None,
           batches: Sequence[np.ndarray] | None, calib_cache: Path | None) -> bytes:
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(network_flags(trt, strong))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i).desc()) for i in range(parser.num_errors))
        raise BuildError(f"TensorRT's ONNX parser rejected {onnx_path.name}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    profile = builder.create_optimization_profile()
    lo, opt, hi = profile_shapes(batch_sizes, tile)
    profile.set_shape(INPUT, lo, opt, hi)
    config.add_optimization_profile(profile)
    if not strong:
        if precision in ("fp16", "int8"):
            config.set_flag(trt.BuilderFlag.FP16)  # int8: layers without INT8 fall back to FP16
        if precision == "int8":
            config.set_flag(trt.BuilderFlag.INT8)
            if batches is None:
                raise BuildError("an INT8 build needs calibration samples")
            config.int8_calibrator = _make_calibrator(trt, cuda, batches, calib_cache)
            config.set_calibration_profile(profile)
    cache_bytes = timing_cache.read_bytes() if timing_cache and timing_cache.is_file() else b""
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, ignore_mismatch=False)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise BuildError(f"TensorRT could not build a {precision} engine from {onnx_path.name} "
                         "(see its log above)")
    if timing_cache is not None:
        tmp = timing_cache.with_name(timing_cache.name + ".partial")
        tmp.write_bytes(bytes(config.get_timing_cache().serialize()))
        tmp.replace(timing_cache)
    return bytes(plan)


def build_engine(onnx_path: str | Path, out: str | Path, precision: str = "fp16",
                 batch_sizes: Sequence[int] = (1, 4), tile: int = 512, workspace_mb: int = 1024,
                 timing_cache: str | Path | None = None,
                 quantization_batches: Sequence[np.ndarray] | None = None,
                 strongly_typed: bool | None = None, cache_dir: str | Path | None = DEFAULT_CACHE,
                 ) -> BuildResult:
    """Build (or fetch from the engine cache) the engine of ``onnx_path``; write it to ``out``."""
    import time

    if precision not in PRECISIONS:
        raise BuildError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "int8" and not quantization_batches:
        raise BuildError("an INT8 engine needs calibration samples (recorded samples, through "
                         "the runtime's preprocessing)")
    t0 = time.perf_counter()
    trt = import_tensorrt()
    cuda = import_pycuda()
    onnx_path, out = Path(onnx_path), Path(out)
    onnx_sha = sha256_file(onnx_path)
    device, cc = device_name(cuda)
    key = cache_key(onnx_sha, trt.__version__, device, precision, tile, batch_sizes)
    cached = Path(cache_dir) / f"{key}.engine" if cache_dir else None
    if cached is not None and cached.is_file():
        try:
            sc = Sidecar.read(cached)
            sc.check(sha256_file(cached), trt.__version__, device, onnx_sha)
            _copy_with_sidecar(cached, out)
            return BuildResult(out, sc, True, time.perf_counter() - t0)
        except SidecarError:
            pass  # a damaged cache entry: build again and replace it
    strong = choose_strong(trt, strongly_typed)
    ctx = cuda.Device(0).retain_primary_context()
    ctx.push()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            source = onnx_path
            if strong and precision == "fp16":
                source = _fp16_onnx(onnx_path, Path(tmp) / "fp16.onnx")
            elif strong and precision == "int8":
                from export.quantize import quantize_qdq

                source = quantize_qdq(onnx_path, Path(tmp) / "qdq.onnx", quantization_batches)
            calib_cache = out.with_name(out.name + ".calib") if precision == "int8" else None
            plan = _build(trt, cuda, source, precision, strong, batch_sizes, tile, workspace_mb,
                          Path(timing_cache) if timing_cache else None, quantization_batches,
                          calib_cache)
    finally:
        cuda.Context.pop()
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    partial.write_bytes(plan)
    partial.replace(out)
    sc = Sidecar(engine_sha256=sha256_file(out), onnx_sha256=onnx_sha, onnx_name=onnx_path.name,
                 tensorrt_version=trt.__version__, device=device, compute_capability=cc,
                 precision=precision, strongly_typed=strong, input_name=INPUT,
                 input_dtype="float32", output_name=OUTPUT, tile=tile,
                 batch_sizes=tuple(sorted(set(batch_sizes))),
                 built_utc=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    sc.write(out)
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        _copy_with_sidecar(out, cached)
    return BuildResult(out, sc, False, time.perf_counter() - t0)


def _copy_with_sidecar(src: Path, dst: Path) -> None:
    if src.resolve() == dst.resolve():
        return
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    shutil.copyfile(Sidecar.path_for(src), Sidecar.path_for(dst))
