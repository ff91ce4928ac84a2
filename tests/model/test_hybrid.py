import numpy as np
import pytest

torch = pytest.importorskip("torch")

from edge.sim import OpticsRenderer, generate_sample  # noqa: E402
from model import baselines  # noqa: E402
from model.hybrid import (  # noqa: E402
    DN,
    HybridNet,
    HybridSpec,
    PhysicsLayers,
    line_kernels,
)
from model.train import Trainer, TrainSettings, load_checkpoint  # noqa: E402

CONTRAST, SIGNAL, GATED, DIRT, BRIGHT, LINE_MAX, LINE_MEAN, GATE = range(8)


def _input(frames: np.ndarray) -> torch.Tensor:
    """RAW frames (6, H, W) -> the network's (1, 24, H/2, W/2) input (channel 4 s + site)."""
    from edge.kernels.space_to_depth import space_to_depth

    return torch.from_numpy(space_to_depth(frames, bit_depth=12))[None]


def _decompress(f: torch.Tensor) -> torch.Tensor:
    from model.hybrid import COMPRESS_DN, COMPRESS_NORM

    return torch.expm1(f * COMPRESS_NORM) * COMPRESS_DN


def test_the_fixed_contrast_is_the_physics_baselines_on_rendered_frames(cfg):
    r = OpticsRenderer(cfg, shape=(256, 256)).render(
        generate_sample(11, cfg.stage.roi_grid.extent_mm, 1.0), (5.0, 5.0), noise_seed=3)
    want, _, _ = baselines._contrast_gate(r.frames)
    feats = PhysicsLayers(HybridSpec())(_input(r.frames))[0]
    got = _decompress(feats[CONTRAST]).numpy()
    pooled = want.reshape(64, 2, 64, 2).max(axis=(1, 3))  # the features are 2x2 max-pooled
    np.testing.assert_allclose(got, pooled, rtol=1e-3, atol=0.05)


def _scene(states: list[float], shape: str) -> np.ndarray:
    """Dark frames (dark level 40 DN) with a line or a blob added in the given states."""
    frames = np.full((6, 128, 128), 40, np.uint16)
    where = np.zeros((128, 128), bool)
    if shape == "line":
        where[63:65, 20:108] = True
    else:
        where[56:72, 56:72] = True
    for k, level in enumerate(states):
        frames[k][where] += np.uint16(level)
    return frames


def test_the_gate_opens_for_light_from_few_states_and_stays_shut_for_light_from_all():
    layers = PhysicsLayers(HybridSpec())
    scratch = layers(_input(_scene([0, 0, 800, 0, 0, 0], "line")))[0]
    dust = layers(_input(_scene([800, 820, 790, 810, 800, 805], "blob")))[0]
    assert scratch[GATE, 15, 15].item() == pytest.approx(1.0)
    assert dust[GATE, 16, 16].item() == pytest.approx(0.0, abs=0.05)
    assert _decompress(dust[DIRT, 16, 16]).item() > 3000  # bright in every state
    assert _decompress(scratch[DIRT, 15, 15]).item() < 1


def test_the_line_filter_prefers_lines_to_blobs():
    layers = PhysicsLayers(HybridSpec())
    line = layers(_input(_scene([0, 0, 800, 0, 0, 0], "line")))[0]
    blob = layers(_input(_scene([0, 0, 800, 0, 0, 0], "blob")))[0]
    ratio = lambda f: (_decompress(f[LINE_MAX]) / _decompress(f[LINE_MEAN]).clamp_min(1))  # noqa: E731
    assert ratio(line)[15, 15].item() > 2.0
    assert ratio(blob)[16, 16].item() < 1.2


def test_line_kernels_are_unit_lines_in_each_orientation():
    k = line_kernels(9, 12)
    assert k.shape == (12, 1, 9, 9)
    np.testing.assert_allclose(k.sum(dim=(1, 2, 3)).numpy(), 1.0, rtol=1e-6)
    assert torch.equal(k[0, 0, 4] > 0, torch.ones(9, dtype=torch.bool))  # horizontal
    assert torch.equal(k[6, 0, :, 4] > 0, torch.ones(9, dtype=torch.bool))  # vertical


def test_outputs_are_half_and_quarter_resolution_scores():
    net = HybridNet(HybridSpec(features=8))
    x = torch.rand(2, 24, 64, 96) * 0.05
    with torch.no_grad():
        full, quarter = net(x)
    assert full.shape == (2, 1, 64, 96) and quarter.shape == (2, 1, 32, 48)
    assert float(full.min()) >= 0.0 and float(full.max()) <= 1.0
    assert net.spec.divisor == 4


@pytest.mark.parametrize("bad", [dict(features=2), dict(line_px=8), dict(orientations=2),
                                 dict(in_channels=12), dict(activation="relu")])
def test_bad_specs_are_refused(bad):
    with pytest.raises(ValueError):
        HybridSpec(**bad)


def test_the_loss_chooses_the_output_activation():
    assert TrainSettings(network="hybrid", loss="bce").spec().activation == "sigmoid"
    assert TrainSettings(network="hybrid", loss="autoencoder").spec().activation == "tanh"
    net = HybridNet(HybridSpec(features=8, activation="tanh"))
    with torch.no_grad():
        full, _ = net(torch.rand(1, 24, 32, 32) * 0.05)
    assert float(full.min()) >= -1.0 and float(full.max()) <= 1.0


def test_a_hybrid_run_trains_checkpoints_and_exports(cfg, tmp_path):
    pytest.importorskip("onnxruntime")
    from edge.engine import open_engine
    from export.onnx import export_onnx

    s = TrainSettings(network="hybrid", loss="bce", features=8, epochs=1, steps_per_epoch=2,
                      batch_size=2, scratch_per_batch=1, val_patches=2, patch=512, lr=2e-3)
    best = Trainer(s, cfg, tmp_path / "run", progress=False).run()
    ckpt = load_checkpoint(best)
    assert ckpt["network"] == "hybrid" and ckpt["spec"]["features"] == 8
    r = export_onnx(best, tmp_path / "h.onnx", tile=128)
    assert r.outputs == ("scores",) and r.parity_max_abs <= 1e-4
    engine = open_engine(tmp_path / "h.onnx", "onnxruntime", 1, 2)
    x = (np.random.default_rng(0).random((2, 24, 128, 128)) * 100 / DN).astype(np.float32)
    out = engine.infer(x)
    assert out.shape == (2, 1, 128, 128) and np.isfinite(out).all()


def _long_line_z(amp: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """z-scores of the long-line channels (11, 31, 91 cells) on 768 px noisy frames (3 DN) with
    a 2 px line of ``amp`` DN in one state, and the quarter cells the line crosses."""
    rng = np.random.default_rng(seed)
    frames = rng.normal(200.0, 3.0, (6, 768, 768))
    yy, xx = np.mgrid[:768, :768]
    line = (np.abs(yy - 384 - 0.3 * (xx - 384)) < 1.0) & (xx > 60) & (xx < 700)
    frames[2][line] += amp
    layers = PhysicsLayers(HybridSpec(line_lengths=(11, 31, 91)))
    with torch.no_grad():
        f = layers(_input(np.clip(frames, 0, 4095).astype(np.uint16)))[0]
    z = (torch.expm1(f[8:] * np.log1p(64.0)) / 4.0).numpy()
    return z, line.reshape(192, 4, 192, 4).any(axis=(1, 3))


def test_a_long_faint_line_stands_out_of_the_noise_only_when_summed_along_its_length():
    line, on = _long_line_z(8.0, 1)  # 8 DN: under 3 noise sigmas per pixel
    noise, _ = _long_line_z(0.0, 2)
    margin = [np.median(line[i][on]) / noise[i].max() for i in range(3)]
    assert margin[2] > 1.5, margin  # 91 cells: clear of every noise cell of a whole frame
    assert margin[0] < 1.2, margin  # 11 cells: lost among the noise's highest
    assert margin[0] < margin[1] < margin[2]


def test_long_line_specs_are_checked_and_set_the_divisor():
    assert HybridSpec(line_lengths=[11, 31, 91]).line_lengths == (11, 31, 91)  # JSON lists
    assert HybridSpec(line_lengths=(11, 31, 91)).divisor == 8
    assert HybridSpec(line_lengths=(11, 31, 91)).channels == 11
    for bad in ((10,), (11, 11), (3,)):
        with pytest.raises(ValueError, match="line_lengths"):
            HybridSpec(line_lengths=bad)
