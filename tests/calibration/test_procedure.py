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
    # this test is about the analysis, not the watchdog (tests/edge/hardware test that): on a
    # loaded machine a group could stay lit past 250 ms while the simulated camera renders
    d["illumination"]["max_on_ms"] = 2000.0
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
    # each group's frame is taken at its balanced exposure, and its gain accounts for that
    scale = run.arrays["flat"]["led_exposure_scale"]
    flat = run.summary["flat"]
    assert flat["led_balanced"] and flat["led_balance_spread_pct"] <= 2.0
    assert max(flat["led_balance"]) / min(flat["led_balance"]) > 1.1  # it was off before
    corrected = np.stack([truth.response(k) * scale[k] for k in range(6)]) * gain
    ok = ~(hot | run.arrays["flat"]["dead"] | run.arrays["flat"]["stuck"])
    rel = corrected[:, ok] / corrected[:, ok].mean() / (ref[:, ok] / ref[:, ok].mean()) - 1
    assert np.sqrt(np.mean(rel ** 2)) < 0.02
    # a second run resumes: nothing is measured again
    with build_head(cfg) as asm:
        again = calibrate(asm, tmp_path, Settings(frames=4), place=seen.append)
    assert len(seen) == 3 and again.summary == run.summary


def test_calibrate_command_writes_the_report_and_resumes(tmp_path, capsys):
    import json

    from edge.cli import main
    from tests.conftest import small_head_toml

    head = small_head_toml(tmp_path)
    out = tmp_path / "cal"
    assert main(["calibrate", "--head", str(head), "--out", str(out), "--frames", "3",
                 "--quiet"]) == 0
    said = capsys.readouterr().out
    assert "geometry: {'mm_per_px'" in said and "report: " in said
    report = json.loads((out / "report.json").read_text())
    assert set(report) == {"dark", "flat", "geometry"}
    assert all((out / f"{n}.png").is_file() for n in ("dark", "flat", "geometry"))
    # again: every step is done already, so nothing is measured (the same figures come back)
    assert main(["calibrate", "--head", str(head), "--out", str(out), "--steps", "dark",
                 "--quiet"]) == 0
    assert json.loads((out / "report.json").read_text())["dark"] == report["dark"]


def test_calibrate_refuses_unknown_steps(capsys):
    from edge.cli import main

    with pytest.raises(SystemExit):
        main(["calibrate", "--sim", "--out", "x", "--steps", "dark,focus"])
    assert "steps are a comma-separated choice" in capsys.readouterr().err


def test_the_calibration_file_is_applied_to_its_head_and_refused_by_another(tmp_path):
    from edge import calibration as calib
    from edge.inspection import load_calibration
    from edge.runner import run_head

    cfg = odd_head()
    with build_head(cfg) as asm:
        run = calibrate(asm, tmp_path / "run", Settings(frames=3), place=sim_placer(asm))
    from calibration.procedure import write_calibration

    path = write_calibration(run, cfg, tmp_path / "cal.npz")
    cal = load_calibration(cfg, path)
    assert cal.version == 3 and cal.geometry is not None and len(cal.defects.rows) > 0
    with build_head(cfg, calibration_path=path) as asm:
        (r,) = run_head(asm, 1, seed=5).results
        assert r.verdict.status.value != "ERROR", r.verdict.reason
        assert all(x.corrected for x in r.verdict.rois)
    with pytest.raises(calib.CalibrationError, match="was made for head configuration"):
        load_calibration(config.parse(small_head_data(), "other.toml"), path)


def test_thresholds_are_tuned_on_golden_samples_and_written(tmp_path, small_cfg):
    from calibration.procedure import write_calibration
    from edge import calibration as calib
    from edge.sim.recorder import simulate_samples

    golden = tmp_path / "golden"
    simulate_samples(small_cfg, 2, golden, seed=11, scratch_share=1.0, progress=False)
    simulate_samples(small_cfg, 2, golden, seed=21, scratch_share=0.0, progress=False)
    cfg = config.parse({**small_head_data(), "name": small_cfg.name}, "small-head.toml")
    with build_head(cfg) as asm:
        run = calibrate(asm, tmp_path / "run", Settings(frames=3, golden=[str(golden)]),
                        place=sim_placer(asm))
    chosen = run.summary["thresholds"]["chosen"]
    assert chosen["samples"] == 4 and 1 <= chosen["scratched"] <= 2  # under the reject rule
    assert chosen["t_low"] <= chosen["t_high"]
    assert len(run.summary["thresholds"]["sweep"]) > 20
    cal = calib.load(write_calibration(run, cfg, tmp_path / "cal.npz"))
    assert cal.thresholds["t_high"] == chosen["t_high"]
