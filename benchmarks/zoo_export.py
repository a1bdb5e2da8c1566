"""Put one trained bench run into the model zoo (moss_vla/zoo/<task>/<policy>/), with its provenance.

    python benchmarks/zoo_export.py --results benchmarks/results/sim_table5_rot_seed1.json \
        --task movesense_rot --policy moss --seed 1 [--root DIR_THE_BENCH_RAN_IN] [--commit SHA]

Copies the inference files of the run's evaluated checkpoint (config.json, model.safetensors, stats.json;
training_data.json without local paths; no optimiser state), the training overrides (recipe.json, which
fine-tuning from the entry reuses) and writes PROVENANCE.md: the command that reproduces it, the commit,
the data and training seeds, steps, training time and its evaluation. Refuses a checkpoint over the zoo's
size limit.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from moss_vla.zoo import ZOO_DIR

MAX_BYTES = 4_200_000  # the zoo's limit per entry's weights (a few MB: docs/zoo.md)


def bench_command(cfg: dict, task: str, policy: str, seed: int) -> str:
    overrides = ",".join(f'"{o}"' for o in cfg["train_overrides"])
    collect = ",".join(f'"{o}"' for o in cfg.get("collect_overrides") or [])
    return " ".join(["moss-sim bench", f"tasks=[{task}]", f"policies=[{policy}]", f"'train_seeds=[{seed}]'",
                     f"collect_seed={cfg['collect_seed']}", f"episodes={cfg['episodes']}", f"preset={cfg['preset']}",
                     f"steps={cfg['steps']}", f"batch_size={cfg['batch_size']}", f"'train_overrides=[{overrides}]'"]
                    + ([f"'collect_overrides=[{collect}]'"] if collect else [])
                    + [f"work_dir={cfg['work_dir']}"])


def export(results: Path, task: str, policy: str, seed: int, root: Path, commit: str | None) -> Path:
    bench = json.loads(results.read_text())
    cfg, detail = bench["config"], bench["details"][task][policy]
    run = detail["seeds"][str(seed)]
    ckpt = root / run["checkpoint"]
    weights = ckpt / "model.safetensors"
    if weights.stat().st_size > MAX_BYTES:
        raise SystemExit(f"{weights}: {weights.stat().st_size / 1e6:.1f} MB, over the zoo's {MAX_BYTES / 1e6:.1f} MB")
    out = ZOO_DIR / task / policy
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    for name in ("config.json", "model.safetensors", "stats.json"):
        shutil.copy(ckpt / name, out / name)
    data = json.loads((ckpt / "training_data.json").read_text())
    for store in data.get("stores", []):
        store["path"] = Path(store["path"]).name  # a path on the machine that trained it means nothing here
    (out / "training_data.json").write_text(json.dumps(data, indent=1))
    recipe = json.loads((ckpt.parent.parent / "bench_recipe.json").read_text())
    (out / "recipe.json").write_text(json.dumps(recipe))
    overall = run["overall"]
    load = " / ".join(f"{x:.1f}" for x in bench["machine"].get("load_average_at_end", [])) or "?"
    seeds = data["stores"][0]["seeds"][task]
    commit = commit or bench.get("machine", {}).get("commit") or "unknown"
    eval_seeds = detail.get("eval_seeds", [cfg["eval_seed"], cfg["eval_seed"] + overall["trials"] - 1])
    (out / "PROVENANCE.md").write_text(f"""# zoo:{task}/{policy}

Trained by our own bench on the simulated rig; inference weights only (fp32, {weights.stat().st_size / 1e6:.1f} MB).

- command (from the repository root, at the commit below):
  `{bench_command(cfg, task, policy, seed)}`
- commit: {commit}
- data: {cfg['episodes']} scripted-operator episodes of {task}, collect_seed {cfg['collect_seed']}
  (episode seeds {min(seeds)}..{max(seeds)}){', collected with ' + ', '.join(cfg.get('collect_overrides') or []) if cfg.get('collect_overrides') else ''}
- training: {policy} at the {cfg['preset']} preset, training seed {seed}, {cfg['steps']} steps of batch
  {cfg['batch_size']}, overrides {', '.join(recipe)}
- training time: {run['train_seconds'] / 60:.0f} min on {bench['machine'].get('cpu_count')} CPU cores
  ({bench['machine'].get('torch_threads')} torch thread(s); load average {load} at the end; {bench['machine'].get('platform')})
- evaluation: success {100 * overall['success_rate']:.1f}% ({overall['success']}/{overall['trials']}) on
  closed-loop trials of {task}, the interactions of the episodes with seeds {eval_seeds[0]}..{eval_seeds[-1]}
  (failures: {json.dumps(overall.get('failures', {}))}); bench results: {results.as_posix()}
- why this seed: the zoo holds training seed {seed} of every cell (docs/zoo.md: a fixed rule, not the best run)
""")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", type=Path, required=True, help="a moss-sim bench results JSON")
    ap.add_argument("--task", required=True)
    ap.add_argument("--policy", required=True)
    ap.add_argument("--seed", type=int, required=True, help="the training seed to export")
    ap.add_argument("--root", type=Path, default=Path("."), help="the folder the bench ran in (its work_dir is "
                    "relative to it)")
    ap.add_argument("--commit", help="the commit that trained it (default: the one recorded in the results)")
    args = ap.parse_args()
    print(f"wrote {export(args.results, args.task, args.policy, args.seed, args.root, args.commit)}")


if __name__ == "__main__":
    main()
