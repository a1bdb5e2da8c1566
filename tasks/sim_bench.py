"""The MOSS paper's table 5 on our simulated rig (`moss-sim bench`) and the main demo (`moss-demo`).

For each task: collect scripted-operator episodes, train each policy variant on them, evaluate each in
closed loop, and write the side-by-side table. Every stage writes its output under `work_dir` and is
skipped when that output already exists, so an interrupted run (hours on CPU) continues where it
stopped. Configs: configs/bench.yaml (the full table), configs/demo.yaml (the small demo).
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from moss_vla.config import compose_config

# MOSS paper, table 5 (success %, real robot)
PAPER_TABLE5 = {
    "groot": {"movesense_lr": 60.0, "movesense_rot": 35.4, "pongpredict": 40.7},
    "contextvla": {"movesense_lr": 67.5, "movesense_rot": 42.7, "pongpredict": 51.9},
    "moss": {"movesense_lr": 95.8, "movesense_rot": 99.0, "pongpredict": 81.5},
}
TASK_TITLES = {"movesense_lr": "MoveSense L/R", "movesense_rot": "MoveSense CW/CCW", "pongpredict": "PongPredict"}


def _stage(msg: str) -> None:
    print(f"\n=== {msg}", flush=True)


def run_bench(cfg: DictConfig) -> dict[str, Any]:
    """Collect -> train -> evaluate for every (task, policy); returns {task: {policy: eval report}}."""
    from moss_vla.train import train
    from tasks.sim_cli import collect
    from tasks.sim_eval import evaluate

    work = Path(str(cfg.work_dir))
    work.mkdir(parents=True, exist_ok=True)
    table: dict[str, dict[str, Any]] = {}
    t0 = time.perf_counter()
    for task in cfg.tasks:
        store = work / f"{task}.zarr"
        if not (work / f"{task}.collect.json").exists():
            _stage(f"{task}: collecting {cfg.episodes} scripted episodes -> {store}")
            report = collect(compose_config([f"task={task}", f"episodes={cfg.episodes}", f"out={store}",
                                              f"base_seed={cfg.collect_seed}", "overwrite=true"], "sim"))
            print(f"scripted operator success {100 * report['operator_success_rate']:.1f}% "
                  f"({report['interactions']} interactions, {report['wall_seconds']:.0f} s)")
            (work / f"{task}.collect.json").write_text(json.dumps(report, indent=1))
        table[task] = {}
        for pol in cfg.policies:
            run = work / f"{task}-{pol}"
            ckpt = run / "checkpoints" / f"step_{int(cfg.steps):07d}"
            if not ckpt.exists():
                _stage(f"{task}: training policy={pol} model={cfg.model} for {cfg.steps} steps -> {run}")
                resume = run / "checkpoints" / "latest"
                overrides = [f"data.paths=[{store}]", f"policy={pol}", f"model={cfg.model}", f"steps={cfg.steps}",
                             f"batch_size={cfg.batch_size}", f"out_dir={run}", f"seed={cfg.train_seed}",
                             *cfg.train_overrides]
                if resume.exists():  # an interrupted training run continues exactly
                    overrides.append(f"resume={resume.resolve()}")
                train(compose_config(overrides, "train"))
            result = ckpt / f"eval_{task}" / "results.json"
            if not result.exists():
                trials = int(cfg.trials[task])
                _stage(f"{task}: evaluating {pol} on {trials} closed-loop trials")
                evaluate(compose_config([f"task={task}", f"checkpoint={ckpt}", f"trials={trials}",
                                               f"eval_seed={cfg.eval_seed}"], "sim_eval"))
            table[task][pol] = json.loads(result.read_text())
    return {"table": table, "wall_seconds": time.perf_counter() - t0}


def table_markdown(table: dict[str, dict[str, Any]], policies: list[str], with_paper: bool = True) -> str:
    tasks = list(table)
    head = "| policy | " + " | ".join(TASK_TITLES.get(t, t) for t in tasks) + " |"
    out = [head, "|---|" + "---:|" * len(tasks)]
    for pol in policies:
        cells = []
        for t in tasks:
            r = table[t].get(pol)
            if r is None:
                cells.append("-")
                continue
            o = r["overall"]
            cell = f"{100 * o['success_rate']:.1f} ({o['success']}/{o['trials']})"
            if with_paper and pol in PAPER_TABLE5 and t in PAPER_TABLE5[pol]:
                cell += f" [paper {PAPER_TABLE5[pol][t]:.1f}]"
            cells.append(cell)
        out.append(f"| {pol} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def write_results(cfg: DictConfig, bench: dict[str, Any]) -> Path:
    out = Path(str(cfg.results))
    out.parent.mkdir(parents=True, exist_ok=True)
    md = table_markdown(bench["table"], list(cfg.policies))
    payload = {
        "config": OmegaConf.to_container(cfg, resolve=True),
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "load_average_at_end": list(os.getloadavg()), "python": platform.python_version(),
                    "torch": torch.__version__},
        "wall_seconds": bench["wall_seconds"],
        "success_percent": {t: {p: 100 * r["overall"]["success_rate"] for p, r in ps.items()}
                            for t, ps in bench["table"].items()},
        "paper_table5": PAPER_TABLE5,
        "details": {t: {p: {k: r[k] for k in ("overall", "per_type", "trials", "eval_seeds", "checkpoint")}
                        for p, r in ps.items()} for t, ps in bench["table"].items()},
    }
    out.with_suffix(".json").write_text(json.dumps(payload, indent=1))
    out.with_suffix(".md").write_text(md)
    return out


def bench_main(overrides: list[str], config_name: str = "bench") -> int:
    cfg = compose_config(overrides, config_name)
    bench = run_bench(cfg)
    out = write_results(cfg, bench)
    _stage(f"success rate (%) over closed-loop trials in the simulated rig, {bench['wall_seconds'] / 60:.1f} min")
    print(table_markdown(bench["table"], list(cfg.policies)))
    print(f"results: {out.with_suffix('.json')}, {out.with_suffix('.md')}; per-run plots: "
          f"{cfg.work_dir}/<task>-<policy>/checkpoints/step_*/eval_<task>/results.png")
    return 0
