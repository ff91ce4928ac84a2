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


# -- the protocol (issue 30) ---------------------------------------------------------------------

def _strings(obj):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield str(k)
            yield from _strings(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _strings(v)
    elif isinstance(obj, str):
        yield obj


def test_shipped_names_are_accepted_and_the_record_holds_no_path_of_this_machine(tmp_path,
                                                                                 capsys):
    import json
    from pathlib import Path

    from edge import cli
    from edge.hashing import sha256_file
    from tests.conftest import SHIPPED_MODEL, small_head_toml

    head = small_head_toml(tmp_path)
    out = tmp_path / "evaluation.json"
    argv = ["evaluate", "shipped:scratch_hybrid.onnx", "--head", str(head), "--baseline",
            "physics", "--must-fail", "2", "--clean", "1", "--seed", "5000000", "--cache",
            str(tmp_path / "cache"), "--json", str(out), "-q",
            "--settings-from", "docs/evaluation/sweep-validation-30.json"]
    assert cli.main(argv) == 0
    text = out.read_text()
    rec = json.loads(text)
    assert rec["models"]["scratch_hybrid"] == {"given_as": "shipped:scratch_hybrid.onnx",
                                               "sha256": sha256_file(SHIPPED_MODEL)}
    for s in _strings(rec):
        assert not s.startswith(("/", "~")), s
    for machine in (str(tmp_path), str(Path.home()), str(Path.cwd())):
        assert machine not in text
    assert "shipped:scratch_hybrid.onnx" in rec["command"] and "--cache" not in rec["command"]
    # what served what: the network's own training draw, the sweep's block, the test blocks
    assert [t["count"] for t in rec["seeds"]["training"]] == [3000]
    assert {"first": 800000, "last": 800029} .items() <= rec["seeds"]["validation"][0].items()
    must, clean = rec["seeds"]["test"]
    assert (must["first"], must["scratch_share"], clean["first"], clean["scratch_share"]) == (
        5000000, 1.0, 5100000, 0.0)
    net = rec["detectors"]["scratch_hybrid"]
    assert net["samples_must_fail"] == 2 and net["samples_clean"] == 1
    assert net["post_processing_from"] == "docs/evaluation/sweep-validation-30.json"
    assert "at least as good" in rec["comparison"]["line"]
    assert rec["comparison"]["line"] in capsys.readouterr().out
    assert cli.main(["evaluate", "shipped:no_such.onnx", "-q"]) == 2
    assert "scratch_hybrid.onnx" in capsys.readouterr().err  # the shipped ones are listed


def test_a_test_range_that_served_training_or_validation_is_refused(tmp_path, monkeypatch):
    from edge.sim import OpticsRenderer
    from model.evaluate import evaluate_report
    from model.heldout import SeedOverlapError, Seeds, _drawn_seed
    from tests.conftest import SHIPPED_MODEL

    def no_render(*a, **k):
        raise AssertionError("rendered before the seeds were checked")

    monkeypatch.setattr(OpticsRenderer, "render", no_render)
    cfg = with_changes(camera={"width": 320, "height": 280})
    cache = tmp_path / "c"
    # the first held-out set served selection: never a test range again
    with pytest.raises(SeedOverlapError, match="900000-900149"):
        evaluate_report({}, cfg, n_samples=5, seed=900_140, baselines=["physics"],
                        progress=False, cache=cache)
    # a sweep file's block
    sweep = Seeds("validation", "a sweep", 700_000, 700_099)
    with pytest.raises(SeedOverlapError, match="700000-700099"):
        evaluate_report({}, cfg, seed=699_990, must_fail=None, clean=20, clean_seed=700_050,
                        baselines=["physics"], progress=False, cache=cache, validation=[sweep])
    # a sample seed the shipped network's training drew (window 17 of its pool, seed 7)
    drawn = _drawn_seed(7, 17)
    with pytest.raises(SeedOverlapError, match=f"seed {drawn}.*training"):
        evaluate_report({"scratch_hybrid": SHIPPED_MODEL}, cfg, n_samples=3, seed=drawn - 1,
                        progress=False, cache=cache)
    # the must-fail and the clean block may not share seeds either
    with pytest.raises(SeedOverlapError, match="clean"):
        evaluate_report({}, cfg, seed=5_000_000, must_fail=3, clean=3, clean_seed=5_000_001,
                        baselines=["physics"], progress=False, cache=cache)


def test_the_refusal_knows_the_seeds_the_trainer_really_draws(monkeypatch):
    """Training draws each window's sample seed as model.data.SimulatedPatches does; if that
    changes, the overlap check must change with it."""
    import model.data as D
    from model.heldout import _drawn_seed

    seen = []

    def capture(seed, *a, **k):
        seen.append(seed)
        raise StopIteration

    monkeypatch.setattr(D, "generate_sample", capture)
    patches = D.SimulatedPatches(with_changes(camera={"width": 320, "height": 280}), 7, 64)
    for index in (0, 17, 2999):
        with pytest.raises(StopIteration):
            patches.window(index, scratch=True)
    assert seen == [_drawn_seed(7, i) for i in (0, 17, 2999)]


def test_must_fail_and_clean_options_fit_together(capsys):
    from edge import cli

    assert cli.main(["evaluate", "--baseline", "physics", "--must-fail", "3", "-q"]) == 2
    assert "--seed" in capsys.readouterr().err
    assert cli.main(["evaluate", "--baseline", "physics", "--must-fail", "3", "--seed", "1",
                     "--samples", "4"]) == 2
    assert "--samples" in capsys.readouterr().err


def test_the_peak_is_the_brightest_state_signal_the_frames_show():
    """A straight scratch whose normal falls between two LED states: its brightest frame shows
    the peak scratch_peak_dn computes, not the drawn intensity (3 times higher)."""
    from edge.sim import OpticsRenderer
    from edge.sim.sample import arc
    from edge.truth import GlassObject, Sample
    from model.heldout import scratch_peak_dn

    cfg = with_changes()
    optics = OpticsRenderer(cfg, shape=(256, 256))
    side = 256 * optics.px_mm
    pts = arc((0.2 * side, 0.5 * side - 0.3 * side * np.sin(np.radians(15))), 15.0, 0.6 * side)
    d = GlassObject("scratch", tuple(map(tuple, pts)), 30.0, 300.0, 1, "triangular")
    frames = optics.render(Sample("x", (side, side), (d,)), (0.0, 0.0), noise_seed=5).frames
    f = frames.astype(np.float64)
    green = np.concatenate([f[:, 0::2, 0::2].reshape(6, -1), f[:, 1::2, 1::2].reshape(6, -1)],
                           axis=1)  # GRBG: the two green sites
    seen = float((green.max(axis=1) - np.median(green, axis=1)).max())
    peak = scratch_peak_dn(d, cfg)
    assert peak == pytest.approx(seen, rel=0.2)
    assert d.intensity_dn > 2 * peak


def test_recall_by_peak_signal_on_a_tiny_evaluation(tmp_path):
    from model.evaluate import PEAK_BIN_NAMES

    cfg = with_changes(camera={"width": 320, "height": 280})
    models = {"blind": _constant_model(tmp_path / "blind.onnx", -1.0),
              "alarm": _constant_model(tmp_path / "alarm.onnx", 1.0)}
    res = evaluate(models, cfg, seed=6_000_000, must_fail=3, clean=1, progress=False,
                   cache=tmp_path / "c")
    alarm, blind = res["alarm"], res["blind"]
    assert list(alarm["recall_by_peak_dn"]) == list(PEAK_BIN_NAMES)
    n = alarm["scratches_by_peak_dn"]
    assert sum(n.values()) == alarm["scratches_labelled"] >= 3
    assert all(alarm["recall_by_peak_dn"][k] == (1.0 if n[k] else None) for k in n)
    assert all(blind["recall_by_peak_dn"][k] == (0.0 if n[k] else None) for k in n)
    assert alarm["samples_must_fail"] == 3 and alarm["samples_clean"] == 1
    assert blind["sample_fn_rate"] == 1.0 and alarm["sample_fp_rate"] == 1.0
    strong = alarm["scratches_1mm_12dn"]
    assert strong <= alarm["scratches_labelled"] and alarm["recall_1mm_12dn"] == (
        1.0 if strong else None)


def _truth(seed, lengths, peaks=None, rois=10):
    from model.heldout import RoiTruth, SampleTruth

    line = {i: np.array([[70.0, 40.0 + k] for k in range(4)]) for i in lengths}
    first = RoiTruth(line, dict(lengths))
    return SampleTruth(seed, [first] + [RoiTruth({}, {})] * (rois - 1), peaks)


def test_errors_are_neither_pass_nor_fail():
    """A refused RoI makes its sample ERROR: on a must-fail sample no miss, on a clean one a
    false refusal; the recall bins by peak follow the truth's peaks."""
    from model.evaluate import count

    cfg = with_changes(camera={"width": 320, "height": 280},
                       pipeline={"downscale": 1, "dbscan_min_samples": 3, "dbscan_eps": 2.0})
    blank = np.zeros((140, 160), np.float32)
    seen = blank.copy()
    seen[70, 38:46] = 0.9  # over the scratch of _truth
    ok, no = [""] * 10, ["RoI 0: frames unlike the training frames"] + [""] * 9
    samples = [
        (_truth(1, {1: 3.0}, {1: 5.0}), [seen] + [blank] * 9, ok),  # found, faint
        (_truth(2, {1: 3.0}, {1: 30.0}), [blank] * 10, ok),  # missed
        (_truth(3, {1: 3.0}, {1: 100.0}), [seen] + [blank] * 9, no),  # refused: no miss
        (_truth(4, {}), [blank] * 10, no),  # clean, refused
        (_truth(5, {}), [blank] * 10, ok),  # clean, passed
    ]
    s = count(samples, cfg).summary()
    assert (s["samples_must_fail"], s["samples_missed"], s["samples_error"]) == (3, 1, 2)
    assert s["sample_fn_rate"] == round(1 / 3, 4)
    assert (s["samples_error_must_fail"], s["samples_error_clean"]) == (1, 1)
    assert s["sample_error_rate"] == 0.5 and s["sample_fp_rate"] == 0.0
    assert s["images_error"] == 2
    assert s["scratches_by_peak_dn"] == {"<6": 1, "6-12": 0, "12-24": 0, "24-48": 1, ">=48": 1}
    assert s["recall_by_peak_dn"]["<6"] == 1.0 and s["recall_by_peak_dn"]["24-48"] == 0.0
    assert s["recall_by_peak_dn"][">=48"] == 0.0  # its RoI was refused: nothing kept
    assert s["scratches_1mm_12dn"] == 2 and s["recall_1mm_12dn"] == 0.0


def test_an_interrupted_fill_continues_and_old_truth_stays_readable(tmp_path, monkeypatch):
    from edge.sim import OpticsRenderer, generate_sample
    from model import heldout as H

    cfg = with_changes(camera={"width": 320, "height": 280})
    calls = {"n": 0}

    def score(frames, index, origin):
        calls["n"] += 1
        if calls["n"] == 15:  # in the second sample
            raise KeyboardInterrupt
        if index == 3:
            raise H.Refused("RoI 3: frames unlike the training frames")
        return np.zeros((frames.shape[1] // 2, frames.shape[2] // 2), np.float32)

    det = H.Detector("zero", "zero-v1", score)
    hs = H.HeldOutSet(cfg, 3, 50, 1.0, tmp_path)
    with pytest.raises(KeyboardInterrupt):
        hs.fill([det], progress=False)
    assert hs.missing([det]) == 2  # the first sample is whole, the second left no half file
    render = OpticsRenderer.render
    rendered = []

    def counting(self, sample, *a, **k):
        rendered.append(sample.seed)
        return render(self, sample, *a, **k)

    monkeypatch.setattr(OpticsRenderer, "render", counting)
    cost = hs.fill([det], progress=False)
    assert sorted(set(rendered)) == [51, 52] and cost.samples == 2
    scored = list(hs.scored(det.key))
    assert [s.refused[3] for s in scored] == ["RoI 3: frames unlike the training frames"] * 3
    # truth cached before peaks were recorded: they are worked out from the sample's seed
    path = hs._truth_path(50)
    t = H._load_truth(path)
    H._save_truth(path, H.SampleTruth(t.seed, t.rois, None))
    assert H._load_truth(path).peaks is None
    again = next(hs.scored(det.key)).truth.peaks
    assert again == H.sample_peaks(generate_sample(50, cfg.stage.roi_grid.extent_mm, 1.0), cfg)
    assert again == t.peaks and len(again) >= 1


def test_the_comparison_line_names_a_baseline_as_good_on_both_sample_rates():
    from model.evaluate import comparison

    res = {"net": {"sample_fn_rate": 0.02, "sample_fp_rate": 0.01},
           "physics": {"sample_fn_rate": 0.02, "sample_fp_rate": 0.0},
           "otsu-brightest": {"sample_fn_rate": 0.3, "sample_fp_rate": 0.4}}
    c = comparison(res, ["net"], ["physics", "otsu-brightest"])
    assert c["net"] == {"physics": True, "otsu-brightest": False}
    assert c["line"] == "physics at least as good as net on both sample rates"
    res["physics"]["sample_fn_rate"] = 0.03
    line = comparison(res, ["net"], ["physics", "otsu-brightest"])["line"]
    assert line == "no baseline is at least as good as net on both sample rates"


def test_the_command_line_and_the_module_agree_on_the_default_seeds():
    import model.cli as C
    import model.evaluate as E

    assert (C.DEVELOPMENT_SEED, C.CLEAN_OFFSET) == (E.DEVELOPMENT_SEED, E.CLEAN_OFFSET)


def test_a_sweep_on_a_must_fail_and_a_clean_block_records_both_and_a_test_refuses_them(
        tmp_path):
    from model.evaluate import evaluate_report, sample_sets, sweep, sweep_record
    from model.heldout import SeedOverlapError, sweep_seeds

    cfg = with_changes(camera={"width": 320, "height": 280})
    models = {"alarm": _constant_model(tmp_path / "alarm.onnx", 1.0)}
    rows = sweep(models, cfg, 0, 6_100_000, 0.0, {"t_low": (0.2,), "t_high": (0.4,)},
                 progress=False, cache=tmp_path / "c", must_fail=2, clean=1,
                 clean_seed=6_200_000)["alarm"]
    assert len(rows) == 1 and rows[0]["sample_fn_rate"] == 0.0  # an alarm misses nothing
    assert rows[0]["sample_fp_rate"] == 1.0  # and fails the clean sample
    blocks = sample_sets(cfg, 0, 6_100_000, 0.0, 2, 1, 6_200_000, tmp_path / "c",
                         role="validation")[1]
    record = sweep_record({"alarm": rows}, 0, 6_100_000, 0.0, blocks)
    assert [(b["first"], b["scratch_share"]) for b in record["seeds"]] == [
        (6_100_000, 1.0), (6_200_000, 0.0)]
    validation = sweep_seeds(record, "sweep.json")
    assert [b.first for b in validation] == [6_100_000, 6_200_000]
    with pytest.raises(SeedOverlapError, match="6200000"):
        evaluate_report(models, cfg, seed=6_300_000, must_fail=1, clean=1,
                        clean_seed=6_200_000, progress=False, cache=tmp_path / "c",
                        validation=validation)
