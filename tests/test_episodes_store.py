"""EpisodeWriter / EpisodeStore: round trip, validation, schema refusal, queue overflow, background
errors, discard, recovery of uncommitted data, one writer per store."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import zarr

from moss_vla.episodes import EpisodeStore, EpisodeWriteError, EpisodeWriter, SchemaError, StoreError
from moss_vla.episodes.check import check_store
from moss_vla.episodes.schema import EPISODE_ENDS
from moss_vla.episodes.synthetic import make_synthetic_store, synthetic_episode, write_episode

SHAPE = (16, 16, 3)


def _frame(t: int, shape=SHAPE) -> dict:
    return {"image": np.full(shape, t % 256, np.uint8), "state": np.full(8, t, np.float32),
            "action": np.full(8, t + 0.5, np.float32), "timestamp": 0.1 * t}


def _meta(**kw) -> dict:
    return {"task": "movesense_lr", "instruction": "Point left ...", "seed": 0, **kw}


def test_round_trip_and_append(tmp_path):
    path = tmp_path / "s.zarr"
    seeds = make_synthetic_store(path, 3, image_shape=SHAPE)
    store = EpisodeStore(path)
    assert store.n_episodes == 3 and len(store) == 3
    assert store.meta["fps"] == 10 and store.meta["schema_version"] == 1
    assert store.meta["camera"]["name"] == "synthetic"
    for i, seed in enumerate(seeds):
        meta, frames = synthetic_episode(seed, image_shape=SHAPE)
        ep = store.episode(i)
        assert set(ep) == set(frames)
        for k, v in frames.items():
            np.testing.assert_array_equal(ep[k], v.astype(ep[k].dtype), err_msg=k)
        m = store.episode_meta(i)
        assert m["seed"] == seed and m["instruction"] == meta["instruction"] and m["index"] == i
        assert m["success"] == bool(seed % 3) and "start_time" in m
        assert store.episode_lengths[i] == len(frames["image"]) == m["length"]
        assert store.episode_slice(i) == slice(m["start"], m["end"])
    assert store.episode_ends.dtype == np.int64 and store.episode_ends[-1] == store.n_frames
    assert check_store(path).ok
    # appending in a second session continues the numbering
    with EpisodeWriter(path, image_shape=SHAPE) as w:
        assert w.recovery.clean and w.n_episodes == 3
        meta, frames = synthetic_episode(99, image_shape=SHAPE)
        assert write_episode(w, meta, frames) == 3
    store = EpisodeStore(path)
    assert store.n_episodes == 4 and store.episode_meta(3)["seed"] == 99
    np.testing.assert_array_equal(store.episode(3)["image"], frames["image"])
    with pytest.raises(IndexError, match="out of range"):
        store.episode_meta(4)


def test_frame_and_meta_validation(tmp_path):
    with EpisodeWriter(tmp_path / "v.zarr", image_shape=SHAPE) as w:
        with pytest.raises(EpisodeWriteError, match="start_episode"):
            w.add_frame(**_frame(0))
        with pytest.raises(SchemaError, match="instruction"):
            w.start_episode({"task": "x"})
        with pytest.raises(SchemaError, match="filled in by the writer"):
            w.start_episode(_meta(end=3))
        with pytest.raises(SchemaError, match="not JSON-serialisable"):
            w.start_episode(_meta(when=object()))
        w.start_episode(_meta(label_names=["left", "right"]))
        with pytest.raises(EpisodeWriteError, match="already in progress"):
            w.start_episode(_meta())
        with pytest.raises(EpisodeWriteError, match="empty episode"):
            w.commit()
        bad = [
            ({"image": np.zeros((16, 16, 4), np.uint8)}, "image must be uint8"),
            ({"image": np.zeros(SHAPE, np.float32)}, "image must be uint8"),
            ({"state": np.zeros(7, np.float32)}, "'state' must have shape"),
            ({"action": np.array([np.nan] * 8)}, "'action' has non-finite"),
            ({"timestamp": float("inf")}, "'timestamp' has non-finite"),
            ({"stim_label": 2}, "label_names has only 2"),
            ({"stim_label": -2}, "below -1"),
            ({"stim_xy": (0.5,)}, "'stim_xy' must have shape"),
            ({"stim_phase": 300}, "integer fitting int8"),
        ]
        for override, msg in bad:
            with pytest.raises(SchemaError, match=msg):
                w.add_frame(**{**_frame(0), **override})
        w.add_frame(**_frame(1), stim_label=1, stim_xy=np.array([0.25, 0.75]))
        with pytest.raises(SchemaError, match="timestamps must increase"):
            w.add_frame(**_frame(1))
        w.add_frame(**_frame(2))  # a rejected frame leaves the episode usable
        assert w.commit({"success": True, "success_per_interaction": [True, False]}) == 0
    ep = EpisodeStore(tmp_path / "v.zarr").episode(0)
    np.testing.assert_array_equal(ep["state"][:, 0], [1, 2])
    np.testing.assert_array_equal(ep["stim_label"], [1, -1])  # default -1 when not given
    np.testing.assert_array_equal(ep["stim_xy"], [[0.25, 0.75], [-1, -1]])
    assert ep["stim_phase"].dtype == np.int8 and ep["timestamp"].dtype == np.float64


def test_refuses_other_schema_version_and_shapes(tmp_path):
    path = tmp_path / "s.zarr"
    make_synthetic_store(path, 1, image_shape=SHAPE)
    with pytest.raises(SchemaError, match=r"images of shape \(16, 16, 3\).*image_shape=\(224, 224, 3\)"):
        EpisodeWriter(path)
    with pytest.raises(SchemaError, match="fps=10.*fps=30"):
        EpisodeWriter(path, image_shape=SHAPE, store_meta={"fps": 30})
    root = zarr.open_group(str(path), mode="r+")
    state = root["data/state"][:]
    del root["data/state"]
    root["data"].create_array("state", data=state.astype(np.float64))
    with pytest.raises(SchemaError, match=r"data/state: stored as float64 .*wants float32"):
        EpisodeWriter(path, image_shape=SHAPE)
    root.update_attributes({"schema_version": 99})
    with pytest.raises(SchemaError, match="schema version 99.*version 1"):
        EpisodeWriter(path, image_shape=SHAPE)
    with pytest.raises(SchemaError, match="schema version 99"):
        EpisodeStore(path)


def test_not_empty_non_store_directory_is_refused(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "notes.txt").write_text("hi")
    with pytest.raises(SchemaError, match="not empty and is not a zarr store"):
        EpisodeWriter(tmp_path / "x", image_shape=SHAPE)
    with pytest.raises(StoreError, match="not a zarr v3 store"):
        EpisodeStore(tmp_path / "x")


class _BlockingImages:
    """Stands in for data/image: each write waits for `gate` (a disk that stalls) or raises."""

    def __init__(self, real, gate: threading.Event, error: Exception | None = None):
        self.real, self.gate, self.error = real, gate, error
        self.shape = real.shape

    def resize(self, shape):
        self.real.resize(shape)
        self.shape = self.real.shape

    def __setitem__(self, key, value):
        self.gate.wait(10)
        if self.error is not None:
            raise self.error
        self.real[key] = value


def test_queue_overflow_fails_the_episode_never_thins(tmp_path):
    path = tmp_path / "q.zarr"
    with EpisodeWriter(path, image_shape=SHAPE, queue_size=3) as w:
        gate = threading.Event()
        real = w._arrays["image"]
        w._arrays["image"] = _BlockingImages(real, gate)
        w.start_episode(_meta())
        with pytest.raises(EpisodeWriteError, match=r"queue full \(3 frames") as info:
            for t in range(10):
                w.add_frame(**_frame(t))
        assert 3 <= t <= 4  # the worker holds at most one frame, the queue three
        with pytest.raises(EpisodeWriteError, match="queue full"):
            w.add_frame(**_frame(20))  # stays failed
        with pytest.raises(EpisodeWriteError, match="queue full"):
            w.commit()
        assert w.failed is info.value
        gate.set()
        w.discard()
        w._arrays["image"] = real
        w.start_episode(_meta(seed=1))
        for t in range(3):
            w.add_frame(**_frame(100 + t))
        assert w.commit() == 0
    store = EpisodeStore(path)
    assert store.n_episodes == 1 and store.episode_meta(0)["seed"] == 1
    np.testing.assert_array_equal(store.episode(0)["image"][:, 0, 0, 0], [100, 101, 102])


def test_background_error_surfaces_on_next_call(tmp_path):
    path = tmp_path / "e.zarr"
    with EpisodeWriter(path, image_shape=SHAPE) as w:
        gate = threading.Event()
        gate.set()
        real = w._arrays["image"]
        w._arrays["image"] = _BlockingImages(real, gate, OSError("No space left on device"))
        w.start_episode(_meta())
        w.add_frame(**_frame(0))
        w._queue.join()
        with pytest.raises(EpisodeWriteError, match="background image write failed: OSError: No space") as info:
            w.add_frame(**_frame(1))
        assert isinstance(info.value.__cause__, OSError)
        with pytest.raises(EpisodeWriteError, match="No space"):
            w.commit()
        w.discard()
        w._arrays["image"] = real
        w.start_episode(_meta(seed=5))
        w.add_frame(**_frame(7))
        assert w.commit() == 0
    assert EpisodeStore(path).episode_meta(0)["seed"] == 5


def test_discard_and_close_leave_only_committed_frames(tmp_path):
    path = tmp_path / "d.zarr"
    w = EpisodeWriter(path, image_shape=SHAPE)
    w.start_episode(_meta(seed=1))
    for t in range(5):
        w.add_frame(**_frame(t))
    w.discard()
    w.start_episode(_meta(seed=2))
    for t in range(3):
        w.add_frame(**_frame(50 + t))
    w.commit()
    w.start_episode(_meta(seed=3))
    w.add_frame(**_frame(9))
    w.close()  # the unfinished episode is dropped, spare image slots trimmed
    store = EpisodeStore(path)
    assert store.n_episodes == 1 and store.episode_meta(0)["seed"] == 2
    np.testing.assert_array_equal(store.episode(0)["image"][:, 0, 0, 0], [50, 51, 52])
    assert all(a.shape[0] == 3 for a in store.arrays.values())
    assert check_store(path).ok
    with pytest.raises(EpisodeWriteError, match="closed"):
        w.start_episode(_meta())


def test_recovery_truncates_uncommitted_data_and_reports_it(tmp_path):
    path = tmp_path / "r.zarr"
    make_synthetic_store(path, 2, length=4, image_shape=SHAPE)
    root = zarr.open_group(str(path), mode="r+")
    # what a kill leaves: frames of an unfinished episode and an end marker without its metadata
    for key in ("image", "state", "timestamp"):
        arr = root[f"data/{key}"]
        arr.append(np.ones((3, *arr.shape[1:]), arr.dtype))
    root[EPISODE_ENDS].append(np.array([11], np.int64))
    store = EpisodeStore(path)  # readers ignore the leftovers without touching the store
    assert store.n_episodes == 2 and store.n_frames == 8
    res = check_store(path)
    assert not res.ok and any("moss-data repair" in e for e in res.errors)
    with EpisodeWriter(path, image_shape=SHAPE) as w:
        rep = w.recovery
        assert not rep.clean
        assert rep.removed_frames == {"image": 3, "state": 3, "timestamp": 3}
        assert rep.removed_episode_ends == 1 and rep.committed_episodes == 2 and rep.committed_frames == 8
        assert "removed uncommitted data" in str(rep)
    assert check_store(path).ok
    for i in range(2):
        np.testing.assert_array_equal(EpisodeStore(path).episode(i)["image"],
                                      synthetic_episode(i, 4, SHAPE)[1]["image"])


def test_one_writer_per_store(tmp_path):
    path = tmp_path / "l.zarr"
    with EpisodeWriter(path, image_shape=SHAPE), pytest.raises(StoreError, match="another process .* is writing"):
        EpisodeWriter(path, image_shape=SHAPE)
    with EpisodeWriter(path, image_shape=SHAPE) as w:  # released on close
        assert w.n_episodes == 0
