import json

import numpy as np
import pytest

from edge.darkfield import exposure
from edge.darkfield.exposure import MAX_SATURATED, MIN_HAZE, ExposureError

BLACK = 64 / 4095


def _frame(haze, side=300, seed=0):
    rng = np.random.default_rng(seed)
    return np.clip(BLACK + haze + rng.normal(0, 0.002, (side, side)), 0, 1).astype(np.float32)


def test_a_judgeable_frame_gives_its_haze_above_black():
    assert exposure.check(_frame(0.2), BLACK) == pytest.approx(0.2, abs=1e-3)
    assert exposure.check(_frame(MIN_HAZE + 0.002), BLACK) >= MIN_HAZE


def test_a_flat_frame_says_so_with_its_level():
    with pytest.raises(ExposureError, match=r"^is flat: every pixel is 25\.0 % of full scale"):
        exposure.check(np.full((300, 300), 0.25, np.float32), BLACK)


def test_an_overexposed_frame_is_refused_above_the_saturated_share():
    px = _frame(0.2)
    n = px.size
    px.ravel()[:int(n * MAX_SATURATED)] = 1.0  # at the limit: judged
    exposure.check(px, BLACK)
    px.ravel()[:int(n * 0.05)] = 1.0
    with pytest.raises(ExposureError, match=r"^is overexposed: 5\.0 % of its pixels at full "
                                            r"scale; expected at most 1 %"):
        exposure.check(px, BLACK)


def test_a_frame_under_the_floor_is_too_dark_whatever_its_noise():
    with pytest.raises(ExposureError, match=r"^is too dark: its haze \(median\) is 1\.0 % of "
                                            r"full scale above the black level; expected at "
                                            r"least 4 %"):
        exposure.check(_frame(0.01), BLACK)
    assert exposure.check(_frame(0.01), BLACK, floor=0.005) == pytest.approx(0.01, abs=1e-3)


def test_the_floor_is_the_models_own_when_it_says_a_valid_one():
    assert exposure.haze_floor({}) == MIN_HAZE
    assert exposure.haze_floor({"haze_floor": json.dumps(0.01)}) == 0.01
    for bad in ("x", "null", "-0.1", "1.5", "NaN", "[0.1]"):
        assert exposure.haze_floor({"haze_floor": bad}) == MIN_HAZE
