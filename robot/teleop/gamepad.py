"""Gamepad teleoperation through pygame's joystick API.

Buttons snap to the calibrated targets and home, the sticks jog (EE x/y on the left stick, z on
the right stick; in joint mode the left stick's vertical axis moves the selected joint), the
shoulder buttons select the joint, the hat opens/closes the gripper and drives the calibration
tool. Button and axis numbers differ between pads and drivers: they live in
configs/teleop/gamepad.yaml (defaults: an Xbox-layout pad under SDL2 on Linux).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pygame

from robot.teleop.operator import TeleopInput

log = logging.getLogger(__name__)

DEFAULT_BUTTONS: dict[str, Any] = {
    "snap": [0, 1, 2, 3],  # A, B, X, Y -> pointing targets in calibration order
    "home": 7,  # Start
    "mode": 6,  # Back
    "prev_joint": 4, "next_joint": 5,  # LB, RB
    "hold": 8,  # Guide
    "store": 10,  # right stick click
    "discard": 9,  # left stick click: moss-record discards the episode in progress
    "quit": None,
}
DEFAULT_AXES: dict[str, Any] = {"x": 1, "y": 0, "z": 4, "joint": 1}  # left stick y/x, right stick y
DEFAULT_INVERT: dict[str, bool] = {"x": True, "y": True, "z": True, "joint": True}  # stick up = negative
DEFAULT_HAT: dict[str, Any] = {"up": "open", "down": "close", "right": "next", "left": "prev"}
# joystick events poll() does not use (a display in the same process keeps its own event types)
UNUSED_EVENTS = (pygame.JOYAXISMOTION, pygame.JOYBALLMOTION, pygame.JOYBUTTONUP)


def deadzone(value: float, dz: float) -> float:
    """Zero inside the dead zone, rescaled to reach +-1 at full deflection outside it."""
    if abs(value) <= dz:
        return 0.0
    return float(np.sign(value) * (abs(value) - dz) / (1.0 - dz))


class Gamepad:
    """A pygame joystick as a TeleopDevice. Pass `joystick` to use a given (or fake) joystick object
    with get_axis / get_numaxes / get_instance_id; otherwise joystick `index` is opened."""

    def __init__(
        self,
        snap_names: Sequence[str] = (),
        index: int = 0,
        buttons: Mapping[str, Any] | None = None,
        axes: Mapping[str, Any] | None = None,
        invert: Mapping[str, bool] | None = None,
        hat: Mapping[str, Any] | None = None,
        deadzone: float = 0.15,
        joystick: Any = None,
    ) -> None:
        if joystick is None:
            # the event queue needs the video system; not pygame.init(), which also starts the audio mixer
            # (its SDL thread, nice -20 as root, starved the control loop in the same process)
            if not pygame.display.get_init():
                pygame.display.init()
            pygame.joystick.init()
            n = pygame.joystick.get_count()
            if n <= index:
                raise RuntimeError(
                    f"gamepad teleop: joystick index {index} not found ({n} joystick(s) connected). Plug in the "
                    f"pad (check `ls /dev/input/js*` and permissions), set teleop.index, or use teleop=keyboard"
                )
            joystick = pygame.joystick.Joystick(index)
            joystick.init()
        self.joystick = joystick
        self.instance_id = joystick.get_instance_id()
        b = {**DEFAULT_BUTTONS, **dict(buttons or {})}
        snap_buttons = list(b.pop("snap"))
        if len(snap_names) > len(snap_buttons):
            raise ValueError(f"gamepad teleop: {len(snap_names)} targets {list(snap_names)} but only "
                             f"{len(snap_buttons)} snap buttons; add buttons to teleop.buttons.snap")
        self.snap_buttons = {int(btn): name for btn, name in zip(snap_buttons, snap_names)}
        if b.get("home") is not None:
            self.snap_buttons[int(b.pop("home"))] = "home"
        self.buttons = {action: int(v) for action, v in b.items() if v is not None}
        self.axes = {**DEFAULT_AXES, **dict(axes or {})}
        self.invert = {**DEFAULT_INVERT, **dict(invert or {})}
        self.hat = {**DEFAULT_HAT, **dict(hat or {})}
        self.deadzone = float(deadzone)
        n_axes = joystick.get_numaxes()
        bad = {k: v for k, v in self.axes.items() if v is not None and not 0 <= int(v) < n_axes}
        if bad:
            raise ValueError(f"gamepad teleop: axes {bad} do not exist on this pad ({n_axes} axes); "
                             f"fix teleop.axes in configs/teleop/gamepad.yaml")

    def _axis(self, name: str) -> float:
        idx = self.axes.get(name)
        if idx is None:
            return 0.0
        v = deadzone(float(self.joystick.get_axis(int(idx))), self.deadzone)
        return -v if self.invert.get(name) else v

    def poll(self) -> TeleopInput:
        inp = TeleopInput()
        # pygame returns the requested types one after the other: within one control period the
        # button events come before the hat events
        events = pygame.event.get(eventtype=(pygame.JOYBUTTONDOWN, pygame.JOYHATMOTION, pygame.JOYDEVICEREMOVED))
        # the sticks are read by get_axis; their motion events (hundreds a second) would otherwise pile up
        # until SDL's queue (65535) is full and drops every new button press
        pygame.event.clear(eventtype=UNUSED_EVENTS)
        for ev in events:
            if getattr(ev, "instance_id", self.instance_id) != self.instance_id:
                continue  # another pad
            if ev.type == pygame.JOYDEVICEREMOVED:  # unplugged / battery: end the session, not jog blind
                log.error("gamepad teleop: the pad (instance %s) was disconnected; stopping", self.instance_id)
                inp.events.append("quit")
            elif ev.type == pygame.JOYBUTTONDOWN:
                if ev.button in self.snap_buttons:
                    inp.snap = self.snap_buttons[ev.button]
                for action, btn in self.buttons.items():
                    if ev.button != btn:
                        continue
                    if action == "mode":
                        inp.toggle_mode = True
                    elif action == "prev_joint":
                        inp.select_joint -= 1
                    elif action == "next_joint":
                        inp.select_joint += 1
                    elif action == "hold":
                        inp.hold = True
                    elif action in ("open", "close"):
                        inp.gripper = action
                    else:
                        inp.events.append(action)
            else:
                hx, hy = ev.value
                direction = {(0, 1): "up", (0, -1): "down", (1, 0): "right", (-1, 0): "left"}.get((hx, hy))
                action = self.hat.get(direction) if direction else None
                if action in ("open", "close"):
                    inp.gripper = action
                elif action is not None:
                    inp.events.append(action)
        inp.ee_velocity = np.array([self._axis("x"), self._axis("y"), self._axis("z")])
        inp.joint_velocity = self._axis("joint")
        return inp

    def close(self) -> None:
        quit_ = getattr(self.joystick, "quit", None)
        if callable(quit_):
            quit_()
