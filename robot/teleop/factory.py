"""Build a teleoperation policy from a hydra teleop config (configs/teleop/{keyboard,gamepad}.yaml)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from robot.teleop.operator import TeleopPolicy

_POLICY_KEYS = ("control_hz", "joint_speed", "ee_speed", "snap_speed", "snap_min_duration", "ik_damping",
                "joint_margin", "gripper_open", "gripper_closed", "mode")


def make_teleop(
    cfg: Mapping[str, Any],
    targets: Mapping[str, Sequence[float]],
    snap_order: Sequence[str] | None = None,
    is_safe: Callable[[np.ndarray], bool] | None = None,
    joystick: Any = None,
) -> TeleopPolicy:
    """A TeleopPolicy with the device named by cfg.type ("keyboard" | "gamepad").

    targets: name -> joint configuration (e.g. `{n: t.q for n, t in target_set.targets.items()}`);
    snap_order: names bound to the snap keys/buttons in order (default: all but "home")."""
    cfg = dict(cfg)
    kind = cfg.get("type")
    names = list(snap_order) if snap_order is not None else [n for n in targets if n != "home"]
    if kind == "keyboard":
        from robot.teleop.keyboard import Keyboard

        device = Keyboard(names, keys=cfg.get("keys"), window=bool(cfg.get("window", True)))
    elif kind == "gamepad":
        from robot.teleop.gamepad import Gamepad

        device = Gamepad(names, index=int(cfg.get("index", 0)), buttons=cfg.get("buttons"), axes=cfg.get("axes"),
                         invert=cfg.get("invert"), hat=cfg.get("hat"), deadzone=float(cfg.get("deadzone", 0.15)),
                         joystick=joystick)
    else:
        raise ValueError(f"teleop: unknown teleop.type {kind!r}; use teleop=keyboard or teleop=gamepad")
    kwargs = {k: cfg[k] for k in _POLICY_KEYS if k in cfg and cfg[k] is not None}
    return TeleopPolicy(device, targets, is_safe=is_safe, **kwargs)
