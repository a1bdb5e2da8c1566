"""Closed loop: real-time chunking (`planner.rtc`) against today's schedule and ACT's temporal ensembling, at
planner delays of 1, 2, 3 steps.

For each checkpoint and each delay d: `moss-sim eval planner.mode=delayed planner.delay=d` (the rig's async
schedule in simulated time: each chunk arrives d steps after its observation, its first d actions elapsed;
lead = max(configs' planner.lead, d), so the chunk in use lasts until the next one arrives), once as today
and once with `planner.rtc.enabled=true` (configs/sim_eval.yaml's RTC settings; `--rtc-schedules ZEROS` adds
rows with another prefix schedule, ZEROS: only the d actions that run before the chunk arrives guide it). Once
per checkpoint, the references without delay: the synchronous schedule and ACT's temporal ensembling
(n_action_steps 1, `--ensemble-coeff`). Ensembling runs only synchronously: it plans a chunk every step inside select_action
and averages them, while the delayed planner executes chunks as planned (make_controller refuses
temporal_ensemble_coeff with planner.mode=delayed); it has no chunk switches, so no boundary jump either.

Reported per setting, on the same trials (episode seeds): success (95% Wilson interval), failures by reason,
the jump in target where a new chunk takes over (|first action used from it - last action executed|, L2
over the action vector: joints in rad, gripper in m; mean and p95 over all switches) and, for scale, the
step between two actions of one chunk (robot/chunk_planner.py, pooled by moss-sim eval's report).

Each evaluation is `rig.sim_eval.evaluate`, written to <work>/<task>/<name>/<setting>/results.{json,md,png}
and reused when it exists with the same task, trials, seed and settings (execution_horizon_bench.evaluation).

Run: ``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/rtc_bench.py --task movesense_rot --checkpoints
zoo:movesense_rot/moss zoo:movesense_rot/contextvla --trials 96 --rtc-schedules ZEROS`` -> results/rtc_<task>.{json,png}
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from execution_horizon_bench import evaluation, finish_figure  # benchmarks/ (scripts run from this folder)
from machine import machine_info
from named_checkpoints import named_checkpoints
from omegaconf import OmegaConf

from moss_vla.config import compose_config
from moss_vla.paths import REPO_ROOT
from rig.sim_bench import FAILURE_REASONS, failure_counts, wilson_interval

RESULTS = REPO_ROOT / "benchmarks" / "results"
ENSEMBLING_NOTE = ("ACT temporal ensembling runs with planner.mode=sync only (a chunk planned and averaged every "
                   "step inside select_action; the delayed planner executes chunks as planned and make_controller "
                   "refuses temporal_ensemble_coeff with it): a no-delay reference without chunk switches")


def kinds_of(schedules: list[str]) -> dict[str, dict[str, Any]]:
    """{row kind: its planner.rtc overrides}: today's schedule, RTC as configured, RTC with other schedules."""
    return {"today": {"planner.rtc.enabled": False}, "rtc": {"planner.rtc.enabled": True},
            **{f"rtc-{s.lower()}": {"planner.rtc.enabled": True, "planner.rtc.prefix_attention_schedule": s}
               for s in schedules}}


def settings_of(ckpt: Path, default_lead: int, ensemble_coeff: float, delays: list[int],
                schedules: list[str]) -> dict[str, dict[str, Any]]:
    """{setting name: moss-sim eval overrides}: the no-delay references, then each kind of row per delay."""
    n = int(json.loads((ckpt / "config.json").read_text())["n_action_steps"])  # the checkpoint's, as trained
    out = {"sync": {"planner.mode": "sync", "n_action_steps": n, "temporal_ensemble_coeff": None},
           "ensemble": {"planner.mode": "sync", "n_action_steps": 1, "temporal_ensemble_coeff": ensemble_coeff}}
    for d in delays:
        for kind, rtc in kinds_of(schedules).items():
            out[f"{kind}_d{d}"] = {"planner.mode": "delayed", "planner.delay": d, "planner.lead": max(default_lead, d),
                                   **rtc, "n_action_steps": n, "temporal_ensemble_coeff": None}
    return out


def row(report: dict[str, Any]) -> dict[str, Any]:
    """What the results keep of one evaluation."""
    o = report["overall"]
    lo, hi = wilson_interval(o["success"], o["trials"])
    return {"success": o["success"], "trials": o["trials"], "success_rate": o["success_rate"], "ci95": [lo, hi],
            "failures": {k: o["failures"].get(k, 0) for k in FAILURE_REASONS}, "planner": report["planner"],
            "policy_settings": report["policy_settings"], "boundary_jump": report.get("boundary_jump"),
            "planner_late_steps": report.get("planner_late_steps"), "faults": report.get("faults"),
            "wall_seconds": report["wall_seconds"], "eval_seeds": report["eval_seeds"]}


def label(name: str) -> str:
    if name == "sync":
        return "sync, no delay"
    if name == "ensemble":
        return "ACT ensembling, sync"
    kind, d = name.split("_d")
    return f"delay {d}: {kind_label(kind)}"


def kind_label(kind: str) -> str:
    return {"today": "today", "rtc": "RTC"}.get(kind, f"RTC, {kind.split('-')[-1].upper()}")


def plot(path: Path, runs: dict[str, dict[str, dict[str, Any]]], delays: list[int], kinds: list[str],
         title: str) -> None:
    """One row per checkpoint: success against the delay (the no-delay references at 0), and the boundary jump
    (mean solid, p95 dashed) against the step within a chunk (grey, today's schedule)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(runs), 2, figsize=(11, 3.6 * len(runs)), squeeze=False)
    for (ax, bx), (name, rows) in zip(axes, runs.items()):
        for kind, marker in zip(kinds, "osv^<>"):
            rs = [rows[f"{kind}_d{d}"] for d in delays]
            rate = [100 * r["success_rate"] for r in rs]
            err = [[v - 100 * r["ci95"][0] for v, r in zip(rate, rs)], [100 * r["ci95"][1] - v for v, r in zip(rate, rs)]]
            line = ax.errorbar(delays, rate, yerr=err, marker=marker, capsize=3, label=kind_label(kind))
            jumps = [r["boundary_jump"] for r in rs]
            bx.plot(delays, [j["boundary_mean"] for j in jumps], marker=marker, color=line[0].get_color(),
                    label=kind_label(kind))
            bx.plot(delays, [j["boundary_p95"] for j in jumps], "--", marker=marker, color=line[0].get_color())
        within = [rows[f"today_d{d}"]["boundary_jump"] for d in delays]
        bx.plot(delays, [j["within_mean"] for j in within], color="grey", marker=".", label="within a chunk (today)")
        bx.plot(delays, [j["within_p95"] for j in within], "--", color="grey", marker=".")
        for x, ref, marker in ((-0.1, "sync", "D"), (0.1, "ensemble", "^")):
            r = rows[ref]
            v = 100 * r["success_rate"]
            ax.errorbar([x], [v], yerr=[[v - 100 * r["ci95"][0]], [100 * r["ci95"][1] - v]], marker=marker, capsize=3,
                        ls="none", label=label(ref))
        ax.set(xlabel="planner delay (steps)", ylabel="success % (95% Wilson)", ylim=(0, 100), title=f"{name}: success")
        bx.set(xlabel="planner delay (steps)", ylabel="L2 jump in target (rad)",
               title=f"{name}: jump at a chunk switch (solid mean, dashed p95)")
        ax.set_xticks([0, *delays])
        bx.set_xticks(delays)
    finish_figure(fig, tuple(axes.flat), title, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", required=True, help="configs/task/<task>.yaml, e.g. movesense_rot")
    ap.add_argument("--checkpoints", nargs="+", required=True, metavar="NAME=DIR",
                    help="checkpoints to evaluate: NAME=DIR, a DIR or a zoo entry (zoo:movesense_rot/moss)")
    ap.add_argument("--delays", nargs="+", type=int, default=[1, 2, 3], help="planner.delay values")
    ap.add_argument("--trials", type=int, default=96)
    ap.add_argument("--eval-seed", type=int, default=1_000_000, help="first episode seed of the trials")
    ap.add_argument("--ensemble-coeff", type=float, default=-0.5,
                    help="temporal_ensemble_coeff of the ensembling reference (negative: weighted to the newest "
                         "chunk, the better of the two on PongPredict, docs/results.md section 7; ACT's own: 0.01)")
    ap.add_argument("--rtc-schedules", nargs="*", default=[], choices=["ZEROS", "ONES", "LINEAR", "EXP"],
                    help="more RTC rows with these prefix_attention_schedule (ZEROS: only the delay's actions guided)")
    ap.add_argument("--work", type=Path, default=REPO_ROOT / "runs" / "rtc", help="evaluations go to <work>/<task>/<name>/")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None, help="results/<out>.{json,png} (default rtc_<task>)")
    args = ap.parse_args()
    named = named_checkpoints(args.checkpoints)
    # configs' defaults (lead, rtc.*)
    planner = OmegaConf.to_container(compose_config(["checkpoint=x"], "sim_eval").planner, resolve=True)

    runs: dict[str, dict[str, dict[str, Any]]] = {}
    for name, ckpt in named.items():
        settings = settings_of(ckpt, int(planner["lead"]), args.ensemble_coeff, args.delays, args.rtc_schedules)
        runs[name] = {s: row(evaluation(args.task, ckpt, overrides, args.trials, args.eval_seed,
                                        args.work / args.task / name / s, args.threads))
                      for s, overrides in settings.items()}
    print(f"\n{args.task}, {args.trials} trials from eval seed {args.eval_seed}; jumps: L2 over the action vector "
          f"(rad), mean / p95")
    print(f"{'checkpoint':<12} {'setting':<22} {'success':>16} {'fail (np/wt/late)':>18} {'boundary jump':>16} "
          f"{'within chunk':>16}")
    for name, rows in runs.items():
        for s, r in rows.items():
            j = r["boundary_jump"]
            jump = f"{j['boundary_mean']:.3f} / {j['boundary_p95']:.3f}" if j and j["boundary_n"] else "n/a"
            within = f"{j['within_mean']:.3f} / {j['within_p95']:.3f}" if j and j["within_n"] else "n/a"
            print(f"{name:<12} {label(s):<22} {100 * r['success_rate']:>6.1f}% ({r['success']:>3}/{r['trials']}) "
                  f"{failure_counts(r):>18} {jump:>16} {within:>16}")
    print(ENSEMBLING_NOTE)
    out = RESULTS / (args.out or f"rtc_{args.task}")
    payload = {"machine": machine_info(), "args": {k: str(v) for k, v in vars(args).items()},
               "checkpoints": {name: str(c) for name, c in named.items()}, "rtc_settings": planner["rtc"],
               "ensembling_note": ENSEMBLING_NOTE, "runs": runs}
    out.with_suffix(".json").write_text(json.dumps(payload, indent=1, default=float))
    plot(out.with_suffix(".png"), runs, args.delays, list(kinds_of(args.rtc_schedules)), f"{args.task}: real-time chunking at planner delays "
         f"({args.trials} trials per point, eval seeds from {args.eval_seed})")
    print(f"-> {out.with_suffix('.json')}, {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
