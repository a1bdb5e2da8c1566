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

A checkpoint lerobot-train wrote (its `pretrained_model/`: no `stats.json` / `moss_adapter.json`, but lerobot's
`policy_preprocessor.json` and `policy_postprocessor.json` with their statistics) is scored through lerobot's own
processor pipelines instead (`LeRobotProcessors`): frames go in as lerobot's datasets give them (float in [0, 1],
(3, H, W) at the checkpoint's camera shape), the preprocessor normalises them and the state (and tokenises the
instruction, passed as `task`, for the policies that take one), the postprocessor unnormalises the chunk. The
settings come from lerobot's config.json (`from_lerobot_train`); the policy is only scored, not trained here.
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
PREPROCESSOR_NAME, POSTPROCESSOR_NAME = "policy_preprocessor.json", "policy_postprocessor.json"  # lerobot-train's
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
    normalization: str = "mean_std"  # mean_std | min_max (moss_vla/policy/normalization.py) | lerobot (processors)
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
        if self.normalization not in ("mean_std", "min_max", "lerobot"):
            raise ValueError(f"normalization={self.normalization!r}: expected mean_std or min_max (lerobot: a "
                             f"lerobot-train checkpoint's own processor files)")

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


@dataclass(frozen=True)
class LeRobotProcessors:
    """A lerobot-train checkpoint's own pipelines and what its policy reads (from its config.json)."""

    pre: Any  # lerobot PolicyProcessorPipeline: observation batch -> the policy's inputs
    post: Any  # lerobot PolicyProcessorPipeline: the policy's chunk -> actions
    image_key: str  # the checkpoint's one camera (its VISUAL input feature)
    state_key: str  # its STATE input feature
    image_hw: tuple[int, int]  # the camera's (H, W): our frames are resized to it
    chunk_start: int = 0  # Diffusion Policy's chunk starts n_obs_steps - 1 steps back (lerobot's windows)


class LeRobotPolicy(nn.Module):
    """A lerobot `PreTrainedPolicy` (``policy``) with our normalisation, history and loop interface; with
    ``processors`` (a lerobot-train checkpoint) lerobot's own pipelines normalise instead."""

    supports_rtc = False  # ACT regresses its chunk, Diffusion Policy denoises with DDPM/DDIM: no RTC guidance

    def __init__(self, config: LeRobotAdapterConfig, policy: nn.Module, stats: dict[str, Any] | None = None,
                 processors: LeRobotProcessors | None = None) -> None:
        super().__init__()
        if (config.normalization == "lerobot") != (processors is not None):
            raise ValueError(f"normalization={config.normalization!r}: 'lerobot' goes with a lerobot-train "
                             f"checkpoint's processor files ({PREPROCESSOR_NAME}, {POSTPROCESSOR_NAME}) and only "
                             f"with them; moss-train normalises with mean_std or min_max")
        self.config = config
        self.policy = policy
        self.processors = processors
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
        return self._standardise(self._window(images))

    def _window(self, images: Tensor) -> Tensor:
        """(B, T, 3, S, S) -> its last n_frames frames; names a wrong shape."""
        cfg = self.config
        if images.dim() != 5 or images.shape[2] != 3 or images.shape[1] < cfg.n_frames:
            raise ValueError(f"image must be (B, T >= {cfg.n_frames}, 3, H, W) float in [0, 1], got "
                             f"{tuple(images.shape)}")
        return images[:, -cfg.n_frames:]

    def _lerobot_frames(self, images: Tensor) -> Tensor:
        """(B, T, 3, S, S) float in [0, 1] -> (B, T, 3, H, W) at the lerobot-train checkpoint's camera shape, still
        in [0, 1] (as lerobot's datasets give frames; its preprocessor normalises), on the CPU like its pipelines."""
        h, w = self.processors.image_hw
        x = images.float().cpu()
        b, t = x.shape[:2]
        x = x.flatten(0, 1)
        if tuple(x.shape[-2:]) != (h, w):
            x = F.interpolate(x, size=(h, w), mode="bilinear", antialias=True, align_corners=False)
        return x.view(b, t, 3, h, w)

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
        self._require_moss_checkpoint()
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

    def _require_moss_checkpoint(self) -> None:
        if self.processors is not None:  # its normalisation is lerobot's pipelines', not our Normalizer's
            raise RuntimeError(f"lerobot's {self.config.type} from a lerobot-train checkpoint is scored here (plan, "
                               f"select_action, predict_action_chunk), not trained, validated or saved anew: train it "
                               f"with lerobot-train, or moss-train policy=act|diffusion")

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
        self._require_moss_checkpoint()
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
        return self.normalizer.unnormalize("action", self._policy_chunk(lb, seed).float())

    @torch.no_grad()
    def _policy_chunk(self, lb: dict[str, Tensor], seed: int | None) -> Tensor:
        """The lerobot policy's chunk as it gives it (normalised) from its observation batch ``lb``."""
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
        return chunk

    @torch.no_grad()
    def _processed_chunk(self, frames: Tensor, states: Tensor, tasks: list[str], seed: int | None) -> Tensor:
        """A lerobot-train checkpoint's chunk (B, H, A) on the CPU: lerobot's preprocessor on each step of the
        history (frames (B, T, 3, H, W) in [0, 1], raw states (B, T, S)), as lerobot-eval feeds its policy step by
        step; the policy's chunk from the newest step; lerobot's postprocessor."""
        p, cfg = self.processors, self.config
        # lerobot's datasets and lerobot-eval carry the instruction as `task`: a language policy's preprocessor
        # tokenises it (groot, pi0, smolvla, ...); the others pass it by
        steps = [p.pre({p.image_key: frames[:, t], p.state_key: states[:, t].float().cpu(), "task": list(tasks)})
                 for t in range(frames.shape[1])]
        batch = dict(steps[-1])
        if cfg.n_frames > 1:  # lerobot's queues: the history stacked on dim 1
            batch.update({k: torch.stack([s[k] for s in steps], 1) for k in (p.image_key, p.state_key)})
        batch = {k: v.to(self.device) if isinstance(v, Tensor) else v for k, v in batch.items()}
        chunk = self._policy_chunk(batch, seed)[:, p.chunk_start:]
        if tuple(chunk.shape[1:]) != (cfg.horizon, cfg.action_dim):
            raise ValueError(f"lerobot's {cfg.type} gave a chunk of {tuple(chunk.shape[1:])} (actions, dims); its "
                             f"{CONFIG_NAME} promises ({cfg.horizon}, {cfg.action_dim}) (its action_delta_indices from 0 on, "
                             f"its action feature): the checkpoint's config does not describe its model")
        return p.post(chunk.cpu().float())

    @torch.no_grad()
    def predict_action_chunk(self, obs: dict[str, Any], seed: int | None = None) -> Tensor:
        """Action chunk (B, H, A), unnormalised, from a window obs in dataset format (``image`` (B, T, 3, S, S),
        ``state`` (B, S) or ``states`` (B, T, S)); a lerobot-train checkpoint reads ``instruction`` too."""
        if self.processors is not None:
            images = self._lerobot_frames(self._window(torch.as_tensor(obs["image"])))
            task = obs.get("instruction", "")
            tasks = [task] * images.shape[0] if isinstance(task, str) else [str(t) for t in task]
            return self._processed_chunk(images, self._states(obs), tasks, seed)
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
        if self.processors is not None:  # lerobot-eval resets its pipelines with the policy
            self.processors.pre.reset()
            self.processors.post.reset()

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
        if self.processors is not None:  # as lerobot's preprocess_observation: (3, H, W) float in [0, 1]
            frame = self._lerobot_frames(torch.from_numpy(image).permute(2, 0, 1)[None, None].float() / 255.0)[0, 0]
        else:
            pixels = torch.from_numpy(image).to(self.device).permute(2, 0, 1)[None, None].float() / 255.0
            frame = self._standardise(pixels)[0, 0]
        state_t = torch.from_numpy(state)
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
        if self.processors is not None:
            frames, states = torch.stack(list(self._frames_seen))[None], torch.stack(list(self._states_seen))[None]
            chunk = self._processed_chunk(frames, states, [str(obs.get("instruction", ""))], self.config.inference_seed)
            return chunk[0].numpy().astype(np.float32)
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
        self._require_moss_checkpoint()
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.policy.save_pretrained(directory)
        (directory / STATS_NAME).write_text(json.dumps(self.normalizer.stats_dict(), indent=2))
        (directory / ADAPTER_NAME).write_text(json.dumps(asdict(self.config), indent=2))
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> LeRobotPolicy:
        """A checkpoint :meth:`save_pretrained` wrote, or one lerobot-train wrote (:meth:`from_lerobot_train`);
        every missing or unreadable part is named."""
        from lerobot.configs.policies import PreTrainedConfig
        from lerobot.policies.factory import get_policy_class

        directory = Path(directory)
        if (not any((directory / n).is_file() for n in (STATS_NAME, ADAPTER_NAME))
                and any((directory / n).is_file() for n in (PREPROCESSOR_NAME, POSTPROCESSOR_NAME))):
            return cls.from_lerobot_train(directory)
        for name in (CONFIG_NAME, WEIGHTS_NAME, STATS_NAME, ADAPTER_NAME):
            if not (directory / name).is_file():
                hint = (f" (moss-train writes {STATS_NAME} and {ADAPTER_NAME} beside lerobot's files; a checkpoint "
                        f"of lerobot-train's own is read through its {PREPROCESSOR_NAME} and {POSTPROCESSOR_NAME} "
                        f"instead, with neither of ours beside them)" if name in (STATS_NAME, ADAPTER_NAME) else "")
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

    @classmethod
    def from_lerobot_train(cls, directory: str | Path) -> LeRobotPolicy:
        """A checkpoint lerobot-train wrote (`.../checkpoints/<step>/pretrained_model`), scored through its own
        pre/post processor files; the adapter's settings come from its config.json (`lerobot_train_settings`)."""
        from lerobot.configs.policies import PreTrainedConfig
        from lerobot.policies.factory import get_policy_class

        directory = Path(directory)
        missing = [n for n in (CONFIG_NAME, WEIGHTS_NAME, PREPROCESSOR_NAME, POSTPROCESSOR_NAME)
                   if not (directory / n).is_file()]
        if missing:
            raise FileNotFoundError(f"{directory / missing[0]} not found: a lerobot-train checkpoint (its "
                                    f"pretrained_model/ directory) needs {CONFIG_NAME}, {WEIGHTS_NAME}, "
                                    f"{PREPROCESSOR_NAME} and {POSTPROCESSOR_NAME} (missing: {', '.join(missing)}); "
                                    f"copy the whole directory")
        try:
            lr_cfg = PreTrainedConfig.from_pretrained(directory)
        except Exception as e:  # noqa: BLE001 - draccus' errors do not name the file
            raise ValueError(f"{directory / CONFIG_NAME}: cannot be read as a lerobot policy's config "
                             f"({type(e).__name__}: {e})") from None
        adapter, keys = lerobot_train_settings(lr_cfg, directory / CONFIG_NAME)
        pre, post = load_lerobot_processors(directory)
        lr_cfg.device = "cpu"
        if getattr(lr_cfg, "pretrained_backbone_weights", None):
            # model.safetensors holds every weight: ImageNet's (a download) would only be overwritten
            lr_cfg.pretrained_backbone_weights = None
        policy = cls(adapter, get_policy_class(lr_cfg.type)(lr_cfg), processors=LeRobotProcessors(pre, post, **keys))
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


def lerobot_train_settings(lr_cfg: Any, source: Path) -> tuple[LeRobotAdapterConfig, dict[str, Any]]:
    """The adapter's settings and `LeRobotProcessors`' keys from a lerobot-train checkpoint's config (read from
    ``source``): history n_obs_steps; horizon: the actions from the newest observation on among those the policy
    was trained to predict (`action_delta_indices`: ACT's chunk_size; Diffusion Policy's horizon - n_obs_steps + 1;
    groot's min(chunk_size, 16)); its n_action_steps; the one camera and its shape; the 8-D state and action.
    Refuses, naming the keys, what our rig cannot feed or run."""
    from lerobot.configs.types import FeatureType
    from lerobot.policies.diffusion.configuration_diffusion import DiffusionConfig

    def of(features: dict[str, Any] | None, kind: FeatureType) -> list[str]:
        return sorted(k for k, f in (features or {}).items() if f.type == kind)

    inputs, outputs = dict(lr_cfg.input_features or {}), dict(lr_cfg.output_features or {})
    cams, states, actions = of(inputs, FeatureType.VISUAL), of(inputs, FeatureType.STATE), of(outputs, FeatureType.ACTION)
    rig = "our rig gives one camera frame and the 8-D Franka state (7 joints + gripper) and takes 8-D actions"
    if len(cams) != 1:
        raise ValueError(f"{source}: input_features has {len(cams)} cameras (VISUAL) {cams}: {rig}, so only a policy "
                         f"trained on one camera can be scored (e.g. on a moss-data export-lerobot dataset)")
    others = sorted(set(inputs) - {*cams, *states})
    if len(states) != 1 or others:
        raise ValueError(f"{source}: input_features has state features {states} and others {others}: {rig}")
    if len(actions) != 1 or set(outputs) != set(actions):
        raise ValueError(f"{source}: output_features {sorted(outputs)}: expected one ACTION feature; {rig}")
    for key, feature, want in ((states[0], inputs[states[0]], 8), (actions[0], outputs[actions[0]], 8)):
        if tuple(feature.shape) != (want,):
            raise ValueError(f"{source}: {key!r} has shape {tuple(feature.shape)}, expected ({want},): {rig}")
    shape = tuple(inputs[cams[0]].shape)
    if len(shape) != 3 or shape[0] != 3:
        raise ValueError(f"{source}: camera {cams[0]!r} has shape {shape}, expected (3, H, W)")
    n_obs = int(getattr(lr_cfg, "n_obs_steps", 1))
    diffusion = isinstance(lr_cfg, DiffusionConfig)
    if n_obs > 1 and not diffusion:  # others keep their history in policy-specific queues
        raise ValueError(f"{source}: lerobot's {lr_cfg.type} with n_obs_steps={n_obs}: the adapter feeds a history "
                         f"only to Diffusion Policy; other policies must take one observation (n_obs_steps 1)")
    indices = list(getattr(lr_cfg, "action_delta_indices", None) or [])
    horizon, start = sum(i >= 0 for i in indices), sum(i < 0 for i in indices)
    if not horizon or (start and not diffusion):  # Diffusion's past actions are dropped from its whole sample
        raise ValueError(f"{source}: lerobot's {lr_cfg.type} predicts actions at offsets {indices or None} "
                         f"(action_delta_indices): the adapter plans chunks of actions from the newest observation on")
    try:
        # at most the chunk it is given, as lerobot's action queue runs it (groot: n_action_steps 50, chunk 16)
        n_action_steps = min(int(lr_cfg.n_action_steps), horizon)
        adapter = LeRobotAdapterConfig(
            type=str(lr_cfg.type), n_frames=n_obs, horizon=horizon, n_action_steps=n_action_steps,
            image_size=int(shape[1]), normalization="lerobot",
            temporal_ensemble_coeff=getattr(lr_cfg, "temporal_ensemble_coeff", None))
    except ValueError as e:
        raise ValueError(f"{source}: {e}") from None
    return adapter, {"image_key": cams[0], "state_key": states[0], "image_hw": (int(shape[1]), int(shape[2])),
                     "chunk_start": start}


def load_lerobot_processors(directory: Path) -> tuple[Any, Any]:
    """lerobot-train's policy_preprocessor.json / policy_postprocessor.json (with their statistics files) as
    lerobot's pipelines, on the CPU (the adapter moves the batch to the policy's device); errors name the file."""
    from lerobot.processor import PolicyProcessorPipeline, batch_to_transition, transition_to_batch
    from lerobot.processor.converters import policy_action_to_transition, transition_to_policy_action

    out = []
    for name, to_transition, to_output in ((PREPROCESSOR_NAME, batch_to_transition, transition_to_batch),
                                            (POSTPROCESSOR_NAME, policy_action_to_transition,
                                             transition_to_policy_action)):
        try:
            steps = json.loads((directory / name).read_text())["steps"]
            # the file holds lerobot-train's device (cuda on a GPU machine): the CPU loads anywhere
            device = {"device_processor": {"device": "cpu"}} if any(
                s.get("registry_name") == "device_processor" for s in steps) else {}
            out.append(PolicyProcessorPipeline.from_pretrained(directory, config_filename=name, overrides=device,
                                                               to_transition=to_transition, to_output=to_output,
                                                               local_files_only=True))
        except Exception as e:  # noqa: BLE001 - lerobot's errors do not always name the file
            raise ValueError(f"{directory / name}: cannot be loaded as lerobot's processor pipeline "
                             f"({type(e).__name__}: {e}); copy the checkpoint's files again") from None
    return out[0], out[1]
