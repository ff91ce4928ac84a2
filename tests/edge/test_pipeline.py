"""The pipeline on the shipped network, on a small head at the real pixel footprint."""

import numpy as np
import pytest

from edge import calibration as calib
from edge.engine import open_engine
from edge.inspection import RoiInput, inspect_sample
from edge.pipeline import NO_CALIBRATION, PipelineError, process_roi
from edge.sim import OpticsRenderer
from edge.sim.sample import arc, make_dust, make_stain
from edge.truth import GlassObject, Sample
from edge.verdict import Status
from tests.conftest import SHIPPED_MODEL

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def engine():
    with open_engine(SHIPPED_MODEL, threads=2, max_batch=4) as e:
        yield e


@pytest.fixture(scope="module")
def head(small_cfg):
    return OpticsRenderer(small_cfg)


def scratch(start, angle, length, seed=5, dn=800.0) -> GlassObject:
    pts = arc(start, angle, length, 0.0)
    return GlassObject("scratch", tuple(map(tuple, pts)), 22.0, dn, seed, "triangular")


def rois_of(sample, head, cfg, broken=None):
    g = cfg.stage.roi_grid
    out = []
    for i in range(g.count):
        origin = g.roi_origin_mm(i)

        def frames(i=i, origin=origin):
            f = head.render(sample, origin, noise_seed=i).frames
            return broken(f) if broken else f

        out.append(RoiInput(i, origin, frames))
    return out


def test_strong_scratch_found_at_its_place_in_mm(engine, head, small_cfg):
    s = scratch((3.0, 4.0), 20.0, 5.0)
    sample = Sample("ONE", small_cfg.stage.roi_grid.extent_mm, (s,), 1)
    r = head.render(sample, (0.0, 0.0), noise_seed=0)
    res = process_roi(r.frames, None, engine, small_cfg, 0, (0.0, 0.0))
    assert len(res.defects) == 1
    d = res.defects[0]
    x0, y0, x1, y1 = d.box_mm
    for x, y in (s.points_mm[0], s.points_mm[-1]):
        assert x0 - 0.2 <= x <= x1 + 0.2 and y0 - 0.2 <= y <= y1 + 0.2
    assert d.length_mm == pytest.approx(5.0, rel=0.2)
    assert d.peak_score >= small_cfg.pipeline.t_high
    assert res.tiles == 1 and not res.corrected and res.notes == [NO_CALIBRATION]
    assert set(res.timings_s) == {"prepare", "infer", "stitch", "postprocess", "defects"}


def test_clean_glass_with_dust_and_stains_passes(engine, head, small_cfg):
    g = small_cfg.stage.roi_grid
    rng = np.random.default_rng(4)
    clutter = [make_dust(rng, g.extent_mm) for _ in range(12)]
    clutter += [make_stain(rng, g.extent_mm) for _ in range(3)]
    sample = Sample("CLEAN", g.extent_mm, tuple(clutter), 2)
    v = inspect_sample("CLEAN", rois_of(sample, head, small_cfg), g.count, engine, None,
                       small_cfg)
    assert v.status is Status.PASS, v.summary()
    assert v.defects == [] and len(v.rois) == g.count


def test_scratch_across_the_overlap_is_one_defect(engine, head, small_cfg):
    g = small_cfg.stage.roi_grid
    # RoI 0 spans x 0..11.7 mm, RoI 1 x 9.7..21.4 mm: this scratch lies in both
    s = scratch((7.0, 6.0), 5.0, 8.0, seed=6)
    sample = Sample("CROSS", g.extent_mm, (s,), 3)
    v = inspect_sample("CROSS", rois_of(sample, head, small_cfg), g.count, engine, None,
                       small_cfg)
    assert v.status is Status.FAIL
    assert [r.flagged for r in v.rois] == [True, True]
    assert len(v.defects) == 1, v.to_json()
    d = v.defects[0]
    assert d.rois == (0, 1)
    assert d.box_mm[0] <= 7.2 and d.box_mm[2] >= 14.8
    assert d.length_mm == pytest.approx(8.0, rel=0.25)


def test_wrong_frame_shape_is_an_error_verdict(engine, head, small_cfg):
    sample = Sample("BAD", small_cfg.stage.roi_grid.extent_mm, (), 4)
    v = inspect_sample("BAD", rois_of(sample, head, small_cfg, broken=lambda f: f[:5]),
                       2, engine, None, small_cfg)
    assert v.status is Status.ERROR
    assert v.reason == "RoI 0: expected 6 frames (6, H, W), got shape [5, 1024, 1024]"


def test_frames_of_another_type_or_odd_size_name_the_roi(engine, small_cfg):
    with pytest.raises(PipelineError, match="RoI 3: frames must be uint16"):
        process_roi(np.zeros((6, 64, 64), np.float32), None, engine, small_cfg, 3)
    with pytest.raises(PipelineError, match="RoI 0: frames must have an even height"):
        process_roi(np.zeros((6, 63, 64), np.uint16), None, engine, small_cfg)


def test_nan_scores_are_an_error_verdict(tmp_path, head, small_cfg):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    # a broken network: log of a negative number for every pixel
    nodes = [helper.make_node("ReduceMean", ["frames"], ["m"], axes=[1], keepdims=1),
             helper.make_node("Neg", ["m"], ["n"]),
             helper.make_node("Sub", ["n", "one"], ["s"]),
             helper.make_node("Log", ["s"], ["scores"])]
    graph = helper.make_graph(
        nodes, "nan", [helper.make_tensor_value_info("frames", TensorProto.FLOAT,
                                                     ["N", 24, "H", "W"])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 1, "H", "W"])],
        [helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path = tmp_path / "nan.onnx"
    onnx.save(model, str(path))
    sample = Sample("NAN", small_cfg.stage.roi_grid.extent_mm, (), 5)
    with open_engine(path) as broken:
        v = inspect_sample("NAN", rois_of(sample, head, small_cfg), 2, broken, None, small_cfg)
    assert v.status is Status.ERROR
    assert "RoI 0: the engine returned NaN or infinite scores" in v.reason


def test_calibration_maps_are_applied_and_checked(tmp_path, engine, head, small_cfg):
    s = scratch((3.0, 4.0), 20.0, 5.0)
    sample = Sample("CAL", small_cfg.stage.roi_grid.extent_mm, (s,), 1)
    frames = head.render(sample, (0.0, 0.0), noise_seed=0).frames
    plain = process_roi(frames, None, engine, small_cfg, keep_score=True)
    # the network was trained on uncorrected frames: an identity calibration (as maps) must
    # give the same scores, a real one other scores
    shape = (6, 1024, 1024)
    same = calib.load(calib.save(tmp_path / "id.npz", np.zeros(shape), np.ones(shape), 1024,
                                 1024))
    res = process_roi(frames, same, engine, small_cfg, keep_score=True)
    assert res.corrected and res.notes == []
    np.testing.assert_array_equal(res.score, plain.score)
    brighter = calib.load(calib.save(tmp_path / "g.npz", np.zeros(6), np.full(6, 1.5), 1024,
                                     1024))
    assert not np.array_equal(process_roi(frames, brighter, engine, small_cfg,
                                          keep_score=True).score, plain.score)
    other = calib.load(calib.save(tmp_path / "big.npz", np.zeros(6), np.ones(6), 3504, 3120))
    with pytest.raises(PipelineError, match="calibration .* is for 3504 x 3120 frames"):
        process_roi(frames, other, engine, small_cfg)


def test_an_incomplete_sample_is_never_a_pass(engine, head, small_cfg):
    sample = Sample("HALF", small_cfg.stage.roi_grid.extent_mm, (), 6)
    v = inspect_sample("HALF", rois_of(sample, head, small_cfg)[:1], 2, engine, None, small_cfg)
    assert v.status is Status.ERROR and v.reason == "only 1 of 2 RoIs were inspected"


def test_head_qualified_with_another_model_refuses_the_artifact(small_cfg):
    from edge.engine import EngineError
    from edge.inspection import load_engine

    data = small_cfg.model_dump(mode="json")
    data["engine"]["model_sha256"] = "ab" * 32
    other = type(small_cfg).model_validate(data)
    with pytest.raises(EngineError, match="qualified with model abababababab"):
        load_engine(other)
