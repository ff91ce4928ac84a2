"""Window-level evaluation (weak-scratch paper, Tables II and III) and its traditional baselines.

Tiny sets only: 512 px frames, a few windows; a model is trained for one tiny epoch and
exported once per module."""

import json
from pathlib import Path

import numpy as np
import pytest

from edge.cli import main
from edge.sim.darkfield import DarkfieldConfig, frames_at
from model.evaluate import wilson
from model.window_baselines import (
    GABOR_TAUS,
    GaborWindow,
    OtsuWindow,
    best_threshold,
    gabor_kernels,
    largest_component,
    line_shape,
    make_baseline,
)
from model.window_eval import (
    WindowEvalError,
    describe,
    evaluate_windows,
    heldout_set,
    image_metrics,
    misses_by_scratch,
    pr_curve,
    window_metrics,
)

# a shipped six-state network: 24 channels in, a score map out, not a window classifier
SIX_STATE_MODEL = Path(__file__).resolve().parents[2] / "edge" / "models" / "scratch_unet.onnx"
TINY = dict(split=(3, 2, 2), frame_px=512, test_windows=16, val_windows=8, images=1,
            threads=1, batch=4, progress=False)


@pytest.fixture(scope="module")
def classifier_onnx(tmp_path_factory):
    """A single-frame classifier exported from one tiny darkfield epoch on frames 0-2
    (validation 3-4), so TINY's test frames 5-6 are unseen."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnx")
    from edge.config import load
    from export.onnx import export_onnx
    from model.train import Trainer, TrainSettings

    root = tmp_path_factory.mktemp("classifier")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny batch gains nothing from threads on a busy machine
    try:
        s = TrainSettings(network="fusion", data="darkfield", width=0.125, frame_px=512,
                          train_images=3, val_images=2, val_windows=8, batch_size=4,
                          steps_per_epoch=1, epochs=1, window_cache=str(root / "cache"))
        best = Trainer(s, load(), root / "run", progress=False).run()
        return export_onnx(best, root / "fusion_tiny.onnx").path
    finally:
        torch.set_num_threads(threads)


# -- metrics --------------------------------------------------------------------------------
def test_window_metrics_count_and_give_wilson_intervals():
    labels = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 1])
    pred = np.array([1, 1, 1, 0, 1, 0, 0, 0, 0, 0])
    m = window_metrics(pred, labels)
    assert (m["tp"], m["fp"], m["fn"], m["tn"], m["windows"]) == (3, 1, 2, 4, 10)
    assert m["precision"] == 0.75 and m["recall"] == 0.6 and m["accuracy"] == 0.7
    assert m["f1"] == pytest.approx(2 * 3 / (2 * 3 + 1 + 2), abs=1e-4)
    assert m["precision_ci"] == wilson(3, 4) and m["recall_ci"] == wilson(3, 5)
    assert m["accuracy_ci"] == wilson(7, 10)
    lo, hi = m["f1_ci"]
    assert lo <= m["f1"] <= hi
    assert window_metrics(pred, labels) == m  # the bootstrap is seeded
    assert window_metrics(pred, labels, bootstrap=0)["f1_ci"] is None
    json.dumps(m)


def test_frame_intervals_see_a_frame_whose_windows_are_all_missed():
    # 10 frames of 20 scratch windows each; every window of frame 0 missed, the rest found
    frames = np.repeat(np.arange(10), 20)
    labels = np.ones(200, int)
    pred = frames != 0
    m = window_metrics(pred, labels, frames=frames)
    assert m["recall"] == 0.9
    by_frame = m["by_frame_ci"]
    assert by_frame["frames"] == 10 and by_frame["precision"] == [1.0, 1.0]
    lo, hi = by_frame["recall"]
    # the missed frame is in a resample 0, 1, 2... times: recall moves in steps of a frame,
    # far wider than the windows' own interval, which counts 200 independent windows
    assert lo <= 0.8 and hi == 1.0
    assert hi - lo > m["recall_ci"][1] - m["recall_ci"][0]
    # the same misses spread one per frame: resampling frames barely moves recall
    spread = window_metrics(np.arange(200) % 20 != 0, labels, frames=frames)["by_frame_ci"]
    assert spread["recall"] == [0.95, 0.95]
    assert "by_frame_ci" not in window_metrics(pred, labels)
    from model.window_eval import describe

    row = describe({"net": m}).splitlines()[2]
    assert f"[{100 * lo:.1f}, 100.0], " in row  # the printed table shows them too
    assert "| -, - |" in describe({"net": window_metrics(pred, labels)})
    with pytest.raises(ValueError, match="one frame per window"):
        window_metrics(pred, labels, frames=frames[:5])


def test_metrics_without_positives_are_none_not_a_division_by_zero():
    m = window_metrics(np.zeros(4, bool), np.zeros(4, int))
    assert m["precision"] is None and m["recall"] is None and m["f1"] is None
    assert m["accuracy"] == 1.0 and m["precision_ci"] is None
    with pytest.raises(ValueError, match="one length"):
        window_metrics(np.zeros(3), np.zeros(4))


def test_pr_curve_counts_each_threshold_and_refuses_mismatched_vectors():
    p = np.array([0.9, 0.6, 0.4, 0.2, 0.7])
    y = np.array([1, 1, 1, 0, 0])
    c = {r["threshold"]: r for r in pr_curve(p, y, (0.5, 0.3, 0.5, 0.95))}
    assert list(c) == [0.3, 0.5, 0.95]  # sorted, each once
    assert (c[0.3]["tp"], c[0.3]["fp"], c[0.3]["fn"]) == (3, 1, 0)
    assert (c[0.5]["precision"], c[0.5]["recall"], c[0.5]["f1"]) == (0.6667, 0.6667, 0.6667)
    assert c[0.95]["precision"] is None and c[0.95]["recall"] == 0.0 and c[0.95]["f1"] == 0.0
    with pytest.raises(ValueError, match="one length"):
        pr_curve(p, y[:3])


def test_image_metrics():
    m = image_metrics([True, True, False, True], [True, True, True, False])
    assert (m["with_scratch"], m["clean"], m["detected"], m["false_alarms"]) == (3, 1, 2, 1)
    assert m["detection_rate"] == pytest.approx(0.6667, abs=1e-4)
    assert m["false_alarm_rate"] == 1.0 and m["false_alarm_rate_ci"] == wilson(1, 1)


# -- threshold tuning -----------------------------------------------------------------------
def test_best_threshold_maximises_accuracy_and_prefers_the_stricter_cut_on_a_tie():
    # cut 0.8: 3 right; 0.4: 2; 0.35: 3; 0.1: 2; +inf: 2 -> 0.8 (the higher of the two 3s)
    thr, acc = best_threshold(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1]))
    assert (thr, acc) == (0.8, 0.75)
    # tied scores go in together: cut 2 takes both (2 false alarms), cut 1 is the best
    thr, acc = best_threshold(np.array([3.0, 2.0, 2.0, 1.0, 1.0]), np.array([0, 1, 0, 1, 1]))
    assert (thr, acc) == (1.0, 0.6)
    # with nothing informative, calling nothing positive is as right as it gets here
    thr, acc = best_threshold(np.array([5.0, 5.0, 5.0]), np.array([1, 0, 0]))
    assert thr == np.inf and acc == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="at least one scratch"):
        best_threshold(np.array([1.0, 2.0]), np.array([0, 0]))


# -- Otsu -----------------------------------------------------------------------------------
def test_largest_component_and_its_line_shape():
    fg = np.zeros((64, 64), bool)
    idx = np.arange(40)
    fg[10 + idx, 5 + idx] = True  # a diagonal line: 8-connected, one component
    fg[50:53, 50:53] = True  # a 9 px blob
    n, vr, vc, cv = largest_component(fg)
    assert n == 40
    length, width = line_shape(vr, vc, cv)
    assert length == pytest.approx(np.sqrt(2 * (40 ** 2 - 1)), rel=1e-6)
    assert width == pytest.approx(1.0)  # a one-pixel line is one pixel wide
    assert largest_component(np.zeros((8, 8), bool))[0] == 0


def _noise(rng, n=1, side=128, level=0.1, sigma=0.002):
    return (level + sigma * rng.standard_normal((n, 1, side, side))).astype(np.float32)


def _line(win, angle_deg, amplitude, length=100):
    side = win.shape[-1]
    a = np.deg2rad(angle_deg)
    t = np.linspace(-length / 2, length / 2, 4 * length)
    r = np.clip(np.round(side / 2 + t * np.sin(a)).astype(int), 0, side - 1)
    c = np.clip(np.round(side / 2 + t * np.cos(a)).astype(int), 0, side - 1)
    win[0, r, c] += amplitude
    return win


def test_otsu_calls_a_bright_line_positive_and_a_bright_speck_negative():
    rng = np.random.default_rng(0)
    lines = np.stack([_line(w, a, 0.05) for w, a in zip(_noise(rng, 4), (0, 30, 75, 120),
                                                          strict=True)])
    specks = _noise(rng, 4)
    yy, xx = np.mgrid[:128, :128]
    for k, w in enumerate(specks):
        w[0] += 0.05 * np.exp(-((yy - 40 - 10 * k) ** 2 + (xx - 64) ** 2) / (2 * 4.0 ** 2))
    windows = np.concatenate([lines, specks])
    labels = np.array([1] * 4 + [0] * 4)
    otsu = OtsuWindow()
    scores = otsu.scores(windows)
    assert scores[:4].min() > 10 > scores[4:].max()
    otsu.fit(windows, labels)
    assert np.array_equal(otsu.predict(windows), labels.astype(bool))
    assert otsu.params()["aspect_threshold"] == otsu.threshold


# -- Gabor ----------------------------------------------------------------------------------
def test_gabor_kernels_ignore_level_and_gradient_and_have_one_noise_scale():
    k = gabor_kernels()
    assert k.shape[0] == 12 and k.shape[1] == k.shape[2]
    assert np.allclose(k.sum(axis=(1, 2)), 0.0, atol=1e-5)
    assert np.allclose(np.sqrt((k.astype(np.float64) ** 2).sum(axis=(1, 2))), 1.0, atol=1e-5)
    half = k.shape[1] // 2
    y, x = np.mgrid[-half:half + 1, -half:half + 1]
    # even (point-symmetric) kernels: a linear ramp (vignetting) gives no response
    assert np.allclose((k * (3.0 * x + 2.0 * y)).sum(axis=(1, 2)), 0.0, atol=1e-3)


def test_gabor_finds_a_faint_line_and_ignores_a_haze_slope():
    rng = np.random.default_rng(1)
    sigma = 0.002
    # 2 sigma per pixel: a pixel alone is within the noise's tails; along its length it is not
    lines = np.stack([_line(w, a, 2.0 * sigma, length=120)
                      for w, a in zip(_noise(rng, 4, sigma=sigma), (10, 50, 95, 140),
                                      strict=True)])
    # vignetting's slope across a window (25 sigma): must not become a line at the edges
    ramp = np.linspace(0.0, 0.05, 128, dtype=np.float32)[None, None, None, :]
    background = np.concatenate([_noise(rng, 2, sigma=sigma), _noise(rng, 2, sigma=sigma)
                                 + ramp])
    windows = np.concatenate([lines, background])
    labels = np.array([1] * 4 + [0] * 4)
    g = GaborWindow()
    counts = g.scores(windows)
    assert counts.shape == (8, len(GABOR_TAUS))
    j = GABOR_TAUS.index(5.0)
    assert counts[:4, j].min() > counts[4:, j].max()
    g.fit(windows, labels)
    assert g.validation_accuracy == 1.0
    assert np.array_equal(g.predict(windows), labels.astype(bool))
    assert {"tau", "n_min", "orientations"} <= g.params().keys()


def test_baselines_refuse_bad_windows_and_unknown_names():
    with pytest.raises(ValueError, match="N x 1 x W x W"):
        OtsuWindow().scores(np.zeros((2, 24, 64, 64), np.float32))
    with pytest.raises(ValueError, match="unknown window baseline"):
        make_baseline("sobel")
    with pytest.raises(RuntimeError, match="fit it"):
        GaborWindow().predict(np.zeros((1, 1, 64, 64), np.float32))


# -- sets and the evaluation ------------------------------------------------------------------
def test_full_size_frames_are_the_simulators_defaults():
    assert frames_at(2048) == DarkfieldConfig()
    small = frames_at(512)
    assert small.shape == (512, 512) and small.scratch_length_px == (30.0, 375.0)
    with pytest.raises(ValueError, match="frame_px"):
        frames_at(255)


def test_heldout_sets_visit_every_frame_of_their_split(tmp_path):
    ws = heldout_set([7, 8, 9, 10, 11], frame_px=512, count=10, cache=tmp_path)
    assert len(ws) == 10 and set(ws.image_seeds.tolist()) == {7, 8, 9, 10, 11}
    again = heldout_set([7, 8, 9, 10, 11], frame_px=512, count=10, cache=tmp_path)
    assert again.path == ws.path and np.array_equal(again.raw, ws.raw)


def test_missed_windows_are_traced_to_the_scratches_they_lie_on(tmp_path):
    from edge.sim.darkfield import DarkfieldRenderer

    ws = heldout_set([7, 8, 9, 10, 11], frame_px=512, count=20, cache=tmp_path)
    scratch = ws.labels == 1
    assert scratch.sum() >= 3
    none = misses_by_scratch(scratch, ws, frames_at(512))  # every scratch window found
    assert none == []
    rows = misses_by_scratch(np.zeros(len(ws), bool), ws, frames_at(512), top=100)
    # every scratch window is missed: each is counted once, on a scratch of its own frame
    assert sum(r["missed"] for r in rows) == sum(r["windows"] for r in rows) == scratch.sum()
    assert [r["missed"] for r in rows] == sorted((r["missed"] for r in rows), reverse=True)
    for r in rows:
        truth = DarkfieldRenderer(frames_at(512)).render(r["frame"]).scratches[r["scratch"]]
        assert (r["chain"], r["length_px"]) == (truth.chain, round(truth.length_px))
    # one window found: it leaves its scratch's count of missed windows, not its windows
    found = np.zeros(len(ws), bool)
    found[np.flatnonzero(scratch)[0]] = True
    fewer = misses_by_scratch(found, ws, frames_at(512), top=100)
    assert sum(r["missed"] for r in fewer) == scratch.sum() - 1
    assert len(misses_by_scratch(np.zeros(len(ws), bool), ws, frames_at(512), top=1)) == 1


def test_evaluation_of_a_model_and_both_baselines(classifier_onnx, tmp_path):
    r = evaluate_windows({"fusion_tiny": classifier_onnx}, ["otsu", "gabor"], cache=tmp_path,
                         **TINY)
    assert list(r) == ["fusion_tiny", "otsu", "gabor"]
    for name, m in r.items():
        # scored windows and the faint ones beside them make up the set
        assert m["windows"] + m["faint_windows"] == 16, name
        assert 0 <= m["faint_flagged"] <= m["faint_windows"]
        bands = m["recall_by_visibility"]
        assert bands[0]["visibility"] == [5.0, 8.0] and bands[-1]["visibility"][1] is None
        # scored at visibility 8 (the default): the 5-8 band is faint, counted neither way
        assert sum(b["windows"] for b in bands[1:]) == m["scratch_windows"]
        assert sum(b["detected"] for b in bands[1:]) == m["tp"]
        assert m["faint_windows"] >= bands[0]["windows"]
        # the Rose criterion's figures beside them: every band a scratch, the same decisions
        rose = m["at_rose_limit"]
        assert rose["visibility_limit"] == 5.0
        assert rose["windows"] + rose["faint_windows"] == 16
        assert sum(b["windows"] for b in bands) == rose["scratch_windows"]
        assert sum(b["detected"] for b in bands) == rose["tp"]
        assert rose["fp"] == m["fp"] and rose["tn"] == m["tn"]
        assert m["set"]["visibility_limit"] == 8.0 and m["set"]["texture"] == "none"
        for key in ("precision", "recall", "f1", "accuracy"):
            assert key in m and f"{key}_ci" in m, (name, key)
        im = m["images"]
        # test frame 5 as drawn (it has scratches) and scratch-free
        assert (im["images"], im["with_scratch"], im["clean"]) == (2, 1, 1), name
        assert im["faint_only_images"] == 0
        if name == "fusion_tiny":
            assert sum(x["missed"] for x in m["missed_scratches"]) <= m["fn"]
            # the operating point is one point of the curve
            at = [c for c in m["curve"] if c["threshold"] == m["threshold"]]
            assert [(c["tp"], c["fp"], c["fn"]) for c in at] == [(m["tp"], m["fp"], m["fn"])]
            found = [c["tp"] for c in m["curve"]]
            assert found == sorted(found, reverse=True)
            assert len(im["max_probability"]) == 2
            rows = im["by_threshold"]
            assert [r["threshold"] for r in rows] == [0.5, 0.8, 0.9, 0.95, 0.99, 0.999]
            assert rows[0]["false_alarms"] == int(im["false_alarms"])  # 0.5: the runtime's
            counts = [r["false_alarms"] for r in rows]
            assert counts == sorted(counts, reverse=True)
        assert im["test_seeds"] == [5]
        grid = im["grid_windows"]
        assert grid["windows"] + grid["faint_windows"] == 2 * 9  # 3 x 3 windows of 512 px
    assert set(r["fusion_tiny"]["set"]["test_seeds"]) == {5, 6}
    assert r["gabor"]["params"]["tau"] in GABOR_TAUS
    assert r["otsu"]["tuned_on"]["validation_windows"] == 8
    # every detector saw the same windows
    assert len({m["scratch_windows"] for m in r.values()}) == 1
    json.dumps(r)


@pytest.mark.parametrize("bayer, bit_depth", [(True, 12), (False, 8)])
def test_windows_are_cut_from_the_frame_prepared_whole_as_classify_prepares_it(tmp_path, bayer,
                                                                               bit_depth):
    from dataclasses import replace

    from edge.darkfield.frame_prep import FramePrep
    from edge.darkfield.noise import Sensor
    from edge.sim.darkfield import DarkfieldRenderer
    from model.window_eval import PreparedWindows, camera_sensor, frame_config, needs_prep

    cfg = frame_config(512, bayer, bit_depth)
    assert cfg == replace(frames_at(512), bayer=bayer, bit_depth=bit_depth)
    ws = heldout_set([7, 8], frame_px=512, count=6, cache=tmp_path, config=cfg)
    assert ws.path != heldout_set([7, 8], frame_px=512, count=6, cache=tmp_path).path
    if bayer:
        assert np.all(ws.origins % 2 == 0)
    assert needs_prep(cfg) and not needs_prep(frames_at(512))
    sensor = camera_sensor(cfg)
    assert sensor == Sensor(64 / 4095, 2.5 / 4095, 0.08 / 4095)  # the shipped model's spec
    view = PreparedWindows(ws, cfg)
    got = view.images(1, 5)
    assert got.shape == (4, 1, 256, 256) and len(view) == 6
    full = 2 ** bit_depth - 1
    for k, i in enumerate(range(1, 5)):
        raw = DarkfieldRenderer(cfg).render(int(ws.image_seeds[i])).image
        r, c = ws.origins[i]
        assert np.array_equal(raw[r:r + 256, c:c + 256], ws.raw[i])  # the set's own window
        prep = FramePrep(sensor, True)(raw.astype(np.float32) / full, bayer)
        assert prep.noise_matched == (bit_depth == 8)  # 8-bit steps: matched; mosaics: not
        assert np.array_equal(got[k, 0], prep.pixels[r:r + 256, c:c + 256])


def test_the_classifiers_own_frames_go_as_they_are_which_is_what_classify_gives_them():
    """evaluate-windows hands 12-bit grey frames over unprepared (needs_prep): it relies on
    classify leaving them alone, which this checks on frames of both sizes."""
    from edge.darkfield.frame_prep import FramePrep
    from edge.sim.darkfield import DarkfieldRenderer
    from model.window_eval import camera_sensor, needs_prep, prepared_frame
    from model.windows import image_windows

    prep = FramePrep(camera_sensor(), True)
    for px, seeds in ((512, range(10)), (2048, (92,))):
        cfg = frames_at(px)
        assert not needs_prep(cfg)
        for seed in seeds:
            frame = DarkfieldRenderer(cfg).render(seed)
            got = prep(frame.image.astype(np.float32) / 4095)
            assert not got.noise_matched, (px, seed, got.noise_ratio)
    # the grid of a prepared frame is cut from its prepared pixels
    pixels = prepared_frame(frame.image, cfg)
    origins, wins, _ = image_windows(frame, pixels=pixels)
    r, c = origins[7]
    assert np.array_equal(wins[7, 0], pixels[r:r + 256, c:c + 256])
    assert np.array_equal(image_windows(frame)[1], wins)  # left as it was, as said above


def test_a_noisier_camera_renders_every_level_noisier_and_its_frames_are_matched(tmp_path):
    from edge.darkfield.noise import noise_ratio
    from edge.sim.darkfield import DarkfieldRenderer
    from model.window_eval import camera_sensor, frame_config, needs_prep, prepared_frame

    cfg = frame_config(512, noise_scale=1.2)
    assert (cfg.read_noise_dn, cfg.conversion_gain) == pytest.approx((3.0, 0.08 * 1.44))
    assert needs_prep(cfg) and camera_sensor() == camera_sensor(frames_at(512))
    raw = DarkfieldRenderer(cfg).render(7).image
    plain = raw.astype(np.float32) / 4095
    assert noise_ratio(plain, camera_sensor()) == pytest.approx(1.2 * 1.02, rel=0.03)
    matched = prepared_frame(raw, cfg)
    assert noise_ratio(matched, camera_sensor()) == pytest.approx(1.02, rel=0.015)
    assert np.array_equal(prepared_frame(raw, cfg, noise_match=False), plain)
    with pytest.raises(WindowEvalError, match="noise_scale must be within 0.25-4, got 5"):
        frame_config(512, noise_scale=5)


def test_evaluation_on_bayer_frames_says_so(classifier_onnx, tmp_path):
    r = evaluate_windows({"m": classifier_onnx}, ["gabor"], cache=tmp_path, bayer=True,
                         **{**TINY, "test_windows": 8})
    for m in r.values():
        assert m["set"]["image"] == "Bayer mosaic, colour sites balanced"
        assert m["set"]["bit_depth"] == 12 and m["set"]["noise_match"] is True
        assert m["set"]["noise_scale"] == 1.0
        assert m["windows"] + m["faint_windows"] == 8
        assert m["images"]["grid_windows"]["windows"] + \
            m["images"]["grid_windows"]["faint_windows"] == 2 * 9
    assert evaluate_windows({"m": classifier_onnx}, [], cache=tmp_path,
                            **{**TINY, "images": 0})["m"]["set"]["image"] == "grey"


def test_frames_under_part_of_the_ring_and_the_ones_classify_would_refuse():
    from edge.sim.darkfield import DarkfieldRenderer
    from model.window_eval import frame_config, frames_refused, prepared_frame

    cfg = frame_config(512, lit_groups=[0], camera="line")
    assert cfg.lit == (0,) and cfg.camera == "line" and frame_config(512).lit == tuple(range(8))
    # one group of eight: an eighth of the haze, under a 3 % floor on these frames
    refused = frames_refused([5, 6], cfg, haze_floor=0.03)
    assert [r["frame"] for r in refused] == [5, 6]
    assert all(r["why"].startswith("is too dark: its haze (median) is") for r in refused)
    assert frames_refused([5, 6], cfg, haze_floor=0.001) == []
    assert frames_refused([5, 6], frame_config(512), haze_floor=0.03) == []
    with pytest.raises(WindowEvalError, match="lit_groups must be distinct groups"):
        frame_config(512, lit_groups=[9])
    # a frame too dark for classify is still prepared for measuring (and listed apart)
    mosaic = frame_config(512, bayer=True, lit_groups=[0])
    assert frames_refused([5], mosaic, haze_floor=0.03)[0]["why"].startswith("is too dark")
    raw = DarkfieldRenderer(mosaic).render(5).image
    assert prepared_frame(raw, mosaic).shape == (512, 512)


def test_evaluation_under_part_of_the_ring_says_so_and_lists_refused_frames(classifier_onnx,
                                                                              tmp_path):
    r = evaluate_windows({"m": classifier_onnx}, [], cache=tmp_path, lit_groups=[0, 4],
                         **{**TINY, "test_windows": 8, "images": 0})["m"]
    assert r["set"]["lit_groups"] == [0, 4] and r["set"]["camera"] == "area"
    assert isinstance(r["frames_refused"], list)
    # one group: every test frame too dark for classify, so no image is judged
    r = evaluate_windows({"m": classifier_onnx}, [], cache=tmp_path, lit_groups=[0],
                         **{**TINY, "test_windows": 8})["m"]
    assert [f["frame"] for f in r["frames_refused"]] == [5, 6]
    assert r["images"]["refused_images"] == 2 and r["images"]["images"] == 0
    spared = r["images"]["refused_if_judged"]
    assert spared["clean"] == 1 and spared["with_scratch"] + spared["clean"] <= 2
    assert "classify would refuse 2 of the frames" in describe({"m": r})
    assert "frames_refused" not in evaluate_windows(
        {"m": classifier_onnx}, [], cache=tmp_path, **{**TINY, "images": 0})["m"]


def test_development_frames_are_their_own_seeds(
        classifier_onnx, tmp_path):
    r = evaluate_windows({"m": classifier_onnx}, [], cache=tmp_path,
                         **{**TINY, "test_windows": 100, "images": 0}, on="development")
    assert r["m"]["set"]["on"] == "development"
    assert r["m"]["set"]["test_seeds"] == [300, 399]
    assert r["m"]["windows"] + r["m"]["faint_windows"] == 100
    with pytest.raises(WindowEvalError, match="images must be within 0..100"):
        evaluate_windows({"m": classifier_onnx}, [], cache=tmp_path, on="development",
                         **{**TINY, "images": 101})
    with pytest.raises(WindowEvalError, match="'development', got 'dev'"):
        evaluate_windows({"m": classifier_onnx}, [], cache=tmp_path, on="dev", **TINY)


def test_a_model_that_saw_the_test_frames_is_refused(classifier_onnx, tmp_path):
    # the model trained on frames 0-2 and validated on 3-4: a 2 / 1 / 2 split tests on 3-4
    with pytest.raises(WindowEvalError, match="trained or validated on frames"):
        evaluate_windows({"m": classifier_onnx}, [], cache=tmp_path,
                         **{**TINY, "split": (2, 1, 2)})


def test_bad_models_are_one_clear_message(tmp_path, capsys):
    assert main(["evaluate-windows", str(tmp_path / "missing.onnx")]) == 2
    err = capsys.readouterr().err
    assert "missing.onnx: no such model file" in err and "Traceback" not in err
    with pytest.raises(WindowEvalError, match="no such model file"):
        evaluate_windows({"m": tmp_path / "missing.onnx"}, [], cache=tmp_path, **TINY)
    pytest.importorskip("onnxruntime")
    if not SIX_STATE_MODEL.is_file():
        pytest.skip(f"{SIX_STATE_MODEL} is not shipped")
    assert main(["evaluate-windows", str(SIX_STATE_MODEL), "--split", "3", "2", "2",
                 "--frame-px", "512", "--cache", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "expected the single-frame window classifier" in err and "N x 1 x 256" in err
    assert main(["evaluate-windows"]) == 2
    assert "name at least one" in capsys.readouterr().err


def test_cli_writes_the_json_keyed_by_file_stem(classifier_onnx, tmp_path, capsys):
    out = tmp_path / "models" / "eval.json"
    assert main(["evaluate-windows", str(classifier_onnx), "--baseline", "otsu",
                 "--split", "3", "2", "2", "--frame-px", "512", "--windows", "8",
                 "--val-windows", "8", "--images", "0", "--cache", str(tmp_path / "cache"),
                 "--threads", "1", "--json", str(out), "--plot",
                 str(tmp_path / "pr.png"), "-q"]) == 0
    data = json.loads(out.read_text())
    from PIL import Image

    with Image.open(tmp_path / "pr.png") as im:  # a picture, not an empty file
        assert im.size[0] > 300 and len(im.getcolors(1 << 16)) > 10
    assert list(data) == ["fusion_tiny", "otsu"]
    tiny = data["fusion_tiny"]
    assert tiny["windows"] + tiny["faint_windows"] == 8 and "images" not in tiny
    assert tiny["set"]["visibility_limit"] == 8.0  # the default: what a person sees
    assert "fusion_tiny |" in capsys.readouterr().out
    assert main(["evaluate-windows", str(classifier_onnx), "--split", "3", "2", "2",
                 "--frame-px", "512", "--windows", "8", "--images", "0", "--cache",
                 str(tmp_path / "cache"), "--threads", "1", "--lit-groups", "0,4", "--camera",
                 "line", "--texture", "grain", "--visibility-limit", "5", "--json", str(out),
                 "-q"]) == 0
    r = json.loads(out.read_text())["fusion_tiny"]
    assert r["set"]["lit_groups"] == [0, 4] and r["set"]["texture"] == "grain"
    assert r["set"]["visibility_limit"] == 5.0 and "at_rose_limit" not in r
    assert main(["evaluate-windows", str(classifier_onnx), "--split", "3", "2", "2",
                 "--frame-px", "512", "--windows", "8", "--images", "0", "--cache",
                 str(tmp_path / "cache"), "--threads", "1", "--haze", "0.01,0.02", "--json",
                 str(out), "-q"]) == 0
    r = json.loads(out.read_text())["fusion_tiny"]
    assert r["set"]["haze"] == [0.01, 0.02] and len(r["frames_refused"]) == 2
    with pytest.raises(SystemExit):
        main(["evaluate-windows", str(classifier_onnx), "--haze", "0.3,0.1"])
    assert "expected a haze range as LO,HI" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["evaluate-windows", str(classifier_onnx), "--lit-groups", "0,x"])
    assert "expected LED groups as whole numbers from 0 joined by commas" in \
        capsys.readouterr().err


def test_the_rose_limit_scores_as_before_and_a_limit_below_it_is_refused(classifier_onnx,
                                                                          tmp_path):
    r = evaluate_windows({"fusion_tiny": classifier_onnx}, cache=tmp_path, visibility_limit=5,
                         **{**TINY, "images": 0})["fusion_tiny"]
    bands = r["recall_by_visibility"]
    assert sum(b["windows"] for b in bands) == r["scratch_windows"]
    assert "at_rose_limit" not in r and r["set"]["visibility_limit"] == 5.0
    with pytest.raises(WindowEvalError, match="at least 5"):
        evaluate_windows({"fusion_tiny": classifier_onnx}, cache=tmp_path, visibility_limit=4,
                         **TINY)
    with pytest.raises(WindowEvalError, match="texture must be one of"):
        evaluate_windows({"fusion_tiny": classifier_onnx}, cache=tmp_path, texture="velvet",
                         **TINY)


def test_textured_frames_have_their_own_set_and_are_prepared_as_classify_prepares_them(
        tmp_path):
    from model.window_eval import frame_config, needs_prep, prepared_frame

    plain, held = frame_config(512), frame_config(512, texture="heldout")
    assert held.texture == "heldout" and not needs_prep(plain) and needs_prep(held)
    a = heldout_set([7, 8], frame_px=512, count=4, cache=tmp_path)
    b = heldout_set([7, 8], frame_px=512, count=4, cache=tmp_path, config=held)
    assert a.path != b.path
    # the same scenes: only the background differs
    np.testing.assert_array_equal(a.origins, b.origins)
    from edge.sim.darkfield import DarkfieldRenderer

    raw = DarkfieldRenderer(held).render(7).image
    px = prepared_frame(raw, held)
    assert px.shape == raw.shape and px.dtype == np.float32 and np.isfinite(px).all()


def test_a_frame_classify_refuses_for_its_noise_is_listed_and_still_scored(tmp_path):
    """Grain that reads as noise beyond the check's limits: classify gives ERROR (listed by
    frames_refused); the evaluation matches its noise all the same to score it."""
    from edge.darkfield.noise import noise_ratio
    from model.window_eval import camera_sensor, frame_config, frames_refused, prepared_frame
    from model.windows import scale

    cfg = frame_config(512, noise_scale=2.6)  # beyond the check's 2x
    refused = frames_refused([7], cfg, 0.0)
    assert [f["frame"] for f in refused] == [7] and "noise" in refused[0]["why"]
    from edge.sim.darkfield import DarkfieldRenderer

    raw = DarkfieldRenderer(cfg).render(7).image
    before = noise_ratio(scale(raw, 12)[0], camera_sensor())
    after = noise_ratio(prepared_frame(raw, cfg), camera_sensor())
    assert before > 2.0 and abs(after - 1.02) < 0.1
    # a model fine-tuned on such frames (its own noise limits) takes them as they come, and
    # classify no longer refuses them for their noise
    from edge.darkfield.noise import NoiseLimits

    own = NoiseLimits((0.5, 4.0), (2.0, 4.0))
    assert np.array_equal(prepared_frame(raw, cfg, limits=own), scale(raw, 12)[0])
    assert frames_refused([7], cfg, 0.0, own) == []
