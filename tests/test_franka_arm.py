"""FrankaArm logic that franky-sim cannot exercise: a real reflex (ControlException + robot error
state) and its recovery, unrecoverable errors, gripper command pacing, configuration. A fake `franky`
module (the API surface FrankaArm uses) is injected via sys.modules. The connection failure test
uses the real franky client against a loopback address where nothing listens."""

import sys
import time
import types

import numpy as np
import pytest
from omegaconf import OmegaConf

from moss_vla.paths import CONFIG_DIR
from robot.fr3_kinematics import Q_READY
from robot.franka_arm import ArmError, FrankaArm, UnsafeTargetError


class _Exc(Exception):
    pass


def make_fake_franky():
    fr = types.ModuleType("franky")

    class ControlException(_Exc):
        pass

    class NetworkException(_Exc):
        pass

    class CommandException(_Exc):
        pass

    class RealtimeConfig:
        Enforce, Ignore = "enforce", "ignore"

    class JointState:
        def __init__(self, q):
            self.position, self.velocity = np.array(q), np.zeros(7)

    class JointMotion:
        def __init__(self, target, relative_dynamics_factor=1.0):
            assert isinstance(target, np.ndarray) and target.dtype == np.float64, "franky wants float arrays"
            self.target, self.factor = target, relative_dynamics_factor

    class JointStopMotion:
        pass

    class Future:
        def __init__(self, done, result=True):
            self.done, self.result = done, result

        def wait(self, timeout):
            return self.done

        def get(self):
            assert self.done, "get() would block"
            return self.result

    class Robot:
        def __init__(self, ip, realtime_config):
            self.ip, self.realtime_config = ip, realtime_config
            self.q = Q_READY.copy()
            self.moves = []
            self.has_errors = False
            self.is_in_control = False
            self.relative_dynamics_factor = 1.0
            self.reflex_on_next_move = False
            self.recover_ok = True
            self.recover_calls = 0
            self.motion_slices = 0
            self.hard_stops = 0
            self.state = types.SimpleNamespace(current_errors="[cartesian_reflex]", q_d=self.q)

        @property
        def current_joint_state(self):
            return JointState(self.q)

        def move(self, motion, asynchronous=False):
            if self.reflex_on_next_move:  # the robot stops itself and refuses until recovered
                self.reflex_on_next_move = False
                self.has_errors = True
                raise ControlException("libfranka: Move command aborted: motion aborted by reflex! "
                                       "[\"cartesian_reflex\"]")
            self.moves.append((motion, asynchronous))
            self.is_in_control = not isinstance(motion, JointStopMotion)

        def join_motion(self, timeout=None):
            if self.motion_slices > 0:  # a long motion: still running after this slice of waiting
                self.motion_slices -= 1
                time.sleep(min(timeout, 0.001))
                return False
            return True

        def stop(self):  # franky's Robot.stop preempts the motion (a ControlException in its thread)
            self.hard_stops += 1

        def recover_from_errors(self):
            self.recover_calls += 1
            if self.recover_ok:
                self.has_errors = False
            return self.recover_ok

        def set_collision_behavior(self, torque, force):
            self.collision = (torque, force)

    class Gripper:
        def __init__(self, ip):
            self.measured = 0.08
            self.width_reads = 0  # each read of a real hand's width blocks ~0.1 s
            self.commands = []
            self.busy = False
            self.reaches = True

        @property
        def width(self):
            self.width_reads += 1
            return self.measured

        def move_async(self, width, speed):
            self.commands.append((width, speed))
            return Future(not self.busy, self.reaches)

    for obj in (ControlException, NetworkException, CommandException, RealtimeConfig, JointMotion,
                JointStopMotion, Robot, Gripper):
        setattr(fr, obj.__name__, obj)
    return fr


@pytest.fixture
def franky(monkeypatch):
    fr = make_fake_franky()
    monkeypatch.setitem(sys.modules, "franky", fr)
    return fr


def test_connects_with_realtime_ignore_and_sets_the_dynamics_factor_on_the_robot(franky):
    arm = FrankaArm("10.0.0.2", relative_dynamics_factor=0.3, collision_torque_threshold=25.0,
                    collision_force_threshold=35.0)
    assert arm.robot.realtime_config == franky.RealtimeConfig.Ignore
    assert arm.robot.relative_dynamics_factor == 0.3
    assert arm.robot.collision == (25.0, 35.0)
    arm.command(Q_READY + 0.01)
    motion, asynchronous = arm.robot.moves[-1]
    assert asynchronous and motion.factor == 1.0  # the factor is on the robot, not on each motion
    np.testing.assert_allclose(motion.target, Q_READY + 0.01)
    assert FrankaArm("10.0.0.2", realtime=True).robot.realtime_config == franky.RealtimeConfig.Enforce
    with pytest.raises(ArmError, match=r"set both or neither \(got 25.0 Nm, None N\)"):
        FrankaArm("10.0.0.2", collision_torque_threshold=25.0)  # silently ignored before


def test_integer_targets_are_sent_as_float64(franky):
    arm = FrankaArm("10.0.0.2")
    arm.robot.q = np.array([0, 0, 0, -2, 0, 2, 1], dtype=np.float64)
    arm.command(np.array([0, 0, 0, -2, 0, 2, 1]))  # an int array: franky would reject it
    assert arm.robot.moves[-1][0].target.dtype == np.float64


def test_reflex_stops_the_trial_with_a_typed_error_and_recover_clears_it(franky):
    arm = FrankaArm("10.0.0.2")
    arm.command(Q_READY + 0.02)
    arm.robot.reflex_on_next_move = True
    with pytest.raises(ArmError) as info:
        arm.command(Q_READY + 0.04)
    assert info.value.kind == "reflex" and "reflex" in info.value.reason and info.value.recoverable
    # while in the error state nothing is sent; the error says to recover
    n = len(arm.robot.moves)
    with pytest.raises(ArmError, match="recover"):
        arm.command(Q_READY + 0.02)
    assert len(arm.robot.moves) == n
    arm.recover()
    assert arm.robot.recover_calls == 1 and not arm.has_errors
    arm.command(Q_READY + 0.02)  # a new stream starts from the measured position
    assert len(arm.robot.moves) == n + 1


def test_an_arm_in_an_error_state_is_not_recovered_on_connect_unless_asked(franky):
    # the last session may have ended on a collision: by default a person looks before the arm moves again
    class Faulted(franky.Robot):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.has_errors = True

    franky.Robot = Faulted
    with pytest.raises(ArmError, match=r"errors on connect \(\[cartesian_reflex\]\).*Desk.*recover_on_connect=true") as info:
        FrankaArm("10.0.0.2")
    assert not info.value.recoverable
    arm = FrankaArm("10.0.0.2", recover_on_connect=True)
    assert arm.robot.recover_calls == 1 and not arm.has_errors


def test_failed_recovery_is_unrecoverable(franky):
    arm = FrankaArm("10.0.0.2")
    arm.robot.has_errors = True
    arm.robot.recover_ok = False
    with pytest.raises(ArmError) as info:
        arm.recover()
    assert not info.value.recoverable and "Desk" in info.value.reason


def test_unsafe_targets_never_reach_franky(franky):
    arm = FrankaArm("10.0.0.2")
    for bad in (Q_READY + 0.5, np.full(7, np.inf), Q_READY[:6]):
        with pytest.raises(UnsafeTargetError):
            arm.command(bad)
    assert arm.robot.moves == []


def test_gripper_commands_are_paced_and_deduplicated(franky):
    arm = FrankaArm("10.0.0.2", gripper_min_change=0.005)
    arm.command(Q_READY, 0.04)
    arm.command(Q_READY, 0.042)  # smaller than gripper_min_change: not sent
    assert arm.gripper.commands == [(0.04, 0.1)]
    arm.gripper.busy = True
    arm.command(Q_READY, 0.02)  # previous command finished (its future was done): sent
    arm.command(Q_READY, 0.0)  # the one just sent is still running: kept pending
    assert [w for w, _ in arm.gripper.commands] == [0.04, 0.02]
    arm.gripper.busy = False
    arm._gripper_future.done = True
    arm.command(Q_READY)  # no width given: the pending width goes out now
    assert [w for w, _ in arm.gripper.commands] == [0.04, 0.02, 0.0]
    arm.command(Q_READY, 0.5)  # clamped to the gripper's range
    assert arm.gripper.commands[-1][0] == pytest.approx(0.08)


def test_state_reports_the_reached_gripper_width_without_querying_the_hand(franky):
    # a real hand answers a width query only at its next status message (~0.1 s): once per step would
    # blow the 100 ms budget, so the width is read at connect and after a command that fell short only
    arm = FrankaArm("10.0.0.2")
    assert arm.gripper.width_reads == 1 and arm.state().gripper_width == pytest.approx(0.08)
    arm.gripper.busy = True
    arm.command(Q_READY, 0.03)
    assert arm.state().gripper_width == pytest.approx(0.08)  # still moving: the last reached width
    arm._gripper_future.done = True
    assert arm.state().gripper_width == pytest.approx(0.03)  # finished: its target
    arm.gripper.busy, arm.gripper.reaches, arm.gripper.measured = False, False, 0.012
    arm.command(Q_READY, 0.0)  # stopped by an object at 12 mm
    assert arm.state().gripper_width == pytest.approx(0.012)
    for _ in range(20):
        arm.command(Q_READY, 0.0)
        arm.state()
    assert arm.gripper.width_reads == 2  # connect + the command that fell short
    assert arm.read_gripper_width() == pytest.approx(0.012) and arm.gripper.width_reads == 3


def test_a_dry_run_checks_a_long_stream_against_where_the_arm_would_be(franky):
    arm = FrankaArm("10.0.0.2", dry_run=True)
    for k in range(1, 11):  # 10 steps of 0.09 rad: 0.9 rad from the (never moving) measured pose
        arm.command(Q_READY + np.array([0.09 * k, 0, 0, 0, 0, 0, 0]))
    assert arm.robot.moves == [] and len(arm.dry_run_log) == 10
    with pytest.raises(UnsafeTargetError, match="step"):  # the step limit still applies
        arm.command(Q_READY + np.array([1.2, 0, 0, 0, 0, 0, 0]))


def test_stop_never_raises_and_dry_run_sends_nothing(franky):
    arm = FrankaArm("10.0.0.2", dry_run=True)
    arm.command(Q_READY + 0.01)
    assert arm.robot.moves == [] and len(arm.dry_run_log) == 1
    arm.dry_run = False
    arm.command(Q_READY + 0.01)
    arm.robot.reflex_on_next_move = True
    arm.stop()  # the stop motion fails: logged, not raised (stop runs in cleanup paths)
    arm.close()


def test_move_to_checks_the_goal_but_not_the_step(franky):
    arm = FrankaArm("10.0.0.2")
    far = Q_READY + np.array([0.5, 0.0, 0.0, 0.3, 0.0, 0.0, 0.0])  # far but safe
    arm.move_to(far)
    motion, _ = arm.robot.moves[-1]
    np.testing.assert_allclose(motion.target, far)
    behind = Q_READY.copy()
    behind[0] = 2.6
    with pytest.raises(UnsafeTargetError, match="workspace"):
        arm.move_to(behind)


def test_move_to_stops_the_arm_on_a_stop_request_ctrl_c_or_timeout(franky):
    # homing takes seconds: the session's first Ctrl-C (a stop request) or a KeyboardInterrupt must not
    # wait for it to end; the arm decelerates to a stop (JointStopMotion) at once
    arm = FrankaArm("10.0.0.2")
    far = Q_READY + np.array([0.5, 0.0, 0.0, 0.3, 0.0, 0.0, 0.0])
    asked = []
    arm.robot.motion_slices = 100
    assert arm.move_to(far, should_stop=lambda: len(asked) >= 3 or asked.append(1)) is False
    assert isinstance(arm.robot.moves[-1][0], franky.JointStopMotion) and arm.robot.motion_slices == 96  # 4 slices waited

    def ctrl_c():
        raise KeyboardInterrupt

    arm.robot.motion_slices = 100
    with pytest.raises(KeyboardInterrupt):
        arm.move_to(far, should_stop=ctrl_c)
    assert isinstance(arm.robot.moves[-1][0], franky.JointStopMotion)
    arm.robot.motion_slices = 10**6
    with pytest.raises(ArmError, match="did not finish within 0.05 s") as info:
        arm.move_to(far, timeout=0.05)
    assert info.value.kind == "timeout" and arm.robot.hard_stops == 1
    arm.robot.motion_slices = 0
    assert arm.move_to(far) is True


def test_move_to_runs_at_the_configured_dynamics_factor(franky):
    # franky multiplies a motion's factor with the robot's: the product is the speed the arm moves at
    arm = FrankaArm("10.0.0.2", relative_dynamics_factor=0.2)
    far = Q_READY + np.array([0.5, 0.0, 0.0, 0.3, 0.0, 0.0, 0.0])
    for asked, effective in [(None, 0.2), (0.1, 0.1), (0.2, 0.2)]:
        arm.move_to(far, relative_dynamics_factor=asked)
        motion, _ = arm.robot.moves[-1]
        assert arm.robot.relative_dynamics_factor * motion.factor == pytest.approx(effective)
    with pytest.raises(ArmError, match=r"must be in \(0, 0.2\].*got 0.5"):
        arm.move_to(far, relative_dynamics_factor=0.5)  # never faster than configured


def test_from_config(franky):
    cfg = OmegaConf.load(CONFIG_DIR / "arm" / "franka.yaml")
    arm = FrankaArm.from_config(cfg, ip="127.0.0.1")
    assert arm.ip == "127.0.0.1" and arm.relative_dynamics_factor == cfg.relative_dynamics_factor
    assert arm.safety.limits.mode == cfg.safety.mode
    np.testing.assert_allclose(arm.safety.limits.workspace_min, list(cfg.safety.workspace_min))
    cfg.control_hz = 10  # no arm config has it (the rate is rig.period): a clear error, not silently dropped
    with pytest.raises(ValueError, match=r"arm config: unknown keys \['control_hz'\]"):
        FrankaArm.from_config(cfg)


def test_connection_refused_with_the_real_franky_client():
    # nothing listens on 127.0.0.2 (franky-sim binds 127.0.0.1 only): libfranka's real error path
    with pytest.raises(ArmError) as info:
        FrankaArm("127.0.0.2")
    assert info.value.kind == "network" and not info.value.recoverable
    assert "127.0.0.2" in info.value.reason and "arm=sim" in info.value.reason
