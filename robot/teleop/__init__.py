"""Teleoperation: keyboard and gamepad devices behind one Policy-like `TeleopPolicy`."""

from robot.teleop.factory import make_teleop
from robot.teleop.operator import TeleopInput, TeleopPolicy

__all__ = ["TeleopInput", "TeleopPolicy", "make_teleop"]
