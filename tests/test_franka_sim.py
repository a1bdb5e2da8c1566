"""FrankaArm with the real franky client against franky-sim (MuJoCo, loopback), started by this module.

franky-sim serves one client at a time on TCP 1337 (arm) and 1338 (gripper), so the module shares one
server and one FrankaArm. Numbers measured here are printed (pytest -s) and quoted in docs/results.md.
"""

import re
import time

import numpy as np
import pytest

from robot.fr3_kinematics import forward_kinematics
from robot.franka_arm import ArmError, FrankaArm, UnsafeTargetError
from robot.safety import SafetyChecker, SafetyLimits
from robot.teleop.motion import MinJerkTrajectory

SIM_START_Q = np.array([0.0, 0.0, 0.0, -1.57, 0.0, 1.57, 0.785])  # franky-sim's initial configuration


@pytest.fixture(scope="module")
def arm(franky_sim):
    a = FrankaArm("127.0.0.1", realtime=False, relative_dynamics_factor=1.0,
                  safety=SafetyChecker(SafetyLimits(max_step=0.1, max_deviation=0.35)))
    yield a
    a.close()


def stream(arm: FrankaArm, q_goal: np.ndarray, peak_speed: float = 0.3, period: float = 0.1,
           gripper_width: float | None = None) -> dict:
    """Send a min-jerk trajectory to q_goal as 10 Hz absolute targets; measure tracking."""
    q_start = arm.state().q
    traj = MinJerkTrajectory(q_start, q_goal, peak_speed=peak_speed)
    n = int(np.ceil(traj.duration / period))
    measured_err, planner_err = [], []
    prev = None
    t0 = time.monotonic()
    for k in range(n + 1):
        while time.monotonic() - t0 < k * period:
            time.sleep(0.0005)
        if prev is not None:  # how far the arm is from the target sent one period ago
            measured_err.append(np.abs(arm.state().q - prev).max())
            planner_err.append(np.abs(arm.q_desired - prev).max())
        target = traj.sample(min(k * period, traj.duration))
        arm.command(target, gripper_width if k == 0 else None)
        prev = target
    t_end = time.monotonic() + 3.0  # settle (longer when the simulator runs behind real time)
    while time.monotonic() < t_end and np.abs(arm.state().q - q_goal).max() > 0.005:
        time.sleep(0.05)
    final = np.abs(arm.state().q - q_goal).max()
    return {"max_err": float(np.max(measured_err)), "mean_err": float(np.mean(measured_err)),
            "planner_max_err": float(np.max(planner_err)), "final_err": float(final), "steps": n + 1}


def test_connect_and_read_state(arm):
    s = arm.state()
    assert s.q.shape == (7,) and s.dq.shape == (7,)
    np.testing.assert_allclose(s.q, SIM_START_Q, atol=5e-3)
    assert 0.0 <= s.gripper_width <= 0.08
    v = s.as_vector()
    assert v.shape == (8,) and v.dtype == np.float32
    assert not arm.has_errors


def test_follows_a_stream_of_10hz_targets(arm):
    goal = SIM_START_Q + np.array([0.3, 0.1, 0.0, 0.2, 0.0, -0.1, 0.2])
    res = stream(arm, goal, peak_speed=0.3, gripper_width=0.07)
    print(f"\nfranky-sim tracking of a 10 Hz min-jerk stream (peak 0.3 rad/s, factor 1.0): "
          f"measured max {res['max_err']:.3f} rad, mean {res['mean_err']:.3f} rad; franky planner q_d max "
          f"{res['planner_max_err']:.3f} rad; final {res['final_err']:.4f} rad after {res['steps']} targets")
    # Unloaded, franky's planner stays within about one step of the targets (0.015-0.03 rad at 0.3 rad/s)
    # and franky-sim's joint controller adds ~0.05 rad of lag. franky-sim is a Python MuJoCo server that
    # falls behind real time when the CPU is busy (seen: 2-3x larger errors at load 10 on 2 cores), so
    # the bounds here are for a busy CI machine; benchmarks/franky_tracking_bench.py measures properly.
    assert res["planner_max_err"] < 0.2
    assert res["max_err"] < 0.4
    assert res["final_err"] < 0.01
    assert arm.state().gripper_width == pytest.approx(0.07, abs=0.005)  # the finished command's width
    assert arm.read_gripper_width() == pytest.approx(0.07, abs=0.005)  # the hand's own measurement


def settle_at(arm: FrankaArm, q: np.ndarray, timeout: float = 10.0, tol: float = 0.01) -> np.ndarray:
    """Bring the arm to q with move_to (joint-limit and workspace checks, no step limit) and wait until
    franky-sim's joints are there; returns the measured position. Only a starting pose (the tests compare
    against the measured one): franky-sim closes the last millirad slowly, and a fresh-clone run once
    found joint 7 5.006 mrad away after 5 s, so 10 mrad and 10 s."""
    arm.move_to(q)
    t_end = time.monotonic() + timeout
    while time.monotonic() < t_end and np.abs(arm.state().q - q).max() > tol:
        time.sleep(0.05)
    measured = arm.state().q
    assert np.abs(measured - q).max() <= tol, f"franky-sim did not settle at {q}: {measured}"
    return measured


def with_joint(q: np.ndarray, j: int, value: float) -> np.ndarray:
    q = q.copy()
    q[j] = value
    return q


def test_rejects_unsafe_targets_before_sending(arm):
    """Each target fails exactly one check, approached from a nearby pose so that no other check (the
    step limit above all) is what blocks it; nothing reaches franky."""
    q_high7 = arm.safety.limits.q_high[6]  # 3.0159 - 0.05
    x_min = arm.safety.limits.workspace_min[0]  # 0.15 m
    # joint 1 turns the flange (0.554 m from the base axis here) sideways: x = 0.17 m at 1.26 rad, 0.13 at 1.33
    cases = [
        ("joint limit", with_joint(SIM_START_Q, 6, q_high7 - 0.03),
         lambda q: with_joint(q, 6, q_high7 + 0.03), rf"joint 7 target {q_high7 + 0.03:.3f} outside"),
        ("step", SIM_START_Q, lambda q: with_joint(q, 6, q[6] + 0.3), r"step of joint 7 is \+0\.300 rad"),
        ("workspace", with_joint(SIM_START_Q, 0, 1.26), lambda q: with_joint(q, 0, 1.33),
         r"leaves the workspace box .*\(x=0\.1[34]\d\)"),
        ("non-finite", SIM_START_Q, lambda q: np.full(7, np.nan), r"target must be 7 finite joint positions"),
    ]
    arm.stop()
    for name, near, unsafe, violation in cases:
        q0 = settle_at(arm, near)
        target = unsafe(q0)
        if name == "workspace":
            assert not arm.safety.workspace_violations(q0) and forward_kinematics(target)[0, 3] < x_min
        n_sent = arm.n_sent
        with pytest.raises(UnsafeTargetError) as info:
            arm.command(target)
        assert len(info.value.violations) == 1, (name, info.value.violations)
        assert re.search(violation, info.value.violations[0]), (name, info.value.violations[0])
        assert arm.n_sent == n_sent, f"{name}: an unsafe target reached franky"
        time.sleep(0.2)
        # nothing moved towards the rejected target (0.06-0.3 rad away); the arm only settles in place
        np.testing.assert_allclose(arm.state().q, q0, atol=0.02)  # q0 is within 0.01 of `near`: the arm may still settle on
        assert not arm.robot.is_in_control
    settle_at(arm, SIM_START_Q)


def test_dry_run_logs_and_does_not_move(arm):
    arm.stop()
    q0 = arm.state().q
    arm.dry_run = True
    try:
        target = q0 + 0.05
        arm.command(target)
        time.sleep(0.3)
        np.testing.assert_allclose(arm.state().q, q0, atol=0.02)  # the target was 0.05 rad away on every joint
        assert not arm.robot.is_in_control
        np.testing.assert_allclose(arm.dry_run_log[-1], target)
        with pytest.raises(UnsafeTargetError):  # dry run still checks
            arm.command(q0 + 0.5)
    finally:
        arm.dry_run = False
        arm.stop()


def test_recovers_after_an_injected_franky_error(arm):
    """franky-sim never raises reflexes (its error flags are always clear), so the error is provoked
    in the real client: with our safety bypassed, a non-finite target reaches franky's motion planner,
    which fails the running motion; the next command reports it as ArmError."""
    import franky

    arm.stop()
    q0 = arm.state().q
    arm.robot.move(franky.JointMotion(np.full(7, np.nan)), asynchronous=True)  # safety bypassed
    time.sleep(0.1)
    with pytest.raises(ArmError) as info:
        arm.command(q0 + 0.02)
    assert info.value.kind == "planner" and "Motion planner failed" in info.value.reason
    arm.recover()
    assert not arm.has_errors
    goal = q0 + np.array([-0.1, 0.0, 0.0, -0.1, 0.0, 0.0, 0.0])
    res = stream(arm, goal, peak_speed=0.3)
    assert res["final_err"] < 0.01


def test_stop_halts_a_motion(arm):
    q0 = arm.state().q
    arm.command(q0 + np.array([0.09, 0, 0, 0, 0, 0, 0]))
    time.sleep(0.05)
    arm.stop()
    assert not arm.robot.is_in_control
    time.sleep(0.5)
    moved = arm.state().q[0] - q0[0]
    assert moved < 0.09 - 1e-3  # the motion was cut short
    assert abs(arm.state().dq[0]) < 0.02
