import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from export.onnx import INPUT_NAME, ExportError, export_onnx  # noqa: E402
from model.train import CheckpointError, Trainer, TrainSettings  # noqa: E402


def _checkpoint(cfg, path, **changes):
    s = TrainSettings(width=0.125, levels=5, epochs=1, steps_per_epoch=1, batch_size=1,
                      val_patches=1, patch=512, **changes)
    t = Trainer(s, cfg, path, progress=False)
    return t.save("last.pt")


@pytest.fixture(scope="module")
def nested_ckpt(cfg, tmp_path_factory):
    return _checkpoint(cfg, tmp_path_factory.mktemp("nested"))


def test_export_checks_parity_and_names(nested_ckpt, tmp_path):
    r = export_onnx(nested_ckpt, tmp_path / "m.onnx", tile=128)
    assert r.parity_max_abs <= 1e-4
    m = onnx.load(str(r.path))
    assert m.opset_import[0].version == 17
    assert [i.name for i in m.graph.input] == [INPUT_NAME]
    assert [o.name for o in m.graph.output] == ["scores"]
    meta = {p.key: p.value for p in m.metadata_props}
    assert meta["network"] == "unet" and "head_digest" in meta
    sess = ort.InferenceSession(str(r.path), providers=["CPUExecutionProvider"])
    for batch in (1, 3):  # dynamic batch
        x = np.random.default_rng(batch).random((batch, 24, 128, 128), np.float32)
        (y,) = sess.run(None, {INPUT_NAME: x})
        assert y.shape == (batch, 1, 128, 128)


def test_nested_weights_are_stored_once(cfg, nested_ckpt, tmp_path):
    plain_ckpt = _checkpoint(cfg, tmp_path / "plain", nested=False)
    nested = export_onnx(nested_ckpt, tmp_path / "n.onnx", tile=64)
    plain = export_onnx(plain_ckpt, tmp_path / "p.onnx", tile=64)
    m = onnx.load(str(nested.path))
    pools = [i for i in m.graph.initializer if len(i.dims) == 4 and i.dims[0] == i.dims[1] == 64]
    assert len(pools) == 1  # the 64 x 64 x 3 x 3 pool of a width-1/8, 5-level network
    assert nested.bytes < 0.6 * plain.bytes
    assert nested.parameters < plain.parameters


def test_all_scales_and_fusion_outputs(cfg, nested_ckpt, tmp_path):
    r = export_onnx(nested_ckpt, tmp_path / "all.onnx", tile=64, all_scales=True)
    assert r.outputs == ("scores", "scores_half", "scores_quarter")
    fusion = _checkpoint(cfg, tmp_path / "fusion", network="fusion")
    f = export_onnx(fusion, tmp_path / "f.onnx")
    assert f.outputs == ("logit",) and f.parity_max_abs <= 1e-4


def test_bad_checkpoint_and_tile_are_refused(nested_ckpt, tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00" * 100)
    with pytest.raises(CheckpointError):
        export_onnx(bad, tmp_path / "x.onnx")
    with pytest.raises(ExportError, match="divisor"):
        export_onnx(nested_ckpt, tmp_path / "x.onnx", tile=100)
    assert not (tmp_path / "x.onnx").exists()


def test_a_window_classifier_decides_at_its_validated_operating_point(cfg, tmp_path):
    """Validation's best threshold t becomes the exported model's 0.5: logit - logit(t)."""
    import json
    import math

    from model.train import load_checkpoint

    s = TrainSettings(network="fusion", data="darkfield", width=0.125, frame_px=512,
                      train_images=2, val_images=1, val_windows=4, batch_size=2,
                      steps_per_epoch=1, epochs=1, window_cache=str(tmp_path / "cache"))
    best = Trainer(s, cfg, tmp_path / "run", progress=False).run()
    ckpt = load_checkpoint(best)
    ckpt["history"][-1]["best_threshold"] = 0.25
    torch.save(ckpt, tmp_path / "t25.pt")
    shifted = export_onnx(tmp_path / "t25.pt", tmp_path / "shifted.onnx")
    raw = export_onnx(tmp_path / "t25.pt", tmp_path / "raw.onnx", raw_logit=True)
    assert shifted.operating_point == 0.25 and raw.operating_point is None
    x = np.random.default_rng(0).random((3, 1, 256, 256), np.float32) * 0.3
    out = {}
    for r in (shifted, raw):
        sess = ort.InferenceSession(str(r.path), providers=["CPUExecutionProvider"])
        (out[r.path.stem],) = sess.run(None, {INPUT_NAME: x})
        dims = [d.dim_value for d in onnx.load(str(r.path)).graph.input[0].type.tensor_type
                .shape.dim]
        assert dims[1:] == [1, 256, 256]  # whole windows; only the batch is free
    assert np.allclose(out["shifted"], out["raw"] - math.log(0.25 / 0.75), atol=1e-4)
    meta = {p.key: p.value for p in onnx.load(str(shifted.path)).metadata_props}
    point = json.loads(meta["operating_point"])
    assert point["threshold"] == 0.25 and point["logit_offset"] == pytest.approx(-1.0986, 1e-4)
