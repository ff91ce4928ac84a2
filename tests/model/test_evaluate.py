import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper  # noqa: E402

from model.evaluate import describe, evaluate  # noqa: E402
from tests.conftest import with_changes  # noqa: E402


def _constant_model(path, value: float):
    """frames -> a map of ``value`` (N x 1 x H x W), the shape the runtime expects."""
    nodes = [
        helper.make_node("ReduceMax", ["frames"], ["m"], axes=[1], keepdims=1),
        helper.make_node("Mul", ["m", "zero"], ["z"]),
        helper.make_node("Add", ["z", "c"], ["scores"]),
    ]
    graph = helper.make_graph(
        nodes, "constant",
        [helper.make_tensor_value_info("frames", TensorProto.FLOAT, ["N", 24, "H", "W"])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 1, "H", "W"])],
        [helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0]),
         helper.make_tensor("c", TensorProto.FLOAT, [], [value])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.save(model, str(path))
    return path


def test_rates_of_a_blind_and_of_an_alarmist_model(tmp_path):
    cfg = with_changes(camera={"width": 640, "height": 560})
    models = {"blind": _constant_model(tmp_path / "blind.onnx", -1.0),
              "alarm": _constant_model(tmp_path / "alarm.onnx", 1.0)}
    res = evaluate(models, cfg, n_samples=4, seed=3, scratch_share=0.5, progress=False)
    blind, alarm = res["blind"], res["alarm"]
    assert blind["samples"] == alarm["samples"] == 4 and blind["images"] == 40
    assert blind["samples_with_scratch"] >= 1
    assert blind["sample_fn_rate"] == 1.0 and blind["sample_fp_rate"] in (0.0, None)
    assert blind["scratch_recall"] == 0.0 and blind["kept"] == 0
    assert alarm["image_fn_rate"] == 0.0 and alarm["image_fp_rate"] == 1.0
    assert alarm["scratch_recall"] == 1.0
    assert "blind |" in describe(res)
