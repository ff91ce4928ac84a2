import pytest

torch = pytest.importorskip("torch")

from model.attention import (  # noqa: E402
    ATROUS_RATES,
    AttentionFusionNet,
    ChannelAttention,
    FusionSpec,
    ScaleAttention,
    Whiten,
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


@pytest.mark.parametrize("ba", [True, False])
@pytest.mark.parametrize("sa", [True, False])
@pytest.mark.parametrize("ca", [True, False])
def test_ablation_switches_remove_exactly_their_module(ba, sa, ca):
    spec = FusionSpec(width=0.125, in_channels=1, ba=ba, sa=sa, ca=ca)
    net = AttentionFusionNet(spec)
    assert net.stem[0][0].in_channels == (2 if ba else 1)  # BA concatenates the stretched copy
    assert sum(isinstance(m, ScaleAttention) for m in net.modules()) == (4 if sa else 0)
    assert isinstance(net.channel_attention, ChannelAttention) == ca
    assert tuple(net(torch.rand(2, 1, 64, 64)).shape) == (2,)


def test_variant_names_are_table_iii_rows():
    assert FusionSpec().variant == "ResNet18+CA+SA+BA"
    assert FusionSpec(ba=False, sa=False, ca=False).variant == "ResNet18"
    assert FusionSpec(sa=False, ba=False).variant == "ResNet18+CA"
    assert FusionSpec(sa=False).variant == "ResNet18+CA+BA"
    assert FusionSpec(ba=False).variant == "ResNet18+CA+SA"


def test_ba_feeds_the_stretched_window_next_to_the_raw_one():
    torch.manual_seed(0)
    net = AttentionFusionNet(FusionSpec(width=0.125, in_channels=1)).eval()
    with torch.no_grad():
        net.stem[0][0].weight[:, 0] = 0.0  # silence the raw channel: only BA's copy is seen
    x = torch.rand(2, 1, 64, 64) * 0.1
    # eqs. 1-3 remove gain and offset, so a brighter exposure of the same window is the same
    assert torch.allclose(net(x), net(x * 3.0 + 0.2), atol=1e-5)


def test_old_specs_without_switches_rebuild_the_full_network():
    old = {"width": 0.125, "in_channels": 24}  # a checkpoint's spec before the switches
    full = AttentionFusionNet(FusionSpec(width=0.125))
    rebuilt = AttentionFusionNet(FusionSpec(**old))
    assert rebuilt.spec == FusionSpec(width=0.125, in_channels=24, ba=True, sa=True, ca=True)
    rebuilt.load_state_dict(full.state_dict())  # strict: the same keys and shapes
    assert "channel_attention.w_u.weight" in full.state_dict()
    assert "body.2.reduce.0.weight" in full.state_dict()  # the SA of stage 1 keeps its index


def test_wrong_channel_count_is_one_clear_error():
    net = AttentionFusionNet(FusionSpec(width=0.125, in_channels=1))
    with pytest.raises(ValueError, match=r"takes windows N x 1 x H x W, got 2 x 24 x 64 x 64"):
        net(torch.rand(2, 24, 64, 64))
    with pytest.raises(ValueError, match="in_channels"):
        FusionSpec(in_channels=0)
    with pytest.raises(ValueError, match="ba must be True or False"):
        FusionSpec(ba="no")


def noisy_flat(level_dn, spec, shape=(4, 1, 64, 64), seed=0):
    """A flat window at ``level_dn`` (12 bit) with the spec's camera noise, scaled to [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    sigma = (spec.read_noise_dn ** 2 + spec.conversion_gain * (level_dn - spec.black_dn)) ** 0.5
    return (level_dn + sigma * torch.randn(shape, generator=g)) / 4095.0


def test_whitening_puts_any_haze_level_into_noise_units():
    spec = FusionSpec(width=0.125, in_channels=1, whiten=True)
    w = Whiten(spec.black_dn, spec.read_noise_dn, spec.conversion_gain)
    # asinh(z / 2) of unit normal noise has a standard deviation of about 0.48
    for level in (200.0, 800.0, 3000.0):
        z = w(noisy_flat(level, spec))
        assert z.shape == (4, 1, 64, 64)
        assert abs(float(z.mean())) < 0.02 and 0.43 < float(z.std()) < 0.52, level


def test_whitening_keeps_a_weak_line_next_to_a_saturated_speck():
    spec = FusionSpec(width=0.125, in_channels=1, whiten=True)
    w = Whiten(spec.black_dn, spec.read_noise_dn, spec.conversion_gain)
    x = noisy_flat(800.0, spec, shape=(1, 1, 64, 64))
    x[0, 0, :, 20] += 40.0 / 4095  # a 40 DN line: about 4 sigmas on 800 DN
    x[0, 0, 30:33, 26:29] = 1.0  # saturated dust six pixels from it
    x[0, 0, 50:53, 40:43] = 300.0 / 4095  # a shadow: most of the light blocked
    z = w(x)[0, 0]
    line = z[:, 20]
    # the line stays a few sigmas up along its whole length, the dust is large but finite
    assert float(line.median()) > 0.8 and float((line > 0.4).float().mean()) > 0.85
    assert torch.isfinite(z).all() and 4.0 < float(z.max()) < 8.0
    # the background a few pixels beside the line is not pushed down by its light
    assert abs(float(z[:, 10].median())) < 0.2
    # nor beside the shadow, whose own pixels come out strongly negative
    assert abs(float(z[:, 46].median())) < 0.2 and float(z[51, 41]) < -4.0


def test_whitening_is_for_single_frames_and_off_by_default():
    assert FusionSpec().whiten is False
    with pytest.raises(ValueError, match="whiten"):
        FusionSpec(in_channels=24, whiten=True)
    with pytest.raises(ValueError, match="noise model"):
        FusionSpec(in_channels=1, whiten=True, conversion_gain=0.0)
    net = AttentionFusionNet(FusionSpec(width=0.125, in_channels=1, whiten=True))
    assert isinstance(net.whiten, Whiten)
    assert not any(True for _ in net.whiten.parameters())  # fixed: nothing to learn


def test_a_wider_background_takes_less_of_a_faint_scratchs_own_light():
    spec = FusionSpec(width=0.125, in_channels=1, whiten=True)
    x = torch.full((1, 1, 64, 64), 800.0 / 4095)  # noiseless haze
    col = torch.arange(64.0)
    line = 3.0 * torch.exp(-0.5 * ((col - 32) / 1.2) ** 2)  # 3 DN peak, 2.8 px FWHM
    x = x + line / 4095
    sigma = (spec.read_noise_dn ** 2 + spec.conversion_gain * (800.0 - spec.black_dn)) ** 0.5
    peak = {}
    for size in (15, 31):
        z = Whiten(spec.black_dn, spec.read_noise_dn, spec.conversion_gain, size)(x)
        # undo asinh(u / 2): the scratch's peak in DN over the background the stage found
        peak[size] = float(2 * torch.sinh(z[0, 0, 32, 32])) * sigma
    # the 15 px mean takes in about a fifth of the peak, the 31 px one about a tenth
    assert 0.75 * 3.0 < peak[15] < 0.85 * 3.0 and 0.87 * 3.0 < peak[31] < 0.93 * 3.0
    assert spec.background_px == 15  # the default, and what earlier checkpoints rebuild with
    for bad in (14, 1, True):
        with pytest.raises(ValueError, match="background_px"):
            FusionSpec(background_px=bad)
