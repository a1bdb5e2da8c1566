"""Real-time chunking (RTC; Black, Galliker and Levine 2025, "Real-Time Execution of Action Chunking Flow
Policies") for the flow-matching action head: `planner.rtc.enabled` (robot/chunk_planner.py).

A chunk planned from the observation of step s arrives `d` steps later (`planner.delay`; 1 on the rig): its
first d actions have meanwhile been executed from the previous chunk, and where the two chunks disagree the
target jumps at the switch. RTC samples the new chunk as an inpainting of the previous chunk's remainder:
at every Euler step the velocity is pulled towards the previous chunk, with full weight on the first d
actions (executed already when the new chunk arrives), a weight falling to 0 at `execution_horizon`
(lerobot's prefix attention schedule) and none after it.

Reused from lerobot 0.4.4 (`lerobot.policies.rtc`): the settings and their checks (`RTCConfig`) and the
prefix weights (`RTCProcessor.get_prefix_weights`). Its `denoise_step` cannot run inside our sampler, which
runs in inference mode (and as a TorchScript trace) where its `torch.autograd.grad` cannot; nor is it needed:
it computes the velocity before `x_t` requires grad, so its vector-Jacobian product of x_t - time v_t is the
error itself. `guided_velocity` computes the same in our head's convention: flow time t runs from 0 (noise)
to 1 (actions), x_t = (1 - t) noise + t actions, v = actions - noise; lerobot's (pi0 / SmolVLA) time runs
from 1 to 0 with velocity noise - actions, i.e. its time is 1 - t and its velocity -v (tests/test_rtc.py
checks ours against its `denoise_step`).

The guidance weight is lerobot's (the paper's) min(max_guidance_weight, (1 - t) / t * r^-2). With our 4
Euler steps (dt = 0.25) a weight above 1 / dt moves the predicted chunk past the previous one at the first
step (t = 0, where the weight is the cap): hence configs' `max_guidance_weight: 4.0` = the number of steps,
as the paper's own setting (5 steps, cap 5), where lerobot's default 10 goes with its 10 steps.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

if TYPE_CHECKING:  # torch and lerobot are imported where used: the chunk planner imports this module
    from lerobot.policies.rtc.configuration_rtc import RTCConfig
    from torch import Tensor

SETTING_KEYS = ("execution_horizon", "max_guidance_weight", "prefix_attention_schedule")  # planner.rtc.*


def rtc_settings(block: Mapping[str, Any]) -> RTCConfig:
    """lerobot's `RTCConfig` from a `planner.rtc` block (configs/sim_eval.yaml, configs/trial.yaml); a missing
    or bad key is a ValueError naming it."""
    from lerobot.configs.types import RTCAttentionSchedule
    from lerobot.policies.rtc.configuration_rtc import RTCConfig

    missing = [k for k in ("enabled", *SETTING_KEYS) if k not in block]
    if missing:
        raise ValueError(f"planner.rtc: missing keys {missing}")
    schedule = str(block["prefix_attention_schedule"])
    if schedule not in RTCAttentionSchedule.__members__:
        raise ValueError(f"planner.rtc.prefix_attention_schedule must be one of "
                         f"{list(RTCAttentionSchedule.__members__)}, got {block['prefix_attention_schedule']!r}")
    if int(block["execution_horizon"]) < 1:
        raise ValueError(f"planner.rtc.execution_horizon must be >= 1, got {block['execution_horizon']}")
    return RTCConfig(enabled=bool(block["enabled"]), prefix_attention_schedule=RTCAttentionSchedule(schedule),
                     max_guidance_weight=float(block["max_guidance_weight"]),
                     execution_horizon=int(block["execution_horizon"]))


@dataclass(frozen=True)
class RTCRequest:
    """What a planner asks of its next chunk: stay with `prefix`, the previous chunk's actions for the steps
    from the plan's observation on (n, A), in the planner's (unnormalised) action space, of which the first
    `delay` will have been executed when the new chunk arrives."""

    prefix: np.ndarray
    delay: int
    settings: RTCConfig

    def __post_init__(self) -> None:
        if self.prefix.ndim != 2 or not len(self.prefix) or not np.all(np.isfinite(self.prefix)):
            raise ValueError(f"RTC prefix must be a finite (n >= 1, A) array, got shape {self.prefix.shape}")
        if self.delay < 0:
            raise ValueError(f"RTC delay must be >= 0, got {self.delay}")

    def header(self) -> dict[str, Any]:
        """The request's numbers for a plan message (moss_vla/serve.py); the prefix travels as an array."""
        s = self.settings
        return {"delay": self.delay, "execution_horizon": s.execution_horizon,
                "max_guidance_weight": s.max_guidance_weight,
                "prefix_attention_schedule": s.prefix_attention_schedule.value}

    @classmethod
    def from_message(cls, header: Any, prefix: np.ndarray) -> RTCRequest:
        """From a plan message's `rtc` header and `rtc_prefix` array; a ValueError or TypeError names what is wrong."""
        if not isinstance(header, dict) or set(header) != {"delay", *SETTING_KEYS}:
            raise ValueError(f"plan 'rtc' must be an object with keys {sorted(['delay', *SETTING_KEYS])}, got "
                             f"{str(header)[:200]}")
        if not isinstance(header["delay"], int) or isinstance(header["delay"], bool):
            raise TypeError(f"plan rtc.delay must be an integer, got {header['delay']!r}")
        return cls(np.array(prefix, dtype=np.float32), header["delay"], rtc_settings({"enabled": True, **header}))


class Guide(NamedTuple):
    """An RTC request as the action head uses it (normalised, padded to the head's horizon H)."""

    prefix: Tensor  # (B, H, A): the previous chunk's remainder, normalised, zero past its end
    weights: Tensor  # (1, H, 1): prefix weights (1 for the delay's actions, falling to 0 at the horizon)
    guidance: Tensor  # (steps,): guidance weight of each Euler step


def guidance_weight(t: float, max_weight: float) -> float:
    """RTC's guidance weight at our flow time t (lerobot's formula at its time 1 - t, where tau = t), capped."""
    if t <= 0.0:  # (1 - t) / t is infinite: lerobot's nan_to_num gives the cap
        return max_weight
    inv_r2 = ((1 - t) ** 2 + t ** 2) / (1 - t) ** 2
    return min((1 - t) / t * inv_r2, max_weight)


def make_guide(request: RTCRequest, prefix: Tensor, horizon: int, num_steps: int) -> Guide:
    """The head's `Guide` for `request`, whose prefix `prefix` (n, A) or (B, n, A) the policy has normalised."""
    import torch
    from lerobot.policies.rtc.modeling_rtc import RTCProcessor

    prefix = prefix[None] if prefix.dim() == 2 else prefix
    n = min(prefix.shape[1], horizon)
    padded = prefix.new_zeros(prefix.shape[0], horizon, prefix.shape[2])
    padded[:, :n] = prefix[:, :n]
    # as lerobot's denoise_step: the horizon is cut to the prefix's length (nothing to stay with past it)
    weights = RTCProcessor(request.settings).get_prefix_weights(request.delay, min(request.settings.execution_horizon, n),
                                                                horizon)
    guidance = [guidance_weight(k / num_steps, request.settings.max_guidance_weight) for k in range(num_steps)]
    return Guide(padded, weights.to(prefix)[None, :, None], torch.tensor(guidance, dtype=prefix.dtype,
                                                                          device=prefix.device))


def guided_velocity(x: Tensor, v: Tensor, t: float, guide: Guide, step: int) -> Tensor:
    """The velocity `v` at flow time `t` of the noisy chunk `x`, corrected towards the guide's prefix."""
    predicted = x + (1.0 - t) * v  # the chunk this velocity leads to (lerobot's x1_t = x_t - time v_t)
    return v + guide.guidance[step] * guide.weights * (guide.prefix - predicted)
