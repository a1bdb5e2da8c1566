"""Safety checks on joint targets (robot/safety.py): limits, step, deviation, workspace by FK, clip mode."""

import numpy as np
import pytest
from omegaconf import OmegaConf

from moss_vla.paths import CONFIG_DIR
from robot.fr3_kinematics import Q_MAX, Q_MIN, Q_READY, forward_kinematics, inverse_kinematics_position
from robot.safety import ArmError, SafetyChecker, SafetyLimits, UnsafeTargetError

Q0 = Q_READY.copy()  # flange at (0.307, 0, 0.59), pointing down: inside the default workspace


def test_a_small_step_inside_everything_passes_unchanged():
    checker = SafetyChecker()
    q = Q0 + 0.05
    out = checker.check(q, Q0)
    np.testing.assert_array_equal(out, q)
    assert out.dtype == np.float64 and out.shape == (7,)
    assert checker.n_rejected == 0


@pytest.mark.parametrize(
    ("target", "fragment"),
    [
        (np.full(7, np.nan), "finite"),
        (np.zeros(6), "finite"),
        (Q0 + np.array([0, 0, 0, 0, 0, 0, 0.2]), "step of joint 7"),
    ],
)
def test_rejections_name_the_problem(target, fragment):
    checker = SafetyChecker()
    with pytest.raises(UnsafeTargetError) as info:
        checker.check(target, Q0)
    assert fragment in str(info.value)
    assert isinstance(info.value, ArmError) and info.value.kind == "unsafe_target"
    assert checker.n_rejected == 1


def test_joint_limit_margin_is_enforced():
    lim = SafetyLimits(joint_margin=0.05, max_step=10.0, max_deviation=10.0)
    checker = SafetyChecker(lim)
    near = Q0.copy()
    near[6] = Q_MAX[6] - 0.04  # inside the hard limit but inside the margin
    measured = near.copy()
    measured[6] -= 0.01
    with pytest.raises(UnsafeTargetError, match="joint 7 target"):
        checker.check(near, measured)
    ok = near.copy()
    ok[6] = Q_MAX[6] - 0.06
    checker.check(ok, measured)


def test_step_is_measured_from_the_previous_target_when_there_is_one():
    checker = SafetyChecker(SafetyLimits(max_step=0.1, max_deviation=0.35))
    prev = Q0 + np.array([0.2, 0, 0, 0, 0, 0, 0])  # the arm lags 0.2 rad behind the stream
    target = prev + np.array([0.08, 0, 0, 0, 0, 0, 0])
    checker.check(target, Q0, q_previous=prev)  # 0.08 per period: fine although 0.28 from measured
    with pytest.raises(UnsafeTargetError, match="step of joint 1"):
        checker.check(target, Q0)  # no previous target: 0.28 from the measured position


def test_deviation_from_measured_position_is_limited():
    checker = SafetyChecker(SafetyLimits(max_step=0.1, max_deviation=0.3))
    prev = Q0 + np.array([0.25, 0, 0, 0, 0, 0, 0])
    with pytest.raises(UnsafeTargetError, match="from the measured position"):
        checker.check(prev + np.array([0.09, 0, 0, 0, 0, 0, 0]), Q0, q_previous=prev)


def test_workspace_box_and_table_by_forward_kinematics():
    lim = SafetyLimits(max_step=10.0, max_deviation=10.0, workspace_min=[0.15, -0.6, 0.05],
                       workspace_max=[0.85, 0.6, 1.0], table_z=0.0, tool_length=0.16, tool_clearance=0.02)
    checker = SafetyChecker(lim)
    # flange 0.12 m above the table, pointing down: the 0.16 m tool would be in the table
    low = inverse_kinematics_position(np.array([0.5, 0.0, 0.12]), Q0)
    flange = forward_kinematics(low)[:3, 3]
    tip_z = flange[2] + forward_kinematics(low)[2, 2] * 0.16
    assert tip_z < 0.02, "test pose must put the tool tip into the table"
    with pytest.raises(UnsafeTargetError, match="above the table"):
        checker.check(low, Q0)
    # turn the base by 180 degrees: the flange goes behind the robot (x < 0.15)
    behind = Q0.copy()
    behind[0] = 2.6
    with pytest.raises(UnsafeTargetError, match="workspace box"):
        checker.check(behind, Q0)


def test_custom_fk_callable_is_used():
    calls = []

    def fk(q):
        calls.append(np.array(q))
        pose = np.eye(4)
        pose[:3, 3] = [5.0, 0.0, 0.5]  # far outside the box
        return pose

    with pytest.raises(UnsafeTargetError, match="workspace box"):
        SafetyChecker(SafetyLimits(), fk=fk).check(Q0, Q0)
    assert len(calls) == 1


def test_clip_mode_clamps_limits_and_scales_the_step_but_rejects_workspace():
    checker = SafetyChecker(SafetyLimits(mode="clip", max_step=0.1, max_deviation=1.0))
    step = np.array([0.3, -0.15, 0, 0, 0, 0, 0])
    out = checker.check(Q0 + step, Q0)
    np.testing.assert_allclose(out - Q0, step / 3.0)  # direction kept, largest joint step = 0.1
    assert checker.n_clipped == 1
    over = Q0.copy()
    over[6] = Q_MAX[6] + 0.5  # the wrist rotation does not move the flange
    start = Q0.copy()
    start[6] = Q_MAX[6] - 0.08
    out = checker.check(over, start)
    assert out[6] == pytest.approx(Q_MAX[6] - 0.05)
    behind = Q0.copy()
    behind[0] = 2.6
    with pytest.raises(UnsafeTargetError, match="workspace"):
        SafetyChecker(SafetyLimits(mode="clip", max_step=10.0, max_deviation=10.0)).check(behind, Q0)


def test_gripper_width_is_clamped():
    checker = SafetyChecker()
    assert checker.check_gripper(0.5) == pytest.approx(0.08)
    assert checker.check_gripper(-1.0) == 0.0
    with pytest.raises(UnsafeTargetError):
        checker.check_gripper(float("nan"))


def test_limits_from_the_franka_config_and_bad_configs():
    cfg = OmegaConf.load(CONFIG_DIR / "arm" / "franka.yaml")
    lim = SafetyLimits.from_config(cfg.safety)
    assert lim.mode == "reject" and lim.max_step.shape == (7,)
    np.testing.assert_array_equal(lim.q_min, Q_MIN)
    with pytest.raises(ValueError, match="unknown keys"):
        SafetyLimits.from_config({"max_stepp": 0.1})
    with pytest.raises(ValueError, match="workspace_min"):
        SafetyLimits(workspace_min=[1, 0, 0], workspace_max=[0, 1, 1])
    with pytest.raises(ValueError, match="mode"):
        SafetyLimits(mode="warn")


def test_calibrated_task_targets_pass_the_default_workspace():
    """The shipped calibration files must be reachable under the default franka.yaml safety limits."""
    from tasks.targets import CALIBRATION_DIR, TargetSet

    cfg = OmegaConf.load(CONFIG_DIR / "arm" / "franka.yaml")
    checker = SafetyChecker(SafetyLimits.from_config(cfg.safety))
    files = sorted(CALIBRATION_DIR.glob("*.yaml"))
    assert files
    for path in files:
        for name, target in TargetSet.load(path).targets.items():
            assert checker.workspace_violations(target.q) == [], f"{path.name}:{name}"
