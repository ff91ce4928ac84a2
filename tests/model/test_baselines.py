"""The baselines: Otsu against a brute-force reference, the physics filter on the physics."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from model.baselines import OtsuScorer, PhysicsScorer, cell_sums, line_response, otsu_threshold


def binned_variance(hist: np.ndarray, centres: np.ndarray, k: int) -> float:
    """Between-class variance (unnormalised) of the split after bin ``k``, the histogram's."""
    a, b = hist[:k + 1], hist[k + 1:]
    if a.sum() == 0 or b.sum() == 0:
        return -1.0
    m0 = (a * centres[:k + 1]).sum() / a.sum()
    m1 = (b * centres[k + 1:]).sum() / b.sum()
    return float(a.sum() * b.sum() * (m0 - m1) ** 2)


def brute_otsu(x: np.ndarray, bins: int) -> float:
    hist, edges = np.histogram(x, bins=bins, range=(x.min(), x.max()))
    centres = (edges[:-1] + edges[1:]) / 2
    best, arg = -1.0, 0
    for k in range(bins - 1):
        var = binned_variance(hist, centres, k)
        if var > best:
            best, arg = var, k
    return float(edges[arg + 1])


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(0, 4095, allow_nan=False), min_size=10, max_size=300),
       st.sampled_from([8, 32, 256]))
def test_otsu_matches_the_brute_force_split(values, bins):
    x = np.array(values)
    if x.max() - x.min() < 1e-6:
        return
    t, ref = otsu_threshold(x, bins), brute_otsu(x, bins)
    hist, edges = np.histogram(x, bins=bins, range=(x.min(), x.max()))
    centres = (edges[:-1] + edges[1:]) / 2
    assert t in edges and ref in edges
    # Otsu maximises the histogram's between-class variance; two splits can tie on it (up to
    # rounding), and then either is right. (The values' own variance is another quantity: it
    # can differ between tied splits, which made an earlier form of this test flaky.)
    k_t, k_ref = list(edges).index(t) - 1, list(edges).index(ref) - 1
    assert binned_variance(hist, centres, k_t) == pytest.approx(
        binned_variance(hist, centres, k_ref), rel=1e-9)


@pytest.mark.parametrize("values, bins", [
    # found by hypothesis: two splits tie on the histogram's variance, not on the values'
    ([0.0, 440.0, 440.0, 440.0, 1318.0, 1318.0, 1757.0, 2197.0, 2197.0, 3477.0], 8),
])
def test_otsu_on_a_tie_gives_a_split_of_the_best_histogram_variance(values, bins):
    test_otsu_matches_the_brute_force_split.hypothesis.inner_test(values, bins)


def test_line_response_prefers_lines_to_speckle():
    img = np.zeros((64, 64), np.float32)
    img[20, 10:40] = 10.0  # a horizontal line
    img[50, 50] = 10.0  # a speck
    r = line_response(img, 11)
    assert r[20, 25] == pytest.approx(10.0)
    assert r[50, 50] == pytest.approx(10.0 / 11)


def frames_with(scratch_states, h=96, w=96, seed=0):
    """Six noisy frames: a diagonal scratch lit in ``scratch_states``, a dust blob in all."""
    rng = np.random.default_rng(seed)
    f = rng.normal(70, 2.5, (6, h, w))
    yy, xx = np.mgrid[0:h, 0:w]
    line = np.abs(yy - xx) < 2
    blob = (yy - 70) ** 2 + (xx - 20) ** 2 < 36
    for k in range(6):
        if k in scratch_states:
            f[k][line] += 60
        f[k][blob] += 200 * (0.8 + 0.1 * k)
    return np.clip(f, 0, 4095).astype(np.uint16), line, blob


def test_physics_scores_a_few_state_line_and_not_an_all_state_speck():
    frames, line, blob = frames_with({2})
    score = PhysicsScorer()(frames)
    half_line = line[::2, ::2]
    half_blob = blob[::2, ::2]
    assert score[half_line].mean() > 0.75
    assert score[half_blob].max() < 0.25
    otsu = OtsuScorer()(frames)
    assert otsu[half_blob].mean() > 0.9  # contamination-blind: the speck is "a defect"


def test_cell_sums_add_each_bayer_cell():
    f = np.arange(6 * 4 * 4, dtype=np.uint16).reshape(6, 4, 4)
    s = cell_sums(f)
    assert s.shape == (6, 2, 2) and s[1, 0, 1] == f[1, 0:2, 2:4].sum()


def test_the_command_line_offers_every_baseline():
    from model.baselines import BASELINES
    from model.cli import BASELINE_NAMES

    assert sorted(BASELINE_NAMES) == sorted(BASELINES)
