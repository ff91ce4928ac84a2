"""The fault injection of the simulated head (edge.sim.faults) and the fault benchmark.

The full matrix (``python benchmarks/faults.py``: every fault, 3 runs each) takes minutes; here
the plan is parsed, two faults are injected into an in-process head, and the benchmark runs two
faults once through ``glass-inspect serve`` in its own process, so CI covers the mechanism.
"""

import json
import subprocess
import sys

import pytest

from edge import config
from edge.assembly import build_head
from edge.sim.faults import ENV, Fault, FaultPlan, FaultPlanError, make_injector
from edge.sim.parts import SimOptions, SimParts
from edge.verdict import Status
from tests.conftest import ROOT, SHIPPED_MODEL, small_head_data


def test_plan_parsing():
    plan = FaultPlan.parse(" camera_timeout@3/CT-, engine_nan@1 ,,")
    assert plan.faults == (Fault("camera_timeout", 3, "CT-"), Fault("engine_nan", 1))
    assert str(plan) == "camera_timeout@3/CT-,engine_nan@1"
    assert plan.faults[0].applies("CT-7") and not plan.faults[0].applies("X1")
    assert plan.faults[1].applies("anything") and not plan.faults[1].applies(None)
    assert not FaultPlan.parse("")
    assert FaultPlan.from_env({ENV: "led_stall@2"}).faults == (Fault("led_stall", 2),)
    assert make_injector(250.0, environ={}) is None  # no plan: nothing is hooked
    for bad, why in [("camera_timeout", "expected KIND@N"), ("warp_drive@1", "unknown fault"),
                     ("bad_frame@0", "counts from 1"), ("bad_frame@2/a b", "expected KIND@N")]:
        with pytest.raises(FaultPlanError, match=why):
            FaultPlan.parse(bad)


def test_no_plan_changes_nothing(small_cfg, monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    assert SimParts(small_cfg, SimOptions()).faults is None


def tiny_head() -> config.HeadConfig:
    """Two RoIs of 256 x 224 px, fast frames: a sample in a fraction of a second."""
    d = small_head_data()
    d["camera"].update(width=256, height=224, exposure_ms=4.0, frame_time_ms=8.0,
                       grab_timeout_ms=300.0)
    d["stage"]["settle_ms"] = 5.0
    d["stage"]["soft_limits_mm"] = {"x": [0.0, 30.0], "y": [0.0, 30.0]}
    d["stage"]["roi_grid"].update(size_mm=[256 * 40 / 3504, 224 * 35 / 3120], overlap_mm=0.2)
    d["pipeline"].update(tile_size=128, tile_overlap=16)
    d["engine"].update(artifact=str(SHIPPED_MODEL), threads=1)
    return config.parse(d, "tiny-head.toml")


def test_faults_in_an_in_process_head_end_in_error_with_their_reason(tmp_path):
    pytest.importorskip("onnxruntime")
    cfg = tiny_head()
    trace = tmp_path / "gpio.txt"
    opts = SimOptions(trace=trace, faults="engine_nan@1/EN,bad_frame@4/BF")
    with build_head(cfg, sim_options=opts) as rig:
        assert rig.sim.faults is not None
        results = {}
        for sid in ("EN1", "OK1", "BF1"):
            rig.load_glass(sid)
            results[sid] = rig.head.inspect(sid)
        leds = [rig.sim.wiring.state(s.pin) for s in cfg.illumination.states]
        fired = [(f["fault"], f["sample_id"]) for f in rig.sim.faults.fired]
    assert fired == [("engine_nan", "EN1"), ("bad_frame", "BF1")]
    assert results["EN1"].status is Status.ERROR
    assert "NaN or infinite scores" in results["EN1"].reason
    assert results["OK1"].status is not Status.ERROR  # only the planned samples break
    assert results["BF1"].status is Status.ERROR
    assert "expected a 256 x 224 px frame, got 256 x 112" in results["BF1"].reason
    assert not any(leds)
    assert trace.read_text().count("\n") > 0  # the trace file was written


@pytest.mark.timeout(120)
def test_fault_benchmark_runs_two_faults_once():
    pytest.importorskip("onnxruntime")
    r = subprocess.run([sys.executable, "benchmarks/faults.py", "--runs", "1", "--only",
                        "camera_timeout,sigterm"], cwd=ROOT, capture_output=True, text=True,
                       timeout=110)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout)
    by_name = {f["name"]: f for f in out["faults"]}
    assert set(by_name) == {"camera_timeout", "sigterm"}, r.stderr[-3000:]
    for f in by_name.values():
        assert f["runs"] == 1 and f["false_pass"] == 0 and f["lost"] == 0, (f, r.stderr)
        assert f["error_right_reason"] == 1 and f["leds_dark"] == 1, (f, r.stderr)
        assert f["dark_ms_max"] is not None, (f, r.stderr)
    camera, term = by_name["camera_timeout"], by_name["sigterm"]
    assert camera["recovered"] == 1 and camera["dark_ms_max"] < 100.0  # one exposure
    # SIGTERM: dark within the server loop's reaction; loose here, as a CI host may be busy
    # (the benchmark reports the figure against its 100 ms target)
    assert term["dark_ms_max"] < 250.0
