"""`moss-data repair --drop-damaged`: write a damaged store again without its damaged episodes.

`moss-data check` names the episodes that hold a damaged chunk (missing, truncated, failing its checksum).
Their frames cannot be trusted, and neither can the others' if the store is rewritten in place, so the
good episodes are copied, through the ordinary `EpisodeWriter` (validated, committed one by one), into
`<store>.repairing-<pid>` while the store's writer lock keeps other writers out. Only then is the
damaged store renamed to `<store>.damaged-<time>` (kept: nothing is deleted) and the copy renamed into
its place. Crash-safe: a kill during the copy leaves the original untouched (the next repair removes the
stale copy); a kill between the two renames leaves a finished copy (marked by `repair_done.json`) that
the next `moss-data repair` moves into place.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from moss_vla.episodes.schema import RESERVED_EPISODE_KEYS
from moss_vla.episodes.store import CHUNKS_ATTR, EpisodeStore, StoreError, writer_lock
from moss_vla.episodes.writer import EpisodeWriter, _pid_alive

DONE_MARKER = "repair_done.json"
WRITER_KEYS = ("format", "schema_version", "image_shape", "keys", CHUNKS_ATTR)  # set by EpisodeWriter itself


def finish_swap(path: Path) -> str | None:
    """The end of a swap (the new store is in place at `path`, its `DONE_MARKER` still in it): remove the
    old store the marker names as a backup not to keep (`moss-data drop` without --keep-backup; never the
    only copy: the finished new store is in place), then the marker. Returns what it removed, if anything."""
    marker = path / DONE_MARKER
    try:
        info = json.loads(marker.read_text())
    except FileNotFoundError:
        return None
    except ValueError:
        info = {}  # unreadable: keep whatever backup there is
    name = info.get("backup") if isinstance(info, dict) else None
    removed = None
    if (isinstance(name, str) and Path(name).name == name and name.startswith(f"{path.name}.dropped-")
            and info.get("keep_backup") is False and (path.parent / name).exists()):
        shutil.rmtree(path.parent / name, ignore_errors=True)
        removed = name
    marker.unlink(missing_ok=True)
    return removed


def finish_interrupted_repair(path: str | os.PathLike) -> str | None:
    """Complete a repair or drop killed between its two renames or after them (removing the old store a drop
    was to delete), and remove copies of repairs killed earlier. Returns what it did (None: nothing to do)."""
    path = Path(path)
    done = None
    for tmp in sorted(path.parent.glob(f"{path.name}.repairing-*")):
        if (tmp / DONE_MARKER).is_file() and not path.exists():
            os.rename(tmp, path)
            done = f"{path}: finished an interrupted repair (moved {tmp.name} into place)"
        elif not _pid_alive(tmp.name.rsplit("-", 1)[-1]):
            shutil.rmtree(tmp, ignore_errors=True)
    if path.is_dir() and (removed := finish_swap(path)):
        done = f"{done or f'{path}: finished an interrupted drop'}; removed the old store {removed}"
    return done


def copy_episodes(src: EpisodeStore, indices: list[int], writer: EpisodeWriter) -> None:
    """Append episodes `indices` of `src` to `writer`, each validated and committed like a recording."""
    small = [k for k in src.keys if k != "image"]
    for i in indices:
        sl = src.episode_slice(i)
        try:
            data = {k: src.arrays[k][sl] for k in small}
            images = src.read_frames(np.arange(sl.start, sl.stop))
        except Exception as exc:  # noqa: BLE001 - damage check missed: stop, the original is untouched
            raise StoreError(f"{src.path}: episode {i} cannot be read ({exc}); run `moss-data check {src.path}` "
                             f"and pass its damaged episodes") from None
        writer.start_episode({k: v for k, v in src.episode_meta(i).items() if k not in RESERVED_EPISODE_KEYS})
        for j in range(sl.stop - sl.start):
            writer.add_frame(images[j], **{k: data[k][j] for k in small})
        writer.commit()


def drop_damaged(path: str | os.PathLike, damaged: set[int]) -> dict[str, Any]:
    """Rewrite the store at `path` without the episodes `damaged` (see module docstring); returns a report."""
    path = Path(path)
    finish_interrupted_repair(path)
    with writer_lock(path):
        src = EpisodeStore(path, verify=False)
        keep = [i for i in range(src.n_episodes) if i not in damaged]
        tmp = path.parent / f"{path.name}.repairing-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        store_meta = {k: v for k, v in src.meta.items() if k not in WRITER_KEYS}
        with EpisodeWriter(tmp, store_meta=store_meta, image_shape=tuple(src.meta["image_shape"])) as writer:
            copy_episodes(src, keep, writer)
        (tmp / DONE_MARKER).write_text(json.dumps({"source": str(path), "dropped": sorted(damaged),
                                                   "kept": len(keep)}))
        backup = path.parent / f"{path.name}.damaged-{time.strftime('%Y%m%d_%H%M%S')}"
        os.rename(path, backup)
        os.rename(tmp, path)
        (path / DONE_MARKER).unlink(missing_ok=True)
    return {"path": str(path), "dropped_episodes": sorted(damaged), "kept_episodes": len(keep),
            "damaged_store_kept_at": str(backup)}
