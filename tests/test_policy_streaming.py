"""select_action in the 10 Hz loop: frame window, replanning, and the streaming cache (streaming.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from policy_helpers import INSTRUCTION, frames, randomise_zero_layers, stats, tiny_config

from moss_vla.policy import MossVLAPolicy
from moss_vla.policy.backbone import group_causal_mask

pytestmark = pytest.mark.usefixtures("one_thread")


def twin_policies(policy: str, **overrides) -> tuple[MossVLAPolicy, MossVLAPolicy]:
    """Two policies with the same (trained-looking) weights: cached and uncached select_action."""
    torch.manual_seed(0)
    cached = MossVLAPolicy(tiny_config(policy, use_cache=True, inference_seed=5, **overrides), stats(-2, 2))
    if cached.vision.temporal is not None:
        randomise_zero_layers(cached.vision.temporal)  # non-zero temporal output, like a trained module
    uncached = MossVLAPolicy(tiny_config(policy, use_cache=False, inference_seed=5, **overrides), stats(-2, 2))
    uncached.load_state_dict(cached.state_dict())
    return cached.eval(), uncached.eval()


def run(policy: MossVLAPolicy, images: list[np.ndarray]) -> np.ndarray:
    policy.reset()
    state = np.linspace(-1, 1, 8).astype(np.float32)
    return np.stack([policy.select_action({"image": im, "state": state, "instruction": INSTRUCTION})
                     for im in images])


@pytest.mark.parametrize("policy,module", [("moss", "moss"), ("contextvla", "selfy"), ("contextvla", "framediff"),
                                           ("contextvla", "none"), ("groot", "none")])
def test_cached_equals_uncached_with_centred_window(policy, module):
    """Centred STSS window: only the pre-module layers are cached, and the actions are the same."""
    cached, uncached = twin_policies(policy, temporal__module=module)
    images = frames(19)  # replans at steps 0, 8, 16
    a_cached, a_uncached = run(cached, images), run(uncached, images)
    assert a_cached.shape == (19, 8) and a_cached.dtype == np.float32
    np.testing.assert_allclose(a_cached, a_uncached, atol=1e-5)
    assert len(cached.cache.pre) == cached.config.n_frames


def reference_stream_features(policy: MossVLAPolicy, images: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal streaming semantics computed without any cache: the whole history (first frame T times)
    in one pass; each frame's temporal window and early-block attention cover it and its T-1
    predecessors (sliding block-causal mask); the text attends to the last T frames."""
    vision, bb, T = policy.vision, policy.backbone, policy.config.n_frames
    hist = [images[0]] * (T - 1) + list(images)
    pix = torch.stack([torch.from_numpy(im).permute(2, 0, 1).float() / 255 for im in hist])
    pre = vision.pre(vision.preprocess(pix))  # (N, h*w, C)
    N = len(hist)
    tokens = torch.cat([vision.post(vision.temporal_residual_newest(pre[max(0, j - T + 1): j + 1][None]))
                        for j in range(N)])  # (N, h*w, C)
    emb = bb.embed_frames(tokens[None])  # (1, N, n, D)
    n = emb.shape[2]
    text, text_mask = policy._text(INSTRUCTION, 1)
    x = torch.cat([emb.flatten(1, 2), text], 1)
    g = torch.cat([torch.arange(N).repeat_interleave(n), torch.full((text.shape[1],), N)])
    window_start = torch.where(g < N, g - T + 1, N - T)  # text sees the last T frames
    mask = group_causal_mask(g, torch.cat([torch.ones(1, N * n, dtype=torch.bool), text_mask], 1))
    mask = mask & (g[None, :] >= window_start[:, None])[None, None]
    for blk in bb.blocks[: bb.n_early]:
        x, _ = blk(x, mask)
    states = x[:, : N * n].view(1, N, n, -1)[:, -T:]
    context = states[:, :-1].mean(dim=(1, 2))[:, None]
    return bb.late(context, states[:, -1], x[:, N * n:], text_mask)


@pytest.mark.parametrize("module", ["moss", "framediff"])
def test_causal_full_cache_matches_the_streaming_reference(module):
    """Causal window + ContextVLA: every past-frame state is cached; the VL features equal an uncached
    pass over the whole history with the same streaming semantics."""
    torch.manual_seed(0)
    policy = MossVLAPolicy(tiny_config("moss", temporal__causal=True, temporal__module=module), stats()).eval()
    randomise_zero_layers(policy.vision.temporal)
    assert policy.cache.full
    images = frames(11, seed=1)
    text, text_mask = policy._text(INSTRUCTION, 1)
    policy.reset()
    with torch.no_grad():
        for k, im in enumerate(images):
            policy.cache.push(torch.from_numpy(im).permute(2, 0, 1)[None].float() / 255)
            if k in (0, 3, 10):
                got, got_mask = policy.cache.vl_features(text, text_mask)
                ref, ref_mask = reference_stream_features(policy, images[: k + 1])
                assert torch.equal(got_mask, ref_mask)
                assert (got - ref).abs().max() < 1e-5
    assert len(policy.cache.kv) == policy.config.n_frames  # T frames of keys/values, no more


def test_replans_every_n_action_steps_and_returns_the_chunk_in_order():
    torch.manual_seed(0)
    policy = MossVLAPolicy(tiny_config("moss", n_action_steps=6), stats()).eval()
    chunks = []
    sample = policy.sample_from_features

    def recording_sample(*args, **kwargs):
        chunk = sample(*args, **kwargs)
        chunks.append(chunk)
        return chunk

    policy.sample_from_features = recording_sample
    actions = run(policy, frames(13))
    assert len(chunks) == 3  # steps 0, 6, 12
    np.testing.assert_allclose(actions[:6], chunks[0][0, :6].numpy(), atol=1e-6)
    np.testing.assert_allclose(actions[6:12], chunks[1][0, :6].numpy(), atol=1e-6)


def test_temporal_ensembling_plans_every_step_and_averages_the_chunks_like_act():
    """Step k's action: sum_r w_r chunk_(j_r)[k - j_r] / sum_r w_r over the chunks planned at steps j_0 < j_1 <
    ... <= k that reach step k, w_r = exp(-coeff * r), r = 0 the oldest (ACT's Algorithm 2)."""
    torch.manual_seed(0)
    coeff = 0.3
    policy = MossVLAPolicy(tiny_config("moss", n_action_steps=1, temporal_ensemble_coeff=coeff), stats()).eval()
    chunks = []
    sample = policy.sample_from_features

    def recording_sample(*args, **kwargs):
        chunk = sample(*args, **kwargs)
        chunks.append(chunk[0].numpy())
        return chunk

    policy.sample_from_features = recording_sample
    steps, H = 20, policy.config.action_head.horizon
    actions = run(policy, frames(steps))
    assert len(chunks) == steps and steps > H  # a chunk every step; early chunks fall out of the ensemble
    for k, action in enumerate(actions):
        planned = [j for j in range(k + 1) if k - j < H]
        w = np.exp(-coeff * np.arange(len(planned)))
        expected = sum(wr * chunks[j][k - j] for wr, j in zip(w, planned)) / w.sum()
        np.testing.assert_allclose(action, expected, atol=1e-5)
    assert np.abs(actions[1] - chunks[1][0]).max() > 1e-3  # not simply the newest chunk's action
    first = run(policy, frames(1, seed=3))[0]  # run() resets: the ensemble starts again
    np.testing.assert_allclose(first, chunks[-1][0], atol=1e-6)
    with pytest.raises(ValueError, match=r"temporal_ensemble_coeff = 0.3 needs n_action_steps = 1 .*got "
                                         r"n_action_steps = 2"):
        tiny_config("moss", n_action_steps=2, temporal_ensemble_coeff=coeff)


def test_episode_start_repeats_the_first_frame_and_reset_forgets():
    cached, uncached = twin_policies("moss")
    images = frames(3, seed=2)
    first = run(cached, images)[0]
    window = torch.from_numpy(np.stack([images[0]] * 8)).permute(0, 3, 1, 2)[None].float() / 255
    state = torch.from_numpy(np.linspace(-1, 1, 8).astype(np.float32))[None]
    chunk = uncached.predict_action_chunk({"image": window, "state": state, "instruction": INSTRUCTION}, seed=5)
    np.testing.assert_allclose(first, chunk[0, 0].numpy(), atol=1e-5)
    again = run(cached, images)[0]  # run() calls reset(): same start, same action
    np.testing.assert_allclose(first, again, atol=1e-6)
