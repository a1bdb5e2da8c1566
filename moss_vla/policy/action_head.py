"""GR00T N1.5 flow-matching action head: lerobot 0.4.4's ``FlowmatchingActionHead`` with our sizes.

What it computes (DESIGN.md section 3): the VL features pass a LayerNorm and self-attention blocks; the
state (B, 1, S) and the noised action chunk (B, H, A) are embedded (per-embodiment MLPs; action encoder
= linear(action) ++ sinusoidal(timestep) -> linear + swish -> linear); the DiT runs on
``[state (1), future tokens (32, learned), action tokens (H)]`` with AdaLN timestep conditioning, even
blocks cross-attending to the VL features and odd blocks self-attending; the decoder predicts the
velocity. Training: u ~ Beta(1.5, 1), t = (0.999 - u) / 0.999, x_t = (1 - t) noise + t action, target
action - noise, timestep floor(1000 t), masked MSE. Inference: 4 Euler steps from t = 0.

Notes on the lerobot implementation that matter here:
- its DiT ignores ``backbone_attention_mask`` (the argument is commented out upstream), so padded text
  tokens are attended to; the backbone trims text padding to the longest instruction of each batch;
- the noise comes from the global torch RNG (``torch.randn`` in ``forward`` and ``get_action``, and
  ``Beta.sample``): :meth:`ActionHead.sample` takes a ``seed`` and forks the RNG so that two calls with
  the same seed use the same noise without touching the caller's RNG state;
- it prints parameter counts on construction; we silence that.
"""

from __future__ import annotations

import contextlib
import io

import torch
from lerobot.policies.groot.action_head.flow_matching_action_head import (
    CategorySpecificLinear,
    FlowmatchingActionHead,
    FlowmatchingActionHeadConfig,
)
from torch import Tensor, nn
from transformers.feature_extraction_utils import BatchFeature

from moss_vla.policy.configuration import ActionHeadConfig


def lerobot_head_config(cfg: ActionHeadConfig, state_dim: int, action_dim: int,
                        backbone_dim: int) -> FlowmatchingActionHeadConfig:
    """Our sizes in lerobot's config (max_num_embodiments = 1, no padding of state/action dims)."""
    vl_heads = cfg.vl_self_attention_heads
    return FlowmatchingActionHeadConfig(
        action_dim=action_dim,
        action_horizon=cfg.horizon,
        max_state_dim=state_dim,
        max_action_dim=action_dim,
        hidden_size=cfg.hidden_size,
        input_embedding_dim=cfg.input_embedding_dim,
        backbone_embedding_dim=backbone_dim,
        max_num_embodiments=1,
        num_inference_timesteps=cfg.num_inference_steps,
        num_target_vision_tokens=cfg.num_future_tokens,
        max_seq_len=1024,
        add_pos_embed=True,
        use_vlln=True,
        noise_beta_alpha=cfg.noise_beta_alpha,
        noise_beta_beta=cfg.noise_beta_beta,
        noise_s=cfg.noise_s,
        num_timestep_buckets=cfg.num_timestep_buckets,
        tune_projector=True,
        tune_diffusion_model=True,
        diffusion_model_cfg={
            "num_attention_heads": cfg.num_heads,
            "attention_head_dim": cfg.head_dim,
            "output_dim": cfg.hidden_size,
            "num_layers": cfg.num_layers,
            "dropout": cfg.dropout,
            "final_dropout": True,
            "interleave_self_attention": True,
            "norm_type": "ada_norm",
            "positional_embeddings": None,  # as in GR00T N1.5's released config
            "cross_attention_dim": backbone_dim,
        },
        vl_self_attention_cfg={
            "num_attention_heads": vl_heads,
            "attention_head_dim": backbone_dim // vl_heads,
            "num_layers": cfg.vl_self_attention_layers,
            "dropout": cfg.dropout,
            "final_dropout": True,
            "positional_embeddings": None,
        },
    )


class ActionHead(nn.Module):
    """Thin adapter around lerobot's FlowmatchingActionHead (plain tensors in, tensors out)."""

    def __init__(self, cfg: ActionHeadConfig, state_dim: int, action_dim: int, backbone_dim: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.state_dim, self.action_dim = state_dim, action_dim
        with contextlib.redirect_stdout(io.StringIO()):  # lerobot prints parameter counts
            self.head = FlowmatchingActionHead(lerobot_head_config(cfg, state_dim, action_dim, backbone_dim))
        if cfg.init == "scaled":  # see ActionHeadConfig.init
            for m in self.head.modules():
                if isinstance(m, CategorySpecificLinear):
                    nn.init.normal_(m.W, 0.0, m.W.shape[1] ** -0.5)  # W: (embodiments, fan_in, fan_out)
        elif cfg.init != "lerobot":
            raise ValueError(f"action_head.init: expected 'scaled' or 'lerobot', got {cfg.init!r}")

    def _inputs(self, vl: Tensor, vl_mask: Tensor, state: Tensor) -> tuple[BatchFeature, dict]:
        B = vl.shape[0]
        backbone = BatchFeature(data={"backbone_features": vl, "backbone_attention_mask": vl_mask})
        action_input = {"state": state[:, None, :], "embodiment_id": torch.zeros(B, dtype=torch.long, device=vl.device)}
        return backbone, action_input

    def loss(self, vl: Tensor, vl_mask: Tensor, state: Tensor, action: Tensor, action_is_pad: Tensor) -> Tensor:
        """Flow-matching loss. vl (B, N, D), state (B, S) and action (B, H, A) normalised; pad (B, H) bool."""
        backbone, action_input = self._inputs(vl, vl_mask, state)
        action_input["action"] = action
        action_input["action_mask"] = (~action_is_pad)[:, :, None].to(action.dtype).expand_as(action)
        return self.head(backbone, BatchFeature(data=action_input))["loss"]

    @torch.no_grad()
    def sample(self, vl: Tensor, vl_mask: Tensor, state: Tensor, seed: int | None = None) -> Tensor:
        """Euler-integrated action chunk (B, H, A), normalised. ``seed`` fixes the initial noise."""
        backbone, action_input = self._inputs(vl, vl_mask, state)
        if seed is None:
            return self.head.get_action(backbone, BatchFeature(data=action_input))["action_pred"]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.head.get_action(backbone, BatchFeature(data=action_input))["action_pred"]
