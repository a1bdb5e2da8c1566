"""lerobot's ACT and Diffusion Policy in our harness (moss_vla/policy/lerobot_adapter.py): trained by moss-train
on a synthetic store, evaluated by `moss-sim eval` through the same trials, planner and scoring as our policies;
checkpoints lerobot-train wrote scored through lerobot's own processor files; bad checkpoints refused with
messages that name what is wrong."""

import json
import os
import shutil
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch

from moss_vla.config import check_config, compose_config
from moss_vla.episodes import EpisodeStore, EpisodeWriter
from moss_vla.episodes.normalization import compute_stats
from moss_vla.episodes.synthetic import synthetic_episode, write_episode
from moss_vla.policy import MossVLAPolicy
from moss_vla.policy.lerobot_adapter import LeRobotPolicy, lerobot_train_settings
from moss_vla.train import TRAIN_RULES, train
from rig.sim_cli import main
from tasks.targets import load_targets

SIZE = 224  # the tiny preset's input_image_size: what the simulated camera gives
# tiny lerobot policies: a few milliseconds per step, same classes
TINY = {"act": ["+policy.lerobot.dim_model=32", "+policy.lerobot.n_heads=2", "+policy.lerobot.dim_feedforward=64",
                "+policy.lerobot.n_vae_encoder_layers=1", "+policy.lerobot.n_encoder_layers=1", "policy.image_size=32"],
        "diffusion": ["policy.lerobot.down_dims=[16,32,64]", "policy.lerobot.diffusion_step_embed_dim=16",
                      "+policy.lerobot.spatial_softmax_num_keypoints=8", "policy.lerobot.num_inference_steps=3",
                      "policy.image_size=32"]}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """6 synthetic episodes whose states and actions stay near the movesense_lr home pose (targets the
    simulated arm's safety checks accept)."""
    path = tmp_path_factory.mktemp("lerobot") / "synthetic.zarr"
    home = load_targets("movesense_lr.yaml").home.q
    rng = np.random.default_rng(0)
    with EpisodeWriter(path, image_shape=(SIZE, SIZE, 3), store_meta={"camera": {"name": "synthetic"}}) as w:
        for seed in range(6):
            meta, frames = synthetic_episode(seed, 12, (SIZE, SIZE, 3))
            n = len(frames["image"])
            frames["state"] = np.concatenate([home + rng.normal(0, 0.01, (n, 7)), np.full((n, 1), 0.04)], 1
                                             ).astype(np.float32)
            frames["action"] = frames["state"] + np.float32(0.005)
            write_episode(w, {**meta, "task": "movesense_lr"}, frames)
    return path


def train_tiny(store, tmp_path, policy: str, *extra: str):
    kind = "act" if policy == "act" else "diffusion"
    argv = [f"data.paths=[{store}]", f"policy={policy}", "model=tiny", "steps=2", "batch_size=2",
            f"out_dir={tmp_path / policy}", "log_every=1", "val_every=2", "val_batches=1", "ckpt_every=2",
            "device=cpu", *TINY[kind], *extra]
    cfg = compose_config(argv, "train")
    check_config(cfg, "train", argv, TRAIN_RULES)  # moss-train's own checks pass a lerobot policy's config
    return train(cfg)


@pytest.mark.parametrize("policy", ["act", "diffusion"])
def test_a_tiny_lerobot_policy_trains_and_is_scored_by_moss_sim_eval(store, tmp_path, policy):
    torch.manual_seed(0)
    result = train_tiny(store, tmp_path, policy)
    ckpt = result.checkpoint
    assert {"config.json", "model.safetensors", "stats.json", "moss_adapter.json"} <= {p.name for p in ckpt.iterdir()}
    assert json.loads((ckpt / "config.json").read_text())["type"] == ("act" if policy == "act" else "diffusion")
    rows = (tmp_path / policy / "metrics.csv").read_text().splitlines()
    assert "val_action_mae" in rows[0] and len(rows) == 3  # validation ran through the adapter
    loaded = MossVLAPolicy.from_pretrained(ckpt)  # the door every command loads checkpoints through
    assert isinstance(loaded, LeRobotPolicy) and loaded.config.n_frames == (1 if policy == "act" else 2)
    for a, b in zip(loaded.policy.state_dict().values(), result.policy.policy.state_dict().values(), strict=True):
        assert torch.equal(a, b.cpu())
    # lerobot's own loader reads the same files
    assert type(loaded.policy).from_pretrained(ckpt).config.type == loaded.config.type

    scored_by_moss_sim_eval(ckpt, tmp_path / "eval")


def scored_by_moss_sim_eval(ckpt, out) -> None:
    """`moss-sim eval` runs 2 trials of the checkpoint through the delayed chunk planner; the report is complete."""
    with mock.patch.dict(os.environ, {"MOSS_DEBUG": "1"}):
        assert main(["eval", f"checkpoint={ckpt}", "task=movesense_lr", "trials=2", "progress=false",
                     f"eval_dir={out}", "planner.mode=delayed"]) == 0
    report = json.loads((out / "results.json").read_text())
    assert report["trials"] == 2 == report["overall"]["trials"] and report["faults"] == {}
    assert report["planner"]["mode"] == "delayed" and report["policy_settings"]["n_action_steps"] == 8
    assert sum(report["overall"]["failures"].values()) == 2 - report["overall"]["success"]
    plans = [e["planner"]["plans"] for e in report["episode_log"]]
    assert all(p > 3 for p in plans)  # the chunk planner ran the policy's chunks, one every few steps


def test_the_chunk_starts_at_the_newest_observation_and_history_is_the_policys_own(store, tmp_path):
    """Diffusion Policy with n_obs_steps 2: the history is the last two frames and states (the first repeated
    at an episode's start), and a fixed inference seed gives the same chunk from the same history."""
    policy = train_tiny(store, tmp_path, "diffusion").policy.eval()
    policy.config = type(policy.config)(**{**policy.config.__dict__, "inference_seed": 3})
    rng = np.random.default_rng(1)
    obs = [{"image": rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8),
            "state": np.asarray(policy.normalizer.state_mean.tolist(), np.float32), "instruction": "x"}
           for _ in range(3)]
    policy.reset()
    policy.observe(obs[0])
    assert len(policy._frames_seen) == 2 and torch.equal(policy._frames_seen[0], policy._frames_seen[1])
    first = policy.plan(obs[0])
    assert first.shape == (16, 8) and np.isfinite(first).all()
    window = {"image": torch.stack([torch.from_numpy(o["image"]).permute(2, 0, 1).float() / 255 for o in obs[:2]])[None],
              "states": torch.from_numpy(np.stack([o["state"] for o in obs[:2]]))[None]}
    policy.observe(obs[1])
    np.testing.assert_allclose(policy.plan(obs[1]), policy.predict_action_chunk(window, seed=3)[0].numpy(), atol=1e-5)


def test_bad_lerobot_checkpoints_are_refused_naming_what_is_wrong(store, tmp_path):
    ckpt = train_tiny(store, tmp_path, "act").checkpoint
    bad = tmp_path / "bad"
    shutil.copytree(ckpt, bad)
    (bad / "moss_adapter.json").unlink()  # e.g. lerobot-train's own output: no normalisation of ours
    with pytest.raises(FileNotFoundError, match=r"moss_adapter.json not found: not a complete lerobot checkpoint"):
        MossVLAPolicy.from_pretrained(bad)
    shutil.copy(ckpt / "moss_adapter.json", bad / "moss_adapter.json")
    (bad / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match=r"model.safetensors: cannot be read as safetensors"):
        MossVLAPolicy.from_pretrained(bad)
    shutil.copy(ckpt / "model.safetensors", bad / "model.safetensors")
    adapter = json.loads((ckpt / "moss_adapter.json").read_text())
    (bad / "moss_adapter.json").write_text(json.dumps({**adapter, "type": "diffusion"}))
    with pytest.raises(ValueError, match=r"config.json is a lerobot 'act' policy, moss_adapter.json says 'diffusion'"):
        MossVLAPolicy.from_pretrained(bad)
    config = json.loads((ckpt / "config.json").read_text())
    (bad / "moss_adapter.json").write_text(json.dumps(adapter))
    (bad / "config.json").write_text(json.dumps({**config, "dim_model": 64}))  # weights of another size
    with pytest.raises(ValueError, match=r"does not fit this act policy's config .*shape mismatches"):
        MossVLAPolicy.from_pretrained(bad)
    with pytest.raises(ValueError, match=r"'nope' is not a lerobot policy type"):
        train_tiny(store, tmp_path / "x", "act", "policy.lerobot.type=nope")
    with pytest.raises(ValueError, match=r"\['no_such_field'\] are not fields of lerobot's ACTConfig"):
        train_tiny(store, tmp_path / "y", "act", "+policy.lerobot.no_such_field=1")


def test_moss_serve_serves_a_lerobot_checkpoint_with_the_in_process_actions(store, tmp_path):
    """moss_vla/serve.py swaps each session's loop state through the policy's loop_state / set_loop_state:
    two sessions interleaved on a served ACT get the chunks and actions the checkpoint gives in-process."""
    from moss_vla.remote_policy import RemotePolicy
    from moss_vla.serve import PolicyServer

    ckpt = train_tiny(store, tmp_path, "act").checkpoint
    local = MossVLAPolicy.from_pretrained(ckpt).eval()
    rng = np.random.default_rng(2)
    mean = np.asarray(local.normalizer.state_mean.tolist(), np.float32)
    obs = [[{"image": rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8),
             "state": mean + rng.normal(0, 0.01, 8).astype(np.float32), "instruction": "x"} for _ in range(4)]
           for _ in range(2)]
    want = []
    for run in obs:
        local.reset()
        want.append([local.plan(o) for o in run if local.observe(o) is None])
    server = PolicyServer(MossVLAPolicy.from_pretrained(ckpt).eval(), host="127.0.0.1", port=0).start()
    try:
        server.warm_up()
        a, b = (RemotePolicy(server.address, timeout=30.0) for _ in range(2))
        assert a.config.variant == "lerobot:act"
        a.reset()
        b.reset()
        got = [[], []]
        for oa, ob in zip(*obs, strict=True):
            a.observe(oa)
            b.observe(ob)
            got[1].append(b.plan(ob))
            got[0].append(a.plan(oa))
        for g, w in zip(got, want, strict=True):
            np.testing.assert_array_equal(np.stack(g), np.stack(w))
        local.reset()
        a.reset()
        np.testing.assert_array_equal([a.select_action(o) for o in obs[0]], [local.select_action(o) for o in obs[0]])
        assert server.errors == 0
    finally:
        server.stop()


def test_lerobot_policies_train_with_lerobots_own_optimiser_unless_told_otherwise():
    """ACT at our AdamW lr 1e-3 predicted the mean action (docs/training.md section 7): each lerobot policy
    puts lerobot's own optimiser settings over train.yaml's; a command-line optim value still wins."""
    from lerobot.policies.act.configuration_act import ACTConfig
    from lerobot.policies.diffusion.configuration_diffusion import DiffusionConfig

    def optim(*args):
        return compose_config(["data.paths=[x]", *args], "train").optim

    act, diffusion = ACTConfig(), DiffusionConfig()
    assert optim("policy=act").lr == act.optimizer_lr == act.optimizer_lr_backbone
    assert optim("policy=act").weight_decay == act.optimizer_weight_decay
    assert optim("policy=act").min_lr_ratio == 1.0  # lerobot's ACT has no scheduler: a constant lr
    for name in ("diffusion", "diffusion_t8"):
        o = optim(f"policy={name}")
        assert (o.lr, tuple(o.betas), o.weight_decay, o.warmup_steps) == (
            diffusion.optimizer_lr, diffusion.optimizer_betas, diffusion.optimizer_weight_decay,
            diffusion.scheduler_warmup_steps)
    assert optim("policy=moss").lr == optim("policy=contextvla").lr == 1e-3  # ours: the paper's AdamW
    assert optim("policy=act", "optim.lr=1e-4").lr == 1e-4
    assert optim("policy=act", "optim=adamw").lr == 1e-3


# ---- checkpoints lerobot-train wrote ----------------------------------------------------------------------------
CAMERA = "observation.images.front"  # not ours (observation.images.display): the adapter reads the config's key
TASKS_SEEN: list = []  # what the probe step below saw as `task`


def _task_probe():
    """A registered lerobot processor step that records the `task` the preprocessor is given (a language
    policy's tokenizer step reads it from there)."""
    from lerobot.processor import ProcessorStep, ProcessorStepRegistry, TransitionKey

    name = "moss_test_task_probe"
    if name not in ProcessorStepRegistry.list():
        @ProcessorStepRegistry.register(name=name)
        class TaskProbe(ProcessorStep):
            def __call__(self, transition):
                TASKS_SEEN.append((transition.get(TransitionKey.COMPLEMENTARY_DATA) or {}).get("task"))
                return transition

            def transform_features(self, features):
                return features
    return ProcessorStepRegistry.get(name)()


def lerobot_train_checkpoint(store, out, kind="act", size=32, cameras=(CAMERA,), state_dim=8, probe=False):
    """A checkpoint as lerobot-train saves its pretrained_model/ (policy.save_pretrained, the pre/post processors
    make_pre_post_processors builds from the dataset's stats, their save_pretrained), of a tiny untrained policy
    with the synthetic store's statistics (cameras: ImageNet's, lerobot-train's use_imagenet_stats)."""
    from lerobot.configs.types import FeatureType, PolicyFeature
    from lerobot.policies.act.configuration_act import ACTConfig
    from lerobot.policies.diffusion.configuration_diffusion import DiffusionConfig
    from lerobot.policies.factory import get_policy_class, make_pre_post_processors

    ours = compute_stats(EpisodeStore(store))
    stats = {"observation.state": {k: np.asarray(v, np.float32) for k, v in ours["state"].items()},
             "action": {k: np.asarray(v, np.float32) for k, v in ours["action"].items()}}
    features = {"observation.state": PolicyFeature(FeatureType.STATE, (state_dim,))}
    for cam in cameras:
        features[cam] = PolicyFeature(FeatureType.VISUAL, (3, size, size))
        stats[cam] = {"mean": np.float32([0.485, 0.456, 0.406]).reshape(3, 1, 1),
                      "std": np.float32([0.229, 0.224, 0.225]).reshape(3, 1, 1)}
    common = {"input_features": features, "device": "cpu", "pretrained_backbone_weights": None,  # no download
              "output_features": {"action": PolicyFeature(FeatureType.ACTION, (8,))}}
    if kind == "act":
        cfg = ACTConfig(dim_model=32, n_heads=2, dim_feedforward=64, n_vae_encoder_layers=1, n_encoder_layers=1,
                        chunk_size=16, n_action_steps=8, **common)
    else:
        cfg = DiffusionConfig(down_dims=(16, 32, 64), diffusion_step_embed_dim=16, spatial_softmax_num_keypoints=8,
                              num_inference_steps=3, crop_shape=None, **common)
    torch.manual_seed(0)
    policy = get_policy_class(kind)(cfg)
    pre, post = make_pre_post_processors(cfg, dataset_stats=stats)
    if probe:
        pre.steps.append(_task_probe())
    for part in (policy, pre, post):
        part.save_pretrained(out)
    return out


def test_a_lerobot_train_checkpoint_is_scored_through_its_own_processors(store, tmp_path):
    ckpt = lerobot_train_checkpoint(store, tmp_path / "pretrained_model", probe=True)
    loaded = MossVLAPolicy.from_pretrained(ckpt)
    assert isinstance(loaded, LeRobotPolicy) and loaded.processors.image_key == CAMERA
    cfg = loaded.config  # derived from lerobot's config.json
    assert (cfg.type, cfg.n_frames, cfg.horizon, cfg.n_action_steps, cfg.image_size, cfg.normalization) == (
        "act", 1, 16, 8, 32, "lerobot")

    TASKS_SEEN.clear()
    scored_by_moss_sim_eval(ckpt, tmp_path / "eval")  # frames resized from 224 to the checkpoint's 32
    instruction = compose_config(["task=movesense_lr"], "sim_eval").task.instruction
    assert TASKS_SEEN and all(t == [instruction] for t in TASKS_SEEN)  # the instruction reached lerobot's pipeline


@pytest.mark.parametrize("kind", ["act", "diffusion"])
def test_the_adapters_chunk_is_lerobots_preprocessor_policy_postprocessor(store, tmp_path, kind):
    """The same observations through lerobot-eval's own path (preprocess_observation, the preprocessor, the
    policy, the postprocessor) give the adapter's chunk; the checkpoint's camera is our frame size (no resize).
    Diffusion Policy (n_obs_steps 2): the adapter's chunk starts at the newest observation, as lerobot's does."""
    from lerobot.envs.utils import preprocess_observation
    from lerobot.policies.factory import get_policy_class, make_pre_post_processors
    from lerobot.policies.utils import populate_queues

    ckpt = lerobot_train_checkpoint(store, tmp_path / "pretrained_model", kind, size=SIZE)
    ours = MossVLAPolicy.from_pretrained(ckpt)
    lerobot = get_policy_class(kind).from_pretrained(ckpt)
    pre, post = make_pre_post_processors(lerobot.config, pretrained_path=str(ckpt))
    rng = np.random.default_rng(3)
    mean = np.asarray(compute_stats(EpisodeStore(store))["state"]["mean"], np.float32)
    obs = [{"image": rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8),
            "state": mean + rng.normal(0, 0.01, 8).astype(np.float32), "instruction": "x"} for _ in range(2)]
    ours.reset()
    lerobot.reset()
    for o in obs:
        ours.observe(o)
        batch = pre({**preprocess_observation({"pixels": {"front": o["image"][None]}, "agent_pos": o["state"][None]}),
                     "task": [o["instruction"]]})
        if kind == "diffusion":  # what its select_action queues and predicts from (without the batch's empty action)
            batch.pop("action")
            batch["observation.images"] = torch.stack([batch[k] for k in lerobot.config.image_features], -4)
            lerobot._queues = populate_queues(lerobot._queues, batch)
    torch.manual_seed(7)  # Diffusion Policy's sampling noise, drawn the same way on both sides
    want = post(lerobot.predict_action_chunk(batch))[0].numpy()
    torch.manual_seed(7)
    got = ours.plan(obs[-1])
    assert got.shape == ((16, 8) if kind == "act" else (15, 8))  # Diffusion: horizon 16 - n_obs_steps 2 + 1
    np.testing.assert_allclose(got[: len(want)], want, rtol=1e-5, atol=1e-6)
    assert np.abs(got - mean).max() < 0.5 < np.abs(mean).max()  # unnormalised: near the store's actions, not 0


def test_bad_lerobot_train_checkpoints_are_refused_naming_the_file_or_keys(store, tmp_path):
    ckpt = lerobot_train_checkpoint(store, tmp_path / "ok")
    bad = tmp_path / "bad"
    shutil.copytree(ckpt, bad)
    (bad / "policy_postprocessor.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"policy_postprocessor.json not found: a lerobot-train checkpoint"):
        MossVLAPolicy.from_pretrained(bad)
    shutil.copy(ckpt / "policy_postprocessor.json", bad / "policy_postprocessor.json")
    for f in bad.glob("policy_preprocessor_step_*_normalizer_processor.safetensors"):
        f.unlink()  # the statistics
    with pytest.raises(ValueError, match=r"policy_preprocessor.json: cannot be loaded as lerobot's processor pipeline"):
        MossVLAPolicy.from_pretrained(bad)
    two = lerobot_train_checkpoint(store, tmp_path / "two", cameras=(CAMERA, "observation.images.wrist"))
    with pytest.raises(ValueError, match=r"config.json: input_features has 2 cameras .*'observation.images.front', "
                                         r"'observation.images.wrist'"):
        MossVLAPolicy.from_pretrained(two)
    seven = lerobot_train_checkpoint(store, tmp_path / "seven", state_dim=7)
    with pytest.raises(ValueError, match=r"config.json: 'observation.state' has shape \(7,\), expected \(8,\)"):
        MossVLAPolicy.from_pretrained(seven)
    with pytest.raises(RuntimeError, match=r"from a lerobot-train checkpoint is scored here"):
        MossVLAPolicy.from_pretrained(ckpt).encode(torch.zeros(1, 1, 3, SIZE, SIZE))


def test_a_groot_fine_tunes_settings_come_from_what_it_predicts():
    """lerobot's groot (its config only: the model is the 3B download) plans min(chunk_size, 16) actions, its
    action_delta_indices, and runs at most those (its n_action_steps 50 is lerobot's queue length)."""
    from lerobot.configs.types import FeatureType, PolicyFeature
    from lerobot.policies.groot.configuration_groot import GrootConfig

    cfg = GrootConfig(input_features={"observation.state": PolicyFeature(FeatureType.STATE, (8,)),
                                      CAMERA: PolicyFeature(FeatureType.VISUAL, (3, 224, 224))},
                      output_features={"action": PolicyFeature(FeatureType.ACTION, (8,))})
    adapter, keys = lerobot_train_settings(cfg, Path("pretrained_model/config.json"))
    assert (adapter.type, adapter.n_frames, adapter.horizon, adapter.n_action_steps, adapter.image_size) == (
        "groot", 1, 16, 16, 224)
    assert keys == {"image_key": CAMERA, "state_key": "observation.state", "image_hw": (224, 224), "chunk_start": 0}
