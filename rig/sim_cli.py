"""`moss-sim`: the simulated rig from the command line. Subcommands take hydra overrides of configs/sim.yaml.

    moss-sim collect task=movesense_lr episodes=50 out=data/movesense_lr_sim.zarr
    moss-sim collect task=pongpredict episodes=2 out=/tmp/p.zarr overwrite=true teleop.reaction_time=[0.3,0.5]
    moss-sim collect --cfg task=pongpredict        # print the composed config and exit

New subcommands register in SUBCOMMANDS: name -> ("module:function", config name); the function takes
the composed config and returns an exit code (imported only when used). `-h` and `--cfg` work as for
every moss-* command (moss_vla/config.py).
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from moss_vla.command import command
from moss_vla.config import cli_config, flag, integer

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "collect": ("rig.sim_cli:collect_main", "sim"),
    "eval": ("rig.sim_eval:eval_main", "sim_eval"),
    "bench": ("rig.sim_bench:bench_main", "bench"),
}


def collect_rules() -> dict:
    """What `moss-sim collect` checks before it creates a store (moss_vla/config.py check_config)."""
    from rig.sim_rig import RIG_RULES

    return {**RIG_RULES, "episodes": integer(1, hint="episodes to collect, e.g. episodes=50"),
            "base_seed": integer(0), "overwrite": flag(), "append": flag(), "progress": flag()}


def collect(cfg: DictConfig) -> dict[str, Any]:
    """Collect `cfg.episodes` scripted-operator episodes into the store `cfg.out`; returns a report."""
    from tqdm import tqdm

    from moss_vla.episodes import EpisodeWriter
    from moss_vla.episodes.check import check_store
    from rig.sim_rig import build_sim_rig

    out = Path(str(cfg.out))
    if out.exists():
        if cfg.overwrite:
            shutil.rmtree(out)
        elif not cfg.get("append", False):
            raise SystemExit(f"moss-sim collect: {out} already exists; pass overwrite=true to replace it, "
                             f"append=true (with a new base_seed) to add episodes, or another out=")
    n, base = int(cfg.episodes), int(cfg.base_seed)
    first = build_sim_rig(cfg, base)
    wall0 = time.perf_counter()
    frames, sim_seconds, results, reasons, rts = 0, 0.0, [], {}, []
    with EpisodeWriter(out, store_meta=first.store_meta(), queue_size=int(cfg.rig.writer.queue_size)) as writer:
        bar = tqdm(range(n), desc=f"collect {cfg.task.name}", unit="ep", disable=not cfg.progress)
        for i in bar:
            rig = first if i == 0 else build_sim_rig(cfg, base + i)
            outcome = rig.run_episode(rig.scripted_operator(), writer, operator="scripted")
            reasons[outcome.loop.reason] = reasons.get(outcome.loop.reason, 0) + 1
            frames += outcome.loop.n_steps
            sim_seconds += outcome.loop.t_end - outcome.loop.t_start
            results += outcome.score.results
            rts += [r.reaction_time for r in outcome.score.results if r.success]
            ok = sum(r.success for r in results)
            bar.set_postfix(success=f"{ok}/{len(results)}", fps=f"{frames / (time.perf_counter() - wall0):.0f}")
        n_stored = writer.n_episodes
    wall = time.perf_counter() - wall0
    check = check_store(out, images=False)  # the same check as `moss-data check --quick`
    ok = sum(r.success for r in results)
    failures: dict[str, int] = {}
    for r in results:
        if not r.success:
            failures[r.reason] = failures.get(r.reason, 0) + 1
    return {
        "out": str(out),
        "task": str(cfg.task.name),
        "episodes": n,
        "episodes_in_store": n_stored,
        "seeds": [base, base + n - 1],
        "loop_end_reasons": reasons,
        "frames": frames,
        "simulated_seconds": round(sim_seconds, 2),
        "wall_seconds": round(wall, 2),
        "frames_per_wall_second": round(frames / wall, 1) if wall > 0 else None,
        "realtime_factor": round(sim_seconds / wall, 2) if wall > 0 else None,
        "interactions": len(results),
        "operator_success_rate": ok / len(results) if results else None,
        "failures": failures,
        "mean_reaction_time_s": round(sum(rts) / len(rts), 3) if rts else None,
        "store_check": "ok" if check.ok else check.errors,
    }


def collect_main(cfg: DictConfig) -> int:
    report = collect(cfg)
    print(json.dumps(report, indent=2))
    return 0 if report["store_check"] == "ok" and report["loop_end_reasons"].keys() <= {"duration"} else 1


def _usage() -> str:
    return ("usage: moss-sim <subcommand> [-h] [--cfg] [key=value ...]\n"
            + "".join(f"  {name:8s} hydra overrides of configs/{cfg}.yaml\n" for name, (_, cfg) in SUBCOMMANDS.items())
            + "  --cfg    print the composed config and exit\n"
            "example: moss-sim collect task=pongpredict episodes=50 out=data/pongpredict_sim.zarr")


@command("moss-sim")
def main(argv: list[str] | None = None) -> int:
    import importlib

    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"moss-sim: unknown subcommand {name!r}\n{_usage()}", file=sys.stderr)
        return 2
    target, config_name = SUBCOMMANDS[name]
    module, func = target.split(":")
    module_ = importlib.import_module(module)
    rules = getattr(module_, f"{name}_rules", dict)()
    cfg = cli_config(rest, config_name, f"moss-sim {name}: {(module_.__doc__ or '').strip()}\n\n{_usage()}", rules)
    return 0 if cfg is None else int(getattr(module_, func)(cfg) or 0)


if __name__ == "__main__":
    sys.exit(main())
