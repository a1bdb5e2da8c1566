"""MoveSense (MOSS paper sec. 4.4): a circle moves; the robot points to the bowl of the motion.

Two variants share one timeline: each episode holds `n_patterns` motion patterns (3 in the paper).
Pattern k occupies [start_k, start_{k+1}):

    pause   [start_k, onset_k)        circle static at its start position   label -1
    moving  [onset_k, motion_end_k)   circle moves (constant speed)          label k's, interaction k
    hold    [motion_end_k, start_k+1) circle static where the motion ended   label k's, interaction k

so interaction k's deadline is the start of the next pattern (the end of the episode for the last).
Between patterns the circle jumps to the next start position (a jump is not a motion in either
direction). Labels are drawn i.i.d. uniform per pattern, so they are balanced across seeds.

- `MoveSenseLR`: the circle translates horizontally; labels ["left", "right"].
- `MoveSenseRot`: the circle runs on a circular path; labels ["cw", "ccw"] as seen on the screen
  (the instruction: point right for clockwise, left for counter-clockwise).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import cv2
import numpy as np

from tasks.stimulus import _SHIFT, Interaction, StimulusTask, _range, _rgb, check_label_names


@dataclass(frozen=True)
class MotionPattern:
    """One motion pattern: timeline (s from episode start), label and motion parameters (pixels)."""

    start: float
    onset: float
    motion_end: float
    end: float
    label: int
    params: tuple[float, ...]  # LR: (x0, y0, vx); Rot: (cx, cy, R, theta0, omega) with omega signed


class _MoveSense(StimulusTask):
    phase_names: ClassVar[list[str]] = ["idle", "pause", "moving", "hold", "done"]
    expected_labels: tuple[str, ...] = ()

    def __init__(self, cfg: Mapping[str, Any], seed: int) -> None:
        super().__init__(cfg, seed)
        cfg = self.cfg
        check_label_names(cfg, self.expected_labels)
        self.n_patterns = int(cfg["n_patterns"])
        if self.n_patterns < 1:
            raise ValueError(f"task config {self.name}: n_patterns must be >= 1, got {self.n_patterns}")
        circle = cfg["circle"]
        self.radius_px = float(circle["radius"]) * self.height_px
        self.circle_rgb = _rgb(circle["color_rgb"], "circle.color_rgb")
        pause = _range(cfg["pause"], "pause", 0.0)
        motion = _range(cfg["motion_duration"], "motion_duration", 1e-3)
        hold = _range(cfg["hold"], "hold", 0.0)

        patterns: list[MotionPattern] = []
        t = 0.0
        for k in range(self.n_patterns):
            # fixed draw order per pattern keeps episodes reproducible from the seed
            label = int(self.rng.integers(len(self.label_names)))
            t_pause = float(self.rng.uniform(*pause))
            t_motion = float(self.rng.uniform(*motion))
            t_hold = float(self.rng.uniform(*hold))
            params = self._sample_motion(label, t_motion)
            onset = t + t_pause
            motion_end = onset + t_motion
            end = motion_end + t_hold
            patterns.append(MotionPattern(t, onset, motion_end, end, label, params))
            t = end
        self.patterns = patterns
        self._starts = [p.start for p in patterns]
        self.duration = t
        self.interactions = [
            Interaction(index=k, label=p.label, onset=p.onset, deadline=p.end, start=p.start)
            for k, p in enumerate(patterns)
        ]

    def _sample_motion(self, label: int, t_motion: float) -> tuple[float, ...]:
        raise NotImplementedError

    def _position(self, p: MotionPattern, s: float) -> tuple[float, float]:
        """Circle centre (px) after s seconds of motion."""
        raise NotImplementedError

    def _pattern(self, t: float) -> MotionPattern:
        k = max(bisect.bisect_right(self._starts, t) - 1, 0)
        return self.patterns[k]

    def _object_px(self, t: float) -> tuple[float, float]:
        p = self._pattern(t)
        s = min(max(t - p.onset, 0.0), p.motion_end - p.onset)
        return self._position(p, s)

    def _phase(self, t: float) -> str:
        p = self._pattern(t)
        if t < p.onset:
            return "pause"
        return "moving" if t < p.motion_end else "hold"

    def _draw(self, img: np.ndarray, t: float) -> None:
        self._draw_disc(img, self._object_px(t), self.radius_px, self.circle_rgb)


class MoveSenseLR(_MoveSense):
    """MoveSense Left/Right: the circle translates left or right at constant speed."""

    kind = "movesense_lr"
    expected_labels = ("left", "right")

    def _sample_motion(self, label: int, t_motion: float) -> tuple[float, ...]:
        cfg = self.cfg
        w, h = self.screen_size
        speed = float(self.rng.uniform(*_range(cfg["speed"], "speed", 0.0))) * h  # px/s
        y0 = float(self.rng.uniform(*_range(cfg["y"], "y", 0.0))) * h
        lo = float(cfg["margin"]) * w + self.radius_px
        hi = w - lo
        travel = speed * t_motion
        if hi - lo < travel:
            raise ValueError(
                f"task config {self.name}: a motion of {travel:.0f} px (speed x motion_duration) does not fit "
                f"between the margins of a {w} px wide screen; lower speed or motion_duration or margin"
            )
        direction = -1.0 if self.label_names[label] == "left" else 1.0
        # the start is uniform over the positions from which the whole motion stays on screen
        x0 = float(self.rng.uniform(lo + travel, hi)) if direction < 0 else float(self.rng.uniform(lo, hi - travel))
        return (x0, y0, direction * speed)

    def _position(self, p: MotionPattern, s: float) -> tuple[float, float]:
        x0, y0, vx = p.params
        return (x0 + vx * s, y0)


class MoveSenseRot(_MoveSense):
    """MoveSense CW/CCW: the circle moves on a circular path at constant angular speed.

    With y pointing down, a growing angle theta in (cx + R cos theta, cy + R sin theta) turns clockwise
    on the screen, so "cw" has omega > 0.
    """

    kind = "movesense_rot"
    expected_labels = ("cw", "ccw")

    def __init__(self, cfg: Mapping[str, Any], seed: int) -> None:
        super().__init__(cfg, seed)
        self.show_path = bool(self.cfg.get("show_path", False))

    def _sample_motion(self, label: int, t_motion: float) -> tuple[float, ...]:
        cfg = self.cfg
        w, h = self.screen_size
        radius = float(self.rng.uniform(*_range(cfg["path_radius"], "path_radius", 0.0))) * h
        cx = float(self.rng.uniform(*_range(cfg["centre_x"], "centre_x", 0.0))) * w
        cy = float(self.rng.uniform(*_range(cfg["centre_y"], "centre_y", 0.0))) * h
        omega = float(self.rng.uniform(*_range(cfg["angular_speed"], "angular_speed", 0.0)))
        theta0 = float(self.rng.uniform(0.0, 2.0 * math.pi))
        reach = radius + self.radius_px
        if cx - reach < 0 or cx + reach > w or cy - reach < 0 or cy + reach > h:
            raise ValueError(
                f"task config {self.name}: a circular path of radius {radius:.0f} px around ({cx:.0f}, {cy:.0f}) "
                f"leaves the {w}x{h} screen; lower path_radius or narrow centre_x/centre_y"
            )
        if omega * 0.1 > math.pi / 2:
            # at 10 FPS a step of more than a quarter turn makes the direction ambiguous (aliasing)
            raise ValueError(f"task config {self.name}: angular_speed {omega} rad/s is too fast for 10 FPS; "
                             "keep it below 15 rad/s")
        sign = 1.0 if self.label_names[label] == "cw" else -1.0
        return (cx, cy, radius, theta0, sign * omega)

    def _position(self, p: MotionPattern, s: float) -> tuple[float, float]:
        cx, cy, radius, theta0, omega = p.params
        theta = theta0 + omega * s
        return (cx + radius * math.cos(theta), cy + radius * math.sin(theta))

    def _draw(self, img: np.ndarray, t: float) -> None:
        if self.show_path:
            cx, cy, radius, _, _ = self._pattern(t).params
            path = self.cfg["path"]
            cv2.circle(img, (self._fixed(cx), self._fixed(cy)), self._fixed(radius),
                       _rgb(path["color_rgb"], "path.color_rgb"),
                       thickness=max(1, round(float(path["thickness"]) * self.height_px)),
                       lineType=cv2.LINE_AA, shift=_SHIFT)
        super()._draw(img, t)
