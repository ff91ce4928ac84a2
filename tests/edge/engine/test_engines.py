import importlib.util
import json

import numpy as np
import pytest

from edge.engine import EngineError, Sidecar, SidecarError, open_engine
from edge.engine.base import backend_for
from edge.engine.sidecar import Gpu
from tests.conftest import SHIPPED_MODEL

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def engine():
    with open_engine(SHIPPED_MODEL, threads=1, max_batch=2) as e:
        yield e


def test_shipped_model_agrees_with_the_onnx_reference_evaluator(engine):
    from onnx.reference import ReferenceEvaluator

    x = np.random.default_rng(0).random((1, 24, 64, 64), dtype=np.float32) * 0.2
    (ref,) = ReferenceEvaluator(str(SHIPPED_MODEL)).run(["scores"], {"frames": x})
    got = engine.infer(x)
    assert got.shape == (1, 1, 64, 64) and got.dtype == np.float32
    assert np.max(np.abs(got - ref)) <= 1e-4


def test_specs_and_identity(engine):
    assert engine.input.name == "frames" and engine.input.shape[1] == 24
    assert engine.output.name == "scores"
    ident = engine.identity
    assert ident["backend"] == "onnxruntime" and len(ident["sha256"]) == 64


def test_output_buffer_is_reused_per_shape(engine):
    x = np.zeros((2, 24, 32, 32), np.float32)
    a = engine.infer(x)
    b = engine.infer(x + 0.1)
    assert np.shares_memory(a, b)


@pytest.mark.parametrize("bad", [np.zeros((1, 23, 32, 32), np.float32),
                                 np.zeros((3, 24, 32, 32), np.float32),
                                 np.zeros((1, 24, 32, 32), np.float64),
                                 np.zeros((24, 32, 32), np.float32)])
def test_wrong_batches_are_refused_with_the_expected_shape(engine, bad):
    with pytest.raises(EngineError, match=r"takes input 'frames' float32 \[\? x 24"):
        engine.infer(bad)


def test_artifact_kind_by_suffix(tmp_path):
    assert backend_for(tmp_path / "m.onnx") == "onnxruntime"
    assert backend_for(tmp_path / "m.plan") == "tensorrt"
    with pytest.raises(EngineError, match="cannot tell the runtime"):
        backend_for(tmp_path / "m.bin")


def test_corrupt_model_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(SHIPPED_MODEL.read_bytes()[:5000])
    with pytest.raises(EngineError, match="ONNX Runtime cannot load .*broken.onnx"):
        open_engine(bad)


def test_model_other_than_the_qualified_one_is_refused():
    with pytest.raises(EngineError, match="qualified with model"):
        open_engine(SHIPPED_MODEL, model_sha256="0" * 64)


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT present")
def test_tensorrt_engine_without_tensorrt_names_what_to_install(tmp_path):
    plan = tmp_path / "m.engine"
    plan.write_bytes(b"plan")
    with pytest.raises(EngineError, match="needs the tensorrt Python module.*python3-libnvinfer"):
        open_engine(plan)


@pytest.mark.skipif(importlib.util.find_spec("pycuda") is not None, reason="pycuda present")
def test_missing_pycuda_names_the_extra():
    from edge.engine.tensorrt import import_pycuda

    with pytest.raises(EngineError, match=r"glass-inspect\[jetson\]"):
        import_pycuda()


def _sidecar(**changes) -> Sidecar:
    base = dict(engine_sha256="e" * 64, onnx_sha256="a" * 64, onnx_name="m.onnx",
                tensorrt_version="10.3.0", device="Orin", compute_capability="8.7",
                sm_count=16, memory_mib=62841, precision="fp16", strongly_typed=False,
                input_name="frames", input_dtype="float32", output_name="scores", tile=512,
                batch_sizes=(1, 4), built_utc="2026-11-21T00:00:00+00:00")
    base.update(changes)
    return Sidecar(**base)


def test_sidecar_round_trip(tmp_path):
    sc = _sidecar(model_metadata={"region_threshold": "0.97"})
    sc.write(tmp_path / "m.engine")
    assert Sidecar.read(tmp_path / "m.engine") == sc
    assert sc.max_batch == 4


def test_version_1_sidecar_is_read_with_no_model_metadata(tmp_path):
    d = json.loads(_sidecar().to_json())
    del d["model_metadata"], d["sm_count"], d["memory_mib"]
    d["version"] = 1
    (tmp_path / "m.engine.json").write_text(json.dumps(d))
    sc = Sidecar.read(tmp_path / "m.engine")
    assert sc.model_metadata == {} and sc == _sidecar(sm_count=0, memory_mib=0)


@pytest.mark.parametrize("version", [1, 2])
def test_an_engine_whose_sidecar_predates_the_gpu_identity_is_refused(tmp_path, version):
    """Before version 3 only the GPU's name was recorded, "Orin" on every Orin module: such an
    engine may be an AGX's on a Nano, so it is refused with a rebuild asked for."""
    d = json.loads(_sidecar().to_json())
    del d["sm_count"], d["memory_mib"]
    d["version"] = version
    (tmp_path / "m.engine.json").write_text(json.dumps(d))
    sc = Sidecar.read(tmp_path / "m.engine")
    assert not sc.gpu.known
    with pytest.raises(SidecarError, match=r"before version 3.*SM count and memory.*this device "
                                           r"has 'Orin' \(compute 8.7, 16 SMs.*Rebuild it"):
        sc.check("e" * 64, "10.3.0", AGX)


@pytest.mark.parametrize("meta", [["region_threshold"], {"region_threshold": 0.97}])
def test_sidecar_with_malformed_model_metadata_is_refused(tmp_path, meta):
    d = json.loads(_sidecar().to_json())
    d["model_metadata"] = meta
    (tmp_path / "m.engine.json").write_text(json.dumps(d))
    with pytest.raises(SidecarError, match="model_metadata must map names to strings"):
        Sidecar.read(tmp_path / "m.engine")


AGX = Gpu("Orin", "8.7", 16, 62841)  # the AGX Orin 64 GB, as CUDA describes it


@pytest.mark.parametrize("args, what", [
    (("x" * 64, "10.3.0", AGX, ""), "SHA-256"),
    (("e" * 64, "10.4.0", AGX, ""), "TensorRT 10.3.0, this device runs TensorRT 10.4.0"),
    (("e" * 64, "10.3.0", Gpu("NVIDIA H100", "9.0", 132, 81080), ""), "built for GPU 'Orin'"),
    (("e" * 64, "10.3.0", Gpu("Orin", "8.7", 8, 7620), ""),  # an Orin Nano 8 GB
     r"built for GPU 'Orin' \(compute 8.7, 16 SMs, 62841 MiB: a 64 GiB class\), this device "
     r"has 'Orin' \(compute 8.7, 8 SMs, 7620 MiB: a 8 GiB class\) \(another module"),
    (("e" * 64, "10.3.0", Gpu("Orin", "8.7", 14, 30593), ""), "14 SMs"),  # AGX Orin 32 GB
    (("e" * 64, "10.3.0", Gpu("Orin", "8.7", 16, 30593), ""), "a 32 GiB class"),
    (("e" * 64, "10.3.0", AGX, "b" * 64), "qualified with model"),
])
def test_sidecar_refuses_another_engine_runtime_device_or_model(args, what):
    with pytest.raises(SidecarError, match=what):
        _sidecar().check(*args)
    _sidecar().check("e" * 64, "10.3.0", AGX, "a" * 64)
    # the same module after an update that moved the kernel's carveouts by some MiB
    _sidecar().check("e" * 64, "10.3.0", Gpu("Orin", "8.7", 16, 62841 - 64), "a" * 64)


def test_sidecar_missing_or_damaged(tmp_path):
    with pytest.raises(SidecarError, match="has no sidecar"):
        Sidecar.read(tmp_path / "m.engine")
    (tmp_path / "m.engine.json").write_text(json.dumps({"format": "glass-inspect-engine",
                                                        "version": 1, "tile": 512}))
    with pytest.raises(SidecarError, match="missing keys"):
        Sidecar.read(tmp_path / "m.engine")


def test_tensorrt_engine_runs_where_tensorrt_exists(tmp_path):
    pytest.importorskip("tensorrt")
    pytest.importorskip("pycuda")
    from export.tensorrt import build_engine

    r = build_engine(SHIPPED_MODEL, tmp_path / "m.engine", "fp32", (1, 2), 64,
                     cache_dir=None)
    x = np.random.default_rng(0).random((2, 24, 64, 64), dtype=np.float32) * 0.2
    with open_engine(r.path) as trt_engine, open_engine(SHIPPED_MODEL) as ort_engine:
        assert np.max(np.abs(trt_engine.infer(x) - ort_engine.infer(x))) < 1e-3


def test_the_head_refuses_a_single_frame_classifier_in_words(tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    from edge import config
    from edge.inspection import load_engine

    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["frames"], ["logit"], axes=[1, 2, 3], keepdims=0)],
        "classifier",
        [helper.make_tensor_value_info("frames", TensorProto.FLOAT, ["N", 1, 256, 256])],
        [helper.make_tensor_value_info("logit", TensorProto.FLOAT, ["N"])])
    path = tmp_path / "windows.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                                ir_version=8), str(path))
    with pytest.raises(EngineError, match="the head's network takes N x 24 x H x W"):
        load_engine(config.load(), path)
