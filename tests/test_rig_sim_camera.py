"""Virtual ZED (robot/sim_camera.py): frame timing, 60 Hz display sampling, geometry through the
shared DisplayCrop, determinism."""

import numpy as np
import pytest

from robot.clock import SimClock
from robot.display_crop import DisplayCrop
from robot.interfaces import Camera
from robot.sim_camera import SimCamera, SimCameraError

CORNERS = [[250, 110], [1060, 165], [1045, 600], [265, 640]]
SCREEN = (360, 640)


class Recorder:
    """A render function that remembers the display times it was asked for."""

    def __init__(self, image_fn=None):
        self.times = []
        self.image_fn = image_fn or (lambda t: np.full((*SCREEN, 3), 40, np.uint8))

    def __call__(self, t):
        self.times.append(t)
        return self.image_fn(t)


def quadrant_screen(t):
    img = np.zeros((*SCREEN, 3), np.uint8)
    img[: SCREEN[0] // 2, : SCREEN[1] // 2] = 255  # top-left quadrant white
    return img


def make(render, clock=None, **kw):
    return SimCamera(render, clock or SimClock(), CORNERS, **kw)


def test_frames_are_raw_zed_sized_and_timed_at_10hz_with_bounded_jitter():
    clock = SimClock()
    cam = make(Recorder(), clock, jitter_std=0.002)
    assert isinstance(cam, Camera)
    stamps = []
    for k in range(20):
        clock.sleep_until(k * 0.1)
        f = cam.read()
        assert f.image.shape == (720, 1280, 3) and f.image.dtype == np.uint8
        assert f.index == k
        stamps.append(f.timestamp)
    offsets = np.array(stamps) - (np.arange(20) * 0.1 + cam.phase)
    assert np.all(np.abs(offsets) <= 0.006 + 1e-9) and np.std(offsets) > 0  # jitter, clipped to 3 std
    assert clock.now() == pytest.approx(1.9)  # frames were ready before each tick: no waiting


def test_the_display_is_sampled_at_60hz():
    rec = Recorder()
    clock = SimClock()
    cam = make(rec, clock)
    for k in range(10):
        clock.sleep_until(k * 0.1)
        f = cam.read()
        shown = rec.times[-1]
        assert shown == pytest.approx(np.floor(f.timestamp * 60 + 1e-9) / 60)
        assert 0 <= f.timestamp - shown < 1 / 60


def test_read_waits_on_the_clock_for_the_next_frame_and_skips_to_the_newest():
    clock = SimClock()
    cam = make(Recorder(), clock, phase=0.0, latency=0.03, jitter_std=0.0)
    f0 = cam.read()  # frame 0 is available at 0.03: the sim clock advances to it
    assert f0.index == 0 and clock.now() == pytest.approx(0.03) and f0.arrival == pytest.approx(0.03)
    clock.sleep_until(0.52)  # the reader was late: frames 1-3 are skipped, 4 is the newest, 5 comes at 0.53
    f = cam.read()
    assert f.index == 4 and f.timestamp == pytest.approx(0.4) and f.arrival == pytest.approx(0.43)  # waited
    with pytest.raises(SimCameraError, match="timeout"):
        cam.read(timeout=0.005)
    f = cam.read()
    assert f.index == 5 and clock.now() == pytest.approx(0.53)


def test_the_shared_display_crop_recovers_the_screen_layout():
    cam = make(quadrant_screen, noise_std=0.0, exposure_gain=(1.0, 1.0), exposure_drift=0.0, exposure_step_rate=0.0)
    raw = cam.read().image
    crop = DisplayCrop(CORNERS, (224, 224), (720, 1280))(raw)
    tl, br = crop[10:100, 10:100].mean(), crop[124:214, 124:214].mean()
    tr, bl = crop[10:100, 124:214].mean(), crop[124:214, 10:100].mean()
    assert tl > 200 and max(tr, bl, br) < 60  # white quadrant where it was on the screen; black lifted to ~18
    assert min(tr, bl, br) > 8
    # outside the display the background scene is visible, not the screen
    assert abs(int(raw[20, 20].mean()) - 255) > 30


def test_frames_are_deterministic_per_seed_and_vary_across_seeds():
    def frame(seed, k=3):
        clock = SimClock()
        clock.sleep_until(k * 0.1)
        return make(quadrant_screen, clock, seed=seed).read()

    a, b, c = frame(1), frame(1), frame(2)
    assert a.timestamp == b.timestamp and np.array_equal(a.image, b.image)
    assert a.timestamp != c.timestamp and not np.array_equal(a.image, c.image)
    # noise: neighbouring pixels of a flat region differ, by a few grey levels
    patch = a.image[300:340, 400:440].astype(int)
    assert 0.5 < patch.std() < 10


def test_invalid_corners_are_rejected():
    with pytest.raises(ValueError, match="display_corners"):
        SimCamera(Recorder(), SimClock(), [[0, 0], [2000, 0], [2000, 700], [0, 700]])
