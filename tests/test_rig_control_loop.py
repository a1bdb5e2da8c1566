"""The control loop (robot/control_loop.py) on simulated parts: steps, obs, writer keys, end reasons,
safety and deadline accounting on SimClock and RealClock."""

import time

import numpy as np
import pytest

from robot.cameras.grabber import CameraError
from robot.clock import RealClock, SimClock
from robot.control_loop import ControlLoop, JointLimitSafety
from robot.display_crop import DisplayCrop
from robot.fr3_kinematics import Q_MAX, Q_READY
from robot.interfaces import Frame
from robot.safety import SafetyChecker
from robot.sim_arm import SimArm
from robot.sim_camera import SimCamera
from tasks.stimulus import StimulusState

RAW = (180, 320)
CORNERS = [[40, 20], [280, 30], [275, 160], [45, 165]]


def screen(t):
    img = np.zeros((90, 160, 3), np.uint8)
    img[:, : int(10 * t) % 160] = 200
    return img


class Hold:
    """Controller: a fixed target (optionally a different one from step `switch_at`, or slow steps)."""

    name = "hold"

    def __init__(self, target, switch_at=None, other=None, sleep_at=None, sleep=0.0):
        self.target, self.switch_at, self.other = np.asarray(target, float), switch_at, other
        self.sleep_at, self.sleep = sleep_at, sleep
        self.observations = []

    def reset(self):
        self.observations = []

    def select_action(self, obs):
        k = len(self.observations)
        self.observations.append(obs)
        if self.sleep_at is not None and k == self.sleep_at:
            time.sleep(self.sleep)
        q = self.other if self.switch_at is not None and k >= self.switch_at else self.target
        return np.concatenate([q, [0.04]]).astype(np.float32)


class FakeWriter:
    def __init__(self):
        self.frames = []

    def add_frame(self, **kw):
        self.frames.append(kw)


def stimulus(t):
    return StimulusState(t=t, label=1 if t > 0.5 else -1, phase=1, xy=(0.25, 0.75),
                         interaction=0 if t > 0.5 else -1, time_to_deadline=2.0 - t if t > 0.5 else -1.0)


def rig(clock, controller, arm_safety=None, **kw):
    cam = SimCamera(screen, clock, CORNERS, raw_size=RAW)
    arm = SimArm(clock, Q_READY, safety=arm_safety)
    loop = ControlLoop(clock, cam, DisplayCrop(CORNERS, (224, 224), RAW), arm, controller, "point", **kw)
    return loop, arm


def test_sim_run_builds_observations_commands_and_records_every_key():
    clock = SimClock()
    target = Q_READY + 0.05
    ctrl, writer = Hold(target), FakeWriter()
    loop, arm = rig(clock, ctrl, stimulus=stimulus, writer=writer)
    res = loop.run(duration=1.0)
    assert res.reason == "duration" and res.n_steps == 10
    assert res.missed_deadlines == 0 and res.skipped_ticks == 0
    assert res.summary()["latency_ms_p99"] < 100 and res.summary()["compute_ms_p50"] > 0
    obs = ctrl.observations[3]
    assert obs["image"].shape == (224, 224, 3) and obs["state"].shape == (8,) and obs["instruction"] == "point"
    assert obs["stimulus"].t == pytest.approx(obs["frame_timestamp"])  # ground truth of what the frame shows
    assert len(writer.frames) == 10
    f = writer.frames[-1]
    assert set(f) == {"image", "state", "action", "timestamp", "stim_label", "stim_phase", "stim_xy",
                      "stim_interaction", "stim_time_to_deadline"}
    assert f["stim_label"] == 1 and f["action"].dtype == np.float32
    np.testing.assert_allclose(f["action"][:7], target, atol=1e-6)
    ts = [fr["timestamp"] for fr in writer.frames]
    assert np.all(np.diff(ts) > 0.09) and np.all(np.diff(ts) < 0.11)
    np.testing.assert_allclose(arm.state().q, target, atol=0.01)  # the arm went there


def test_max_steps_and_stop_conditions_end_the_loop_with_their_reason():
    clock = SimClock()
    loop, _ = rig(clock, Hold(Q_READY))
    assert loop.run(max_steps=3).n_steps == 3
    res = loop.run(duration=10.0, stop_conditions=[lambda info: "operator_stop" if info.index == 4 else None])
    assert res.reason == "operator_stop" and res.n_steps == 5
    with pytest.raises(ValueError):
        loop.run()


def test_invalid_actions_stop_the_loop_and_hold_the_arm():
    clock = SimClock()
    bad = Hold(Q_READY + 0.05, switch_at=3, other=np.full(7, np.nan))
    loop, arm = rig(clock, bad)
    res = loop.run(duration=2.0)
    assert res.reason == "safety" and "invalid action" in res.message and res.n_steps == 3
    q = arm.state().q
    clock.advance(1.0)
    np.testing.assert_allclose(arm.state().q, q, atol=0.02)  # stopped: holds where it was


def test_joint_limit_hook_clips_and_the_arm_checks_steps():
    clock = SimClock()
    over = Q_READY.copy()
    over[3] = 0.0  # beyond joint 4's upper limit
    hook = JointLimitSafety(margin=0.05)
    loop, arm = rig(clock, Hold(over), safety=hook)
    loop.run(duration=1.0)
    assert hook.n_clipped == 10 and arm.state().q[3] <= Q_MAX[3] - 0.05 + 1e-6
    # the arm's own checks (robot/safety.py, as on the real arm) reject a 0.5 rad jump
    clock = SimClock()
    loop, _ = rig(clock, Hold(Q_READY + 0.5), arm_safety=SafetyChecker())
    res = loop.run(duration=1.0)
    assert res.reason == "safety" and "step of joint" in res.message and res.n_steps == 0


def test_camera_failure_ends_the_loop():
    class Broken:
        def read(self, timeout=None):
            raise CameraError("unplugged")

        def close(self):
            pass

    clock = SimClock()
    loop = ControlLoop(clock, Broken(), lambda im: im, SimArm(clock, Q_READY), Hold(Q_READY), "x")
    res = loop.run(duration=1.0)
    assert res.reason == "camera" and "unplugged" in res.message


def test_fixed_ticks_on_real_clock_keep_the_period_and_count_missed_deadlines():
    clock = RealClock()
    ctrl = Hold(Q_READY, sleep_at=2, sleep=0.07)  # step 2 overruns a 30 ms period by more than two periods
    loop, _ = rig(clock, ctrl, period=0.03, sync="clock")
    loop.camera.phase, loop.camera.latency = -0.02, 0.0
    loop.camera.fps = 1 / 0.03
    t0 = time.perf_counter()
    res = loop.run(duration=0.3, max_steps=20)
    wall = time.perf_counter() - t0
    assert res.reason == "duration"
    assert res.missed_deadlines >= 1 and res.skipped_ticks >= 1
    assert 10 <= res.n_steps + res.skipped_ticks <= 12  # 0.3 s of 30 ms ticks, run or dropped
    assert 0.25 < wall < 1.0


def jittery_rig(clock, controller, sync, **kw):
    """Camera frames arrive right at multiples of 0.1 s (phase 0, no latency), +-3 ms jitter."""
    loop, _ = rig(clock, controller, sync=sync, **kw)
    loop.camera.phase, loop.camera.latency, loop.camera.jitter_std = 0.0, 0.0, 0.003
    return loop


def test_frame_locked_loop_uses_every_frame_where_fixed_ticks_skip():
    # the loop starts 2 ms before a frame arrives, as a live episode may: frame 0 is waiting, frame 1 not yet
    writer = FakeWriter()
    res = jittery_rig(SimClock(0.098), Hold(Q_READY), "frame", writer=writer).run(duration=30.0)
    assert res.n_steps == 300 and res.frames_captured == 300 and res.skipped_ticks == 0
    # each step starts when its frame arrives: zero latency on simulated time, and no frame used twice
    assert max(res.latencies) == 0.0 and res.missed_deadlines == 0
    assert np.all(np.diff([f["timestamp"] for f in writer.frames]) > 0.08)
    # the same camera read at the loop clock's own ticks: they run a frame behind (each reads the frame that
    # arrived 98 ms earlier) until jitter brings a frame in before its tick: then that tick reads two new
    # frames and the older one is never used (what the 10-minute real-time recording showed)
    fixed = jittery_rig(SimClock(0.098), Hold(Q_READY), "clock").run(duration=30.0)
    assert fixed.n_steps == 300 and fixed.frames_captured == 301


def test_frame_locked_loop_counts_the_frames_a_slow_step_skips():
    clock = RealClock()
    ctrl = Hold(Q_READY, sleep_at=2, sleep=0.08)  # step 2 overruns a 30 ms period by more than two periods
    loop, _ = rig(clock, ctrl, period=0.03)
    loop.camera.phase, loop.camera.latency, loop.camera.fps = 0.0, 0.0, 1 / 0.03
    res = loop.run(duration=0.45)
    assert res.reason == "duration" and res.missed_deadlines >= 1 and res.skipped_ticks >= 1
    assert res.n_steps + res.skipped_ticks == res.frames_captured == 15  # 0.45 s of 30 ms frames
    assert max(res.latencies) >= 0.08  # charged from the frame's arrival


def test_a_camera_without_arrival_times_starts_steps_when_read_returns():
    class Paced:
        """Frames every 0.1 s of simulated time, without arrival stamps."""

        def __init__(self, clock):
            self.clock, self.k = clock, 0

        def read(self, timeout=None):
            self.clock.sleep_until(self.k * 0.1 + 0.05)
            self.k += 1
            return Frame(np.zeros((4, 4, 3), np.uint8), self.k * 0.1, self.k)

        def close(self):
            pass

    clock = SimClock()
    loop = ControlLoop(clock, Paced(clock), lambda im: im, SimArm(clock, Q_READY), Hold(Q_READY), "x")
    res = loop.run(duration=1.0)
    assert res.n_steps == 10 and res.frames_captured == 10 and max(res.latencies) == 0.0
    assert res.t_end == pytest.approx(0.95)  # the last step started at its frame, 0.95 s


def test_unknown_sync_mode_is_refused_with_the_config_key():
    with pytest.raises(ValueError, match="rig.loop_sync"):
        rig(SimClock(), Hold(Q_READY), sync="camera")
