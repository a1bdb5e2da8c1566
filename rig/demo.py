"""moss-demo (`make demo`, settings in configs/demo.yaml): what MOSS does, on a fresh machine.

(a) Every checkpoint of the model zoo (moss_vla/zoo/, trained by our bench) is scored on fresh closed-loop
    trials of the simulated rig, beside the MOSS paper's table 5: success with 95% intervals, a plot.
(b) The pipeline live: the scripted operator collects demonstrations of a task, a zoo checkpoint is
    fine-tuned on them, and it is scored on that task before and after the fine-tune.
Everything lands in runs/demo/ (table.md, table.json, table.png, the runs and their evaluations).
Any override of configs/demo.yaml can be passed: `moss-demo zoo.trials=96 pipeline.steps=600`.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from moss_vla.command import command
from moss_vla.config import cli_config, compose_config, plain

POLICY_ORDER = ["groot", "contextvla", "moss"]  # table 5's rows
TASK_ORDER = ["movesense_lr", "movesense_rot", "pongpredict"]


def _stage(msg: str) -> None:
    print(f"\n=== {msg}", flush=True)


def _scored(report: dict[str, Any], label: str) -> dict[str, Any]:
    """An evaluation report in the shape of the bench's table cells (rig/sim_bench.py)."""
    return {**report, "seeds": {label: {"overall": report["overall"]}}, "train_seconds": None}


def _evaluate(cfg: DictConfig, checkpoint: str, task: str, trials: int, eval_seed: int, out: Path) -> dict[str, Any]:
    from rig.sim_eval import evaluate

    return evaluate(compose_config([f"checkpoint={checkpoint}", f"task={task}", f"trials={trials}",
                                    f"eval_seed={eval_seed}", f"eval_dir={out}", f"progress={cfg.progress}",
                                    f"threads={cfg.threads}"], "sim_eval"))


def zoo_table(cfg: DictConfig, work: Path) -> dict[str, dict[str, Any]]:
    """(a): {task: {policy: report}} of every zoo entry on `cfg.zoo.trials` fresh trials."""
    from moss_vla import zoo

    entries = sorted(zoo.entries(), key=lambda e: (TASK_ORDER.index(e.split("/")[0]) if e.split("/")[0] in
                                                    TASK_ORDER else 9, e))
    table: dict[str, dict[str, Any]] = {}
    for entry in entries:
        task, policy = entry.split("/")
        _stage(f"zoo:{entry} on {cfg.zoo.trials} fresh {task} trials")
        report = _evaluate(cfg, f"zoo:{entry}", task, int(cfg.zoo.trials), int(cfg.zoo.eval_seed),
                           work / "zoo" / entry)
        table.setdefault(task, {})[policy] = _scored(report, "zoo")
    return table


def pipeline(cfg: DictConfig, work: Path) -> dict[str, Any]:
    """(b): collect -> score the start checkpoint -> fine-tune it -> score it again, on `cfg.pipeline.task`."""
    from moss_vla.train import train
    from moss_vla.zoo import resolve_checkpoint
    from rig.sim_cli import collect

    p = cfg.pipeline
    start = resolve_checkpoint(p.start_from)
    store = work / f"{p.task}.zarr"
    _stage(f"collecting {p.episodes} {p.task} episodes with the scripted operator -> {store}")
    collected = collect(compose_config([f"task={p.task}", f"episodes={p.episodes}", f"out={store}",
                                        f"base_seed={p.collect_seed}", "overwrite=true",
                                        f"progress={cfg.progress}"], "sim"))
    _stage(f"{p.start_from} on {p.trials} {p.task} trials before fine-tuning")
    before = _evaluate(cfg, str(p.start_from), p.task, int(p.trials), int(p.eval_seed), work / "before")
    recipe = json.loads((start / "recipe.json").read_text())  # the overrides it was trained with
    keep = [o for o in recipe if not o.startswith(("steps=", "batch_size=", "seed="))]
    run = work / f"finetune-{p.task}"
    _stage(f"fine-tuning {p.start_from} on them for {p.steps} steps -> {run}")
    t0 = time.perf_counter()
    tuned = train(compose_config([f"data.paths=[{store}]", *keep, f"init_from={p.start_from}", f"steps={p.steps}",
                                  f"batch_size={p.batch_size}", f"out_dir={run}", f"ckpt_every={p.steps}"],
                                 "train")).checkpoint
    train_seconds = time.perf_counter() - t0
    _stage(f"the fine-tuned checkpoint on the same {p.trials} trials")
    after = _evaluate(cfg, str(tuned), p.task, int(p.trials), int(p.eval_seed), work / "after")
    return {"start_from": str(p.start_from), "task": str(p.task), "episodes": int(p.episodes),
            "operator_success_rate": collected["operator_success_rate"], "steps": int(p.steps),
            "train_seconds": train_seconds, "before": before["overall"], "after": after["overall"],
            "checkpoint": str(tuned)}


def pipeline_markdown(r: dict[str, Any]) -> str:
    def cell(o: dict[str, Any]) -> str:
        return f"{100 * o['success_rate']:.1f} ({o['success']}/{o['trials']})"

    from rig.sim_bench import TASK_TITLES, failure_counts

    return (f"| {r['start_from']} on {TASK_TITLES.get(r['task'], r['task'])} | success | no pointing / wrong "
            f"target / late |\n|---|---:|---:|\n"
            f"| before fine-tuning | {cell(r['before'])} | {failure_counts(r['before'])} |\n"
            f"| after {r['steps']} steps on {r['episodes']} demonstrations ({r['train_seconds'] / 60:.1f} min) | "
            f"{cell(r['after'])} | {failure_counts(r['after'])} |\n")


def run_demo(cfg: DictConfig) -> dict[str, Path]:
    import torch

    from rig.sim_bench import PAPER_TABLE5, failures_markdown, plot_table, table_markdown

    if int(cfg.threads) > 0:  # else torch's default: every core
        torch.set_num_threads(int(cfg.threads))
    work = Path(str(cfg.work_dir))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    table = zoo_table(cfg, work)
    policies = [p for p in POLICY_ORDER if any(p in row for row in table.values())]
    finetune = pipeline(cfg, work)
    md = ("## (a) The model zoo on fresh trials (success %, [the paper's table 5])\n\n"
          + (table_markdown(table, policies) + "\nfailed trials by reason (no pointing / wrong target / late):\n\n"
             + failures_markdown(table, policies) if table else "the zoo is empty (moss_vla/zoo/)\n")
          + f"\n## (b) The pipeline live: fine-tuning a zoo checkpoint (success %)\n\n{pipeline_markdown(finetune)}"
          + f"\n{(time.perf_counter() - t0) / 60:.1f} min; closed-loop trials in the simulated rig\n")
    out = {"md": work / "table.md", "json": work / "table.json", "png": work / "table.png"}
    out["md"].write_text(md)
    out["json"].write_text(json.dumps({"config": plain(cfg), "zoo": table, "pipeline": finetune,
                                       "paper_table5": PAPER_TABLE5, "wall_seconds": time.perf_counter() - t0},
                                      indent=1, default=float))
    if table:
        plot_table(out["png"], table, policies, f"the model zoo on {cfg.zoo.trials} fresh closed-loop trials each "
                                                f"(seeds from {cfg.zoo.eval_seed})")
    _stage("results")
    print(md)
    print(f"written: {', '.join(str(p) for p in out.values() if p.exists())}")
    return out


@command("moss-demo")
def main(argv: list[str] | None = None) -> int:
    cfg = cli_config(sys.argv[1:] if argv is None else list(argv), "demo", __doc__)
    if cfg is not None:
        run_demo(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
