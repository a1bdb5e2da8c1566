"""Scripted operator: the stand-in for a human teleoperator on the simulated rig.

It watches the stimulus ground truth (`obs["stimulus"]`, a StimulusState), and for every new
interaction waits a human-like reaction time, moves to the expected target with a minimum-jerk joint
motion, holds there, and returns home. Durations, delays and the exact joint configuration vary
randomly (seeded) from interaction to interaction, like a person's. If the deadline is close it
hurries (shorter motion) so the pointing is confirmed in time, but never beyond `max_joint_speed`.
`commit_lead` (off by default) holds it back until the deadline is that close, as a person who must first
read the stimulus (PongPredict: where the ball will hit) would. `Imperfections` (off by default;
`teleop=human_like` turns them on) make it err like a teleoperating person: it sometimes hesitates, varies its
speed, wobbles along its path, and now and then starts towards a wrong target and corrects itself within a
second. They draw from their own random stream, so the perfect operator of a seed stays exactly as it was.
Same interface as a policy
(`reset()`, `select_action(obs) -> (8,)` = 7 joint targets + gripper width), so the control loop does
not know whether a person, a script or a network drives the arm.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from robot.fr3_kinematics import Q_MAX, Q_MIN
from robot.teleop.motion import MinJerkTrajectory
from tasks.targets import TargetSet


def _uniform(rng: np.random.Generator, r: Sequence[float]) -> float:
    lo, hi = float(r[0]), float(r[1])
    return lo if hi <= lo else float(rng.uniform(lo, hi))


@dataclass(frozen=True)
class Imperfections:
    """How a person at the gamepad differs from the script, per interaction (configs/teleop/human_like.yaml)."""

    hesitation_prob: float = 0.0  # chance of an extra pause before moving ...
    hesitation_time: tuple[float, float] = (0.0, 0.0)  # ... of this many seconds (uniform)
    speed_variation: tuple[float, float] = (1.0, 1.0)  # factor on each motion's duration (uniform)
    path_jitter: float = 0.0  # rad: amplitude of a smooth wobble along each motion (zero at its ends)
    jitter_hz: tuple[float, float] = (0.8, 2.0)  # its frequency (uniform per motion and joint)
    wrong_first_move_prob: float = 0.0  # chance of first heading to another label's target ...
    correct_after: tuple[float, float] = (0.3, 0.8)  # ... and turning to the right one this many seconds later

    def __post_init__(self) -> None:
        for name in ("hesitation_prob", "wrong_first_move_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"operator imperfections: {name} must be a probability in [0, 1], got "
                                 f"{getattr(self, name)}")
        if max(self.correct_after) >= 1.0 or min(self.speed_variation) <= 0 or self.path_jitter < 0:
            raise ValueError(f"operator imperfections: correct_after must stay under 1 s, speed_variation "
                             f"positive and path_jitter >= 0, got {self}")

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | None) -> Imperfections:
        cfg = dict(cfg or {})
        unknown = set(cfg) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"teleop.imperfections: unknown key(s) {sorted(unknown)}; known: "
                             f"{sorted(cls.__dataclass_fields__)}")
        return cls(**{k: tuple(v) if isinstance(v, Sequence) else float(v) for k, v in cfg.items()})


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
        imperfections: Imperfections | None = None,
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
        self.imperfections = imperfections or Imperfections()
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
                   commit_lead=commit_lead, imperfections=Imperfections.from_config(tc.get("imperfections")))

    def reset(self) -> None:
        self.rng = np.random.default_rng(self.seed)
        self.imperfect_rng = np.random.default_rng([self.seed, 0x4855])  # a stream of its own (module docstring)
        self._correction: tuple[float, np.ndarray, float] | None = None  # (when, right goal, its duration)
        self._wobble: tuple[np.ndarray, np.ndarray] | None = None  # (Hz, phase) per joint of the current motion
        self._last_out: tuple[float, np.ndarray] | None = None  # (t, joints) last commanded with the wobble
        self.wrong_first_moves = 0
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
        if self.imperfections.path_jitter > 0:
            r = self.imperfect_rng
            self._wobble = (r.uniform(*self.imperfections.jitter_hz, 7), r.uniform(0.0, 2 * np.pi, 7))

    def _wobbled(self, t: float) -> np.ndarray:
        """The commanded joints: the motion, plus the path jitter (a sine per joint under a sin(pi s) envelope,
        so the motion still starts and ends where planned), rate-limited to max_joint_speed like a gamepad jog."""
        if self._wobble is None or self._motion is None:
            return self._q
        s = min(max((t - self._motion_t0) / self._motion.duration, 0.0), 1.0)
        hz, phase = self._wobble
        wobble = self.imperfections.path_jitter * np.sin(np.pi * s) * np.sin(2 * np.pi * hz * (t - self._motion_t0)
                                                                               + phase)
        out = np.clip(self._q + wobble, Q_MIN, Q_MAX)
        if self._last_out is not None:
            step = self.max_joint_speed * max(t - self._last_out[0], 0.0)
            out = self._last_out[1] + np.clip(out - self._last_out[1], -step, step)
        self._last_out = (t, out)
        return out

    def _human_delay(self) -> float:
        imp, r = self.imperfections, self.imperfect_rng
        return _uniform(r, imp.hesitation_time) if imp.hesitation_prob > 0 and r.random() < imp.hesitation_prob else 0.0

    def _wrong_target(self, right: str) -> str | None:
        """Another label's target to head for first, at the configured rate (None: go straight)."""
        imp, r = self.imperfections, self.imperfect_rng
        if imp.wrong_first_move_prob <= 0 or r.random() >= imp.wrong_first_move_prob:
            return None
        others = sorted({n for n in self.label_to_target.values() if n != right})
        return str(r.choice(others)) if others else None

    def _noisy(self, q: np.ndarray) -> np.ndarray:
        return np.clip(q + self.rng.normal(0.0, self.joint_noise, 7), Q_MIN, Q_MAX)

    def select_action(self, observation: Mapping[str, Any]) -> np.ndarray:
        stim = observation["stimulus"]
        if stim is None:  # no stimulus sample for this frame (a stale or dropped display frame): hold still
            q = self._q if self._q is not None else np.asarray(observation["state"][:7], dtype=np.float64)
            return np.concatenate([q, [self.gripper_width]]).astype(np.float32)
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
            self._pending = (stim.interaction, act_at + self._human_delay())
        # act: reaction over -> go to the target, hurrying if the deadline is close
        if self._pending is not None and t >= self._pending[1]:
            interaction = self._pending[0]
            self._pending = None
            self._handled.add(interaction)
            if stim.interaction == interaction and stim.label >= 0:
                right = self.label_to_target[stim.label]
                goal = self._noisy(self.targets[right].q)
                duration = _uniform(self.rng, self.move_time) * _uniform(self.imperfect_rng,
                                                                         self.imperfections.speed_variation)
                if stim.time_to_deadline >= 0:
                    duration = min(duration, stim.time_to_deadline - self.finish_margin)
                duration = max(duration, self.min_move_time)
                wrong = self._wrong_target(right)
                correct_at = t + _uniform(self.imperfect_rng, self.imperfections.correct_after)
                # a person errs only where there is still time to put it right before the deadline
                if wrong is not None and (stim.time_to_deadline < 0 or correct_at + duration + self.finish_margin
                                          <= t + stim.time_to_deadline):
                    self.wrong_first_moves += 1
                    self._start(t, self._noisy(self.targets[wrong].q), duration)
                    self._correction = (correct_at, goal, duration)
                    self._return_at = None
                else:
                    self._start(t, goal, duration)
                    self._return_at = self._motion_t0 + self._motion.duration + _uniform(self.rng, self.hold_time)
        # a wrong first move noticed: turn to the right target from wherever the arm is now
        if self._correction is not None and t >= self._correction[0]:
            _, goal, duration = self._correction
            self._correction = None
            self._start(t, goal, duration)
            self._return_at = self._motion_t0 + self._motion.duration + _uniform(self.rng, self.hold_time)
        # after holding: back home
        if self._return_at is not None and t >= self._return_at:
            self._return_at = None
            self._start(t, self._noisy(self.targets.home.q), _uniform(self.rng, self.return_time))

        if self._motion is not None:
            self._q = self._motion.sample(t - self._motion_t0)
        return np.concatenate([self._wobbled(t), [self.gripper_width]]).astype(np.float32)
