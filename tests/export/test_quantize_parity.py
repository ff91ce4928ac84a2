"""INT8 Q/DQ quantization on the CPU, checked with the parity tool against the float model."""

import numpy as np
import pytest

from edge.engine import open_engine
from edge.sim import OpticsRenderer
from edge.sim.recorder import record_sample
from edge.sim.sample import arc
from edge.truth import GlassObject, Sample
from export.parity import boxes_agree, compare
from export.quantization_data import quantization_batches
from tests.conftest import UNET_MODEL

pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")


@pytest.fixture(scope="module")
def recorded(tmp_path_factory, small_cfg):
    pts = arc((3.0, 4.0), 20.0, 5.0, 0.0)
    s = GlassObject("scratch", tuple(map(tuple, pts)), 22.0, 800.0, 5, "triangular")
    sample = Sample("CALIB", small_cfg.stage.roi_grid.extent_mm, (s,), 1)
    root = tmp_path_factory.mktemp("samples")
    return record_sample(small_cfg, OpticsRenderer(small_cfg), sample, root, progress=False)


def test_quantization_batches_use_the_runtime_tiling(recorded, small_cfg):
    batches = quantization_batches([recorded], small_cfg, batch=2, limit=4)
    assert [b.shape for b in batches] == [(2, 24, 512, 512)]
    assert batches[0].dtype == np.float32 and batches[0].min() >= 0 and batches[0].max() <= 1
    with pytest.raises(ValueError, match="at least one batch of 8"):
        quantization_batches([recorded], small_cfg, batch=8, limit=4)


@pytest.mark.parametrize("method", ["minmax", "entropy"])
def test_qdq_model_is_explicitly_quantized_and_agrees(tmp_path, recorded, small_cfg, method):
    import onnxruntime as ort

    from edge.recording import open_sample
    from export.quantize import quantize_qdq

    batches = quantization_batches([recorded], small_cfg, batch=1, limit=2)
    out = quantize_qdq(UNET_MODEL, tmp_path / "m.qdq.onnx", batches, method=method)
    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    # the scores keep float resolution: far more distinct values than INT8's 255 levels
    (scores,) = ort.InferenceSession(str(out)).run(["scores"], {"frames": batches[0]})
    assert len(np.unique(scores)) > 1000
    rec = open_sample(recorded)
    with open_engine(UNET_MODEL) as ref, open_engine(out) as q:
        rep = compare(ref, q, [(0, np.asarray(rec.frames(0)))], small_cfg)
    assert rep.rois == 1 and rep.defects_reference == 1
    assert rep.max_abs > 0 and rep.mean_abs < 0.01  # INT8 moves some pixels, not the map
    assert rep.defects_agree, rep.to_dict()


def test_boxes_agree():
    assert boxes_agree([(0, 0, 4, 4)], [(2, 2, 6, 6)])
    assert not boxes_agree([(0, 0, 4, 4)], [(5, 5, 6, 6)])
    assert not boxes_agree([(0, 0, 4, 4)], [])
