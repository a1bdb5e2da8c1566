"""Build a camera and its display crop from a hydra camera config (configs/camera/*.yaml).

Every camera config has `type` (zed | uvc | replay | sim) and a `crop` block; the crop is applied by
the caller (the control loop) with `make_display_crop`, the same code path for every camera.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from moss_vla.config import plain
from robot.display_crop import DisplayCrop
from robot.interfaces import Camera

CAMERA_TYPES = ("zed", "uvc", "replay", "sim")


def _pick(c: Mapping[str, Any], *keys: str) -> dict:
    return {k: c[k] for k in keys if k in c}


def make_camera(
    cfg: Any,
    clock: Any = None,
    render: Callable[[float], np.ndarray] | None = None,
    seed: int = 0,
) -> Camera:
    """The camera named by `cfg.type`. `sim` needs the rig's `clock` and the task's `render(t)`;
    `replay` paces on `clock` when realtime; `zed` / `uvc` stamp each frame's arrival on it."""
    c = dict(plain(cfg))
    kind = c.get("type")
    if kind == "zed":
        from robot.cameras.zed import ZedCamera

        return ZedCamera(**_pick(c, "resolution", "grab_fps", "fps", "view", "serial_number", "svo_file",
                                 "background", "grab_timeout"), clock=clock)
    if kind == "uvc":
        from robot.cameras.uvc import UvcCamera

        return UvcCamera(**_pick(c, "device", "width", "height", "grab_fps", "fps", "stereo", "backend",
                                 "timestamps", "background", "grab_timeout"), clock=clock)
    if kind == "replay":
        from robot.cameras.replay import ReplayCamera

        return ReplayCamera(c["path"], episodes=c.get("episodes"), realtime=bool(c.get("realtime", False)),
                            loop=bool(c.get("loop", False)), clock=clock)
    if kind == "sim":
        from robot.sim_camera import SimCamera

        if clock is None or render is None:
            raise ValueError("camera=sim needs the rig's clock and the task's render(t) (see rig/sim_rig.py)")
        kwargs = _pick(c, "raw_size", "fps", "display_fps", "phase", "latency", "jitter_std", "blur_sigma",
                       "noise_std", "exposure_gain", "exposure_drift", "exposure_step_rate", "exposure_step_size",
                       "black_level", "scene_seed")
        return SimCamera(render, clock, display_corners=c["display_corners"], seed=seed, **kwargs)
    raise ValueError(f"camera: unknown camera.type {kind!r}; one of {CAMERA_TYPES} (configs/camera/)")


def make_display_crop(cfg: Any) -> DisplayCrop:
    """The display crop of a camera config (`crop` block; `corners: null` = whole image)."""
    c = dict(plain(cfg))
    if "crop" not in c or c["crop"] is None:
        raise ValueError(f"camera config of type {c.get('type')!r} has no `crop` block; see configs/camera/zed.yaml")
    return DisplayCrop.from_config(c["crop"])
