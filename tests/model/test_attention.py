import pytest

torch = pytest.importorskip("torch")

from model.attention import (  # noqa: E402
    ATROUS_RATES,
    AttentionFusionNet,
    ChannelAttention,
    FusionSpec,
    ScaleAttention,
    brightness_adjust,
    window_origins,
)


def test_one_logit_per_window():
    net = AttentionFusionNet(FusionSpec(width=0.125))
    out = net(torch.rand(3, 24, 256, 256))
    assert tuple(out.shape) == (3,)


def test_four_scale_attentions_then_channel_attention():
    net = AttentionFusionNet(FusionSpec(width=0.125))
    sa = [m for m in net.body if isinstance(m, ScaleAttention)]
    assert len(sa) == 4
    assert isinstance(net.channel_attention, ChannelAttention)
    assert [c[0].dilation for c in sa[0].atrous] == [(r, r) for r in ATROUS_RATES]


def test_brightness_adjustment_stretches_each_channel_to_full_range():
    x = torch.rand(2, 3, 8, 8) * 0.1 + 0.02
    x[1, 2] = 0.5  # a flat channel maps to zero, not to a division by zero
    y = brightness_adjust(x)
    assert torch.allclose(y[0].amin(dim=(1, 2)), torch.zeros(3), atol=1e-6)
    assert torch.allclose(y[0].amax(dim=(1, 2)), torch.ones(3), atol=1e-5)
    assert torch.all(y[1, 2] == 0)
    # eqs. 1-3 literally
    v_min, v_max = x[0, 0].min(), x[0, 0].max()
    w_mult = 1.0 / (v_max - v_min)
    assert torch.allclose(y[0, 0], x[0, 0] * w_mult - w_mult * v_min, atol=1e-6)


def test_channel_attention_is_eq8():
    ca = ChannelAttention(16)
    p = torch.rand(1, 16, 5, 5)
    sc = torch.sigmoid(ca.w_d(torch.relu(ca.w_u(p.mean(dim=(2, 3), keepdim=True)))))
    ss = torch.sigmoid(ca.w_s(p))
    assert torch.allclose(ca(p), sc * p + ss * p)


def test_windows_of_256_with_stride_128_cover_the_side():
    assert window_origins(512) == [0, 128, 256]
    assert window_origins(600) == [0, 128, 256, 344]
    with pytest.raises(ValueError):
        window_origins(100)
