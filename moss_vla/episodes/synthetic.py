"""Deterministic synthetic episodes: a function of a seed, so tests and benchmarks can write a store
and later check every byte that comes back (crash test, window dataset, export)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from moss_vla.episodes.writer import EpisodeWriter

LABELS = ["left", "right"]
PHASES = ["idle", "moving", "respond"]


def synthetic_episode(seed: int, length: int | None = None, image_shape: tuple[int, int, int] = (16, 16, 3),
                      t0: float = 0.0) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Episode metadata and per-frame arrays (the add_frame keywords, stacked in time) for `seed`."""
    rng = np.random.default_rng(seed)
    n = int(length) if length is not None else int(rng.integers(2, 9))
    h, w, _ = image_shape
    # a bright square moving across a noisy background: compressible, and images differ per frame
    image = rng.integers(0, 40, size=(n, *image_shape), dtype=np.uint8)
    xs = np.linspace(0, max(w - 4, 0), n).astype(int)
    for t, x in enumerate(xs):
        image[t, h // 2 - 2:h // 2 + 2, x:x + 4] = 255
    state = rng.normal(size=(n, 8)).astype(np.float32)
    action = (state + rng.normal(scale=0.01, size=(n, 8))).astype(np.float32)
    frames = {
        "image": image,
        "state": state,
        "action": action,
        "timestamp": t0 + np.arange(n) * 0.1 + rng.uniform(0, 0.002, n),
        "stim_label": rng.integers(-1, len(LABELS), n).astype(np.int16),
        "stim_phase": rng.integers(0, len(PHASES), n).astype(np.int8),
        "stim_xy": rng.uniform(0, 1, (n, 2)).astype(np.float32),
        "stim_interaction": rng.integers(-1, 3, n).astype(np.int16),
        "stim_time_to_deadline": rng.uniform(0, 2, n).astype(np.float32),
    }
    task = ["movesense_lr", "pong_predict"][seed % 2]
    meta = {
        "task": task,
        "instruction": f"synthetic instruction for {task}",
        "seed": int(seed),
        "operator": "synthetic",
        "teleop": "none",
        "label_names": LABELS,
        "phase_names": PHASES,
    }
    return meta, frames


def write_episode(writer: EpisodeWriter, meta: dict[str, Any], frames: dict[str, np.ndarray],
                  extra_meta: dict[str, Any] | None = None) -> int:
    """start_episode + add_frame per frame + commit; returns the episode index."""
    writer.start_episode(meta)
    for t in range(len(frames["image"])):
        writer.add_frame(**{k: v[t] for k, v in frames.items()})
    return writer.commit(extra_meta)


def make_synthetic_store(path: str | os.PathLike, n_episodes: int, length: int | None = None,
                         image_shape: tuple[int, int, int] = (16, 16, 3), first_seed: int = 0) -> list[int]:
    """Create (or append to) a store with n synthetic episodes; returns their seeds."""
    seeds = list(range(first_seed, first_seed + n_episodes))
    with EpisodeWriter(path, image_shape=image_shape,
                       store_meta={"camera": {"name": "synthetic", "raw_size": list(image_shape[:2])}}) as w:
        for s in seeds:
            meta, frames = synthetic_episode(s, length, image_shape)
            write_episode(w, meta, frames, {"success": bool(s % 3)})
    return seeds
