"""FR3 forward kinematics (robot/fr3_kinematics.py) against published poses and an independent
product-of-exponentials model.

Expected values, not taken from the code under test:
- q = 0: flange at (0.088, 0, 0.926) = (a7, 0, d1 + d3 + d5 - d_flange), flange z axis pointing down
  (Franka's documented zero pose; the numbers follow from the DH table by hand).
- "ready" q = [0, -pi/4, 0, -3pi/4, 0, pi/2, pi/4]: flange at (0.3069, 0, 0.5903) (franka_ros/franky
  report O_T_EE = (0.307, 0, 0.487) with the Franka Hand, whose TCP is 0.1034 m beyond the flange).
- Random q: a product-of-exponentials model whose screw axes are the joint axes and points of the
  zero pose, written down from the robot's geometry (joint axes z, y, z, -y, z, -y, -z through the
  points below), composed as exp([S1] q1) ... exp([S7] q7) M instead of link-by-link DH transforms.
"""

import numpy as np
import pytest

from robot.fr3_kinematics import (
    DQ_MAX,
    Q_MAX,
    Q_MIN,
    Q_READY,
    ee_position,
    forward_kinematics,
    inverse_kinematics_position,
    link_frames,
    position_jacobian,
    within_limits,
)

# zero pose geometry of the FR3/Panda (metres): joint axis direction and a point on it
AXES = np.array([[0, 0, 1], [0, 1, 0], [0, 0, 1], [0, -1, 0], [0, 0, 1], [0, -1, 0], [0, 0, -1]], float)
POINTS = np.array([[0, 0, 0.333], [0, 0, 0.333], [0, 0, 0.649], [0.0825, 0, 0.649], [0, 0, 1.033],
                   [0, 0, 1.033], [0.088, 0, 1.033]])
M_ZERO = np.array([[1, 0, 0, 0.088], [0, -1, 0, 0], [0, 0, -1, 0.926], [0, 0, 0, 1]], float)


def _screw_exp(w: np.ndarray, p: np.ndarray, theta: float) -> np.ndarray:
    """exp of a revolute twist with unit axis w through point p (Rodrigues)."""
    k = np.array([[0, -w[2], w[1]], [w[2], 0, -w[0]], [-w[1], w[0], 0]])
    rot = np.eye(3) + np.sin(theta) * k + (1 - np.cos(theta)) * k @ k
    t = np.eye(4)
    t[:3, :3] = rot
    t[:3, 3] = (np.eye(3) - rot) @ p  # rotation about an axis through p
    return t


def poe_fk(q: np.ndarray) -> np.ndarray:
    t = np.eye(4)
    for w, p, th in zip(AXES, POINTS, q):
        t = t @ _screw_exp(w, p, th)
    return t @ M_ZERO


def test_zero_pose_matches_the_published_geometry():
    pose = forward_kinematics(np.zeros(7))
    np.testing.assert_allclose(pose[:3, 3], [0.088, 0.0, 0.926], atol=1e-9)
    np.testing.assert_allclose(pose[:3, :3], np.diag([1.0, -1.0, -1.0]), atol=1e-9)


def test_ready_pose_flange_position():
    np.testing.assert_allclose(ee_position(Q_READY), [0.3069, 0.0, 0.5903], atol=5e-4)
    # the hand's TCP (0.1034 m along the flange z axis, which points down here) at franky's (0.307, 0, 0.487)
    pose = forward_kinematics(Q_READY)
    np.testing.assert_allclose(pose[:3, 3] + 0.1034 * pose[:3, 2], [0.307, 0.0, 0.487], atol=1e-3)


def test_dh_chain_equals_product_of_exponentials_on_random_configurations():
    rng = np.random.default_rng(0)
    qs = rng.uniform(Q_MIN, Q_MAX, size=(50, 7))
    batch = forward_kinematics(qs)
    assert batch.shape == (50, 4, 4)
    for q, pose in zip(qs, batch):
        np.testing.assert_allclose(pose, poe_fk(q), atol=1e-9)


def test_link_frames_zero_pose_axes():
    frames = link_frames(np.zeros(7))
    np.testing.assert_allclose(frames[:7, :3, 2], AXES, atol=1e-9)
    np.testing.assert_allclose(frames[:7, :3, 3], POINTS, atol=1e-9)


def test_position_jacobian_matches_finite_differences():
    q = Q_READY + np.array([0.1, 0.2, -0.1, 0.3, 0.2, -0.2, 0.1])
    jac = position_jacobian(q)
    eps = 1e-6
    num = np.stack([(ee_position(q + eps * e) - ee_position(q - eps * e)) / (2 * eps) for e in np.eye(7)], axis=1)
    np.testing.assert_allclose(jac, num, atol=1e-6)


def test_inverse_kinematics_reaches_a_table_point_within_limits():
    target = np.array([0.5, 0.2, 0.25])
    q = inverse_kinematics_position(target, Q_READY)
    np.testing.assert_allclose(ee_position(q), target, atol=1e-3)
    assert within_limits(q)
    with pytest.raises(ValueError, match="not reached"):
        inverse_kinematics_position(np.array([2.0, 0.0, 0.5]), Q_READY)


def test_limits_are_the_fr3_datasheet_values():
    assert Q_MIN.shape == Q_MAX.shape == DQ_MAX.shape == (7,)
    np.testing.assert_allclose(Q_MAX, [2.7437, 1.7837, 2.9007, -0.1518, 2.8065, 4.5169, 3.0159])
    np.testing.assert_allclose(Q_MIN[3], -3.0421)
    np.testing.assert_allclose(Q_MIN[5], 0.5445)
    np.testing.assert_allclose(DQ_MAX, [2.62, 2.62, 2.62, 2.62, 5.26, 4.18, 5.26])
    assert within_limits(Q_READY) and not within_limits(np.zeros(7))  # joint 4 = 0 is beyond -0.1518
