"""Closed loop: success against the execution horizon (how many actions of a chunk run before a replan).

A policy samples a 16-step action chunk and executes its first `n_action_steps` actions before it samples
the next one from the newest frames (the checkpoints here were trained with 8). That is an inference
choice, free to set per deployment (`moss-sim eval ... n_action_steps=<n>`, `moss-trial`, the bench's
`eval_overrides`): this bench evaluates each checkpoint at each n on the same closed-loop trials (same
episode seeds), side by side, and plots success and failure reasons against n.

Choose n on trials of one evaluation seed and report it on others: the table-5 bench's trials start at
eval_seed 1000000, so the selection runs here default to 2000000.

Each evaluation is `tasks.sim_eval.evaluate`, written to <work>/<name>/n<k>/results.{json,md,png}; one
that exists with the same task, trials, evaluation seed and n is reused (each takes minutes).

Run: ``.venv/bin/python benchmarks/execution_horizon_bench.py --task pongpredict --checkpoints
seed3=runs/pong/pongpredict-moss-seed3/checkpoints/step_0010000 --steps 1 2 4 6 8 --trials 240
--out execution_horizon_pongpredict`` -> results/<out>.{json,png}
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from machine import machine_info  # benchmarks/machine.py (scripts run from this folder)
from named_checkpoints import named_checkpoints

from moss_vla.paths import REPO_ROOT
from tasks.sim_bench import FAILURE_REASONS, failure_counts, wilson_interval

RESULTS = REPO_ROOT / "benchmarks" / "results"


def evaluation(task: str, ckpt: Path, n: int, trials: int, eval_seed: int, out: Path, threads: int) -> dict[str, Any]:
    """`moss-sim eval` of `ckpt` at execution horizon n, or the one already in `out` made alike."""
    from tasks.sim_cli import compose_config
    from tasks.sim_eval import evaluate

    path = out / "results.json"
    if path.exists():
        old = json.loads(path.read_text())
        made = (old["task"], old["trials"], old["eval_seeds"][0], old.get("policy_settings", {}).get("n_action_steps"))
        if made == (task, trials, eval_seed, n):
            print(f"reusing {path}")
            return old
        raise SystemExit(f"{path} holds another evaluation (task, trials, eval_seed, n_action_steps) = {made}, not "
                         f"{(task, trials, eval_seed, n)}: pass another --work or delete {out}")
    cfg = compose_config([f"task={task}", f"checkpoint={ckpt}", f"trials={trials}", f"eval_seed={eval_seed}",
                          f"n_action_steps={n}", f"eval_dir={out}", f"threads={threads}"], "sim_eval")
    return evaluate(cfg)


def plot(path: Path, runs: dict[str, dict[int, dict[str, Any]]], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4))
    for name, by_n in runs.items():
        ns = sorted(by_n)
        o = [by_n[n]["overall"] for n in ns]
        rate = [100 * r["success_rate"] for r in o]
        ci = [wilson_interval(r["success"], r["trials"]) for r in o]
        err = [[r - 100 * lo for r, (lo, _) in zip(rate, ci)], [100 * hi - r for r, (_, hi) in zip(rate, ci)]]
        line = ax.errorbar(ns, rate, yerr=err, marker="o", capsize=3, label=name)
        for reason, style in zip(FAILURE_REASONS, ("-", "--", ":")):
            bx.plot(ns, [r["failures"].get(reason, 0) for r in o], style, marker=".", color=line[0].get_color(),
                    label=f"{name}: {reason.replace('_', ' ')}")
    ax.set(xlabel="actions executed per chunk (n_action_steps)", ylabel="success % (95% Wilson interval)",
           ylim=(0, 100), title="success")
    bx.set(xlabel="actions executed per chunk (n_action_steps)", ylabel="failed trials", title="failures by reason")
    for a in (ax, bx):
        a.set_xticks(sorted({n for by_n in runs.values() for n in by_n}))
        a.grid(alpha=0.3)
        a.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", required=True, help="configs/task/<task>.yaml, e.g. pongpredict")
    ap.add_argument("--checkpoints", nargs="+", required=True, metavar="NAME=DIR",
                    help="checkpoints to evaluate, e.g. seed3=runs/pong/pongpredict-moss-seed3/checkpoints/step_0010000")
    ap.add_argument("--steps", nargs="+", type=int, default=[1, 2, 4, 6, 8], help="n_action_steps values")
    ap.add_argument("--trials", type=int, default=240)
    ap.add_argument("--eval-seed", type=int, default=2_000_000, help="first episode seed of the trials")
    ap.add_argument("--work", type=Path, default=REPO_ROOT / "runs" / "execution_horizon",
                    help="evaluations go to <work>/<task>/<name>/n<k>/")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None, help="results/<out>.{json,png} (default execution_horizon_<task>)")
    args = ap.parse_args()
    named = named_checkpoints(args.checkpoints)

    runs: dict[str, dict[int, dict[str, Any]]] = {}
    for name, ckpt in named.items():
        runs[name] = {n: evaluation(args.task, ckpt, n, args.trials, args.eval_seed,
                                    args.work / args.task / name / f"n{n}", args.threads) for n in args.steps}
    print(f"\n{args.task}, {args.trials} trials from eval seed {args.eval_seed}: success % "
          f"(no pointing / wrong target / late)")
    print("n_action_steps " + "".join(f"{n:>20d}" for n in args.steps))
    for name, by_n in runs.items():
        cells = [f"{100 * r['overall']['success_rate']:.1f} ({failure_counts(r['overall'])})"
                 for r in (by_n[n] for n in args.steps)]
        print(f"{name:<14} " + "".join(f"{c:>20}" for c in cells))
    out = RESULTS / (args.out or f"execution_horizon_{args.task}")
    payload = {"machine": machine_info(), "args": {k: str(v) for k, v in vars(args).items()},
               "checkpoints": {name: str(c) for name, c in named.items()},
               "runs": {name: {str(n): {k: r[k] for k in ("overall", "per_type", "policy_settings", "wall_seconds",
                                                          "eval_seeds", "trials")}
                               for n, r in by_n.items()} for name, by_n in runs.items()}}
    out.with_suffix(".json").write_text(json.dumps(payload, indent=1, default=float))
    plot(out.with_suffix(".png"), runs, f"{args.task}: closed-loop success against the execution horizon "
                                        f"({args.trials} trials per point, eval seeds from {args.eval_seed})")
    print(f"-> {out.with_suffix('.json')}, {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
