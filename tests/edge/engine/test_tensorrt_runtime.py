"""The TensorRT engine at run time, with a fake ``tensorrt`` and ``pycuda.driver``: install advice,
the batches it takes, and the order of its work. The fake GPU "network" averages the 24 channels.
"""

import sys
from types import SimpleNamespace

import numpy as np
import pytest

import edge.engine.tensorrt as rt
from edge.engine import EngineError, Sidecar
from edge.hashing import sha256_file

TILE = 8


# -- 6: what to install, said right for JetPack ----------------------------------------------
def test_missing_tensorrt_says_it_comes_from_jetpack_and_how_a_venv_sees_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(EngineError) as err:
        rt.import_tensorrt()
    msg = str(err.value)
    assert "python3-libnvinfer" in msg and "--system-site-packages" in msg
    assert ".onnx" in msg


def test_missing_pycuda_says_the_build_needs_the_cuda_toolkit(monkeypatch):
    monkeypatch.setitem(sys.modules, "pycuda", None)
    monkeypatch.setitem(sys.modules, "pycuda.driver", None)
    with pytest.raises(EngineError) as err:
        rt.import_pycuda()
    msg = str(err.value)
    assert "glass-inspect[jetson]" in msg and "nvcc" in msg and "/usr/local/cuda" in msg


def test_docstring_claims_no_copy_compute_overlap_that_one_stream_cannot_give():
    doc = " ".join(rt.__doc__.split())
    assert "one CUDA stream" in doc
    assert "copies hide behind the network" not in doc


# -- a fake GPU -------------------------------------------------------------------------------
class Memory:
    def __init__(self, gpu, nbytes):
        self.buf = np.zeros(nbytes // 4, np.float32)
        self.addr = len(gpu.memory) + 1
        gpu.memory[self.addr] = self

    def __int__(self):
        return self.addr

    def free(self):
        pass


class FakeCuda:
    def __init__(self):
        self.memory = {}
        self.log = []
        self.Context = SimpleNamespace(pop=lambda: None)
        self.Event = lambda: SimpleNamespace(record=lambda s: None,
                                            synchronize=lambda: self.log.append("wait"))
        self.Stream = lambda: SimpleNamespace(handle=7, synchronize=lambda: None)

    def init(self):
        pass

    def Device(self, i):  # noqa: N802
        return SimpleNamespace(name=lambda: "Orin", compute_capability=lambda: (8, 7),
                               retain_primary_context=lambda: SimpleNamespace(push=lambda: None))

    def pagelocked_empty(self, n, dtype):
        return np.zeros(n, dtype)

    def mem_alloc(self, nbytes):
        return Memory(self, nbytes)

    def memcpy_htod_async(self, dev, host, stream):
        dev.buf[:host.size] = host

    def memcpy_dtoh_async(self, host, dev, stream):
        host[:] = dev.buf[:host.size]


class FakeContext:
    def __init__(self, engine, gpu):
        self.engine, self.gpu, self.addr, self.shape = engine, gpu, {}, None

    def set_input_shape(self, name, shape):
        lo, _, hi = self.engine.profile
        if not lo[0] <= shape[0] <= hi[0]:
            return False  # as TensorRT: outside the optimization profile
        self.shape = tuple(shape)
        return True

    def set_tensor_address(self, name, addr):
        self.addr[name] = addr

    def execute_async_v3(self, stream_handle):
        n = self.shape[0]
        x = self.gpu.memory[self.addr["frames"]].buf[:int(np.prod(self.shape))].reshape(self.shape)
        out = x.mean(axis=1, keepdims=True)
        self.gpu.memory[self.addr["scores"]].buf[:out.size] = out.ravel()
        self.gpu.log.append(f"run {n}")
        return True

    def get_tensor_shape(self, name):
        return (self.shape[0], 1, TILE, TILE)


class FakeEngine:
    num_io_tensors = 2

    def __init__(self, profile, gpu):
        self.profile, self.gpu = profile, gpu

    def get_tensor_name(self, i):
        return ("frames", "scores")[i]

    def get_tensor_mode(self, name):
        return "in" if name == "frames" else "out"

    def get_tensor_dtype(self, name):
        return "float"

    def get_tensor_profile_shape(self, name, index):
        return self.profile

    def create_execution_context(self):
        return FakeContext(self, self.gpu)


def fake_trt(profile, gpu):
    runtime = SimpleNamespace(deserialize_cuda_engine=lambda data: FakeEngine(profile, gpu))
    logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, level: None})
    return SimpleNamespace(__version__="10.3.0", Logger=logger,
                           Runtime=lambda logger: runtime, nptype=lambda dt: np.float32,
                           TensorIOMode=SimpleNamespace(INPUT="in", OUTPUT="out"))


@pytest.fixture
def open_fake(monkeypatch, tmp_path):
    def make(min_batch: int, max_batch: int, head_max_batch: int = 4):
        gpu = FakeCuda()
        shapes = tuple((b, 24, TILE, TILE) for b in (min_batch, max_batch, max_batch))
        monkeypatch.setattr(rt, "import_tensorrt", lambda: fake_trt(shapes, gpu))
        monkeypatch.setattr(rt, "import_pycuda", lambda: gpu)
        path = tmp_path / "m.engine"
        path.write_bytes(b"plan")
        Sidecar(engine_sha256=sha256_file(path), onnx_sha256="a" * 64, onnx_name="m.onnx",
                tensorrt_version="10.3.0", device="Orin", compute_capability="8.7",
                precision="fp16", strongly_typed=False, input_name="frames",
                input_dtype="float32", output_name="scores", tile=TILE,
                batch_sizes=(max_batch,), built_utc="2026-01-01T00:00:00+00:00").write(path)
        return rt.TensorRTEngine(path, max_batch=head_max_batch), gpu
    return make


def _tiles(n: int) -> np.ndarray:
    return np.random.default_rng(n).random((n, 24, TILE, TILE), dtype=np.float32)


# -- 7: every batch from 1 to the largest -----------------------------------------------------
@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_engine_takes_every_batch_from_one_to_its_largest(open_fake, n):
    engine, _ = open_fake(1, 4)
    x = _tiles(n)
    np.testing.assert_allclose(engine.infer(x), x.mean(axis=1, keepdims=True), rtol=1e-6)
    with pytest.raises(EngineError, match="batch of 1 to 4"):
        engine.infer(_tiles(5))


@pytest.mark.parametrize("n", [1, 3])
def test_engine_built_with_a_profile_from_four_still_takes_a_short_last_batch(open_fake, n):
    engine, gpu = open_fake(4, 4)  # an engine built before the profile started at 1
    x = _tiles(n)
    np.testing.assert_allclose(engine.infer(x), x.mean(axis=1, keepdims=True), rtol=1e-6)
    assert gpu.log[-2:] == ["run 4", "wait"]  # padded up to the profile's smallest batch


def test_head_batch_below_the_profile_minimum_is_padded_too(open_fake):
    engine, _ = open_fake(4, 8, head_max_batch=2)
    assert engine.max_batch == 2
    x = _tiles(2)
    np.testing.assert_allclose(engine.infer(x), x.mean(axis=1, keepdims=True), rtol=1e-6)


def test_a_roi_split_like_the_pipeline_with_a_short_last_batch(open_fake, cfg):
    from edge.pipeline import infer_tiles

    engine, gpu = open_fake(1, 4)
    x = _tiles(11)
    scores = infer_tiles(x, engine, 4, "RoI 0")
    np.testing.assert_allclose(scores, x.mean(axis=1, keepdims=True), rtol=1e-6)
    # batch n+1 is queued before the engine waits for batch n: the CPU hands batch n's scores
    # to the caller while the GPU runs n+1
    assert gpu.log == ["run 4", "run 4", "wait", "run 3", "wait", "wait"]
