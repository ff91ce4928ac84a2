import pytest

torch = pytest.importorskip("torch")

from model.unet import GlassUNet, UNetSpec, parameter_count  # noqa: E402

PAPER_NESTED, PAPER_PLAIN = 13.9e6, 44.4e6


@pytest.mark.parametrize("levels", [4, 5, 6])
def test_three_outputs_at_full_half_and_quarter_resolution(levels):
    net = GlassUNet(UNetSpec(width=0.125, levels=levels))
    out = net(torch.rand(2, 24, 64, 96))
    assert [tuple(o.shape) for o in out] == [(2, 1, 64, 96), (2, 1, 32, 48), (2, 1, 16, 24)]
    assert all(o.abs().max() <= 1.0 for o in out)  # tanh


def test_paper_input_size_runs():
    net = GlassUNet(UNetSpec(width=0.0625))
    with torch.no_grad():
        out = net(torch.rand(1, 24, 512, 512))
    assert tuple(out[0].shape) == (1, 1, 512, 512)


def test_parameter_counts_against_the_paper():
    nested = parameter_count(GlassUNet(UNetSpec(nested=True)))
    plain = parameter_count(GlassUNet(UNetSpec(nested=False)))
    # our counts, pinned (model/unet.py explains them)
    assert nested == 9_557_971
    assert plain == 40_086_259
    # nesting saves what the paper's two counts differ by (30.5 M)...
    assert abs((plain - nested) - (PAPER_PLAIN - PAPER_NESTED)) < 0.05e6
    # ...and the rest of the network is the same constant below theirs in both
    assert abs((PAPER_NESTED - nested) - (PAPER_PLAIN - plain)) < 0.05e6
    assert 0.6 < nested / PAPER_NESTED < 0.75 and 0.85 < plain / PAPER_PLAIN < 0.95


def test_nested_convolutions_share_one_parameter_that_gets_every_gradient():
    net = GlassUNet(UNetSpec(width=0.125))
    pool = net.pool.weight
    convs = [c for level in net.encoder for c in level.convs]
    own = [c for c in convs if "weight" in c._parameters]
    nested = [c for c in convs if "weight" not in c._parameters]
    assert len(own) == 2 and own == convs[:2]  # the first two keep their own kernels
    assert len(nested) == sum((2, 2, 3, 3, 4, 5)) - 2
    assert sum(p is pool for p in net.parameters()) == 1
    for conv in nested:
        pool.grad = None
        x = torch.rand(1, conv.c_in, 6, 6)
        conv(x).square().sum().backward()
        g = pool.grad
        assert g[: conv.c_out, : conv.c_in].abs().sum() > 0
        assert g[conv.c_out:].abs().sum() == 0 and g[:, conv.c_in:].abs().sum() == 0
    # the whole network's gradient reaches the pool through every user at once
    pool.grad = None
    net(torch.rand(1, 24, 64, 64))[0].sum().backward()
    assert pool.grad.abs().sum() > 0


def test_unnested_network_has_no_pool():
    net = GlassUNet(UNetSpec(width=0.125, nested=False))
    assert net.pool is None
    assert all("weight" in c._parameters for level in net.encoder for c in level.convs)


def test_spec_rejects_bad_values():
    with pytest.raises(ValueError, match="levels"):
        UNetSpec(levels=3)
    with pytest.raises(ValueError, match="width"):
        UNetSpec(width=0)
    with pytest.raises(ValueError, match="activation"):
        UNetSpec(activation="relu")
