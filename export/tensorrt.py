"""ONNX -> serialized TensorRT engine, for TensorRT 10.3 (JetPack 6) and 10.12+ / 11.

Two ways to set precision, chosen by what the installed TensorRT offers (or forced):

* **weakly typed** (TensorRT 10.x): builder flags ``FP16`` / ``INT8``; INT8 scales come from an
  ``IInt8EntropyCalibrator2`` fed with calibration batches, its table kept beside the engine in
  ``<engine>.<key>.calib``, the key a hash of the ONNX model, the calibration batches and the
  TensorRT version: a rebuild of the same model on the same data does not calibrate again, a
  retrained model or other data does (and the stale tables are removed);
* **strongly typed** (10.12+, the only way on 11, where the flags and calibrators are gone): the
  network takes every type from the ONNX file, so FP16 means an ONNX converted to float16 inside
  (float32 at its input and output) and INT8 means an ONNX with explicit Q/DQ scales
  (:mod:`export.quantize`). Both conversions need the ``onnx`` and ``onnxruntime`` packages. On
  10.x the network is created with ``STRONGLY_TYPED``; on 11 every network is strongly typed and
  that flag is deprecated (ignored), so it is not passed.

FP32 means FP32: TensorRT enables TF32 for float32 convolutions by default on Ampere and later
(the Orin's GPU), which rounds their inputs to 10 mantissa bits; an fp32 build clears the flag.

The tensors are the model's own (:func:`read_model_io`, from the ONNX file): its input's name,
channel count and height and width, its output's name. So the same build serves the U-Net
(``frames`` ``N x 24 x H x W`` -> ``scores`` ``N x 1 x H x W``, height and width dynamic, built
at the head's tile size) and the window classifier (``frames`` ``N x 1 x 256 x 256`` ->
``logit`` ``N``: a model that fixes its height and width is built at that size, and a tile that
disagrees is an error). INT8 calibration data is six-state frames (24 channels), so INT8 is
refused for a model that takes anything else.

Either way: one optimization profile at the tile size from batch 1 (the last batch of a RoI is
whatever is left over) to the largest configured batch (opt = max = largest), a workspace
limit, and a timing cache file reused across builds (it holds the kernel timings; reusing it
makes a rebuild take seconds). A timing cache holds timings of one GPU and TensorRT version;
one that TensorRT refuses (made elsewhere, or damaged) is reported, the build starts with a
fresh one, and the file is overwritten with this device's timings after a successful build. So
give each device and TensorRT version its own file (the default, ``timing.cache`` in the working
folder, is per machine).

The engine gets a sidecar (:mod:`edge.engine.sidecar`) and is kept in an engine cache keyed by
model hash, TensorRT version, GPU (name, compute capability, SM count and memory class, as
:class:`edge.engine.sidecar.Gpu` compares them: CUDA names every Orin module's GPU "Orin"),
precision, strong or weak typing, tile and batch sizes, for
INT8 the hash of the calibration batches, and the format of this build (:data:`CACHE_FORMAT`),
so asking again for the same engine copies it instead of building.

Everything that talks to TensorRT is in the functions taking ``trt``; the rest (keys, paths,
choice of mode and flags) is plain Python and tested with a fake ``tensorrt``.
"""

from __future__ import annotations

import glob
import hashlib
import importlib
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from edge.engine.sidecar import PRECISIONS, Gpu, Sidecar, SidecarError
from edge.engine.tensorrt import gpu_of, import_pycuda, import_tensorrt
from edge.hashing import sha256_file

log = logging.getLogger(__name__)

DEFAULT_CACHE = Path.home() / ".cache" / "glass-inspect" / "engines"
DEFAULT_TILE = 512  # the side a model with a dynamic height and width is built at, unless told
SCORES = "scores"  # the output served where a model has several (as ONNX Runtime does)
# INT8 calibration data (export.quantization_data) is the runtime's six-state input
CALIBRATION_CHANNELS = 24
# Part of every engine cache key: raise it when the build changes what it makes of the same
# inputs, so engines built before are not served from the cache. 2: the profile starts at batch
# 1, fp32 without TF32, typing and INT8 calibration data in the key. (The GPU's SMs and memory
# came into the key with the sidecar's version 3: a key of another form, so no bump was owed.)
CACHE_FORMAT = 2
# From this TensorRT on, every network is strongly typed and NetworkDefinitionCreationFlag.
# STRONGLY_TYPED is deprecated and ignored (TensorRT 11.0 Python API reference).
STRONG_BY_DEFAULT = (11, 0)
JETSON_EXTRA = "pip install 'glass-inspect[jetson]' (or: pip install onnx onnxruntime)"


class BuildError(RuntimeError):
    """TensorRT could not build the engine; the message carries the parser's or builder's words."""


@dataclass(frozen=True)
class BuildResult:
    path: Path
    sidecar: Sidecar
    from_cache: bool
    seconds: float


@dataclass(frozen=True)
class ModelIO:
    """What the build needs to know of an ONNX model's tensors (:func:`read_model_io`)."""

    input_name: str
    input_dtype: str  # "float32" or "float16"
    channels: int
    side: int | None  # height = width when the model fixes them, None when they are dynamic
    output_name: str
    output_rank: int | None  # 4: N x C x H x W maps, 1: N logits; None when the file omits it
    # the model's metadata_props, for the sidecar (edge.engine.base.Engine.metadata); not part
    # of what makes two models' tensors alike
    metadata: dict[str, str] = field(default_factory=dict, compare=False)

    @property
    def is_window_classifier(self) -> bool:
        """One logit per row: the window classifier of :mod:`edge.darkfield.classify`."""
        return self.output_rank == 1


_ONNX_DTYPES = {1: "float32", 10: "float16"}  # onnx.TensorProto.FLOAT, FLOAT16


def _dim(d) -> int | None:
    return int(d.dim_value) if d.HasField("dim_value") else None


def read_model_io(onnx_path: str | Path) -> ModelIO:
    """Input and output of the ONNX model at ``onnx_path``, read from its graph (not its
    weights): one input ``N x C x H x W`` with a fixed channel count and a height and width both
    fixed (and equal) or both dynamic; the output ``scores`` where there is one, else the first."""
    try:
        import onnx
    except ImportError:
        raise BuildError("reading the model's input and output needs the onnx package: "
                         f"{JETSON_EXTRA}") from None
    onnx_path = Path(onnx_path)
    try:
        model = onnx.load(str(onnx_path), load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError and others on a file that is not ONNX
        raise BuildError(f"{onnx_path} is not a readable ONNX model: "
                         f"{str(exc).strip() or type(exc).__name__}") from None
    graph = model.graph
    weights = {t.name for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in weights]
    if len(inputs) != 1 or not graph.output:
        raise BuildError(f"{onnx_path.name} has inputs {[i.name for i in inputs]} and outputs "
                         f"{[o.name for o in graph.output]}; a network here takes one input "
                         "(the frames) and gives scores or logits")
    (inp,) = inputs
    tensor = inp.type.tensor_type
    dtype = _ONNX_DTYPES.get(tensor.elem_type)
    if dtype is None:
        raise BuildError(f"input '{inp.name}' of {onnx_path.name} has ONNX element type "
                         f"{tensor.elem_type}; expected float32 or float16")
    dims = [_dim(d) for d in tensor.shape.dim]
    shown = " x ".join("?" if d is None else str(d) for d in dims)
    if len(dims) != 4:
        raise BuildError(f"input '{inp.name}' of {onnx_path.name} is [{shown}]; expected "
                         "N x C x H x W")
    channels, h, w = dims[1:]
    if not channels or channels < 1:
        raise BuildError(f"input '{inp.name}' of {onnx_path.name} is [{shown}]: its channel "
                         "count is not fixed; an engine needs a fixed one (24 for the six-state "
                         "frames, 1 for a single frame)")
    if (h is None) != (w is None) or (h is not None and h != w) or (h is not None and h < 1):
        raise BuildError(f"input '{inp.name}' of {onnx_path.name} is [{shown}]; an engine is "
                         "built for square tiles: height and width both dynamic, or both fixed "
                         "and equal")
    named = [o for o in graph.output if o.name == SCORES]
    out = named[0] if named else graph.output[0]
    out_type = out.type.tensor_type
    rank = len(out_type.shape.dim) if out_type.HasField("shape") else None
    if rank is not None and rank not in (1, 4):
        raise BuildError(f"output '{out.name}' of {onnx_path.name} has {rank} dimensions; "
                         "expected N x C x H x W scores or N logits")
    return ModelIO(input_name=inp.name, input_dtype=dtype, channels=channels, side=h,
                   output_name=out.name, output_rank=rank,
                   metadata={m.key: m.value for m in model.metadata_props})


def default_tile(io: ModelIO, head_tile: int = DEFAULT_TILE) -> int:
    """The side to build at when none is asked for: the model's own where it fixes one; the
    classifier's window (:data:`edge.darkfield.classify.WINDOW`) for a window classifier exported
    with a dynamic height and width; else ``head_tile`` (the head's ``pipeline.tile_size``)."""
    if io.side is not None:
        return io.side
    if io.is_window_classifier:
        from edge.darkfield import WINDOW

        return WINDOW
    return head_tile


def resolve_tile(io: ModelIO, tile: int | None, head_tile: int = DEFAULT_TILE) -> int:
    """``tile`` checked against the model: a model that fixes its height and width takes only
    that size. ``None``: :func:`default_tile`."""
    if tile is None:
        return default_tile(io, head_tile)
    if tile < 1:
        raise BuildError(f"tile must be positive, got {tile}")
    if io.side is not None and tile != io.side:
        raise BuildError(f"this model takes {io.side} x {io.side} windows; --tile {tile} does "
                         f"not fit (leave --tile out, or give --tile {io.side})")
    return tile


def check_precision(io: ModelIO, precision: str, name: str = "the model") -> None:
    """Refuse INT8 for a model the calibration data cannot feed: the data
    (:mod:`export.quantization_data`) is the runtime's six-state input, 24 channels."""
    if precision == "int8" and io.channels != CALIBRATION_CHANNELS:
        raise BuildError(f"{name} takes {io.channels}-channel input; INT8 calibration data here "
                         f"is the six-state frames ({CALIBRATION_CHANNELS} channels, "
                         "export.quantization_data), which cannot calibrate it: build it in "
                         "fp16 or fp32")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-").lower()


def _version(text: str) -> tuple[int, int]:
    """(major, minor) of a TensorRT version string such as ``10.3.0.30``."""
    major, minor = ([int(n) for n in re.findall(r"\d+", text)] + [0, 0])[:2]
    return major, minor


def batches_sha256(batches: Sequence[np.ndarray]) -> str:
    """SHA-256 of the calibration batches as the calibrator sees them (float32, in order)."""
    h = hashlib.sha256()
    for b in batches:
        a = np.ascontiguousarray(b, np.float32)
        h.update(repr(a.shape).encode())
        h.update(a.data)
    return h.hexdigest()


def cache_key(onnx_sha256: str, tensorrt_version: str, gpu: Gpu, precision: str, tile: int,
              batch_sizes: Sequence[int], strongly_typed: bool = False,
              calibration_sha256: str = "") -> str:
    """The engine cache's name for an engine. ``gpu`` counts as the sidecar check compares it
    (:meth:`Gpu.key`: name, compute capability, SM count, memory class). ``calibration_sha256``
    (:func:`batches_sha256`) counts for INT8 only: FP32 and FP16 builds do not read calibration
    data."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    batches = "-".join(str(b) for b in sorted(set(batch_sizes)))
    typing_ = "strong" if strongly_typed else "weak"
    data = f"_q{calibration_sha256[:16]}" if precision == "int8" and calibration_sha256 else ""
    return (f"{onnx_sha256[:16]}_trt{_slug(tensorrt_version)}_{_slug(gpu.key())}_{precision}-"
            f"{typing_}_t{tile}_b{batches}{data}_k{CACHE_FORMAT}")


def calibration_key(onnx_sha256: str, calibration_sha256: str, tensorrt_version: str) -> str:
    """What an INT8 calibration table depends on: the model, the data, the TensorRT version."""
    text = f"{onnx_sha256}|{calibration_sha256}|{tensorrt_version}"
    return hashlib.sha256(text.encode()).hexdigest()


def calibration_table_path(out: Path, key: str) -> Path:
    """``<engine>.<key>.calib`` beside the engine."""
    return out.with_name(f"{out.name}.{key[:16]}.calib")


def _remove_stale_calibration_tables(out: Path, keep: Path) -> None:
    stale = [*out.parent.glob(glob.escape(out.name) + ".*.calib"),
             out.with_name(out.name + ".calib")]  # the unkeyed name of earlier versions
    for p in stale:
        if p != keep and p.is_file():
            p.unlink(missing_ok=True)


def profile_shapes(batch_sizes: Sequence[int], tile: int, channels: int,
                   side: int | None = None) -> tuple[tuple, tuple, tuple]:
    """(min, opt, max) input shapes ``(batch, channels, tile, tile)``: any batch from 1 to the
    largest configured, tuned for the largest. The pipeline cuts a RoI's tiles into batches of
    one configured size, so its last batch is whatever is left: 1 up to that size. ``side``: the
    height and width the model fixes, if it does; ``tile`` must then be that."""
    if not batch_sizes or min(batch_sizes) < 1:
        raise ValueError(f"batch sizes must be positive, got {list(batch_sizes)}")
    if channels < 1:
        raise ValueError(f"the channel count must be positive, got {channels}")
    if tile < 1:
        raise ValueError(f"tile must be positive, got {tile}")
    if side is not None and tile != side:
        raise ValueError(f"this model takes {side} x {side} windows; --tile {tile} does not fit")
    hi = max(batch_sizes)
    return ((1, channels, tile, tile), (hi, channels, tile, tile),
            (hi, channels, tile, tile))


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
    """``create_network`` flags. Explicit batch is the only mode since TensorRT 10 (its flag is
    gone in 11): nothing to set. ``STRONGLY_TYPED`` where the network is not strongly typed by
    default (10.x); not on 11, where every network is and the flag is deprecated."""
    if not strong or _version(trt.__version__) >= STRONG_BY_DEFAULT:
        return 0
    flag = getattr(getattr(trt, "NetworkDefinitionCreationFlag", None), "STRONGLY_TYPED", None)
    if flag is None:
        raise BuildError(f"TensorRT {trt.__version__} has no strongly typed networks (no "
                         "NetworkDefinitionCreationFlag.STRONGLY_TYPED); build weakly typed "
                         "(--weakly-typed) or use a newer TensorRT")
    return 1 << int(flag)


def _import_for_strong(module: str, precision: str):
    """A module a strongly typed FP16/INT8 build needs to rewrite the ONNX model first."""
    what = {"fp16": "converts the ONNX model to float16 inside (onnxruntime's converter)",
            "int8": "quantizes the ONNX model with explicit Q/DQ (onnxruntime's quantizer)"}
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise BuildError(f"a strongly typed {precision.upper()} build {what[precision]}, which "
                         f"needs the onnx and onnxruntime packages; importing {module} failed "
                         f"({exc}): {JETSON_EXTRA}") from None


def _require_strong_tools(precision: str) -> None:
    """Fail before any GPU work when a strongly typed build cannot rewrite its ONNX model."""
    if precision == "fp16":
        _import_for_strong("onnx", precision)
        _import_for_strong("onnxruntime.transformers.float16", precision)
    elif precision == "int8":
        _import_for_strong("onnx", precision)
        _import_for_strong("onnxruntime.quantization", precision)


def _fp16_onnx(onnx_path: Path, out: Path) -> Path:
    onnx = _import_for_strong("onnx", "fp16")
    float16 = _import_for_strong("onnxruntime.transformers.float16", "fp16")
    model = onnx.load(str(onnx_path))
    onnx.save(float16.convert_float_to_float16(model, keep_io_types=True), str(out))
    return out


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    tmp.write_bytes(data)
    tmp.replace(path)


def check_calibration_batch_size(batches: Sequence[np.ndarray], batch_sizes: Sequence[int]
                                 ) -> None:
    """A weakly typed INT8 build calibrates a network with a dynamic batch at its calibration
    profile's optimum shape (kOPT; Polygraphy says so as it calibrates: "Will use `opt` shapes
    from profile 0 for calibration ... calibration will use fixed input shapes"), and the
    calibrator answers ``get_batch_size`` once, for every batch. The optimum here is the largest
    configured batch (:func:`profile_shapes`), so every calibration batch must hold exactly that
    many tiles: a batch of another size would be read from device memory as if it had them."""
    opt = max(batch_sizes)
    for i, b in enumerate(batches):
        n = int(np.shape(b)[0])
        if n != opt:
            raise BuildError(
                f"INT8 calibration batch {i} holds {n} tile(s); TensorRT calibrates at the "
                f"optimization profile's optimum, batch {opt} (the largest of the batch sizes "
                f"{sorted(set(batch_sizes))}), so every calibration batch must hold {opt} tiles "
                "(export.quantization_data.quantization_batches(..., batch=max(batch sizes)) "
                "cuts them so)")


def _make_calibrator(trt, cuda, batches: Sequence[np.ndarray], cache_file: Path,
                     batch_sizes: Sequence[int]):
    """An IInt8EntropyCalibrator2 over host batches, its table cached in ``cache_file``; the
    batches must be the profile's optimum (:func:`check_calibration_batch_size`)."""
    check_calibration_batch_size(batches, batch_sizes)

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
            _atomic_write(cache_file, bytes(cache))

    return EntropyCalibrator()


def _attach_timing_cache(trt, config, path: Path | None, device: str) -> None:
    """Give the build the timings in ``path``, or a fresh cache when TensorRT refuses them."""
    data = b""
    if path is not None and path.is_file():
        data = path.read_bytes()
    if data:
        try:
            cache = config.create_timing_cache(data)
            why = "it was made by another TensorRT version or GPU"
        except Exception as exc:  # TensorRT raises its own kinds on a blob it cannot parse
            cache, why = None, f"it cannot be read: {exc}"
        if cache is not None and config.set_timing_cache(cache, ignore_mismatch=False):
            return
        log.warning("TensorRT %s on %s refused the timing cache %s (%s). This build starts "
                    "with a fresh timing cache, so it times every kernel again (minutes), and "
                    "%s is then overwritten with this device's timings. Keep one timing cache "
                    "file per device and TensorRT version.",
                    trt.__version__, device, path, why, path)
    if not config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False):
        log.warning("TensorRT %s refused an empty timing cache; building without one",
                    trt.__version__)


def _build(trt, cuda, onnx_path: Path, precision: str, strong: bool, batch_sizes: Sequence[int],
           tile: int, io: ModelIO, workspace_mb: int, timing_cache: Path | None,
           batches: Sequence[np.ndarray] | None, calib_cache: Path | None,
           device: str = "") -> bytes:
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
    lo, opt, hi = profile_shapes(batch_sizes, tile, io.channels, io.side)
    profile.set_shape(io.input_name, lo, opt, hi)
    config.add_optimization_profile(profile)
    if precision == "fp32" and hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)  # on by default: float32 convolutions in TF32
    if not strong:
        if precision in ("fp16", "int8"):
            config.set_flag(trt.BuilderFlag.FP16)  # int8: layers without INT8 fall back to FP16
        if precision == "int8":
            config.set_flag(trt.BuilderFlag.INT8)
            if batches is None or calib_cache is None:
                raise BuildError("an INT8 build needs calibration samples")
            config.int8_calibrator = _make_calibrator(trt, cuda, batches, calib_cache,
                                                      batch_sizes)
            config.set_calibration_profile(profile)
    _attach_timing_cache(trt, config, timing_cache, device)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise BuildError(f"TensorRT could not build a {precision} engine from {onnx_path.name} "
                         "(see its log above)")
    if timing_cache is not None:
        cache = config.get_timing_cache()
        if cache is not None:
            _atomic_write(timing_cache, bytes(cache.serialize()))
    return bytes(plan)


def build_engine(onnx_path: str | Path, out: str | Path, precision: str = "fp16",
                 batch_sizes: Sequence[int] = (1, 4), tile: int | None = None,
                 workspace_mb: int = 1024,
                 timing_cache: str | Path | None = None,
                 quantization_batches: Sequence[np.ndarray] | None = None,
                 strongly_typed: bool | None = None, cache_dir: str | Path | None = DEFAULT_CACHE,
                 ) -> BuildResult:
    """Build (or fetch from the engine cache) the engine of ``onnx_path``; write it to ``out``.

    ``tile``: the side the engine takes; ``None`` for :func:`default_tile` (the model's own
    where it fixes one, 256 for a window classifier, else 512, as before). A model that fixes
    its height and width takes only that side. The sidecar records the model's own input and
    output names and dtype, and the tile built at."""
    if precision not in PRECISIONS:
        raise BuildError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    onnx_path, out = Path(onnx_path), Path(out)
    io = read_model_io(onnx_path)
    tile = resolve_tile(io, tile)
    check_precision(io, precision, onnx_path.name)
    if precision == "int8" and not quantization_batches:
        raise BuildError("an INT8 engine needs calibration samples (recorded samples, through "
                         "the runtime's preprocessing)")
    if precision == "int8" and not isinstance(quantization_batches, Sequence):
        quantization_batches = list(quantization_batches)  # hashed, then read by the build
    if precision == "int8":
        _check_calibration_shapes(quantization_batches, io.channels, tile)
    t0 = time.perf_counter()
    trt = import_tensorrt()
    cuda = import_pycuda()
    onnx_sha = sha256_file(onnx_path)
    gpu = gpu_of(cuda)
    strong = choose_strong(trt, strongly_typed)
    if precision == "int8" and not strong:  # before any GPU work
        check_calibration_batch_size(quantization_batches, batch_sizes)
    data_sha = batches_sha256(quantization_batches) if precision == "int8" else ""
    key = cache_key(onnx_sha, trt.__version__, gpu, precision, tile, batch_sizes,
                    strongly_typed=strong, calibration_sha256=data_sha)
    cached = Path(cache_dir) / f"{key}.engine" if cache_dir else None
    if cached is not None and cached.is_file():
        try:
            sc = Sidecar.read(cached)
            sc.check(sha256_file(cached), trt.__version__, gpu, onnx_sha)
            _copy_with_sidecar(cached, out)
            return BuildResult(out, sc, True, time.perf_counter() - t0)
        except SidecarError:
            pass  # a damaged cache entry: build again and replace it
    if strong:
        _require_strong_tools(precision)
    calib_cache = None
    if precision == "int8" and not strong:
        calib_cache = calibration_table_path(
            out, calibration_key(onnx_sha, data_sha, trt.__version__))
    out.parent.mkdir(parents=True, exist_ok=True)  # the calibrator writes its table there
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
            plan = _build(trt, cuda, source, precision, strong, batch_sizes, tile, io, workspace_mb,
                          Path(timing_cache) if timing_cache else None, quantization_batches,
                          calib_cache, gpu.describe())
    finally:
        cuda.Context.pop()
    _atomic_write(out, plan)
    sc = Sidecar(engine_sha256=sha256_file(out), onnx_sha256=onnx_sha, onnx_name=onnx_path.name,
                 tensorrt_version=trt.__version__, device=gpu.name,
                 compute_capability=gpu.compute_capability, sm_count=gpu.sm_count,
                 memory_mib=gpu.memory_mib,
                 precision=precision, strongly_typed=strong, input_name=io.input_name,
                 input_dtype=io.input_dtype, output_name=io.output_name, tile=tile,
                 batch_sizes=tuple(sorted(set(batch_sizes))),
                 built_utc=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                 model_metadata=dict(io.metadata))
    sc.write(out)
    if calib_cache is not None:
        _remove_stale_calibration_tables(out, calib_cache)
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        _copy_with_sidecar(out, cached)
    return BuildResult(out, sc, False, time.perf_counter() - t0)


def _check_calibration_shapes(batches: Sequence[np.ndarray], channels: int, tile: int) -> None:
    """Every calibration batch must be what the engine takes: ``(n, channels, tile, tile)``."""
    want = (channels, tile, tile)
    for i, b in enumerate(batches):
        if np.ndim(b) != 4 or tuple(np.shape(b)[1:]) != want:
            raise BuildError(f"calibration batch {i} is {list(np.shape(b))}; the engine takes "
                             f"N x {channels} x {tile} x {tile} (calibrate on tiles of the "
                             "size the engine is built for)")


def _copy_with_sidecar(src: Path, dst: Path) -> None:
    if src.resolve() == dst.resolve():
        return
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    shutil.copyfile(Sidecar.path_for(src), Sidecar.path_for(dst))
