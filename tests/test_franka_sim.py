"""FrankaArm with the real franky client against franky-sim (MuJoCo, loopback), started by this module.

franky-sim serves one client at a time on TCP 1337 (arm) and 1338 (gripper), so the module shares one
server and one FrankaArm. Numbers measured here are printed (pytest -s) and quoted in the README.
"""

import time

import numpy as np
import pytest

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
    assert arm.state().gripper_width == pytest.approx(0.07, abs=0.005)


def test_rejects_unsafe_targets_before_sending(arm):
    arm.stop()  # a new stream: steps are measured from the measured position
    q0 = arm.state().q
    n_sent = arm.n_sent
    beyond = q0.copy()
    beyond[0] = 2.74  # inside the hard limit 2.7437, inside the 0.05 margin ... and a huge step
    big_step = q0 + np.array([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.3])
    into_table = q0 + np.array([0.0, 1.0, 0.0, 1.2, 0.0, 0.0, 0.0])
    for bad in (beyond, big_step, into_table, np.full(7, np.nan)):
        with pytest.raises(UnsafeTargetError):
            arm.command(bad)
    assert arm.n_sent == n_sent, "an unsafe target reached franky"
    time.sleep(0.3)
    # nothing moved towards the rejected targets (0.3-1.2 rad away); the arm only settles in place
    np.testing.assert_allclose(arm.state().q, q0, atol=0.02)
    assert not arm.robot.is_in_control


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
