"""moss-trial on the simulated rig in REAL time (rig/trial_cli.py): a checkpoint drives the arm, trials are
scored by tasks/scoring.py, results table / JSON / per-trial log are written; policy failures end a trial
safely with the reason recorded."""

import json

import numpy as np
import pytest

from moss_vla.config import compose_config
from rig.sim_eval import untrained_checkpoint
from rig.trial_cli import main, run_trials

SHORT = ["task.n_patterns=1", "task.pause=[0.3,0.3]", "task.motion_duration=[1.5,1.5]", "task.hold=[1.2,1.2]",
         "progress=false"]


def test_trial_cli_runs_a_checkpoint_and_writes_the_results(tmp_path):
    ckpt = untrained_checkpoint(tmp_path / "ckpt", "movesense_lr.yaml", "tiny")
    out = tmp_path / "trials"
    # CI machines are shared: a streak of missed deadlines must not end this test's episode (that stop is
    # tested in test_loop_stop_conditions.py; benchmarks/loop_bench.py measures the timing)
    code = main([f"checkpoint={ckpt}", "task=movesense_lr", "trials=1", "camera=sim", "arm=sim", f"eval_dir={out}",
                 f"display.log_dir={tmp_path}", "loop.max_missed_streak=1000", *SHORT])
    assert code == 0
    report = json.loads((out / "results.json").read_text())
    assert report["trials"] == 1 and report["overall"]["trials"] == 1
    ep = report["episode_log"][0]
    # on a busy 2-core machine steps may miss their deadline and frames be skipped; not most of them
    assert ep["loop_end"] == "episode_done" and ep["loop"]["n_steps"] >= 20
    assert ep["loop"]["n_steps"] >= 0.6 * ep["loop"]["frames_captured"] and ep["loop"]["latency_ms_p50"] < 100
    # planner.mode defaults to async for live trials: chunks were planned on the worker thread
    assert ep["loop"]["planner"] == "async" and ep["loop"]["plans"] >= 2
    # the untrained policy stays home: the trial fails, scored (not aborted)
    trial = json.loads((out / "trials.jsonl").read_text().splitlines()[0])
    assert trial["success"] is False and trial["reason"] == "no_pointing" and trial["expected"] in ("left_bowl",
                                                                                                    "right_bowl")
    table = (out / "results.md").read_text()
    assert "| 1 | all | 0 | 0.0% |" in table and (out / "results.png").stat().st_size > 1000


class Faulty:
    """Holds the arm where it is; raises at step 5 in its first episode, returns NaN at step 5 in the second."""

    def __init__(self):
        self.episode, self.k = -1, 0

    def eval(self):
        return self

    def reset(self):
        self.episode, self.k = self.episode + 1, 0

    def select_action(self, obs):
        self.k += 1
        if self.episode >= 1 and self.k == 6:  # episode 0 is the warm-up; reset() before each episode
            if self.episode == 1:
                raise RuntimeError("CUDA out of memory (pretend)")
            return np.full(8, np.nan, np.float32)
        return np.concatenate([obs["state"][:7], [0.0]]).astype(np.float32)


def test_policy_exception_and_non_finite_action_end_the_trial_with_the_reason(tmp_path):
    cfg = compose_config(["task=movesense_lr", "trials=2", f"eval_dir={tmp_path / 'trials'}", "checkpoint=",
                          f"display.log_dir={tmp_path}", *SHORT], "trial")
    report = run_trials(cfg, policy=Faulty())
    ends = [e["loop_end"] for e in report["episode_log"]]
    assert ends == ["controller", "safety"]
    assert "CUDA out of memory" in report["episode_log"][0]["message"]
    assert report["overall"]["failures"] == {"stopped:controller": 1, "stopped:safety": 1}
    for e in report["episode_log"]:
        assert e["loop"]["n_steps"] == 5  # the arm was stopped at the faulty step, nothing was sent


def test_exit_code_is_130_only_for_a_user_stop(monkeypatch):
    from rig import trial_cli
    from rig.sim_eval import summarize

    for stopped, code in ((None, 0), ("stop_key", 130), ("interrupted", 130), ("display_lost", 1)):
        report = {"task": "movesense_lr", "trials": 0, "stopped": stopped, "eval_dir": "/tmp/x", **summarize([], [])}
        monkeypatch.setattr(trial_cli, "run_trials", lambda cfg, r=report: r)
        assert trial_cli.main(["checkpoint=/nonexistent"]) == code, stopped


def test_an_earlier_sessions_trial_log_is_not_overwritten(tmp_path):
    out = tmp_path / "trials"
    out.mkdir()
    (out / "trials.jsonl").write_text('{"trial": 0, "success": true}\n')
    cfg = compose_config(["task=movesense_lr", "trials=1", f"eval_dir={out}", "checkpoint=",
                          f"display.log_dir={tmp_path}", *SHORT], "trial")
    with pytest.raises(FileExistsError, match=r"trials.jsonl holds the trials of an earlier session.*eval_dir="
                                              r".*overwrite=true"):
        run_trials(cfg, policy=Faulty())
    assert (out / "trials.jsonl").read_text().startswith('{"trial": 0')
