"""The episode-store schema: per-frame keys, their dtypes and shapes, and the store-level metadata.

One zarr v3 store per dataset in the diffusion_policy ReplayBuffer layout (data/README.md):
`data/<key>` arrays concatenated in time and `meta/episode_ends` (int64, cumulative exclusive ends).
The per-episode metadata lives in the attributes of `meta/episode_ends` (key `episodes`), so that
one atomic metadata write commits an episode (writer.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

SCHEMA_VERSION = 1
FORMAT_NAME = "moss-vla episode store"
DEFAULT_FPS = 10
DEFAULT_IMAGE_SHAPE = (224, 224, 3)
STATE_DIM = 8  # 7 joint positions (rad) + gripper width (m)
ACTION_DIM = 8  # 7 absolute joint targets (rad) + commanded gripper width (m)

EPISODE_ENDS = "meta/episode_ends"
EPISODES_ATTR = "episodes"  # attribute of meta/episode_ends: list of per-episode metadata dicts
# keys the writer fills in for every episode (callers must not set them)
RESERVED_EPISODE_KEYS = ("index", "start", "end", "length")
REQUIRED_EPISODE_KEYS = ("task", "instruction")


@dataclass(frozen=True)
class KeySpec:
    """One per-frame array `data/<name>`: dtype, per-frame shape, frames per chunk, default value."""

    name: str
    dtype: np.dtype
    frame_shape: tuple[int, ...]
    chunk_frames: int
    default: Any  # value add_frame uses when the caller passes nothing (None = required)
    doc: str


def frame_keys(image_shape: tuple[int, int, int] = DEFAULT_IMAGE_SHAPE) -> dict[str, KeySpec]:
    """The per-frame keys of schema version 1 in storage order (image first)."""
    specs = [
        # one frame per chunk: appends write one small file and window reads are random access
        KeySpec("image", np.dtype(np.uint8), tuple(image_shape), 1, None,
                "display crop the policy sees, RGB uint8"),
        KeySpec("state", np.dtype(np.float32), (STATE_DIM,), 1024, None,
                "7 joint positions (rad) + gripper width (m)"),
        KeySpec("action", np.dtype(np.float32), (ACTION_DIM,), 1024, None,
                "absolute joint targets (rad) + gripper width (m) commanded at this step"),
        KeySpec("timestamp", np.dtype(np.float64), (), 1024, None, "capture time, seconds"),
        KeySpec("stim_label", np.dtype(np.int16), (), 1024, -1,
                "-1 = no interaction in progress, else index into the episode's label_names"),
        KeySpec("stim_phase", np.dtype(np.int8), (), 1024, 0, "index into the episode's phase_names"),
        KeySpec("stim_xy", np.dtype(np.float32), (2,), 1024, (-1.0, -1.0),
                "object centre on screen, normalised 0..1 (x right, y down); (-1, -1) = none"),
        KeySpec("stim_interaction", np.dtype(np.int16), (), 1024, -1,
                "index of the interaction within the episode, -1 = none"),
        KeySpec("stim_time_to_deadline", np.dtype(np.float32), (), 1024, -1.0,
                "seconds until the interaction's deadline, -1 = none"),
    ]
    return {s.name: s for s in specs}


KEY_NAMES = tuple(frame_keys().keys())


class SchemaError(ValueError):
    """The store (or a frame) does not follow the schema; the message names the key and the fix."""


def to_jsonable(value: Any, where: str = "metadata") -> Any:
    """Convert numpy scalars/arrays and tuples to plain JSON types; reject what JSON cannot hold."""
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise SchemaError(f"{where}: keys must be strings, got {k!r}")
            out[k] = to_jsonable(v, f"{where}.{k}")
        return out
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist(), where)
    if isinstance(value, np.generic):
        return to_jsonable(value.item(), where)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise SchemaError(f"{where}: {value} cannot be stored in JSON metadata; use None")
        return value
    if value is None or isinstance(value, (str, bool, int)):
        return value
    raise SchemaError(f"{where}: {type(value).__name__} {value!r} is not JSON-serialisable; "
                      f"store a string, number, bool, list or dict")


def validate_episode_meta(meta: dict[str, Any]) -> dict[str, Any]:
    """Check the caller's per-episode metadata and return a JSON-safe copy."""
    if not isinstance(meta, dict):
        raise SchemaError(f"episode metadata must be a dict, got {type(meta).__name__}")
    missing = [k for k in REQUIRED_EPISODE_KEYS if not isinstance(meta.get(k), str)]
    if missing:
        raise SchemaError(f"episode metadata needs string values for {missing} "
                          f"(got keys {sorted(meta)}); e.g. task='movesense_lr', instruction='Point left ...'")
    reserved = [k for k in RESERVED_EPISODE_KEYS if k in meta]
    if reserved:
        raise SchemaError(f"episode metadata keys {reserved} are filled in by the writer; remove them")
    for names in ("label_names", "phase_names"):
        if names in meta and not (isinstance(meta[names], (list, tuple))
                                   and all(isinstance(n, str) for n in meta[names])):
            raise SchemaError(f"episode metadata '{names}' must be a list of strings, got {meta[names]!r}")
    return to_jsonable(meta, "episode metadata")


def default_store_meta(image_shape: tuple[int, int, int]) -> dict[str, Any]:
    """Store-level attributes every store has; callers add camera / display descriptions."""
    return {
        "format": FORMAT_NAME,
        "schema_version": SCHEMA_VERSION,
        "fps": DEFAULT_FPS,
        "image_shape": list(image_shape),
        "keys": {s.name: {"dtype": s.dtype.str, "frame_shape": list(s.frame_shape), "doc": s.doc}
                 for s in frame_keys(image_shape).values()},
        # what the camera and the display were; the recorder fills these (raw size, crop corners, ...)
        "camera": {},
        "display": {},
    }
