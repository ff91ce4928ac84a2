"""Measuring the envelope on simulated training frames and writing it into a model."""

import hashlib
import json

import numpy as np
import pytest

from edge import envelope as E
from export.envelope_fit import FLOOR, MARGIN, fit, ranges, training_seeds, widen

onnx = pytest.importorskip("onnx")


def test_training_seeds_are_the_samples_training_drew_its_patches_from(cfg, monkeypatch):
    import model.data as D

    seen = []

    class Drawn(Exception):
        pass

    def capture(seed, extent, scratch_share):
        seen.append(seed)
        raise Drawn

    monkeypatch.setattr(D, "generate_sample", capture)
    patches = D.SimulatedPatches(cfg, 7, patch=64)
    for i in range(5):
        with pytest.raises(Drawn):
            patches.window(i, scratch=bool(i % 2))
    assert [s for s, _ in training_seeds(7, 5)] == seen
    assert [share for _, share in training_seeds(7, 4)] == [1.0, 0.0, 1.0, 0.0]


def test_ranges_are_the_percentiles_widened():
    rng = np.random.default_rng(0)
    values = [{name: 1.0 + 0.01 * rng.standard_normal() for name in E.STATISTICS}
              for _ in range(200)]
    for d in values:
        d["saturated"] = 1e-4
    widened, trained = ranges(values)
    lo, hi = trained["noise"]
    assert (lo, hi) == pytest.approx(tuple(np.percentile([d["noise"] for d in values],
                                                         [0.1, 99.9])))
    # noise: the floor (25 % of each end) is wider than MARGIN x span here
    assert widened["noise"] == pytest.approx((lo * 0.75, hi * 1.25), rel=1e-5)
    assert widened["dark"] == pytest.approx((trained["dark"][0] - 3, trained["dark"][1] + 3),
                                            rel=1e-5)
    assert widened["saturated"][0] == 0.0
    assert widen("balance3", 0.0, 1.0) == (-MARGIN, 1 + MARGIN)
    assert set(FLOOR) == {name.rstrip("0123456789") for name in E.STATISTICS}
    values[3]["noise"] = float("nan")
    with pytest.raises(ValueError, match="noise could not be measured on 1 of 200"):
        ranges(values)


def test_every_training_roi_lies_inside_its_envelope(small_cfg):
    rows = []
    f = fit(small_cfg, samples=2, size=(256, 320), values=rows)
    assert f.rois == 4 and len(rows) == 4
    env = E.parse(f.to_json())
    assert env.camera == E.Camera(64.0, 2.2, 0.25)
    assert set(env.ranges) == set(E.STATISTICS)
    for _, _, v in rows:
        assert E.outside(v, env) == []
    meta = json.loads(f.to_json())
    assert meta["measured"]["frame"] == [256, 320] and meta["measured"]["training_seed"] == 7


def tiny_model(path):
    """A one-convolution network with the scratch network's interface."""
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.full((1, 24, 1, 1), 1 / 24, np.float32), "w")
    node = helper.make_node("Conv", ["frames", "w"], ["scores"])
    graph = helper.make_graph(
        [node], "tiny", [helper.make_tensor_value_info("frames", TensorProto.FLOAT,
                                                       ["n", 24, "h", "w"])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["n", 1, "h", "w"])], [w])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    m.metadata_props.add(key="network", value="tiny")
    m.metadata_props.add(key="settings", value=json.dumps({"seed": 3}))
    onnx.save(m, str(path))
    return path


def test_set_metadata_changes_the_metadata_only(tmp_path):
    from export.onnx import set_metadata

    path = tiny_model(tmp_path / "m.onnx")
    before = onnx.load(str(path))
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    set_metadata(path, {"envelope": "{}"})
    after = onnx.load(str(path))
    assert after.graph.SerializeToString() == before.graph.SerializeToString()
    assert [(p.key, p.value) for p in after.metadata_props] == [
        ("network", "tiny"), ("settings", '{"seed": 3}'), ("envelope", "{}")]
    assert hashlib.sha256(path.read_bytes()).hexdigest() != sha
    set_metadata(path, {"envelope": "[]"})  # replaced, not added twice
    assert [p.value for p in onnx.load(str(path)).metadata_props if p.key == "envelope"] == ["[]"]


def test_the_command_writes_an_envelope_the_runtime_reads(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    from edge.cli import main
    from edge.engine import open_engine
    from tests.conftest import small_head_toml

    head = small_head_toml(tmp_path)
    path = tiny_model(tmp_path / "m.onnx")
    assert main(["export", "envelope", str(path), "--head", str(head), "--samples", "1",
                 "--size", "256x192", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "training seed 3" in out and "noise: trained" in out
    with open_engine(path) as e:
        env = E.of_metadata(e.metadata)
    assert set(env.ranges) == set(E.STATISTICS)
    assert json.loads(e.metadata["envelope"])["measured"]["training_seed"] == 3


def test_recorded_samples_of_another_head_join_the_envelope(small_cfg, tmp_path):
    """A network fine-tuned on a noisier head's samples (train --recorded) takes their RoIs
    into its envelope (issue 31): outside the simulated one, inside the joint one."""
    from edge.config import parse
    from edge.sim.recorder import simulate_samples
    from export.envelope_fit import recorded_statistics
    from tests.conftest import small_head_data

    data = small_head_data()
    data["simulation"]["read_noise_dn"] *= 2.5
    noisy = parse(data, "noisy-head.toml")
    simulate_samples(noisy, 1, tmp_path / "rec", seed=40, shape=(256, 320), progress=False)
    alone = fit(small_cfg, samples=2, size=(256, 320))
    rows = recorded_statistics([tmp_path / "rec"], alone.envelope.camera,
                               small_cfg.camera.bit_depth)
    assert len(rows) == 2 and all(E.outside(v, alone.envelope) for _, _, v in rows)
    joint = fit(small_cfg, samples=2, size=(256, 320), recorded=[tmp_path / "rec"])
    assert joint.rois == 6 and joint.recorded == (rows[0][0],)
    assert all(E.outside(v, joint.envelope) == [] for _, _, v in rows)
    assert json.loads(joint.to_json())["measured"]["recorded_samples"] == [rows[0][0]]
    with pytest.raises(ValueError, match="--recorded: .*nothing: no recorded sample here"):
        fit(small_cfg, samples=1, size=(256, 320), recorded=[tmp_path / "nothing"])
