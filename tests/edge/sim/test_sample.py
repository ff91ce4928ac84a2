import json

import numpy as np
import pytest

from edge.sim import generate_sample
from edge.sim.sample import arc
from edge.truth import Sample

EXTENT = (78.0, 167.0)


def test_same_seed_same_sample():
    assert generate_sample(5, EXTENT) == generate_sample(5, EXTENT)
    assert generate_sample(5, EXTENT) != generate_sample(6, EXTENT)


def test_share_of_samples_with_scratches():
    has = [generate_sample(s, EXTENT, 0.3).has_scratch for s in range(600)]
    assert 0.24 < np.mean(has) < 0.36
    assert not any(generate_sample(s, EXTENT, 0.0).has_scratch for s in range(50))
    assert all(generate_sample(s, EXTENT, 1.0).has_scratch for s in range(50))


def test_defects_span_the_expected_range():
    defects = [d for s in range(300) for d in generate_sample(s, EXTENT, 1.0).objects]
    kinds = {d.kind for d in defects}
    assert kinds == {"scratch", "dust", "stain", "fibre"}
    lengths = [d.length_mm for d in defects if d.kind == "scratch"]
    assert min(lengths) < 0.2 and max(lengths) > 40  # a few pixels to longer than an RoI
    profiles = {d.profile for d in defects if d.kind == "scratch"}
    assert profiles == {"triangular", "rugged"}
    widths_px = [d.width_um / 11.4 for d in defects if d.kind == "scratch"]
    assert min(widths_px) > 0.9 and max(widths_px) < 3.1
    for d in defects:
        x, y = d.points_mm[0]
        assert 0 <= x <= EXTENT[0] and 0 <= y <= EXTENT[1]


def test_json_round_trip():
    s = generate_sample(11, EXTENT, 1.0)
    back = Sample.from_dict(json.loads(json.dumps(s.to_dict())))
    assert back.sample_id == s.sample_id and len(back.objects) == len(s.objects)
    for a, b in zip(s.objects, back.objects, strict=True):
        assert a.kind == b.kind and a.seed == b.seed
        np.testing.assert_allclose(a.points, b.points, atol=1e-6)


def test_arc_has_the_asked_length_and_turn():
    p = arc((0, 0), 0.0, 10.0, turn_deg=90.0)
    assert abs(np.hypot(*np.diff(p, axis=0).T).sum() - 10.0) < 1e-3
    end_heading = np.degrees(np.arctan2(*(p[-1] - p[-2])[::-1]))
    assert abs(end_heading - 90.0) < 1.0


def test_bad_share_rejected():
    with pytest.raises(ValueError, match="scratch_share"):
        generate_sample(1, EXTENT, 1.5)
