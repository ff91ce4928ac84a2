"""The TensorRT build: what can be checked without a GPU, and the real build where one exists."""

from types import SimpleNamespace

import numpy as np
import pytest

from export.tensorrt import BuildError, cache_key, choose_strong, profile_shapes
from tests.conftest import UNET_MODEL

TRT_10_3 = SimpleNamespace(__version__="10.3.0", IInt8EntropyCalibrator2=object,
                           BuilderFlag=SimpleNamespace(FP16=1, INT8=2))
TRT_11 = SimpleNamespace(__version__="11.0.0", BuilderFlag=SimpleNamespace(GPU_FALLBACK=1))


def test_cache_key_changes_with_each_part():
    base = ("a" * 64, "10.3.0", "Orin (nvgpu)", "int8", 512, (1, 4), False, "c" * 64)
    key = cache_key(*base)
    assert key == "aaaaaaaaaaaaaaaa_trt10.3.0_orin-nvgpu_int8-weak_t512_b1-4_qcccccccccccccccc_k2"
    for i, other in enumerate(("b" * 64, "10.4.0", "H100", "fp16", 256, (1, 8), True, "d" * 64)):
        changed = list(base)
        changed[i] = other
        assert cache_key(*changed) != key
    # FP32 and FP16 builds read no calibration data: it does not split their cache entries
    fp16 = ("a" * 64, "10.3.0", "Orin", "fp16", 512, (1, 4))
    assert cache_key(*fp16, calibration_sha256="c" * 64) == cache_key(*fp16)
    with pytest.raises(ValueError, match="precision"):
        cache_key("a" * 64, "10.3.0", "Orin", "int4", 512, (1,))


def test_profile_covers_the_configured_batches():
    assert profile_shapes([4, 1, 2], 512) == ((1, 24, 512, 512), (4, 24, 512, 512),
                                              (4, 24, 512, 512))


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
