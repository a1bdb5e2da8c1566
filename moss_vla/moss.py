"""MOSS: multi-order self-similarity module (MOSS paper sec. 3.3, Eq. 4-5).

    S(1) = f(F),  S(n) = f(M(n - 1))        (Eq. 3, 'no-fusion')
    M(n) = g(n)(S(n))                       (Eq. 4)
    MOSS(F) = FC(F) + sum_n FC(M(n))        (Eq. 5)

f is the STSS transformation (:func:`moss_vla.stss.stss`); g(n) is a learned :class:`STSSEncoder`, one per
order. Choices where the paper leaves room (docs/design.md section 4.2):
- M(n) is the C-channel output of g(n) (it "has the shape of F"), and it is what f sees for order n + 1;
  the final FC(M(n)) of Eq. 5 is a separate C -> C layer applied afterwards.
- ``orders`` is a set of orders whose M(n) enter the sum of Eq. 5 (table 3b also combines e.g. 2 and 3
  without 1). The recursion needs every encoder g(1)..g(max order), so those are all built; only the
  orders listed get an output FC.
- The conv blocks inside g(n) are Conv2d(3x3, no bias; BatchNorm follows) - BatchNorm2d - GELU over
  (H, W), shared across the L temporal offsets and the T frames.
- ``zero_init=True`` sets weight and bias of every final FC (FC(F) and each FC(M(n))) to zero, so
  ``x + MOSS(x) == x`` at initialisation. Their gradients are non-zero at once (their inputs are not zero);
  the rest of the module receives gradient once these weights have moved, i.e. from the second step on.
- ``causal=True`` uses temporal offsets -(L-1)..0 (needed for streaming; see :mod:`moss_vla.stss`).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from moss_vla.stss import check_features, check_window, stss


class STSSEncoder(nn.Module):
    """STSS encoder g(n) (Eq. 4): (B, T, H, W, L, U, V) -> (B, T, H, W, C), late fusion over L.

    1. flatten (U, V) and a linear layer to D = ``hidden`` channels;
    2. ``conv_blocks`` x [Conv2d 3x3 - BatchNorm - GELU] over (H, W) with D channels, shared across L;
    3. concatenate the L maps along channels and a linear layer to C = ``out_channels``.
    """

    def __init__(self, window: Sequence[int], hidden: int, out_channels: int, conv_blocks: int = 3) -> None:
        super().__init__()
        self.window = check_window(window)
        L, U, V = self.window
        self.hidden = hidden
        self.embed = nn.Linear(U * V, hidden)
        blocks: list[nn.Module] = []
        for _ in range(conv_blocks):
            blocks += [nn.Conv2d(hidden, hidden, 3, padding=1, bias=False), nn.BatchNorm2d(hidden), nn.GELU()]
        self.convs = nn.Sequential(*blocks)
        self.fuse = nn.Linear(L * hidden, out_channels)

    def forward(self, s: Tensor) -> Tensor:
        if s.dim() != 7 or tuple(s.shape[-3:]) != self.window:
            raise ValueError(
                f"STSSEncoder expects an STSS tensor (B, T, H, W, L, U, V) with (L, U, V) = {self.window}, "
                f"got shape {tuple(s.shape)}"
            )
        B, T, H, W, L = s.shape[:5]
        D = self.hidden
        z = self.embed(s.flatten(-2))  # (B, T, H, W, L, D)
        z = z.permute(0, 1, 4, 5, 2, 3).reshape(B * T * L, D, H, W)  # one 2D map per (frame, offset l)
        z = self.convs(z)  # (B*T*L, D, H, W)
        z = z.view(B, T, L, D, H, W).permute(0, 1, 4, 5, 2, 3).reshape(B, T, H, W, L * D)  # concat over L
        return self.fuse(z)  # (B, T, H, W, C)


class MOSS(nn.Module):
    """Multi-order self-similarity module (Eq. 5): (B, T, H, W, C) -> (B, T, H, W, C).

    channels: C of the input features. orders: which M(n) enter the output sum. window: STSS (L, U, V).
    hidden: D of the STSS encoders. conv_blocks: conv blocks per encoder. zero_init: zero the final FCs.
    causal: causal temporal window. See the module docstring for the choices made.
    """

    def __init__(
        self,
        channels: int,
        orders: Sequence[int] = (1, 2),
        window: Sequence[int] = (5, 9, 9),
        hidden: int = 64,
        conv_blocks: int = 3,
        zero_init: bool = True,
        causal: bool = False,
    ) -> None:
        super().__init__()
        orders = tuple(sorted({int(n) for n in orders}))
        if not orders or orders[0] < 1:
            raise ValueError(f"MOSS orders must be a non-empty set of integers >= 1, got {orders}")
        self.channels = channels
        self.orders = orders
        self.window = check_window(window)
        self.causal = causal
        # g(1) .. g(N): all are needed for the recursion S(n) = f(M(n - 1)).
        self.encoders = nn.ModuleList(
            STSSEncoder(self.window, hidden, channels, conv_blocks) for _ in range(max(orders))
        )
        self.fc_visual = nn.Linear(channels, channels)  # FC(F)
        self.fc_orders = nn.ModuleDict({str(n): nn.Linear(channels, channels) for n in orders})  # FC(M(n))
        if zero_init:
            for fc in (self.fc_visual, *self.fc_orders.values()):
                nn.init.zeros_(fc.weight)
                nn.init.zeros_(fc.bias)

    def forward(self, x: Tensor) -> Tensor:
        check_features(x, "MOSS input")
        if x.shape[-1] != self.channels:
            raise ValueError(
                f"MOSS was built for C = {self.channels} channels, got input of shape {tuple(x.shape)} "
                f"(expected (B, T, H, W, {self.channels}))"
            )
        out = self.fc_visual(x)  # FC(F): (B, T, H, W, C)
        m = x  # input to f for order 1 is F itself
        for n, encoder in enumerate(self.encoders, start=1):
            s = stss(m, self.window, self.causal)  # S(n): (B, T, H, W, L, U, V)
            m = encoder(s)  # M(n): (B, T, H, W, C)
            if n in self.orders:
                out = out + self.fc_orders[str(n)](m)
        return out

    def extra_repr(self) -> str:
        return f"channels={self.channels}, orders={self.orders}, window={self.window}, causal={self.causal}"


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


__all__ = ["MOSS", "STSSEncoder", "count_parameters"]

