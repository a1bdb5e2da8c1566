"""Simulated Franka Research 3: implements the `Arm` interface on a `Clock`.

Each joint follows its commanded target like a critically damped second-order system
(natural frequency `omega`; a cascaded position/velocity loop), with the FR3 velocity and
acceleration limits applied without overshoot and the joint position limits enforced (targets are clipped, joints stop at the limits). This is the lag a
position-streaming client sees on the real arm: with the defaults, 10 Hz streamed targets of a
smooth pointing motion are followed with about 0.02 rad error, like franky-sim (docs/design.md section 5.4).

With a `SafetyChecker` (robot/safety.py, the checks FrankaArm runs) every command is checked first
and an unsafe target raises `UnsafeTargetError` before anything moves, exactly like the real arm.

The arm has no thread: whenever it is queried or commanded it integrates its dynamics from the
last update up to `clock.now()` in fixed substeps, so with a `SimClock` it is deterministic and
costs no wall time while idle.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from robot.clock import Clock
from robot.fr3_kinematics import DDQ_MAX, DQ_MAX, GRIPPER_MAX_WIDTH, Q_MAX, Q_MIN, Q_READY
from robot.interfaces import ArmState
from robot.safety import ArmError, SafetyChecker, SafetyLimits

_CONFIG_KEYS = ("omega", "velocity_scale", "acceleration_scale", "substep", "gripper_speed", "safety")


class SimArm:
    """A simulated 7-DoF FR3 with a parallel gripper, tracking absolute joint targets with lag."""

    def __init__(
        self,
        clock: Clock,
        q0: Sequence[float] = Q_READY,
        omega: float = 40.0,
        velocity_scale: float = 1.0,
        acceleration_scale: float = 1.0,
        substep: float = 0.004,
        gripper_width: float = GRIPPER_MAX_WIDTH,
        gripper_speed: float = 0.1,
        safety: SafetyChecker | None = None,
    ) -> None:
        q0 = np.asarray(q0, dtype=np.float64)
        if q0.shape != (7,):
            raise ValueError(f"SimArm: q0 must have 7 joint positions, got shape {q0.shape}")
        if np.any(q0 < Q_MIN) or np.any(q0 > Q_MAX):
            raise ValueError(f"SimArm: q0 {q0.round(4).tolist()} lies outside the FR3 joint limits")
        if not 0 < substep <= 0.01 or omega * substep > 0.5:
            raise ValueError(f"SimArm: substep {substep} s too coarse for omega {omega} (need omega*substep <= 0.5)")
        self.clock = clock
        self.omega = float(omega)
        self.dq_max = DQ_MAX * float(velocity_scale)
        self.ddq_max = DDQ_MAX * float(acceleration_scale)
        self.substep = float(substep)
        self.gripper_speed = float(gripper_speed)
        self._q = q0.copy()
        self._dq = np.zeros(7)
        self._target = q0.copy()
        self._gripper = float(gripper_width)
        self._gripper_target = float(gripper_width)
        self._t = clock.now()
        self.safety = safety
        self._last_target: np.ndarray | None = None
        self.n_clipped_targets = 0  # commands that asked for a position outside the joint limits
        self.fault: dict[str, Any] = {}  # fault injection (set_fault), off by default

    def set_fault(self, kind: str | None, at: float = 0.0, delay: float = 0.25) -> None:
        """Fault injection for tests and benchmarks/faults_bench.py (`+arm.fault={kind: ..., at: s}`): from
        clock time `at` on, every command raises ArmError as a real arm's reflex does (kind "arm_error"),
        or takes `delay` s of the loop clock (kind "slow": a streak of missed deadlines)."""
        if kind not in (None, "arm_error", "slow"):
            raise ValueError(f"SimArm.set_fault: kind must be arm_error or slow, got {kind!r}")
        self.fault = {} if kind is None else {"kind": kind, "at": float(at), "delay": float(delay)}

    def _inject_fault(self) -> None:
        if not self.fault or self.clock.now() < self.fault["at"]:
            return
        if self.fault["kind"] == "arm_error":
            raise ArmError(f"SimArm: injected arm error at t={self.clock.now():.2f} s (arm.fault)")
        self.clock.sleep_until(self.clock.now() + self.fault["delay"])

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], clock: Clock, q0: Sequence[float],
                    gripper_width: float = GRIPPER_MAX_WIDTH) -> SimArm:
        """The arm of an `arm` config (configs/arm/sim.yaml, a dict or DictConfig), with the safety checks of
        its `safety` block: every simulated rig (sim, live, calibration) builds its arm here."""
        missing = [k for k in _CONFIG_KEYS if k not in cfg]
        if missing:
            raise ValueError(f"arm config of type {cfg.get('type')!r}: missing keys {missing} for the simulated "
                             f"arm (see configs/arm/sim.yaml)")
        arm = cls(clock, q0=q0, omega=float(cfg["omega"]), velocity_scale=float(cfg["velocity_scale"]),
                  acceleration_scale=float(cfg["acceleration_scale"]), substep=float(cfg["substep"]),
                  gripper_speed=float(cfg["gripper_speed"]), gripper_width=float(gripper_width),
                  safety=SafetyChecker(SafetyLimits.from_config(cfg["safety"])))
        if cfg.get("fault"):
            arm.set_fault(**dict(cfg["fault"]))
        return arm

    # --- Arm interface --------------------------------------------------------------------------
    def state(self) -> ArmState:
        self._advance()
        return ArmState(q=self._q.copy(), dq=self._dq.copy(), gripper_width=self._gripper, timestamp=self._t)

    def command(self, q_target: np.ndarray, gripper_width: float | None = None) -> None:
        self._inject_fault()
        self._advance()
        q_target = np.asarray(q_target, dtype=np.float64)
        if q_target.shape != (7,) or not np.all(np.isfinite(q_target)):
            raise ValueError(f"SimArm.command: expected 7 finite joint targets, got {q_target!r}")
        if self.safety is not None:
            # the same checks as FrankaArm.command: an unsafe target raises UnsafeTargetError, nothing moves
            q_target = self.safety.check(q_target, self._q, self._last_target)
            if gripper_width is not None:
                gripper_width = self.safety.check_gripper(gripper_width)
        self._last_target = q_target.copy()
        clipped = np.clip(q_target, Q_MIN, Q_MAX)
        if not np.array_equal(clipped, q_target):
            self.n_clipped_targets += 1
        self._target = clipped
        if gripper_width is not None:
            self._gripper_target = float(np.clip(gripper_width, 0.0, GRIPPER_MAX_WIDTH))

    def stop(self) -> None:
        """Hold where the arm is now (it still decelerates within the acceleration limits)."""
        self._advance()
        self._last_target = None
        self._target = self._q.copy()
        self._gripper_target = self._gripper

    def move_to(self, q_goal: np.ndarray, relative_dynamics_factor: float | None = None,
                timeout: float = 30.0, should_stop: Callable[[], bool] | None = None) -> bool:
        """Blocking point-to-point motion, like FrankaArm.move_to (homing before an episode, e.g. when this arm
        is served by moss-arm-server): the goal passes the joint-limit and workspace checks, the step limit
        does not apply; ``relative_dynamics_factor`` in (0, 1] scales the velocity and acceleration limits for
        this motion. Waits on the arm's clock in 50 ms slices; returns False if ``should_stop()`` stopped it."""
        q = (self.safety or SafetyChecker(SafetyLimits(joint_margin=0.0))).check_goal(q_goal)
        factor = 1.0 if relative_dynamics_factor is None else float(relative_dynamics_factor)
        if not 0 < factor <= 1:
            raise ArmError(f"move_to: relative_dynamics_factor must be in (0, 1], got {relative_dynamics_factor}",
                           kind="setup", recoverable=True)
        self._advance()
        limits = self.dq_max, self.ddq_max
        self.dq_max, self.ddq_max = self.dq_max * factor, self.ddq_max * factor
        self._last_target, self._target = None, q.copy()
        deadline = self.clock.now() + timeout
        try:
            while True:
                self._advance()
                if np.max(np.abs(self._q - q)) < 1e-3 and np.max(np.abs(self._dq)) < 1e-2:
                    return True
                if should_stop is not None and should_stop():
                    self.stop()
                    return False
                if self.clock.now() >= deadline:
                    self.stop()
                    raise ArmError(f"move_to did not finish within {timeout} s", kind="timeout")
                self.clock.sleep_until(self.clock.now() + 0.05)
        finally:
            self._advance()  # the motion so far ran at the scaled limits
            self.dq_max, self.ddq_max = limits

    def close(self) -> None:
        self.stop()

    # --- dynamics ---------------------------------------------------------------------------------
    def _advance(self) -> None:
        t_now = self.clock.now()
        dt_total = t_now - self._t
        if dt_total <= 0:
            return
        n = int(np.ceil(dt_total / self.substep - 1e-9))
        h = dt_total / n
        kp, kv = 0.5 * self.omega, 2.0 * self.omega
        q, dq, target = self._q, self._dq, self._target
        for _ in range(n):
            err = target - q
            # cascaded position -> velocity loop (critically damped: kp = omega/2, kv = 2 omega); the
            # reference speed never exceeds what the acceleration limit can still brake from, so a
            # saturated motion does not overshoot (like a time-optimal trajectory generator)
            brake = np.sqrt(2.0 * 0.9 * self.ddq_max * np.abs(err))
            v_ref = np.clip(np.clip(kp * err, -brake, brake), -self.dq_max, self.dq_max)
            acc = np.clip(kv * (v_ref - dq), -self.ddq_max, self.ddq_max)
            dq = np.clip(dq + acc * h, -self.dq_max, self.dq_max)
            q = q + dq * h
        # joints stop at their limits instead of passing through them
        at_limit = (q <= Q_MIN) | (q >= Q_MAX)
        q = np.clip(q, Q_MIN, Q_MAX)
        dq = np.where(at_limit, 0.0, dq)
        self._q, self._dq = q, dq
        step = self.gripper_speed * dt_total
        self._gripper += float(np.clip(self._gripper_target - self._gripper, -step, step))
        self._t = t_now
