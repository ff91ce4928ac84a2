"""Labels of recorded samples: the format round trip, its errors, and ``glass-inspect label``
from the simulator's truth, with --yes, and at the prompt."""

import json

import numpy as np
import pytest

from edge import cli, config, review
from edge.labels_sample import (
    Contaminant,
    SampleLabelError,
    SampleLabels,
    Scratch,
    from_verdict,
    parse_labels,
    read_labels,
    write_labels,
)
from edge.recording import SampleWriter
from edge.truth import GlassObject, Sample
from edge.verdict import Defect, RoiResult, decide
from tests.conftest import small_head_data

PX = 128  # RoI frames 128 x 128 px: 1.46 x 1.44 mm at the head's footprint
BOX_SLASH = (0.2, 0.3, 1.0, 1.1)  # a defect running from bottom-left to top-right
BOX_BACKSLASH = (0.1, 0.02, 1.3, 0.25)  # one running from top-left to bottom-right


@pytest.fixture(scope="module")
def cfg():
    return config.parse(small_head_data(), "small-head.toml")


def ridge(score: np.ndarray, box, mmpp, slash: bool) -> None:
    """A line of score 0.9 along a diagonal of ``box`` (RoI 0, origin 0), as the network
    would draw it."""
    sx, sy = 2 * mmpp[0], 2 * mmpp[1]
    for t in np.linspace(0, 1, 200):
        x = box[0] + t * (box[2] - box[0])
        y = box[3] - t * (box[3] - box[1]) if slash else box[1] + t * (box[3] - box[1])
        score[int(y / sy), int(x / sx)] = 0.9


def kept_sample(cfg, root, sid="K1", truth=None):
    """A sample as the review keeper writes it: RAW frames, score maps, verdict.json."""
    defects = [Defect(BOX_SLASH, 1.13, 0.9, (0,)), Defect(BOX_BACKSLASH, 0.98, 0.8, (0,))]
    results = [RoiResult(0, (0.0, 0.0), defects, {}, 1, False),
               RoiResult(1, cfg.stage.roi_grid.roi_origin_mm(1), [], {}, 1, False)]
    v = decide(sid, results, 2, {"model_sha256": "cd" * 32}, None, {})
    c = review.Collector()
    for r in results:
        score = np.zeros((PX // 2, PX // 2), np.float32)
        if r.index == 0:
            ridge(score, BOX_SLASH, cfg.mm_per_px, slash=True)
            ridge(score, BOX_BACKSLASH, cfg.mm_per_px, slash=False)
        c(RoiResult(r.index, r.origin_mm, [], {}, 1, False, [], score),
          np.full((6, PX, PX), 200, np.uint16))
    item = review.Pending(v, review.FAIL, 0.9, c.rois, truth, review={"why": review.FAIL})
    folder = review.write_kept(item, root, cfg)
    return folder


def test_round_trip_and_file_format(cfg, tmp_path):
    folder = kept_sample(cfg, tmp_path)
    labels = SampleLabels("K1", False, (Scratch(((0.2, 1.1), (1.0, 0.3)), 12.5, "operator"),),
                          (Contaminant("water_spot", ((0.5, 0.5),), 300.0, "dried"),),
                          "Ana", "2025-01-01T00:00:00+00:00", "first look")
    path = write_labels(folder, labels)
    assert read_labels(folder) == labels
    data = json.loads(path.read_text())
    assert data["format"] == "glass-inspect-sample-labels" and data["clean"] is False
    with pytest.raises(SampleLabelError, match="already exists"):
        write_labels(folder, labels)
    clean = SampleLabels("K1", True)
    write_labels(folder, clean, overwrite=True)
    assert read_labels(folder) == clean


def test_every_problem_named_at_once():
    bad = {"format": "glass-inspect-sample-labels", "version": 2, "sample_id": "S",
           "scratches": [{"points_mm": [[1, 2]], "width_um": -3, "colour": "red"},
                         {"points_mm": [[1, 2], ["a", 3]], "width_um": 5, "source": "guess"}],
           "contaminants": [{"kind": "hair", "points_mm": [[1, 1]], "width_um": 20}]}
    with pytest.raises(SampleLabelError) as e:
        parse_labels(bad, "S/labels.json")
    text = str(e.value)
    for part in ("S/labels.json: invalid labels", "version: expected 1",
                 "clean: required, true (no scratch on the sample) or false",
                 "scratches[0].points_mm: expected a list of at least 2 point(s)",
                 "scratches[0].width_um: expected a positive number of micrometres, got -3",
                 "scratches[0].colour: unknown field",
                 "scratches[1].points_mm[1]: expected [x, y], two numbers in mm",
                 "scratches[1].source: expected one of network, operator, truth",
                 "contaminants[0].kind: expected one of dust, stain"):
        assert part in text, part
    base = {"format": "glass-inspect-sample-labels", "version": 1, "sample_id": "S"}
    with pytest.raises(SampleLabelError, match="clean: true, but 1 scratch"):
        parse_labels({**base, "clean": True,
                      "scratches": [{"points_mm": [[0, 0], [1, 1]], "width_um": 5}]})
    with pytest.raises(SampleLabelError, match="clean: false, but no scratch is listed"):
        parse_labels({**base, "clean": False, "scratches": []})


def test_labels_of_another_sample_or_in_pixels_are_refused(cfg, tmp_path):
    folder = kept_sample(cfg, tmp_path)
    (folder / "labels.json").write_text(json.dumps(
        {"format": "glass-inspect-sample-labels", "version": 1, "sample_id": "K2",
         "clean": False, "scratches": [{"points_mm": [[300, 400], [900, 410]], "width_um": 2}]}))
    with pytest.raises(SampleLabelError) as e:
        read_labels(folder)
    assert "sample_id: 'K2', but the sample here is 'K1'" in str(e.value)
    assert "scratches[0].points_mm: lies outside the sample's" in str(e.value)


def test_prefill_follows_the_score_ridge(cfg, tmp_path):
    folder = kept_sample(cfg, tmp_path)
    proposals, record = from_verdict(folder)
    assert record["status"] == "FAIL"
    found = {tuple(sorted(np.ravel(s.points_mm))): s.points_mm for s in proposals}
    x0, y0, x1, y1 = BOX_SLASH
    assert found[tuple(sorted(BOX_SLASH))] == ((x0, y1), (x1, y0))
    x0, y0, x1, y1 = BOX_BACKSLASH
    assert found[tuple(sorted(BOX_BACKSLASH))] == ((x0, y0), (x1, y1))
    assert proposals[0].width_um == pytest.approx(1000 * sum(cfg.mm_per_px) / 2, abs=0.05)


def test_label_from_truth_writes_the_simulators_objects(cfg, tmp_path):
    scratch = GlassObject("scratch", ((0.1, 0.2), (0.8, 0.9), (1.2, 0.9)), 17.0, 300.0, 1,
                          "triangular")
    dust = GlassObject("dust", ((0.5, 0.5),), 40.0, 900.0, 2)
    sample = Sample("SIM1", cfg.stage.roi_grid.extent_mm, (scratch, dust), 5)
    w = SampleWriter(tmp_path, "SIM1", cfg, shape=(PX, PX))
    w.set_truth(sample)
    w.add_roi(0, (0.0, 0.0), np.zeros((6, PX, PX), np.uint16), [0.0] * 6)
    w.close()
    assert cli.main(["label", str(tmp_path), "--from-truth"]) == 0
    labels = read_labels(tmp_path / "SIM1")
    assert not labels.clean and labels.scratches[0].points_mm == scratch.points_mm
    assert labels.scratches[0].width_um == 17.0 and labels.scratches[0].source == "truth"
    assert labels.contaminants == (Contaminant("dust", ((0.5, 0.5),), 40.0),)
    assert cli.main(["label", str(tmp_path / "SIM1"), "--from-truth"]) == 2  # exists already


def answers(monkeypatch, *said):
    it = iter(said)
    asked = []

    def fake(prompt=""):
        asked.append(prompt)
        return next(it)

    monkeypatch.setattr("builtins.input", fake)
    return asked


def test_the_operator_confirms_rejects_and_edits(cfg, tmp_path, monkeypatch, capsys):
    folder = kept_sample(cfg, tmp_path)
    asked = answers(monkeypatch, "y", "x", "e", "0.3,0.2 0.7,0.4 1.2,0.6", "14", "")
    assert cli.main(["label", str(folder)]) == 0
    labels = read_labels(folder)
    assert [s.source for s in labels.scratches] == ["network", "operator"]
    assert labels.scratches[1].points_mm == ((0.3, 0.2), (0.7, 0.4), (1.2, 0.6))
    assert labels.scratches[1].width_um == 14.0 and not labels.clean
    assert "answer y, n or e" in capsys.readouterr().out and len(asked) == 6


def test_rejecting_everything_then_saying_clean(cfg, tmp_path, monkeypatch):
    folder = kept_sample(cfg, tmp_path)
    answers(monkeypatch, "n", "n", "", "y")
    assert cli.main(["label", str(folder)]) == 0
    assert read_labels(folder) == SampleLabels("K1", True, labelled_by="operator",
                                               labelled_utc=read_labels(folder).labelled_utc)
    # a sample that is not clean gets the scratch typed in
    answers(monkeypatch, "n", "n", "", "n", "1,1 1.3,1.2", "")
    assert cli.main(["label", str(folder), "--force"]) == 0
    assert read_labels(folder).scratches[0].points_mm == ((1.0, 1.0), (1.3, 1.2))


def test_scripts_say_yes_or_clean_and_no_answer_is_an_error(cfg, tmp_path, monkeypatch,
                                                            capsys):
    folder = kept_sample(cfg, tmp_path)
    assert cli.main(["label", str(folder), "--yes"]) == 0
    assert [s.source for s in read_labels(folder).scratches] == ["network", "network"]
    assert cli.main(["label", str(folder), "--clean", "--force"]) == 0
    assert read_labels(folder).clean

    def eof(prompt=""):
        raise EOFError

    monkeypatch.setattr("builtins.input", eof)
    assert cli.main(["label", str(folder), "--force"]) == 2
    assert "no answer on standard input; in a script use --yes" in capsys.readouterr().err
