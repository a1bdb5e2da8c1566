"""Between the episodes of a live session (rig/session.py `end_of_episode`, rig/live_rig.py
`LiveRig.recover_arm`): a rig fault ends the session and its cut-short trials are not counted; after a real
arm's error (e.g. a collision reflex) the arm is recovered and re-homed only as `after_arm_error` says."""

import numpy as np
import pytest
from omegaconf import OmegaConf

from rig.live_rig import LiveRig, build_live_rig
from rig.session import RIG_FAULTS, LiveEpisode, end_of_episode
from robot.control_loop import LoopResult
from robot.stop_conditions import StopFlag
from tasks.scoring import InteractionResult, ScoreSummary


class Arm:
    def __init__(self):
        self.recovered = 0

    def recover(self):
        self.recovered += 1


def rig(arm_type: str = "franka", mode: str = "ask") -> LiveRig:
    cfg = OmegaConf.create({"arm": {"type": arm_type}, "camera": {"type": "zed"}, "after_arm_error": mode})
    return LiveRig(cfg, None, None, None, None, None, Arm(), None, {}, None)


def episode(reason: str, message: str = "") -> LiveEpisode:
    """An episode of two interactions (deadlines at 2 s and 6 s) whose loop ended at 4 s with `reason`."""
    interactions = [type("I", (), {"deadline": 2.0})(), type("I", (), {"deadline": 6.0})()]
    results = [InteractionResult(index=i, label=0, expected="left_bowl", pointed=None, success=False,
                                 reason="no_pointing", reaction_time=None, onset=d - 2, deadline=d)
               for i, d in enumerate((2.0, 6.0))]
    return LiveEpisode(0, "movesense_lr", ["left", "right"], LoopResult(reason, message),
                       ScoreSummary(results), np.linspace(0, 4, 41), np.zeros((41, 7)), None, interactions)


def answers(*replies):
    """A terminal that gives `replies` in turn (and records the prompts)."""
    prompts = []

    def ask(prompt):
        prompts.append(prompt)
        reply = replies[len(prompts) - 1]
        if isinstance(reply, BaseException):
            raise reply
        return reply

    ask.prompts = prompts
    return ask


@pytest.mark.parametrize("reason", RIG_FAULTS)
def test_a_rig_fault_ends_the_session_and_its_cut_trials_are_not_counted(reason):
    r, stop = rig(), StopFlag()
    ep = episode(reason, "no camera frame for 0.62 s")
    end_of_episode(r, ep, stop, ask=answers())
    assert stop.reason == reason and "0.62" in stop.detail
    assert [t.index for t in ep.trial_results()] == [0]  # the interaction judged before the fault only


def test_a_policy_fault_fails_the_cut_trial_and_the_session_goes_on():
    r, stop = rig(), StopFlag()
    ep = episode("controller", "RuntimeError: boom")
    end_of_episode(r, ep, stop, ask=answers())
    assert not stop.is_set
    assert [t.reason for t in ep.trial_results()] == ["no_pointing", "stopped:controller"]


def test_after_a_reflex_the_real_arm_waits_for_the_operator():
    r, stop = rig(mode="ask"), StopFlag()
    ask = answers("")  # Enter: the workspace is clear
    end_of_episode(r, episode("arm", "cartesian_reflex"), stop, ask=ask)
    assert r.arm.recovered == 1 and not stop.is_set and "cartesian_reflex" in ask.prompts[0]
    for reply in ("q", EOFError()):  # q, or no terminal at all: the session ends, the arm is left alone
        r, stop = rig(mode="ask"), StopFlag()
        end_of_episode(r, episode("arm", "cartesian_reflex"), stop, ask=answers(reply))
        assert r.arm.recovered == 0 and stop.reason == "arm_error" and stop.detail == "cartesian_reflex"


def test_after_arm_error_recover_stop_and_the_simulated_arm():
    r, stop = rig(mode="recover"), StopFlag()
    end_of_episode(r, episode("arm"), stop, ask=answers())  # no prompt (answers() has none to give)
    assert r.arm.recovered == 1 and not stop.is_set
    r, stop = rig(mode="stop"), StopFlag()
    end_of_episode(r, episode("arm"), stop, ask=answers())
    assert r.arm.recovered == 0 and stop.reason == "arm_error"
    r, stop = rig(arm_type="sim", mode="stop"), StopFlag()  # rebuilt at the next homing: nothing to ask
    end_of_episode(r, episode("arm"), stop, ask=answers())
    assert not stop.is_set


def test_a_misspelt_after_arm_error_fails_before_the_session_starts():
    cfg = OmegaConf.create({"after_arm_error": "retry"})
    with pytest.raises(ValueError, match=r"after_arm_error.*'retry'.*configs/record.yaml"):
        build_live_rig(cfg, 0)
