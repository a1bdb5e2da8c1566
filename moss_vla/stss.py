"""Space-time self-similarity (STSS), MOSS paper Eq. 1-3.

``S[t, h, w, l, u, v] = cos(F[t, h, w], F[t + dt_l, h + du_u, w + dv_v])`` for the offsets of a local
(L, U, V) window around each query (Eq. 2). Neighbours outside the clip or the image give 0 (they act as
zero feature vectors, whose cosine with anything is 0).

Offsets (index -> displacement):
- spatial: ``du_u = u - U // 2`` and ``dv_v = v - V // 2``; U and V must be odd (centred windows).
- temporal, centred (default): ``dt_l = l - L // 2``, i.e. ``-(L // 2) .. (L - 1) // 2``; for odd L this
  is the paper's ``[-floor(L/2), floor(L/2)]``, for even L the window has one more past than future frame.
- temporal, causal (``causal=True``): ``dt_l = l - (L - 1)``, i.e. ``-(L - 1) .. 0``, so the last index
  is the query's own frame. A real-time loop needs this: with a centred window the newest frame's STSS
  would wait for future frames.

Two implementations of the same function:
- :func:`stss_reference`: explicit loops over the (l, u, v) offsets, for tests.
- :func:`stss`: the fast one used everywhere else. Organised per temporal offset and frame pair: for
  each pair of frames (t, t + k) it computes Gram matrices of cosines between positions (batched matmuls
  over the batch, then divided by the norms) and gathers the (U, V) window of every query from them.
  Each pair serves both offsets +k (queries in frame t) and -k (queries in frame t + k), because
  ``cos(F[t, p], F[t + k, q]) = cos(F[t + k, q], F[t, p])``. Small grids (e.g. 14 x 14 SigLIP tokens) use
  one (HW x HW) Gram matrix per pair; larger ones split the query rows into blocks (:func:`row_blocks`)
  and correlate each block only with the key rows its windows reach, which cuts the wasted work from
  HW / (U V) to about (R + U - 1) W / (U V) for blocks of R rows. It never materialises a
  (..., L, U, V, C) tensor, nor a normalised copy of the input: extra memory in the forward pass is the
  output plus, at any time, one Gram matrix (block) per clip of the batch and one window buffer. The
  backward pass is written by hand (same schedule, recomputing the Gram gradients, at most ``reach + 1``
  normalised frames alive) so that autograd keeps no per-pair buffers.

:func:`stss` takes ``queries=(t0, t1)`` to compute S only for query frames ``t0 <= t < t1`` (neighbours
still come from the whole clip), e.g. just the newest frame of a stream with ``causal=True``.

Higher orders (Eq. 3, 'no-fusion' form): ``S(1) = f(F)``, ``S(n) = f(g(S(n - 1)))``; see
:func:`high_order_stss` (g = vectorisation over (L, U, V) by default, as in the paper's appendix A).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import lru_cache

import torch
from torch import Tensor

Window = tuple[int, int, int]

# Norms are clamped to EPS before dividing (as torch.nn.functional.cosine_similarity does), so a zero
# feature vector has cosine 0 with everything instead of NaN.
EPS = 1e-8


def check_window(window: Sequence[int]) -> Window:
    """Validate an (L, U, V) window: three positive ints, U and V odd. Returns it as a tuple."""
    try:
        L, U, V = (int(s) for s in window)
    except (TypeError, ValueError):
        raise ValueError(f"STSS window must be three ints (L, U, V), got {window!r}") from None
    if min(L, U, V) < 1:
        raise ValueError(f"STSS window sizes must be >= 1, got (L, U, V) = {(L, U, V)}")
    if U % 2 == 0 or V % 2 == 0:
        raise ValueError(
            f"STSS spatial window (U, V) must be odd so that it is centred on the query, got (U, V) = {(U, V)}"
        )
    return L, U, V


def check_features(x: Tensor, name: str = "x") -> None:
    """Raise a ValueError unless x is a floating (B, T, H, W, C) tensor (TypeError if not a tensor)."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (B, T, H, W, C), got {type(x).__name__}")
    if x.dim() != 5:
        raise ValueError(f"{name} must have shape (B, T, H, W, C) (5 dims), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")


def temporal_offsets(L: int, causal: bool = False) -> list[int]:
    """Temporal displacement dt_l for each index l of the window (see the module docstring)."""
    if causal:
        return [l - (L - 1) for l in range(L)]
    return [l - L // 2 for l in range(L)]


def spatial_neighbours(H: int, W: int, U: int, V: int, device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
    """Flat neighbour index and validity of every (query position, spatial offset).

    Returns ``(index, valid)``, both (H*W, U*V): ``index[p, uv]`` is the flat position ``h' * W + w'`` of
    the neighbour of ``p = h * W + w`` at offset uv, clamped into the image where it falls outside, and
    ``valid[p, uv]`` says whether it is inside.
    """
    hh = torch.arange(H, device=device).view(H, 1, 1, 1)
    ww = torch.arange(W, device=device).view(1, W, 1, 1)
    du = (torch.arange(U, device=device) - U // 2).view(1, 1, U, 1)
    dv = (torch.arange(V, device=device) - V // 2).view(1, 1, 1, V)
    nh, nw = hh + du, ww + dv  # (H, 1, U, 1), (1, W, 1, V)
    valid = ((nh >= 0) & (nh < H)) & ((nw >= 0) & (nw < W))  # (H, W, U, V)
    index = nh.clamp(0, H - 1) * W + nw.clamp(0, W - 1)
    return index.reshape(H * W, U * V), valid.reshape(H * W, U * V)


def row_blocks(H: int, U: int, block_rows: int | None = None) -> list[tuple[int, int, int, int]]:
    """Split the H query rows into blocks; each is ``(h0, h1, k0, k1)``: query rows [h0, h1) and the key
    rows [k0, k1) their (U, V) windows can reach. ``block_rows=None`` picks max(U - 1, 8) rows per block,
    or one block for the whole frame when H < 2 * that (small token grids: one big matmul is fastest)."""
    rows = max(U - 1, 8) if block_rows is None else int(block_rows)
    if rows < 1:
        raise ValueError(f"STSS block_rows must be >= 1, got {block_rows}")
    if block_rows is None and H < 2 * rows:
        rows = H
    p = U // 2
    return [(h0, min(H, h0 + rows), max(0, h0 - p), min(H, h0 + rows + p)) for h0 in range(0, H, rows)]


@lru_cache(maxsize=256)
def _block_tables(H: int, W: int, U: int, V: int, block: tuple[int, int, int, int], device: str):
    """Gather tables for one row block's Gram matrix ``G[i, j] = <F[t, i], F[s, j]>`` between the
    block's query positions i (rows [h0, h1) of frame t, row-major) and the key positions j (rows
    [k0, k1) of frame s), flattened to (R W * K W,) with R = h1 - h0 and K = k1 - k0.

    Returns ``(fwd_index, fwd_mask, fwd_neighbour, bwd_index, bwd_mask, bwd_neighbour)``:
    - fwd: the (U, V) window of each query in frame t, rows [h0, h1): G[query, neighbour];
      index (R W * UV,), mask (R W, UV) = 1 where the neighbour is inside the image.
    - bwd: the windows of the queries in frame s, rows [k0, k1), read from G's columns:
      G[neighbour, query]; mask (K W, UV) = 1 where the neighbour lies inside the image *and* in this
      block's rows [h0, h1). Every (query, offset) is covered by exactly one block, so the blocks' masked
      reads add up to the full window.
    - ``*_neighbour``: the neighbour's flat position in its frame, or H W where the mask is 0 (an index
      into per-frame inverse norms padded with a trailing 0, which applies the mask for free).
    """
    h0, h1, k0, k1 = block
    du = (torch.arange(U, device=device) - U // 2).view(1, 1, U, 1)
    dv = (torch.arange(V, device=device) - V // 2).view(1, 1, 1, V)
    ww = torch.arange(W, device=device).view(1, W, 1, 1)
    nw = ww + dv
    col_ok = (nw >= 0) & (nw < W)
    nw = nw.clamp(0, W - 1)
    key_width = (k1 - k0) * W

    hq = torch.arange(h0, h1, device=device).view(-1, 1, 1, 1)  # queries in frame t
    nh_fwd = hq + du
    fwd_ok = (nh_fwd >= 0) & (nh_fwd < H) & col_ok
    key = (nh_fwd.clamp(k0, k1 - 1) - k0) * W + nw  # neighbour within the key rows
    fwd = ((hq - h0) * W + ww) * key_width + key

    hk = torch.arange(k0, k1, device=device).view(-1, 1, 1, 1)  # queries in frame s
    nh = hk + du
    bwd_ok = (nh >= h0) & (nh < h1) & col_ok
    neighbour = (nh.clamp(h0, h1 - 1) - h0) * W + nw  # neighbour within the block's query rows
    bwd = neighbour * key_width + (hk - k0) * W + ww
    fwd_neighbour = torch.where(fwd_ok, nh_fwd * W + nw, H * W)
    bwd_neighbour = torch.where(bwd_ok, nh * W + nw, H * W)
    return (
        fwd.reshape(-1),
        fwd_ok.reshape(-1, U * V).float(),
        fwd_neighbour.reshape(-1),
        bwd.reshape(-1),
        bwd_ok.reshape(-1, U * V).float(),
        bwd_neighbour.reshape(-1),
    )


def _pair_schedule(T: int, offsets: list[int], t0: int, t1: int) -> list[tuple[int, int, int | None, int | None]]:
    """Frame pairs (t, s = t + k, k >= 0), ordered by t, with the window index they fill per direction.

    Each entry is ``(t, s, l_fwd, l_bwd)``: ``l_fwd`` is the index of offset +k, filled for query frame t
    from G's rows; ``l_bwd`` the index of offset -k (k > 0), filled for query frame s from G's columns.
    None means that direction is not needed (offset not in the window or query frame not requested).
    """
    index_of = {dt: l for l, dt in enumerate(offsets)}
    reach = max(abs(dt) for dt in offsets)
    pairs = []
    for t in range(T):
        for s in range(t, min(T, t + reach + 1)):
            k = s - t
            l_fwd = index_of.get(k) if t0 <= t < t1 else None
            l_bwd = index_of.get(-k) if (k > 0 and t0 <= s < t1) else None
            if l_fwd is not None or l_bwd is not None:
                pairs.append((t, s, l_fwd, l_bwd))
    return pairs


class _NormalisedFrames:
    """Unit-norm features of single frames, (B, HW, C), computed on demand.

    Pairs come ordered by their first frame t, so only frames >= t are kept: at most ``reach + 1`` frames
    are alive instead of a normalised copy of the whole clip. Zero vectors stay zero.
    """

    def __init__(self, x: Tensor, inv_norm: Tensor) -> None:
        self.x, self.inv_norm, self.frames = x, inv_norm, {}

    def __call__(self, t: int) -> Tensor:
        if t not in self.frames:
            self.frames[t] = self.x[:, t] * self.inv_norm[:, t, :, None]
        return self.frames[t]

    def drop_before(self, t: int) -> None:
        for old in [i for i in self.frames if i < t]:
            del self.frames[old]


class _STSSFunction(torch.autograd.Function):
    """Fast STSS on (B, T, HW, C) with a hand-written backward; see :func:`stss`."""

    @staticmethod
    def forward(ctx, x: Tensor, H: int, W: int, L: int, U: int, V: int, causal: bool, t0: int, t1: int,
                block_rows: int | None):
        B, T, HW, _ = x.shape
        blocks = row_blocks(H, U, block_rows)
        inv_norm = 1.0 / torch.linalg.vector_norm(x, dim=-1).clamp_min(EPS)  # (B, T, HW)
        inv_norm_padded = torch.cat([inv_norm, inv_norm.new_zeros(B, T, 1)], dim=2)  # position HW -> 0
        out = x.new_zeros(B, t1 - t0, HW, L, U * V)

        def window_cosines(gram: Tensor, index: Tensor, neighbour: Tensor, t_query: int, query: slice, t_key: int):
            # Dot products of the queries with their (U, V) neighbours, divided by both norms (0 outside).
            # Raw features go into the Gram matrix and the norms are divided out of the (smaller) windows,
            # so that no normalised copy of the clip or of a frame is needed.
            dots = gram.index_select(1, index).view(B, -1, U * V)
            key_inv_norm = inv_norm_padded[:, t_key].index_select(1, neighbour).view(B, -1, U * V)
            return dots.mul_(inv_norm[:, t_query, query, None]).mul_(key_inv_norm)

        for t, s, l_fwd, l_bwd in _pair_schedule(T, temporal_offsets(L, causal), t0, t1):
            for block in blocks:
                h0, h1, k0, k1 = block
                fwd, _, fwd_nb, bwd, _, bwd_nb = _block_tables(H, W, U, V, block, str(x.device))
                q, k = slice(h0 * W, h1 * W), slice(k0 * W, k1 * W)  # query / key positions of the block
                gram = torch.bmm(x[:, t, q], x[:, s, k].transpose(1, 2)).view(B, -1)  # <F[t, i], F[s, j]>
                if l_fwd is not None:  # queries in frame t (rows of G), offset +k
                    out[:, t - t0, q, l_fwd] = window_cosines(gram, fwd, fwd_nb, t, q, s)
                if l_bwd is not None:  # queries in frame s (columns of G), offset -k: this block's share
                    out[:, s - t0, k, l_bwd].add_(window_cosines(gram, bwd, bwd_nb, s, k, t))
        ctx.save_for_backward(x, inv_norm)
        ctx.sizes = (H, W, L, U, V, causal, t0, t1, block_rows)
        return out.view(B, t1 - t0, H, W, L, U, V)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor):
        x, inv_norm = ctx.saved_tensors
        H, W, L, U, V, causal, t0, t1, block_rows = ctx.sizes
        B, T, HW, _ = x.shape
        blocks = row_blocks(H, U, block_rows)
        grad_out = grad_out.reshape(B, t1 - t0, HW, L, U * V)
        grad_xn = torch.zeros_like(x)  # dLoss / d(normalised features), (B, T, HW, C)
        frames = _NormalisedFrames(x, inv_norm)
        for t, s, l_fwd, l_bwd in _pair_schedule(T, temporal_offsets(L, causal), t0, t1):
            frames.drop_before(t)
            for block in blocks:
                h0, h1, k0, k1 = block
                fwd, fwd_mask, _, bwd, bwd_mask, _ = _block_tables(H, W, U, V, block, str(x.device))
                q, k = slice(h0 * W, h1 * W), slice(k0 * W, k1 * W)
                grad_gram = x.new_zeros(B, (h1 - h0) * W * (k1 - k0) * W)
                if l_fwd is not None:
                    g = grad_out[:, t - t0, q, l_fwd] * fwd_mask.to(x.dtype)
                    grad_gram.index_add_(1, fwd, g.reshape(B, -1))
                if l_bwd is not None:
                    g = grad_out[:, s - t0, k, l_bwd] * bwd_mask.to(x.dtype)
                    grad_gram.index_add_(1, bwd, g.reshape(B, -1))
                grad_gram = grad_gram.view(B, (h1 - h0) * W, (k1 - k0) * W)
                grad_xn[:, t, q] += torch.bmm(grad_gram, frames(s)[:, k])  # gram = xn_t[q] xn_s[k]^T
                grad_xn[:, s, k] += torch.bmm(grad_gram.transpose(1, 2), frames(t)[:, q])
        # Through xn = x / max(|x|, EPS): the radial part drops out only where the norm was not clamped.
        xn = x * inv_norm[..., None]
        radial = (xn * grad_xn).sum(-1, keepdim=True) * (inv_norm[..., None] < 1.0 / EPS)
        grad_x = (grad_xn - xn * radial) * inv_norm[..., None]
        return grad_x, *([None] * 9)


def stss(
    x: Tensor,
    window: Sequence[int] = (5, 9, 9),
    causal: bool = False,
    queries: tuple[int, int] | None = None,
    block_rows: int | None = None,
) -> Tensor:
    """STSS transformation f (Eq. 1-2), fast implementation.

    x: (B, T, H, W, C) features. window: (L, U, V), U and V odd. causal: temporal offsets -(L-1)..0
    instead of centred. queries: optional (t0, t1) to compute S only for query frames t0 <= t < t1.
    block_rows: query rows per Gram block (see :func:`row_blocks`; None = automatic; only speed and
    memory depend on it). Returns S: (B, T', H, W, L, U, V) with T' = t1 - t0 (T by default).
    Differentiable w.r.t. x.
    """
    check_features(x)
    L, U, V = check_window(window)
    B, T, H, W, C = x.shape
    t0, t1 = (0, T) if queries is None else (int(queries[0]), int(queries[1]))
    if not 0 <= t0 <= t1 <= T:
        raise ValueError(f"STSS queries must satisfy 0 <= t0 <= t1 <= T = {T}, got (t0, t1) = {(t0, t1)}")
    x = x.contiguous().view(B, T, H * W, C)
    return _STSSFunction.apply(x, H, W, L, U, V, bool(causal), t0, t1, block_rows)


def stss_reference(x: Tensor, window: Sequence[int] = (5, 9, 9), causal: bool = False) -> Tensor:
    """STSS transformation f (Eq. 2) with explicit loops over the (l, u, v) offsets (slow; for tests).

    Same contract as :func:`stss` (without ``queries``); autograd differentiates it directly.
    """
    check_features(x)
    L, U, V = check_window(window)
    B, T, H, W, _ = x.shape
    xn = x / torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp_min(EPS)
    out = x.new_zeros(B, T, H, W, L, U, V)
    for l, dt in enumerate(temporal_offsets(L, causal)):
        t_lo, t_hi = max(0, -dt), min(T, T - dt)  # query frames whose neighbour t + dt is in the clip
        for u in range(U):
            du = u - U // 2
            h_lo, h_hi = max(0, -du), min(H, H - du)
            for v in range(V):
                dv = v - V // 2
                w_lo, w_hi = max(0, -dv), min(W, W - dv)
                if t_lo >= t_hi or h_lo >= h_hi or w_lo >= w_hi:
                    continue  # every neighbour is outside: stays 0
                query = xn[:, t_lo:t_hi, h_lo:h_hi, w_lo:w_hi]
                neighbour = xn[:, t_lo + dt : t_hi + dt, h_lo + du : h_hi + du, w_lo + dv : w_hi + dv]
                out[:, t_lo:t_hi, h_lo:h_hi, w_lo:w_hi, l, u, v] = (query * neighbour).sum(-1)
    return out


def vectorise(s: Tensor) -> Tensor:
    """STSS encoding g = vectorisation over (L, U, V) (appendix A): (B,T,H,W,L,U,V) -> (B,T,H,W,L*U*V)."""
    return s.flatten(-3)


def high_order_stss(
    x: Tensor,
    window: Sequence[int] = (5, 9, 9),
    order: int = 1,
    encode: Callable[[Tensor], Tensor] = vectorise,
    causal: bool = False,
) -> list[Tensor]:
    """STSS tensors of orders 1..order (Eq. 3, 'no-fusion'): S(1) = f(F), S(n) = f(g(S(n - 1))).

    ``encode`` is g, mapping (B,T,H,W,L,U,V) to (B,T,H,W,C'); the default vectorises (appendix A).
    Returns [S(1), ..., S(order)], each (B, T, H, W, L, U, V).
    """
    if order < 1:
        raise ValueError(f"STSS order must be >= 1, got {order}")
    tensors = [stss(x, window, causal)]
    for _ in range(order - 1):
        tensors.append(stss(encode(tensors[-1]), window, causal))
    return tensors
