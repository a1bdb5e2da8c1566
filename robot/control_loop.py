"""The one control loop: camera -> crop -> observation -> controller -> safety -> arm (-> episode writer).

Used unchanged for simulated collection and evaluation, and for real recordings and trials; only the
parts plugged in differ (SimCamera/ZED, SimArm/franky arm, scripted operator/teleop/policy,
SimClock/RealClock). A step starts at its tick:

  - `sync="frame"` (the rig's default, `rig.loop_sync`): the tick is the arrival of a new camera frame (its
    `Frame.arrival` on the loop clock, or the time `read()` returned it if the camera cannot tell). The
    camera's clock paces the loop, so every frame is used: a loop with its own ticks beside a camera with
    its own 10 Hz clock skips a frame whenever capture jitter puts two arrivals between two of its ticks.
    A frame is skipped only when a step overruns by more than a period (counted in `skipped_ticks`).
  - `sync="clock"`: fixed ticks t0 + k * period on the loop clock, reading the newest frame at each; for
    sources without timing of their own (a replayed store played as fast as it is read).

At each tick:
  1. the camera frame, cropped to the display at the policy resolution;
  2. read the arm state; look up the stimulus ground truth at the frame's capture time (if a stimulus
     source is given: what the frame shows);
  3. obs = {image, state, instruction, stimulus, t, frame_timestamp} -> controller.select_action -> (8,);
  4. the safety hook checks (and may clip) the action or stops the loop (raise SafetyStop);
  5. arm.command(joints, gripper) (the arm runs robot/safety.py and may raise ArmError, which ends the
     loop too); optionally writer.add_frame(all episode keys; `timestamp` is the frame's capture time,
     `state` the arm state read in step 2, `action` what was sent);
  6. deadline accounting: latency = command time - tick on the loop clock (a step "misses its
     deadline" when its command goes out more than a period after its tick, i.e. after the next frame),
     wall-clock compute time per step (from the frame in hand to the command sent: the camera read,
     which waits for the frame, is not in it); with RealClock and sync="clock" the loop sleeps to the
     next tick and skips ticks it is too late for.

`run()` returns a LoopResult with the reason the loop ended. An exception raised by the controller
(a policy bug, a failed teleop device) ends the loop with reason "controller" after stopping the arm,
like a non-finite action ("safety"): a trial must end safely with its reason recorded, not crash the
session. Extension points for the real rig: `stop_conditions` (callables StepInfo -> reason,
(reason, message) or None: robot/stop_conditions.py has stall detection, missed-deadline streaks, stop
keys) and `on_step` callbacks (live display, logging). A controller with `loop_stats() -> dict` (robot/chunk_planner.py) has
its numbers added to the LoopResult's summary.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from robot.cameras.grabber import CameraError, EndOfStream
from robot.clock import Clock
from robot.fr3_kinematics import Q_MAX, Q_MIN
from robot.interfaces import Arm, ArmState, Camera, Frame
from robot.safety import ArmError, UnsafeTargetError

SYNC_MODES = ("frame", "clock")  # what starts a step: a new camera frame, or the loop clock's fixed ticks


class SafetyStop(RuntimeError):
    """Raised by a safety hook: the loop stops the arm and ends with reason "safety"."""


class ControllerError(RuntimeError):
    """The controller (policy, teleop, operator) raised: the loop stops the arm, reason "controller"."""


class JointLimitSafety:
    """Default safety hook: reject non-finite actions (SafetyStop) and clip joint targets into the FR3
    limits minus `margin`. The arms run the full checks of robot/safety.py (steps, deviation, workspace)
    in their `command`, and raise ArmError, which also ends the loop."""

    def __init__(self, margin: float = 0.05) -> None:  # = robot.safety.SafetyLimits.joint_margin
        self.margin = float(margin)
        self.n_clipped = 0

    def __call__(self, action: np.ndarray, state: ArmState) -> np.ndarray:
        action = np.asarray(action, dtype=np.float64)
        if action.shape != (8,) or not np.all(np.isfinite(action)):
            raise SafetyStop(f"controller returned an invalid action (need 8 finite values): {action!r}")
        q = np.clip(action[:7], Q_MIN + self.margin, Q_MAX - self.margin)
        if not np.array_equal(q, action[:7]):
            self.n_clipped += 1
        return np.concatenate([q, action[7:]])


@dataclass
class StepInfo:
    """Everything about one control step (handed to stop conditions and on_step callbacks)."""

    index: int  # step number from 0
    tick: float  # scheduled start on the loop clock
    frame: Frame  # raw camera frame
    observation: dict[str, Any]
    state: ArmState  # arm state the controller saw
    action: np.ndarray  # (8,) what was sent to the arm (after the safety hook)
    latency: float  # command time - tick, loop clock seconds
    compute: float  # wall-clock seconds from the frame in hand to the command sent


@dataclass
class LoopResult:
    """Why and when the loop ended, and its timing statistics."""

    # "duration", "max_steps", "safety", "arm", "camera", "end_of_stream", "controller" or a stop condition's
    # (e.g. "interrupted": a live session's StopFlag after Ctrl-C)
    reason: str
    message: str = ""
    n_steps: int = 0
    t_start: float = 0.0
    t_end: float = 0.0
    latencies: list[float] = field(default_factory=list)  # s, per step (loop clock)
    compute_times: list[float] = field(default_factory=list)  # s, per step (wall clock)
    missed_deadlines: int = 0  # steps whose command went out after the next tick
    skipped_ticks: int = 0  # ticks (sync="frame": frames) dropped because the loop was over a period late
    longest_miss_streak: int = 0  # most consecutive steps that missed their deadline
    first_frame_index: int | None = None  # camera frame counters of the first and last step: frames the
    last_frame_index: int | None = None  # camera captured in between vs frames the loop used (recorded)
    # the controller's own numbers for the episode (its `loop_stats()`, e.g. a chunk planner's)
    controller_stats: dict[str, Any] = field(default_factory=dict)

    @property
    def frames_captured(self) -> int:
        """Frames the camera delivered from the first to the last step (counting those the loop skipped)."""
        if self.first_frame_index is None or self.last_frame_index is None:
            return 0
        return self.last_frame_index - self.first_frame_index + 1

    @staticmethod
    def _pct(values: list[float], q: float) -> float:
        return float(np.percentile(values, q)) if values else float("nan")

    def summary(self) -> dict[str, Any]:
        """Timing in milliseconds, JSON-friendly."""
        return {
            "reason": self.reason,
            "message": self.message,
            "n_steps": self.n_steps,
            "duration_s": self.t_end - self.t_start,
            "latency_ms_p50": 1e3 * self._pct(self.latencies, 50),
            "latency_ms_p99": 1e3 * self._pct(self.latencies, 99),
            "compute_ms_p50": 1e3 * self._pct(self.compute_times, 50),
            "compute_ms_p99": 1e3 * self._pct(self.compute_times, 99),
            "missed_deadlines": self.missed_deadlines,
            "longest_miss_streak": self.longest_miss_streak,
            "skipped_ticks": self.skipped_ticks,
            "frames_captured": self.frames_captured,
            "frames_used": self.n_steps,
            **self.controller_stats,
        }


StopCondition = Callable[[StepInfo], "str | tuple[str, str] | None"]  # reason, or (reason, message)


class ControlLoop:
    """The fixed-rate loop (see module docstring). `controller` has `select_action(obs) -> (8,)`;
    `stimulus(t)` gives the StimulusState at camera time t (or None); `writer` an EpisodeWriter whose
    episode the caller started (the caller commits or discards it, knowing why the loop ended)."""

    def __init__(
        self,
        clock: Clock,
        camera: Camera,
        crop: Callable[[np.ndarray], np.ndarray],
        arm: Arm,
        controller: Any,
        instruction: str,
        stimulus: Callable[[float], Any] | None = None,
        safety: Callable[[np.ndarray, ArmState], np.ndarray] | None = None,
        writer: Any | None = None,
        period: float = 0.1,
        camera_timeout: float = 1.0,
        sync: str = "frame",
    ) -> None:
        if period <= 0:
            raise ValueError(f"ControlLoop: period must be > 0 s, got {period}")
        if sync not in SYNC_MODES:
            raise ValueError(f"ControlLoop: sync must be one of {SYNC_MODES} (rig.loop_sync), got {sync!r}")
        self.sync = sync
        self.clock, self.camera, self.crop, self.arm = clock, camera, crop, arm
        self.controller, self.instruction, self.stimulus = controller, instruction, stimulus
        self.safety = JointLimitSafety() if safety is None else safety
        self.writer, self.period, self.camera_timeout = writer, float(period), float(camera_timeout)

    def next_frame(self, t0: float, k: int, last: StepInfo | None) -> tuple[Frame, float]:
        """Wait for the frame of tick k (loop started at t0, `last` step before) and return it with the
        tick's time."""
        if self.sync == "clock":
            tick = t0 + k * self.period
            self.clock.sleep_until(tick)
            return self.camera.read(timeout=self.camera_timeout), tick
        frame = self.camera.read(timeout=self.camera_timeout)
        if last is not None and frame.index <= last.frame.index:
            # not a new frame (a frozen driver): pace on the loop clock instead of spinning the policy and
            # the arm, so that stall detection sees time pass
            tick = last.tick + self.period
            self.clock.sleep_until(tick)
            return frame, tick
        arrival = self.clock.now() if frame.arrival is None else frame.arrival
        # a frame that was waiting when the loop started is charged from the start, not from its arrival
        return frame, max(arrival, t0)

    def step(self, index: int, tick: float, frame: Frame) -> StepInfo:
        """One control step on `frame` (steps 1-5 of the module docstring)."""
        wall0 = time.perf_counter()
        image = self.crop(frame.image)
        state = self.arm.state()
        stim = self.stimulus(frame.timestamp) if self.stimulus is not None else None
        obs = {
            "image": image,
            "state": state.as_vector(),
            "instruction": self.instruction,
            "stimulus": stim,
            "t": self.clock.now(),
            "frame_timestamp": frame.timestamp,
        }
        try:
            raw = self.controller.select_action(obs)
        except Exception as e:  # any controller failure ends the trial safely, with the reason recorded
            raise ControllerError(f"{type(e).__name__}: {e}") from e
        action = np.asarray(self.safety(np.asarray(raw), state), dtype=np.float64)
        self.arm.command(action[:7], float(action[7]))
        latency = self.clock.now() - tick
        if self.writer is not None:
            record = stim.as_record() if stim is not None else {}
            self.writer.add_frame(image=image, state=obs["state"], action=action.astype(np.float32),
                                  timestamp=float(frame.timestamp), **record)
        return StepInfo(index, tick, frame, obs, state, action, latency, time.perf_counter() - wall0)

    def run(
        self,
        duration: float | None = None,
        max_steps: int | None = None,
        stop_conditions: Sequence[StopCondition] = (),
        on_step: Sequence[Callable[[StepInfo], None]] = (),
    ) -> LoopResult:
        """Run until `duration` seconds of loop time, `max_steps` steps, a stop condition, a safety stop
        or a camera failure. The arm is stopped on every abnormal end; other exceptions, and Ctrl-C
        (KeyboardInterrupt: the user stops the command, not the episode), stop the arm and propagate. A
        live session turns the first Ctrl-C into a stop condition instead (StopFlag.sigint_sets)."""
        if duration is None and max_steps is None and not stop_conditions:
            raise ValueError("ControlLoop.run: give a duration, max_steps or a stop condition")
        n_ticks = math.inf if duration is None else max(1, math.ceil(duration / self.period - 1e-9))
        t0 = self.clock.now()
        result = LoopResult(reason="", t_start=t0)
        k = streak = 0
        info: StepInfo | None = None
        try:
            while True:
                if k >= n_ticks:
                    result.reason = "duration"
                    break
                if max_steps is not None and result.n_steps >= max_steps:
                    result.reason = "max_steps"
                    break
                frame, tick = self.next_frame(t0, k, info)
                if self.sync == "frame":  # ticks are frames; a repeated frame (frozen driver) is a tick too
                    gap = 1 if info is None else max(1, frame.index - info.frame.index)
                    result.skipped_ticks += gap - 1  # frames that arrived while the previous step overran
                    k += gap
                if result.first_frame_index is None:
                    result.first_frame_index = frame.index
                result.last_frame_index = frame.index
                info = self.step(result.n_steps, tick, frame)
                result.n_steps += 1
                result.latencies.append(info.latency)
                result.compute_times.append(info.compute)
                if info.latency > self.period:
                    result.missed_deadlines += 1
                    streak += 1
                    result.longest_miss_streak = max(result.longest_miss_streak, streak)
                else:
                    streak = 0
                for callback in on_step:
                    callback(info)
                stop = next((r for r in (cond(info) for cond in stop_conditions) if r), None)
                if stop:
                    result.reason, result.message = (stop, "") if isinstance(stop, str) else stop
                    break
                if self.sync == "clock":  # next tick; if already past it by over a period, drop the missed ticks
                    k += 1
                    behind = int((self.clock.now() - t0) / self.period) - k
                    if behind > 0:
                        result.skipped_ticks += behind
                        k += behind
        except (SafetyStop, UnsafeTargetError) as e:
            result.reason, result.message = "safety", str(e)
            self.arm.stop()
        except ArmError as e:  # reflex, lost connection, ...: the arm refused or stopped
            result.reason, result.message = "arm", str(e)
            self.arm.stop()
        except EndOfStream as e:
            result.reason, result.message = "end_of_stream", str(e)
            self.arm.stop()
        except CameraError as e:
            result.reason, result.message = "camera", str(e)
            self.arm.stop()
        except ControllerError as e:
            result.reason, result.message = "controller", str(e)
            self.arm.stop()
        except BaseException:  # Ctrl-C / SIGTERM (KeyboardInterrupt) included: the command stops, not the episode
            self.arm.stop()
            raise
        result.t_end = self.clock.now()
        stats = getattr(self.controller, "loop_stats", None)
        if callable(stats):
            result.controller_stats = dict(stats())
        return result
