import numpy as np

from model.metrics import Tally, components


def test_components_are_8_connected():
    m = np.zeros((10, 10), bool)
    m[1, 1] = m[2, 2] = m[3, 3] = True  # diagonal: one component
    m[7, 1:5] = True
    comps = components(m)
    assert sorted(len(c) for c in comps) == [3, 4]
    assert components(np.zeros((3, 3), bool)) == []


def test_tally_counts_found_scratches_and_false_maps(cfg):
    p = cfg.pipeline
    score = np.full((256, 256), -1.0, np.float32)
    mask = np.zeros((256, 256), bool)
    mask[100, 20:220] = True
    score[99:102, 20:220] = 0.9  # the scratch, found
    t = Tally()
    t.add(score, mask, p)
    clean = np.full((256, 256), -1.0, np.float32)
    clean[30:33, 10:240] = 0.9  # something kept on a map without scratches
    t.add(clean, np.zeros_like(mask), p)
    s = t.summary()
    assert s["scratch_recall"] == 1.0 and s["map_fn_rate"] == 0.0 and s["map_fp_rate"] == 1.0
    assert s["scratch_precision"] == 0.5
    assert 0 < s["pixel_precision"] < 1 and s["pixel_recall"] == 1.0
