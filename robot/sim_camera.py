"""Virtual ZED: a rendered display filmed by a simulated 720x1280 camera (implements `Camera`).

Frame k is captured at  t_k = k / fps + phase + jitter_k  (jitter ~ N(0, jitter_std), clipped to
+-3 std) and can be read `latency` seconds later. The monitor refreshes at `display_fps`, so the
picture in frame k is `render(floor(t_k * display_fps) / display_fps)`. That picture is warped by a
perspective transform onto the display's corners in a static background (wall, table, monitor
bezel), then the camera effects are applied: Gaussian blur (focus, 3x3 kernel), exposure (a slow
drift plus occasional auto-exposure steps) and sensor noise. The output is the raw RGB frame a ZED gives; the
control loop crops it with the same `robot.display_crop.DisplayCrop` as for a real camera.

Every random quantity of frame k is drawn from a generator seeded with (seed, k), so a frame does
not depend on which frames were read before it (a late reader skips frames without changing them).
The background scene comes from `scene_seed` (the same lab in every episode).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import cv2
import numpy as np

from robot.cameras.grabber import CameraError
from robot.clock import Clock
from robot.interfaces import Frame


class SimCameraError(CameraError):
    """The simulated camera cannot deliver a frame (e.g. `read(timeout)` would have to wait longer)."""


def _background(raw_size: tuple[int, int], corners: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A static lab scene: wall gradient, table, a few blurred objects and the monitor bezel."""
    h, w = raw_size
    yy = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None, None]
    wall = np.array([150, 148, 140], np.float32) * (0.75 + 0.35 * yy)
    img = np.empty((h, w, 3), np.float32)
    img[:] = wall
    table_y = int(max(corners[:, 1]) + 0.08 * h)
    img[table_y:] = np.array([105, 85, 65], np.float32) * (0.9 + 0.2 * yy[table_y:])
    for _ in range(8):  # clutter on the wall and the table
        x0, y0 = int(rng.uniform(0, w)), int(rng.uniform(0, h))
        bw, bh = int(rng.uniform(30, 200)), int(rng.uniform(20, 150))
        color = rng.uniform(40, 230, 3)
        cv2.rectangle(img, (x0, y0), (x0 + bw, y0 + bh), color.tolist(), thickness=-1)
    img = cv2.GaussianBlur(img, (0, 0), 3.0)
    # monitor bezel: the display quad grown by a few percent around its centre, dark grey
    centre = corners.mean(axis=0)
    bezel = centre + (corners - centre) * 1.04
    cv2.fillPoly(img, [np.round(bezel).astype(np.int32)], (28, 28, 30), lineType=cv2.LINE_AA)
    return np.clip(img, 0, 255).astype(np.uint8)


class SimCamera:
    """Simulated camera filming `render(t)` (display time t, seconds) on a `Clock` (see module docstring)."""

    name = "sim"
    time_base = "clock"  # frames are stamped with their capture time on `clock`

    def __init__(
        self,
        render: Callable[[float], np.ndarray],
        clock: Clock,
        display_corners: Sequence[Sequence[float]],
        raw_size: Sequence[int] = (720, 1280),
        fps: float = 10.0,
        display_fps: float = 60.0,
        phase: float = -0.04,
        latency: float = 0.03,
        jitter_std: float = 0.002,
        display_t0: float = 0.0,
        blur_sigma: float = 0.8,
        noise_std: float = 3.0,
        exposure_gain: Sequence[float] = (0.9, 1.1),
        exposure_drift: float = 0.03,
        exposure_step_rate: float = 0.05,
        exposure_step_size: float = 0.08,
        black_level: float = 18.0,
        seed: int = 0,
        scene_seed: int = 0,
    ) -> None:
        self.render = render
        self.clock = clock
        self.raw_size = (int(raw_size[0]), int(raw_size[1]))
        self.corners = np.asarray(display_corners, dtype=np.float32)
        h, w = self.raw_size
        if self.corners.shape != (4, 2) or (self.corners < 0).any() or (self.corners[:, 0] > w).any() or (
                self.corners[:, 1] > h).any():
            raise ValueError(f"SimCamera: display_corners must be 4 [x, y] points (TL, TR, BR, BL) inside the "
                             f"{w}x{h} image, got {np.asarray(display_corners).tolist()}")
        self.fps, self.display_fps = float(fps), float(display_fps)
        self.phase, self.latency, self.jitter_std = float(phase), float(latency), float(jitter_std)
        self.display_t0 = float(display_t0)
        self.blur_sigma, self.noise_std, self.black_level = float(blur_sigma), float(noise_std), float(black_level)
        self.seed = int(seed)
        # the scene (background) is the same lab in every episode; the rest varies with the episode seed
        self.background = _background(self.raw_size, self.corners, np.random.default_rng([int(scene_seed), 7]))
        rng = np.random.default_rng([self.seed, 0xC0FFEE])
        # exposure: per-camera base gain, a slow sinusoidal drift, and auto-exposure steps (Poisson times)
        self._gain0 = float(rng.uniform(*exposure_gain))
        self._drift = (exposure_drift, rng.uniform(0.05, 0.2), rng.uniform(0, 2 * np.pi))
        n_steps = rng.poisson(exposure_step_rate * 3600.0)
        self._step_times = np.sort(rng.uniform(0.0, 3600.0, n_steps))
        self._step_sizes = rng.choice([-1.0, 1.0], n_steps) * exposure_step_size
        # display quad bounding box: only that region is warped (the rest is the static background)
        x0, y0 = np.floor(self.corners.min(axis=0)).astype(int)
        x1, y1 = np.ceil(self.corners.max(axis=0)).astype(int)
        self._roi = (max(y0, 0), min(y1, h), max(x0, 0), min(x1, w))
        self._maps: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
        # sensor noise: a bank of signed noise frames split into saturating positive/negative uint8 parts,
        # indexed with a random offset per frame (drawing 2.7 M normals per frame would cost ~30 ms)
        pad = 32
        noise = rng.normal(0.0, self.noise_std, (h + pad, w + pad, 3)).round()
        self._noise_pos = np.clip(noise, 0, 255).astype(np.uint8)
        self._noise_neg = np.clip(-noise, 0, 255).astype(np.uint8)
        self._noise_pad = pad
        self._last_index = -1

    # --- timing -------------------------------------------------------------------------------------
    def _rng(self, k: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, int(k) + 1])

    def capture_time(self, k: int) -> float:
        """Capture time of frame k on the clock (nominal slot + phase + jitter)."""
        j = float(np.clip(self._rng(k).normal(0.0, 1.0), -3.0, 3.0)) * self.jitter_std
        return k / self.fps + self.phase + j

    def available_time(self, k: int) -> float:
        return self.capture_time(k) + self.latency

    def _newest_available(self, now: float) -> int:
        """The newest frame index available at `now` (-1 if none yet)."""
        k = int(np.floor((now - self.phase - self.latency) * self.fps)) + 1
        while k >= 0 and self.available_time(k) > now:
            k -= 1
        return k

    # --- Camera interface ---------------------------------------------------------------------------
    def read(self, timeout: float | None = None) -> Frame:
        """The newest frame not returned yet; waits (on the clock) for the next one if there is none."""
        now = self.clock.now()
        k = self._newest_available(now)
        if k <= self._last_index:
            k = max(self._last_index + 1, 0)
            ready = self.available_time(k)
            if timeout is not None and ready - now > timeout:
                raise SimCameraError(f"SimCamera: next frame {k} is due in {ready - now:.3f} s > timeout {timeout} s")
            self.clock.sleep_until(ready)
        self._last_index = k
        t = self.capture_time(k)
        return Frame(image=self.capture(k, t), timestamp=t, index=k, arrival=self.available_time(k))

    def close(self) -> None:
        pass

    # --- image formation ------------------------------------------------------------------------------
    def display_time(self, t_capture: float) -> float:
        """What the monitor shows at capture time t: the last refresh at or before it (display time)."""
        t = t_capture - self.display_t0
        return np.floor(t * self.display_fps + 1e-9) / self.display_fps

    def exposure_gain(self, t: float) -> float:
        amp, freq, ph = self._drift
        steps = self._step_sizes[: np.searchsorted(self._step_times, t)].sum()
        return float(np.clip(self._gain0 * (1.0 + amp * np.sin(2 * np.pi * freq * t + ph)) + steps, 0.6, 1.5))

    def screen_homography(self, screen_hw: tuple[int, int]) -> np.ndarray:
        """3x3 map from screen pixels (x, y) of a (h, w) render to raw camera pixels."""
        sh, sw = screen_hw
        src = np.array([[0, 0], [sw, 0], [sw, sh], [0, sh]], dtype=np.float32)
        return cv2.getPerspectiveTransform(src, self.corners)

    def _screen_maps(self, screen_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """Fixed-point remap tables: for each pixel of the display's bounding box in the raw image, where
        to sample the screen. Same geometry as warpPerspective, but the per-pixel division is done once.
        Against a capture with warpPerspective: benchmarks/results/sim_rig.json (components, camera_remap
        vs camera_warp_reference; docs/results.md section 5); the pictures differ by rounding only."""
        y0, y1, x0, x1 = self._roi
        inv = np.linalg.inv(self.screen_homography(screen_hw))
        xs, ys = np.meshgrid(np.arange(x0, x1, dtype=np.float64), np.arange(y0, y1, dtype=np.float64))
        p = np.stack([xs, ys, np.ones_like(xs)], axis=-1) @ inv.T
        map_x = (p[..., 0] / p[..., 2]).astype(np.float32)
        map_y = (p[..., 1] / p[..., 2]).astype(np.float32)
        return cv2.convertMaps(map_x, map_y, cv2.CV_16SC2)

    def capture(self, k: int, t: float) -> np.ndarray:
        """Raw (H, W, 3) uint8 RGB frame k captured at clock time t."""
        screen = self.render(self.display_time(t))
        if screen.dtype != np.uint8 or screen.ndim != 3 or screen.shape[2] != 3:
            raise ValueError(f"SimCamera: render() must return an RGB uint8 (h, w, 3) image, got "
                             f"{screen.dtype} {screen.shape}")
        y0, y1, x0, x1 = self._roi
        maps = self._maps.get(screen.shape[:2])
        if maps is None:
            maps = self._maps[screen.shape[:2]] = self._screen_maps(screen.shape[:2])
        # a monitor's black is grey on camera: lift the black level before warping it into the scene
        if self.black_level > 0:
            screen = cv2.convertScaleAbs(screen, alpha=1.0 - self.black_level / 255.0, beta=self.black_level)
        img = self.background.copy()
        roi = np.ascontiguousarray(img[y0:y1, x0:x1])
        cv2.remap(screen, maps[0], maps[1], cv2.INTER_LINEAR, dst=roi, borderMode=cv2.BORDER_TRANSPARENT)
        if self.blur_sigma > 0:
            # focus blur; only the display region changes from frame to frame (the background was blurred
            # once when it was made), so only it is blurred here: half the pixels, same picture
            roi = cv2.GaussianBlur(roi, (3, 3), self.blur_sigma)
        img[y0:y1, x0:x1] = roi
        rng = self._rng(k)
        rng.normal()  # the first draw is the capture jitter
        img = cv2.convertScaleAbs(img, alpha=self.exposure_gain(t), beta=0.0)
        if self.noise_std > 0:
            h, w = self.raw_size
            dy, dx = rng.integers(0, self._noise_pad, 2)
            img = cv2.add(img, self._noise_pos[dy:dy + h, dx:dx + w])
            dy, dx = rng.integers(0, self._noise_pad, 2)
            img = cv2.subtract(img, self._noise_neg[dy:dy + h, dx:dx + w])
        return img
