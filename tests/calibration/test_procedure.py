"""The whole procedure on a simulated head mounted off its nominal geometry."""

import copy

import numpy as np
import pytest

from calibration.procedure import Settings, calibrate
from calibration.targets import sim_placer
from edge import config
from edge.assembly import build_head
from edge.sim.targets import head_truth
from tests.conftest import small_head_data

pytest.importorskip("onnxruntime")


def odd_head() -> config.HeadConfig:
    d = small_head_data()
    d["camera"].update(frame_time_ms=30.0, grab_timeout_ms=3000.0)
    d["stage"]["settle_ms"] = 10.0
    sim = copy.deepcopy(d["simulation"])
    sim.update(head_seed=4242, led_balance=0.3, scale_error=0.01, rotation_deg=0.3,
               origin_offset_mm=[0.3, -0.2])
    d["simulation"] = sim
    return config.parse(d, "odd-head.toml")


def test_calibration_finds_the_heads_defects_and_geometry(tmp_path):
    cfg = odd_head()
    seen = []
    with build_head(cfg) as asm:
        place = sim_placer(asm)
        run = calibrate(asm, tmp_path, Settings(frames=4),
                        place=lambda what: (seen.append(what), place(what)))
        truth = head_truth(cfg, asm.head.shape)
    assert seen == ["lens cap", "reference plate", "dot grid"]
    hot = run.arrays["dark"]["hot"]
    assert (hot & truth.hot_mask).sum() >= 0.99 * truth.hot_mask.sum()
    assert (hot & ~truth.hot_mask).sum() <= 1e-3 * hot.size
    g = run.summary["geometry"]
    assert g["mm_per_px"][0] == pytest.approx(truth.mm_per_px[0], rel=1e-3)
    assert g["rotation_deg"] == pytest.approx(truth.rotation_deg, abs=0.02)
    assert g["origin_offset_mm"] == pytest.approx(truth.origin_offset_mm, abs=0.02)
    gain = run.arrays["flat"]["gain"]
    ref = np.stack([head_truth(config.load(), asm.head.shape).response(k) for k in range(6)])
    corrected = np.stack([truth.response(k) for k in range(6)]) * gain
    ok = ~(hot | run.arrays["flat"]["dead"] | run.arrays["flat"]["stuck"])
    rel = corrected[:, ok] / corrected[:, ok].mean() / (ref[:, ok] / ref[:, ok].mean()) - 1
    assert np.sqrt(np.mean(rel ** 2)) < 0.02
    # a second run resumes: nothing is measured again
    with build_head(cfg) as asm:
        again = calibrate(asm, tmp_path, Settings(frames=4), place=seen.append)
    assert len(seen) == 3 and again.summary == run.summary
