"""MOSS module (Eq. 4-5): shapes, zero-init identity, gradient flow, causality, bad input."""

import pytest
import torch

from moss_vla.moss import MOSS, STSSEncoder, count_parameters
from moss_vla.stss import stss

SMALL = {"window": (3, 5, 5), "hidden": 8, "conv_blocks": 2}


def test_encoder_shapes_and_structure():
    enc = STSSEncoder((3, 5, 5), hidden=8, out_channels=12, conv_blocks=3)
    s = stss(torch.randn(2, 4, 6, 7, 5), (3, 5, 5))
    m = enc(s)
    assert m.shape == (2, 4, 6, 7, 12)
    assert enc.embed.in_features == 25 and enc.embed.out_features == 8  # flattened (U, V) -> D
    convs = [mod for mod in enc.convs if isinstance(mod, torch.nn.Conv2d)]
    assert len(convs) == 3 and all(c.kernel_size == (3, 3) and c.in_channels == c.out_channels == 8 for c in convs)
    assert enc.fuse.in_features == 3 * 8  # L maps concatenated along channels


def test_encoder_shares_convs_across_offsets():
    """Swapping two temporal offsets of S swaps the corresponding D-blocks before the final linear layer."""
    torch.manual_seed(0)
    enc = STSSEncoder((3, 3, 3), hidden=4, out_channels=5, conv_blocks=1).eval()
    s = torch.rand(1, 2, 4, 4, 3, 3, 3)
    enc.fuse = torch.nn.Identity()  # expose the concatenated (L * D) features
    z, z_swapped = enc(s), enc(s[..., [2, 1, 0], :, :])
    torch.testing.assert_close(z_swapped[..., 0:4], z[..., 8:12])
    torch.testing.assert_close(z_swapped[..., 8:12], z[..., 0:4])


@pytest.mark.parametrize("causal", [False, True])
def test_moss_shape(causal):
    module = MOSS(16, orders=(1, 2), causal=causal, **SMALL)
    x = torch.randn(2, 4, 5, 6, 16)
    assert module(x).shape == x.shape
    assert len(module.encoders) == 2 and set(module.fc_orders) == {"1", "2"}


def test_zero_init_is_identity_residual():
    torch.manual_seed(1)
    module = MOSS(16, **SMALL)
    x = torch.randn(2, 4, 5, 5, 16)
    out = module(x)
    assert torch.equal(out, torch.zeros_like(x))
    assert torch.equal(x + out, x)
    nonzero = MOSS(16, zero_init=False, **SMALL)
    assert nonzero(x).abs().max() > 0


def test_gradients_reach_every_parameter():
    torch.manual_seed(2)
    module = MOSS(16, orders=(1, 2), **SMALL)
    x = torch.randn(2, 4, 5, 5, 16, requires_grad=True)
    target = torch.randn(2, 4, 5, 5, 16)
    final = {"fc_visual.weight", "fc_orders.1.weight", "fc_orders.2.weight"}

    def step_grads():
        module.zero_grad()
        loss = (x + module(x) - target).square().mean()
        loss.backward()
        return {n: p.grad for n, p in module.named_parameters()}

    # At init only the zeroed final FCs receive gradient (everything behind them is multiplied by 0).
    grads = step_grads()
    for name in final:
        assert grads[name] is not None and grads[name].abs().sum() > 0, name
    torch.optim.SGD(module.parameters(), lr=0.1).step()
    # After one step the final FCs are non-zero and every parameter, incl. g(1) via S(2), gets gradient.
    grads = step_grads()
    missing = [n for n, g in grads.items() if g is None or g.abs().sum() == 0]
    assert not missing, f"no gradient for {missing}"
    assert x.grad.abs().sum() > 0


def test_orders_build_the_recursion():
    module = MOSS(8, orders=(3, 2), **SMALL)
    assert module.orders == (2, 3)
    assert len(module.encoders) == 3  # g(1) is needed for S(2) = f(M(1))
    assert set(module.fc_orders) == {"2", "3"}
    assert module(torch.randn(1, 3, 4, 4, 8)).shape == (1, 3, 4, 4, 8)


def test_causal_output_ignores_future_frames():
    torch.manual_seed(3)
    x = torch.randn(1, 5, 4, 4, 8)
    x_future = x.clone()
    x_future[:, 4] += torch.randn(4, 4, 8)
    causal = MOSS(8, zero_init=False, causal=True, **SMALL).eval()
    centred = MOSS(8, zero_init=False, causal=False, **SMALL).eval()
    with torch.no_grad():
        torch.testing.assert_close(causal(x)[:, :4], causal(x_future)[:, :4])
        assert not torch.allclose(centred(x)[:, :4], centred(x_future)[:, :4])


def test_parameter_count_matches_layout():
    C, D, L, U, V, blocks = 32, 8, 3, 5, 5, 2
    module = MOSS(C, orders=(1, 2), window=(L, U, V), hidden=D, conv_blocks=blocks)
    per_encoder = (U * V * D + D) + blocks * (9 * D * D + 2 * D) + (L * D * C + C)
    assert count_parameters(module) == 2 * per_encoder + 3 * (C * C + C)


@pytest.mark.parametrize(
    "x, message",
    [
        (torch.randn(2, 4, 5, 16), r"\(B, T, H, W, C\)"),
        (torch.randn(1, 2, 4, 5, 12), r"C = 16 channels.*\(B, T, H, W, 16\)"),
    ],
)
def test_bad_input_raises_value_error(x, message):
    with pytest.raises(ValueError, match=message):
        MOSS(16, **SMALL)(x)


def test_bad_configuration_raises_value_error():
    with pytest.raises(ValueError, match="must be odd"):
        MOSS(16, window=(3, 4, 5))
    with pytest.raises(ValueError, match="orders"):
        MOSS(16, orders=(0, 1))
    with pytest.raises(ValueError, match=r"\(L, U, V\) = \(3, 5, 5\)"):
        STSSEncoder((3, 5, 5), 8, 16)(torch.randn(1, 2, 3, 3, 3, 3, 3))
