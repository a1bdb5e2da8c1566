"""model=groot_n15: the bridge to lerobot's real GR00T N1.5, on a tiny GR00T built with lerobot's own
classes (tests/groot_helpers.py). Equality with lerobot's GR00TN15 at zero init, the 8-frame ContextVLA
and MOSS paths, MOSS staying trainable through lerobot's freezing, training, checkpoints, the streaming
cache, offline loading and its errors."""

from __future__ import annotations

import json
import shutil
import socket

import groot_helpers as gh
import numpy as np
import policy_helpers as ph
import pytest
import torch
from PIL import Image

from moss_vla.config import compose_config
from moss_vla.device import autocast, resolve_device
from moss_vla.groot_n15 import shim
from moss_vla.groot_n15.configuration import GrootN15Config
from moss_vla.groot_n15.policy import GrootN15Policy
from moss_vla.policy import MossVLAPolicy, make_policy


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return gh.write_tiny_groot(tmp_path_factory.mktemp("groot"))


def config(assets, policy="moss", **over) -> GrootN15Config:
    d = {"pretrained_path": str(assets[0]), "tokenizer_path": str(assets[1]), "input_image_size": gh.IMAGE,
         "vision": {"temporal_after_layer": 2}, "temporal": {"module": "moss", "window": [5, 9, 9], "hidden": 8,
                                                              "conv_blocks": 1},
         "backbone": {"context_compression": policy != "groot", "compress_after": 2},
         "n_frames": 1 if policy == "groot" else 8, "variant": policy, "gradient_checkpointing": False}
    if policy in ("groot", "contextvla"):
        d["temporal"]["module"] = "none"
    d.update(over)
    return GrootN15Config.from_dict(d)


def batch(cfg: GrootN15Config, B: int = 2, seed: int = 0) -> dict:
    return ph.batch(cfg, B, seed)


def obs(i: int, rng=None) -> dict:
    rng = rng or np.random.default_rng(i)
    return {"image": rng.integers(0, 256, (gh.IMAGE, gh.IMAGE, 3), dtype=np.uint8),
            "state": rng.uniform(-1, 1, 8).astype(np.float32), "instruction": gh.INSTRUCTION}


def test_zero_init_actions_equal_lerobots_gr00tn15(assets):
    """Same frame, state and noise: the wrapped model (MOSS at zero init) samples lerobot's actions."""
    with shim.lerobot_offline(assets[1]) as groot_n1:  # lerobot's own from_pretrained, made offline
        reference = groot_n1.GR00TN15.from_pretrained(str(assets[0])).eval()
    policy = GrootN15Policy(config(assets, "groot", temporal={"module": "moss", "hidden": 8, "conv_blocks": 1}),
                            ph.stats()).eval()
    o = obs(0)
    eagle = policy.prompt.encode(gh.INSTRUCTION, [Image.fromarray(o["image"])])  # lerobot's processor path
    frame = torch.from_numpy(o["image"]).permute(2, 0, 1)[None, None].float() / 255
    # our pixels and prompt are the processor's
    assert torch.allclose(policy.vision.preprocess(frame[0]), eagle["pixel_values"], atol=1e-6)
    assert torch.equal(policy._text(gh.INSTRUCTION, 1)[0][0], eagle["input_ids"][0])
    action_input = policy._action_input(torch.from_numpy(o["state"])[None])
    with torch.no_grad():
        vl, mask = policy.encode(frame, gh.INSTRUCTION)
        torch.manual_seed(7)
        ours = policy.model.sample(vl, mask, action_input)
        torch.manual_seed(7)
        theirs = reference.get_action({**{f"eagle_{k}": v for k, v in eagle.items()},
                                       "state_mask": action_input["state"] != 0, **action_input})["action_pred"]
    assert ours.shape == theirs.shape == (1, 16, 32)
    assert (ours - theirs).abs().max() < 1e-5


def test_moss_tower_is_a_drop_in_siglip_for_lerobots_own_forward(assets):
    """Installed as the Eagle model's vision_model, the tower answers lerobot's own get_action."""
    policy = GrootN15Policy(config(assets, "groot", temporal={"module": "moss", "hidden": 8, "conv_blocks": 1}),
                            ph.stats()).eval()
    o = obs(1)
    eagle = policy.prompt.encode(gh.INSTRUCTION, [Image.fromarray(o["image"])])
    frame = torch.from_numpy(o["image"]).permute(2, 0, 1)[None, None].float() / 255
    action_input = policy._action_input(torch.from_numpy(o["state"])[None])
    with torch.no_grad():
        torch.manual_seed(3)
        ours = policy.model.sample(*policy.encode(frame, gh.INSTRUCTION), action_input)
        torch.manual_seed(3)
        theirs = policy.model.groot.get_action({**{f"eagle_{k}": v for k, v in eagle.items()}, **action_input})
    assert (ours - theirs["action_pred"]).abs().max() < 1e-5


def test_contextvla_compresses_past_frames_and_moss_trains_through_lerobots_freezing(assets):
    policy = GrootN15Policy(config(assets, "moss"), ph.stats())
    cfg = policy.config
    groot = policy.model.groot
    # lerobot's knobs freeze SigLIP and put it in eval mode: MOSS inside stays trainable and in train mode
    groot.backbone.set_trainable_parameters(tune_llm=False, tune_visual=False)
    policy.train()
    groot.backbone.set_frozen_modules_to_eval_mode()
    tower = policy.vision
    assert not tower.training and tower.temporal.training
    assert all(p.requires_grad for p in tower.temporal.parameters())
    assert not any(p.requires_grad for n, p in tower.named_parameters() if not n.startswith("temporal."))
    assert not any(p.requires_grad for p in groot.backbone.eagle_model.language_model.parameters())
    b = batch(cfg)
    ids, _ = policy._text(b["instruction"], 2)
    vl, mask = policy.encode(b["image"], b["instruction"])
    assert vl.shape[1] == ids.shape[1] - 7 * gh.TOKENS_PER_FRAME + 1  # 7 past frames -> 1 context token
    loss, _ = policy.loss_from_features(vl, mask, b)
    loss.backward()
    out_fc = [p for n, p in tower.temporal.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0]
    assert out_fc, "MOSS got no gradient"
    policy.eval()
    assert not tower.temporal.training


def test_a_few_training_steps_lower_the_loss(assets):
    torch.manual_seed(0)
    policy = GrootN15Policy(config(assets, "moss", gradient_checkpointing=True), ph.stats()).train()
    b = batch(policy.config, B=4)
    opt = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for _ in range(25):
        torch.manual_seed(0)  # the same noise and flow time at every step: the loss moves with the weights only
        loss, _ = policy(b)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.6 * losses[0], losses


def test_checkpoint_round_trip_keeps_only_trained_tensors(assets, tmp_path):
    policy = GrootN15Policy(config(assets, "moss", inference_seed=0), ph.stats()).eval()
    ph.randomise_zero_layers(policy.vision.temporal)
    policy.model.groot.action_head.model.proj_out_2.bias.data += 0.5  # a trained head tensor
    ckpt = policy.save_pretrained(tmp_path / "ckpt")
    loaded = MossVLAPolicy.from_pretrained(ckpt).eval()  # the one loader every command uses
    assert isinstance(loaded, GrootN15Policy)
    saved = json.loads((ckpt / "config.json").read_text())
    assert saved["kind"] == "groot_n15"
    from safetensors.torch import load_file

    keys = load_file(str(ckpt / "model.safetensors")).keys()
    assert not any("language_model" in k for k in keys) and any(".temporal." in k for k in keys)
    b = batch(policy.config, B=1)
    obs_w = {"image": b["image"], "state": b["state"], "instruction": b["instruction"]}
    assert torch.allclose(policy.predict_action_chunk(obs_w, seed=0), loaded.predict_action_chunk(obs_w, seed=0),
                          atol=1e-6)


def test_cached_select_action_equals_uncached(assets):
    policy = GrootN15Policy(config(assets, "moss", n_action_steps=1, inference_seed=0), ph.stats()).eval()
    ph.randomise_zero_layers(policy.vision.temporal)
    runs = []
    for use_cache in (True, False):
        policy.config.use_cache = use_cache
        policy.reset()
        runs.append(np.stack([policy.select_action(obs(i)) for i in range(10)]))
    assert np.abs(runs[0] - runs[1]).max() < 1e-5
    assert np.abs(runs[0][0] - runs[0][5]).max() > 1e-4  # the actions do depend on the frames


def test_loop_state_swaps_per_session_as_moss_vla_policys_does(assets):
    """moss-serve keeps one loop state per session (moss_vla/serve.py, loop_state / set_loop_state): a stream
    interleaved with other sessions' gives the actions of the stream alone."""
    policy = GrootN15Policy(config(assets, "moss", n_action_steps=1, inference_seed=0), ph.stats()).eval()
    ph.randomise_zero_layers(policy.vision.temporal)
    policy.reset()
    alone = np.stack([policy.select_action(obs(i)) for i in range(4)])
    policy.set_loop_state(None, policy.config)
    mine, got = policy.loop_state(), []
    for i in range(4):
        policy.set_loop_state(mine)
        got.append(policy.select_action(obs(i)))
        mine = policy.loop_state()
        policy.set_loop_state(None)  # another session, fresh, in between
        policy.select_action(obs(9 - i))
    assert np.abs(np.stack(got) - alone).max() < 1e-5


def test_device_resolution_and_cpu(assets):
    assert resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        assert resolve_device("auto") == torch.device("cpu")
        with pytest.raises(RuntimeError, match="device=cuda:1 was asked for, but torch sees no CUDA device; use device=cpu"):
            resolve_device("cuda:1")
    with pytest.raises(ValueError, match=r"expected auto \| cpu \| cuda \| cuda:N"):
        resolve_device("gpu")
    with autocast(torch.device("cpu")):  # no autocast on the CPU: fp32 stays fp32
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
    policy = GrootN15Policy(config(assets, "contextvla"), ph.stats()).to(resolve_device("cpu")).eval()
    policy.reset()
    assert policy.select_action(obs(0)).shape == (8,)


def test_no_network_access_is_attempted(assets, monkeypatch):
    import huggingface_hub
    from lerobot.policies.groot import utils as groot_utils

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args[:2]}")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    for name in ("hf_hub_download", "snapshot_download"):
        monkeypatch.setattr(huggingface_hub, name, refuse)
    monkeypatch.setattr(groot_utils, "hf_hub_download", refuse)
    policy = GrootN15Policy(config(assets, "moss"), ph.stats()).eval()
    policy.reset()
    assert np.isfinite(policy.select_action(obs(0))).all()


def test_missing_and_mismatched_assets_are_named(assets, tmp_path):
    broken = tmp_path / "GR00T-N1.5-3B"
    shutil.copytree(assets[0], broken)
    (broken / "config.json").unlink()
    with pytest.raises(shim.MissingAssetError, match=r"config.json not found.*huggingface-cli download "
                                                     r"nvidia/GR00T-N1.5-3B --local-dir .*GR00T-N1.5-3B"):
        GrootN15Policy(config(assets, "groot", pretrained_path=str(broken)), ph.stats())
    shutil.copy(assets[0] / "config.json", broken / "config.json")
    shard = min(broken.glob("model-0000*.safetensors"))
    shard.unlink()
    with pytest.raises(shim.MissingAssetError, match=f"{shard.name} not found"):
        GrootN15Policy(config(assets, "groot", pretrained_path=str(broken)), ph.stats())
    tokens = tmp_path / "eagle"
    shutil.copytree(assets[1], tokens)
    (tokens / "processor_config.json").unlink()
    with pytest.raises(shim.MissingAssetError, match=r"processor_config.json not found.*eagle2hg-processor"):
        GrootN15Policy(config(assets, "groot", tokenizer_path=str(tokens)), ph.stats())
    # an Eagle config that does not describe the checkpoint (another LLM width)
    shutil.copy(assets[1] / "processor_config.json", tokens / "processor_config.json")
    eagle = json.loads((tokens / "config.json").read_text())
    eagle["text_config"]["intermediate_size"] = 48
    (tokens / "config.json").write_text(json.dumps(eagle))
    with pytest.raises(ValueError, match="does not fit"):
        GrootN15Policy(config(assets, "groot", tokenizer_path=str(tokens)), ph.stats())
    # a fine-tuned checkpoint over another base model
    ckpt = GrootN15Policy(config(assets, "groot"), ph.stats()).save_pretrained(tmp_path / "ckpt")
    saved = json.loads((ckpt / "config.json").read_text())
    saved["tokenizer_path"] = str(tokens)
    (ckpt / "config.json").write_text(json.dumps(saved))
    with pytest.raises(ValueError, match=r"trained on another base model.*eagle.text_config differ"):
        MossVLAPolicy.from_pretrained(ckpt)


def test_model_groot_n15_composes_with_every_policy_variant(assets):
    for variant, frames, compress in (("groot", 1, False), ("contextvla", 8, True), ("moss", 8, True)):
        cfg = compose_config([f"policy={variant}", "model=groot_n15", f"model.pretrained_path={assets[0]}",
                              f"model.tokenizer_path={assets[1]}", "data.paths=[x]"], "train")
        c = GrootN15Config.from_hydra(cfg.policy, cfg.model)
        assert (c.n_frames, c.backbone.context_compression, c.temporal.module) == (
            frames, compress, "moss" if variant == "moss" else "none")
        assert c.vision.temporal_after_layer == 6 and c.temporal.window == (5, 9, 9) and c.temporal.hidden == 64
    cfg.model.vision.temporal_after_layer = 2
    cfg.model.input_image_size = gh.IMAGE
    assert isinstance(make_policy(cfg.policy, cfg.model, ph.stats()), GrootN15Policy)
    with pytest.raises(ValueError, match="aux_label_weight > 0 is not supported"):
        GrootN15Config.from_hydra({**dict(cfg.policy), "aux_label_weight": 1.0}, cfg.model)
    # knobs the bridge would ignore: rejected, naming the key (the presets' torchscript_sampler is dropped)
    for key, value in (("aux_label_classes", 3), ("aux_label_tokens", "all")):
        with pytest.raises(ValueError, match=rf"{key}\b.*model=groot_n15"):
            GrootN15Config.from_hydra({**dict(cfg.policy), key: value}, cfg.model)
    with pytest.raises(ValueError, match=r"torchscript_sampler: true .*model=groot_n15"):
        GrootN15Config.from_hydra(cfg.policy, {**dict(cfg.model), "torchscript_sampler": True})


def test_moss_check_writes_one_report(assets, tmp_path):
    from moss_vla.groot_n15.check import main, run_check

    over = {"input_image_size": gh.IMAGE, "vision": {"temporal_after_layer": 2}, "gradient_checkpointing": False}
    report = run_check(str(assets[0]), str(assets[1]), "cpu", batch_sizes=(2,), steps=1, select_steps=2,
                       overrides=over)
    assert report["zero_init_equality"]["max_abs_diff"] < 1e-5, report["zero_init_equality"]
    assert report["zero_init_equality"]["prompt_ids_equal"]
    assert report["training_batch_2"]["step_s"] > 0 and report["select_action"]["cached_ms"] > 0
    assert report["parameters"]["moss"] > 0 and report["machine"]["device"] == "cpu"
    assert main(["groot_n15", f"pretrained_path={tmp_path}", f"tokenizer_path={assets[1]}"]) == 1  # names the file
