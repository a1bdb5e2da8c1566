"""Real-time control loop on the simulated rig: a recording session and a trial session, side by side.

Both run in REAL time (RealClock) exactly like `moss-record` / `moss-trial` with camera=sim arm=sim: the
display driver is its own (headless) process, the virtual ZED films what it shows, the scripted operator
(recording) or the policy (trials) drives the simulated FR3 at 10 Hz, the episode writer records.
1. recording: `--minutes` of scripted-operator episodes into a fresh store;
2. trials: `--trial-minutes` of trials with a small-preset policy checkpoint made here by `make_policy`
   (untrained: its action range is a 1 cm box around the home pose, so its targets are safe; only the
   timing matters), once with the background chunk planner (`planner.mode=async`, what moss-trial uses,
   robot/chunk_planner.py) and once with the chunk planned inside the step (`planner.mode=sync`), same
   duration, one after the other; `async_vs_sync` compares them.
The loop is locked to the camera (`rig.loop_sync=frame`): a step's tick is its frame's arrival.
Reported per session: step latency (tick -> command sent) p50/p99/max, step compute (frame in hand ->
command sent) p50/p99, missed deadlines (goal: none at 10 Hz with the small preset on 2 CPU cores),
longest streak, skipped ticks, frames captured by the camera vs frames used/recorded (goal: equal) and,
for the recording, frames committed to the store; for the async trials also the planner's numbers
(steps that held the last action because the next chunk was late, plan time, steps from a plan's
observation to its chunk's first use). Timing depends
on what else runs on the machine: the load average is saved with the numbers, per session.

Run: ``.venv/bin/python benchmarks/loop_bench.py [--minutes 10] [--trial-minutes 10] [--lead 2]``
(a short check: ``--minutes 1``; fractions work too).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from machine import machine_info  # benchmarks/machine.py (scripts run from this folder)

from moss_vla.paths import REPO_ROOT

RESULTS = REPO_ROOT / "benchmarks" / "results" / "loop.json"


class Collector:
    """Gathers every step's timing and the frame counts of the episodes of a session."""

    def __init__(self) -> None:
        self.latency: list[float] = []
        self.compute: list[float] = []
        self.missed = self.skipped = self.longest = self.captured = self.used = self.episodes = 0
        self.reasons: dict[str, int] = {}
        self.planner: list[dict[str, Any]] = []  # per episode, the background planner's loop_stats

    def __call__(self, ep: Any) -> None:
        r = ep.loop
        self.latency += r.latencies
        self.compute += r.compute_times
        self.missed += r.missed_deadlines
        self.skipped += r.skipped_ticks
        self.longest = max(self.longest, r.longest_miss_streak)
        self.captured += r.frames_captured
        self.used += r.n_steps
        self.episodes += 1
        self.reasons[r.reason] = self.reasons.get(r.reason, 0) + 1
        if r.controller_stats.get("planner") == "async":
            self.planner.append(r.controller_stats)

    def planner_summary(self) -> dict[str, Any]:
        """The async planner's numbers over the session (plan-time percentiles are per episode)."""
        if not self.planner:
            return {}
        delays: dict[str, int] = {}
        for st in self.planner:
            for d, n in st["plan_delay_steps"].items():
                delays[d] = delays.get(d, 0) + n
        return {"planner_lead": self.planner[0]["planner_lead"], "plans": sum(st["plans"] for st in self.planner),
                "planner_late": sum(st["planner_late"] for st in self.planner),
                "planner_start_holds": sum(st["planner_start_holds"] for st in self.planner),
                "planner_longest_hold_streak": max(st["planner_longest_hold_streak"] for st in self.planner),
                "plan_ms_p50_median_of_episodes": float(np.nanmedian([st["plan_ms_p50"] for st in self.planner])),
                "plan_ms_p99_max_of_episodes": float(np.nanmax([st["plan_ms_p99"] for st in self.planner])),
                "plan_delay_steps": dict(sorted(delays.items(), key=lambda kv: int(kv[0])))}

    def summary(self, wall: float) -> dict[str, Any]:
        lat, comp = 1e3 * np.asarray(self.latency), 1e3 * np.asarray(self.compute)
        return {"episodes": self.episodes, "end_reasons": self.reasons, "steps": len(lat), "wall_seconds": round(wall, 1),
                "latency_ms_p50": float(np.percentile(lat, 50)), "latency_ms_p99": float(np.percentile(lat, 99)),
                "latency_ms_max": float(lat.max()), "compute_ms_p50": float(np.percentile(comp, 50)),
                "compute_ms_p99": float(np.percentile(comp, 99)), "missed_deadlines": self.missed,
                "missed_fraction": self.missed / max(len(lat), 1), "longest_miss_streak": self.longest,
                "skipped_ticks": self.skipped, "frames_captured": self.captured, "frames_used": self.used,
                **self.planner_summary()}


def ratio(a: float, b: float) -> float:
    return a / b if b else (float("nan") if a == 0 else float("inf"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="recording session length (default 10)")
    parser.add_argument("--trial-minutes", type=float, default=None, help="trial session length (default: --minutes)")
    parser.add_argument("--task", default="movesense_lr")
    parser.add_argument("--model", default="small", help="policy preset for the trials (configs/model)")
    parser.add_argument("--lead", type=int, default=None,
                        help="planner.lead of the async trials (default: configs/trial.yaml)")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    trial_minutes = args.minutes if args.trial_minutes is None else args.trial_minutes

    from moss_vla.config import compose_config
    from moss_vla.episodes import EpisodeStore
    from rig.record_cli import record
    from rig.sim_eval import untrained_checkpoint
    from rig.trial_cli import run_trials

    info = machine_info()
    results: dict[str, Any] = {"machine": info, "minutes": args.minutes, "trial_minutes": trial_minutes,
                               "task": args.task, "model": args.model, "note": (
                                   "real time on a 2-core machine shared with other work: timing is noisy; "
                                   "see load_average_1min at start and end")}
    with tempfile.TemporaryDirectory(prefix="loop_bench_") as tmp:
        tmp = Path(tmp)
        common = ["camera=sim", "arm=sim", f"task={args.task}", "progress=false", f"log_dir={tmp}",
                  f"display.log_dir={tmp}"]
        # 1. recording
        col = Collector()
        cfg = compose_config([*common, "teleop=scripted", f"out={tmp / 'rec.zarr'}", "episodes=100000",
                              f"max_minutes={args.minutes}"], "record")
        print(f"recording {args.minutes} min of {args.task} in real time ...", flush=True)
        t0 = time.perf_counter()
        report = record(cfg, on_episode=col)
        rec = col.summary(time.perf_counter() - t0)
        store = EpisodeStore(tmp / "rec.zarr")
        rec.update(frames_committed=int(store.episode_lengths.sum()), episodes_committed=store.n_episodes,
                   store_check=report["store_check"],
                   operator_success=sum(e["score"]["n_success"] for e in report["episodes"]),
                   operator_interactions=sum(e["score"]["n_interactions"] for e in report["episodes"]))
        results["recording"] = rec
        print(json.dumps(rec, indent=1), flush=True)
        # 2. trials with a small-preset checkpoint: background planner, then the chunk planned inside the step
        ckpt = untrained_checkpoint(tmp / "ckpt", str(cfg.task.targets.calibration), args.model)
        lead = [] if args.lead is None else [f"planner.lead={args.lead}"]
        for name, mode in (("trials", "async"), ("trials_sync", "sync")):
            col = Collector()
            tcfg = compose_config([*common, f"checkpoint={ckpt}", "trials=100000", f"max_minutes={trial_minutes}",
                                   f"eval_dir={tmp / name}", f"planner.mode={mode}", *lead], "trial")
            print(f"trials: {trial_minutes} min with the {args.model} preset, {mode} planner ...", flush=True)
            load0 = os.getloadavg()[0]
            t0 = time.perf_counter()
            treport = run_trials(tcfg, on_episode=col)
            tr = col.summary(time.perf_counter() - t0)
            tr.update(trials=treport["trials"], torch_threads=int(tcfg.threads), planner_mode=mode,
                      load_average_1min_start=load0, load_average_1min_end=os.getloadavg()[0])
            results[name] = tr
            print(json.dumps(tr, indent=1), flush=True)
    a, s = results["trials"], results["trials_sync"]
    results["async_vs_sync"] = {  # < 1: the background planner is better; per step, the sessions' lengths differ
        "missed_fraction_ratio": ratio(a["missed_fraction"], s["missed_fraction"]),
        "latency_p50_ratio": ratio(a["latency_ms_p50"], s["latency_ms_p50"]),
        "latency_p99_ratio": ratio(a["latency_ms_p99"], s["latency_ms_p99"]),
        "compute_p99_ratio": ratio(a["compute_ms_p99"], s["compute_ms_p99"]),
        "skipped_ticks_per_step_ratio": ratio(a["skipped_ticks"] / max(a["steps"], 1),
                                              s["skipped_ticks"] / max(s["steps"], 1))}
    info["load_average_1min_end"] = os.getloadavg()[0]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1, default=float))
    print(f"\n{'session':12s} {'steps':>6s} {'p50 ms':>7s} {'p99 ms':>7s} {'missed':>6s} {'captured':>8s} "
          f"{'used':>6s} {'late':>5s}")
    for name in ("recording", "trials", "trials_sync"):
        r = results[name]
        print(f"{name:12s} {r['steps']:6d} {r['latency_ms_p50']:7.1f} {r['latency_ms_p99']:7.1f} "
              f"{r['missed_deadlines']:6d} {r['frames_captured']:8d} {r['frames_used']:6d} "
              f"{r.get('planner_late', '-'):>5}")
    print("async / sync: " + ", ".join(f"{k} {v:.2f}" for k, v in results["async_vs_sync"].items()))
    print(f"results: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
