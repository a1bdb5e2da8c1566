"""Simulated rig costs: per-frame virtual camera + crop, arm and operator steps, and collection speed.

Run: ``.venv/bin/python benchmarks/sim_rig_bench.py`` (about 1 minute on 2 cores). Writes
``benchmarks/results/sim_rig.json``.

- Per-component wall times (ms) are measured alternately on the same inputs, `--reps` times each; we
  report the minimum (least disturbed by other processes on a shared machine) and the median.
- Camera: the SimCamera path (precomputed fixed-point remap tables) side by side with a reference that
  calls cv2.warpPerspective on every frame (same geometry; the pictures differ by rounding only).
- Crop: the shared robot.display_crop.DisplayCrop as configured (supersampled warp + area resize).
- Collection: `moss-sim collect` of a few full episodes into a temporary store with the episode writer,
  reported as control steps (= frames) per wall second and simulated seconds per wall second.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from machine import machine_info  # benchmarks/machine.py (scripts run from this folder)

from moss_vla.config import compose_config
from rig.sim_cli import collect
from rig.sim_rig import build_sim_rig

RESULTS = Path(__file__).resolve().parent / "results" / "sim_rig.json"


def reference_capture(cam, k: int, t: float) -> np.ndarray:
    """SimCamera.capture with cv2.warpPerspective per frame instead of the precomputed remap tables."""
    screen = cam.render(cam.display_time(t))
    y0, y1, x0, x1 = cam._roi
    shift = np.array([[1, 0, -x0], [0, 1, -y0], [0, 0, 1]], dtype=np.float64)
    matrix = shift @ cam.screen_homography(screen.shape[:2])
    screen = cv2.convertScaleAbs(screen, alpha=1.0 - cam.black_level / 255.0, beta=cam.black_level)
    img = cam.background.copy()
    roi = np.ascontiguousarray(img[y0:y1, x0:x1])
    cv2.warpPerspective(screen, matrix, (x1 - x0, y1 - y0), dst=roi, flags=cv2.INTER_LINEAR,
                        borderMode=cv2.BORDER_TRANSPARENT)
    roi = cv2.GaussianBlur(roi, (3, 3), cam.blur_sigma)
    img[y0:y1, x0:x1] = roi
    rng = cam._rng(k)
    rng.normal()
    img = cv2.convertScaleAbs(img, alpha=cam.exposure_gain(t), beta=0.0)
    h, w = cam.raw_size
    dy, dx = rng.integers(0, cam._noise_pad, 2)
    img = cv2.add(img, cam._noise_pos[dy:dy + h, dx:dx + w])
    dy, dx = rng.integers(0, cam._noise_pad, 2)
    return cv2.subtract(img, cam._noise_neg[dy:dy + h, dx:dx + w])


def time_alternately(fns: dict, reps: int) -> dict:
    times = {k: [] for k in fns}
    for f in fns.values():
        f()  # warm-up (tables, caches)
    for _ in range(reps):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
    return {k: {"min_ms": 1e3 * min(v), "median_ms": 1e3 * statistics.median(v)} for k, v in times.items()}


def components(task: str, reps: int) -> dict:
    rig = build_sim_rig(compose_config([f"task={task}"], "sim"), seed=0)
    cam, crop, arm, clock = rig.camera, rig.crop, rig.arm, rig.clock
    op = rig.scripted_operator()
    t = 3.0
    raw = cam.capture(30, t)
    ref = reference_capture(cam, 30, t)
    state = {"k": 0}

    def arm_step():  # one 0.1 s control period of the arm (25 integration substeps of 4 ms)
        clock.advance(rig.period)
        s = arm.state()
        arm.command(s.q + 0.001)

    def operator_step():
        state["k"] += 1
        tt = state["k"] * 0.1 % rig.task.duration
        op.select_action({"stimulus": rig.task.state(tt), "state": arm.state().as_vector()})

    res = time_alternately({
        "render": lambda: rig.task.render(t),
        "camera_remap": lambda: cam.capture(30, t),
        "camera_warp_reference": lambda: reference_capture(cam, 30, t),
        "crop": lambda: crop(raw),
        "camera_and_crop": lambda: crop(cam.capture(30, t)),
        "arm_step": arm_step,
        "operator_step": operator_step,
    }, reps)
    res["camera_speedup_remap_vs_warp_min"] = res["camera_warp_reference"]["min_ms"] / res["camera_remap"]["min_ms"]
    res["camera_remap_vs_warp_mean_abs_diff"] = float(np.abs(raw.astype(int) - ref.astype(int)).mean())
    res["crop_config"] = crop.to_config()
    return res


def collection(task: str, episodes: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose_config([f"task={task}", f"episodes={episodes}", f"out={tmp}/b.zarr", "progress=false"], "sim")
        rep = collect(cfg)
    return {k: rep[k] for k in ("episodes", "frames", "simulated_seconds", "wall_seconds", "frames_per_wall_second",
                                "realtime_factor", "interactions", "operator_success_rate", "failures",
                                "mean_reaction_time_s")}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--episodes", type=int, default=3)
    args = ap.parse_args()
    out = {"machine": machine_info(opencv=cv2.__version__, opencv_threads=cv2.getNumThreads()), "components": {}, "collection": {}}
    for task in ("movesense_lr", "pongpredict"):
        out["components"][task] = comp = components(task, args.reps)
        print(f"[{task}] per frame, min / median ms:")
        for k, v in comp.items():
            if isinstance(v, dict) and "min_ms" in v:
                print(f"  {k:24s} {v['min_ms']:7.2f} / {v['median_ms']:7.2f}")
        print(f"  camera remap vs warpPerspective: {comp['camera_speedup_remap_vs_warp_min']:.2f}x faster "
              f"(mean |diff| {comp['camera_remap_vs_warp_mean_abs_diff']:.2f} grey levels)")
    for task in ("movesense_lr", "movesense_rot", "pongpredict"):
        out["collection"][task] = c = collection(task, args.episodes)
        print(f"[{task}] collect {c['episodes']} episodes: {c['frames']} frames, {c['frames_per_wall_second']} "
              f"frames/s, {c['realtime_factor']}x real time, operator success {c['operator_success_rate']:.3f} "
              f"({c['interactions']} interactions), mean reaction {c['mean_reaction_time_s']} s")
    out["machine"]["load_average_1min_end"] = os.getloadavg()[0]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=2))
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
