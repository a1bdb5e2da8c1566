"""moss-check groot_n15: the check a user runs on their own GPU machine with the real GR00T N1.5-3B.

    moss-check groot_n15 pretrained_path=/data/GR00T-N1.5-3B tokenizer_path=/data/eagle2hg-processor-groot-n1p5
    moss-check groot_n15 pretrained_path=... tokenizer_path=... device=cuda:1 batch_sizes=[8,64] out=check.json

It loads the checkpoint offline, checks that MOSS at zero init leaves lerobot's actions unchanged on a
sample frame (our wrapped model against lerobot's own ``GR00TN15.get_action``, fp32), runs a few training
steps of ``policy=moss`` (8 frames, ContextVLA, MOSS after SigLIP layer 6) at each batch size (step time,
peak GPU memory, or the out-of-memory error), times ``select_action`` with and without the streaming
cache, and writes everything to one JSON report (with the machine and package versions) to attach to a
bug report. The same measurements at random weights: benchmarks/groot_n15_bench.py.
"""

from __future__ import annotations

import gc
import json
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import torch

from moss_vla.device import autocast, resolve_device

USAGE = __doc__
DEFAULTS = {"pretrained_path": "", "tokenizer_path": "", "device": "auto", "batch_sizes": "[8,64]", "steps": "3",
            "out": "groot_n15_check.json"}
INSTRUCTION = "Point left when the circle on the display moves left, and point right when it moves right."


def machine(device: torch.device) -> dict[str, Any]:
    import importlib.metadata as md

    info = {"python": platform.python_version(), "platform": platform.platform(), "torch": torch.__version__,
            "cuda": torch.version.cuda, "device": str(device)}
    for pkg in ("lerobot", "transformers", "peft", "flash-attn"):
        try:
            info[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            info[pkg] = None
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1))
    return info


def unit_stats(state_dim: int = 8, action_dim: int = 8) -> dict[str, Any]:
    def one(d: int) -> dict[str, list[float]]:
        return {"mean": [0.0] * d, "std": [1.0] * d, "min": [-1.0] * d, "max": [1.0] * d}

    return {"state": one(state_dim), "action": one(action_dim)}


def sample_frames(n: int, size: int = 224, seed: int = 0) -> list[np.ndarray]:
    """A disc moving left to right on grey (uint8 frames): something with motion for MOSS to see."""
    yy, xx = np.mgrid[:size, :size]
    out = []
    for t in range(n):
        cx = size * (0.2 + 0.6 * t / max(1, n - 1))
        img = np.full((size, size, 3), 90, np.uint8)
        img[(xx - cx) ** 2 + (yy - size / 2) ** 2 < (size / 10) ** 2] = (230, 40, 40)
        out.append(img)
    return out


def training_batch(policy, batch_size: int, seed: int = 0) -> dict[str, Any]:
    cfg = policy.config
    g = torch.Generator().manual_seed(seed)
    S, T, H = cfg.input_image_size, cfg.n_frames, cfg.action_head.horizon
    return {"image": torch.rand(batch_size, T, 3, S, S, generator=g),
            "state": torch.rand(batch_size, cfg.state_dim, generator=g) * 2 - 1,
            "action": torch.rand(batch_size, H, cfg.action_dim, generator=g) * 2 - 1,
            "action_is_pad": torch.zeros(batch_size, H, dtype=torch.bool),
            "instruction": [INSTRUCTION] * batch_size}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_training(policy, batch_size: int, steps: int, device: torch.device) -> dict[str, Any]:
    """Median seconds per AdamW step (forward in bf16 autocast on a GPU, backward, step) after one warm-up
    step, and the peak GPU memory; an out-of-memory error is reported, not raised."""
    policy.train()
    params = [p for p in policy.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, betas=(0.95, 0.999), weight_decay=1e-5)
    batch = training_batch(policy, batch_size)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times, losses = [], []
    try:
        for _ in range(steps + 1):
            _sync(device)
            t0 = time.perf_counter()
            with autocast(device):
                loss, _ = policy(batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            _sync(device)
            times.append(time.perf_counter() - t0)
            losses.append(float(loss.detach()))
    except torch.cuda.OutOfMemoryError as e:
        return {"batch_size": batch_size, "error": f"out of memory: {str(e).splitlines()[0]}"}
    finally:
        opt.zero_grad(set_to_none=True)
        del opt
        gc.collect()
    out = {"batch_size": batch_size, "steps_timed": steps, "step_s": statistics.median(times[1:]),
           "first_step_s": times[0], "loss": losses, "trainable_parameters": sum(p.numel() for p in params)}
    if device.type == "cuda":
        out["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    return out


def time_select_action(policy, steps: int, device: torch.device) -> dict[str, Any]:
    """Median ms of the replanning ``select_action`` (n_action_steps = 1: a chunk every step) with and
    without the streaming cache, on the same moving-disc frames."""
    policy.eval()
    saved = (policy.config.n_action_steps, policy.config.use_cache)
    frames = sample_frames(steps + policy.config.n_frames, policy.config.input_image_size)
    out = {}
    try:
        policy.config.n_action_steps = 1
        for use_cache in (True, False):
            policy.config.use_cache = use_cache
            policy.reset()
            times = []
            for i, frame in enumerate(frames):
                _sync(device)
                t0 = time.perf_counter()
                policy.select_action({"image": frame, "state": np.zeros(policy.config.state_dim, np.float32),
                                      "instruction": INSTRUCTION})
                _sync(device)
                if i >= policy.config.n_frames:  # past the first window
                    times.append(time.perf_counter() - t0)
            out["cached_ms" if use_cache else "uncached_ms"] = 1000 * statistics.median(times)
    finally:
        policy.config.n_action_steps, policy.config.use_cache = saved
    out["speedup"] = out["uncached_ms"] / out["cached_ms"]
    return out


def zero_init_equality(pretrained_path: str, tokenizer_path: str, device: torch.device,
                       overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """max |ours - lerobot's| of the sampled (B, 16, 32) chunk on one frame, fp32, same noise."""
    from PIL import Image

    from moss_vla.groot_n15 import shim
    from moss_vla.groot_n15.configuration import GrootN15Config
    from moss_vla.groot_n15.loading import _quiet
    from moss_vla.groot_n15.policy import GrootN15Policy

    frame = sample_frames(1, (overrides or {}).get("input_image_size", 224))[0]
    with shim.lerobot_offline(tokenizer_path) as groot_n1, _quiet():
        reference = groot_n1.GR00TN15.from_pretrained(pretrained_path).to(device).eval()
    cfg = GrootN15Config.from_dict({"pretrained_path": pretrained_path, "tokenizer_path": tokenizer_path,
                                    "n_frames": 1, "variant": "groot+moss", "temporal": {"module": "moss",
                                    "window": [5, 9, 9], "hidden": 64, "conv_blocks": 3}, **(overrides or {})})
    policy = GrootN15Policy(cfg, unit_stats()).to(device).eval()
    eagle = policy.prompt.encode(INSTRUCTION, [Image.fromarray(frame)])
    image = torch.from_numpy(frame).permute(2, 0, 1)[None, None].float() / 255
    action_input = policy._action_input(torch.zeros(1, 8, device=device))
    with torch.no_grad():
        torch.manual_seed(0)
        ours = policy.model.sample(*policy.encode(image, INSTRUCTION), action_input)
        torch.manual_seed(0)
        theirs = reference.get_action({**{f"eagle_{k}": v.to(device) for k, v in eagle.items()},
                                       **action_input})["action_pred"]
    pixel_diff = float((policy.vision.preprocess(image[0].to(device)) - eagle["pixel_values"].to(device)).abs().max())
    result = {"max_abs_diff": float((ours - theirs).abs().max()), "pixel_values_max_abs_diff": pixel_diff,
              "prompt_ids_equal": bool(torch.equal(policy._text(INSTRUCTION, 1)[0][0].cpu(), eagle["input_ids"][0]))}
    del reference, policy
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def run_check(pretrained_path: str, tokenizer_path: str, device_spec: str = "auto",
              batch_sizes: tuple[int, ...] = (8, 64), steps: int = 3, select_steps: int = 20,
              overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The report (``overrides``: config keys for both policies, e.g. a small model's sizes in tests)."""
    from moss_vla.groot_n15.configuration import GrootN15Config
    from moss_vla.groot_n15.policy import GrootN15Policy

    device = resolve_device(device_spec)
    report: dict[str, Any] = {"machine": machine(device), "pretrained_path": pretrained_path,
                              "tokenizer_path": tokenizer_path}

    def part(name: str, fn) -> None:
        t0 = time.perf_counter()
        try:
            report[name] = fn()
        except Exception as e:  # noqa: BLE001 -- a failed part is the report's content, not the end of the check
            report[name] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc(limit=8)}
        print(f"[moss-check] {name} ({time.perf_counter() - t0:.0f} s): {json.dumps(report[name])[:300]}", flush=True)

    part("zero_init_equality", lambda: zero_init_equality(pretrained_path, tokenizer_path, device, overrides))
    cfg = GrootN15Config.from_dict({"pretrained_path": pretrained_path, "tokenizer_path": tokenizer_path,
                                    "variant": "moss", "n_frames": 8,
                                    "backbone": {"context_compression": True, "compress_after": 2},
                                    "temporal": {"module": "moss", "window": [5, 9, 9], "hidden": 64,
                                                 "conv_blocks": 3}, **(overrides or {})})
    policy = GrootN15Policy(cfg, unit_stats()).to(device)
    report["parameters"] = {"total": sum(p.numel() for p in policy.parameters()),
                            "moss": sum(p.numel() for p in policy.vision.temporal.parameters())}
    for b in batch_sizes:
        part(f"training_batch_{b}", lambda b=b: time_training(policy, b, steps, device))
    part("select_action", lambda: time_select_action(policy, select_steps, device))
    return report


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if "-h" in argv or "--help" in argv:
        print(USAGE)
        return 0
    opts = {**DEFAULTS, **dict(a.split("=", 1) for a in argv if "=" in a)}
    if "--cfg" in argv:  # the settings this check would run with, as every moss-* command prints them
        print("\n".join(f"{k}: {v}" for k, v in opts.items()))
        return 0
    if not argv or argv[0] != "groot_n15":
        print(USAGE)
        return 2
    unknown = sorted(set(opts) - set(DEFAULTS))
    if unknown or not opts["pretrained_path"] or not opts["tokenizer_path"]:
        print(f"moss-check: pass pretrained_path=<dir> tokenizer_path=<dir>{'; unknown ' + str(unknown) if unknown else ''}",
              file=sys.stderr)
        return 2
    from moss_vla.groot_n15.shim import check_checkpoint_dir, check_tokenizer_dir

    try:
        check_checkpoint_dir(opts["pretrained_path"])
        check_tokenizer_dir(opts["tokenizer_path"])
        resolve_device(opts["device"])
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        print(f"moss-check: {e}", file=sys.stderr)
        return 1
    sizes = tuple(int(s) for s in str(opts["batch_sizes"]).strip("[]").split(",") if s.strip())
    report = run_check(opts["pretrained_path"], opts["tokenizer_path"], opts["device"], sizes, int(opts["steps"]))
    out = Path(opts["out"])
    out.write_text(json.dumps(report, indent=1))
    print(f"[moss-check] report: {out.resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
