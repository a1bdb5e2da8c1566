"""MossVLAPolicy: GR00T-N1.5-style VLA, multi-frame the ContextVLA way, MOSS inside SigLIP (paper Fig. 7b).

    frames (B, T, 3, 224, 224) --resize--> SigLIP layers 1..k --temporal module (residual)--> layers k+1..N
      --> pool + project --> VL backbone [frames..., text] (ContextVLA: past frames -> 1 context token
      after block 2) --> GR00T flow-matching action head (state, 16-step action chunk)

Training loop contract: ``loss, stats = policy(batch)`` with a collated batch of dataset items
(``image`` (B, T, 3, H, W) float in [0, 1], ``state`` (B, S), ``action`` (B, H, A), ``action_is_pad``
(B, H), ``instruction`` list of str; other keys are ignored), then ``loss.backward()`` and an optimiser
step. Normalisation statistics are given at construction (``make_policy(..., stats)``) and saved with
the checkpoint. At run time: ``policy.eval(); policy.reset(); action = policy.select_action(obs)`` each
control step.
"""

from __future__ import annotations

import json
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from lerobot.policies.act.modeling_act import ACTTemporalEnsembler
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from moss_vla.device import autocast
from moss_vla.policy.action_head import ActionHead
from moss_vla.policy.backbone import VLBackbone
from moss_vla.policy.configuration import MossVLAConfig
from moss_vla.policy.normalization import Normalizer
from moss_vla.policy.streaming import FrameCache
from moss_vla.policy.tokenizer import build_tokenizer
from moss_vla.policy.vision_tower import VisionTower
from moss_vla.rtc import RTCRequest, make_guide

CONFIG_NAME, WEIGHTS_NAME, STATS_NAME = "config.json", "model.safetensors", "stats.json"


class MossVLAPolicy(nn.Module):
    """The policy. ``config``: :class:`MossVLAConfig`; ``stats``: dataset normalisation statistics."""

    # plan / predict_action_chunk take an RTCRequest: real-time chunking (planner.rtc, moss_vla/rtc.py)
    supports_rtc = True

    def __init__(self, config: MossVLAConfig, stats: dict[str, Any] | None = None,
                 load_pretrained_vision: bool = True) -> None:
        super().__init__()
        config.validate()
        self.config = config
        self.tokenizer = build_tokenizer(config.backbone.tokenizer, config.backbone.max_text_len)
        vision_cfg = config.vision
        if not load_pretrained_vision and vision_cfg.pretrained_path is not None:
            # the checkpoint holds the SigLIP weights: build at the same size, do not read the original
            from dataclasses import replace

            vision_cfg = replace(vision_cfg, pretrained_path=None)
        self.vision = VisionTower(vision_cfg, config.temporal)
        self.backbone = VLBackbone(config.backbone, config.vision.hidden_size, config.vision.grid,
                                   config.n_frames, self.tokenizer.vocab_size)
        self.action_head = ActionHead(config.action_head, config.state_dim, config.action_dim,
                                      config.backbone.hidden_size, torchscript=config.torchscript_sampler)
        self.normalizer = Normalizer(config.state_dim, config.action_dim, config.normalization, stats)
        # auxiliary stimulus-label head on [mean, max] of VL tokens (training only; see
        # MossVLAConfig.aux_label_weight / aux_label_tokens)
        self.label_head = (nn.Linear(2 * config.backbone.hidden_size, config.aux_label_classes)
                           if config.aux_label_classes else None)
        self._init_loop_state()

    # the 10 Hz loop's state (with the config its inference settings live in): what `loop_state()` hands out
    LOOP_STATE = ("config", "cache", "_raw_frames", "_actions", "_ensembler", "_text_cache")

    def loop_state(self) -> dict[str, Any]:
        """The 10 Hz loop's state (`LOOP_STATE`), to give back later with `set_loop_state` (a policy server keeps
        one per session: moss_vla/serve.py)."""
        return {k: getattr(self, k) for k in self.LOOP_STATE}

    def set_loop_state(self, state: dict[str, Any] | None, config: Any = None) -> None:
        """Make `state` (a `loop_state()`) the loop's; None: a fresh one for `config` (default: the current)."""
        if state is None:
            if config is not None:
                self.config = config
            self._init_loop_state()
        else:
            for k in self.LOOP_STATE:
                setattr(self, k, state[k])

    def _init_loop_state(self) -> None:
        """The 10 Hz loop's state: frame window, streaming cache, queued actions, instruction cache."""
        config = self.config
        self.cache = FrameCache(self)
        self._raw_frames: deque[Tensor] = deque(maxlen=config.n_frames)
        self._actions: deque[np.ndarray] = deque()
        self._ensembler: ACTTemporalEnsembler | None = None  # built at an episode's first step (config may change)
        self._text_cache: dict[str, tuple[Tensor, Tensor]] = {}

    # ---- inputs ------------------------------------------------------------------------------------
    def _check_window(self, images: Tensor) -> Tensor:
        """(B, T, 3, S, S) float in [0, 1] (or uint8 (B, T, S, S, 3)) -> float (B, T, 3, S, S)."""
        cfg = self.config
        S = cfg.input_image_size
        if images.dtype == torch.uint8 and images.dim() == 5 and images.shape[-1] == 3:
            images = images.permute(0, 1, 4, 2, 3).float() / 255.0
        if images.dim() != 5 or images.shape[2] != 3:
            raise ValueError(f"image must be (B, T, 3, H, W) float in [0, 1], got shape {tuple(images.shape)}")
        if images.shape[1] != cfg.n_frames:
            raise ValueError(f"image has {images.shape[1]} frames, expected n_frames = {cfg.n_frames} "
                             f"(policy variant {cfg.variant!r})")
        if tuple(images.shape[-2:]) != (S, S):
            raise ValueError(f"image frames are {tuple(images.shape[-2:])}, expected ({S}, {S}) "
                             f"(input_image_size)")
        return images.float()

    def _check_state(self, state: Tensor) -> Tensor:
        if state.dim() != 2 or state.shape[1] != self.config.state_dim:
            raise ValueError(f"state must be (B, {self.config.state_dim}) (state_dim), got shape {tuple(state.shape)}")
        return state.float()

    def _text(self, instruction: Any, batch_size: int) -> tuple[Tensor, Tensor]:
        """Embedded instruction tokens (B, L, D), mask (B, L); padding trimmed to the longest one."""
        texts = [instruction] * batch_size if isinstance(instruction, str) else list(instruction)
        if len(texts) != batch_size:
            raise ValueError(f"got {len(texts)} instructions for a batch of {batch_size}")
        ids, mask = self.tokenizer(texts)
        longest = int(mask.sum(1).max())
        ids, mask = ids[:, :longest].to(self.device), mask[:, :longest].to(self.device)
        return self.backbone.embed_text(ids, mask)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # ---- model -------------------------------------------------------------------------------------
    def encode(self, images: Tensor, instruction: Any) -> tuple[Tensor, Tensor]:
        """VL features (B, N, D) and mask (B, N) of a window (B, T, 3, S, S) and its instructions."""
        images = self._check_window(images).to(self.device)
        tokens = self.vision(images)  # (B, T, h*w, C)
        text, text_mask = self._text(instruction, images.shape[0])
        return self.backbone(self.backbone.embed_frames(tokens), text, text_mask)

    def _require_stats(self) -> None:
        if not bool(self.normalizer.has_stats):
            raise RuntimeError("the policy has no normalisation statistics: pass the dataset stats to "
                               "make_policy(cfg_policy, cfg_model, stats) or MossVLAPolicy(config, stats)")

    def forward(self, batch: dict[str, Any]) -> tuple[Tensor, dict[str, float]]:
        """Flow-matching loss on a collated batch (extra keys are ignored). Returns (loss, stats)."""
        self._require_stats()
        for key in ("image", "state", "action", "instruction"):
            if key not in batch:
                raise KeyError(f"training batch lacks {key!r} (has {sorted(batch)})")
        return self.loss_from_features(*self.encode(batch["image"], batch["instruction"]), batch)

    def loss_from_features(self, vl: Tensor, vl_mask: Tensor, batch: dict[str, Any]) -> tuple[Tensor, dict[str, float]]:
        """:meth:`forward` from the batch's VL features (:meth:`encode`): lets validation encode a batch
        once for both the loss and the sampled chunk."""
        cfg = self.config
        action = batch["action"].to(self.device).float()
        H, A = cfg.action_head.horizon, cfg.action_dim
        if action.dim() != 3 or tuple(action.shape[1:]) != (H, A):
            raise ValueError(f"action must be (B, {H}, {A}) (action_head.horizon, action_dim), "
                             f"got shape {tuple(action.shape)}")
        pad = batch.get("action_is_pad")
        pad = torch.zeros(action.shape[:2], dtype=torch.bool) if pad is None else pad.bool()
        state = self._check_state(batch["state"].to(self.device))
        loss = self.action_head.loss(vl, vl_mask, self.normalizer.normalize("state", state),
                                     self.normalizer.normalize("action", action), pad.to(self.device))
        stats: dict[str, float] = {}
        if self.label_head is not None and cfg.aux_label_weight > 0:
            aux, acc = self.label_loss(vl, vl_mask, batch)
            stats = {"action_loss": float(loss.detach()), "aux_label_loss": float(aux.detach()), "aux_label_acc": acc}
            loss = loss + cfg.aux_label_weight * aux
        return loss, {"loss": float(loss.detach()), **stats}

    def label_loss(self, vl: Tensor, vl_mask: Tensor, batch: dict[str, Any]) -> tuple[Tensor, float]:
        """Cross-entropy of the label head (:meth:`label_logits`) against the newest frame's ``stim_label``
        over the windows that count (:meth:`label_targets`), and the head's accuracy there (nan if none)."""
        target, counted = self.label_targets(batch)
        logits = self.label_logits(vl, vl_mask)[counted]
        target = target[counted]
        if not len(target):  # no window of the batch shows its label: nothing to learn from it
            return logits.sum() * 0.0, float("nan")
        return F.cross_entropy(logits, target), float((logits.argmax(1) == target).float().mean())

    def label_targets(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor]:
        """Label-head classes (B,) of a batch (``stim_label`` -1 -> 0, label i -> 1 + i) and which windows
        count (B,) bool: those without an interaction and those whose frames show the label
        (``stim_evidence``, see WindowDataset; all count without it)."""
        if "stim_label" not in batch:
            raise KeyError(f"aux_label_weight > 0 but the training batch lacks 'stim_label' (has {sorted(batch)})")
        target = batch["stim_label"].to(self.device).long() + 1
        if int(target.min()) < 0 or int(target.max()) >= self.config.aux_label_classes:
            raise ValueError(f"stim_label values {sorted(set((target - 1).tolist()))} do not fit aux_label_classes = "
                             f"{self.config.aux_label_classes} (-1 and 0..{self.config.aux_label_classes - 2})")
        evidence = batch.get("stim_evidence")
        counted = torch.ones_like(target, dtype=torch.bool) if evidence is None else evidence.to(self.device).bool()
        return target, counted | (target == 0)

    def label_logits(self, vl: Tensor, vl_mask: Tensor) -> Tensor:
        """The label head on the mean and the max of the valid VL features (B, N, D) -> (B, classes), of
        the newest frame's tokens only or of all (``aux_label_tokens``); class 0 is "no stimulus label",
        class 1 + i the label i.

        The max matters: a small moving stimulus lights up one or two tokens, and a mean over all of
        them alone left the label at chance (docs/table5.md)."""
        if self.label_head is None:
            raise RuntimeError("this policy has no label head (trained with aux_label_weight = 0)")
        if self.config.aux_label_tokens == "current_frame":  # the turn of a circle lives in these tokens;
            # pooled with the context and text tokens it stayed at chance (docs/table5.md, CW/CCW)
            frame = self.backbone.current_frame_positions()
            vl, vl_mask = vl[:, frame], vl_mask[:, frame]  # (B, n, D)
        m = vl_mask[..., None].to(vl.dtype)
        mean = (vl * m).sum(1) / m.sum(1).clamp_min(1.0)  # (B, D)
        peak = vl.masked_fill(m == 0, float("-inf")).amax(1)  # (B, D)
        return self.label_head(torch.cat([mean, peak], dim=1))

    @torch.no_grad()
    def predict_action_chunk(self, obs: dict[str, Any], seed: int | None = None,
                             rtc: RTCRequest | None = None) -> Tensor:
        """Action chunk (B, H, A), unnormalised, from a window obs (dataset format, uncached); ``rtc``: keep
        it with the previous chunk (real-time chunking, moss_vla/rtc.py)."""
        self._require_stats()
        state = self._check_state(torch.as_tensor(obs["state"]).to(self.device))
        vl, vl_mask = self.encode(torch.as_tensor(obs["image"]), obs["instruction"])
        return self.sample_from_features(vl, vl_mask, state, seed, rtc)

    def sample_from_features(self, vl: Tensor, vl_mask: Tensor, state: Tensor, seed: int | None,
                             rtc: RTCRequest | None = None) -> Tensor:
        """Action chunk (B, H, A), unnormalised, from VL features (:meth:`encode`) and the raw state (B, S);
        ``rtc``: guided towards its prefix, which is normalised here as the head sees actions."""
        guide = None
        if rtc is not None:
            prefix = self.normalizer.normalize("action", torch.from_numpy(rtc.prefix).to(self.device))
            guide = make_guide(rtc, prefix.to(vl.dtype), self.config.action_head.horizon,
                               self.config.action_head.num_inference_steps)
        chunk = self.action_head.sample(vl, vl_mask, self.normalizer.normalize("state", state), seed, guide)
        return self.normalizer.unnormalize("action", chunk)

    # ---- the 10 Hz loop ------------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget the frame window, the cache and the queued actions (call at the start of an episode)."""
        self.cache.reset()
        self._text_cache.clear()  # embeddings depend on the weights, which may have changed since
        self._raw_frames.clear()
        self._actions.clear()
        self._ensembler = None

    @torch.no_grad()
    def select_action(self, obs: dict[str, Any]) -> np.ndarray:
        """obs {"image": (S, S, 3) uint8 newest frame, "state": (S_dim,), "instruction": str} -> (A,).

        Keeps the last T frames itself; replans every ``n_action_steps`` steps and returns the next
        action of the current chunk, or with ``temporal_ensemble_coeff`` set plans every step and returns
        the ensembled action. Every frame is encoded when it arrives (streaming cache).
        """
        self.observe(obs)
        coeff = self.config.temporal_ensemble_coeff
        if coeff is not None:
            if self._ensembler is None:
                self._ensembler = ACTTemporalEnsembler(coeff, self.config.action_head.horizon)
            chunk = torch.from_numpy(self.plan(obs))[None]  # (1, H, A)
            return self._ensembler.update(chunk)[0].numpy().astype(np.float32)
        if not self._actions:
            self._actions.extend(self.plan(obs)[: self.config.n_action_steps])
        return self._actions.popleft().astype(np.float32)

    def _obs_state(self, obs: dict[str, Any]) -> np.ndarray:
        state = np.asarray(obs["state"], dtype=np.float32)
        if state.shape != (self.config.state_dim,):
            raise ValueError(f"select_action expects state ({self.config.state_dim},) (state_dim), got {state.shape}")
        return state

    @torch.no_grad()
    def observe(self, obs: dict[str, Any]) -> None:
        """Check a step's observation and add its frame to the window (every step, in order).

        The first half of :meth:`select_action`; a background planner (robot/chunk_planner.py) calls it
        and :meth:`plan` itself.
        """
        self._require_stats()
        cfg = self.config
        image = np.asarray(obs["image"])
        S = cfg.input_image_size
        if image.shape != (S, S, 3) or image.dtype != np.uint8:
            raise ValueError(f"select_action expects image ({S}, {S}, 3) uint8 (input_image_size), "
                             f"got {image.shape} {image.dtype}")
        self._obs_state(obs)
        pixels = torch.from_numpy(image).to(self.device).permute(2, 0, 1)[None].float() / 255.0  # (1, 3, S, S)
        if cfg.use_cache:
            with autocast(self.device):  # bf16 on a GPU, nothing on the CPU
                self.cache.push(pixels)
        else:
            while len(self._raw_frames) < cfg.n_frames - 1:  # episode start: repeat the first frame
                self._raw_frames.append(pixels)
            self._raw_frames.append(pixels)

    @torch.no_grad()
    def plan(self, obs: dict[str, Any], rtc: RTCRequest | None = None) -> np.ndarray:
        """Action chunk (H, A) float32 for the steps from this one on, from the window :meth:`observe`
        built (its newest frame must be ``obs``'s) and ``obs``'s state and instruction; ``rtc``: kept with
        the previous chunk's remainder (real-time chunking, robot/chunk_planner.py's planner.rtc)."""
        self._require_stats()
        if rtc is not None and rtc.prefix.shape[1] != self.config.action_dim:
            raise ValueError(f"planner.rtc.enabled: the previous chunk has actions of {rtc.prefix.shape[1]} values, "
                             f"the policy's have {self.config.action_dim} (action_dim)")
        state_t = torch.from_numpy(self._obs_state(obs))[None].to(self.device)
        with autocast(self.device):  # bf16 on a GPU, nothing on the CPU
            chunk = self._plan_chunk(obs, state_t, rtc)
        return chunk[0].float().cpu().numpy()

    def _plan_chunk(self, obs: dict[str, Any], state_t: Tensor, rtc: RTCRequest | None = None) -> Tensor:
        cfg = self.config
        if cfg.use_cache:
            instruction = obs["instruction"]
            if instruction not in self._text_cache:
                self._text_cache = {instruction: self._text(instruction, 1)}
            vl, vl_mask = self.cache.vl_features(*self._text_cache[instruction])
            chunk = self.sample_from_features(vl, vl_mask, state_t, cfg.inference_seed, rtc)
        else:
            window = torch.stack(list(self._raw_frames), 1)  # (1, T, 3, S, S)
            chunk = self.predict_action_chunk(
                {"image": window, "state": state_t, "instruction": obs["instruction"]}, cfg.inference_seed, rtc)
        return chunk

    # ---- inference-only speed-ups ----------------------------------------------------------------------
    def fold_for_inference(self) -> None:
        """Fold linear maps in a row inside the temporal module (same function; see temporal_modules)."""
        fold = getattr(self.vision.temporal, "fold_for_inference", None)
        if fold is not None:
            fold()

    # ---- checkpoints -------------------------------------------------------------------------------
    def _weights(self) -> dict[str, Tensor]:
        return {k: v.detach().contiguous() for k, v in self.state_dict().items() if ".folded." not in k}

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write model.safetensors, config.json (resolved config) and stats.json to ``directory``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_file(self._weights(), str(directory / WEIGHTS_NAME))
        (directory / CONFIG_NAME).write_text(json.dumps(self.config.to_dict(), indent=2))
        (directory / STATS_NAME).write_text(json.dumps(self.normalizer.stats_dict(), indent=2))
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path, expected_config: MossVLAConfig | None = None) -> MossVLAPolicy:
        """Load a checkpoint written by :meth:`save_pretrained`.

        ``expected_config``: if given, the checkpoint's config must match it (model-defining fields);
        a mismatch raises an error listing each differing key with expected and actual values.
        """
        directory = Path(directory)
        if (directory / CONFIG_NAME).is_file() and _is_groot_n15(json.loads((directory / CONFIG_NAME).read_text())):
            # model=groot_n15 checkpoints load through the same door
            from moss_vla.groot_n15.policy import GrootN15Policy

            return GrootN15Policy.from_pretrained(directory)
        if (directory / CONFIG_NAME).is_file() and _is_lerobot(directory / CONFIG_NAME):
            # a lerobot policy (ACT, Diffusion Policy, ...) trained by moss-train or lerobot-train: lerobot_adapter.py
            from moss_vla.policy.lerobot_adapter import LeRobotPolicy

            return LeRobotPolicy.from_pretrained(directory)
        for name in (CONFIG_NAME, WEIGHTS_NAME):
            if not (directory / name).is_file():
                raise FileNotFoundError(f"{directory / name} not found: not a MossVLAPolicy checkpoint "
                                        "(save_pretrained writes config.json and model.safetensors)")
        saved = json.loads((directory / CONFIG_NAME).read_text())
        if saved.get("aux_label_classes"):
            saved.setdefault("aux_label_tokens", "all")  # a label head saved before the option pooled every token
        config = MossVLAConfig.from_dict(saved, source=str(directory / CONFIG_NAME))
        if expected_config is not None:
            check_same_architecture(expected_config, config, str(directory))
        policy = cls(config, stats=None, load_pretrained_vision=False)
        policy.load_weights(directory / WEIGHTS_NAME)
        return policy

    def load_weights(self, path: str | Path) -> None:
        """Load a safetensors state dict; names every missing, unexpected or mis-shaped tensor."""
        try:
            state = load_file(str(path))
        except Exception as exc:  # noqa: BLE001 - safetensors' errors do not name the file (a damaged copy)
            raise ValueError(f"{path}: cannot be read as safetensors ({type(exc).__name__}: {exc}); the checkpoint "
                             f"is damaged or incomplete: copy it again or save it anew") from None
        own = self._weights()
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        shapes = [f"{k}: expected {tuple(own[k].shape)}, checkpoint has {tuple(state[k].shape)}"
                  for k in own if k in state and own[k].shape != state[k].shape]
        if missing or unexpected or shapes:
            raise ValueError(f"checkpoint {path} does not fit this policy's config "
                             f"(missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                             f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}, "
                             f"shape mismatches {shapes[:5]})")
        self.load_state_dict(state, strict=False)


ARCH_KEYS_IGNORED = {"variant", "model_size", "inference_seed", "use_cache", "torchscript_sampler", "n_action_steps",
                     "temporal_ensemble_coeff", "aux_label_weight"}


def check_same_architecture(expected: MossVLAConfig, actual: MossVLAConfig, source: str) -> None:
    """Raise ValueError listing each model-defining config key whose value differs."""
    def flat(d: dict, prefix: str = "") -> dict[str, Any]:
        out = {}
        for k, v in d.items():
            if isinstance(v, dict):
                out.update(flat(v, f"{prefix}{k}."))
            else:
                out[f"{prefix}{k}"] = v
        return out

    e, a = flat(expected.to_dict()), flat(actual.to_dict())
    diffs = [f"{k}: expected {e[k]!r}, checkpoint has {a.get(k)!r}" for k in sorted(e)
             if k not in ARCH_KEYS_IGNORED and k != "vision.pretrained_path" and e[k] != a.get(k)]
    if diffs:
        raise ValueError(f"checkpoint {source} was trained with another config: " + "; ".join(diffs))


def _is_groot_n15(cfg: Any) -> bool:
    from moss_vla.groot_n15.configuration import is_groot_n15  # imported here: groot_n15 imports this package

    return is_groot_n15(cfg)


def _is_lerobot(config_json: Path) -> bool:
    from moss_vla.policy.lerobot_adapter import is_lerobot_checkpoint

    try:
        return is_lerobot_checkpoint(json.loads(config_json.read_text()))
    except ValueError:  # not JSON: the MossVLAPolicy path below names the file
        return False


def make_policy(cfg_policy: Any, cfg_model: Any, stats: dict[str, Any] | None = None) -> MossVLAPolicy:
    """Build a policy from the hydra groups ``policy`` and ``model`` and the dataset statistics
    (``model=groot_n15``: the bridge to the real GR00T N1.5, moss_vla/groot_n15/; ``policy=act|diffusion``, a
    ``lerobot:`` block: one of lerobot's policies, moss_vla/policy/lerobot_adapter.py)."""
    if cfg_policy.get("lerobot"):
        from moss_vla.policy.lerobot_adapter import LeRobotPolicy

        return LeRobotPolicy.from_hydra(cfg_policy, cfg_model, stats)
    if _is_groot_n15(cfg_model):
        from moss_vla.groot_n15.policy import GrootN15Config, GrootN15Policy

        return GrootN15Policy(GrootN15Config.from_hydra(cfg_policy, cfg_model), stats)
    return MossVLAPolicy(MossVLAConfig.from_hydra(cfg_policy, cfg_model), stats)
