"""`moss-sim`: the simulated rig from the command line. Subcommands take hydra overrides of configs/sim.yaml.

    moss-sim collect task=movesense_lr episodes=50 out=data/movesense_lr_sim.zarr
    moss-sim collect task=pongpredict episodes=2 out=/tmp/p.zarr overwrite=true teleop.reaction_time=[0.3,0.5]
    moss-sim collect --cfg task=pongpredict        # print the composed config and exit

New subcommands register in SUBCOMMANDS: name -> "module:function", where the function takes the list
of override strings and returns an exit code (imported only when used).
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from moss_vla.config import compose_config as _compose

SUBCOMMANDS: dict[str, str] = {
    "collect": "tasks.sim_cli:collect_main",
    "eval": "tasks.sim_eval:eval_main",
    "bench": "tasks.sim_bench:bench_main",
}


def compose_config(overrides: list[str], config_name: str = "sim") -> DictConfig:
    """The composed `configs/<config_name>.yaml` (default: sim) with hydra overrides."""
    return _compose(overrides, config_name)


def collect(cfg: DictConfig) -> dict[str, Any]:
    """Collect `cfg.episodes` scripted-operator episodes into the store `cfg.out`; returns a report."""
    from tqdm import tqdm

    from moss_vla.episodes import EpisodeWriter
    from moss_vla.episodes.check import check_store
    from tasks.sim_rig import build_sim_rig

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


def collect_main(overrides: list[str]) -> int:
    cfg = compose_config(overrides)
    report = collect(cfg)
    print(json.dumps(report, indent=2))
    return 0 if report["store_check"] == "ok" and report["loop_end_reasons"].keys() <= {"duration"} else 1


def _usage() -> str:
    return ("usage: moss-sim <subcommand> [--cfg] [key=value ...]   (hydra overrides of configs/sim.yaml)\n"
            f"subcommands: {', '.join(SUBCOMMANDS)}\n"
            "  --cfg   print the composed config and exit\n"
            "example: moss-sim collect task=pongpredict episodes=50 out=data/pongpredict_sim.zarr")


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
    if "-h" in rest or "--help" in rest:
        print(_usage())
        return 0
    if "--cfg" in rest:
        config_name = {"eval": "sim_eval", "bench": "bench"}.get(name, "sim")
        print(OmegaConf.to_yaml(compose_config([a for a in rest if a != "--cfg"], config_name), resolve=True))
        return 0
    module, func = SUBCOMMANDS[name].split(":")
    return int(getattr(importlib.import_module(module), func)(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
