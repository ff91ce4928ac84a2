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
    assert blind["samples_must_fail"] >= 1
    assert blind["sample_fn_rate"] == 1.0 and blind["sample_fp_rate"] in (0.0, None)
    lo, hi = blind["sample_fn_rate_ci"]
    assert 0.0 < lo < 1.0 == hi
    assert blind["scratch_recall"] == 0.0 and blind["kept"] == 0
    assert alarm["image_fn_rate"] == 0.0 and alarm["image_fp_rate"] == 1.0
    assert alarm["scratch_recall"] == 1.0
    assert "blind |" in describe(res)


@pytest.mark.parametrize("length_mm", [0.3, 0.49, 0.5, 2.0])
def test_evaluation_and_verdict_apply_the_same_reject_rule(monkeypatch, length_mm):
    """Clean samples on which every RoI "finds" one scratch of ``length_mm``: the evaluation
    counts a false alarm exactly when the runtime's verdict for the same RoIs is FAIL."""
    import model.evaluate as ev
    from edge.inspection import RoiInput, inspect_sample
    from edge.verdict import Defect, RoiResult, Status

    cfg = with_changes(camera={"width": 320, "height": 280}, reject_rule={"min_length_mm": 0.5})

    def fake(self, frames, index=0, origin=(0.0, 0.0)):
        # far apart in each RoI, so merging across RoIs cannot lengthen them
        x, y = origin[0] + 1.0, origin[1] + 1.0
        return RoiResult(index, origin, [Defect((x, y, x + length_mm, y + 0.01), length_mm,
                                                0.9, (index,), (10, 10, 20, 12))], {}, 1, False)

    monkeypatch.setattr(ev.EngineScorer, "__init__", lambda self, *a, **k: None)
    monkeypatch.setattr(ev.EngineScorer, "__call__", fake)
    res = ev.evaluate({"fake": "unused.onnx"}, cfg, n_samples=2, seed=5, scratch_share=0.0,
                      progress=False)["fake"]

    class Engine:  # the runtime's loop, with the pipeline's answer replaced by the same RoIs
        identity: dict = {}

    grid = cfg.stage.roi_grid
    monkeypatch.setattr("edge.inspection.process_roi",
                        lambda frames, cal, engine, c, i, o, *a, **k: fake(None, frames, i, o))
    rois = [RoiInput(i, grid.roi_origin_mm(i), lambda: None) for i in range(grid.count)]
    verdict = inspect_sample("S", rois, grid.count, Engine(), None, cfg)
    fails = verdict.status is Status.FAIL
    assert fails == (length_mm >= 0.5)
    assert res["sample_fp_rate"] == res["image_fp_rate"] == (1.0 if fails else 0.0)
