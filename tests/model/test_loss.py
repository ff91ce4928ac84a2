import pytest

torch = pytest.importorskip("torch")

from model.loss import autoencoder_loss, autoencoder_target, cross_entropy_loss  # noqa: E402


def _tiny():
    mask = torch.zeros(1, 1, 4, 4)
    mask[0, 0, 0, 0] = 1
    bright = torch.full((1, 1, 4, 4), 0.5)
    outs = [torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 1, 1)]
    return outs, mask, bright


def test_target_is_plus_one_on_scratches_and_minus_brightness_elsewhere():
    _, mask, bright = _tiny()
    t = autoencoder_target(mask, bright)
    assert t[0, 0, 0, 0] == 1 and torch.all(t.flatten()[1:] == -0.5)


def test_autoencoder_loss_by_hand():
    outs, mask, bright = _tiny()
    # full scale: the scratch pixel is 1 too low (fn, weight 0.3); 15 pixels are 0.5 too high
    # (fp 0.25, weight 0.7): (0.3 + 15 * 0.175) / 16
    # half scale: 1 scratch cell, 3 others: (0.3 + 3 * 0.175) / 4; quarter scale: one scratch cell
    expected = (0.3 + 15 * 0.175) / 16 + (0.3 + 3 * 0.175) / 4 + 0.3
    assert autoencoder_loss(outs, mask, bright, alpha=0.7).item() == pytest.approx(expected)
    assert expected == pytest.approx(0.6890625)


def test_alpha_weights_false_positives_against_false_negatives():
    outs, mask, bright = _tiny()
    only_fn = autoencoder_loss(outs, mask, bright, alpha=0.0).item()
    only_fp = autoencoder_loss(outs, mask, bright, alpha=1.0).item()
    assert only_fn == pytest.approx(1 / 16 + 1 / 4 + 1)
    assert only_fp == pytest.approx(15 * 0.25 / 16 + 3 * 0.25 / 4)
    with pytest.raises(ValueError):
        autoencoder_loss(outs, mask, bright, alpha=1.5)


def test_cross_entropy_sums_the_scales():
    outs, mask, _ = _tiny()
    ln2 = torch.log(torch.tensor(2.0)).item()
    assert cross_entropy_loss(outs, mask).item() == pytest.approx(3 * ln2)
