"""Any webcam (or a USB ZED seen as a UVC webcam) through OpenCV, decimated to 10 Hz.

A ZED without its SDK enumerates as a webcam that delivers both views side by side (2560x720 for
HD720); we keep the left half so that the image matches what ZedCamera gives. A video file path
works as a source too (timestamps then come from the stream), which is how the real OpenCV path
is tested without a device.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import cv2
import numpy as np

from robot.cameras.grabber import CameraError, EndOfStream, GrabberCamera
from robot.clock import Clock

log = logging.getLogger(__name__)

_BACKENDS = {"any": cv2.CAP_ANY, "v4l2": cv2.CAP_V4L2, "ffmpeg": cv2.CAP_FFMPEG, "dshow": cv2.CAP_DSHOW,
             "msmf": cv2.CAP_MSMF, "avfoundation": cv2.CAP_AVFOUNDATION}


def take_left_half(image: np.ndarray, stereo: str) -> np.ndarray:
    """The left view of a side-by-side stereo frame (`stereo`: "auto" | "left" | "none").

    "auto" treats frames at least 2.5 times wider than high as side by side (ZED: 2560x720,
    1344x376, 3840x1080); normal webcams are 4:3 or 16:9."""
    if stereo not in ("auto", "left", "none"):
        raise ValueError(f"UVC camera: camera.stereo must be auto, left or none, got {stereo!r}")
    h, w = image.shape[:2]
    if stereo == "left" or (stereo == "auto" and w >= 2.5 * h):
        return image[:, : w // 2]
    return image


class UvcCamera(GrabberCamera):
    """OpenCV capture of `device` (index like 0, a /dev/video path, or a video file)."""

    name = "uvc"

    def __init__(
        self,
        device: int | str = 0,
        width: int | None = 2560,
        height: int | None = 720,
        grab_fps: float = 30.0,
        fps: float = 10.0,
        stereo: str = "auto",
        backend: str = "any",
        timestamps: str = "auto",
        background: bool | None = None,
        grab_timeout: float = 2.0,
        clock: Clock | None = None,
    ) -> None:
        take_left_half(np.zeros((1, 1, 3), np.uint8), stereo)  # validate early
        if backend not in _BACKENDS:
            raise CameraError(f"UVC camera: unknown camera.backend {backend!r}; one of {sorted(_BACKENDS)}")
        if isinstance(device, str) and device.isdigit():
            device = int(device)
        self.device = device
        self.is_file = isinstance(device, str) and Path(device).is_file()
        if timestamps == "auto":
            timestamps = "stream" if self.is_file else "wall"
        if timestamps not in ("stream", "wall"):
            raise CameraError(f"UVC camera: camera.timestamps must be auto, stream or wall, got {timestamps!r}")
        self.stereo = stereo
        self.timestamps = timestamps
        # stream positions count from when the stream was opened (a file's presentation times): not Unix time
        self.time_base = "unix" if timestamps == "wall" else "recorded"
        cap = cv2.VideoCapture(device, _BACKENDS[backend])
        if not cap.isOpened():
            cap.release()
            raise CameraError(self._not_found_message(device))
        if not self.is_file:
            # request the mode; drivers silently pick the nearest one, so we read back what we got
            if width and height:
                cap.set(cv2.CAP_PROP_FRAME_WIDTH, width)
                cap.set(cv2.CAP_PROP_FRAME_HEIGHT, height)
            cap.set(cv2.CAP_PROP_FPS, grab_fps)
            cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # keep the driver queue short: we want fresh frames
        actual_fps = cap.get(cv2.CAP_PROP_FPS)
        if actual_fps and actual_fps > 0 and abs(actual_fps - grab_fps) > 0.5:
            log.warning("UVC camera %s: runs at %.1f FPS, not the configured grab_fps=%s", device, actual_fps,
                        grab_fps)
            if self.is_file:
                grab_fps = actual_fps
        self.size = (int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)), int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)))
        self._cap = cap
        self._t0 = time.time()
        self._last_ok = time.monotonic()
        # a file is read as fast as possible; a background thread would skip most of it
        background = (not self.is_file) if background is None else background
        super().__init__(fps=fps, grab_fps=max(grab_fps, fps), background=background, grab_timeout=grab_timeout,
                         clock=clock)
        self._start()

    @staticmethod
    def _not_found_message(device: int | str) -> str:
        if isinstance(device, int):
            path = f"/dev/video{device}"
            present = sorted(p for p in os.listdir("/dev") if p.startswith("video")) if os.path.isdir("/dev") else []
            return (
                f"UVC camera: cannot open video device index {device} ({path}). Video devices present: "
                f"{present or 'none'}. Check that the camera is plugged in (`v4l2-ctl --list-devices`), that "
                f"you may read it (member of the `video` group) and that no other program uses it; set "
                f"camera.device to the right index, or run without a camera with camera=sim"
            )
        return (
            f"UVC camera: cannot open {device!r} (not an openable device or video file); set camera.device "
            f"to a device index, a /dev/video path or a video file, or use camera=sim"
        )

    def _grab(self) -> tuple[np.ndarray, float] | None:
        ok, bgr = self._cap.read()
        if not ok or bgr is None:
            if self.is_file:
                raise EndOfStream(f"UVC camera: end of video file {self.device}")
            if time.monotonic() - self._last_ok > self.grab_timeout:
                raise CameraError(
                    f"UVC camera: device {self.device} delivered no frame for {self.grab_timeout:.1f} s; "
                    f"is it still connected?"
                )
            time.sleep(0.005)
            return None
        self._last_ok = time.monotonic()
        if self.timestamps == "stream":
            # position of the frame just decoded; for files this is the presentation time
            timestamp = self._t0 + self._cap.get(cv2.CAP_PROP_POS_MSEC) * 1e-3
        else:
            timestamp = time.time()
        rgb = cv2.cvtColor(take_left_half(bgr, self.stereo), cv2.COLOR_BGR2RGB)
        return rgb, timestamp

    def _release(self) -> None:
        self._cap.release()
