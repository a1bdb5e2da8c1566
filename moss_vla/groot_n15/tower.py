"""The Eagle SigLIP of GR00T N1.5 as our layer-by-layer tower, with MOSS after layer k (paper sec. 4.4.2).

:class:`EagleVisionTower` is :class:`~moss_vla.policy.vision_tower.VisionTower` around the SigLIP that
lerobot's Eagle model built (its modules are used, not copied), installed as the Eagle model's
``vision_model``. It answers the call the Eagle model makes of a ``SiglipVisionModel``
(``vision_model(pixel_values=..., output_hidden_states=..., return_dict=True)``) with frames grouped
``frames_per_sample`` at a time, so the temporal module sees each sample's window.

lerobot freezes the whole ``vision_model`` (``EagleBackbone.set_trainable_parameters`` with
``tune_visual=False``) and puts it in eval mode (``set_frozen_modules_to_eval_mode``) on every forward:
here both reach SigLIP only. The temporal module stays trainable, and follows the mode that
:meth:`set_temporal_mode` gives it (the policy's own ``train()`` / ``eval()``).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint
from transformers import SiglipVisionModel
from transformers.modeling_outputs import BaseModelOutput

from moss_vla.policy.configuration import TemporalConfig, VisionConfig
from moss_vla.policy.vision_tower import VisionTower


def vision_config_of(siglip: SiglipVisionModel, temporal_after_layer: int) -> VisionConfig:
    c = siglip.config
    if not 0 <= temporal_after_layer <= c.num_hidden_layers:
        raise ValueError(f"vision.temporal_after_layer must be in [0, {c.num_hidden_layers}] (the Eagle SigLIP's "
                         f"layers), got {temporal_after_layer}")
    return VisionConfig(image_size=c.image_size, patch_size=c.patch_size, hidden_size=c.hidden_size,
                        intermediate_size=c.intermediate_size, num_layers=c.num_hidden_layers,
                        num_heads=c.num_attention_heads, temporal_after_layer=temporal_after_layer,
                        layer_norm_eps=c.layer_norm_eps, attn_implementation=c._attn_implementation or "sdpa")


class EagleVisionTower(VisionTower):
    """SigLIP layers 1..k -> temporal module (residual) -> layers k+1..N -> post LayerNorm, per window."""

    def __init__(self, siglip: SiglipVisionModel, temporal: TemporalConfig, temporal_after_layer: int) -> None:
        super().__init__(vision_config_of(siglip, temporal_after_layer), temporal, siglip=siglip)
        self.config = siglip.config  # what the Eagle model reads of its vision_model
        self.frames_per_sample = 1
        self.gradient_checkpointing = False
        self._temporal_training = True

    # ---- lerobot's freezing reaches SigLIP only -----------------------------------------------------
    def requires_grad_(self, requires_grad: bool = True) -> EagleVisionTower:
        for name, p in self.named_parameters():
            if not name.startswith("temporal."):
                p.requires_grad_(requires_grad)
        return self

    def train(self, mode: bool = True) -> EagleVisionTower:
        super().train(mode)
        if self.temporal is not None:
            self.temporal.train(self._temporal_training)
        return self

    def set_temporal_mode(self, mode: bool) -> None:
        """The temporal module's train/eval mode, whatever is done to the tower's."""
        self._temporal_training = mode
        if self.temporal is not None:
            self.temporal.train(mode)

    # ---- layers, with gradient checkpointing --------------------------------------------------------
    def _layer(self, layer: torch.nn.Module, x: Tensor) -> Tensor:
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return checkpoint(layer, x, None, use_reentrant=False)
        return layer(x, None)

    def pre(self, pixels: Tensor) -> Tensor:
        x = self.embeddings(pixels)
        for layer in self.layers[: self.k]:
            x = self._layer(layer, x)
        return x

    def post(self, x: Tensor) -> Tensor:
        for layer in self.layers[self.k :]:
            x = self._layer(layer, x)
        return self.post_layernorm(x)

    def window(self, pixels: Tensor) -> Tensor:
        """(B, T, 3, S, S) SigLIP input (normalised) -> (B, T, h*w, C) tokens after the post LayerNorm."""
        B, T = pixels.shape[:2]
        x = self.pre(pixels.flatten(0, 1))
        x = self.temporal_residual(x.view(B, T, *x.shape[1:]))
        x = self.post(x.flatten(0, 1))
        return x.view(B, T, *x.shape[1:])

    def forward(self, pixel_values: Tensor, output_hidden_states: bool = False,
                return_dict: bool = True) -> BaseModelOutput:  # the SiglipVisionModel call of the Eagle model
        if output_hidden_states:
            raise ValueError("the MOSS tower gives the last hidden state only: the Eagle config's select_layer "
                             "must be -1 (GR00T N1.5's)")
        N, T = pixel_values.shape[0], self.frames_per_sample
        if N % T:
            raise ValueError(f"{N} frames do not form windows of frames_per_sample = {T}")
        tokens = self.window(pixel_values.view(N // T, T, *pixel_values.shape[1:]))
        return BaseModelOutput(last_hidden_state=tokens.flatten(0, 1))
