"""Replay camera: the frames of recorded episodes, with their recorded timestamps.

Episode stores hold frames that are already cropped to the display and resized (224x224), so the
display crop for a replay camera is the identity (`DisplayCrop.full_frame` of that size). With
`realtime=True` frames are released with their recorded spacing (on `clock`, a RealClock by
default); otherwise as fast as they are read, which is what tests and offline evaluation want.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from robot.cameras.grabber import CameraError, EndOfStream
from robot.interfaces import Frame


class ReplayCamera:
    """Plays the `image`/`timestamp` arrays of episodes of an `EpisodeStore` as a Camera."""

    name = "replay"
    time_base = "recorded"  # the stored timestamps, on whatever clock the recording used

    def __init__(
        self,
        path: str | Path,
        episodes: Sequence[int] | None = None,
        realtime: bool = False,
        loop: bool = False,
        clock=None,
    ) -> None:
        from moss_vla.episodes import EpisodeStore  # the learning package is only needed for replay

        path = Path(path)
        if not path.exists():
            raise CameraError(f"replay camera: episode store {path} does not exist; set camera.path")
        self.store = EpisodeStore(path)
        n = self.store.n_episodes
        if n == 0:
            raise CameraError(f"replay camera: episode store {path} holds no committed episodes")
        self.episodes = list(range(n)) if episodes is None else [int(e) for e in episodes]
        bad = [e for e in self.episodes if not 0 <= e < n]
        if bad or not self.episodes:
            raise CameraError(f"replay camera: episodes {bad or self.episodes} not in the store's 0..{n - 1}")
        self.realtime = realtime
        self.loop = loop
        if realtime and clock is None:
            from robot.clock import RealClock

            clock = RealClock()
        self.clock = clock
        self.episode: int | None = None  # episode currently playing
        self._images: np.ndarray | None = None
        self._timestamps: np.ndarray | None = None
        self._pos = 0
        self._queue = list(self.episodes)
        self._index = 0
        self._offset: float | None = None  # clock time minus recorded time of the episode's first frame
        self._closed = False

    @property
    def image_size(self) -> tuple[int, int]:
        """(H, W) of the stored frames."""
        shape = self.store.meta["image_shape"]
        return int(shape[0]), int(shape[1])

    def _next_episode(self) -> None:
        if not self._queue:
            if not self.loop:
                raise EndOfStream(f"replay camera: played all {len(self.episodes)} episode(s)")
            self._queue = list(self.episodes)
        self.episode = self._queue.pop(0)
        data = self.store.episode(self.episode, keys=["image", "timestamp"])
        self._images = np.asarray(data["image"])
        self._timestamps = np.asarray(data["timestamp"], dtype=np.float64)
        self._pos = 0
        self._offset = None

    def read(self, timeout: float | None = None) -> Frame:
        """The next recorded frame (paced by its recorded timestamp if realtime)."""
        if self._closed:
            raise CameraError("replay camera: read() after close()")
        while self._images is None or self._pos >= len(self._images):
            self._next_episode()
        t_rec = float(self._timestamps[self._pos])
        arrival = None  # as fast as read: a frame has no arrival time of its own
        if self.realtime:
            if self._offset is None:
                self._offset = self.clock.now() - t_rec
            arrival = t_rec + self._offset
            self.clock.sleep_until(arrival)
        frame = Frame(image=self._images[self._pos], timestamp=t_rec, index=self._index, arrival=arrival)
        self._pos += 1
        self._index += 1
        return frame

    def close(self) -> None:
        self._closed = True
