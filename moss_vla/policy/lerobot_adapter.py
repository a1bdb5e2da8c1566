"""lerobot policies (any `PreTrainedPolicy`: ACT, Diffusion Policy, ...) behind our policy interface.

`LeRobotPolicy` wraps one of lerobot 0.4.4's policy classes so that `moss-train` trains it on our windows
(moss_vla/episodes/window_dataset.py) and `moss-sim eval`, `moss-trial`, `moss-sim bench` and the chunk
planners (robot/chunk_planner.py) run it exactly as they run `MossVLAPolicy`: the same `forward(batch) ->
(loss, stats)`, `reset` / `observe` / `plan` / `select_action`, `save_pretrained` / `from_pretrained`
(`MossVLAPolicy.from_pretrained` hands a lerobot checkpoint to this class, so `checkpoint=` and `zoo:` work
unchanged). docs/training.md section 7.

What the adapter does around lerobot's class, and nothing more:
- normalisation: our `Normalizer` with the store's statistics (state and action; `normalization` per policy
  config: lerobot's defaults, mean_std for ACT, min_max for Diffusion Policy); frames are resized from
  `input_image_size` to `image_size` and standardised with the ImageNet mean / std (lerobot-train's
  `use_imagenet_stats`);
- observation history: the policy's own `n_obs_steps` (= `n_frames`: the last frames and states, the first
  repeated at an episode's start, as our windows and lerobot's queues do);
- the chunk starts at the newest observation (our windows' actions t .. t+H-1). lerobot's Diffusion Policy
  trains on actions from t - n_obs_steps + 1 and `generate_actions` drops the past ones; trained on our
  windows it predicts the `horizon` actions from t, so `plan` samples the whole horizon through lerobot's
  own `_prepare_global_conditioning` and `conditional_sample`.
The instruction is not used (ACT and Diffusion Policy take no language).

Checkpoints: lerobot's own files (`config.json` with the policy `type`, `model.safetensors`: loadable by
lerobot's `from_pretrained` too) plus `stats.json` and `moss_adapter.json` (the settings above).
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from moss_vla.policy.normalization import Normalizer

ADAPTER_NAME, STATS_NAME, CONFIG_NAME, WEIGHTS_NAME = "moss_adapter.json", "stats.json", "config.json", "model.safetensors"
IMAGE_KEY = "observation.images.display"  # as `moss-data export-lerobot` names our camera
STATE_KEY, ACTION_KEY = "observation.state", "action"
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class LeRobotAdapterConfig:
    """The adapter's settings (`moss_adapter.json`); the lerobot policy's own config is its config.json."""

    type: str  # lerobot policy type: act, diffusion, ...
    n_frames: int  # the policy's n_obs_steps
    horizon: int  # actions per chunk (ACT chunk_size, Diffusion horizon)
    n_action_steps: int  # actions of a chunk executed before the next plan
    image_size: int  # frames are resized to this before the policy (the bench preset's vision.image_size)
    input_image_size: int = 224  # frames as the camera / store gives them
    state_dim: int = 8
    action_dim: int = 8
    normalization: str = "mean_std"  # mean_std | min_max (moss_vla/policy/normalization.py)
    inference_seed: int | None = None  # fixed sampling noise for every chunk (Diffusion); null: drawn anew
    use_cache: bool = False  # no streaming cache (kept for moss-sim eval's settings; must stay false)
    temporal_ensemble_coeff: float | None = None  # ACT's temporal ensembling in select_action (n_action_steps 1)

    def __post_init__(self) -> None:
        if not 1 <= self.n_action_steps <= self.horizon:
            raise ValueError(f"n_action_steps={self.n_action_steps} must be in [1, horizon = {self.horizon}]")
        if self.temporal_ensemble_coeff is not None and self.n_action_steps != 1:
            raise ValueError("temporal_ensemble_coeff needs n_action_steps=1 (a chunk is planned every step)")
        if self.use_cache:
            raise ValueError(f"use_cache=true: the lerobot policy {self.type!r} has no streaming cache")
        if self.normalization not in ("mean_std", "min_max"):
            raise ValueError(f"normalization={self.normalization!r}: expected mean_std or min_max")

    @property
    def action_head(self) -> SimpleNamespace:  # what sim_eval's messages read off MossVLAConfig
        return SimpleNamespace(horizon=self.horizon)

    @property
    def variant(self) -> str:
        return f"lerobot:{self.type}"


def lerobot_config(kind: str, settings: dict[str, Any], adapter: LeRobotAdapterConfig) -> Any:
    """lerobot's config of policy `kind` with our features (one camera, 8-D state and action), the adapter's
    history, horizon and execution horizon, and `settings` (the policy yaml's `lerobot:` block)."""
    from lerobot.configs.policies import PreTrainedConfig
    from lerobot.configs.types import FeatureType, PolicyFeature

    try:
        cls = PreTrainedConfig.get_choice_class(kind)
    except Exception as e:  # draccus' own error does not list the choices
        raise ValueError(f"policy.lerobot.type={kind!r} is not a lerobot policy type "
                         f"({', '.join(sorted(PreTrainedConfig.get_known_choices()))})") from e
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(settings) - names)
    if unknown:
        raise ValueError(f"policy.lerobot: {unknown} are not fields of lerobot's {cls.__name__}")
    s = adapter.image_size
    own = {"n_obs_steps": adapter.n_frames, "n_action_steps": adapter.n_action_steps, "device": "cpu",
           "input_features": {STATE_KEY: PolicyFeature(FeatureType.STATE, (adapter.state_dim,)),
                              IMAGE_KEY: PolicyFeature(FeatureType.VISUAL, (3, s, s))},
           "output_features": {ACTION_KEY: PolicyFeature(FeatureType.ACTION, (adapter.action_dim,))}}
    own.update({k: adapter.horizon for k in ("chunk_size", "horizon") if k in names})
    return cls(**{**{k: v for k, v in own.items() if k in names}, **settings})


class LeRobotPolicy(nn.Module):
    """A lerobot `PreTrainedPolicy` (``policy``) with our normalisation, history and loop interface."""

    supports_rtc = False  # ACT regresses its chunk, Diffusion Policy denoises with DDPM/DDIM: no RTC guidance

    def __init__(self, config: LeRobotAdapterConfig, policy: nn.Module, stats: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.config = config
        self.policy = policy
        self.normalizer = Normalizer(config.state_dim, config.action_dim, config.normalization, stats)
        self.register_buffer("image_mean", torch.tensor(IMAGENET_MEAN).view(3, 1, 1), persistent=False)
        self.register_buffer("image_std", torch.tensor(IMAGENET_STD).view(3, 1, 1), persistent=False)
        self.reset()

    @classmethod
    def from_hydra(cls, cfg_policy: Any, cfg_model: Any, stats: dict[str, Any] | None = None) -> LeRobotPolicy:
        """From the `policy` group (configs/policy/act.yaml, diffusion.yaml: a `lerobot:` block) and the model
        preset (its frame sizes and action horizon)."""
        from lerobot.policies.factory import get_policy_class
        from omegaconf import OmegaConf

        p = OmegaConf.to_container(cfg_policy, resolve=True)
        settings = dict(p["lerobot"])
        kind = str(settings.pop("type"))
        image_size = p.get("image_size") or cfg_model.vision.image_size
        adapter = LeRobotAdapterConfig(
            type=kind, n_frames=int(p["n_frames"]), horizon=int(cfg_model.action_head.horizon),
            n_action_steps=int(p["n_action_steps"]), image_size=int(image_size),
            input_image_size=int(cfg_model.input_image_size), state_dim=int(p["state_dim"]),
            action_dim=int(p["action_dim"]), normalization=str(p["normalization"]),
            inference_seed=p.get("inference_seed"), temporal_ensemble_coeff=p.get("temporal_ensemble_coeff"))
        config = lerobot_config(kind, settings, adapter)  # names a wrong type or field first
        return cls(adapter, get_policy_class(kind)(config), stats)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # ---- inputs ---------------------------------------------------------------------------------------
    def _frames(self, images: Tensor) -> Tensor:
        """(B, T, 3, S, S) float in [0, 1] -> the policy's last n_frames frames, resized and standardised."""
        cfg = self.config
        if images.dim() != 5 or images.shape[2] != 3 or images.shape[1] < cfg.n_frames:
            raise ValueError(f"image must be (B, T >= {cfg.n_frames}, 3, H, W) float in [0, 1], got "
                             f"{tuple(images.shape)}")
        return self._standardise(images[:, -cfg.n_frames:])

    def _standardise(self, images: Tensor) -> Tensor:
        """(B, T, 3, S, S) float in [0, 1] -> resized to image_size, ImageNet mean / std."""
        cfg = self.config
        x = images.float().to(self.device)
        b, t = x.shape[:2]
        x = x.flatten(0, 1)
        if tuple(x.shape[-2:]) != (cfg.image_size, cfg.image_size):
            x = F.interpolate(x, size=(cfg.image_size, cfg.image_size), mode="bilinear", antialias=True,
                              align_corners=False)
        return ((x - self.image_mean) / self.image_std).view(b, t, 3, cfg.image_size, cfg.image_size)

    def _lerobot_batch(self, frames: Tensor, states: Tensor) -> dict[str, Tensor]:
        """lerobot's observation keys from standardised frames (B, T, 3, s, s) and raw states (B, T, S)."""
        state = self.normalizer.normalize("state", states.float().to(self.device))
        if self.config.n_frames == 1:  # single-step policies (ACT) take (B, ...) without a time axis
            return {STATE_KEY: state[:, -1], IMAGE_KEY: frames[:, -1]}
        return {STATE_KEY: state, IMAGE_KEY: frames}

    def _states(self, batch: dict[str, Any]) -> Tensor:
        """(B, n_frames, S): the window's states when the batch has them (`states`), else the newest repeated."""
        n, dim = self.config.n_frames, self.config.state_dim
        if "states" in batch:
            states = torch.as_tensor(batch["states"])[:, -n:]
        else:
            state = torch.as_tensor(batch["state"])
            states = state[:, None].expand(-1, n, -1) if state.dim() == 2 else state
        if states.dim() != 3 or states.shape[1:] != (n, dim):
            raise ValueError(f"state must be (B, {dim}) (state_dim), got {tuple(states.shape)}")
        return states

    def _require_stats(self) -> None:
        if not bool(self.normalizer.has_stats):
            raise RuntimeError("the policy has no normalisation statistics: pass the dataset stats to make_policy")

    # ---- training (moss_vla/train.py) ------------------------------------------------------------------
    def forward(self, batch: dict[str, Any]) -> tuple[Tensor, dict[str, float]]:
        """lerobot's training loss on one of our collated batches. Returns (loss, stats)."""
        self._require_stats()
        return self.loss_from_features(*self.encode(batch["image"], None), batch)

    def encode(self, images: Tensor, instruction: Any = None) -> tuple[Tensor, None]:
        """The standardised frames (lerobot policies encode inside their own forward): what train.py's
        validation hands back to `loss_from_features` / `sample_from_features`."""
        return self._frames(images), None

    def loss_from_features(self, frames: Tensor, _mask: Any, batch: dict[str, Any]) -> tuple[Tensor, dict[str, float]]:
        action = torch.as_tensor(batch["action"]).float().to(self.device)
        if action.dim() != 3 or tuple(action.shape[1:]) != (self.config.horizon, self.config.action_dim):
            raise ValueError(f"action must be (B, {self.config.horizon}, {self.config.action_dim}), got "
                             f"{tuple(action.shape)}")
        pad = batch.get("action_is_pad")
        pad = torch.zeros(action.shape[:2], dtype=torch.bool) if pad is None else torch.as_tensor(pad).bool()
        lb = self._lerobot_batch(frames, self._states(batch))
        lb.update({ACTION_KEY: self.normalizer.normalize("action", action), "action_is_pad": pad.to(self.device)})
        was_training = self.policy.training
        self.policy.train()  # lerobot's ACT defines its loss (its VAE encoder's KL term) in training mode only:
        try:  # validation losses are taken the same way (dropout on); its action error comes from `plan`'s path
            loss, info = self.policy(lb)
        finally:
            self.policy.train(was_training)
        return loss, {"loss": float(loss.detach()), **{k: float(v) for k, v in (info or {}).items()}}

    def sample_from_features(self, frames: Tensor, _mask: Any, state: Tensor, seed: int | None) -> Tensor:
        """Action chunk (B, H, A), unnormalised. ``state``: (B, S) (repeated over the history) or (B, T, S)."""
        return self._chunk(self._lerobot_batch(frames, self._states({"state": state})), seed)

    @torch.no_grad()
    def _chunk(self, lb: dict[str, Tensor], seed: int | None) -> Tensor:
        """The chunk from the newest observation on, (B, H, A), unnormalised."""
        was_training = self.policy.training
        self.policy.eval()
        try:
            diffusion = getattr(self.policy, "diffusion", None)
            if diffusion is not None:  # the whole horizon (see the module docstring), through lerobot's own steps
                gen = None if seed is None else torch.Generator(self.device).manual_seed(int(seed))
                lb = {**lb, "observation.images": torch.stack([lb[k] for k in self.policy.config.image_features], -4)}
                chunk = diffusion.conditional_sample(lb[STATE_KEY].shape[0], generator=gen,
                                                     global_cond=diffusion._prepare_global_conditioning(lb))
            else:
                chunk = self.policy.predict_action_chunk(lb)
        finally:
            self.policy.train(was_training)
        return self.normalizer.unnormalize("action", chunk.float())

    @torch.no_grad()
    def predict_action_chunk(self, obs: dict[str, Any], seed: int | None = None) -> Tensor:
        """Action chunk (B, H, A), unnormalised, from a window obs in dataset format (``image`` (B, T, 3, S, S),
        ``state`` (B, S) or ``states`` (B, T, S))."""
        self._require_stats()
        return self._chunk(self._lerobot_batch(self._frames(torch.as_tensor(obs["image"])), self._states(obs)), seed)

    # ---- the 10 Hz loop ----------------------------------------------------------------------------------
    LOOP_STATE = ("config", "_frames_seen", "_states_seen", "_actions", "_ensembler")  # as MossVLAPolicy's

    def loop_state(self) -> dict[str, Any]:
        """The loop's state (`LOOP_STATE`: history, queued actions, ensembler, config), for `set_loop_state`."""
        return {k: getattr(self, k) for k in self.LOOP_STATE}

    def set_loop_state(self, state: dict[str, Any] | None, config: Any = None) -> None:
        """Make `state` (a `loop_state()`) the loop's; None: a fresh one for `config` (default: the current)."""
        if state is None:
            if config is not None:
                self.config = config
            self.reset()
        else:
            for k in self.LOOP_STATE:
                setattr(self, k, state[k])

    def reset(self) -> None:
        """Forget the observation history and the queued actions (call at the start of an episode)."""
        self._frames_seen: deque[Tensor] = deque(maxlen=self.config.n_frames)
        self._states_seen: deque[Tensor] = deque(maxlen=self.config.n_frames)
        self._actions: deque[np.ndarray] = deque()
        self._ensembler = None

    @torch.no_grad()
    def observe(self, obs: dict[str, Any]) -> None:
        """Check a step's observation and add it to the history (every step, in order)."""
        cfg = self.config
        image = np.asarray(obs["image"])
        if image.shape != (cfg.input_image_size, cfg.input_image_size, 3) or image.dtype != np.uint8:
            raise ValueError(f"select_action expects image ({cfg.input_image_size}, {cfg.input_image_size}, 3) uint8 "
                             f"(input_image_size), got {image.shape} {image.dtype}")
        state = np.asarray(obs["state"], dtype=np.float32)
        if state.shape != (cfg.state_dim,):
            raise ValueError(f"select_action expects state ({cfg.state_dim},) (state_dim), got {state.shape}")
        pixels = torch.from_numpy(image).to(self.device).permute(2, 0, 1)[None, None].float() / 255.0
        frame, state_t = self._standardise(pixels)[0, 0], torch.from_numpy(state)
        while len(self._frames_seen) < cfg.n_frames - 1:  # episode start: repeat the first observation
            self._frames_seen.append(frame)
            self._states_seen.append(state_t)
        self._frames_seen.append(frame)
        self._states_seen.append(state_t)

    @torch.no_grad()
    def plan(self, obs: dict[str, Any], rtc: Any = None) -> np.ndarray:
        """Action chunk (H, A) float32 from the history :meth:`observe` built (its newest entry is ``obs``'s)."""
        if rtc is not None:
            raise ValueError(f"planner.rtc.enabled: lerobot's {self.config.type} policy cannot guide its chunk with "
                             f"the previous one (real-time chunking needs a flow-matching head); set "
                             f"planner.rtc.enabled=false")
        self._require_stats()
        lb = self._lerobot_batch(torch.stack(list(self._frames_seen))[None], torch.stack(list(self._states_seen))[None])
        return self._chunk(lb, self.config.inference_seed)[0].cpu().numpy().astype(np.float32)

    @torch.no_grad()
    def select_action(self, obs: dict[str, Any]) -> np.ndarray:
        """obs {"image": (S, S, 3) uint8, "state": (S_dim,), ...} -> (A,): replans every n_action_steps, or with
        temporal_ensemble_coeff every step, ensembled with lerobot's ACTTemporalEnsembler."""
        self.observe(obs)
        coeff = self.config.temporal_ensemble_coeff
        if coeff is not None:
            from lerobot.policies.act.modeling_act import ACTTemporalEnsembler

            if self._ensembler is None:
                self._ensembler = ACTTemporalEnsembler(coeff, self.config.horizon)
            return self._ensembler.update(torch.from_numpy(self.plan(obs))[None])[0].numpy().astype(np.float32)
        if not self._actions:
            self._actions.extend(self.plan(obs)[: self.config.n_action_steps])
        return self._actions.popleft().astype(np.float32)

    # ---- checkpoints --------------------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path) -> Path:
        """lerobot's save_pretrained (config.json, model.safetensors) + stats.json + moss_adapter.json."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.policy.save_pretrained(directory)
        (directory / STATS_NAME).write_text(json.dumps(self.normalizer.stats_dict(), indent=2))
        (directory / ADAPTER_NAME).write_text(json.dumps(asdict(self.config), indent=2))
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> LeRobotPolicy:
        """A checkpoint :meth:`save_pretrained` wrote; every missing or unreadable part is named."""
        from lerobot.configs.policies import PreTrainedConfig
        from lerobot.policies.factory import get_policy_class

        directory = Path(directory)
        for name in (CONFIG_NAME, WEIGHTS_NAME, STATS_NAME, ADAPTER_NAME):
            if not (directory / name).is_file():
                hint = (" (a checkpoint of lerobot-train's own: train it with moss-train policy=act|diffusion "
                        "instead, which writes our normalisation and history settings beside lerobot's files)"
                        if name in (STATS_NAME, ADAPTER_NAME) else "")
                raise FileNotFoundError(f"{directory / name} not found: not a complete lerobot checkpoint of "
                                        f"moss-train{hint}")
        try:
            adapter = LeRobotAdapterConfig(**json.loads((directory / ADAPTER_NAME).read_text()))
            lr_cfg = PreTrainedConfig.from_pretrained(directory)
        except Exception as e:  # noqa: BLE001 - json / dataclass / draccus errors do not name the file
            raise ValueError(f"{directory}: {ADAPTER_NAME} or {CONFIG_NAME} cannot be read as a lerobot "
                             f"policy's settings ({type(e).__name__}: {e})") from None
        if lr_cfg.type != adapter.type:
            raise ValueError(f"{directory}: {CONFIG_NAME} is a lerobot {lr_cfg.type!r} policy, {ADAPTER_NAME} says "
                             f"{adapter.type!r}")
        lr_cfg.device = "cpu"
        policy = cls(adapter, get_policy_class(lr_cfg.type)(lr_cfg),
                     json.loads((directory / STATS_NAME).read_text()))
        policy.load_weights(directory / WEIGHTS_NAME)
        return policy.eval()

    def load_weights(self, path: str | Path) -> None:
        """The lerobot policy's safetensors weights; names every missing, unexpected or mis-shaped tensor."""
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
        except Exception as exc:  # noqa: BLE001
            raise ValueError(f"{path}: cannot be read as safetensors ({type(exc).__name__}: {exc}); the checkpoint "
                             f"is damaged or incomplete") from None
        own = self.policy.state_dict()
        missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        shapes = [f"{k}: expected {tuple(own[k].shape)}, checkpoint has {tuple(state[k].shape)}"
                  for k in own if k in state and own[k].shape != state[k].shape]
        if missing or unexpected or shapes:
            raise ValueError(f"checkpoint {path} does not fit this {self.config.type} policy's config (missing "
                             f"{missing[:5]}, unexpected {unexpected[:5]}, shape mismatches {shapes[:5]})")
        self.policy.load_state_dict(state)


def is_lerobot_checkpoint(saved: Any) -> bool:
    """Whether a checkpoint's config.json (as a dict) is a lerobot policy's (it names the policy `type`)."""
    return isinstance(saved, dict) and isinstance(saved.get("type"), str) and "vision" not in saved
