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


# ---------------------------------------------------------------------------------------- damaged chunks
# A chunk file of the committed range that is missing reads back as the fill value (zeros) in zarr, and a
# truncated one reaches the Blosc decoder, which may crash the process. So every reader checks, before it
# decodes anything, that each chunk of the committed range exists and is whole ("cheap checks": one stat
# per chunk, and the Blosc header and crc32c checksum of the small arrays' few chunks); `moss-data check`
# also decodes every chunk. New stores (root attribute `chunks`) have a crc32c checksum after the
# compressor of every chunk and write every chunk, all-zero ones included; older stores have neither (a
# truncated image chunk is still caught by its Blosc header, an edited one only by decoding it).
CHUNKS_ATTR = "chunks"  # root attribute of new stores: {"all_written": true, "checksum": "crc32c"}


@dataclass(frozen=True)
class ChunkProblem:
    """One damaged chunk: the array, the chunk index, the frames it holds and the committed episodes they
    belong to (what `moss-data repair --drop-damaged` drops)."""

    path: str
    key: str
    chunk: int
    frames: tuple[int, int]  # [first, last] global frame indices
    episodes: tuple[int, ...]
    what: str

    def __str__(self) -> str:
        eps = ", ".join(map(str, self.episodes[:8])) + ("..." if len(self.episodes) > 8 else "")
        return (f"{self.path}/data/{self.key}: chunk {self.chunk} (frames {self.frames[0]}..{self.frames[1]}, "
                f"episode{'s' if len(self.episodes) != 1 else ''} {eps}) {self.what}")


def _codec_names(arr: zarr.Array) -> list[str]:
    return [c.get("name") for c in arr.metadata.to_dict().get("codecs", [])]


def chunk_bytes_problem(data: bytes, codecs: list[str], nbytes: int) -> str | None:
    """Why the stored bytes of a chunk cannot be decoded, found without decoding (None: they look whole):
    a crc32c checksum that does not match, a Blosc header whose compressed size is not the file's size
    (truncated or padded) or whose decoded size is not the chunk's."""
    if codecs and codecs[-1] == "crc32c":
        import google_crc32c

        if len(data) < 4:
            return f"is {len(data)} bytes, shorter than its checksum"
        body, stored = data[:-4], int.from_bytes(data[-4:], "little")
        if google_crc32c.value(body) != stored:
            return "fails its crc32c checksum (truncated or overwritten)"
        data, codecs = body, codecs[:-1]
    if codecs and codecs[-1] == "blosc":
        return blosc_header_problem(data[:16], len(data), nbytes)
    return None


def blosc_header_problem(head: bytes, size: int, nbytes: int) -> str | None:
    """Why a Blosc frame of `size` bytes starting with `head` is not whole (its header's sizes disagree)."""
    if size < 16 or len(head) < 16:
        return f"is {size} bytes, shorter than a Blosc header (truncated)"
    raw, cbytes = int.from_bytes(head[4:8], "little"), int.from_bytes(head[12:16], "little")
    if cbytes != size:
        return f"is {size} bytes but its Blosc header says {cbytes} (truncated or overwritten)"
    if raw != nbytes:
        return f"decodes to {raw} bytes by its Blosc header, the chunk holds {nbytes}"
    return None


def _head_problem(f: Path, codecs: list[str], nbytes: int) -> str | None:
    """The cheap check of a big chunk: its Blosc header (16 bytes read) against the file's size."""
    with open(f, "rb") as fh:
        head, size = fh.read(16), os.fstat(fh.fileno()).st_size
    if codecs and codecs[-1] == "crc32c":
        codecs, size = codecs[:-1], size - 4
    return blosc_header_problem(head, size, nbytes) if codecs and codecs[-1] == "blosc" else None


def chunk_problems(root: zarr.Group, path: str | os.PathLike, key: str, ends: np.ndarray,
                   read_bytes: bool) -> list[ChunkProblem]:
    """Damaged chunks of `data/<key>` in the committed range (frames before ends[-1]): missing files, files
    whose Blosc header disagrees with their size (truncated), and with `read_bytes` files whose checksum
    fails (chunk_bytes_problem reads the whole file)."""
    end = int(ends[-1]) if len(ends) else 0
    arr = root[f"data/{key}"]
    md = arr.metadata
    per_chunk = int(md.chunk_grid.chunk_shape[0])
    nbytes = int(np.prod(md.chunk_grid.chunk_shape)) * arr.dtype.itemsize
    codecs = _codec_names(arr)
    array_dir = Path(path) / arr.store_path.path
    zeros = (0,) * (arr.ndim - 1)
    out = []
    for c in range((end + per_chunk - 1) // per_chunk):
        f = array_dir / md.encode_chunk_key((c, *zeros))
        what = None
        try:
            what = chunk_bytes_problem(f.read_bytes(), codecs, nbytes) if read_bytes else _head_problem(f, codecs, nbytes)
        except FileNotFoundError:
            what = "is missing"
        except OSError as exc:
            what = f"cannot be read: {exc}"
        if what is None:
            continue
        if what == "is missing":
            what = f"is missing ({f.relative_to(Path(path))}): zarr would read it as zeros"
        first, last = c * per_chunk, min((c + 1) * per_chunk, end) - 1
        episodes = tuple(range(int(np.searchsorted(ends, first, "right")), int(np.searchsorted(ends, last, "right")) + 1))
        out.append(ChunkProblem(str(path), key, c, (first, last), episodes, what))
    return out


def metadata_problems(metas: list[dict[str, Any]], ends_array: np.ndarray, path: str | os.PathLike) -> list[str]:
    """Where the committed metadata and `meta/episode_ends` disagree (ends past the metadata's count are an
    uncommitted episode's marker: not a problem)."""
    out = []
    if len(ends_array) < len(metas):
        out.append(f"{path}/{EPISODE_ENDS}: {len(ends_array)} ends but {len(metas)} committed episodes in its metadata")
    prev = 0
    for i, m in enumerate(metas[: len(ends_array)]):
        end = int(ends_array[i])
        if (m.get("end"), m.get("start", prev), m.get("length", end - prev)) != (end, prev, end - prev):
            out.append(f"{path}/{EPISODE_ENDS} episode {i}: metadata start/end/length {m.get('start')}/{m.get('end')}/"
                       f"{m.get('length')} disagree with episode_ends ({prev}/{end})")
        prev = end
    return out


def integrity_problems(root: zarr.Group, path: str | os.PathLike, keys: list[str], metas: list[dict[str, Any]],
                       ends_array: np.ndarray) -> tuple[list[str], list[ChunkProblem]]:
    """The cheap checks every reader runs (see above): metadata vs episode_ends, every chunk of the committed
    range present, the small arrays' chunks whole. Returns (metadata problems, chunk problems)."""
    meta = metadata_problems(metas, ends_array, path)
    ends = np.array([m["end"] for m in metas], dtype=np.int64)
    chunks = [p for k in keys for p in chunk_problems(root, path, k, ends, read_bytes=k != "image")]
    return meta, chunks


def damage_message(path: str | os.PathLike, meta: list[str], chunks: list[ChunkProblem]) -> str:
    """One message for a store that fails the cheap checks: what is damaged and what to do."""
    lines = meta + [str(c) for c in chunks]
    more = f" (and {len(lines) - 5} more)" if len(lines) > 5 else ""
    fix = (f"`moss-data repair {path} --drop-damaged` keeps the other episodes (the damaged store is kept "
           f"beside it)" if chunks else f"`moss-data repair {path}` rewrites episode_ends from the committed "
           f"metadata")
    return (f"{path}: the episode store is damaged, refusing to read it: {'; '.join(lines[:5])}{more}. "
            f"See `moss-data check {path}`; {fix}")


def read_ends(ends_arr: zarr.Array, path: str | os.PathLike) -> np.ndarray:
    """The values of `meta/episode_ends`, or a StoreError naming its chunk when it cannot be decoded."""
    try:
        return np.asarray(ends_arr[:], dtype=np.int64)
    except Exception as exc:  # noqa: BLE001 - a damaged chunk: whatever the codec raises
        raise StoreError(f"{Path(path) / EPISODE_ENDS}: its chunk cannot be decoded ({type(exc).__name__}: {exc}); "
                         f"`moss-data repair {path}` rewrites it from the committed metadata") from None


def open_node(root: zarr.Group, key: str, path: str | os.PathLike) -> Any:
    """`root[key]`, or a StoreError naming the file when its zarr.json is missing or damaged."""
    try:
        return root[key]
    except KeyError:
        raise
    except Exception as exc:  # noqa: BLE001 - a half-written or edited zarr.json (JSON / metadata errors)
        raise StoreError(f"{Path(path) / key / 'zarr.json'}: cannot be read ({type(exc).__name__}: {exc}); "
                         f"the store's metadata is damaged, restore this file from a backup") from None


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
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except PermissionError as exc:
        raise StoreError(f"{path}: cannot open {lock_path} for writing ({exc.strerror}): the store is read-only "
                         f"for this user; write to another out=, or make the store writable") from None
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
    ends_arr = open_node(root, EPISODE_ENDS, path)
    metas = committed_episodes(ends_arr, path)
    want = np.array([m["end"] for m in metas], dtype=np.int64)
    try:
        have = read_ends(ends_arr, path)
    except StoreError as exc:  # a damaged chunk of episode_ends: the metadata (the commit point) rebuilds it
        log.warning("%s", exc)
        have = np.zeros(0, np.int64) if len(want) else np.zeros(1, np.int64)
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
        self.codecs = ["bytes", "blosc"]

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
              and codecs in (["bytes", "blosc"], ["bytes", "blosc", "crc32c"]) and not md.get("storage_transformers"))
        array_dir = root_dir / arr.store_path.path
        if not (ok and array_dir.is_dir()):
            return None
        reader = cls(array_dir, tuple(arr.shape[1:]))
        reader.codecs = codecs
        return reader

    def read(self, frames: np.ndarray) -> np.ndarray:
        """Frames at the given global indices (repeats allowed), (len(frames), *frame_shape) uint8."""
        out = np.empty((len(frames), *self.frame_shape), np.uint8)
        done: dict[int, int] = {}
        for j, f in enumerate(frames.tolist()):
            if f in done:
                out[j] = out[done[f]]
                continue
            chunk = self.array_dir / "c" / str(f) / self._rest
            try:
                data = chunk.read_bytes()
            except FileNotFoundError:  # never zeros: the store was checked whole when it was opened
                raise StoreError(f"{chunk}: the chunk of frame {f} is missing (the store was damaged after it was "
                                 f"opened); run `moss-data check {self.array_dir.parent.parent}`") from None
            # checked before the decoder sees it: Blosc may crash the process on a truncated chunk
            what = chunk_bytes_problem(data, self.codecs, self._nbytes)
            if what is not None:
                raise StoreError(f"{chunk}: the chunk of frame {f} {what}; run `moss-data check "
                                 f"{self.array_dir.parent.parent}`")
            if self.codecs[-1] == "crc32c":
                data = data[:-4]
            raw = self._decompress(data)
            if len(raw) != self._nbytes:
                raise StoreError(f"{self.array_dir}: chunk of frame {f} decodes to {len(raw)} bytes, "
                                 f"expected {self._nbytes}")
            out[j] = np.frombuffer(raw, np.uint8).reshape(self.frame_shape)
            done[f] = j
        return out


class EpisodeStore:
    """Read-only access to the committed episodes of a store.

    Opening runs the cheap integrity checks (`integrity_problems`) and refuses a damaged store with a
    StoreError saying what to do (`verify=False`: only for repair, which reads the undamaged episodes).
    `meta` is the store-level metadata (fps, schema_version, camera, display, ...). Frames past the
    last committed episode (a writer in progress or a crash leftover) are invisible here.
    """

    def __init__(self, path: str | os.PathLike, verify: bool = True) -> None:
        self.path = Path(path)
        self.root = open_root(self.path, mode="r")
        self.meta: dict[str, Any] = read_store_meta(self.root, self.path)
        try:
            self._ends_arr = open_node(self.root, EPISODE_ENDS, self.path)
            self.arrays: dict[str, zarr.Array] = {
                k: open_node(self.root, f"data/{k}", self.path) for k in frame_keys(tuple(self.meta["image_shape"]))}
        except KeyError as exc:
            raise StoreError(f"{self.path}: missing array {exc}; run `moss-data check {self.path}`") from exc
        self._metas = committed_episodes(self._ends_arr, self.path)
        if verify:  # the cheap checks: never read a damaged chunk as zeros or hand it to the decoder
            meta, chunks = integrity_problems(self.root, self.path, list(self.arrays), self._metas,
                                              read_ends(self._ends_arr, self.path))
            if meta or chunks:
                raise StoreError(damage_message(self.path, meta, chunks))
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
