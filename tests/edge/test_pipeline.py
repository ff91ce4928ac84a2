"""The pipeline on the shipped network, on a small head at the real pixel footprint."""

import numpy as np
import pytest

from edge import calibration as calib
from edge.calibration import DefectivePixels, Geometry
from edge.config import parse
from edge.engine import open_engine
from edge.inspection import RoiInput, inspect_sample
from edge.kernels.space_to_depth import space_to_depth_tiles
from edge.pipeline import NO_CALIBRATION, NO_CORRECTION, PipelineError, prepare_tiles, process_roi
from edge.sim import OpticsRenderer
from edge.sim.sample import arc, make_dust, make_stain
from edge.truth import GlassObject, Sample
from edge.verdict import Status
from tests.conftest import SHIPPED_MODEL, small_head_data

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
    # give the same scores, a real one other scores. A dark level of 0 is no real camera's: the
    # envelope check (tests/edge/test_envelope.py) would refuse these frames, so it is off here
    shape = (6, 1024, 1024)
    same = calib.load(calib.save(tmp_path / "id.npz", np.zeros(shape), np.ones(shape), 1024,
                                 1024))
    res = process_roi(frames, same, engine, small_cfg, keep_score=True, check=False)
    assert res.corrected and res.notes == []
    np.testing.assert_array_equal(res.score, plain.score)
    brighter = calib.load(calib.save(tmp_path / "g.npz", np.zeros(6), np.full(6, 1.5), 1024,
                                     1024))
    assert not np.array_equal(process_roi(frames, brighter, engine, small_cfg,
                                          keep_score=True, check=False).score, plain.score)
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


def test_without_calibration_positions_are_the_nominal_formula(engine, head, small_cfg):
    s = scratch((3.0, 4.0), 20.0, 5.0)
    sample = Sample("ONE", small_cfg.stage.roi_grid.extent_mm, (s,), 1)
    frames = head.render(sample, (0.0, 0.0), noise_seed=0).frames
    for origin, mm_per_px in (((0.0, 0.0), None), ((9.7, 2.5), (0.0114, 0.0112))):
        res = process_roi(frames, None, engine, small_cfg, 0, origin, mm_per_px)
        mmx, mmy = mm_per_px or small_cfg.mm_per_px
        (d,) = res.defects
        x0, y0, x1, y1 = d.box_px
        assert d.box_mm == (origin[0] + x0 * mmx, origin[1] + y0 * mmy,
                            origin[0] + x1 * mmx, origin[1] + y1 * mmy)


def test_a_calibration_without_geometry_keeps_positions_bit_for_bit(tmp_path, engine, head,
                                                                    small_cfg):
    s = scratch((3.0, 4.0), 20.0, 5.0)
    sample = Sample("ONE", small_cfg.stage.roi_grid.extent_mm, (s,), 1)
    frames = head.render(sample, (0.0, 0.0), noise_seed=0).frames
    plain = process_roi(frames, None, engine, small_cfg, 0, (9.7, 0.0))
    cal = calib.load(calib.save(tmp_path / "c.npz", np.zeros(6), np.ones(6), head=small_cfg))
    res = process_roi(frames, cal, engine, small_cfg, 0, (9.7, 0.0), check=False)  # dark 0
    assert res.corrected and res.notes == []
    assert [d.to_dict() for d in res.defects] == [d.to_dict() for d in plain.defects]
    assert [d.box_mm for d in res.defects] == [d.box_mm for d in plain.defects]


def test_calibrated_geometry_places_defects_where_they_are(tmp_path, engine):
    # a simulated camera mounted turned, magnified and shifted against what its head file says
    data = small_head_data()
    data["simulation"].update(rotation_deg=2.0, scale_error=0.015, origin_offset_mm=[0.6, -0.5])
    cfg = parse(data, "mounted.toml")
    optics = OpticsRenderer(cfg)
    s = scratch((2.0, 3.0), 35.0, 8.0, seed=9)
    sample = Sample("GEO", cfg.stage.roi_grid.extent_mm, (s,), 1)
    frames = optics.render(sample, (0.0, 0.0), noise_seed=0).frames
    ends = np.array([s.points_mm[0], s.points_mm[-1]])

    def worst_miss(box):  # how far the scratch's ends lie outside the box, mm
        x0, y0, x1, y1 = box
        return float(np.max(np.maximum.reduce([x0 - ends[:, 0], ends[:, 0] - x1,
                                                y0 - ends[:, 1], ends[:, 1] - y1,
                                                np.zeros(2)])))

    nominal = process_roi(frames, None, engine, cfg)
    assert len(nominal.defects) == 1 and worst_miss(nominal.defects[0].box_mm) > 0.4
    true_mm = tuple(v * 1.015 for v in cfg.mm_per_px)
    geo = Geometry.measured(cfg, true_mm, 2.0, (0.6, -0.5))
    cal = calib.load(calib.save(tmp_path / "geo.npz", head=cfg, geometry=geo))
    res = process_roi(frames, cal, engine, cfg)
    assert not res.corrected and res.notes == [NO_CORRECTION]
    (d,) = res.defects
    assert worst_miss(d.box_mm) < 0.15, (d.box_mm, ends)
    assert d.box_mm == cal.mapping(cfg).box_mm(d.box_px, (0.0, 0.0))
    assert d.length_mm == pytest.approx(8.0, rel=0.2)
    # the same pixels as without geometry: only their place in mm changed
    assert d.box_px == nominal.defects[0].box_px


def test_tuned_thresholds_replace_the_head_files(tmp_path, engine, head, small_cfg):
    s = scratch((3.0, 4.0), 20.0, 5.0)
    sample = Sample("ONE", small_cfg.stage.roi_grid.extent_mm, (s,), 1)
    frames = head.render(sample, (0.0, 0.0), noise_seed=0).frames
    strict = calib.load(calib.save(tmp_path / "t.npz", head=small_cfg,
                                   thresholds={"dbscan_min_samples": 10**6}))
    assert len(process_roi(frames, None, engine, small_cfg).defects) == 1
    assert process_roi(frames, strict, engine, small_cfg).defects == []
    clash = calib.load(calib.save(tmp_path / "x.npz", head=small_cfg, thresholds={"t_low": 0.9}))
    with pytest.raises(PipelineError, match=r"RoI 0: calibration .*x.npz: its thresholds"):
        process_roi(frames, clash, engine, small_cfg)


def test_defective_pixels_are_repaired_in_the_prepared_tiles(tmp_path, head, small_cfg):
    sample = Sample("HOT", small_cfg.stage.roi_grid.extent_mm, (), 7)
    frames = head.render(sample, (0.0, 0.0), noise_seed=0).frames
    w = small_cfg.camera.width
    rows, cols = head.hot_index // w, head.hot_index % w
    assert rows.size >= 5
    cal = calib.load(calib.save(tmp_path / "hot.npz", head=small_cfg,
                                defects=DefectivePixels.of(hot=(rows, cols))))
    grid, tiles = prepare_tiles(frames, cal, small_cfg, np.float16)
    expected = space_to_depth_tiles(frames, grid, bit_depth=12, dtype=np.float16,
                                    defects=(rows, cols))
    assert np.array_equal(tiles.view(np.uint16), expected.view(np.uint16))
    _, plain = prepare_tiles(frames, None, small_cfg, np.float16)
    assert tiles.max() < plain.max()  # the hot pixels were the brightest of clean glass
