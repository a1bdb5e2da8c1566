"""Stop conditions for the control loop (robot/control_loop.py): callables `StepInfo -> reason | None`.

The loop checks them after every step; the first one that returns a reason (or a `(reason, message)` pair:
the message says what was measured) ends the loop with it (the session, rig/session.py, then stops the
arm unless the reason is the episode's normal end).
They are what makes a real-time session end safely and say why:
  - `CameraStall`: the camera keeps answering but no NEW frame arrived for `timeout` seconds, or the
    frame it gives is older than `timeout` (a frozen driver, a backlog). A camera that stops answering
    at all is caught by the loop's own `camera_timeout` (reason "camera").
  - `MissedDeadlineStreak`: `max_streak` steps in a row missed their deadline (the command went out
    after the next tick): the rig is overloaded and what the policy sees no longer matches time.
  - `StopFlag`: set from anywhere (a key, Ctrl-C through `sigint_sets`, a teleop "quit" event, the
    display window closing); its reason is the one given to `set`.
  - `Until`: a predicate on the step (e.g. "the display shows the episode is over").
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator

from moss_vla.command import interrupt, raise_interrupt
from robot.control_loop import StepInfo


class CameraStall:
    """Reason "camera_stall" when no new frame arrived for `timeout` s of loop time, or when the frame's
    age (`frame_age(info)`, seconds; None = not known) exceeds `timeout`."""

    def __init__(self, timeout: float, now: Callable[[], float],
                 frame_age: Callable[[StepInfo], float | None] | None = None) -> None:
        if timeout <= 0:
            raise ValueError(f"CameraStall: timeout must be > 0 s, got {timeout}")
        self.timeout = float(timeout)
        self.now = now
        self.frame_age = frame_age
        self._last_index: int | None = None
        self._last_new = 0.0

    def reset(self) -> None:
        self._last_index = None

    def __call__(self, info: StepInfo) -> tuple[str, str] | None:
        now = self.now()
        if self._last_index is None or info.frame.index != self._last_index:
            self._last_index, self._last_new = info.frame.index, now
        elif now - self._last_new > self.timeout:
            return "camera_stall", (f"no new camera frame for {now - self._last_new:.2f} s (stall_timeout "
                                    f"{self.timeout:g} s; last frame index {info.frame.index})")
        if self.frame_age is not None:
            age = self.frame_age(info)
            if age is not None and age > self.timeout:
                return "camera_stall", (f"camera frame {info.frame.index} is {age:.3f} s old when the step starts "
                                        f"(stall_timeout {self.timeout:g} s)")
        return None


class MissedDeadlineStreak:
    """Reason "missed_deadlines" after `max_streak` consecutive steps with latency > `period`."""

    def __init__(self, max_streak: int, period: float) -> None:
        if max_streak < 1:
            raise ValueError(f"MissedDeadlineStreak: max_streak must be >= 1, got {max_streak}")
        self.max_streak, self.period = int(max_streak), float(period)
        self.streak = 0

    def reset(self) -> None:
        self.streak = 0

    def __call__(self, info: StepInfo) -> str | None:
        self.streak = self.streak + 1 if info.latency > self.period else 0
        return "missed_deadlines" if self.streak >= self.max_streak else None


class StopFlag:
    """A thread-safe stop request with a reason; as a stop condition it returns that reason once set."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.reason: str | None = None
        self.detail = ""

    def set(self, reason: str, detail: str = "") -> None:
        if not self._event.is_set():
            self.reason, self.detail = reason, detail
            self._event.set()

    @property
    def is_set(self) -> bool:
        return self._event.is_set()

    def __call__(self, info: StepInfo | None = None) -> str | None:
        return self.reason if self._event.is_set() else None

    @contextlib.contextmanager
    def sigint_sets(self, reason: str = "interrupted") -> Iterator[StopFlag]:
        """While active, the first Ctrl-C (SIGINT) or SIGTERM sets the flag instead of raising
        KeyboardInterrupt at an arbitrary point (e.g. inside a commit): the session stops at the end of the
        current step and closes the store deliberately. A signal after the flag is set (by a first Ctrl-C or
        any other stop: the session is ending) raises KeyboardInterrupt as usual (the command's front door,
        moss_vla/command.py, ends it with exit 130 and no traceback)."""
        if threading.current_thread() is not threading.main_thread():
            yield self  # signal handlers can only be installed from the main thread
            return
        signals = (signal.SIGINT, signal.SIGTERM)
        previous = {s: signal.getsignal(s) for s in signals}

        def handler(signum, frame):
            if self.is_set:
                for s in signals:  # the front door's handler: later signals are deferred inside a commit too
                    signal.signal(s, raise_interrupt)
                interrupt(signal.Signals(signum).name)  # raised now, or when a commit in progress ends
                return
            self.set(reason, "Ctrl-C (SIGINT)" if signum == signal.SIGINT else "SIGTERM")

        for s in signals:
            signal.signal(s, handler)
        try:
            yield self
        finally:
            for s in signals:
                signal.signal(s, previous[s])


class Until:
    """Reason `reason` once `predicate(info)` is true."""

    def __init__(self, predicate: Callable[[StepInfo], bool], reason: str) -> None:
        self.predicate, self.reason = predicate, reason

    def __call__(self, info: StepInfo) -> str | None:
        return self.reason if self.predicate(info) else None
