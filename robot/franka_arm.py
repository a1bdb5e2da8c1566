"""Franka Research 3 through franky: the `Arm` interface with our safety checks in front.

Each 10 Hz absolute joint target becomes one asynchronous `JointMotion`; franky replans from the
current motion state when the next one arrives. A `JointMotion` to a bare position ends at zero velocity,
so between targets franky plans to brake; with `target_velocity="stream"` each target is sent as a
`JointState(position, velocity)` with the velocity the stream implies through it (the step from the
previous target over the time between the two, capped at the safety checker's max_step per `stream_period`,
zero when the stream (re)starts or pauses), so the arm passes through targets instead of braking at each.
Tracking lag and jerk of both, side by side on franky-sim: benchmarks/franky_tracking_bench.py.
Facts about franky that shape this file (docs/design.md section 5.3):
  - `Robot(ip, realtime_config=RealtimeConfig.Ignore)` on a kernel without PREEMPT_RT;
  - the relative dynamics factor is set on the robot (`robot.relative_dynamics_factor = f`), never
    as a `move()` keyword; a motion's own factor multiplies the robot's (so motions get 1 or a ratio);
  - targets must be float64 arrays, and motions are single-use (a new JointMotion per target);
  - `poll_motion()` returns the opposite of its docstring: use `robot.is_in_control`;
  - after a reflex the robot refuses motions until `recover_from_errors()`;
  - reading `Gripper.width` waits for the hand's next status message, ~0.1 s (franky issue #35; the
    hand reports at ~10-15 Hz), so the control loop never reads it: `state()` reports the width the
    last finished gripper command reached (measured once at connect, and again only after a gripper
    command that did not reach its width).
franky raises its own exception types; they are turned into `ArmError` (kind + reason) so the
control loop can stop the trial, record why and call `recover()`.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from robot.interfaces import ArmState
from robot.safety import ArmError, SafetyChecker, SafetyLimits, UnsafeTargetError

log = logging.getLogger(__name__)

__all__ = ["ArmError", "FrankaArm", "UnsafeTargetError"]


def _import_franky():
    try:
        import franky
    except ImportError as e:  # pragma: no cover - franky-control is a core dependency
        raise ArmError(f"franky is not installed ({e}); `pip install franky-control` or use arm=sim",
                       kind="setup", recoverable=False) from e
    return franky


def _franky_exceptions(franky) -> tuple[type[BaseException], ...]:
    names = ["Exception", "ControlException", "CommandException", "NetworkException", "ProtocolException",
             "RealtimeException", "InvalidOperationException", "IncompatibleVersionException",
             "MotionReuseException", "InvalidMotionTypeException", "GripperException",
             "TorqueSignalTimeoutException", "ReactionRecursionException"]
    found = tuple(getattr(franky, n) for n in names if isinstance(getattr(franky, n, None), type))
    # franky also raises plain RuntimeErrors, e.g. "Motion planner failed with error code -100" (a
    # non-finite target reached the planner) or "Net Exception" (connection lost)
    return (*found, RuntimeError)


def _kind_of(exc: BaseException) -> str:
    name = type(exc).__name__
    kind = {"ControlException": "reflex", "NetworkException": "network", "CommandException": "command",
            "RealtimeException": "realtime", "GripperException": "gripper"}.get(name)
    if kind is None:
        msg = str(exc)
        kind = "network" if "Net" in msg else "planner" if "planner" in msg else "franky"
    return kind


class FrankaArm:
    """A Franka arm (FR3/Panda) with gripper, driven by absolute joint targets at the control rate."""

    def __init__(
        self,
        ip: str,
        realtime: bool = False,
        relative_dynamics_factor: float = 0.2,
        safety: SafetyChecker | None = None,
        dry_run: bool = False,
        gripper: bool = True,
        gripper_speed: float = 0.1,
        gripper_min_change: float = 0.005,
        recover_on_connect: bool = False,
        collision_torque_threshold: float | None = None,
        collision_force_threshold: float | None = None,
        target_velocity: str = "zero",
        stream_period: float = 0.1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        franky = _import_franky()
        self._franky = franky
        self._errors = _franky_exceptions(franky)
        self.ip = ip
        self.safety = safety or SafetyChecker(SafetyLimits())
        self.dry_run = dry_run
        self.relative_dynamics_factor = float(relative_dynamics_factor)
        self.gripper_speed = float(gripper_speed)
        self.gripper_min_change = float(gripper_min_change)
        self._clock = clock
        self._last_target: np.ndarray | None = None  # last joint target sent (None: stream restarts)
        self._last_sent = 0.0  # time.monotonic() of the last joint target sent
        if target_velocity not in ("zero", "stream"):
            raise ArmError(f"arm.target_velocity must be zero or stream, got {target_velocity!r}", kind="setup",
                           recoverable=False)
        self.target_velocity, self.stream_period = target_velocity, float(stream_period)
        self._gripper_sent: float | None = None
        self._gripper_pending: float | None = None
        self._gripper_future: Any = None
        self.n_sent = 0
        self.dry_run_log: list[np.ndarray] = []  # targets that passed safety in dry-run mode

        rt = franky.RealtimeConfig.Enforce if realtime else franky.RealtimeConfig.Ignore
        try:
            self.robot = franky.Robot(ip, realtime_config=rt)
        except self._errors as e:
            raise ArmError(
                f"cannot connect to the Franka arm at {ip}: {e}. Check that the robot is on, FCI is activated "
                f"in Desk, the brakes are open, this PC reaches {ip} (ping), and arm.ip in configs/arm/franka.yaml; "
                f"on a kernel without PREEMPT_RT keep arm.realtime=false. Without the arm use arm=sim",
                kind="network", recoverable=False,
            ) from e
        if not 0 < self.relative_dynamics_factor <= 1:
            raise ArmError(f"arm.relative_dynamics_factor must be in (0, 1], got {relative_dynamics_factor}",
                           kind="setup", recoverable=False)
        # on the robot, not as a move() keyword: move() has none (docs/design.md section 5.3)
        self.robot.relative_dynamics_factor = self.relative_dynamics_factor
        if self.robot.has_errors:
            if not recover_on_connect:  # the last session may have ended on a collision: a person looks first
                raise ArmError(f"the Franka at {ip} reports errors on connect ({self._current_errors()}): check "
                               f"why, then clear them in Desk, or connect with arm.recover_on_connect=true",
                               kind="reflex", recoverable=False)
            log.warning("Franka at %s reports errors on connect (%s); recovering", ip, self._current_errors())
            self.robot.recover_from_errors()
        if (collision_torque_threshold is None) != (collision_force_threshold is None):
            raise ArmError("arm.collision_torque_threshold and arm.collision_force_threshold go together: set both "
                           f"or neither (got {collision_torque_threshold} Nm, {collision_force_threshold} N)",
                           kind="setup", recoverable=False)
        if collision_torque_threshold is not None:
            self.robot.set_collision_behavior(float(collision_torque_threshold), float(collision_force_threshold))
        self.gripper = None
        self._gripper_width = 0.0  # what state() reports (see the module docstring)
        if gripper:
            try:
                self.gripper = franky.Gripper(ip)
            except self._errors as e:
                raise ArmError(f"cannot connect to the Franka gripper at {ip}: {e}; set arm.gripper=false "
                               f"if the arm has no Franka gripper", kind="network", recoverable=False) from e
            self._gripper_width = self.read_gripper_width()

    # --- Arm interface ----------------------------------------------------------------------------
    def state(self) -> ArmState:
        try:
            js = self.robot.current_joint_state
            q = np.asarray(js.position, dtype=np.float64)
            dq = np.asarray(js.velocity, dtype=np.float64)
            t = self._clock()
        except self._errors as e:
            raise ArmError(f"reading the arm state failed: {e}", kind=_kind_of(e)) from e
        self._gripper_busy()  # picks up the width of a gripper command that finished since
        return ArmState(q=q, dq=dq, gripper_width=self._gripper_width, timestamp=t)

    def read_gripper_width(self) -> float:
        """The hand's measured finger width (m). Blocks ~0.1 s on a real hand: not for the control loop."""
        if self.gripper is None:
            return 0.0
        try:
            return float(self.gripper.width)
        except self._errors as e:
            raise ArmError(f"reading the gripper width failed: {e}", kind="gripper") from e

    def command(self, q_target: np.ndarray, gripper_width: float | None = None) -> None:
        """Check `q_target` (7,) against the safety limits and send it as an asynchronous motion.

        Raises UnsafeTargetError (nothing sent) or ArmError (franky refused/failed: call recover())."""
        q_measured = self.state().q
        if self.dry_run and self._last_target is not None:
            # the arm never follows in a dry run: measure the deviation from where it would be, so a stream
            # of targets can be checked past the first max_deviation of motion
            q_measured = self._last_target
        q = self.safety.check(q_target, q_measured, self._last_target)
        width = None if gripper_width is None else self.safety.check_gripper(float(gripper_width))
        if self.dry_run:
            log.info("dry run: would send q=%s gripper=%s", np.round(q, 4).tolist(), width)
            self.dry_run_log.append(q)
            self._last_target = q
            return
        if self.robot.has_errors:
            raise ArmError(f"the arm is in an error state ({self._current_errors()}); call recover()",
                           kind="reflex")
        now = time.monotonic()
        if self.target_velocity == "stream":
            target = self._franky.JointState(q.astype(np.float64), self._stream_velocity(q, now))
        else:
            target = q.astype(np.float64)  # float64: franky rejects int arrays
        motion = self._franky.JointMotion(target)
        try:
            self.robot.move(motion, asynchronous=True)
        except self._errors as e:
            self._last_target = None
            raise ArmError(f"franky refused the joint motion: {e}", kind=_kind_of(e)) from e
        self._last_target, self._last_sent = q, now
        self.n_sent += 1
        if width is None:
            width = self._gripper_pending  # a width that waited for the previous gripper command
        if width is not None:
            self._command_gripper(width)

    def _stream_velocity(self, q: np.ndarray, now: float) -> np.ndarray:
        """The velocity (7,) to pass `q` with: the stream's last step over its time, 0 at a (re)start or pause."""
        if self._last_target is None:
            return np.zeros(7)
        dt = now - self._last_sent
        if dt > 2 * self.stream_period:  # the stream paused: arrive at rest
            return np.zeros(7)
        v = (q - self._last_target) / max(dt, 0.5 * self.stream_period)
        cap = self.safety.limits.max_step / self.stream_period
        return np.clip(v, -cap, cap).astype(np.float64)

    def stop(self) -> None:
        """Decelerate to a stop and hold. Never raises: it runs in cleanup paths after other errors
        (a robot in an error state has stopped already; a failure is logged)."""
        self._last_target = None
        if self.dry_run:
            return
        try:
            if self.robot.is_in_control and not self.robot.has_errors:
                self.robot.move(self._franky.JointStopMotion(), asynchronous=False)
        except self._errors as e:
            log.warning("FrankaArm.stop: stopping the arm failed (%s: %s)", type(e).__name__, e)

    def close(self) -> None:
        self.stop()

    # --- beyond the interface -----------------------------------------------------------------------
    @property
    def has_errors(self) -> bool:
        return bool(self.robot.has_errors)

    @property
    def q_desired(self) -> np.ndarray:
        """The joint positions franky's motion generator commands right now (robot state q_d): tracking
        of our targets by the planner, separate from the joint controller's own lag."""
        return np.asarray(self.robot.state.q_d, dtype=np.float64)

    def _current_errors(self) -> str:
        try:
            return str(self.robot.state.current_errors)
        except self._errors:
            return "unknown"

    def recover(self) -> None:
        """Automatic error recovery after a reflex; the next command starts a new motion stream."""
        self._last_target = None
        try:
            # a failed asynchronous motion re-raises its exception on the next join: clear it first
            self.robot.join_motion(timeout=0.5)
        except self._errors as e:
            log.info("recover: cleared the failed motion (%s)", e)
        try:
            ok = self.robot.recover_from_errors()
        except self._errors as e:
            raise ArmError(f"error recovery failed: {e}", kind=_kind_of(e), recoverable=False) from e
        if not ok or self.robot.has_errors:
            raise ArmError(f"error recovery did not clear the errors ({self._current_errors()}); use the "
                           f"robot's pilot/Desk to unlock it", kind="reflex", recoverable=False)

    def move_to(self, q_goal: np.ndarray, relative_dynamics_factor: float | None = None,
                timeout: float = 30.0, should_stop: Callable[[], bool] | None = None) -> bool:
        """Blocking point-to-point motion (e.g. to home before a trial). The goal passes the joint-limit
        and workspace checks; the step limit does not apply (franky plans a smooth trajectory).
        ``relative_dynamics_factor``: this motion's speed, at most the arm's configured factor (None: that).
        Waits in short slices, so that a stop request (``should_stop()`` true, e.g. the session's first
        Ctrl-C) or a KeyboardInterrupt decelerates the arm to a stop at once; returns False if stopped so."""
        q = self.safety.check_goal(q_goal)
        self._last_target = None
        if self.dry_run:
            log.info("dry run: would move to %s", np.round(q, 4).tolist())
            return True
        # franky multiplies a motion's factor with the robot's (set in __init__): give the motion the ratio
        motion = self._franky.JointMotion(q, relative_dynamics_factor=self._motion_factor(relative_dynamics_factor))
        deadline = time.monotonic() + timeout
        try:
            self.robot.move(motion, asynchronous=True)
            # join in slices: Python runs signal handlers between them, and a stop request is seen
            while not (finished := self.robot.join_motion(timeout=0.05)):
                if should_stop is not None and should_stop():
                    self.stop()
                    return False
                if time.monotonic() >= deadline:
                    self.robot.stop()
                    break
        except self._errors as e:
            raise ArmError(f"move_to failed: {e}", kind=_kind_of(e)) from e
        except KeyboardInterrupt:
            self.stop()
            raise
        if not finished:
            raise ArmError(f"move_to did not finish within {timeout} s", kind="timeout")
        return True

    def _motion_factor(self, effective: float | None) -> float:
        """The factor to give a motion so that it runs at ``effective`` (None: the arm's configured
        factor, which is also the cap: a motion may be slower than configured, never faster)."""
        if effective is None:
            return 1.0
        if not 0 < effective <= self.relative_dynamics_factor:
            raise ArmError(f"move_to: relative_dynamics_factor must be in (0, {self.relative_dynamics_factor}] "
                           f"(arm.relative_dynamics_factor caps every motion), got {effective}",
                           kind="setup", recoverable=True)
        return float(effective) / self.relative_dynamics_factor

    def _command_gripper(self, width: float) -> None:
        """Send a gripper width unless one is in flight (then the newest width is sent afterwards)."""
        if self.gripper is None:
            return
        if self._gripper_busy():
            self._gripper_pending = width
            return
        if self._gripper_sent is not None and abs(width - self._gripper_sent) < self.gripper_min_change:
            return
        try:
            self._gripper_future = self.gripper.move_async(float(width), self.gripper_speed)
        except self._errors as e:
            raise ArmError(f"gripper command failed: {e}", kind="gripper") from e
        self._gripper_sent = width
        self._gripper_pending = None

    def _gripper_busy(self) -> bool:
        """Whether a gripper command is still running (never blocks). When one has finished, the width it
        reached becomes the reported width: its target, or the measured width if it did not get there
        (e.g. stopped by an object; a one-off ~0.1 s read)."""
        future = self._gripper_future
        if future is None:
            return False
        try:
            if not future.wait(0.0):
                return True
            reached = future.get()
        except self._errors as e:
            self._gripper_future = None
            raise ArmError(f"gripper command failed: {e}", kind="gripper") from e
        self._gripper_future = None
        if reached:
            self._gripper_width = float(self._gripper_sent)
        else:
            log.warning("the gripper did not reach %.3f m; reading its width", self._gripper_sent)
            self._gripper_width = self.read_gripper_width()
        return False

    @classmethod
    def from_config(cls, cfg: Any, **overrides: Any) -> FrankaArm:
        """From configs/arm/franka.yaml (a dict or DictConfig); `overrides` replace config keys."""
        c = dict(cfg)
        c.pop("type", None)
        safety = SafetyChecker(SafetyLimits.from_config(dict(c.pop("safety", {}) or {})))
        c.update(overrides)
        known = set(inspect.signature(cls.__init__).parameters) - {"self", "safety"}
        unknown = sorted(set(c) - known)
        if unknown:
            raise ValueError(f"arm config: unknown keys {unknown} for arm.type franka (configs/arm/franka.yaml); "
                             f"known: {sorted(known)}")
        return cls(safety=safety, **c)
