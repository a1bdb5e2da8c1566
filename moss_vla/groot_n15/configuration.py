"""Configuration of the GR00T N1.5 bridge (``model=groot_n15``): the variant keys of
``configs/policy/*.yaml`` (frames, temporal module, ContextVLA compression, chunking) and the keys of
``configs/model/groot_n15.yaml`` (where the real checkpoint is, what to fine-tune)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from moss_vla.policy.configuration import (
    NORMALIZATION_MODES,
    TEMPORAL_MODULES,
    TemporalConfig,
    _deep_merge,
    _to_plain,
)

KIND = "groot_n15"


@dataclass
class GrootVisionConfig:
    temporal_after_layer: int = 6  # MOSS after this Eagle SigLIP layer (paper: 6)


@dataclass
class GrootBackboneConfig:
    context_compression: bool = False  # ContextVLA: past frames' image tokens -> one token after block c
    compress_after: int = 2


@dataclass
class GrootHeadConfig:
    horizon: int = 16  # GR00T N1.5's action chunk (fixed by the checkpoint)


@dataclass
class GrootN15Config:
    kind: str = KIND
    variant: str = "moss"
    model_size: str = KIND
    pretrained_path: str | None = None  # local copy of nvidia/GR00T-N1.5-3B
    tokenizer_path: str | None = None  # local copy of lerobot/eagle2hg-processor-groot-n1p5
    # GR00T's fine-tuning knobs (lerobot's set_trainable_parameters); the temporal module always trains
    tune_llm: bool = False
    tune_visual: bool = False
    tune_projector: bool = True
    tune_diffusion_model: bool = True
    gradient_checkpointing: bool = True  # SigLIP and LLM layers recompute activations in the backward
    embodiment_id: int = 31  # lerobot's "new_embodiment"
    save_frozen_weights: bool = False  # checkpoints hold the trained tensors only; the rest is pretrained_path's
    n_frames: int = 8
    input_image_size: int = 224
    state_dim: int = 8
    action_dim: int = 8
    n_action_steps: int = 8
    normalization: str = "min_max"
    inference_seed: int | None = None
    use_cache: bool = True
    temporal_ensemble_coeff: float | None = None
    # not supported by the bridge (lerobot's sampler runs as it is, no label head): any other value is rejected
    torchscript_sampler: bool = False  # the policy presets' value is dropped by from_hydra
    aux_label_weight: float = 0.0
    aux_label_classes: int = 0
    aux_label_tokens: str = "current_frame"
    vision: GrootVisionConfig = field(default_factory=GrootVisionConfig)
    temporal: TemporalConfig = field(default_factory=TemporalConfig)
    backbone: GrootBackboneConfig = field(default_factory=GrootBackboneConfig)
    action_head: GrootHeadConfig = field(default_factory=GrootHeadConfig)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the first key at fault."""
        rules = [
            (self.kind == KIND, f"kind must be {KIND!r}, got {self.kind!r}"),
            (self.temporal.module in TEMPORAL_MODULES,
             f"temporal.module must be one of {TEMPORAL_MODULES}, got {self.temporal.module!r}"),
            (self.normalization in NORMALIZATION_MODES,
             f"normalization must be one of {NORMALIZATION_MODES}, got {self.normalization!r}"),
            (self.n_frames >= 1, f"n_frames must be >= 1, got {self.n_frames}"),
            (not self.aux_label_weight,
             "aux_label_weight > 0 is not supported with model=groot_n15 (the label head is ours)"),
            (not self.aux_label_classes,
             f"aux_label_classes must be 0 with model=groot_n15 (no label head), got {self.aux_label_classes}"),
            (self.aux_label_tokens == "current_frame",
             (f"aux_label_tokens must stay 'current_frame' with model=groot_n15 (no label head), "
              f"got {self.aux_label_tokens!r}")),
            (not self.torchscript_sampler,
             ("torchscript_sampler: true is not supported with model=groot_n15 (its action sampling is "
              "lerobot's, run as it is); leave it false")),
            (self.state_dim <= 64 and self.action_dim <= 32, (f"GR00T N1.5 takes states up to 64 and actions up "
                                                              f"to 32 dimensions, got {self.state_dim} and "
                                                              f"{self.action_dim}")),
            (1 <= self.n_action_steps <= self.action_head.horizon,
             f"n_action_steps must be in [1, {self.action_head.horizon}], got {self.n_action_steps}"),
            (self.temporal_ensemble_coeff is None or self.n_action_steps == 1,
             "temporal_ensemble_coeff needs n_action_steps = 1"),
        ]
        for ok, message in rules:
            if not ok:
                raise ValueError(message)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data (tuples as lists), as config.json holds it."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "config") -> GrootN15Config:
        """Build from a nested dict (a config.json, merged hydra groups); unknown keys are named."""
        def known(kind: type, values: dict[str, Any], where: str) -> dict[str, Any]:
            names = {f.name for f in dataclasses.fields(kind)}
            if unknown := sorted(set(values) - names):
                raise ValueError(f"{source}: unknown key(s) {unknown}{where} for model=groot_n15; known keys: "
                                 f"{sorted(names)}")
            return values

        parts = {"vision": GrootVisionConfig, "temporal": TemporalConfig, "backbone": GrootBackboneConfig,
                 "action_head": GrootHeadConfig}
        return cls(**{k: parts[k](**known(parts[k], v or {}, f" in {k!r}")) if k in parts else v
                      for k, v in known(cls, d, "").items()})

    @classmethod
    def from_hydra(cls, cfg_policy: Any, cfg_model: Any) -> GrootN15Config:
        """``configs/model/groot_n15.yaml`` with a ``configs/policy/*.yaml`` variant on top."""
        model, policy = _to_plain(cfg_model), _to_plain(cfg_policy)
        model.pop("name", None)
        policy_name = policy.pop("name", "custom")
        # every policy preset sets it for our own action head's TorchScript trace; GR00T samples with lerobot's
        policy.pop("torchscript_sampler", None)
        merged = _deep_merge(model, policy)
        merged.setdefault("variant", policy_name)
        return cls.from_dict(merged, source=f"policy={policy_name} model=groot_n15")


def is_groot_n15(cfg_model_or_saved: Any) -> bool:
    """Whether a ``model`` config group (or a saved config.json's dict) is the GR00T N1.5 bridge."""
    return _to_plain(cfg_model_or_saved).get("kind") == KIND
