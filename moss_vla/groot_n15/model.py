"""lerobot's GR00T N1.5 with MOSS in its SigLIP and ContextVLA compression in its LLM (MOSS paper table 5).

    frames (B, T, 3, S, S) --Eagle SigLIP with MOSS after layer k (tower.py)--> pixel shuffle + mlp1
      --> the image tokens of the Eagle prompt --> Qwen3 blocks 1..c --ContextVLA: the image tokens of the
      T-1 past frames mean-pooled into one token--> blocks c+1..select_layer --> final RMSNorm, eagle_linear
      --> lerobot's FlowmatchingActionHead (state, 16-step chunk)

Everything runs lerobot's own modules (``GR00TN15.backbone.eagle_model``'s SigLIP layers, ``pixel_shuffle``,
``mlp1``, Qwen3 decoder layers, ``rotary_emb``, ``norm``; ``action_head``); this file only orders the calls,
as ``Eagle25VLForConditionalGeneration.forward`` and ``Qwen3Model.forward`` do, with the hooks between.
With one frame (or no compression) and the temporal module at zero init the features equal
``EagleBackbone.forward``'s, so the actions equal ``GR00TN15.get_action``'s (tested).

ContextVLA choices where the GR00T prompt leaves room: the context token takes the place (and RoPE position)
of the first past-frame image token; the text around the images (``<img>``, ``</img>``) stays in the
sequence; the kept tokens keep their positions.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint
from transformers.feature_extraction_utils import BatchFeature
from transformers.masking_utils import create_causal_mask

from moss_vla.groot_n15.tower import EagleVisionTower
from moss_vla.policy.configuration import TemporalConfig


class MossGrootN15(nn.Module):
    """Wraps (and owns) a lerobot ``GR00TN15``; installs :class:`EagleVisionTower` as its SigLIP."""

    def __init__(self, groot: nn.Module, temporal: TemporalConfig, temporal_after_layer: int, n_frames: int,
                 context_compression: bool, compress_after: int) -> None:
        super().__init__()
        self.groot = groot
        eagle = self.eagle
        if getattr(eagle, "select_layer", -1) != -1:
            raise ValueError(f"the Eagle config's select_layer is {eagle.select_layer}: the bridge takes SigLIP's "
                             "last hidden state (select_layer -1, as GR00T N1.5's)")
        siglip = eagle.vision_model
        if isinstance(siglip, EagleVisionTower):
            raise TypeError("this GR00TN15 already carries a MOSS tower")
        eagle.vision_model = EagleVisionTower(siglip, temporal, temporal_after_layer)
        self.n_frames = n_frames
        self.compress = context_compression and n_frames > 1
        layers = self.llm.layers
        if len(layers) != groot.backbone.select_layer:
            raise ValueError(f"the LLM has {len(layers)} layers, select_layer is {groot.backbone.select_layer}")
        if self.compress and not 1 <= compress_after < len(layers):
            raise ValueError(f"backbone.compress_after must be in [1, {len(layers) - 1}] (the LLM's kept layers), "
                             f"got {compress_after}")
        self.compress_after = compress_after
        self.gradient_checkpointing = False

    # ---- parts ---------------------------------------------------------------------------------------
    @property
    def eagle(self) -> nn.Module:
        return self.groot.backbone.eagle_model

    @property
    def tower(self) -> EagleVisionTower:
        return self.eagle.vision_model

    @property
    def llm(self) -> nn.Module:
        return self.eagle.language_model.model

    @property
    def image_token_id(self) -> int:
        return int(self.eagle.image_token_index)

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        self.gradient_checkpointing = enabled
        self.tower.gradient_checkpointing = enabled

    def train(self, mode: bool = True) -> MossGrootN15:
        super().train(mode)
        self.tower.set_temporal_mode(mode)
        self.groot.backbone.set_frozen_modules_to_eval_mode()  # lerobot's: frozen LLM / SigLIP in eval mode
        self.groot.action_head.set_frozen_modules_to_eval_mode()
        return self

    # ---- vision-language features --------------------------------------------------------------------
    def project(self, tokens: Tensor) -> Tensor:
        """SigLIP tokens (B, T, h*w, C) -> LLM image embeddings (B, T, n, D): the tail of lerobot's
        ``extract_feature`` (pixel shuffle, ``mlp1``)."""
        eagle = self.eagle
        B, T, N, C = tokens.shape
        x = tokens.flatten(0, 1)
        if eagle.use_pixel_shuffle:
            h = int(N**0.5)
            x = eagle.pixel_shuffle(x.reshape(B * T, h, h, C), scale_factor=eagle.downsample_ratio)
            x = x.reshape(B * T, -1, x.shape[-1])
        x = eagle.mlp1(x)
        return x.view(B, T, *x.shape[1:])

    def features(self, tokens: Tensor, input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor]:
        """SigLIP tokens of a window (B, T, h*w, C) (:meth:`EagleVisionTower.window`) and the Eagle prompt
        (B, L) with T * n image tokens -> VL features (B, N, D) and their mask (B, N), as ``backbone_features``
        / ``backbone_attention_mask``."""
        B, T = tokens.shape[:2]
        image = self.project(tokens)  # (B, T, n, D)
        n = image.shape[2]
        is_image = input_ids == self.image_token_id
        if int(is_image.sum()) != B * T * n:
            raise ValueError(f"the prompt has {int(is_image.sum())} image tokens for {B} x {T} frames of {n}")
        embeds = self.eagle.language_model.get_input_embeddings()(input_ids)
        x = embeds.masked_scatter(is_image[..., None], image.to(embeds.dtype).reshape(-1, embeds.shape[-1]))
        L = input_ids.shape[1]
        positions = torch.arange(L, device=x.device)[None].expand(B, L)
        mask = attention_mask
        llm = self.llm
        for i, layer in enumerate(llm.layers):
            if i == 0 or (self.compress and i == self.compress_after):
                if i:
                    x, mask, positions = self.compress_past_frames(x, mask, positions, is_image, T * n, n)
                causal = create_causal_mask(config=llm.config, input_embeds=x, attention_mask=mask,
                                            cache_position=torch.arange(x.shape[1], device=x.device),
                                            past_key_values=None)
                rope = llm.rotary_emb(x, positions)
            if self.gradient_checkpointing and torch.is_grad_enabled():
                x = checkpoint(layer, x, causal, positions, None, False, None, rope, use_reentrant=False)
            else:
                x = layer(x, attention_mask=causal, position_ids=positions, position_embeddings=rope)
        x = self.groot.backbone.eagle_linear(llm.norm(x))
        return x, mask

    @staticmethod
    def compress_past_frames(x: Tensor, mask: Tensor, positions: Tensor, is_image: Tensor, n_image: int,
                             n_current: int) -> tuple[Tensor, Tensor, Tensor]:
        """ContextVLA: the image tokens of the past frames (all but the last ``n_current`` of each row's
        ``n_image``) become one token, their mean, at the place of the first of them."""
        B, L, D = x.shape
        rank = is_image.long().cumsum(1)  # 1-based index of each image token in its row
        past = is_image & (rank <= n_image - n_current)
        first = past & (rank == 1)
        context = (x * past[..., None]).sum(1) / (n_image - n_current)  # (B, D)
        keep = ~past | first
        L2 = L - (n_image - n_current) + 1
        x = torch.where(first[..., None], context[:, None].to(x.dtype), x)[keep].view(B, L2, D)
        return x, mask[keep].view(B, L2), positions[keep].view(B, L2)

    # ---- the action head -----------------------------------------------------------------------------
    @staticmethod
    def backbone_output(features: Tensor, mask: Tensor) -> BatchFeature:
        return BatchFeature(data={"backbone_features": features, "backbone_attention_mask": mask})

    def loss(self, features: Tensor, mask: Tensor, action_input: dict[str, Tensor]) -> Tensor:
        """lerobot's flow-matching loss (``FlowmatchingActionHead.forward``); ``action_input``: state
        (B, 1, 64), action (B, 16, 32), action_mask (B, 16, 32), embodiment_id (B,)."""
        head = self.groot.action_head
        dtype = head.dtype
        out = head(self.backbone_output(features.to(dtype), mask),
                   BatchFeature(data={k: v.to(dtype) if v.is_floating_point() else v for k, v in action_input.items()}))
        return out["loss"]

    @torch.no_grad()
    def sample(self, features: Tensor, mask: Tensor, action_input: dict[str, Tensor]) -> Tensor:
        """lerobot's 4-step Euler sampling (``FlowmatchingActionHead.get_action``): (B, 16, 32)."""
        dtype = self.groot.action_head.dtype
        out = self.groot.action_head.get_action(self.backbone_output(features.to(dtype), mask),
                                                BatchFeature(data=action_input))
        return out["action_pred"]
