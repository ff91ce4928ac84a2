"""The sidecar of a TensorRT engine: what it was built from, with what, for which device.

A serialized engine only runs on the TensorRT version and the GPU model it was built for, and is
only as good as the ONNX model it came from; none of that can be read back from the plan file
cheaply. So the export stage writes ``<engine>.json`` beside it and the runtime refuses an engine
whose sidecar does not match: the file's own hash (a corrupt or swapped file), the TensorRT
version, the device and, when the head names one, the model. The sidecar also carries the ONNX
model's metadata (``model_metadata``), which the plan file has no room for.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

FORMAT = "glass-inspect-engine"
# 2: model_metadata, the ONNX model's metadata_props, so a runtime mode reads from an engine what
# it reads from the model (the classifier's region threshold). Version 1 files are still read,
# with no metadata: a plan does not change when its sidecar is rewritten, so no rebuild is owed.
VERSION = 2
READABLE_VERSIONS = (1, 2)
PRECISIONS = ("fp32", "fp16", "int8")


class SidecarError(ValueError):
    """A sidecar that is missing, unreadable or does not match the engine, runtime or device."""


@dataclass(frozen=True)
class Sidecar:
    engine_sha256: str
    onnx_sha256: str
    onnx_name: str
    tensorrt_version: str
    device: str
    compute_capability: str
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
            d = {**d, "model_metadata": {}, "version": VERSION}
        missing, extra = names - d.keys(), d.keys() - names
        if missing or extra:
            raise SidecarError(f"{p}: missing keys {sorted(missing)}, unknown keys {sorted(extra)}")
        try:
            d["batch_sizes"] = tuple(int(b) for b in d["batch_sizes"])
            d["tile"] = int(d["tile"])
        except (TypeError, ValueError):
            raise SidecarError(f"{p}: batch_sizes and tile must be integers") from None
        meta = d["model_metadata"]
        if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                 for k, v in meta.items()):
            raise SidecarError(f"{p}: model_metadata must map names to strings")
        sc = cls(**d)
        if sc.precision not in PRECISIONS:
            raise SidecarError(f"{p}: precision {sc.precision!r} is not one of {PRECISIONS}")
        return sc

    def check(self, engine_sha256: str, tensorrt_version: str, device: str,
              model_sha256: str = "") -> None:
        """Refuse an engine that is not the one built, or not built for this runtime or GPU."""
        problems = []
        if engine_sha256 != self.engine_sha256:
            problems.append("the engine file's SHA-256 is not the one recorded at build time "
                            "(corrupt or replaced file)")
        if tensorrt_version != self.tensorrt_version:
            problems.append(f"built with TensorRT {self.tensorrt_version}, this device runs "
                            f"TensorRT {tensorrt_version}")
        if device != self.device:
            problems.append(f"built for GPU '{self.device}', this device has '{device}'")
        if model_sha256 and model_sha256 != self.onnx_sha256:
            problems.append(f"built from model {self.onnx_sha256[:12]} ({self.onnx_name}), the "
                            f"head is qualified with model {model_sha256[:12]}")
        if problems:
            raise SidecarError("engine refused: " + "; ".join(problems)
                               + ". Rebuild it on this device with 'glass-inspect export engine'.")
