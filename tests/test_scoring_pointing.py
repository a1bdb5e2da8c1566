"""Scoring (tasks/scoring.py) on synthetic logs: the edge cases of pointing, timing and switching."""

import numpy as np
import pytest

from robot.fr3_kinematics import ee_position
from tasks.scoring import pointing_events, score_interactions
from tasks.stimulus import Interaction
from tasks.targets import load_targets

TARGETS = {"left": np.array([0.45, 0.3, 0.22]), "right": np.array([0.45, -0.3, 0.22])}
HOME = np.array([0.48, 0.0, 0.38])
LABELS = {0: "left", 1: "right"}
DT = 0.1


def log(segments, t_end):
    """10 Hz log of flange positions: segments = [(t_from, position), ...] piecewise constant."""
    times = np.arange(0.0, t_end, DT)
    pos = np.empty((len(times), 3))
    for t_from, p in segments:
        pos[times >= t_from - 1e-9] = p
    return times, pos


def score(times, pos, interactions, **kw):
    return score_interactions(times, pos, interactions, LABELS, TARGETS, tolerance=0.05, dwell=0.3, **kw)


def test_correct_pointing_succeeds_and_reports_reaction_time():
    times, pos = log([(0, HOME), (2.0, TARGETS["right"]), (3.5, HOME)], 5.0)
    s = score(times, pos, [Interaction(0, 1, onset=1.0, deadline=4.0)])
    r = s.results[0]
    assert r.success and r.reason == "ok" and r.pointed == "right"
    assert r.reaction_time == pytest.approx(1.0)
    assert s.success_rate == 1.0 and s.mean_reaction_time == pytest.approx(1.0)


def test_never_pointing_fails():
    times, pos = log([(0, HOME)], 5.0)
    r = score(times, pos, [Interaction(0, 0, 1.0, 4.0)]).results[0]
    assert not r.success and r.reason == "no_pointing" and r.pointed is None and r.reaction_time is None


def test_pointing_late_fails():
    # arrives at 3.8, confirmed at 4.1 > deadline 4.0
    times, pos = log([(0, HOME), (3.8, TARGETS["left"])], 6.0)
    r = score(times, pos, [Interaction(0, 0, 1.0, 4.0)]).results[0]
    assert not r.success and r.reason == "late" and r.pointed == "left"
    # arriving 0.3 s before the deadline is exactly in time
    times, pos = log([(0, HOME), (3.7, TARGETS["left"])], 6.0)
    assert score(times, pos, [Interaction(0, 0, 1.0, 4.0)]).results[0].success


def test_passing_through_a_wrong_target_shorter_than_the_dwell_does_not_count():
    times, pos = log([(0, HOME), (1.5, TARGETS["left"]), (1.7, HOME), (2.0, TARGETS["right"])], 5.0)
    s = score(times, pos, [Interaction(0, 1, 1.0, 4.0)])
    assert s.results[0].success and s.results[0].pointed == "right"


def test_switching_after_holding_the_wrong_target_fails():
    times, pos = log([(0, HOME), (1.5, TARGETS["left"]), (2.2, TARGETS["right"])], 5.0)
    r = score(times, pos, [Interaction(0, 1, 1.0, 4.0)]).results[0]
    assert not r.success and r.reason == "wrong_target" and r.pointed == "left"


def test_resting_at_the_target_from_before_the_onset_does_not_count():
    times, pos = log([(0, TARGETS["left"])], 5.0)
    r = score(times, pos, [Interaction(0, 0, 1.0, 4.0)]).results[0]
    assert not r.success and r.reason == "no_pointing"
    # leaving and coming back after the onset counts
    times, pos = log([(0, TARGETS["left"]), (1.2, HOME), (2.0, TARGETS["left"])], 5.0)
    assert score(times, pos, [Interaction(0, 0, 1.0, 4.0)]).results[0].success


def test_each_interaction_is_judged_by_the_pointing_after_its_own_onset():
    times, pos = log([(0, HOME), (2.0, TARGETS["left"]), (3.0, HOME), (6.0, TARGETS["left"]), (7.0, HOME)], 9.0)
    inter = [Interaction(0, 0, 1.0, 4.0), Interaction(1, 1, 5.0, 8.0)]
    s = score(times, pos, inter)
    assert [r.success for r in s.results] == [True, False]
    assert s.results[1].reason == "wrong_target"
    assert s.n_success == 1 and s.success_rate == 0.5
    d = s.to_dict()
    assert d["n_interactions"] == 2 and d["interactions"][1]["reason"] == "wrong_target"
    # a missed interaction is not credited with the next interaction's pointing
    times, pos = log([(0, HOME), (6.0, TARGETS["left"]), (7.0, HOME)], 9.0)
    s = score(times, pos, [Interaction(0, 0, 1.0, 4.0), Interaction(1, 0, 5.0, 8.0)])
    assert [r.reason for r in s.results] == ["no_pointing", "ok"]


def test_joint_logs_and_dict_interactions_are_accepted():
    targets = load_targets("movesense_lr.yaml")
    q_home, q_left = targets["home"].q, targets["left_bowl"].q
    times = np.arange(0.0, 5.0, DT)
    q = np.where((times >= 2.0)[:, None], q_left, q_home)
    s = score_interactions(times, q, [{"index": 0, "label": 0, "onset": 1.0, "deadline": 4.0}],
                           {0: "left_bowl", 1: "right_bowl"}, targets.ee_positions(), 0.05, 0.3)
    assert s.results[0].success
    np.testing.assert_allclose(ee_position(q_left), targets["left_bowl"].ee, atol=1e-3)


def test_pointing_events_and_input_checks():
    times, pos = log([(0, HOME), (1.0, TARGETS["left"]), (2.0, HOME)], 3.0)
    ev = pointing_events(times, pos, TARGETS, 0.05, 0.3)
    assert len(ev) == 1 and ev[0].target == "left"
    assert ev[0].enter == pytest.approx(1.0) and ev[0].confirmed == pytest.approx(1.3)
    assert ev[0].leave == pytest.approx(2.0)
    with pytest.raises(ValueError, match="non-decreasing"):
        pointing_events(times[::-1], pos, TARGETS, 0.05, 0.3)
    with pytest.raises(ValueError, match="flange positions"):
        pointing_events(times, pos[:, :2], TARGETS, 0.05, 0.3)


def test_a_pointing_is_judged_on_the_samples_only():
    """Confirmed at an in-tolerance SAMPLE at or after enter + dwell, not by holding the last sample: with
    samples every 0.25 s, in tolerance at 1.0 and 1.25 and out at 1.5, the arm may have stayed until
    just before 1.5 (> enter + dwell = 1.3), but no sample shows it there at 1.3 or later."""
    times = np.arange(0.0, 3.0, 0.25)
    pos = np.where(((times >= 1.0) & (times < 1.5))[:, None], TARGETS["left"], HOME)
    assert pointing_events(times, pos, TARGETS, 0.05, 0.3) == []
    pos = np.where(((times >= 1.0) & (times < 1.75))[:, None], TARGETS["left"], HOME)  # in at 1.5 as well
    (ev,) = pointing_events(times, pos, TARGETS, 0.05, 0.3)
    assert ev.enter == 1.0 and ev.confirmed == 1.5 and ev.leave == 1.75  # 1.5: the first sample >= 1.3


def test_each_result_reports_the_closest_approach_in_its_window():
    """A failed trial says whether the arm stayed home or hovered just outside the tolerance."""
    hover = TARGETS["right"] + np.array([0.0, 0.0, 0.08])  # 8 cm above the right target: no pointing
    times, pos = log([(0, HOME), (2.0, hover), (3.0, HOME), (6.0, TARGETS["left"]), (7.0, HOME)], 9.0)
    first, second = score(times, pos, [Interaction(0, 1, 1.0, 4.0), Interaction(1, 0, 5.0, 8.0)]).results
    assert first.reason == "no_pointing" and first.closest_target == "right"
    assert first.closest_distance == pytest.approx(0.08)
    assert second.success and second.closest_target == "left" and second.closest_distance == pytest.approx(0.0)
    # staying home: the closest target is as far as home is from the nearest one
    (r,) = score(*log([(0, HOME)], 5.0), [Interaction(0, 0, 1.0, 4.0)]).results
    assert r.closest_distance == pytest.approx(min(np.linalg.norm(HOME - t) for t in TARGETS.values()))
