"""The MOSS paper's table 5 on our simulated rig (`moss-sim bench`) and the main demo (`moss-demo`).

For each task: collect scripted-operator episodes, train each policy variant on them (once per training
seed), evaluate each run in closed loop, and write the side-by-side table (with several seeds: their trials
pooled, each seed's rate beside them). Every stage writes its output under `work_dir` and is
skipped when that output already exists, so an interrupted run (hours on CPU) continues where it
stopped. Configs: configs/bench.yaml (the full table), configs/demo.yaml (the small demo).
"""

from __future__ import annotations

import csv
import json
import os
import platform
import re
import statistics
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from moss_vla.config import compose_config
from tasks.scoring import InteractionResult

# MOSS paper, table 5 (success %, real robot)
PAPER_TABLE5 = {
    "groot": {"movesense_lr": 60.0, "movesense_rot": 35.4, "pongpredict": 40.7},
    "contextvla": {"movesense_lr": 67.5, "movesense_rot": 42.7, "pongpredict": 51.9},
    "moss": {"movesense_lr": 95.8, "movesense_rot": 99.0, "pongpredict": 81.5},
}
# how a failed trial failed (tasks/scoring.py), in the order tables and plots list them
FAILURE_REASONS = ("no_pointing", "wrong_target", "late")
TASK_TITLES = {"movesense_lr": "MoveSense L/R", "movesense_rot": "MoveSense CW/CCW", "pongpredict": "PongPredict"}


def _stage(msg: str) -> None:
    print(f"\n=== {msg}", flush=True)


def run_bench(cfg: DictConfig) -> dict[str, Any]:
    """Collect -> train -> evaluate for every (task, policy, training seed); returns {task: {policy: eval
    report pooled over the seeds (see pool_seeds)}}."""
    from rig.sim_cli import collect

    seeds = train_seeds(cfg)
    evaluation = eval_overrides(cfg)  # checked here: a bad one is refused before any collecting or training
    collecting = [str(o) for o in cfg.get("collect_overrides") or []]  # e.g. teleop=human_like
    work = Path(str(cfg.work_dir))
    work.mkdir(parents=True, exist_ok=True)
    table: dict[str, dict[str, Any]] = {}
    collection: dict[str, dict[str, Any]] = {}
    t0 = time.perf_counter()
    for task in cfg.tasks:
        store = work / f"{task}.zarr"
        if not (work / f"{task}.collect.json").exists():
            _stage(f"{task}: collecting {cfg.episodes} scripted episodes -> {store}")
            report = collect(compose_config([f"task={task}", f"episodes={cfg.episodes}", f"out={store}",
                                              f"base_seed={cfg.collect_seed}", "overwrite=true", *collecting], "sim"))
            print(f"scripted operator success {100 * report['operator_success_rate']:.1f}% "
                  f"({report['interactions']} interactions, {report['wall_seconds']:.0f} s)")
            (work / f"{task}.collect.json").write_text(json.dumps({**report, "collect_overrides": collecting},
                                                                  indent=1))
        report = check_collection(work / f"{task}.collect.json", int(cfg.episodes), int(cfg.collect_seed),
                                  collecting)
        collection[task] = {k: report[k] for k in ("episodes", "frames", "interactions", "operator_success_rate",
                                                   "wall_seconds")}
        table[task] = {}
        jobs = [_policy_job(cfg, task, store, pol, seed, evaluation) for pol in cfg.policies for seed in seeds]
        for job in jobs:
            job.check_recipe()
            job.check_result()
        todo = [job for job in jobs if not job.done]
        if int(cfg.train_jobs) > 1 and len(todo) > 1:
            _run_parallel(todo, int(cfg.train_jobs))
        for job in jobs:  # sequential (or what the parallel workers left undone): train, then evaluate
            _run_job(job)
        for pol in cfg.policies:
            table[task][pol] = pool_seeds({job.seed: {**json.loads(job.result.read_text()),
                                                      "train_seconds": job.train_seconds()}
                                           for job in jobs if job.policy == pol})
    # wall_seconds: this invocation only (a rerun that finds everything done takes seconds); what each run
    # cost is in the table's train_seconds / wall_seconds (evaluation) per task and policy
    return {"table": table, "collection": collection, "wall_seconds": time.perf_counter() - t0}


def train_seeds(cfg: DictConfig) -> list[int]:
    """`cfg.train_seeds` as distinct ints (one training run per seed and policy)."""
    seeds = cfg.train_seeds
    if not OmegaConf.is_list(seeds) or not seeds or any(isinstance(s, bool) or not isinstance(s, int) for s in seeds):
        raise ValueError(f"train_seeds: expected a non-empty list of ints, e.g. train_seeds=[0,1,2], got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"train_seeds: {list(seeds)} repeats a seed; each seed is one training run")
    return [int(s) for s in seeds]


def pool_seeds(runs: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """One policy's evaluations, one per training seed ({seed: results.json + train_seconds}), as one
    report: every seed's trials summarised together (overall, per type, failures), the summed minutes,
    and under "seeds" each seed's own overall result and checkpoint. With one seed, that seed's report."""
    from rig.sim_eval import summarize

    first = next(iter(runs.values()))
    trials = [InteractionResult(**r) for rep in runs.values() for ep in rep["episode_log"] for r in ep["results"]]
    train = [rep["train_seconds"] for rep in runs.values()]
    return {**summarize(trials, list(first["per_type"]), near=first["overall"]["no_pointing_within_m"]),
            "trials": len(trials), "eval_seeds": first["eval_seeds"],
            "train_seconds": None if None in train else sum(train),
            "wall_seconds": sum(rep["wall_seconds"] for rep in runs.values()),
            "seeds": {seed: {"overall": rep["overall"], "checkpoint": rep["checkpoint"],
                             "train_seconds": rep["train_seconds"], "eval_seconds": rep["wall_seconds"]}
                      for seed, rep in runs.items()}}


def check_collection(report_path: Path, episodes: int, collect_seed: int,
                     overrides: Sequence[str] = ()) -> dict[str, Any]:
    """The collection report at `report_path`; refuses a store collected with other settings than this
    bench asks for (it would be reused)."""
    report = json.loads(report_path.read_text())
    found = (report["episodes"], report["seeds"][0], report.get("collect_overrides", []))
    if found != (episodes, collect_seed, list(overrides)):
        raise ValueError(f"{report_path}: the store was collected with episodes={found[0]}, collect_seed={found[1]}, "
                         f"collect_overrides={found[2]}; this bench asks for episodes={episodes}, "
                         f"collect_seed={collect_seed}, collect_overrides={list(overrides)}: give this bench "
                         f"its own work_dir, or delete {report_path} and its store")
    return report


@dataclass(frozen=True)
class PolicyJob:
    """Training and evaluating one policy on one task (plain values: it may go to a worker process)."""

    task: str
    policy: str
    seed: int  # training seed
    run: Path  # the training run directory
    steps: int
    train: tuple[str, ...]  # moss-train overrides
    trials: int
    eval_seed: int
    evaluation: tuple[str, ...] = ()  # extra moss-sim eval overrides (inference settings, e.g. n_action_steps=4)

    @property
    def name(self) -> str:
        return f"{self.task}-{self.policy}-seed{self.seed}"

    @property
    def ckpt(self) -> Path:
        return self.run / "checkpoints" / f"step_{self.steps:07d}"

    @property
    def eval_dir(self) -> Path:
        """``eval_<task>``, or with inference settings ``eval_<task>_<key>-<value>...``: one checkpoint can be
        evaluated under several settings without one evaluation being mistaken for another."""
        suffix = "".join("_" + re.sub(r"[^A-Za-z0-9_.-]+", "-", o.replace("=", "-")) for o in self.evaluation)
        return self.ckpt / f"eval_{self.task}{suffix}"

    @property
    def result(self) -> Path:
        return self.eval_dir / "results.json"

    def train_seconds(self) -> float | None:
        """Wall seconds the training took, resumed parts summed (the last ``elapsed_s`` of metrics.csv;
        None for runs logged before moss-train recorded it)."""
        path = self.run / "metrics.csv"
        rows = list(csv.DictReader(path.open())) if path.exists() else []
        return float(rows[-1]["elapsed_s"]) if rows and rows[-1].get("elapsed_s") else None

    @property
    def recipe(self) -> list[str]:
        """The training overrides that decide what the checkpoint is (not where it or its data live)."""
        return [t for t in self.train if not t.startswith(("data.paths=", "out_dir="))]

    def check_recipe(self) -> None:
        """Refuse to resume or reuse a run trained with other settings (e.g. other `train_overrides`
        in the same `work_dir`), which would silently mix recipes in one table."""
        path = self.run / "bench_recipe.json"
        if path.exists() and (old := json.loads(path.read_text())) != self.recipe:
            raise ValueError(f"{self.run} was trained with {old}, this bench asks for {self.recipe}: "
                             f"give this bench its own work_dir, or delete {self.run}")

    def check_result(self) -> None:
        """Refuse to reuse an evaluation made with other trials or evaluation seeds."""
        if not self.done:
            return
        report = json.loads(self.result.read_text())
        found = (report["trials"], report["eval_seeds"][0])
        if found != (self.trials, self.eval_seed):
            raise ValueError(f"{self.result} was evaluated with trials={found[0]}, eval_seed={found[1]}; this bench "
                             f"asks for trials={self.trials}, eval_seed={self.eval_seed}: give this bench its own "
                             f"work_dir, or delete {self.result.parent}")

    @property
    def done(self) -> bool:
        return self.result.exists()

    @property
    def evaluate(self) -> list[str]:
        """moss-sim eval overrides."""
        return [f"task={self.task}", f"checkpoint={self.ckpt}", f"trials={self.trials}", f"eval_seed={self.eval_seed}",
                f"eval_dir={self.eval_dir}", *self.evaluation]


def _policy_job(cfg: DictConfig, task: str, store: Path, pol: str, seed: int,
                evaluation: tuple[str, ...]) -> PolicyJob:
    run = Path(str(cfg.work_dir)) / f"{task}-{pol}-seed{seed}"
    train = (f"data.paths=[{store}]", f"policy={pol}", f"model={cfg.preset}", f"steps={cfg.steps}",
             f"batch_size={cfg.batch_size}", f"out_dir={run}", f"seed={seed}", *cfg.train_overrides)
    return PolicyJob(task, pol, seed, run, int(cfg.steps), train, int(cfg.trials[task]), int(cfg.eval_seed),
                     evaluation)


# what the bench decides itself for every evaluation; eval_overrides may set anything else of configs/sim_eval.yaml
BENCH_EVAL_KEYS = ("task", "checkpoint", "trials", "eval_seed", "eval_dir")


def eval_overrides(cfg: DictConfig) -> tuple[str, ...]:
    """`cfg.eval_overrides` (moss-sim eval overrides applied to every run's evaluation), checked."""
    overrides = cfg.get("eval_overrides") or []
    for o in overrides:
        key = str(o).split("=", 1)[0].lstrip("+~")
        if "=" not in str(o) or key in BENCH_EVAL_KEYS:
            raise ValueError(f"eval_overrides: {o!r} is not a moss-sim eval override the bench can pass: expected "
                             f"key=value, e.g. 'eval_overrides=[\"n_action_steps=4\"]', with a key other than "
                             f"{', '.join(BENCH_EVAL_KEYS)} (the bench sets those itself)")
    return tuple(str(o) for o in overrides)


def _run_job(job: PolicyJob) -> None:
    """Train (resuming an interrupted run exactly) and evaluate one policy, skipping what exists."""
    from moss_vla.train import train
    from rig.sim_eval import evaluate

    if not job.ckpt.exists():
        _stage(f"training {job.name} for {job.steps} steps -> {job.run}")
        job.run.mkdir(parents=True, exist_ok=True)
        (job.run / "bench_recipe.json").write_text(json.dumps(job.recipe))
        resume = job.run / "checkpoints" / "latest"
        extra = [f"resume={resume.resolve()}"] if resume.exists() else []
        train(compose_config([*job.train, *extra], "train"))
    if not job.done:
        _stage(f"evaluating {job.name} on {job.trials} closed-loop trials")
        evaluate(compose_config(job.evaluate, "sim_eval"))


def exit_with_parent(parent_pid: int, poll_s: float = 0.5) -> None:
    """End this process within `poll_s` once `parent_pid` is gone (we were re-parented). A bench killed
    with SIGTERM or SIGKILL cannot shut its pool down, and its workers would otherwise go on training
    and writing into the run directory; the run resumes from its last checkpoint. One watcher per
    process, however many jobs the pool gives it."""
    import threading

    if any(t.name == "exit-with-parent" for t in threading.enumerate()):
        return

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(poll_s)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _worker(job: PolicyJob, threads: int, parent_pid: int) -> None:
    """One policy's job in its own process: its own torch threads, its output to <run>/bench_job.log."""
    exit_with_parent(parent_pid)
    job.run.mkdir(parents=True, exist_ok=True)
    log = open(job.run / "bench_job.log", "a")  # noqa: SIM115 (kept open for the process's lifetime)
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    torch.set_num_threads(threads)
    try:
        _run_job(job)
    except BaseException:  # the parent sees the exception only when every job is done: log it now
        traceback.print_exc()
        raise


def _steps_done(job: PolicyJob) -> int:
    """Training steps a job has logged so far (the last row of its metrics.csv)."""
    if job.ckpt.exists():
        return job.steps
    try:
        last = (job.run / "metrics.csv").read_text().strip().splitlines()[-1]
        return int(last.split(",")[0])
    except (OSError, IndexError, ValueError):
        return 0


def _run_parallel(jobs: list[PolicyJob], n_jobs: int) -> None:
    """Run policy jobs in `n_jobs` processes at once (each with cpu_count // n_jobs torch threads): small
    models on a few CPU cores train faster side by side than one after the other on all cores. One
    progress bar sums their training steps; each job's own output goes to <run>/bench_job.log."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, wait

    from tqdm import tqdm

    threads = max(1, (os.cpu_count() or 1) // n_jobs)
    _stage(f"training + evaluating {', '.join(j.name for j in jobs)}: {n_jobs} at a time, {threads} "
           f"torch thread(s) each; logs in <run>/bench_job.log")
    total = sum(j.steps for j in jobs)
    with ProcessPoolExecutor(n_jobs, mp_context=mp.get_context("spawn")) as pool, \
            tqdm(total=total, desc="train (all)", unit="step", dynamic_ncols=True) as bar:
        futures = {pool.submit(_worker, job, threads, os.getpid()): job for job in jobs}
        pending = set(futures)
        try:
            while pending:
                finished, pending = wait(pending, timeout=2.0)
                for future in finished:  # say so at once; the other jobs go on
                    if future.exception() is not None:
                        job = futures[future]
                        bar.write(f"bench job {job.name} failed: {future.exception()!r} (traceback in "
                                  f"{job.run / 'bench_job.log'}); the other jobs go on")
                done = [_steps_done(j) for j in jobs]
                bar.update(sum(done) - bar.n)
                bar.set_postfix_str(" ".join(
                    f"{j.policy}/{j.seed}:{'eval' if n >= j.steps and not j.done else n}"
                    for j, n in zip(jobs, done, strict=True)))
        except KeyboardInterrupt:  # Ctrl-C / SIGTERM: the jobs stop now (each resumes from its checkpoint)
            for proc in list(getattr(pool, "_processes", {}).values()):
                proc.terminate()
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        for future, job in futures.items():
            if future.exception() is not None:
                raise RuntimeError(f"bench job {job.name} failed (its output: {job.run / 'bench_job.log'})"
                                   ) from future.exception()


def _markdown(table: dict[str, dict[str, Any]], policies: list[str], column: Callable[[str], str],
              cell: Callable[[str, str, dict[str, Any]], str]) -> str:
    """A policy x task markdown table: ``column(task)`` heads a task's column, ``cell(policy, task,
    result)`` fills it ("-" where the policy was not run on the task)."""
    tasks = list(table)
    out = ["| policy | " + " | ".join(column(t) for t in tasks) + " |", "|---|" + "---:|" * len(tasks)]
    for pol in policies:
        cells = ["-" if table[t].get(pol) is None else cell(pol, t, table[t][pol]) for t in tasks]
        out.append(f"| {pol} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def table_markdown(table: dict[str, dict[str, Any]], policies: list[str], with_paper: bool = True) -> str:
    def cell(pol: str, t: str, r: dict[str, Any]) -> str:
        o = r["overall"]
        rates = seed_rates(r)
        per_seed = ""
        if len(rates) > 1:
            lo, hi = seed_interval(rates)
            per_seed = (f"; seeds {' / '.join(f'{100 * x:.1f}' for x in rates)}, "
                        f"95% interval over seeds {100 * lo:.0f}-{100 * hi:.0f}")
        text = f"{100 * o['success_rate']:.1f} ({o['success']}/{o['trials']}{per_seed})"
        if with_paper and pol in PAPER_TABLE5 and t in PAPER_TABLE5[pol]:
            text += f" [paper {PAPER_TABLE5[pol][t]:.1f}]"
        return text

    return _markdown(table, policies, lambda t: TASK_TITLES.get(t, t), cell)


def failures_markdown(table: dict[str, dict[str, Any]], policies: list[str]) -> str:
    """How the failed trials failed, per policy and task (tasks/scoring.py: no pointing, wrong target, late)."""
    return _markdown(table, policies, lambda t: f"{TASK_TITLES.get(t, t)}: " + " / ".join(FAILURE_REASONS),
                     lambda pol, t, r: failure_counts(r["overall"]))


def failure_counts(overall: Mapping[str, Any]) -> str:
    """An evaluation's failed trials by reason, "no pointing / wrong target / late", e.g. "4 / 16 / 1"."""
    return " / ".join(str(overall["failures"].get(k, 0)) for k in FAILURE_REASONS)


def minutes_markdown(table: dict[str, dict[str, Any]], policies: list[str]) -> str:
    """Wall minutes each policy took to train and to evaluate, per task, summed over its training seeds
    ("?": trained before moss-train logged its time)."""
    def cell(pol: str, t: str, r: dict[str, Any]) -> str:
        train = "?" if r["train_seconds"] is None else f"{r['train_seconds'] / 60:.0f}"
        return f"{train} / {r['wall_seconds'] / 60:.0f}"

    return _markdown(table, policies, lambda t: f"{TASK_TITLES.get(t, t)}: train / eval min", cell)


def wilson_interval(success: int, trials: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a success rate (stays inside [0, 1] at 0 or all successes)."""
    if trials == 0:
        return 0.0, 1.0
    p = success / trials
    centre = (p + z * z / (2 * trials)) / (1 + z * z / trials)
    half = z / (1 + z * z / trials) * (p * (1 - p) / trials + z * z / (4 * trials * trials)) ** 0.5
    return max(0.0, centre - half), min(1.0, centre + half)


# Student t quantiles t(0.975, df) for df = 1..30 (beyond: the normal 1.96)
T_975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
         2.045, 2.042)


def seed_rates(result: Mapping[str, Any]) -> list[float]:
    """Each training seed's own success rate in a (pooled) policy result."""
    return [s["overall"]["success_rate"] for s in result["seeds"].values()]


def seed_interval(rates: Sequence[float]) -> tuple[float, float]:
    """95% interval of a recipe's mean success over its training seeds: Student t on the seeds' own rates
    (at least 2), clipped to [0, 1]. Every seed is evaluated on the same trial episodes, so a Wilson
    interval on the pooled trials (seeds x trials) would claim a precision the trials do not have and
    ignore the spread between training runs, which is what decides here."""
    if len(rates) < 2:
        raise ValueError(f"seed_interval: needs the rates of at least 2 training seeds, got {list(rates)}")
    mean, sd = statistics.fmean(rates), statistics.stdev(rates)
    t = T_975[len(rates) - 2] if len(rates) - 1 <= len(T_975) else 1.96
    half = t * sd / len(rates) ** 0.5
    return max(0.0, mean - half), min(1.0, mean + half)


def plot_table(path: Path, table: dict[str, dict[str, Any]], policies: list[str], title: str) -> None:
    """Success per task and policy as grouped bars with 95% intervals, the paper's table 5 as black
    diamonds: with one run of ~100 trials each, the (Wilson) intervals say which gaps the trials can
    tell. With several training seeds the bars pool their trials, open circles mark each seed's own rate
    and the interval is over the seeds (:func:`seed_interval`)."""
    import textwrap

    import matplotlib
    import numpy as np

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(table)
    width = 0.8 / len(policies)
    seed_marked = False
    fig, ax = plt.subplots(figsize=(3.6 + 2.4 * len(tasks), 4))
    for j, pol in enumerate(policies):
        xs, rates, lo, hi, counts, paper_x, paper = [], [], [], [], [], [], []
        for i, t in enumerate(tasks):
            x = i + (j - (len(policies) - 1) / 2) * width
            if t in PAPER_TABLE5.get(pol, {}):
                paper_x.append(x)
                paper.append(PAPER_TABLE5[pol][t])
            if (r := table[t].get(pol)) is None:
                continue
            o = r["overall"]
            per_seed = seed_rates(r)
            a, b = seed_interval(per_seed) if len(per_seed) > 1 else wilson_interval(o["success"], o["trials"])
            xs.append(x)
            rates.append(100 * o["success_rate"])
            lo.append(100 * max(0.0, o["success_rate"] - a))  # pooled rate vs the seeds' mean: they differ
            hi.append(100 * max(0.0, b - o["success_rate"]))  # only when seeds ran different trial counts
            counts.append(f"{o['success']}/{o['trials']}")
            if len(per_seed) > 1:
                spread = np.linspace(-0.3, 0.3, len(per_seed)) * width  # side by side: equal rates stay visible
                ax.plot(x + spread, 100 * np.asarray(per_seed), "o", mfc="none", mec="k", ms=4,
                        label="one training seed" if not seed_marked else None)
                seed_marked = True
        bars = ax.bar(xs, rates, width * 0.95, yerr=[lo, hi], capsize=3, ecolor="0.4", color=f"C{j}", label=pol)
        for bar, count in zip(bars, counts, strict=True):
            ax.text(bar.get_x() + bar.get_width() / 2, 1, count, ha="center", fontsize=7)
        ax.plot(paper_x, paper, "kD", markersize=5, label="paper (table 5)" if j == 0 else None)
    ax.set_xticks(range(len(tasks)), [TASK_TITLES.get(t, t) for t in tasks])
    ax.set_ylim(0, 105)
    ax.set_ylabel("success (%)")
    wrap = int(14 * fig.get_figwidth())  # characters per title line at fontsize 9
    ax.set_title("\n".join(textwrap.fill(line, wrap, break_long_words=False) for line in title.splitlines()),
                 fontsize=9)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def recipe_text(cfg: Mapping[str, Any]) -> str:
    """A bench's recipe in one line: preset, steps, training seeds, overrides. Takes the bench config or
    the `config` saved in its results JSON (files written before `train_seeds` existed trained seed 0)."""
    seeds = list(cfg.get("train_seeds") or [0])
    evaluation = list(cfg.get("eval_overrides") or [])
    collecting = list(cfg.get("collect_overrides") or [])
    return ", ".join([f"{cfg['preset']}", f"{cfg['steps']} steps", f"training seed{'s' * (len(seeds) > 1)} "
                      + ", ".join(map(str, seeds)), *cfg["train_overrides"]]
                     + ([f"collected with {', '.join(collecting)}"] if collecting else [])
                     + ([f"evaluated with {', '.join(evaluation)}"] if evaluation else []))


def git_commit() -> str | None:
    """The commit of the checkout this code runs from (None outside a git checkout, e.g. an installed wheel)."""
    import subprocess

    from moss_vla.paths import REPO_ROOT

    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10,
                             check=False)
    except OSError:
        return None
    return out.stdout.strip() or None


def write_results(cfg: DictConfig, bench: dict[str, Any]) -> dict[str, Path]:
    """Write `cfg.results` + .json / .md / .png (the name may hold dots: `..._dyn0.2`); returns the paths."""
    prefix = Path(str(cfg.results))
    if prefix.suffix in (".json", ".md", ".png"):  # results=x.json means x
        prefix = prefix.with_suffix("")
    prefix.parent.mkdir(parents=True, exist_ok=True)
    out = {ext: prefix.parent / f"{prefix.name}.{ext}" for ext in ("json", "md", "png")}
    policies = list(cfg.policies)
    md = "\n".join(f(bench["table"], policies) for f in (table_markdown, failures_markdown, minutes_markdown))
    payload = {
        "config": OmegaConf.to_container(cfg, resolve=True),
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "load_average_at_end": list(os.getloadavg()), "python": platform.python_version(),
                    "torch": torch.__version__, "commit": git_commit()},
        "wall_seconds": bench["wall_seconds"],
        "collection": bench["collection"],  # the scripted operator's episodes each task trained on
        "success_percent": {t: {p: 100 * r["overall"]["success_rate"] for p, r in ps.items()}
                            for t, ps in bench["table"].items()},
        "paper_table5": PAPER_TABLE5,
        "details": {t: {p: {**{k: r[k] for k in ("overall", "per_type", "trials", "eval_seeds", "seeds")},
                            "train_seconds": r["train_seconds"], "eval_seconds": r["wall_seconds"]}
                        for p, r in ps.items()} for t, ps in bench["table"].items()},
    }
    out["json"].write_text(json.dumps(payload, indent=1))
    out["md"].write_text(md)
    plot_table(out["png"], bench["table"], list(cfg.policies),
               f"closed-loop success in the simulated rig\n({recipe_text(cfg)})")
    return out


def bench_main(cfg: DictConfig) -> int:
    bench = run_bench(cfg)
    out = write_results(cfg, bench)
    _stage(f"success rate (%) over closed-loop trials in the simulated rig, {bench['wall_seconds'] / 60:.1f} min")
    print(out["md"].read_text())  # success, failures by reason, minutes per run
    print(f"results: {out['json']}, {out['md']}, {out['png']}; per-run plots: "
          f"{cfg.work_dir}/<task>-<policy>-seed<N>/checkpoints/step_*/eval_<task>*/results.png")
    return 0
