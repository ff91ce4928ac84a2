"""The window classifier's frame envelope (issue 29, item 1): a frame unlike the training frames is
ERROR with the statistic named, never PASS or FAIL; and the command's summary (item 5)."""

import json
import logging
import math
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from scipy import ndimage

from edge.cli import main
from edge.darkfield import frame_envelope as fe
from edge.darkfield.noise import Sensor
from edge.sim.darkfield import DarkfieldRenderer, frames_at

ROOT = Path(__file__).resolve().parents[3]
FUSION = ROOT / "edge" / "models" / "attention_fusion.onnx"  # the shipped classifier
CAMERA = Sensor(64 / 4095, 2.5 / 4095, 0.08 / 4095)  # the simulated camera it was trained with
SEED = 611_234  # not a training (0-79, 100000-100319), validation, test or development frame
UNLIKE = r"unlike the frames this classifier was trained on: "


def _frame(seed: int = SEED, grain: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """(raw 12-bit frame, its clean background in DN) of a 512 px simulated frame; ``grain``:
    the haze multiplied by 1 + grain x (white noise smoothed at 2.5 px, unit variance)."""
    f = DarkfieldRenderer(frames_at(512)).render(seed)
    raw = f.image.astype(np.float32)
    if grain:
        rng = np.random.default_rng(seed)
        n = ndimage.gaussian_filter(rng.standard_normal(raw.shape).astype(np.float32), 2.5)
        raw = raw + (f.background - 64.0) * grain * n / n.std()
    return np.clip(np.rint(raw), 0, 4095).astype(np.uint16), f.background


def _model_with(tmp_path, value: str | None) -> Path:
    """The shipped classifier with its frame_envelope metadata replaced (None: removed)."""
    onnx = pytest.importorskip("onnx")
    proto = onnx.load(str(FUSION))
    props = {p.key: p.value for p in proto.metadata_props if p.key != fe.METADATA_KEY}
    if value is not None:
        props[fe.METADATA_KEY] = value
    del proto.metadata_props[:]
    for k, v in props.items():
        proto.metadata_props.add(key=k, value=v)
    path = tmp_path / "fusion.onnx"
    onnx.save(proto, str(path))
    return path


def _classify(model, *paths, capsys, extra=()):
    rc = main(["classify", "--quiet", "--threads", "1", "--bit-depth", "12", "--model",
               str(model), *map(str, [*paths, *extra])])
    out = capsys.readouterr()
    return rc, out.out, out.err


# -- the statistics and the check -----------------------------------------------------------------
def test_white_noise_reads_one_in_every_band_and_grain_far_above():
    raw, _ = _frame()
    stats = fe.measure(raw / 4095, CAMERA)
    for k in fe.BAND_PX[:3]:  # the fine bands, which the haze's shape does not reach
        assert 0.9 < stats[f"power_{k}px"] < 1.25
    assert 0.95 < stats["noise_slope"] < 1.05 and 0.1 < stats["haze"] < 0.3
    grainy = fe.measure(_frame(grain=0.02)[0] / 4095, CAMERA)
    assert grainy["power_8px"] > 20 * stats["power_8px"]
    assert grainy["haze"] == pytest.approx(stats["haze"], abs=0.002)


def test_the_line_names_the_statistic_its_value_and_the_trained_range():
    env = fe.Envelope({"power_4px": (0.72, 1.39), "haze": (0.04, 0.42),
                       "window_share": (0.0, 0.4)})
    stats = {"power_4px": 6.1234, "haze": 0.68, "window_share": math.nan}
    assert fe.check(stats, env, ("power_4px", "haze")) == (
        "unlike the frames this classifier was trained on: background power at 4 px 6.12 x "
        "white noise (trained 0.72-1.39); also outside: haze level")
    assert fe.check({"power_4px": 1.0, "haze": 0.2}, env, ("power_4px", "haze")) is None
    assert fe.check(stats, env, ("window_share",)) == (
        "unlike the frames this classifier was trained on: share of windows positive cannot "
        "be measured (trained 0-0.4)")
    assert math.isnan(fe.window_share(np.ones(9)))  # a 512 px frame: not judged
    assert fe.window_share(np.r_[np.ones(10), np.zeros(15)]) == 0.4


@pytest.mark.parametrize("text, fault", [
    ("{not json", "is not JSON"),
    ('{"version": 2, "ranges": {"haze": [0, 1]}}', "has version 2; this runtime reads version 1"),
    ('{"version": 1, "ranges": {}}', "has no ranges"),
    ('{"version": 1, "ranges": {"grain": [0, 1]}}', "'grain', a statistic this runtime does not"),
    ('{"version": 1, "ranges": {"haze": [0.4, 0.1]}}', r"has range \[0.4, 0.1\] for 'haze'"),
    ('{"version": 1, "ranges": {"haze": [0, "x"]}}', "expected \\[lo, hi\\], two finite"),
])
def test_an_envelope_this_runtime_cannot_read_says_why(text, fault):
    with pytest.raises(fe.FrameEnvelopeError, match=fault):
        fe.parse(text)


# -- through the classifier -----------------------------------------------------------------------
def test_a_simulated_frame_is_inside_the_shipped_envelope_and_a_grainy_one_is_refused():
    pytest.importorskip("onnxruntime")
    from edge.darkfield.classify import Classifier, UnlikeTraining
    from edge.darkfield.reading import Frame
    from edge.verdict import Status

    with Classifier.open(FUSION, threads=1) as clf:
        assert clf.envelope is not None and set(clf.envelope.ranges) == set(fe.STATISTICS)
        raw, _ = _frame()
        r = clf.classify(Frame(Path("sim.tif"), raw / np.float32(4095), 12, "TIFF", "grey"))
        assert r.verdict in (Status.PASS, Status.FAIL) and r.unlike is None
        assert set(r.statistics) == set(fe.STATISTICS)
        assert math.isnan(r.statistics["window_share"])  # nine windows: not judged
        grainy, _ = _frame(grain=0.02)
        with pytest.raises(UnlikeTraining, match=r"grainy.tif: " + UNLIKE
                           + r"background power at \d+ px [\d.]+ x white noise "
                             r"\(trained [\d.]+-[\d.]+\)") as caught:
            clf.classify(Frame(Path("grainy.tif"), grainy / np.float32(4095), 12, "TIFF",
                               "grey"))
        assert caught.value.statistic.startswith("power_")


def test_a_model_without_an_envelope_judges_as_before_and_says_so_once(tmp_path, caplog):
    pytest.importorskip("onnxruntime")
    from edge.darkfield.classify import Classifier
    from edge.darkfield.reading import Frame
    from edge.verdict import Status

    model = _model_with(tmp_path, None)
    with caplog.at_level(logging.INFO), Classifier.open(model, threads=1) as clf:
        assert clf.envelope is None
        grainy, _ = _frame(grain=0.02)
        for k in range(2):
            r = clf.classify(Frame(Path(f"g{k}.tif"), grainy / np.float32(4095), 12, "TIFF",
                                   "grey"))
            assert r.verdict in (Status.PASS, Status.FAIL) and r.statistics is None
    assert caplog.text.count("carries no frame envelope") == 1


def test_a_model_whose_envelope_cannot_be_read_is_refused_with_the_fault(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    from edge.darkfield.classify import Classifier, ModelError

    model = _model_with(tmp_path, '{"version": 1, "ranges": {"haze": [0.4, 0.1]}}')
    with pytest.raises(ModelError, match=r"fusion.onnx: its frame_envelope metadata has range "
                                         r"\[0.4, 0.1\] for 'haze'.*export frame-envelope"):
        Classifier.open(model, threads=1)
    raw, _ = _frame()
    tifffile.imwrite(tmp_path / "a.tif", raw)
    rc, _, err = _classify(model, tmp_path / "a.tif", capsys=capsys)
    assert rc == 2 and "frame_envelope metadata has range" in err and "Traceback" not in err


def test_classify_says_error_with_the_statistic_for_a_grainy_frame(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    folder = tmp_path / "shots"
    folder.mkdir()
    tifffile.imwrite(folder / "grainy.tif", _frame(grain=0.02)[0])
    tifffile.imwrite(folder / "plain.tif", _frame()[0])
    rc, out, _ = _classify(FUSION, folder, capsys=capsys,
                           extra=["--json", str(tmp_path / "r.json")])
    assert rc == 1  # as for any ERROR
    assert re.search(r"grainy.tif: ERROR: \S*grainy.tif: " + UNLIKE + r"background power at \d+ "
                     r"px [\d.]+ x white noise \(trained [\d.]+-[\d.]+\)", out)
    assert re.search(r"plain.tif: (PASS|FAIL)", out)
    assert re.search(r"2 images: \d PASS, \d FAIL, 1 ERROR \(1 unlike the frames the "
                     r"classifier was trained on: 1 by background power at \d+ px\)", out)
    doc = json.loads((tmp_path / "r.json").read_text())
    e = {Path(x["path"]).name: x for x in doc["images"]}
    assert e["grainy.tif"]["unlike_training"].startswith("power_")
    assert e["grainy.tif"]["frame_statistics"]["power_8px"] > 5
    assert e["plain.tif"]["unlike_training"] is None


def test_per_image_details_stay_off_the_terminal_unless_verbose(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    rgb = np.repeat((_frame()[0] >> 4).astype(np.uint8)[..., None], 3, axis=2)
    for k in range(2):
        tifffile.imwrite(tmp_path / f"c{k}.tif", rgb)
    root = logging.getLogger()
    terminal = logging.StreamHandler(sys.stderr)  # as logging.basicConfig sets one up
    root.addHandler(terminal)
    level = root.level
    root.setLevel(logging.INFO)  # as glass-inspect's main sets it
    try:
        _, _, err = _classify(FUSION, tmp_path, capsys=capsys, extra=["--bit-depth", "8"])
        assert "c0.tif: RGB with equal channels" not in err and "c0.tif: noise" not in err
        assert ("noise matched to the classifier's camera model on 2 images (1.15 times its "
                "noise); RGB with equal channels, read as grey: 2 images (each image's with -v)"
                in err)
        _, _, err = _classify(FUSION, tmp_path, capsys=capsys, extra=["--bit-depth", "8", "-v"])
        assert "c0.tif: RGB with equal channels, read as grey" in err and "c1.tif: noise" in err
        assert "(each image's with -v)" not in err
    finally:
        root.removeHandler(terminal)
        root.setLevel(level)
