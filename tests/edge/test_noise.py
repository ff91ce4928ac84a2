"""``edge.darkfield.noise``: a frame's noise measured against the classifier's camera model, and
matched."""

import json

import numpy as np
import pytest

from edge.darkfield.noise import (
    LIMITS,
    REFERENCE_FULL_SCALE,
    REFERENCE_RATIO,
    NoiseError,
    Sensor,
    check,
    match,
    noise_ratio,
    works_in_noise_units,
)

FS = REFERENCE_FULL_SCALE
CAMERA = Sensor(64 / FS, 2.5 / FS, 0.08 / FS)  # the simulated camera's figures


def _haze(excess=1.0, shape=(512, 512), seed=0, slope_dn=0.0, bits=12):
    """A haze of 300-900 DN above black (a ramp across, plus ``slope_dn`` per px down) with the
    camera's noise times ``excess``, quantised to ``bits``, scaled to [0, 1]."""
    rng = np.random.default_rng(seed)
    h, w = shape
    signal = np.linspace(300, 900, w)[None, :] + slope_dn * np.arange(h)[:, None]
    sigma = np.sqrt(2.5 ** 2 + 0.08 * signal)
    dn = 64 + signal + excess * sigma * rng.normal(0, 1, shape)
    step = 2 ** (12 - bits) if bits < 12 else 1
    return (np.round(dn / step) * step / FS).astype(np.float32)


@pytest.mark.parametrize("excess", [0.7, 1.0, 1.2, 1.8])
def test_the_ratio_is_the_frames_noise_over_the_models(excess):
    assert noise_ratio(_haze(excess), CAMERA) == pytest.approx(excess, rel=0.01)


def test_a_steep_haze_dust_and_dead_pixels_do_not_move_it():
    pix = _haze(slope_dn=2.0)  # 2 DN more per row: a steep vignetting edge
    pix[100:130, 200:230] = 1.0  # saturated dust
    rng = np.random.default_rng(5)
    pix[rng.integers(0, 512, 300), rng.integers(0, 512, 300)] = 64 / FS  # dead pixels
    pix[:, 300] += 80 / FS  # a bright scratch down a column
    assert noise_ratio(pix, CAMERA) == pytest.approx(1.0, rel=0.02)


def test_eight_bit_steps_are_noise_to_the_network_and_are_measured():
    # 16 DN steps add 16 / sqrt(12) = 4.6 DN of quantisation noise to 6-9 DN of haze noise
    ratio = noise_ratio(_haze(bits=8), CAMERA)
    signal = np.linspace(300, 900, 512)
    expected = np.sqrt(np.mean(1 + (16 ** 2 / 12) / (2.5 ** 2 + 0.08 * signal)))
    assert ratio == pytest.approx(expected, rel=0.03) and ratio > 1.1


def test_a_matched_frame_reads_as_the_training_frames_and_keeps_its_levels():
    pix = _haze(1.3)
    pix[10:20, 10:20] = 1.0
    out = match(pix, noise_ratio(pix, CAMERA), CAMERA)
    assert noise_ratio(out, CAMERA) == pytest.approx(REFERENCE_RATIO, rel=0.015)
    assert np.all(out[10:20, 10:20] == 1.0) and out.dtype == np.float32
    assert float(out[200:300].mean()) == pytest.approx(float(pix[200:300].mean()), abs=0.5 / FS)


def test_which_frames_are_matched_and_which_are_refused():
    assert not check(REFERENCE_RATIO) and not check(1.0) and not check(1.05)
    assert check(0.98) and check(1.06) and check(LIMITS[0]) and check(LIMITS[1])
    for bad in (0.3, 2.5, float("nan"), float("inf")):
        with pytest.raises(NoiseError, match=r"times the camera model the classifier was "
                                             r"trained with; expected 0.5-2: a Bayer mosaic "
                                             r"read as grey \(--bayer\), a wrong bit depth"):
            check(bad)


def test_a_frame_with_too_little_below_full_scale_cannot_be_measured():
    with pytest.raises(NoiseError, match=r"has 0 runs of three neighbouring pixels below full "
                                         r"scale .* expected at least 1000"):
        noise_ratio(np.ones((256, 256), np.float32), CAMERA)


def test_the_sensor_and_its_use_come_from_a_models_spec():
    spec = {"black_dn": 64.0, "read_noise_dn": 2.5, "conversion_gain": 0.08, "width": 0.25,
            "whiten": True}
    s = Sensor.from_metadata({"spec": json.dumps(spec)})
    assert (s.black, s.read, s.gain) == pytest.approx((64 / FS, 2.5 / FS, 0.08 / FS))
    assert works_in_noise_units({"spec": json.dumps(spec)})
    assert not works_in_noise_units({"spec": json.dumps({**spec, "whiten": False})})
    assert not works_in_noise_units({}) and not works_in_noise_units({"spec": "{"})
    for meta in ({}, {"spec": "{"}, {"spec": "[]"}, {"spec": json.dumps({"black_dn": 64.0})},
                 {"spec": json.dumps({**spec, "read_noise_dn": -1})},
                 {"spec": json.dumps({**spec, "black_dn": "x"})},
                 {"spec": json.dumps({**spec, "conversion_gain": float("nan")})}):
        assert Sensor.from_metadata(meta) is None, meta
