"""SigLIP vision tower with a temporal module after layer k (MOSS paper sec. 4.4.2, Fig. 7b).

transformers' ``SiglipVisionModel`` is run layer by layer so that the (B, T, h, w, C) token grid of all
frames can pass the temporal module after layer k, whose output is added as a residual:

    x_k' = x_k + Temporal(x_k)      then layers k+1 .. N and the post LayerNorm.

The temporal module's final FC layers start at zero, so at initialisation the tower gives exactly
``SiglipVisionModel(pixel_values).last_hidden_state``. Real weights load from a local directory
(``vision.pretrained_path``, the ``save_pretrained`` layout).

The split into :meth:`pre` (embeddings + layers 1..k, per frame), :meth:`temporal_residual` and
:meth:`post` (layers k+1..N, per frame) is what the streaming cache uses: ``pre`` never changes for a
frame that has been seen.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn
from transformers import SiglipVisionConfig, SiglipVisionModel

from moss_vla.policy.configuration import TemporalConfig, VisionConfig
from moss_vla.policy.temporal_modules import TemporalModule, build_temporal_module

# SigLIP's image processor: rescale to [0, 1], then normalise with mean = std = 0.5 -> [-1, 1].
SIGLIP_MEAN, SIGLIP_STD = 0.5, 0.5


def siglip_config(cfg: VisionConfig) -> SiglipVisionConfig:
    return SiglipVisionConfig(
        hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size, num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads, image_size=cfg.image_size, patch_size=cfg.patch_size,
        layer_norm_eps=cfg.layer_norm_eps, vision_use_head=False, attn_implementation=cfg.attn_implementation,
    )


def load_siglip(cfg: VisionConfig) -> SiglipVisionModel:
    """A random-initialised SigLIP of the configured size, or the weights in ``cfg.pretrained_path``."""
    if cfg.pretrained_path is None:
        return SiglipVisionModel(siglip_config(cfg))
    model = SiglipVisionModel.from_pretrained(
        cfg.pretrained_path, local_files_only=True, attn_implementation=cfg.attn_implementation
    )
    got = model.config
    expected = {"hidden_size": cfg.hidden_size, "intermediate_size": cfg.intermediate_size,
                "num_hidden_layers": cfg.num_layers, "num_attention_heads": cfg.num_heads,
                "image_size": cfg.image_size, "patch_size": cfg.patch_size}
    bad = {k: (v, getattr(got, k)) for k, v in expected.items() if getattr(got, k) != v}
    if bad:
        detail = ", ".join(f"{k}: config {v} vs checkpoint {g}" for k, (v, g) in bad.items())
        raise ValueError(f"SigLIP checkpoint {cfg.pretrained_path} does not match the vision config ({detail}); "
                         "set the vision.* sizes to the checkpoint's")
    return model


class VisionTower(nn.Module):
    """(B, T, 3, S, S) frames in [0, 1] -> (B, T, h*w, C) tokens (after SigLIP's post LayerNorm)."""

    def __init__(self, cfg: VisionConfig, temporal: TemporalConfig, siglip: SiglipVisionModel | None = None) -> None:
        """``siglip``: a prebuilt SigLIP to run (its modules are used, not copied), e.g. the one inside
        GR00T N1.5's Eagle model; by default it is built (or loaded) from ``cfg``."""
        super().__init__()
        self.cfg = cfg
        siglip = (siglip or load_siglip(cfg)).vision_model
        self.embeddings = siglip.embeddings
        self.layers = siglip.encoder.layers
        self.post_layernorm = siglip.post_layernorm
        self.k = cfg.temporal_after_layer
        self.grid = cfg.grid
        if cfg.freeze:
            for p in self.parameters():
                p.requires_grad_(False)
        self.temporal: TemporalModule | None = build_temporal_module(cfg.hidden_size, temporal)

    def preprocess(self, frames: Tensor) -> Tensor:
        """(N, 3, S_in, S_in) float in [0, 1] -> (N, 3, S, S) SigLIP input (resize + normalise).

        Downsizing by an integer factor (224 -> 112) averages pixel blocks; other sizes use antialiased
        bilinear interpolation."""
        size, s_in = self.cfg.image_size, frames.shape[-1]
        if frames.shape[-2:] != (size, size):
            if frames.shape[-2] == s_in and s_in % size == 0:  # integer factor: box filter, much cheaper
                f = s_in // size
                frames = sum(frames[..., i::f, j::f] for i in range(f) for j in range(f)) / (f * f)
            else:
                frames = F.interpolate(frames, size=(size, size), mode="bilinear", align_corners=False,
                                       antialias=True)
        return (frames - SIGLIP_MEAN) / SIGLIP_STD

    def pre(self, pixels: Tensor) -> Tensor:
        """Embeddings + layers 1..k, per frame: (N, 3, S, S) normalised -> (N, h*w, C)."""
        x = self.embeddings(pixels)
        for layer in self.layers[: self.k]:
            x = layer(x, None)
        return x

    def temporal_residual(self, x: Tensor) -> Tensor:
        """x + Temporal(x) on the token grid: (B, T, h*w, C) -> (B, T, h*w, C)."""
        if self.temporal is None:
            return x
        B, T, N, C = x.shape
        grid = x.view(B, T, self.grid, self.grid, C)
        return x + self.temporal(grid).reshape(B, T, N, C)

    def temporal_residual_newest(self, x: Tensor, memory: object | None = None) -> Tensor:
        """The newest frame's tokens after the residual, from the (B, T, h*w, C) window: (B, h*w, C).
        ``memory``: the temporal module's stream memory when frames come one at a time."""
        if self.temporal is None:
            return x[:, -1]
        B, T, N, C = x.shape
        delta = self.temporal.newest(x.view(B, T, self.grid, self.grid, C), memory).reshape(B, N, C)
        return x[:, -1] + delta

    def post(self, x: Tensor) -> Tensor:
        """Layers k+1..N and the post LayerNorm, per frame: (N, h*w, C) -> (N, h*w, C)."""
        for layer in self.layers[self.k :]:
            x = layer(x, None)
        return self.post_layernorm(x)

    def forward(self, frames: Tensor) -> Tensor:
        """(B, T, 3, S_in, S_in) in [0, 1] -> (B, T, h*w, C)."""
        B, T = frames.shape[:2]
        x = self.pre(self.preprocess(frames.flatten(0, 1)))  # (B*T, h*w, C)
        x = self.temporal_residual(x.view(B, T, *x.shape[1:]))  # all frames together
        x = self.post(x.flatten(0, 1))
        return x.view(B, T, *x.shape[1:])
