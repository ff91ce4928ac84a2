"""Checkpoint -> ONNX: the file the runtime (ONNX Runtime) and the TensorRT build start from.

* Opset 17, one input named ``frames`` (``N x 24 x H x W``, the space-to-depth stack scaled to
  ``[0, 1]``; ``N x 1 x 256 x 256`` for the classifier trained on single dark-field windows,
  which :mod:`edge.darkfield.classify` runs), named outputs: ``scores`` (``N x 1 x H x W``, the
  finest of the U-Net's three maps; ``scores_half`` and ``scores_quarter`` too with ``all_scales``)
  or ``logit`` (``N``) for the attention fusion classifier.
* Batch, height and width are dynamic (height and width multiples of the network's divisor);
  the runtime fixes them to its tile size and the TensorRT profile to the configured batches.
  A window classifier's input is fixed at 256 x 256, only its batch is dynamic.
* A single-frame classifier's operating point: validation picks the probability threshold
  ``t`` with the best F1 (``best_threshold``, :mod:`model.train`), and the export subtracts
  ``logit(t)`` from the logit, so every engine (ONNX Runtime, TensorRT) decides at 0.5 what the
  network decided at ``t``, with nothing for a runtime to read or forget. The reported
  probability is then relative to that point; ``operating_point`` in the metadata says ``t``
  and the offset (``raw_logit=True``, ``--raw-logit``: no offset).
* A classifier's region threshold (``--region-threshold``, chosen on validation images with
  ``glass-inspect evaluate-windows --on validation``) goes into the metadata as
  ``region_threshold``, which ``glass-inspect classify`` applies (:mod:`edge.darkfield.classify`),
  and ``haze_floor``, the darkest frame it judges (:mod:`edge.darkfield.exposure`; empty: the
  default).
* Nested weights stay nested: the exporter's constant folding is off, so the kernel pool is one
  initializer and each convolution slices it (``Slice`` on a constant, which ONNX Runtime and
  TensorRT fold when they load the model). The file is about the pool's size, not the sum of
  its slices.
* Checked before it is written in place: ``onnx.checker`` (full check), strict shape inference,
  and parity with torch on random inputs through ONNX Runtime (max abs difference <= 1e-4).
* The model's ``metadata_props`` carry what the runtime and the model card need: the network
  and its spec, the training settings, the head configuration's digest, the post-processing the
  model was validated with, its last validation metrics and the checkpoint's SHA-256.
* The envelope of the training frames (``envelope``, :mod:`edge.envelope`) is measured after
  the export, on the simulator (``glass-inspect export envelope``, :mod:`export.envelope_fit`),
  and added with :func:`set_metadata`, which changes the metadata and nothing else: the graph
  and its weights are written back byte for byte, so only the file's hash changes.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge.hashing import sha256_file

INPUT_NAME = "frames"
OPSET = 17
PARITY_TOLERANCE = 1e-4


class ExportError(RuntimeError):
    """The export could not produce a valid, faithful ONNX file."""


@dataclass(frozen=True)
class ExportResult:
    path: Path
    bytes: int
    parameters: int
    parity_max_abs: float
    outputs: tuple[str, ...]
    operating_point: float | None = None  # a classifier's validated threshold, now its 0.5


def _exported(model, network: str, all_scales: bool, logit_offset: float = 0.0):
    """The network with exactly the exported outputs (the U-Net returns three maps); a
    classifier's logit less ``logit_offset`` (its operating point, module docstring)."""
    import torch

    class Exported(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = model

        def forward(self, frames):
            out = self.net(frames)
            if network == "fusion":
                return out - logit_offset if logit_offset else out
            return tuple(out) if all_scales else out[0]

    return Exported().eval()


def output_names(network: str, all_scales: bool) -> tuple[str, ...]:
    if network == "fusion":
        return ("logit",)
    if network == "hybrid":
        return ("scores", "scores_quarter") if all_scales else ("scores",)
    return ("scores", "scores_half", "scores_quarter") if all_scales else ("scores",)


def operating_point(ckpt: dict) -> float | None:
    """The probability threshold validation chose for a single-frame classifier checkpoint
    (``best_threshold`` of its last history row, :mod:`model.train`), or None."""
    if ckpt["network"] != "fusion" or not ckpt["history"]:
        return None
    t = ckpt["history"][-1].get("best_threshold")
    return float(t) if t is not None and 0.0 < float(t) < 1.0 else None


def export_onnx(checkpoint: str | Path, out: str | Path | None = None, tile: int = 512,
                all_scales: bool = False, opset: int = OPSET, parity_batch: int = 2,
                seed: int = 0, raw_logit: bool = False,
                region_threshold: float | None = None,
                haze_floor: float | None = None) -> ExportResult:
    import onnx
    import torch

    from model.train import load_checkpoint, model_from_checkpoint
    from model.unet import parameter_count

    checkpoint = Path(checkpoint)
    ckpt = load_checkpoint(checkpoint)
    network = ckpt["network"]
    if region_threshold is not None and (network != "fusion" or not 0.5 <= region_threshold
                                         <= 1.0):
        raise ExportError(f"a region threshold is a window classifier's (network fusion) and "
                          f"within [0.5, 1] (the exported decision is at 0.5); got "
                          f"{region_threshold} for a {network} network")
    if haze_floor is not None and (network != "fusion" or not ckpt["spec"].get("whiten")
                                   or not 0.0 <= haze_floor < 1.0):
        raise ExportError(f"a haze floor is a whitening window classifier's (network fusion, "
                          f"whiten in its spec) and within [0, 1) of full scale; got "
                          f"{haze_floor} for a {network} network")
    model = model_from_checkpoint(ckpt)
    divisor = getattr(model.spec, "divisor", 32)
    if network == "fusion":
        tile = 256
    if tile % divisor:
        raise ExportError(f"tile {tile} is not a multiple of the network's divisor {divisor}")
    out = Path(out) if out is not None else checkpoint.with_suffix(".onnx")
    out.parent.mkdir(parents=True, exist_ok=True)
    names = output_names(network, all_scales)
    threshold = None if raw_logit else operating_point(ckpt)
    offset = math.log(threshold / (1.0 - threshold)) if threshold is not None else 0.0
    wrapped = _exported(model, network, all_scales, offset)
    example = torch.rand(1, model.spec.in_channels, tile, tile,
                         generator=torch.Generator().manual_seed(seed))
    # a classifier takes whole windows: only the batch is free (TensorRT reads the side)
    dynamic = ({INPUT_NAME: {0: "batch"}} if network == "fusion" else
               {INPUT_NAME: {0: "batch", 2: "height", 3: "width"}})
    for n in names:
        dynamic[n] = {0: "batch"} if network == "fusion" else {0: "batch", 2: "height",
                                                               3: "width"}
    tmp = out.with_name(out.name + ".partial")
    try:
        # the TorchScript exporter: its constant folding can be switched off, which keeps the
        # nested kernels as slices of one pool; it warns that it is the legacy path
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(wrapped, (example,), str(tmp), input_names=[INPUT_NAME],
                              output_names=list(names), dynamic_axes=dynamic,
                              opset_version=opset, dynamo=False, do_constant_folding=False)
        proto = onnx.load(str(tmp))
        meta = {
            "producer": "glass-inspect export onnx",
            "network": network,
            "spec": json.dumps(ckpt["spec"], sort_keys=True),
            "settings": json.dumps(ckpt["settings"], sort_keys=True),
            "head_digest": ckpt["head_digest"],
            "pipeline": json.dumps(ckpt["pipeline"], sort_keys=True),
            "epoch": str(ckpt["epoch"]),
            "metrics": json.dumps(ckpt["history"][-1] if ckpt["history"] else {}),
            "checkpoint_sha256": sha256_file(checkpoint),
            "parameters": str(parameter_count(model)),
            "operating_point": json.dumps(
                None if threshold is None else {"threshold": threshold, "logit_offset": offset,
                                                "chosen_by": "best F1 on the validation "
                                                             "windows", "epoch": ckpt["epoch"]}),
            "region_threshold": "" if region_threshold is None else repr(region_threshold),
            "haze_floor": "" if haze_floor is None else repr(haze_floor),
            "input_scale": ("one dark-field RAW frame, divided by 2**bit_depth - 1"
                            if model.spec.in_channels == 1 else
                            "space-to-depth of the 6 RAW frames, divided by 2**bit_depth - 1"),
        }
        del proto.metadata_props[:]
        for k, v in meta.items():
            proto.metadata_props.add(key=k, value=v)
        proto.doc_string = (f"glass-inspect {network}: input '{INPUT_NAME}' N x "
                            f"{model.spec.in_channels} x H x W, outputs {', '.join(names)}")
        onnx.save(proto, str(tmp))
        onnx.checker.check_model(str(tmp), full_check=True)
        onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True)
        diff = parity(wrapped, tmp, names, model.spec.in_channels, tile, parity_batch, seed)
        if not diff <= PARITY_TOLERANCE:
            raise ExportError(f"ONNX Runtime and torch differ by {diff:.3g} (tolerance "
                              f"{PARITY_TOLERANCE}); the file was not written")
        os.replace(tmp, out)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"the exported graph is not valid ONNX: {exc}") from None
    finally:
        if tmp.exists():
            tmp.unlink()
    return ExportResult(out, out.stat().st_size, parameter_count(model), diff, names, threshold)


def parity(wrapped, onnx_path: Path, names, channels: int, tile: int, batch: int,
           seed: int) -> float:
    """Max abs difference between torch and ONNX Runtime over every output, random input."""
    import onnxruntime as ort
    import torch

    x = np.random.default_rng(seed + 1).random((batch, channels, tile, tile), np.float32)
    with torch.no_grad():
        ref = wrapped(torch.from_numpy(x))
    ref = [r.numpy() for r in (ref if isinstance(ref, tuple) else (ref,))]
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = sess.run(list(names), {INPUT_NAME: x})
    return float(max(np.max(np.abs(a - b)) for a, b in zip(ref, got, strict=True)))


def set_metadata(model: str | Path, values: dict[str, str], out: str | Path | None = None) -> Path:
    """Set ``values`` in the ``metadata_props`` of ONNX ``model`` (others kept, in order), written
    to ``out`` (default: in place, through a temporary file). The graph is checked to be
    unchanged, byte for byte, and the result to load and pass ``onnx.checker``."""
    import onnx

    model = Path(model)
    out = Path(out) if out is not None else model
    proto = onnx.load(str(model))
    graph = proto.graph.SerializeToString()
    props = {p.key: p.value for p in proto.metadata_props}
    props.update({k: str(v) for k, v in values.items()})
    del proto.metadata_props[:]
    for k, v in props.items():
        proto.metadata_props.add(key=k, value=v)
    tmp = out.with_name(out.name + ".partial")
    try:
        onnx.save(proto, str(tmp))
        onnx.checker.check_model(str(tmp), full_check=True)
        back = onnx.load(str(tmp))
        if back.graph.SerializeToString() != graph:
            raise ExportError(f"writing the metadata of {model} would change its graph; "
                              "nothing written")
        os.replace(tmp, out)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"{model} is not valid ONNX: {exc}") from None
    finally:
        if tmp.exists():
            tmp.unlink()
    return out
