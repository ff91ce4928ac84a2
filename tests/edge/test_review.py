"""Samples kept for review: the keep rules, the folder, the budget, a writer that falls behind
or meets a full disk (the verdict never waits and is never lost), and run / serve on the
simulated head."""

import errno
import json
import logging
import random
import threading
import time

import numpy as np
import pytest

from edge import config, review
from edge.config import Review
from edge.recording import open_sample
from edge.verdict import Defect, RoiResult, Status, decide, error
from tests.conftest import small_head_data

T_HIGH, MARGIN = 0.6, 0.1


def test_keep_rules():
    def never() -> float:
        raise AssertionError("no random draw for a sample another rule keeps")

    keep = review.why_kept
    assert keep(Status.FAIL, 0.9, T_HIGH, MARGIN, 0.0, never) == review.FAIL
    assert keep(Status.ERROR, None, T_HIGH, MARGIN, 0.0, never) == review.ERROR
    assert keep(Status.PASS, 0.51, T_HIGH, MARGIN, 0.0, never) == review.NEAR
    assert keep(Status.PASS, 0.95, T_HIGH, MARGIN, 0.0, never) == review.NEAR  # short scratch
    assert keep(Status.PASS, 0.49, T_HIGH, MARGIN, 0.0, never) is None
    # the random share of the rest, from a seeded generator: the same seed keeps the same ones
    picks = []
    for _ in range(2):
        rng = random.Random(7)
        picks.append([keep(Status.PASS, 0.1, T_HIGH, MARGIN, 0.25, rng.random) is not None
                      for _ in range(2000)])
    assert picks[0] == picks[1]
    assert 0.22 < sum(picks[0]) / 2000 < 0.28


def test_score_maps_round_trip_within_one_step():
    s = np.linspace(-1, 1, 1001, dtype=np.float32)
    assert np.abs(review.decode_scores(review.encode_scores(s)) - s).max() <= 1 / 127.5 / 2 + 1e-6


# -- a keeper on synthetic samples: 2 RoIs of 6 x 64 x 64 px ---------------------------------
@pytest.fixture
def head_cfg():
    return config.parse(small_head_data(), "small-head.toml")


def keeper_for(cfg, tmp_path, budget_gb=1.0, share=0.0, **options):
    r = Review(dir=str(tmp_path / "kept"), budget_gb=budget_gb, keep_share=share,
               margin=MARGIN)
    return review.Keeper(r, cfg, T_HIGH, seed=1, **options)


def collected(cfg, peak=0.2, rois=2, px=64):
    c = review.Collector()
    for i in range(rois):
        score = np.zeros((px // 2, px // 2), np.float32)
        score[5, 5:20] = peak
        frames = np.full((6, px, px), 100 + i, np.uint16)
        c(RoiResult(i, cfg.stage.roi_grid.roi_origin_mm(i), [], {}, 1, False, [], score),
          frames)
    return c


def failed(cfg, sid="F1"):
    d = Defect((0.1, 0.1, 0.5, 0.2), 0.41, 0.93, (0,))
    results = [RoiResult(0, (0.0, 0.0), [d], {}, 1, False), RoiResult(1, (1.0, 0.0), [], {}, 1,
                                                                       False)]
    return decide(sid, results, 2, {"model_sha256": "ab" * 32}, None, {})


def passed(sid):
    return decide(sid, [RoiResult(0, (0.0, 0.0), [], {}, 1, False),
                        RoiResult(1, (1.0, 0.0), [], {}, 1, False)], 2, {}, None, {})


def test_a_kept_sample_is_a_recorded_sample_with_its_scores_and_verdict(head_cfg, tmp_path):
    k = keeper_for(head_cfg, tmp_path)
    c = collected(head_cfg, peak=0.95)
    frames = c.rois[1].frames
    v = failed(head_cfg)
    assert k.finish(c, v) == review.FAIL
    assert c.rois == []  # the collector lets go; the queued sample holds them
    assert k.finish(collected(head_cfg), passed("P1")) is None  # peak 0.2: not kept
    k.close()
    folder = tmp_path / "kept" / "F1"
    rec = open_sample(folder)
    assert rec.manifest.head_config_sha256 == head_cfg.digest()
    assert np.array_equal(rec.frames(1), frames)
    scores = review.read_scores(folder, 0)
    assert scores.shape == (32, 32) and abs(scores[5, 10] - 0.95) < 0.005
    record = json.loads((folder / review.VERDICT).read_text())
    assert record["status"] == "FAIL" and record["defects"][0]["box_mm"] == [0.1, 0.1, 0.5, 0.2]
    assert record["review"]["why"] == "FAIL" and record["review"]["model_sha256"] == "ab" * 32
    assert record["review"]["head_config_sha256"] == head_cfg.digest()
    assert not (tmp_path / "kept" / "P1").exists()
    assert k.stats.kept == 1 and k.stats.bytes_written > 2 * 6 * 64 * 64 * 2


def test_an_error_before_the_first_roi_keeps_its_verdict_alone(head_cfg, tmp_path):
    k = keeper_for(head_cfg, tmp_path)
    assert k.finish(review.Collector(), error("E1", "stage alarm")) == review.ERROR
    k.close()
    assert sorted(p.name for p in (tmp_path / "kept" / "E1").iterdir()) == [review.VERDICT]


def test_budget_removes_the_oldest_unlabelled_sample_first(head_cfg, tmp_path):
    k = keeper_for(head_cfg, tmp_path, share=1.0)
    k.finish(collected(head_cfg), passed("A"))
    k.close()
    size = review._folder_bytes(tmp_path / "kept" / "A")
    need = review.Pending(passed("X"), review.RANDOM, 0.2, collected(head_cfg).rois).size_bytes
    budget_gb = (2 * size + need // 2) / 1e9  # A and B fit; C only without one of them
    time.sleep(0.02)  # distinct times: A older than B
    k = keeper_for(head_cfg, tmp_path, budget_gb=budget_gb, share=1.0)
    k.finish(collected(head_cfg), passed("B"))
    k.close()
    (tmp_path / "kept" / "A" / "labels.json").write_text("{}")  # labelled: stays
    k = keeper_for(head_cfg, tmp_path, budget_gb=budget_gb, share=1.0)
    k.finish(collected(head_cfg), passed("C"))
    k.close()
    kept = sorted(p.name for p in (tmp_path / "kept").iterdir() if p.name[0] != ".")
    assert kept == ["A", "C"]
    assert k.stats.evicted == 1 and k.used_bytes <= k.budget_bytes
    # only labelled samples left to delete: the new one is dropped and counted
    (tmp_path / "kept" / "C" / "labels.json").write_text("{}")
    k = keeper_for(head_cfg, tmp_path, budget_gb=budget_gb, share=1.0)
    k.finish(collected(head_cfg), passed("D"))
    k.close()
    assert k.stats.dropped_budget == 1 and not (tmp_path / "kept" / "D").exists()
    # a sample larger than the whole budget is dropped and counted
    small = keeper_for(head_cfg, tmp_path / "small", budget_gb=1e-6, share=1.0)
    small.finish(collected(head_cfg), passed("D"))
    small.close()
    assert small.stats.dropped_budget == 1 and small.stats.kept == 0


def test_a_full_queue_drops_and_counts_without_waiting(head_cfg, tmp_path, caplog):
    release, started = threading.Event(), threading.Event()
    written = []

    def slow(item, staging, cfg):
        started.set()
        release.wait(10)
        written.append(item.sample_id)
        return review.write_kept(item, staging, cfg)

    k = keeper_for(head_cfg, tmp_path, queue_size=1, write=slow)
    v1 = failed(head_cfg, "F1")
    k.finish(collected(head_cfg), v1)
    assert started.wait(5)  # the writer holds F1; the queue has room for one more
    with caplog.at_level(logging.WARNING, logger="edge.review"):
        t0 = time.perf_counter()
        whys = [k.finish(collected(head_cfg), failed(head_cfg, f"F{n}")) for n in (2, 3, 4)]
        spent = time.perf_counter() - t0
    assert whys == [review.FAIL, None, None] and spent < 0.5
    assert k.stats.dropped_queue_full == 2 and "F3 (FAIL) not kept" in caplog.text
    release.set()
    k.close()
    assert written == ["F1", "F2"] and k.stats.kept == 2
    assert v1.status is Status.FAIL and v1.reason == "1 scratch(es) found"


def test_a_full_disk_is_logged_and_the_verdict_intact(head_cfg, tmp_path, caplog):
    def full(item, staging, cfg):
        (staging / item.sample_id).mkdir(parents=True)
        raise OSError(errno.ENOSPC, "No space left on device")

    k = keeper_for(head_cfg, tmp_path, write=full)
    v = failed(head_cfg)
    before = v.to_dict()
    with caplog.at_level(logging.ERROR, logger="edge.review"):
        assert k.finish(collected(head_cfg), v) == review.FAIL
        k.close()
    assert "F1 not kept: the disk is full" in caplog.text
    assert k.stats.disk_errors == 1 and k.stats.kept == 0
    assert v.to_dict() == before
    assert not any((tmp_path / "kept" / review.STAGING).iterdir())  # partial folder removed
    # a review folder that cannot be made (a file in its way) is the same kind of condition
    blocker = tmp_path / "file"
    blocker.write_text("")
    r = Review(dir=str(blocker / "kept"), budget_gb=1.0)
    k = review.Keeper(r, head_cfg, T_HIGH)
    k.finish(collected(head_cfg), failed(head_cfg))
    k.close()
    assert k.stats.disk_errors == 1


def test_review_is_optional_validated_and_outside_the_head_digest():
    d = small_head_data()
    plain = config.parse(d).digest()
    d["review"] = {"dir": "kept", "budget_gb": 2.0, "keep_share": 0.05}
    cfg = config.parse(d, "h.toml")
    assert cfg.review.margin == 0.1 and cfg.digest() == plain
    d["review"] = {"dir": "kept", "budget_gb": 0, "keep_share": 1.5, "budget": 1}
    with pytest.raises(config.ConfigError) as e:
        config.parse(d, "h.toml")
    text = str(e.value)
    assert "review.budget_gb: Input should be greater than 0" in text
    assert "review.keep_share" in text and "review.budget: unknown key" in text


# -- run and serve on the simulated head -----------------------------------------------------
def test_run_and_serve_keep_samples_that_replay_to_the_same_verdict(tmp_path):
    pytest.importorskip("onnxruntime")
    from edge.assembly import build_head
    from edge.inspection import inspect_recorded
    from edge.runner import run_head
    from firmware_bridge.inspector import HeadInspector

    d = small_head_data(columns=1)
    d["camera"].update({"frame_time_ms": 30.0, "grab_timeout_ms": 3000.0})
    d["stage"]["settle_ms"] = 10.0
    d["review"] = {"dir": str(tmp_path / "kept"), "budget_gb": 1.0, "keep_share": 1.0}
    cfg = config.parse(d, "fast-head.toml")
    with build_head(cfg) as asm:
        summary = run_head(asm, 1, seed=3)
        insp = HeadInspector(asm)
        served = insp.inspect("LINE-7", threading.Event(), lambda done, total: None)
        insp.close()
        assert insp.health()["review"]["kept"] == 1
    verdicts = (summary.results[0].verdict, served)
    folders = [tmp_path / "kept" / v.sample_id for v in verdicts]
    for folder in folders:
        rec = open_sample(folder)
        assert rec.truth() is not None  # the simulated head's truth goes along
        assert len(rec.manifest.rois) == cfg.stage.roi_grid.count
    for v, replayed in zip(verdicts, inspect_recorded(folders, cfg), strict=True):
        assert replayed.status is v.status
        assert len(replayed.defects) == len(v.defects)


def test_a_refused_roi_keeps_its_frames_for_review(head_cfg, tmp_path, monkeypatch):
    """The RoI that made a sample ERROR (frames unlike training) is the one a person needs to
    see: its frames reach the collector without a score map, and the kept sample holds them."""
    from types import SimpleNamespace

    from edge import inspection
    from edge.pipeline import PipelineError

    def process(frames, calibration, engine, cfg, index, origin, *args, **kwargs):
        if index == 1:
            raise PipelineError(f"RoI {index}: frames unlike the training frames: noise 2.1 x")
        return RoiResult(index, origin, [], {}, 1, False, [], np.zeros((32, 32), np.float32))

    monkeypatch.setattr(inspection, "process_roi", process)
    frames = [np.full((6, 64, 64), 100 + i, np.uint16) for i in range(2)]
    rois = [inspection.RoiInput(i, head_cfg.stage.roi_grid.roi_origin_mm(i),
                                lambda i=i: frames[i]) for i in range(2)]
    k = keeper_for(head_cfg, tmp_path)
    c = k.collector()
    quiet = SimpleNamespace(roi=lambda *a: None, finish=lambda: None)  # flat test frames
    v = inspection.inspect_sample("E2", rois, 2, SimpleNamespace(identity={}), None, head_cfg,
                                  on_roi=c, self_check=SimpleNamespace(sample=lambda *a: quiet))
    assert v.status.name == "ERROR" and "noise 2.1 x" in v.reason
    assert [r.index for r in c.rois] == [0, 1] and c.rois[1].score is None
    assert k.finish(c, v) == review.ERROR
    k.close()
    rec = open_sample(tmp_path / "kept" / "E2")
    assert np.array_equal(rec.frames(1), frames[1])
    assert review.read_scores(tmp_path / "kept" / "E2", 1) is None
