"""Open loop: at the moment it must decide, does a trained policy head for the target the stimulus asks for?

The table-5 bench scores closed-loop trials; this looks at the same policies on the dataset itself, at
the windows that decide a trial. A *decision window* ends on a frame where an interaction is in progress
(`stim_label` set) while the arm is still at rest (joints within `--rest-fraction` of the rest-to-target
distance from the rest pose). There the demonstration leaves for the label's target, and nothing but the
display can tell the policy which one: the state is the same for every label.

Targets come from the demonstrations (no calibration file needed): the rest pose is the median state
of frames without an interaction, and each label's target is the median state of the frames where the
label is set and the arm is farther than half the rest-to-target distance from rest. A predicted action
chunk *heads for* the target nearest to its last action, if that action is more than `--move-fraction`
of the way from rest; otherwise it stays. The ground-truth chunks are decoded the same way, which checks
the decoding: they must head for their own label's target.

Reported per checkpoint and split (the store's training / validation episodes, split as in training):
windows x noise seeds, how many chunks move, how many of those head for the correct target; and, for a
policy trained with the label loss, what its label head answers at those windows (per true label: how
often "none", each label).

Run: ``.venv/bin/python benchmarks/decision_bench.py --store S.zarr --checkpoints name=DIR ... [--out NAME]``
-> results/<NAME>.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from machine import machine_info  # benchmarks/machine.py (scripts run from this folder)
from named_checkpoints import named_checkpoints
from omegaconf import OmegaConf
from tqdm import tqdm

from moss_vla.episodes.store import EpisodeStore
from moss_vla.episodes.window_dataset import WindowDataset, split_episodes
from moss_vla.paths import CONFIG_DIR, REPO_ROOT

RESULTS = REPO_ROOT / "benchmarks" / "results"
JOINTS = slice(0, 7)  # state / action: 7 joint positions + gripper width


class Targets:
    """Rest pose and per-label target joint configurations, read off the demonstrations."""

    def __init__(self, state: np.ndarray, label: np.ndarray) -> None:
        q = state[:, JOINTS]
        self.rest = np.median(q[label < 0], axis=0)
        far = np.linalg.norm(q - self.rest, axis=1)
        reach = np.percentile(far, 95)
        self.labels = sorted(int(v) for v in np.unique(label[label >= 0]))
        self.q = np.stack([np.median(q[(label == v) & (far > 0.5 * reach)], axis=0) for v in self.labels])
        self.reach = float(np.mean(np.linalg.norm(self.q - self.rest, axis=1)))

    def distance_from_rest(self, q: np.ndarray) -> np.ndarray:
        return np.linalg.norm(q[..., JOINTS] - self.rest, axis=-1)

    def heading(self, last_action: np.ndarray, move_fraction: float) -> int | None:
        """The label whose target is nearest to a chunk's last action; None if it stays near rest."""
        if self.distance_from_rest(last_action) < move_fraction * self.reach:
            return None
        return self.labels[int(np.argmin(np.linalg.norm(self.q - last_action[JOINTS], axis=1)))]


def decision_windows(ds: WindowDataset, state: np.ndarray, label: np.ndarray, targets: Targets,
                     rest_fraction: float) -> list[int]:
    """Items of `ds` whose newest frame has an interaction in progress and the arm at rest."""
    frames = ds.frames
    at_rest = targets.distance_from_rest(state[frames]) < rest_fraction * targets.reach
    return np.nonzero((label[frames] >= 0) & at_rest)[0].tolist()


def score(policy, ds: WindowDataset, items: list[int], targets: Targets, seeds: int,
          move_fraction: float, batch: int, desc: str) -> dict[str, Any]:
    counts = {"windows": len(items), "chunks": 0, "moved": 0, "correct": 0, "truth_moved": 0, "truth_correct": 0}
    label_answers: dict[str, dict[str, int]] = {}  # true label -> label head's answer -> windows
    for b in tqdm(range(0, len(items), batch), desc=desc, unit="batch", leave=False):
        rows = [ds[k] for k in items[b:b + batch]]
        obs = {"image": torch.stack([r["image"] for r in rows]), "state": torch.stack([r["state"] for r in rows]),
               "instruction": [r["instruction"] for r in rows]}
        for r in rows:  # the demonstration's own chunk (padding repeats its last action), decoded the same way
            head = targets.heading(r["action"][-1].numpy(), move_fraction)
            counts["truth_moved"] += head is not None
            counts["truth_correct"] += head == r["stim_label"]
        with torch.no_grad():
            vl, vl_mask = policy.encode(obs["image"], obs["instruction"])  # once for every seed and the label head
            if policy.label_head is not None:  # class 0 "none", 1 + i label i
                for r, c in zip(rows, policy.label_logits(vl, vl_mask).argmax(1).tolist(), strict=True):
                    answers = label_answers.setdefault(str(int(r["stim_label"])), {})
                    answer = "none" if c == 0 else str(c - 1)
                    answers[answer] = answers.get(answer, 0) + 1
        for seed in range(seeds):
            chunks = policy.sample_from_features(vl, vl_mask, obs["state"], seed).numpy()  # (B, H, A)
            for r, chunk in zip(rows, chunks, strict=True):
                head = targets.heading(chunk[-1], move_fraction)
                counts["chunks"] += 1
                counts["moved"] += head is not None
                counts["correct"] += head == r["stim_label"]
    counts["correct_of_moved"] = counts["correct"] / max(counts["moved"], 1)
    counts["truth_correct_of_moved"] = counts["truth_correct"] / max(counts["truth_moved"], 1)
    if label_answers:
        counts["label_head_answers"] = label_answers
    return counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", type=Path, required=True, help="the episode store the checkpoints trained on")
    ap.add_argument("--checkpoints", nargs="+", required=True, metavar="NAME=DIR",
                    help="policies to score, e.g. moss=runs/bench/movesense_lr-moss/checkpoints/step_0003000")
    ap.add_argument("--seeds", type=int, default=2, help="action-head noise seeds per window")
    ap.add_argument("--rest-fraction", type=float, default=0.1, help="'at rest': within this share of the reach")
    ap.add_argument("--move-fraction", type=float, default=0.3, help="a chunk 'moves' beyond this share")
    ap.add_argument("--splits", nargs="+", default=["train", "val"], choices=["train", "val"])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="decision_windows", help="results/<out>.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    named = named_checkpoints(args.checkpoints)

    from moss_vla.policy import MossVLAPolicy

    store = EpisodeStore(args.store)
    state, label = store.read("state"), store.read("stim_label")
    if not (label >= 0).any() or not (label < 0).any():
        raise SystemExit(f"{args.store}: stim_label needs frames with and without an interaction in progress")
    targets = Targets(state, label)
    split = OmegaConf.load(CONFIG_DIR / "dataset" / "default.yaml")
    train_eps, val_eps = split_episodes(store.n_episodes, float(split.val_fraction), int(split.split_seed))
    out: dict[str, Any] = {"machine": machine_info(), "args": {k: str(v) for k, v in vars(args).items()},
                           "rest_pose": targets.rest.tolist(), "targets": dict(zip(targets.labels, targets.q.tolist())),
                           "reach_rad": targets.reach, "policies": {}}
    for name, ckpt in named.items():
        policy = MossVLAPolicy.from_pretrained(ckpt).eval()
        res = {}
        for split_name in args.splits:
            eps = train_eps if split_name == "train" else val_eps
            ds = WindowDataset(args.store, eps, policy.config.n_frames, policy.config.action_head.horizon)
            items = decision_windows(ds, state, label, targets, args.rest_fraction)
            res[split_name] = score(policy, ds, items, targets, args.seeds, args.move_fraction,
                                    args.batch, f"{name} {split_name}")
        out["policies"][name] = {"checkpoint": str(ckpt), **res}
        for split_name, r in res.items():
            print(f"{name:<12} {split_name:<5} decision windows {r['windows']:4d}  chunks moving {r['moved']:4d}/"
                  f"{r['chunks']:<4d}  correct target {r['correct']:4d}/{r['moved']:<4d} "
                  f"({100 * r['correct_of_moved']:.0f}%)  [demonstrations: {r['truth_correct']}/{r['truth_moved']}]"
                  + (f"  label head (true: answers) {r['label_head_answers']}" if "label_head_answers" in r else ""))
    path = RESULTS / f"{args.out}.json"
    path.write_text(json.dumps(out, indent=1))
    print(f"-> {path}")


if __name__ == "__main__":
    main()
