"""Safety checks on joint targets, enforced in our code before anything reaches the arm.

franky-sim does not enforce joint limits and a real FR3 answers a bad target with a reflex that
stops the trial, so every absolute joint target passes `SafetyChecker.check` first:
  - finite, 7 values;
  - joint limits shrunk by a margin;
  - a maximum joint step per control period (against the previous target, or the measured
    position when there is none) and a maximum distance from the measured position (a stuck or
    pushed arm must not be yanked back);
  - a workspace check by forward kinematics: the flange inside a configured box and the tool tip
    (flange + tool_length along the flange z axis) above the table.
`mode: reject` raises `UnsafeTargetError`; `mode: clip` clamps joint-limit and step violations
(scaling the whole step so its direction is kept) and still rejects what clipping cannot fix
(workspace, non-finite values). The errors are also what the control loop catches to stop a trial.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from robot.fr3_kinematics import GRIPPER_MAX_WIDTH, Q_MAX, Q_MIN, forward_kinematics


class ArmError(RuntimeError):
    """The arm stopped or refused a command; `reason` says why, `kind` classifies it for the record
    ("reflex", "network", "command", "unsafe_target", ...)."""

    def __init__(self, reason: str, kind: str = "arm", recoverable: bool = True) -> None:
        super().__init__(reason)
        self.reason = reason
        self.kind = kind
        self.recoverable = recoverable


class UnsafeTargetError(ArmError):
    """A target failed the safety checks; nothing was sent. `violations` lists every failed check."""

    def __init__(self, violations: Sequence[str], target: np.ndarray | None = None) -> None:
        super().__init__("unsafe joint target: " + "; ".join(violations), kind="unsafe_target")
        self.violations = list(violations)
        self.target = target


def _vec(value: float | Sequence[float], n: int, name: str) -> np.ndarray:
    a = np.broadcast_to(np.asarray(value, dtype=np.float64), (n,)).copy()
    if not np.all(np.isfinite(a)):
        raise ValueError(f"safety limits: {name} must be finite, got {value}")
    return a


@dataclass
class SafetyLimits:
    """Limits for one arm (defaults: FR3 datasheet joint limits; workspace for a table-top rig)."""

    q_min: np.ndarray = field(default_factory=lambda: Q_MIN.copy())
    q_max: np.ndarray = field(default_factory=lambda: Q_MAX.copy())
    joint_margin: float = 0.05  # rad kept free at each joint limit
    max_step: np.ndarray | float = 0.1  # rad per control period per joint (0.1 rad at 10 Hz = 1 rad/s)
    max_deviation: float = 0.35  # rad: max |target - measured| per joint
    workspace_min: np.ndarray = field(default_factory=lambda: np.array([0.15, -0.6, 0.05]))  # flange, m
    workspace_max: np.ndarray = field(default_factory=lambda: np.array([0.85, 0.6, 1.0]))
    table_z: float = 0.0  # table surface height in the base frame, m
    tool_length: float = 0.16  # m from the flange to the tool tip along the flange z axis
    tool_clearance: float = 0.02  # m the tool tip must stay above the table
    gripper_max_width: float = GRIPPER_MAX_WIDTH
    mode: str = "reject"  # reject | clip

    def __post_init__(self) -> None:
        self.q_min = _vec(self.q_min, 7, "q_min")
        self.q_max = _vec(self.q_max, 7, "q_max")
        self.max_step = _vec(self.max_step, 7, "max_step")
        self.workspace_min = _vec(self.workspace_min, 3, "workspace_min")
        self.workspace_max = _vec(self.workspace_max, 3, "workspace_max")
        if self.mode not in ("reject", "clip"):
            raise ValueError(f"safety limits: mode must be 'reject' or 'clip', got {self.mode!r}")
        if np.any(self.q_min + self.joint_margin >= self.q_max - self.joint_margin):
            raise ValueError("safety limits: joint_margin leaves no room between q_min and q_max")
        if np.any(self.workspace_min >= self.workspace_max):
            raise ValueError(f"safety limits: workspace_min {self.workspace_min} must be below workspace_max "
                             f"{self.workspace_max} on every axis")
        if np.any(self.max_step <= 0) or self.max_deviation <= 0:
            raise ValueError("safety limits: max_step and max_deviation must be positive")

    @classmethod
    def from_config(cls, cfg: Mapping) -> SafetyLimits:
        """From the `safety:` block of an arm config (configs/arm/franka.yaml); missing keys keep defaults."""
        known = set(cls.__dataclass_fields__)
        unknown = set(cfg) - known
        if unknown:
            raise ValueError(f"safety config: unknown keys {sorted(unknown)}; known: {sorted(known)}")
        kwargs = {k: (list(v) if isinstance(v, Sequence) and not isinstance(v, str) else v)
                  for k, v in dict(cfg).items() if v is not None}
        return cls(**kwargs)

    @property
    def q_low(self) -> np.ndarray:
        return self.q_min + self.joint_margin

    @property
    def q_high(self) -> np.ndarray:
        return self.q_max - self.joint_margin


class SafetyChecker:
    """Checks (and in clip mode, clamps) absolute joint targets against `SafetyLimits`.

    `fk(q) -> (4, 4)` is the flange pose; the FR3 forward kinematics by default."""

    def __init__(self, limits: SafetyLimits | None = None,
                 fk: Callable[[np.ndarray], np.ndarray] = forward_kinematics) -> None:
        self.limits = limits or SafetyLimits()
        self.fk = fk
        self.n_rejected = 0
        self.n_clipped = 0

    def workspace_violations(self, q: np.ndarray) -> list[str]:
        """Workspace checks of a configuration by forward kinematics (empty list = fine)."""
        lim = self.limits
        pose = np.asarray(self.fk(q))
        flange = pose[:3, 3]
        tip = flange + pose[:3, 2] * lim.tool_length
        out = []
        outside = (flange < lim.workspace_min) | (flange > lim.workspace_max)
        if outside.any():
            axes = ", ".join(f"{'xyz'[i]}={flange[i]:.3f}" for i in np.flatnonzero(outside))
            out.append(f"flange at {np.round(flange, 3).tolist()} leaves the workspace box "
                       f"{lim.workspace_min.tolist()}..{lim.workspace_max.tolist()} ({axes})")
        if tip[2] < lim.table_z + lim.tool_clearance:
            out.append(f"tool tip z={tip[2]:.3f} m is less than {lim.tool_clearance} m above the table "
                       f"(z={lim.table_z})")
        return out

    def check(
        self,
        q_target: np.ndarray,
        q_measured: np.ndarray,
        q_previous: np.ndarray | None = None,
    ) -> np.ndarray:
        """The target to send (float64 (7,)), or raise UnsafeTargetError. `q_previous` is the last
        target sent (None at the start of a motion stream: the step is measured from q_measured)."""
        lim = self.limits
        q = np.asarray(q_target, dtype=np.float64).reshape(-1)
        if q.shape != (7,) or not np.all(np.isfinite(q)):
            self.n_rejected += 1
            raise UnsafeTargetError([f"target must be 7 finite joint positions, got {np.asarray(q_target)!r}"],
                                    np.asarray(q_target))
        q_measured = np.asarray(q_measured, dtype=np.float64)
        ref = q_measured if q_previous is None else np.asarray(q_previous, dtype=np.float64)
        violations: list[str] = []
        clipped = False

        bad = (q < lim.q_low) | (q > lim.q_high)
        if bad.any():
            if lim.mode == "clip":
                q = np.clip(q, lim.q_low, lim.q_high)
                clipped = True
            else:
                violations += [f"joint {i + 1} target {q[i]:.3f} outside [{lim.q_low[i]:.3f}, {lim.q_high[i]:.3f}] "
                               f"(limits with {lim.joint_margin} rad margin)" for i in np.flatnonzero(bad)]

        step = q - ref
        ratio = float(np.max(np.abs(step) / lim.max_step))
        if ratio > 1.0 + 1e-9:  # a target clipped to the limit elsewhere (a client's checker) passes here too
            if lim.mode == "clip":
                q = ref + step / ratio  # same direction, largest joint step exactly at its limit
                clipped = True
            else:
                j = int(np.argmax(np.abs(step) / lim.max_step))
                violations.append(f"step of joint {j + 1} is {step[j]:+.3f} rad per control period "
                                  f"(max {lim.max_step[j]:.3f})")

        dev = np.abs(q - q_measured)
        if dev.max() > lim.max_deviation:
            j = int(np.argmax(dev))
            violations.append(f"joint {j + 1} target is {dev[j]:.3f} rad from the measured position "
                              f"(max {lim.max_deviation}); is the arm blocked?")

        violations += self.workspace_violations(q)
        if violations:
            self.n_rejected += 1
            raise UnsafeTargetError(violations, np.asarray(q_target))
        if clipped:
            self.n_clipped += 1
        return q

    def check_goal(self, q_goal: np.ndarray) -> np.ndarray:
        """A point-to-point goal (move_to): 7 finite joints inside the limits and the workspace; the step limit
        does not apply (the arm plans the motion). Returns it as float64 (7,), or raises UnsafeTargetError."""
        q = np.asarray(q_goal, dtype=np.float64)
        if q.shape != (7,) or not np.all(np.isfinite(q)):
            raise UnsafeTargetError([f"goal must be 7 finite joint positions, got {q_goal!r}"])
        lim = self.limits
        violations = [f"joint {i + 1} goal {q[i]:.3f} outside [{lim.q_low[i]:.3f}, {lim.q_high[i]:.3f}]"
                      for i in np.flatnonzero((q < lim.q_low) | (q > lim.q_high))]
        violations += self.workspace_violations(q)
        if violations:
            raise UnsafeTargetError(violations, q)
        return q

    def check_gripper(self, width: float) -> float:
        """A gripper width clamped to [0, max width] (a width is never dangerous, only out of range)."""
        if not np.isfinite(width):
            raise UnsafeTargetError([f"gripper width must be finite, got {width}"])
        return float(np.clip(width, 0.0, self.limits.gripper_max_width))
