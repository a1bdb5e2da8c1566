"""ZedCamera against a fake `pyzed.sl` (the API surface we use), injected via sys.modules.

The fake grabs HD720-like frames at exactly 30 FPS of SDK time (nanosecond timestamps), BGRA, with
the frame number encoded in the pixels, so the tests can check decimation to 10 Hz, the channel
order, the timestamps and what happens after dropped frames and failures.
"""

import enum
import sys
import time
import types
from typing import ClassVar

import numpy as np
import pytest

from robot.cameras import CameraError, make_camera
from robot.cameras.zed import ZedCamera

H, W = 36, 64  # small frames: the camera code is size agnostic
T0_NS = 1_763_000_000_000_000_000  # SDK timestamps are Unix time in ns


def make_fake_sl(drop: set[int] = frozenset(), fail_after: int | None = None, grab_sleep: float = 0.0,
                 open_status: str = "SUCCESS"):
    """A module object mimicking pyzed.sl. `drop`: frame numbers the camera skips (their time passes);
    `fail_after`: grab() fails from that grab on."""
    sl = types.ModuleType("pyzed.sl")

    class ERROR_CODE(enum.Enum):
        SUCCESS = 0
        FAILURE = 1
        CAMERA_NOT_DETECTED = 2

    class RESOLUTION(enum.Enum):
        HD720 = 0
        HD1080 = 1

    class VIEW(enum.Enum):
        LEFT = 0
        RIGHT = 1

    class TIME_REFERENCE(enum.Enum):
        IMAGE = 0
        CURRENT = 1

    class DEPTH_MODE(enum.Enum):
        NONE = 0
        PERFORMANCE = 1

    class InitParameters:
        def __init__(self):
            self.camera_resolution = RESOLUTION.HD1080
            self.camera_fps = 0
            self.depth_mode = DEPTH_MODE.PERFORMANCE
            self.serial = None

        def set_from_serial_number(self, serial):
            self.serial = serial

        def set_from_svo_file(self, path):
            self.svo = path

    class RuntimeParameters:
        pass

    class Timestamp:
        def __init__(self, ns):
            self._ns = ns

        def get_nanoseconds(self):
            return self._ns

    class Mat:
        def __init__(self):
            self.data = None

        def get_data(self):
            return self.data

    class Camera:
        instances: ClassVar[list] = []

        def __init__(self):
            self.frame = -1  # number of the frame last grabbed (SDK time = frame / 30 s)
            self.grabs = 0
            self.retrieved = 0
            self.opened_with = None
            self.closed = False
            Camera.instances.append(self)

        def open(self, init):
            self.opened_with = init
            return ERROR_CODE[open_status]

        def grab(self, runtime):
            assert isinstance(runtime, RuntimeParameters)
            if grab_sleep:
                time.sleep(grab_sleep)
            self.grabs += 1
            if fail_after is not None and self.grabs > fail_after:
                return ERROR_CODE.FAILURE
            self.frame += 1
            while self.frame in drop:
                self.frame += 1
            return ERROR_CODE.SUCCESS

        def retrieve_image(self, mat, view):
            assert view == VIEW.LEFT
            self.retrieved += 1
            bgra = np.zeros((H, W, 4), np.uint8)
            bgra[..., 0] = self.frame % 256  # blue = frame number
            bgra[..., 1] = 100  # green
            bgra[..., 2] = 200  # red
            bgra[..., 3] = 255
            mat.data = bgra

        def get_timestamp(self, ref):
            assert ref == TIME_REFERENCE.IMAGE
            return Timestamp(T0_NS + round(self.frame * 1e9 / 30))

        def close(self):
            self.closed = True

    for obj in (ERROR_CODE, RESOLUTION, VIEW, TIME_REFERENCE, DEPTH_MODE, InitParameters, RuntimeParameters,
                Mat, Camera):
        setattr(sl, obj.__name__, obj)
    return sl


@pytest.fixture
def fake_sdk(monkeypatch):
    def install(**kwargs):
        sl = make_fake_sl(**kwargs)
        pkg = types.ModuleType("pyzed")
        pkg.sl = sl
        monkeypatch.setitem(sys.modules, "pyzed", pkg)
        monkeypatch.setitem(sys.modules, "pyzed.sl", sl)
        return sl

    return install


def test_missing_sdk_error_says_how_to_install_or_fall_back(monkeypatch):
    monkeypatch.setitem(sys.modules, "pyzed", None)
    monkeypatch.setitem(sys.modules, "pyzed.sl", None)
    with pytest.raises(CameraError) as info:
        ZedCamera()
    msg = str(info.value)
    assert "ZED SDK" in msg and "get_python_api.py" in msg
    assert "camera=uvc" in msg and "camera=sim" in msg
    assert "pip install pyzed" in msg  # the warning about the unrelated PyPI package


def test_decimates_30fps_to_even_10hz_with_sdk_timestamps_and_rgb(fake_sdk):
    sl = fake_sdk()
    cam = ZedCamera(background=False, serial_number=1234)
    frames = [cam.read(timeout=1.0) for _ in range(6)]
    sdk = sl.Camera.instances[0]
    init = sdk.opened_with
    assert init.camera_resolution == sl.RESOLUTION.HD720 and init.camera_fps == 30
    assert init.depth_mode == sl.DEPTH_MODE.NONE and init.serial == 1234
    # every third SDK frame: blue channel holds the SDK frame number
    assert [int(f.image[0, 0, 2]) for f in frames] == [0, 3, 6, 9, 12, 15]
    assert [f.index for f in frames] == list(range(6))
    # BGRA -> RGB: red 200, green 100, blue = frame number; a new array, not the SDK buffer
    assert frames[1].image.shape == (H, W, 3) and frames[1].image.dtype == np.uint8
    assert tuple(frames[1].image[0, 0]) == (200, 100, 3)
    assert frames[0].image[0, 0, 2] == 0, "frame 0 was overwritten: the SDK buffer was not copied"
    ts = np.array([f.timestamp for f in frames])
    assert ts[0] == pytest.approx(T0_NS * 1e-9)
    np.testing.assert_allclose(np.diff(ts), 0.1, atol=1e-6)
    assert cam.n_grabbed == 16 and cam.n_kept == 6
    assert sdk.retrieved == 6  # frames the decimator drops are never retrieved nor converted
    cam.close()
    assert sdk.closed


def test_dropped_frames_keep_the_10hz_grid(fake_sdk):
    fake_sdk(drop={3, 4})  # frame 3 (due) and 4 missing: the next kept frame is 5, then back on grid
    cam = ZedCamera(background=False)
    numbers = [int(cam.read(timeout=1.0).image[0, 0, 2]) for _ in range(5)]
    cam.close()
    assert numbers == [0, 5, 8, 11, 14]  # late frame restarts the grid at 5; spacing stays 100 ms


def test_background_thread_returns_only_new_frames(fake_sdk):
    fake_sdk(grab_sleep=0.002)
    with ZedCamera(background=True) as cam:
        frames = [cam.read(timeout=2.0) for _ in range(4)]
    idx = [f.index for f in frames]
    assert idx == sorted(set(idx)), "read() returned a frame twice or out of order"
    gaps = np.diff([f.timestamp for f in frames]) / 0.1
    np.testing.assert_allclose(gaps, np.round(gaps), atol=1e-5)  # multiples of 100 ms (newest frame wins)
    assert (np.round(gaps) >= 1).all()


@pytest.mark.parametrize("background", [True, False])
def test_grab_failure_becomes_a_camera_error(fake_sdk, background):
    fake_sdk(fail_after=1)  # frame 0, then the camera is gone
    cam = ZedCamera(background=background, grab_timeout=0.2)
    assert int(cam.read(timeout=1.0).image[0, 0, 2]) == 0
    with pytest.raises(CameraError, match="still connected"):
        cam.read(timeout=1.0)
    cam.close()


def test_open_failure_and_invalid_fps(fake_sdk):
    fake_sdk(open_status="CAMERA_NOT_DETECTED")
    with pytest.raises(CameraError, match="CAMERA_NOT_DETECTED.*camera=uvc"):
        ZedCamera(background=False)
    with pytest.raises(CameraError, match="grab_fps=25"):
        ZedCamera(grab_fps=25)


def test_factory_builds_zed_from_the_config(fake_sdk):
    from omegaconf import OmegaConf

    from moss_vla.paths import CONFIG_DIR

    sl = fake_sdk()
    cfg = OmegaConf.load(CONFIG_DIR / "camera" / "zed.yaml")
    cfg.background = False
    cam = make_camera(cfg)
    assert isinstance(cam, ZedCamera)
    assert sl.Camera.instances[0].opened_with.camera_fps == 30
    assert cam.read().image.shape == (H, W, 3)
    assert cam.time_base == "unix"  # the SDK's image time of a live camera
    cam.close()


def test_an_svo_file_plays_with_its_recorded_timestamps(fake_sdk, tmp_path):
    fake_sdk()
    svo = tmp_path / "take.svo"
    svo.write_bytes(b"")
    cam = ZedCamera(svo_file=str(svo), background=False)
    assert cam.time_base == "recorded"
    cam.close()
