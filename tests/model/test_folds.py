"""``train --recorded --folds K``: labels become masks, simulated windows are mixed in, and K
folds by sample give cross-validated rates before the run on all samples."""

import json
import re

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from edge import config  # noqa: E402
from edge.cli import main  # noqa: E402
from tests.model.test_recorded_eval import record_labelled, tiny_head_data, tiny_head_toml  # noqa: E402

TINY = ["--network", "hybrid", "--features", "4", "--line-lengths", "--epochs", "1",
        "--steps", "1", "--batch", "2", "--scratch", "1", "--val-patches", "2",
        "--patch", "512", "--threads", "1", "-q"]


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    cfg = config.parse(tiny_head_data(), "tiny-head.toml")
    root = tmp_path_factory.mktemp("labelled")
    return cfg, root, record_labelled(cfg, root, n=4)  # seeds 5000-5003: 2 scratched, 2 clean


def test_folds_are_by_sample_stratified_and_repeatable(samples):
    from edge.labels_sample import read_labels
    from model.folds import FoldError, assign_folds

    _, _, dirs = samples
    dirs = [str(d) for d in dirs]
    folds = assign_folds(dirs, 2, seed=7)
    assert folds == assign_folds(list(reversed(dirs)), 2, seed=7)
    assert sorted(d for f in folds for d in f) == sorted(dirs)
    for f in folds:  # one scratched and one clean sample each
        assert sorted(read_labels(d).clean for d in f) == [False, True]
    with pytest.raises(FoldError, match="fewer than 2"):
        assign_folds(dirs[:3], 2, seed=7)  # 1 sample left to train a fold on


def test_labelled_windows_carry_the_label_masks_and_mix_with_simulated_ones(samples):
    from model.data import RecordedPatches, SimulatedPatches
    from model.recorded_labels import LabelledPatches, MixedPatches, roi_mask

    cfg, _, dirs = samples
    rec = LabelledPatches(dirs, seed=3, patch=512)
    for (r, i), px in zip(rec.rois, rec.scratch_pixels, strict=True):
        e = r.roi_entry(i)
        whole = roi_mask(rec.labels[r.dir], e.origin_mm, r.manifest.mm_per_px, r.shape[1:])
        assert np.array_equal(np.argwhere(whole), px)
    w = rec.window(0, scratch=True)
    assert w.mask.any() and w.frames.shape == (6, 514, 514)
    # the recorded PNG masks (the simulator's) cover the same scratches as the label masks
    png = RecordedPatches(dirs, seed=3, patch=512).window(0, scratch=True)
    assert np.array_equal(png.frames, w.frames)
    assert (png.mask & w.mask).sum() > 0.6 * (png.mask | w.mask).sum()
    mixed = MixedPatches(rec, SimulatedPatches(cfg, 3, 512), 0.5)
    drawn = [mixed.simulated_window(i) for i in range(200)]
    assert 70 < sum(drawn) < 130
    assert not any(MixedPatches(rec, SimulatedPatches(cfg, 3, 512), 0.0).simulated_window(i)
                   for i in range(20))


def test_two_folds_on_a_tiny_network_print_cross_validated_rates(samples, tmp_path, capsys):
    import torch

    from model.train import Trainer, TrainSettings

    cfg, root, _ = samples
    head = tiny_head_toml(tmp_path)
    torch.set_num_threads(1)
    init = Trainer(TrainSettings(network="hybrid", loss="bce", features=4, patch=512),
                   cfg, tmp_path / "init").save("init.pt")
    out = tmp_path / "run"
    assert main(["train", "--head", str(head), "--recorded", str(root), "--init", str(init),
                 "--sim-share", "0.5", "--folds", "2", "--out", str(out), *TINY]) == 0
    printed = capsys.readouterr().out
    assert "cross-validated over 2 folds by sample (4 labelled samples" in printed
    assert re.search(r"sample FN \(must-fail samples passed\): \d/\d = [\d.]+ % \(95 % "
                     r"interval [\d.]+-[\d.]+ %\)", printed), printed
    assert re.search(r"sample FP \(clean samples failed\): \d/2 = ", printed), printed
    record = json.loads((out / "folds.json").read_text())
    assert [len(f["held_out"]) for f in record["per_fold"]] == [2, 2]
    assert record["pooled"]["samples"] == 4 and record["pooled"]["samples_clean"] == 2
    assert (out / "fold-1" / "fold.onnx").is_file() and (out / "best.pt").is_file()
    # the run on all samples: its settings name them and the simulated share
    ckpt = torch.load(out / "best.pt", weights_only=True)
    assert len(ckpt["settings"]["recorded"]) == 4 and ckpt["settings"]["sim_share"] == 0.5


def test_folds_without_recorded_samples_and_unlabelled_samples_are_refused(samples, tmp_path,
                                                                           capsys):
    _, root, dirs = samples
    head = tiny_head_toml(tmp_path)
    assert main(["train", "--head", str(head), "--folds", "2", *TINY]) == 2
    assert "name them with --recorded" in capsys.readouterr().err
    import shutil

    bare = tmp_path / "set" / dirs[0].name
    shutil.copytree(dirs[0], bare)
    (bare / "labels.json").unlink()
    assert main(["train", "--head", str(head), "--recorded", str(bare.parent), *TINY]) == 2
    assert str(bare) in capsys.readouterr().err
