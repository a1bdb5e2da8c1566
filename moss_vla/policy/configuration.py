"""Configuration of the MOSS-VLA policy (kept apart from the model code, lerobot style).

One nested dataclass, :class:`MossVLAConfig`, holds everything a checkpoint needs to rebuild the model.
Hydra composes it from two groups (configs/ is the single source of defaults):

- ``configs/policy/{groot,contextvla,moss}.yaml``: the variant (frames, temporal module, ContextVLA
  compression, action chunking, state/action dims);
- ``configs/model/{tiny,small,base}.yaml``: the sizes (vision tower, temporal module sizes, VL backbone,
  action head).

:meth:`MossVLAConfig.from_hydra` merges the model group with the policy group on top and rejects
unknown keys (naming them), so a typo in a yaml never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

TEMPORAL_MODULES = ("moss", "selfy", "framediff", "none")
NORMALIZATION_MODES = ("min_max", "mean_std")
AUX_LABEL_TOKENS = ("current_frame", "all")


@dataclass
class VisionConfig:
    """SigLIP vision tower (transformers ``SiglipVisionModel``) run layer by layer."""

    image_size: int = 112  # the tower's input; the policy resizes input_image_size -> image_size
    patch_size: int = 16
    hidden_size: int = 128
    intermediate_size: int = 512
    num_layers: int = 4
    num_heads: int = 4
    temporal_after_layer: int = 2  # k: the temporal module sees the token grid after layer k (0 = embeddings)
    layer_norm_eps: float = 1e-6
    pretrained_path: str | None = None  # local directory of a SiglipVisionModel (save_pretrained layout)
    freeze: bool = False  # freeze the SigLIP weights (the temporal module stays trainable)
    attn_implementation: str = "sdpa"

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size


@dataclass
class TemporalConfig:
    """The temporal module inserted after vision layer k (MOSS paper table 10c comparison)."""

    module: str = "none"  # moss | selfy | framediff | none
    window: tuple[int, int, int] = (5, 5, 5)  # (L, U, V); framediff uses L only
    hidden: int = 32  # D, the STSS encoder width
    orders: tuple[int, ...] = (1, 2)  # MOSS orders (Eq. 3/5); selfy is 1st order only
    conv_blocks: int = 3  # Conv2d-BN-GELU blocks over (H, W) in the encoder g
    causal: bool = False  # temporal window -(L-1)..0: past frames never change (full streaming cache)

    def __post_init__(self) -> None:  # from JSON / hydra they arrive as lists
        self.window = tuple(int(s) for s in self.window)
        self.orders = tuple(int(o) for o in self.orders)


@dataclass
class BackboneConfig:
    """Vision-language transformer between the tower and the action head (+ ContextVLA compression)."""

    hidden_size: int = 128
    num_layers: int = 3
    num_heads: int = 4
    intermediate_size: int = 512
    pool_grid: int | None = 4  # vision tokens per frame pooled to pool_grid x pool_grid (None: keep all)
    context_compression: bool = False  # ContextVLA: past frames -> one mean token after block compress_after
    compress_after: int = 2
    tokenizer: str = "byte"  # "byte" or a local directory with a Hugging Face tokenizer
    max_text_len: int = 128
    text_pool: int = 1  # average this many consecutive text tokens into one (byte-level text is long)
    dropout: float = 0.0


@dataclass
class ActionHeadConfig:
    """GR00T N1.5 flow-matching head (lerobot ``FlowmatchingActionHead``), docs/design.md section 4.5."""

    hidden_size: int = 128  # state encoder / action decoder hidden width and DiT output width
    num_layers: int = 4  # DiT blocks; even ones cross-attend to the VL tokens, odd ones self-attend
    num_heads: int = 4
    head_dim: int = 32  # DiT inner width = num_heads * head_dim (= input_embedding_dim)
    vl_self_attention_layers: int = 1  # self-attention blocks over the VL tokens (4 in N1.5)
    vl_self_attention_heads: int = 4  # their inner width num_heads * head_dim must equal backbone width
    num_future_tokens: int = 32
    horizon: int = 16
    num_inference_steps: int = 4
    dropout: float = 0.2
    noise_beta_alpha: float = 1.5
    noise_beta_beta: float = 1.0
    noise_s: float = 0.999
    num_timestep_buckets: int = 1000
    # "scaled": the per-embodiment linear layers (state encoder, action encoder/decoder) start at
    # N(0, 1/fan_in) instead of lerobot's N(0, 0.02^2). At our widths lerobot's init drowns the state and
    # the noised actions under the N(0, 1) position embeddings and future tokens: a state -> chunk probe
    # reached an open-loop error of 0.55 after 2000 steps with it and 0.08 after 600 with "scaled".
    # "lerobot" keeps the reference init (e.g. before loading released GR00T weights).
    init: str = "scaled"

    @property
    def input_embedding_dim(self) -> int:
        return self.num_heads * self.head_dim


@dataclass
class MossVLAConfig:
    """Everything needed to rebuild a policy; saved as config.json next to the weights."""

    variant: str = "moss"  # informative name: groot | contextvla | moss (or any)
    model_size: str = "custom"  # informative name: tiny | small | base
    n_frames: int = 8  # T, frames per observation window (10 FPS)
    input_image_size: int = 224  # frames the policy receives (dataset / camera crop), square
    state_dim: int = 8  # 7 joint positions + gripper width
    action_dim: int = 8  # 7 absolute joint targets + gripper
    n_action_steps: int = 8  # select_action replans every n_action_steps steps (<= horizon)
    normalization: str = "min_max"  # state/action normalisation: min_max (to [-1, 1]) or mean_std
    inference_seed: int | None = None  # seed for the flow-matching noise in select_action (None: random)
    use_cache: bool = True  # select_action caches per-frame work (streaming.py)
    torchscript_sampler: bool = True  # eval-mode action sampling runs as a TorchScript trace (action_head.py)
    # ACT's temporal ensembling in select_action (lerobot's ACTTemporalEnsembler): a chunk is planned every
    # step (needs n_action_steps = 1) and each step's action is the weighted mean of what every chunk so far
    # predicted for that step, weights exp(-coeff * i) with i = 0 the oldest chunk (ACT: 0.01; negative
    # favours the newest). None: off, the chunk's actions are executed as planned.
    temporal_ensemble_coeff: float | None = None
    # Auxiliary stimulus-label loss (a training recipe, not in the MOSS paper; off by default): a linear
    # head on the mean and max of the VL features predicts the newest frame's ``stim_label`` (class 0:
    # no interaction in progress, 1 + i: label i), added to the flow-matching loss with this weight.
    aux_label_weight: float = 0.0
    aux_label_classes: int = 0  # 1 + the task's number of labels; moss-train sets it from the store
    # which VL tokens the label head pools: "current_frame" (the newest frame's tokens) or "all" (every
    # valid token: context, frames and text; what checkpoints saved before this option read)
    aux_label_tokens: str = "current_frame"
    vision: VisionConfig = field(default_factory=VisionConfig)
    temporal: TemporalConfig = field(default_factory=TemporalConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    action_head: ActionHeadConfig = field(default_factory=ActionHeadConfig)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the config key at fault and what it should be."""
        for prefix, part in (("", self), ("vision.", self.vision), ("temporal.", self.temporal),
                             ("backbone.", self.backbone), ("action_head.", self.action_head)):
            _check_field_types(part, prefix)
        if self.variant not in known_variants():
            raise ValueError(f"variant must name a policy config ({', '.join(known_variants())}), got "
                             f"{self.variant!r}")
        v, t, b, h = self.vision, self.temporal, self.backbone, self.action_head
        if t.module not in TEMPORAL_MODULES:
            raise ValueError(f"temporal.module must be one of {TEMPORAL_MODULES}, got {t.module!r}")
        if self.normalization not in NORMALIZATION_MODES:
            raise ValueError(f"normalization must be one of {NORMALIZATION_MODES}, got {self.normalization!r}")
        if self.n_frames < 1:
            raise ValueError(f"n_frames must be >= 1, got {self.n_frames}")
        if not 0 <= v.temporal_after_layer <= v.num_layers:
            raise ValueError(
                f"vision.temporal_after_layer must be in [0, vision.num_layers = {v.num_layers}], "
                f"got {v.temporal_after_layer}"
            )
        if v.image_size % v.patch_size:
            raise ValueError(
                f"vision.image_size ({v.image_size}) must be a multiple of vision.patch_size ({v.patch_size})"
            )
        if b.pool_grid is not None and not 1 <= b.pool_grid <= v.grid:
            raise ValueError(f"backbone.pool_grid must be in [1, {v.grid}] (the token grid) or null, got {b.pool_grid}")
        if b.context_compression and self.n_frames > 1 and not 1 <= b.compress_after < b.num_layers:
            raise ValueError(
                f"backbone.compress_after must be in [1, backbone.num_layers - 1 = {b.num_layers - 1}] "
                f"for ContextVLA compression, got {b.compress_after}"
            )
        if b.hidden_size % b.num_heads:
            raise ValueError(f"backbone.hidden_size ({b.hidden_size}) must be divisible by num_heads ({b.num_heads})")
        if b.hidden_size % h.vl_self_attention_heads:
            raise ValueError(
                f"backbone.hidden_size ({b.hidden_size}) must be divisible by "
                f"action_head.vl_self_attention_heads ({h.vl_self_attention_heads})"
            )
        if self.aux_label_weight < 0 or self.aux_label_classes < 0:
            raise ValueError(f"aux_label_weight and aux_label_classes must be >= 0, got {self.aux_label_weight} "
                             f"and {self.aux_label_classes}")
        if self.aux_label_tokens not in AUX_LABEL_TOKENS:
            raise ValueError(f"aux_label_tokens must be one of {AUX_LABEL_TOKENS}, got {self.aux_label_tokens!r}")
        if self.aux_label_weight > 0 and self.aux_label_classes < 2:
            raise ValueError(f"aux_label_weight = {self.aux_label_weight} needs aux_label_classes >= 2 (1 + the "
                             f"task's labels; moss-train sets it from the store), got {self.aux_label_classes}")
        if not 1 <= self.n_action_steps <= h.horizon:
            raise ValueError(f"n_action_steps must be in [1, action_head.horizon = {h.horizon}], got {self.n_action_steps}")
        if self.temporal_ensemble_coeff is not None and self.n_action_steps != 1:
            raise ValueError(f"temporal_ensemble_coeff = {self.temporal_ensemble_coeff} needs n_action_steps = 1 (a chunk "
                             f"planned and averaged in every step), got n_action_steps = {self.n_action_steps}")

    # ---- (de)serialisation -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["temporal"]["window"] = list(self.temporal.window)
        d["temporal"]["orders"] = list(self.temporal.orders)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "config") -> MossVLAConfig:
        """Build from a (possibly partial) nested dict; unknown keys raise an error naming them."""
        d = dict(d)
        subs = {"vision": VisionConfig, "temporal": TemporalConfig, "backbone": BackboneConfig,
                "action_head": ActionHeadConfig}
        kwargs: dict[str, Any] = {}
        top_fields = {f.name for f in dataclasses.fields(cls)}
        for key, value in d.items():
            if key not in top_fields:
                raise ValueError(f"{source}: unknown policy config key {key!r}; known keys: {sorted(top_fields)}")
            if key in subs:
                sub_fields = {f.name for f in dataclasses.fields(subs[key])}
                value = dict(value or {})
                bad = sorted(set(value) - sub_fields)
                if bad:
                    raise ValueError(f"{source}: unknown key(s) {bad} in {key!r}; known keys: {sorted(sub_fields)}")
                kwargs[key] = subs[key](**value)
            else:
                kwargs[key] = value
        try:
            return cls(**kwargs)
        except (ValueError, TypeError) as exc:  # name the file (a checkpoint's config.json) or the groups at fault
            raise ValueError(f"{source}: {exc}") from None

    @classmethod
    def from_hydra(cls, cfg_policy: Any, cfg_model: Any) -> MossVLAConfig:
        """Merge a ``configs/model/*.yaml`` group with a ``configs/policy/*.yaml`` group on top."""
        model = _to_plain(cfg_model)
        policy = _to_plain(cfg_policy)
        model_name = model.pop("name", "custom")
        policy_name = policy.pop("name", "custom")
        merged = _deep_merge(model, policy)
        merged.setdefault("variant", policy_name)
        merged.setdefault("model_size", model_name)
        return cls.from_dict(merged, source=f"policy={policy_name} model={model_name}")


def known_variants() -> tuple[str, ...]:
    """The names a config's `variant` may have: the policy configs shipped in configs/policy/, and custom."""
    from moss_vla.paths import CONFIG_DIR

    return (*sorted(f.stem for f in (CONFIG_DIR / "policy").glob("*.yaml")), "custom")


_SCALARS = {"int": (int,), "float": (int, float), "bool": (bool,), "str": (str,)}


def _check_field_types(obj: Any, prefix: str) -> None:
    """Each scalar field of a config dataclass holds a value of its annotated type (`n_frames: "eight"` in a
    config.json is refused here, naming the key, instead of failing somewhere inside the model)."""
    for f in dataclasses.fields(obj):
        options = [o.strip() for o in str(f.type).split("|")]
        value = getattr(obj, f.name)
        if value is None and "None" in options:
            continue
        kinds = [k for o in options for k in _SCALARS.get(o, ())]
        if not kinds or not all(o in _SCALARS or o == "None" for o in options):
            continue  # a nested config or a tuple: checked elsewhere
        if not isinstance(value, tuple(kinds)) or isinstance(value, bool) and bool not in kinds:
            raise ValueError(f"{prefix}{f.name} must be {' or '.join(options)}, got {value!r}")


def _to_plain(cfg: Any) -> dict[str, Any]:
    if cfg is None:
        return {}
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(cfg, DictConfig):
            return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    except ImportError:  # omegaconf comes with hydra; plain dicts work without it
        pass
    return {k: (dict(v) if isinstance(v, dict) else v) for k, v in dict(cfg).items()}


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in top.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out
