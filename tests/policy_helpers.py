"""Shared builders for the policy tests (tiny configs, synthetic statistics and batches)."""

from __future__ import annotations

import numpy as np
import torch
from omegaconf import OmegaConf

from moss_vla.paths import CONFIG_DIR
from moss_vla.policy import MossVLAConfig, MossVLAPolicy

INSTRUCTION = "Point left when the circle on the display moves left, and point right when it moves right."
INPUT = 64  # input frame size for the tests (the presets use 224; tiny resizes either way)


def tiny_config(policy: str = "moss", **overrides) -> MossVLAConfig:
    """The hydra presets policy=<policy> model=tiny, with dotted-key overrides."""
    pc = OmegaConf.load(CONFIG_DIR / "policy" / f"{policy}.yaml")
    mc = OmegaConf.load(CONFIG_DIR / "model" / "tiny.yaml")
    mc.input_image_size = INPUT
    for key, value in overrides.items():
        OmegaConf.update(pc, key.replace("__", "."), value, force_add=True)
    return MossVLAConfig.from_hydra(pc, mc)


def stats(lo: float = -1.0, hi: float = 1.0, dim: int = 8) -> dict:
    one = {"mean": [(lo + hi) / 2] * dim, "std": [(hi - lo) / 2] * dim, "min": [lo] * dim, "max": [hi] * dim}
    return {"state": dict(one), "action": dict(one)}


def tiny_policy(policy: str = "moss", seed: int = 0, **overrides) -> MossVLAPolicy:
    torch.manual_seed(seed)
    return MossVLAPolicy(tiny_config(policy, **overrides), stats())


def batch(cfg: MossVLAConfig, B: int = 2, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    T, H = cfg.n_frames, cfg.action_head.horizon
    return {
        "image": torch.rand(B, T, 3, cfg.input_image_size, cfg.input_image_size, generator=g),
        "image_is_pad": torch.zeros(B, T, dtype=torch.bool),
        "state": torch.rand(B, cfg.state_dim, generator=g) * 2 - 1,
        "action": torch.rand(B, H, cfg.action_dim, generator=g) * 2 - 1,
        "action_is_pad": torch.zeros(B, H, dtype=torch.bool),
        "instruction": [INSTRUCTION] * B,
        "task": ["movesense_lr"] * B,
        "episode": torch.zeros(B, dtype=torch.long),
        "index": torch.arange(B),
    }


def randomise_zero_layers(module: torch.nn.Module, seed: int = 1) -> None:
    """Give every parameter random values (the zero-initialised FCs too), to test trained behaviour."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)


def frames(n: int, size: int = INPUT, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n)]
