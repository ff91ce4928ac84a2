"""A stand-in for ``tensorrt`` and ``pycuda.driver`` at build time, for the logic around them.

It keeps what a build asked for (network flags, builder flags, the optimization profile, the
timing caches offered) and plays the parts of TensorRT that the export code reacts to:

* a timing cache carries the TensorRT version and GPU it was made on; ``set_timing_cache``
  refuses (returns False) one made elsewhere, as TensorRT does with ``ignore_mismatch=False``;
* an INT8 build asks its calibrator for a cached table first and calibrates (reads every batch,
  then writes a table) only when there is none, as TensorRT does;
* the TF32 builder flag is on in a new builder config.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np


class _Flags(SimpleNamespace):
    pass


def _flags(version: str) -> tuple[SimpleNamespace, SimpleNamespace, bool]:
    major = int(version.split(".")[0])
    if major >= 11:  # precision flags and the implicit INT8 calibrator are gone
        return _Flags(TF32=6, GPU_FALLBACK=3), SimpleNamespace(STRONGLY_TYPED=5), False
    return _Flags(FP16=0, INT8=1, TF32=6), SimpleNamespace(STRONGLY_TYPED=5), True


class FakeTimingCache:
    def __init__(self, data: bytes):
        self.data = bytes(data)

    def serialize(self) -> bytes:
        return self.data


class FakeConfig:
    def __init__(self, trt: FakeTRT):
        self.trt = trt
        self.flags = {trt.BuilderFlag.TF32} if hasattr(trt.BuilderFlag, "TF32") else set()
        self.profiles = []
        self.int8_calibrator = None
        self.calibration_profile = None
        self.timing_cache = None
        self.timing_caches_offered = []

    def set_memory_pool_limit(self, pool, size):
        self.workspace = size

    def add_optimization_profile(self, profile):
        self.profiles.append(profile)
        return len(self.profiles) - 1

    def set_calibration_profile(self, profile):
        self.calibration_profile = profile

    def set_flag(self, flag):
        self.flags.add(flag)

    def clear_flag(self, flag):
        self.flags.discard(flag)

    def get_flag(self, flag):
        return flag in self.flags

    def create_timing_cache(self, data):
        if bytes(data) == b"garbage":
            raise RuntimeError("not a timing cache")
        return FakeTimingCache(data)

    def set_timing_cache(self, cache, ignore_mismatch):
        self.timing_caches_offered.append(cache.data)
        if cache.data not in (b"", self.trt.timing_signature) and not ignore_mismatch:
            return False
        self.timing_cache = cache
        return True

    def get_timing_cache(self):
        return FakeTimingCache(self.trt.timing_signature)


class FakeProfile:
    def __init__(self):
        self.shapes = {}

    def set_shape(self, name, lo, opt, hi):
        self.shapes[name] = (tuple(lo), tuple(opt), tuple(hi))


class FakeBuilder:
    def __init__(self, trt: FakeTRT, logger):
        self.trt = trt

    def create_network(self, flags=0):
        net = SimpleNamespace(flags=flags)
        self.trt.networks.append(net)
        return net

    def create_builder_config(self):
        cfg = FakeConfig(self.trt)
        self.trt.configs.append(cfg)
        return cfg

    def create_optimization_profile(self):
        return FakeProfile()

    def build_serialized_network(self, network, config):
        cal = config.int8_calibrator
        if cal is not None:
            table = cal.read_calibration_cache()
            if table is None:
                n = 0
                while cal.get_batch(["frames"]) is not None:
                    n += 1
                self.trt.calibrations.append(n)
                cal.write_calibration_cache(b"table-" + str(len(self.trt.calibrations)).encode())
            else:
                self.trt.tables_reused.append(bytes(table))
        return b"plan:" + self.trt.__version__.encode() + b":" + str(sorted(config.flags)).encode()


class FakeParser:
    def __init__(self, network, logger):
        self.num_errors = 0

    def parse_from_file(self, path):
        return True


class FakeTRT:
    """``import tensorrt as trt`` for the build code: ``FakeTRT("10.3.0")`` or ``("11.1.0")``."""

    def __init__(self, version: str = "10.3.0", device: str = "Orin"):
        self.__version__ = version
        self.BuilderFlag, self.NetworkDefinitionCreationFlag, weak = _flags(version)
        self.MemoryPoolType = SimpleNamespace(WORKSPACE=0)
        self.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda s, level=2: None})
        self.timing_signature = f"timing:{version}:{device}".encode()
        self.networks, self.configs = [], []
        self.calibrations, self.tables_reused = [], []
        self.Builder = lambda logger: FakeBuilder(self, logger)
        self.OnnxParser = FakeParser
        if weak:
            self.IInt8EntropyCalibrator2 = type(
                "IInt8EntropyCalibrator2", (), {"__init__": lambda s: None})

    @property
    def config(self) -> FakeConfig:
        return self.configs[-1]


class FakeDevice:
    def __init__(self, cuda: FakeCuda):
        self.cuda = cuda

    def name(self):
        return self.cuda.device

    def compute_capability(self):
        return (8, 7)

    def get_attribute(self, attr):
        assert attr == self.cuda.device_attribute.MULTIPROCESSOR_COUNT, attr
        return self.cuda.sm_count

    def total_memory(self):
        return self.cuda.memory_mib << 20

    def retain_primary_context(self):
        return SimpleNamespace(push=lambda: self.cuda.pushes.append(1))


class _DeviceMemory:
    def __init__(self, nbytes):
        self.nbytes = nbytes

    def __int__(self):
        return 1


# (SMs, MiB CUDA reports) of Orin modules, all named "Orin": AGX Orin 64 GB and Orin Nano 8 GB
AGX_ORIN_64 = (16, 62841)
ORIN_NANO_8 = (8, 7620)


class FakeCuda:
    """``import pycuda.driver as cuda`` for the build code (the calibrator's device buffer). The
    GPU is an AGX Orin 64 GB unless ``module`` says otherwise (:data:`ORIN_NANO_8`)."""

    device_attribute = SimpleNamespace(MULTIPROCESSOR_COUNT=16)  # pycuda's enum member

    def __init__(self, device: str = "Orin", module: tuple[int, int] = AGX_ORIN_64):
        self.device = device
        self.sm_count, self.memory_mib = module
        self.pushes = []
        self.Context = SimpleNamespace(pop=lambda: None)

    def init(self):
        pass

    def Device(self, i):  # noqa: N802 - pycuda's name
        return FakeDevice(self)

    def mem_alloc(self, nbytes):
        return _DeviceMemory(nbytes)

    def memcpy_htod(self, dev, host):
        assert isinstance(host, np.ndarray) and host.dtype == np.float32


def install(monkeypatch, trt: FakeTRT, cuda: FakeCuda | None = None) -> FakeCuda:
    """Make ``export.tensorrt`` see the fakes as TensorRT and pycuda."""
    import export.tensorrt as mod

    cuda = cuda or FakeCuda()
    monkeypatch.setattr(mod, "import_tensorrt", lambda: trt)
    monkeypatch.setattr(mod, "import_pycuda", lambda: cuda)
    return cuda


def tiny_onnx(path, channels: int = 24, side: int | None = None, output: str = "scores",
              tag: str = "", metadata: dict[str, str] | None = None):
    """A small ONNX model with the product's tensors, for the build to read: input ``frames``
    ``N x channels x H x W`` (``H``, ``W`` fixed at ``side``, or dynamic), output ``scores``
    ``N x 1 x H x W`` (the channel mean, a U-Net's shape) or ``logit`` ``N`` (the window mean,
    the classifier's). ``tag`` goes into the doc string: another tag, another file hash;
    ``metadata`` into its metadata_props, as the exporter writes them."""
    import onnx
    from onnx import TensorProto, helper

    hw = [side, side] if side else ["height", "width"]
    inp = helper.make_tensor_value_info("frames", TensorProto.FLOAT, ["batch", channels, *hw])
    if output == "logit":
        node = helper.make_node("ReduceMean", ["frames"], ["logit"], axes=[1, 2, 3], keepdims=0)
        out = helper.make_tensor_value_info("logit", TensorProto.FLOAT, ["batch"])
    else:
        node = helper.make_node("ReduceMean", ["frames"], [output], axes=[1], keepdims=1)
        out = helper.make_tensor_value_info(output, TensorProto.FLOAT, ["batch", 1, *hw])
    graph = helper.make_graph([node], "tiny", [inp], [out])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              doc_string=tag)
    model.ir_version = 8
    onnx.helper.set_model_props(model, dict(metadata or {}))
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path
