"""Training windows over an episode store: T past frames, the state now, the next H actions.

Item for global step i of an episode [s, e):
  image (T, 3, H, W) float32 in [0, 1]: frames i-T+1 .. i; before s the frame s is repeated and
      `image_is_pad` marks the repeats (T = 8 at 10 FPS for the multi-frame policy, 1 single-frame);
  state (8,) at i (states (T, 8): at the window's frames, padded as they are); action (H, 8) for steps
      i .. i+H-1, past e-1 the last action is repeated and
      `action_is_pad` marks it (H = 16); instruction, task, episode, index;
  stim_label at i (-1: no interaction) and stim_evidence: whether at least `label_evidence.min_frames`
      of the window's own frames show the stimulus in one of `label_evidence.phases` (always True
      without a label_evidence config), i.e. whether the display in this window can tell the label.
Small arrays (state, action) are cached in RAM; images are read per window from a zarr handle
opened lazily in each process, so DataLoader workers (num_workers > 0) each get their own.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from moss_vla.episodes.store import EpisodeStore, FrameChunkReader


@dataclass
class AugmentConfig:
    """Training-window augmentation, one draw per window: image jitter and shift (all T frames get the
    same, so the motion between frames is untouched) and noise on the state input."""

    enabled: bool = False
    brightness: float = 0.0  # factor drawn from [1 - b, 1 + b]
    contrast: float = 0.0
    saturation: float = 0.0
    hue: float = 0.0  # shift drawn from [-h, h], at most 0.5
    max_shift_px: int = 0  # random translation by up to this many pixels (replicate-padded crop)
    # Gaussian noise (std, rad) on the joint positions of the state input, the first state_noise_dims
    # state dims; action targets stay as demonstrated, so the policy sees how to get back to them from
    # states a little off the demonstrated path (where its own errors take it in closed loop)
    state_noise: float = 0.0
    state_noise_dims: int = 7

    @classmethod
    def from_any(cls, cfg: Any) -> AugmentConfig:
        if cfg is None:
            return cls()
        if isinstance(cfg, cls):
            return cfg
        known = {f.name for f in fields(cls)}
        items = dict(cfg.items())
        unknown = sorted(set(items) - known)
        if unknown:
            raise ValueError(f"augmentation: unknown keys {unknown}; known: {sorted(known)}")
        return cls(**items)


# RGB <-> YIQ: a hue shift is a rotation of the (I, Q) chroma plane, so brightness, saturation and hue
# together are one 3x3 colour matrix. torchvision's adjust_hue goes through HSV and costs ~100x more
# on an (8, 3, 224, 224) window, which would make augmentation the bottleneck of CPU training.
_RGB2YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_YIQ2RGB = torch.linalg.inv(_RGB2YIQ)
_GRAY = _RGB2YIQ[0]  # luma weights (ITU-R 601), as torchvision's rgb_to_grayscale


def colour_matrix(brightness: float, saturation: float, hue: float) -> torch.Tensor:
    """3x3 matrix: scale by `brightness`, blend with grey by `saturation`, rotate hue by `hue` turns."""
    theta = -2 * torch.pi * hue  # sign: same direction as torchvision's adjust_hue
    c, s = float(np.cos(theta)), float(np.sin(theta))
    rot = torch.tensor([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])
    sat = saturation * torch.eye(3) + (1 - saturation) * torch.ones(3, 1) * _GRAY[None, :]
    return brightness * (_YIQ2RGB @ rot @ _RGB2YIQ) @ sat


def shift_edge(raw: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """Translate (T, H, W, C) frames by (dy, dx) pixels, replicating the edge (crop one side, pad the
    other): out[:, y, x] = raw[:, clip(y + dy), clip(x + dx)]."""
    _, h, w, _ = raw.shape
    crop = raw[:, max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)]
    return np.pad(crop, ((0, 0), (max(-dy, 0), max(dy, 0)), (max(-dx, 0), max(dx, 0)), (0, 0)), mode="edge")


def to_float_chw(raw: np.ndarray) -> torch.Tensor:
    """(T, H, W, 3) uint8 -> (T, 3, H, W) float32 in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(raw)).permute(0, 3, 1, 2).float().div_(255.0)


def augment_window(raw: np.ndarray, cfg: AugmentConfig, gen: torch.Generator | None = None) -> torch.Tensor:
    """(T, H, W, 3) uint8 -> (T, 3, H, W) float32 in [0, 1] with a random shift and colour jitter drawn
    once for the whole window.

    The shift runs on the uint8 frames; brightness, saturation, hue and contrast fold into one affine
    colour map (contrast blends with each frame's mean grey, a linear function of its mean colour), so
    the float window is touched by one matrix product and one clamp.
    """

    def uniform(lo: float, hi: float) -> float:
        return float(lo + (hi - lo) * torch.rand((), generator=gen))

    def factor(amount: float) -> float:
        return uniform(max(0.0, 1 - amount), 1 + amount) if amount > 0 else 1.0

    if cfg.max_shift_px > 0:
        p = int(cfg.max_shift_px)
        dy, dx = (int(v) - p for v in torch.randint(0, 2 * p + 1, (2,), generator=gen))
        if dy or dx:
            raw = shift_edge(raw, dy, dx)
    b, sat, con = factor(cfg.brightness), factor(cfg.saturation), factor(cfg.contrast)
    hue = uniform(-cfg.hue, cfg.hue) if cfg.hue > 0 else 0.0
    if (b, sat, hue, con) == (1.0, 1.0, 0.0, 1.0):
        return to_float_chw(raw)
    t, h, w, ch = raw.shape
    x = torch.from_numpy(np.ascontiguousarray(raw)).reshape(t, h * w, ch).float().div_(255.0)  # (T, HW, 3)
    m = colour_matrix(b, sat, hue)
    grey_mean = (x.mean(1) @ m.T) @ _GRAY  # (T,) mean grey of each jittered frame
    y = x @ (con * m).T  # (T, HW, 3)
    y += ((1 - con) * grey_mean)[:, None, None]
    return y.clamp_(0.0, 1.0).reshape(t, h, w, ch).permute(0, 3, 1, 2)


@dataclass
class LabelEvidence:
    """When a window's frames show its stimulus label: at least ``min_frames`` of them in one of
    ``phases`` (the episodes' phase_names). For the auxiliary label loss: a CW/CCW circle at rest after
    its motion shows no direction, so its label there is not trained (a pixel-identical window of a
    still circle would be asked for both turns)."""

    phases: tuple[str, ...] = ("moving", "flying")
    min_frames: int = 3

    @classmethod
    def from_any(cls, cfg: Any) -> LabelEvidence | None:
        if cfg is None or isinstance(cfg, LabelEvidence):
            return cfg
        d = dict(cfg)
        bad = sorted(set(d) - {f.name for f in fields(cls)})
        if bad:
            raise ValueError(f"unknown label_evidence key(s) {bad}; known: phases, min_frames")
        out = cls(tuple(d.get("phases", cls.phases)), int(d.get("min_frames", cls.min_frames)))
        if out.min_frames < 1 or not out.phases:
            raise ValueError(f"label_evidence needs phases and min_frames >= 1, got {out}")
        return out


def split_episodes(n_episodes: int, val_fraction: float, seed: int = 0) -> tuple[list[int], list[int]]:
    """Deterministic train/validation split by episode. At least one validation episode whenever
    val_fraction > 0 and there are two or more episodes."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    order = np.random.default_rng(seed).permutation(n_episodes)
    n_val = round(n_episodes * val_fraction)
    if val_fraction > 0 and n_val == 0 and n_episodes >= 2:
        n_val = 1
    val, train = sorted(order[:n_val].tolist()), sorted(order[n_val:].tolist())
    return train, val


class WindowDataset(Dataset):
    """One item per frame of the selected episodes (see the module docstring)."""

    def __init__(
        self,
        path: str | os.PathLike,
        episodes: Sequence[int] | None = None,
        n_frames: int = 8,
        horizon: int = 16,
        augment: AugmentConfig | dict | None = None,
        label_evidence: LabelEvidence | dict | None = None,
    ) -> None:
        if n_frames < 1 or horizon < 1:
            raise ValueError(f"n_frames and horizon must be >= 1, got {n_frames}, {horizon}")
        self.path = Path(path)
        self.n_frames, self.horizon = int(n_frames), int(horizon)
        self.augment = AugmentConfig.from_any(augment)
        store = EpisodeStore(self.path)
        self.episodes = list(range(store.n_episodes)) if episodes is None else sorted(int(e) for e in episodes)
        bad = [e for e in self.episodes if not 0 <= e < store.n_episodes]
        if bad:
            raise IndexError(f"{self.path}: episodes {bad} do not exist (the store has {store.n_episodes})")
        self.image_shape = tuple(store.meta["image_shape"])
        self.fps = store.fps
        # RAM cache of the small arrays (a few MB even for hours of data)
        self._state = store.read("state")
        self._action = store.read("action")
        self._stim_label = store.read("stim_label")  # (auxiliary label loss: the newest frame's label)
        self._starts = store.episode_starts.copy()
        self._ends = store.episode_ends.copy()
        metas = store.episode_metas
        self._instruction = [m["instruction"] for m in metas]
        self._task = [m["task"] for m in metas]
        lengths = [int(self._ends[e] - self._starts[e]) for e in self.episodes]
        self._frame = np.concatenate([np.arange(self._starts[e], self._ends[e]) for e in self.episodes]
                                     ) if self.episodes else np.zeros(0, np.int64)
        self._episode = np.repeat(np.array(self.episodes, dtype=np.int64), lengths)
        self.label_evidence = LabelEvidence.from_any(label_evidence)
        if self.label_evidence is not None and self.label_evidence.min_frames > self.n_frames:
            # e.g. the single-frame groot baseline: its label loss then trains "none" only; legitimate, but say so
            warnings.warn(f"{self.path}: label_evidence.min_frames={self.label_evidence.min_frames} > the window's "
                          f"{self.n_frames} frame(s): no labelled window counts, so the label loss learns only 'no "
                          "interaction' (set dataset.label_evidence.min_frames <= n_frames, or "
                          "dataset.label_evidence=null to count every window)", stacklevel=2)
        self._evidence = (None if self.label_evidence is None  # (frames in store,) bool
                          else self._label_evidence(store, self.label_evidence))
        self._images = None  # FrameChunkReader (or zarr array), opened lazily per process

    def _label_evidence(self, store: EpisodeStore, ev: LabelEvidence) -> np.ndarray:
        """Per store frame i: do the window's frames max(s, i-T+1) .. i hold >= min_frames evidence frames?"""
        phase = store.read("stim_phase")
        out = np.zeros(len(phase), bool)
        for e in self.episodes:
            names = list(store.episode_metas[e].get("phase_names") or [])
            ids = [names.index(p) for p in ev.phases if p in names]
            if not ids:
                raise ValueError(f"{self.path} episode {e}: none of the label_evidence phases {list(ev.phases)} is "
                                 f"among its phase_names {names}; set dataset.label_evidence.phases to the phases "
                                 "in which the display shows the label (or dataset.label_evidence=null: every frame)")
            s, end = int(self._starts[e]), int(self._ends[e])
            count = np.concatenate([[0], np.cumsum(np.isin(phase[s:end], ids))])  # evidence frames before t
            t = np.arange(end - s)
            out[s:end] = count[t + 1] - count[np.maximum(t + 1 - self.n_frames, 0)] >= ev.min_frames
        return out

    def __len__(self) -> int:
        return len(self._frame)

    @property
    def frames(self) -> np.ndarray:
        """(N,) store-wide index of each item's newest frame (item k's ``index``), without reading images."""
        return self._frame

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_images"] = None  # each DataLoader worker opens its own handle
        return state

    def _read_images(self, frames: np.ndarray) -> np.ndarray:
        """(T, H, W, 3) uint8 for global frame indices (repeats allowed)."""
        if self._images is None:
            store = EpisodeStore(self.path)
            self._images = store.frame_reader("image") or store.arrays["image"]
        if isinstance(self._images, FrameChunkReader):
            return self._images.read(frames)
        first = int(frames[0])
        raw = self._images[first:int(frames[-1]) + 1]  # one contiguous read through zarr
        return raw[frames - first]  # repeat the first frame where padded

    def window_indices(self, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Frame indices (T,) with pad mask and action indices (H,) with pad mask for item k."""
        i, e = int(self._frame[k]), int(self._episode[k])
        s, end = int(self._starts[e]), int(self._ends[e])
        frames = np.arange(i - self.n_frames + 1, i + 1)
        image_pad = frames < s
        actions = np.arange(i, i + self.horizon)
        action_pad = actions >= end
        return np.maximum(frames, s), image_pad, np.minimum(actions, end - 1), action_pad

    def __getitem__(self, k: int) -> dict[str, Any]:
        if not -len(self) <= k < len(self):
            raise IndexError(f"window {k} out of range ({len(self)} windows)")
        k %= len(self)
        frames, image_pad, actions, action_pad = self.window_indices(k)
        raw = self._read_images(frames)  # (T, H, W, 3) uint8
        images = augment_window(raw, self.augment) if self.augment.enabled else to_float_chw(raw)
        i, e = int(self._frame[k]), int(self._episode[k])
        state = torch.from_numpy(self._state[i].copy())  # (8,)
        if self.augment.enabled and self.augment.state_noise > 0:
            n = self.augment.state_noise_dims
            state[:n] += self.augment.state_noise * torch.randn(state[:n].shape, dtype=state.dtype)
        return {
            "image": images,  # (T, 3, H, W)
            "image_is_pad": torch.from_numpy(image_pad),  # (T,)
            "state": state,
            "states": torch.from_numpy(self._state[frames]),  # (T, 8) at the window's frames (lerobot's history)
            "action": torch.from_numpy(self._action[actions]),  # (H, 8)
            "action_is_pad": torch.from_numpy(action_pad),  # (H,)
            "stim_label": int(self._stim_label[i]),  # -1: no interaction in progress
            "stim_evidence": True if self._evidence is None else bool(self._evidence[i]),
            "instruction": self._instruction[e],
            "task": self._task[e],
            "episode": e,
            "index": i,
        }

    @classmethod
    def from_config(
        cls, cfg: Any, path: str | os.PathLike | None = None
    ) -> tuple[WindowDataset, WindowDataset | None, dict[str, dict[str, list]]]:
        """Train and validation datasets (validation: no augmentation; None if val_fraction is 0) and
        the normalisation statistics of the training episodes, from a `configs/dataset` node."""
        from moss_vla.episodes.normalization import load_or_compute_stats

        path = Path(path if path is not None else cfg.path)
        store = EpisodeStore(path)
        train_eps, val_eps = split_episodes(store.n_episodes, float(cfg.val_fraction), int(cfg.split_seed))
        if not train_eps:
            raise ValueError(f"{path}: no training episodes (the store has {store.n_episodes})")
        def option(key: str) -> Any:  # a DictConfig / dict node or an object with attributes
            return cfg.get(key) if hasattr(cfg, "get") else getattr(cfg, key, None)

        aug, evidence = option("augment"), option("label_evidence")
        train = cls(path, train_eps, cfg.n_frames, cfg.horizon, augment=aug, label_evidence=evidence)
        val = (cls(path, val_eps, cfg.n_frames, cfg.horizon, augment=None, label_evidence=evidence)
               if val_eps else None)
        stats_path = cfg.get("stats_path") if hasattr(cfg, "get") else None
        stats = load_or_compute_stats(store, train_eps, stats_path)
        return train, val, stats
