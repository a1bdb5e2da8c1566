"""Export an episode store to a LeRobotDataset (format v3.0, lerobot 0.4.4).

Uses lerobot's own writer (`LeRobotDataset.create`, `add_frame`, `save_episode`, `finalize`).
Features: the display crop as a video (`observation.images.display`, AV1 via the libsvtav1 encoder
bundled in PyAV's wheels), `observation.state` (8), `action` (8), and every other per-frame key of the
store as `moss.<key>` (`moss.stim_label`, `moss.stim_phase`, `moss.stim_xy`, `moss.stim_interaction`,
`moss.stim_time_to_deadline`, `moss.timestamp`: the camera's capture time), in the store's dtypes; the
instruction is the LeRobot task string; fps from the store. LeRobot timestamps are frame_index / fps
(LeRobot requires an exact 1/fps grid). The per-episode metadata (task, seed, label and phase names,
success, ...) and the store's metadata go to the `meta/moss_episodes.json` sidecar; `moss-data
import-lerobot` (lerobot_import.py) reads all of it back.

Reading it back: `LeRobotDataset(repo_id, root=dst, video_backend="pyav")`. On machines without
the FFmpeg shared libraries torchcodec (lerobot's default decoder) cannot load, hence "pyav".
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from moss_vla.episodes.schema import frame_keys
from moss_vla.episodes.store import EpisodeStore

IMAGE_FEATURE = "observation.images.display"
JOINT_NAMES = [f"joint_{i}" for i in range(1, 8)] + ["gripper_width"]
SIDECAR = "moss_episodes.json"
EXTRA_PREFIX = "moss."  # every other per-frame key of the store: moss.stim_label, ..., moss.timestamp


def lerobot_features(image_shape: Sequence[int], use_videos: bool = True) -> dict[str, dict]:
    """LeRobot feature spec of an exported store."""
    feats = {
        IMAGE_FEATURE: {"dtype": "video" if use_videos else "image", "shape": tuple(image_shape),
                        "names": ["height", "width", "channels"]},
        "observation.state": {"dtype": "float32", "shape": (8,), "names": JOINT_NAMES},
        "action": {"dtype": "float32", "shape": (8,), "names": JOINT_NAMES},
    }
    for spec in frame_keys(tuple(image_shape)).values():
        if spec.name not in ("image", "state", "action"):
            feats[EXTRA_PREFIX + spec.name] = {"dtype": spec.dtype.name, "shape": spec.frame_shape or (1,),
                                               "names": None}
    return feats


def export_lerobot(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    repo_id: str | None = None,
    use_videos: bool = True,
    vcodec: str = "libsvtav1",
    episodes: Sequence[int] | None = None,
    progress: bool = True,
) -> Path:
    """Write the committed episodes of the store `src` as a new LeRobotDataset at `dst`.

    use_videos=False stores PNG image features instead of video (a documented fallback for machines
    where no video encoder works; video is the default and works here).
    """
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    store = EpisodeStore(src)
    dst = Path(dst)
    if dst.exists():
        raise FileExistsError(f"{dst}: already exists; LeRobot datasets are written to a new directory")
    repo_id = repo_id or f"local/{Path(src).name.removesuffix('.zarr')}"
    fps = store.fps
    if fps != int(fps):
        raise ValueError(f"{src}: LeRobot needs an integer fps, the store has {fps}")
    ds = LeRobotDataset.create(
        repo_id=repo_id, fps=int(fps), features=lerobot_features(store.meta["image_shape"], use_videos),
        root=dst, robot_type="franka_fr3", use_videos=use_videos, vcodec=vcodec,
    )
    chosen = list(range(store.n_episodes)) if episodes is None else list(episodes)
    sidecar = []
    try:
        for i in tqdm(chosen, desc=f"export {Path(src).name}", unit="episode", disable=not progress):
            ep = store.episode(i)
            meta = store.episode_meta(i)
            extra = [k for k in store.keys if k not in ("image", "state", "action")]
            for t in range(len(ep["state"])):
                ds.add_frame({
                    IMAGE_FEATURE: ep["image"][t],
                    "observation.state": ep["state"][t].astype(np.float32),
                    "action": ep["action"][t].astype(np.float32),
                    **{EXTRA_PREFIX + k: np.asarray(ep[k][t]).reshape(-1) for k in extra},
                    "task": meta["instruction"],
                })
            ds.save_episode()
            sidecar.append({**meta, "lerobot_episode_index": len(sidecar),
                            "camera_timestamps": ep["timestamp"].tolist()})
    finally:
        ds.finalize()  # parquet footers; without it the dataset cannot be loaded
    (dst / "meta" / SIDECAR).write_text(json.dumps(
        {"source": str(Path(src).resolve()), "store_meta": store.meta, "episodes": sidecar}, indent=1))
    return dst
