import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from sklearn.cluster import DBSCAN

from edge.kernels.dbscan import dbscan, dbscan_map, max_downscale


def assert_same_as_sklearn(points, eps, min_samples):
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    labels, core = dbscan(points, eps, min_samples)
    if len(points) == 0:
        assert labels.size == 0 and core.size == 0
        return
    # kd_tree: distances from coordinate differences (the brute path computes them as
    # |x|^2 + |y|^2 - 2xy and misjudges pairs at exactly eps); pairs within rounding of eps are
    # left out by the callers (rounding_decides)
    ref = DBSCAN(eps=eps, min_samples=min_samples, algorithm="kd_tree").fit(points)
    ref_core = np.zeros(len(points), bool)
    ref_core[ref.core_sample_indices_] = True
    assert np.array_equal(core, ref_core), "core points differ"
    assert np.array_equal(labels == -1, ref.labels_ == -1), "noise differs"
    # core labels identical up to renaming: a one-to-one map between the two labelings
    pairs = set(zip(labels[core].tolist(), ref.labels_[core].tolist(), strict=True))
    assert len(pairs) == len({a for a, _ in pairs}) == len({b for _, b in pairs})
    # a border point joins the cluster of some core point within eps
    for i in np.flatnonzero(~core & (labels >= 0)):
        d2 = ((points[core] - points[i]) ** 2).sum(axis=1)
        assert (labels[core][d2 <= eps * eps] == labels[i]).any()
    assert set(labels[labels >= 0].tolist()) == set(range(labels.max() + 1 if labels.size else 0))


def rounding_decides(points, eps) -> bool:
    """Whether some pair lies within rounding of ``eps`` without being exactly at it: there our
    ``sqrt(d2) <= eps`` and scikit-learn's own evaluation may round either way (e.g.
    ``d2 = 81.00000000000001`` for ``eps = 9``: its root is 9.0), and neither is wrong."""
    p = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    d2 = ((p[:, None, :] - p[None, :, :]) ** 2).sum(axis=2)
    near = np.abs(d2 - eps * eps) <= 1e-12 * eps * eps
    return bool((near & (d2 != eps * eps)).any())


coords = st.floats(-1e3, 1e3, allow_nan=False, width=64)
lattice = st.integers(-40, 40).map(float)


@settings(max_examples=150, deadline=None)
@given(pts=st.lists(st.tuples(coords, coords), max_size=120),
       eps=st.floats(1e-3, 300.0), min_samples=st.integers(1, 12))
def test_random_points(pts, eps, min_samples):
    assume(not rounding_decides(pts, eps))
    assert_same_as_sklearn(pts, eps, min_samples)


@settings(max_examples=150, deadline=None)
@given(pts=st.lists(st.tuples(lattice, lattice), max_size=200),
       eps=st.sampled_from([1.0, 1.5, 2.0, 5.0, 7.5, 25.0]), min_samples=st.integers(1, 16))
def test_lattice_points_with_exact_eps_ties(pts, eps, min_samples):
    assert_same_as_sklearn(pts, eps, min_samples)


@settings(max_examples=60, deadline=None)
@given(base=st.lists(st.tuples(lattice, lattice), min_size=1, max_size=30),
       repeats=st.integers(1, 6), min_samples=st.integers(1, 10))
def test_duplicates(base, repeats, min_samples):
    assert_same_as_sklearn(base * repeats, 3.0, min_samples)


@settings(max_examples=60, deadline=None)
@given(t=arrays(np.float64, st.integers(1, 80), elements=st.floats(-100, 100)),
       angle=st.floats(0, np.pi), eps=st.floats(0.1, 20), min_samples=st.integers(1, 8))
def test_collinear(t, angle, eps, min_samples):
    pts = np.stack([t * np.cos(angle) + 3, t * np.sin(angle) - 7], axis=1)
    assume(not rounding_decides(pts, eps))
    assert_same_as_sklearn(pts, eps, min_samples)


def test_a_pair_at_eps_by_rounding_is_within_it():
    """The case hypothesis found: 9 and 0 on a line at angle 1, eps 9. The squared distance
    rounds to 81.00000000000001, its root to 9.0: within eps by the definition we keep."""
    t = np.array([9.0, 0.0, -1.0])
    pts = np.stack([t * np.cos(1.0) + 3, t * np.sin(1.0) - 7], axis=1)
    assert rounding_decides(pts, 9.0)
    labels, core = dbscan(pts, 9.0, 1)
    assert core.all() and (labels == 0).all()


@pytest.mark.parametrize("eps", [1e-9, 1e-3, 1e6, 1e12])
def test_tiny_and_huge_eps(eps):
    rng = np.random.default_rng(3)
    pts = np.round(rng.random((300, 2)) * 100, 1)
    pts = np.concatenate([pts, pts[:40]])
    assert_same_as_sklearn(pts, eps, 2)


def test_one_point_and_no_points():
    assert_same_as_sklearn([[1.0, 2.0]], 1.0, 1)
    assert_same_as_sklearn([[1.0, 2.0]], 1.0, 2)
    assert_same_as_sklearn(np.empty((0, 2)), 1.0, 1)


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (([[0.0, np.nan]], 1.0, 1), "finite"),
        (([[0.0, np.inf]], 1.0, 1), "finite"),
        (([[0.0, 1.0]], 0.0, 1), "eps must be"),
        (([[0.0, 1.0]], -1.0, 1), "eps must be"),
        (([[0.0, 1.0]], float("nan"), 1), "eps must be"),
        (([[0.0, 1.0]], 1.0, 0), "min_samples"),
        (([0.0, 1.0, 2.0], 1.0, 1), "N x 2"),
        (([[0.0, 0.0], [1e300, 1e300]], 1e-300, 1), "too small"),
    ],
)
def test_bad_input_raises_clearly(args, words):
    with pytest.raises(ValueError, match=words):
        dbscan(*args)


def score_map(rng, h, w, share):
    m = np.full((h, w), -0.5, np.float32)
    for _ in range(4):
        r0, c0, a = rng.integers(0, h), rng.integers(0, w), rng.uniform(0, np.pi)
        t = np.arange(max(h, w))
        r, c = (r0 + t * np.sin(a)).astype(int), (c0 + t * np.cos(a)).astype(int)
        ok = (r >= 0) & (r < h) & (c >= 0) & (c < w)
        m[r[ok], c[ok]] = 0.9
    idx = rng.choice(h * w, int(share * h * w), replace=False)
    m.flat[idx] = rng.uniform(0.25, 0.8, idx.size)
    return m


@pytest.mark.parametrize("downscale", [1, 3, 8])
def test_score_map_entry_point(downscale):
    rng = np.random.default_rng(5)
    m = score_map(rng, 203, 310, 0.02)
    res = dbscan_map(m, 0.25, 5.0, 6, downscale=downscale)
    small = max_downscale(m, downscale)
    assert res.labels.shape == small.shape
    rows, cols = np.nonzero(small >= 0.25)
    pts = np.stack([cols, rows], axis=1).astype(float)
    assert_same_as_sklearn(pts, 5.0, 6)
    labels, _ = dbscan(pts, 5.0, 6)
    assert np.array_equal(res.labels[rows, cols], labels)
    assert (res.labels[small < 0.25] == -1).all()
    for k in range(res.count):
        r, c = np.nonzero(res.labels == k)
        assert res.pixels[k] == r.size
        assert res.max_score[k] == small[r, c].max()
        assert res.bbox[k].tolist() == [r.min(), c.min(), r.max(), c.max()]
    full = res.bbox_full()
    assert (full[:, 2:] <= np.array([small.shape[0], small.shape[1]]) * downscale).all()


def test_max_downscale_keeps_partial_blocks():
    m = np.arange(35, dtype=np.float32).reshape(5, 7)
    assert max_downscale(m, 2).tolist() == [[8, 10, 12, 13], [22, 24, 26, 27], [29, 31, 33, 34]]


def test_score_map_bad_input():
    m = np.zeros((10, 10), np.float32)
    m[3, 4] = np.nan
    with pytest.raises(ValueError, match="NaN .*row 3, column 4"):
        dbscan_map(m, 0.25, 2.0, 2)
    with pytest.raises(ValueError, match="2-D"):
        dbscan_map(np.zeros(5), 0.25, 2.0, 2)
    with pytest.raises(ValueError, match="downscale"):
        dbscan_map(np.zeros((4, 4)), 0.25, 2.0, 2, downscale=0)
    empty = dbscan_map(np.zeros((4, 4)), 0.25, 2.0, 2)
    assert empty.count == 0 and (empty.labels == -1).all()
