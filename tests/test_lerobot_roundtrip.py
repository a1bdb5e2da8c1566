"""LeRobot both ways (moss_vla/episodes/lerobot_export.py, lerobot_import.py): store -> export -> import gives
back the same arrays and metadata (images exactly with an image export, within the codec's tolerance with
video), training runs on an imported store, a foreign Franka-like dataset maps what fits our layout (7 joints
+ gripper, resampled from 30 to 10 Hz) and everything else is one clear error naming the feature or value.
Datasets are built locally with lerobot 0.4.4's own writer; nothing is downloaded."""

from __future__ import annotations

import json

import numpy as np
import pytest

from moss_vla.data_cli import main
from moss_vla.episodes import EpisodeStore
from moss_vla.episodes.check import check_store
from moss_vla.episodes.synthetic import make_synthetic_store

pytestmark = pytest.mark.filterwarnings("ignore:The video decoding and encoding capabilities of torchvision:UserWarning")
SHAPE = (64, 64, 3)  # the AV1 encoder's minimum frame size


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    path = tmp_path_factory.mktemp("rt") / "src.zarr"
    make_synthetic_store(path, 3, length=6, image_shape=SHAPE)
    return path


def _run(capsys, *argv) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out + out.err


def _same_store(a, b, image_tol: float | None) -> None:
    sa, sb = EpisodeStore(a), EpisodeStore(b)
    assert sb.n_episodes == sa.n_episodes and sb.fps == sa.fps
    for i in range(sa.n_episodes):
        ea, eb = sa.episode(i), sb.episode(i)
        for k in sa.keys:
            if k == "image" and image_tol is not None:
                err = np.abs(ea[k].astype(float) - eb[k].astype(float)).mean()
                assert err < image_tol, f"episode {i}: mean abs image error {err:.1f} after the video round trip"
            else:
                np.testing.assert_array_equal(eb[k], ea[k], err_msg=f"episode {i} key {k}")
                assert eb[k].dtype == ea[k].dtype
        ma, mb = sa.episode_meta(i), sb.episode_meta(i)
        for key in ("task", "instruction", "seed", "operator", "label_names", "phase_names", "success", "start_time"):
            assert mb[key] == ma[key], key
    assert sb.meta["camera"] == sa.meta["camera"]
    assert check_store(b).ok


def test_image_export_round_trip_is_exact_and_keeps_every_key(src, tmp_path, capsys):
    dst = tmp_path / "lr"
    assert _run(capsys, "export-lerobot", src, dst, "--images")[0] == 0
    info = json.loads((dst / "meta" / "info.json").read_text())
    assert {"moss.stim_label", "moss.stim_phase", "moss.stim_xy", "moss.stim_interaction",
            "moss.stim_time_to_deadline", "moss.timestamp"} <= set(info["features"])
    code, out = _run(capsys, "import-lerobot", dst, tmp_path / "back.zarr")
    assert code == 0 and "wrote 3 episodes, 18 frames" in out, out
    _same_store(src, tmp_path / "back.zarr", image_tol=None)


def test_video_round_trip_and_training_on_the_imported_store(src, tmp_path, capsys):
    from hydra import compose, initialize_config_dir

    from moss_vla.paths import CONFIG_DIR
    from moss_vla.train import train

    dst = tmp_path / "lr"
    assert _run(capsys, "export-lerobot", src, dst)[0] == 0
    assert _run(capsys, "import-lerobot", dst, tmp_path / "back.zarr")[0] == 0
    _same_store(src, tmp_path / "back.zarr", image_tol=12)
    code, out = _run(capsys, "import-lerobot", dst, tmp_path / "small.zarr", "--image-size", "32", "--episodes", "0", "2")
    assert code == 0, out
    small = EpisodeStore(tmp_path / "small.zarr")
    assert small.meta["image_shape"] == [32, 32, 3] and [m["seed"] for m in small.episode_metas] == [0, 2]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", [f"data.paths=[{tmp_path / 'small.zarr'}]", f"out_dir={tmp_path / 'run'}",
                                "policy=moss", "model=tiny", "model.input_image_size=32", "steps=2", "batch_size=4",
                                "log_every=1", "val_every=1000", "val_batches=1", "dataset.val_fraction=0"])
    res = train(cfg)
    assert res.step == 2 and (res.checkpoint / "model.safetensors").is_file()


def _foreign(root, fps: int = 30, n_eps: int = 2, length: int = 9):
    """A Franka-like LeRobot dataset as public ones come: a 48x32 front camera, 7 joint positions and a separate
    gripper, a 7-D joint action, an end-effector pose; at 30 fps."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    joints = [f"joint_{i}" for i in range(7)]
    feats = {
        "observation.images.front": {"dtype": "image", "shape": (32, 48, 3), "names": ["height", "width", "channels"]},
        "observation.state": {"dtype": "float32", "shape": (7,), "names": joints},
        "observation.gripper": {"dtype": "float32", "shape": (1,), "names": ["width"]},
        "observation.ee_pose": {"dtype": "float32", "shape": (7,), "names": ["x", "y", "z", "qx", "qy", "qz", "qw"]},
        "action": {"dtype": "float32", "shape": (7,), "names": joints},
    }
    ds = LeRobotDataset.create(repo_id="local/franka", fps=fps, features=feats, root=root, robot_type="franka",
                               use_videos=False)
    rng = np.random.default_rng(0)
    data = []
    for _ in range(n_eps):
        ep = {k: rng.normal(size=(length, *f["shape"])).astype(np.float32) for k, f in feats.items()
              if f["dtype"] == "float32"}
        ep["observation.images.front"] = rng.integers(0, 255, (length, 32, 48, 3), dtype=np.uint8)
        for t in range(length):
            ds.add_frame({**{k: v[t] for k, v in ep.items()}, "task": "pick up the cube"})
        ds.save_episode()
        data.append(ep)
    ds.finalize()
    return data


def test_a_foreign_franka_dataset_maps_joints_and_gripper_at_10_hz(tmp_path, capsys):
    root = tmp_path / "franka"
    data = _foreign(root)
    out = tmp_path / "f.zarr"
    code, text = _run(capsys, "import-lerobot", root, out, "--gripper-key", "observation.gripper", "--image-size", "32")
    assert code == 0 and "1 of every 3 source frames (10 Hz)" in text, text
    store = EpisodeStore(out)
    assert store.n_episodes == 2 and store.fps == 10 and store.meta["image_shape"] == [32, 32, 3]
    for i, src in enumerate(data):
        ep = store.episode(i)
        keep = np.arange(0, 9, 3)
        grip = src["observation.gripper"]
        np.testing.assert_array_equal(ep["state"], np.concatenate([src["observation.state"], grip], 1)[keep])
        np.testing.assert_array_equal(ep["action"], np.concatenate([src["action"], grip], 1)[keep + 2])
        np.testing.assert_array_equal(ep["image"], src["observation.images.front"][keep][:, :, 8:40])  # centre crop
        assert (ep["stim_label"] == -1).all() and store.episode_meta(i)["instruction"] == "pick up the cube"
        assert store.episode_meta(i)["task"] == "lerobot"


def test_what_does_not_map_is_refused_naming_it(tmp_path, capsys):
    root = tmp_path / "franka"
    _foreign(root, n_eps=1, length=3)
    out = tmp_path / "f.zarr"
    cases = [
        ([], "feature 'observation.state' (state) has 7 values (joint positions?) and no gripper"),
        (["--state-key", "observation.ee_pose", "--gripper-key", "observation.gripper"],
         "feature 'observation.ee_pose' (state) has names ['x', 'y', 'z', 'qx', 'qy', 'qz', 'qw']"),
        (["--state-key", "observation.velocity"], "the dataset has no feature 'observation.velocity' for the state"),
        (["--gripper-key", "observation.gripper"], "is 32 x 48; the policy takes square frames: pass --image-size"),
        (["--image-key", "observation.images.wrist"], "--image-key 'observation.images.wrist' is not an image"),
        (["--gripper-key", "observation.gripper", "--image-size", "32", "--episodes", "4"],
         "episode 4 out of range, the dataset has 1 episodes"),
    ]
    for extra, msg in cases:
        code, text = _run(capsys, "import-lerobot", root, out, *extra)
        assert code == 1 and msg in text, (extra, text)
        assert not out.exists()
    code, text = _run(capsys, "import-lerobot", tmp_path, out)
    assert code == 1 and "not a LeRobot dataset" in text and "meta/info.json is missing" in text
    info = json.loads((root / "meta" / "info.json").read_text())
    (root / "meta" / "info.json").write_text(json.dumps({**info, "fps": 15}))
    code, text = _run(capsys, "import-lerobot", root, out, "--gripper-key", "observation.gripper", "--image-size", "32")
    assert code == 1 and "recorded at 15 fps; the store is 10 Hz" in text, text
    (root / "meta" / "info.json").write_text(json.dumps({**info, "codebase_version": "v2.1"}))
    code, text = _run(capsys, "import-lerobot", root, out)
    assert code == 1 and "a LeRobot v2.1 dataset" in text and "convert_dataset_v21_to_v30 --repo-id=franka" in text
    assert not out.exists()
