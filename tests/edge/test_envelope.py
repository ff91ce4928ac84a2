"""The envelope check: its statistics against plain NumPy, its message, and the pipeline's ERROR
for frames of a far-off head (through the real pipeline, on the small head)."""

import json
import math

import numpy as np
import pytest

from edge import envelope as E
from edge.pipeline import NO_ENVELOPE, PipelineError, UnlikeTrainingError, process_roi

CAM = E.Camera(64.0, 2.2, 0.25)
H, W = 256, 320


def synthetic(haze=(3.0, 3.2, 2.8, 3.1, 2.9, 3.0), noise=1.0, black=64.0, seed=0,
              field=None) -> np.ndarray:
    """Six frames of a Gaussian haze with the camera model's noise times ``noise``, rounded as
    a sensor rounds; ``field`` (H, W) multiplies the haze."""
    rng = np.random.default_rng(seed)
    f = np.ones((H, W)) if field is None else field
    out = np.empty((6, H, W), np.uint16)
    for s, h in enumerate(haze):
        level = h * f
        sigma = noise * np.sqrt(CAM.read_noise_dn ** 2 + CAM.conversion_gain * level)
        out[s] = np.clip(np.floor(black + level + sigma * rng.standard_normal((H, W)) + 0.5),
                         0, 4095)
    return out


def sampled(frames: np.ndarray) -> np.ndarray:
    rows = E.sampled_rows(frames.shape[1])
    return np.stack([frames[:, r:r + 2] for r in rows], axis=1).reshape(6, -1, frames.shape[2])


def grouped_quantile(v: np.ndarray, q: float) -> float:
    """The quantile of whole-DN values as grouped data: value n spread over n +- 0.5."""
    values, counts = np.unique(np.round(v), return_counts=True)
    cum = np.cumsum(counts)
    i = int(np.searchsorted(cum, q * v.size))
    before = cum[i - 1] if i else 0
    return float(values[i] - 0.5 + (q * v.size - before) / counts[i])


def reference_haze(v: np.ndarray, black: float) -> float:
    """The clipped mean of the module docstring, in plain NumPy on the values."""
    med = np.median(v)
    q25, q75 = np.percentile(v, [25, 75])
    half = max(E.HAZE_CLIP * (q75 - q25) / 1.349, 2.0)
    return float(v[np.abs(v - med) <= half + 0.5].mean() - black)


def test_levels_balance_and_dark_match_numpy():
    haze = (3.0, 3.5, 2.5, 3.2, 2.9, 4.0)
    fr = synthetic(haze)
    got = E.measure(fr, CAM)
    s = sampled(fr).astype(np.float64)
    for k, h in enumerate(haze):
        assert got[f"haze{k}"] == pytest.approx(h, abs=0.05)
        assert got[f"haze{k}"] == pytest.approx(reference_haze(s[k].ravel(), 64.0), abs=0.03)
        assert got[f"balance{k}"] == pytest.approx(h / np.mean(haze), abs=0.02)
    # grouped data: within half a DN step of NumPy's percentile of the same pixels
    assert got["dark"] == pytest.approx(np.percentile(s, 0.5), abs=0.6)
    assert got["saturated"] == 0.0


@pytest.mark.parametrize("factor", [1.0, 2.0, 0.7])
def test_noise_is_the_ratio_to_the_camera_model(factor):
    got = E.measure(synthetic(noise=factor, seed=3), CAM)
    # rounding to whole DN adds 1/12 DN^2: 1.5 % of the model's variance at this haze
    assert got["noise"] == pytest.approx(factor, rel=0.04)


def test_contrast_is_the_fixed_layers_feature():
    fr = synthetic(seed=5)
    got = E.measure(fr, CAM)
    s = sampled(fr).astype(np.float64)
    cells = s[:, 0::2, 0::2] + s[:, 0::2, 1::2] + s[:, 1::2, 0::2] + s[:, 1::2, 1::2]
    srt = np.sort(cells, axis=0)
    contrast = srt[5] - srt[:3].mean(axis=0)
    assert got["contrast"] == pytest.approx(np.median(contrast), abs=1 / 3)


def test_falloff_is_corner_over_centre_haze():
    yn = (2 * (np.arange(H) + 0.5) / H - 1)[:, None]
    xn = (2 * (np.arange(W) + 0.5) / W - 1)[None, :]
    field = 1.0 - 0.3 * (xn ** 2 + yn ** 2)
    fr = synthetic(haze=(20.0,) * 6, field=field, seed=7)
    got = E.measure(fr, CAM)
    s = sampled(fr).astype(np.float64)
    rows = E.sampled_rows(H)
    r2 = np.concatenate([(yn[[r, r + 1]] ** 2 + xn ** 2) for r in rows])
    inner, outer = [], []
    for k in range(6):  # each state's pixels within FALLOFF_CLIP robust sigmas of its median
        v = s[k]
        q25, med, q75 = (grouped_quantile(v, q) for q in (0.25, 0.5, 0.75))
        near = np.abs(np.round(v) - med) <= max(E.FALLOFF_CLIP * (q75 - q25) / 1.349, 2.0)
        inner.append(v[near & (r2 < E.INNER_R2)].mean() - 64.0)
        outer.append(v[near & (r2 > E.OUTER_R2)].mean() - 64.0)
    assert got["falloff"] == pytest.approx(np.mean(outer) / np.mean(inner), rel=0.02)
    true = s[:, r2 > E.OUTER_R2].mean() - 64.0, s[:, r2 < E.INNER_R2].mean() - 64.0
    assert got["falloff"] < 0.9 and true[0] / true[1] < got["falloff"]  # it reads less


def test_calibration_shapes_and_bit_depth_agree():
    fr = synthetic(seed=9)
    plain = E.measure(fr, CAM)
    # 10 DN more everywhere, taken off again by a dark level given three ways
    lifted = fr + np.uint16(10)
    for dark in (np.full(6, 10.0), np.full((H, W), 10.0), np.full((6, H, W), 10.0)):
        got = E.measure(lifted, CAM, dark=dark.astype(np.float32))
        assert got == pytest.approx(plain, abs=1e-6)
    # a gain map of 2 on frames of half the light above black
    half = E.measure(fr, CAM, dark=np.full(6, 64.0, np.float32),
                     gain=np.full((6, H, W), 2.0, np.float32), offset=64.0)
    for k in range(6):
        assert half[f"haze{k}"] == pytest.approx(2 * plain[f"haze{k}"], rel=2e-3)
    # a 10-bit camera's frames are judged on the 12-bit scale the network's input has
    ten = E.measure((fr // 4).astype(np.uint16), CAM, bit_depth=10)
    assert ten["dark"] == pytest.approx(plain["dark"], abs=4.0)
    assert ten["haze0"] == pytest.approx(plain["haze0"], abs=2.0)


def test_saturated_frames_have_no_noise_to_measure():
    fr = np.full((6, H, W), 4095, np.uint16)
    got = E.measure(fr, CAM)
    assert got["saturated"] == 1.0 and math.isnan(got["noise"])


# -- the envelope and its message ---------------------------------------------------------------
def envelope(**ranges) -> E.Envelope:
    return E.parse(json.dumps({"version": 1, "camera": CAM.to_dict(),
                               "ranges": {k: list(v) for k, v in ranges.items()}}))


def test_message_names_the_statistic_its_value_and_the_trained_range():
    env = envelope(noise=(0.9, 1.1), haze0=(2.0, 4.0), dark=(58.0, 62.0))
    values = {"noise": 2.31, "haze0": 5.0, "dark": 60.0}
    found = E.outside(values, env)
    assert [o.name for o in found] == ["noise", "haze0"]  # furthest out first
    assert E.reason(found) == (
        "frames unlike the training frames: noise 2.1 x the trained range (2.31 x the camera "
        "model's; trained 0.9 to 1.1); also outside: haze of state 0")
    low = E.outside({"noise": 1.0, "haze0": 1.0, "dark": 60.0}, env)
    assert E.reason(low).startswith("frames unlike the training frames: haze of state 0 0.5 x "
                                    "the trained range (1 DN above black; trained 2 to 4")
    nan = E.outside({"noise": math.nan, "haze0": 3.0, "dark": 60.0}, env)
    assert E.reason(nan) == ("frames unlike the training frames: noise cannot be measured "
                             "(trained 0.9 to 1.1)")
    assert E.outside({"noise": 1.0, "haze0": 3.0, "dark": 60.0}, env) == []


CAMERA = json.dumps(CAM.to_dict())


@pytest.mark.parametrize("text, match", [
    ("{", "is not JSON"),
    ('{"version": 9}', "version 9"),
    ('{"version": 1, "camera": {"black_dn": 64}, "ranges": {"noise": [1, 2]}}', "camera"),
    ('{"version": 1, "camera": ' + CAMERA + ', "ranges": {"glow": [1, 2]}}',
     "'glow', a statistic this runtime does not measure"),
    ('{"version": 1, "camera": ' + CAMERA + ', "ranges": {"noise": [2, 1]}}',
     r"range \[2, 1\]"),
])
def test_unreadable_envelopes_are_refused(text, match):
    with pytest.raises(E.EnvelopeMetadataError, match=match):
        E.parse(text)


# -- through the real pipeline ------------------------------------------------------------------
class WithMetadata:
    """An engine with other metadata (the shipped network's weights, another envelope)."""

    def __init__(self, engine, metadata):
        self._engine, self.metadata = engine, metadata

    def __getattr__(self, name):
        return getattr(self._engine, name)


@pytest.fixture(scope="module")
def engine():
    pytest.importorskip("onnxruntime")
    from edge.engine import open_engine
    from tests.conftest import SHIPPED_MODEL

    with open_engine(SHIPPED_MODEL, threads=2, max_batch=4) as e:
        yield e


@pytest.fixture(scope="module")
def small_envelope(small_cfg):
    """The envelope of a few training RoIs of the small head, as the export measures it."""
    from export.envelope_fit import fit

    return fit(small_cfg, samples=4).to_json()


def test_a_model_without_an_envelope_is_not_checked_and_says_so(engine, small_cfg):
    from edge.sim import OpticsRenderer, generate_sample

    frames = OpticsRenderer(small_cfg).render(generate_sample(5, (20, 20), 0.0), (0.0, 0.0),
                                              1).frames
    res = process_roi(frames, None, WithMetadata(engine, {}), small_cfg)
    assert NO_ENVELOPE in res.notes
    bad = WithMetadata(engine, {"envelope": '{"version": 7}'})
    with pytest.raises(PipelineError, match="RoI 0: the envelope in .* has version 7"):
        process_roi(frames, None, bad, small_cfg)


def far_off(small_cfg, **sim):
    data = small_cfg.model_dump(mode="json")
    data["simulation"].update(sim)
    return type(small_cfg).model_validate(data)


# the camera's gain scales its signal, read noise and DN per electron; noise x2: read noise x2
# and shot noise x2 (4 x the DN per electron)
FAR_OFF = {
    "gain x2": (dict(read_noise_dn=4.4, conversion_gain_dn_per_e=0.5, background_dn=6.0),
                ("haze of state", "noise", "contrast")),
    "gain x0.5": (dict(read_noise_dn=1.1, conversion_gain_dn_per_e=0.125, background_dn=1.5),
                  ("haze of state", "noise", "contrast")),
    "noise x2": (dict(read_noise_dn=4.4, conversion_gain_dn_per_e=1.0), ("noise",)),
    "black level 32 DN": (dict(dark_offset_dn=32.0), ("dark level",)),
    "one LED group at 30 %": ({}, ("balance of state 2", "haze of state 2")),
}


@pytest.mark.parametrize("case", ["normal", *FAR_OFF])
def test_far_off_heads_give_error_and_a_normal_one_passes(case, engine, small_cfg,
                                                          small_envelope):
    from edge.inspection import RoiInput, inspect_sample
    from edge.sim import OpticsRenderer, generate_sample
    from edge.verdict import Status

    cfg = far_off(small_cfg, **FAR_OFF[case][0]) if case != "normal" else small_cfg
    optics = OpticsRenderer(cfg)
    if case.startswith("one LED group"):
        optics.field[2, 0] *= 0.3
    g = small_cfg.stage.roi_grid
    sample = generate_sample(424242, g.extent_mm, 0.0)
    rois = [RoiInput(i, g.roi_origin_mm(i), lambda i=i: optics.render(
        sample, g.roi_origin_mm(i), noise_seed=i).frames) for i in range(g.count)]
    eng = WithMetadata(engine, {"envelope": small_envelope})
    v = inspect_sample("S", rois, g.count, eng, None, small_cfg)
    if case == "normal":
        assert v.status is Status.PASS, v.reason
        return
    assert v.status is Status.ERROR
    assert v.reason.startswith("RoI 0: frames unlike the training frames: ")
    first = v.reason.split(": ")[2]
    assert first.startswith(FAR_OFF[case][1]), first
    assert "x the trained range" in first and "trained " in first


def test_the_check_is_an_unlike_training_error_and_warm_up_skips_it(engine, small_cfg,
                                                                     small_envelope):
    from edge.pipeline import warm_up

    eng = WithMetadata(engine, {"envelope": small_envelope})
    frames = np.full((6, 1024, 1024), 64, np.uint16)
    with pytest.raises(UnlikeTrainingError, match="RoI 4: frames unlike the training frames"):
        process_roi(frames, None, eng, small_cfg, index=4)
    warm_up(small_cfg, eng, None, (1024, 1024))  # synthetic frames: measured, not judged


def test_calibrated_frames_are_judged_as_corrected(tmp_path, engine, small_cfg, small_envelope):
    """The calibration's dark level is taken off and the training camera's black level put
    back: a dark level that drifted since the calibration shows, one it removed does not."""
    from edge import calibration as calib
    from edge.sim import OpticsRenderer, generate_sample

    eng = WithMetadata(engine, {"envelope": small_envelope})
    sample = generate_sample(77, small_cfg.stage.roi_grid.extent_mm, 0.0)

    def frames(cfg):
        return OpticsRenderer(cfg).render(sample, (0.0, 0.0), 3).frames

    def cal(dark):
        return calib.load(calib.save(tmp_path / f"d{dark}.npz", dark=np.full(6, dark),
                                     gain=np.ones(6), head=small_cfg))

    assert process_roi(frames(small_cfg), cal(64.0), eng, small_cfg).corrected
    other = far_off(small_cfg, dark_offset_dn=100.0)  # another camera, calibrated: judged
    process_roi(frames(other), cal(100.0), eng, small_cfg)
    # its dark drifted by 36 DN: every state's haze is 36 DN too high
    with pytest.raises(UnlikeTrainingError, match=r"RoI 0: frames unlike the training frames: "
                                                  r"haze of state \d 1\d x the trained range"):
        process_roi(frames(other), cal(64.0), eng, small_cfg)


def test_windows_smaller_than_a_roi_are_not_judged(engine, small_cfg, small_envelope):
    from edge.pipeline import SMALL_FRAMES

    data = small_cfg.model_dump(mode="json")
    data["camera"].update(width=256, height=224)
    cfg = type(small_cfg).model_validate(data)
    eng = WithMetadata(engine, {"envelope": small_envelope})
    res = process_roi(np.full((6, 224, 256), 64, np.uint16), None, eng, cfg)
    assert SMALL_FRAMES.format(px=E.MIN_FRAME_PX) in res.notes
