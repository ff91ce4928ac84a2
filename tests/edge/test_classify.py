"""``edge.darkfield.classify`` and ``glass-inspect classify``: windows, regions, reading, errors,
the CLI.

The network tests run a real exported attention fusion network whose weights are set so that its
logit follows the window's brightness: the stem passes the raw frame through (centre tap 1),
every residual branch, scale-attention fusion and attention weight is zero (so each module is
the identity or a stride-2 subsampling), and the final layer is ``40 * mean - 6``. A window that
holds a whole bright 128 x 128 cell (mean >= 0.25 on the network's sampling lattice) is
positive with p >= 0.98; a dark window, or one that only touches a bright cell, is negative
(p <= 0.06).
"""

import json
import logging
import re
from dataclasses import replace

import numpy as np
import pytest
import tifffile
from PIL import Image

from edge.cli import main
from edge.darkfield.classify import Classifier, ModelError, classify_paths, resolve_model
from edge.darkfield.overlay import overlay_caption
from edge.darkfield.reading import ClassifyError, read_image
from edge.darkfield.regions import Region, merge_windows
from edge.darkfield.windows import STRIDE, WINDOW, window_origins
from edge.sim.darkfield import frames_at
from edge.verdict import Status
from tests.conftest import ROOT, SHIPPED_MODEL

CELL = 128
FUSION = ROOT / "edge" / "models" / "attention_fusion.onnx"  # the shipped classifier


# -- windows ------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [256, 257, 300, 383, 384, 512, 600, 1000, 3120, 3504])
def test_window_grid_covers_every_pixel_with_stride_128_and_a_flush_last_window(size):
    starts = window_origins(size)
    assert starts[0] == 0 and starts[-1] == size - WINDOW
    steps = np.diff(starts)
    assert np.all(steps[:-1] == STRIDE) and np.all((steps > 0) & (steps <= STRIDE))
    covered = np.zeros(size, bool)
    for s in starts:
        covered[s:s + WINDOW] = True
    assert covered.all()


def test_window_grid_examples_and_too_small():
    assert window_origins(512) == [0, 128, 256]
    assert window_origins(600) == [0, 128, 256, 344]
    with pytest.raises(ValueError, match="smaller than the 256 px window"):
        window_origins(255)


# -- regions ------------------------------------------------------------------------------------
def _grid(ys, xs, positive_at, p=0.9):
    positive = np.zeros((len(ys), len(xs)), bool)
    prob = np.full(positive.shape, 0.1)
    for r, c in positive_at:
        positive[r, c] = True
        prob[r, c] = p
    return positive, prob


def test_overlapping_windows_merge_and_distant_ones_stay_apart():
    ys, xs = window_origins(768), window_origins(1280)  # 5 x 9 windows
    positive, prob = _grid(ys, xs, [(0, 0), (0, 1), (1, 1), (4, 8)])
    prob[1, 1] = 0.97
    a, b = merge_windows(positive, prob, ys, xs)
    assert (a.windows, b.windows) == (3, 1)
    assert a.box_px == (0, 0, 384, 384) and a.max_probability == pytest.approx(0.97)
    assert a.contour_px == ((0, 0), (384, 0), (384, 384), (128, 384), (128, 256), (0, 256))
    assert b.box_px == (1024, 512, 1280, 768)
    assert b.contour_px == ((1024, 512), (1280, 512), (1280, 768), (1024, 768))
    assert a.holes_px == b.holes_px == ()


def test_windows_sharing_an_edge_merge_and_a_corner_alone_does_not():
    ys, xs = window_origins(768), window_origins(768)
    edge, prob = _grid(ys, xs, [(0, 0), (0, 2)])  # x 0-256 and 256-512
    (one,) = merge_windows(edge, prob, ys, xs)
    assert one.box_px == (0, 0, 512, 256) and one.windows == 2
    corner, prob = _grid(ys, xs, [(0, 0), (2, 2)])  # meet at (256, 256) only
    first, second = merge_windows(corner, prob, ys, xs)
    assert first.box_px == (0, 0, 256, 256) and second.box_px == (256, 256, 512, 512)


def test_a_ring_of_positive_windows_has_a_hole_and_flush_windows_keep_their_edges():
    ys, xs = window_origins(1024), window_origins(1024)
    ring = [(r, c) for r in (0, 4) for c in range(0, 5, 2)] + [(2, 0), (2, 4)]
    positive, prob = _grid(ys, xs, ring)
    (g,) = merge_windows(positive, prob, ys, xs)
    assert g.box_px == (0, 0, 768, 768) and g.windows == 8
    assert g.holes_px == (((256, 256), (256, 512), (512, 512), (512, 256)),)
    ys, xs = window_origins(300), window_origins(600)  # [0, 44] x [0, 128, 256, 344]
    positive, prob = _grid(ys, xs, [(1, 3)])
    (g,) = merge_windows(positive, prob, ys, xs)
    assert g.box_px == (344, 44, 600, 300)


def test_boxes_in_mm():
    g = Region(2, 0.8, (128, 256, 512, 768), ((128, 256),))
    assert g.box_mm(None) is None
    assert g.box_mm((0.01, 0.02)) == pytest.approx((1.28, 5.12, 5.12, 15.36))
    d = g.to_dict((0.01, 0.02))
    assert d["box_px"] == [128, 256, 512, 768] and d["box_mm"] == [1.28, 5.12, 5.12, 15.36]


# -- reading ------------------------------------------------------------------------------------
def _pattern(dtype, top: int, shape=(260, 300)) -> np.ndarray:
    a = np.zeros(shape, dtype)
    a[0, 0], a[1, 1], a[2, 2] = top, top // 2, 1
    return a


@pytest.mark.parametrize("name, dtype, top, bit_depth, expected_bits", [
    ("g8.tif", np.uint8, 255, None, 8),
    ("g16.tif", np.uint16, 65535, None, 16),
    ("g12.tif", np.uint16, 4095, 12, 12),
    ("g8.png", np.uint8, 255, None, 8),
    ("g16.png", np.uint16, 65535, None, 16),
    ("g12.png", np.uint16, 4095, 12, 12),
    ("g8.bmp", np.uint8, 255, None, 8),
])
def test_grey_images_are_scaled_by_their_bit_depth(tmp_path, name, dtype, top, bit_depth,
                                                   expected_bits):
    path = tmp_path / name
    a = _pattern(dtype, top)
    if path.suffix == ".tif":
        tifffile.imwrite(path, a)
    else:
        Image.fromarray(a).save(path)
    f = read_image(path, bit_depth)
    assert f.bit_depth == expected_bits and f.kind == "grey" and f.size == (300, 260)
    assert f.pixels.dtype == np.float32
    assert f.pixels[0, 0] == 1.0
    assert f.pixels[1, 1] == pytest.approx((top // 2) / top)
    assert f.pixels[2, 2] == pytest.approx(1 / top)


def test_twelve_bit_value_above_4095_is_an_error(tmp_path):
    path = tmp_path / "over.tif"
    a = _pattern(np.uint16, 4095)
    a[5, 5] = 4096
    tifffile.imwrite(path, a)
    with pytest.raises(ClassifyError, match=r"over.tif: holds the value 4096, above 4095, the "
                                            r"largest 12-bit value"):
        read_image(path, bit_depth=12)
    assert read_image(path).bit_depth == 16
    tifffile.imwrite(tmp_path / "g8.tif", _pattern(np.uint8, 255))
    f = read_image(tmp_path / "g8.tif", bit_depth=12)  # an 8-bit file holds no 12-bit data
    assert f.bit_depth == 8 and f.pixels[0, 0] == 1.0
    assert f.notes == ("8-bit file read as 8-bit, not 12-bit",)


def test_colour_becomes_grey_and_is_logged_and_a_bayer_mosaic_stays_raw(tmp_path, caplog):
    rgb = np.zeros((256, 256, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 100, 200, 50
    Image.fromarray(rgb).save(tmp_path / "c.bmp")
    f = read_image(tmp_path / "c.bmp")
    assert f.kind == "RGB converted to grey"
    assert f.pixels[0, 0] == pytest.approx((0.299 * 100 + 0.587 * 200 + 0.114 * 50) / 255)
    assert any("converted to grey" in n for n in f.notes)
    with pytest.raises(ClassifyError, match="has 3 channels; a Bayer RAW mosaic has one"):
        read_image(tmp_path / "c.bmp", bayer=True)
    mosaic = _pattern(np.uint16, 4095, (256, 256))
    mosaic[::2, 1::2] = 300  # a GRBG cell pattern: raw values, not demosaiced
    tifffile.imwrite(tmp_path / "raw.tif", mosaic)
    f = read_image(tmp_path / "raw.tif", bit_depth=12, bayer=True)
    assert f.kind == "bayer mosaic"
    assert np.array_equal(f.pixels, mosaic.astype(np.float32) / 4095)
    tifffile.imwrite(tmp_path / "odd.tif", np.zeros((256, 257), np.uint16))
    with pytest.raises(ClassifyError, match="257 x 256 px Bayer mosaic; expected an even width"):
        read_image(tmp_path / "odd.tif", bit_depth=12, bayer=True)
    assert read_image(tmp_path / "odd.tif").kind == "grey"


def test_a_recorded_rois_six_frames_are_refused(tmp_path):
    tifffile.imwrite(tmp_path / "roi_00.tif", np.zeros((6, 256, 256), np.uint16),
                     photometric="minisblack")
    with pytest.raises(ClassifyError, match="expected one frame"):
        read_image(tmp_path / "roi_00.tif")


def _bad_files(folder):
    """name -> what its error says."""
    Image.fromarray(np.zeros((200, 400), np.uint8)).save(folder / "b_small.png")
    good = folder / "tmp.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 300), np.uint8)).save(good)
    (folder / "c_broken.png").write_bytes(good.read_bytes()[:400])
    good.unlink()
    (folder / "d_notes.tif").write_text("exposure 12 ms, gain 2\n")
    (folder / "e_empty.bmp").write_bytes(b"")
    return {"b_small.png": "is 400 x 200 px; the classifier's window is 256 x 256 px",
            "c_broken.png": "cannot be read as a PNG image .*truncated or damaged",
            "d_notes.tif": r"is not a TIFF, PNG or BMP image \(its first bytes are b'expo'\)",
            "e_empty.bmp": r"is empty \(0 bytes\)"}


def test_bad_files_each_give_a_clear_error(tmp_path):
    for name, what in _bad_files(tmp_path).items():
        with pytest.raises(ClassifyError, match=f"{name}: {what}"):
            read_image(tmp_path / name)


# -- the network ----------------------------------------------------------------------------------
def _brightness_network(checkpoint):
    torch = pytest.importorskip("torch")
    from torch import nn

    from model.attention import AttentionFusionNet, BasicBlock, FusionSpec
    from model.train import CHECKPOINT_FORMAT

    spec = FusionSpec(width=0.125, in_channels=1)
    net = AttentionFusionNet(spec)
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):  # exactly the identity in eval mode
                m.weight.fill_(1.0)
                m.running_mean.zero_()
                m.running_var.fill_(1.0 - m.eps)
        net.stem[0][0].weight[0, 0, 3, 3] = 1.0
        for m in net.body:
            if isinstance(m, BasicBlock) and m.down is not None:
                m.down[0].weight[0, 0, 0, 0] = 1.0
        net.fc.weight[0, 0] = 40.0
        net.fc.bias[0] = -6.0
    torch.save({"format": CHECKPOINT_FORMAT, "network": "fusion", "spec": spec.to_dict(),
                "settings": {}, "model": net.state_dict(), "epoch": 0, "history": [],
                "head_digest": "", "pipeline": {}}, checkpoint)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from export.onnx import export_onnx

    root = tmp_path_factory.mktemp("fusion")
    _brightness_network(root / "fusion.pt")
    return export_onnx(root / "fusion.pt", root / "fusion.onnx").path


def _image(w, h, cells=(), value=255, dtype=np.uint8):
    """Dark glass with faint noise, and bright 128 px cells at (column, row) of the cell grid."""
    a = np.random.default_rng(w * h).integers(0, 4, (h, w)).astype(dtype)
    for cx, cy in cells:
        a[cy * CELL:(cy + 1) * CELL, cx * CELL:(cx + 1) * CELL] = value
    return a


def test_exported_network_gives_one_logit_per_window_through_the_engine(model):
    from edge.engine import open_engine

    with open_engine(model, threads=1, max_batch=3) as engine:
        assert engine.input.shape[:2] == (None, 1) and len(engine.output.shape) == 1
        x = np.zeros((3, 1, 256, 256), np.float32)
        x[1, 0, :128, :128] = 1.0
        logit = engine.infer(x)
        assert logit.shape == (3,) and logit.dtype == np.float32
        assert logit[0] < -5 and logit[1] > 3 and logit[2] < -5


def test_classifier_finds_the_windows_of_bright_cells_and_merges_them(model, tmp_path):
    path = tmp_path / "two.png"  # 768 x 512: windows x 0-512 by 128, y 0-256 by 128
    Image.fromarray(_image(768, 512, cells=[(1, 1), (5, 3)])).save(path)
    with Classifier.open(model, batch=4, threads=1) as clf:
        r = clf.classify(read_image(path), mm_per_px=(0.01, 0.01))
        assert r.verdict is Status.FAIL and r.windows == 15 and r.positives == 5
        hits = {(r.xs[c], r.ys[k]) for k, c in zip(*np.nonzero(r.positive), strict=True)}
        assert hits == {(0, 0), (128, 0), (0, 128), (128, 128), (512, 256)}
        assert [g.box_px for g in r.regions] == [(0, 0, 384, 384), (512, 256, 768, 512)]
        assert [g.windows for g in r.regions] == [4, 1]
        assert r.regions[0].box_mm(r.mm_per_px) == pytest.approx((0, 0, 3.84, 3.84))
        assert all(g.max_probability > 0.98 for g in r.regions)
        assert float(r.probability[~r.positive].max()) < 0.1
        dark = tmp_path / "dark.png"
        Image.fromarray(_image(600, 300)).save(dark)
        r = clf.classify(read_image(dark))
        assert r.verdict is Status.PASS and r.regions == [] and r.windows == 2 * 4


def test_the_bit_depth_decides_the_scale(model, tmp_path):
    path = tmp_path / "raw12.tif"
    tifffile.imwrite(path, _image(512, 512, cells=[(0, 0)], value=4095, dtype=np.uint16))
    with Classifier.open(model, threads=1) as clf:
        assert clf.classify(read_image(path, bit_depth=12)).positives == 1
        # read as 16-bit, 4095 is 6 % of full scale: nothing is bright enough
        assert clf.classify(read_image(path)).positives == 0
        seen = []
        (r,) = classify_paths([tmp_path], clf, on_result=seen.append, bit_depth=12)
        assert seen == [r] and r.positives == 1 and r.frame.bit_depth == 12


def test_a_model_that_is_not_the_window_classifier_is_refused(tmp_path):
    pytest.importorskip("onnxruntime")
    with pytest.raises(ModelError, match=r"expected the single-frame window classifier"):
        Classifier.open(SHIPPED_MODEL, threads=1)
    with pytest.raises(ModelError, match=r"nothing.onnx does not exist.*export onnx"):
        resolve_model(tmp_path / "nothing.onnx")


# -- Bayer mosaics (edge.darkfield.mosaic), through the shipped classifier -------------------------
def _sim_frames(folder, seeds, bayer, **over):
    from edge.sim import darkfield_files as dff

    cfg = replace(dff.darkfield_config(512, 12, bayer=bayer), **over)
    return dff.write_darkfield_frames(folder, seeds, cfg, progress=False)


def test_a_bayer_mosaic_is_balanced_and_classified_as_the_same_frame_in_grey(tmp_path):
    pytest.importorskip("onnxruntime")
    (grey,) = _sim_frames(tmp_path / "grey", [503], bayer=False)
    (bayer,) = _sim_frames(tmp_path / "bayer", [503], bayer=True)
    with Classifier.open(FUSION, threads=1) as clf:
        g = clf.classify(read_image(grey, bit_depth=12))
        b = clf.classify(read_image(bayer, bit_depth=12))
        assert b.frame.kind == "bayer mosaic, colour sites balanced"
        assert b.site_gains.ravel() == pytest.approx([1.0, 0.6, 0.75, 1.0], abs=0.01)
        assert g.verdict is b.verdict is Status.FAIL and g.positives == b.positives == 4
        assert np.abs(g.probability - b.probability).max() < 0.1
        assert g.noise_ratio == pytest.approx(1.02, abs=0.02) and not g.noise_matched
        assert b.noise_ratio == pytest.approx(1.02, abs=0.03) and not b.noise_matched
        # the mosaic as it is, unbalanced, would be another picture to the network: its
        # checkerboard reads as noise far above the camera's
        with pytest.raises(ClassifyError, match=r"has noise \d+\.\d+ times the camera model "
                                                r".*a Bayer mosaic read as grey \(--bayer\)"):
            clf.classify(replace(read_image(bayer, bit_depth=12), kind="grey"))


def test_an_eight_bit_frame_is_matched_to_the_cameras_noise_and_passes_clean(tmp_path):
    pytest.importorskip("onnxruntime")
    (clean,) = _sim_frames(tmp_path, [503], bayer=False, scratch_share=0.0, bit_depth=8)
    frame = read_image(clean)
    assert frame.bit_depth == 8
    with Classifier.open(FUSION, threads=1) as clf:
        r = clf.classify(frame)
        # 16 DN steps at 12 bits: about 15 % more noise than the camera the model knows
        assert r.noise_matched and 1.1 < r.noise_ratio < 1.3
        assert r.verdict is Status.PASS and r.to_dict()["noise_matched"] is True
        assert re.search(r"PASS, 0 regions .*, its noise matched \(1\.\d\d times the model "
                         r"camera's\), \d+\.\d\d s$", r.summary())
        clf.prep.noise_units = False  # unmatched, the steps read as texture: windows everywhere
        unmatched = clf.classify(frame)
        assert unmatched.verdict is Status.FAIL and unmatched.positives > r.positives + 2


def test_twelve_bit_data_read_as_sixteen_bit_is_an_error_not_a_blind_pass(tmp_path):
    pytest.importorskip("onnxruntime")
    (path,) = _sim_frames(tmp_path, [503], bayer=False)  # 12-bit data in 16-bit words
    with Classifier.open(FUSION, threads=1) as clf:
        frame = read_image(path)  # the depth not said: read as 16-bit, 16 times too dark
        assert frame.bit_depth == 16
        with pytest.raises(ClassifyError, match=r"is too dark: its haze \(median\) is -?\d\.\d % "
                                                r".*12-bit data in 16-bit words needs "
                                                r"--bit-depth 12"):
            clf.classify(frame)
        assert clf.classify(read_image(path, bit_depth=12)).verdict is Status.FAIL


def test_a_frame_the_classifier_cannot_judge_is_an_error_never_a_pass(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    folder = tmp_path / "shots"
    (dim,) = _sim_frames(folder, [505], bayer=False, scratch_share=0.0, haze=(0.06, 0.08))
    (too_dim,) = _sim_frames(tmp_path / "x", [506], bayer=False, scratch_share=0.0,
                             haze=(0.005, 0.01))
    too_dim.rename(folder / "too_dim.tif")
    rng = np.random.default_rng(0)  # the ring light off: black level and read noise only
    off = np.clip(np.round(64 + rng.normal(0, 2.5, (512, 512))), 0, 4095).astype(np.uint16)
    tifffile.imwrite(folder / "light_off.tif", off)
    burnt = np.array(tifffile.imread(dim))
    burnt[:, :40] = 4095  # 7.8 % of the frame saturated
    tifffile.imwrite(folder / "burnt.tif", burnt)
    tifffile.imwrite(folder / "flat.tif", np.full((512, 512), 900, np.uint16))
    rc, out, _ = _run([folder, "--bit-depth", "12", "--model", FUSION, "--json",
                       tmp_path / "r.json"], capsys)
    assert rc == 1 and "1 PASS, 0 FAIL, 4 ERROR" in out
    entries = {e["path"].split("/")[-1]: e for e in json.loads(
        (tmp_path / "r.json").read_text())["images"]}
    assert entries[dim.name]["verdict"] == "PASS"  # haze of 6-8 %: still judged
    assert re.search(r"light_off.tif: is too dark: its haze \(median\) is 0\.0 % of full scale "
                     r"above the black level; expected at least 4 %.*ring light on",
                     entries["light_off.tif"]["error"])
    assert "too_dim.tif: is too dark" in entries["too_dim.tif"]["error"]
    assert "burnt.tif: is overexposed: 7.8 % of its pixels at full scale; expected at most 1 %" \
        in entries["burnt.tif"]["error"]
    assert "flat.tif: is flat: every pixel is 22.0 % of full scale" in entries["flat.tif"]["error"]


def test_a_bright_field_frame_is_refused_as_unlike_training_and_every_frame_gives_its_haze(
        tmp_path, caplog):
    """Issue 29: a bright-field frame (haze 70-75 % of full scale) is outside the frames the
    classifier was trained on (its frame envelope): ERROR naming the haze, not a verdict."""
    pytest.importorskip("onnxruntime")
    from edge.darkfield.classify import UnlikeTraining

    (bright,) = _sim_frames(tmp_path / "b", [507], bayer=False, scratch_share=0.0,
                            haze=(0.7, 0.75))
    (usual,) = _sim_frames(tmp_path / "u", [507], bayer=False, scratch_share=0.0)
    with Classifier.open(FUSION, threads=1) as clf, caplog.at_level(logging.INFO):
        refused = (r"unlike the frames this classifier was trained on: haze level "
                   r"0\.[5-9]\d of full scale \(trained")
        with pytest.raises(UnlikeTraining, match=refused):
            clf.classify(read_image(bright, bit_depth=12))
        caplog.clear()
        u = clf.classify(read_image(usual, bit_depth=12))
        assert 0.04 < u.haze < 0.3 and "brighter than" not in caplog.text
        assert u.to_dict()["haze"] == round(u.haze, 4)


def test_a_head_file_says_the_images_are_its_cameras_mosaics_and_gives_the_scale(tmp_path,
                                                                                   capsys):
    pytest.importorskip("onnxruntime")
    from edge import config
    from edge.sim.darkfield import DarkfieldRenderer

    head = ROOT / "edge" / "default_head.toml"  # a 12-bit GRBG camera, 40 x 35 mm per RoI
    cfg = config.load(head)
    mosaic = DarkfieldRenderer(replace(frames_at(512), bayer=True)).render(503).image
    tifffile.imwrite(tmp_path / "m.tif", mosaic)  # says nothing of its depth or mosaic
    rc, _, _ = _run([tmp_path / "m.tif", "--model", FUSION, "--head", head, "--json",
                     tmp_path / "r.json"], capsys)
    (e,) = json.loads((tmp_path / "r.json").read_text())["images"]
    assert rc == 0 and e["verdict"] == "FAIL" and e["bit_depth"] == cfg.camera.bit_depth == 12
    assert e["image"] == "bayer mosaic, colour sites balanced"
    x0, y0, x1, y1 = e["regions"][0]["box_px"]
    assert e["regions"][0]["box_mm"] == pytest.approx(
        [x0 * cfg.mm_per_px[0], y0 * cfg.mm_per_px[1], x1 * cfg.mm_per_px[0],
         y1 * cfg.mm_per_px[1]], rel=1e-3)
    # a flag wins over the head
    _run([tmp_path / "m.tif", "--model", FUSION, "--head", head, "--mm-per-px", "0.01",
          "--json", tmp_path / "r2.json"], capsys)
    (e,) = json.loads((tmp_path / "r2.json").read_text())["images"]
    assert e["regions"][0]["box_mm"] == pytest.approx([x0 / 100, y0 / 100, x1 / 100, y1 / 100])
    bad = tmp_path / "bad.toml"
    bad.write_text("[camera]\nbit_depth = 'twelve'\n")
    rc, _, err = _run([tmp_path / "m.tif", "--model", FUSION, "--head", bad], capsys)
    assert rc == 2 and "bad.toml" in err


def test_a_mosaic_too_dark_to_balance_is_an_error_and_the_others_go_on(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    folder = tmp_path / "shots"
    (clean,) = _sim_frames(folder, [504], bayer=True, scratch_share=0.0)
    tifffile.imwrite(folder / "dark.tif", np.full((512, 512), 70, np.uint16))  # 6 DN of haze
    rc, out, _ = _run([clean, folder / "dark.tif", "--model", FUSION, "--bit-depth", "12",
                       "--bayer", "--json", tmp_path / "r.json"], capsys)
    assert rc == 1
    entries = {e["path"].split("/")[-1]: e for e in json.loads(
        (tmp_path / "r.json").read_text())["images"]}
    ok, dark = entries[clean.name], entries["dark.tif"]
    assert ok["verdict"] == "PASS" and ok["image"] == "bayer mosaic, colour sites balanced"
    assert sum(ok["site_gains"], []) == pytest.approx([1.0, 0.6, 0.75, 1.0], abs=0.01)
    assert dark["verdict"] == "ERROR" and dark["site_gains"] is None
    assert "dark.tif: is too dark to balance its Bayer colour sites" in dark["error"]
    assert "expected at least 20 DN on every site" in dark["error"]
    assert "1 PASS, 0 FAIL, 1 ERROR" in out


def test_a_mosaic_needs_a_model_that_says_its_camera(model, tmp_path):
    path = tmp_path / "m.tif"
    tifffile.imwrite(path, np.full((256, 256), 900, np.uint16))
    frame = read_image(path, bit_depth=12, bayer=True)
    with Classifier.open(model, threads=1) as clf:
        clf.prep.sensor = None  # as a model exported without the spec's noise figures
        with pytest.raises(ClassifyError, match=r"m.tif: is a Bayer mosaic, and the model "
                                                r"fusion.onnx does not say the camera noise "
                                                r"model it was trained with"):
            clf.classify(frame)


# -- the command line -----------------------------------------------------------------------------
def _run(args, capsys):
    rc = main(["classify", "--quiet", "--threads", "1", *map(str, args)])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_bad_images_are_reported_and_the_rest_of_the_folder_is_classified(model, tmp_path,
                                                                          capsys):
    folder = tmp_path / "shots"
    folder.mkdir()
    Image.fromarray(_image(640, 384, cells=[(2, 1)])).save(folder / "a_scratch.png")
    tifffile.imwrite(folder / "f_clean.tif", _image(300, 260, dtype=np.uint16) * 16)
    bad = _bad_files(folder)
    (folder / "readme.txt").write_text("not an image, and not named like one: skipped\n")
    rc, out, _ = _run([folder, tmp_path / "missing.png", "--model", model, "--bit-depth", "12",
                       "--overlay", tmp_path / "ov", "--json", tmp_path / "r.json",
                       "--mm-per-px", "0.02"], capsys)
    assert rc == 1
    doc = json.loads((tmp_path / "r.json").read_text())
    entries = {e["path"].split("/")[-1]: e for e in doc["images"]}
    assert sorted(entries) == sorted(["a_scratch.png", "f_clean.tif", "missing.png", *bad])
    assert doc["counts"] == {"PASS": 1, "FAIL": 1, "ERROR": 5}
    for name, what in bad.items():
        e = entries[name]
        assert e["verdict"] == "ERROR" and e["regions"] == [] and e["overlay"] is None
        assert e["error"].startswith(str(folder / name)) and re.search(what, e["error"])
        assert f"{name}: ERROR: " in out
    assert "no such file or folder" in entries["missing.png"]["error"]
    scratch = entries["a_scratch.png"]
    assert scratch["verdict"] == "FAIL" and scratch["error"] is None
    assert scratch["windows"] == 4 * 2 and scratch["positives"] == 4
    (g,) = scratch["regions"]
    assert g["box_px"] == [128, 0, 512, 384] and g["box_mm"] == [2.56, 0.0, 10.24, 7.68]
    assert g["contour_px"] == [[128, 0], [512, 0], [512, 384], [128, 384]]
    assert g["windows"] == 4 and g["max_probability"] > 0.98
    assert entries["f_clean.tif"]["verdict"] == "PASS"
    assert entries["f_clean.tif"]["bit_depth"] == 12
    for name, size in (("a_scratch", (640, 384)), ("f_clean", (300, 260))):
        with Image.open(tmp_path / "ov" / f"{name}.png") as im:
            assert im.format == "PNG" and im.size == size and im.mode == "RGB"
        assert entries[name + (".png" if name == "a_scratch" else ".tif")]["overlay"].endswith(
            f"ov/{name}.png")
    assert sorted(p.name for p in (tmp_path / "ov").iterdir()) == ["a_scratch.png",
                                                                   "f_clean.png"]
    assert "7 images: 1 PASS, 1 FAIL, 5 ERROR" in out


def test_overlay_tints_positive_windows_and_draws_the_contour(model, tmp_path, capsys):
    Image.fromarray(_image(512, 512, cells=[(3, 3)])).save(tmp_path / "s.png")
    rc, _, _ = _run([tmp_path / "s.png", "--model", model, "--overlay", tmp_path / "ov"], capsys)
    assert rc == 0
    ov = np.asarray(Image.open(tmp_path / "ov" / "s.png"))
    assert ov[400, 400, 0] > ov[400, 400, 1] == ov[400, 400, 2]  # the positive window: tinted
    assert tuple(ov[200, 200]) == (ov[200, 200, 0],) * 3  # outside it stays grey
    assert tuple(ov[400, 256]) == (255, 220, 0)  # the contour at the window's left edge


def test_an_all_good_folder_exits_0(model, tmp_path, capsys, caplog):
    caplog.set_level("INFO")
    for k, cells in enumerate([[], [(0, 0)]]):
        Image.fromarray(_image(384, 256, cells=cells)).save(tmp_path / f"img{k}.bmp")
    colour = np.repeat(_image(384, 256)[..., None], 3, axis=2)
    colour[..., 2] //= 2
    Image.fromarray(colour).save(tmp_path / "img2.bmp")
    rc, out, err = _run([tmp_path, "--model", model, "--json", tmp_path / "r.json"], capsys)
    assert rc == 0, err
    assert "img2.bmp: RGB image converted to grey" in caplog.text
    doc = json.loads((tmp_path / "r.json").read_text())
    assert [e["verdict"] for e in doc["images"]] == ["PASS", "FAIL", "PASS"]
    assert doc["model"]["backend"] == "onnxruntime" and doc["threshold"] == 0.5
    assert "3 images: 2 PASS, 1 FAIL, 0 ERROR" in out


def test_missing_shipped_model_says_how_to_make_one(tmp_path, capsys):
    Image.fromarray(_image(256, 256)).save(tmp_path / "a.png")
    rc, _, err = _run([tmp_path / "a.png", "--model", "shipped:no_such_classifier.onnx"], capsys)
    assert rc == 2
    assert "shipped:no_such_classifier.onnx" in err and "none is shipped yet" in err
    assert "export onnx" in err and "--model" in err and "Traceback" not in err


def test_bad_options_are_refused(capsys):
    for args in (["--bit-depth", "17"], ["--threshold", "1.5"], ["--mm-per-px", "-1"],
                 ["--batch", "0"]):
        with pytest.raises(SystemExit) as exc:
            main(["classify", "x.png", *args])
        assert exc.value.code == 2
    assert "expected" in capsys.readouterr().err


def test_sixteen_bit_words_holding_twelve_bit_data_get_a_note(tmp_path):
    path = tmp_path / "g12.tif"
    tifffile.imwrite(path, _pattern(np.uint16, 4095))
    f = read_image(path)  # read as 16-bit, as the file says, but the user is told
    assert f.bit_depth == 16 and any("--bit-depth 12" in n for n in f.notes)
    assert not read_image(path, bit_depth=12).notes
    tifffile.imwrite(path, _pattern(np.uint16, 65535))
    assert not read_image(path).notes


def test_a_region_fails_the_image_only_when_a_window_reaches_the_region_threshold(model,
                                                                                  tmp_path):
    path = tmp_path / "dim.png"
    Image.fromarray(_image(512, 512, cells=[(1, 1)], value=150)).save(path)
    frame = read_image(path)
    with Classifier.open(model, batch=4, threads=1) as clf:
        assert clf.region_threshold is None  # the test model carries none: the paper's rule
        base = clf.classify(frame)
    assert base.verdict is Status.FAIL and len(base.regions) == 1 and base.weak_regions == 0
    top = base.regions[0].max_probability
    assert 0.5 <= top < 0.99
    with Classifier.open(model, batch=4, threads=1, region_threshold=top + 0.005) as clf:
        r = clf.classify(frame)
    # the same positive windows, but the region is weak: reported, not failed
    assert r.verdict is Status.PASS and r.regions == [] and r.weak_regions == 1
    assert r.positives == base.positives
    assert "1 weak region below p" in r.summary()
    assert r.to_dict()["weak_regions"] == 1 and r.to_dict()["region_threshold"] == top + 0.005
    assert overlay_caption(r).endswith(f"; 1 weak region under p {top + 0.005:g} (tinted, not "
                                       "outlined)")
    assert "weak" not in overlay_caption(base)
    with pytest.raises(ValueError, match="region threshold"):
        Classifier.open(model, threshold=0.6, region_threshold=0.55, threads=1)


def test_the_model_carries_its_region_threshold(tmp_path):
    pytest.importorskip("onnx")
    from export.onnx import ExportError, export_onnx

    _brightness_network(tmp_path / "fusion.pt")
    path = export_onnx(tmp_path / "fusion.pt", tmp_path / "rt.onnx", region_threshold=0.97).path
    with Classifier.open(path, threads=1) as clf:
        assert clf.region_threshold == 0.97 and clf.region_threshold_source == "the model's"
    with Classifier.open(path, threads=1, region_threshold=0.6) as clf:
        assert clf.region_threshold == 0.6  # the command line wins
    with pytest.raises(ExportError, match="within \\[0.5, 1\\]"):
        export_onnx(tmp_path / "fusion.pt", tmp_path / "bad.onnx", region_threshold=0.3)


def test_a_whitening_classifier_can_carry_its_own_haze_floor(tmp_path):
    pytest.importorskip("onnx")
    from export.onnx import ExportError, export_onnx
    from model.attention import AttentionFusionNet, FusionSpec
    from model.train import CHECKPOINT_FORMAT

    torch = pytest.importorskip("torch")
    spec = FusionSpec(width=0.125, in_channels=1, whiten=True)
    torch.save({"format": CHECKPOINT_FORMAT, "network": "fusion", "spec": spec.to_dict(),
                "settings": {}, "model": AttentionFusionNet(spec).eval().state_dict(),
                "epoch": 0, "history": [], "head_digest": "", "pipeline": {}},
               tmp_path / "w.pt")
    path = export_onnx(tmp_path / "w.pt", tmp_path / "w.onnx", haze_floor=0.005).path
    with Classifier.open(path, threads=1) as clf:
        assert clf.prep.haze_floor == 0.005
    with Classifier.open(FUSION, threads=1) as clf:
        assert clf.prep.haze_floor == 0.04  # the shipped model says none: the default
    _brightness_network(tmp_path / "plain.pt")  # no whitening: its frames are not checked
    with pytest.raises(ExportError, match="a haze floor is a whitening window classifier's"):
        export_onnx(tmp_path / "plain.pt", tmp_path / "bad.onnx", haze_floor=0.01)
    with pytest.raises(ExportError, match=r"within \[0, 1\)"):
        export_onnx(tmp_path / "w.pt", tmp_path / "bad.onnx", haze_floor=1.5)
