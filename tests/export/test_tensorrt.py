"""The TensorRT build: what can be checked without a GPU, and the real build where one exists."""

from types import SimpleNamespace

import numpy as np
import pytest

from edge.engine.sidecar import Gpu
from export.tensorrt import (
    BuildError,
    ModelIO,
    cache_key,
    check_precision,
    choose_strong,
    default_tile,
    profile_shapes,
    read_model_io,
    resolve_tile,
)
from tests.conftest import SHIPPED_MODEL, UNET_MODEL
from tests.export.fake_trt import tiny_onnx

AGX = Gpu("Orin", "8.7", 16, 62841)  # the AGX Orin 64 GB as CUDA describes it

TRT_10_3 = SimpleNamespace(__version__="10.3.0", IInt8EntropyCalibrator2=object,
                           BuilderFlag=SimpleNamespace(FP16=1, INT8=2))
TRT_11 = SimpleNamespace(__version__="11.0.0", BuilderFlag=SimpleNamespace(GPU_FALLBACK=1))


def test_cache_key_changes_with_each_part():
    base = ("a" * 64, "10.3.0", Gpu("Orin (nvgpu)", "8.7", 16, 62841), "int8", 512, (1, 4),
            False, "c" * 64)
    key = cache_key(*base)
    assert key == ("aaaaaaaaaaaaaaaa_trt10.3.0_orin-nvgpu-cc8.7-sm16-64g_int8-weak_t512_b1-4_"
                   "qcccccccccccccccc_k2")
    for i, other in enumerate(("b" * 64, "10.4.0", Gpu("H100", "9.0", 132, 81080), "fp16", 256,
                               (1, 8), True, "d" * 64)):
        changed = list(base)
        changed[i] = other
        assert cache_key(*changed) != key
    # FP32 and FP16 builds read no calibration data: it does not split their cache entries
    fp16 = ("a" * 64, "10.3.0", AGX, "fp16", 512, (1, 4))
    assert cache_key(*fp16, calibration_sha256="c" * 64) == cache_key(*fp16)
    with pytest.raises(ValueError, match="precision"):
        cache_key("a" * 64, "10.3.0", AGX, "int4", 512, (1,))


@pytest.mark.parametrize("module", [Gpu("Orin", "8.7", 14, 30593),   # AGX Orin 32 GB
                                    Gpu("Orin", "8.7", 8, 15388),    # Orin NX 16 GB
                                    Gpu("Orin", "8.7", 8, 7620),     # Orin Nano 8 GB
                                    Gpu("Orin", "8.7", 4, 3448)])    # Orin Nano 4 GB
def test_cache_key_tells_the_orin_modules_apart(module):
    """CUDA names every Orin's GPU 'Orin': an AGX's engine must not be a Nano's cache hit."""
    args = ("a" * 64, "10.3.0")
    assert cache_key(*args, module, "fp16", 512, (1, 4)) != cache_key(*args, AGX, "fp16", 512,
                                                                         (1, 4))
    # a JetPack update moving the carveouts by some MiB keeps the key (the memory class)
    moved = Gpu("Orin", "8.7", module.sm_count, module.memory_mib - 40)
    assert cache_key(*args, moved, "fp16", 512, (1, 4)) == cache_key(*args, module, "fp16", 512,
                                                                       (1, 4))


def test_profile_covers_the_configured_batches():
    assert profile_shapes([4, 1, 2], 512, 24) == ((1, 24, 512, 512), (4, 24, 512, 512),
                                                  (4, 24, 512, 512))


def test_profile_takes_the_models_channels_and_fixed_window():
    assert profile_shapes([1, 8], 256, 1, side=256) == ((1, 1, 256, 256), (8, 1, 256, 256),
                                                        (8, 1, 256, 256))
    with pytest.raises(ValueError, match="takes 256 x 256 windows; --tile 512 does not fit"):
        profile_shapes([1, 8], 512, 1, side=256)
    for bad in (0, -1):
        with pytest.raises(ValueError, match="channel count must be positive"):
            profile_shapes([1], 64, bad)


UNET_IO = ModelIO("frames", "float32", 24, None, "scores", 4)
CLASSIFIER_IO = ModelIO("frames", "float32", 1, 256, "logit", 1)


def test_models_are_read_from_their_onnx_graph(tmp_path):
    pytest.importorskip("onnx")
    assert read_model_io(tiny_onnx(tmp_path / "u.onnx")) == UNET_IO
    classifier = tiny_onnx(tmp_path / "c.onnx", channels=1, side=256, output="logit")
    assert read_model_io(classifier) == CLASSIFIER_IO
    dynamic = tiny_onnx(tmp_path / "d.onnx", channels=1, output="logit")
    assert read_model_io(dynamic) == ModelIO("frames", "float32", 1, None, "logit", 1)
    for shipped in (UNET_MODEL, SHIPPED_MODEL):  # the U-Net and the hybrid, as exported
        assert read_model_io(shipped) == UNET_IO


def test_models_the_build_cannot_serve_are_refused_before_any_gpu_work(tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    def save(name, in_dims, out_dims, out="scores"):
        node = helper.make_node("Identity", ["frames"], [out])
        graph = helper.make_graph(
            [node], "g", [helper.make_tensor_value_info("frames", TensorProto.FLOAT, in_dims)],
            [helper.make_tensor_value_info(out, TensorProto.FLOAT, out_dims)])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        onnx.save(model, str(tmp_path / name))
        return tmp_path / name

    cases = [(save("c.onnx", ["n", "c", 64, 64], ["n", "c", 64, 64]), "channel count is not fixed"),
             (save("r.onnx", ["n", 64, 64], ["n", 64, 64]), "expected N x C x H x W"),
             (save("s.onnx", ["n", 1, 128, 64], ["n", 1, 128, 64]), "square tiles"),
             (save("o.onnx", ["n", 1, 8, 8], ["n", 1, 8], "x"), "scores or N logits")]
    (tmp_path / "junk.onnx").write_bytes(b"model, first training")
    cases.append((tmp_path / "junk.onnx", "not a readable ONNX model"))
    for path, what in cases:
        with pytest.raises(BuildError, match=what):
            read_model_io(path)


def test_tile_follows_a_fixed_size_model_and_the_head_otherwise():
    assert resolve_tile(UNET_IO, None, 512) == 512 and resolve_tile(UNET_IO, 64, 512) == 64
    assert resolve_tile(CLASSIFIER_IO, None, 512) == 256
    assert resolve_tile(CLASSIFIER_IO, 256, 512) == 256
    with pytest.raises(BuildError, match="this model takes 256 x 256 windows; --tile 512 does "
                                         "not fit"):
        resolve_tile(CLASSIFIER_IO, 512)
    # a classifier exported with a dynamic height and width (export onnx does so): its window
    dynamic = ModelIO("frames", "float32", 1, None, "logit", 1)
    assert default_tile(dynamic, 512) == 256 and resolve_tile(dynamic, 128, 512) == 128


def test_int8_is_refused_for_a_model_the_six_state_calibration_data_cannot_feed():
    check_precision(UNET_IO, "int8")
    for precision in ("fp32", "fp16"):
        check_precision(CLASSIFIER_IO, precision)
    with pytest.raises(BuildError, match="1-channel input.*six-state.*fp16 or fp32"):
        check_precision(CLASSIFIER_IO, "int8", "c.onnx")


def test_cache_key_separates_the_unet_and_the_classifier():
    unet = cache_key("a" * 64, "10.3.0", AGX, "fp16", 512, (1, 4))
    classifier = cache_key("b" * 64, "10.3.0", AGX, "fp16", 256, (1, 4))
    assert unet == "aaaaaaaaaaaaaaaa_trt10.3.0_orin-cc8.7-sm16-64g_fp16-weak_t512_b1-4_k2"
    assert classifier != unet
    # the model's hash alone separates two models even at the same tile
    assert cache_key("b" * 64, "10.3.0", AGX, "fp16", 512, (1, 4)) != unet


def test_typing_follows_the_installed_tensorrt():
    assert choose_strong(TRT_10_3, None) is False
    assert choose_strong(TRT_10_3, True) is True
    assert choose_strong(TRT_11, None) is True
    with pytest.raises(BuildError, match="build strongly typed"):
        choose_strong(TRT_11, False)


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_real_build_and_cache(tmp_path, precision):
    pytest.importorskip("tensorrt")
    pytest.importorskip("pycuda")
    from edge.engine import Sidecar
    from export.tensorrt import build_engine

    kw = dict(precision=precision, batch_sizes=(1, 2), tile=64, cache_dir=tmp_path / "cache",
              timing_cache=tmp_path / "timing.cache")
    first = build_engine(UNET_MODEL, tmp_path / "a.engine", **kw)
    again = build_engine(UNET_MODEL, tmp_path / "b.engine", **kw)
    assert not first.from_cache and again.from_cache
    assert (tmp_path / "timing.cache").stat().st_size > 0
    assert Sidecar.read(tmp_path / "b.engine").precision == precision
    assert np.isfinite(first.seconds)
