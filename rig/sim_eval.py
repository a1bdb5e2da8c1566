"""Closed-loop evaluation of a policy in the simulated rig (`moss-sim eval`).

The policy drives the simulated arm at 10 Hz from virtual-camera frames while the task plays; every
interaction is one trial, judged by tasks/scoring.py (the same scoring as live trials). Trials are
seeded from `eval_seed`, a range kept apart from the training episodes' seeds (checked against the seeds
recorded with the checkpoint). Writes results.json, results.md and results.png to `eval_dir`.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from moss_vla.zoo import resolve_checkpoint
from tasks.scoring import InteractionResult, stopped_early


def training_seeds(checkpoint: Path | str, task: str) -> set[int]:
    """Seeds of the episodes of `task` the checkpoint was trained on (recorded by moss-train)."""
    f = resolve_checkpoint(checkpoint) / "training_data.json"
    if not f.exists():
        return set()
    info = json.loads(f.read_text())
    return {int(s) for store in info.get("stores", []) for t, seeds in store.get("seeds", {}).items()
            if t == task for s in seeds}


def no_pointing_reach(results: list[InteractionResult], near: float) -> dict[str, int]:
    """Where the arm went in trials without a pointing: within `near` m of the expected target
    ("expected"), of another target ("other"), or of none ("away", e.g. it never left home)."""
    reach = Counter({"expected": 0, "other": 0, "away": 0})
    for r in results:
        if r.reason == "no_pointing" and r.closest_distance is not None:
            reach["away" if r.closest_distance > near else "expected" if r.closest_target == r.expected else "other"] += 1
    return dict(reach)


def summarize(results: list[InteractionResult], label_names: list[str], near: float = 0.10) -> dict[str, Any]:
    """Success rate overall and per trial type (label), reaction times of successes, failure reasons, and
    how close the arm came to a target in the trials without a pointing (``near``: m, see no_pointing_reach)."""

    def block(rs: list[InteractionResult]) -> dict[str, Any]:
        rts = [r.reaction_time for r in rs if r.success and r.reaction_time is not None]
        return {"trials": len(rs), "success": sum(r.success for r in rs),
                "success_rate": (sum(r.success for r in rs) / len(rs)) if rs else None,
                "reaction_time_mean": float(np.mean(rts)) if rts else None,
                "reaction_time_median": float(np.median(rts)) if rts else None,
                "failures": dict(Counter(r.reason for r in rs if not r.success)),
                "no_pointing_within_m": near, "no_pointing_reach": no_pointing_reach(rs, near)}

    return {"overall": block(results),
            "per_type": {name: block([r for r in results if r.label == i]) for i, name in enumerate(label_names)}}


def markdown_table(name: str, summary: dict[str, Any]) -> str:
    rows = [("all", summary["overall"])] + list(summary["per_type"].items())
    out = [f"### {name}", "", "| trials | type | success | rate | reaction time (s, mean) | failures |",
           "|---:|---|---:|---:|---:|---|"]
    for label, b in rows:
        rate = "-" if b["success_rate"] is None else f"{100 * b['success_rate']:.1f}%"
        rt = "-" if b["reaction_time_mean"] is None else f"{b['reaction_time_mean']:.2f}"
        fails = ", ".join(f"{k} {v}" for k, v in sorted(b["failures"].items())) or "-"
        out.append(f"| {b['trials']} | {label} | {b['success']} | {rate} | {rt} | {fails} |")
    reach, near = summary["overall"].get("no_pointing_reach"), summary["overall"].get("no_pointing_within_m")
    if reach and sum(reach.values()):
        out += ["", (f"Trials without a pointing, where the arm came within {100 * near:.0f} cm: the expected "
                     f"target {reach['expected']}, another target {reach['other']}, none {reach['away']}.")]
    return "\n".join(out) + "\n"


def plot_results(path: Path, title: str, summary: dict[str, Any], results: list[InteractionResult],
                 label_names: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b, c) = plt.subplots(1, 3, figsize=(15, 4))
    names = ["all"] + list(summary["per_type"])
    rates = [summary["overall"]["success_rate"] or 0.0] + [
        summary["per_type"][n]["success_rate"] or 0.0 for n in summary["per_type"]]
    bars = a.bar(names, [100 * r for r in rates], color=["#555"] + [f"C{i}" for i in range(len(names) - 1)])
    for bar, n in zip(bars, [summary["overall"]] + list(summary["per_type"].values()), strict=True):
        a.text(bar.get_x() + bar.get_width() / 2, bar.get_height() + 1, f"{n['success']}/{n['trials']}",
               ha="center", fontsize=9)
    a.set_ylim(0, 110)
    a.set_ylabel("success (%)")
    a.set_title("success per trial type")
    for i, name in enumerate(label_names):
        rts = [r.reaction_time for r in results if r.label == i and r.reaction_time is not None]
        if rts:
            b.hist(rts, bins=15, alpha=0.6, label=name)
    b.set_xlabel("reaction time: onset -> pointing (s)")
    b.set_ylabel("trials")
    b.set_title("reaction time")
    if b.get_legend_handles_labels()[0]:
        b.legend()
    missed = [r for r in results if r.reason == "no_pointing" and r.closest_distance is not None]
    for which, keep, colour in (("the expected target", True, "#333"), ("another target", False, "#bbb")):
        d = [100 * r.closest_distance for r in missed if (r.closest_target == r.expected) == keep]
        if d:
            c.hist(d, bins=np.arange(0, max(40, max(d) + 2.5), 2.5), alpha=0.7, color=colour, label=which)
    near = 100 * summary["overall"]["no_pointing_within_m"]
    c.axvline(near, color="k", ls=":", label=f"{near:.0f} cm: counted as near")
    c.set_xlabel("closest approach to any target (cm)")
    c.set_ylabel("trials")
    c.set_title(f"trials without a pointing ({len(missed)})")
    c.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def untrained_checkpoint(path: Path, calibration: str, model: str = "tiny") -> Path:
    """Save (at `path`) an untrained MOSS policy of the `model` preset (configs/model/) whose action range is
    a 1 cm box around the home pose of the targets file `calibration`, so that its targets pass the arm's
    safety checks: useless at the task, fine for timing and testing the real-time loop. Returns its path."""
    from moss_vla.paths import CONFIG_DIR
    from moss_vla.policy import make_policy
    from tasks.targets import load_targets

    home = load_targets(str(calibration)).home.q
    lo, hi = np.concatenate([home - 0.01, [0.0]]), np.concatenate([home + 0.01, [0.001]])
    one = {"mean": ((lo + hi) / 2).tolist(), "std": ((hi - lo) / 2).tolist(), "min": lo.tolist(), "max": hi.tolist()}
    torch.manual_seed(0)
    policy = make_policy(OmegaConf.load(CONFIG_DIR / "policy" / "moss.yaml"),
                         OmegaConf.load(CONFIG_DIR / "model" / f"{model}.yaml"), {"state": one, "action": one})
    return policy.save_pretrained(path)


# moss-sim eval / moss-trial keys that override a checkpoint's inference settings (MossVLAConfig)
INFERENCE_SETTINGS = {"n_action_steps": int, "inference_seed": int, "use_cache": bool, "temporal_ensemble_coeff": float}


def load_policy(cfg: DictConfig, command: str) -> Any:
    """The policy of `cfg.checkpoint` in eval mode, or a clear error naming the missing directory."""
    from moss_vla.device import resolve_device
    from moss_vla.policy import MossVLAPolicy

    planner = cfg.get("planner") or {}
    if planner.get("remote"):  # served by moss-serve (moss_vla/serve.py): the same settings, for this session
        from moss_vla.remote_policy import RemotePolicy

        settings = {k: cast(cfg[k]) for k, cast in INFERENCE_SETTINGS.items() if cfg.get(k) is not None}
        return RemotePolicy.from_config(planner, settings)
    ckpt = resolve_checkpoint(cfg.checkpoint) if cfg.get("checkpoint") else None
    if ckpt is None or not ckpt.exists():
        raise FileNotFoundError(f"{command}: checkpoint={cfg.get('checkpoint')} does not exist; pass the "
                                f"directory moss-train wrote, e.g. runs/<run>/checkpoints/latest")
    policy = MossVLAPolicy.from_pretrained(ckpt).to(resolve_device(cfg.get("device", "auto")))
    # inference choices, not part of the trained model (null keeps the checkpoint's); set together because
    # they constrain each other (temporal ensembling needs n_action_steps = 1), checked by the config
    settings = {k: cast(cfg[k]) for k, cast in INFERENCE_SETTINGS.items() if cfg.get(k) is not None}
    try:
        policy.config = dataclasses.replace(policy.config, **settings)
    except ValueError as e:
        given = ", ".join(f"{k}={v}" for k, v in settings.items())
        raise ValueError(f"{command}: {given} do not fit {ckpt} (action horizon {policy.config.action_head.horizon}, "
                         f"trained with n_action_steps={policy.config.n_action_steps}): {e}") from e
    return policy


def evaluate(cfg: DictConfig, policy: Any | None = None) -> dict[str, Any]:
    """Run `cfg.trials` trials of `cfg.task` with the checkpoint `cfg.checkpoint` (or a given policy)."""
    from tqdm import tqdm

    from rig.sim_rig import build_sim_rig
    from robot.chunk_planner import make_controller

    ckpt = resolve_checkpoint(cfg.checkpoint) if cfg.get("checkpoint") else None
    logger = None
    if cfg.get("rerun"):  # before the checkpoint loads: a bad path is an error before any work
        from robot.rerun_logger import RerunStepLogger

        logger = RerunStepLogger(str(cfg.rerun), "moss-vla/moss-sim-eval")
    if policy is None:
        policy = load_policy(cfg, "moss-sim eval")
    policy.eval()
    task = str(cfg.task.name)
    n_trials, seed0 = int(cfg.trials), int(cfg.eval_seed)
    if ckpt is not None:
        clash = training_seeds(ckpt, task)
        if clash and seed0 <= max(clash) and seed0 + n_trials >= min(clash):
            raise ValueError(f"moss-sim eval: eval_seed={seed0} overlaps the seeds of the training episodes of "
                             f"{task} ({min(clash)}..{max(clash)}); choose an eval_seed outside that range")
    torch.set_num_threads(max(1, int(cfg.get("threads", 0)) or torch.get_num_threads()))
    planner = OmegaConf.to_container(cfg.planner, resolve=True)
    controller = make_controller(policy, planner, modes=("sync", "delayed"), where="configs/sim_eval.yaml")
    results: list[InteractionResult] = []
    episodes, step_ms, label_names = [], [], None
    jumps: dict[str, list[float]] = {"boundary": [], "within": []}  # a chunk planner's, pooled over episodes
    wall0 = time.perf_counter()
    bar = tqdm(total=n_trials, desc=f"eval {task}", unit="trial", disable=not cfg.progress)
    seed = seed0
    while len(results) < n_trials:
        rig = build_sim_rig(cfg, seed)
        label_names = rig.task.label_names
        torch.manual_seed(seed)
        if logger is not None:
            logger.start_episode(f"trials/seed_{seed}", controller, rig.targets.ee_positions())
        outcome = rig.run_episode(controller, writer=None, operator="policy", on_step=logger)
        scored = outcome.score.results
        if outcome.loop.reason != "duration":  # a fault ended it (policy raised / non-finite action, safety, arm)
            scored = stopped_early(scored, float(outcome.times[-1]) if len(outcome.times) else -np.inf,
                                   outcome.loop.reason)
        take = scored[: n_trials - len(results)]
        if logger is not None:
            logger.outcome(take, outcome.loop.reason, outcome.loop.message)
        results += take
        planned = {k: v for k, v in outcome.loop.controller_stats.items()
                   if k in ("plans", "planner_late", "planner_failed", "planner_start_holds", "plan_delay_steps")
                   or k.startswith("remote")}
        episodes.append({"seed": seed, "loop_end": outcome.loop.reason, "loop_message": outcome.loop.message,
                         "results": [r.__dict__ for r in take],
                         **({"planner": planned} if planned else {})})
        step_ms.append(outcome.loop.summary().get("compute_ms_p99"))
        jumps["boundary"] += getattr(controller, "boundary_jumps", [])
        jumps["within"] += getattr(controller, "within_steps", [])
        bar.update(len(take))
        bar.set_postfix(success=f"{sum(r.success for r in results)}/{len(results)}")
        seed += 1
    bar.close()
    if logger is not None:
        logger.close()
    summary = summarize(results, label_names, near=2 * float(cfg.rig.scoring.tolerance))
    report = {"task": task, "checkpoint": str(ckpt) if ckpt else None, "trials": len(results),
              "eval_seeds": [seed0, seed - 1], "episodes": len(episodes), "wall_seconds": time.perf_counter() - wall0,
              "step_compute_ms_p99": max((m for m in step_ms if m is not None), default=None),
              # the inference choices this evaluation ran with (moss-sim eval may override the checkpoint's)
              "policy_settings": {k: getattr(policy.config, k) for k in INFERENCE_SETTINGS},
              # a policy that acts step by step runs as it is whatever the config asks (make_controller)
              # the schedule as run; a server token is a secret and never goes into a results file
              "planner": ({k: v for k, v in planner.items() if k != "remote_token"} if controller is not policy
                          else {"mode": "sync"}),
              "planner_late_steps": sum(e.get("planner", {}).get("planner_late", 0) for e in episodes),
              # the jump in target where a new chunk takes over, against the steps within a chunk (chunk planners)
              **({"boundary_jump": jump_summary(jumps)} if controller is not policy else {}),
              # episodes a fault ended early, by the loop's reason (their trials fail as "stopped:<reason>")
              "faults": dict(Counter(e["loop_end"] for e in episodes if e["loop_end"] != "duration")),
              "rerun": str(cfg.rerun) if cfg.get("rerun") else None,
              **summary, "episode_log": episodes}
    out = Path(str(cfg.eval_dir))
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(report, indent=1, default=float))
    title = f"{task}: {ckpt.parent.parent.name if ckpt else 'policy'}"
    (out / "results.md").write_text(markdown_table(title, summary))
    plot_results(out / "results.png", title, summary, results, label_names)
    return report


def jump_summary(jumps: dict[str, list[float]]) -> dict[str, Any]:
    """Count, mean and p95 of the boundary jumps and of the within-chunk steps (robot/chunk_planner.py)."""
    out: dict[str, Any] = {}
    for name, values in jumps.items():
        a = np.asarray(values)
        out |= {f"{name}_n": len(a), f"{name}_mean": float(a.mean()) if len(a) else None,
                f"{name}_p95": float(np.percentile(a, 95)) if len(a) else None}
    return out


def eval_main(cfg: DictConfig) -> int:
    try:
        report = evaluate(cfg)
    except (FileNotFoundError, ValueError) as e:  # bad checkpoint or seed range: the message says what to do
        print(e, file=sys.stderr)
        return 2
    print(markdown_table(f"{report['task']} ({report['trials']} trials)",
                         {"overall": report["overall"], "per_type": report["per_type"]}))
    print(f"results: {Path(str(cfg.eval_dir)).resolve()}/results.{{json,md,png}}")
    if report["faults"]:  # a policy that faults is not a result: say so and fail the command
        first = next(e for e in report["episode_log"] if e["loop_end"] != "duration")
        print(f"moss-sim eval: {sum(report['faults'].values())} episode(s) ended in a fault "
              f"({', '.join(f'{k} {v}' for k, v in report['faults'].items())}); first: seed {first['seed']}: "
              f"{first['loop_message']}", file=sys.stderr)
        return 1
    return 0


def eval_rules() -> dict:
    """What `moss-sim eval` checks before it loads the checkpoint (moss_vla/config.py check_config)."""
    from moss_vla.config import Rule, flag, integer, number, one_of
    from rig.sim_rig import RIG_RULES

    return {**RIG_RULES, "trials": integer(1, hint="trials to judge, e.g. trials=96"), "eval_seed": integer(0),
            "n_action_steps": integer(1, optional=True), "inference_seed": integer(optional=True),
            "use_cache": flag(optional=True), "temporal_ensemble_coeff": number(optional=True),
            "threads": integer(0), "progress": flag(), "planner.mode": one_of("sync", "delayed"),
            "planner.lead": integer(0), "planner.delay": integer(0), "planner.max_late_streak": integer(1),
            "planner.remote": Rule("str", optional=True, hint="<host>:<port> of a moss-serve, or null"),
            "planner.remote_timeout": number(above=0), "planner.rtc.enabled": flag(),
            "planner.rtc.execution_horizon": integer(1), "planner.rtc.max_guidance_weight": number(above=0),
            "planner.rtc.prefix_attention_schedule": one_of("ZEROS", "ONES", "LINEAR", "EXP"),
            "rerun": Rule("str", optional=True, hint="a file.rrd to log every step of every trial to, or null")}
