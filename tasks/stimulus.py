"""What every task stimulus shares: the ground-truth record, the interaction timeline, the base class.

A task is a pure function of the stimulus time t (seconds since the episode started): `render(t)` is
the frame shown at t, `state(t)` the ground truth at t. Everything random is drawn once from the seed
in the constructor, so the display driver, the simulated rig and a replay all see the same episode.

Coordinates: pixel (x right, y down) for drawing; `StimulusState.xy` normalised to 0..1 per axis.
Lengths in the task configs are in units of the screen height (so a circle stays round and a stimulus
looks the same at 1280x720 and 2560x1440); positions are fractions of the width/height.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import cv2
import numpy as np

from moss_vla.config import plain

# cv2 draws with sub-pixel precision when coordinates are fixed point with this many fractional bits.
_SHIFT = 4
_ONE = 1 << _SHIFT


@dataclass(frozen=True)
class StimulusState:
    """Ground truth of the stimulus at stimulus time t (the `stim_*` keys of an episode frame)."""

    t: float
    label: int  # index into the task's label_names, -1 when no interaction is in progress
    phase: int  # index into the task's phase_names
    xy: tuple[float, float]  # object centre, normalised 0..1 (x right, y down)
    interaction: int  # index of the interaction in progress, -1 none
    time_to_deadline: float  # seconds until the interaction's deadline, -1 none

    def as_record(self) -> dict[str, Any]:
        """Exactly the per-frame `stim_*` keys of the episode store."""
        return {
            "stim_label": int(self.label),
            "stim_phase": int(self.phase),
            "stim_xy": np.asarray(self.xy, dtype=np.float32),
            "stim_interaction": int(self.interaction),
            "stim_time_to_deadline": float(self.time_to_deadline),
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (used on the loopback link and in the display frame log)."""
        d = asdict(self)
        d["xy"] = [float(self.xy[0]), float(self.xy[1])]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> StimulusState:
        return cls(
            t=float(d["t"]),
            label=int(d["label"]),
            phase=int(d["phase"]),
            xy=(float(d["xy"][0]), float(d["xy"][1])),
            interaction=int(d["interaction"]),
            time_to_deadline=float(d["time_to_deadline"]),
        )


@dataclass(frozen=True)
class Interaction:
    """One thing the robot must respond to: its label is decidable from `onset` (motion starts / ball
    launched) and the robot must point before `deadline` (seconds from episode start). `start` is when
    the interaction's segment of the episode begins (the pause before the onset); "next interaction"
    on the display jumps there."""

    index: int
    label: int
    onset: float
    deadline: float
    start: float = 0.0


def _rgb(value: Any, key: str) -> tuple[int, int, int]:
    c = tuple(int(v) for v in value)
    if len(c) != 3 or not all(0 <= v <= 255 for v in c):
        raise ValueError(f"task config: {key} must be an RGB triple of 0..255, got {list(value)}")
    return c  # type: ignore[return-value]


def _range(value: Any, key: str, low: float = -np.inf) -> tuple[float, float]:
    """A config value that is either a number or a [min, max] range."""
    if isinstance(value, (int, float)):
        r = (float(value), float(value))
    else:
        r = tuple(float(v) for v in value)
    if len(r) != 2 or r[0] > r[1] or r[0] < low:
        raise ValueError(f"task config: {key} must be a number or [min, max] with {low} <= min <= max, got {value}")
    return r  # type: ignore[return-value]


class StimulusTask:
    """Base class of the tasks: config parsing, seeded RNG, cached background, timeline lookup.

    Subclasses fill `self.interactions` and `self.duration`, implement `_draw(img, t)` (the moving
    parts on top of the background) and `_object_px(t)` / `_phase(t)`.
    """

    kind: str = ""
    phase_names: ClassVar[list[str]] = []

    def __init__(self, cfg: Mapping[str, Any], seed: int) -> None:
        # plain containers: much faster to read, JSON-serialisable
        self.cfg: dict[str, Any] = dict(plain(cfg))
        self.seed = int(seed)
        self.name: str = str(cfg["name"])
        self.instruction: str = str(cfg["instruction"])
        self.label_names: list[str] = [str(n) for n in cfg["label_names"]]
        screen = cfg["screen"]
        self.screen_size: tuple[int, int] = (int(screen["width"]), int(screen["height"]))
        w, h = self.screen_size
        if w < 16 or h < 16:
            raise ValueError(f"task config {self.name}: screen size {w}x{h} is too small")
        self.background_rgb = _rgb(cfg["background_rgb"], "background_rgb")
        # numpy Generator seeded with the episode seed and a per-task salt so that tasks sharing a seed
        # are not correlated
        self.rng = np.random.default_rng([self.seed, sum(map(ord, self.kind))])
        self.interactions: list[Interaction] = []
        self.duration: float = 0.0
        self._background: np.ndarray | None = None

    # -- geometry helpers -------------------------------------------------------------------------------
    @property
    def height_px(self) -> float:
        return float(self.screen_size[1])

    def _fixed(self, x: float) -> int:
        return round(x * _ONE)

    def _draw_disc(self, img: np.ndarray, centre_px: tuple[float, float], radius_px: float,
                   color: tuple[int, int, int]) -> None:
        cv2.circle(img, (self._fixed(centre_px[0]), self._fixed(centre_px[1])), self._fixed(radius_px),
                   color, thickness=-1, lineType=cv2.LINE_AA, shift=_SHIFT)

    # -- what subclasses provide -------------------------------------------------------------------------
    def _draw_background(self, img: np.ndarray) -> None:
        """Static parts of the scene (drawn once and cached)."""

    def _draw(self, img: np.ndarray, t: float) -> None:
        raise NotImplementedError

    def _object_px(self, t: float) -> tuple[float, float]:
        raise NotImplementedError

    def _phase(self, t: float) -> str:
        raise NotImplementedError

    # -- public API ---------------------------------------------------------------------------------------
    def background(self) -> np.ndarray:
        """The static background (h, w, 3) uint8; do not modify (it is cached)."""
        if self._background is None:
            w, h = self.screen_size
            img = np.empty((h, w, 3), dtype=np.uint8)
            img[:] = self.background_rgb
            self._draw_background(img)
            img.setflags(write=False)
            self._background = img
        return self._background

    def render(self, t: float, out: np.ndarray | None = None) -> np.ndarray:
        """The frame shown at stimulus time t: (h, w, 3) uint8 RGB. t < 0 shows the first frame.
        `out`: an (h, w, 3) uint8 array to draw into (saves an allocation per frame); returned."""
        bg = self.background()
        if out is None:
            img = bg.copy()
        else:
            if out.shape != bg.shape or out.dtype != np.uint8:
                raise ValueError(f"{self.name}: render out= must be uint8 {bg.shape}, got {out.dtype} {out.shape}")
            np.copyto(out, bg)
            img = out
        self._draw(img, min(max(float(t), 0.0), self.duration))
        return img

    def current_interaction(self, t: float) -> Interaction | None:
        """The interaction in progress at t (onset <= t < deadline), or None."""
        onsets = [i.onset for i in self.interactions]
        k = bisect.bisect_right(onsets, t) - 1
        if k >= 0 and t < self.interactions[k].deadline:
            return self.interactions[k]
        return None

    def state(self, t: float) -> StimulusState:
        """Ground truth at stimulus time t. Before the start (t < 0) the phase is "idle", after the end
        (t >= duration) "done"; the label is -1 outside [onset, deadline) of an interaction."""
        t = float(t)
        tc = min(max(t, 0.0), self.duration)
        x, y = self._object_px(tc)
        w, h = self.screen_size
        xy = (x / w, y / h)
        if t < 0:
            phase = "idle"
        elif t >= self.duration:
            phase = "done"
        else:
            phase = self._phase(t)
        it = self.current_interaction(t) if 0 <= t < self.duration else None
        return StimulusState(
            t=t,
            label=-1 if it is None else it.label,
            phase=self.phase_names.index(phase),
            xy=xy,
            interaction=-1 if it is None else it.index,
            time_to_deadline=-1.0 if it is None else it.deadline - t,
        )

    def next_start(self, t: float) -> float:
        """Start of the first interaction segment strictly after t (the episode end if none):
        where the display's "next interaction" command jumps to."""
        for it in self.interactions:
            if it.start > t + 1e-9:
                return it.start
        return self.duration

    def meta(self) -> dict[str, Any]:
        """Episode metadata for the episode store (JSON-serialisable)."""
        return {
            "task": self.name,
            "kind": self.kind,
            "instruction": self.instruction,
            "seed": self.seed,
            "label_names": list(self.label_names),
            "phase_names": list(self.phase_names),
            "duration": float(self.duration),
            "screen_size": list(self.screen_size),
            "interactions": [asdict(i) for i in self.interactions],
        }

    def __repr__(self) -> str:
        labels = [self.label_names[i.label] for i in self.interactions]
        return f"{type(self).__name__}(seed={self.seed}, duration={self.duration:.2f}s, labels={labels})"


def check_label_names(cfg: Mapping[str, Any], expected: Sequence[str]) -> None:
    """The label order is part of the episode format (stim_label indexes it): refuse other orders."""
    got = [str(n) for n in cfg["label_names"]]
    if got != list(expected):
        raise ValueError(
            f"task config {cfg.get('name')}: label_names must be {list(expected)} (the order is stored in "
            f"episodes as stim_label), got {got}"
        )
