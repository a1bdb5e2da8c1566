"""Frame cache for the 10 Hz loop: each new frame costs about one frame of encoder work.

What can be cached depends on the temporal window (``temporal.causal``):

- centred window (the paper's; default): a past frame's features *after* the temporal module change
  when a new frame arrives (its STSS window reaches into the future), so only the per-frame work before
  the module is cached: SigLIP embeddings + layers 1..k (all N layers when there is no temporal
  module). At each replan the temporal module, layers k+1..N, the VL backbone and the action head run
  on the window. Exact: the result equals the uncached forward on the same window.
- causal window (``temporal.causal: true``) with ContextVLA compression: everything for past frames
  is cached. When a frame arrives, the tower runs layers 1..k for it, the temporal module's output for
  the newest frame (its causal window only looks back; MOSS computes M(n) only for the frames the
  newest one depends on, and reuses the M(1) of past frames that cannot have changed), layers k+1..N,
  and the VL blocks before the compression for its tokens, attending to the cached keys/values of the
  previous T-1 frames (the group-causal attention never lets a frame see later ones). The cache keeps
  per frame: the pre-module tokens (for later frames' temporal windows), MOSS's M(1), the keys/values
  of each early VL block, and the frame's tokens after block ``compress_after`` (for the context
  token). A replan then only runs the text through the early blocks, the blocks after the compression
  on [context, current frame, text], and the action head.

  Streaming semantics: each frame's cached state was computed when it was the newest frame, with the
  T-1 frames before it as context. The uncached forward on a T-frame window instead gives the oldest
  frames of the window less context (the window starts at them). So causal streaming equals a forward
  over the whole history in which every frame sees exactly its T-1 predecessors (tested in
  tests/test_policy_streaming.py); it is not bit-equal to the training-time window forward, whose
  newest frame sees the same frames but whose older frames see truncated context.

At reset the first frame is pushed T times, like the dataset repeats the first frame of an episode.

The cache runs in ``torch.inference_mode`` (cheaper than ``no_grad`` per operator; the cached step's
times are in benchmarks/results/policy.json, docs/results.md section 3): its tensors never enter autograd.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from moss_vla.policy.modeling import MossVLAPolicy


class FrameCache:
    """Per-frame states of the last T frames of a stream (batch size 1 or B, all frames in lockstep)."""

    def __init__(self, policy: MossVLAPolicy) -> None:
        self.policy = policy
        self.T = policy.config.n_frames
        self.full = policy.config.temporal.causal and policy.backbone.compress
        self.reset()

    def reset(self) -> None:
        self.pre: deque[Tensor] = deque(maxlen=self.T)  # (B, h*w, C) tokens after vision layer k
        self.kv: deque[list[tuple[Tensor, Tensor]]] = deque(maxlen=self.T)  # per frame: (k, v) per early block
        self.early_out: deque[Tensor] = deque(maxlen=self.T)  # per frame: (B, n, D) after compress_after
        temporal = self.policy.vision.temporal
        self.temporal_memory = temporal.stream_memory() if self.full and temporal is not None else None
        self.frames_seen = 0

    @torch.inference_mode()
    def push(self, pixels: Tensor) -> None:
        """Encode one new frame (B, 3, S, S) in [0, 1] (the first one fills the window T times)."""
        copies = self.T if self.frames_seen == 0 else 1
        vision = self.policy.vision
        pre = vision.pre(vision.preprocess(pixels))  # layers 1..k, this frame only
        if vision.temporal is None and not self.full:
            pre = vision.post(pre)  # no temporal module: nothing in the tower mixes frames, cache all of it
        for _ in range(copies):
            self.pre.append(pre)
            if self.full:
                self._push_full()
        self.frames_seen += 1

    def _push_full(self) -> None:
        vision, backbone = self.policy.vision, self.policy.backbone
        window = torch.stack(list(self.pre), 1)  # (B, t, h*w, C), the newest last
        tokens = vision.post(vision.temporal_residual_newest(window, self.temporal_memory))  # (B, h*w, C)
        frame = backbone.embed_frames(tokens[:, None])[:, 0]  # (B, n, D)
        past = None
        if self.kv:  # keys/values of the previous frames (at most T-1 of them), per early block
            frames = list(self.kv)[-(self.T - 1):] if self.T > 1 else []
            if frames:
                past = [(torch.cat([f[i][0] for f in frames], 2), torch.cat([f[i][1] for f in frames], 2))
                        for i in range(backbone.n_early)]
        out, own = backbone.stream_frame(frame, past)
        self.kv.append(own)
        self.early_out.append(out)

    @torch.inference_mode()
    def vl_features(self, text: Tensor, text_mask: Tensor) -> tuple[Tensor, Tensor]:
        """VL features of the current window from the cache: (B, N, D), (B, N)."""
        policy = self.policy
        if not self.full:
            window = torch.stack(list(self.pre), 1)  # (B, T, h*w, C)
            B, T = window.shape[:2]
            if policy.vision.temporal is None:
                tokens = window  # already the tower's output
            else:
                x = policy.vision.temporal_residual(window)
                tokens = policy.vision.post(x.flatten(0, 1)).view(B, T, *x.shape[2:])
            return policy.backbone(policy.backbone.embed_frames(tokens), text, text_mask)
        backbone = policy.backbone
        frames_kv = [(torch.cat([f[i][0] for f in self.kv], 2), torch.cat([f[i][1] for f in self.kv], 2))
                     for i in range(backbone.n_early)]
        text_states = backbone.stream_text(text, text_mask, frames_kv)
        outs = list(self.early_out)
        context = torch.stack(outs[:-1], 1).mean(dim=(1, 2))[:, None]  # ContextVLA token (B, 1, D)
        return backbone.late(context, outs[-1], text_states, text_mask)
