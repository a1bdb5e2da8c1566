"""EpisodeWriter: record episodes from a 10 Hz control loop into a crash-safe zarr store.

`add_frame` only validates and enqueues: images are compressed and written by a background thread
behind a bounded queue (the small per-frame values are kept in RAM until the commit). `commit`
waits for the images, writes the small arrays, appends the episode end and finally rewrites the
attributes of `meta/episode_ends` with the new episode's metadata: that single atomic file write
is the commit point (store.py). A process killed at any moment loses at most the episode in
progress; the next writer truncates the leftovers (`EpisodeWriter.recovery` says what it removed).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import queue
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self

import numpy as np
import zarr
from zarr.codecs import BloscCodec, Crc32cCodec
from zarr.core.sync import sync

from moss_vla.command import deferred_interrupts
from moss_vla.episodes.schema import (
    DEFAULT_IMAGE_SHAPE,
    EPISODE_ENDS,
    EPISODES_ATTR,
    RESERVED_EPISODE_KEYS,
    KeySpec,
    SchemaError,
    default_store_meta,
    frame_keys,
    to_jsonable,
    validate_episode_meta,
)
from moss_vla.episodes.store import (
    CHUNKS_ATTR,
    RecoveryReport,
    committed_episodes,
    open_root,
    read_store_meta,
    recover,
    writer_lock,
)

log = logging.getLogger(__name__)


def _pid_alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def _whole(method: Callable[..., Any]) -> Callable[..., Any]:
    """A writer call a Ctrl-C must not cut in two: under a command's front door the signal is raised when it
    returns (moss_vla/command.py deferred_interrupts), so its queue's locks and the commit stay whole."""

    @functools.wraps(method)
    def whole(*args: Any, **kwargs: Any) -> Any:
        with deferred_interrupts():
            return method(*args, **kwargs)

    return whole


class EpisodeWriteError(RuntimeError):
    """Writing failed (background I/O error, queue overflow, misuse); the episode cannot be committed."""


class EpisodeWriter:
    """Append episodes to the store at `path` (created if missing).

    store_meta: store-level attributes for a new store (fps, camera, display, ...); for an existing
    store `fps` must match, other differing keys are kept as stored (with a warning).
    queue_size: frames that may wait for the disk; when full the episode fails (never thinned).
    image_compressor: Blosc codec name ("lz4" fast, "zstd" smaller and slower: compression_ratio in
    benchmarks/results/episodes.json) and level for
    `data/image` of a new store (an existing store keeps its codec).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        store_meta: dict[str, Any] | None = None,
        image_shape: tuple[int, int, int] = DEFAULT_IMAGE_SHAPE,
        queue_size: int = 128,
        image_compressor: str = "lz4",
        image_clevel: int = 3,
        grow_frames: int = 64,
    ) -> None:
        self.path = Path(path)
        self.image_shape = tuple(int(s) for s in image_shape)
        if len(self.image_shape) != 3 or self.image_shape[2] != 3:
            raise SchemaError(f"image_shape must be (H, W, 3), got {image_shape}")
        self.specs: dict[str, KeySpec] = frame_keys(self.image_shape)
        self._small_keys = [k for k in self.specs if k != "image"]
        self._grow = int(grow_frames)
        self._lock_cm = None
        created = False
        if not (self.path / "zarr.json").exists():
            if self.path.is_dir() and any(self.path.iterdir()):
                raise SchemaError(f"{self.path}: exists, is not empty and is not a zarr store; "
                                  f"choose a new path for the episode store")
            self._create(store_meta, image_compressor, image_clevel)
            created = True
        self._lock_cm = writer_lock(self.path)
        self._lock_cm.__enter__()
        try:
            self.root = open_root(self.path, mode="r+")
            self.store_meta = self._check_existing(None if created else store_meta)
            self.recovery: RecoveryReport = recover(self.root, self.path)
        except BaseException:
            self._release_lock()
            raise
        if not self.recovery.clean:
            log.warning("recovered %s", self.recovery)
        self._open_arrays()
        self._metas: list[dict[str, Any]] = list(committed_episodes(self._ends, self.path))
        self._end = self.recovery.committed_frames  # committed frame count
        self._capacity = self._arrays["image"].shape[0]  # image slots allocated (>= _end)

        # episode in progress
        self._meta: dict[str, Any] | None = None
        self._n = 0
        self._buf: dict[str, list] = {}
        self._last_ts = -np.inf
        self._failed: BaseException | None = None  # set when the episode can no longer be committed
        self._generation = 0  # bumped by discard so queued frames of a dropped episode are skipped
        self._closed = False

        self._queue: queue.Queue = queue.Queue(maxsize=int(queue_size))
        self._io_error: BaseException | None = None
        self._thread = threading.Thread(target=self._image_worker, name="episode-writer", daemon=True)
        self._thread.start()

    # ---------------------------------------------------------------- store creation / checks
    def _create(self, store_meta: dict[str, Any] | None, cname: str, clevel: int) -> None:
        """Build the empty store in a temporary sibling directory and rename it into place, so a
        kill during creation never leaves a half-made store at `path`."""
        meta = default_store_meta(self.image_shape)
        user = to_jsonable(dict(store_meta or {}), "store_meta")
        user.pop(CHUNKS_ATTR, None)  # how another store's chunks were written (a copied store_meta): set below
        for k in ("format", "schema_version", "image_shape", "keys"):
            if k in user:
                raise SchemaError(f"store_meta key {k!r} is set by the writer; remove it")
        meta.update(user)
        meta[CHUNKS_ATTR] = {"all_written": True, "checksum": "crc32c"}  # store.py: damaged chunks
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for stale in self.path.parent.glob(f"{self.path.name}.creating-*"):
            if not _pid_alive(stale.name.rsplit("-", 1)[-1]):
                shutil.rmtree(stale, ignore_errors=True)  # left by a creator that was killed
        tmp = self.path.parent / f"{self.path.name}.creating-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        root = zarr.open_group(str(tmp), mode="w", zarr_format=3)
        data = root.create_group("data")
        for spec in self.specs.values():
            is_image = spec.name == "image"
            data.create_array(
                spec.name, shape=(0, *spec.frame_shape), dtype=spec.dtype,
                chunks=(spec.chunk_frames, *spec.frame_shape),
                # images: no shuffle (bytes), a fast codec; small arrays: byte shuffle helps floats; then a
                # crc32c checksum, so a truncated or overwritten chunk is a clean error, not a decoder crash
                compressors=[BloscCodec(cname=cname if is_image else "zstd", clevel=clevel if is_image else 3,
                                        shuffle="noshuffle" if is_image else "shuffle"), Crc32cCodec()],
                fill_value=0,
            )
        root.create_group("meta").create_array(
            "episode_ends", shape=(0,), dtype=np.int64, chunks=(4096,), fill_value=0,
            attributes={EPISODES_ATTR: []})
        root.update_attributes(meta)
        try:
            os.rename(tmp, self.path)  # atomic; replaces an empty directory, fails on a non-empty one
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
            if not (self.path / "zarr.json").exists():
                raise
            # another process created the store first: use theirs

    def _check_existing(self, store_meta: dict[str, Any] | None) -> dict[str, Any]:
        attrs = read_store_meta(self.root, self.path)
        stored_shape = tuple(attrs.get("image_shape", ()))
        if stored_shape != self.image_shape:
            raise SchemaError(f"{self.path}: stores images of shape {stored_shape}, this writer was given "
                              f"image_shape={self.image_shape}; write to a new store or pass the stored shape")
        for spec in self.specs.values():
            try:
                arr = self.root[f"data/{spec.name}"]
            except KeyError:
                raise SchemaError(f"{self.path}: array data/{spec.name} is missing; "
                                  f"run `moss-data check {self.path}`") from None
            if tuple(arr.shape[1:]) != spec.frame_shape or arr.dtype != spec.dtype:
                raise SchemaError(f"{self.path}/data/{spec.name}: stored as {arr.dtype} frames of shape "
                                  f"{tuple(arr.shape[1:])}, the schema wants {spec.dtype} {spec.frame_shape}")
        if EPISODE_ENDS not in self.root:
            raise SchemaError(f"{self.path}: {EPISODE_ENDS} is missing; run `moss-data check {self.path}`")
        if store_meta:
            user = to_jsonable(dict(store_meta), "store_meta")
            user.pop(CHUNKS_ATTR, None)  # describes the chunks of the store it was written with, not this one
            if "fps" in user and user["fps"] != attrs.get("fps"):
                raise SchemaError(f"{self.path}: recorded at fps={attrs.get('fps')}, this writer was given "
                                  f"fps={user['fps']}; use a new store for a different frame rate")
            differ = [k for k, v in user.items() if k in attrs and attrs[k] != v]
            if differ:
                log.warning("%s: store metadata %s differs from the given store_meta; keeping the stored "
                            "values (put per-episode values such as a re-calibrated crop in the episode meta)",
                            self.path, differ)
            new = {k: v for k, v in user.items() if k not in attrs}
            if new:
                self.root.update_attributes(new)
                attrs.update(new)
        return attrs

    # ---------------------------------------------------------------- background image writes
    def _image_worker(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                gen, slot, image = item
                if gen != self._generation or self._io_error is not None:
                    continue  # discarded episode, or already failed: drain without writing
                arr = self._arrays["image"]
                if slot >= self._capacity:
                    new_cap = max(slot + 1, self._capacity + self._grow)
                    arr.resize((new_cap, *self.image_shape))
                    self._capacity = new_cap
                arr[slot] = image
            except BaseException as exc:  # noqa: BLE001 - surfaced on the caller's next call
                self._io_error = exc
            finally:
                self._queue.task_done()

    def _raise_if_failed(self) -> None:
        if self._io_error is not None and self._failed is None:
            self._failed = EpisodeWriteError(
                f"{self.path}: background image write failed: {type(self._io_error).__name__}: "
                f"{self._io_error}; discard() this episode")
            self._failed.__cause__ = self._io_error
        if self._failed is not None:
            raise self._failed

    def _require_open(self) -> None:
        if self._closed:
            raise EpisodeWriteError(f"{self.path}: writer is closed")

    # ---------------------------------------------------------------- public API
    @property
    def n_episodes(self) -> int:
        """Committed episodes in the store."""
        return len(self._metas)

    @property
    def in_episode(self) -> bool:
        return self._meta is not None

    @property
    def n_frames_in_episode(self) -> int:
        return self._n

    @property
    def failed(self) -> BaseException | None:
        """The error that made the episode in progress uncommittable, if any."""
        if self._io_error is not None and self._failed is None:
            try:
                self._raise_if_failed()
            except EpisodeWriteError:
                pass
        return self._failed

    def start_episode(self, meta: dict[str, Any]) -> None:
        """Begin an episode. meta: task, instruction (required), seed, operator, teleop, start_time,
        label_names, phase_names, ... (JSON-serialisable)."""
        self._require_open()
        if self._meta is not None:
            raise EpisodeWriteError("an episode is already in progress; commit() or discard() it first")
        clean = validate_episode_meta(meta)
        clean.setdefault("start_time", time.time())
        self._meta = clean
        self._n = 0
        self._buf = {k: [] for k in self._small_keys}
        self._last_ts = -np.inf
        self._failed = None

    @_whole
    def add_frame(
        self,
        image: np.ndarray,
        state: np.ndarray,
        action: np.ndarray,
        timestamp: float,
        stim_label: int | None = None,
        stim_phase: int | None = None,
        stim_xy: np.ndarray | tuple[float, float] | None = None,
        stim_interaction: int | None = None,
        stim_time_to_deadline: float | None = None,
    ) -> None:
        """Validate one frame and queue it (returns in well under a millisecond at 224x224).

        Raises SchemaError for a bad frame (the episode stays usable) and EpisodeWriteError when the
        episode has failed (queue overflow, I/O error): discard() it then.
        """
        if self._meta is None:
            raise EpisodeWriteError("add_frame() outside an episode; call start_episode(meta) first")
        self._raise_if_failed()
        values = {
            "state": state, "action": action, "timestamp": timestamp, "stim_label": stim_label,
            "stim_phase": stim_phase, "stim_xy": stim_xy, "stim_interaction": stim_interaction,
            "stim_time_to_deadline": stim_time_to_deadline,
        }
        row = {k: self._validate(k, v) for k, v in values.items()}
        ts = float(row["timestamp"])
        if ts <= self._last_ts:
            raise SchemaError(f"frame {self._n}: timestamp {ts} is not after the previous frame's "
                              f"{self._last_ts}; timestamps must increase within an episode")
        self._check_labels(row)
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.shape != self.image_shape:
            got = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
            raise SchemaError(f"frame {self._n}: image must be uint8 {self.image_shape} (H, W, RGB), got {got}")
        for k in self._small_keys:
            self._buf[k].append(row[k])
        self._last_ts = ts
        self._n += 1
        # copy: the caller may reuse its frame buffer before the writer thread gets to it
        item = (self._generation, self._end + self._n - 1, np.array(image, copy=True, order="C"))
        # enqueue last: the woken writer thread takes the GIL, and anything after the put would wait
        # for it (up to the 5 ms switch interval)
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self._failed = EpisodeWriteError(
                f"{self.path}: writer queue full ({self._queue.maxsize} frames waiting for the disk) at "
                f"frame {self._n - 1}; the disk is too slow for the frame rate, so this episode is marked failed "
                f"rather than silently dropping frames; discard() it (and use a faster disk, a larger "
                f"queue_size or a cheaper image_compressor)")
            raise self._failed from None

    def _validate(self, key: str, value: Any) -> np.ndarray:
        spec = self.specs[key]
        if value is None:
            if spec.default is None:
                raise SchemaError(f"frame {self._n}: '{key}' is required")
            value = spec.default
        a = np.asarray(value)
        if a.shape != spec.frame_shape:
            raise SchemaError(f"frame {self._n}: '{key}' must have shape {spec.frame_shape}, got {a.shape}")
        if spec.dtype.kind == "f":
            if a.dtype.kind not in "fiu":
                raise SchemaError(f"frame {self._n}: '{key}' must be numeric, got {a.dtype}")
            a = a.astype(spec.dtype)
            if not np.isfinite(a).all():
                raise SchemaError(f"frame {self._n}: '{key}' has non-finite values {a.tolist()}")
        else:
            info = np.iinfo(spec.dtype)
            if a.dtype.kind not in "iu" or not info.min <= int(a) <= info.max:
                raise SchemaError(f"frame {self._n}: '{key}' must be an integer fitting {spec.dtype}, "
                                  f"got {a.dtype} {a.tolist()}")
            a = a.astype(spec.dtype)
        return a

    def _check_labels(self, row: dict[str, np.ndarray]) -> None:
        for key, names in (("stim_label", "label_names"), ("stim_phase", "phase_names")):
            v = int(row[key])
            lo = -1 if key == "stim_label" else 0
            if v < lo:
                raise SchemaError(f"frame {self._n}: '{key}' = {v} is below {lo}")
            if names in self._meta and v >= len(self._meta[names]):
                raise SchemaError(f"frame {self._n}: '{key}' = {v} but the episode's {names} has only "
                                  f"{len(self._meta[names])} entries")

    @_whole
    def commit(self, extra_meta: dict[str, Any] | None = None) -> int:
        """Flush and commit the episode in progress; returns its index. extra_meta (e.g. success
        labels known only at the end) is merged into the episode metadata."""
        self._require_open()
        if self._meta is None:
            raise EpisodeWriteError("commit() without an episode in progress")
        self._raise_if_failed()
        if self._n == 0:
            raise EpisodeWriteError("commit() of an empty episode; add frames or discard() it")
        meta = dict(self._meta)
        if extra_meta:
            extra = to_jsonable(dict(extra_meta), "extra_meta")
            bad = [k for k in RESERVED_EPISODE_KEYS if k in extra]
            if bad:
                raise SchemaError(f"extra_meta keys {bad} are filled in by the writer; remove them")
            meta.update(extra)
        self._queue.join()  # every image of the episode is on disk (or the worker failed)
        self._raise_if_failed()
        start, end = self._end, self._end + self._n
        index = len(self._metas)
        try:
            sync(self._write_small(start, end))
            # the end marker, then the metadata list (the commit point: one atomic zarr.json write)
            self._ends.resize((index + 1,))
            self._ends[index] = end
            meta.update(index=index, start=start, end=end, length=self._n)
            self._ends.update_attributes({EPISODES_ATTR: [*self._metas, meta]})
        except BaseException as exc:
            self._failed = EpisodeWriteError(f"{self.path}: commit of episode {index} failed: {exc}; "
                                             f"discard() it (the store keeps the committed episodes)")
            if not isinstance(exc, Exception):  # Ctrl-C / SIGTERM (KeyboardInterrupt): the command stops as asked
                raise
            raise self._failed from exc
        self._metas.append(meta)
        self._end = end
        self._meta = None
        self._buf = {}
        self._n = 0
        return index

    async def _write_small(self, start: int, end: int) -> None:
        """All small arrays of the episode, concurrently (one round trip instead of two per key)."""
        arrs = [self._arrays[k].async_array for k in self._small_keys]
        await asyncio.gather(*(a.resize((end, *a.shape[1:])) for a in arrs))
        await asyncio.gather(*(a.setitem(slice(start, end), np.stack(self._buf[k]))
                               for a, k in zip(arrs, self._small_keys, strict=True)))

    def drop_last(self, n: int = 1) -> list[dict[str, Any]]:
        """Remove the last `n` committed episodes (moss-record's discard key, `moss-data drop` of a tail); returns
        their metadata. One atomic write of the metadata list without them moves the commit point back, then their
        frames are truncated like any uncommitted data: a kill in between leaves frames no reader sees, which the
        next writer truncates. The store's saved normalisation statistics are removed (recomputed on next use)."""
        from moss_vla.episodes.normalization import default_stats_path

        self._require_open()
        if self._meta is not None:
            raise EpisodeWriteError("drop_last() while an episode is in progress; commit() or discard() it first")
        if not 1 <= int(n) <= len(self._metas):
            raise IndexError(f"{self.path}: cannot drop the last {n} episode(s), the store has {len(self._metas)}")
        keep, dropped = self._metas[: len(self._metas) - int(n)], self._metas[len(self._metas) - int(n):]
        self._ends.update_attributes({EPISODES_ATTR: keep})  # the commit point
        self._metas = list(keep)
        default_stats_path(self.path).unlink(missing_ok=True)
        recover(self.root, self.path)  # truncates the dropped frames and end markers
        self._open_arrays()  # views with the new shapes
        self._end = int(keep[-1]["end"]) if keep else 0
        self._capacity = self._arrays["image"].shape[0]
        return [dict(m) for m in dropped]

    def _open_arrays(self) -> None:
        """The data arrays and the end markers, as views that write every chunk, all-zero ones too: a chunk
        file missing from the committed range is damage (store.py), never a frame that happened to be black."""
        every_chunk = {"write_empty_chunks": True}
        self._arrays = {k: self.root[f"data/{k}"].with_config(every_chunk) for k in self.specs}
        self._ends = self.root[EPISODE_ENDS].with_config(every_chunk)

    @_whole
    def discard(self) -> None:
        """Drop the episode in progress (its queued and written frames become garbage to overwrite)."""
        self._generation += 1
        self._queue.join()
        self._meta, self._buf, self._n, self._failed = None, {}, 0, None
        self._io_error = None

    @_whole
    def close(self) -> None:
        """Discard an unfinished episode, stop the thread, trim spare image slots, release the lock."""
        if self._closed:
            return
        if self._meta is not None:
            log.warning("%s: closing with an uncommitted episode of %d frames; it is discarded",
                        self.path, self._n)
            self.discard()
        self._queue.put(None)
        self._thread.join()
        self._closed = True
        try:
            recover(self.root, self.path)  # trims unused image slots so the store reads back clean
        finally:
            self._release_lock()

    def _release_lock(self) -> None:
        if self._lock_cm is not None:
            self._lock_cm.__exit__(None, None, None)
            self._lock_cm = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
