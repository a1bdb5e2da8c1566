"""Scripted operator (tasks/scripted_operator.py) driving an ideal arm through real task timelines."""

import numpy as np
import pytest
from omegaconf import OmegaConf

from moss_vla.config import compose_config
from moss_vla.paths import CONFIG_DIR
from rig.sim_rig import label_targets
from robot.fr3_kinematics import ee_position
from tasks import make_task
from tasks.scoring import score_interactions
from tasks.scripted_operator import Imperfections, ScriptedOperator
from tasks.targets import load_targets


def run(task_name, seed, **kw):
    cfg = OmegaConf.load(CONFIG_DIR / "task" / f"{task_name}.yaml")
    task = make_task(cfg, seed)
    targets = load_targets(cfg.targets.calibration, home=cfg.targets.rest)
    labels = label_targets(cfg, task.label_names)
    op = ScriptedOperator(targets, labels, seed=seed, finish_margin=0.5, **kw)
    q = targets.home.q.copy()
    times, log, actions = np.arange(0.0, task.duration, 0.1), [], []
    for t in times:  # an ideal arm: it is where it was commanded one step ago
        log.append(q.copy())
        a = op.select_action({"stimulus": task.state(t), "state": np.concatenate([q, [0.0]])})
        actions.append(a)
        q = a[:7].astype(np.float64)
    score = score_interactions(times, np.array(log), task.interactions, labels,
                               targets.ee_positions(sorted(set(labels.values()))), 0.05, 0.3)
    return task, targets, times, np.array(log), np.array(actions), score


@pytest.mark.parametrize("task_name", ["movesense_lr", "movesense_rot", "pongpredict"])
def test_operator_points_at_the_right_target_in_time(task_name):
    task, _, _, _, actions, score = run(task_name, seed=3)
    assert score.n == len(task.interactions) >= 3
    assert score.success_rate == 1.0, [r.reason for r in score.results]
    # human-like: never before the reaction time (0.35 s) plus a motion, within the deadline
    for r in score.results:
        assert 0.35 + 0.5 < r.reaction_time < r.deadline - r.onset
    # the motions respect the arm's safety step (0.1 rad per 0.1 s) and are smooth
    assert np.abs(np.diff(actions[:, :7], axis=0)).max() <= 0.1
    assert np.all(actions[:, 7] == 0.0)


def test_operator_returns_home_between_interactions():
    task, targets, times, q, _, _ = run("movesense_lr", seed=1)
    ee = ee_position(q)
    home = np.linalg.norm(ee - targets.home.ee, axis=1) < 0.05
    for prev, nxt in zip(task.interactions[:-1], task.interactions[1:]):
        between = (times > prev.onset) & (times < nxt.onset + 0.35)
        assert home[between].any()


def test_operator_is_deterministic_per_seed():
    a = run("pongpredict", seed=7)[4]
    b = run("pongpredict", seed=7)[4]
    c = run("pongpredict", seed=8)[4]
    np.testing.assert_array_equal(a, b)
    assert a.shape != c.shape or not np.array_equal(a, c)


def test_commit_lead_holds_the_pointing_back_until_the_path_can_be_read():
    lead = (1.6, 2.0)
    for seed in range(20):
        _, _, _, _, actions, score = run("pongpredict", seed=seed, commit_lead=lead)
        assert score.success_rate == 1.0, (seed, [r.reason for r in score.results])
        assert np.abs(np.diff(actions[:, :7], axis=0)).max() <= 0.1
        for r in score.results:
            # it leaves home no earlier than lead[1] before the ball arrives (reaction_time = entering the
            # target region, after leaving home)
            assert r.reaction_time > (r.deadline - r.onset) - lead[1]


def test_commit_lead_comes_from_the_teleop_config_per_task_kind():
    teleop = OmegaConf.load(CONFIG_DIR / "teleop" / "scripted.yaml")
    teleop.commit_lead = {"pongpredict": [1.6, 2.0]}
    cfg = OmegaConf.load(CONFIG_DIR / "task" / "pongpredict.yaml")
    targets = load_targets(cfg.targets.calibration, home=cfg.targets.rest)
    labels = label_targets(cfg, list(cfg.label_names))
    pong = ScriptedOperator.from_config(teleop, targets, labels, seed=0, dwell=0.3, task_kind="pongpredict")
    other = ScriptedOperator.from_config(teleop, targets, labels, seed=0, dwell=0.3, task_kind="movesense_lr")
    assert pong.commit_lead == tuple(teleop.commit_lead.pongpredict) and other.commit_lead is None
    with pytest.raises(ValueError, match=r"commit_lead \[0.8, 1.2\] s leaves less than"):
        ScriptedOperator(targets, labels, finish_margin=0.5, commit_lead=(0.8, 1.2))


def test_a_wrong_first_move_heads_for_the_other_bowl_and_is_corrected_in_time():
    imp = Imperfections(wrong_first_move_prob=1.0, correct_after=(0.5, 0.5))
    task, targets, times, q, actions, score = run("movesense_lr", seed=2, imperfections=imp)
    labels = label_targets(OmegaConf.load(CONFIG_DIR / "task" / "movesense_lr.yaml"), task.label_names)
    assert score.success_rate == 1.0, [r.reason for r in score.results]
    assert np.abs(np.diff(actions[:, :7], axis=0)).max() <= 0.1
    ee = ee_position(q)
    wrong_seen = 0
    for inter in task.interactions:
        right = labels[inter.label]
        wrong = next(n for n in set(labels.values()) if n != right)
        window = (times > inter.onset) & (times < inter.deadline)
        d_wrong = np.linalg.norm(ee[window] - targets[wrong].ee, axis=1)
        d_right = np.linalg.norm(ee[window] - targets[right].ee, axis=1)
        # first closer to the wrong bowl than at the onset, in the end at the right one
        wrong_seen += bool(d_wrong.min() < d_wrong[0] - 0.05 and d_right[-1] < 0.05)
    # every wrong first move the operator counted (only where the deadline leaves time to correct it)
    assert wrong_seen == count_wrong_moves("movesense_lr", 2, imp) >= 2


def test_human_like_profile_errs_at_its_stated_rates_and_still_demonstrates_the_task():
    teleop = compose_config(["teleop=human_like"], "sim").teleop
    imp = Imperfections.from_config(teleop.imperfections)
    n_interactions, successes = 0, 0
    plain = run("movesense_rot", seed=0)[4]
    for seed in range(12):
        _, _, _, _, actions, score = run("movesense_rot", seed=seed, imperfections=imp)
        n_interactions += score.n
        successes += sum(r.success for r in score.results)
        assert np.abs(np.diff(actions[:, :7], axis=0)).max() <= 0.1  # within the arm's safety step
        if seed == 0:
            assert actions.shape == plain.shape and not np.allclose(actions, plain)  # it does differ
    op = ScriptedOperator.from_config(teleop, *run_targets("movesense_rot"), seed=0, dwell=0.3,
                                      task_kind="movesense_rot")
    assert op.imperfections == imp and imp.wrong_first_move_prob == 0.1
    assert successes >= 0.9 * n_interactions  # a person misses one now and then too (late, mostly)
    # the rate of wrong first moves, counted by the operator itself, over many interactions
    wrong = sum(count_wrong_moves("movesense_lr", seed, imp) for seed in range(40))
    total = sum(len(make_task(OmegaConf.load(CONFIG_DIR / "task" / "movesense_lr.yaml"), s).interactions)
                for s in range(40))
    assert 0.03 * total <= wrong <= 0.2 * total


def test_imperfections_are_checked():
    with pytest.raises(ValueError, match="wrong_first_move_prob must be a probability"):
        Imperfections(wrong_first_move_prob=1.5)
    with pytest.raises(ValueError, match="correct_after must stay under 1 s"):
        Imperfections(correct_after=(0.5, 1.5))
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['hesitate'\]"):
        Imperfections.from_config({"hesitate": 0.3})


def run_targets(task_name):
    cfg = OmegaConf.load(CONFIG_DIR / "task" / f"{task_name}.yaml")
    return load_targets(cfg.targets.calibration, home=cfg.targets.rest), label_targets(cfg, list(cfg.label_names))


def count_wrong_moves(task_name, seed, imp):
    cfg = OmegaConf.load(CONFIG_DIR / "task" / f"{task_name}.yaml")
    task = make_task(cfg, seed)
    targets, labels = run_targets(task_name)
    op = ScriptedOperator(targets, labels, seed=seed, finish_margin=0.5, imperfections=imp)
    q = targets.home.q.copy()
    for t in np.arange(0.0, task.duration, 0.1):
        q = op.select_action({"stimulus": task.state(t), "state": np.concatenate([q, [0.0]])})[:7].astype(np.float64)
    return op.wrong_first_moves
