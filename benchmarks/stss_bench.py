"""STSS and MOSS costs: fast vs reference STSS (time and peak memory), MOSS FLOPs and parameters.

Run: ``.venv/bin/python benchmarks/stss_bench.py`` (about 1-2 minutes on 2 cores). Writes
``benchmarks/results/stss.json``.

- Time: the fast and the reference STSS and the matmul floor run alternately on the same input, several
  times each; we report the minimum and the median wall time of each and their ratios (the minimum is
  the least disturbed by other processes on a shared machine), on 2 threads and again on 1 thread (which
  suffers much less when other processes compete for the cores: 2-thread OpenMP regions then wait for a
  descheduled thread). The speed-up over the loop reference depends on the machine (how well its BLAS
  runs the reference's many small products); the fraction of the floor does not: the floor is one
  `torch.bmm` computing the Gram matrix (H W x H W, over C channels) of every frame pair the window
  compares, each unordered pair once, as the fast STSS does. Nothing can compute Eq. 2 with fewer
  multiply-adds, so `fast / floor` near 1 means the fast STSS runs at this CPU's matmul speed.
- Peak memory: tracemalloc does not see torch's allocations and the CPU allocator keeps no statistics, so
  each measurement runs in a fresh process with glibc's mmap threshold pinned to 64 KiB
  (``MALLOC_MMAP_THRESHOLD_``; every tensor buffer is then its own mapping, returned to the OS when freed)
  and reads the kernel's resident-set high-water mark (``VmHWM``). After one warm-up call (MKL/OpenMP
  buffers) the mark is reset (``/proc/self/clear_refs``), the function runs once more with its output
  kept, and peak extra memory = VmHWM - VmRSS before the call. This is an upper bound of the live tensor
  memory (it also counts the few pages that other allocations touch). It is compared with the budget
  "output + one frame pair's correlation": the (B, T, H, W, L, U, V) float32 output plus one (H W x H W)
  Gram matrix per clip of the batch.
- FLOPs: ``torch.utils.flop_counter.FlopCounterMode`` (counts 2 FLOPs per multiply-add of matmuls and
  convolutions; elementwise ops are not counted), for MOSS at C=768, D=64, orders (1, 2), window (5, 9, 9)
  on 8 frames of 14 x 14 tokens, and for a random-weight SigLIP-B/16 vision tower on the same 8 frames
  for scale.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from machine import machine_info  # benchmarks/machine.py (scripts run from this folder)

from moss_vla.moss import MOSS, count_parameters
from moss_vla.stss import stss, stss_reference

RESULTS = Path(__file__).resolve().parent / "results" / "stss.json"
WINDOW = (5, 9, 9)
CONFIGS = {  # name: (B, T, H, W, C)
    "siglip_b_14x14": (2, 8, 14, 14, 768),
    "siglip_l_16x16": (1, 8, 16, 16, 1024),
}
IMPLEMENTATIONS = {"fast": stss, "reference": stss_reference}


def gram_floor(x: torch.Tensor, window: tuple[int, int, int]) -> Callable[[], torch.Tensor]:
    """The matmul floor of the STSS of `x` (B, T, H, W, C): one batched matmul of the Gram matrices of every
    unordered frame pair (t, t + l), 0 <= l <= (L - 1) // 2, inputs prepared outside the timed call."""
    B, T, H, W, C = x.shape
    pairs = [(t, t + lag) for lag in range((window[0] - 1) // 2 + 1) for t in range(T - lag)]
    flat = x.reshape(B, T, H * W, C)
    a = torch.stack([flat[:, t] for t, _ in pairs], 1).reshape(-1, H * W, C)  # (B * pairs, HW, C)
    b = torch.stack([flat[:, s] for _, s in pairs], 1).reshape(-1, H * W, C).transpose(1, 2).contiguous()
    return lambda: torch.bmm(a, b)  # (B * pairs, HW, HW)


def time_side_by_side(x: torch.Tensor, repeats: dict[str, int], threads: int) -> dict:
    """Alternate the implementations and the matmul floor on ``threads`` intra-op threads; min and median
    seconds of each."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        calls = {name: (lambda impl=impl: impl(x, WINDOW)) for name, impl in IMPLEMENTATIONS.items()}
        calls["matmul_floor"] = gram_floor(x, WINDOW)
        return _time_side_by_side(calls, {"matmul_floor": repeats["fast"], **repeats})
    finally:
        torch.set_num_threads(previous)


def _time_side_by_side(calls: dict[str, Callable[[], torch.Tensor]], repeats: dict[str, int]) -> dict:
    for call in calls.values():
        call()  # warm-up
    times: dict[str, list[float]] = {name: [] for name in calls}
    for r in range(max(repeats.values())):
        for name, call in calls.items():
            if r < repeats[name]:
                start = time.perf_counter()
                call()
                times[name].append(time.perf_counter() - start)
    return {name: {"min_s": min(ts), "median_s": statistics.median(ts), "runs": len(ts)} for name, ts in times.items()}


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def child_peak_memory(impl_name: str, shape: tuple[int, ...]) -> None:
    """Runs in a fresh process: print the peak extra resident memory (bytes) of one STSS call."""
    torch.manual_seed(0)
    x = torch.randn(*shape)
    impl = IMPLEMENTATIONS[impl_name]
    with torch.no_grad():
        del_me = impl(x, WINDOW)  # warm-up: MKL / OpenMP buffers stay, tensors are unmapped when freed
        del del_me
        before = _status_kib("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        out = impl(x, WINDOW)
        peak = _status_kib("VmHWM")
    print(json.dumps({"peak_extra_bytes": (peak - before) * 1024, "output_bytes": out.numel() * out.element_size()}))


def peak_memory(impl_name: str, shape: tuple[int, ...]) -> dict:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
    cmd = [sys.executable, __file__, "--child-memory", impl_name, *map(str, shape)]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def bench_stss() -> dict:
    results = {}
    for name, shape in CONFIGS.items():
        B, _, H, W, _ = shape
        torch.manual_seed(0)
        x = torch.randn(*shape)
        max_diff = float((stss(x, WINDOW) - stss_reference(x, WINDOW)).abs().max())
        timing = time_side_by_side(x, {"fast": 10, "reference": 3}, threads=2)
        # One thread: slower, but far less disturbed by other processes competing for the 2 cores.
        timing_1 = time_side_by_side(x, {"fast": 5, "reference": 2}, threads=1)
        memory = {impl: peak_memory(impl, shape) for impl in IMPLEMENTATIONS}
        output_bytes = memory["fast"]["output_bytes"]
        pair_bytes = (H * W) ** 2 * 4
        budget = output_bytes + B * pair_bytes
        results[name] = {
            "shape_BTHWC": shape,
            "window_LUV": WINDOW,
            "max_abs_diff": max_diff,
            "time": timing,
            "speedup_min": timing["reference"]["min_s"] / timing["fast"]["min_s"],
            "speedup_median": timing["reference"]["median_s"] / timing["fast"]["median_s"],
            "time_1_thread": timing_1,
            "speedup_min_1_thread": timing_1["reference"]["min_s"] / timing_1["fast"]["min_s"],
            # the machine-independent figure: fast STSS time / time of its Gram products alone (>= ~1)
            "fast_over_matmul_floor_min": timing["fast"]["min_s"] / timing["matmul_floor"]["min_s"],
            "fast_over_matmul_floor_min_1_thread": timing_1["fast"]["min_s"] / timing_1["matmul_floor"]["min_s"],
            "memory": {
                "output_bytes": output_bytes,
                "frame_pair_gram_bytes": pair_bytes,
                "budget_bytes(output + B x pair gram)": budget,
                "fast_peak_extra_bytes": memory["fast"]["peak_extra_bytes"],
                "reference_peak_extra_bytes": memory["reference"]["peak_extra_bytes"],
                "fast_minus_budget_bytes": memory["fast"]["peak_extra_bytes"] - budget,
            },
        }
        r = results[name]
        print(
            f"STSS {name} {shape}: fast {timing['fast']['min_s'] * 1e3:.1f} ms, reference "
            f"{timing['reference']['min_s'] * 1e3:.1f} ms (min of runs) -> {r['speedup_min']:.1f}x "
            f"(median {r['speedup_median']:.1f}x); 1 thread: {timing_1['fast']['min_s'] * 1e3:.1f} vs "
            f"{timing_1['reference']['min_s'] * 1e3:.1f} ms -> {r['speedup_min_1_thread']:.1f}x; "
            f"max |diff| {max_diff:.1e}"
        )
        print(
            f"     matmul floor (its Gram products in one bmm): {timing['matmul_floor']['min_s'] * 1e3:.1f} ms -> "
            f"fast = {r['fast_over_matmul_floor_min']:.2f}x the floor; 1 thread "
            f"{timing_1['matmul_floor']['min_s'] * 1e3:.1f} ms -> {r['fast_over_matmul_floor_min_1_thread']:.2f}x"
        )
        print(
            f"     peak extra memory: fast {memory['fast']['peak_extra_bytes'] / 2**20:.2f} MiB, reference "
            f"{memory['reference']['peak_extra_bytes'] / 2**20:.2f} MiB; output {output_bytes / 2**20:.2f} MiB, "
            f"budget output + {B} x pair Gram = {budget / 2**20:.2f} MiB"
        )
    return results


def bench_newest_frame() -> dict:
    """Causal STSS of only the newest frame (what a streaming loop needs per step) vs the whole clip."""
    x = torch.randn(1, 8, 14, 14, 768)
    out = {}
    for label, queries in [("all_8_frames", None), ("newest_frame", (7, 8))]:
        stss(x, WINDOW, causal=True, queries=queries)
        runs = []
        for _ in range(10):
            start = time.perf_counter()
            stss(x, WINDOW, causal=True, queries=queries)
            runs.append(time.perf_counter() - start)
        out[label] = {"min_s": min(runs), "median_s": statistics.median(runs)}
    out["ratio_min"] = out["all_8_frames"]["min_s"] / out["newest_frame"]["min_s"]
    print(
        f"causal STSS (1, 8, 14, 14, 768): all frames {out['all_8_frames']['min_s'] * 1e3:.1f} ms, newest frame "
        f"only {out['newest_frame']['min_s'] * 1e3:.1f} ms ({out['ratio_min']:.1f}x)"
    )
    return out


def siglip_base_flops(frames: torch.Tensor) -> int | None:
    """FLOPs of a random-weight SigLIP-B/16 (224 px, 12 layers, width 768) on the frames, for scale."""
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import SiglipVisionConfig, SiglipVisionModel

    model = SiglipVisionModel(SiglipVisionConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                                 num_attention_heads=12, image_size=224, patch_size=16)).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(pixel_values=frames)
    return counter.get_total_flops()


def bench_moss() -> dict:
    from torch.utils.flop_counter import FlopCounterMode

    module = MOSS(768, orders=(1, 2), window=WINDOW, hidden=64).eval()
    x = torch.randn(1, 8, 14, 14, 768)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module(x)
    by_op = {str(op): int(n) for op, n in counter.get_flop_counts()["Global"].items()}
    params = count_parameters(module)
    with torch.no_grad():
        module(x)
        runs = []
        for _ in range(5):
            start = time.perf_counter()
            module(x)
            runs.append(time.perf_counter() - start)
    siglip = siglip_base_flops(torch.randn(8, 3, 224, 224))
    flops = counter.get_total_flops()
    result = {
        "config": {"channels": 768, "hidden": 64, "orders": [1, 2], "window": WINDOW, "input_BTHWC": [1, 8, 14, 14, 768]},
        "flops": flops,
        "flops_by_op": by_op,
        "parameters": params,
        "parameter_megabytes_fp32": params * 4 / 1e6,
        "forward_eval_s": {"min": min(runs), "median": statistics.median(runs)},
        "siglip_b16_8_frames_flops": siglip,
        "moss_flops_relative_to_siglip_b16": flops / siglip,
    }
    print(
        f"MOSS C=768 D=64 orders (1,2) window {WINDOW} on (1, 8, 14, 14, 768): {flops / 1e9:.2f} GFLOP "
        f"({100 * flops / siglip:.1f}% of SigLIP-B/16 on the 8 frames, {siglip / 1e9:.0f} GFLOP), {params:,} "
        f"parameters ({params * 4 / 1e6:.1f} MB fp32), eval forward {min(runs) * 1e3:.0f} ms (min of 5)"
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--child-memory", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_memory:
        child_peak_memory(args.child_memory[0], tuple(int(v) for v in args.child_memory[1:]))
        return
    results = {"machine": machine_info(), "stss": bench_stss(), "causal_streaming": bench_newest_frame(),
               "moss": bench_moss()}
    results["machine"]["load_average_at_end"] = os.getloadavg()
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
