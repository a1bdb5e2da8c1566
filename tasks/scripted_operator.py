"""Scripted operator: the stand-in for a human teleoperator on the simulated rig.

It watches the stimulus ground truth (`obs["stimulus"]`, a StimulusState), and for every new
interaction waits a human-like reaction time, moves to the expected target with a minimum-jerk joint
motion, holds there, and returns home. Durations, delays and the exact joint configuration vary
randomly (seeded) from interaction to interaction, like a person's. If the deadline is close it
hurries (shorter motion) so the pointing is confirmed in time, but never beyond `max_joint_speed`.
`commit_lead` (off by default) holds it back until the deadline is that close, as a person who must first
read the stimulus (PongPredict: where the ball will hit) would. Same interface as a policy
(`reset()`, `select_action(obs) -> (8,)` = 7 joint targets + gripper width), so the control loop does
not know whether a person, a script or a network drives the arm.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from robot.fr3_kinematics import Q_MAX, Q_MIN
from robot.teleop.motion import MinJerkTrajectory
from tasks.targets import TargetSet


def _uniform(rng: np.random.Generator, r: Sequence[float]) -> float:
    lo, hi = float(r[0]), float(r[1])
    return lo if hi <= lo else float(rng.uniform(lo, hi))


class ScriptedOperator:
    """Ground-truth-driven pointing operator (see module docstring)."""

    name = "scripted"

    def __init__(
        self,
        targets: TargetSet,
        label_to_target: Mapping[int, str] | Sequence[str],
        seed: int = 0,
        reaction_time: Sequence[float] = (0.35, 0.7),
        move_time: Sequence[float] = (0.9, 1.3),
        min_move_time: float = 0.5,
        hold_time: Sequence[float] = (0.6, 1.0),
        return_time: Sequence[float] = (0.9, 1.3),
        joint_noise: float = 0.01,
        finish_margin: float = 0.5,
        gripper_width: float = 0.0,
        max_joint_speed: float = 0.9,
        commit_lead: Sequence[float] | None = None,
    ) -> None:
        self.targets = targets
        if isinstance(label_to_target, Mapping):
            self.label_to_target = {int(k): str(v) for k, v in label_to_target.items()}
        else:
            self.label_to_target = {i: str(v) for i, v in enumerate(label_to_target)}
        for name in self.label_to_target.values():
            targets[name]  # fail now, with the calibration file named, if a target is missing
        self.seed = int(seed)
        self.reaction_time, self.move_time, self.hold_time = reaction_time, move_time, hold_time
        self.return_time, self.min_move_time = return_time, float(min_move_time)
        self.joint_noise, self.finish_margin = float(joint_noise), float(finish_margin)
        self.gripper_width = float(gripper_width)
        self.max_joint_speed = float(max_joint_speed)
        self.commit_lead = None if commit_lead is None else tuple(float(v) for v in commit_lead)
        if self.commit_lead is not None and min(self.commit_lead) < self.min_move_time + self.finish_margin:
            raise ValueError(f"scripted operator: commit_lead {list(self.commit_lead)} s leaves less than min_move_time "
                             f"+ dwell + deadline_margin = {self.min_move_time + self.finish_margin:.2f} s to point in time")
        self.reset()

    @classmethod
    def from_config(cls, teleop_cfg: Mapping[str, Any], targets: TargetSet,
                    label_to_target: Mapping[int, str] | Sequence[str], seed: int, dwell: float,
                    task_kind: str, speed_factor: float = 1.0) -> ScriptedOperator:
        """The operator of configs/teleop/scripted.yaml for episode `seed` of a `task_kind` task. It aims to have a
        pointing confirmed (arrival + the scoring's `dwell`) `deadline_margin` before the deadline; its peak joint
        speed is `max_joint_speed` times `speed_factor`; `commit_lead[task_kind]`, if there, delays its commitment."""
        tc = teleop_cfg
        commit_lead = (tc.get("commit_lead") or {}).get(task_kind)
        return cls(targets, label_to_target, seed=seed, reaction_time=tuple(tc["reaction_time"]),
                   move_time=tuple(tc["move_time"]), min_move_time=tc["min_move_time"],
                   hold_time=tuple(tc["hold_time"]), return_time=tuple(tc["return_time"]),
                   joint_noise=tc["joint_noise"], finish_margin=float(dwell) + float(tc["deadline_margin"]),
                   gripper_width=tc["gripper_width"], max_joint_speed=float(tc["max_joint_speed"]) * float(speed_factor),
                   commit_lead=commit_lead)

    def reset(self) -> None:
        self.rng = np.random.default_rng(self.seed)
        self._handled: set[int] = set()
        self._pending: tuple[int, float] | None = None  # (interaction, time the reaction completes)
        self._motion: MinJerkTrajectory | None = None  # the joint motion under way, started at _motion_t0
        self._motion_t0 = 0.0
        self._return_at: float | None = None
        self._q = None  # last commanded joints

    def _start(self, t: float, goal: np.ndarray, duration: float) -> None:
        # lengthened if needed so that its peak stays at max_joint_speed (the arm's safety checks allow
        # 0.1 rad per 0.1 s step)
        self._motion = MinJerkTrajectory(self._q.copy(), goal, self.max_joint_speed, min_duration=max(duration, 1e-3))
        self._motion_t0 = t

    def _noisy(self, q: np.ndarray) -> np.ndarray:
        return np.clip(q + self.rng.normal(0.0, self.joint_noise, 7), Q_MIN, Q_MAX)

    def select_action(self, observation: Mapping[str, Any]) -> np.ndarray:
        stim = observation["stimulus"]
        t = float(stim.t)
        if self._q is None:
            # start from where the arm is (it is brought home before the episode)
            self._q = np.asarray(observation["state"][:7], dtype=np.float64).copy()
        if self._motion is not None:
            self._q = self._motion.sample(t - self._motion_t0)  # new motions start where the current one is now

        # perceive: a new interaction starts the reaction clock
        new = stim.interaction >= 0 and stim.label >= 0 and stim.interaction not in self._handled
        if new and (self._pending is None or self._pending[0] != stim.interaction):
            act_at = t + _uniform(self.rng, self.reaction_time)
            if self.commit_lead is not None and stim.time_to_deadline >= 0:
                act_at = max(act_at, t + stim.time_to_deadline - _uniform(self.rng, self.commit_lead))
            self._pending = (stim.interaction, act_at)
        # act: reaction over -> go to the target, hurrying if the deadline is close
        if self._pending is not None and t >= self._pending[1]:
            interaction = self._pending[0]
            self._pending = None
            self._handled.add(interaction)
            if stim.interaction == interaction and stim.label >= 0:
                goal = self._noisy(self.targets[self.label_to_target[stim.label]].q)
                duration = _uniform(self.rng, self.move_time)
                if stim.time_to_deadline >= 0:
                    duration = min(duration, stim.time_to_deadline - self.finish_margin)
                self._start(t, goal, max(duration, self.min_move_time))
                self._return_at = self._motion_t0 + self._motion.duration + _uniform(self.rng, self.hold_time)
        # after holding: back home
        if self._return_at is not None and t >= self._return_at:
            self._return_at = None
            self._start(t, self._noisy(self.targets.home.q), _uniform(self.rng, self.return_time))

        if self._motion is not None:
            self._q = self._motion.sample(t - self._motion_t0)
        return np.concatenate([self._q, [self.gripper_width]]).astype(np.float32)
