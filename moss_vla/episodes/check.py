"""Validate an episode store against the schema and summarise it (`moss-data check` / `info`).

Every problem is reported as one message naming the file or key, what is wrong and what to do;
`check_store` collects all of them instead of stopping at the first.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from tqdm import tqdm

from moss_vla.episodes.schema import (
    EPISODE_ENDS,
    EPISODES_ATTR,
    FORMAT_NAME,
    REQUIRED_EPISODE_KEYS,
    SCHEMA_VERSION,
    frame_keys,
)
from moss_vla.episodes.store import EpisodeStore, StoreError, chunk_problems, open_node, read_ends, writer_pid


@dataclass
class CheckResult:
    path: str
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    n_episodes: int = 0
    n_frames: int = 0
    damaged_episodes: set[int] = field(default_factory=set)  # episodes holding a damaged chunk (repair drops them)

    @property
    def ok(self) -> bool:
        return not self.errors


def check_store(path: str | os.PathLike, images: bool = True, progress: bool = False) -> CheckResult:
    """Check layout, dtypes, shapes, lengths, episode ends, metadata and values.

    images: also decode every image chunk (catches damaged files; the slow part on big stores).
    """
    p = Path(path)
    res = CheckResult(str(p))
    err, warn = res.errors.append, res.warnings.append
    if not p.exists():
        err(f"{p}: does not exist")
        return res
    if not (p / "zarr.json").is_file():
        hint = " (zarr v2 metadata found; this format is zarr v3)" if (p / ".zgroup").exists() else ""
        err(f"{p}: not a zarr store: {p / 'zarr.json'} is missing{hint}")
        return res
    try:
        root = zarr.open_group(str(p), mode="r", zarr_format=3)
    except Exception as exc:  # noqa: BLE001 - whatever zarr raises, it is a finding to report
        err(f"{p}: not a readable zarr v3 group: {exc}")
        return res
    attrs = dict(root.attrs)
    if attrs.get("format") != FORMAT_NAME:
        err(f"{p}: root attribute 'format' is {attrs.get('format')!r}, expected {FORMAT_NAME!r} "
            f"(not written by moss-vla's EpisodeWriter)")
    if attrs.get("schema_version") != SCHEMA_VERSION:
        err(f"{p}: schema_version {attrs.get('schema_version')!r}, expected {SCHEMA_VERSION}")
    if not isinstance(attrs.get("fps"), (int, float)) or attrs.get("fps", 0) <= 0:
        err(f"{p}: root attribute 'fps' missing or not positive: {attrs.get('fps')!r}")
    image_shape = attrs.get("image_shape")
    if not (isinstance(image_shape, list) and len(image_shape) == 3 and image_shape[2] == 3):
        err(f"{p}: root attribute 'image_shape' should be [H, W, 3], got {image_shape!r}")
        image_shape = None
    specs = frame_keys(tuple(image_shape) if image_shape else (1, 1, 3))

    # ---- arrays: present, dtypes, per-frame shapes
    arrays: dict[str, Any] = {}
    for name, spec in specs.items():
        key = f"data/{name}"
        try:
            arr = open_node(root, key, p)
        except KeyError:
            err(f"{p}: missing key {key} ({spec.dtype} {('N', *spec.frame_shape)})")
            continue
        except StoreError as exc:
            err(str(exc))
            continue
        if not isinstance(arr, zarr.Array):
            err(f"{p}/{key}: is a group, expected an array")
            continue
        if arr.dtype != spec.dtype:
            err(f"{p}/{key}: wrong dtype {arr.dtype}, expected {spec.dtype}")
        if image_shape is not None and tuple(arr.shape[1:]) != spec.frame_shape:
            err(f"{p}/{key}: frames of shape {tuple(arr.shape[1:])}, expected {spec.frame_shape}")
        arrays[name] = arr
    try:
        ends_arr = open_node(root, EPISODE_ENDS, p)
        if ends_arr.dtype != np.int64 or ends_arr.ndim != 1:
            err(f"{p}/{EPISODE_ENDS}: wrong dtype/shape {ends_arr.dtype} {ends_arr.shape}, expected int64 (E,)")
        ends = read_ends(ends_arr, p)
    except KeyError:
        err(f"{p}: missing key {EPISODE_ENDS} (int64 cumulative episode ends, the commit point)")
        return res
    except StoreError as exc:
        err(str(exc))
        return res

    # ---- episode ends and the committed metadata
    if len(ends) and ends[0] <= 0:
        err(f"{p}/{EPISODE_ENDS}: first episode end is {ends[0]}, must be > 0 (empty episode)")
    bad = np.nonzero(np.diff(ends) <= 0)[0]
    if len(bad):
        j = int(bad[0]) + 1
        err(f"{p}/{EPISODE_ENDS}: episode ends out of order: episode {j} ends at {ends[j]} after episode "
            f"{j - 1} ended at {ends[j - 1]} (ends must strictly increase)")
    metas = ends_arr.attrs.get(EPISODES_ATTR)
    if not isinstance(metas, list):
        err(f"{p}/{EPISODE_ENDS}: attribute '{EPISODES_ATTR}' (per-episode metadata list) missing")
        metas = []
    n = len(metas)
    if len(ends) > n:
        err(f"{p}/{EPISODE_ENDS}: {len(ends) - n} end marker(s) without committed metadata (an interrupted "
            f"commit); run `moss-data repair {p}`")
    elif len(ends) < n:
        err(f"{p}/{EPISODE_ENDS}: {len(ends)} ends but {n} committed episodes in its metadata")
    for i, m in enumerate(metas):
        where = f"{p}/{EPISODE_ENDS} episode {i}"
        if not isinstance(m, dict):
            err(f"{where}: metadata is not a dict")
            continue
        for k in REQUIRED_EPISODE_KEYS:
            if not isinstance(m.get(k), str):
                err(f"{where}: metadata '{k}' missing or not a string")
        if m.get("index") != i:
            err(f"{where}: metadata 'index' is {m.get('index')!r}")
        start = int(ends[i - 1]) if 0 < i <= len(ends) else 0
        if i < len(ends) and (m.get("end") != int(ends[i]) or m.get("start") != start
                              or m.get("length") != int(ends[i]) - start):
            err(f"{where}: metadata start/end/length {m.get('start')}/{m.get('end')}/{m.get('length')} "
                f"disagree with episode_ends ({start}/{int(ends[i])})")
    n_ok = min(n, len(ends))
    end = int(ends[n_ok - 1]) if n_ok else 0
    res.n_episodes, res.n_frames = n_ok, end

    # ---- lengths
    writer = writer_pid(p)
    lengths = {k: a.shape[0] for k, a in arrays.items()}
    if len(set(lengths.values())) > 1 or any(v != end for v in lengths.values()):
        desc = ", ".join(f"{k}={v}" for k, v in lengths.items())
        short = [k for k, v in lengths.items() if v < end]
        if short:
            err(f"{p}: arrays of different lengths ({desc}); {short} end before the last committed episode "
                f"end {end}: committed frames are missing")
        elif writer is not None:
            warn(f"{p}: a writer (pid {writer}) has the store open; frames past {end} are an episode in "
                 f"progress ({desc})")
        else:
            err(f"{p}: arrays of different lengths ({desc}); the committed episodes end at {end}, the rest "
                f"is uncommitted data of an interrupted writer; run `moss-data repair {p}`")
    ends_ok = not len(bad) and not (len(ends) and ends[0] <= 0)
    arrays_ok = all(k in arrays and arrays[k].dtype == specs[k].dtype and arrays[k].shape[0] >= end
                    for k in specs)
    if not (ends_ok and arrays_ok):
        return res  # value checks need ordered ends and every array present and long enough

    # ---- every chunk of the committed range present and whole (checksum / Blosc header), before any decoding
    committed = ends[:n_ok]
    damaged = [c for k in specs for c in chunk_problems(root, p, k, committed, read_bytes=images or k != "image")]
    for c in damaged:
        err(str(c))
        res.damaged_episodes.update(c.episodes)
    if damaged:
        err(f"{p}: {len(res.damaged_episodes)} episode(s) hold damaged chunks; `moss-data repair {p} --drop-damaged` "
            f"writes the store again without them (the damaged one is kept beside it)")
        return res  # decoding a damaged chunk can crash the decoder

    # ---- values per episode
    small = {k: arrays[k][:end] for k in specs if k != "image"}
    for i in range(n_ok):
        m = metas[i] if isinstance(metas[i], dict) else {}
        s, e = (int(ends[i - 1]) if i else 0), int(ends[i])
        where = f"{p} episode {i} (frames {s}..{e - 1})"
        for k in ("state", "action", "timestamp", "stim_xy", "stim_time_to_deadline"):
            x = small[k][s:e]
            if not np.isfinite(x).all():
                err(f"{where}: data/{k} has non-finite values at frame {s + int(np.argwhere(~np.isfinite(x))[0][0])}")
        ts = small["timestamp"][s:e]
        if len(ts) > 1 and not (np.diff(ts) > 0).all():
            err(f"{where}: data/timestamp does not increase (frame {s + int(np.argmax(np.diff(ts) <= 0)) + 1})")
        for k, names, lo in (("stim_label", "label_names", -1), ("stim_phase", "phase_names", 0)):
            x = small[k][s:e].astype(np.int64)
            if len(x) and x.min() < lo:
                err(f"{where}: data/{k} has value {x.min()} < {lo}")
            if names in m and len(x) and x.max() >= len(m[names]):
                err(f"{where}: data/{k} has value {x.max()} but the episode has {len(m[names])} {names}")
        xy = small["stim_xy"][s:e]
        outside = ~(((xy >= 0) & (xy <= 1)).all(1) | (xy == -1).all(1))
        if outside.any():
            warn(f"{where}: data/stim_xy outside 0..1 at {int(outside.sum())} frames (object off screen?)")
        if len(ts) > 1 and "fps" in attrs:
            dt = np.median(np.diff(ts))
            if abs(dt * attrs["fps"] - 1) > 0.2:
                warn(f"{where}: median frame interval {dt * 1000:.1f} ms, the store says {attrs['fps']} fps")
    if images and "image" in arrays and end:
        img = arrays["image"]
        block = 256
        for a in tqdm(range(0, end, block), desc="check images", unit="block", disable=not progress):
            try:
                img[a:min(a + block, end)]
            except Exception as exc:  # noqa: BLE001 - any codec/file failure is a finding
                err(f"{p}/data/image: frames {a}..{min(a + block, end) - 1} cannot be decoded: {exc}")
    return res


def store_info(path: str | os.PathLike) -> dict[str, Any]:
    """Summary for `moss-data info`: episodes, frames, tasks, duration, success labels."""
    store = EpisodeStore(path)
    metas = store.episode_metas
    ts = store.read("timestamp")
    durations = [float(ts[store.episode_slice(i)][-1] - ts[store.episode_slice(i)][0]) + 1.0 / store.fps
                 for i in range(store.n_episodes)]
    tasks = Counter(m["task"] for m in metas)
    success: dict[str, dict[str, int]] = {}
    for m in metas:
        for k, v in m.items():
            if k.startswith("success") and isinstance(v, (bool, int, float)):
                d = success.setdefault(k, {"true": 0, "false": 0})
                d["true" if v else "false"] += 1
    labelled = sum(any(k.startswith("success") for k in m) for m in metas)
    lengths = store.episode_lengths
    return {
        "path": str(store.path),
        "schema_version": store.meta.get("schema_version"),
        "fps": store.fps,
        "image_shape": store.meta.get("image_shape"),
        "camera": store.meta.get("camera"),
        "display": store.meta.get("display"),
        "episodes": store.n_episodes,
        "frames": store.n_frames,
        "duration_s": round(float(sum(durations)), 2),
        "episode_length": {"min": int(lengths.min()), "mean": round(float(lengths.mean()), 1),
                           "max": int(lengths.max())} if len(lengths) else None,
        "tasks": dict(tasks),
        "instructions": sorted({m["instruction"] for m in metas}),
        "success_labels": {"episodes_labelled": labelled, **success},
        "operators": dict(Counter(str(m.get("operator")) for m in metas if "operator" in m)),
    }
