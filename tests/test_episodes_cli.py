"""`moss-data info / check / repair / export-lerobot`: summaries, one clear message per kind of
damage, exit codes, and a LeRobot export that lerobot's own LeRobotDataset loads back offline."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import zarr

from moss_vla.data_cli import main
from moss_vla.episodes import EpisodeStore, SchemaError
from moss_vla.episodes.schema import EPISODE_ENDS
from moss_vla.episodes.synthetic import make_synthetic_store, synthetic_episode

SHAPE = (16, 16, 3)


@pytest.fixture
def store(tmp_path):
    path = tmp_path / "c.zarr"
    make_synthetic_store(path, 4, length=5, image_shape=SHAPE)
    return path


def _run(capsys, *argv) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out + out.err


def test_cfg_says_there_is_no_config(store, capsys):
    for argv in (["--cfg"], ["info", store, "--cfg"], ["--cfg", "job"]):
        code, out = _run(capsys, *argv)
        assert code == 0
        assert out.strip().splitlines() == ["moss-data takes store paths (see moss-data --help) and has no config to print"]


def test_info(store, capsys):
    code, out = _run(capsys, "info", store)
    assert code == 0
    assert "episodes: 4" in out and "frames: 20" in out and "duration: 2.0 s" in out
    assert "movesense_lr (2)" in out and "pong_predict (2)" in out
    assert "success labels: 4 of 4 episodes labelled (success: 2 true / 2 false)" in out
    code, out = _run(capsys, "info", store, "--json")
    info = json.loads(out)
    assert info["episodes"] == 4 and info["frames"] == 20 and info["fps"] == 10
    assert info["success_labels"]["success"] == {"true": 2, "false": 2}


def test_check_ok_and_each_kind_of_damage(store, tmp_path, capsys):
    code, out = _run(capsys, "check", store)
    assert code == 0 and "ok:" in out and "4 episodes, 20 frames" in out

    code, out = _run(capsys, "check", tmp_path / "missing.zarr")
    assert code == 1 and "does not exist" in out
    (tmp_path / "plain").mkdir()
    code, out = _run(capsys, "check", tmp_path / "plain")
    assert code == 1 and "not a zarr store" in out

    root = zarr.open_group(str(store), mode="r+")
    # wrong dtype
    ts = root["data/timestamp"][:]
    del root["data/timestamp"]
    root["data"].create_array("timestamp", data=ts.astype(np.float32))
    code, out = _run(capsys, "check", store)
    assert code == 1 and "data/timestamp: wrong dtype float32, expected float64" in out
    del root["data/timestamp"]
    root["data"].create_array("timestamp", data=ts)
    assert _run(capsys, "check", store)[0] == 0
    # a store whose root lost its image_shape: named, with the store, by repair and by the reader
    root = zarr.open_group(str(store), mode="r+")
    attrs = dict(root.attrs)
    attrs.pop("image_shape")
    root.attrs.clear()
    root.update_attributes(attrs)
    code, out = _run(capsys, "repair", store)
    assert code == 1 and f"{store}: root attribute 'image_shape' is missing" in out
    with pytest.raises(SchemaError, match="root attribute 'image_shape' is missing"):
        EpisodeStore(store)
    # missing key
    xy = root["data/stim_xy"][:]
    del root["data/stim_xy"]
    code, out = _run(capsys, "check", store)
    assert code == 1 and "missing key data/stim_xy" in out
    root["data"].create_array("stim_xy", data=xy)
    # arrays of different lengths (committed frames missing)
    root["data/state"].resize((17, 8))
    code, out = _run(capsys, "check", store)
    assert code == 1 and "arrays of different lengths" in out and "committed frames are missing" in out
    root["data/state"].resize((20, 8))
    root["data/state"][17:] = 0
    # episode ends out of order
    ends = root[EPISODE_ENDS]
    good = ends[:]
    ends[:] = np.array([5, 15, 10, 20])
    code, out = _run(capsys, "check", store)
    assert code == 1 and "episode ends out of order: episode 2 ends at 10 after episode 1 ended at 15" in out
    ends[:] = good
    # non-finite values and a bad label index
    root["data/action"][3, 2] = np.nan
    code, out = _run(capsys, "check", store)
    assert code == 1 and "data/action has non-finite values at frame 3" in out
    root["data/action"][3, 2] = 0
    root["data/stim_label"][7] = 5
    code, out = _run(capsys, "check", store)
    assert code == 1 and "data/stim_label has value 5 but the episode has 2 label_names" in out


def test_repair(store, capsys):
    root = zarr.open_group(str(store), mode="r+")
    root["data/image"].append(np.zeros((2, *SHAPE), np.uint8))
    code, out = _run(capsys, "check", store)
    assert code == 1 and "uncommitted data of an interrupted writer" in out
    code, out = _run(capsys, "repair", store)
    assert code == 0 and "image -2" in out
    assert _run(capsys, "check", store)[0] == 0


# lerobot's pyav decoder goes through torchvision's deprecated video reader
@pytest.mark.filterwarnings("ignore:The video decoding and encoding capabilities of torchvision:UserWarning")
def test_export_lerobot_loads_back_with_lerobot(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    shape = (64, 64, 3)  # the AV1 encoder's minimum frame size
    src = tmp_path / "small.zarr"
    make_synthetic_store(src, 2, length=6, image_shape=shape)
    dst = tmp_path / "lerobot"
    code, out = _run(capsys, "export-lerobot", src, dst, "--repo-id", "local/small")
    assert code == 0, out
    ds = LeRobotDataset("local/small", root=dst, video_backend="pyav")
    store = EpisodeStore(src)
    assert ds.num_episodes == 2 and ds.num_frames == 12 and ds.fps == 10
    assert ds.meta.video_keys == ["observation.images.display"]
    for k in range(ds.num_frames):
        item = ds[k]
        ep = int(item["episode_index"])
        t = int(item["frame_index"])
        meta, frames = synthetic_episode(store.episode_meta(ep)["seed"], 6, shape)
        assert item["task"] == meta["instruction"]
        np.testing.assert_array_equal(item["action"].numpy(), frames["action"][t])
        np.testing.assert_array_equal(item["observation.state"].numpy(), frames["state"][t])
        img = item["observation.images.display"]  # (3, H, W) float in [0, 1], lossy video
        assert img.shape == (3, 64, 64)
        err = np.abs(img.permute(1, 2, 0).numpy() * 255 - frames["image"][t]).mean()
        assert err < 12, f"frame {k}: mean abs error {err:.1f} after video round trip"
    side = json.loads((dst / "meta" / "moss_episodes.json").read_text())
    assert [e["seed"] for e in side["episodes"]] == [store.episode_meta(i)["seed"] for i in range(2)]
    code, out = _run(capsys, "export-lerobot", src, dst)
    assert code == 1 and "already exists" in out
    assert os.path.isdir(dst)
