"""The TensorRT engine at run time, with a fake ``tensorrt`` and ``pycuda.driver``: install advice,
the batches it takes, and the order of its work. The fake GPU "network" averages the 24 channels
(a U-Net's score map) or, as the window classifier, a whole window (one logit per row). The
shapes the engine serves come from the engine's own tensor shapes: plain tuples, tested here.
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

    device_attribute = SimpleNamespace(MULTIPROCESSOR_COUNT=16)
    module = (16, 62841)  # an AGX Orin 64 GB: SMs, MiB

    def Device(self, i):  # noqa: N802
        attrs = {self.device_attribute.MULTIPROCESSOR_COUNT: self.module[0]}
        return SimpleNamespace(name=lambda: "Orin", compute_capability=lambda: (8, 7),
                               get_attribute=attrs.__getitem__,
                               total_memory=lambda: self.module[1] << 20,
                               retain_primary_context=lambda: SimpleNamespace(push=lambda: None))

    def pagelocked_empty(self, n, dtype):
        return np.zeros(n, dtype)

    def mem_alloc(self, nbytes):
        return Memory(self, nbytes)

    def memcpy_htod_async(self, dev, host, stream):
        dev.buf[:host.size] = host

    def memcpy_dtoh_async(self, host, dev, stream):
        host[:] = dev.buf[:host.size]


UNET = {"frames": (-1, 24, -1, -1), "scores": (-1, 1, -1, -1)}  # engine.get_tensor_shape
CLASSIFIER_SIDE = 16  # a fixed-size window classifier, small for the test (256 in the product)
CLASSIFIER = {"frames": (-1, 1, CLASSIFIER_SIDE, CLASSIFIER_SIDE), "logit": (-1,)}


def _unet(x):
    return x.mean(axis=1, keepdims=True)


def _classifier(x):
    return x.mean(axis=(1, 2, 3))


class FakeContext:
    def __init__(self, engine, gpu):
        self.engine, self.gpu, self.addr, self.shape = engine, gpu, {}, None

    def set_input_shape(self, name, shape):
        lo, _, hi = self.engine.profile
        if not (len(shape) == len(lo) and lo[0] <= shape[0] <= hi[0]
                and tuple(shape[1:]) == tuple(lo[1:])):
            return False  # as TensorRT: outside the optimization profile
        self.shape = tuple(shape)
        return True

    def set_tensor_address(self, name, addr):
        self.addr[name] = addr

    def execute_async_v3(self, stream_handle):
        n = self.shape[0]
        x = self.gpu.memory[self.addr["frames"]].buf[:int(np.prod(self.shape))].reshape(self.shape)
        out = self.engine.net(x)
        self.gpu.memory[self.addr[self.engine.output]].buf[:out.size] = out.ravel()
        self.gpu.log.append(f"run {n}")
        return True

    def get_tensor_shape(self, name):
        return self.engine.net(np.zeros(self.shape, np.float32)).shape


class FakeEngine:
    num_io_tensors = 2

    def __init__(self, profile, gpu, dims=None, net=_unet):
        self.profile, self.gpu, self.dims, self.net = profile, gpu, dims or UNET, net
        self.output = [n for n in self.dims if n != "frames"][0]

    def get_tensor_name(self, i):
        return tuple(self.dims)[i]

    def get_tensor_mode(self, name):
        return "in" if name == "frames" else "out"

    def get_tensor_dtype(self, name):
        return "float"

    def get_tensor_shape(self, name):
        return self.dims[name]

    def get_tensor_profile_shape(self, name, index):
        return self.profile

    def create_execution_context(self):
        return FakeContext(self, self.gpu)


def fake_trt(profile, gpu, dims=None, net=_unet):
    runtime = SimpleNamespace(
        deserialize_cuda_engine=lambda data: FakeEngine(profile, gpu, dims, net))
    logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, level: None})
    return SimpleNamespace(__version__="10.3.0", Logger=logger,
                           Runtime=lambda logger: runtime, nptype=lambda dt: np.float32,
                           TensorIOMode=SimpleNamespace(INPUT="in", OUTPUT="out"))


@pytest.fixture
def open_fake(monkeypatch, tmp_path):
    def make(min_batch: int, max_batch: int, head_max_batch: int = 4, dims=None, net=_unet,
             tile: int = TILE, metadata=None, module=None):
        dims = dims or UNET
        gpu = FakeCuda()
        if module is not None:  # this device; the engine was built on an AGX Orin 64 GB
            gpu.module = module
        row = tuple(tile if d == -1 else d for d in dims["frames"][1:])
        shapes = tuple((b, *row) for b in (min_batch, max_batch, max_batch))
        monkeypatch.setattr(rt, "import_tensorrt", lambda: fake_trt(shapes, gpu, dims, net))
        monkeypatch.setattr(rt, "import_pycuda", lambda: gpu)
        path = tmp_path / "m.engine"
        path.write_bytes(b"plan")
        Sidecar(engine_sha256=sha256_file(path), onnx_sha256="a" * 64, onnx_name="m.onnx",
                tensorrt_version="10.3.0", device="Orin", compute_capability="8.7",
                sm_count=16, memory_mib=62841, precision="fp16", strongly_typed=False,
                input_name="frames",
                input_dtype="float32", output_name=[n for n in dims if n != "frames"][0],
                tile=tile, batch_sizes=(max_batch,),
                built_utc="2026-01-01T00:00:00+00:00",
                model_metadata=metadata or {}).write(path)
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


# -- the shapes an engine serves, from its own tensor shapes (-1: dynamic) ----------------------
def test_unet_shapes_run_dynamic_sides_at_the_tile():
    assert rt.input_shape((-1, 24, -1, -1), 512) == (None, 24, 512, 512)
    assert rt.output_shape((-1, 1, -1, -1), 512) == (None, 1, 512, 512)
    assert rt.row_elements((None, 24, 512, 512)) == 24 * 512 * 512
    assert rt.row_elements((None, 1, 512, 512)) == 512 * 512


def test_classifier_shapes_keep_the_fixed_window_whatever_the_tile():
    for tile in (256, 512):
        assert rt.input_shape((-1, 1, 256, 256), tile) == (None, 1, 256, 256)
        assert rt.output_shape((-1,), tile) == (None,)
    assert rt.row_elements((None, 1, 256, 256)) == 256 * 256
    assert rt.row_elements((None,)) == 1


def test_dims_as_tensorrt_gives_them_are_read_as_integers():
    dims = [np.int64(-1), np.int64(24), np.int64(-1), np.int64(-1)]  # a Dims is a sequence
    shape = rt.input_shape(dims, 64)
    assert shape == (None, 24, 64, 64) and all(type(d) is int for d in shape[1:])


@pytest.mark.parametrize("dims, what", [((-1, 0, 64, 64), "0 channels"),
                                        ((-1, -1, 64, 64), "dynamic channel count"),
                                        ((-1, 24, 64), "expected N x C x H x W"),
                                        ((-1, 24, 0, 64), "positive or dynamic")])
def test_bad_input_shapes_are_engine_errors(dims, what):
    with pytest.raises(EngineError, match=what) as err:
        rt.input_shape(dims, 64, "frames")
    assert "'frames'" in str(err.value)


@pytest.mark.parametrize("dims, what", [((), "has no dimensions: no batch dimension"),
                                        ((1,), "fixed at 1: no batch dimension"),
                                        ((4, 1, -1, -1), "fixed at 4: no batch dimension"),
                                        ((-1, 1, -1), "scores or N logits"),
                                        ((-1, -1, -1, -1), "dimension 1 is dynamic")])
def test_bad_output_shapes_are_engine_errors(dims, what):
    with pytest.raises(EngineError, match=what) as err:
        rt.output_shape(dims, 64, "logit")
    assert "'logit'" in str(err.value)


def test_an_output_channel_count_left_dynamic_is_taken_from_the_context():
    assert rt.output_shape((-1, -1, -1, -1), 64, at=(4, 1, 64, 64)) == (None, 1, 64, 64)


def test_unet_engine_specs_and_buffers(open_fake):
    engine, gpu = open_fake(1, 4)
    assert engine.input.shape == (None, 24, TILE, TILE)
    assert engine.output.shape == (None, 1, TILE, TILE)
    sizes = sorted(m.buf.size for m in gpu.memory.values())
    assert sizes == [4 * TILE * TILE] * 2 + [4 * 24 * TILE * TILE] * 2


@pytest.mark.parametrize("n", [1, 3])
def test_fixed_size_classifier_engine_gives_one_logit_per_window(open_fake, n):
    side = CLASSIFIER_SIDE
    engine, gpu = open_fake(1, 4, dims=CLASSIFIER, net=_classifier, tile=side)
    assert engine.input.shape == (None, 1, side, side) and engine.output.shape == (None,)
    assert engine.output.name == "logit"
    sizes = sorted(m.buf.size for m in gpu.memory.values())
    assert sizes == [4] * 2 + [4 * side * side] * 2  # buffers sized from the real shapes
    x = np.random.default_rng(n).random((n, 1, side, side), dtype=np.float32)
    np.testing.assert_allclose(engine.infer(x), x.mean(axis=(1, 2, 3)), rtol=1e-6)
    with pytest.raises(EngineError, match="takes input 'frames' float32 \\[\\? x 1 x 16 x 16\\]"):
        engine.infer(_tiles(1))  # a U-Net tile is not a window


def test_classifier_engine_short_batch_is_padded_and_cut(open_fake):
    side = CLASSIFIER_SIDE
    engine, gpu = open_fake(4, 4, dims=CLASSIFIER, net=_classifier, tile=side)
    x = np.random.default_rng(0).random((2, 1, side, side), dtype=np.float32)
    out = engine.infer(x)
    assert out.shape == (2,) and gpu.log[-2:] == ["run 4", "wait"]
    np.testing.assert_allclose(out, x.mean(axis=(1, 2, 3)), rtol=1e-6)


def test_classifier_engine_is_what_edge_classify_takes(open_fake):
    from edge.darkfield.classify import Classifier

    dims = {"frames": (-1, 1, 256, 256), "logit": (-1,)}
    engine, _ = open_fake(1, 2, dims=dims, net=_classifier, tile=512)
    assert engine.input.shape == (None, 1, 256, 256)  # the fixed window, not the tile
    clf = Classifier(engine, batch=2)  # refuses any engine that is not N x 1 x 256 x 256 -> N
    assert clf.region_threshold is None  # an engine built before sidecars carried metadata


def test_classifier_engine_reads_the_region_threshold_its_sidecar_carries(open_fake):
    from edge.darkfield.classify import Classifier

    dims = {"frames": (-1, 1, 256, 256), "logit": (-1,)}
    engine, _ = open_fake(1, 2, dims=dims, net=_classifier, tile=256,
                          metadata={"region_threshold": "0.97"})
    assert engine.metadata == {"region_threshold": "0.97"}
    clf = Classifier(engine, batch=2)
    assert (clf.region_threshold, clf.region_threshold_source) == (0.97, "the model's")


def test_engine_with_a_dynamic_channel_count_is_refused_naming_the_file(open_fake):
    dims = {"frames": (-1, -1, -1, -1), "scores": (-1, 1, -1, -1)}
    with pytest.raises(EngineError, match=r"m\.engine: input 'frames' .*dynamic channel count"):
        open_fake(1, 4, dims=dims)


def test_an_engine_built_on_an_agx_orin_is_refused_on_an_orin_nano(open_fake):
    """Both GPUs are 'Orin' to CUDA: the SM count and memory in the sidecar tell them apart."""
    with pytest.raises(EngineError, match=r"built for GPU 'Orin' \(compute 8.7, 16 SMs.*this "
                                          r"device has 'Orin' \(compute 8.7, 8 SMs, 7620 MiB"):
        open_fake(1, 4, module=(8, 7620))
    engine, _ = open_fake(1, 4)
    assert engine.identity["sm_count"] == 16 and engine.identity["memory_mib"] == 62841
