"""The sidecar of a TensorRT engine: what it was built from, with what, for which device.

A serialized engine only runs on the TensorRT version and the GPU it was built for, and is only
as good as the ONNX model it came from; none of that can be read back from the plan file
cheaply. So the export stage writes ``<engine>.json`` beside it and the runtime refuses an engine
whose sidecar does not match: the file's own hash (a corrupt or swapped file), the TensorRT
version, the GPU (:class:`Gpu`) and, when the head names one, the model. The sidecar also
carries the ONNX model's metadata (``model_metadata``), which the plan file has no room for.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

FORMAT = "glass-inspect-engine"
# 2: model_metadata, the ONNX model's metadata_props, so a runtime mode reads from an engine what
# it reads from the model (the classifier's region threshold). Version 1 files are still read,
# with no metadata: a plan does not change when its sidecar is rewritten, so no rebuild is owed.
# 3: sm_count and memory_mib, the GPU's multiprocessor count and memory: the name is "Orin" on
# every Orin module. Versions 1 and 2 are read with both unknown (0), and such an engine is
# refused: it cannot be told which module it was built on (a rebuild is owed).
VERSION = 3
READABLE_VERSIONS = (1, 2, 3)
PRECISIONS = ("fp32", "fp16", "int8")


class SidecarError(ValueError):
    """A sidecar that is missing, unreadable or does not match the engine, runtime or device."""


@dataclass(frozen=True)
class Gpu:
    """The GPU an engine is built for, as CUDA describes device 0.

    The name alone does not tell the Jetson Orin modules apart: CUDA names the GPU of every one
    of them "Orin" (compute capability 8.7), from the AGX Orin 64 GB (16 SMs) and 32 GB (14)
    down to the Orin NX (8) and the Orin Nano (8 or 4). TensorRT chooses and times an engine's
    kernels for the GPU it builds on, so the multiprocessor count and the memory are part of
    the identity too.

    Memory is compared by its class (:attr:`memory_class_gib`, the total rounded up to a power
    of two GiB: 4, 8, 16, 32 or 64 for the Orin modules), not to the MiB: on a Jetson CUDA
    reports the memory the kernel leaves after its carveouts (7620 MiB on an 8 GB Orin Nano),
    which a JetPack update can change by a few MiB, and that must not invalidate every engine.
    Modules alike in all four (the 8 GB Orin NX and Orin Nano: one GPU configuration at other
    clocks) share engines. ``sm_count`` 0 means unknown (a sidecar before version 3)."""

    name: str
    compute_capability: str
    sm_count: int
    memory_mib: int

    @property
    def memory_class_gib(self) -> int:
        if self.memory_mib <= 0:
            return 0
        return 1 << max(0, math.ceil(math.log2(self.memory_mib / 1024)))

    @property
    def known(self) -> bool:
        return self.sm_count > 0 and self.memory_mib > 0

    def matches(self, other: Gpu) -> bool:
        return (self.known and other.known and self.name == other.name
                and self.compute_capability == other.compute_capability
                and self.sm_count == other.sm_count
                and self.memory_class_gib == other.memory_class_gib)

    def describe(self) -> str:
        if not self.known:
            return f"'{self.name}' (compute {self.compute_capability}, SMs and memory unknown)"
        return (f"'{self.name}' (compute {self.compute_capability}, {self.sm_count} SMs, "
                f"{self.memory_mib} MiB: a {self.memory_class_gib} GiB class)")

    def key(self) -> str:
        """What the engine cache's key says of the GPU (no separators of the key's own)."""
        return (f"{self.name}-cc{self.compute_capability}-sm{self.sm_count}-"
                f"{self.memory_class_gib}g")


@dataclass(frozen=True)
class Sidecar:
    engine_sha256: str
    onnx_sha256: str
    onnx_name: str
    tensorrt_version: str
    device: str
    compute_capability: str
    sm_count: int
    memory_mib: int
    precision: str
    strongly_typed: bool
    input_name: str
    input_dtype: str
    output_name: str
    tile: int
    batch_sizes: tuple[int, ...]
    built_utc: str
    model_metadata: dict[str, str] = field(default_factory=dict)
    format: str = FORMAT
    version: int = VERSION

    @staticmethod
    def path_for(engine: str | Path) -> Path:
        engine = Path(engine)
        return engine.with_name(engine.name + ".json")

    @property
    def gpu(self) -> Gpu:
        return Gpu(self.device, self.compute_capability, self.sm_count, self.memory_mib)

    @property
    def max_batch(self) -> int:
        return max(self.batch_sizes)

    def to_json(self) -> str:
        d = asdict(self)
        d["batch_sizes"] = list(self.batch_sizes)
        return json.dumps(d, indent=2, sort_keys=True) + "\n"

    def write(self, engine: str | Path) -> Path:
        p = self.path_for(engine)
        tmp = p.with_name(p.name + ".partial")
        tmp.write_text(self.to_json())
        tmp.replace(p)
        return p

    @classmethod
    def read(cls, engine: str | Path) -> Sidecar:
        p = cls.path_for(engine)
        try:
            d = json.loads(p.read_text())
        except FileNotFoundError:
            raise SidecarError(f"engine {engine} has no sidecar {p.name}: rebuild it with "
                               "'glass-inspect export engine', which writes both") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise SidecarError(f"cannot read engine sidecar {p}: {exc}") from None
        names = {f.name for f in fields(cls)}
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise SidecarError(f"{p} is not a glass-inspect engine sidecar")
        if d.get("version") not in READABLE_VERSIONS:
            raise SidecarError(f"{p} has sidecar version {d.get('version')!r}; this runtime "
                               f"reads versions {list(READABLE_VERSIONS)}")
        if d["version"] == 1:
            d = {**d, "model_metadata": {}}
        if d["version"] < 3:  # the GPU's SMs and memory were not recorded: unknown
            d = {**d, "sm_count": 0, "memory_mib": 0}
        d["version"] = VERSION
        missing, extra = names - d.keys(), d.keys() - names
        if missing or extra:
            raise SidecarError(f"{p}: missing keys {sorted(missing)}, unknown keys {sorted(extra)}")
        try:
            d["batch_sizes"] = tuple(int(b) for b in d["batch_sizes"])
            d["tile"] = int(d["tile"])
            d["sm_count"], d["memory_mib"] = int(d["sm_count"]), int(d["memory_mib"])
        except (TypeError, ValueError):
            raise SidecarError(f"{p}: batch_sizes, tile, sm_count and memory_mib must be "
                               "integers") from None
        meta = d["model_metadata"]
        if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                 for k, v in meta.items()):
            raise SidecarError(f"{p}: model_metadata must map names to strings")
        sc = cls(**d)
        if sc.precision not in PRECISIONS:
            raise SidecarError(f"{p}: precision {sc.precision!r} is not one of {PRECISIONS}")
        return sc

    def check(self, engine_sha256: str, tensorrt_version: str, gpu: Gpu,
              model_sha256: str = "") -> None:
        """Refuse an engine that is not the one built, or not built for this runtime or GPU
        (name, compute capability, SM count and memory class: :class:`Gpu`)."""
        problems = []
        if engine_sha256 != self.engine_sha256:
            problems.append("the engine file's SHA-256 is not the one recorded at build time "
                            "(corrupt or replaced file)")
        if tensorrt_version != self.tensorrt_version:
            problems.append(f"built with TensorRT {self.tensorrt_version}, this device runs "
                            f"TensorRT {tensorrt_version}")
        if not self.gpu.known:
            problems.append(f"its sidecar (written before version 3) does not record the SM "
                            f"count and memory of the GPU it was built for, so it cannot be told "
                            f"whether that was this module (every Orin is '{self.device}'); "
                            f"this device has {gpu.describe()}")
        elif not self.gpu.matches(gpu):
            problems.append(f"built for GPU {self.gpu.describe()}, this device has "
                            f"{gpu.describe()} (another module: an engine is built and timed "
                            "for one GPU configuration)")
        if model_sha256 and model_sha256 != self.onnx_sha256:
            problems.append(f"built from model {self.onnx_sha256[:12]} ({self.onnx_name}), the "
                            f"head is qualified with model {model_sha256[:12]}")
        if problems:
            raise SidecarError("engine refused: " + "; ".join(problems)
                               + ". Rebuild it on this device with 'glass-inspect export engine'.")
