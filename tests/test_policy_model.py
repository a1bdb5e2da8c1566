"""Policy parts: vision tower vs SigLIP, temporal modules, backbone masks, action head, training, checkpoints."""

from __future__ import annotations

import json
import math
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from transformers import SiglipVisionModel

sys.path.insert(0, str(Path(__file__).parent))
from policy_helpers import (
    INSTRUCTION,
    batch,
    randomise_zero_layers,
    stats,
    tiny_config,
    tiny_policy,
)

from moss_vla.paths import CONFIG_DIR
from moss_vla.policy import MossVLAPolicy, make_policy
from moss_vla.policy.configuration import MossVLAConfig, TemporalConfig
from moss_vla.policy.temporal_modules import MossTemporal, build_temporal_module
from moss_vla.policy.vision_tower import VisionTower, siglip_config

MODULES = ["moss", "selfy", "framediff", "none"]


pytestmark = pytest.mark.usefixtures("one_thread")


# ---- vision tower ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("module", MODULES)
def test_tower_at_init_equals_siglip_loaded_from_disk(tmp_path, module):
    """Zero-initialised temporal module: the tower gives exactly SiglipVisionModel's output (< 1e-5),
    with the SigLIP weights loaded from a checkpoint directory the test writes."""
    cfg = tiny_config("moss", temporal__module=module)
    torch.manual_seed(3)
    siglip = SiglipVisionModel(siglip_config(cfg.vision)).eval()
    siglip.save_pretrained(tmp_path / "siglip")
    tower = VisionTower(replace(cfg.vision, pretrained_path=str(tmp_path / "siglip")), cfg.temporal).eval()
    assert (tower.temporal is None) == (module == "none")
    S = cfg.vision.image_size
    frames = torch.rand(2, cfg.n_frames, 3, S, S)
    with torch.no_grad():
        ours = tower(frames)  # (B, T, h*w, C)
        ref = siglip(pixel_values=(frames.flatten(0, 1) - 0.5) / 0.5).last_hidden_state
    assert ours.shape == (2, cfg.n_frames, cfg.vision.grid ** 2, cfg.vision.hidden_size)
    assert (ours.flatten(0, 1) - ref).abs().max().item() < 1e-5


def test_tower_rejects_checkpoint_of_another_size(tmp_path):
    cfg = tiny_config("moss")
    SiglipVisionModel(siglip_config(replace(cfg.vision, hidden_size=48))).save_pretrained(tmp_path / "s")
    with pytest.raises(ValueError, match=r"hidden_size: config 32 vs checkpoint 48"):
        VisionTower(replace(cfg.vision, pretrained_path=str(tmp_path / "s")), cfg.temporal)


def test_trained_temporal_module_changes_tower_output():
    cfg = tiny_config("moss")
    tower = VisionTower(cfg.vision, cfg.temporal).eval()
    frames = torch.rand(1, cfg.n_frames, 3, 32, 32)
    with torch.no_grad():
        before = tower(frames)
        randomise_zero_layers(tower.temporal)
        after = tower(frames)
    assert (after - before).abs().max() > 1e-3


# ---- temporal modules -------------------------------------------------------------------------------------
@pytest.mark.parametrize("module", ["moss", "selfy", "framediff"])
def test_temporal_module_zero_at_init_and_causal_window_ignores_future(module):
    C = 16
    x = torch.randn(2, 6, 4, 4, C)
    m = build_temporal_module(C, TemporalConfig(module=module, window=(3, 3, 3), hidden=8, conv_blocks=1,
                                                causal=True)).eval()
    with torch.no_grad():
        assert m(x).abs().max() == 0  # final FCs start at zero
        randomise_zero_layers(m)
        y = m(x)
        x2 = x.clone()
        x2[:, 4:] = torch.randn_like(x2[:, 4:])  # change the future of frame 3
        y2 = m(x2)
        assert y.shape == x.shape
        assert torch.allclose(y[:, :4], y2[:, :4], atol=1e-5)  # causal: frames 0..3 unaffected
        assert (y[:, 4:] - y2[:, 4:]).abs().max() > 1e-3
        assert torch.allclose(m.newest(x), y[:, -1:], atol=1e-6)


def test_centred_window_sees_the_future():
    C = 16
    m = build_temporal_module(C, TemporalConfig(module="moss", window=(3, 3, 3), hidden=8, conv_blocks=1)).eval()
    randomise_zero_layers(m)
    x = torch.randn(1, 5, 4, 4, C)
    x2 = x.clone()
    x2[:, 3] += torch.randn(4, 4, C)
    with torch.no_grad():
        assert (m(x)[:, 2] - m(x2)[:, 2]).abs().max() > 1e-3  # frame 2's window includes frame 3


def test_folded_moss_computes_the_same_with_fewer_parameters():
    C = 32
    m = build_temporal_module(C, TemporalConfig(module="moss", window=(3, 5, 5), hidden=8, conv_blocks=2))
    assert isinstance(m, MossTemporal)
    randomise_zero_layers(m)
    m.eval()
    x = torch.randn(2, 4, 5, 5, C)
    top_fuse = m.moss.encoders[-1].fuse
    called = []  # the layers the folded forward replaces must not run (their parameters are not in use)
    for layer in [*m.moss.fc_orders.values(), top_fuse]:
        layer.register_forward_hook(lambda mod, i, o: called.append(mod))
    with torch.no_grad():
        ref = m(x)
        n_before = sum(p.numel() for p in m.moss.parameters())
        m.fold_for_inference()
        called.clear()
        folded = m(x)
    assert not called
    # folded inference module: FC(F), g(1) complete (M(1) feeds order 2), g(2) without its last linear,
    # and two folded (L*D -> C) maps instead of two C -> C FC(M(n))
    n_after = (n_before - sum(p.numel() for p in m.moss.fc_orders.parameters())
               - sum(p.numel() for p in top_fuse.parameters()) + sum(p.numel() for p in m.folded.parameters()))
    assert (folded - ref).abs().max() < 1e-5
    assert n_after < n_before


@pytest.mark.parametrize("fold", [False, True])
def test_causal_moss_newest_frame_only_matches_full_clip(fold):
    C = 16
    m = build_temporal_module(C, TemporalConfig(module="moss", window=(3, 3, 3), hidden=8, conv_blocks=1,
                                                causal=True))
    randomise_zero_layers(m)
    m.eval()
    if fold:
        m.fold_for_inference()
    x = torch.randn(2, 7, 4, 4, C)
    with torch.no_grad():
        assert (m.newest(x) - m.moss(x)[:, -1:]).abs().max() < 1e-5


# ---- backbone -------------------------------------------------------------------------------------------
def test_backbone_group_causal_and_contextvla_compression():
    policy = tiny_policy("contextvla").eval()
    cfg, bb = policy.config, policy.backbone
    T, n = cfg.n_frames, bb.tokens_per_frame
    frames = torch.randn(1, T, n, cfg.backbone.hidden_size)
    text, mask = policy._text(INSTRUCTION, 1)
    with torch.no_grad():
        out, valid = bb(frames, text, mask)
        assert out.shape[1] == 1 + n + text.shape[1]  # [context, current frame, text]
        assert valid.all()
        # past frame changed -> context token and everything after change; nothing else in the input did
        f2 = frames.clone()
        f2[:, 0] += torch.randn(n, f2.shape[-1])  # (a constant shift would vanish in the LayerNorms)
        out2, _ = bb(f2, text, mask)
        assert (out2[:, 0] - out[:, 0]).abs().max() > 1e-4
        # early blocks are group-causal: frame 0's states do not depend on frame 5 or on the text
        groups_out = []
        for f in (frames, frames.clone().index_put_((torch.tensor([0]), torch.tensor([5])), torch.randn(n, 32))):
            x = torch.cat([f.flatten(1, 2), text], 1)
            from moss_vla.policy.backbone import group_causal_mask

            g = torch.cat([torch.arange(T).repeat_interleave(n), torch.full((text.shape[1],), T)])
            m = group_causal_mask(g, torch.ones(1, x.shape[1], dtype=torch.bool))
            for blk in bb.blocks[:2]:
                x, _ = blk(x, m)
            groups_out.append(x)
        assert torch.allclose(groups_out[0][:, : 5 * n], groups_out[1][:, : 5 * n], atol=1e-6)
        assert (groups_out[0][:, 5 * n:] - groups_out[1][:, 5 * n:]).abs().max() > 1e-4


# ---- whole policy: training, inference, checkpoints ------------------------------------------------------
@pytest.mark.parametrize("variant", ["groot", "contextvla", "moss"])
def test_make_policy_from_hydra_and_overfit_a_batch(variant):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        cfg = compose(config_name=None, overrides=[f"+policy={variant}", "+model=tiny",
                                                   "model.input_image_size=64"])
    torch.manual_seed(0)
    policy = make_policy(cfg.policy, cfg.model, stats())
    assert policy.config.variant == variant and policy.config.model_size == "tiny"
    assert policy.config.n_frames == (1 if variant == "groot" else 8)
    b = batch(policy.config, B=4)  # includes extra keys (task, episode, index, image_is_pad)
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        torch.manual_seed(0)  # the same noise and flow time every step: a deterministic objective to fit
        loss, st = policy(b)
        assert set(st) >= {"loss"} and torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(st["loss"])
    assert losses[-1] < 0.4 * losses[0]


def test_moss_gradients_reach_the_temporal_module():
    policy = tiny_policy("moss")
    b = batch(policy.config)
    opt = torch.optim.SGD(policy.parameters(), lr=0.1)
    for _ in range(2):  # zero-init final FCs: inner layers receive gradient from the 2nd step on
        loss, _ = policy(b)
        opt.zero_grad()
        loss.backward()
        opt.step()
    moss = policy.vision.temporal.moss
    assert moss.fc_visual.weight.abs().sum() > 0
    assert moss.encoders[0].embed.weight.grad.abs().sum() > 0


def test_predict_action_chunk_unnormalised_and_seeded():
    policy = MossVLAPolicy(tiny_config("moss"), stats(100.0, 102.0)).eval()
    b = batch(policy.config, B=3)
    b["state"] = b["state"] + 101.0
    a1 = policy.predict_action_chunk(b, seed=7)
    a2 = policy.predict_action_chunk(b, seed=7)
    a3 = policy.predict_action_chunk(b, seed=8)
    assert a1.shape == (3, 16, 8)
    assert torch.equal(a1, a2) and not torch.equal(a1, a3)
    # unnormalised: the untrained head's output (a few units in normalised space) maps around 101
    assert 90 < a1.mean().item() < 112


def test_save_and_load_roundtrip(tmp_path):
    policy = tiny_policy("moss").eval()
    randomise_zero_layers(policy.vision.temporal)
    policy.normalizer.set_stats(stats(-2.0, 3.0))
    b = batch(policy.config)
    ref = policy.predict_action_chunk(b, seed=1)
    policy.save_pretrained(tmp_path / "ckpt")
    files = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    assert files == ["config.json", "model.safetensors", "stats.json"]
    assert json.loads((tmp_path / "ckpt" / "stats.json").read_text())["action"]["min"] == [-2.0] * 8
    loaded = MossVLAPolicy.from_pretrained(tmp_path / "ckpt", expected_config=policy.config).eval()
    assert loaded.config == policy.config
    assert torch.allclose(loaded.predict_action_chunk(b, seed=1), ref, atol=1e-6)


def test_checkpoint_from_another_config_names_the_difference(tmp_path):
    tiny_policy("moss").save_pretrained(tmp_path / "moss")
    other = tiny_config("contextvla")
    with pytest.raises(ValueError, match=r"temporal.module: expected 'none', checkpoint has 'moss'"):
        MossVLAPolicy.from_pretrained(tmp_path / "moss", expected_config=other)
    policy = tiny_policy("contextvla")
    with pytest.raises(ValueError, match=r"does not fit this policy's config.*unexpected \['vision.temporal"):
        policy.load_weights(tmp_path / "moss" / "model.safetensors")


def test_bad_inputs_name_expected_and_actual():
    policy = tiny_policy("moss").eval()
    b = batch(policy.config)
    with pytest.raises(ValueError, match=r"got 5 frames|has 5 frames, expected n_frames = 8"):
        policy.predict_action_chunk({**b, "image": b["image"][:, :5]})
    with pytest.raises(ValueError, match=r"\(32, 32\), expected \(64, 64\)"):
        policy.predict_action_chunk({**b, "image": b["image"][..., :32, :32]})
    with pytest.raises(ValueError, match=r"state must be \(B, 8\).*\(2, 7\)"):
        policy.predict_action_chunk({**b, "state": b["state"][:, :7]})
    with pytest.raises(ValueError, match=r"action must be \(B, 16, 8\).*\(2, 10, 8\)"):
        policy({**b, "action": b["action"][:, :10]})
    with pytest.raises(ValueError, match=r"image \(64, 64, 3\) uint8.*\(224, 224, 3\)"):
        import numpy as np

        policy.select_action({"image": np.zeros((224, 224, 3), np.uint8), "state": np.zeros(8, np.float32),
                              "instruction": INSTRUCTION})
    with pytest.raises(ValueError, match=r"stats\['state'\]\['mean'\] has 7 values, expected 8"):
        policy.normalizer.set_stats(stats(dim=7))


def test_config_rejects_unknown_keys_and_bad_values():
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['windw'\] in 'temporal'"):
        MossVLAConfig.from_dict({"temporal": {"windw": [5, 9, 9]}})
    with pytest.raises(ValueError, match=r"temporal.module must be one of .* got 'moss2'"):
        MossVLAConfig.from_dict({"temporal": {"module": "moss2"}})
    with pytest.raises(ValueError, match=r"vision.temporal_after_layer must be in \[0, vision.num_layers = 4\]"):
        MossVLAConfig.from_dict({"vision": {"temporal_after_layer": 6}})


def test_hf_tokenizer_from_local_directory(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = sorted(set(INSTRUCTION.replace(",", " ,").replace(".", " .").split()))
    vocab = {"[PAD]": 0, "[UNK]": 1, **{w: i + 2 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]").save_pretrained(
        tmp_path / "tok")
    policy = tiny_policy("moss", backbone__tokenizer=str(tmp_path / "tok"), backbone__text_pool=1).eval()
    _, mask = policy.tokenizer([INSTRUCTION, "Point left"])
    assert mask.sum(1).tolist() == [len(INSTRUCTION.replace(",", " ,").replace(".", " .").split()), 2]
    assert policy.backbone.text_embed.num_embeddings == len(vocab)
    chunk = policy.predict_action_chunk(batch(policy.config), seed=0)
    assert chunk.shape == (2, 16, 8) and torch.isfinite(chunk).all()


@pytest.mark.parametrize("L,order_one_frames", [(3, 1), (5, 2)])
def test_causal_moss_stream_memory_reuses_m1_without_changing_the_output(L, order_one_frames, monkeypatch):
    """A stream of windows (growing to T = 8 frames, then sliding): with the module's stream memory,
    each new frame computes M(1) for itself (and, when 2 (L - 1) > T - 1, for the oldest frame it
    needs, whose window got truncated) instead of L frames; the output is the memoryless one."""
    from moss_vla.policy import temporal_modules

    C, T = 16, 8
    m = build_temporal_module(C, TemporalConfig(module="moss", window=(L, 3, 3), hidden=8, conv_blocks=1,
                                                causal=True))
    randomise_zero_layers(m)
    m.eval()
    memory = m.stream_memory()
    query_frames: list[int] = []
    real_stss = temporal_modules.stss

    def counting_stss(*args, queries, **kwargs):
        query_frames.append(queries[1] - queries[0])
        return real_stss(*args, queries=queries, **kwargs)

    monkeypatch.setattr(temporal_modules, "stss", counting_stss)
    frames = torch.randn(2, 20, 4, 4, C)
    with torch.no_grad():
        for t in range(20):
            window = frames[:, max(0, t - T + 1): t + 1]
            query_frames.clear()
            got = m.newest(window, memory)
            with_memory = sum(query_frames)
            query_frames.clear()
            ref = m.newest(window)
            assert (got - ref).abs().max() < 1e-5
            if t >= T:  # sliding window: M(2) of the newest frame + M(1) where needed
                assert (with_memory, sum(query_frames)) == (order_one_frames + 1, L + 1)
    assert sorted(memory.m1) == list(range(20 - T, 20))  # the frames of the last window, no older ones


def test_aux_label_loss_is_added_and_reaches_the_vision_tower():
    with pytest.raises(ValueError, match="aux_label_classes >= 2"):
        tiny_config("moss", aux_label_weight=0.5)
    policy = tiny_policy("moss", aux_label_weight=0.5, aux_label_classes=3)
    b = {**batch(policy.config), "stim_label": torch.tensor([-1, 1])}
    loss, st = policy(b)
    assert abs(float(loss.detach()) - st["action_loss"] - 0.5 * st["aux_label_loss"]) < 1e-5
    assert st["aux_label_acc"] in (0.0, 0.5, 1.0)
    loss.backward()
    assert policy.label_head.weight.grad.abs().sum() > 0
    assert policy.vision.embeddings.patch_embedding.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match=r"stim_label values \[0, 2\] do not fit aux_label_classes = 3"):
        policy({**b, "stim_label": torch.tensor([2, 0])})
    del b["stim_label"]
    with pytest.raises(KeyError, match="lacks 'stim_label'"):
        policy(b)
    assert tiny_policy("moss").label_head is None  # off by default: no extra parameters


def test_label_loss_counts_only_windows_that_show_their_label():
    """stim_evidence False: a window whose frames cannot show its label is left out of the label loss
    (whatever its label); a window without an interaction (-1, "none") always counts."""
    policy = tiny_policy("moss", aux_label_weight=0.5, aux_label_classes=3).eval()
    vl, vl_mask = policy.encode(batch(policy.config)["image"], INSTRUCTION)
    logits = policy.label_logits(vl, vl_mask)

    def label_loss(labels, evidence):
        b = {"stim_label": torch.tensor(labels), "stim_evidence": torch.tensor(evidence)}
        return policy.label_loss(vl, vl_mask, b)

    only_first = torch.nn.functional.cross_entropy(logits[:1], torch.tensor([2]))
    for other in (0, 1):
        loss, acc = label_loss([1, other], [True, False])
        assert torch.allclose(loss, only_first) and acc == float(logits[0].argmax() == 2)
    none_counts, _ = label_loss([1, -1], [True, False])
    assert torch.allclose(none_counts, torch.nn.functional.cross_entropy(logits, torch.tensor([2, 0])))
    nothing, acc = label_loss([0, 1], [False, False])
    assert float(nothing.detach()) == 0.0 and math.isnan(acc)  # no window to score
    everything, _ = policy.label_loss(vl, vl_mask, {"stim_label": torch.tensor([0, 1])})  # no evidence key
    assert torch.allclose(everything, torch.nn.functional.cross_entropy(logits, torch.tensor([1, 2])))


@pytest.mark.parametrize("variant, overrides", [("groot", {}), ("contextvla", {}), ("moss", {}),
                                                ("moss", {"backbone__context_compression": False})])
def test_label_head_reads_exactly_the_current_frame_tokens(variant, overrides):
    """current_frame_positions are the newest frame's VL output positions: changing only the newest frame's
    vision tokens moves those (and the text, and the context token), no earlier frame's; the label head's
    logits depend on those positions only."""
    policy = tiny_policy(variant, aux_label_classes=3, **overrides).eval()
    cfg, bb = policy.config, policy.backbone
    T, n = cfg.n_frames, bb.tokens_per_frame
    frames = torch.randn(1, T, n, cfg.backbone.hidden_size)
    text, mask = policy._text(INSTRUCTION, 1)
    changed = frames.clone()
    changed[:, -1] += torch.randn(n, frames.shape[-1])
    with torch.no_grad():
        (out, valid), (out2, _) = bb(frames, text, mask), bb(changed, text, mask)
        moved = ((out2 - out).abs().amax(-1) > 1e-5)[0]  # (N,)
        frame = bb.current_frame_positions()
        n_vision = out.shape[1] - text.shape[1]
        assert frame.stop - frame.start == n and frame.stop <= n_vision
        # besides the frame's own positions, only the context token (which attends to the current frame
        # in the blocks after the compression) moves; earlier frames' positions do not
        expected = set(range(frame.start, frame.stop)) | ({0} if bb.compress else set())
        assert set(torch.nonzero(moved[:n_vision]).flatten().tolist()) == expected
        logits = policy.label_logits(out, valid)
        elsewhere = out.clone()
        outside = torch.ones(out.shape[1], dtype=torch.bool)
        outside[frame] = False
        elsewhere[:, outside] += 5 * torch.randn(int(outside.sum()), out.shape[-1])
        assert torch.equal(policy.label_logits(elsewhere, valid), logits)
        inside = out.clone()
        inside[:, frame] += torch.randn(n, out.shape[-1])
        assert (policy.label_logits(inside, valid) - logits).abs().max() > 1e-4
        # "all" (the reading before this option) sees the other tokens too
        policy.config.aux_label_tokens = "all"
        assert (policy.label_logits(elsewhere, valid) - policy.label_logits(out, valid)).abs().max() > 1e-4


def test_checkpoint_saved_before_aux_label_tokens_keeps_reading_all_tokens(tmp_path):
    policy = tiny_policy("moss", aux_label_classes=3)
    assert policy.config.aux_label_tokens == "current_frame"  # the configs' default
    policy.save_pretrained(tmp_path / "ckpt")
    saved = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert MossVLAPolicy.from_pretrained(tmp_path / "ckpt").config.aux_label_tokens == "current_frame"
    del saved["aux_label_tokens"]  # as written before the option existed
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps(saved))
    assert MossVLAPolicy.from_pretrained(tmp_path / "ckpt").config.aux_label_tokens == "all"
    with pytest.raises(ValueError, match=r"aux_label_tokens: expected 'current_frame', checkpoint has 'all'"):
        MossVLAPolicy.from_pretrained(tmp_path / "ckpt", expected_config=policy.config)
    with pytest.raises(ValueError, match=r"aux_label_tokens must be one of \('current_frame', 'all'\), got 'newest'"):
        tiny_config("moss", aux_label_tokens="newest")
