"""PongPredict (MOSS paper sec. 4.4): a ball crosses the screen bouncing off the top and bottom walls;
the right wall is split into coloured regions; the robot points to the cup of the region the ball will
hit, before it arrives.

Geometry, in units of the screen height (x right from the left edge, y down from the top):
top and bottom walls of thickness `walls.thickness`; the right wall, `right_wall.thickness` wide, split
into equal regions over the inner height, `right_wall.order` from top to bottom. The ball (radius r)
bounces where its centre reaches y_min = wall + r or y_max = 1 - wall - r and arrives when its centre
reaches x_hit = aspect - right_wall.thickness - r; the region hit is the one holding the centre's y then.

Each episode has `n_interactions` (>= 5, paper) interactions; interaction k:

    pause   [start_k, onset_k)        ball static at its launch point      label -1
    flying  [onset_k, deadline_k)     ball in flight; deadline = arrival   label k's, interaction k
    hit     [deadline_k, start_k+1)   ball at the contact point, region outlined   label -1

The flight is simulated physically, event by event (straight segments between wall reflections), and
the label is the region the simulated ball reaches. Launches are drawn in one of two ways
(`launch.sampling`):
- "target_first" (default): draw the region uniformly, a contact point inside it (kept
  `boundary_margin` ball radii from the region borders so labels are never a pixel decision), a number of
  bounces, then solve for the launch direction by unfolding the bounces. Labels are uniform across seeds.
- "free": draw the launch angle uniformly in [-max_angle, max_angle]; the label is whatever the
  simulation reaches (roughly balanced, not exactly).
Either way the stored label comes from the simulation; for "target_first" a disagreement with the
intended region raises (it would be a bug).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import cv2
import numpy as np

from tasks.stimulus import Interaction, StimulusTask, _range, _rgb, check_label_names


@dataclass(frozen=True)
class FlightSegment:
    """Straight piece of a flight: from time t (s after launch) the ball is at (x, y) moving (vx, vy)."""

    t: float
    x: float
    y: float
    vx: float
    vy: float


@dataclass(frozen=True)
class PongLaunch:
    """One ball flight (height units, seconds from episode start)."""

    index: int
    start: float
    onset: float  # launch time
    deadline: float  # arrival time at the right wall
    hit_end: float
    x0: float
    y0: float
    vx: float
    vy: float
    hit_y: float
    label: int
    bounces: int
    segments: tuple[FlightSegment, ...]


def simulate_flight(x0: float, y0: float, vx: float, vy: float, y_min: float, y_max: float,
                    x_hit: float, max_bounces: int = 1000) -> tuple[list[FlightSegment], float, float]:
    """Fly a ball from (x0, y0) with velocity (vx > 0, vy), reflecting vy at y_min / y_max, until its
    x reaches x_hit. Returns (segments, arrival time after launch, y at arrival)."""
    if vx <= 0:
        raise ValueError(f"pongpredict: the ball must move right (vx > 0), got vx={vx}")
    if not y_min <= y0 <= y_max:
        raise ValueError(f"pongpredict: launch y {y0} outside the field [{y_min}, {y_max}]")
    t, x, y = 0.0, x0, y0
    segments: list[FlightSegment] = []
    for _ in range(max_bounces + 1):
        segments.append(FlightSegment(t, x, y, vx, vy))
        dt_wall = (x_hit - x) / vx
        if vy > 0:
            dt_bounce = (y_max - y) / vy
        elif vy < 0:
            dt_bounce = (y_min - y) / vy
        else:
            dt_bounce = math.inf
        if dt_wall <= dt_bounce:
            return segments, t + dt_wall, y + vy * dt_wall
        t += dt_bounce
        x += vx * dt_bounce
        y = y_max if vy > 0 else y_min  # exact, so rounding never lets the ball leave the field
        vy = -vy
    raise ValueError(f"pongpredict: more than {max_bounces} bounces; the launch is too steep")


class PongPredict(StimulusTask):
    """PongPredict: ball flights with bounces; label = region of the right wall the ball reaches."""

    kind = "pongpredict"
    phase_names: ClassVar[list[str]] = ["idle", "pause", "flying", "hit", "done"]

    def __init__(self, cfg: Mapping[str, Any], seed: int) -> None:
        super().__init__(cfg, seed)
        cfg = self.cfg
        check_label_names(cfg, ("red", "green", "blue"))
        w, h = self.screen_size
        self.aspect = w / h
        self.n_interactions = int(cfg["n_interactions"])
        if self.n_interactions < 1:
            raise ValueError(f"task config {self.name}: n_interactions must be >= 1, got {self.n_interactions}")
        ball = cfg["ball"]
        self.r = float(ball["radius"])
        self.ball_rgb = _rgb(ball["color_rgb"], "ball.color_rgb")
        walls = cfg["walls"]
        self.wall = float(walls["thickness"])
        self.wall_rgb = _rgb(walls["color_rgb"], "walls.color_rgb")
        rw = cfg["right_wall"]
        self.right_wall = float(rw["thickness"])
        self.region_order = [str(n) for n in rw["order"]]
        if sorted(self.region_order) != sorted(self.label_names):
            raise ValueError(f"task config {self.name}: right_wall.order {self.region_order} must be a "
                             f"permutation of label_names {self.label_names}")
        self.region_rgb = {name: _rgb(rw["colors_rgb"][name], f"right_wall.colors_rgb.{name}")
                           for name in self.label_names}
        self.hit_outline_rgb = _rgb(rw["hit_outline_rgb"], "right_wall.hit_outline_rgb")
        # field (height units)
        self.y_min = self.wall + self.r
        self.y_max = 1.0 - self.wall - self.r
        self.x_hit = self.aspect - self.right_wall - self.r
        n = len(self.region_order)
        self.region_edges = [self.wall + i * (1.0 - 2 * self.wall) / n for i in range(n + 1)]
        if self.y_max <= self.y_min or self.x_hit <= 0:
            raise ValueError(f"task config {self.name}: ball radius / wall thickness leave no field")

        pause = _range(cfg["pause"], "pause", 0.0)
        self.hit_duration = float(cfg["hit_duration"])
        end_pause = float(cfg["end_pause"])
        launches: list[PongLaunch] = []
        t = 0.0
        for k in range(self.n_interactions):
            t_pause = float(self.rng.uniform(*pause))
            x0, y0, vx, vy, target = self._sample_launch()
            segments, t_fly, hit_y = simulate_flight(x0, y0, vx, vy, self.y_min, self.y_max, self.x_hit)
            label = self.region_label(hit_y)
            if target is not None and label != target:
                raise RuntimeError(f"pongpredict seed {seed} interaction {k}: solved for region "
                                   f"{self.label_names[target]} but the ball reached {self.label_names[label]}")
            onset = t + t_pause
            deadline = onset + t_fly
            hit_end = deadline + self.hit_duration
            launches.append(PongLaunch(k, t, onset, deadline, hit_end, x0, y0, vx, vy, hit_y, label,
                                       len(segments) - 1, tuple(segments)))
            t = hit_end
        self.launches = launches
        self._starts = [lc.start for lc in launches]
        self.duration = t + end_pause
        self.interactions = [Interaction(index=lc.index, label=lc.label, onset=lc.onset, deadline=lc.deadline,
                                         start=lc.start) for lc in launches]

    # -- geometry ------------------------------------------------------------------------------------------
    def region_label(self, y: float) -> int:
        """Label index of the right-wall region holding height y (height units)."""
        i = bisect.bisect_right(self.region_edges, y) - 1
        i = min(max(i, 0), len(self.region_order) - 1)
        return self.label_names.index(self.region_order[i])

    def _sample_launch(self) -> tuple[float, float, float, float, int | None]:
        launch = self.cfg["launch"]
        sampling = str(launch["sampling"])
        x_range = _range(launch["x"], "launch.x", 0.0)
        y_range = _range(launch["y"], "launch.y", 0.0)
        flight = _range(launch["flight_time"], "launch.flight_time", 1e-3)
        max_slope = math.tan(math.radians(float(launch["max_angle_deg"])))
        bounce_lo, bounce_hi = (int(b) for b in launch["bounces"])
        margin = float(launch["boundary_margin"]) * self.r
        for _ in range(1000):
            x0 = float(self.rng.uniform(*x_range)) * self.aspect
            y0 = self.y_min + float(self.rng.uniform(*y_range)) * (self.y_max - self.y_min)
            t_fly = float(self.rng.uniform(*flight))
            dist = self.x_hit - x0
            if dist <= 0:
                raise ValueError(f"task config {self.name}: launch.x {x_range} reaches the right wall")
            vx = dist / t_fly
            if sampling == "free":
                angle = float(self.rng.uniform(-1.0, 1.0)) * math.atan(max_slope)
                return x0, y0, vx, vx * math.tan(angle), None
            if sampling != "target_first":
                raise ValueError(f"task config {self.name}: launch.sampling must be 'target_first' or 'free', "
                                 f"got {sampling!r}")
            target = int(self.rng.integers(len(self.label_names)))
            i = self.region_order.index(self.label_names[target])
            lo = max(self.region_edges[i], self.y_min) + margin
            hi = min(self.region_edges[i + 1], self.y_max) - margin
            if hi <= lo:
                raise ValueError(f"task config {self.name}: region {self.region_order[i]} is too small for "
                                 f"launch.boundary_margin; lower it or the ball radius")
            y_star = float(self.rng.uniform(lo, hi))
            # Unfold the bounces: with u = y - y_min and span L, the straight unfolded path ends at image j
            # of the contact point: u* + jL (j even) or (j+1)L - u* (j odd), crossing |j| walls.
            span = self.y_max - self.y_min
            u0, u_star = y0 - self.y_min, y_star - self.y_min
            candidates = []
            for n in range(bounce_lo, bounce_hi + 1):
                for j in {n, -n}:
                    u_end = j * span + u_star if j % 2 == 0 else (j + 1) * span - u_star
                    if abs(u_end - u0) <= max_slope * dist:
                        candidates.append(u_end)
            if not candidates:
                continue  # too steep from this start: draw another start
            u_end = candidates[int(self.rng.integers(len(candidates)))]
            return x0, y0, vx, (u_end - u0) / t_fly, target
        raise ValueError(f"task config {self.name}: no launch satisfies launch.max_angle_deg / bounces; "
                         "widen them")

    # -- timeline -------------------------------------------------------------------------------------------
    def _launch(self, t: float) -> PongLaunch:
        k = max(bisect.bisect_right(self._starts, t) - 1, 0)
        return self.launches[k]

    def ball_position(self, t: float) -> tuple[float, float]:
        """Ball centre at stimulus time t (height units), from the simulated flight segments."""
        lc = self._launch(t)
        if t < lc.onset:
            return lc.x0, lc.y0
        s = min(t, lc.deadline) - lc.onset
        seg = lc.segments[max(bisect.bisect_right([g.t for g in lc.segments], s) - 1, 0)]
        if t >= lc.deadline:
            return self.x_hit, lc.hit_y
        return seg.x + seg.vx * (s - seg.t), seg.y + seg.vy * (s - seg.t)

    def _object_px(self, t: float) -> tuple[float, float]:
        x, y = self.ball_position(t)
        return x * self.height_px, y * self.height_px

    def _phase(self, t: float) -> str:
        lc = self._launch(t)
        if t < lc.onset:
            return "pause"
        if t < lc.deadline:
            return "flying"
        return "hit" if t < lc.hit_end else "pause"

    # -- drawing --------------------------------------------------------------------------------------------
    def _region_rect(self, i: int) -> tuple[tuple[int, int], tuple[int, int]]:
        w, h = self.screen_size
        x_left = round((self.aspect - self.right_wall) * h)
        return (x_left, round(self.region_edges[i] * h)), (w - 1, round(self.region_edges[i + 1] * h) - 1)

    def _draw_background(self, img: np.ndarray) -> None:
        _, h = self.screen_size
        wall_px = round(self.wall * h)
        img[:wall_px] = self.wall_rgb
        img[h - wall_px:] = self.wall_rgb
        for i, name in enumerate(self.region_order):
            p0, p1 = self._region_rect(i)
            cv2.rectangle(img, p0, p1, self.region_rgb[name], thickness=-1)

    def _draw(self, img: np.ndarray, t: float) -> None:
        lc = self._launch(t)
        if lc.deadline <= t < lc.hit_end:
            i = self.region_order.index(self.label_names[lc.label])
            (x0, y0), (x1, y1) = self._region_rect(i)
            thick = max(2, round(0.008 * self.height_px))
            inset = thick // 2  # cv2 centres the line on the rectangle: keep the outline on the wall
            cv2.rectangle(img, (x0 + inset, y0 + inset), (x1 - inset, y1 - inset), self.hit_outline_rgb, thick)
        self._draw_disc(img, self._object_px(t), self.r * self.height_px, self.ball_rgb)
