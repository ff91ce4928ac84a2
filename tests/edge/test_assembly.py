"""One assembly builds every head from its head file: the simulated run, a replay head, and a
real head whose parts are missing (stopped before a single pin is claimed)."""

import re
from pathlib import Path

import pytest

from edge import assembly, config
from edge.assembly import AssemblyError, build_head
from edge.cli import main
from edge.runner import run_head
from edge.sim.recorder import simulate_samples
from edge.verdict import Status
from tests.conftest import SHIPPED_MODEL, real_head_toml, small_head_data, small_head_toml

pytest.importorskip("onnxruntime")

ROOT = Path(__file__).resolve().parents[2]


def test_demo_and_run_sim_build_their_head_with_the_assembly(tmp_path, monkeypatch):
    built = []
    real = assembly.build_head

    def spy(cfg, **kw):
        built.append(cfg)
        return real(cfg, **kw)

    monkeypatch.setattr(assembly, "build_head", spy)
    head = small_head_toml(tmp_path)
    assert main(["run", "--sim", "--head", str(head), "--samples", "1", "--seed", "3",
                 "--quiet"]) == 0
    assert len(built) == 1 and built[0].source == str(head) and built[0].simulated
    # make demo is that very command on the embedded simulated head
    demo = re.search(r"^demo:.*\n\t(.*)$", (ROOT / "Makefile").read_text(), re.M).group(1)
    assert "glass-inspect run --sim" in demo and "--head" not in demo


def test_missing_real_parts_are_all_named_and_no_pin_is_claimed(tmp_path, monkeypatch):
    import edge.hardware.jetson as jetson
    import edge.hardware.leds as leds

    claimed = []
    monkeypatch.setattr(jetson, "JetsonFactory", lambda *a, **k: claimed.append("pins"))
    monkeypatch.setattr(leds, "RingLight", lambda *a, **k: claimed.append("leds"))
    cfg = config.load(real_head_toml(tmp_path))
    with pytest.raises(AssemblyError) as e:
        build_head(cfg, engine_path=tmp_path / "missing.onnx")
    parts = [p.split(":")[0] for p in e.value.problems]
    assert parts == ["GPIO (ring light and trigger)", "stage", "camera", "engine"]
    assert claimed == []


def test_a_part_that_fails_to_open_closes_the_parts_before_it(tmp_path):
    d = small_head_data()
    (tmp_path / "empty").mkdir()
    d["camera"]["device"] = "replay:empty"
    cfg = config.parse(d, str(tmp_path / "head.toml"))
    with pytest.raises(AssemblyError, match="camera: .*no recorded sample here"):
        build_head(cfg)


def test_replay_head_inspects_recorded_glass_beside_its_truth(tmp_path, small_cfg):
    ((sample, _),) = simulate_samples(small_cfg, 1, tmp_path / "rec", seed=5,
                                      scratch_share=1.0, progress=False)
    d = small_head_data()
    d["camera"].update(device="replay:rec", frame_time_ms=30.0)
    d["stage"]["settle_ms"] = 10.0
    cfg = config.parse(d, str(tmp_path / "replay-head.toml"))
    with build_head(cfg) as asm:
        assert asm.parts["camera"] == "replay:rec" and asm.engine.path == SHIPPED_MODEL
        summary = run_head(asm, 1)
        (r,) = summary.results
        assert r.verdict.sample_id == sample.sample_id
        assert r.verdict.status is not Status.ERROR, r.verdict.reason
        assert r.truth is not None and r.said.startswith(f"{len(sample.scratches)} scratch")
        with pytest.raises(Exception, match="no recording of sample 'OTHER'"):
            asm.load_glass("OTHER")


def test_the_verdict_server_drives_the_assembled_head(tmp_path):
    import threading

    from firmware_bridge.inspector import HeadInspector

    d = small_head_data()
    d["camera"]["frame_time_ms"] = 30.0
    d["stage"]["settle_ms"] = 10.0
    with build_head(config.parse(d, "small.toml")) as asm:
        inspector = HeadInspector(asm)
        seen = []
        v = inspector.inspect("LINE-7", threading.Event(), lambda done, total: seen.append(done))
        assert v.sample_id == "LINE-7" and v.status is not Status.ERROR, v.reason
        assert seen[-1] == 2 and inspector.engine["backend"] == "onnxruntime"
        # the same id shows the same glass on the simulated head
        assert asm.load_glass("LINE-7") == asm.load_glass("LINE-7")


def test_an_engine_that_fails_at_start_up_stops_the_head_with_every_led_dark(small_cfg,
                                                                             monkeypatch):
    # the ring is claimed first (held dark, so a head restarted after SIGKILL darkens a lit
    # group at once); an engine that fails in the warm-up stops the head before any group is lit
    import edge.hardware.leds as leds
    from edge.engine import EngineError, open_engine

    class Broken:
        def __init__(self, engine):
            self._e = engine

        def __getattr__(self, name):
            return getattr(self._e, name)

        def infer(self, batch):
            raise EngineError("the engine fell over (simulated)")

        def infer_stream(self, batches):
            raise EngineError("the engine fell over (simulated)")

    events = []

    class Watched(leds.RingLight):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            events.append("claimed")

        def on(self, state):
            events.append(f"on {state}")
            super().on(state)

        def close(self):
            events.append(("closed", self.lit))
            super().close()

    monkeypatch.setattr(leds, "RingLight", Watched)
    with open_engine(SHIPPED_MODEL, threads=2, max_batch=4) as engine, \
            pytest.raises(AssemblyError, match="pipeline: .*fell over"):
        build_head(small_cfg, engine=Broken(engine))
    assert events == ["claimed", ("closed", None)]


def test_a_calibration_of_another_sensor_is_refused_by_its_hot_pixels(tmp_path, small_cfg):
    """The simulated camera has no serial (as a CSI sensor): its hot pixels tell it apart."""
    import numpy as np

    from edge import calibration as calib
    from edge.sim.targets import head_truth

    h, w = small_cfg.camera.height, small_cfg.camera.width
    own = np.nonzero(head_truth(small_cfg, (h, w)).hot_mask)
    assert own[0].size >= calib.FINGERPRINT_MIN_HOT
    mine = calib.save(tmp_path / "mine.npz", head=small_cfg, camera_serial="",
                      defects=calib.DefectivePixels.of(hot=own))
    with build_head(small_cfg, calibration=calib.load(mine)) as asm:
        assert asm.calibration is not None
    rng = np.random.default_rng(1)
    flat = np.unique(rng.integers(0, h * w, own[0].size))
    other = (flat // w, flat % w)
    theirs = calib.save(tmp_path / "theirs.npz", head=small_cfg, camera_serial="",
                        defects=calib.DefectivePixels.of(hot=other))
    with pytest.raises(AssemblyError, match="calibration: .*another camera sensor"):
        build_head(small_cfg, calibration=calib.load(theirs))
