"""The toy video clip of the MOSS paper's appendix A (fig. 3 and 8), rendered procedurally.

Two sets of three objects (a blue circle, a red heart and a green cube) on a black background; the objects
of one set all move horizontally (to the right), those of the other set vertically (down), at the same
speed. Frames are anti-aliased by supersampling, so a cell's colour is its object's colour times the
covered fraction. The clip also returns each object's mask per frame, so that STSS maps can be scored per
object (see :mod:`moss_vla.viz`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

COLOURS = {"blue": (0.0, 0.0, 1.0), "red": (1.0, 0.0, 0.0), "green": (0.0, 1.0, 0.0)}
SET_LOOK = (("blue", "circle"), ("red", "heart"), ("green", "cube"))


@dataclass(frozen=True)
class ToyObject:
    """One object: its look, its set's motion and its trajectory (grid cells, (y, x), y down)."""

    colour: str
    shape: str
    motion: str  # "horizontal" or "vertical"
    start: tuple[float, float]  # centre at frame 0
    velocity: tuple[float, float]  # cells per frame

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape} ({self.motion})"

    def centre(self, t: int) -> tuple[float, float]:
        return self.start[0] + t * self.velocity[0], self.start[1] + t * self.velocity[1]


@dataclass
class ToyClip:
    """frames: (T, H, W, 3) float32 in [0, 1]; masks: (T, N, H, W) bool (cell at least half covered)."""

    frames: np.ndarray
    masks: np.ndarray
    objects: list[ToyObject]

    def index(self, name: str) -> int:
        names = [o.name for o in self.objects]
        if name not in names:
            raise ValueError(f"no object named {name!r} in the toy clip; choose one of {names}")
        return names.index(name)

    def centre_cell(self, name: str, t: int) -> tuple[int, int]:
        """(h, w) grid cell at the centre of the named object in frame t."""
        y, x = self.objects[self.index(name)].centre(t)
        return round(y), round(x)


def _inside(shape: str, dy: np.ndarray, dx: np.ndarray, radius: float) -> np.ndarray:
    """Whether points at offset (dy, dx) from the centre lie inside the shape of the given radius."""
    if shape == "circle":
        return dy**2 + dx**2 <= radius**2
    if shape == "cube":  # a square with the circle's area, so that all objects cover about the same cells
        half = radius * np.sqrt(np.pi) / 2
        return (np.abs(dy) <= half) & (np.abs(dx) <= half)
    if shape == "heart":  # (X^2 + Y^2 - 1)^3 - X^2 Y^3 <= 0, Y up, scaled to about the circle's size
        X, Y = 1.25 * dx / radius, -1.25 * dy / radius + 0.15
        return (X**2 + Y**2 - 1) ** 3 - X**2 * Y**3 <= 0
    raise ValueError(f"unknown toy shape {shape!r}; expected circle, heart or cube")


def toy_objects(size: int, frames: int, radius: float, speed: float) -> list[ToyObject]:
    """Layout: the horizontal set stacked on the left, moving right; the vertical set side by side on the
    right, moving down. Objects and paths never overlap (checked)."""
    margin = radius + 1.0
    travel = speed * (frames - 1)
    rows = np.linspace(margin, size - 1 - margin, 3)  # horizontal set, one object per row
    first_col = margin + travel + 2 * radius + 1.0  # right of where the horizontal set ends up
    cols = first_col + np.arange(3) * (2 * radius + 1.0)  # vertical set, one object per column
    if cols[-1] + radius > size - 1 or margin + travel + radius > size - 1:
        raise ValueError(
            f"toy clip of size {size} is too small for radius {radius}, speed {speed} and {frames} frames; "
            "increase size or reduce radius/speed/frames"
        )
    objects = [
        ToyObject(c, s, "horizontal", (float(rows[i]), margin), (0.0, speed)) for i, (c, s) in enumerate(SET_LOOK)
    ]
    objects += [
        ToyObject(c, s, "vertical", (margin, float(cols[i])), (speed, 0.0)) for i, (c, s) in enumerate(SET_LOOK)
    ]
    return objects


def make_toy_clip(
    frames: int = 8, size: int = 40, radius: float = 3.0, speed: float = 1.5, supersample: int = 4
) -> ToyClip:
    """Render the clip: (frames, size, size, 3) RGB in [0, 1] plus per-object masks."""
    objects = toy_objects(size, frames, radius, speed)
    # sub-cell sample points, cell (h, w) covers [h, h + 1) x [w, w + 1)
    sub = (np.arange(size * supersample) + 0.5) / supersample
    ys, xs = np.meshgrid(sub, sub, indexing="ij")
    video = np.zeros((frames, size, size, 3), np.float32)
    masks = np.zeros((frames, len(objects), size, size), bool)
    for t in range(frames):
        for i, obj in enumerate(objects):
            cy, cx = obj.centre(t)
            # cell centres are at h + 0.5, so an object centred on cell h has centre h + 0.5
            hit = _inside(obj.shape, ys - (cy + 0.5), xs - (cx + 0.5), radius)
            coverage = hit.reshape(size, supersample, size, supersample).mean(axis=(1, 3))
            masks[t, i] = coverage >= 0.5
            video[t] = np.maximum(video[t], coverage[..., None] * np.asarray(COLOURS[obj.colour], np.float32))
    return ToyClip(video, masks, objects)
