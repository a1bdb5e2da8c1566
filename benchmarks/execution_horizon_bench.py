"""Closed loop: success against the execution horizon (how many actions of a chunk run before a replan).

A policy samples a 16-step action chunk and executes its first `n_action_steps` actions before it samples
the next one from the newest frames (the checkpoints here were trained with 8). That is an inference
choice, free to set per deployment (`moss-sim eval ... n_action_steps=<n>`, `moss-trial`, the bench's
`eval_overrides`): this bench evaluates each checkpoint at each n on the same closed-loop trials (same
episode seeds), side by side, and plots success and failure reasons against n.

Choose n on trials of one evaluation seed and report it on others: the table-5 bench's trials start at
eval_seed 1000000, so the selection runs here default to 2000000.

With `--ensemble-coeffs`, each checkpoint also runs at n = 1 with ACT's temporal ensembling (every step's
action the weighted mean of all chunks' predictions for it; `temporal_ensemble_coeff`), which keeps
n = 1's fresh evidence while damping chunk-to-chunk changes.

Each evaluation is `rig.sim_eval.evaluate`, written to <work>/<task>/<name>/n<k>/ (n1_ensemble<coeff>/)
results.{json,md,png}; one that exists with the same task, trials, evaluation seed and settings is reused
(each takes minutes).

Run: ``.venv/bin/python benchmarks/execution_horizon_bench.py --task pongpredict --checkpoints
seed3=runs/pong/pongpredict-moss-seed3/checkpoints/step_0010000 --steps 1 2 4 6 8 --ensemble-coeffs 0.01 -0.5 --trials 240
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
from rig.sim_bench import FAILURE_REASONS, failure_counts, wilson_interval

RESULTS = REPO_ROOT / "benchmarks" / "results"


def setting(report: dict[str, Any], key: str) -> Any:
    """A setting as an evaluation ran with it: `planner.*` from its planner block, the rest from its policy
    settings (None where it has none: a sync evaluation's planner block holds only its mode)."""
    if not key.startswith("planner."):
        return report.get("policy_settings", {}).get(key)
    node: Any = report.get("planner", {})
    for part in key.split(".")[1:]:
        node = node.get(part) if isinstance(node, dict) else None
    return node


def evaluation(task: str, ckpt: Path, settings: dict[str, Any], trials: int, eval_seed: int, out: Path,
               threads: int) -> dict[str, Any]:
    """`moss-sim eval` of `ckpt` with the inference `settings` (n_action_steps, temporal_ensemble_coeff, and
    planner.* keys), or the one already in `out` made alike."""
    from moss_vla.config import compose_config
    from rig.sim_eval import evaluate

    path = out / "results.json"
    if path.exists():
        old = json.loads(path.read_text())
        made = (old["task"], old["trials"], old["eval_seeds"][0], {k: setting(old, k) for k in settings})
        if made == (task, trials, eval_seed, settings):
            print(f"reusing {path}")
            return old
        raise SystemExit(f"{path} holds another evaluation (task, trials, eval_seed, settings) = {made}, not "
                         f"{(task, trials, eval_seed, settings)}: pass another --work or delete {out}")
    cfg = compose_config([f"task={task}", f"checkpoint={ckpt}", f"trials={trials}", f"eval_seed={eval_seed}",
                          *(f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in settings.items()
                            if v is not None), f"eval_dir={out}",
                          f"threads={threads}"],
                         "sim_eval")
    return evaluate(cfg)


def plot(path: Path, runs: dict[str, dict[int, dict[str, Any]]], ensembled: dict[str, dict[float, dict[str, Any]]],
         title: str) -> None:
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
        for i, (coeff, r) in enumerate(sorted(ensembled.get(name, {}).items())):  # all at n = 1, spread apart
            o = r["overall"]
            lo, hi = wilson_interval(o["success"], o["trials"])
            rate = 100 * o["success_rate"]
            x = 1.15 + 0.15 * i
            ax.errorbar([x], [rate], yerr=[[rate - 100 * lo], [100 * hi - rate]], marker="s", capsize=3,
                        color=line[0].get_color(), alpha=0.6, ls="none",
                        label=f"{name}: n = 1, ensembled (coeff beside)" if i == 0 else None)
            ax.annotate(f"{coeff:g}", (x, rate), textcoords="offset points", xytext=(5, -3), fontsize=7)
    ax.set(xlabel="actions executed per chunk (n_action_steps)", ylabel="success % (95% Wilson interval)",
           ylim=(0, 100), title="success")
    bx.set(xlabel="actions executed per chunk (n_action_steps)", ylabel="failed trials", title="failures by reason")
    for a in (ax, bx):
        a.set_xticks(sorted({n for by_n in runs.values() for n in by_n}))
    finish_figure(fig, (ax, bx), title, path)


def finish_figure(fig: Any, axes: tuple[Any, ...], title: str, path: Path) -> None:
    """Grid and legend on each of `axes`, the title, written to `path` and closed."""
    import matplotlib.pyplot as plt

    for a in axes:
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
    ap.add_argument("--ensemble-coeffs", nargs="*", type=float, default=[],
                    help="also at n = 1 with ACT temporal ensembling (temporal_ensemble_coeff) at each of these")
    ap.add_argument("--trials", type=int, default=240)
    ap.add_argument("--eval-seed", type=int, default=2_000_000, help="first episode seed of the trials")
    ap.add_argument("--work", type=Path, default=REPO_ROOT / "runs" / "execution_horizon",
                    help="evaluations go to <work>/<task>/<name>/n<k>/")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None, help="results/<out>.{json,png} (default execution_horizon_<task>)")
    args = ap.parse_args()
    named = named_checkpoints(args.checkpoints)

    runs: dict[str, dict[int, dict[str, Any]]] = {}
    ensembled: dict[str, dict[float, dict[str, Any]]] = {}
    for name, ckpt in named.items():
        work = args.work / args.task / name
        # an ensembled evaluation is never reused as a plain one: the coefficient is part of what must match
        runs[name] = {n: evaluation(args.task, ckpt, {"n_action_steps": n, "temporal_ensemble_coeff": None},
                                    args.trials, args.eval_seed, work / f"n{n}", args.threads) for n in args.steps}
        ensembled[name] = {c: evaluation(args.task, ckpt, {"n_action_steps": 1, "temporal_ensemble_coeff": c},
                                         args.trials, args.eval_seed, work / f"n1_ensemble{c:g}", args.threads)
                           for c in args.ensemble_coeffs}
    print(f"\n{args.task}, {args.trials} trials from eval seed {args.eval_seed}: success % "
          f"(no pointing / wrong target / late)")
    print("n_action_steps " + "".join(f"{n:>20d}" for n in args.steps))
    for name, by_n in runs.items():
        cells = [f"{100 * r['overall']['success_rate']:.1f} ({failure_counts(r['overall'])})"
                 for r in (by_n[n] for n in args.steps)]
        print(f"{name:<14} " + "".join(f"{c:>20}" for c in cells))
        for coeff, r in ensembled[name].items():
            print(f"{name:<14} n = 1, ensembled (coeff {coeff:g}): {100 * r['overall']['success_rate']:.1f} "
                  f"({failure_counts(r['overall'])})")
    out = RESULTS / (args.out or f"execution_horizon_{args.task}")
    keep = ("overall", "per_type", "policy_settings", "wall_seconds", "eval_seeds", "trials")
    payload = {"machine": machine_info(), "args": {k: str(v) for k, v in vars(args).items()},
               "checkpoints": {name: str(c) for name, c in named.items()},
               "runs": {name: {str(n): {k: r[k] for k in keep} for n, r in by_n.items()} for name, by_n in runs.items()},
               "ensembled_n1": {name: {f"{c:g}": {k: r[k] for k in keep} for c, r in by_c.items()}
                                for name, by_c in ensembled.items() if by_c}}
    out.with_suffix(".json").write_text(json.dumps(payload, indent=1, default=float))
    plot(out.with_suffix(".png"), runs, ensembled, f"{args.task}: closed-loop success against the execution horizon "
                                        f"({args.trials} trials per point, eval seeds from {args.eval_seed})")
    print(f"-> {out.with_suffix('.json')}, {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
