"""Keyboard teleoperation through pygame events.

Held keys are tracked from KEYDOWN/KEYUP events (not `pygame.key.get_pressed()`, which ignores
posted events and needs window focus bookkeeping), and only keyboard events are taken from the
queue, so a stimulus display in the same process keeps its own events. pygame delivers keys to a
window only: if no window exists, a small status window is opened (`window: true`).
Bindings are pygame key names in configs/teleop/keyboard.yaml.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pygame

from robot.teleop.operator import TeleopInput

DEFAULT_KEYS: dict[str, Any] = {
    "snap": ["1", "2", "3", "4", "5", "6"],  # pointing targets in calibration order
    "home": "h",
    "mode": "m",  # EE jog <-> joint jog
    "x+": "up", "x-": "down", "y+": "left", "y-": "right", "z+": "page up", "z-": "page down",
    "joint+": "up", "joint-": "down", "prev_joint": "[", "next_joint": "]",
    "open": "o", "close": "c", "hold": "space",
    "store": "return", "next": "tab", "prev": "backspace", "save": "s", "quit": "escape",
    "discard": "delete",  # moss-record: discard the episode in progress
}


def _code(name: str) -> int:
    try:
        return pygame.key.key_code(name)
    except ValueError as e:
        raise ValueError(f"keyboard teleop: unknown key name {name!r} in configs/teleop/keyboard.yaml "
                         f"(pygame names, e.g. 'a', 'up', 'page up', 'return', 'space')") from e


class Keyboard:
    """A keyboard as a TeleopDevice. `snap_names` are bound to keys.snap in order; keys.home snaps to home."""

    def __init__(
        self,
        snap_names: Sequence[str] = (),
        keys: Mapping[str, Any] | None = None,
        window: bool = True,
        window_size: tuple[int, int] = (480, 160),
    ) -> None:
        # only the video system (key names, the event queue), never pygame.init(): that also starts the
        # audio mixer, whose SDL thread (nice -20 as root) starved the control loop in the same process
        if not pygame.display.get_init():
            pygame.display.init()
        bindings = {**DEFAULT_KEYS, **dict(keys or {})}
        snap_keys = list(bindings.pop("snap"))
        if len(snap_names) > len(snap_keys):
            raise ValueError(f"keyboard teleop: {len(snap_names)} targets {list(snap_names)} but only "
                             f"{len(snap_keys)} snap keys; add keys to teleop.keys.snap")
        self.snap_keys = {_code(k): n for k, n in zip(snap_keys, snap_names)}
        self.snap_keys[_code(bindings.pop("home"))] = "home"
        self.codes = {action: _code(name) for action, name in bindings.items()}
        self.held: set[int] = set()
        self.owns_window = False
        if window and pygame.display.get_surface() is None:
            pygame.display.set_mode(window_size)
            pygame.display.set_caption("moss-vla teleop (keyboard)")
            self.owns_window = True

    def _held(self, action: str) -> bool:
        return self.codes[action] in self.held

    def poll(self) -> TeleopInput:
        inp = TeleopInput()
        for ev in pygame.event.get(eventtype=(pygame.KEYDOWN, pygame.KEYUP)):
            if ev.type == pygame.KEYUP:
                self.held.discard(ev.key)
                continue
            self.held.add(ev.key)
            if ev.key in self.snap_keys:
                inp.snap = self.snap_keys[ev.key]
            for action in ("store", "next", "prev", "save", "quit", "discard"):
                if ev.key == self.codes[action]:
                    inp.events.append(action)
            if ev.key == self.codes["mode"]:
                inp.toggle_mode = True
            elif ev.key == self.codes["prev_joint"]:
                inp.select_joint -= 1
            elif ev.key == self.codes["next_joint"]:
                inp.select_joint += 1
            elif ev.key == self.codes["open"]:
                inp.gripper = "open"
            elif ev.key == self.codes["close"]:
                inp.gripper = "close"
            elif ev.key == self.codes["hold"]:
                inp.hold = True
        # held keys jog; both mappings are filled, the policy uses the one of its mode
        inp.ee_velocity = np.array([self._held("x+") - self._held("x-"), self._held("y+") - self._held("y-"),
                                    self._held("z+") - self._held("z-")], dtype=np.float64)
        inp.joint_velocity = float(self._held("joint+") - self._held("joint-"))
        return inp

    def close(self) -> None:
        if self.owns_window:
            pygame.display.quit()
            self.owns_window = False
