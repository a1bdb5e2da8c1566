"""moss-train: a tiny policy overfits a tiny store, resume is exact, DDP under torchrun, clear errors."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from safetensors.torch import load_file
from torch.utils.data import default_collate

from moss_vla.episodes import EpisodeWriter
from moss_vla.episodes.synthetic import make_synthetic_store
from moss_vla.episodes.window_dataset import LabelEvidence
from moss_vla.paths import CONFIG_DIR
from moss_vla.policy import make_policy
from moss_vla.train import evaluate, param_groups, train, validation_subset, warn_if_learned_nothing
from moss_vla.training_data import build_datasets, label_classes

TINY = ["policy=moss", "model=tiny", "model.input_image_size=32", "dataset.augment.enabled=true",
        "log_every=5", "val_every=1000", "val_batches=1", "batch_size=8"]


def cfg_for(store: Path, out: Path, *overrides: str):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("train", [f"data.paths=[{store}]", f"out_dir={out}", *TINY, *overrides])


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("train") / "tiny.zarr"
    make_synthetic_store(path, n_episodes=4, length=24, image_shape=(32, 32, 3))
    return path


@pytest.fixture(scope="module")
def smooth_store(tmp_path_factory) -> Path:
    """Two episodes whose actions are a smooth function of the observation (learnable, unlike the
    synthetic store's random states): a square moving across the image, sinusoidal joint trajectories."""
    path = tmp_path_factory.mktemp("train") / "smooth.zarr"
    size, length = 32, 24
    with EpisodeWriter(path, image_shape=(size, size, 3)) as w:
        for e in range(2):
            w.start_episode({"task": "smooth", "instruction": "follow the square", "seed": e})
            traj = np.sin(0.15 * np.arange(length + 1)[:, None] + np.arange(8)[None] + 2.0 * e).astype(np.float32)
            for i in range(length):
                img = np.zeros((size, size, 3), np.uint8)
                img[size // 2 - 2:size // 2 + 2, 2 * i % (size - 4):2 * i % (size - 4) + 4] = 255
                w.add_frame(image=img, state=traj[i], action=traj[i + 1], timestamp=0.1 * i)
            w.commit()
    return path


def open_loop_error(policy, dataset) -> float:
    """Mean absolute error of the predicted chunks (fixed noise) against the recorded ones."""
    batch = default_collate([dataset[i] for i in range(len(dataset))])
    with torch.no_grad():
        pred = policy.eval().predict_action_chunk(batch, seed=0)
    valid = ~batch["action_is_pad"]
    return float((pred - batch["action"]).abs().mean(-1)[valid].mean())


def weights(ckpt: Path) -> dict[str, torch.Tensor]:
    files = list(ckpt.glob("*.safetensors"))
    assert files, f"no safetensors in {ckpt}"
    return load_file(files[0])


def test_tiny_policy_overfits_tiny_store(smooth_store, tmp_path):
    cfg = cfg_for(smooth_store, tmp_path / "run", "policy=groot", "steps=600", "optim.lr=3e-3", "batch_size=32",
                  "optim.min_lr_ratio=1.0",
                  "optim.warmup_steps=20", "optim.grad_clip=10", "+model.action_head.dropout=0", "log_every=25",
                  "dataset.augment.enabled=false", "dataset.val_fraction=0.0", "ckpt_every=1000")
    windows, _, stats = build_datasets(cfg, cfg.policy.n_frames, cfg.model.action_head.horizon)
    torch.manual_seed(0)
    before = open_loop_error(make_policy(cfg.policy, cfg.model, stats), windows)
    result = train(cfg)
    after = open_loop_error(result.policy, windows)
    rows = list(csv.DictReader((tmp_path / "run" / "metrics.csv").open()))
    losses = [float(r["loss"]) for r in rows]
    first, last = sum(losses[:2]) / 2, sum(losses[-4:]) / 4
    print(f"flow-matching loss {first:.3f} -> {last:.3f}; open-loop action error {before:.3f} -> {after:.3f}")
    # measured on this CPU: loss 0.88 -> 0.06, open-loop error 1.06 -> 0.09
    assert last < first / 5, f"loss fell only from {first:.3f} to {last:.3f}"
    assert after < before / 5, f"open-loop action error fell only from {before:.3f} to {after:.3f}"
    assert result.step == 600 and (result.checkpoint / "training_state.pt").exists()
    assert (tmp_path / "run" / "loss_curve.png").stat().st_size > 10_000
    assert (tmp_path / "run" / "tensorboard").is_dir()


def test_resume_continues_exactly(store, tmp_path):
    full = train(cfg_for(store, tmp_path / "full", "steps=12", "ckpt_every=6"))
    half = tmp_path / "half"
    train(cfg_for(store, half, "steps=12", "ckpt_every=6"))  # writes step 6 and step 12
    # continue the second run from its step-6 checkpoint in a fresh directory
    resumed = train(cfg_for(store, tmp_path / "resumed", "steps=12", "ckpt_every=6",
                            f"resume={half / 'checkpoints' / 'step_0000006'}"))
    a, b = weights(full.checkpoint), weights(resumed.checkpoint)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=f"parameter {k} differs after resume")
    # and the resumed run really started at 6, not from scratch
    rows = list(csv.DictReader((tmp_path / "resumed" / "metrics.csv").open()))
    assert [int(r["step"]) for r in rows] == [10, 12]
    # resumed in its own run directory, whose metrics.csv has the rows the first run logged after step 6:
    # those are dropped (here log_every changes, so row 10 would otherwise stay as a stale row)
    train(cfg_for(store, half, "steps=12", "ckpt_every=6", "log_every=4",
                  f"resume={half / 'checkpoints' / 'step_0000006'}"))
    rows = list(csv.DictReader((half / "metrics.csv").open()))
    assert [int(r["step"]) for r in rows] == [5, 8, 12]
    # training time adds up over the resumed parts (step 8's clock continues from step 5's)
    elapsed = [float(r["elapsed_s"]) for r in rows]
    assert 0 < elapsed[0] < elapsed[1] < elapsed[2]
    # a resume with other settings would not continue the run: refused, naming what differs
    with pytest.raises(ValueError, match=r"policy.n_frames: checkpoint 8, now 2; optim.lr: checkpoint 0.001, "
                                         r"now 0.002.*config.yaml"):
        train(cfg_for(store, tmp_path / "other", "steps=12", "optim.lr=2e-3", "policy.n_frames=2",
                      f"resume={half / 'checkpoints' / 'step_0000006'}"))


def test_validation_does_not_change_the_training_run(store, tmp_path):
    """Validation draws its noise from its own seeded stream: with or without it, the same weights."""
    quiet = train(cfg_for(store, tmp_path / "quiet", "steps=6", "log_every=1"))
    validated = train(cfg_for(store, tmp_path / "validated", "steps=6", "log_every=1", "val_every=2"))
    a, b = weights(quiet.checkpoint), weights(validated.checkpoint)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=f"parameter {k} differs")
    rows = [r for r in csv.DictReader((tmp_path / "validated" / "metrics.csv").open()) if r.get("val_loss")]
    assert len(rows) == 3 and all(float(r["val_action_mae"]) > 0 for r in rows)


def test_validation_encodes_once_and_matches_forward_plus_predict(store, tmp_path):
    """evaluate() encodes each batch once for the loss and the sampled chunk; its numbers are those of
    the policy's own forward (same seed) and predict_action_chunk."""
    cfg = cfg_for(store, tmp_path / "v", "policy.aux_label_weight=0.5")
    _, val_ds, stats = build_datasets(cfg, cfg.policy.n_frames, cfg.model.action_head.horizon)
    from omegaconf import open_dict

    with open_dict(cfg):
        cfg.policy.aux_label_classes = label_classes(cfg.data.paths)
    policy = make_policy(cfg.policy, cfg.model, stats)
    batch = default_collate([val_ds[i] for i in range(min(8, len(val_ds)))])
    calls = []
    encode = policy.encode
    policy.encode = lambda *a: calls.append(1) or encode(*a)
    got = evaluate(policy, [batch], torch.device("cpu"), seed=3)
    assert len(calls) == 1
    policy.encode = encode
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(3)
        _, ref = policy.eval()(batch)
        pred = policy.predict_action_chunk(batch, seed=3)
    err = (pred - batch["action"]).abs().mean(-1)
    assert got["val_loss"] == pytest.approx(ref["action_loss"], rel=1e-6)
    assert got["val_aux_label_acc"] == pytest.approx(ref["aux_label_acc"])
    target, counted = policy.label_targets(batch)
    counts = torch.bincount(target[counted])
    assert (counts > 0).sum() >= 2, "the test batch should hold more than one label"
    assert got["val_aux_label_majority"] == pytest.approx(float(counts.max() / counts.sum()))
    assert got["val_action_mae"] == pytest.approx(float(err[~batch["action_is_pad"]].mean()), rel=1e-6)
    # the bar of a policy that learned nothing: always the training data's mean action
    mean = torch.tensor(stats["action"]["mean"])
    got = evaluate(policy, [batch], torch.device("cpu"), seed=3, mean_action=mean)
    bar = (mean - batch["action"]).abs().mean(-1)[~batch["action_is_pad"]].mean()
    assert got["val_mean_action_mae"] == pytest.approx(float(bar), rel=1e-6) and got["val_mean_action_mae"] > 0


def test_a_run_no_better_than_the_mean_action_is_named(capsys):
    rows = [{"step": 250, "val_action_mae": 0.09, "val_mean_action_mae": 0.076},
            {"step": 500, "val_action_mae": 0.0751, "val_mean_action_mae": 0.0759}, {"step": 510, "loss": 0.7}]
    warn_if_learned_nothing(rows)
    out = capsys.readouterr().out
    assert "at step 500" in out and "no better than always predicting the mean action (0.0759)" in out
    assert "optim.lr" in out
    warn_if_learned_nothing([{**rows[1], "val_action_mae": 0.03}])  # a policy that learned: no warning
    warn_if_learned_nothing([{"step": 10, "loss": 1.0}])  # no validation: nothing to say
    assert capsys.readouterr().out == ""


def test_weight_decay_on_matrices_only_adaln_included(store, tmp_path):
    cfg = cfg_for(store, tmp_path / "wd")
    policy = make_policy(cfg.policy, cfg.model, None)
    decay, no_decay = param_groups(policy, 0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    ids = {id(p) for p in decay["params"]}
    names = {n for n, p in policy.named_parameters() if id(p) in ids}
    adaln = [n for n in names if "norm1.linear.weight" in n]
    assert adaln, "the DiT's AdaLN projections are matrices and are decayed"
    assert not any(n.endswith(".bias") or "layer_norm" in n or "layernorm" in n.lower() for n in names)
    assert len(decay["params"]) + len(no_decay["params"]) == sum(1 for p in policy.parameters() if p.requires_grad)


def test_resume_refuses_an_optimizer_state_grouped_otherwise(store, tmp_path):
    """A checkpoint whose optimizer grouped the parameters for weight decay differently (e.g. written
    before decay went by shape) is named, not loaded into the wrong groups."""
    from moss_vla.train import TRAIN_STATE

    train(cfg_for(store, tmp_path / "run", "steps=4", "ckpt_every=2"))
    ckpt = tmp_path / "run" / "checkpoints" / "step_0000002"
    state = torch.load(ckpt / TRAIN_STATE, weights_only=False)
    decay, no_decay = state["optimizer"]["param_groups"]
    no_decay["params"].append(decay["params"].pop())  # one matrix moved to the undecayed group
    torch.save(state, ckpt / TRAIN_STATE)
    with pytest.raises(ValueError, match=r"step_0000002: its optimizer state groups \[\d+, \d+\] parameters"):
        train(cfg_for(store, tmp_path / "resumed", "steps=4", f"resume={ckpt}"))


def test_validation_windows_spread_over_all_held_out_episodes():
    assert validation_subset(list(range(5)), 8) == list(range(5))  # fewer than asked: all of them
    sub = validation_subset(list(range(100)), 5)
    assert [sub[i] for i in range(len(sub))] == [0, 25, 50, 74, 99]


def test_aux_label_loss_trains_a_label_head_sized_from_the_store(store, tmp_path):
    """policy.aux_label_weight > 0: moss-train sizes the label head from the store's label_names (none +
    left/right), logs the action and label losses apart and the validation label accuracy."""
    for weight, evidence in ((0.0, None), (0.5, LabelEvidence(("moving", "flying"), 3))):  # the config's default
        cfg = cfg_for(store, tmp_path / "aux", f"policy.aux_label_weight={weight}")
        assert build_datasets(cfg, 8, 16)[0].label_evidence == evidence  # only the label loss needs the phases
    res = train(cfg_for(store, tmp_path / "aux", "steps=5", "val_every=5", "policy.aux_label_weight=0.5"))
    assert res.policy.config.aux_label_classes == 3 and res.policy.label_head.out_features == 3
    assert "aux_label_classes: 3" in (tmp_path / "aux" / "config.yaml").read_text()
    row = list(csv.DictReader((tmp_path / "aux" / "metrics.csv").open()))[-1]
    assert abs(float(row["loss"]) - float(row["action_loss"]) - 0.5 * float(row["aux_label_loss"])) < 1e-4
    assert 0.0 <= float(row["val_aux_label_acc"]) <= 1.0 and float(row["val_aux_label_loss"]) > 0
    assert "label_head.weight" in weights(res.checkpoint)


def test_a_run_with_the_label_loss_resumes(store, tmp_path):
    """The label head's size was taken from the data when the run started; a resume with the run's own
    overrides takes it from the checkpoint (the config's 0 means "from the data", not a difference)."""
    run = tmp_path / "aux"
    train(cfg_for(store, run, "steps=4", "ckpt_every=2", "policy.aux_label_weight=0.5"))
    res = train(cfg_for(store, tmp_path / "resumed", "steps=4", "ckpt_every=2", "policy.aux_label_weight=0.5",
                        f"resume={run / 'checkpoints' / 'step_0000002'}"))
    assert res.step == 4 and res.policy.label_head is not None


def test_aux_label_classes_need_the_same_label_names_in_every_episode(store, smooth_store):
    assert label_classes([store]) == 3
    with pytest.raises(ValueError, match=r"found \['left', 'right'\] \(.*tiny.zarr episode 0\), \[\] \(.*smooth.zarr"):
        label_classes([store, smooth_store])


def test_bad_dataset_path_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.zarr"):
        train(cfg_for(tmp_path / "nowhere.zarr", tmp_path / "run", "steps=1"))


def test_config_typos_are_clear(store, tmp_path):
    with pytest.raises(ConfigCompositionException, match="lrr"):
        cfg_for(store, tmp_path, "optim.lrr=0.1")
    with pytest.raises(ConfigCompositionException, match="mosss"):
        cfg_for(store, tmp_path, "policy=mosss")


def test_cli_without_data_paths_says_what_to_pass():
    out = subprocess.run([sys.executable, "-m", "moss_vla.train", "policy=moss"], capture_output=True, text=True,
                         check=False)
    assert out.returncode != 0 and "data.paths=" in out.stderr


def test_ddp_under_torchrun_keeps_ranks_in_sync(store, tmp_path):
    script = tmp_path / "ddp_train.py"
    script.write_text(textwrap.dedent(f"""
        import os, torch
        from hydra import compose, initialize_config_dir
        from moss_vla.paths import CONFIG_DIR
        from moss_vla.train import evaluate, param_groups, train, validation_subset
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = compose("train", ["data.paths=[{store}]", "out_dir={tmp_path / 'run'}", "steps=4",
                                    "ckpt_every=4", *{TINY!r}])
        res = train(cfg)
        # parameters only: BatchNorm running statistics are per rank by design (DDP broadcasts rank 0's
        # before each forward, so they differ by the last step's update)
        torch.save({{k: v.detach().clone() for k, v in res.policy.named_parameters()}},
                   "{tmp_path}/rank" + os.environ["RANK"] + ".pt")
    """))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "--master_addr", "127.0.0.1", "--master_port", "29533", str(script)],
                         capture_output=True, text=True, env=env, timeout=300, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    r0, r1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    for k in r0:
        torch.testing.assert_close(r0[k], r1[k], msg=f"DDP ranks disagree on {k}")
    assert (tmp_path / "run" / "checkpoints" / "step_0000004").is_dir()
    # each rank's RNG state is kept (ranks draw different noise), so that a resume gives each its own back
    rng = torch.load(tmp_path / "run" / "checkpoints" / "step_0000004" / "training_state.pt", weights_only=False)["rng"]
    assert len(rng) == 2 and not torch.equal(rng[0]["torch"], rng[1]["torch"])
    assert "world size 2" in out.stdout
