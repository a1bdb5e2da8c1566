"""State/action normalisation whose statistics travel with the checkpoint.

Statistics come from the dataset (``{"state": {"mean", "std", "min", "max"}, "action": {...}}``, lists of
floats, computed on the training episodes). They are stored as buffers, so they are part of the
safetensors file, and are also written as ``stats.json`` by ``save_pretrained``.

Modes: ``min_max`` maps [min, max] to [-1, 1] (GR00T's convention for flow matching); ``mean_std``
standardises. Dimensions with (almost) no spread (e.g. a gripper that never moves) are left centred but
not scaled, so they do not blow up.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

EPS = 1e-6
KEYS = ("mean", "std", "min", "max")


class Normalizer(nn.Module):
    """Normalise / unnormalise ``state`` (B, S) and ``action`` (..., A) with stored statistics."""

    def __init__(self, state_dim: int, action_dim: int, mode: str, stats: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.mode = mode
        self.dims = {"state": state_dim, "action": action_dim}
        for name, dim in self.dims.items():
            for k in KEYS:
                init = torch.ones(dim) if k in ("std", "max") else torch.zeros(dim)
                if k == "min":
                    init = -torch.ones(dim)
                self.register_buffer(f"{name}_{k}", init)
        self.register_buffer("has_stats", torch.tensor(False))
        if stats is not None:
            self.set_stats(stats)

    def set_stats(self, stats: dict[str, Any]) -> None:
        """Load dataset statistics; shapes must match the configured state/action dims."""
        for name, dim in self.dims.items():
            if name not in stats:
                raise ValueError(f"normalisation stats lack {name!r} (have {sorted(stats)}); expected keys "
                                 f"'state' and 'action', each with {KEYS}")
            for k in KEYS:
                if k not in stats[name]:
                    raise ValueError(f"normalisation stats[{name!r}] lacks {k!r} (have {sorted(stats[name])})")
                value = torch.as_tensor(stats[name][k], dtype=torch.float32).flatten()
                if value.numel() != dim:
                    raise ValueError(f"normalisation stats[{name!r}][{k!r}] has {value.numel()} values, expected "
                                     f"{dim} ({name}_dim in the policy config)")
                getattr(self, f"{name}_{k}").copy_(value)
        self.has_stats.fill_(True)

    def stats_dict(self) -> dict[str, dict[str, list[float]]]:
        return {name: {k: getattr(self, f"{name}_{k}").tolist() for k in KEYS} for name in self.dims}

    def _center_scale(self, name: str) -> tuple[Tensor, Tensor]:
        if self.mode == "min_max":
            lo, hi = getattr(self, f"{name}_min"), getattr(self, f"{name}_max")
            half = (hi - lo) / 2
            return (hi + lo) / 2, torch.where(half > EPS, half, torch.ones_like(half))
        std = getattr(self, f"{name}_std")
        return getattr(self, f"{name}_mean"), torch.where(std > EPS, std, torch.ones_like(std))

    def normalize(self, name: str, x: Tensor) -> Tensor:
        center, scale = self._center_scale(name)
        return (x - center) / scale

    def unnormalize(self, name: str, x: Tensor) -> Tensor:
        center, scale = self._center_scale(name)
        return x * scale + center
