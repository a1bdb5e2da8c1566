"""Mock arm for replaying recorded episodes (`moss-replay`): implements `Arm` from an episode's arrays.

It moves in lockstep with a `ReplayCamera` playing the same episode: the control loop reads a frame,
then the arm state, then commands, so `state()` reports the recorded state of the current frame and
`command()` moves on to the next one. Every command passes the same `SafetyChecker` the real arm runs
(against the recorded measured joints and the previous command). `strict=True` raises like the real arm
(the loop stops with reason "safety": checks the loop's safety path); `strict=False` counts the rejected
targets and carries on (a policy run open loop is judged, not stopped).
"""

from __future__ import annotations

import numpy as np

from robot.interfaces import ArmState
from robot.safety import SafetyChecker, UnsafeTargetError


class ReplayArm:
    """Recorded arm states (N, 8) at `timestamps` (N,); logs every command (see module docstring)."""

    def __init__(self, states: np.ndarray, timestamps: np.ndarray, safety: SafetyChecker | None = None,
                 strict: bool = True, period: float = 0.1) -> None:
        self.states = np.asarray(states, dtype=np.float64)
        self.timestamps = np.asarray(timestamps, dtype=np.float64)
        if self.states.ndim != 2 or self.states.shape[1] != 8 or len(self.states) != len(self.timestamps):
            raise ValueError(f"ReplayArm: need states (N, 8) and timestamps (N,), got {self.states.shape} and "
                             f"{self.timestamps.shape}")
        if len(self.states) == 0:
            raise ValueError("ReplayArm: the episode has no frames")
        self.safety, self.strict, self.period = safety, bool(strict), float(period)
        self.cursor = 0
        self.commands: list[np.ndarray] = []  # (8,) per command: 7 joints + gripper (nan if none)
        self.rejected: list[tuple[int, list[str]]] = []  # (frame, violations) in non-strict mode
        self.n_stops = 0
        self._last_target: np.ndarray | None = None

    def _row(self) -> int:
        return min(self.cursor, len(self.states) - 1)

    def state(self) -> ArmState:
        i = self._row()
        s = self.states[i]
        # velocity by finite differences of the recorded joints (the store keeps positions only)
        j = max(i - 1, 0)
        dt = self.timestamps[i] - self.timestamps[j]
        dq = (s[:7] - self.states[j, :7]) / dt if dt > 0 else np.zeros(7)
        return ArmState(q=s[:7].copy(), dq=dq, gripper_width=float(s[7]), timestamp=float(self.timestamps[i]))

    def command(self, q_target: np.ndarray, gripper_width: float | None = None) -> None:
        i = self._row()
        q = np.asarray(q_target, dtype=np.float64)
        if self.safety is not None:
            try:
                q = self.safety.check(q, self.states[i, :7], self._last_target)
                if gripper_width is not None:
                    gripper_width = self.safety.check_gripper(float(gripper_width))
            except UnsafeTargetError as e:
                if self.strict:
                    raise
                self.rejected.append((i, e.violations))
                self._last_target = None  # like the real arm after a refused target: the stream restarts
                self.cursor += 1
                return
        self._last_target = q
        self.commands.append(np.concatenate([q, [np.nan if gripper_width is None else gripper_width]]))
        self.cursor += 1

    def stop(self) -> None:
        self.n_stops += 1
        self._last_target = None

    def close(self) -> None:
        self.stop()
