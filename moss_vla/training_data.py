"""The training and validation windows of one or more episode stores, and their pooled statistics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import ConcatDataset, Dataset

from moss_vla.episodes import StoreError


def _store_paths(paths: Any) -> list[Path]:
    if isinstance(paths, str | Path):
        paths = [paths]
    out = [Path(p).expanduser() for p in paths]
    if not out:
        raise ValueError("data.paths is empty: give at least one episode store, e.g. data.paths=[data/x.zarr]")
    for p in out:
        if not p.exists():
            raise FileNotFoundError(f"data.paths: episode store {p} does not exist (collect one with "
                                    f"`moss-sim collect` or record with `moss-record`)")
    return out


def pool_stats(parts: list[tuple[dict[str, dict[str, list]], int]]) -> dict[str, dict[str, list]]:
    """Combine per-store mean/std/min/max weighted by frame counts (exact pooled variance)."""
    if len(parts) == 1:
        return parts[0][0]
    out: dict[str, dict[str, list]] = {}
    for key in parts[0][0]:
        n = np.array([c for _, c in parts], dtype=np.float64)[:, None]
        mean = np.array([s[key]["mean"] for s, _ in parts])
        var = np.array([s[key]["std"] for s, _ in parts]) ** 2
        m = (n * mean).sum(0) / n.sum()
        v = (n * (var + (mean - m) ** 2)).sum(0) / n.sum()
        out[key] = {"mean": m.tolist(), "std": np.sqrt(v).tolist(),
                    "min": np.min([s[key]["min"] for s, _ in parts], 0).tolist(),
                    "max": np.max([s[key]["max"] for s, _ in parts], 0).tolist()}
    return out


def build_datasets(cfg: DictConfig, n_frames: int, horizon: int) -> tuple[Dataset, Dataset | None, dict]:
    """Windows of `n_frames` frames and `horizon` actions over every store in `cfg.data.paths`, split by
    episode per store (`cfg.dataset.val_fraction`, `split_seed`); statistics pooled over training episodes."""
    from moss_vla.episodes import WindowDataset

    ds_cfg = OmegaConf.merge(cfg.dataset, {"n_frames": int(n_frames), "horizon": int(horizon)})
    if not cfg.policy.get("aux_label_weight", 0):  # the evidence only gates the label loss: do not require it
        ds_cfg.label_evidence = None
    trains, vals, parts = [], [], []
    for path in _store_paths(cfg.data.paths):
        try:
            train, val, stats = WindowDataset.from_config(ds_cfg, path)
        except StoreError as e:
            raise StoreError(f"data.paths: {e} (run `moss-data check {path}`)") from e
        trains.append(train)
        if val is not None:
            vals.append(val)
        parts.append((stats, len(train)))
    stats = pool_stats(parts)
    return (ConcatDataset(trains) if len(trains) > 1 else trains[0],
            (ConcatDataset(vals) if len(vals) > 1 else vals[0]) if vals else None,
            stats)


def label_classes(paths: Any) -> int:
    """1 + the number of stimulus labels of the episodes in the stores (the auxiliary label head's
    classes); every episode must have the same ``label_names`` (the stim_label indices mean the same)."""
    from moss_vla.episodes import EpisodeStore

    names: dict[tuple[str, ...], str] = {}
    for path in _store_paths(paths):
        for i, meta in enumerate(EpisodeStore(path).episode_metas):
            names.setdefault(tuple(meta.get("label_names") or ()), f"{path} episode {i}")
    if len(names) != 1 or not next(iter(names)):
        raise ValueError("policy.aux_label_weight > 0 needs episodes whose label_names are all the same and not "
                         f"empty; found {', '.join(f'{list(k)} ({v})' for k, v in names.items())}")
    return 1 + len(next(iter(names)))

