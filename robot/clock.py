"""Clocks: one time source for the control loop, the arm and the camera.

`RealClock` is the wall clock (monotonic) and really sleeps; `SimClock` is simulated time that only
moves when someone sleeps on it, so a simulated rig runs as fast as the CPU allows and is exactly
reproducible. Simulated parts (`SimArm`, `SimCamera`) read `clock.now()` to know how far to
integrate, so the same loop code drives both.
"""

from __future__ import annotations

import time
from typing import Protocol, runtime_checkable


@runtime_checkable
class Clock(Protocol):
    """A time source in seconds."""

    def now(self) -> float: ...

    def sleep_until(self, t: float) -> None:
        """Return once `now() >= t` (immediately if `t` already passed)."""
        ...


class RealClock:
    """Wall-clock time (`time.monotonic`), optionally relative to a start time."""

    def __init__(self, t0: float | None = None) -> None:
        self.t0 = time.monotonic() if t0 is None else float(t0)

    def now(self) -> float:
        return time.monotonic() - self.t0

    def sleep_until(self, t: float) -> None:
        # time.sleep may wake a little early on some platforms: loop until the deadline really passed
        while True:
            remaining = t - self.now()
            if remaining <= 0:
                return
            time.sleep(remaining)


class SimClock:
    """Simulated time: starts at `t0` and advances only through `sleep_until` / `advance`."""

    def __init__(self, t0: float = 0.0) -> None:
        self._t = float(t0)

    def now(self) -> float:
        return self._t

    def sleep_until(self, t: float) -> None:
        if t > self._t:
            self._t = float(t)

    def advance(self, dt: float) -> None:
        if dt < 0:
            raise ValueError(f"SimClock.advance: dt must be >= 0, got {dt}")
        self._t += float(dt)
