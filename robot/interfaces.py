"""The small interfaces between the parts of the rig (docs/design.md section 3).

Data flows one way: stimulus -> display -> camera frame -> frame buffer -> policy -> action chunk
-> arm. Real and simulated parts implement the same protocol, so the control loop never knows
which one it has.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np


@dataclass(frozen=True)
class Frame:
    """One camera frame: RGB uint8 (H, W, 3) and its capture time in seconds (camera clock)."""

    image: np.ndarray
    timestamp: float
    index: int = 0  # running frame counter of the camera, to detect stalls and drops
    # when the frame became available to the reader, on the LOOP's clock (None: the camera cannot tell);
    # a frame-locked control loop starts its step, and measures its deadline, from here
    arrival: float | None = None


# What a camera's Frame.timestamp is measured on (its `time_base`):
#   "clock":    the clock the camera was given (the rig's session clock: the virtual ZED);
#   "unix":     Unix time, time.time() (the ZED SDK's image time, a webcam's wall clock);
#   "recorded": the times of a recording (a replayed episode store, an SVO or video file): no relation
#               to any clock of the session that plays it.
TIME_BASES = ("clock", "unix", "recorded")


@runtime_checkable
class Camera(Protocol):
    """Yields timestamped RGB frames; `time_base` (one of TIME_BASES) says what the timestamps are measured on."""

    time_base: str

    def read(self, timeout: float | None = None) -> Frame:
        """Block until a frame newer than the last one returned is available and return it."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class ArmState:
    """Joint state of a 7-DoF arm with a parallel gripper."""

    q: np.ndarray  # (7,) joint positions, rad
    dq: np.ndarray  # (7,) joint velocities, rad/s
    gripper_width: float  # metres
    timestamp: float  # seconds

    def as_vector(self) -> np.ndarray:
        """The policy's state: 7 joint positions + gripper width, float32 (8,)."""
        return np.concatenate([self.q, [self.gripper_width]]).astype(np.float32)


@runtime_checkable
class Arm(Protocol):
    """Takes absolute joint targets and reports its state."""

    def state(self) -> ArmState: ...

    def command(self, q_target: np.ndarray, gripper_width: float | None = None) -> None:
        """Send one absolute joint target (7,) (and optionally a gripper width)."""
        ...

    def stop(self) -> None:
        """Hold the current position (safe stop)."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class Policy(Protocol):
    """Maps an observation window to actions. `select_action` is called once per control step."""

    def reset(self) -> None: ...

    def select_action(self, observation: dict[str, Any]) -> np.ndarray:
        """observation: {"image": (H, W, 3) uint8, "state": (8,) float32, "instruction": str}.
        Returns the next absolute target (8,) = 7 joints + gripper width."""
        ...
