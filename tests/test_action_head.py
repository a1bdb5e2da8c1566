"""Action head (action_head.py): our Euler sampler against lerobot's own FlowmatchingActionHead.get_action."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from omegaconf import OmegaConf
from transformers.feature_extraction_utils import BatchFeature

from moss_vla.paths import CONFIG_DIR
from moss_vla.policy.action_head import ActionHead, check_fast_sampler_applies
from moss_vla.policy.configuration import ActionHeadConfig

pytestmark = pytest.mark.usefixtures("one_thread")

STATE_DIM, ACTION_DIM = 8, 8


def head(preset: str = "tiny", seed: int = 0, **changes) -> tuple[ActionHead, int]:
    """An eval-mode head of the preset's sizes with every weight perturbed (no zero biases, no symmetric
    init), and its backbone width."""
    mc = OmegaConf.load(CONFIG_DIR / "model" / f"{preset}.yaml")
    cfg = replace(ActionHeadConfig(**OmegaConf.to_container(mc.action_head)), **changes)
    width = mc.backbone.hidden_size
    torch.manual_seed(seed)
    h = ActionHead(cfg, STATE_DIM, ACTION_DIM, width).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in h.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return h, width


def inputs(B: int, N: int, width: int, seed: int = 2) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(B, N, dtype=torch.bool)
    mask[0, N - 3 :] = False  # padded text: lerobot's DiT attends to it anyway, and so must we
    return torch.randn(B, N, width, generator=g), mask, torch.rand(B, STATE_DIM, generator=g) * 2 - 1


@pytest.mark.parametrize("preset,changes", [
    ("tiny", {}),                                        # 2 blocks: cross, self (last block self-attends)
    ("tiny", {"num_layers": 3, "num_inference_steps": 5}),  # last block cross-attends; other step count
    ("small", {}),                                       # the small preset's head: 4 blocks, width 64
])
def test_sampler_equals_lerobot_get_action(preset, changes):
    """Same weights, same noise (seed): our sampler and lerobot's get_action give the same chunk."""
    h, width = head(preset, **changes)
    vl, mask, state = inputs(3, 23, width)
    ours = h.sample(vl, mask, state, seed=7)
    ref = h.sample_reference(vl, mask, state, seed=7)
    assert ours.shape == (3, h.cfg.horizon, ACTION_DIM)
    assert ours.abs().max() > 0.5  # a real chunk, not a degenerate one
    assert (ours - ref).abs().max() < 1e-5
    # another seed gives another chunk (the noise is really used), again equal to lerobot's
    other = h.sample(vl, mask, state, seed=8)
    assert (other - ours).abs().max() > 1e-2
    assert (other - h.sample_reference(vl, mask, state, seed=8)).abs().max() < 1e-5


def test_unseeded_sampler_draws_the_same_noise_as_lerobot_from_the_global_rng():
    h, width = head()
    vl, mask, state = inputs(2, 11, width)
    torch.manual_seed(123)
    ours = h.sample(vl, mask, state)
    torch.manual_seed(123)
    backbone, action_input = h._inputs(vl, mask, state)
    ref = h.head.get_action(backbone, BatchFeature(data=action_input))["action_pred"]
    assert (ours - ref).abs().max() < 1e-5


def test_seeded_sampler_leaves_the_global_rng_alone():
    h, width = head()
    vl, mask, state = inputs(1, 9, width)
    before = torch.get_rng_state()
    h.sample(vl, mask, state, seed=3)
    assert torch.equal(before, torch.get_rng_state())


def test_unsupported_lerobot_configuration_is_refused():
    """The sampler re-implements lerobot's block control flow for our configuration only: anything
    else (here: an attention that rescales its output) must fail loudly, not sample something else."""
    h, _ = head()
    h.head.model.transformer_blocks[1].attn1.rescale_output_factor = 2.0
    with pytest.raises(ValueError, match=r"block 1 rescale_output_factor: expected 1.0, got 2.0"):
        check_fast_sampler_applies(h.head)


@pytest.mark.parametrize("preset", ["tiny", "small"])
def test_torchscript_sampler_equals_the_eager_sampler(preset):
    """The traced sampler gives the eager sampler's chunk (hence lerobot's), one trace per input shape."""
    h, width = head(preset)
    vl, mask, state = inputs(2, 17, width)
    eager = h.sample(vl, mask, state, seed=5)
    h.torchscript = True
    traced = h.sample(vl, mask, state, seed=5)
    assert (traced - eager).abs().max() < 1e-6
    assert (traced - h.sample_reference(vl, mask, state, seed=5)).abs().max() < 1e-5
    assert len(h._traces) == 1
    assert (h.sample(vl, mask, state, seed=6) - traced).abs().max() > 1e-2  # the noise is an input, not baked in
    # another number of VL tokens and another batch size: a new trace, again equal to the eager sampler
    vl2, mask2, state2 = inputs(1, 9, width, seed=4)
    traced2 = h.sample(vl2, mask2, state2, seed=5)
    assert len(h._traces) == 2
    h.torchscript = False
    assert (traced2 - h.sample(vl2, mask2, state2, seed=5)).abs().max() < 1e-6


def test_torchscript_sampler_follows_weight_updates_and_mode_changes():
    h, width = head()
    h.torchscript = True
    vl, mask, state = inputs(1, 9, width)
    before = h.sample(vl, mask, state, seed=1)
    with torch.no_grad():  # in place, as load_state_dict does: the trace holds the same parameters
        h.head.model.proj_out_2.weight.mul_(1.5)
    after = h.sample(vl, mask, state, seed=1)
    assert (after - before).abs().max() > 1e-3
    h.torchscript = False
    assert (after - h.sample(vl, mask, state, seed=1)).abs().max() < 1e-6
    h.torchscript = True
    h.train()
    assert not h._traces  # training mode samples with lerobot's get_action; traces are rebuilt in eval mode
    h.eval()
    h.double()  # new parameter tensors: the float32 trace is dropped, a float64 one is built
    assert not h._traces
    chunk = h.sample(vl.double(), mask, state.double(), seed=1)
    assert chunk.dtype == torch.float64 and len(h._traces) == 1
    h.torchscript = False
    assert (chunk - h.sample(vl.double(), mask, state.double(), seed=1)).abs().max() < 1e-12
