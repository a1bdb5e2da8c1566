"""moss-replay, the mock environment (rig/replay_cli.py, robot/mock_arm.py): recorded episodes through
ReplayCamera and the mock arm, re-sending the recorded actions (loop + safety path) or running a policy
open loop (action error, step latency)."""

import json

import numpy as np
import pytest

from moss_vla.config import compose_config
from moss_vla.episodes import EpisodeStore, EpisodeWriter
from rig.replay_cli import main
from rig.sim_cli import collect
from rig.sim_eval import untrained_checkpoint
from robot.mock_arm import ReplayArm
from robot.safety import SafetyChecker, UnsafeTargetError


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One short scripted episode of the simulated rig (simulated time: about a second of CPU)."""
    path = tmp_path_factory.mktemp("replay") / "sim.zarr"
    cfg = compose_config([f"out={path}", "episodes=1", "progress=false", "task.n_patterns=1",
                          "task.pause=[0.3,0.3]", "task.motion_duration=[1.5,1.5]", "task.hold=[1.2,1.2]"], "sim")
    assert collect(cfg)["store_check"] == "ok"
    return path


def test_recorded_actions_replay_through_loop_and_safety(store, tmp_path, capsys):
    out = tmp_path / "r.json"
    assert main([f"store={store}", "realtime=true", f"out={out}", "progress=false"]) == 0
    r = json.loads(out.read_text())
    ep = r["episodes"][0]
    n = EpisodeStore(store).episode_lengths[0]
    assert r["mode"] == "actions" and ep["played_to_end"] and ep["loop_end"] == "end_of_stream"
    assert ep["commands_sent"] == n and ep["max_abs_diff_sent_vs_recorded"] < 1e-6
    # real time: the episode took its recorded length on the wall clock
    assert ep["loop"]["duration_s"] == pytest.approx(0.1 * n, abs=0.3)
    assert "end_of_stream" in capsys.readouterr().out


def test_a_recorded_jump_is_caught_by_the_arm_safety_checks(store, tmp_path):
    src = EpisodeStore(store)
    ep = src.episode(0)
    bad = tmp_path / "bad.zarr"
    skip = ("format", "schema_version", "image_shape", "keys")
    with EpisodeWriter(bad, store_meta={k: v for k, v in src.meta.items() if k not in skip}) as w:
        meta = {k: v for k, v in src.episode_meta(0).items() if k not in ("index", "start", "end", "length")}
        w.start_episode(meta)
        for k in range(len(ep["timestamp"])):
            action = ep["action"][k].copy()
            if k == 12:
                action[0] += 0.3  # one target 0.3 rad off: more than a control period's step
            w.add_frame(**{key: ep[key][k] for key in ep if key != "action"}, action=action)
        w.commit()
    out = tmp_path / "r.json"
    assert main([f"store={bad}", "realtime=false", f"out={out}", "progress=false"]) == 1
    r = json.loads(out.read_text())["episodes"][0]
    assert r["loop_end"] == "safety" and "step of joint 1" in r["message"] and r["commands_sent"] == 12
    assert r["arm_stops"] == 1


def test_policy_open_loop_reports_action_error_and_latency(store, tmp_path):
    ckpt = untrained_checkpoint(tmp_path / "ckpt", "movesense_lr.yaml", "tiny")
    out = tmp_path / "p.json"
    assert main([f"store={store}", f"checkpoint={ckpt}", "realtime=false", f"out={out}", "progress=false"]) == 0
    r = json.loads(out.read_text())
    ep = r["episodes"][0]
    assert r["mode"] == "policy" and ep["played_to_end"]
    assert ep["steps"] == EpisodeStore(store).episode_lengths[0]
    assert 0 < ep["joint_abs_error_mean_rad"] < 1.0 and 0 < ep["policy_ms_p50"] <= ep["policy_ms_p99"]


def test_replay_arm_lockstep_and_strictness():
    states = np.tile(np.array([0, -0.05, 0, -2.2, 0, 1.83, 0.785, 0.04]), (3, 1))
    states[1, 0] = 0.05
    arm = ReplayArm(states, np.array([0.0, 0.1, 0.2]), safety=SafetyChecker(), strict=False)
    assert arm.state().q[0] == 0.0
    arm.command(states[0, :7])
    assert arm.state().q[0] == 0.05 and arm.state().dq[0] == pytest.approx(0.5)
    arm.command(states[1, :7] + np.array([0.5, 0, 0, 0, 0, 0, 0]))  # too far: counted, not sent
    assert len(arm.commands) == 1 and arm.rejected[0][0] == 1
    strict = ReplayArm(states, np.array([0.0, 0.1, 0.2]), safety=SafetyChecker(), strict=True)
    with pytest.raises(UnsafeTargetError):
        strict.command(states[0, :7] + 0.5)
