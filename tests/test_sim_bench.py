"""`moss-sim bench` and `moss-sim eval` end to end at the tiny preset: every stage
runs (collect -> train -> closed-loop eval -> table), two policies train side by side in worker
processes, a second run skips what exists, and eval refuses training seeds and missing checkpoints."""

import json
import os
from pathlib import Path
from unittest import mock

import numpy as np
import pytest

from moss_vla.config import compose_config
from rig.sim_bench import PolicyJob, _run_parallel, recipe_text, seed_interval, wilson_interval
from rig.sim_cli import main
from rig.sim_eval import load_policy, markdown_table, summarize
from tasks.scoring import InteractionResult


def bench_cli(overrides: list[str]) -> int:
    """`moss-sim bench`, with MOSS_DEBUG=1 so that its errors reach the test as exceptions (moss_vla/command.py;
    the one-line message a user sees is tested in tests/test_reliability.py)."""
    with mock.patch.dict(os.environ, {"MOSS_DEBUG": "1"}):
        return main(["bench", *overrides])


POLICIES = ["groot", "moss"]


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    work = tmp_path_factory.mktemp("bench")
    overrides = ["tasks=[movesense_lr]", f"policies=[{','.join(POLICIES)}]", "preset=tiny", "episodes=2", "steps=3",
                 "batch_size=2", "trials={movesense_lr: 2}", f"work_dir={work}", f"results={work}/table",
                 "train_jobs=2", "train_overrides=['log_every=1','ckpt_every=3','val_batches=1']"]
    assert bench_cli(overrides) == 0
    return work, overrides


def test_bench_runs_every_stage_and_writes_the_table(bench):
    work, _ = bench
    table = json.loads((work / "table.json").read_text())
    assert set(table["success_percent"]["movesense_lr"]) == set(POLICIES)
    assert table["machine"]["cpu_count"] >= 1 and len(table["machine"]["load_average_at_end"]) == 3
    collected = table["collection"]["movesense_lr"]
    assert collected["episodes"] == 2 and collected["interactions"] >= 2 and 0 <= collected["operator_success_rate"] <= 1
    md = (work / "table.md").read_text().splitlines()
    assert md[0] == "| policy | MoveSense L/R |"
    assert md[2].startswith("| groot | ") and md[2].endswith("[paper 60.0] |")
    assert md[3].startswith("| moss | ") and md[3].endswith("[paper 95.8] |")
    assert md[5] == "| policy | MoveSense L/R: no_pointing / wrong_target / late |"
    for pol, row in zip(POLICIES, md[7:9], strict=True):  # the failure counts add up to the failed trials
        r = table["details"]["movesense_lr"][pol]["overall"]
        assert row == f"| {pol} | " + " / ".join(str(r["failures"].get(k, 0))
                                                for k in ("no_pointing", "wrong_target", "late")) + " |"
        assert sum(r["failures"].values()) == r["trials"] - r["success"]
    assert md[10] == "| policy | MoveSense L/R: train / eval min |"
    for pol, row in zip(POLICIES, md[12:14], strict=True):  # each run's training and evaluation time
        d = table["details"]["movesense_lr"][pol]
        assert 0 < d["train_seconds"] < 600 and 0 < d["eval_seconds"] < 600
        assert row == f"| {pol} | {d['train_seconds'] / 60:.0f} / {d['eval_seconds'] / 60:.0f} |"
    assert (work / "table.png").stat().st_size > 0
    for pol in POLICIES:
        run = work / f"movesense_lr-{pol}-seed0"
        ckpt = run / "checkpoints" / "step_0000003"
        assert (ckpt / "model.safetensors").exists() and (run / "metrics.csv").exists()
        assert "[moss-train] done: 3 steps" in (run / "bench_job.log").read_text()  # ran in a worker process
        report = json.loads((ckpt / "eval_movesense_lr" / "results.json").read_text())
        assert report["trials"] == 2 == report["overall"]["trials"]
        assert report["eval_seeds"][0] == 1_000_000  # apart from the collection seeds 0, 1
        assert set(report["per_type"]) == {"left", "right"}
        reach = report["overall"]["no_pointing_reach"]  # every trial without a pointing is placed once
        assert sum(reach.values()) == report["overall"]["failures"].get("no_pointing", 0)
        assert {r["closest_target"] for e in report["episode_log"] for r in e["results"]} <= {"left_bowl", "right_bowl"}
        assert (ckpt / "eval_movesense_lr" / "results.png").stat().st_size > 0
        assert table["success_percent"]["movesense_lr"][pol] == 100 * report["overall"]["success_rate"]


def test_eval_summary_says_where_the_arm_went_in_trials_without_a_pointing():
    def trial(label, expected, reason, closest, d):
        return InteractionResult(0, label, expected, None, False, reason, None, 0.0, 3.0, closest, d)

    results = [trial(0, "left_bowl", "no_pointing", "left_bowl", 0.07),   # hovered by the right bowl
               trial(1, "right_bowl", "no_pointing", "left_bowl", 0.06),  # hovered by the wrong one
               trial(1, "right_bowl", "no_pointing", "left_bowl", 0.25),  # never got anywhere
               trial(0, "left_bowl", "late", "left_bowl", 0.0)]           # not a no-pointing trial
    summary = summarize(results, ["left", "right"], near=0.1)
    assert summary["overall"]["no_pointing_reach"] == {"expected": 1, "other": 1, "away": 1}
    assert summary["per_type"]["right"]["no_pointing_reach"] == {"expected": 0, "other": 1, "away": 1}
    assert markdown_table("t", summary).splitlines()[-1] == (
        "Trials without a pointing, where the arm came within 10 cm: the expected target 1, another target 1, none 1.")


def test_wilson_interval():
    z2 = 1.96**2
    assert wilson_interval(0, 10) == pytest.approx((0.0, z2 / (10 + z2)))  # closed forms at the edges
    assert wilson_interval(10, 10) == pytest.approx((10 / (10 + z2), 1.0))
    for k, n in [(94, 96), (24, 96), (3, 30)]:
        lo, hi = wilson_interval(k, n)
        assert lo < k / n < hi
        assert wilson_interval(n - k, n) == pytest.approx((1 - hi, 1 - lo))  # failures mirror successes
    assert wilson_interval(48, 96)[1] - wilson_interval(48, 96)[0] > wilson_interval(480, 960)[1] - wilson_interval(480, 960)[0]


def test_the_interval_over_training_seeds_is_a_t_interval_of_their_rates():
    # four seeds of one PongPredict recipe, each on the same 60 trials (results/sim_table5_long_pong_seeds.*)
    rates = [53 / 60, 29 / 60, 37 / 60, 19 / 60]
    lo, hi = seed_interval(rates)
    mean, sd = np.mean(rates), np.std(rates, ddof=1)
    assert (lo, hi) == pytest.approx((mean - 3.182 * sd / 2, mean + 3.182 * sd / 2))
    assert hi - lo > 0.7  # 0.19-0.96: the 240 pooled trials' Wilson interval (0.51-0.64) would hide the spread
    pooled = wilson_interval(138, 240)
    assert pooled[1] - pooled[0] < 0.15
    assert seed_interval([0.5, 0.5, 0.5]) == (0.5, 0.5) and seed_interval([0.9, 1.0])[1] == 1.0
    with pytest.raises(ValueError, match="at least 2"):
        seed_interval([0.5])


def test_bench_resumes_without_redoing_finished_stages(bench, capsys):
    work, overrides = bench
    ckpt = work / "movesense_lr-moss-seed0" / "checkpoints" / "step_0000003" / "model.safetensors"
    before = ckpt.stat().st_mtime_ns
    assert bench_cli(overrides) == 0
    out = capsys.readouterr().out
    assert "collecting" not in out and "training" not in out and "evaluating" not in out
    assert ckpt.stat().st_mtime_ns == before


def test_more_training_seeds_train_only_the_new_runs_and_the_table_pools_their_trials(bench, capsys):
    work, overrides = bench
    seed0 = work / "movesense_lr-moss-seed0" / "checkpoints" / "step_0000003" / "model.safetensors"
    before = seed0.stat().st_mtime_ns
    more = [o for o in overrides if not o.startswith(("policies=", "results="))]
    assert bench_cli([*more, "policies=[moss]", "train_seeds=[0,1]", f"results={work}/seeds"]) == 0
    out = capsys.readouterr().out
    assert "training movesense_lr-moss-seed1 " in out and "training movesense_lr-moss-seed0" not in out
    assert seed0.stat().st_mtime_ns == before
    moss = json.loads((work / "seeds.json").read_text())["details"]["movesense_lr"]["moss"]
    runs = [json.loads((work / f"movesense_lr-moss-seed{k}" / "checkpoints" / "step_0000003" / "eval_movesense_lr"
                        / "results.json").read_text())["overall"] for k in (0, 1)]
    assert [moss["seeds"][str(k)]["overall"] for k in (0, 1)] == runs
    pooled = moss["overall"]  # every seed's trials, summarised together
    assert pooled["trials"] == moss["trials"] == 4 and pooled["success"] == sum(r["success"] for r in runs)
    assert sum(t["trials"] for t in moss["per_type"].values()) == 4
    for reason in ("no_pointing", "wrong_target", "late"):
        assert pooled["failures"].get(reason, 0) == sum(r["failures"].get(reason, 0) for r in runs)
    assert moss["train_seconds"] == pytest.approx(sum(moss["seeds"][k]["train_seconds"] for k in ("0", "1")))
    rates = " / ".join(f"{100 * r['success_rate']:.1f}" for r in runs)
    lo, hi = seed_interval([r["success_rate"] for r in runs])
    assert (work / "seeds.md").read_text().splitlines()[2] == (
        f"| moss | {100 * pooled['success_rate']:.1f} ({pooled['success']}/4; seeds {rates}, 95% interval over "
        f"seeds {100 * lo:.0f}-{100 * hi:.0f}) [paper 95.8] |")
    for bad, why in [("[0,0]", "repeats a seed"), ("[]", "non-empty list of ints"), ("[a]", "non-empty list of ints")]:
        with pytest.raises(ValueError, match=rf"train_seeds: .*{why}"):
            bench_cli([*more, f"train_seeds={bad}"])


def test_bench_refuses_a_work_dir_trained_with_other_settings(bench):
    work, overrides = bench
    other = [o if not o.startswith("train_overrides=") else "train_overrides=['log_every=1','ckpt_every=3',"
             "'val_batches=1','policy.aux_label_weight=0.5']" for o in overrides]
    with pytest.raises(ValueError, match=r"movesense_lr-groot-seed0 was trained with .* this bench asks for .*"
                                         r"aux_label_weight=0.5.* own work_dir"):
        bench_cli(other)
    assert json.loads((work / "movesense_lr-groot-seed0" / "bench_recipe.json").read_text())[:2] == [
        "policy=groot", "model=tiny"]
    # a store collected, or an evaluation made, with other settings is refused too, never silently reused
    with pytest.raises(ValueError, match=r"movesense_lr.collect.json: the store was collected with episodes=2, "
                                         r"collect_seed=0, collect_overrides=\[\]; this bench asks for episodes=3"):
        bench_cli([*overrides, "episodes=3"])
    with pytest.raises(ValueError, match=r"collect_overrides=\[\]; this bench asks for .*collect_overrides="
                                         r"\['teleop=human_like'\]"):
        bench_cli([*overrides, "collect_overrides=['teleop=human_like']"])
    with pytest.raises(ValueError, match=r"results.json was evaluated with trials=2, eval_seed=1000000; this bench "
                                         r"asks for trials=4"):
        bench_cli([o if not o.startswith("trials=") else "trials={movesense_lr: 4}" for o in overrides])


def test_eval_overrides_evaluate_every_run_again_beside_the_default_evaluation(bench):
    work, overrides = bench
    ckpts = {pol: work / f"movesense_lr-{pol}-seed0" / "checkpoints" / "step_0000003" for pol in POLICIES}
    default = {pol: json.loads((c / "eval_movesense_lr" / "results.json").read_text()) for pol, c in ckpts.items()}
    assert default["moss"]["policy_settings"] == {"n_action_steps": 8, "inference_seed": None, "use_cache": True,
                                                  "temporal_ensemble_coeff": None}
    trained = {pol: (c / "model.safetensors").stat().st_mtime_ns for pol, c in ckpts.items()}
    more = [o for o in overrides if not o.startswith("results=")]
    assert bench_cli([*more, "eval_overrides=['n_action_steps=2']", f"results={work}/n2.0"]) == 0  # a dot kept
    assert {pol: (c / "model.safetensors").stat().st_mtime_ns for pol, c in ckpts.items()} == trained  # not retrained
    table = json.loads((work / "n2.0.json").read_text())
    assert (work / "n2.0.md").exists() and (work / "n2.0.png").exists()
    for pol, ckpt in ckpts.items():
        report = json.loads((ckpt / "eval_movesense_lr_n_action_steps-2" / "results.json").read_text())
        assert report["policy_settings"]["n_action_steps"] == 2 and report["trials"] == 2
        assert table["details"]["movesense_lr"][pol]["overall"] == report["overall"]
        # the default evaluation is kept, untouched
        assert json.loads((ckpt / "eval_movesense_lr" / "results.json").read_text()) == default[pol]
    assert recipe_text(table["config"]).endswith("evaluated with n_action_steps=2")
    for bad in ("trials=5", "n_action_steps"):
        with pytest.raises(ValueError, match=rf"eval_overrides: '{bad}' is not a moss-sim eval override"):
            bench_cli([*more, f"eval_overrides=['{bad}']"])


def test_eval_refuses_training_seeds_and_missing_checkpoints(bench, tmp_path, capsys):
    work, _ = bench
    ckpt = work / "movesense_lr-groot-seed0" / "checkpoints" / "step_0000003"
    assert main(["eval", f"checkpoint={ckpt}", "task=movesense_lr", "trials=2", "eval_seed=1",
                 f"eval_dir={tmp_path}", "progress=false"]) == 2
    assert "overlaps the seeds of the training episodes of movesense_lr (0..1)" in capsys.readouterr().err
    assert main(["eval", f"checkpoint={tmp_path / 'nope'}", "task=movesense_lr", "progress=false"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_eval_overrides_the_execution_horizon_the_inference_seed_the_cache_and_ensembling(bench):
    work, _ = bench
    ckpt = work / "movesense_lr-moss-seed0" / "checkpoints" / "step_0000003"
    cfg = compose_config([f"checkpoint={ckpt}", "task=movesense_lr"], "sim_eval")
    trained = load_policy(cfg, "moss-sim eval").config
    assert trained.inference_seed is None  # null keeps the checkpoint's: fresh noise for every chunk
    assert trained.use_cache and not load_policy(compose_config([f"checkpoint={ckpt}", "task=movesense_lr",
                                                                 "use_cache=false"], "sim_eval"),
                                                 "moss-sim eval").config.use_cache
    cfg.inference_seed = 3
    assert load_policy(cfg, "moss-sim eval").config.inference_seed == 3
    cfg.inference_seed = None
    trained = trained.n_action_steps
    cfg.n_action_steps = 3
    assert load_policy(cfg, "moss-sim eval").config.n_action_steps == 3 != trained
    cfg.n_action_steps = 99
    with pytest.raises(ValueError, match=r"moss-sim eval: n_action_steps=99 do not fit .*step_0000003 \(action horizon "
                                         r"16, trained with n_action_steps=8\): n_action_steps must be in \[1"):
        load_policy(cfg, "moss-sim eval")
    cfg.temporal_ensemble_coeff = 0.01  # ACT's temporal ensembling needs a chunk every step
    with pytest.raises(ValueError, match=r"n_action_steps=99, temporal_ensemble_coeff=0.01 do not fit"):
        load_policy(cfg, "moss-sim eval")
    cfg.n_action_steps = 1
    ensembled = load_policy(cfg, "moss-sim eval").config
    assert (ensembled.n_action_steps, ensembled.temporal_ensemble_coeff) == (1, 0.01)


def test_eval_runs_the_rigs_planner_schedule_in_simulated_time(bench, tmp_path, capsys):
    work, _ = bench
    ckpt = work / "movesense_lr-moss-seed0" / "checkpoints" / "step_0000003"
    common = ["eval", f"checkpoint={ckpt}", "task=movesense_lr", "trials=2", "progress=false"]
    assert main([*common, "planner.mode=delayed", "planner.delay=3", "planner.lead=2", f"eval_dir={tmp_path}/d"]) == 0
    report = json.loads((tmp_path / "d" / "results.json").read_text())
    rtc = {"enabled": False, "execution_horizon": 8, "max_guidance_weight": 4.0, "prefix_attention_schedule": "LINEAR"}
    assert report["planner"] == {"mode": "delayed", "lead": 2, "delay": 3, "max_late_streak": 10, "remote": None,
                                 "remote_timeout": 5.0, "rtc": rtc}  # never the server token (planner.remote_token)
    assert report["boundary_jump"]["boundary_n"] > 0 and report["boundary_jump"]["within_mean"] > 0
    for ep in report["episode_log"]:  # every chunk used from 3 steps after its frame; 1 step held per chunk
        plans = ep["planner"]["plans"]
        assert plans > 5 and ep["planner"]["plan_delay_steps"] == {"3": plans}
        assert ep["planner"]["planner_start_holds"] == 3 and ep["planner"]["planner_late"] >= plans - 1
    assert report["planner_late_steps"] == sum(ep["planner"]["planner_late"] for ep in report["episode_log"])
    assert main([*common, "planner.mode=async", f"eval_dir={tmp_path}/a"]) == 2  # needs a real clock
    assert "planner.mode='async' must be one of sync, delayed" in capsys.readouterr().err
    # real-time chunking (tests/test_rtc.py): the same schedule, each chunk guided by the one in use
    assert main([*common, "planner.mode=delayed", "planner.delay=3", "planner.lead=3", "planner.rtc.enabled=true",
                 f"eval_dir={tmp_path}/r"]) == 0
    report = json.loads((tmp_path / "r" / "results.json").read_text())
    assert report["planner"]["rtc"]["enabled"] and report["boundary_jump"]["boundary_n"] > 0
    assert main([*common, "planner.mode=delayed", "planner.rtc.max_guidance_weight=0", f"eval_dir={tmp_path}/x"]) == 2
    assert "planner.rtc.max_guidance_weight=0 must be > 0" in capsys.readouterr().err


def test_bench_preset_is_the_small_preset_with_a_finer_token_grid():
    from omegaconf import OmegaConf

    from moss_vla.paths import CONFIG_DIR

    assert compose_config([], "bench").preset == "small_fine"
    small, fine = (OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "model" / f"{n}.yaml"))
                   for n in ("small", "small_fine"))
    assert (small["vision"].pop("patch_size"), fine["vision"].pop("patch_size")) == (16, 8)
    assert {**small, "name": None} == {**fine, "name": None}  # nothing else differs


def test_bench_workers_end_when_the_bench_is_killed(tmp_path):
    """A bench killed with SIGKILL cannot stop its pool: the workers notice they were re-parented and end."""
    import os
    import signal
    import subprocess
    import sys
    import time

    script = tmp_path / "parent.py"
    script.write_text(
        "import multiprocessing as mp, os, sys, time\n"
        "from rig.sim_bench import exit_with_parent\n"
        "def child(ppid):\n"
        "    exit_with_parent(ppid, poll_s=0.1)\n"
        f"    open({str(tmp_path / 'watching')!r}, 'w').close()\n"
        "    time.sleep(60)\n"
        "if __name__ == '__main__':\n"
        "    p = mp.get_context('spawn').Process(target=child, args=(os.getpid(),))\n"
        "    p.start()\n"
        "    print(p.pid, flush=True)\n"
        "    time.sleep(60)\n")
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                              cwd=os.getcwd(), env={**os.environ, "PYTHONPATH": os.getcwd()})
    child = int(parent.stdout.readline())
    deadline = time.monotonic() + 120  # the child imports torch and starts its watcher (slow on a loaded machine)
    while time.monotonic() < deadline and not (tmp_path / "watching").exists():
        time.sleep(0.1)
    assert (tmp_path / "watching").exists(), "the worker never started its watcher"
    os.kill(child, 0)  # alive while its parent is
    parent.send_signal(signal.SIGKILL)
    parent.wait()

    def ended() -> bool:  # gone, or a zombie its new parent has not reaped yet
        try:
            return "\tZ" in Path(f"/proc/{child}/status").read_text().split("State:")[1][:3]
        except FileNotFoundError:
            return True

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not ended():
        time.sleep(0.1)
    if not ended():
        os.kill(child, signal.SIGKILL)
        pytest.fail(f"worker {child} outlived its killed parent by 10 s")


def test_a_failed_bench_job_is_reported_at_once_with_its_traceback_in_its_log(tmp_path, capsys):
    run = tmp_path / "movesense_lr-groot-seed0"
    job = PolicyJob(task="movesense_lr", policy="groot", seed=0, run=run, steps=2, trials=2, eval_seed=1_000_000,
                    train=(f"data.paths=[{tmp_path / 'missing.zarr'}]", "policy=groot", "model=tiny", "steps=2",
                           f"out_dir={run}"))
    with pytest.raises(RuntimeError, match="bench job movesense_lr-groot-seed0 failed"):
        _run_parallel([job], 1)
    out = capsys.readouterr()
    assert "bench job movesense_lr-groot-seed0 failed: FileNotFoundError" in out.out + out.err
    log = (run / "bench_job.log").read_text()
    assert "Traceback (most recent call last)" in log and "missing.zarr" in log
