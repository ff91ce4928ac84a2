import json

import numpy as np
import pytest

from edge import calibration as calib
from edge.postprocess import main_axis_length
from edge.verdict import Defect, RoiResult, Status, Verdict, decide, merge_defects


def roi(index, *boxes):
    return RoiResult(index, (0.0, 0.0), [Defect(b, 1.0, 0.9, (index,)) for b in boxes], {}, 1,
                     False)


def test_touching_defects_of_different_rois_merge_even_in_a_chain():
    out = merge_defects([roi(0, (0, 0, 10, 1)), roi(1, (9.9, 0.5, 20, 1.5)),
                         roi(2, (19.8, 1.0, 30, 2.0))])
    assert len(out) == 1
    d = out[0]
    assert d.rois == (0, 1, 2) and d.box_mm == (0, 0, 30, 2.0)
    assert d.length_mm == pytest.approx(3.0)  # min(sum of parts, diagonal)


def test_defects_of_one_roi_or_far_apart_stay_separate():
    out = merge_defects([roi(0, (0, 0, 1, 1), (1.1, 0, 2, 1)), roi(1, (5, 5, 6, 6))])
    assert len(out) == 3


def test_decision_and_json_round_trip():
    v = decide("S1", [roi(0, (0, 0, 1, 1)), roi(1)], 2, {"backend": "onnxruntime"}, None,
               {"sample": 1.0})
    assert v.status is Status.FAIL and v.flagged_rois == [0]
    back = Verdict.from_dict(json.loads(v.to_json()))
    assert back.status is Status.FAIL and back.defects[0].box_mm == (0, 0, 1, 1)
    assert decide("S2", [roi(0), roi(1)], 2, {}, None, {}).status is Status.PASS
    assert decide("S3", [roi(0)], 2, {}, None, {}).status is Status.ERROR
    assert "FAIL - 1 scratch " in v.summary()


def test_main_axis_length_of_a_diagonal_line():
    k = np.arange(10)
    assert main_axis_length(k, k, 8) == pytest.approx(9 * 8 * np.sqrt(2) + 8)
    assert main_axis_length(np.array([3]), np.array([4]), 8) == 8


def test_calibration_file_errors(tmp_path):
    with pytest.raises(calib.CalibrationError, match="does not exist"):
        calib.load(tmp_path / "none.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(calib.CalibrationError, match="not a readable .npz"):
        calib.load(tmp_path / "junk.npz")
    with pytest.raises(calib.CalibrationError, match="'gain' must be positive"):
        calib.save(tmp_path / "c.npz", np.zeros(6), np.zeros(6), 8, 8)
    np.savez(tmp_path / "nometa.npz", dark=np.zeros(6), gain=np.ones(6))
    with pytest.raises(calib.CalibrationError, match=r"lacks \['meta'\]"):
        calib.load(tmp_path / "nometa.npz")
    ok = calib.load(calib.save(tmp_path / "ok.npz", np.zeros((6, 8, 8)), np.ones(6), 8, 8))
    assert ok.dark.shape == (6, 8, 8) and len(ok.sha256) == 64


def test_scratches_shorter_than_the_reject_rule_pass_the_sample():
    def one(length):
        return RoiResult(0, (0.0, 0.0), [Defect((0, 0, length, 0.01), length, 0.9, (0,))], {},
                         1, False)

    short = decide("S", [one(0.3), roi(1)], 2, {}, None, {}, 0.5)
    assert short.status is Status.PASS and len(short.defects) == 1
    assert "shorter than the reject rule's 0.5 mm" in short.summary()
    assert decide("S", [one(0.5), roi(1)], 2, {}, None, {}, 0.5).status is Status.FAIL
    assert decide("S", [one(0.3), roi(1)], 2, {}, None, {}).status is Status.FAIL


@pytest.mark.parametrize("seed", range(6))
def test_a_pooled_map_gives_the_same_scratches_as_the_map(seed):
    from edge import config
    from edge.postprocess import PooledScore, find_scratches

    rng = np.random.default_rng(seed)
    score = (rng.random((300, 340)) ** 6).astype(np.float32) * 0.5
    for _ in range(3):
        r, c = rng.integers(20, 280), rng.integers(20, 200)
        score[r, c:c + rng.integers(10, 120)] = rng.uniform(0.5, 1.0)
    pooled = PooledScore(score)
    base = config.load().pipeline
    for ds, tl, ms in ((1, 0.25, 4), (2, 0.15, 8), (4, 0.3, 4), (8, 0.6, 2), (2, 2.0, 4)):
        p = base.model_copy(update={"downscale": ds, "t_low": min(tl, 1.0),
                                    "t_high": min(max(tl, 0.6), 1.0), "dbscan_min_samples": ms,
                                    "dbscan_eps": 3.0})
        a, b = find_scratches(score, p), find_scratches(pooled, p)
        assert np.array_equal(a.boxes, b.boxes) and np.array_equal(a.length, b.length)
    with pytest.raises(ValueError, match="NaN"):
        PooledScore(np.full((4, 4), np.nan, np.float32))
