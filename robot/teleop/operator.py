"""The teleoperator as a Policy: device input -> the next absolute joint target (8,).

A device (keyboard, gamepad) reports what the human asks for in one control step as a
`TeleopInput`; `TeleopPolicy` turns it into motion:
  - snap: a smooth min-jerk move to a calibrated target (a bowl, a cup, home);
  - joint jog: the selected joint moves at a set speed while the input is held;
  - EE jog: the flange moves in x/y/z with its orientation held (damped least squares);
  - gripper open/close.
Because it implements `select_action(obs) -> (8,)` like the scripted operator and the learned
policy, the one control loop (robot/control_loop.py) runs teleoperation and records it.
The commanded target, not the measured state, is integrated, so lag in the arm does not make
jogging drift; the measured state only seeds the first target.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from robot.fr3_kinematics import GRIPPER_MAX_WIDTH, Q_MAX, Q_MIN, forward_kinematics
from robot.teleop.motion import MinJerkTrajectory, dls_ik_step

JOG_MODES = ("ee", "joint")


@dataclass
class TeleopInput:
    """What the operator asked for during one control step."""

    snap: str | None = None  # name of a target to move to
    joint_velocity: float = 0.0  # -1..1 for the selected joint (joint jog mode)
    ee_velocity: np.ndarray = field(default_factory=lambda: np.zeros(3))  # -1..1 per axis x, y, z (EE mode)
    select_joint: int = 0  # how many joints to step the selection (negative: previous)
    toggle_mode: bool = False  # switch between EE and joint jog
    gripper: str | None = None  # "open" | "close"
    hold: bool = False  # cancel a snap motion and stay where the target is
    events: list[str] = field(default_factory=list)  # app-level: "store", "next", "prev", "save", "quit", "discard"

    @property
    def jogging(self) -> bool:
        return bool(self.joint_velocity != 0.0 or np.any(self.ee_velocity != 0.0))


class TeleopDevice(Protocol):
    """An input device: `poll()` once per control step."""

    def poll(self) -> TeleopInput: ...

    def close(self) -> None: ...


class TeleopPolicy:
    """Policy-like teleoperation: `select_action(obs) -> (8,)` float32 (7 joint targets + gripper width).

    targets: name -> joint configuration (7,); `snap_order` are the names bound to the device's
    snap buttons/keys in order (default: every target except "home"). `is_safe(q) -> bool` lets a jog
    stop at the workspace boundary instead of the arm rejecting the target."""

    def __init__(
        self,
        device: TeleopDevice,
        targets: Mapping[str, Sequence[float]] | None = None,
        control_hz: float = 10.0,
        joint_speed: float = 0.4,
        ee_speed: float = 0.1,
        snap_speed: float = 0.6,
        snap_min_duration: float = 0.8,
        ik_damping: float = 0.05,
        joint_margin: float = 0.05,
        gripper_open: float = GRIPPER_MAX_WIDTH,
        gripper_closed: float = 0.0,
        fk: Callable[[np.ndarray], np.ndarray] = forward_kinematics,
        is_safe: Callable[[np.ndarray], bool] | None = None,
        mode: str = "ee",
    ) -> None:
        if mode not in JOG_MODES:
            raise ValueError(f"teleop: mode must be one of {JOG_MODES}, got {mode!r}")
        self.device = device
        self.targets = {k: np.asarray(v, dtype=np.float64) for k, v in (targets or {}).items()}
        self.dt = 1.0 / control_hz
        self.joint_speed = joint_speed
        self.ee_speed = ee_speed
        self.snap_speed = snap_speed
        self.snap_min_duration = snap_min_duration
        self.ik_damping = ik_damping
        self.q_low, self.q_high = Q_MIN + joint_margin, Q_MAX - joint_margin
        self.gripper_open, self.gripper_closed = gripper_open, gripper_closed
        self.fk = fk
        self.is_safe = is_safe
        self.mode = mode
        self.joint = 0  # selected joint for joint jog (0-based)
        self.last_input = TeleopInput()
        self.reset()

    def reset(self) -> None:
        self.q_cmd: np.ndarray | None = None
        self.gripper_cmd: float | None = None
        self._traj: MinJerkTrajectory | None = None
        self._traj_t = 0.0
        self.snapping_to: str | None = None

    @property
    def busy(self) -> bool:
        """True while a snap motion is under way."""
        return self._traj is not None

    def snap(self, name: str) -> None:
        """Start a min-jerk motion to target `name` from the current command."""
        if name not in self.targets:
            raise KeyError(f"teleop: no target named {name!r}; have {sorted(self.targets)}")
        if self.q_cmd is None:
            raise RuntimeError("teleop: snap() before the first select_action() (the start pose is unknown)")
        self._traj = MinJerkTrajectory(self.q_cmd, self.targets[name], self.snap_speed, self.snap_min_duration)
        self._traj_t = 0.0
        self.snapping_to = name

    def select_action(self, observation: dict[str, Any]) -> np.ndarray:
        state = np.asarray(observation["state"], dtype=np.float64)
        if self.q_cmd is None:
            self.q_cmd = state[:7].copy()
            self.gripper_cmd = float(state[7])
        inp = self.device.poll()
        self.last_input = inp
        self.apply(inp)
        return np.concatenate([self.q_cmd, [self.gripper_cmd]]).astype(np.float32)

    def apply(self, inp: TeleopInput) -> None:
        """Advance the command by one control period according to `inp`."""
        if inp.toggle_mode:
            self.mode = JOG_MODES[(JOG_MODES.index(self.mode) + 1) % len(JOG_MODES)]
        if inp.select_joint:
            self.joint = (self.joint + int(inp.select_joint)) % 7
        if inp.gripper == "open":
            self.gripper_cmd = self.gripper_open
        elif inp.gripper == "close":
            self.gripper_cmd = self.gripper_closed
        if inp.hold or inp.jogging:
            self._traj, self.snapping_to = None, None  # the human takes over
        if inp.snap is not None:
            self.snap(inp.snap)

        if self._traj is not None:
            self._traj_t += self.dt
            self.q_cmd = self._traj.sample(self._traj_t)
            if self._traj.done(self._traj_t):
                self._traj, self.snapping_to = None, None
            return
        if not inp.jogging:
            return
        q_new = self.q_cmd.copy()
        if self.mode == "joint":
            q_new[self.joint] += float(np.clip(inp.joint_velocity, -1, 1)) * self.joint_speed * self.dt
        else:
            dx = np.clip(np.asarray(inp.ee_velocity, dtype=np.float64), -1, 1) * self.ee_speed * self.dt
            q_new = dls_ik_step(self.fk, q_new, dx, self.ik_damping)
        q_new = np.clip(q_new, self.q_low, self.q_high)
        if self.is_safe is None or self.is_safe(q_new):
            self.q_cmd = q_new
