"""UvcCamera: the real OpenCV path on a video file written by the test, and a fake cv2.VideoCapture
for device behaviour (requested mode, side-by-side left half, BGR->RGB, missing device)."""

from typing import ClassVar

import cv2
import numpy as np
import pytest

from robot.cameras import CameraError, EndOfStream, make_camera
from robot.cameras.uvc import UvcCamera, take_left_half
from robot.clock import RealClock


def _frame_bgr(i: int, h: int = 90, w: int = 320) -> np.ndarray:
    """Side-by-side stereo frame: left half grey level 8*i, right half pure red (BGR)."""
    img = np.zeros((h, w, 3), np.uint8)
    img[:, : w // 2] = 8 * i
    img[:, w // 2:, 2] = 255
    return img


@pytest.fixture(scope="module")
def sbs_video(tmp_path_factory):
    """30 frames of a 320x90 side-by-side stream at 30 FPS (MJPG in AVI: available in every OpenCV build)."""
    path = tmp_path_factory.mktemp("uvc") / "sbs.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30.0, (320, 90))
    assert writer.isOpened(), "OpenCV cannot write MJPG/AVI here"
    for i in range(30):
        writer.write(_frame_bgr(i))
    writer.release()
    return path


def test_real_opencv_capture_of_a_video_file_decimates_and_takes_left_half(sbs_video):
    cam = UvcCamera(str(sbs_video), grab_fps=30, fps=10)
    assert cam.is_file and not cam.background and cam.timestamps == "stream"
    frames = []
    with pytest.raises(EndOfStream):
        while True:
            frames.append(cam.read(timeout=2.0))
    cam.close()
    assert len(frames) == 10  # 30 frames at 30 FPS -> 10 at 10 Hz
    assert frames[0].image.shape == (90, 160, 3)  # left half of the side-by-side frame
    # grey level encodes the source frame: every third one is kept (MJPG is lossy: +-3 levels)
    levels = [float(f.image.mean()) for f in frames]
    np.testing.assert_allclose(levels, [8 * i for i in range(0, 30, 3)], atol=3)
    # the right half (red) never leaks into the left view
    assert all(f.image[..., 0].mean() < 8 * 27 + 4 for f in frames)
    np.testing.assert_allclose(np.diff([f.timestamp for f in frames]), 0.1, atol=2e-3)
    assert cam.n_grabbed == 30


class FakeCapture:
    """Stands in for cv2.VideoCapture(device, backend) of a webcam."""

    opened = True
    instances: ClassVar[list] = []

    def __init__(self, device, backend=cv2.CAP_ANY):
        self.device, self.backend = device, backend
        self.props = {cv2.CAP_PROP_FPS: 30.0, cv2.CAP_PROP_FRAME_WIDTH: 640.0, cv2.CAP_PROP_FRAME_HEIGHT: 480.0}
        self.set_calls = {}
        self.i = 0
        self.released = False
        FakeCapture.instances.append(self)

    def isOpened(self):
        return self.opened

    def set(self, prop, value):
        self.set_calls[prop] = value
        if prop in (cv2.CAP_PROP_FRAME_WIDTH, cv2.CAP_PROP_FRAME_HEIGHT):
            self.props[prop] = value  # this fake camera supports the requested mode
        return True

    def get(self, prop):
        if prop == cv2.CAP_PROP_POS_MSEC:
            return (self.i - 1) * 1000.0 / 30.0
        return self.props.get(prop, 0.0)

    def read(self):
        h, w = int(self.props[cv2.CAP_PROP_FRAME_HEIGHT]), int(self.props[cv2.CAP_PROP_FRAME_WIDTH])
        img = np.zeros((h, w, 3), np.uint8)
        img[:, : w // 2] = (10, 20, 30)  # BGR left
        img[:, w // 2:] = (200, 200, 200)
        img[0, 0, 0] = self.i % 256
        self.i += 1
        return True, img

    def release(self):
        self.released = True


@pytest.fixture
def fake_capture(monkeypatch):
    FakeCapture.instances = []
    FakeCapture.opened = True
    monkeypatch.setattr(cv2, "VideoCapture", FakeCapture)
    return FakeCapture


def test_device_gets_the_requested_mode_and_gives_rgb_left_view(fake_capture):
    cam = UvcCamera(0, width=2560, height=720, grab_fps=30, fps=10, timestamps="stream", background=False)
    cap = fake_capture.instances[0]
    assert cap.device == 0
    assert cap.set_calls[cv2.CAP_PROP_FRAME_WIDTH] == 2560 and cap.set_calls[cv2.CAP_PROP_FRAME_HEIGHT] == 720
    assert cap.set_calls[cv2.CAP_PROP_FPS] == 30 and cap.set_calls[cv2.CAP_PROP_BUFFERSIZE] == 1
    frames = [cam.read(timeout=1.0) for _ in range(3)]
    cam.close()
    assert cap.released
    assert all(f.arrival is None for f in frames)  # no loop clock given: the loop uses when read() returned
    assert frames[0].image.shape == (720, 1280, 3)
    assert tuple(frames[1].image[5, 5]) == (30, 20, 10)  # BGR -> RGB
    assert [int(f.image[0, 0, 2]) for f in frames] == [0, 3, 6]  # blue channel carries the frame number
    np.testing.assert_allclose(np.diff([f.timestamp for f in frames]), 0.1, atol=1e-6)


def test_device_in_background_with_wall_clock_timestamps(fake_capture, monkeypatch):
    from robot.cameras import uvc

    clock = {"t": 1000.0}

    def fake_time():  # each grab advances wall time by one 30 FPS frame
        clock["t"] += 1 / 30
        return clock["t"]

    monkeypatch.setattr(uvc.time, "time", fake_time)
    loop_clock = RealClock()
    with UvcCamera("0", stereo="none", width=None, height=None, clock=loop_clock) as cam:  # "0": device index
        assert cam.background and cam.timestamps == "wall"
        f1, f2 = cam.read(timeout=2.0), cam.read(timeout=2.0)
        read_at = loop_clock.now()
    assert f1.image.shape == (480, 640, 3)  # stereo: none keeps the full frame
    assert f2.index > f1.index and f2.timestamp > f1.timestamp
    # the grab thread stamps each kept frame's arrival on the loop's clock (a frame-locked loop ticks on it)
    assert 0.0 <= f1.arrival <= f2.arrival <= read_at


def test_missing_device_names_the_index_and_suggests_sim(fake_capture):
    fake_capture.opened = False
    with pytest.raises(CameraError) as info:
        UvcCamera(3)
    msg = str(info.value)
    assert "index 3" in msg and "/dev/video3" in msg and "camera=sim" in msg
    assert fake_capture.instances[0].released


def test_missing_file_and_bad_options():
    with pytest.raises(CameraError, match="camera.device"):
        UvcCamera("/nonexistent/video.avi")
    with pytest.raises(ValueError, match="stereo"):
        UvcCamera(0, stereo="right")


def test_left_half_rule():
    assert take_left_half(np.zeros((720, 2560, 3), np.uint8), "auto").shape == (720, 1280, 3)
    assert take_left_half(np.zeros((376, 1344, 3), np.uint8), "auto").shape == (376, 672, 3)
    assert take_left_half(np.zeros((720, 1280, 3), np.uint8), "auto").shape == (720, 1280, 3)
    assert take_left_half(np.zeros((720, 1280, 3), np.uint8), "left").shape == (720, 640, 3)


def test_factory_builds_uvc_from_the_config(sbs_video):
    from omegaconf import OmegaConf

    from moss_vla.paths import CONFIG_DIR

    cfg = OmegaConf.load(CONFIG_DIR / "camera" / "uvc.yaml")
    cfg.device = str(sbs_video)
    cam = make_camera(cfg)
    assert isinstance(cam, UvcCamera)
    assert cam.read().image.shape == (90, 160, 3)
    assert cam.time_base == "recorded"  # a file's stream positions, not the wall clock of a session
    cam.close()
    with UvcCamera(str(sbs_video), timestamps="wall") as cam:
        assert cam.time_base == "unix"
