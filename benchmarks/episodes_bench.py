"""Episode store benchmark: recording cost on the control-loop thread, background write throughput,
and training-window read throughput against what a training step consumes.

  python benchmarks/episodes_bench.py [--quick] [--out benchmarks/results/episodes.json]

Measured side by side in one run:
  1. add_frame latency on the calling thread at a real 10 Hz pace (goal p99 < 2 ms), 224x224 and
     720x1280 images, and in a burst (frames as fast as possible, the worst case for GIL contention);
  2. background write throughput (frames/s until commit returns) and bytes on disk per frame,
     Blosc lz4 vs zstd;
  3. random training-window reads (windows/s): T=8 and T=1, with and without augmentation, the
     direct chunk reader vs zarr's read path, and a DataLoader with 2 workers, versus the consumption of a `small`-preset training step on CPU
     (assumed: batch 16 windows of T=8 per step at ~1 step/s = 16 windows/s).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import zarr
from machine import machine_info  # benchmarks/machine.py (scripts run from this folder)
from torch.utils.data import DataLoader

from moss_vla.episodes import EpisodeStore, EpisodeWriter
from moss_vla.episodes.window_dataset import AugmentConfig, WindowDataset

RESULTS = Path(__file__).resolve().parent / "results" / "episodes.json"
TRAIN_STEP = {"batch_windows": 16, "n_frames": 8, "steps_per_s": 1.0}  # small preset on 2 CPU cores


def camera_like_frames(n: int, shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    """A display seen by a camera: smooth background, a moving circle, sensor noise."""
    h, w, _ = shape
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([40 + 60 * xx / w, 50 + 50 * yy / h, 70 + 0 * xx], -1).astype(np.float32)
    out = np.empty((n, *shape), np.uint8)
    r = max(4, h // 12)
    for t in range(n):
        img = base.copy()
        cx, cy = int(w * (0.2 + 0.6 * t / max(n - 1, 1))), int(h * 0.5)
        cv2.circle(img, (cx, cy), r, (230, 230, 230), -1)
        img += rng.normal(0, 2.0, img.shape).astype(np.float32)
        out[t] = np.clip(img, 0, 255).astype(np.uint8)
    return out


def ms_stats(lat: np.ndarray) -> dict:
    return {"p50": round(float(np.percentile(lat, 50)) * 1e3, 3),
            "p99": round(float(np.percentile(lat, 99)) * 1e3, 3),
            "max": round(float(lat.max()) * 1e3, 3)}


def noise_floor(shape: tuple[int, int, int], n: int) -> dict:
    """The same 10 Hz loop timing only the image copy add_frame makes (no writer, no thread): the
    scheduling noise of this machine, to read the add_frame numbers against."""
    frames = camera_like_frames(8, shape)
    lat = np.empty(n)
    t_start = time.perf_counter()
    for t in range(n):
        time.sleep(max(0.0, t_start + 0.1 * t - time.perf_counter()))
        t0 = time.perf_counter()
        np.array(frames[t % 8], copy=True)
        lat[t] = time.perf_counter() - t0
    return {"image_shape": list(shape), "frames": n, "copy_only_ms": ms_stats(lat)}


def record(path: Path, shape: tuple[int, int, int], n: int, paced: bool, compressor: str) -> dict:
    """Record one episode of n frames; add_frame latencies and time until the commit returns."""
    frames = camera_like_frames(min(n, 32), shape)
    state = np.zeros(8, np.float32)
    lat = np.empty(n)
    # a burst must not overflow (it would fail the episode, by design): queue for every frame
    with EpisodeWriter(path, image_shape=shape, queue_size=n + 1, image_compressor=compressor) as w:
        w.start_episode({"task": "bench", "instruction": "benchmark"})
        t_start = time.perf_counter()
        for t in range(n):
            if paced:  # a 10 Hz control loop: sleep until the next tick
                time.sleep(max(0.0, t_start + 0.1 * t - time.perf_counter()))
            t0 = time.perf_counter()
            w.add_frame(image=frames[t % len(frames)], state=state, action=state, timestamp=0.1 * t)
            lat[t] = time.perf_counter() - t0
        t_added = time.perf_counter()
        w.commit()
        t_done = time.perf_counter()
    nbytes = sum(f.stat().st_size for f in (path / "data" / "image").rglob("*") if f.is_file())
    out = {
        "image_shape": list(shape), "frames": n, "paced_10hz": paced, "compressor": compressor,
        "add_frame_ms": ms_stats(lat),
        "commit_wait_s": round(t_done - t_added, 3),
        "disk_bytes_per_frame": int(nbytes / n),
        "compression_ratio": round(float(np.prod(shape)) * n / max(nbytes, 1), 2),
    }
    if not paced:  # the burst keeps the writer thread busy: its throughput is frames / total time
        out["write_throughput_fps"] = round(n / (t_done - t_start), 1)
    shutil.rmtree(path)
    return out


def make_train_store(path: Path, n_episodes: int, length: int) -> None:
    shape = (224, 224, 3)
    frames = camera_like_frames(length, shape)
    rng = np.random.default_rng(0)
    with EpisodeWriter(path, image_shape=shape, queue_size=4096) as w:
        for e in range(n_episodes):
            w.start_episode({"task": "bench", "instruction": "benchmark", "seed": e})
            for t in range(length):
                s = rng.normal(size=8).astype(np.float32)
                w.add_frame(image=frames[t], state=s, action=s, timestamp=0.1 * t)
            w.commit()


def read_windows(ds: WindowDataset, n: int, seed: int = 0) -> float:
    idx = np.random.default_rng(seed).integers(0, len(ds), n)
    ds[int(idx[0])]  # open the store outside the timing
    t0 = time.perf_counter()
    for k in idx:
        ds[int(k)]
    return n / (time.perf_counter() - t0)


def loader_windows(ds: WindowDataset, batches: int, workers: int) -> float:
    loader = DataLoader(ds, batch_size=TRAIN_STEP["batch_windows"], shuffle=True, num_workers=workers,
                        persistent_workers=workers > 0)
    it = iter(loader)
    next(it)  # worker start-up outside the timing
    t0 = time.perf_counter()
    n = 0
    for _ in range(batches):
        n += len(next(it)["index"])
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer frames (a smoke run, noisier numbers)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    q = args.quick
    tmp = Path(tempfile.mkdtemp(prefix="episodes_bench_"))
    results: dict = {
        "machine": machine_info(zarr=zarr.__version__, tmpdir=str(tmp)),
        "assumption_training_step": {**TRAIN_STEP, "windows_per_s_needed":
                                     TRAIN_STEP["batch_windows"] * TRAIN_STEP["steps_per_s"]},
    }
    try:
        print("== recording: add_frame on the calling thread, background writes ==")
        rec = []
        for shape, n_paced, n_burst in (((224, 224, 3), 150, 300), ((720, 1280, 3), 60, 60)):
            if q:
                n_paced, n_burst = 20, 30
            nf = noise_floor(shape, n_paced)
            results.setdefault("noise_floor_10hz", []).append(nf)
            print(f"{shape[0]}x{shape[1]} no writer, image copy only, 10 Hz: p50 {nf['copy_only_ms']['p50']:.3f} ms"
                  f"  p99 {nf['copy_only_ms']['p99']:.3f} ms  max {nf['copy_only_ms']['max']:.2f} ms")
            for comp in ("lz4", "zstd"):
                for paced, n in ((True, n_paced), (False, n_burst)):
                    r = record(tmp / "rec.zarr", shape, n, paced, comp)
                    rec.append(r)
                    print(f"{shape[0]}x{shape[1]} {comp:4s} {'10 Hz ' if paced else 'burst '} "
                          f"add_frame p50 {r['add_frame_ms']['p50']:.3f} ms  p99 {r['add_frame_ms']['p99']:.3f} ms"
                          f"  max {r['add_frame_ms']['max']:.2f} ms  commit wait {r['commit_wait_s']:.3f} s"
                          + (f"  write {r['write_throughput_fps']:.0f} frames/s" if not paced else "")
                          + f"  {r['disk_bytes_per_frame'] / 1e3:.1f} kB/frame (x{r['compression_ratio']})")
        # worst frames wait one GIL switch interval (5 ms) for the writer thread; a control loop that
        # needs tighter bounds can shorten it (process-wide, so the application decides, not the writer)
        old_si = sys.getswitchinterval()
        sys.setswitchinterval(0.001)
        try:
            r = record(tmp / "rec.zarr", (224, 224, 3), 20 if q else 150, True, "lz4")
        finally:
            sys.setswitchinterval(old_si)
        r["switch_interval_s"] = 0.001
        rec.append(r)
        print(f"224x224 lz4  10 Hz, sys.setswitchinterval(0.001): add_frame p50 {r['add_frame_ms']['p50']:.3f} ms"
              f"  p99 {r['add_frame_ms']['p99']:.3f} ms  max {r['add_frame_ms']['max']:.2f} ms")
        results["recording"] = rec
        for r in rec:
            if not r["paced_10hz"]:
                r["write_headroom_vs_10hz"] = round(r["write_throughput_fps"] / 10.0, 1)

        print("== training-window reads (224x224) ==")
        store = tmp / "train.zarr"
        n_eps, length = (6, 50) if q else (20, 100)
        make_train_store(store, n_eps, length)
        need = TRAIN_STEP["batch_windows"] * TRAIN_STEP["steps_per_s"]
        aug = AugmentConfig(enabled=True, brightness=0.2, contrast=0.2, saturation=0.2, hue=0.02, max_shift_px=8)
        reads = {}
        n_reads = 100 if q else 400
        # one torch thread, as in DataLoader workers (2 threads on 2 busy cores are several times slower)
        torch.set_num_threads(1)
        for name, T, a in (("T8", 8, None), ("T8_zarr_read_path", 8, None), ("T8_augment", 8, aug),
                           ("T1", 1, None)):
            ds = WindowDataset(store, n_frames=T, horizon=16, augment=a)
            if name == "T8_zarr_read_path":  # side by side: the same windows through zarr's reader
                ds._images = EpisodeStore(store).arrays["image"]
            reads[name] = round(read_windows(ds, n_reads if T == 8 else 2 * n_reads), 1)
            print(f"{name:18s} single process: {reads[name]:8.1f} windows/s  = x{reads[name] / need:.1f} "
                  f"of the {need:.0f} windows/s a training step consumes")
        ds = WindowDataset(store, n_frames=8, horizon=16, augment=aug)
        reads["T8_augment_dataloader_2_workers"] = round(loader_windows(ds, 5 if q else 20, 2), 1)
        print(f"T8_augment DataLoader(2 workers, batch 16): {reads['T8_augment_dataloader_2_workers']:.1f} "
              f"windows/s = x{reads['T8_augment_dataloader_2_workers'] / need:.1f}")
        results["window_reads_per_s"] = reads
        results["window_read_headroom_vs_training"] = {k: round(v / need, 1) for k, v in reads.items()}
        results["train_store"] = {"episodes": n_eps, "frames": n_eps * length, "image_shape": [224, 224, 3]}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
