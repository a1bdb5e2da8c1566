"""Opening an episode store: reading committed episodes, and recovering after a crash.

The commit point of an episode is one atomic write of `meta/episode_ends/zarr.json` whose attributes
hold the list of per-episode metadata (each entry records its `end`). Everything past the last
committed end (frames of an episode in progress, an episode end appended just before a kill) is
uncommitted: readers ignore it, and `recover` (run by every writer on open) truncates it away.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from moss_vla.episodes.schema import (
    EPISODE_ENDS,
    EPISODES_ATTR,
    FORMAT_NAME,
    SCHEMA_VERSION,
    SchemaError,
    frame_keys,
)

log = logging.getLogger(__name__)
LOCK_NAME = "writer.lock"


class StoreError(RuntimeError):
    """The store cannot be read or repaired; the message names the file/key at fault."""


def open_root(path: str | os.PathLike, mode: str = "r") -> zarr.Group:
    """Open the zarr v3 group at `path`, with a clear error if it is not one."""
    p = Path(path)
    if not p.exists():
        raise StoreError(f"{p}: no such episode store (path does not exist)")
    if not (p / "zarr.json").is_file():
        hint = " (a zarr v2 store? this format is zarr v3)" if (p / ".zgroup").exists() else ""
        raise StoreError(f"{p}: not a zarr v3 store, {p / 'zarr.json'} is missing{hint}")
    try:
        return zarr.open_group(str(p), mode=mode, zarr_format=3)
    except Exception as exc:  # zarr raises several types for a damaged root
        raise StoreError(f"{p}: cannot open as a zarr v3 group: {exc}") from exc


def read_store_meta(root: zarr.Group, path: str | os.PathLike) -> dict[str, Any]:
    """The store-level attributes, checked for our format and schema version."""
    attrs = dict(root.attrs)
    if attrs.get("format") != FORMAT_NAME:
        raise SchemaError(f"{path}: not a moss-vla episode store (root attribute 'format' is "
                          f"{attrs.get('format')!r}, expected {FORMAT_NAME!r})")
    version = attrs.get("schema_version")
    if version != SCHEMA_VERSION:
        raise SchemaError(f"{path}: schema version {version!r}, this code reads and writes version "
                          f"{SCHEMA_VERSION}; convert the store or use a matching moss-vla version")
    if "image_shape" not in attrs:
        raise SchemaError(f"{path}: root attribute 'image_shape' is missing (every moss-vla store records its "
                          f"frames' (H, W, 3)); run `moss-data check {path}`")
    return attrs


def committed_episodes(ends_array: zarr.Array, path: str | os.PathLike) -> list[dict[str, Any]]:
    """The committed per-episode metadata list, checked to be self-consistent."""
    metas = ends_array.attrs.get(EPISODES_ATTR, [])
    if not isinstance(metas, list):
        raise StoreError(f"{path}/{EPISODE_ENDS}: attribute '{EPISODES_ATTR}' must be a list, "
                         f"got {type(metas).__name__}")
    prev = 0
    for i, m in enumerate(metas):
        if not isinstance(m, dict) or not isinstance(m.get("end"), int):
            raise StoreError(f"{path}/{EPISODE_ENDS}: episode {i} metadata has no integer 'end'")
        if m["end"] <= prev:
            raise StoreError(f"{path}/{EPISODE_ENDS}: episode ends out of order: episode {i} ends at "
                             f"{m['end']} after episode {i - 1} ended at {prev}")
        prev = m["end"]
    return metas


@dataclass
class RecoveryReport:
    """What opening a store for writing removed (all of it uncommitted)."""

    path: str
    committed_episodes: int = 0
    committed_frames: int = 0
    removed_frames: dict[str, int] = field(default_factory=dict)  # key -> frames truncated
    removed_episode_ends: int = 0  # end markers appended without their metadata commit
    rewrote_episode_ends: bool = False  # episode_ends did not match the committed metadata

    @property
    def clean(self) -> bool:
        return not self.removed_frames and not self.removed_episode_ends and not self.rewrote_episode_ends

    def __str__(self) -> str:
        head = f"{self.path}: {self.committed_episodes} committed episodes, {self.committed_frames} frames"
        if self.clean:
            return head + "; nothing to recover"
        parts = [f"{k} -{n}" for k, n in self.removed_frames.items()]
        if self.removed_episode_ends:
            parts.append(f"{self.removed_episode_ends} uncommitted episode end(s)")
        if self.rewrote_episode_ends:
            parts.append("episode_ends rewritten from the committed metadata")
        return head + "; removed uncommitted data: " + ", ".join(parts)


@contextlib.contextmanager
def writer_lock(path: str | os.PathLike):
    """Exclusive advisory lock: one writer per store. The OS releases it when the process dies."""
    lock_path = Path(path) / LOCK_NAME
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = Path(lock_path).read_text().strip() or "?"
            raise StoreError(f"{path}: another process (pid {other}) is writing this store; "
                             f"close that writer first") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        yield
    finally:
        os.close(fd)  # closing the descriptor drops the flock


def writer_pid(path: str | os.PathLike) -> int | None:
    """The pid holding the writer lock of the store, or None if no writer has it open."""
    lock_path = Path(path) / LOCK_NAME
    if not lock_path.exists():
        return None
    fd = os.open(lock_path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return None
    except BlockingIOError:
        try:
            return int(lock_path.read_text().strip())
        except ValueError:
            return -1
    finally:
        os.close(fd)


def recover(root: zarr.Group, path: str | os.PathLike) -> RecoveryReport:
    """Truncate every array to the last committed episode end (caller holds the writer lock).

    Order matters for a kill during recovery itself: first the end markers (so no end points past
    the committed data), then the data arrays; each step is one atomic metadata write, so running
    recover again after a kill finishes the job.
    """
    report = RecoveryReport(path=str(path))
    ends_arr = root[EPISODE_ENDS]
    metas = committed_episodes(ends_arr, path)
    want = np.array([m["end"] for m in metas], dtype=np.int64)
    have = ends_arr[:]
    n = len(want)
    if len(have) >= n and np.array_equal(have[:n], want):
        if len(have) > n:
            ends_arr.resize((n,))
            report.removed_episode_ends = len(have) - n
    else:
        # cannot come from our write order (ends before metadata), but the metadata is the truth
        log.warning("%s: %s %s disagrees with the committed metadata %s; rewriting it",
                    path, EPISODE_ENDS, have.tolist(), want.tolist())
        ends_arr.resize((n,))
        if n:
            ends_arr[:] = want
        report.rewrote_episode_ends = True
    end = int(want[-1]) if n else 0
    for key in frame_keys(tuple(root.attrs["image_shape"])):
        arr = root[f"data/{key}"]
        length = arr.shape[0]
        if length < end:
            raise StoreError(f"{path}/data/{key}: {length} frames but the committed episodes end at frame "
                             f"{end}; committed data is missing (the store was damaged outside moss-vla)")
        if length > end:
            arr.resize((end, *arr.shape[1:]))
            report.removed_frames[key] = length - end
    report.committed_episodes, report.committed_frames = n, end
    return report


class FrameChunkReader:
    """Whole frames of a one-frame-per-chunk uint8 array, read straight from its chunk files.

    zarr's general read path (async tasks, selection indexing) costs several times the file read plus
    Blosc decode for an 8-frame training window (benchmarks/results/episodes.json, window_reads_per_s
    T8 vs T8_zarr_read_path; docs/results.md section 4). This reader is
    used only when the array's metadata is exactly what it decodes (zarr v3 spec: regular
    (1, H, W, C) chunks, default "/" chunk keys, bytes + blosc codecs, fill value 0); otherwise
    `for_array` returns None and callers read through zarr.
    """

    def __init__(self, array_dir: Path, frame_shape: tuple[int, ...]) -> None:
        from numcodecs import blosc

        self._decompress = blosc.decompress
        self.array_dir = array_dir
        self.frame_shape = frame_shape
        self._nbytes = int(np.prod(frame_shape))
        self._rest = "/".join("0" for _ in frame_shape)  # chunk key tail: one chunk across H, W, C

    @classmethod
    def for_array(cls, arr: zarr.Array, root_dir: Path) -> FrameChunkReader | None:
        md = arr.metadata.to_dict()
        codecs = [c.get("name") for c in md.get("codecs", [])]
        grid = md.get("chunk_grid", {})
        enc = md.get("chunk_key_encoding", {})
        ok = (md.get("zarr_format") == 3 and md.get("data_type") == "uint8" and md.get("fill_value") == 0
              and grid.get("name") == "regular"
              and list(grid["configuration"]["chunk_shape"]) == [1, *arr.shape[1:]]
              and enc.get("name") == "default" and enc.get("configuration", {}).get("separator") == "/"
              and codecs == ["bytes", "blosc"] and not md.get("storage_transformers"))
        array_dir = root_dir / arr.store_path.path
        return cls(array_dir, tuple(arr.shape[1:])) if ok and array_dir.is_dir() else None

    def read(self, frames: np.ndarray) -> np.ndarray:
        """Frames at the given global indices (repeats allowed), (len(frames), *frame_shape) uint8."""
        out = np.empty((len(frames), *self.frame_shape), np.uint8)
        done: dict[int, int] = {}
        for j, f in enumerate(frames.tolist()):
            if f in done:
                out[j] = out[done[f]]
                continue
            try:
                data = (self.array_dir / "c" / str(f) / self._rest).read_bytes()
            except FileNotFoundError:  # zarr does not write chunks equal to the fill value
                out[j] = 0
            else:
                raw = self._decompress(data)
                if len(raw) != self._nbytes:
                    raise StoreError(f"{self.array_dir}: chunk of frame {f} decodes to {len(raw)} bytes, "
                                     f"expected {self._nbytes}")
                out[j] = np.frombuffer(raw, np.uint8).reshape(self.frame_shape)
            done[f] = j
        return out


class EpisodeStore:
    """Read-only access to the committed episodes of a store.

    `meta` is the store-level metadata (fps, schema_version, camera, display, ...). Frames past the
    last committed episode (a writer in progress or a crash leftover) are invisible here.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.root = open_root(self.path, mode="r")
        self.meta: dict[str, Any] = read_store_meta(self.root, self.path)
        try:
            self._ends_arr = self.root[EPISODE_ENDS]
            self.arrays: dict[str, zarr.Array] = {
                k: self.root[f"data/{k}"] for k in frame_keys(tuple(self.meta["image_shape"]))}
        except KeyError as exc:
            raise StoreError(f"{self.path}: missing array {exc}; run `moss-data check {self.path}`") from exc
        self._metas = committed_episodes(self._ends_arr, self.path)
        self.episode_ends = np.array([m["end"] for m in self._metas], dtype=np.int64)
        self.episode_starts = np.concatenate([[0], self.episode_ends[:-1]]).astype(np.int64)
        self.n_frames = int(self.episode_ends[-1]) if len(self.episode_ends) else 0
        for k, arr in self.arrays.items():
            if arr.shape[0] < self.n_frames:
                raise StoreError(f"{self.path}/data/{k}: {arr.shape[0]} frames, fewer than the "
                                 f"{self.n_frames} of the committed episodes")

    @property
    def n_episodes(self) -> int:
        return len(self._metas)

    def __len__(self) -> int:
        return self.n_episodes

    @property
    def episode_lengths(self) -> np.ndarray:
        return self.episode_ends - self.episode_starts

    @property
    def fps(self) -> float:
        return float(self.meta["fps"])

    @property
    def keys(self) -> list[str]:
        return list(self.arrays)

    def _check_index(self, i: int) -> int:
        if not -self.n_episodes <= i < self.n_episodes:
            raise IndexError(f"{self.path}: episode {i} out of range, the store has {self.n_episodes}")
        return i % self.n_episodes

    def episode_slice(self, i: int) -> slice:
        """Global frame range of episode i."""
        i = self._check_index(i)
        return slice(int(self.episode_starts[i]), int(self.episode_ends[i]))

    def episode_meta(self, i: int) -> dict[str, Any]:
        """Per-episode metadata (task, instruction, seed, ..., plus index/start/end/length)."""
        return dict(self._metas[self._check_index(i)])

    @property
    def episode_metas(self) -> list[dict[str, Any]]:
        return [dict(m) for m in self._metas]

    def episode(self, i: int, keys: list[str] | None = None) -> dict[str, np.ndarray]:
        """All frames of episode i as numpy arrays, one per key."""
        sl = self.episode_slice(i)
        return {k: self.arrays[k][sl] for k in (keys or self.keys)}

    def read(self, key: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Committed frames [start, stop) of one key (global frame indices)."""
        stop = self.n_frames if stop is None else min(stop, self.n_frames)
        return self.arrays[key][start:stop]

    def frame_reader(self, key: str = "image") -> FrameChunkReader | None:
        """A fast whole-frame reader for `key` if its layout allows one (see FrameChunkReader)."""
        return FrameChunkReader.for_array(self.arrays[key], self.path)

    def read_frames(self, frames: np.ndarray, key: str = "image") -> np.ndarray:
        """Frames at arbitrary committed global indices (repeats allowed)."""
        frames = np.asarray(frames, dtype=np.int64)
        if len(frames) and (frames.min() < 0 or frames.max() >= self.n_frames):
            raise IndexError(f"{self.path}: frames {frames.tolist()} outside 0..{self.n_frames - 1}")
        reader = self.frame_reader(key)
        if reader is not None:
            return reader.read(frames)
        return self.arrays[key].get_orthogonal_selection((frames,))

    def __repr__(self) -> str:
        return (f"EpisodeStore({str(self.path)!r}, episodes={self.n_episodes}, frames={self.n_frames}, "
                f"fps={self.meta.get('fps')})")
