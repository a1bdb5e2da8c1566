"""Calibration files (tasks/calibration/*.yaml, tasks/targets.py) and their use by the task configs."""

import numpy as np
import pytest
import yaml
from omegaconf import OmegaConf

from moss_vla.paths import CONFIG_DIR
from robot.fr3_kinematics import ee_position, within_limits
from robot.safety import SafetyChecker
from tasks.targets import TargetSet, load_targets


@pytest.mark.parametrize("task", ["movesense_lr", "movesense_rot", "pongpredict"])
def test_every_task_config_resolves_to_plausible_separated_targets(task):
    cfg = OmegaConf.load(CONFIG_DIR / "task" / f"{task}.yaml")
    targets = load_targets(cfg.targets.calibration, home=cfg.targets.rest)
    names = [cfg.targets.labels[label] for label in cfg.label_names]
    assert set(names) <= set(targets.pointing_names)
    targets.check_separation([*names, targets.home_name], 0.15)
    checker = SafetyChecker()
    for name in targets.names:
        t = targets[name]
        assert within_limits(t.q, margin=0.05)
        np.testing.assert_allclose(ee_position(t.q), t.ee, atol=1e-3)
        assert not checker.workspace_violations(t.q)  # reachable without tripping the arm's checks
        if name != targets.home_name:
            assert 0.3 < t.ee[0] < 0.7 and 0.1 < t.ee[2] < 0.35  # above a table in front of the robot


def test_round_trip_and_errors(tmp_path):
    ts = TargetSet.from_joint_configs({"home": load_targets("pongpredict").home.q,
                                       "a": load_targets("pongpredict")["red_cup"].q})
    path = tmp_path / "mine.yaml"
    ts.save(path)
    back = load_targets(path)
    np.testing.assert_allclose(back["a"].ee, ts["a"].ee, atol=1e-4)
    with pytest.raises(KeyError, match="no target named 'b'"):
        back["b"]
    doc = yaml.safe_load(path.read_text())
    doc["targets"]["a"]["ee"][0] += 0.2  # e.g. recorded with a tool offset
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(doc))
    with pytest.raises(ValueError, match="FLANGE"):
        load_targets(tmp_path / "bad.yaml")
    with pytest.raises(ValueError, match="only 0.000 m apart"):
        TargetSet.from_joint_configs({"home": ts.home.q, "x": ts.home.q}).check_separation(["home", "x"], 0.15)
    with pytest.raises(FileNotFoundError, match="built-in ones"):
        load_targets("nope")


def test_files_say_which_arm_their_poses_were_taken_on(tmp_path):
    from tasks.targets import check_taken_on

    for task in ("movesense_lr", "movesense_rot", "pongpredict"):
        assert load_targets(task).arm == "sim"  # the built-in poses are the simulated rig's
    ts = TargetSet.from_joint_configs({"home": load_targets("pongpredict").home.q}, arm="franka")
    ts.save(tmp_path / "rig.yaml")
    mine = load_targets(tmp_path / "rig.yaml")
    assert mine.arm == "franka"
    check_taken_on(mine, "franka")
    check_taken_on(load_targets("pongpredict"), "sim")
    check_taken_on(mine, "sim")  # the simulated arm can be put anywhere
    with pytest.raises(ValueError, match=r"pongpredict.yaml holds poses taken on arm=sim, not on arm=franka"):
        check_taken_on(load_targets("pongpredict"), "franka")
    TargetSet.from_joint_configs({"home": ts.home.q}).save(tmp_path / "bare.yaml")
    with pytest.raises(ValueError, match=r"without an 'arm:' entry.*add 'arm: franka' to it"):
        check_taken_on(load_targets(tmp_path / "bare.yaml"), "franka")
