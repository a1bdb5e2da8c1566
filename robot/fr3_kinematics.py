"""Franka Research 3 kinematics and limits.

Forward kinematics from Franka's published modified (Craig) Denavit-Hartenberg table
(https://frankarobotics.github.io/docs/robot_specifications.html, identical for Panda and FR3):
frame i is reached from frame i-1 by  RotX(alpha_{i-1}) TransX(a_{i-1}) RotZ(theta_i) TransZ(d_i),
and the flange sits d = 0.107 m along the z axis of frame 7. Limits are the FR3 datasheet values
(the same numbers libfranka uses). The "end effector" everywhere in moss-vla is the flange: the
calibration files store flange positions, so a different tool does not change scoring.
"""

from __future__ import annotations

import numpy as np

# (a_{i-1} [m], d_i [m], alpha_{i-1} [rad]) per joint i = 1..7, then the flange (theta = 0)
DH_TABLE = np.array(
    [
        [0.0, 0.333, 0.0],
        [0.0, 0.0, -np.pi / 2],
        [0.0, 0.316, np.pi / 2],
        [0.0825, 0.0, np.pi / 2],
        [-0.0825, 0.384, -np.pi / 2],
        [0.0, 0.0, np.pi / 2],
        [0.088, 0.0, np.pi / 2],
    ]
)
FLANGE_D = 0.107

# FR3 datasheet joint limits
Q_MIN = np.array([-2.7437, -1.7837, -2.9007, -3.0421, -2.8065, 0.5445, -3.0159])
Q_MAX = np.array([2.7437, 1.7837, 2.9007, -0.1518, 2.8065, 4.5169, 3.0159])
DQ_MAX = np.array([2.62, 2.62, 2.62, 2.62, 5.26, 4.18, 5.26])  # rad/s
DDQ_MAX = np.full(7, 10.0)  # rad/s^2
GRIPPER_MAX_WIDTH = 0.08  # m (Franka Hand / DROID Robotiq 2F-85 opens to 0.085)

# Franka's standard "ready" configuration
Q_READY = np.array([0.0, -np.pi / 4, 0.0, -3 * np.pi / 4, 0.0, np.pi / 2, np.pi / 4])


def _dh_transforms(q: np.ndarray) -> list[np.ndarray]:
    """Per-link modified-DH transforms for q (..., 7): a list of 8 (..., 4, 4) arrays (7 joints + flange)."""
    q = np.asarray(q, dtype=np.float64)
    batch = q.shape[:-1]
    out = []
    params = list(DH_TABLE) + [np.array([0.0, FLANGE_D, 0.0])]
    thetas = [q[..., i] for i in range(7)] + [np.zeros(batch)]
    for (a, d, alpha), theta in zip(params, thetas):
        ct, st = np.cos(theta), np.sin(theta)
        ca, sa = np.cos(alpha), np.sin(alpha)
        t = np.zeros(batch + (4, 4))
        # RotX(alpha) TransX(a) RotZ(theta) TransZ(d), multiplied out
        t[..., 0, 0] = ct
        t[..., 0, 1] = -st
        t[..., 0, 3] = a
        t[..., 1, 0] = st * ca
        t[..., 1, 1] = ct * ca
        t[..., 1, 2] = -sa
        t[..., 1, 3] = -sa * d
        t[..., 2, 0] = st * sa
        t[..., 2, 1] = ct * sa
        t[..., 2, 2] = ca
        t[..., 2, 3] = ca * d
        t[..., 3, 3] = 1.0
        out.append(t)
    return out


def link_frames(q: np.ndarray) -> np.ndarray:
    """Base-frame poses of frames 1..7 and the flange for q (..., 7): (..., 8, 4, 4)."""
    frames = []
    pose = None
    for t in _dh_transforms(q):
        pose = t if pose is None else pose @ t
        frames.append(pose)
    return np.stack(frames, axis=-3)


def forward_kinematics(q: np.ndarray) -> np.ndarray:
    """Flange pose in the base frame: q (7,) -> (4, 4), or a batch (N, 7) -> (N, 4, 4)."""
    q = np.asarray(q, dtype=np.float64)
    if q.shape[-1] != 7:
        raise ValueError(f"forward_kinematics: expected joint positions (..., 7), got shape {q.shape}")
    pose = None
    for t in _dh_transforms(q):
        pose = t if pose is None else pose @ t
    return pose


def ee_position(q: np.ndarray) -> np.ndarray:
    """Flange position (3,) for q (7,), or (N, 3) for (N, 7)."""
    return forward_kinematics(q)[..., :3, 3]


def position_jacobian(q: np.ndarray) -> np.ndarray:
    """Geometric Jacobian of the flange position (3, 7): column i = z_i x (p_ee - p_i) (revolute joints)."""
    frames = link_frames(q)
    p_ee = frames[7, :3, 3]
    jac = np.empty((3, 7))
    for i in range(7):
        z, p = frames[i, :3, 2], frames[i, :3, 3]
        jac[:, i] = np.cross(z, p_ee - p)
    return jac


def within_limits(q: np.ndarray, margin: float = 0.0) -> bool:
    """True if every joint lies inside [Q_MIN + margin, Q_MAX - margin]."""
    q = np.asarray(q)
    return bool(np.all(q >= Q_MIN + margin) and np.all(q <= Q_MAX - margin))


def inverse_kinematics_position(
    target: np.ndarray,
    q_seed: np.ndarray = Q_READY,
    posture_weight: float = 0.05,
    tol: float = 1e-4,
    max_iter: int = 300,
    margin: float = 0.05,
) -> np.ndarray:
    """Joint configuration whose flange reaches `target` (3,), staying close to `q_seed`.

    Damped least squares on the position with a null-space pull towards the seed posture, so a
    seed with the hand pointing down yields a configuration pointing down. Used to create
    calibration files for the simulated rig; real rigs record their targets with the arm.
    """
    target = np.asarray(target, dtype=np.float64)
    q_seed = np.asarray(q_seed, dtype=np.float64)
    q = q_seed.copy()
    lam = 1e-3
    for _ in range(max_iter):
        err = target - ee_position(q)
        if np.linalg.norm(err) < tol:
            break
        jac = position_jacobian(q)
        jj = jac @ jac.T + lam * np.eye(3)
        j_pinv = jac.T @ np.linalg.inv(jj)
        null = np.eye(7) - j_pinv @ jac
        dq = j_pinv @ err + posture_weight * null @ (q_seed - q)
        q = np.clip(q + dq, Q_MIN + margin, Q_MAX - margin)
    err = float(np.linalg.norm(target - ee_position(q)))
    if err > 1e-3:
        raise ValueError(f"inverse_kinematics_position: target {target.tolist()} not reached (error {err:.4f} m)")
    return q
