"""moss-calibrate with the simulated arm and scripted keyboard events (pygame dummy driver, SimClock)."""

import os

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("SDL_AUDIODRIVER", "dummy")

import numpy as np
import pygame
import pytest
import yaml

from moss_vla.config import compose_config
from rig.calibrate_cli import TargetRecorder, calibrate_targets, main
from robot.clock import SimClock
from robot.fr3_kinematics import ee_position
from tasks.targets import TargetSet, load_targets

SHIPPED = load_targets("movesense_lr")


def calibrate(overrides: list[str], **kwargs) -> bool:
    return calibrate_targets(compose_config(overrides, "calibrate"), **kwargs)


def scripted_keys(script: dict[int, list[tuple[int, bool]]]):
    """on_step callback posting (key, down) events at given loop steps."""

    def on_step(k: int) -> None:
        for key, down in script.get(k, []):
            pygame.event.post(pygame.event.Event(pygame.KEYDOWN if down else pygame.KEYUP, key=key, mod=0,
                                                 unicode="", scancode=0))

    return on_step


def press(key):
    return [(key, True), (key, False)]


def test_records_all_targets_of_a_task_and_writes_the_calibration_file(tmp_path, capsys):
    out = tmp_path / "movesense_lr.yaml"
    script = {
        # home is selected first: jog the flange 5 steps forward (+x), store it
        2: [(pygame.K_UP, True)],
        7: [(pygame.K_UP, False)],
        12: press(pygame.K_RETURN),
        # left_bowl is selected next: snap to the shipped pose, wait for the arm, store
        13: press(pygame.K_1),
        45: press(pygame.K_RETURN),
        # right_bowl: snap, then jog 3 steps to the robot's right (-y), store
        46: press(pygame.K_2),
        90: [(pygame.K_RIGHT, True)],  # the snap takes 3.7 s (1.18 rad at 0.6 rad/s peak)
        93: [(pygame.K_RIGHT, False)],
        100: press(pygame.K_RETURN),
        101: press(pygame.K_s),
        102: press(pygame.K_ESCAPE),
    }
    written = calibrate(["task=movesense_lr", "arm=sim", "teleop=keyboard", f"out={out}"],
                                clock=SimClock(), max_steps=200, on_step=scripted_keys(script))
    assert written and out.is_file()
    log = capsys.readouterr().out
    assert "stored home" in log and "stored left_bowl" in log and "stored right_bowl" in log
    ts = TargetSet.load(out)  # the tasks/targets.py format, FK-consistent
    assert ts.names == ["home", "left_bowl", "right_bowl"]
    home_shift = ts["home"].ee - SHIPPED["home"].ee
    np.testing.assert_allclose(home_shift, [0.05, 0.0, 0.0], atol=0.006)  # 5 steps x 0.1 m/s x 0.1 s
    np.testing.assert_allclose(ts["left_bowl"].q, SHIPPED["left_bowl"].q, atol=0.01)
    right_shift = ts["right_bowl"].ee - SHIPPED["right_bowl"].ee
    np.testing.assert_allclose(right_shift, [0.0, -0.03, 0.0], atol=0.006)
    np.testing.assert_allclose(ts["right_bowl"].ee, ee_position(ts["right_bowl"].q), atol=1e-3)
    assert yaml.safe_load(out.read_text())["ee"] == "flange"


def test_a_partial_session_keeps_the_previous_poses(tmp_path, capsys):
    out = tmp_path / "fresh.yaml"  # no previous file of this name: the shipped one seeds the poses
    script = {1: press(pygame.K_TAB), 2: press(pygame.K_RETURN), 3: press(pygame.K_ESCAPE)}
    written = calibrate(["task=pongpredict", "arm=sim", f"out={out}"], clock=SimClock(), max_steps=50,
                                on_step=scripted_keys(script))
    # the other targets have poses from the shipped file, so the set is complete and is written
    assert written
    ts = TargetSet.load(out)
    assert ts.names == ["home", "red_cup", "green_cup", "blue_cup"]
    np.testing.assert_allclose(ts["home"].q, load_targets("pongpredict")["home"].q, atol=1e-4)
    assert "stored red_cup" in capsys.readouterr().out


def test_the_sim_arm_runs_the_safety_checks_of_its_config(tmp_path, capsys):
    """arm=sim checks every target against configs/arm/sim.yaml's safety block, like the real arm: here a
    smaller step limit than the snap's peak (0.06 rad per step) refuses the snap to left_bowl."""
    script = {1: press(pygame.K_1), 40: press(pygame.K_ESCAPE)}
    calibrate(["task=movesense_lr", "arm=sim", "teleop=keyboard", f"out={tmp_path / 't.yaml'}",
                       "arm.safety.max_step=0.03"], clock=SimClock(), max_steps=50, on_step=scripted_keys(script))
    log = capsys.readouterr().out
    assert "refused: unsafe joint target: step of joint" in log and "(max 0.030)" in log


def test_recorder_selection_and_completeness():
    rec = TargetRecorder(["home", "a", "b"])
    assert rec.current == "home" and not rec.complete
    rec.store(np.zeros(7))
    assert rec.current == "a"
    rec.select(+1)
    rec.store(np.ones(7))
    assert rec.current == "a"  # the only target still missing
    rec.store(np.full(7, 2.0))
    assert rec.complete and list(rec.configs()) == ["home", "a", "b"]
    assert "[" in rec.status()


def test_main_dispatches_crop_and_help(tmp_path, capsys):
    assert main(["--help"]) == 0
    assert "moss-calibrate" in capsys.readouterr().out
    assert main(["crop", "camera=nonexistent"]) == 2  # a bad group option: a usage error (moss_vla/command.py)
    assert "nonexistent" in capsys.readouterr().err


def test_ctrl_c_and_arm_errors_do_not_lose_stored_poses(tmp_path, capsys, monkeypatch):
    from robot.safety import ArmError
    from robot.sim_arm import SimArm

    # Ctrl-C after a pose was stored: the (complete) set is written as at a normal end
    out = tmp_path / "pong.yaml"
    script = scripted_keys({1: press(pygame.K_TAB), 2: press(pygame.K_RETURN)})

    def ctrl_c_at_5(k):
        script(k)
        if k == 5:
            raise KeyboardInterrupt

    assert calibrate(["task=pongpredict", "arm=sim", f"out={out}"], clock=SimClock(), max_steps=50,
                             on_step=ctrl_c_at_5)
    assert "interrupted" in capsys.readouterr().out and TargetSet.load(out).names[1] == "red_cup"
    # a recoverable arm error (a reflex while jogging) is recovered and the session goes on
    sent, recovered = [], []
    real_command = SimArm.command

    def reflex_on_3rd(arm, q, gripper=None):
        sent.append(1)
        if len(sent) == 3:
            raise ArmError("cartesian_reflex", kind="reflex")
        return real_command(arm, q, gripper)

    monkeypatch.setattr(SimArm, "command", reflex_on_3rd)
    monkeypatch.setattr(SimArm, "recover", lambda arm: recovered.append(1), raising=False)
    out2 = tmp_path / "pong2.yaml"
    script2 = {6: press(pygame.K_TAB), 7: press(pygame.K_RETURN), 8: press(pygame.K_ESCAPE)}
    assert calibrate(["task=pongpredict", "arm=sim", f"out={out2}"], clock=SimClock(), max_steps=50,
                             on_step=scripted_keys(script2))
    assert recovered == [1] and "arm error: cartesian_reflex; recovering" in capsys.readouterr().out
    # one that cannot be recovered ends the session, after the stored poses are written
    sent.clear()
    monkeypatch.setattr(SimArm, "recover", lambda arm: (_ for _ in ()).throw(ArmError("locked", recoverable=False)),
                        raising=False)
    script3 = {0: press(pygame.K_TAB), 1: press(pygame.K_RETURN)}  # stored before the 3rd command
    out3 = tmp_path / "pong3.yaml"
    with pytest.raises(ArmError, match="locked"):
        calibrate(["task=pongpredict", "arm=sim", f"out={out3}"], clock=SimClock(), max_steps=50,
                          on_step=scripted_keys(script3))
    assert out3.is_file()


def test_poses_taken_on_another_arm_do_not_seed_the_session(tmp_path, capsys):
    # a file from the real arm is not this (simulated) arm's: its poses are neither snap targets nor kept
    out = tmp_path / "rig.yaml"
    ts = load_targets("pongpredict")
    ts.arm = "franka"
    ts.save(out)
    script = {1: press(pygame.K_TAB), 2: press(pygame.K_RETURN), 3: press(pygame.K_ESCAPE)}
    written = calibrate(["task=pongpredict", "arm=sim", f"out={out}"], clock=SimClock(), max_steps=50,
                                on_step=scripted_keys(script))
    log = capsys.readouterr().out
    assert not written and "taken on arm=franka, this is arm=sim" in log and "not written: no pose yet" in log
    assert load_targets(out).arm == "franka"  # untouched
    # a session that stores every pose writes the arm it ran on
    script = {1: press(pygame.K_RETURN), 2: press(pygame.K_RETURN), 3: press(pygame.K_RETURN),
              4: press(pygame.K_RETURN), 5: press(pygame.K_ESCAPE)}
    assert calibrate(["task=pongpredict", "arm=sim", f"out={out}"], clock=SimClock(), max_steps=50,
                             on_step=scripted_keys(script))
    assert load_targets(out).arm == "sim"
