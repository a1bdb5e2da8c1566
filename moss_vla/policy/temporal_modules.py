"""Temporal modules for the vision tower: moss / selfy / framediff / none (MOSS paper table 10c).

All share one interface so that they can be swapped by config (``temporal.module``) and injected the
same way: ``delta = module(x)`` with x the (B, T, H, W, C) token grid after vision layer k, and the tower
continues with ``x + delta``. Every module's final FC layers start at zero, so an untrained module leaves
the tower exactly as the plain SigLIP model.

- ``moss``: :class:`moss_vla.moss.MOSS` (Eq. 5, orders 1 and 2 by default).
- ``selfy``: 1st-order STSS with the SELFY encoder (SELFY sec. 3.2 + appendix A): 1x3x3 convolutions
  over each (U, V) similarity map, striding down to 1x1 (Eq. 5-6), 3x3 convolutions over (H, W)
  (Eq. 7-8), then a 1x1x1 convolution over the concatenated (L, C_F) features with ReLU (Eq. 9);
  SELFY adds V itself (identity); here a zero-initialised FC (C -> C) feeds the shared residual.
- ``framediff``: frame-difference features (ATM-style): ``F[t + dt] - F[t]`` for the non-zero temporal
  offsets of the STSS window (0 outside the clip), encoded like MOSS's g (linear C -> D, Conv-BN-GELU
  blocks over (H, W), concatenation over offsets, linear to C) and a zero-initialised FC.
- ``none``: no module (the tower skips it).

``newest(x)`` returns the module output for the last frame only; with ``causal=True`` that is what a
stream needs each step (past frames' outputs never change).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from moss_vla.policy.configuration import TemporalConfig
from moss_vla.stss import check_window, stss, temporal_offsets


def conv_blocks(channels: int, n: int) -> nn.Sequential:
    """n x [Conv2d 3x3 - BatchNorm - GELU] over (H, W), as in MOSS's encoder g."""
    layers: list[nn.Module] = []
    for _ in range(n):
        layers += [nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels), nn.GELU()]
    return nn.Sequential(*layers)


def zero_linear(c_in: int, c_out: int) -> nn.Linear:
    fc = nn.Linear(c_in, c_out)
    nn.init.zeros_(fc.weight)
    nn.init.zeros_(fc.bias)
    return fc


class TemporalModule(nn.Module):
    """Base: (B, T, H, W, C) -> residual (B, T, H, W, C), zero at initialisation."""

    causal: bool = False

    def newest(self, x: Tensor, memory: object | None = None) -> Tensor:
        """Output for the last frame of x only: (B, 1, H, W, C). ``memory``: this module's
        :meth:`stream_memory` object when x is the window of a stream pushed one frame at a time."""
        return self(x)[:, -1:]

    def stream_memory(self) -> object | None:
        """Per-stream state that :meth:`newest` may reuse from one frame to the next (None: nothing)."""
        return None


class MossTemporal(TemporalModule):
    """The MOSS module (moss_vla.moss.MOSS); its FC(F) and FC(M(n)) start at zero.

    Training runs ``moss_vla.moss.MOSS`` itself. Two inference paths re-run its submodules:
    ``fold_for_inference()`` (two linear maps in a row -> one) and, with the causal window,
    :meth:`newest` (only the frames the newest frame's output depends on).
    """

    def __init__(self, channels: int, cfg: TemporalConfig) -> None:
        super().__init__()
        from moss_vla.moss import MOSS

        self.causal = cfg.causal
        self.moss = MOSS(channels, orders=cfg.orders, window=cfg.window, hidden=cfg.hidden,
                         conv_blocks=cfg.conv_blocks, zero_init=True, causal=cfg.causal)
        self.folded: nn.ModuleDict | None = None

    def forward(self, x: Tensor) -> Tensor:
        if self.folded is None:
            return self.moss(x)
        return self._run(x, newest=False)

    def newest(self, x: Tensor, memory: object | None = None) -> Tensor:
        if not self.causal:  # a centred window needs every frame's neighbours: run the whole clip
            return self(x)[:, -1:]
        return self._run(x, newest=True, memory=memory)

    def stream_memory(self) -> OrderOneMemory | None:
        if not self.causal or len(self.moss.encoders) < 2:  # only M(2) and above read past frames' M(1)
            return None
        return OrderOneMemory(self.moss.window[0])

    def fold_for_inference(self) -> None:
        """Fold the last linear of each g(n) into FC(M(n)): ``FC(M(n)) = W_fc (W_fuse z + b) + b_fc``
        becomes one (L*D -> C) map. Same function up to float rounding; inference only (training the
        folded module would train another parameterisation). Undo with :meth:`unfold`."""
        folded = nn.ModuleDict()
        with torch.no_grad():
            for n in self.moss.orders:
                fuse, fc = self.moss.encoders[n - 1].fuse, self.moss.fc_orders[str(n)]
                lin = nn.Linear(fuse.in_features, fc.out_features).to(fuse.weight.device)
                lin.weight.copy_(fc.weight @ fuse.weight)  # (C, C) @ (C, L*D)
                lin.bias.copy_(fc.weight @ fuse.bias + fc.bias)
                folded[str(n)] = lin
        self.folded = folded

    def unfold(self) -> None:
        self.folded = None

    def _run(self, x: Tensor, newest: bool, memory: OrderOneMemory | None = None) -> Tensor:
        """Eq. 3-5 from MOSS's submodules; ``newest``: output (B, 1, H, W, C) of the last frame only.

        With the causal window, frame t's M(n) depends on M(n-1) of frames t-L+1..t, so the newest
        frame needs M(n) only for its last (N - n)(L - 1) + 1 frames at order n (N = top order).
        ``memory`` (a stream, newest only): M(1) of past frames is reused where it cannot have changed.
        """
        moss = self.moss
        T, L, top = x.shape[1], moss.window[0], len(moss.encoders)
        first_out = T - 1 if newest else 0  # first frame of the output
        out = moss.fc_visual(x[:, first_out:])  # FC(F)
        m, m_start = x, 0  # input clip of f for this order, and the absolute index of its first frame
        for n, enc in enumerate(moss.encoders, start=1):
            q0 = max(0, T - 1 - (top - n) * (L - 1)) if newest else 0  # first frame whose M(n) is needed

            def before_fuse(a: int, b: int, m: Tensor = m, m_start: int = m_start, enc: nn.Module = enc) -> Tensor:
                s = stss(m, moss.window, moss.causal, queries=(a - m_start, b - m_start))  # S(n), frames a..b-1
                return encode_late_fusion(enc, s)  # (B, b - a, H, W, L*D), before g(n)'s last linear

            if n == 1 and memory is not None:
                zq, m_next = memory.order_one(T, q0, before_fuse, enc.fuse)  # newest frame's z, M(1) of q0..T-1
            else:
                z = before_fuse(q0, T)
                zq, m_next = z[:, first_out - q0 :], (enc.fuse(z) if n < top else None)
            if n in moss.orders:
                if self.folded is not None:
                    out = out + self.folded[str(n)](zq)  # FC(M(n)) with g(n)'s last linear folded in
                else:  # M(n) of the output frames: the tail of m_next when that was computed anyway
                    mq = enc.fuse(zq) if m_next is None else m_next[:, m_next.shape[1] - zq.shape[1]:]
                    out = out + moss.fc_orders[str(n)](mq)  # FC(M(n))
            if n < top:
                m, m_start = m_next, q0  # M(n), input of order n + 1
        return out


class OrderOneMemory:
    """M(1) of the recent frames of a stream (causal MOSS, top order >= 2), so that each new frame
    computes M(1) only where it is new or its value in the current window differs from the stored one.

    Frame a's M(1) reads the frames max(a - L + 1, s)..a of a window starting at absolute frame s; the
    value stored when a was the newest frame (window start s_a) still holds in a window starting at
    s >= s_a iff s <= max(a - L + 1, s_a). In a full T-frame window that is every needed frame except,
    when 2 (L - 1) > T - 1, the oldest (its window lost a frame), so the newest frame costs 1 or 2
    frames of order-1 work instead of L, with the window semantics of :meth:`MossTemporal.newest`
    without memory (same output).
    """

    def __init__(self, L: int) -> None:
        self.L = L
        self.t = -1  # absolute index of the newest frame seen
        self.m1: dict[int, tuple[int, Tensor]] = {}  # frame -> (its window start, M(1) (B, 1, H, W, C))

    def _valid(self, a: int, start: int) -> bool:
        hit = self.m1.get(a)
        return hit is not None and start <= max(a - self.L + 1, hit[0])

    def order_one(self, T: int, q0: int, before_fuse: Callable[[int, int], Tensor],
                  fuse: nn.Module) -> tuple[Tensor, Tensor]:
        """Called once per new frame with its window of T frames (window coordinates; the newest is
        T - 1). Returns the newest frame's z (B, 1, H, W, L*D) and M(1) of frames q0..T-1."""
        self.t += 1
        start = self.t - T + 1
        parts: list[Tensor] = []
        i = q0
        while i < T:
            if self._valid(start + i, start):
                parts.append(self.m1[start + i][1])
                i += 1
                continue
            j = i + 1  # a run of frames to compute together
            while j < T and not self._valid(start + j, start):
                j += 1
            z = before_fuse(i, j)
            parts.append(fuse(z))
            i = j
        self.m1[self.t] = (start, parts[-1][:, -1:])
        for a in [a for a in self.m1 if a <= self.t - T]:  # frames that left the window
            del self.m1[a]
        return z[:, -1:], torch.cat(parts, 1)


def encode_late_fusion(enc: nn.Module, s: Tensor) -> Tensor:
    """Steps 1-2 of MOSS's g(n) (moss_vla.moss.STSSEncoder) and the concatenation over L, without the
    final linear: (B, T, H, W, L, U, V) -> (B, T, H, W, L*D)."""
    B, T, H, W, L = s.shape[:5]
    z = enc.embed(s.flatten(-2))  # (B, T, H, W, L, D)
    D = z.shape[-1]
    z = enc.convs(z.permute(0, 1, 4, 5, 2, 3).reshape(B * T * L, D, H, W))  # per (frame, offset) map
    return z.view(B, T, L, D, H, W).permute(0, 1, 4, 5, 2, 3).reshape(B, T, H, W, L * D)


class SelfyTemporal(TemporalModule):
    """1st-order STSS + SELFY convolutional encoder (feature extraction + integration)."""

    def __init__(self, channels: int, cfg: TemporalConfig) -> None:
        super().__init__()
        self.window = check_window(cfg.window)
        self.causal = cfg.causal
        L, U, V = self.window
        d = cfg.hidden
        # Feature extraction (SELFY Eq. 5-6): 1x3x3 kernels over (l, u, v), i.e. 3x3 over each (U, V)
        # map; stride 2 until the map is at most 3x3, then one conv over what is left -> 1x1, d channels.
        c = max(d // 4, 4)
        layers: list[nn.Module] = [nn.Conv2d(1, c, 3, padding=1), nn.ReLU()]
        u, v = U, V
        while u > 3 or v > 3:
            c_next = min(2 * c, d)
            layers += [nn.Conv2d(c, c_next, 3, stride=2, padding=1), nn.ReLU()]
            u, v, c = (u - 1) // 2 + 1, (v - 1) // 2 + 1, c_next
        layers += [nn.Conv2d(c, d, (u, v)), nn.ReLU()]
        self.extract = nn.Sequential(*layers)
        # Feature integration (Eq. 7-8): 3x3 convolutions over (H, W), shared across offsets l.
        integ: list[nn.Module] = []
        for _ in range(cfg.conv_blocks):
            integ += [nn.Conv2d(d, d, 3, padding=1), nn.ReLU()]
        self.integrate = nn.Sequential(*integ)
        self.fuse = nn.Linear(L * d, channels)  # Eq. 9: 1x1x1 conv over the flattened (L, C_F) volume
        self.out = zero_linear(channels, channels)
        self.hidden = d

    def forward(self, x: Tensor) -> Tensor:
        s = stss(x, self.window, self.causal)  # (B, T, H, W, L, U, V)
        B, T, H, W, L, U, V = s.shape
        d = self.hidden
        f = self.extract(s.reshape(B * T * H * W * L, 1, U, V))  # (BTHWL, d, 1, 1)
        f = f.view(B, T, H, W, L, d).permute(0, 1, 4, 5, 2, 3).reshape(B * T * L, d, H, W)
        f = self.integrate(f).view(B, T, L, d, H, W).permute(0, 1, 4, 5, 2, 3).reshape(B, T, H, W, L * d)
        return self.out(torch.relu(self.fuse(f)))  # (B, T, H, W, C)


class FrameDiffTemporal(TemporalModule):
    """Frame differences F[t + dt] - F[t] over the STSS window's offsets, encoded like MOSS's g."""

    def __init__(self, channels: int, cfg: TemporalConfig) -> None:
        super().__init__()
        L = check_window(cfg.window)[0]
        self.causal = cfg.causal
        self.offsets = [dt for dt in temporal_offsets(L, cfg.causal) if dt != 0]
        if not self.offsets:
            raise ValueError(f"framediff needs a temporal window L >= 2, got temporal.window = {cfg.window}")
        d = cfg.hidden
        self.embed = nn.Linear(channels, d)
        self.convs = conv_blocks(d, cfg.conv_blocks)
        self.fuse = nn.Linear(len(self.offsets) * d, channels)
        self.out = zero_linear(channels, channels)
        self.hidden = d

    def differences(self, x: Tensor) -> Tensor:
        """(B, T, H, W, C) -> (B, T, H, W, n_offsets, C); 0 where t + dt is outside the clip."""
        T = x.shape[1]
        diffs = []
        for dt in self.offsets:
            dx = torch.zeros_like(x)
            lo, hi = max(0, -dt), min(T, T - dt)
            if lo < hi:
                dx[:, lo:hi] = x[:, lo + dt : hi + dt] - x[:, lo:hi]
            diffs.append(dx)
        return torch.stack(diffs, dim=4)

    def forward(self, x: Tensor) -> Tensor:
        B, T, H, W, _ = x.shape
        n, d = len(self.offsets), self.hidden
        z = self.embed(self.differences(x))  # (B, T, H, W, n, d)
        z = z.permute(0, 1, 4, 5, 2, 3).reshape(B * T * n, d, H, W)
        z = self.convs(z).view(B, T, n, d, H, W).permute(0, 1, 4, 5, 2, 3).reshape(B, T, H, W, n * d)
        return self.out(self.fuse(z))


TEMPORAL_REGISTRY: dict[str, Callable[[int, TemporalConfig], TemporalModule]] = {
    "moss": MossTemporal,
    "selfy": SelfyTemporal,
    "framediff": FrameDiffTemporal,
}


def build_temporal_module(channels: int, cfg: TemporalConfig) -> TemporalModule | None:
    """The module named by ``temporal.module`` for C = ``channels``; None for ``none``."""
    if cfg.module == "none":
        return None
    if cfg.module not in TEMPORAL_REGISTRY:
        raise ValueError(f"temporal.module must be one of {sorted(TEMPORAL_REGISTRY) + ['none']}, got {cfg.module!r}")
    return TEMPORAL_REGISTRY[cfg.module](channels, cfg)
