"""A camera driven by a grab loop: decimation to the output rate and a latest-frame slot.

`ZedCamera` and `UvcCamera` only say how to grab one raw frame (`_grab() -> (rgb, timestamp)`);
this base class turns that into the `Camera` interface (robot/interfaces.py). With
`background=True` (the default for live cameras) a thread grabs continuously, so the driver's
buffer never fills with stale frames while the policy thinks, and `read()` returns the newest kept
frame that the caller has not seen yet, stamped with its arrival on the loop's `clock` if one is
given. With `background=False`, `read()` grabs in the caller's thread until the decimator keeps a
frame (deterministic; used by tests and by offline sources).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Self

import numpy as np

from robot.cameras.decimation import FrameDecimator
from robot.clock import Clock
from robot.interfaces import Frame

log = logging.getLogger(__name__)


class CameraError(RuntimeError):
    """The camera could not be opened or stopped delivering frames (message says what to check)."""


class EndOfStream(CameraError):
    """A finite source (video file, replayed episode store) has no more frames."""


class GrabberCamera:
    """Base class: subclasses implement `_grab()` and `_release()` and call `_start()` when open."""

    name = "camera"

    def __init__(self, fps: float, grab_fps: float, background: bool = True, grab_timeout: float = 2.0,
                 clock: Clock | None = None) -> None:
        self.decimator = FrameDecimator(fps, grab_fps)
        self.clock = clock  # the loop's clock: frames are stamped with their arrival on it (Frame.arrival)
        self.background = background
        self.grab_timeout = grab_timeout  # seconds without a frame before read() gives up
        self.n_grabbed = 0  # raw frames from the device
        self.n_kept = 0  # frames after decimation
        self._last_returned = -1
        self._latest: Frame | None = None
        self._error: BaseException | None = None
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False

    # -- subclass hooks --------------------------------------------------------------------------
    def _grab(self) -> tuple[np.ndarray | Callable[[], np.ndarray], float] | None:
        """Grab one raw frame: (RGB uint8 (H, W, 3), timestamp in s), or None if none arrived yet. The image
        may be a function that produces it: it is then called only for frames the decimator keeps (at
        30 -> 10 FPS, two in three raw frames are never retrieved nor converted)."""
        raise NotImplementedError

    def _release(self) -> None:
        """Release the device."""

    # -- machinery -------------------------------------------------------------------------------
    def _start(self) -> None:
        if self.background:
            self._thread = threading.Thread(target=self._run, name=f"{self.name}-grab", daemon=True)
            self._thread.start()

    def _grab_kept(self) -> Frame | None:
        """Grab one raw frame and return it as a Frame if the decimator keeps it."""
        got = self._grab()
        if got is None:
            return None
        image, timestamp = got
        self.n_grabbed += 1
        if not self.decimator.keep(timestamp):
            return None
        if callable(image):
            image = image()
        arrival = self.clock.now() if self.clock is not None else None
        frame = Frame(image=image, timestamp=float(timestamp), index=self.n_kept, arrival=arrival)
        self.n_kept += 1
        return frame

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                frame = self._grab_kept()
                if frame is not None:
                    with self._cond:
                        self._latest = frame
                        self._cond.notify_all()
        except Exception as e:  # noqa: BLE001 - handed to the reader: a dead grab thread must not hang read()
            with self._cond:
                self._error = e
                self._cond.notify_all()

    def read(self, timeout: float | None = None) -> Frame:
        """Block until a kept frame newer than the last one returned is available and return it."""
        if self._closed:
            raise CameraError(f"{self.name}: read() after close()")
        timeout = self.grab_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        if not self.background:
            while True:
                frame = self._grab_kept()
                if frame is not None:
                    self._last_returned = frame.index
                    return frame
                if time.monotonic() > deadline:
                    raise CameraError(f"{self.name}: no frame within {timeout:.1f} s; is the camera still connected?")
        with self._cond:
            while True:
                if self._latest is not None and self._latest.index > self._last_returned:
                    self._last_returned = self._latest.index
                    return self._latest
                if self._error is not None:
                    if isinstance(self._error, CameraError):
                        raise self._error
                    raise CameraError(f"{self.name}: grab thread failed: {self._error!r}") from self._error
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise CameraError(f"{self.name}: no frame within {timeout:.1f} s; is the camera still connected?")
                self._cond.wait(remaining)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
            if self._thread.is_alive():
                log.warning("%s: grab thread did not stop within 2 s", self.name)
        self._release()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
