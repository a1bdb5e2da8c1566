"""Can the vision tower see the motion direction? A supervised probe, with and without MOSS, two grids.

The table-5 bench (results/sim_table5) shows the small policies pointing at chance: the end-to-end
action loss did not teach the tower which way the MoveSense circle moves. This probe isolates the
vision part: the tower of a policy config (trained from scratch, as in the bench) plus a linear
classifier on the newest frame's tokens (mean and max pooled) learn the motion direction directly
from 8-frame windows of scripted MoveSense L/R episodes collected here. Windows end on a frame
where the circle is moving; train on the first episodes, test on the last ones (unseen seeds).

Variants, side by side in one run (worker processes, one thread each):
  - `moss_p16`: the small preset (112 px, 16 px patches -> 7 x 7 tokens, MOSS window (5, 5, 5));
  - `moss_p8`: the same tower on 8 px patches (14 x 14 tokens; the circle moves ~1/4 token per frame);
  - `moss_p16_L7`: 7 x 7 tokens, temporal window of 7 frames;
  - `none_p16`: no temporal module (the control: the newest frame's tokens carry no motion, so this
    must stay at the majority-class rate; if it does not, the probe leaks the label);
  - `moss_p8_pool4`: `moss_p8` with the tokens average-pooled to 4 x 4 before the classifier, as the
    policy's VL backbone pools them (`backbone.pool_grid`);
  - `moss_p8_vl`: `moss_p8` read through the whole VL backbone, as the policy's label head reads it;
  - `moss_p8_vl_frame`: the same, reading only the current frame's output tokens (not the context
    token or the text).
Reported: majority-class rate of the test windows, test accuracy every `--eval-every` steps, the best
and final accuracy, seconds per step. Results: results/direction_probe.{json,png}.

``--task movesense_rot`` asks the same of MoveSense CW/CCW (labels cw / ccw; the path's centre, radius and
phase are random, so only the turn of the circle's velocity across frames tells them apart); its results
go to results/direction_probe_movesense_rot.{json,png}. ``--task pongpredict`` asks for the region of the
right wall the flying ball will hit (three labels; windows end on a frame of the ball in flight).

Run: ``.venv/bin/python benchmarks/direction_probe_bench.py [--task movesense_lr] [--steps 300] [--episodes 20] [--jobs 2]``
"""

from __future__ import annotations

import argparse
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from machine import machine_info  # benchmarks/machine.py (scripts run from this folder)

from moss_vla.paths import REPO_ROOT

RESULTS = REPO_ROOT / "benchmarks" / "results"
VARIANTS: dict[str, list[str]] = {
    "moss_p16": ["policy=moss"],
    "moss_p8": ["policy=moss", "model.vision.patch_size=8"],
    "moss_p16_L7": ["policy=moss", "model.temporal.window=[7,5,5]"],
    "none_p16": ["policy=contextvla"],
    "moss_p8_pool4": ["policy=moss", "model.vision.patch_size=8"],
    "moss_p8_vl": ["policy=moss", "model.vision.patch_size=8"],
    "moss_p8_vl_frame": ["policy=moss", "model.vision.patch_size=8"],
}
# variants whose classifier reads the tokens average-pooled to a g x g grid first, as the policy's VL
# backbone does (backbone.pool_grid = 4): does the pooling wash out the motion the tower sees?
POOL_GRID = {"moss_p8_pool4": 4}
# variants whose classifier reads the VL backbone's output (tower, pooling, ContextVLA compression,
# backbone, the instruction included): mean and max over all its tokens ("all", as the policy's
# auxiliary label head does) or over the current frame's tokens only ("frame")
THROUGH_BACKBONE = {"moss_p8_vl": "all", "moss_p8_vl_frame": "frame"}
T = 8  # frames per window, as the policies
TITLES = {"movesense_lr": "MoveSense L/R", "movesense_rot": "MoveSense CW/CCW", "pongpredict": "PongPredict"}


def collect_store(path: Path, task: str, episodes: int, seed: int) -> Path:
    """Scripted MoveSense episodes in the simulated rig (reused if the store is already there)."""
    from moss_vla.config import compose_config
    from rig.sim_cli import collect

    done = path.with_suffix(".collect.json")
    if not done.exists():
        report = collect(compose_config([f"task={task}", f"episodes={episodes}", f"out={path}",
                                         f"base_seed={seed}", "overwrite=true"], "sim"))
        done.write_text(json.dumps(report, indent=1))
    return path


def motion_windows(store_path: Path, episodes: range, min_motion_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """(N, T, 3, H, W) uint8 windows ending on a frame with the stimulus moving (MoveSense's circle
    `moving`, PongPredict's ball `flying`: phase 2 of both) for at least `min_motion_frames` frames (0:
    every window), and their labels (the store's stim_label: 0 left / cw / the first region, ..., -1 none)."""
    from moss_vla.episodes.store import EpisodeStore

    store = EpisodeStore(store_path)
    xs, ys = [], []
    for e in episodes:
        ep = store.episode(e, keys=["image", "stim_phase", "stim_label"])
        moving = np.asarray(ep["stim_phase"]) == 2
        run = np.zeros(len(moving), int)  # frames the circle has been moving, up to and including t
        for t in range(len(moving)):
            run[t] = (run[t - 1] + 1 if t else 1) if moving[t] else 0
        images = np.asarray(ep["image"])
        for t in np.nonzero(run >= min_motion_frames)[0]:
            idx = [max(0, i) for i in range(t - T + 1, t + 1)]  # the start of an episode repeats frame 0
            xs.append(images[idx])
            ys.append(int(ep["stim_label"][t]))
    return np.stack(xs).transpose(0, 1, 4, 2, 3), np.asarray(ys)


def probe(name: str, overrides: list[str], store_path: str, n_train: int, n_test: int, steps: int, batch: int,
          eval_every: int, lr: float, min_motion_frames: int, seed: int, pool_grid: int | None = None) -> dict[str, Any]:
    """Train tower + linear classifier on the direction; returns the accuracy curve. ``pool_grid``: the
    classifier reads the tokens average-pooled to that grid (as the VL backbone's embedding does)."""
    import torch
    from torch import nn

    from moss_vla.config import compose_config
    from moss_vla.episodes.store import EpisodeStore
    from moss_vla.policy import make_policy

    torch.set_num_threads(1)
    torch.manual_seed(seed)
    cfg = compose_config([f"data.paths=[{store_path}]", "model=small", *overrides], "train")
    policy = make_policy(cfg.policy, cfg.model, None)
    tower = policy.vision
    through_backbone = THROUGH_BACKBONE.get(name)
    n_frame = policy.backbone.tokens_per_frame
    meta = EpisodeStore(store_path).episode_metas[0]
    instruction = meta["instruction"]
    x_tr, y_tr = motion_windows(Path(store_path), range(n_train), min_motion_frames)
    # min_motion_frames 0: train on every window as the policy's label loss does (classes none and each
    # label), test on the windows whose stimulus has moved for 3 frames (is the label learnt?)
    with_none = min_motion_frames == 0
    n_classes = len(meta["label_names"]) + with_none
    x_te, y_te = motion_windows(Path(store_path), range(n_train, n_train + n_test), min_motion_frames or 3)
    y_tr, y_te = (y_tr + 1, y_te + 1) if with_none else (y_tr, y_te)
    width = int(cfg.model.backbone.hidden_size if through_backbone else cfg.model.vision.hidden_size)
    head = nn.Linear(2 * width, n_classes)
    trained = policy if through_backbone else tower
    opt = torch.optim.AdamW([*trained.parameters(), *head.parameters()], lr=lr)

    def logits(x: np.ndarray) -> torch.Tensor:
        if through_backbone:  # every VL token is valid here (one instruction, no padding)
            vl, _ = policy.encode(torch.from_numpy(x).float() / 255.0, instruction)  # [context, frame, text]
            if through_backbone == "frame":
                vl = vl[:, 1:1 + n_frame]
            return head(torch.cat([vl.mean(1), vl.amax(1)], -1))
        tokens = tower(torch.from_numpy(x).float() / 255.0)[:, -1]  # (B, T, hw, C) -> newest frame (B, hw, C)
        if pool_grid is not None:  # (B, hw, C) -> (B, g*g, C)
            g = tokens.transpose(1, 2).unflatten(2, (tower.grid, tower.grid))
            tokens = nn.functional.adaptive_avg_pool2d(g, pool_grid).flatten(2).transpose(1, 2)
        return head(torch.cat([tokens.mean(1), tokens.amax(1)], -1))

    def test_accuracy() -> float:
        trained.eval()
        with torch.no_grad():
            hits = sum(int((logits(x_te[i:i + 64]).argmax(-1).numpy() == y_te[i:i + 64]).sum())
                       for i in range(0, len(y_te), 64))
        trained.train()
        return hits / len(y_te)

    rng = np.random.default_rng(seed)
    curve: list[tuple[int, float, float]] = []  # (step, train loss, test accuracy)
    train_seconds = 0.0
    for step in range(1, steps + 1):
        t0 = time.perf_counter()
        pick = rng.integers(len(y_tr), size=batch)
        loss = nn.functional.cross_entropy(logits(x_tr[pick]), torch.from_numpy(y_tr[pick]))
        opt.zero_grad()
        loss.backward()
        opt.step()
        train_seconds += time.perf_counter() - t0
        if step % eval_every == 0 or step == steps:
            curve.append((step, loss.item(), test_accuracy()))
            print(f"{name}: step {step} loss {loss.item():.3f} test acc {curve[-1][2]:.3f}", flush=True)
    accs = [c[2] for c in curve]
    return {"overrides": overrides, "pool_grid": pool_grid, "through_backbone": through_backbone, "train_windows": len(y_tr), "test_windows": len(y_te),
            "majority_rate": float(np.bincount(y_te).max() / len(y_te)), "n_classes": n_classes, "curve": curve,
            "best_accuracy": max(accs), "final_accuracy": accs[-1],
            "seconds_per_step": train_seconds / steps}


def plot(results: dict[str, Any], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, r in results.items():
        steps, _, acc = zip(*r["curve"], strict=True)
        ax.plot(steps, acc, marker="o", ms=3, label=f"{name} ({r['seconds_per_step']:.2f} s/step)")
    chance = max(r["majority_rate"] for r in results.values())
    ax.axhline(chance, color="grey", ls="--", lw=1, label=f"majority class {chance:.2f}")
    ax.set(xlabel="training step (batch of 8-frame windows)", ylabel="test accuracy (unseen episodes)",
           title=f"{title}: the label from the vision tower", ylim=(0.0, 1.02))
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="movesense_lr", choices=list(TITLES))
    ap.add_argument("--episodes", type=int, default=20, help="episodes collected (3 interactions each)")
    ap.add_argument("--test-episodes", type=int, default=4, help="of those, the last ones are the test set")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--eval-every", type=int, default=25)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--min-motion-frames", type=int, default=3,
                    help="frames of motion the newest frame ends (0: train on every window, 3 classes with none)")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--jobs", type=int, default=2, help="variants trained at once (one core each)")
    ap.add_argument("--work", type=Path, default=REPO_ROOT / "runs" / "direction_probe")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out-name", help="results/<name>.{json,png} (default: direction_probe[_<task>])")
    args = ap.parse_args()
    if not 0 < args.test_episodes < args.episodes:
        raise SystemExit(f"--test-episodes must be between 1 and --episodes - 1, got {args.test_episodes}")
    args.work.mkdir(parents=True, exist_ok=True)
    store = collect_store(args.work / f"{args.task}_{args.episodes}.zarr", args.task, args.episodes, seed=500_000)
    n_train = args.episodes - args.test_episodes
    wall0 = time.perf_counter()
    info = machine_info()
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        futures = {v: pool.submit(probe, v, VARIANTS[v], str(store), n_train, args.test_episodes, args.steps,
                                  args.batch, args.eval_every, args.lr, args.min_motion_frames, args.seed,
                                  POOL_GRID.get(v))
                   for v in args.variants}
        results = {v: f.result() for v, f in futures.items()}
    out = {"machine": {**info, "load_average_1min_end": os.getloadavg()[0]},
           "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
           "wall_seconds": time.perf_counter() - wall0, "variants": results}
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = args.out_name or ("direction_probe" if args.task == "movesense_lr" else f"direction_probe_{args.task}")
    (RESULTS / f"{name}.json").write_text(json.dumps(out, indent=1))
    plot(results, RESULTS / f"{name}.png", TITLES[args.task])
    print(f"\n{'variant':<14} {'majority':>8} {'best':>6} {'final':>6} {'s/step':>7}")
    for v, r in results.items():
        print(f"{v:<14} {r['majority_rate']:8.3f} {r['best_accuracy']:6.3f} {r['final_accuracy']:6.3f} "
              f"{r['seconds_per_step']:7.2f}")
    print(f"-> {RESULTS / name}.json, {name}.png")


if __name__ == "__main__":
    main()
