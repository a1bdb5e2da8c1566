"""Frame-rate decimation by timestamp: a 30 FPS stream -> an even 10 Hz stream.

ZED HD720 offers 15/30/60 FPS only and 15 FPS cannot give an even 100 ms spacing, so cameras grab
at 30 FPS and keep every third frame (docs/design.md section 5.5). Deciding by timestamp rather than by a
frame counter keeps the spacing even when the camera drops a frame.
"""

from __future__ import annotations


class FrameDecimator:
    """Keeps frames so that kept timestamps are spaced by `1 / out_fps` on average.

    A frame is kept when it is at most half an input period before the next due time (previous
    due time + one output period). An on-time frame advances the due time by exactly one period,
    so jitter does not accumulate into drift; a late frame (after drops) restarts the schedule.
    """

    def __init__(self, out_fps: float, in_fps: float) -> None:
        if out_fps <= 0 or in_fps <= 0:
            raise ValueError(f"frame decimation: fps must be positive, got out_fps={out_fps}, in_fps={in_fps}")
        if out_fps > in_fps:
            raise ValueError(
                f"frame decimation: output rate {out_fps} FPS is higher than the grab rate {in_fps} FPS; "
                f"set the camera's grab_fps >= fps"
            )
        self.period = 1.0 / out_fps
        self.tolerance = 0.5 / in_fps
        self.keep_every = in_fps / out_fps  # 3.0 for 30 -> 10 FPS (documentation/diagnostics only)
        self._scheduled: float | None = None

    def reset(self) -> None:
        self._scheduled = None

    def keep(self, timestamp: float) -> bool:
        """True if the frame captured at `timestamp` (seconds) belongs to the output stream."""
        if self._scheduled is None:
            self._scheduled = timestamp
            return True
        due = self._scheduled + self.period
        if timestamp < due - self.tolerance:
            return False
        # on time: stay on the grid (no drift); late (frames were dropped): restart the grid here
        self._scheduled = due if timestamp - due <= self.tolerance else timestamp
        return True
