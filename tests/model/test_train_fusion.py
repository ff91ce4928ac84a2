"""The attention fusion classifier trained on single dark-field windows (``data="darkfield"``)."""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from edge.cli import main  # noqa: E402
from model.attention import FusionSpec  # noqa: E402
from model.train import (  # noqa: E402
    CheckpointError,
    Trainer,
    TrainSettings,
    darkfield_loss,
    faint_weights,
    load_checkpoint,
    model_from_checkpoint,
)
from model.windows import image_split  # noqa: E402


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny batches gain nothing from threads, and on a busy machine two threads contending
    for a shared core make every step many times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny(tmp_path, **changes) -> TrainSettings:
    """Seconds per epoch: 512 px frames, 3 training and 2 validation frames, 8 windows."""
    base = dict(network="fusion", data="darkfield", width=0.125, frame_px=512, train_images=3,
                val_images=2, val_windows=8, batch_size=4, steps_per_epoch=2, lr=1e-3,
                window_cache=str(tmp_path / "cache"))
    return TrainSettings(**{**base, **changes})


def test_darkfield_trains_the_single_frame_classifier_and_reports_window_metrics(cfg, tmp_path):
    out = tmp_path / "run"
    Trainer(tiny(tmp_path, epochs=1), cfg, out, progress=False).run()
    ckpt = load_checkpoint(out / "best.pt")
    assert ckpt["spec"] == FusionSpec(width=0.125, in_channels=1, whiten=True).to_dict()
    h = json.loads((out / "history.json").read_text())[0]
    assert {"val_loss", "accuracy", "precision", "recall", "f1", "best_threshold",
            "best_threshold_f1"} <= h.keys()
    assert 0.0 < h["best_threshold"] < 1.0 and h["best_threshold_f1"] >= h["f1"]
    assert np.isfinite(h["train_loss"]) and np.isfinite(h["val_loss"])
    # the training frames, and only those, fed the windows; the validation set is cached
    assert ckpt["windows"]["image_seeds"] == [0, 1, 2]
    assert len(list((tmp_path / "cache").glob("darkfield-windows-*.npz"))) == 1
    net = model_from_checkpoint(ckpt)
    assert tuple(net(torch.rand(2, 1, 256, 256)).shape) == (2,)


def test_validation_frames_come_after_the_training_ones_and_never_the_test_ones(cfg, tmp_path):
    t = Trainer(tiny(tmp_path, epochs=1), cfg, tmp_path / "run", progress=False)
    split = image_split(0, 3, 2, 1)
    ws = t.validation_windows
    assert set(ws.image_seeds.tolist()) == set(split.validation) == {3, 4}
    assert t.sampler.image_seeds == split.train
    assert len(ws) == 8


def test_a_resumed_run_equals_a_straight_one(cfg, tmp_path):
    # patience 1 also exercises the learning-rate drop across the resume
    s1 = tiny(tmp_path, epochs=1, lr_drop_patience=1)
    s2 = tiny(tmp_path, epochs=3, lr_drop_patience=1)
    Trainer(s2, cfg, tmp_path / "a", progress=False).run()
    Trainer(s1, cfg, tmp_path / "b", progress=False).run()
    Trainer(s2, cfg, tmp_path / "b", progress=False).run(resume=True)
    a, b = load_checkpoint(tmp_path / "a" / "last.pt"), load_checkpoint(tmp_path / "b" / "last.pt")
    assert a["epoch"] == b["epoch"] == 3
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    assert a["lr_drops"] == b["lr_drops"]
    assert a["optimizer"]["param_groups"][0]["lr"] == b["optimizer"]["param_groups"][0]["lr"]
    strip = [{k: v for k, v in h.items() if k not in ("train_s", "val_s")}
             for h in a["history"]]
    assert strip == [{k: v for k, v in h.items() if k not in ("train_s", "val_s")}
                     for h in b["history"]]
    assert [h["lr"] for h in a["history"]][0] == 1e-3


def test_learning_rate_drops_after_patience_epochs_without_a_lower_loss(cfg, tmp_path):
    t = Trainer(tiny(tmp_path, epochs=9, lr_drop_patience=2), cfg, tmp_path, progress=False)
    for epoch, loss in enumerate([1.0, 0.9, 0.95, 0.91, 0.92, 0.93, 0.8, 0.85], 1):
        t.epoch = epoch
        t.history.append({"epoch": epoch, "val_loss": loss})
        t._maybe_drop_lr()
    # best at 2; 4 is two epochs later: drop; the count restarts: 6; best at 7, 8 is only one
    assert t.lr_drops == [4, 6]
    assert t.opt.param_groups[0]["lr"] == pytest.approx(1e-5)


def test_batches_are_a_pure_function_of_seed_and_step(cfg, tmp_path):
    a = Trainer(tiny(tmp_path), cfg, tmp_path / "a", progress=False)
    b = Trainer(tiny(tmp_path), cfg, tmp_path / "b", progress=False)
    c = Trainer(tiny(tmp_path, seed=1), cfg, tmp_path / "c", progress=False)
    xa, ya, wa = a.darkfield_batch(3)
    b.darkfield_batch(0)  # another access order changes nothing
    xb, yb, wb = b.darkfield_batch(3)
    assert torch.equal(xa, xb) and torch.equal(ya, yb) and torch.equal(wa, wb)
    assert xa.shape == (4, 1, 256, 256) and xa.dtype == torch.float32
    assert set(ya.tolist()) <= {0.0, 1.0}
    assert not torch.equal(xa, c.darkfield_batch(3)[0])
    for k, v in a.model.state_dict().items():  # the same seed, the same initial weights
        assert torch.equal(v, b.model.state_dict()[k]), k


def test_flips_keep_the_window_and_its_label(cfg, tmp_path):
    t = Trainer(tiny(tmp_path), cfg, tmp_path, progress=False)
    x, y, _ = t.darkfield_batch(5)
    raw, labels = t.sampler.batch(5 * 4, 4)
    assert np.array_equal(y.numpy(), labels.astype(np.float32))
    for got, want in zip(x.numpy(), raw, strict=True):
        assert any(np.array_equal(got[0], f) for f in
                   (want[0], want[0, ::-1], want[0, :, ::-1], want[0, ::-1, ::-1]))


@pytest.mark.parametrize("switches", [dict(ba=False), dict(sa=False), dict(ca=False),
                                      dict(ba=False, sa=False, ca=False)])
def test_ablation_variants_train_and_record_their_spec(cfg, tmp_path, switches):
    Trainer(tiny(tmp_path, epochs=1, **switches), cfg, tmp_path / "run", progress=False).run()
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    spec = FusionSpec(**ckpt["spec"])
    assert all(getattr(spec, k) == v for k, v in switches.items())
    model_from_checkpoint(ckpt)  # rebuilds the variant: strict state-dict keys


def test_a_checkpoint_without_newer_settings_resumes_as_their_defaults(cfg, tmp_path):
    Trainer(tiny(tmp_path, epochs=1), cfg, tmp_path, progress=False).run()
    ckpt = load_checkpoint(tmp_path / "last.pt")
    # as written before the switches and the schedule existed: at their defaults in this run
    for key in ("ba", "sa", "ca", "lr_drop_patience"):
        del ckpt["settings"][key]
    torch.save(ckpt, tmp_path / "last.pt")
    t = Trainer(tiny(tmp_path, epochs=2), cfg, tmp_path, progress=False)
    assert t.resume() and t.epoch == 1
    # a missing setting this run does not have at its default is a different run
    del ckpt["settings"]["val_windows"]  # 8 here, 512 by default
    torch.save(ckpt, tmp_path / "last.pt")
    with pytest.raises(CheckpointError, match="val_windows"):
        Trainer(tiny(tmp_path, epochs=2), cfg, tmp_path, progress=False).resume()


def test_settings_are_validated():
    with pytest.raises(ValueError, match="network must be 'fusion'"):
        TrainSettings(network="unet", data="darkfield")
    with pytest.raises(ValueError, match="data must be"):
        TrainSettings(network="fusion", data="mono")
    with pytest.raises(ValueError, match="fusion' only"):
        TrainSettings(network="hybrid", sa=False)
    with pytest.raises(ValueError, match="frame_px"):
        TrainSettings(network="fusion", data="darkfield", frame_px=300)
    with pytest.raises(ValueError, match="lr_drop_patience"):
        TrainSettings(lr_drop_patience=-1)
    assert TrainSettings(network="fusion").spec() == FusionSpec(width=0.125, in_channels=24)


def test_faint_windows_are_left_out_of_the_loss():
    logits = torch.tensor([2.0, -1.0, 0.5, 3.0])
    labels = torch.tensor([1.0, 0.0, -1.0, -1.0])
    seen = torch.nn.functional.binary_cross_entropy_with_logits(logits[:2], labels[:2])
    assert torch.allclose(darkfield_loss(logits, labels), seen)
    logits.requires_grad_(True)
    loss = darkfield_loss(logits, torch.full((4,), -1.0))
    loss.backward()  # a batch of faint windows only: zero, and still a graph
    assert float(loss) == 0.0 and not logits.grad.any()


def test_faint_weight_weighs_visible_scratch_windows_below_15_only():
    labels = np.array([1, 1, 0, -1, 1])
    visibility = np.array([6.0, 40.0, 3.0, 2.0, 14.9])
    assert faint_weights(labels, visibility, 3.0).tolist() == [3.0, 1.0, 1.0, 1.0, 3.0]
    assert faint_weights(labels, visibility, 1.0).tolist() == [1.0] * 5
    logits = torch.tensor([-1.0, 2.0, 0.5, 3.0])
    y = torch.tensor([1.0, 1.0, 0.0, -1.0])
    per = torch.nn.functional.binary_cross_entropy_with_logits(logits[:3], y[:3],
                                                               reduction="none")
    w = torch.tensor([3.0, 1.0, 1.0, 1.0])
    assert torch.allclose(darkfield_loss(logits, y, w), (3 * per[0] + per[1] + per[2]) / 5)
    assert torch.allclose(darkfield_loss(logits, y, torch.ones(4)), darkfield_loss(logits, y))


def test_training_batches_carry_the_faint_weight_of_each_window(cfg, tmp_path):
    t = Trainer(tiny(tmp_path, faint_weight=4.0), cfg, tmp_path, progress=False)
    _, y, w = t.darkfield_batch(2)
    _, labels, vis = t.sampler.batch_visibility(2 * 4, 4)
    assert np.array_equal(w.numpy(), faint_weights(labels, vis, 4.0))
    assert np.array_equal(y.numpy(), labels.astype(np.float32))
    with pytest.raises(ValueError, match="faint_weight"):
        TrainSettings(faint_weight=2.0)  # six-state data: no visibility to weigh by
    with pytest.raises(ValueError, match="faint_weight"):
        tiny(tmp_path, faint_weight=0.5)


def test_single_frame_networks_whiten_their_input():
    spec = TrainSettings(network="fusion", data="darkfield", width=0.25).spec()
    assert spec.in_channels == 1 and spec.whiten


def test_the_six_state_fusion_spec_is_unchanged():
    # the default data keeps the 24-channel network with every module, as before
    spec = TrainSettings(network="fusion", width=0.25).spec()
    assert (spec.in_channels, spec.ba, spec.sa, spec.ca, spec.whiten) == (24, True, True, True,
                                                                         False)


def test_cli_says_what_does_not_fit(tmp_path, capsys):
    assert main(["train", "--network", "unet", "--data", "darkfield", "--out",
                 str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "network must be 'fusion'" in err and "Traceback" not in err


def test_validation_reports_the_operating_point_with_the_best_f1():
    from model.train import _decisions, _logit

    truth = np.array([True, True, True, False, False, False])
    logits = np.array([2.0, -0.5, -1.0, -3.0, -2.5, 0.5])
    at_half = _decisions(logits >= 0, truth)
    assert (at_half["precision"], at_half["recall"]) == (0.5, 0.3333)
    lower = _decisions(logits >= _logit(0.25), truth)  # logit(0.25) = -1.1: all three found
    assert lower["recall"] == 1.0 and lower["f1"] == round(6 / 7, 4)


def test_extra_training_frames_come_from_far_seeds_and_init_starts_from_weights(cfg, tmp_path):
    from model.windows import EXTRA_TRAIN_SEED, train_seeds

    assert train_seeds(3, 2) == (0, 1, 2, EXTRA_TRAIN_SEED, EXTRA_TRAIN_SEED + 1)
    first = tmp_path / "first"
    Trainer(tiny(tmp_path, epochs=1), cfg, first, progress=False).run()
    t = Trainer(tiny(tmp_path, epochs=1, extra_train_images=2, init=str(first / "last.pt")),
                cfg, tmp_path / "second", progress=False)
    assert t.sampler.image_seeds == train_seeds(3, 2)
    start = load_checkpoint(first / "last.pt")["model"]
    assert all(torch.equal(v, start[k]) for k, v in t.model.state_dict().items())
    with pytest.raises(ValueError, match="extra_train_images"):
        TrainSettings(extra_train_images=2)  # six-state data has no frames to add
    with pytest.raises(CheckpointError, match="--init needs"):
        Trainer(tiny(tmp_path, width=0.25, init=str(first / "last.pt")), cfg,
                tmp_path / "third", progress=False)
    # the whitening is fixed: a run with another background side starts from the same weights
    wider = Trainer(tiny(tmp_path, background_px=31, init=str(first / "last.pt")), cfg,
                    tmp_path / "wider", progress=False)
    assert wider.spec.background_px == 31 and wider.model.whiten.size == 31
    assert all(torch.equal(v, start[k]) for k, v in wider.model.state_dict().items())
    # so does a checkpoint whitened with another camera's noise model (a fixed stage too)
    other = load_checkpoint(first / "last.pt")
    other["spec"]["read_noise_dn"] = 4.0
    torch.save(other, tmp_path / "other-camera.pt")
    Trainer(tiny(tmp_path, init=str(tmp_path / "other-camera.pt")), cfg, tmp_path / "fourth",
            progress=False)
    with pytest.raises(ValueError, match="background_px"):
        TrainSettings(background_px=31)  # six-state windows are not whitened


def test_extra_frames_can_draw_fainter_scratches_and_only_they_do(cfg, tmp_path):
    from model.windows import EXTRA_TRAIN_SEED

    t = Trainer(tiny(tmp_path, extra_train_images=2, extra_peak_dn=(3.0, 6.0)), cfg,
                tmp_path / "run", progress=False)
    extra = (EXTRA_TRAIN_SEED, EXTRA_TRAIN_SEED + 1)
    assert t.sampler.alt_seeds == frozenset(extra)
    assert t.sampler.alt_config.scratch_peak_dn == (3.0, 6.0)
    assert t.sampler.config.scratch_peak_dn == t.darkfield.scratch_peak_dn  # the split's frames
    chained = Trainer(tiny(tmp_path, extra_train_images=2, extra_chain_share=0.75), cfg,
                      tmp_path / "chained", progress=False)
    assert chained.sampler.alt_config.chain_share == 0.75
    assert chained.sampler.alt_config.scratch_peak_dn == t.darkfield.scratch_peak_dn
    assert chained.sampler.config.chain_share == 0.25
    with pytest.raises(ValueError, match="extra_chain_share"):
        TrainSettings(data="darkfield", network="fusion", extra_chain_share=0.5)
    assert t.sampler.settings()["alt_seeds"] == list(extra)  # recorded in the checkpoint
    for bad, match in [(dict(extra_peak_dn=(3.0, 6.0)), "needs extra_train_images"),
                       (dict(extra_train_images=2, extra_peak_dn=(6.0, 3.0)), "LO < HI"),
                       (dict(extra_train_images=2, extra_peak_dn=(3.0,)), "LO < HI")]:
        with pytest.raises(ValueError, match=match):
            tiny(tmp_path, **bad)


def test_a_fine_tune_keeps_the_batch_norm_statistics_of_its_start_unless_told(cfg, tmp_path):
    """Mixed batches of another camera's frames would move the running statistics the
    simulated windows are normalised with (model.train: freeze_norm)."""
    first = tmp_path / "first"
    Trainer(tiny(tmp_path, epochs=1), cfg, first, progress=False).run()
    start = load_checkpoint(first / "last.pt")["model"]
    stats = [k for k in start if k.endswith(("running_mean", "running_var"))]
    assert stats

    def after(**changes):
        out = tmp_path / f"run-{len(list(tmp_path.iterdir()))}"
        Trainer(tiny(tmp_path, epochs=1, init=str(first / "last.pt"), **changes), cfg, out,
                progress=False).run()
        return load_checkpoint(out / "last.pt")["model"]

    frozen = after()  # the default with init
    assert all(torch.equal(frozen[k], start[k]) for k in stats)
    assert any(not torch.equal(frozen[k], start[k]) for k in start if k not in stats
               and "num_batches" not in k)  # the weights did learn
    learnt = after(freeze_norm=False)
    assert any(not torch.equal(learnt[k], start[k]) for k in stats)
    with pytest.raises(ValueError, match="freeze_norm"):
        tiny(tmp_path, freeze_norm=True)  # nothing to keep without a start
