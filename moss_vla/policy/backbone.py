"""Vision-language backbone with ContextVLA compression (Jang et al. 2025; docs/design.md section 4.4).

Input: vision tokens of T frames (optionally average-pooled to ``pool_grid`` x ``pool_grid`` per frame)
and instruction tokens. Sequence ``[frame_0, ..., frame_{T-1}, text]`` through pre-LN transformer blocks.

Attention is group-causal, as in a causal VLM with the images before the text: groups are the frames in
time order and then the text; a token attends to its own group and to earlier groups. Hence frame t's
tokens never depend on later frames or on the text, which is what makes past frames cacheable in a
stream (ContextVLA caches past-frame work the same way).

ContextVLA: after block ``compress_after`` (2), all tokens of the past frames 0..T-2 are mean-pooled into
one context token, and the later blocks see ``[context, current-frame tokens, text]``.

Output: (B, N, D) features after a final LayerNorm and a (B, N) validity mask (False on text padding).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from moss_vla.policy.configuration import BackboneConfig

KV = tuple[Tensor, Tensor]


class Block(nn.Module):
    """Pre-LN transformer block; attention can take extra cached keys/values (for streaming)."""

    def __init__(self, dim: int, heads: int, mlp: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp), nn.GELU(approximate="tanh"), nn.Linear(mlp, dim))
        self.drop = nn.Dropout(dropout)

    def qkv_heads(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        B, N, D = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(B, N, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        return q, k, v  # each (B, heads, N, D/heads)

    def forward(self, x: Tensor, mask: Tensor | None = None, past: KV | None = None) -> tuple[Tensor, KV]:
        """x (B, N, D); mask (B or 1, 1, N, N_past + N) bool (True = attend); past = cached (k, v) keys
        and values placed before x's own. Returns the new x and x's own (k, v)."""
        q, k, v = self.qkv_heads(x)
        keys, values = (k, v) if past is None else (torch.cat([past[0], k], 2), torch.cat([past[1], v], 2))
        a = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)  # (B, heads, N, D/heads)
        x = x + self.drop(self.proj(a.transpose(1, 2).flatten(2)))
        x = x + self.drop(self.mlp(self.ln2(x)))
        return x, (k, v)


def group_causal_mask(groups: Tensor, key_valid: Tensor) -> Tensor:
    """Attention mask (B, 1, N, N): query i may attend to key j iff group[j] <= group[i] and j is valid.

    groups: (N,) int group id per position (frames 0..T-1, text T); key_valid: (B, N) bool.
    """
    allowed = groups[None, :] <= groups[:, None]  # (N, N)
    return (allowed[None] & key_valid[:, None, :])[:, None]


class VLBackbone(nn.Module):
    """Vision tokens + instruction tokens -> VL features for the action head."""

    def __init__(self, cfg: BackboneConfig, vision_width: int, grid: int, n_frames: int, vocab_size: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.n_frames = n_frames
        self.grid = grid
        self.pool = cfg.pool_grid if cfg.pool_grid is not None else grid
        self.tokens_per_frame = self.pool * self.pool
        d = cfg.hidden_size
        self.vision_proj = nn.Sequential(nn.LayerNorm(vision_width), nn.Linear(vision_width, d))
        self.vision_pos = nn.Parameter(0.02 * torch.randn(self.tokens_per_frame, d))
        self.text_embed = nn.Embedding(vocab_size, d)
        self.text_pos = nn.Parameter(0.02 * torch.randn(cfg.max_text_len, d))
        self.type_embed = nn.Parameter(0.02 * torch.randn(2, d))  # 0: vision (and context), 1: text
        self.blocks = nn.ModuleList(
            Block(d, cfg.num_heads, cfg.intermediate_size, cfg.dropout) for _ in range(cfg.num_layers)
        )
        self.norm = nn.LayerNorm(d)
        self.compress = cfg.context_compression and n_frames > 1
        self.n_early = cfg.compress_after if self.compress else cfg.num_layers

    def current_frame_positions(self) -> slice:
        """Where the newest frame's tokens sit in :meth:`forward`'s output: after the context token
        with compression ([context, frame_{T-1}, text]), else after the T-1 earlier frames."""
        n = self.tokens_per_frame
        start = 1 if self.compress else (self.n_frames - 1) * n
        return slice(start, start + n)

    # ---- embeddings ------------------------------------------------------------------------------
    def embed_frames(self, tokens: Tensor) -> Tensor:
        """(B, T, h*w, C_v) vision tokens -> (B, T, n, D) with n = pool_grid^2."""
        B, T, _, C = tokens.shape
        if self.pool != self.grid:
            g = tokens.reshape(B * T, self.grid, self.grid, C).permute(0, 3, 1, 2)
            tokens = F.adaptive_avg_pool2d(g, self.pool).flatten(2).transpose(1, 2).reshape(B, T, -1, C)
        return self.vision_proj(tokens) + self.vision_pos + self.type_embed[0]

    def embed_text(self, ids: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """(B, L) ids, (B, L) mask -> (B, L', D), (B, L') with L' = ceil(L / text_pool).

        ``text_pool`` > 1 averages the embeddings of that many consecutive tokens (e.g. 4 bytes) into
        one, so that byte-level instructions do not dominate the backbone's cost."""
        x = self.text_embed(ids) + self.text_pos[: ids.shape[1]]
        s = self.cfg.text_pool
        if s > 1:
            B, L, D = x.shape
            pad = (-L) % s
            m = F.pad(mask, (0, pad)).view(B, -1, s).float()
            x = F.pad(x, (0, 0, 0, pad)).view(B, -1, s, D)
            x = (x * m[..., None]).sum(2) / m.sum(2).clamp_min(1.0)[..., None]
            mask = m.sum(2) > 0
        return x + self.type_embed[1], mask

    # ---- full (uncached) forward -------------------------------------------------------------------
    def forward(self, frames: Tensor, text: Tensor, text_mask: Tensor) -> tuple[Tensor, Tensor]:
        """frames (B, T, n, D) embedded; text (B, L, D) embedded, text_mask (B, L) -> (B, N', D), (B, N')."""
        B, T, n, D = frames.shape
        x = torch.cat([frames.flatten(1, 2), text], 1)  # (B, T*n + L, D)
        groups = torch.cat([torch.arange(T, device=x.device).repeat_interleave(n),
                            torch.full((text.shape[1],), T, device=x.device)])
        valid = torch.cat([text_mask.new_ones(B, T * n), text_mask], 1)
        mask = group_causal_mask(groups, valid)
        for blk in self.blocks[: self.n_early]:
            x, _ = blk(x, mask)
        if not self.compress:
            return self.norm(x), valid
        frame_states = x[:, : T * n].view(B, T, n, D)
        context = frame_states[:, :-1].mean(dim=(1, 2))[:, None]  # ContextVLA: (B, 1, D)
        return self.late(context, frame_states[:, -1], x[:, T * n :], text_mask)

    def late(self, context: Tensor, current: Tensor, text: Tensor, text_mask: Tensor) -> tuple[Tensor, Tensor]:
        """Blocks after the compression on [context, current frame, text]; groups (ctx+frame), text."""
        B, n = current.shape[:2]
        x = torch.cat([context, current, text], 1)
        groups = torch.cat([torch.zeros(1 + n, dtype=torch.long, device=x.device),
                            torch.ones(text.shape[1], dtype=torch.long, device=x.device)])
        valid = torch.cat([text_mask.new_ones(B, 1 + n), text_mask], 1)
        mask = group_causal_mask(groups, valid)
        for blk in self.blocks[self.n_early :]:
            x, _ = blk(x, mask)
        return self.norm(x), valid

    # ---- streaming (causal temporal window + compression): one frame at a time -----------------------
    def stream_frame(self, frame: Tensor, past: list[KV] | None) -> tuple[Tensor, list[KV]]:
        """Early blocks for the newest frame (B, n, D), attending to the cached keys/values of the past
        frames in the window (``past[i]`` for block i, or None). Returns its output after block
        ``compress_after`` and its own (k, v) per early block (to cache)."""
        x, own = frame, []
        for i, blk in enumerate(self.blocks[: self.n_early]):
            x, kv = blk(x, None, None if past is None else past[i])  # all earlier frames + itself: no mask
            own.append(kv)
        return x, own

    def stream_text(self, text: Tensor, text_mask: Tensor, frames_kv: list[KV]) -> Tensor:
        """Early blocks for the text tokens, attending to all frames of the window (cached k, v per
        block, frames in time order) and to the valid text."""
        B = text.shape[0]
        n_frame_keys = frames_kv[0][0].shape[2]
        valid = torch.cat([text_mask.new_ones(B, n_frame_keys), text_mask], 1)[:, None, None, :]
        x = text
        for i, blk in enumerate(self.blocks[: self.n_early]):
            x, _ = blk(x, valid, frames_kv[i])
        return x
