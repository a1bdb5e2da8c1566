"""``model=groot_n15``: the policy interface of :class:`~moss_vla.policy.MossVLAPolicy` (``forward``,
``predict_action_chunk``, ``select_action``, ``reset``, ``save_pretrained`` / ``from_pretrained``) around
lerobot's GR00T N1.5 with MOSS and ContextVLA (model.py).

Our episode stores feed it unchanged: the 8-D state and action are normalised to [-1, 1] (min-max, as
lerobot's GR00T preprocessor does) and zero-padded to GR00T's 64 / 32 dimensions with a mask; the
instruction goes through the Eagle processor (prompt.py); frames in [0, 1] go through SigLIP's
normalisation. The 10 Hz loop (frame window, replanning, streaming cache of SigLIP layers 1..k per frame)
is MossVLAPolicy's own.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from moss_vla.groot_n15.configuration import GrootN15Config
from moss_vla.groot_n15.loading import checkpoint_configs, load_groot, set_trainable
from moss_vla.groot_n15.model import MossGrootN15
from moss_vla.groot_n15.prompt import EaglePrompt
from moss_vla.groot_n15.tower import EagleVisionTower
from moss_vla.policy.modeling import CONFIG_NAME, STATS_NAME, WEIGHTS_NAME, MossVLAPolicy
from moss_vla.policy.normalization import Normalizer

__all__ = ["GrootN15Config", "GrootN15Policy"]

MAX_STATE_DIM, MAX_ACTION_DIM = 64, 32
ARCH_NAME = "groot_n15_architecture.json"  # the base checkpoint's configs, to detect a mismatched base


class _WindowFeatures:
    """What the streaming cache (moss_vla/policy/streaming.py) calls the "backbone": tower tokens of a
    window + the prompt -> VL features. No compression state is streamed (SigLIP layers 1..k per frame
    are what is cached), so the cache is exact."""

    compress = False

    def __init__(self, model: MossGrootN15) -> None:
        self.model = model

    def embed_frames(self, tokens: Tensor) -> Tensor:
        return tokens

    def __call__(self, tokens: Tensor, input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor]:
        return self.model.features(tokens, input_ids, attention_mask)


class GrootN15Policy(MossVLAPolicy):
    """GR00T N1.5-3B (lerobot 0.4.4) + MOSS + ContextVLA behind MossVLAPolicy's interface.

    ``groot``: a lerobot ``GR00TN15`` to wrap (default: loaded from ``config.pretrained_path``);
    ``prompt``: what turns instructions into Eagle prompt ids (default: the processor in ``tokenizer_path``)."""

    supports_rtc = False  # lerobot's GR00T sampler takes no guidance (planner.rtc, moss_vla/rtc.py)

    def __init__(self, config: GrootN15Config, stats: dict[str, Any] | None = None,
                 groot: nn.Module | None = None, prompt: Any = None) -> None:
        nn.Module.__init__(self)
        config.validate()
        self.config = config
        if groot is None:
            groot = load_groot(config.pretrained_path, config.tokenizer_path)
        if groot.action_head.config.max_state_dim != MAX_STATE_DIM or groot.action_dim != MAX_ACTION_DIM:
            raise ValueError(f"expected GR00T N1.5's max state / action dims {MAX_STATE_DIM} / {MAX_ACTION_DIM}, the "
                             f"checkpoint has {groot.action_head.config.max_state_dim} / {groot.action_dim}")
        if groot.action_horizon != config.action_head.horizon:
            raise ValueError(f"action_head.horizon is {config.action_head.horizon}, the checkpoint's chunk is "
                             f"{groot.action_horizon}")
        self.model = MossGrootN15(groot, config.temporal, config.vision.temporal_after_layer, config.n_frames,
                                  config.backbone.context_compression, config.backbone.compress_after)
        set_trainable(groot, config.tune_llm, config.tune_visual, config.tune_projector, config.tune_diffusion_model)
        self.model.set_gradient_checkpointing(config.gradient_checkpointing)
        self.prompt = prompt if prompt is not None else EaglePrompt(config.tokenizer_path)
        self.normalizer = Normalizer(config.state_dim, config.action_dim, config.normalization, stats)
        self.label_head = None
        self.backbone = _WindowFeatures(self.model)
        self._init_loop_state()

    @property
    def vision(self) -> EagleVisionTower:
        return self.model.tower

    # ---- inputs --------------------------------------------------------------------------------------
    def _text(self, instruction: Any, batch_size: int) -> tuple[Tensor, Tensor]:
        """The Eagle prompt (B, L) ids and attention mask for a window of n_frames frames."""
        texts = [instruction] * batch_size if isinstance(instruction, str) else list(instruction)
        if len(texts) != batch_size:
            raise ValueError(f"got {len(texts)} instructions for a batch of {batch_size}")
        ids, mask = self.prompt(texts, self.config.n_frames)
        return ids.to(self.device), mask.to(self.device)

    def encode(self, images: Tensor, instruction: Any) -> tuple[Tensor, Tensor]:
        images = self._check_window(images).to(self.device)
        B, T = images.shape[:2]
        pixels = self.vision.preprocess(images.flatten(0, 1))
        tokens = self.vision.window(pixels.view(B, T, *pixels.shape[1:]))
        return self.model.features(tokens, *self._text(instruction, B))

    def _action_input(self, state: Tensor) -> dict[str, Tensor]:
        B = state.shape[0]
        padded = torch.zeros(B, 1, MAX_STATE_DIM, device=self.device)
        padded[:, 0, : self.config.state_dim] = self.normalizer.normalize("state", state)
        return {"state": padded, "embodiment_id": torch.full((B,), self.config.embodiment_id, device=self.device)}

    # ---- training and sampling -------------------------------------------------------------------------
    def loss_from_features(self, vl: Tensor, vl_mask: Tensor, batch: dict[str, Any]) -> tuple[Tensor, dict[str, float]]:
        cfg = self.config
        action = batch["action"].to(self.device).float()
        H, A = cfg.action_head.horizon, cfg.action_dim
        if action.dim() != 3 or tuple(action.shape[1:]) != (H, A):
            raise ValueError(f"action must be (B, {H}, {A}), got shape {tuple(action.shape)}")
        B = action.shape[0]
        pad = batch.get("action_is_pad")
        valid = torch.ones(B, H, dtype=torch.bool, device=self.device) if pad is None else ~pad.to(self.device).bool()
        action_input = self._action_input(self._check_state(batch["state"].to(self.device)))
        padded = torch.zeros(B, H, MAX_ACTION_DIM, device=self.device)
        padded[..., :A] = self.normalizer.normalize("action", action)
        mask = torch.zeros(B, H, MAX_ACTION_DIM, dtype=torch.bool, device=self.device)
        mask[..., :A] = valid[..., None]
        loss = self.model.loss(vl, vl_mask, {**action_input, "action": padded, "action_mask": mask})
        return loss, {"loss": float(loss.detach())}

    def sample_from_features(self, vl: Tensor, vl_mask: Tensor, state: Tensor, seed: int | None,
                             rtc: Any = None) -> Tensor:
        if rtc is not None:
            raise ValueError("planner.rtc.enabled: model=groot_n15 samples with lerobot's GR00T head, which takes no "
                             "real-time chunking guidance; set planner.rtc.enabled=false")
        action_input = self._action_input(state.to(self.device).float())
        if seed is None:
            chunk = self.model.sample(vl, vl_mask, action_input)
        else:  # lerobot's sampler draws its noise from the global RNG: seed it here only
            devices = [self.device.index or 0] if self.device.type == "cuda" else []
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(seed)
                chunk = self.model.sample(vl, vl_mask, action_input)
        return self.normalizer.unnormalize("action", chunk[..., : self.config.action_dim].float())

    # ---- checkpoints -------------------------------------------------------------------------------------
    def _saved_keys(self) -> set[str]:
        """What a checkpoint holds: every tensor, or (the default) the trained ones, the temporal module's
        and the normalisation statistics; the rest is the base checkpoint's (``pretrained_path``)."""
        state = self._weights()
        if self.config.save_frozen_weights:
            return set(state)
        trained = {n for n, p in self.named_parameters() if p.requires_grad}
        return {k for k in state if k in trained or k.startswith("normalizer.") or ".vision_model.temporal." in k}

    def save_pretrained(self, directory: str | Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        keys = self._saved_keys()
        save_file({k: v for k, v in self._weights().items() if k in keys}, str(directory / WEIGHTS_NAME))
        (directory / CONFIG_NAME).write_text(json.dumps(self.config.to_dict(), indent=2))
        (directory / STATS_NAME).write_text(json.dumps(self.normalizer.stats_dict(), indent=2))
        arch = checkpoint_configs(self.config.pretrained_path, self.config.tokenizer_path)
        (directory / ARCH_NAME).write_text(json.dumps(arch, indent=1))
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path, expected_config: Any = None) -> GrootN15Policy:
        """A checkpoint written by :meth:`save_pretrained`, on top of the base checkpoint its config names
        (which must be the one it was trained from: its architecture is compared)."""
        directory = Path(directory)
        for name in (CONFIG_NAME, WEIGHTS_NAME, ARCH_NAME):
            if not (directory / name).is_file():
                raise FileNotFoundError(f"{directory / name} not found: not a model=groot_n15 checkpoint")
        saved_config = json.loads((directory / CONFIG_NAME).read_text())
        saved_config.pop("torchscript_sampler", None)  # written (true, never used) by checkpoints of before
        config = GrootN15Config.from_dict(saved_config, source=str(directory / CONFIG_NAME))
        saved = json.loads((directory / ARCH_NAME).read_text())
        now = checkpoint_configs(config.pretrained_path, config.tokenizer_path)
        diffs = [f"{part}.{k}" for part in saved for k in sorted(set(saved[part]) | set(now[part]))
                 if saved[part].get(k) != now[part].get(k)]
        if diffs:
            raise ValueError(f"checkpoint {directory} was trained on another base model than {config.pretrained_path} "
                             f"/ {config.tokenizer_path}: {', '.join(diffs)} differ")
        policy = cls(config)
        policy.load_weights(directory / WEIGHTS_NAME)
        return policy

    def load_weights(self, path: str | Path) -> None:
        state = load_file(str(path))
        own = self._weights()
        expected = self._saved_keys()
        missing = sorted(expected - set(state))
        unexpected = sorted(set(state) - set(own))
        shapes = [f"{k}: expected {tuple(own[k].shape)}, checkpoint has {tuple(state[k].shape)}"
                  for k in state if k in own and own[k].shape != state[k].shape]
        if missing or unexpected or shapes:
            raise ValueError(f"checkpoint {path} does not fit this policy's config (missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]}, shape mismatches {shapes[:5]})")
        self.load_state_dict(state, strict=False)
