"""Table 5 on the simulated rig at a glance: one table and one plot from the bench's own results.

Per task, the three policies trained with one recipe side by side (the latest recipe whose baselines
were run too), lerobot's ACT / Diffusion Policy where they were trained in the same trials, and MOSS's
best run with a later recipe or longer training, whose baselines were not rerun. Nothing is trained or
evaluated here: the numbers are read from the `moss-sim bench` results JSON files named in COMPARISONS,
LEROBOT and MOSS_BEST, so the summary cannot drift
from them. The full record of every run is docs/table5.md.

Run: ``.venv/bin/python benchmarks/table5_summary.py`` -> results/sim_table5_summary.{json,md,png}
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rig.sim_bench import TASK_TITLES, plot_table, recipe_text, table_markdown

RESULTS = Path(__file__).resolve().parent / "results"
BASELINES = ("groot", "contextvla", "moss")
BEST = "moss, best recipe"

# task -> (its recipe, {policy: results file}). The files' configs give steps, seeds and overrides, but
# not the defaults of the code they ran on, which changed between recipes: hence the description.
COMPARISONS = {
    "movesense_lr": (("+ label loss, head on the current frame's VL tokens, loss only on windows that show the label; "
                      "each further training seed with its own collection (collect_seed 1000 * seed)"),
                     {"groot": ["sim_table5_evidence_lr_baselines", "sim_table5_lr_seed1"],
                      "contextvla": ["sim_table5_evidence_lr_baselines", "sim_table5_lr_seed1"],
                      "moss": ["sim_table5_evidence_lr", "sim_table5_lr_seed1"]}),
    "movesense_rot": ("L/R's recipe",
                      {"groot": ["sim_table5_evidence", "sim_table5_rot_groot_seed1"],
                       "contextvla": ["sim_table5_evidence", "sim_table5_rot_contextvla_seed1"],
                       "moss": ["sim_table5_evidence", "sim_table5_rot_moss_seed1", "sim_table5_rot_moss_seed2"]}),
    "pongpredict": (("L/R's recipe + 7 x 7 tokens per frame + state noise 0.05 rad, 10000 steps; MOSS training seeds 0 "
                     "and 3 (the best and the worst of four at 6000 steps, results/sim_table5_long_pong_seeds), the "
                     "baselines seed 0 (at 3000 steps: results/sim_table5_noise_pong_{baselines,seeds})"),
                    {"groot": "sim_table5_pong10k_baselines", "contextvla": "sim_table5_pong10k_baselines",
                     "moss": "sim_table5_pong10k_seeds"}),
}
# lerobot's policies from scratch in the same trials (issue 39; docs/training.md section 7): task -> (recipe,
# {policy: results file(s)}); rows of their own, beside the comparison's
LEROBOT = {
    "movesense_lr": (("lerobot 0.4.4's classes trained by moss-train from scratch on the same 50 episodes, 3000 steps "
                      "of batch 16 (matched in steps), no label loss, no pretrained backbone; Diffusion Policy: 2 "
                      "frames, UNet down_dims (64, 128, 256), 10 DDIM steps; ACT: 1 frame, ResNet-18 from scratch"),
                     {"act": "sim_table5_lr_lerobot", "diffusion": "sim_table5_lr_lerobot"}),
}
LABELS = {"act": "ACT (lerobot, 1 frame)", "diffusion": "Diffusion Policy (lerobot, 2 frames)"}  # their rows
# task -> (results file(s), how its recipe differs from the comparison's)
MOSS_BEST = {
    "movesense_lr": (["sim_table5_evidence_lr", "sim_table5_lr_seed1"], "the comparison's own runs"),
    "movesense_rot": ("sim_table5_rot_6000", "6000 steps instead of 3000"),
    "pongpredict": ("sim_table5_pong10k_seeds", "the comparison's own run"),
}


def _load(files: set[str]) -> dict[str, dict[str, Any]]:
    """Each results file once, by name."""
    loaded = {}
    for name in sorted(files):
        path = RESULTS / f"{name}.json"
        if not path.exists():
            raise SystemExit(f"{path} is missing: run the moss-sim bench that writes it, or fix COMPARISONS / MOSS_BEST")
        loaded[name] = json.loads(path.read_text())
    return loaded


def _result(results: dict[str, Any], name: str, task: str, policy: str) -> dict[str, Any]:
    try:
        r = results["details"][task][policy]
    except KeyError as e:
        raise SystemExit(f"{RESULTS / name}.json has no result for task {task!r}, policy {policy!r} ({e!r}); "
                         "fix COMPARISONS / MOSS_BEST") from e
    return {**r, "seeds": r.get("seeds", {"0": r})}  # single-seed files predate per-seed results


def files_of(entry: str | list[str]) -> list[str]:
    return [entry] if isinstance(entry, str) else list(entry)


def _pooled(res: dict[str, dict[str, Any]], files: list[str], task: str, policy: str) -> dict[str, Any]:
    """One cell from one results file, or pooled over several (training runs with their own collection and
    training seeds, evaluated on the same trials): every run's trials and each run as one seed."""
    parts = [(f, _result(res[f], f, task, policy)) for f in files]
    if len(parts) == 1:
        return parts[0][1]
    seeds = {f"{f}:{k}": v for f, r in parts for k, v in r["seeds"].items()}
    success = sum(r["overall"]["success"] for _, r in parts)
    trials = sum(r["overall"]["trials"] for _, r in parts)
    failures: dict[str, int] = {}
    for _, r in parts:
        for k, n in r["overall"].get("failures", {}).items():
            failures[k] = failures.get(k, 0) + n
    return {"overall": {"success": success, "trials": trials, "success_rate": success / trials, "failures": failures},
            "seeds": seeds}


def main() -> None:
    groups = {t: [c] for t, c in COMPARISONS.items()}
    for t, c in LEROBOT.items():
        groups.setdefault(t, []).append(c)
    res = _load({f for cs in groups.values() for _, pols in cs for e in pols.values() for f in files_of(e)}
                | {f for e, _ in MOSS_BEST.values() for f in files_of(e)})
    table = {t: {LABELS.get(p, p): _pooled(res, files_of(e), t, p) for _, pols in cs for p, e in pols.items()}
             for t, cs in groups.items()}
    for t, (e, _) in MOSS_BEST.items():
        table[t][BEST] = _pooled(res, files_of(e), t, "moss")
    lerobot = list(dict.fromkeys(LABELS[p] for _, pols in LEROBOT.values() for p in pols))
    policies = [*BASELINES, *lerobot, BEST]
    lines = [("Success (%) in closed-loop trials on the simulated rig; [paper] is the MOSS paper's table 5 (real "
              "robot). Generated by benchmarks/table5_summary.py from the files below."), "",
             table_markdown(table, policies), "Recipes:", ""]
    for t, (recipe, pols) in COMPARISONS.items():
        used = dict.fromkeys(f for e in pols.values() for f in files_of(e))
        lines.append(f"- {TASK_TITLES[t]}: {recipe}; " + "; ".join(
            f"{', '.join(p for p in pols if f in files_of(pols[p]))}: `{f}` ({recipe_text(res[f]['config'])}, "
            f"collect_seed {res[f]['config'].get('collect_seed', 0)})" for f in used))
        e, what = MOSS_BEST[t]
        lines.append(f"  - {BEST}: {what}; " + "; ".join(f"`{f}` ({recipe_text(res[f]['config'])})" for f in files_of(e)))
        if t in LEROBOT:
            recipe, pols = LEROBOT[t]
            lines.append(f"  - {', '.join(pols)}: {recipe}; " + "; ".join(
                f"`{f}` ({recipe_text(res[f]['config'])}, collect_seed {res[f]['config'].get('collect_seed', 0)})"
                for f in dict.fromkeys(f for e in pols.values() for f in files_of(e))))
    out = RESULTS / "sim_table5_summary"
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps({
        "source_files": {f: r["machine"] for f, r in res.items()},
        "success_percent": {t: {p: 100 * r["overall"]["success_rate"] for p, r in ps.items()} for t, ps in table.items()},
        "trials": {t: {p: [r["overall"]["success"], r["overall"]["trials"]] for p, r in ps.items()} for t, ps in table.items()},
        "comparisons": {t: {"recipe": r, "files": pols} for t, (r, pols) in COMPARISONS.items()},
        "lerobot": {t: {"recipe": r, "files": pols} for t, (r, pols) in LEROBOT.items()},
        "moss_best": {t: {"files": files_of(e), "differs": w} for t, (e, w) in MOSS_BEST.items()},
    }, indent=1))
    plot_table(out.with_suffix(".png"), table, policies,
               "closed-loop success in the simulated rig: one recipe per task, lerobot's policies, and MOSS's best run\n"
               "(small_fine, 50 episodes; 95% intervals over trials, or over training seeds (circles) where there are several)")
    print(out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
