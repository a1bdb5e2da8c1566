"""WindowDataset: frame windows with start padding, action chunks with end padding, split by
episode, normalisation statistics saved once, augmentation, DataLoader workers, hydra config."""

from __future__ import annotations

import json
import shutil
import warnings

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from moss_vla.episodes import EpisodeStore, EpisodeWriter
from moss_vla.episodes import normalization as norm
from moss_vla.episodes.synthetic import synthetic_episode, write_episode
from moss_vla.episodes.window_dataset import (
    AugmentConfig,
    LabelEvidence,
    WindowDataset,
    augment_window,
    colour_matrix,
    split_episodes,
)
from moss_vla.paths import CONFIG_DIR

SHAPE = (16, 16, 3)
LENGTHS = [5, 20, 12, 9, 7]


@pytest.fixture(scope="module")
def store_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("ds") / "w.zarr"
    with EpisodeWriter(path, image_shape=SHAPE) as w:
        for seed, n in enumerate(LENGTHS):
            meta, frames = synthetic_episode(seed, n, SHAPE)
            write_episode(w, meta, frames)
    return path


def _raw(store_path, key):
    return EpisodeStore(store_path).read(key)


def test_frames_name_each_items_newest_frame_without_reading_it(store_path, monkeypatch):
    ds = WindowDataset(store_path, episodes=[1, 2])
    with monkeypatch.context() as m:
        m.setattr(WindowDataset, "_read_images", lambda *a, **k: pytest.fail("frames read images"))
        frames = ds.frames.tolist()
    assert frames == [ds[k]["index"] for k in range(len(ds))]


def test_windows_pad_at_episode_start_and_end(store_path):
    ds = WindowDataset(store_path, n_frames=8, horizon=16)
    assert len(ds) == sum(LENGTHS)
    images, actions, states = (_raw(store_path, k) for k in ("image", "action", "state"))
    store = EpisodeStore(store_path)
    s1, e1 = store.episode_slice(1).start, store.episode_slice(1).stop  # episode 1: frames 5..24

    item = ds[s1]  # first frame of episode 1: 7 repeats of it, marked
    assert item["image"].shape == (8, 3, 16, 16) and item["image"].dtype == torch.float32
    assert item["image_is_pad"].tolist() == [True] * 7 + [False]
    expected = torch.from_numpy(images[s1]).permute(2, 0, 1).float() / 255
    for t in range(8):
        torch.testing.assert_close(item["image"][t], expected)
    assert item["episode"] == 1 and item["index"] == s1
    assert item["instruction"] == store.episode_meta(1)["instruction"] and item["task"] == "pong_predict"

    i = s1 + 10  # middle: frames i-7..i, actions i..i+15 with the last 6 past the end (e1 = s1 + 20)
    item = ds[i]
    assert not item["image_is_pad"].any()
    got = (item["image"] * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    np.testing.assert_array_equal(got, images[i - 7:i + 1])
    np.testing.assert_array_equal(item["state"].numpy(), states[i])
    assert item["action"].shape == (16, 8)
    n_real = e1 - i
    assert item["action_is_pad"].tolist() == [False] * n_real + [True] * (16 - n_real)
    np.testing.assert_array_equal(item["action"][:n_real].numpy(), actions[i:e1])
    np.testing.assert_array_equal(item["action"][n_real:].numpy(), np.repeat(actions[e1 - 1:e1], 16 - n_real, 0))

    item = ds[e1 - 1]  # last frame: one real action, the rest the last action repeated
    assert item["action_is_pad"].tolist() == [False] + [True] * 15
    assert (item["action"] == item["action"][0]).all()


def test_fast_frame_reader_matches_zarr(tmp_path, monkeypatch):
    path = tmp_path / "f.zarr"
    with EpisodeWriter(path, image_shape=SHAPE) as w:
        meta, frames = synthetic_episode(0, 6, SHAPE)
        frames["image"][2] = 0  # an all-zero frame: zarr stores no chunk file for it
        write_episode(w, meta, frames)
    store = EpisodeStore(path)
    reader = store.frame_reader("image")
    assert reader is not None and store.frame_reader("state") is None  # float32: zarr path
    idx = np.array([0, 0, 0, 2, 5, 3, 1])
    np.testing.assert_array_equal(reader.read(idx), frames["image"][idx])
    np.testing.assert_array_equal(store.read_frames(idx, "state"), frames["state"][idx])
    with pytest.raises(IndexError, match="outside"):
        store.read_frames(np.array([6]))
    # the dataset gives the same windows through zarr when the fast path does not apply
    fast = WindowDataset(path, n_frames=8, horizon=4)
    from moss_vla.episodes.store import FrameChunkReader

    monkeypatch.setattr(FrameChunkReader, "for_array", classmethod(lambda cls, arr, root: None))
    slow = WindowDataset(path, n_frames=8, horizon=4)
    for k in range(len(fast)):
        torch.testing.assert_close(fast[k]["image"], slow[k]["image"])
    assert not isinstance(slow._images, FrameChunkReader)


def test_single_frame_windows_and_episode_selection(store_path):
    ds = WindowDataset(store_path, episodes=[3, 0], n_frames=1, horizon=4)
    assert len(ds) == LENGTHS[0] + LENGTHS[3] and ds.episodes == [0, 3]
    item = ds[0]
    assert item["image"].shape == (1, 3, 16, 16) and item["image_is_pad"].tolist() == [False]
    assert {ds[k]["episode"] for k in range(len(ds))} == {0, 3}
    with pytest.raises(IndexError, match=r"episodes \[7\] do not exist"):
        WindowDataset(store_path, episodes=[7])


def test_split_by_episode():
    train, val = split_episodes(50, 0.1, seed=3)
    assert len(val) == 5 and len(train) == 45 and not set(train) & set(val)
    assert sorted(train + val) == list(range(50))
    assert split_episodes(50, 0.1, seed=3) == (train, val)
    assert split_episodes(50, 0.1, seed=4) != (train, val)
    assert len(split_episodes(3, 0.1)[1]) == 1  # at least one validation episode
    assert split_episodes(3, 0.0) == ([0, 1, 2], [])


def test_stats_computed_once_and_saved(store_path, tmp_path, monkeypatch):
    store = EpisodeStore(store_path)
    path = tmp_path / "stats.json"
    stats = norm.load_or_compute_stats(store, [0, 2], path)
    x = np.concatenate([_raw(store_path, "action")[store.episode_slice(i)] for i in (0, 2)])
    np.testing.assert_allclose(stats["action"]["mean"], x.mean(0), rtol=1e-5)
    np.testing.assert_allclose(stats["action"]["std"], x.std(0), rtol=1e-4)
    np.testing.assert_allclose(stats["state"]["max"], np.concatenate(
        [_raw(store_path, "state")[store.episode_slice(i)] for i in (0, 2)]).max(0))
    assert set(stats) == {"state", "action"} and len(stats["state"]["min"]) == 8
    assert json.loads(path.read_text())["source"]["episodes"] == [0, 2]
    assert norm.load_stats(path) == stats

    def boom(*a, **k):
        raise AssertionError("statistics recomputed although saved")

    monkeypatch.setattr(norm, "compute_stats", boom)
    assert norm.load_or_compute_stats(store, [0, 2], path) == stats  # reused
    monkeypatch.undo()
    other = norm.load_or_compute_stats(store, [1], path)  # other episodes: recomputed
    assert other != stats and json.loads(path.read_text())["source"]["episodes"] == [1]
    # another store with the same layout (here: a copy) does not reuse them either
    shutil.copytree(store_path, tmp_path / "copy.zarr")
    calls = []
    monkeypatch.setattr(norm, "compute_stats", lambda *a: calls.append(a) or stats)
    norm.load_or_compute_stats(EpisodeStore(tmp_path / "copy.zarr"), [1], path)
    assert len(calls) == 1 and json.loads(path.read_text())["source"]["store"].endswith("copy.zarr")


def test_augmentation_same_for_all_frames():
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    window = np.repeat(base[None], 8, 0)
    cfg = AugmentConfig(enabled=True, brightness=0.3, contrast=0.3, saturation=0.3, hue=0.05, max_shift_px=3)
    out = augment_window(window, cfg, torch.Generator().manual_seed(0))
    plain = torch.from_numpy(window).permute(0, 3, 1, 2).float() / 255
    assert out.shape == (8, 3, 16, 16) and out.dtype == torch.float32 and out.min() >= 0 and out.max() <= 1
    assert not torch.allclose(out, plain)  # something changed
    for t in range(1, 8):  # one draw per window: identical frames stay identical
        torch.testing.assert_close(out[t], out[0])
    for seed in range(10):  # the shift is a translation with edge replication
        x = rng.integers(0, 256, (2, 10, 12, 3), dtype=np.uint8)
        y = augment_window(x, AugmentConfig(enabled=True, max_shift_px=3), torch.Generator().manual_seed(seed))
        dy, dx = (int(v) - 3 for v in torch.randint(0, 7, (2,), generator=torch.Generator().manual_seed(seed)))
        rows, cols = np.clip(np.arange(10) + dy, 0, 9), np.clip(np.arange(12) + dx, 0, 11)
        ref = torch.from_numpy(x[:, rows[:, None], cols[None, :]]).permute(0, 3, 1, 2).float() / 255
        torch.testing.assert_close(y, ref)
    # colour jitter alone agrees with torchvision's brightness + contrast (one op each)
    import torchvision.transforms.v2.functional as TF

    for kind in ("brightness", "contrast"):
        gen = torch.Generator().manual_seed(3)
        y = augment_window(window[:2], AugmentConfig(enabled=True, **{kind: 0.4}), gen)
        f = float(0.6 + 0.8 * torch.rand((), generator=torch.Generator().manual_seed(3)))
        ref = getattr(TF, f"adjust_{kind}")(plain[:2], f)
        torch.testing.assert_close(y, ref, atol=2e-5, rtol=0)
    with pytest.raises(ValueError, match="unknown keys"):
        AugmentConfig.from_any({"brightnes": 0.1})


def test_colour_matrix_matches_torchvision():
    import torchvision.transforms.v2.functional as TF

    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))

    def apply(m):
        return (m @ x.reshape(2, 3, -1)).reshape(x.shape).clamp(0, 1)

    torch.testing.assert_close(apply(colour_matrix(1.3, 1.0, 0.0)), TF.adjust_brightness(x, 1.3))
    torch.testing.assert_close(apply(colour_matrix(1.0, 0.4, 0.0)), TF.adjust_saturation(x, 0.4),
                               atol=1e-4, rtol=0)
    # hue: a YIQ rotation approximates the HSV hue shift, in the same direction
    ref = TF.adjust_hue(x, 0.05)
    assert (apply(colour_matrix(1, 1, 0.05)) - ref).abs().mean() < (apply(colour_matrix(1, 1, -0.05)) - ref).abs().mean()


def test_from_hydra_config_and_dataloader_workers(store_path, tmp_path):
    with initialize_config_dir(str(CONFIG_DIR), version_base=None):
        cfg = compose("dataset/default")
        single = compose("dataset/single_frame")
    cfg = cfg.dataset
    assert single.dataset.n_frames == 1 and cfg.n_frames == 8 and cfg.horizon == 16
    assert OmegaConf.is_missing(cfg, "path")
    cfg.path = str(store_path)
    cfg.val_fraction = 0.2
    cfg.stats_path = str(tmp_path / "s.json")
    train, val, stats = WindowDataset.from_config(cfg)
    assert train.augment.enabled and not val.augment.enabled
    assert not set(train.episodes) & set(val.episodes) and len(val.episodes) == 1
    assert (tmp_path / "s.json").exists() and set(stats) == {"state", "action"}

    loader = DataLoader(val, batch_size=4, num_workers=2, shuffle=False)
    batches = list(loader)
    assert sum(len(b["index"]) for b in batches) == len(val)
    b = batches[0]
    assert b["image"].shape == (4, 8, 3, 16, 16) and b["action"].shape == (4, 16, 8)
    assert b["image_is_pad"].shape == (4, 8) and isinstance(b["instruction"][0], str)
    for j in range(4):  # workers read exactly what the main process reads
        ref = val[j]
        torch.testing.assert_close(b["image"][j], ref["image"])
        torch.testing.assert_close(b["action"][j], ref["action"])


@pytest.mark.parametrize("min_frames", [1, 3])
def test_label_evidence_counts_the_windows_own_frames_in_the_phases(store_path, min_frames):
    """stim_evidence: >= min_frames of the window's frames (within its episode, padding not counted)
    are in one of the phases; checked against a count over each window; no config: always True."""
    store = EpisodeStore(store_path)
    phase, names = store.read("stim_phase"), store.episode_metas[0]["phase_names"]
    ds = WindowDataset(store_path, n_frames=4, label_evidence={"phases": ["moving", "flying"], "min_frames": min_frames})
    seen = []
    for k in range(len(ds)):
        frames, pad, _, _ = ds.window_indices(k)
        expected = int(sum(names[phase[f]] == "moving" for f in frames[~pad])) >= min_frames
        assert ds[k]["stim_evidence"] == expected, k
        seen.append(expected)
    assert any(seen) and not all(seen)  # the synthetic phases are random: both cases occur
    assert all(WindowDataset(store_path, n_frames=4)[k]["stim_evidence"] for k in range(len(ds)))
    with pytest.raises(ValueError, match=r"none of the label_evidence phases \['hold'\] is among its phase_names "
                                         r"\['idle', 'moving', 'respond'\]"):
        WindowDataset(store_path, label_evidence=LabelEvidence(("hold",)))
    with pytest.raises(ValueError, match=r"unknown label_evidence key\(s\) \['frames'\]"):
        WindowDataset(store_path, label_evidence={"frames": 3})


def test_label_evidence_longer_than_the_window_warns(store_path):
    """A single-frame window can never hold 3 evidence frames: the label loss would train 'none' only
    (the groot baseline with the label recipe), which the user is told."""
    with pytest.warns(UserWarning, match=r"label_evidence.min_frames=3 > the window's 1 frame\(s\): no labelled window "
                                         r"counts"):
        ds = WindowDataset(store_path, n_frames=1, label_evidence={"min_frames": 3})
    assert not any(ds[k]["stim_evidence"] for k in range(len(ds)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        WindowDataset(store_path, n_frames=3, label_evidence={"min_frames": 3})


def test_state_noise_perturbs_the_joints_of_training_windows_only(store_path):
    plain = WindowDataset(store_path, [1], 4, 3)
    noisy = WindowDataset(store_path, [1], 4, 3, augment=AugmentConfig(enabled=True, state_noise=0.05))
    torch.manual_seed(0)
    diffs = torch.stack([noisy[k]["state"] - plain[k]["state"] for k in range(len(plain))])  # (N, 8)
    assert torch.all(diffs[:, 7] == 0)  # the gripper (past state_noise_dims = 7) is left alone
    assert 0.03 < float(diffs[:, :7].std()) < 0.07  # the joints get N(0, 0.05 rad)
    for k in range(len(plain)):  # the action targets are the demonstrated ones
        torch.testing.assert_close(noisy[k]["action"], plain[k]["action"])
    off = WindowDataset(store_path, [1], 4, 3, augment=AugmentConfig(enabled=False, state_noise=0.05))
    torch.testing.assert_close(off[0]["state"], plain[0]["state"])  # validation windows: no augmentation
