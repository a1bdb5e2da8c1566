"""Normalisation statistics of state and action, computed once on the training episodes and saved.

The dataset returns raw values; the policy applies the normalisation. The saved JSON records which
store and which episodes the statistics came from, so a stale file is recomputed, not reused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from moss_vla.episodes.store import EpisodeStore

log = logging.getLogger(__name__)
STATS_KEYS = ("state", "action")


def compute_stats(store: EpisodeStore, episodes: Sequence[int] | None = None) -> dict[str, dict[str, list]]:
    """Per-dimension mean / std / min / max of state and action over the given episodes' frames."""
    episodes = list(range(store.n_episodes)) if episodes is None else list(episodes)
    if not episodes:
        raise ValueError(f"{store.path}: no episodes to compute normalisation statistics from")
    out: dict[str, dict[str, list]] = {}
    for key in STATS_KEYS:
        full = store.read(key)
        x = np.concatenate([full[store.episode_slice(i)] for i in episodes]).astype(np.float64)
        out[key] = {"mean": x.mean(0).tolist(), "std": x.std(0).tolist(),
                    "min": x.min(0).tolist(), "max": x.max(0).tolist()}
    return out


def _fingerprint(store: EpisodeStore, episodes: Sequence[int]) -> str:
    """Identifies the frames the statistics cover: which store, the episodes chosen and where they end
    (the store matters: two stores of equal layout, or one ``stats_path`` shared by several, must not
    share statistics)."""
    ends = [int(store.episode_ends[i]) for i in episodes]
    key = [str(Path(store.path).resolve()), list(map(int, episodes)), ends]
    return hashlib.sha1(json.dumps(key).encode()).hexdigest()


def save_stats(path: str | os.PathLike, stats: dict[str, Any], source: dict[str, Any] | None = None) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(p.suffix + ".tmp")
    tmp.write_text(json.dumps({"stats": stats, "source": source or {}}, indent=1))
    os.replace(tmp, p)


def load_stats(path: str | os.PathLike) -> dict[str, dict[str, list]]:
    """The `{"state": {...}, "action": {...}}` dict saved by save_stats."""
    return json.loads(Path(path).read_text())["stats"]


def default_stats_path(store_path: str | os.PathLike) -> Path:
    """Next to the data inside the store directory (zarr ignores files it does not know)."""
    return Path(store_path) / "norm_stats.json"


def load_or_compute_stats(
    store: EpisodeStore, episodes: Sequence[int], path: str | os.PathLike | None = None
) -> dict[str, dict[str, list]]:
    """Reuse the saved statistics if they cover exactly these episodes, else compute and save them."""
    path = default_stats_path(store.path) if path is None else Path(path)
    fp = _fingerprint(store, episodes)
    if path.is_file():
        try:
            saved = json.loads(path.read_text())
            if saved.get("source", {}).get("fingerprint") == fp:
                return saved["stats"]
            log.info("%s: statistics are for other episodes; recomputing", path)
        except (json.JSONDecodeError, KeyError) as exc:
            log.warning("%s: unreadable statistics (%s); recomputing", path, exc)
    stats = compute_stats(store, episodes)
    source = {"store": str(store.path), "episodes": [int(e) for e in episodes], "fingerprint": fp}
    try:
        save_stats(path, stats, source)
    except OSError as exc:  # a read-only dataset still trains; it just recomputes next time
        log.warning("could not save normalisation statistics to %s: %s", path, exc)
    return stats
