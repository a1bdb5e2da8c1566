"""Where a training step's time goes: one `small_fine` step (batch 16 x 8 frames) of each policy, split
into batch assembly (window reads + augmentation), forward, backward and optimiser, with the operators
torch's profiler attributes the most self time to; steps per second.

Run on a quiet machine (no trainings in the background): ``.venv/bin/python benchmarks/train_step_bench.py
[--threads 1] [--steps 12] [--policies moss contextvla groot]``. Writes ``benchmarks/results/train_step.json``.
The store is synthetic (random 224 x 224 frames): reading and augmenting cost the same as on real episodes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch
from machine import machine_info  # benchmarks/machine.py (scripts run from this folder)
from torch.utils.data import default_collate

from moss_vla.config import compose_config
from moss_vla.episodes.synthetic import make_synthetic_store
from moss_vla.policy import make_policy
from moss_vla.train import SeededItems, StepBatchSampler, param_groups
from moss_vla.training_data import build_datasets

RESULTS = Path(__file__).resolve().parent / "results" / "train_step.json"
CATEGORIES = {  # profiler op name fragment -> category, first match wins
    "convolution": "convolution", "conv2d": "convolution", "bmm": "batched matmul (STSS Gram, attention)",
    "baddbmm": "batched matmul (STSS Gram, attention)", "attention": "attention", "addmm": "linear",
    "linear": "linear", "mm": "linear", "batch_norm": "norm", "layer_norm": "norm", "native_layer_norm": "norm",
    "gelu": "activation", "silu": "activation",
}


def category(op: str) -> str:
    name = op.split("::")[-1]
    for frag, cat in CATEGORIES.items():
        if frag in name:
            return cat
    return "other"


def bench_policy(policy_name: str, store: Path, steps: int, batch_size: int) -> dict:
    cfg = compose_config([f"data.paths=[{store}]", f"policy={policy_name}", "model=small_fine",
                          f"batch_size={batch_size}", "policy.aux_label_weight=0.5"], "train")
    train_ds, _, stats = build_datasets(cfg, cfg.policy.n_frames, cfg.model.action_head.horizon)
    cfg.policy.aux_label_classes = 3
    torch.manual_seed(0)
    policy = make_policy(cfg.policy, cfg.model, stats).train()
    optimizer = torch.optim.AdamW(param_groups(policy, cfg.optim.weight_decay), lr=1e-4)
    sampler = StepBatchSampler(len(train_ds), batch_size, steps + 2, seed=0)
    items = SeededItems(train_ds)
    parts: dict[str, list[float]] = defaultdict(list)
    losses = []
    for i, keys in enumerate(sampler):
        t0 = time.perf_counter()
        batch = default_collate([items[k] for k in keys])
        t1 = time.perf_counter()
        loss, _ = policy(batch)
        t2 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        t3 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
        optimizer.step()
        t4 = time.perf_counter()
        losses.append(float(loss.detach()))
        if i >= 2:  # two warm-up steps
            for name, dt in (("batch", t1 - t0), ("forward", t2 - t1), ("backward", t3 - t2), ("optimiser", t4 - t3),
                             ("step", t4 - t0)):
                parts[name].append(dt)
    step_s = statistics.median(parts["step"])
    # one more step under the profiler: self time per operator category (forward + backward)
    batch = default_collate([items[k] for k in next(iter(StepBatchSampler(len(train_ds), batch_size, 1, seed=1)))])
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        loss, _ = policy(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
    by_cat: dict[str, float] = defaultdict(float)
    for ev in prof.key_averages():
        if ev.key.startswith("aten::"):
            by_cat[category(ev.key)] += ev.self_cpu_time_total
    total = sum(by_cat.values())
    top = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:8]
    result = {
        "median_s": {k: statistics.median(v) for k, v in parts.items()},
        "fraction_of_step": {k: statistics.median(v) / step_s for k, v in parts.items() if k != "step"},
        "steps_per_s": 1.0 / step_s,
        "samples_per_s": batch_size / step_s,
        "aten_self_time_fraction": {k: v / total for k, v in sorted(by_cat.items(), key=lambda kv: -kv[1])},
        "top_ops": [{"op": e.key, "self_ms": e.self_cpu_time_total / 1e3} for e in top],
        "loss_first_last": [losses[0], losses[-1]],
    }
    f = result["fraction_of_step"]
    print(f"{policy_name:10s} {result['steps_per_s']:.2f} steps/s ({step_s * 1e3:.0f} ms: batch {100 * f['batch']:.0f}%, "
          f"forward {100 * f['forward']:.0f}%, backward {100 * f['backward']:.0f}%, optimiser "
          f"{100 * f['optimiser']:.0f}%); op time: " + ", ".join(
              f"{k} {100 * v:.0f}%" for k, v in list(result["aten_self_time_fraction"].items())[:5]))
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: comparable on a shared machine)")
    ap.add_argument("--steps", type=int, default=12, help="timed steps per policy (after 2 warm-up steps)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--policies", nargs="+", default=["moss", "contextvla", "groot"])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "synthetic.zarr"
        make_synthetic_store(store, n_episodes=6, length=60, image_shape=(224, 224, 3))
        results = {p: bench_policy(p, store, args.steps, args.batch_size) for p in args.policies}
    out = {"machine": machine_info(), "preset": "small_fine", "batch_size": args.batch_size, "steps": args.steps,
           "policies": results}
    if {"moss", "contextvla"} <= results.keys():
        out["moss_over_contextvla_step_time"] = results["moss"]["median_s"]["step"] / results["contextvla"]["median_s"]["step"]
        print(f"MOSS step / ContextVLA step: {out['moss_over_contextvla_step_time']:.2f}x")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=1))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
