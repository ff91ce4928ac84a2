"""The logic around a TensorRT build, with a fake ``tensorrt`` (tests/export/fake_trt.py): the
flags and profile chosen, the engine cache key, the timing cache and INT8 calibration table files,
and the tensors of the model built (the U-Net's, the window classifier's), read from its ONNX.
"""

import logging
import sys

import numpy as np
import pytest

from edge.engine import Sidecar
from edge.engine.sidecar import Gpu
from export.tensorrt import BuildError, build_engine, cache_key, network_flags, profile_shapes
from tests.export.fake_trt import AGX_ORIN_64, ORIN_NANO_8, FakeCuda, FakeTRT, install, tiny_onnx

AGX = Gpu("Orin", "8.7", *AGX_ORIN_64)

LOG = "export.tensorrt"


@pytest.fixture
def onnx_file(tmp_path):
    """A U-Net-shaped model (frames N x 24 x H x W -> scores N x 1 x H x W): the build reads its
    tensors from the file."""
    pytest.importorskip("onnx")
    return tiny_onnx(tmp_path / "m.onnx", tag="model, first training")


@pytest.fixture
def classifier_file(tmp_path):
    """The window classifier's tensors: frames N x 1 x 256 x 256 -> logit N."""
    pytest.importorskip("onnx")
    return tiny_onnx(tmp_path / "c.onnx", channels=1, side=256, output="logit",
                     metadata={"region_threshold": "0.97", "network": "fusion"})


def _batches(value: float, n: int = 2, batch: int = 4) -> list[np.ndarray]:
    """Calibration batches of ``batch`` tiles: 4, the optimum of the default batch sizes."""
    return [np.full((batch, 24, 8, 8), value + i, np.float32) for i in range(n)]


def _build(onnx_file, out, **kw):
    kw.setdefault("cache_dir", None)
    kw.setdefault("tile", 8)
    return build_engine(onnx_file, out, **kw)


# -- 7: the optimization profile ------------------------------------------------------------
def test_profile_starts_at_batch_one_so_the_short_last_batch_of_a_roi_fits():
    assert profile_shapes([4], 512, 24) == ((1, 24, 512, 512), (4, 24, 512, 512),
                                            (4, 24, 512, 512))
    assert profile_shapes([2, 8], 64, 24)[0] == (1, 24, 64, 64)
    assert profile_shapes([2, 8], 256, 1, side=256)[0] == (1, 1, 256, 256)


def test_build_sets_the_profile_from_one_to_the_largest_batch(monkeypatch, tmp_path, onnx_file):
    trt = FakeTRT("10.3.0")
    install(monkeypatch, trt)
    _build(onnx_file, tmp_path / "m.engine", precision="fp16", batch_sizes=(4,))
    (profile,) = trt.config.profiles
    lo, opt, hi = profile.shapes["frames"]
    assert (lo[0], opt[0], hi[0]) == (1, 4, 4)


# -- 3: fp32 means fp32, not TF32 -----------------------------------------------------------
@pytest.mark.parametrize("version, strong", [("10.3.0", False), ("10.12.0", True),
                                             ("11.1.0", None)])
def test_fp32_engine_is_built_without_tf32(monkeypatch, tmp_path, onnx_file, version, strong):
    trt = FakeTRT(version)
    install(monkeypatch, trt)
    _build(onnx_file, tmp_path / "m.engine", precision="fp32", strongly_typed=strong)
    assert trt.BuilderFlag.TF32 not in trt.config.flags


def test_fp16_engine_keeps_tensorrts_default_tf32(monkeypatch, tmp_path, onnx_file):
    trt = FakeTRT("10.3.0")
    install(monkeypatch, trt)
    _build(onnx_file, tmp_path / "m.engine", precision="fp16")
    assert {trt.BuilderFlag.TF32, trt.BuilderFlag.FP16} <= trt.config.flags


def test_fp32_build_where_tensorrt_has_no_tf32_flag(monkeypatch, tmp_path, onnx_file):
    trt = FakeTRT("10.3.0")
    del trt.BuilderFlag.TF32
    install(monkeypatch, trt)
    r = _build(onnx_file, tmp_path / "m.engine", precision="fp32")
    assert r.sidecar.precision == "fp32"


# -- 8: STRONGLY_TYPED only where it still means something ----------------------------------
@pytest.mark.parametrize("version, expected", [("10.3.0", 1 << 5), ("10.12.0", 1 << 5),
                                               ("10.16.1", 1 << 5), ("11.0.0", 0),
                                               ("11.1.0", 0), ("11.4.1", 0)])
def test_strongly_typed_flag_is_passed_on_10x_only(version, expected):
    trt = FakeTRT(version)
    assert network_flags(trt, True) == expected
    assert network_flags(trt, False) == 0


def test_strongly_typed_build_on_tensorrt_without_the_flag_is_a_build_error():
    trt = FakeTRT("10.3.0")
    del trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED
    with pytest.raises(BuildError, match="strongly typed"):
        network_flags(trt, True)


def test_strongly_typed_build_on_11_creates_the_network_without_the_deprecated_flag(
        monkeypatch, tmp_path, onnx_file):
    trt = FakeTRT("11.1.0")
    install(monkeypatch, trt)
    r = _build(onnx_file, tmp_path / "m.engine", precision="fp32")
    assert r.sidecar.strongly_typed is True
    assert [n.flags for n in trt.networks] == [0]


# -- 2: the engine cache key ------------------------------------------------------------------
def test_cache_key_separates_typing_and_calibration_data():
    base = ("a" * 64, "10.12.0", AGX, "int8", 512, (1, 4))
    weak = cache_key(*base, strongly_typed=False, calibration_sha256="c" * 64)
    assert weak != cache_key(*base, strongly_typed=True, calibration_sha256="c" * 64)
    assert weak != cache_key(*base, strongly_typed=False, calibration_sha256="d" * 64)
    assert weak == cache_key(*base, strongly_typed=False, calibration_sha256="c" * 64)


def test_engine_cache_does_not_serve_a_weakly_typed_engine_for_a_strongly_typed_request(
        monkeypatch, tmp_path, onnx_file):
    install(monkeypatch, FakeTRT("10.12.0"))
    kw = dict(precision="fp32", cache_dir=tmp_path / "cache")
    weak = _build(onnx_file, tmp_path / "a.engine", strongly_typed=False, **kw)
    strong = _build(onnx_file, tmp_path / "b.engine", strongly_typed=True, **kw)
    again = _build(onnx_file, tmp_path / "c.engine", strongly_typed=True, **kw)
    assert not weak.from_cache and not strong.from_cache and again.from_cache
    assert strong.sidecar.strongly_typed and again.sidecar.strongly_typed


def test_engine_cache_does_not_serve_an_int8_engine_calibrated_on_other_data(
        monkeypatch, tmp_path, onnx_file):
    install(monkeypatch, FakeTRT("10.3.0"))
    kw = dict(precision="int8", cache_dir=tmp_path / "cache")
    first = _build(onnx_file, tmp_path / "a.engine", quantization_batches=_batches(0.1), **kw)
    other = _build(onnx_file, tmp_path / "b.engine", quantization_batches=_batches(0.5), **kw)
    same = _build(onnx_file, tmp_path / "c.engine", quantization_batches=_batches(0.5), **kw)
    assert (first.from_cache, other.from_cache, same.from_cache) == (False, False, True)


# -- 2: the timing cache ----------------------------------------------------------------------
def test_timing_cache_from_another_gpu_is_reported_and_replaced(monkeypatch, tmp_path, onnx_file,
                                                                caplog):
    trt = FakeTRT("10.3.0", device="Orin")
    install(monkeypatch, trt)
    tc = tmp_path / "timing.cache"
    tc.write_bytes(b"timing:10.3.0:Xavier")
    with caplog.at_level(logging.WARNING, logger=LOG):
        _build(onnx_file, tmp_path / "m.engine", precision="fp16", timing_cache=tc)
    assert trt.config.timing_caches_offered == [b"timing:10.3.0:Xavier", b""]
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert str(tc) in warning and "refused" in warning and "fresh" in warning
    assert tc.read_bytes() == trt.timing_signature  # this GPU's timings replace the others'


def test_unreadable_timing_cache_is_reported_and_replaced(monkeypatch, tmp_path, onnx_file,
                                                          caplog):
    trt = FakeTRT("10.3.0")
    install(monkeypatch, trt)
    tc = tmp_path / "timing.cache"
    tc.write_bytes(b"garbage")
    with caplog.at_level(logging.WARNING, logger=LOG):
        _build(onnx_file, tmp_path / "m.engine", precision="fp16", timing_cache=tc)
    assert trt.config.timing_caches_offered == [b""]
    assert any("timing cache" in r.getMessage() for r in caplog.records)
    assert tc.read_bytes() == trt.timing_signature


def test_matching_timing_cache_is_reused_quietly(monkeypatch, tmp_path, onnx_file, caplog):
    trt = FakeTRT("10.3.0")
    install(monkeypatch, trt)
    tc = tmp_path / "caches" / "timing.cache"  # its folder is created when it is first written
    with caplog.at_level(logging.WARNING, logger=LOG):
        _build(onnx_file, tmp_path / "a.engine", precision="fp16", timing_cache=tc)
        _build(onnx_file, tmp_path / "b.engine", precision="fp16", timing_cache=tc)
    assert trt.config.timing_caches_offered == [trt.timing_signature]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


# -- 1: the INT8 calibration table ------------------------------------------------------------
def test_calibration_table_folder_is_created(monkeypatch, tmp_path, onnx_file):
    trt = FakeTRT("10.3.0")
    install(monkeypatch, trt)
    out = tmp_path / "new" / "engines" / "m.engine"
    _build(onnx_file, out, precision="int8", quantization_batches=_batches(0.1))
    assert trt.calibrations == [2]
    assert len(list(out.parent.glob("*.calib"))) == 1


def test_calibration_table_of_another_model_or_data_is_not_reused(monkeypatch, tmp_path,
                                                                  onnx_file):
    trt = FakeTRT("10.3.0")
    install(monkeypatch, trt)
    out = tmp_path / "m.engine"
    kw = dict(precision="int8")
    _build(onnx_file, out, quantization_batches=_batches(0.1), **kw)
    _build(onnx_file, out, quantization_batches=_batches(0.1), **kw)
    assert trt.calibrations == [2] and trt.tables_reused == [b"table-1"]

    tiny_onnx(onnx_file, tag="model, retrained")
    _build(onnx_file, out, quantization_batches=_batches(0.1), **kw)
    assert trt.calibrations == [2, 2] and trt.tables_reused == [b"table-1"]

    _build(onnx_file, out, quantization_batches=_batches(0.7, n=3), **kw)
    assert trt.calibrations == [2, 2, 3] and trt.tables_reused == [b"table-1"]
    assert len(list(tmp_path.glob("*.calib"))) == 1  # the stale tables are gone


# -- 4: what a strongly typed build needs besides TensorRT -------------------------------------
def test_fp16_conversion_without_onnx_names_the_package_and_extra(monkeypatch, tmp_path,
                                                                  onnx_file):
    from export.tensorrt import _fp16_onnx

    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(BuildError, match=r"onnx.*glass-inspect\[jetson\]"):
        _fp16_onnx(onnx_file, tmp_path / "fp16.onnx")


@pytest.mark.parametrize("missing", ["onnx", "onnxruntime.quantization", "onnxruntime"])
def test_strongly_typed_int8_without_onnx_tools_is_a_build_error(monkeypatch, tmp_path,
                                                                 onnx_file, missing):
    trt = FakeTRT("11.1.0")
    cuda = install(monkeypatch, trt)
    for name in [m for m in sys.modules if m == missing or m.startswith(missing + ".")]:
        monkeypatch.setitem(sys.modules, name, None)  # with the submodules already imported
    monkeypatch.setitem(sys.modules, missing, None)
    with pytest.raises(BuildError, match=r"glass-inspect\[jetson\]"):
        _build(onnx_file, tmp_path / "m.engine", precision="int8",
               quantization_batches=_batches(0.1))
    assert not cuda.pushes  # refused before any GPU work


def test_strongly_typed_int8_builds_from_the_qdq_model(monkeypatch, tmp_path, onnx_file):
    pytest.importorskip("onnxruntime")
    import export.quantize

    seen = []

    def fake_qdq(src, out, batches):
        seen.append(len(batches))
        out.write_bytes(b"qdq")
        return out

    monkeypatch.setattr(export.quantize, "quantize_qdq", fake_qdq)
    trt = FakeTRT("11.1.0")
    install(monkeypatch, trt)
    r = _build(onnx_file, tmp_path / "m.engine", precision="int8",
               quantization_batches=_batches(0.1))
    assert seen == [2] and r.sidecar.strongly_typed and not trt.calibrations


# -- the model's own tensors: the U-Net as before, the window classifier -----------------------
def test_unet_build_keeps_its_profile_sidecar_and_cache_key(monkeypatch, tmp_path, onnx_file):
    trt = FakeTRT("10.3.0")
    install(monkeypatch, trt)
    r = _build(onnx_file, tmp_path / "m.engine", precision="fp16", batch_sizes=(1, 4), tile=512,
               cache_dir=tmp_path / "cache")
    (profile,) = trt.config.profiles
    assert profile.shapes == {"frames": ((1, 24, 512, 512), (4, 24, 512, 512),
                                         (4, 24, 512, 512))}
    sc = Sidecar.read(r.path)
    assert (sc.input_name, sc.input_dtype, sc.output_name, sc.tile) == ("frames", "float32",
                                                                        "scores", 512)
    (cached,) = (tmp_path / "cache").glob("*.engine")
    assert cached.name == cache_key(sc.onnx_sha256, "10.3.0", AGX, "fp16", 512, (1, 4)) + \
        ".engine"
    assert (sc.device, sc.compute_capability, sc.sm_count, sc.memory_mib) == ("Orin", "8.7",
                                                                              *AGX_ORIN_64)


def test_an_agx_orins_engine_in_the_cache_is_not_served_on_an_orin_nano(monkeypatch, tmp_path,
                                                                         onnx_file):
    """Both GPUs are named 'Orin': the SM count and memory keep their cache entries apart, and
    a Nano's build does not copy the AGX's engine."""
    kw = dict(precision="fp16", batch_sizes=(1, 4), tile=512, cache_dir=tmp_path / "cache")
    install(monkeypatch, FakeTRT("10.3.0"), FakeCuda(module=AGX_ORIN_64))
    agx = _build(onnx_file, tmp_path / "agx.engine", **kw)
    install(monkeypatch, FakeTRT("10.3.0"), FakeCuda(module=ORIN_NANO_8))
    nano = _build(onnx_file, tmp_path / "nano.engine", **kw)
    assert not agx.from_cache and not nano.from_cache
    assert (nano.sidecar.sm_count, nano.sidecar.memory_mib) == ORIN_NANO_8
    assert len(list((tmp_path / "cache").glob("*.engine"))) == 2
    again = _build(onnx_file, tmp_path / "nano2.engine", **kw)
    assert again.from_cache and again.sidecar.sm_count == 8


def test_unet_build_without_a_tile_is_built_at_512_as_before(monkeypatch, tmp_path, onnx_file):
    install(monkeypatch, FakeTRT("10.3.0"))
    r = build_engine(onnx_file, tmp_path / "m.engine", cache_dir=None)
    assert r.sidecar.tile == 512


@pytest.mark.parametrize("tile", [None, 256])
def test_classifier_build_takes_its_tensors_and_window_from_the_model(monkeypatch, tmp_path,
                                                                      classifier_file, tile):
    trt = FakeTRT("10.3.0")
    install(monkeypatch, trt)
    r = build_engine(classifier_file, tmp_path / "c.engine", precision="fp16",
                     batch_sizes=(1, 8), tile=tile, cache_dir=tmp_path / "cache")
    (profile,) = trt.config.profiles
    assert profile.shapes == {"frames": ((1, 1, 256, 256), (8, 1, 256, 256), (8, 1, 256, 256))}
    sc = Sidecar.read(r.path)
    assert (sc.input_name, sc.output_name, sc.tile, sc.batch_sizes) == ("frames", "logit", 256,
                                                                        (1, 8))
    assert sc.onnx_name == "c.onnx"
    # the model's metadata travels with the engine, for classify's region threshold
    assert sc.model_metadata == {"region_threshold": "0.97", "network": "fusion"}


def test_classifier_build_at_another_tile_is_refused_before_any_gpu_work(monkeypatch, tmp_path,
                                                                          classifier_file):
    trt = FakeTRT("10.3.0")
    cuda = install(monkeypatch, trt)
    with pytest.raises(BuildError, match="this model takes 256 x 256 windows; --tile 512 does "
                                         "not fit"):
        build_engine(classifier_file, tmp_path / "c.engine", tile=512, cache_dir=None)
    assert not cuda.pushes and not trt.configs
    assert not (tmp_path / "c.engine").exists()


@pytest.mark.parametrize("version", ["10.3.0", "11.1.0"])
def test_classifier_int8_is_refused_the_calibration_data_is_six_state(monkeypatch, tmp_path,
                                                                      classifier_file, version):
    trt = FakeTRT(version)
    cuda = install(monkeypatch, trt)
    windows = [np.zeros((2, 1, 256, 256), np.float32)]
    with pytest.raises(BuildError, match=r"1-channel input.*six-state.*24 channels.*fp16 or "
                                         "fp32"):
        build_engine(classifier_file, tmp_path / "c.engine", precision="int8",
                     quantization_batches=windows, cache_dir=None)
    assert not cuda.pushes and not trt.configs and not trt.calibrations


def test_int8_calibration_batches_of_another_tile_are_refused(monkeypatch, tmp_path, onnx_file):
    trt = FakeTRT("10.3.0")
    install(monkeypatch, trt)
    with pytest.raises(BuildError, match=r"calibration batch 0 is \[4, 24, 8, 8\]; the engine "
                                         "takes N x 24 x 16 x 16"):
        _build(onnx_file, tmp_path / "m.engine", precision="int8", tile=16,
               quantization_batches=_batches(0.1))
    assert not trt.calibrations


@pytest.mark.parametrize("tiles, batch_sizes", [(2, (1, 4)), (4, (2, 8)), (1, (1,))])
def test_int8_calibration_batches_not_at_the_profiles_optimum_are_refused(
        monkeypatch, tmp_path, onnx_file, tiles, batch_sizes):
    """TensorRT calibrates at the profile's optimum (the largest batch size); the calibrator
    says one batch size for every batch. A batch of another size is refused before any GPU
    work, naming the size wanted."""
    trt = FakeTRT("10.3.0")
    cuda = install(monkeypatch, trt)
    opt = max(batch_sizes)
    batches = _batches(0.1, n=2, batch=opt)
    batches[1] = batches[1][:tiles] if tiles < opt else np.concatenate([batches[1]] * 2)
    with pytest.raises(BuildError, match=rf"INT8 calibration batch 1 holds {len(batches[1])} "
                                         rf"tile\(s\).*optimum, batch {opt}.*hold {opt} tiles"):
        _build(onnx_file, tmp_path / "m.engine", precision="int8", batch_sizes=batch_sizes,
               quantization_batches=batches)
    assert not cuda.pushes and not trt.configs and not trt.calibrations
    # at the optimum it calibrates
    _build(onnx_file, tmp_path / "m.engine", precision="int8", batch_sizes=batch_sizes,
           quantization_batches=_batches(0.1, n=2, batch=opt))
    assert trt.calibrations == [2]


def test_the_calibrator_itself_refuses_a_batch_off_the_optimum():
    from export.tensorrt import _make_calibrator

    with pytest.raises(BuildError, match="batch 0 holds 2 tile"):
        _make_calibrator(FakeTRT("10.3.0"), None, _batches(0.1, batch=2), None, (1, 4))


def test_strongly_typed_int8_takes_calibration_tiles_in_any_batching(monkeypatch, tmp_path,
                                                                     onnx_file):
    """The Q/DQ quantizer reads the batches tile by tile: no profile optimum to match."""
    pytest.importorskip("onnxruntime")
    import export.quantize

    monkeypatch.setattr(export.quantize, "quantize_qdq",
                        lambda src, out, batches: out.write_bytes(b"qdq") and out)
    install(monkeypatch, FakeTRT("11.1.0"))
    r = _build(onnx_file, tmp_path / "m.engine", precision="int8",
               quantization_batches=_batches(0.1, batch=3))
    assert r.sidecar.strongly_typed


def test_engine_cache_keeps_the_unet_and_the_classifier_apart(monkeypatch, tmp_path, onnx_file,
                                                              classifier_file):
    install(monkeypatch, FakeTRT("10.3.0"))
    kw = dict(precision="fp16", batch_sizes=(1, 4), cache_dir=tmp_path / "cache")
    unet = build_engine(onnx_file, tmp_path / "u.engine", tile=256, **kw)
    classifier = build_engine(classifier_file, tmp_path / "c.engine", **kw)
    assert not unet.from_cache and not classifier.from_cache  # same tile, other model: built
    again = build_engine(classifier_file, tmp_path / "c2.engine", **kw)
    assert again.from_cache and again.sidecar.output_name == "logit"
    assert len(list((tmp_path / "cache").glob("*.engine"))) == 2
