"""How long lerobot's ACT and (shrunk) Diffusion Policy take per chunk in our loop, against our moss policy.

For `policy=act`, `diffusion`, `diffusion_t8` (configs/policy/, moss_vla/policy/lerobot_adapter.py) and `moss`,
at the bench preset (configs/bench.yaml `preset`: frame size and action horizon), untrained weights (the cost
does not depend on them): milliseconds per `plan` (one chunk, after `observe` of the step's frame) over a run
of steps as the 10 Hz loop makes them, and one training step (batch 16, forward + backward + AdamW). The
chunk must fit the 100 ms period (a plan every n_action_steps steps, delivered a step later on the rig).

Run: ``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/lerobot_policies_bench.py [--threads 1] [--plans 20]``
-> benchmarks/results/lerobot_policies.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from machine import machine_info  # benchmarks/machine.py (scripts run from this folder)

from moss_vla.config import compose_config, plain
from moss_vla.policy import make_policy

POLICIES = ("act", "diffusion", "diffusion_t8", "moss")
OUT = Path(__file__).resolve().parent / "results" / "lerobot_policies.json"


def stats(dim: int = 8) -> dict:
    one = {"mean": [0.0] * dim, "std": [1.0] * dim, "min": [-1.0] * dim, "max": [1.0] * dim}
    return {"state": dict(one), "action": dict(one)}


def measure(name: str, preset: str, plans: int, batch: int) -> dict:
    cfg = compose_config([f"policy={name}", f"model={preset}", "data.paths=[unused]"], "train")
    torch.manual_seed(0)
    policy = make_policy(cfg.policy, cfg.model, stats()).eval()
    size = int(cfg.model.input_image_size)
    rng = np.random.default_rng(0)
    obs = [{"image": rng.integers(0, 255, (size, size, 3), dtype=np.uint8), "state": rng.normal(size=8).astype(np.float32),
            "instruction": "Point left when the circle on the display moves left."} for _ in range(8)]
    policy.reset()
    for o in obs[:4]:  # warm-up: history filled, first plans (TorchScript traces, allocator)
        policy.observe(o)
        policy.plan(o)
    ms = []
    for k in range(plans):
        o = obs[k % len(obs)]
        t0 = time.perf_counter()
        policy.observe(o)
        policy.plan(o)
        ms.append(1e3 * (time.perf_counter() - t0))
    # one training step at the bench's batch size
    T, H = int(cfg.policy.n_frames), int(cfg.model.action_head.horizon)
    b = {"image": torch.rand(batch, T, 3, size, size), "state": torch.rand(batch, 8), "states": torch.rand(batch, T, 8),
         "action": torch.rand(batch, H, 8), "action_is_pad": torch.zeros(batch, H, dtype=torch.bool),
         "instruction": [obs[0]["instruction"]] * batch}
    policy.train()
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-4)
    steps = []
    for _ in range(3):
        t0 = time.perf_counter()
        loss, _ = policy(b)
        opt.zero_grad()
        loss.backward()
        opt.step()
        steps.append(time.perf_counter() - t0)
    return {"policy": name, "preset": preset, "n_frames": T, "horizon": H,
            "n_action_steps": int(cfg.policy.n_action_steps),
            "image_size_seen": int(cfg.policy.get("image_size") or cfg.model.vision.image_size),
            "parameters_M": sum(p.numel() for p in policy.parameters()) / 1e6,
            "lerobot": plain(cfg.policy.get("lerobot") or {}),
            "observe_plus_plan_ms": {"median": float(np.median(ms)), "p90": float(np.percentile(ms, 90)),
                                     "max": float(np.max(ms)), "n": len(ms)},
            "train_step_s": {"batch": batch, "median_of_3": float(np.median(steps))}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--plans", type=int, default=20)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--policies", nargs="+", default=list(POLICIES))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    preset = str(compose_config([], "bench").preset)
    rows = []
    for name in args.policies:
        rows.append(measure(name, preset, args.plans, args.batch))
        r = rows[-1]
        print(f"{name}: {r['observe_plus_plan_ms']['median']:.1f} ms per chunk (p90 "
              f"{r['observe_plus_plan_ms']['p90']:.1f}), train step {r['train_step_s']['median_of_3']:.2f} s, "
              f"{r['parameters_M']:.1f} M parameters", flush=True)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"machine": machine_info(threads=args.threads), "results": rows}, indent=1))
    print(f"-> {OUT}")


if __name__ == "__main__":
    main()
