"""Cameras: one interface (`robot.interfaces.Camera`: timestamped RGB frames) for the ZED SDK, any
UVC webcam through OpenCV, replayed episode stores and the simulated ZED (robot/sim_camera.py)."""

from robot.cameras.factory import make_camera, make_display_crop
from robot.cameras.grabber import CameraError, EndOfStream

__all__ = ["CameraError", "EndOfStream", "make_camera", "make_display_crop"]
