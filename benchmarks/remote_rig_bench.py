"""Real-time trials across processes, side by side in one run: `moss-trial camera=sim` with everything in one
process, with the policy served (`moss-serve` + `planner.remote`), with the arm served (`moss-arm-server arm=sim`
+ `arm=remote`), and with both: missed deadlines (goal 0), late plans, step latency and success, so the
latency the wire adds shows beside the same trials in one process (docs/rig.md section 4).

    python benchmarks/remote_rig_bench.py --minutes 2        # ~10 min; writes benchmarks/results/remote_rig.json

Each set-up runs the same checkpoint on the same trial seeds for `--minutes` of trials (whole episodes) on the
wall clock; servers are their own processes on loopback, one torch thread each. The step latency is a
command's time after its frame's tick (the loop's deadline accounting, robot/control_loop.py): with the arm
served it includes the state and command round trips.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from machine import machine_info  # benchmarks/machine.py (scripts run from this folder)

OUT = Path(__file__).resolve().parent / "results" / "remote_rig.json"
SETUPS = ("local", "policy_served", "arm_served", "both_served")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(cmd: list[str], port: int, log: Path, timeout: float = 120.0) -> subprocess.Popen:
    """A server process, once it listens on `port` (its output in `log`)."""
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT)
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc.poll() is not None:
            raise SystemExit(f"{cmd[0]} exited with {proc.returncode}: {log.read_text()[-2000:]}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc
        time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"{cmd[0]} did not listen on port {port} within {timeout} s: {log.read_text()[-2000:]}")


def _summary(report: dict[str, Any]) -> dict[str, Any]:
    """The timing of every episode of one set-up, pooled (p99: the worst episode's)."""
    loops = [e["loop"] for e in report["episode_log"]]
    total = sum(x["n_steps"] for x in loops)

    def over(key: str, how: Any) -> float | None:
        vals = [x[key] for x in loops if x.get(key) is not None]
        return float(how(vals)) if vals else None

    return {
        "episodes": len(loops), "trials": report["trials"], "steps": total,
        "success_percent": 100.0 * report["overall"]["success_rate"],
        "episode_ends": sorted({x["reason"] for x in loops}),
        "missed_deadlines": sum(x["missed_deadlines"] for x in loops),
        "longest_miss_streak": max((x["longest_miss_streak"] for x in loops), default=0),
        "planner_late": sum(x.get("planner_late", 0) for x in loops),
        "planner_failed": sum(x.get("planner_failed", 0) for x in loops),
        "step_ms_p50_median": over("latency_ms_p50", np.median),
        "step_ms_p99_worst": over("latency_ms_p99", max),
        "plan_ms_p50_median": over("plan_ms_p50", np.median),
        "plan_ms_p99_worst": over("plan_ms_p99", max),
        "remote_rtt_ms_p50_median": over("remote_rtt_ms_p50", np.median),
        "remote_rtt_ms_p99_worst": over("remote_rtt_ms_p99", max),
        "remote_added_ms_p99_worst": over("remote_added_ms_p99", max),  # round trip minus the server's compute
        "wall_seconds": report["wall_seconds"],
    }


def run_setup(setup: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    bin_dir = Path(sys.executable).parent
    servers: list[subprocess.Popen] = []
    extra: list[str] = []
    try:
        if setup in ("policy_served", "both_served"):
            port = _free_port()
            servers.append(_start([str(bin_dir / "moss-serve"), f"checkpoint={args.checkpoint}", f"port={port}",
                                   "threads=1", "device=cpu"], port, work / f"{setup}_serve.log"))
            extra.append(f"planner.remote=127.0.0.1:{port}")
        if setup in ("arm_served", "both_served"):
            port = _free_port()
            servers.append(_start([str(bin_dir / "moss-arm-server"), "arm=sim", f"port={port}"], port,
                                  work / f"{setup}_arm.log"))
            extra += ["arm=remote", f"arm.address=127.0.0.1:{port}", "arm.serves=sim"]
        else:
            extra.append("arm=sim")
        out = work / setup
        cmd = [str(bin_dir / "moss-trial"), f"checkpoint={args.checkpoint}", f"task={args.task}", "camera=sim",
               f"trials={args.max_trials}", f"max_minutes={args.minutes}", f"eval_seed={args.eval_seed}",
               f"eval_dir={out}", "overwrite=true", "progress=false", f"display.log_dir={work}", "threads=1",
               *extra]
        print(f"=== {setup}: {' '.join(cmd[1:])}", flush=True)
        done = subprocess.run(cmd, check=False, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if done.returncode != 0:
            raise SystemExit(f"{setup}: moss-trial exited with {done.returncode}:\n{done.stdout[-3000:]}")
        return _summary(json.loads((out / "results.json").read_text()))
    finally:
        for p in servers:
            p.terminate()
            p.wait(timeout=30)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", default="zoo:movesense_rot/moss")
    ap.add_argument("--task", default="movesense_rot")
    ap.add_argument("--minutes", type=float, default=2.0, help="trials per set-up, on the wall clock")
    ap.add_argument("--max-trials", type=int, default=96)
    ap.add_argument("--eval-seed", type=int, default=5000000)
    ap.add_argument("--setups", nargs="+", default=list(SETUPS), choices=SETUPS)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with tempfile.TemporaryDirectory() as tmp:
        results = {s: run_setup(s, args, Path(tmp)) for s in args.setups}
    for s, r in results.items():
        print(f"{s:14s} steps {r['steps']:5d}  missed {r['missed_deadlines']:3d}  late plans {r['planner_late']:3d}  "
              f"step p50 {r['step_ms_p50_median']:.1f} ms  worst p99 {r['step_ms_p99_worst']:.1f} ms  "
              f"success {r['success_percent']:.1f}% ({r['trials']} trials)")
    base = results.get("local")
    added = {s: {"step_ms_p50": r["step_ms_p50_median"] - base["step_ms_p50_median"],
                 "step_ms_p99_worst": r["step_ms_p99_worst"] - base["step_ms_p99_worst"]}
             for s, r in results.items() if base is not None and s != "local"}
    for s, a in added.items():
        print(f"{s:14s} adds {a['step_ms_p50']:+.1f} ms p50, {a['step_ms_p99_worst']:+.1f} ms worst p99 per step")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": machine_info(), "checkpoint": args.checkpoint, "task": args.task,
                                    "minutes_per_setup": args.minutes, "eval_seed": args.eval_seed,
                                    "setups": results, "added_vs_local": added}, indent=1))
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
