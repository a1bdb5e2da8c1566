"""ReplayCamera on a real episode store, the display crop (DisplayCrop) and the crop calibration helper."""

import shutil

import cv2
import numpy as np
import pytest
import yaml

from moss_vla.episodes.synthetic import make_synthetic_store, synthetic_episode
from moss_vla.paths import CONFIG_DIR
from robot.cameras import EndOfStream, make_camera, make_display_crop
from robot.cameras.replay import ReplayCamera
from robot.clock import SimClock
from robot.crop_calibration import (
    CornerPicker,
    load_crop_from_config,
    order_corners,
    pick_corners_gui,
    save_crop_to_config,
    validate_corners,
)
from robot.crop_calibration import (
    main as crop_main,
)
from robot.display_crop import DisplayCrop

# the display as a sim camera sees it (configs/camera/sim.yaml): a perspective quadrilateral
QUAD = np.array([[250, 110], [1060, 165], [1045, 600], [265, 640]], np.float32)


# --- replay ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("replay") / "episodes.zarr"
    make_synthetic_store(path, n_episodes=2, length=5, image_shape=(16, 16, 3))
    return path


def test_replay_plays_frames_and_timestamps_of_every_episode_then_ends(store):
    cam = ReplayCamera(store)
    frames = [cam.read() for _ in range(10)]
    with pytest.raises(EndOfStream):
        cam.read()
    expected = [synthetic_episode(s, 5, (16, 16, 3)) for s in (0, 1)]
    for k, f in enumerate(frames):
        ep, t = divmod(k, 5)
        np.testing.assert_array_equal(f.image, expected[ep][1]["image"][t])
        assert f.timestamp == pytest.approx(expected[ep][1]["timestamp"][t])
        assert f.index == k and f.arrival is None  # played as fast as read: no arrival time
    assert cam.image_size == (16, 16)
    assert cam.time_base == "recorded"


def test_replay_realtime_paces_on_the_clock_and_loops(store):
    clock = SimClock(t0=50.0)
    cam = ReplayCamera(store, episodes=[1], realtime=True, loop=True, clock=clock)
    ts = synthetic_episode(1, 5, (16, 16, 3))[1]["timestamp"]
    seen = []
    for _ in range(7):
        f = cam.read()
        assert f.arrival == clock.now()  # released at its recorded spacing: that is when it arrived
        seen.append((f.timestamp, clock.now()))
    # clock time advanced exactly as the recorded timestamps within the episode
    rec = np.array([s[0] for s in seen[:5]])
    now = np.array([s[1] for s in seen[:5]])
    np.testing.assert_allclose(now - now[0], rec - rec[0], atol=1e-9)
    assert seen[5][0] == pytest.approx(ts[0])  # looped back to the first frame
    assert cam.episode == 1


def test_replay_errors(store, tmp_path):
    from robot.cameras import CameraError

    with pytest.raises(CameraError, match="does not exist"):
        ReplayCamera(tmp_path / "missing.zarr")
    with pytest.raises(CameraError, match="not in the store"):
        ReplayCamera(store, episodes=[5])


def test_factory_replay_and_identity_crop(store):
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(CONFIG_DIR / "camera" / "replay.yaml")
    cfg.path = str(store)
    cfg.crop.raw_size = [16, 16]
    cfg.crop.out_size = [16, 16]
    cam = make_camera(cfg)
    crop = make_display_crop(cfg)
    img = cam.read().image
    assert crop.is_identity and crop(img) is img  # stored frames are the policy view already


# --- display crop -----------------------------------------------------------------------------------------
def test_crop_maps_the_display_quad_to_the_output_square():
    raw = np.zeros((720, 1280, 3), np.uint8)
    # a white display with a red marker near its top-left and a blue one near its bottom-right corner
    cv2.fillConvexPoly(raw, QUAD.astype(np.int32), (255, 255, 255))
    m = cv2.getPerspectiveTransform(np.float32([[0, 0], [1, 0], [1, 1], [0, 1]]), QUAD)
    for (u, v), colour in (((0.1, 0.1), (255, 0, 0)), ((0.9, 0.9), (0, 0, 255))):
        x, y = cv2.perspectiveTransform(np.float32([[[u, v]]]), m)[0, 0]
        cv2.circle(raw, (round(x), round(y)), 12, colour, -1)
    crop = DisplayCrop(QUAD, (224, 224), (720, 1280))
    out = crop(raw)
    assert out.shape == (224, 224, 3)
    assert crop.roi is not None and crop.prescale == (2, 2)  # 810x530 px -> 224: 2x2 averaging first
    assert out[22, 22, 0] > 200 and out[22, 22, 2] < 60  # red marker at (0.1, 0.1) of the display
    assert out[201, 201, 2] > 200 and out[201, 201, 0] < 60  # blue marker at (0.9, 0.9)
    assert out[112, 112].min() > 240  # white display, no background leaks in


def test_antialiasing_removes_aliasing_of_fine_stripes():
    raw = np.zeros((720, 1280, 3), np.uint8)
    raw[:, ::2] = 255  # 1-pixel stripes: a 5.7x downscale must give flat grey, not a moiré
    plain = DisplayCrop.full_frame((720, 1280))
    aliased = DisplayCrop([[0, 0], [1280, 0], [1280, 720], [0, 720]], (224, 224), (720, 1280), antialias=False)
    assert plain(raw).std() < 2 and aliased(raw).std() > 30  # 4-px box averages of 1-px stripes: flat


def test_crop_validation_and_config():
    with pytest.raises(ValueError, match="order"):
        DisplayCrop(QUAD[[1, 0, 2, 3]])  # TR, TL swapped: not TL, TR, BR, BL
    with pytest.raises(ValueError, match="outside"):
        DisplayCrop(QUAD, raw_size=(480, 640))
    with pytest.raises(ValueError, match="calibrated for"):
        DisplayCrop(QUAD, raw_size=(720, 1280))(np.zeros((480, 640, 3), np.uint8))
    crop = DisplayCrop.from_config({"corners": QUAD.tolist(), "raw_size": [720, 1280], "out_size": [224, 224]})
    np.testing.assert_array_equal(crop.corners, QUAD)
    full = DisplayCrop.from_config({"corners": None, "raw_size": [720, 1280]})
    assert full(np.zeros((720, 1280, 3), np.uint8)).shape == (224, 224, 3)


# --- crop calibration helper -----------------------------------------------------------------------------
@pytest.mark.parametrize("perm", [[0, 1, 2, 3], [2, 0, 3, 1], [3, 2, 1, 0], [1, 3, 0, 2]])
def test_order_corners_from_any_click_order(perm):
    np.testing.assert_array_equal(order_corners(QUAD[perm]), QUAD)


def test_validate_rejects_tiny_or_outside_regions():
    with pytest.raises(ValueError, match="covers only"):
        validate_corners(order_corners([[10, 10], [20, 10], [20, 20], [10, 20]]), (720, 1280))
    with pytest.raises(ValueError, match="outside"):
        validate_corners(order_corners([[10, 10], [2000, 10], [2000, 700], [10, 700]]), (720, 1280))


@pytest.mark.parametrize("name", ["zed", "sim"])
def test_save_crop_keeps_comments_and_other_keys(tmp_path, name):
    path = tmp_path / f"{name}.yaml"
    shutil.copy(CONFIG_DIR / "camera" / f"{name}.yaml", path)
    before = yaml.safe_load(path.read_text())
    comments = [ln for ln in path.read_text().splitlines() if ln.lstrip().startswith("#")]
    save_crop_to_config(path, QUAD + 1.25, (720, 1280))
    after = yaml.safe_load(path.read_text())
    assert after["crop"]["corners"] == np.round(QUAD.astype(np.float64) + 1.25, 1).tolist()
    assert after["crop"]["raw_size"] == [720, 1280]
    assert after["crop"]["out_size"] == before["crop"]["out_size"]
    assert {k: v for k, v in after.items() if k != "crop"} == {k: v for k, v in before.items() if k != "crop"}
    assert [ln for ln in path.read_text().splitlines() if ln.lstrip().startswith("#")] == comments
    np.testing.assert_allclose(load_crop_from_config(path).corners, QUAD + 1.25, atol=0.05)


def test_save_crop_adds_a_missing_block(tmp_path):
    path = tmp_path / "cam.yaml"
    path.write_text("type: uvc  # a webcam\ndevice: 0\n")
    save_crop_to_config(path, QUAD, (720, 1280))
    doc = yaml.safe_load(path.read_text())
    assert doc["device"] == 0 and doc["crop"]["corners"] == QUAD.tolist() and doc["crop"]["out_size"] == [224, 224]


def test_picker_state_undo_and_preview():
    img = np.zeros((720, 1280, 3), np.uint8)
    cv2.fillConvexPoly(img, QUAD.astype(np.int32), (0, 200, 0))
    picker = CornerPicker(img)
    for x, y in QUAD[[2, 0, 3]]:
        picker.click(x, y)
    picker.click(5, 5)  # a wrong click
    picker.undo()
    picker.click(*QUAD[1])
    assert picker.complete
    np.testing.assert_array_equal(picker.corners(), QUAD)
    assert picker.preview()[112, 112, 1] == 200
    drawn = picker.annotated()
    assert (drawn != img).any() and (img[5, 5] == 0).all()


def test_gui_with_synthetic_pygame_events(monkeypatch):
    pygame = pytest.importorskip("pygame")  # a core dependency; importorskip only for a readable error
    monkeypatch.setenv("SDL_VIDEODRIVER", "dummy")
    monkeypatch.setenv("SDL_AUDIODRIVER", "dummy")
    img = np.zeros((360, 640, 3), np.uint8)
    pygame.display.init()
    pygame.display.set_mode((10, 10))  # the event queue needs the video system
    quad = QUAD / 2
    for x, y in quad[[3, 1, 0, 2]]:
        pygame.event.post(pygame.event.Event(pygame.MOUSEBUTTONDOWN, pos=(int(x), int(y)), button=1))
    pygame.event.post(pygame.event.Event(pygame.KEYDOWN, key=pygame.K_RETURN, mod=0, unicode="\r", scancode=0))
    corners = pick_corners_gui(img, max_window=(1280, 800))
    np.testing.assert_allclose(corners, np.floor(quad), atol=1.0)
    # only the video system: an audio mixer thread (SDL, nice -20 as root) left in a process starves a
    # real-time loop running in it later
    assert not pygame.mixer.get_init()
    pygame.display.init()
    pygame.display.set_mode((10, 10))
    pygame.event.post(pygame.event.Event(pygame.KEYDOWN, key=pygame.K_ESCAPE, mod=0, unicode="\x1b", scancode=0))
    assert pick_corners_gui(img) is None


def test_cli_on_a_saved_frame_writes_the_config_and_preview(tmp_path, capsys):
    config = tmp_path / "zed.yaml"
    shutil.copy(CONFIG_DIR / "camera" / "zed.yaml", config)
    frame = tmp_path / "frame.png"
    img = np.zeros((720, 1280, 3), np.uint8)
    cv2.fillConvexPoly(img, QUAD.astype(np.int32), (255, 255, 255))
    cv2.imwrite(str(frame), img)
    preview = tmp_path / "view.png"
    corners = "corners=[" + ",".join(f"[{x:g},{y:g}]" for x, y in QUAD[[1, 3, 0, 2]]) + "]"
    rc = crop_main(["camera=zed", f"config={config}", f"image={frame}", corners, f"preview={preview}"])
    assert rc == 0
    assert yaml.safe_load(config.read_text())["crop"]["corners"] == QUAD.tolist()
    view = cv2.imread(str(preview))
    assert view.shape == (224, 224, 3) and view[20:-20, 20:-20].min() > 240
    assert "saved crop.corners" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="corners"):
        crop_main(["camera=zed", f"config={config}", f"image={frame}", "corners=[[0,0],[5,0],[5,5],[0,5]]"])
    with pytest.raises(SystemExit, match="corners must be four"):
        crop_main(["camera=zed", f"config={config}", f"image={frame}", "corners=[[0,0],[5,0]]"])
    with pytest.raises(SystemExit, match="nope.yaml does not exist"):
        crop_main(["camera=zed", f"config={tmp_path / 'nope.yaml'}", f"image={frame}", corners])
    with pytest.raises(SystemExit, match="cannot read image .*missing.png"):
        crop_main(["camera=zed", f"config={config}", f"image={tmp_path / 'missing.png'}", corners])
    assert yaml.safe_load(config.read_text())["crop"]["corners"] == QUAD.tolist()  # nothing else written


def test_cli_cfg_names_the_camera_and_its_file(capsys):
    assert crop_main(["--cfg", "camera=uvc"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["camera_name"] == "uvc" and printed["camera"]["type"] == "uvc" and printed["config"] is None
    assert crop_main(["-h"]) == 0
    assert "moss-calibrate crop" in capsys.readouterr().out
