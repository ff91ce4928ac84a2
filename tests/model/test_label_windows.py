"""``train --network fusion --images DIR --labels DIR``: windows of a user's labelled frames,
prepared as classify prepares them and labelled by the simulated windows' rule, mixed with
simulated windows; ``--folds K`` by image; the refusals."""

import json

import numpy as np
import pytest

pytest.importorskip("torch")

from edge.cli import main  # noqa: E402
from edge.darkfield.labels import read_label  # noqa: E402
from edge.darkfield.windows import WINDOW  # noqa: E402
from edge.sim.darkfield_labels import write_labelled_frames  # noqa: E402
from model.attention import FusionSpec  # noqa: E402

SPEC = FusionSpec(width=0.0625, in_channels=1, whiten=True).to_dict()
TINY = ["--network", "fusion", "--width", "0.0625", "--epochs", "1", "--steps", "1",
        "--batch", "4", "--frame-px", "512", "--train-images", "2", "--val-images", "1",
        "--val-windows", "8", "--lr", "1e-4", "--threads", "1", "-q"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("labelled")
    write_labelled_frames(root, [5, 6, 7, 8], frame_px=512, fmt="bmp", clean_seeds=[7])
    return root


def test_windows_carry_the_labels_by_the_four_pixel_rule_on_prepared_frames(folder):
    from edge.darkfield.frame_prep import FramePrep
    from edge.darkfield.reading import read_image
    from model.label_eval import window_truth
    from model.label_windows import LabelledWindows, load_frames

    frames = load_frames(folder / "images", folder / "labels", SPEC)
    assert [f.clean for f in frames] == [False, False, True, False]  # seeds 5, 6, 7 clean, 8
    assert not frames.refused_by_classify
    for f in frames:
        img = folder / "images" / f.name
        # the pixels classify's preparation gives, and the grid's truth evaluate-windows uses
        prepared = FramePrep.for_model({"spec": json.dumps(SPEC)})(read_image(img).pixels)
        assert np.array_equal(f.pixels, prepared.pixels)
        truth = window_truth(read_label(img, folder / "labels").mask((512, 512)))
        cells = {tuple(c) for c in f.scratch_cells}
        assert cells == {(r * 128, c * 128) for r, c in np.argwhere(truth == 1)}
        assert bool(cells) != f.clean
    lw = LabelledWindows(frames, seed=3)
    x, y, vis = lw.batch(0, 64)
    assert x.shape == (64, 1, WINDOW, WINDOW) and x.dtype == np.float32
    assert set(y.tolist()) == {0, 1} and np.isinf(vis[y == 1]).all() and (vis[y == 0] == 0).all()
    for i in range(64):  # each label by the rule on its own (jittered) window of the mask
        f, r, c = lw.origin(i)
        assert y[i] == int(f.mask[r:r + WINDOW, c:c + WINDOW].sum() >= 4)
        assert np.array_equal(x[i, 0], f.pixels[r:r + WINDOW, c:c + WINDOW])
    origins = {lw.origin(i)[1:] for i in range(64)}
    assert any(r % 128 or c % 128 for r, c in origins)  # jittered off the grid
    assert np.array_equal(lw.batch(0, 64)[0], x)  # a pure function of (seed, index)
    # half the windows of a scratched frame start on a scratch cell: more scratch than the grid
    grid_share = np.mean([len(f.scratch_cells) / len(f.cells) for f in frames])
    assert y.mean() > grid_share


def test_mixed_batches_hold_the_simulated_share():
    from model.label_windows import LabelledWindows, MixedBatches

    class Sim:
        def batch_visibility(self, start, count):
            return (np.full((count, 1, 4, 4), 9, np.float32), np.full(count, -1),
                    np.zeros(count))

    class Lab(LabelledWindows):
        def __init__(self):
            pass

        def batch(self, start, count):
            return np.zeros((count, 1, 4, 4), np.float32), np.ones(count, np.int64), \
                np.full(count, np.inf)

    x, y, _ = MixedBatches(Lab(), Sim(), 0.25).batch(5, 8)
    assert (x[:, 0, 0, 0] == 9).sum() == 2 and (y == -1).sum() == 2 and (y == 1).sum() == 6


def test_two_folds_by_image_through_the_cli_print_rates_and_write_folds_json(folder, tmp_path,
                                                                           capsys):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    out = tmp_path / "run"
    rc = main(["train", *TINY, "--images", str(folder / "images"), "--labels",
               str(folder / "labels"), "--folds", "2", "--sim-share", "0.5", "--out", str(out)])
    text = capsys.readouterr().out
    assert rc == 0
    assert "cross-validated over 2 folds by image (4 labelled images" in text
    assert "clean images FAIL (false FAIL): " in text and "cross-validated |" in text
    assert "best checkpoint:" in text
    rec = json.loads((out / "folds.json").read_text())
    held = [n for f in rec["per_fold"] for n in f["held_out"]]
    assert sorted(held) == sorted(p.name for p in (folder / "images").iterdir())
    assert {f["trained_on"] for f in rec["per_fold"]} == {2}
    p = rec["pooled"]
    assert p["set"]["judged"] + p["set"]["refused"] == 4 and p["windows"] == 9 * p["set"]["judged"]
    assert p["images"]["clean"] == 1 and p["by_frame_ci"]["frames"] == p["set"]["judged"]
    assert {r["fold"] for r in p["per_image"]} <= {1, 2}
    hist = json.loads((out / "history.json").read_text())[-1]
    assert {"sim_val_loss", "label_val_loss", "label_f1"} <= set(hist)


@pytest.mark.parametrize(("extra", "message"), [
    ([], "fine-tuning needs the labels too"),
    (["--network", "hybrid", "--labels", "L"], "--network fusion, not hybrid"),
    (["--labels", "L", "--folds", "5"], "5 folds of 4 labelled images"),
])
def test_refusals(folder, tmp_path, capsys, extra, message):
    extra = [str(folder / "labels") if a == "L" else a for a in extra]
    rc = main(["train", *TINY, "--images", str(folder / "images"), "--out",
               str(tmp_path / "o"), *extra])
    err = capsys.readouterr().err
    assert rc != 0 and message in err and "Traceback" not in err


def test_an_image_without_a_label_is_refused_by_name(folder, tmp_path, capsys):
    import shutil

    images = tmp_path / "images"
    shutil.copytree(folder / "images", images)
    shutil.copy(images / sorted(p.name for p in images.iterdir())[0], images / "extra.bmp")
    rc = main(["train", *TINY, "--images", str(images), "--labels", str(folder / "labels"),
               "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc != 0 and "extra" in err and "Traceback" not in err
