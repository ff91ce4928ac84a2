import numpy as np
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
    res = evaluate(models, cfg, n_samples=4, seed=3, scratch_share=0.5, progress=False,
                   cache=tmp_path / "cache")
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


@pytest.mark.parametrize("cells", [6, 10, 11, 30])
def test_evaluation_and_verdict_apply_the_same_reject_rule(monkeypatch, cells):
    """Clean samples on whose RoIs a detector "sees" one line: the evaluation counts a false
    alarm exactly when the runtime's verdict for the same score maps is FAIL."""
    from edge.inspection import RoiInput, inspect_sample
    from edge.pipeline import to_defects
    from edge.postprocess import find_scratches
    from edge.verdict import RoiResult, Status
    from model.evaluate import count
    from model.heldout import RoiTruth, SampleTruth

    cfg = with_changes(camera={"width": 320, "height": 280}, reject_rule={"min_length_mm": 0.5},
                       pipeline={"downscale": 1, "dbscan_min_samples": 3, "dbscan_eps": 2.0})
    grid = cfg.stage.roi_grid
    score = np.zeros((140, 160), np.float32)
    score[70, 40:40 + cells] = 0.9  # a line of `cells` score pixels (2 RAW pixels each)
    length_mm = (cells) * 2 * float(np.mean(cfg.mm_per_px))

    # the held-out set: 2 clean samples, every RoI with the line
    clean = [(SampleTruth(s, [RoiTruth({}, {})] * grid.count), [score] * grid.count)
             for s in range(2)]
    res = count(clean, cfg).summary()

    class Engine:
        identity: dict = {}

    def runtime(frames, cal, engine, c, index, origin, *a, **k):
        found = find_scratches(score, c.pipeline)
        return RoiResult(index, origin, to_defects(found, index, origin, c.mm_per_px), {}, 1,
                         False)

    monkeypatch.setattr("edge.inspection.process_roi", runtime)
    rois = [RoiInput(i, grid.roi_origin_mm(i), lambda: None) for i in range(grid.count)]
    verdict = inspect_sample("S", rois, grid.count, Engine(), None, cfg)
    fails = verdict.status is Status.FAIL
    assert fails == (length_mm >= 0.5), (length_mm, verdict.reason)
    assert res["sample_fp_rate"] == res["image_fp_rate"] == (1.0 if fails else 0.0)


def test_scores_are_cached_so_a_second_evaluation_renders_nothing(tmp_path, monkeypatch):
    from edge.sim import OpticsRenderer
    from model.evaluate import sweep

    cfg = with_changes(camera={"width": 320, "height": 280})
    models = {"alarm": _constant_model(tmp_path / "alarm.onnx", 1.0)}
    first = evaluate(models, cfg, n_samples=2, seed=3, scratch_share=0.5, progress=False,
                     cache=tmp_path / "c", baselines=["physics"])
    assert set(first) == {"alarm", "physics"}

    def no_render(*a, **k):
        raise AssertionError("rendered again")

    monkeypatch.setattr(OpticsRenderer, "render", no_render)
    again = evaluate(models, cfg, n_samples=2, seed=3, scratch_share=0.5, progress=False,
                     cache=tmp_path / "c", baselines=["physics"])
    assert {k: v["sample_fp_rate"] for k, v in again.items()} == {
        k: v["sample_fp_rate"] for k, v in first.items()}
    rows = sweep(models, cfg, 2, 3, 0.5, {"t_low": (0.2, 0.5), "t_high": (0.4, 0.9)},
                 progress=False, cache=tmp_path / "c")["alarm"]
    assert len(rows) == 3  # (0.5, 0.4) skipped: T_low above T_high
    own = evaluate(models, cfg, n_samples=2, seed=3, scratch_share=0.5, progress=False,
                   cache=tmp_path / "c", settings={"alarm": {"t_low": 0.5, "t_high": 0.9}})
    assert own["alarm"]["post_processing"]["t_low"] == 0.5


def _row(**kw):
    base = dict(sample_fn_rate=0.0, sample_fp_rate=0.0, image_fn_rate=0.0, image_fp_rate=0.0,
                scratch_recall=0.5, scratch_precision=0.5)
    return {**base, **kw}


def test_the_best_setting_misses_least_within_the_false_alarm_limit_then_breaks_ties():
    from model.evaluate import best_setting

    rows = [_row(name="alarms", sample_fn_rate=0.0, sample_fp_rate=0.2),
            _row(name="misses", sample_fn_rate=0.1),
            _row(name="coarse", image_fn_rate=0.05, scratch_recall=0.9),
            _row(name="fine", scratch_precision=0.9),
            _row(name="finer", scratch_precision=1.0)]
    assert best_setting(rows)["name"] == "finer"  # image FN, then recall, then precision
    assert best_setting(rows[:2])["name"] == "misses"  # FP 20 % is over the 5 % limit
    over = [_row(name="a", sample_fp_rate=0.3), _row(name="b", sample_fp_rate=0.2,
                                                     sample_fn_rate=0.5)]
    assert best_setting(over)["name"] == "b"  # none within: fewest false alarms
