"""``glass-inspect evaluate-windows --images DIR --labels DIR`` (model.label_eval): Table II on a
user's labelled frames, here a tiny labelled folder made by the simulator (4 frames of 512 px,
seeds 5, 6, 8 with scratches and 7 clean, 8-bit BMP as the real set of issue 29) and the
shipped classifier."""

import json

import numpy as np
import pytest
from PIL import Image

from edge.cli import build_parser, main
from edge.darkfield.labels import LabelError, read_label
from edge.darkfield.windows import WINDOW, window_origins
from edge.sim.darkfield_labels import write_labelled_frames
from model.label_eval import SIMULATION_ONLY, labelled_images, window_truth
from tests.conftest import ROOT

FUSION = ROOT / "edge" / "models" / "attention_fusion.onnx"


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("labelled")
    write_labelled_frames(root, [5, 6, 7, 8], frame_px=512, fmt="bmp", clean_seeds=[7])
    # a frame classify refuses (flat, too dark to judge), labelled clean: listed, not counted
    Image.fromarray(np.zeros((256, 256), np.uint8)).save(root / "images" / "flat.png")
    (root / "labels" / "flat.json").write_text('{"clean": true}')
    return root


def test_windows_are_labelled_by_the_simulated_windows_pixel_rule():
    mask = np.zeros((512, 512), bool)
    mask[10, 10:13] = True  # 3 px in window (0, 0): background
    mask[500, 500:504] = True  # 4 px in the last window: scratch
    t = window_truth(mask)
    assert t.shape == (3, 3) and t[0, 0] == 0 and t[2, 2] == 1 and t.sum() == 1
    mask[200, 200:204] = True  # in the windows at rows and columns 0 and 128
    assert window_truth(mask)[:2, :2].tolist() == [[1, 1], [1, 1]]


def test_evaluate_windows_on_a_labelled_folder_counts_what_classify_decides(folder, tmp_path,
                                                                            capsys):
    pytest.importorskip("onnxruntime")
    from edge.darkfield.classify import Classifier
    from edge.darkfield.reading import read_image

    out = tmp_path / "r.json"
    rc = main(["evaluate-windows", "--images", str(folder / "images"), "--labels",
               str(folder / "labels"), str(FUSION), "--threads", "1", "--json", str(out), "-q"])
    text = capsys.readouterr().out
    assert rc == 0
    assert "attention_fusion |" in text and "4 of 5 images judged (3 scratched, 1 clean)" in text
    r = json.loads(out.read_text())["attention_fusion"]
    assert [x["image"] for x in r["refused"]] == ["flat.png"]
    assert "flat.png" in r["refused"][0]["why"]
    # the same counts, computed here from the images, the labels and the runtime's classifier
    tp = fp = fn = tn = detected = false_alarms = 0
    with Classifier.open(FUSION, threads=1) as clf:
        for img in sorted((folder / "images").glob("darkfield-*.bmp")):
            res = clf.classify(read_image(img))
            mask = read_label(img, folder / "labels").mask((512, 512))
            truth = np.array([[mask[y:y + WINDOW, x:x + WINDOW].sum() >= 4
                               for x in window_origins(512)] for y in window_origins(512)])
            pos = res.probability >= clf.threshold
            tp += int((pos & truth).sum())
            fp += int((pos & ~truth).sum())
            fn += int((~pos & truth).sum())
            tn += int((~pos & ~truth).sum())
            failed = res.verdict.value == "FAIL"
            detected += failed and "scratched" in img.name
            false_alarms += failed and "clean" in img.name
    assert (r["tp"], r["fp"], r["fn"], r["tn"]) == (tp, fp, fn, tn)
    assert r["windows"] == 4 * 9 and tp + fn > 0
    assert (r["images"]["detected"], r["images"]["false_alarms"]) == (detected, false_alarms)
    assert (r["images"]["with_scratch"], r["images"]["clean"]) == (3, 1)
    assert r["by_frame_ci"]["frames"] == 4 and r["f1_ci"] is not None
    assert r["set"]["judged"] == 4 and r["set"]["image_count"] == 5
    assert r["threshold"] == clf.threshold and r["region_threshold"] == clf.region_threshold
    assert [p["label"] for p in r["per_image"]] == ["scratched", "scratched", "clean",
                                                    "scratched"]


def test_bad_labels_stop_before_any_image_is_classified_with_every_problem(folder, tmp_path,
                                                                          capsys):
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    for name in ("a", "b", "c"):
        Image.fromarray(np.zeros((256, 256), np.uint8)).save(images / f"{name}.bmp")
    (labels / "a.json").write_text('{"scratches": [{"points_px": [[1, 1], [300, 1]], '
                                   '"width_px": 2}]}')
    (labels / "b.json").write_text("{}")
    rc = main(["evaluate-windows", "--images", str(images), "--labels", str(labels),
               "shipped:no_such_model.onnx"])  # never opened: the labels fail first
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert "3 of 3 images have label problems" in err
    assert "a.json: scratches[0].points_px[1]: [300, 1] lies outside a.bmp (256 x 256 px)" in err
    assert 'b.json: no scratch, and not "clean": true' in err
    assert "c.bmp: no label; expected" in err


def test_two_images_of_one_name_and_labels_beside_the_images(tmp_path):
    for suffix in (".bmp", ".png"):
        Image.fromarray(np.zeros((256, 256), np.uint8)).save(tmp_path / f"a{suffix}")
    (tmp_path / "a.json").write_text('{"clean": true}')
    with pytest.raises(LabelError, match="share the name 'a'"):
        labelled_images(tmp_path)
    (tmp_path / "a.png").unlink()
    ((path, label),) = labelled_images(tmp_path)  # no --labels: beside the images
    assert path.name == "a.bmp" and label.clean


def test_options_of_simulated_frames_are_refused_with_a_folder(folder, capsys):
    parser = build_parser()
    args = parser.parse_args(["evaluate-windows"])
    assert {k: getattr(args, k) for k in SIMULATION_ONLY} == SIMULATION_ONLY  # defaults in step
    rc = main(["evaluate-windows", "--images", str(folder / "images"), "--haze", "0.1,0.2",
               "--on", "validation"])
    err = capsys.readouterr().err
    assert rc == 2 and "--on, --haze describe simulated frames" in err
    # a number is still the simulated evaluation's count of test frames
    assert main(["evaluate-windows", "--images", "3"]) == 2
    assert "name at least one MODEL.onnx or --baseline" in capsys.readouterr().err
    assert main(["evaluate-windows", "--images", str(folder / "none")]) == 2
    assert "no such folder" in capsys.readouterr().err
