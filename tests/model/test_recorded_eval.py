"""``evaluate --recorded``: simulated samples recorded to disk and labelled from the simulator's
truth count exactly as the same seeds rendered by the simulated evaluation."""

import re
import shutil

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from edge import config  # noqa: E402
from edge.cli import main  # noqa: E402
from edge.labels_sample import SampleLabelError, SampleLabels, from_truth, write_labels  # noqa: E402
from edge.recording import RecordingError, open_sample  # noqa: E402
from tests.conftest import SHIPPED_MODEL, small_head_data, small_head_toml  # noqa: E402

SEED = 5000  # development seeds: no network trained on them, no choice was made on them
N = 6
SHARE = 0.3
W, H = 640, 560  # small frames of the small head's 2 x 1 grid (mm per px 1.6 x the real)
# counts that need the scratch's brightness, which labels do not carry
PEAK_KEYS = ("recall_by_peak_dn", "scratches_by_peak_dn", "recall_1mm_12dn",
             "scratches_1mm_12dn", "recall_1mm_12dn_ci")


def tiny_head_data() -> dict:
    data = small_head_data()
    data["camera"].update(width=W, height=H)
    return data


def tiny_head_toml(folder):
    path = small_head_toml(folder)
    text = re.sub(r"^width = \d+", f"width = {W}", path.read_text(), count=1, flags=re.M)
    text = re.sub(r"^height = \d+", f"height = {H}", text, count=1, flags=re.M)
    path.write_text(text)
    assert config.load(path).digest() == config.parse(tiny_head_data()).digest()
    return path


def record_labelled(cfg, out, n=N, seed=SEED, share=SHARE):
    """``n`` simulated samples recorded under ``out`` and labelled from their truth, as
    ``glass-inspect label --from-truth`` does."""
    from edge.sim.recorder import simulate_samples

    done = simulate_samples(cfg, n, out, seed=seed, scratch_share=share, progress=False)
    for _, d in done:
        write_labels(d, from_truth(open_sample(d).truth()))
    return [d for _, d in done]


@pytest.fixture(scope="module")
def tiny_cfg():
    return config.parse(tiny_head_data(), "tiny-head.toml")


@pytest.fixture(scope="module")
def recorded(tiny_cfg, tmp_path_factory):
    root = tmp_path_factory.mktemp("recorded")
    return root, record_labelled(tiny_cfg, root)


def test_recorded_counts_equal_the_simulated_counts_of_the_same_seeds(tiny_cfg, recorded,
                                                                       tmp_path):
    from model.evaluate import evaluate
    from model.recorded_eval import evaluate_recorded

    root, _ = recorded
    models = {"hybrid": SHIPPED_MODEL}
    sim = evaluate(models, tiny_cfg, n_samples=N, seed=SEED, scratch_share=SHARE,
                   progress=False, cache=tmp_path / "cache", baselines=["physics"])
    rec = evaluate_recorded(models, tiny_cfg, [root], ["physics"], progress=False)
    assert rec["protocol"] == "labelled recorded samples" and len(rec["samples"]) == N
    for name in ("hybrid", "physics"):
        a, b = sim[name], rec["detectors"][name]
        assert a["samples_must_fail"] >= 1 and a["samples_clean"] >= 1  # both kinds counted
        assert a["scratches_labelled"] >= 3 and a["kept"] >= 1
        same = {k: v for k, v in a.items() if k not in PEAK_KEYS and k in b
                and k not in ("count_s", "score_and_count_s")}
        assert same and {k: b[k] for k in same} == same
        assert b["scratches_by_peak_dn"] == dict.fromkeys(b["scratches_by_peak_dn"], 0)


def test_masks_from_labels_match_the_simulators_masks(recorded):
    from model.recorded_labels import roi_mask

    ious = []
    for d in recorded[1]:
        rec = open_sample(d)
        labels = from_truth(rec.truth())
        for r in rec.manifest.rois:
            sim = rec.mask(r.index)
            mine = roi_mask(labels, r.origin_mm, rec.manifest.mm_per_px, sim.shape)
            if sim.any() or mine.any():
                ious.append((sim & mine).sum() / (sim | mine).sum())
    assert len(ious) >= 3
    # the simulator leaves out the faded ends and a cap beyond each end; the rest is the same
    assert min(ious) > 0.6 and float(np.mean(ious)) > 0.8, ious


def test_truth_from_labels_is_the_simulators_truth(tiny_cfg, recorded):
    from model.heldout import roi_truth
    from model.recorded_labels import sample_truth

    for d in recorded[1]:
        rec = open_sample(d)
        truth = rec.truth()
        mine = sample_truth(rec, from_truth(truth), 0)
        for r, t in zip(rec.manifest.rois, mine.rois, strict=True):
            m = rec.mask(r.index)
            sim = roi_truth(truth, r.origin_mm, tiny_cfg.mm_per_px,
                            m.reshape(H // 2, 2, W // 2, 2).any(axis=(1, 3)))
            assert sorted(t.lengths.values()) == pytest.approx(sorted(sim.lengths.values()),
                                                               abs=1e-3)


def test_a_sample_labelled_clean_has_no_truth(tiny_cfg, recorded, tmp_path):
    from model.recorded_labels import sample_truth

    d = next(d for d in recorded[1] if open_sample(d).truth().has_scratch)
    rec = open_sample(d)
    clean = SampleLabels(rec.sample_id, True)
    assert all(not r.lines for r in sample_truth(rec, clean, 0).rois)


def test_an_unlabelled_sample_is_refused_by_name_or_skipped(tiny_cfg, recorded, tmp_path,
                                                            capsys):
    from model.recorded_eval import evaluate_recorded

    root = tmp_path / "set"
    shutil.copytree(recorded[1][0], root / recorded[1][0].name)
    bare = root / recorded[1][1].name
    shutil.copytree(recorded[1][1], bare)
    (bare / "labels.json").unlink()
    with pytest.raises(SampleLabelError, match=re.escape(str(bare))):
        evaluate_recorded({}, tiny_cfg, [root], ["physics"], progress=False)
    head = tiny_head_toml(tmp_path)
    assert main(["evaluate", "--head", str(head), "--baseline", "physics", "-q",
                 "--recorded", str(root)]) == 2
    err = capsys.readouterr().err
    assert str(bare) in err and "--skip-unlabelled" in err
    assert main(["evaluate", "--head", str(head), "--baseline", "physics", "-q",
                 "--recorded", str(root), "--skip-unlabelled"]) == 0
    out = capsys.readouterr().out
    assert f"skipped (no labels.json): {bare}" in out and "1 labelled recorded samples" in out
    assert main(["evaluate", "--head", str(head), "--baseline", "physics", "-q",
                 "--recorded", str(root), "--seed", "5"]) == 2
    assert "leave out --seed" in capsys.readouterr().err


def test_a_sample_of_another_head_is_refused(recorded, cfg):
    from model.recorded_eval import evaluate_recorded

    with pytest.raises(RecordingError, match="recorded by another head"):
        evaluate_recorded({}, cfg, [recorded[1][0]], ["physics"], progress=False)
