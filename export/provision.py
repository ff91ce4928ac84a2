"""A head on its device: the engine at first start, and the health of the serving head.

**First start** (``glass-inspect start``, the entry point of the Jetson image). A TensorRT engine
only runs on the TensorRT version and the GPU it was built for, so the image ships the network as
ONNX and the device builds its own engine the first time it starts:

1. the head file's ``engine.artifact`` names the model. A TensorRT engine (``.engine``/``.plan``)
   is served as it is (someone built it for this device; the runtime checks its sidecar);
2. an ONNX model is built into an engine in the cache folder (a volume of the container) with
   :func:`export.tensorrt.build_engine`, whose engine cache is keyed by the model's hash, the
   TensorRT version, the GPU, the precision, tile and batch sizes: the first start builds (minutes
   on an Orin), a later start copies the cached engine (seconds), and a new model, a new TensorRT
   (a new image) or another GPU builds again. Rolling back to the previous model or image finds
   its engine still in the cache;
3. the engine is checked against the model before it is served: its sidecar must name this
   model's hash, the precision, tile and batch sizes asked for, and match the file. A build that
   fails, or gives anything else, stops the start with one message and a non-zero exit: a head
   never serves with an engine that is not this model's;
4. where TensorRT cannot be imported (a development machine), that is said in words and the ONNX
   model is served on ONNX Runtime instead, unless the start requires TensorRT
   (``--require-tensorrt``, as the image does: an Orin silently inspecting on its CPU would be
   many times slower than the line expects).

The builder is injectable (``builder=``), so the tests run the whole first start with a stand-in
that writes an ONNX copy and its sidecar, served by ONNX Runtime.

The heartbeat and the health check of the serving head are :mod:`firmware_bridge.health`.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edge.hashing import sha256_file

log = logging.getLogger("glass-inspect.provision")

#: what ``start`` builds at first start; INT8 needs calibration samples (``export engine``)
PRECISIONS = ("fp16", "fp32")
#: where ``start`` keeps engines when no ``--cache`` is given
DEFAULT_CACHE = Path.home() / ".cache" / "glass-inspect" / "engines"
ENV_CACHE = "GLASS_INSPECT_ENGINES"
ENV_HEALTH = "GLASS_INSPECT_HEALTH"
_ENGINE_SUFFIXES = (".engine", ".plan", ".trt")


class ProvisionError(RuntimeError):
    """The head cannot start: no engine that may be served; the message says why and what to do."""


@dataclass(frozen=True)
class Prepared:
    """The artifact ``serve`` loads, and how it came to be."""

    path: Path
    backend: str  # "tensorrt" | "onnxruntime"
    how: str  # one line for the log
    built: bool = False  # built now (not from the cache)
    from_cache: bool = False
    seconds: float = 0.0


def default_cache_dir() -> Path:
    return Path(os.environ.get(ENV_CACHE) or DEFAULT_CACHE)


# -- first start --------------------------------------------------------------------------------
def tensorrt_runtime() -> tuple[str | None, str | None]:
    """(TensorRT version, None) where TensorRT and pycuda import here, else (None, why not)."""
    from edge.engine import EngineError
    from edge.engine.tensorrt import import_pycuda, import_tensorrt

    try:
        trt = import_tensorrt()
        import_pycuda()
    except EngineError as exc:
        return None, str(exc)
    except (ImportError, OSError) as exc:  # the module is there but a library it loads is not
        return None, f"TensorRT is installed but cannot be loaded: {exc}"
    return str(trt.__version__), None


def default_builder() -> Callable:
    from export.tensorrt import build_engine

    return build_engine


def prepare_engine(cfg, cache_dir: str | Path | None = None, precision: str = "fp16", *,
                   require_tensorrt: bool = False, workspace_mb: int = 1024,
                   builder: Callable | None = None,
                   probe: Callable[[], tuple[str | None, str | None]] | None = None) -> Prepared:
    """The artifact the head of ``cfg`` serves on this machine, built first where needed.

    ``builder`` has :func:`export.tensorrt.build_engine`'s signature and returns its
    ``BuildResult`` (default: that function); ``probe`` says whether TensorRT can be used here
    (default: :func:`tensorrt_runtime`). Raises :class:`ProvisionError` when nothing may be served.
    """
    artifact = cfg.resolve(cfg.engine.artifact)
    backend = cfg.engine.backend
    if precision not in PRECISIONS:
        raise ProvisionError(
            f"precision {precision!r} cannot be built at start (choose {' or '.join(PRECISIONS)}); "
            "an INT8 engine needs calibration samples: build it with 'glass-inspect export engine "
            "--precision int8 --samples DIR' and name it in the head file's engine.artifact")
    if not artifact.is_file():
        raise ProvisionError(f"the model {artifact} named by {cfg.source} (engine.artifact) does "
                             "not exist")
    if artifact.suffix.lower() in _ENGINE_SUFFIXES:
        if require_tensorrt and backend == "onnxruntime":
            raise ProvisionError(f"{cfg.source} asks for ONNX Runtime (engine.backend) but "
                                 "TensorRT is required here")
        return Prepared(artifact, "tensorrt", f"engine: {artifact.name}, as the head file names "
                                              "it (built beforehand; its sidecar is checked)")
    if backend == "onnxruntime":
        if require_tensorrt:
            raise ProvisionError(f"{cfg.source} asks for ONNX Runtime (engine.backend = "
                                 "\"onnxruntime\") but this start requires TensorRT; set "
                                 "engine.backend = \"auto\"")
        return Prepared(artifact, "onnxruntime", f"engine: {artifact.name} on ONNX Runtime, as "
                                                 "the head file asks (engine.backend)")
    version, missing = (probe or tensorrt_runtime)()
    if missing is not None:
        if require_tensorrt or backend == "tensorrt":
            why = "--require-tensorrt" if require_tensorrt else "engine.backend = \"tensorrt\""
            raise ProvisionError(
                f"TensorRT is required ({why}) but cannot be used here: {missing}. In a "
                "container, start it with the NVIDIA runtime (compose: runtime: nvidia; docker "
                "run --runtime nvidia), which brings in the GPU driver libraries TensorRT loads")
        return Prepared(artifact, "onnxruntime",
                        f"engine: TensorRT cannot be used on this machine ({missing}); serving "
                        f"{artifact.name} on ONNX Runtime (CPU) instead")
    model_sha = sha256_file(artifact)
    if cfg.engine.model_sha256 and cfg.engine.model_sha256 != model_sha:
        raise ProvisionError(
            f"{artifact.name} (SHA-256 {model_sha[:12]}) is not the model {cfg.source} is "
            f"qualified with (engine.model_sha256 {cfg.engine.model_sha256[:12]}); no engine is "
            "built from it")
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    out = cache / "serving" / f"{artifact.stem}.{precision}.engine"
    # one timing cache per TensorRT version: a cache from another version cannot be used
    timing = cache / f"timing-trt{version}.cache"
    log.info("engine: %s (%s) for TensorRT %s, cache %s; a first build takes minutes",
             artifact.name, precision, version, cache)
    build = builder or default_builder()
    t0 = time.monotonic()
    try:
        cache.mkdir(parents=True, exist_ok=True)
        result = build(artifact, out, precision=precision,
                       batch_sizes=tuple(cfg.engine.batch_sizes), tile=cfg.pipeline.tile_size,
                       workspace_mb=workspace_mb, timing_cache=timing, cache_dir=cache)
    except Exception as exc:
        hint = ""
        if isinstance(exc, PermissionError):
            hint = (f" (the cache folder must be writable by this user, uid {os.getuid()}: "
                    "chown it on the host, as deploy/install-host.sh does)")
        raise ProvisionError(
            f"cannot build the {precision} TensorRT engine of {artifact.name} in {cache}: "
            f"{_one_line(exc)}{hint}. The head was not started (no engine of this model for "
            "this device)") from exc
    path = Path(result.path)
    _check_built(path, model_sha, artifact, precision, cfg)
    seconds = float(getattr(result, "seconds", time.monotonic() - t0))
    sc = result.sidecar
    if result.from_cache:
        how = (f"engine: {path.name} from the engine cache (model {model_sha[:12]}, TensorRT "
               f"{sc.tensorrt_version}, {sc.device}, {precision})")
    else:
        how = (f"engine: built {path.name} in {seconds:.0f} s (model {model_sha[:12]}, TensorRT "
               f"{sc.tensorrt_version}, {sc.device}, {precision}); later starts load it")
    return Prepared(path, "tensorrt", how, built=not result.from_cache,
                    from_cache=bool(result.from_cache), seconds=seconds)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 400 else text[:397] + "..."


def _check_built(path: Path, model_sha: str, artifact: Path, precision: str, cfg) -> None:
    """Refuse what the builder gave unless it is this model's engine, as asked for, intact."""
    from edge.engine.sidecar import Sidecar, SidecarError

    def refuse(why: str) -> ProvisionError:
        return ProvisionError(f"the engine builder gave {path}, which cannot be served: {why}. "
                              "The head was not started")

    if not path.is_file():
        raise refuse("the file does not exist")
    try:
        sc = Sidecar.read(path)
    except SidecarError as exc:
        raise refuse(str(exc)) from None
    problems = []
    if sc.onnx_sha256 != model_sha:
        problems.append(f"built from model {sc.onnx_sha256[:12]} ({sc.onnx_name}), not from "
                        f"{artifact.name} ({model_sha[:12]})")
    if sc.precision != precision:
        problems.append(f"precision {sc.precision}, not {precision}")
    if sc.tile != cfg.pipeline.tile_size:
        problems.append(f"tile {sc.tile}, the head uses {cfg.pipeline.tile_size}")
    wanted = tuple(sorted(set(cfg.engine.batch_sizes)))
    if tuple(sc.batch_sizes) != wanted:
        problems.append(f"batch sizes {list(sc.batch_sizes)}, the head uses {list(wanted)}")
    if not problems and sha256_file(path) != sc.engine_sha256:
        problems.append("the file is not the one its sidecar describes (damaged copy)")
    if problems:
        raise refuse("; ".join(problems))


def start(cfg, serve: Callable[[Prepared], int], **options) -> int:
    """First start: :func:`prepare_engine` (``options`` are its keywords), then ``serve`` with
    what it prepared; returns ``serve``'s exit status. A :class:`ProvisionError` means nothing
    was served."""
    prepared = prepare_engine(cfg, **options)
    log.info("%s", prepared.how)
    return serve(prepared)
