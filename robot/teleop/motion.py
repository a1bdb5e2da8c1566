"""Motion helpers for teleoperation: min-jerk joint trajectories and a damped-least-squares EE jog.

Snapping to a calibrated target uses a minimum-jerk profile (Flash & Hogan 1985):
    s(tau) = 10 tau^3 - 15 tau^4 + 6 tau^5,  tau = t / T in [0, 1],
whose peak velocity is 1.875 times the mean, so T is chosen from the largest joint distance and a
peak joint speed. The end-effector jog moves the flange by a small Cartesian step with the
orientation held, using one damped-least-squares step on a numerical Jacobian of the forward
kinematics:  dq = J^T (J J^T + lambda^2 I)^-1 dx  (iterated a few times on the remaining error).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

MIN_JERK_PEAK = 1.875  # max ds/dtau of the min-jerk profile


def min_jerk(tau: np.ndarray | float) -> np.ndarray | float:
    """Minimum-jerk position profile s(tau) for tau in [0, 1] (clipped outside)."""
    t = np.clip(tau, 0.0, 1.0)
    return t**3 * (10.0 - 15.0 * t + 6.0 * t**2)


class MinJerkTrajectory:
    """A joint-space min-jerk move from q0 to q1; `sample(t)` for t seconds since its start."""

    def __init__(self, q0: np.ndarray, q1: np.ndarray, peak_speed: float, min_duration: float = 0.5) -> None:
        self.q0 = np.asarray(q0, dtype=np.float64)
        self.q1 = np.asarray(q1, dtype=np.float64)
        if peak_speed <= 0:
            raise ValueError(f"min-jerk trajectory: peak_speed must be positive, got {peak_speed}")
        distance = float(np.max(np.abs(self.q1 - self.q0)))
        # peak speed = 1.875 * distance / T  ->  T = 1.875 * distance / peak_speed
        self.duration = max(min_duration, MIN_JERK_PEAK * distance / peak_speed)

    def sample(self, t: float) -> np.ndarray:
        return self.q0 + (self.q1 - self.q0) * min_jerk(t / self.duration)

    def done(self, t: float) -> bool:
        return t >= self.duration


def _rotation_error(r_new: np.ndarray, r_old: np.ndarray) -> np.ndarray:
    """Small rotation vector (3,) taking r_old to r_new (base frame)."""
    d = r_new @ r_old.T
    return 0.5 * np.array([d[2, 1] - d[1, 2], d[0, 2] - d[2, 0], d[1, 0] - d[0, 1]])


def numerical_jacobian(fk: Callable[[np.ndarray], np.ndarray], q: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Geometric Jacobian (6, 7) of the pose fk(q) (4x4) by central differences: rows = (v, omega)."""
    q = np.asarray(q, dtype=np.float64)
    jac = np.zeros((6, q.size))
    for i in range(q.size):
        dq = np.zeros_like(q)
        dq[i] = eps
        plus, minus = np.asarray(fk(q + dq)), np.asarray(fk(q - dq))
        jac[:3, i] = (plus[:3, 3] - minus[:3, 3]) / (2 * eps)
        jac[3:, i] = _rotation_error(plus[:3, :3], minus[:3, :3]) / (2 * eps)
    return jac


def _axis_angle_matrix(rotvec: np.ndarray) -> np.ndarray:
    """Rotation matrix of a rotation vector (Rodrigues)."""
    angle = float(np.linalg.norm(rotvec))
    if angle < 1e-12:
        return np.eye(3)
    k = rotvec / angle
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(angle) * kx + (1 - np.cos(angle)) * kx @ kx


def dls_ik_step(
    fk: Callable[[np.ndarray], np.ndarray],
    q: np.ndarray,
    dx: np.ndarray,
    damping: float = 0.05,
    q_min: np.ndarray | None = None,
    q_max: np.ndarray | None = None,
    iterations: int = 3,
) -> np.ndarray:
    """Joint positions that move the flange by a small displacement, by damped least squares.

    dx: (3,) translation (orientation held) or (6,) translation + rotation vector, base frame.
    Each iteration solves dq = J^T (J J^T + damping^2 I)^-1 e for the remaining pose error e; a few
    iterations remove the shortfall the damping causes, while near singularities the damping still
    shortens the step instead of blowing it up."""
    q = np.asarray(q, dtype=np.float64)
    dx = np.asarray(dx, dtype=np.float64)
    if dx.shape == (3,):
        dx = np.concatenate([dx, np.zeros(3)])
    if dx.shape != (6,):
        raise ValueError(f"dls_ik_step: dx must be (3,) or (6,), got {dx.shape}")
    pose0 = np.asarray(fk(q))
    p_goal = pose0[:3, 3] + dx[:3]
    r_goal = _axis_angle_matrix(dx[3:]) @ pose0[:3, :3]
    q_new = q.copy()
    for _ in range(max(1, iterations)):
        pose = np.asarray(fk(q_new))
        err = np.concatenate([p_goal - pose[:3, 3], _rotation_error(r_goal, pose[:3, :3])])
        jac = numerical_jacobian(fk, q_new)
        jjt = jac @ jac.T + damping**2 * np.eye(6)
        q_new = q_new + jac.T @ np.linalg.solve(jjt, err)
        if q_min is not None and q_max is not None:
            q_new = np.clip(q_new, q_min, q_max)
    return q_new
