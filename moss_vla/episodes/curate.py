"""Curation: drop episodes from a store (`moss-data drop`, moss-record's discard key).

Why a rewrite and not an exclusion mask: the store's one invariant is that what is committed is the data
(data/README.md). A mask in the metadata would have to be honoured by every reader, ours of every version and
anyone reading the diffusion_policy layout directly, and a reader that missed it would train on the dropped
episodes without a word. So a drop leaves a store in which the dropped episodes are gone, and the cost is
paid where the layout puts it: the frames after the first dropped episode.

- Dropping the last episodes (`EpisodeWriter.drop_last`) moves the commit point back with one atomic
  metadata write and truncates their frames: instant, in place.
- Dropping earlier episodes builds the new store beside the old one, `<store>.repairing-<pid>`, as a
  hard-linked clone (zarr writes every file as a new file renamed into place, so the clone never changes
  the original's files), truncates the clone to the episodes before the first dropped one and appends the
  kept later ones through the ordinary `EpisodeWriter`. Only then, under the original's writer lock the whole
  time, the original is renamed aside and the clone into its place (the same two renames, and the same
  recovery by the next `moss-data repair` / drop after a kill between them, as `repair --drop-damaged`).
  A kill at any moment before the swap leaves the original untouched.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from moss_vla.episodes.normalization import default_stats_path
from moss_vla.episodes.repair import DONE_MARKER, copy_episodes, finish_interrupted_repair, finish_swap
from moss_vla.episodes.store import LOCK_NAME, EpisodeStore, StoreError, writer_lock
from moss_vla.episodes.writer import EpisodeWriter


def parse_where(exprs: Iterable[str]) -> dict[str, Any]:
    """`key=value` filters on the episode metadata (value read as JSON when it parses: success=false,
    seed=3, operator=alice)."""
    out: dict[str, Any] = {}
    for e in exprs:
        key, sep, raw = e.partition("=")
        if not sep or not key:
            raise ValueError(f"--where {e!r}: expected key=value on the episode metadata, e.g. success=false")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


def select_episodes(store: EpisodeStore, indices: Iterable[int] = (), where: dict[str, Any] | None = None) -> list[int]:
    """The episodes named by index (negative counts from the end) plus those whose metadata matches every
    `where` filter; an index out of range or a filter key no episode has is an error naming it."""
    n = store.n_episodes
    chosen = set()
    for i in indices:
        if not -n <= int(i) < n:
            raise IndexError(f"{store.path}: episode {i} out of range, the store has {n} episodes (0..{n - 1})")
        chosen.add(int(i) % n)
    if where:
        metas = store.episode_metas
        for key in where:
            if not any(key in m for m in metas):
                raise ValueError(f"{store.path}: no episode has the metadata key {key!r} (moss-data info --json "
                               f"shows the keys)")
        chosen |= {i for i, m in enumerate(metas) if all(m.get(k) == v for k, v in where.items())}
    return sorted(chosen)


def _clone(src: Path, dst: Path) -> None:
    """Hard-linked copy of a store directory (plain copies where links are refused), without its lock and its
    normalisation statistics."""
    skip = {src / LOCK_NAME, default_stats_path(src)}
    for dirpath, _, files in os.walk(src):
        d = Path(dirpath)
        out = dst / d.relative_to(src)
        out.mkdir(parents=True, exist_ok=True)
        for f in files:
            if d / f in skip:
                continue
            try:
                os.link(d / f, out / f)
            except OSError:
                shutil.copy2(d / f, out / f)


def drop_episodes(path: str | os.PathLike, drop: Iterable[int], keep_backup: bool = False) -> dict[str, Any]:
    """Remove the committed episodes `drop` (indices of the store as it is) from the store at `path`, crash-safe
    (module docstring). Returns a report: dropped indices and their seeds, episodes kept, how (in place or
    rewritten), the frames rewritten and, with keep_backup, where the old store is kept."""
    path = Path(path)
    finished = finish_interrupted_repair(path)
    store = EpisodeStore(path)
    n = store.n_episodes
    drop = sorted({int(i) for i in drop})
    for i in drop:
        if not 0 <= i < n:
            raise IndexError(f"{path}: episode {i} out of range, the store has {n} episodes (0..{n - 1})")
    report: dict[str, Any] = {"path": str(path), "dropped": drop,
                              "dropped_seeds": [store.episode_meta(i).get("seed") for i in drop],
                              "kept": n - len(drop), "finished_interrupted": finished}
    if not drop:
        return {**report, "how": "nothing to drop"}
    first = drop[0]
    if drop == list(range(first, n)):  # a tail: move the commit point back
        with EpisodeWriter(path, image_shape=tuple(store.meta["image_shape"])) as w:
            if w.n_episodes != n:
                raise StoreError(f"{path}: changed while dropping (another writer?); run the drop again")
            w.drop_last(n - first)
        return {**report, "how": "in place (the last episodes)", "frames_rewritten": 0}
    later = [i for i in range(first + 1, n) if i not in drop]
    tmp = path.parent / f"{path.name}.repairing-{os.getpid()}"
    with writer_lock(path):
        src = EpisodeStore(path)  # again, under the lock: what is dropped is what the caller saw
        if src.n_episodes != n:
            raise StoreError(f"{path}: changed while dropping (another writer?); run the drop again")
        shutil.rmtree(tmp, ignore_errors=True)
        _clone(path, tmp)
        with EpisodeWriter(tmp, image_shape=tuple(src.meta["image_shape"])) as w:
            w.drop_last(n - first)
            copy_episodes(src, later, w)
        backup = path.parent / f"{path.name}.dropped-{time.strftime('%Y%m%d_%H%M%S')}-{os.getpid()}"
        # the marker names the backup: after a kill past the swap the next drop / repair removes it unless kept
        (tmp / DONE_MARKER).write_text(json.dumps({"source": str(path), "dropped": drop, "kept": n - len(drop),
                                                   "backup": backup.name, "keep_backup": bool(keep_backup)}))
        os.rename(path, backup)
        os.rename(tmp, path)
    finish_swap(path)  # the backup unless kept, then the marker
    return {**report, "how": "rewritten from the first dropped episode",
            "frames_rewritten": int(sum(src.episode_lengths[later])),
            "backup": str(backup) if keep_backup else None}
