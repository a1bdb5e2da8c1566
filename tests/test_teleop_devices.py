"""Teleoperation: min-jerk snaps, EE jog by damped least squares, keyboard and gamepad devices driven by
synthetic pygame events (dummy video driver), and a teleop policy running in the one control loop."""

import os

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("SDL_AUDIODRIVER", "dummy")

import numpy as np
import pygame
import pytest
from omegaconf import OmegaConf

from moss_vla.paths import CONFIG_DIR
from robot.fr3_kinematics import Q_READY, forward_kinematics, position_jacobian
from robot.teleop import TeleopPolicy, make_teleop
from robot.teleop.gamepad import Gamepad, deadzone
from robot.teleop.keyboard import Keyboard
from robot.teleop.motion import MIN_JERK_PEAK, MinJerkTrajectory, dls_ik_step, min_jerk, numerical_jacobian
from tasks.targets import load_targets

TARGETS = {n: t.q for n, t in load_targets("movesense_lr").targets.items()}  # home, left_bowl, right_bowl


@pytest.fixture(autouse=True)
def clean_event_queue():
    # the video system only, like the devices: the audio mixer's SDL thread (nice -20 as root) would stay in
    # this process and starve the real-time tests that run after these
    pygame.display.init()
    pygame.event.clear()
    yield
    if pygame.display.get_init():
        pygame.event.clear()


def key(k, down=True):
    pygame.event.post(pygame.event.Event(pygame.KEYDOWN if down else pygame.KEYUP, key=k, mod=0, unicode="",
                                         scancode=0))


def obs(q, width=0.08):
    return {"image": None, "state": np.concatenate([q, [width]]).astype(np.float32), "instruction": ""}


# --- motion helpers ---------------------------------------------------------------------------------------
def test_min_jerk_profile():
    tau = np.linspace(0, 1, 1001)
    s = min_jerk(tau)
    v = np.gradient(s, tau)
    assert s[0] == 0 and s[-1] == pytest.approx(1)
    assert abs(v[0]) < 1e-2 and abs(v[-1]) < 1e-2
    assert v.max() == pytest.approx(MIN_JERK_PEAK, rel=1e-3)
    assert np.all(np.diff(s) >= 0)
    assert min_jerk(-1.0) == 0.0 and min_jerk(2.0) == 1.0 and min_jerk(0.5) == pytest.approx(0.5)  # clipped


def test_min_jerk_trajectory_respects_the_peak_speed():
    q0, q1 = TARGETS["home"], TARGETS["left_bowl"]
    traj = MinJerkTrajectory(q0, q1, peak_speed=0.6, min_duration=0.5)
    t = np.linspace(0, traj.duration, 2001)
    qs = np.array([traj.sample(x) for x in t])
    speed = np.abs(np.gradient(qs, t, axis=0)).max()
    assert speed == pytest.approx(0.6, rel=1e-2)
    np.testing.assert_allclose(qs[-1], q1)
    assert traj.done(traj.duration) and not traj.done(0.5 * traj.duration)


def test_numerical_jacobian_matches_the_analytic_position_jacobian():
    q = TARGETS["left_bowl"]
    jac = numerical_jacobian(forward_kinematics, q)
    np.testing.assert_allclose(jac[:3], position_jacobian(q), atol=1e-6)
    # angular rows: joint 1 rotates about the base z axis
    np.testing.assert_allclose(jac[3:, 0], [0, 0, 1], atol=1e-6)


def test_dls_step_moves_the_flange_and_holds_orientation():
    q = TARGETS["home"]
    pose0 = forward_kinematics(q)
    dx = np.array([0.01, -0.005, 0.008])
    q1 = dls_ik_step(forward_kinematics, q, dx, damping=0.01)
    pose1 = forward_kinematics(q1)
    np.testing.assert_allclose(pose1[:3, 3] - pose0[:3, 3], dx, atol=5e-4)
    assert np.abs(pose1[:3, :3] - pose0[:3, :3]).max() < 5e-3


# --- keyboard ------------------------------------------------------------------------------------------------
def make_keyboard_policy(**kw):
    cfg = OmegaConf.load(CONFIG_DIR / "teleop" / "keyboard.yaml")
    return make_teleop(cfg, TARGETS, **kw)


def test_keyboard_snap_goes_smoothly_to_the_calibrated_target():
    policy = make_keyboard_policy()
    assert isinstance(policy.device, Keyboard)
    q = TARGETS["home"].copy()
    key(pygame.K_1)  # first snap key -> first pointing target
    actions = []
    for _ in range(40):
        a = policy.select_action(obs(q))
        actions.append(a)
        q = a[:7].astype(np.float64)  # a perfect arm
        if not policy.busy:
            break
    actions = np.array(actions)
    assert actions.shape[1] == 8 and actions.dtype == np.float32
    np.testing.assert_allclose(actions[-1, :7], TARGETS["left_bowl"], atol=1e-5)
    steps = np.abs(np.diff(np.vstack([np.r_[TARGETS["home"], 0.08], actions])[:, :7], axis=0)).max(axis=1)
    assert steps.max() < 0.1  # within the franka.yaml step limit at 10 Hz
    assert steps[0] < 0.01 and steps[-1] < 0.01  # min-jerk: starts and ends gently
    key(pygame.K_h)  # home
    policy.select_action(obs(q))
    assert policy.snapping_to == "home"
    policy.device.close()


def test_keyboard_ee_jog_while_held_and_joint_mode():
    policy = make_keyboard_policy()
    q = TARGETS["home"].copy()
    p0 = forward_kinematics(q)[:3, 3]
    key(pygame.K_UP)
    for _ in range(5):
        q = policy.select_action(obs(q))[:7].astype(np.float64)
    key(pygame.K_UP, down=False)
    q_after = policy.select_action(obs(q))[:7].astype(np.float64)
    np.testing.assert_allclose(q_after, q)  # released: no motion
    moved = forward_kinematics(q)[:3, 3] - p0
    np.testing.assert_allclose(moved, [5 * 0.1 * 0.1, 0, 0], atol=2e-3)  # 5 steps x 0.1 m/s x 0.1 s
    # joint mode, select joint 3 (two presses of "]"), move it down for 3 steps
    key(pygame.K_m)
    key(pygame.K_RIGHTBRACKET)
    key(pygame.K_RIGHTBRACKET)
    key(pygame.K_DOWN)
    q0 = q.copy()
    for _ in range(3):
        q = policy.select_action(obs(q))[:7].astype(np.float64)
    assert policy.mode == "joint" and policy.joint == 2
    expected = q0.copy()
    expected[2] -= 3 * 0.4 * 0.1
    np.testing.assert_allclose(q, expected, atol=1e-9)
    # gripper and the calibration events
    for k in (pygame.K_c, pygame.K_RETURN, pygame.K_TAB, pygame.K_s, pygame.K_ESCAPE):
        key(k)
    a = policy.select_action(obs(q))
    assert a[7] == 0.0 and policy.last_input.events == ["store", "next", "save", "quit"]
    policy.device.close()


def test_jog_stops_at_the_safety_boundary():
    limit_x = forward_kinematics(TARGETS["home"])[0, 3] + 0.02

    def is_safe(q):
        return forward_kinematics(q)[0, 3] <= limit_x

    policy = make_keyboard_policy(is_safe=is_safe)
    q = TARGETS["home"].copy()
    key(pygame.K_UP)
    for _ in range(10):
        q = policy.select_action(obs(q))[:7].astype(np.float64)
    assert forward_kinematics(q)[0, 3] <= limit_x
    assert forward_kinematics(q)[0, 3] > limit_x - 0.011  # it got there, then stopped
    policy.device.close()


def test_keyboard_rejects_unknown_keys_and_too_many_targets():
    with pytest.raises(ValueError, match="unknown key name"):
        Keyboard(["a"], keys={"home": "no-such-key"}, window=False)
    with pytest.raises(ValueError, match="snap keys"):
        Keyboard([f"t{i}" for i in range(7)], window=False)


# --- gamepad -------------------------------------------------------------------------------------------------
class FakeJoystick:
    def __init__(self, instance_id=3, n_axes=6):
        self.axes = [0.0] * n_axes
        self.iid = instance_id

    def get_instance_id(self):
        return self.iid

    def get_numaxes(self):
        return len(self.axes)

    def get_axis(self, i):
        return self.axes[i]


def button(b, instance_id=3):
    pygame.event.post(pygame.event.Event(pygame.JOYBUTTONDOWN, button=b, instance_id=instance_id, joy=0))


def hat(value, instance_id=3):
    pygame.event.post(pygame.event.Event(pygame.JOYHATMOTION, hat=0, value=value, instance_id=instance_id, joy=0))


def test_gamepad_buttons_snap_and_sticks_jog():
    js = FakeJoystick()
    cfg = OmegaConf.load(CONFIG_DIR / "teleop" / "gamepad.yaml")
    policy = make_teleop(cfg, TARGETS, joystick=js)
    assert isinstance(policy.device, Gamepad)
    q = TARGETS["home"].copy()
    button(1)  # B -> second pointing target
    button(1, instance_id=9)  # another pad: ignored
    policy.select_action(obs(q))
    assert policy.snapping_to == "right_bowl"
    button(8)  # hold: cancel the snap
    q = policy.select_action(obs(q))[:7].astype(np.float64)
    assert not policy.busy
    # left stick pushed forward (negative axis 1, inverted) beyond the dead zone -> +x
    js.axes[1] = -1.0
    p0 = forward_kinematics(q)[:3, 3]
    for _ in range(4):
        q = policy.select_action(obs(q))[:7].astype(np.float64)
    moved = forward_kinematics(q)[:3, 3] - p0
    assert moved[0] == pytest.approx(4 * 0.1 * 0.1, abs=2e-3) and abs(moved[1]) < 2e-3
    js.axes[1] = 0.1  # inside the dead zone
    q_still = policy.select_action(obs(q))[:7]
    np.testing.assert_allclose(q_still, q)
    hat((0, -1))  # d-pad down: close the gripper
    hat((1, 0))  # d-pad right: next target (calibration)
    button(10)  # store
    a = policy.select_action(obs(q))
    assert a[7] == 0.0 and policy.last_input.events == ["store", "next"]  # buttons, then hat events


def test_gamepad_drains_stick_events_and_stops_when_unplugged():
    # SDL drops new events once its queue holds 65535: stick motion (hundreds a second, read by get_axis)
    # must not accumulate, or button presses are lost after minutes of recording
    gp = Gamepad(["left_bowl"], joystick=FakeJoystick())
    for i in range(500):
        pygame.event.post(pygame.event.Event(pygame.JOYAXISMOTION, axis=i % 6, value=0.5, instance_id=3, joy=0))
    pygame.event.post(pygame.event.Event(pygame.KEYDOWN, key=pygame.K_a, mod=0, unicode="a", scancode=4))
    button(0)
    assert gp.poll().snap == "left_bowl"
    assert not pygame.event.peek(pygame.JOYAXISMOTION)
    assert pygame.event.get(pygame.KEYDOWN)  # not the pad's: left for whoever reads the keyboard
    pygame.event.post(pygame.event.Event(pygame.JOYDEVICEREMOVED, instance_id=9))  # another pad
    assert gp.poll().events == []
    pygame.event.post(pygame.event.Event(pygame.JOYDEVICEREMOVED, instance_id=3))
    assert gp.poll().events == ["quit"]  # the session stops (teleop quit) instead of jogging blind


def test_gamepad_config_errors_and_deadzone():
    assert deadzone(0.1, 0.15) == 0.0
    assert deadzone(1.0, 0.15) == pytest.approx(1.0)
    assert deadzone(-0.575, 0.15) == pytest.approx(-0.5)
    with pytest.raises(ValueError, match="axes"):
        Gamepad(["a"], axes={"z": 7}, joystick=FakeJoystick(n_axes=4))
    pygame.joystick.init()
    if pygame.joystick.get_count() == 0:
        with pytest.raises(RuntimeError, match="teleop=keyboard"):
            Gamepad(["a"])


def test_devices_start_only_the_pygame_parts_they_use():
    """Not the audio mixer: as root SDL runs its audio thread at nice -20, and in the control process it
    starved the 10 Hz loop on a loaded machine (steps of 0.5-3.5 s, camera stalls)."""
    pygame.quit()
    Keyboard(["a"], window=False)
    assert pygame.display.get_init() and not pygame.mixer.get_init()
    pygame.quit()
    pygame.joystick.init()
    if pygame.joystick.get_count() == 0:  # no pad here: the constructor fails after initialising pygame
        with pytest.raises(RuntimeError, match="not found"):
            Gamepad(["a"])
    else:
        Gamepad(["a"]).close()
    assert pygame.display.get_init() and not pygame.mixer.get_init()


# --- in the one control loop -----------------------------------------------------------------------------------
def test_teleop_policy_runs_in_the_control_loop_with_the_sim_arm():
    from robot.clock import SimClock
    from robot.control_loop import ControlLoop
    from robot.display_crop import DisplayCrop
    from robot.sim_arm import SimArm
    from robot.sim_camera import SimCamera

    clock = SimClock()
    corners = [[62, 27], [265, 41], [261, 150], [66, 160]]  # a small camera image keeps the test fast
    camera = SimCamera(lambda t: np.full((72, 128, 3), 40, np.uint8), clock, display_corners=corners,
                       raw_size=(180, 320))
    crop = DisplayCrop(corners, (224, 224), (180, 320))
    arm = SimArm(clock, q0=TARGETS["home"])
    policy = make_keyboard_policy()
    key(pygame.K_2)  # right bowl
    loop = ControlLoop(clock, camera, crop, arm, policy, instruction="teleop", period=0.1)
    result = loop.run(max_steps=40)
    assert result.n_steps == 40
    np.testing.assert_allclose(arm.state().q, TARGETS["right_bowl"], atol=0.01)
    policy.device.close()


def test_teleop_policy_rejects_bad_modes_and_unknown_targets():
    with pytest.raises(ValueError, match="mode"):
        TeleopPolicy(device=None, mode="cartesian")
    policy = make_keyboard_policy()
    policy.select_action(obs(Q_READY))
    with pytest.raises(KeyError, match="no target"):
        policy.snap("cup")
    policy.device.close()
