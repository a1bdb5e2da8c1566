"""Policy cost: MOSS vs no MOSS at the base preset, and select_action cached vs uncached.

Measured side by side in one run, written to benchmarks/results/policy.json:

1. Base preset (SigLIP-B/16 at 224, 8 frames, MOSS after layer 6, window (5, 9, 9), D = 64):
   ``policy=moss`` vs ``policy=contextvla`` (the same policy without MOSS) for one inference call
   (``predict_action_chunk``: tower on 8 frames, VL backbone, 4 Euler steps of the action head):
   - FLOPs from ``torch.utils.flop_counter.FlopCounterMode`` (counts matmuls and convolutions).
     The STSS cosines are computed as one Gram matrix per frame pair (``torch.bmm``), which the counter
     sees; we also report the analytic count of the windowed cosines (2 T H W L U V C per order) and the
     elementwise work the counter skips (normalisation, masks), and add the latter to the total;
   - MOSS as trained and with inference folding (FC(M(n)) o fuse(n) -> one linear map; same function);
   - parameters (MB, float32) of the whole policy and of the module;
   - peak resident memory of a fresh process running one call (``VmHWM``).
2. select_action step latency, cached vs uncached (``use_cache``), for the small, small_fine and base
   presets, with the paper's centred STSS window and with ``temporal.causal=true``. Also, independent of the
   machine's load, the cost of one replan step's compute (encoding and action head): FLOPs (attention
   included) and the number of aten operators run; their cached/uncached ratios bound the speedup
   when time follows arithmetic (base) or per-operator overhead (small, width 64).
3. Training step (batch 16, T = 8, forward + backward + AdamW) at the small preset, moss vs contextvla.

The cached and uncached policies step through the same frames in lockstep (alternating which goes
first), so that load from other processes hits both alike; the replan step's parts are also timed
separately (encoding, our action-head sampler, and lerobot's ``get_action`` on the same inputs).

Run: ``.venv/bin/python benchmarks/policy_bench.py [--threads 2] [--quick] [--parts latency_small ...]``
(``--parts`` reruns some sections and keeps the others of the existing results file).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import torch
from machine import machine_info  # benchmarks/machine.py (scripts run from this folder)
from omegaconf import OmegaConf
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from moss_vla.paths import CONFIG_DIR, REPO_ROOT
from moss_vla.policy import MossVLAConfig, MossVLAPolicy
from moss_vla.stss import stss

RESULTS = REPO_ROOT / "benchmarks" / "results" / "policy.json"
INSTRUCTION = "Point left when the circle on the display moves left, and point right when it moves right."


def config(policy: str, model: str, **overrides) -> MossVLAConfig:
    pc = OmegaConf.load(CONFIG_DIR / "policy" / f"{policy}.yaml")
    mc = OmegaConf.load(CONFIG_DIR / "model" / f"{model}.yaml")
    for key, value in overrides.items():
        OmegaConf.update(pc, key.replace("__", "."), value, force_add=True)
    return MossVLAConfig.from_hydra(pc, mc)


def unit_stats(dim: int = 8) -> dict:
    one = {"mean": [0.0] * dim, "std": [1.0] * dim, "min": [-1.0] * dim, "max": [1.0] * dim}
    return {"state": dict(one), "action": dict(one)}


def build(policy: str, model: str, seed: int = 0, **overrides) -> MossVLAPolicy:
    torch.manual_seed(seed)
    p = MossVLAPolicy(config(policy, model, **overrides), unit_stats()).eval()
    if p.vision.temporal is not None:  # trained-looking module (zero-init FCs would hide nothing in FLOPs,
        with torch.no_grad():          # but keep numbers comparable to a trained policy)
            for prm in p.vision.temporal.parameters():
                prm.add_(0.01 * torch.randn_like(prm))
    return p


def window_obs(cfg: MossVLAConfig, B: int = 1) -> dict:
    S = cfg.input_image_size
    return {"image": torch.rand(B, cfg.n_frames, 3, S, S), "state": torch.zeros(B, cfg.state_dim),
            "instruction": [INSTRUCTION] * B}


def mb(n_params: int) -> float:
    return n_params * 4 / 2**20


def cpu_attention_flops(query_shape, key_shape, value_shape, *args, **kwargs) -> int:
    """FlopCounterMode formula (called with shapes) for aten._scaled_dot_product_flash_attention_for_cpu."""
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def count_flops(fn, *args, attention: bool = False) -> tuple[float, dict[str, float]]:
    """Total FLOPs and FLOPs per module (named from the first module called, e.g. VisionTower.temporal).

    ``attention``: also count the CPU flash-attention kernel, which FlopCounterMode skips (it has formulas
    for the CUDA ones only), so that F.scaled_dot_product_attention on CPU counts its two matmuls."""
    mapping = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: cpu_attention_flops} if attention else None
    fc = FlopCounterMode(display=False, depth=4, custom_mapping=mapping)
    with fc, torch.no_grad():
        fn(*args)
    per_module = {k: float(sum(v.values())) for k, v in fc.get_flop_counts().items()}
    return float(fc.get_total_flops()), per_module


def stss_costs(cfg: MossVLAConfig) -> dict[str, float]:
    """Counted (Gram bmm) and analytic FLOPs of one STSS call on the module's input, and skipped
    elementwise work (normalisation ~3 THWC, mask multiply THWLUV)."""
    L, U, V = cfg.temporal.window
    T, g, C = cfg.n_frames, cfg.vision.grid, cfg.vision.hidden_size
    x = torch.randn(1, T, g, g, C)
    counted, _ = count_flops(lambda t: stss(t, (L, U, V), cfg.temporal.causal), x)
    return {"counted_gram_bmm": counted, "analytic_windowed_cosines": 2.0 * T * g * g * L * U * V * C,
            "uncounted_elementwise": 3.0 * T * g * g * C + 1.0 * T * g * g * L * U * V}


def folded_module_params(policy: MossVLAPolicy) -> int:
    m = policy.vision.temporal.moss
    top_fuse = m.encoders[-1].fuse
    return (sum(p.numel() for p in m.parameters()) - sum(p.numel() for p in m.fc_orders.parameters())
            - sum(p.numel() for p in top_fuse.parameters()) + sum(p.numel() for p in policy.vision.temporal.folded.parameters()))


def peak_memory(policy: str, model: str, fold: bool) -> dict[str, float]:
    """Peak RSS (MB) of a fresh process that builds the policy and runs one predict_action_chunk."""
    code = f"""
import json, torch, sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
from policy_bench import build, window_obs
def status(key):
    for line in open('/proc/self/status'):
        if line.startswith(key): return int(line.split()[1]) / 1024
p = build({policy!r}, {model!r})
if {fold}: p.fold_for_inference()
obs = window_obs(p.config)
before = status('VmRSS')
p.predict_action_chunk(obs, seed=0)
print(json.dumps({{"rss_before_call_mb": before, "peak_rss_mb": status('VmHWM')}}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())})
    d = json.loads(out.stdout.strip().splitlines()[-1])
    d["peak_increase_during_call_mb"] = d["peak_rss_mb"] - d["rss_before_call_mb"]
    return d


def base_comparison() -> dict:
    res: dict = {}
    for name, policy in (("without_moss", "contextvla"), ("with_moss", "moss")):
        p = build(policy, "base")
        obs = window_obs(p.config)
        total, per = count_flops(partial(p.predict_action_chunk, seed=0), obs)
        entry = {"flops_counted": total, "params": sum(x.numel() for x in p.parameters()),
                 "params_mb": mb(sum(x.numel() for x in p.parameters())),
                 "flops_by_part": {k: v for k, v in per.items() if "." not in k}}
        if policy == "moss":
            costs = stss_costs(p.config)
            n_orders = len(p.vision.temporal.moss.encoders)
            entry["stss_per_order"] = costs
            module = per["VisionTower.temporal"]
            entry["moss_module_flops_counted"] = module
            entry["moss_module_params"] = sum(x.numel() for x in p.vision.temporal.parameters())
            entry["moss_module_params_mb"] = mb(entry["moss_module_params"])
            p.fold_for_inference()
            total_f, per_f = count_flops(partial(p.predict_action_chunk, seed=0), obs)
            extra = n_orders * costs["uncounted_elementwise"]
            entry["folded"] = {"flops_counted": total_f, "moss_module_flops_counted": per_f["VisionTower.temporal"],
                               "stss_uncounted_elementwise_added": extra, "flops_total": total_f + extra,
                               "moss_module_params": folded_module_params(p),
                               "moss_module_params_mb": mb(folded_module_params(p))}
            entry["flops_total"] = total + extra
        else:
            entry["flops_total"] = total
        entry["peak_memory"] = peak_memory(policy, "base", fold=policy == "moss")
        res[name] = entry
        print(f"[base] {name}: {entry['flops_total'] / 1e9:.1f} GFLOPs, {entry['params_mb']:.1f} MB params, "
              f"peak RSS {entry['peak_memory']['peak_rss_mb']:.0f} MB", flush=True)
    wo, w = res["without_moss"], res["with_moss"]
    res["ratios"] = {
        "flops_increase_pct_as_trained": 100 * (w["flops_total"] / wo["flops_total"] - 1),
        "flops_increase_pct_folded": 100 * (w["folded"]["flops_total"] / wo["flops_total"] - 1),
        "params_increase_mb_as_trained": w["params_mb"] - wo["params_mb"],
        "params_increase_mb_folded": w["folded"]["moss_module_params_mb"],
        "peak_rss_increase_mb": w["peak_memory"]["peak_rss_mb"] - wo["peak_memory"]["peak_rss_mb"],
        "peak_activation_increase_mb": (w["peak_memory"]["peak_increase_during_call_mb"]
                                        - wo["peak_memory"]["peak_increase_during_call_mb"]),
        "goal": "<= +3% FLOPs of the whole policy and <= 10 MB (paper: +1.8% FLOPs, +4.2 MB in its setting)",
    }
    print("[base] MOSS vs none:", json.dumps(res["ratios"], indent=1), flush=True)
    return res


def step_latency(policies: dict[str, MossVLAPolicy], n_steps: int) -> dict[str, dict]:
    """select_action latencies (ms) over n_steps fresh frames after one warm-up episode start.

    The policies (e.g. cached and uncached) step through the same frames in lockstep, alternating which
    goes first, so that load from other processes on a shared machine hits them alike."""
    cfg = next(iter(policies.values())).config
    S = cfg.input_image_size
    rng = np.random.default_rng(0)
    obs = {"image": rng.integers(0, 256, (S, S, 3), dtype=np.uint8), "state": np.zeros(cfg.state_dim, np.float32),
           "instruction": INSTRUCTION}
    for policy in policies.values():
        policy.reset()
        policy.select_action(obs)  # episode start (fills the window), not timed
    times: dict[str, list[float]] = {key: [] for key in policies}
    order = list(policies)
    for _ in range(n_steps):
        obs["image"] = rng.integers(0, 256, (S, S, 3), dtype=np.uint8)
        for key in order:
            t = time.perf_counter()
            policies[key].select_action(obs)
            times[key].append(1000 * (time.perf_counter() - t))
        order.reverse()
    return {key: step_stats(np.array(t), cfg.n_action_steps) for key, t in times.items()}


def step_stats(t: np.ndarray, k: int) -> dict:
    """Summary of per-step latencies t (ms) of a policy that replans every k steps (steps k-1, 2k-1, ...)."""
    replan = t[k - 1 :: k]  # steps that sample a new chunk
    return {"n_steps": len(t), "mean_ms": float(t.mean()), "p50_ms": float(np.percentile(t, 50)),
            "p99_ms": float(np.percentile(t, 99)), "max_ms": float(t.max()),
            "replan_step_mean_ms": float(replan.mean()), "replan_step_median_ms": float(np.median(replan)),
            "other_step_mean_ms": float(np.delete(t, np.s_[k - 1 :: k]).mean()),
            "compute_per_replan_cycle_ms": float(t[: len(t) // k * k].reshape(-1, k).sum(1).mean())}


def replan_encoder(policy: MossVLAPolicy) -> tuple[Callable[[], tuple[torch.Tensor, torch.Tensor]], torch.Tensor]:
    """After an episode start: a function doing the observation encoding of one replan step as
    select_action does it (cached: push a new frame, then the VL features from the cache; uncached: the
    whole window, text included), and the normalised state for the action head."""
    cfg = policy.config
    S = cfg.input_image_size
    obs = window_obs(cfg)
    text = policy._text(INSTRUCTION, 1)
    policy.reset()
    with torch.no_grad():
        policy.cache.push(obs["image"][:, 0])

    @torch.no_grad()
    def encode() -> tuple[torch.Tensor, torch.Tensor]:
        if cfg.use_cache:
            policy.cache.push(torch.rand(1, 3, S, S))
            return policy.cache.vl_features(*text)
        return policy.encode(obs["image"], INSTRUCTION)

    return encode, policy.normalizer.normalize("state", torch.zeros(1, cfg.state_dim))


def encode_and_head_times(policy: MossVLAPolicy, n: int = 5) -> dict[str, float]:
    """Medians (ms) of the parts of a replan step: observation encoding (see :func:`replan_encoder`),
    the action head's 4 Euler steps (our sampler as configured, i.e. traced with ``torchscript_sampler``)
    and, for comparison on the same inputs, our sampler run eagerly and lerobot's own ``get_action``."""
    encode, state = replan_encoder(policy)
    head = policy.action_head
    enc, sampled, eager, lerobot = [], [], [], []
    for _ in range(n):
        t = time.perf_counter()
        vl, mask = encode()
        enc.append(1000 * (time.perf_counter() - t))
        for times, run in ((sampled, head.sample), (eager, partial(sample_eagerly, head)),
                           (lerobot, head.sample_reference)):
            t = time.perf_counter()
            run(vl, mask, state, 0)
            times.append(1000 * (time.perf_counter() - t))
    return {"encode_ms": float(np.median(enc)), "action_head_ms": float(np.median(sampled)),
            "action_head_eager_ms": float(np.median(eager)),
            "action_head_lerobot_get_action_ms": float(np.median(lerobot))}


def sample_eagerly(head, *args) -> torch.Tensor:
    """``head.sample`` without its TorchScript trace."""
    traced, head.torchscript = head.torchscript, False
    try:
        return head.sample(*args)
    finally:
        head.torchscript = traced


class KernelCounter(TorchDispatchMode):
    """Counts the aten operators run: on CPU each costs a fixed dispatch overhead besides its arithmetic."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


def replan_cost(policy: MossVLAPolicy) -> dict[str, float]:
    """Load-independent cost of one replan step's compute, encoding and action head apart: FLOPs
    (matmuls, attention and convolutions, FlopCounterMode) and the number of aten operators run. The head
    is counted eagerly: its TorchScript trace runs the same operators (a first call would trace, i.e.
    run it twice, inside the counter)."""
    encode, state = replan_encoder(policy)
    res: dict[str, float] = {}
    for part in ("encode", "action_head"):
        vl, mask = encode()
        run = encode if part == "encode" else partial(sample_eagerly, policy.action_head, vl, mask, state, 0)
        res[f"{part}_gflops"] = count_flops(run, attention=True)[0] / 1e9
        with KernelCounter() as counter:
            run()
        res[f"{part}_aten_ops"] = counter.count
    return res


def latency_comparison(model: str, n_steps: int) -> dict:
    res: dict = {"load_average_at_start": os.getloadavg()}
    for label, policy, causal in (("moss_centred", "moss", False), ("moss_causal", "moss", True),
                                  ("contextvla", "contextvla", False)):
        policies = {}
        for key, use_cache in (("cached", True), ("uncached", False)):
            policies[key] = build(policy, model, temporal__causal=causal, use_cache=use_cache, inference_seed=0)
            policies[key].fold_for_inference()
        row = step_latency(policies, n_steps)
        for key, p in policies.items():
            row[key].update(encode_and_head_times(p))
            row[key]["replan_cost"] = replan_cost(p)
        c, u = row["cached"], row["uncached"]
        row["speedup_p99_step"] = u["p99_ms"] / c["p99_ms"]  # the worst step: the 10 Hz deadline
        # medians over the replan steps: robust to load spikes from other processes on a shared machine
        row["speedup_replan_step"] = u["replan_step_median_ms"] / c["replan_step_median_ms"]
        # the cache only touches observation encoding; the head's 4 Euler steps cost the same in both
        row["speedup_encoding"] = u["encode_ms"] / c["encode_ms"]
        row["speedup_compute_per_cycle"] = u["compute_per_replan_cycle_ms"] / c["compute_per_replan_cycle_ms"]
        # what a replan step costs apart from load: the speedup if time followed FLOPs, or operator count
        cost_c, cost_u = c["replan_cost"], u["replan_cost"]
        row["replan_flops_ratio"] = ((cost_u["encode_gflops"] + cost_u["action_head_gflops"])
                                     / (cost_c["encode_gflops"] + cost_c["action_head_gflops"]))
        row["replan_aten_ops_ratio"] = ((cost_u["encode_aten_ops"] + cost_u["action_head_aten_ops"])
                                        / (cost_c["encode_aten_ops"] + cost_c["action_head_aten_ops"]))
        res[label] = row
        print(f"[{model}] {label}: cached p50 {c['p50_ms']:.1f} p99 {c['p99_ms']:.1f} replan {c['replan_step_median_ms']:.1f}"
              f" ms | uncached p99 {u['p99_ms']:.1f} replan {u['replan_step_median_ms']:.1f} ms | encode "
              f"{c['encode_ms']:.1f} vs {u['encode_ms']:.1f} ms, head {c['action_head_ms']:.1f} ms (eager "
              f"{c['action_head_eager_ms']:.1f}, lerobot "
              f"get_action {c['action_head_lerobot_get_action_ms']:.1f}) | speedup p99 x{row['speedup_p99_step']:.2f}, "
              f"replan x{row['speedup_replan_step']:.2f}, encoding x{row['speedup_encoding']:.2f}, per cycle "
              f"x{row['speedup_compute_per_cycle']:.2f} | replan FLOPs ratio x{row['replan_flops_ratio']:.2f}, "
              f"aten ops ratio x{row['replan_aten_ops_ratio']:.2f}", flush=True)
    res["load_average_at_end"] = os.getloadavg()
    return res


def train_step_time(n_steps: int) -> dict:
    res = {}
    for policy in ("contextvla", "moss"):
        p = build(policy, "small").train()
        cfg = p.config
        B = 16
        batch = {**window_obs(cfg, B), "action": torch.randn(B, cfg.action_head.horizon, cfg.action_dim),
                 "action_is_pad": torch.zeros(B, cfg.action_head.horizon, dtype=torch.bool)}
        opt = torch.optim.AdamW(p.parameters(), lr=1e-4)
        times = []
        for i in range(n_steps + 1):
            t = time.perf_counter()
            loss, _ = p(batch)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if i:  # first step warms up allocators
                times.append(time.perf_counter() - t)
        res[policy] = {"batch": B, "n_frames": cfg.n_frames, "median_s": float(np.median(times)),
                       "min_s": float(np.min(times)), "params_mb": mb(sum(x.numel() for x in p.parameters()))}
        print(f"[small] train step {policy}: median {res[policy]['median_s']:.3f} s", flush=True)
    return res


PARTS = ("base", "latency_small", "latency_small_fine", "latency_base", "train")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads (the rig has 2 cores)")
    ap.add_argument("--quick", action="store_true", help="fewer steps (smoke run)")
    ap.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS),
                    help="sections to run; the others are kept from an existing --out file")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rerun = set(args.parts) != set(PARTS) and args.out.exists()
    out = json.loads(args.out.read_text()) if rerun else {}
    info = {**machine_info(), "parts_run": args.parts, "quick": args.quick}
    if rerun:  # the earlier run's machine record stays with the sections it measured
        out.setdefault("reruns", []).append(info)
    else:
        out["machine"] = info
    if "base" in args.parts:
        out["base_moss_vs_none"] = base_comparison()
    if "latency_small" in args.parts:
        out["latency_small"] = latency_comparison("small", 24 if args.quick else 160)
    if "latency_small_fine" in args.parts:  # the bench's preset: 14 x 14 tokens, encoding weighs more
        out["latency_small_fine"] = latency_comparison("small_fine", 24 if args.quick else 160)
    if "latency_base" in args.parts:
        out["latency_base"] = latency_comparison("base", 8 if args.quick else 32)
    if "train" in args.parts:
        out["train_step_small"] = train_step_time(2 if args.quick else 8)
    info["load_average_at_end"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
