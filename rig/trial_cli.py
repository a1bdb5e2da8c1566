"""`moss-trial`: live trials of a checkpoint on the rig in real time (hydra overrides of configs/trial.yaml).

    moss-trial checkpoint=runs/<run>/checkpoints/latest task=movesense_lr trials=96 camera=zed arm=franka
    moss-trial checkpoint=/tmp/ckpt task=movesense_lr trials=3 camera=sim arm=sim

Episodes (seeds eval_seed, eval_seed + 1, ...) play on the display while the policy drives the arm through
the one 10 Hz control loop; every interaction is one trial, scored by tasks/scoring.py on the arm's joint
log (stimulus times from the display process). A trial whose episode stopped early for the policy's sake
(policy exception or non-finite action, safety stop, arm error, missed-deadline streak) fails with reason
"stopped:<reason>"; a stop key, Ctrl-C or a fault of the rig (camera failure or stall, display lost) ends
the session, and the trials it cut short are not counted. After an arm error the arm is recovered and
re-homed only as `after_arm_error` says (default: the operator confirms at the terminal). Writes to
`eval_dir`: results.json (summary, per-episode loop timing), results.md (the table), results.png, and
trials.jsonl (one line per trial, appended as trials finish, so an interrupted session keeps its log).
Exit code 0, or 130 after a stop key or Ctrl-C, 1 when the session stopped otherwise (the display process
died). With `planner.mode: async` (the default) the policy plans its action chunks on a worker thread
(robot/chunk_planner.py): the loop never waits for a replanning step.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from moss_vla.command import command
from moss_vla.config import cli_config, one_of
from tasks.scoring import InteractionResult


def warm_up(policy: Any, rig: Any, instruction: str, steps: int = 2) -> float:
    """Run the policy on a dark frame before the first episode (the first calls allocate and compile, and
    would otherwise miss the first deadlines); returns the seconds it took."""
    import numpy as np

    t0 = time.perf_counter()
    h, w = rig.crop.out_size
    obs = {"image": np.zeros((h, w, 3), np.uint8), "state": rig.arm.state().as_vector(), "instruction": instruction}
    for _ in range(steps):
        policy.select_action(obs)
    policy.reset()
    return time.perf_counter() - t0


def run_trials(cfg: DictConfig, policy: Any | None = None,
               on_episode: Callable[[Any], None] | None = None) -> dict[str, Any]:
    """Run `cfg.trials` live trials with the checkpoint `cfg.checkpoint` (or a given policy); no new episode
    after `cfg.max_minutes`. `on_episode(LiveEpisode)` sees every episode."""
    import torch

    from moss_vla.zoo import resolve_checkpoint
    from rig.live_rig import build_live_rig
    from rig.session import end_of_episode, run_live_episode
    from rig.sim_eval import load_policy, markdown_table, plot_results, summarize, training_seeds
    from robot.chunk_planner import make_controller
    from robot.stop_conditions import StopFlag

    ckpt = resolve_checkpoint(cfg.checkpoint) if cfg.get("checkpoint") else None
    if policy is None:
        policy = load_policy(cfg, "moss-trial")
    if hasattr(policy, "eval"):
        policy.eval()
    task_name, n_trials, seed0 = str(cfg.task.name), int(cfg.trials), int(cfg.eval_seed)
    if ckpt is not None:
        clash = training_seeds(ckpt, task_name)
        if clash and seed0 <= max(clash) and seed0 + n_trials >= min(clash):
            raise ValueError(f"moss-trial: eval_seed={seed0} overlaps the seeds of the training episodes of "
                             f"{task_name} ({min(clash)}..{max(clash)}); choose an eval_seed outside that range")
    if int(cfg.threads) > 0:  # see configs/trial.yaml
        torch.set_num_threads(int(cfg.threads))
    out = Path(str(cfg.eval_dir))
    trial_log = out / "trials.jsonl"
    if trial_log.exists() and trial_log.stat().st_size and not cfg.get("overwrite"):
        # after a crash it may be the only record of an earlier session's trials
        raise FileExistsError(f"moss-trial: {trial_log} holds the trials of an earlier session; give this session "
                              f"its own eval_dir=..., or overwrite=true to replace them")
    out.mkdir(parents=True, exist_ok=True)
    trial_log.write_text("")
    logger = None
    if cfg.get("rerun"):
        from robot.rerun_logger import RerunStepLogger

        logger = RerunStepLogger(str(cfg.rerun), "moss-vla/moss-trial")
    results: list[InteractionResult] = []
    episodes: list[dict[str, Any]] = []
    label_names: list[str] = []
    stop = StopFlag()
    wall0 = time.perf_counter()
    seed = seed0
    with stop.sigint_sets():
        rig = build_live_rig(cfg, seed0)
        writer = controller = None
        try:
            if cfg.get("record"):
                from moss_vla.episodes import EpisodeWriter

                writer = EpisodeWriter(str(cfg.record), store_meta=rig.store_meta(),
                                       queue_size=int(cfg.rig.writer.queue_size))
            warm_up(policy, rig, str(cfg.task.instruction))
            # after the warm-up: from here on the planner's worker thread is the only one using the policy
            controller = make_controller(policy, cfg.planner)
            while len(results) < n_trials and not stop.is_set:
                if cfg.get("max_minutes") and time.perf_counter() - wall0 > 60 * cfg.max_minutes:
                    break
                torch.manual_seed(seed)
                if logger is not None:
                    logger.start_episode(f"trials/seed_{seed}", controller, rig.targets.ee_positions())
                ep = run_live_episode(rig, controller, seed, stop, writer=writer, operator="policy",
                                      progress=bool(cfg.progress), on_step=logger)
                label_names = ep.label_names
                if on_episode is not None:
                    on_episode(ep)
                take = ep.trial_results()[: n_trials - len(results)]
                if logger is not None:
                    logger.outcome(take, ep.loop.reason, ep.loop.message)
                summary = ep.loop.summary()
                with trial_log.open("a") as f:
                    for r in take:
                        f.write(json.dumps({"trial": len(results), "seed": seed, **asdict(r),
                                            "loop_end": ep.loop.reason, "loop_message": ep.loop.message,
                                            "step_ms_p50": summary["latency_ms_p50"],
                                            "step_ms_p99": summary["latency_ms_p99"],
                                            "missed_deadlines": summary["missed_deadlines"],
                                            "planner_late": summary.get("planner_late")}, default=float) + "\n")
                        results.append(r)
                episodes.append({"seed": seed, "loop_end": ep.loop.reason, "message": ep.loop.message,
                                 "episode_index": ep.episode_index, "loop": summary,
                                 "results": [asdict(r) for r in take]})
                ok = sum(r.success for r in results)
                print(f"episode seed {seed}: {ep.loop.reason}; trials {len(results)}/{n_trials}, success {ok}; "
                      f"step p50 {summary['latency_ms_p50']:.1f} ms p99 {summary['latency_ms_p99']:.1f} ms, "
                      f"missed {summary['missed_deadlines']}" + (
                          f", planner late {summary['planner_late']}" if "planner_late" in summary else ""), flush=True)
                end_of_episode(rig, ep, stop)
                seed += 1
        finally:
            if controller is not None and controller is not policy:
                controller.close()
            if writer is not None:
                writer.close()
            if logger is not None:
                logger.close()
            rig.close()
    summary = summarize(results, label_names, near=2 * float(cfg.rig.scoring.tolerance))
    report = {"task": task_name, "checkpoint": str(ckpt) if ckpt else None, "trials": len(results),
              "trials_requested": n_trials, "stopped": stop.reason, "camera": str(cfg.camera.type),
              "arm": str(cfg.arm.type), "eval_seeds": [seed0, seed - 1], "episodes": len(episodes),
              "wall_seconds": time.perf_counter() - wall0, "display_log": str(rig.display_log),
              **summary, "episode_log": episodes}
    (out / "results.json").write_text(json.dumps(report, indent=1, default=float))
    title = f"{task_name} live ({cfg.camera.type} camera, {cfg.arm.type} arm): " + (
        ckpt.parent.parent.name if ckpt else "policy")
    (out / "results.md").write_text(markdown_table(title, summary))
    if results:
        plot_results(out / "results.png", title, summary, results, label_names)
    report["eval_dir"] = str(out.resolve())
    return report


def trial_rules() -> dict:
    """What moss-trial checks before it loads the checkpoint or starts the rig."""
    from rig.record_cli import record_rules
    from rig.sim_eval import eval_rules

    live = {k: v for k, v in record_rules().items() if k not in ("episodes", "seed", "on_interrupt")}
    sim = {k: v for k, v in eval_rules().items() if k != "planner.mode" and not k.startswith("planner.delay")}
    return {**live, **sim, "planner.mode": one_of("async", "sync")}


@command("moss-trial")
def main(argv: list[str] | None = None) -> int:
    from rig.session import exit_code
    from rig.sim_eval import markdown_table

    cfg = cli_config(sys.argv[1:] if argv is None else list(argv), "trial", __doc__, trial_rules())
    if cfg is None:
        return 0
    report = run_trials(cfg)
    print(markdown_table(f"{report['task']} ({report['trials']} trials)",
                         {"overall": report["overall"], "per_type": report["per_type"]}))
    print(f"results: {report['eval_dir']}/results.{{json,md,png}}, trials.jsonl")
    return exit_code(report["stopped"])


if __name__ == "__main__":
    sys.exit(main())
