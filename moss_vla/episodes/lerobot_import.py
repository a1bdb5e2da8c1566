"""Import a local LeRobotDataset into an episode store (`moss-data import-lerobot SRC DST`).

Reads with lerobot 0.4.4's own `LeRobotDataset` (format v3.0, offline: the dataset must be complete on
disk) and writes through `EpisodeWriter`, so an imported store is validated and crash-safe like a recording.

What maps onto our layout (data/README.md): `state` and `action` are 7 joint positions (rad) + the gripper
width (m), the action an absolute joint target. A feature of 8 values maps as it is; 7 joint values plus a
1-value gripper feature (`gripper_key`) map by concatenation. Anything else is refused with a message naming
the feature: other sizes (e.g. 6-D end-effector velocities, 7-D pose + quaternion), and 8-value features whose
names say they are end-effector poses, velocities or deltas (x, y, z, roll, quat, vel, delta, ...), which most
public Franka datasets in LeRobot format carry. Values are taken as they are (units cannot be checked: a
gripper in 0..1 stays 0..1).

Images: one image or video feature (`image_key`; the only one, or `observation.images.display`, by default),
made square by a centre crop and resized to `image_size` if given (the policy presets take 224 x 224).
Rate: the store is 10 Hz. A source at 10 Hz maps frame for frame; a source at an integer multiple k of 10 Hz
keeps every k-th frame, with the action of the last frame of each 0.1 s (the target commanded for the end of
the step, as our actions are); any other rate is refused, naming it.

What our own export wrote comes back in full: the `moss.*` features (stimulus label, phase, position,
interaction, time to deadline, camera timestamps) and the per-episode and store metadata of the
`meta/moss_episodes.json` sidecar. Other datasets get defaults (no stimulus) and the LeRobot task string as
the instruction. LeRobot v2.1 datasets are refused with the command that converts them (lerobot's own
converter, local, in place).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from moss_vla.episodes.lerobot_export import EXTRA_PREFIX, IMAGE_FEATURE, SIDECAR
from moss_vla.episodes.schema import DEFAULT_FPS, RESERVED_EPISODE_KEYS, frame_keys
from moss_vla.episodes.store import CHUNKS_ATTR
from moss_vla.episodes.writer import EpisodeWriter

# name tokens of features that are not joint positions: end-effector poses, velocities, deltas
NOT_JOINTS = {"x", "y", "z", "roll", "pitch", "yaw", "rx", "ry", "rz", "qx", "qy", "qz", "qw", "quat", "quaternion",
              "eef", "ee", "cartesian", "pose", "pos_x", "vel", "velocity", "velocities", "delta", "twist", "euler"}
WRITER_KEYS = ("format", "schema_version", "image_shape", "keys", CHUNKS_ATTR)


class ImportRefused(ValueError):
    """The source cannot be mapped onto the store's layout; the message names the feature or value at fault."""


def _names(ft: dict[str, Any]) -> list[str]:
    names = ft.get("names")
    if isinstance(names, dict):
        names = [n for v in names.values() for n in (v if isinstance(v, list) else [v])]
    return [str(n) for n in names] if isinstance(names, list) else []


def _looks_not_joints(names: list[str]) -> list[str]:
    return [n for n in names if NOT_JOINTS & set(re.split(r"[_.\s/-]+", n.lower()))]


def _feature(features: dict[str, dict], key: str, what: str) -> dict[str, Any]:
    if key not in features:
        have = ", ".join(k for k in features if k not in ("timestamp", "frame_index", "episode_index", "index",
                                                          "task_index"))
        raise ImportRefused(f"the dataset has no feature {key!r} for the {what} (its features: {have}); "
                            f"choose one with --{what}-key")
    return features[key]


def check_joint_feature(features: dict[str, dict], key: str, what: str, gripper_key: str | None) -> None:
    """Refuse a state/action feature that is not 7 joint positions + gripper (module docstring)."""
    ft = _feature(features, key, what)
    shape = tuple(ft.get("shape") or ())
    names = _names(ft)
    layout = "our layout is 7 joint positions (rad) + gripper width (m), the action an absolute joint target"
    bad = _looks_not_joints(names)
    if bad:
        raise ImportRefused(f"feature {key!r} ({what}) has names {names}: {bad} are end-effector poses, velocities "
                            f"or deltas, not joint positions; {layout}, and no mapping from end-effector "
                            f"values is made (it would need the robot's inverse kinematics and absolute targets)")
    if shape == (8,) and gripper_key is None:
        return
    if shape == (7,):
        if gripper_key is None:
            raise ImportRefused(f"feature {key!r} ({what}) has 7 values (joint positions?) and no gripper: pass "
                                f"--gripper-key with the dataset's 1-value gripper feature; {layout}")
        g = _feature(features, gripper_key, "gripper")
        if tuple(g.get("shape") or ()) != (1,):
            raise ImportRefused(f"feature {gripper_key!r} (gripper) has shape {tuple(g.get('shape') or ())}, "
                                f"expected (1,)")
        return
    raise ImportRefused(f"feature {key!r} ({what}) has shape {shape}{f' (names {names})' if names else ''}; "
                        f"{layout}: an (8,) feature, or (7,) with --gripper-key; nothing else is mapped")


def choose_image_key(features: dict[str, dict], image_key: str | None) -> str:
    images = [k for k, f in features.items() if f.get("dtype") in ("video", "image")]
    if image_key is not None:
        if image_key not in images:
            raise ImportRefused(f"--image-key {image_key!r} is not an image or video feature of the dataset "
                                f"(those are: {images or 'none'})")
        return image_key
    if len(images) == 1:
        return images[0]
    if IMAGE_FEATURE in images:
        return IMAGE_FEATURE
    raise ImportRefused(f"the dataset has {len(images)} image/video features {images}: choose one with --image-key"
                        if images else "the dataset has no image or video feature; the store needs one camera")


def resample_plan(src_fps: float, fps: int = DEFAULT_FPS) -> int:
    """Every how-many-th source frame the store keeps (1: frame for frame); refuses a rate it cannot convert."""
    k = src_fps / fps
    if src_fps <= 0 or abs(k - round(k)) > 1e-6 or round(k) < 1:
        raise ImportRefused(f"the dataset is recorded at {src_fps:g} fps; the store is {fps} Hz and only a source at "
                            f"{fps} Hz or an integer multiple of it ({2 * fps}, {3 * fps}, ...) is converted "
                            f"(by keeping every k-th frame); resample it first")
    return round(k)


def _square(img: np.ndarray, size: int | None) -> np.ndarray:
    """Centre crop to a square and resize to size x size (None: as it is)."""
    if size is None:
        return img
    from PIL import Image

    h, w = img.shape[:2]
    s = min(h, w)
    y, x = (h - s) // 2, (w - s) // 2
    crop = img[y:y + s, x:x + s]
    if s == size:
        return np.ascontiguousarray(crop)
    return np.asarray(Image.fromarray(crop).resize((size, size), Image.BILINEAR))


def _to_uint8_hwc(frames: Any) -> np.ndarray:
    """LeRobot's decoded frames (N, 3, H, W) float in [0, 1] -> (N, H, W, 3) uint8."""
    x = frames.numpy() if hasattr(frames, "numpy") else np.asarray(frames)
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)


def open_lerobot(src: str | os.PathLike, repo_id: str | None = None) -> Any:
    """The LeRobotDataset at the local root `src` (v3.0), or one clear error saying what is wrong with it."""
    src = Path(src)
    info_path = src / "meta" / "info.json"
    if not src.is_dir():
        raise FileNotFoundError(f"{src}: no such LeRobot dataset (directory does not exist)")
    if not info_path.is_file():
        raise ImportRefused(f"{src}: not a LeRobot dataset ({info_path} is missing)")
    info = json.loads(info_path.read_text())
    version = str(info.get("codebase_version", "?"))
    if version.startswith("v2"):
        raise ImportRefused(
            f"{src}: a LeRobot {version} dataset; lerobot 0.4.4 reads v3.0. Convert it in place with lerobot's "
            f"converter (local, no upload): python -m lerobot.datasets.v30.convert_dataset_v21_to_v30 "
            f"--repo-id={src.name} --root={src.parent} --push-to-hub=false")
    if not version.startswith("v3"):
        raise ImportRefused(f"{src}: LeRobot codebase_version {version!r}; this reads v3.0 (lerobot 0.4.4)")
    for need in ("meta/tasks.parquet", "meta/episodes", "data"):
        if not (src / need).exists():
            raise ImportRefused(f"{src}: {src / need} is missing; the dataset is incomplete (nothing is downloaded)")
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    return LeRobotDataset(repo_id or f"local/{src.name}", root=src, video_backend="pyav", download_videos=False)


def import_lerobot(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    image_key: str | None = None,
    state_key: str = "observation.state",
    action_key: str = "action",
    gripper_key: str | None = None,
    image_size: int | None = None,
    task: str | None = None,
    episodes: Sequence[int] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Write the episodes of the LeRobotDataset at `src` into a new store at `dst` (module docstring); returns a
    report (episodes, frames, the keys used, the frame step of the resampling)."""
    dst = Path(dst)
    if dst.exists():
        raise FileExistsError(f"{dst}: already exists; import into a new store path")
    ds = open_lerobot(src)
    feats = ds.meta.features
    img_key = choose_image_key(feats, image_key)
    check_joint_feature(feats, state_key, "state", gripper_key)
    check_joint_feature(feats, action_key, "action", gripper_key)
    step = resample_plan(float(ds.meta.fps))
    n_src = int(ds.meta.total_episodes)
    chosen = list(range(n_src)) if episodes is None else [int(e) for e in episodes]
    for e in chosen:
        if not 0 <= e < n_src:
            raise IndexError(f"{src}: episode {e} out of range, the dataset has {n_src} episodes (0..{n_src - 1})")
    shape = tuple(feats[img_key]["shape"])
    if len(shape) != 3 or 3 not in (shape[0], shape[2]):
        raise ImportRefused(f"feature {img_key!r} has shape {shape}; expected an RGB image")
    h, w = (shape[0], shape[1]) if shape[2] == 3 else (shape[1], shape[2])
    if image_size is None and h != w:
        raise ImportRefused(f"feature {img_key!r} is {h} x {w}; the policy takes square frames: pass --image-size "
                            f"(e.g. 224) to centre-crop and resize")
    out_shape = (int(image_size or h), int(image_size or h), 3)

    sidecar = {}
    side_path = Path(src) / "meta" / SIDECAR
    if side_path.is_file():
        sidecar = json.loads(side_path.read_text())
    side_eps = {int(e.get("lerobot_episode_index", i)): e for i, e in enumerate(sidecar.get("episodes", []))}
    extra = {k: EXTRA_PREFIX + k for k in frame_keys(out_shape) if EXTRA_PREFIX + k in feats}
    cols = ["episode_index", "frame_index", "timestamp", state_key, action_key, *extra.values()]
    cols += [gripper_key] if gripper_key else []
    cols += [img_key] if feats[img_key]["dtype"] == "image" else []
    # arrow, not datasets' numpy format: that one casts float64 columns (camera timestamps) to float32
    table = ds.hf_dataset.select_columns(cols).with_format("arrow")
    ep_col = np.asarray(table["episode_index"])

    store_meta = {k: v for k, v in (sidecar.get("store_meta") or {}).items() if k not in WRITER_KEYS}
    store_meta.update(fps=DEFAULT_FPS, imported_from={"lerobot_root": str(Path(src).resolve()),
                                                      "repo_id": ds.repo_id, "fps": float(ds.meta.fps),
                                                      "image_key": img_key, "state_key": state_key,
                                                      "action_key": action_key, "gripper_key": gripper_key,
                                                      "frame_step": step})
    tasks = ds.meta.tasks.index.tolist() if hasattr(ds.meta.tasks, "index") else []
    frames_written = 0
    with EpisodeWriter(dst, store_meta=store_meta, image_shape=out_shape) as writer:
        for e in tqdm(chosen, desc=f"import {Path(src).name}", unit="episode", disable=not progress):
            rows = np.nonzero(ep_col == e)[0]
            arrow = table[int(rows[0]):int(rows[-1]) + 1] if len(rows) else None
            part = {c: arrow.column(c).to_pylist() for c in cols} if arrow is not None else None
            if part is None or not np.array_equal(np.asarray(part["episode_index"]), np.full(len(rows), e)):
                raise ImportRefused(f"{src}: the frames of episode {e} are not contiguous in its data files")
            n = len(rows)
            keep = np.arange(0, n, step)
            act_rows = np.minimum(keep + step - 1, n - 1)  # the last commanded target of each 0.1 s
            state = np.asarray(np.stack(part[state_key]), dtype=np.float32)
            action = np.asarray(np.stack(part[action_key]), dtype=np.float32)
            if gripper_key:
                grip = np.asarray(np.stack(part[gripper_key]), dtype=np.float32).reshape(n, 1)
                state = np.concatenate([state, grip], 1) if state.shape[1] == 7 else state
                action = np.concatenate([action, grip], 1) if action.shape[1] == 7 else action
            images = _episode_images(ds, part, img_key, e, keep)
            values = {"state": state[keep], "action": action[act_rows]}
            for k, col in extra.items():
                values[k] = np.asarray(np.stack(part[col]))[keep].reshape((len(keep), *frame_keys(out_shape)[k].frame_shape))
            if "timestamp" not in values:
                values["timestamp"] = np.asarray(part["timestamp"], dtype=np.float64)[keep]
            side = side_eps.get(e, {})
            meta = {k: v for k, v in side.items() if k not in (*RESERVED_EPISODE_KEYS, "lerobot_episode_index",
                                                               "camera_timestamps", "start_time")}
            ep_tasks = ds.meta.episodes[e].get("tasks") or []
            text = ep_tasks[0] if ep_tasks else (tasks[0] if tasks else "")
            meta.setdefault("instruction", text)
            meta.setdefault("task", task or "lerobot")
            if "start_time" in side:
                meta["start_time"] = side["start_time"]
            meta["source"] = {"lerobot_root": str(Path(src).resolve()), "episode_index": e}
            writer.start_episode(meta)
            for j in range(len(keep)):
                writer.add_frame(_square(images[j], image_size), **{k: v[j] for k, v in values.items()})
            writer.commit()
            frames_written += len(keep)
    return {"dst": str(dst), "episodes": len(chosen), "frames": frames_written, "image_key": img_key,
            "state_key": state_key, "action_key": action_key, "gripper_key": gripper_key, "frame_step": step,
            "image_shape": list(out_shape), "moss_features": sorted(extra), "sidecar": bool(sidecar)}


def _episode_images(ds: Any, part: dict[str, Any], key: str, episode: int, keep: np.ndarray) -> np.ndarray:
    """The kept frames of one episode as (N, H, W, 3) uint8: PNG features from the table, video features decoded
    in one pass with lerobot's decoder."""
    if ds.meta.features[key]["dtype"] == "image":  # PNG bytes (or a path) per frame
        import io

        from PIL import Image

        def load(cell: dict[str, Any]) -> np.ndarray:
            src = io.BytesIO(cell["bytes"]) if cell.get("bytes") else ds.root / cell["path"]
            return np.asarray(Image.open(src).convert("RGB"))

        return np.stack([load(part[key][int(j)]) for j in keep]).astype(np.uint8)
    from lerobot.datasets.video_utils import decode_video_frames

    ep = ds.meta.episodes[episode]
    start = float(ep[f"videos/{key}/from_timestamp"])
    ts = [start + float(t) for t in np.asarray(part["timestamp"], dtype=np.float64)[keep]]
    path = ds.root / ds.meta.get_video_file_path(episode, key)
    if not path.is_file():
        raise ImportRefused(f"{path}: the video of episode {episode} ({key}) is missing; nothing is downloaded")
    return _to_uint8_hwc(decode_video_frames(path, ts, ds.tolerance_s, "pyav"))
