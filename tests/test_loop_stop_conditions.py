"""Stop conditions and the control loop's safe ends (robot/stop_conditions.py, robot/control_loop.py) on
SimClock: controller exceptions, non-finite actions, camera stalls, missed-deadline streaks, Ctrl-C."""

import signal

import numpy as np
import pytest

from robot.clock import SimClock
from robot.control_loop import ControlLoop
from robot.display_crop import DisplayCrop
from robot.fr3_kinematics import Q_READY
from robot.interfaces import Frame
from robot.sim_arm import SimArm
from robot.stop_conditions import CameraStall, MissedDeadlineStreak, StopFlag, Until


class StuckCamera:
    """Delivers new frames until `freeze_after`, then keeps returning the last one (a frozen driver)."""

    def __init__(self, clock, freeze_after=None):
        self.clock, self.freeze_after, self.k = clock, freeze_after, 0

    def read(self, timeout=None):
        if self.freeze_after is None or self.k < self.freeze_after:
            self.k += 1
        return Frame(np.full((32, 32, 3), self.k % 255, np.uint8), timestamp=0.1 * self.k, index=self.k)

    def close(self):
        pass


class Controller:
    def __init__(self, fail_at=None, nan_at=None, clock=None, slow_from=None):
        self.n, self.fail_at, self.nan_at, self.clock, self.slow_from = 0, fail_at, nan_at, clock, slow_from

    def reset(self):
        self.n = 0

    def select_action(self, obs):
        k, self.n = self.n, self.n + 1
        if k == self.fail_at:
            raise RuntimeError("policy blew up")
        if self.slow_from is not None and k >= self.slow_from:
            self.clock.advance(0.15)  # this step takes longer than a period
        a = np.concatenate([obs["state"][:7], [0.04]]).astype(np.float32)
        if k == self.nan_at:
            a[2] = np.nan
        return a


class CountingArm(SimArm):
    n_stops = 0

    def stop(self):
        self.n_stops += 1
        super().stop()


def make(clock, controller, camera=None):
    arm = CountingArm(clock, q0=Q_READY)
    crop = DisplayCrop.full_frame((32, 32), (16, 16))
    return ControlLoop(clock, camera or StuckCamera(clock), crop, arm, controller, "test"), arm


def test_controller_exception_stops_the_arm_and_records_the_reason():
    clock = SimClock()
    loop, arm = make(clock, Controller(fail_at=3))
    res = loop.run(duration=2.0)
    assert res.reason == "controller" and "RuntimeError: policy blew up" in res.message
    assert res.n_steps == 3 and arm.n_stops == 1


def test_non_finite_action_is_a_safety_stop():
    clock = SimClock()
    loop, arm = make(clock, Controller(nan_at=2))
    res = loop.run(duration=2.0)
    assert res.reason == "safety" and "invalid action" in res.message and arm.n_stops == 1


def test_camera_stall_on_a_frozen_frame_and_on_old_frames():
    clock = SimClock()
    cam = StuckCamera(clock, freeze_after=5)
    loop, _arm = make(clock, Controller(), cam)
    stall = CameraStall(0.35, clock.now)
    res = loop.run(duration=5.0, stop_conditions=[stall])
    # frames 1..5 are new (steps 0..4), then the same frame: stall once 0.35 s passed without a new one
    assert res.reason == "camera_stall" and res.n_steps == 9
    assert res.frames_captured == 5  # the camera delivered 5 distinct frames for 9 steps
    assert res.message == "no new camera frame for 0.40 s (stall_timeout 0.35 s; last frame index 5)"

    clock = SimClock()
    loop, _ = make(clock, Controller())
    aged = CameraStall(0.5, clock.now, frame_age=lambda info: 0.2 * info.index)  # age grows with the step
    res = loop.run(duration=5.0, stop_conditions=[aged])
    assert res.reason == "camera_stall" and res.n_steps == 4
    # the stop says what was measured: the age of the frame (0.2 * step 3)
    assert res.message == "camera frame 4 is 0.600 s old when the step starts (stall_timeout 0.5 s)"


def test_missed_deadline_streak_stops_the_loop():
    clock = SimClock()
    loop, _arm = make(clock, Controller(clock=clock, slow_from=4))
    res = loop.run(duration=10.0, stop_conditions=[MissedDeadlineStreak(3, 0.1)])
    assert res.reason == "missed_deadlines" and res.n_steps == 7
    assert res.missed_deadlines == 3 and res.longest_miss_streak == 3
    s = res.summary()
    assert s["longest_miss_streak"] == 3 and s["frames_used"] == 7


def test_stop_flag_and_until():
    clock = SimClock()
    flag = StopFlag()
    loop, _ = make(clock, Controller())
    res = loop.run(duration=5.0, stop_conditions=[flag, Until(lambda info: info.index == 6, "episode_done")],
                   on_step=[lambda info: flag.set("stop_key") if info.index == 2 else None])
    assert res.reason == "stop_key" and res.n_steps == 3
    res = make(clock, Controller())[0].run(duration=5.0, stop_conditions=[Until(lambda i: i.index == 6, "done")])
    assert res.reason == "done" and res.n_steps == 7


def test_first_ctrl_c_sets_the_flag_second_raises():
    flag = StopFlag()
    before = signal.getsignal(signal.SIGINT)
    with flag.sigint_sets():
        signal.raise_signal(signal.SIGINT)  # no KeyboardInterrupt: the session stops at the end of the step
        assert flag.is_set and flag.reason == "interrupted" and flag() == "interrupted"
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is before


def test_ctrl_c_raises_once_the_session_is_stopping_for_another_reason():
    # e.g. the display's stop key was pressed and the arm is still being stopped: Ctrl-C is not swallowed
    flag = StopFlag()
    with flag.sigint_sets():
        flag.set("stop_key")
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
    assert flag.reason == "stop_key"


def test_later_ctrl_c_waits_for_a_commit_in_progress():
    # after the first stop the handler must stay the front door's: a third Ctrl-C inside a commit
    # (deferred_interrupts) is raised when the commit ends, never in the middle of it
    from moss_vla.command import deferred_interrupts, raise_interrupt

    flag = StopFlag()
    with flag.sigint_sets():
        signal.raise_signal(signal.SIGINT)  # first: sets the flag
        committed = False
        with pytest.raises(KeyboardInterrupt), deferred_interrupts():
            signal.raise_signal(signal.SIGINT)  # second: deferred
            signal.raise_signal(signal.SIGINT)  # third: deferred too
            committed = True
        assert committed
        assert signal.getsignal(signal.SIGINT) is raise_interrupt
