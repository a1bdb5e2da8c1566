"""Where a policy runs: the one resolver of the ``device`` setting of every command that runs a policy
(``moss-train``, ``moss-sim eval``, ``moss-trial``, ``moss-replay``, the benchmarks), and the bf16
autocast used on a GPU (on the CPU nothing changes)."""

from __future__ import annotations

import contextlib
import re

import torch

DEVICE_CHOICES = "auto | cpu | cuda | cuda:N"


def resolve_device(spec: str | torch.device | None, local_rank: int = 0) -> torch.device:
    """``auto`` (or None): ``cuda:<local_rank>`` when torch sees a GPU, else ``cpu``; ``cpu``; ``cuda`` /
    ``cuda:N``: that GPU. A RuntimeError says when there is no such GPU, a ValueError when ``spec`` is none of
    these words."""
    if isinstance(spec, torch.device):
        spec = str(spec)
    spec = "auto" if spec is None else str(spec).strip().lower()
    if spec == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    m = re.fullmatch(r"cuda(?::(\d+))?", spec)
    if m is None:
        raise ValueError(f"device={spec!r}: expected {DEVICE_CHOICES}")
    if not torch.cuda.is_available():
        raise RuntimeError(f"device={spec} was asked for, but torch sees no CUDA device; use device=cpu (or "
                           f"device=auto) here (torch {torch.__version__}, CUDA build {torch.version.cuda})")
    index = int(m.group(1)) if m.group(1) is not None else local_rank
    if index >= torch.cuda.device_count():
        raise RuntimeError(f"device={spec}: torch sees {torch.cuda.device_count()} GPU(s) (cuda:0 .. "
                         f"cuda:{torch.cuda.device_count() - 1})")
    return torch.device(f"cuda:{index}")


def autocast(device: torch.device, enabled: bool = True) -> contextlib.AbstractContextManager:
    """bf16 autocast on a GPU; a no-op on the CPU (CPU behaviour stays bit-identical)."""
    if device.type == "cuda" and enabled:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
