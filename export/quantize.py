"""Explicit INT8 quantization of the ONNX model (Q/DQ), for strongly typed TensorRT builds.

TensorRT 11 removed implicit INT8 (builder flag + calibrator): the quantization scales must be in
the ONNX graph as QuantizeLinear / DequantizeLinear pairs, and a strongly typed build follows
them. We produce them with ONNX Runtime's static quantizer, in the form TensorRT documents for
explicit quantization: symmetric INT8 for activations and weights (zero point 0), per-channel
weights, Q/DQ format. The calibration batches come from recorded samples through the runtime's
own preprocessing (:mod:`export.quantization_data`), and the scales use the entropy method, as
TensorRT's own ``IInt8EntropyCalibrator2`` does on 10.x.

The nested weights are folded into plain initializers first (``quant_pre_process``): a
quantizer can only give per-channel scales to a weight it sees as a constant. The quantized file
is therefore larger than the float one; the engine built from it is not.

The Q/DQ model also runs on ONNX Runtime, so its accuracy is checked here, on the CPU, before any
GPU sees it.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np


def quantize_qdq(onnx_path: str | Path, out: str | Path, batches: Sequence[np.ndarray],
                 method: str = "entropy") -> Path:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    methods = {"entropy": CalibrationMethod.Entropy, "minmax": CalibrationMethod.MinMax,
               "percentile": CalibrationMethod.Percentile}
    if method not in methods:
        raise ValueError(f"calibration method must be one of {sorted(methods)}, got {method!r}")
    if not batches:
        raise ValueError("INT8 quantization needs at least one calibration batch")

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._it = iter(batches)

        def get_next(self):
            b = next(self._it, None)
            return None if b is None else {"frames": np.ascontiguousarray(b, np.float32)}

    out = Path(out)
    with tempfile.TemporaryDirectory() as tmp:
        folded = Path(tmp) / "folded.onnx"
        quant_pre_process(str(onnx_path), str(folded), skip_symbolic_shape=True)
        partial = out.with_name(out.name + ".partial")
        quantize_static(
            str(folded), str(partial), Reader(), quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, per_channel=True,
            calibrate_method=methods[method],
            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True,
                           # TensorRT fuses Q/DQ around convolutions; keep the graph's float
                           # outputs (tanh) unquantized so the scores keep their resolution
                           "ForceQuantizeNoInputCheck": False})
        partial.replace(out)
    return out
