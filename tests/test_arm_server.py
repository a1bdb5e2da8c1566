"""The arm behind the network (robot/arm_server.py, moss-arm-server): RemoteArm drives a served SimArm and the real
franky client on franky-sim on loopback; the arm side runs its own safety checks; a silent or dropped client
stops the arm within a bounded time (the watchdog); one client at a time; a wrong token is refused."""

import socket
import time

import numpy as np
import pytest

from robot.arm_server import ArmServer, RemoteArm
from robot.clock import RealClock
from robot.fr3_kinematics import Q_READY
from robot.safety import ArmError, SafetyChecker, SafetyLimits, UnsafeTargetError
from robot.sim_arm import SimArm

# a watchdog 10x the stream's period (50 ms; 100 ms on franky-sim): a loaded 2-core machine never trips it early
WATCHDOG = 0.5
TIMEOUT = 5.0  # the client's reply timeout


@pytest.fixture
def sim_server():
    arm = SimArm(RealClock(), Q_READY, safety=SafetyChecker(SafetyLimits()))
    server = ArmServer(arm, host="127.0.0.1", port=0, watchdog_s=WATCHDOG, token="secret").start()
    yield server
    server.stop()


def stream(arm, n, step=0.01, period=0.05):
    q = arm.state().q
    for k in range(n):
        q = q + step * np.array([1, 0, 0, 1, 0, 0, 1])
        arm.command(q)
        time.sleep(period)
    return q


def wait_still(arm, limit, tol=1e-3):
    """Seconds until the joints stop moving (positions 50 ms apart, as rad/s; franky-sim's reported dq stays
    at a few 0.01 rad/s on a held arm), or None if they still move after `limit` s."""
    t0 = time.monotonic()
    q = arm.state().q
    while time.monotonic() - t0 < limit:
        time.sleep(0.05)
        q, q_before = arm.state().q, q
        if np.abs(q - q_before).max() / 0.05 < tol:
            return time.monotonic() - t0
    return None


def test_remote_arm_drives_the_served_sim_arm_and_the_arm_side_checks_run(sim_server):
    arm = RemoteArm(sim_server.address, timeout=TIMEOUT, token="secret", serves="sim")
    assert arm.watchdog_s == WATCHDOG and arm.serves == "sim"
    q0 = arm.state().q
    np.testing.assert_allclose(q0, Q_READY, atol=1e-9)
    q = stream(arm, 5)
    arm.stop()  # stops streaming: the watchdog is not armed while the client is quiet
    time.sleep(0.3)
    np.testing.assert_allclose(arm.state().q, sim_server.arm.state().q, atol=1e-3)  # the same arm
    assert np.abs(arm.state().q - q).max() < 0.01  # it followed the stream
    # the served arm's own checks refuse a jump past max_step (nothing moves), and a non-finite target
    with pytest.raises(UnsafeTargetError, match="step"):
        arm.command(q + 0.5)
    with pytest.raises(UnsafeTargetError, match="7 finite"):
        arm.command(np.full(7, np.nan))
    assert sim_server.errors == 2
    arm.command(q)  # still usable
    arm.close()


def test_wrong_token_and_a_second_client_are_refused(sim_server, ws_connections):
    from websockets.protocol import State

    with pytest.raises(ArmError, match="token"):
        RemoteArm(sim_server.address, timeout=TIMEOUT, token="nope")
    first = RemoteArm(sim_server.address, timeout=TIMEOUT, token="secret")
    with pytest.raises(ArmError, match="another client"):  # refused, the server keeps the connection open
        RemoteArm(sim_server.address, timeout=TIMEOUT, token="secret")
    first.state()  # the first client is not disturbed
    with pytest.raises(ArmError, match="drives arm=sim"):
        first.close()
        RemoteArm(sim_server.address, timeout=TIMEOUT, token="secret", serves="franka")
    assert len(ws_connections) == 4
    assert [c.state for c in ws_connections] == [State.CLOSED] * 4  # no refused connection left open
    with pytest.raises(ValueError, match="arm.address='nope'"):
        RemoteArm("nope", timeout=TIMEOUT)


def test_watchdog_stops_a_silent_client_within_its_bound_and_refuses_to_resume(sim_server):
    arm = RemoteArm(sim_server.address, timeout=TIMEOUT, token="secret")
    stream(arm, 6, step=0.02)  # moving at ~0.4 rad/s
    t_last = time.monotonic()
    while not sim_server.stops:  # the client stays connected but says nothing
        assert time.monotonic() - t_last < WATCHDOG + 2.0, "the watchdog did not stop the arm"
        time.sleep(0.005)
    stop = sim_server.stops[0]
    assert stop["why"].startswith("watchdog") and WATCHDOG <= stop["silence_s"] <= WATCHDOG + 1.0
    assert wait_still(sim_server.arm, 1.0) is not None
    with pytest.raises(ArmError, match="recover") as e:  # no silent resume
        arm.command(arm.state().q)
    assert e.value.kind == "watchdog"
    arm.recover()
    arm.command(arm.state().q)
    arm.close()


def test_a_dropped_connection_stops_the_sim_arm_at_once(sim_server):
    arm = RemoteArm(sim_server.address, timeout=TIMEOUT, token="secret")
    stream(arm, 6, step=0.02)
    t0 = time.monotonic()
    arm._ws.socket.shutdown(socket.SHUT_RDWR)  # the client's machine goes away: no close frame
    while not sim_server.stops:
        assert time.monotonic() - t0 < WATCHDOG + 2.0
        time.sleep(0.005)
    assert "disconnected" in sim_server.stops[0]["why"]  # the connection's end, not the watchdog's silence
    assert wait_still(sim_server.arm, 1.0) is not None
    RemoteArm(sim_server.address, timeout=TIMEOUT, token="secret").close()  # the next client may connect


def test_only_the_controlling_client_feeds_the_watchdog_and_a_trip_outlasts_a_reconnect(sim_server):
    from websockets.sync.client import connect

    from moss_vla.wire import encode

    arm = RemoteArm(sim_server.address, timeout=TIMEOUT, token="secret")
    stream(arm, 4)
    t_last = time.monotonic()
    with connect(f"ws://{sim_server.address}") as other:  # another connection keeps talking (refused, no hello)
        while not sim_server.stops:
            assert time.monotonic() - t_last < WATCHDOG + 2.0, "another connection's messages fed the watchdog"
            other.send(encode({"op": "state", "seq": 1}))
            other.recv(timeout=TIMEOUT)
            time.sleep(0.02)
    assert sim_server.stops[0]["why"].startswith("watchdog")
    arm.close()  # the client goes and comes back: the trip stays until recover
    arm = RemoteArm(sim_server.address, timeout=TIMEOUT, token="secret")
    with pytest.raises(ArmError, match="recover") as e:
        arm.command(arm.state().q)
    assert e.value.kind == "watchdog"
    arm.recover()
    arm.command(arm.state().q)
    arm.close()


def test_garbage_gets_an_error_and_the_server_goes_on(sim_server):
    from websockets.sync.client import connect

    from moss_vla.wire import decode, encode

    with connect(f"ws://{sim_server.address}") as ws:
        for junk in (b"\x00\x01", "text", encode({"op": "command", "seq": 1}, {"q": np.zeros(7)})):
            ws.send(junk)
            header, _ = decode(ws.recv(timeout=2))
            assert header["op"] == "error"
    RemoteArm(sim_server.address, timeout=TIMEOUT, token="secret").close()


@pytest.fixture(scope="module")
def franka(franky_sim):
    """One franky client for the module (a second Robot connection to franky-sim ends the process)."""
    from robot.franka_arm import FrankaArm

    return FrankaArm("127.0.0.1", gripper=False, relative_dynamics_factor=0.5)


def test_franky_sim_behind_the_arm_server_dropped_client_stops_the_arm(franka):
    server = ArmServer(franka, host="127.0.0.1", port=0, watchdog_s=WATCHDOG).start()
    try:
        arm = RemoteArm(server.address, timeout=TIMEOUT, serves="franka")
        q_start = arm.state().q
        stream(arm, 8, step=0.03, period=0.1)  # ~0.3 rad/s on three joints
        assert np.abs(arm.state().q - q_start).max() > 0.1  # it moved
        assert np.abs(franka.state().dq).max() > 0.05  # and is moving when the client goes
        t0 = time.monotonic()
        arm._ws.socket.shutdown(socket.SHUT_RDWR)
        still = wait_still(franka, 3.0, tol=0.01)
        assert server.stops and "disconnected" in server.stops[0]["why"]
        assert still is not None and still < 1.5, f"the arm still moved {time.monotonic() - t0:.2f} s after the drop"
        # a silent (still connected) client: the watchdog stops a streaming arm within its bound
        arm2 = RemoteArm(server.address, timeout=TIMEOUT)
        stream(arm2, 6, step=-0.03, period=0.1)
        t_last = time.monotonic()
        while len(server.stops) < 2:
            assert time.monotonic() - t_last < WATCHDOG + 2.0
            time.sleep(0.005)
        assert server.stops[1]["why"].startswith("watchdog")
        assert wait_still(franka, 3.0, tol=0.01) is not None
        arm2.close()
    finally:
        server.stop()


def test_franka_stream_velocity_targets_pass_through_and_end_at_rest(franka):
    """arm.target_velocity=stream: targets carry the stream's velocity (zero at a start, capped by max_step per
    period); the arm follows and comes to rest on the last target once the stream holds it."""
    franka.target_velocity = "stream"
    franka.stop()  # a new stream
    q0 = franka.state().q
    assert not franka._stream_velocity(q0 + 0.05, time.monotonic()).any()  # a stream starts from rest
    q = q0.copy()
    for _ in range(8):
        q = q + 0.03 * np.array([1, 0, 0, 1, 0, 0, 1])
        franka.command(q)
        time.sleep(0.1)
    v = franka._stream_velocity(q + 0.03, franka._last_sent + 0.1)
    np.testing.assert_allclose(v, 0.3, atol=1e-9)  # the step over the period
    assert np.abs(franka._stream_velocity(q + 0.5, franka._last_sent + 0.1)).max() == pytest.approx(1.0)  # capped
    for _ in range(10):  # the stream holds the last target: velocity 0, the arm settles on it
        franka.command(q)
        time.sleep(0.1)
    assert np.abs(franka.state().q - q).max() < 0.01 and wait_still(franka, 2.0, tol=0.01) is not None
    franka.stop()
    franka.target_velocity = "zero"


def test_remote_arm_clips_on_this_side_so_the_served_arm_accepts_the_stream(sim_server):
    """moss-trial sets arm.safety.mode=clip: with arm=remote the client rate-limits the policy's targets against
    the stream the server sees, and the server's own reject-mode checks pass every one of them."""
    clip = SafetyChecker(SafetyLimits(mode="clip"))
    arm = RemoteArm(sim_server.address, timeout=TIMEOUT, token="secret", safety=clip)
    q = arm.state().q
    for _ in range(4):  # each asks for 0.3 rad on joint 1, three times max_step (state first, like the loop)
        arm.state()
        arm.command(q + np.array([0.3, 0, 0, 0, 0, 0, 0]))
        q = q + np.array([0.1, 0, 0, 0, 0, 0, 0])
        time.sleep(0.05)
    assert sim_server.errors == 0 and clip.n_clipped == 4
    np.testing.assert_allclose(sim_server.arm._last_target, q, atol=1e-9)  # the server got the clipped stream
    arm.stop()  # a new stream starts from the measured joints, on both sides
    arm.command(arm.state().q + 0.05)
    assert sim_server.errors == 0
    arm.close()


def test_move_to_homes_the_served_sim_arm_and_refuses_an_unsafe_goal(sim_server):
    arm = RemoteArm(sim_server.address, timeout=TIMEOUT, token="secret")
    goal = Q_READY + np.array([0.3, -0.2, 0.1, 0.2, 0, 0.1, -0.3])
    assert arm.move_to(goal, relative_dynamics_factor=0.5, timeout=10.0)
    np.testing.assert_allclose(arm.state().q, goal, atol=1e-3)
    with pytest.raises(UnsafeTargetError, match="joint 4 goal"):
        arm.move_to(np.array([0, 0, 0, 0.5, 0, 1.5, 0]))  # FR3 joint 4 is always negative
    arm.close()


def test_sim_arm_move_to_on_simulated_time_honours_its_factor_and_a_stop_request():
    from robot.clock import SimClock

    clock = SimClock()
    arm = SimArm(clock, Q_READY, safety=SafetyChecker(SafetyLimits()))
    goal = Q_READY + np.array([0.8, 0, 0, 0, 0, 0, 0])
    assert arm.move_to(goal)
    fast = clock.now()
    np.testing.assert_allclose(arm.state().q, goal, atol=1e-3)
    t0 = clock.now()
    assert arm.move_to(Q_READY, relative_dynamics_factor=0.25)
    assert clock.now() - t0 > 2 * fast  # a quarter of the speed and acceleration takes longer
    assert arm.dq_max[0] == pytest.approx(SimArm(clock, Q_READY).dq_max[0])  # the limits are restored
    t1 = clock.now()
    assert not arm.move_to(goal, should_stop=lambda: clock.now() - t1 > 0.2)
    assert 0.01 < np.abs(arm.state().q - Q_READY).max() < 0.6  # stopped on the way
    with pytest.raises(ArmError, match="relative_dynamics_factor"):
        arm.move_to(goal, relative_dynamics_factor=2.0)
    with pytest.raises(ArmError, match="within 0.1 s"):
        arm.move_to(goal, timeout=0.1)


def test_moss_trial_runs_its_episodes_on_a_served_sim_arm(sim_server, tmp_path, one_thread):
    """The split on one machine (docs/rig.md section 4): moss-trial arm=remote against moss-arm-server arm=sim
    homes the served arm before each episode (move_to), streams the policy's targets, and ends each episode."""
    from moss_vla.config import compose_config
    from rig.sim_eval import untrained_checkpoint
    from rig.trial_cli import run_trials

    ckpt = untrained_checkpoint(tmp_path / "ckpt", "movesense_lr.yaml", "tiny")
    cfg = compose_config([f"checkpoint={ckpt}", "task=movesense_lr", "trials=2", "camera=sim", "arm=remote",
                          f"arm.address={sim_server.address}", "arm.serves=sim", "arm.token=secret", f"eval_dir={tmp_path / 'trials'}",
                          f"display.log_dir={tmp_path}", "loop.max_missed_streak=1000", "task.n_patterns=1",
                          "task.pause=[0.3,0.3]", "task.motion_duration=[1.5,1.5]", "task.hold=[1.2,1.2]",
                          "progress=false"], "trial")
    report = run_trials(cfg)
    assert report["arm"] == "remote" and report["trials"] == 2
    assert [e["loop_end"] for e in report["episode_log"]] == ["episode_done"] * report["episodes"]
    assert sim_server.errors == 0
    home = np.asarray(sim_server.arm.state().q)
    assert np.abs(home - Q_READY).max() > 1e-3  # homed to the task's rest pose, not left where it started
