"""ZED camera through the ZED SDK (`pyzed.sl`): left view, HD720 grabbed at 30 FPS, kept at 10 Hz.

`pyzed.sl` ships with the ZED SDK installer (it is NOT the PyPI package `pyzed`, an unrelated
client), so it is imported only when a ZedCamera is built and a missing SDK gives an error that
says what to do. Timestamps are the SDK's image timestamps (TIME_REFERENCE.IMAGE, Unix time), so
frame spacing reflects capture, not when Python got around to reading.
"""

from __future__ import annotations

import importlib
import logging
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import cv2
import numpy as np

from robot.cameras.grabber import CameraError, EndOfStream, GrabberCamera
from robot.clock import Clock

log = logging.getLogger(__name__)

# HD720 offers 15/30/60 FPS only; 15 cannot be decimated to an even 10 Hz (docs/design.md section 5.5)
_VALID_FPS = {"HD2K": (15,), "HD1080": (15, 30), "HD1200": (15, 30, 60), "HD720": (15, 30, 60),
              "SVGA": (15, 30, 60, 120), "VGA": (15, 30, 60, 100)}

SDK_MISSING = (
    "ZED camera: the ZED SDK Python API `pyzed.sl` cannot be imported ({err}). It is installed by the "
    "ZED SDK (https://www.stereolabs.com/developers/release), not by pip: install the SDK, then run "
    "`{python} /usr/local/zed/get_python_api.py` with this environment's Python. Do NOT `pip install pyzed` "
    "(an unrelated package of the same name). Without the SDK use the ZED as a webcam with camera=uvc, "
    "or run without hardware with camera=sim."
)


def import_sdk() -> ModuleType:
    """Import `pyzed.sl` or raise CameraError explaining how to install it."""
    try:
        return importlib.import_module("pyzed.sl")
    except ImportError as e:
        import sys

        raise CameraError(SDK_MISSING.format(err=e, python=sys.executable)) from e


class ZedCamera(GrabberCamera):
    """A ZED (2/2i/X/Mini) camera: `read()` -> Frame(RGB (720, 1280, 3) uint8, SDK timestamp s)."""

    name = "zed"

    def __init__(
        self,
        resolution: str = "HD720",
        grab_fps: int = 30,
        fps: float = 10.0,
        view: str = "LEFT",
        serial_number: int | None = None,
        svo_file: str | None = None,
        background: bool = True,
        grab_timeout: float = 2.0,
        clock: Clock | None = None,
    ) -> None:
        resolution, view = resolution.upper(), view.upper()
        if resolution in _VALID_FPS and grab_fps not in _VALID_FPS[resolution]:
            raise CameraError(
                f"ZED camera: {resolution} does not run at grab_fps={grab_fps}; valid: {_VALID_FPS[resolution]} "
                f"(use 30 to get an even 10 Hz by keeping every third frame)"
            )
        super().__init__(fps=fps, grab_fps=grab_fps, background=background, grab_timeout=grab_timeout,
                         clock=clock)
        # the SDK's image time: Unix time of the capture, or of the recording when playing an SVO file
        self.time_base = "recorded" if svo_file is not None else "unix"
        sl = import_sdk()
        self._sl = sl
        try:
            self._view = getattr(sl.VIEW, view)
            sdk_resolution = getattr(sl.RESOLUTION, resolution)
        except AttributeError as e:
            raise CameraError(f"ZED camera: unknown view/resolution in the camera config: {e}") from e
        init = sl.InitParameters()
        init.camera_resolution = sdk_resolution
        init.camera_fps = int(grab_fps)
        if hasattr(sl, "DEPTH_MODE"):  # we use the left image only: skip the depth computation
            init.depth_mode = sl.DEPTH_MODE.NONE
        if serial_number is not None:
            init.set_from_serial_number(int(serial_number))
        if svo_file is not None:
            if not Path(svo_file).is_file():
                raise CameraError(f"ZED camera: svo_file {svo_file} does not exist")
            init.set_from_svo_file(str(svo_file))
        self._camera = sl.Camera()
        err = self._camera.open(init)
        if err != sl.ERROR_CODE.SUCCESS:
            which = f"serial {serial_number}" if serial_number is not None else (svo_file or "the first ZED")
            raise CameraError(
                f"ZED camera: opening {which} failed with {err}. Check the USB3 cable and port, that no other "
                f"program (ZED Explorer) holds the camera, and `ZED_Diagnostic`; or use camera=uvc / camera=sim"
            )
        self._runtime = sl.RuntimeParameters()
        self._mat = sl.Mat()
        self._ts_ref = sl.TIME_REFERENCE.IMAGE
        self._last_ok = time.monotonic()
        self._start()

    def _grab(self) -> tuple[Callable[[], np.ndarray], float] | None:
        sl = self._sl
        err = self._camera.grab(self._runtime)
        if err != sl.ERROR_CODE.SUCCESS:
            if err == getattr(sl.ERROR_CODE, "END_OF_SVOFILE_REACHED", None) or "END_OF_SVOFILE" in str(err):
                raise EndOfStream(f"ZED camera: end of SVO file ({err})")
            if time.monotonic() - self._last_ok > self.grab_timeout:
                raise CameraError(
                    f"ZED camera: grab() has failed for {self.grab_timeout:.1f} s (last error {err}); "
                    f"is the camera still connected?"
                )
            time.sleep(0.002)  # the SDK returns errors immediately; don't spin a core
            return None
        self._last_ok = time.monotonic()
        timestamp = self._camera.get_timestamp(self._ts_ref).get_nanoseconds() * 1e-9
        return self._retrieve, timestamp  # retrieved only if the decimator keeps the frame

    def _retrieve(self) -> np.ndarray:
        """The last grabbed frame's image as RGB (a new array: the SDK buffer is reused by the next retrieve)."""
        self._camera.retrieve_image(self._mat, self._view)
        return cv2.cvtColor(np.asarray(self._mat.get_data()), cv2.COLOR_BGRA2RGB)

    def _release(self) -> None:
        self._camera.close()
