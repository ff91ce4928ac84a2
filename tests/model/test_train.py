import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from model.loss import autoencoder_loss  # noqa: E402
from model.train import (  # noqa: E402
    CheckpointError,
    Trainer,
    TrainSettings,
    load_checkpoint,
    model_from_checkpoint,
)
from model.unet import GlassUNet, UNetSpec  # noqa: E402

TINY = dict(width=0.125, levels=4, steps_per_epoch=2, batch_size=2, val_patches=2, patch=512,
            lr=1e-3)


def test_a_few_steps_reduce_the_loss_on_a_tiny_batch():
    torch.manual_seed(0)
    net = GlassUNet(UNetSpec(width=0.125, levels=4))
    x = torch.rand(2, 24, 64, 64) * 0.05
    mask = torch.zeros(2, 1, 64, 64)
    mask[:, :, 30:32, 10:50] = 1
    x[:, 5, 30:32, 10:50] += 0.5  # a line lit in one state only
    bright = x.amax(dim=1, keepdim=True)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, betas=(0.5, 0.9), eps=1e-8)
    losses = []
    for _ in range(25):
        loss = autoencoder_loss(net(x), mask, bright)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_checkpoints_resume_to_the_same_weights(cfg, tmp_path):
    straight = Trainer(TrainSettings(epochs=2, **TINY), cfg, tmp_path / "a", progress=False)
    straight.run()
    first = Trainer(TrainSettings(epochs=1, **TINY), cfg, tmp_path / "b", progress=False)
    first.run()
    resumed = Trainer(TrainSettings(epochs=2, **TINY), cfg, tmp_path / "b", progress=False)
    resumed.run(resume=True)
    a, b = load_checkpoint(tmp_path / "a" / "last.pt"), load_checkpoint(tmp_path / "b" / "last.pt")
    assert a["epoch"] == b["epoch"] == 2
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    history = json.loads((tmp_path / "a" / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]
    assert {"val_loss", "pixel_recall", "scratch_recall", "map_fp_rate"} <= history[0].keys()
    assert (tmp_path / "a" / "loss.png").stat().st_size > 1000
    assert a["head_digest"] == cfg.digest() and a["pipeline"]["t_low"] == cfg.pipeline.t_low
    model = model_from_checkpoint(a)
    assert not model.training


def test_resume_refuses_other_settings(cfg, tmp_path):
    Trainer(TrainSettings(epochs=1, **TINY), cfg, tmp_path, progress=False).run()
    other = Trainer(TrainSettings(epochs=2, **{**TINY, "lr": 5e-4}), cfg, tmp_path,
                    progress=False)
    with pytest.raises(CheckpointError, match="lr"):
        other.run(resume=True)


def test_fusion_network_trains_on_windows(cfg, tmp_path):
    s = TrainSettings(network="fusion", epochs=1, **{**TINY, "val_patches": 2})
    Trainer(s, cfg, tmp_path, progress=False).run()
    h = load_checkpoint(tmp_path / "last.pt")["history"][0]
    assert {"accuracy", "precision", "recall"} <= h.keys()
    assert np.isfinite(h["train_loss"])


@pytest.mark.parametrize("content", [b"", b"not a checkpoint", b"PK\x03\x04junk"])
def test_unreadable_checkpoints_give_one_clear_error(tmp_path, content):
    p = tmp_path / "x.pt"
    p.write_bytes(content)
    with pytest.raises(CheckpointError, match="x.pt"):
        load_checkpoint(p)
    with pytest.raises(CheckpointError, match="no such"):
        load_checkpoint(tmp_path / "missing.pt")


def test_settings_are_validated():
    with pytest.raises(ValueError, match="scratch_per_batch"):
        TrainSettings(batch_size=2, scratch_per_batch=3)
    with pytest.raises(ValueError, match="network"):
        TrainSettings(network="resnet")


def test_a_run_resumes_with_its_window_cache_moved(cfg, tmp_path):
    first = Trainer(TrainSettings(epochs=1, window_cache=str(tmp_path / "a"), window_pool=4,
                                  **TINY), cfg, tmp_path / "run", progress=False)
    first.run()
    moved = Trainer(TrainSettings(epochs=2, window_cache=str(tmp_path / "b"), window_pool=4,
                                  **TINY), cfg, tmp_path / "run", progress=False)
    assert moved.resume() and moved.epoch == 1
    other = Trainer(TrainSettings(epochs=2, window_cache=str(tmp_path / "b"), window_pool=5,
                                  **TINY), cfg, tmp_path / "run", progress=False)
    with pytest.raises(CheckpointError, match="window_pool"):
        other.resume()
