"""Chunk planning outside the step (robot/chunk_planner.py), deterministically: the tests wait for the async
planner's worker (`wait_idle`) or block its plans on Events, never on time. Step/action alignment, dropped
elapsed actions, holds and the late counter, worker failures raised in the main thread (and ending a control
loop), reset cancelling a plan, frames reaching the policy in order, a real tiny policy through the wrapper;
the delayed planner (simulated time) on the async planner's schedule, at any delay."""

import threading
from types import SimpleNamespace

import numpy as np
import pytest
from policy_helpers import INSTRUCTION, frames, tiny_policy

from moss_vla.config import compose_config
from robot.chunk_planner import AsyncChunkPlanner, DelayedChunkPlanner, PlannerError, make_controller
from robot.clock import SimClock
from robot.control_loop import ControlLoop
from robot.display_crop import DisplayCrop
from robot.fr3_kinematics import Q_READY
from robot.sim_arm import SimArm
from robot.sim_camera import SimCamera

N, H, A = 8, 16, 8
STATE = np.arange(A, dtype=np.float32) + 0.5  # never equal to a planned action below


def encoded(episode, step, obs):
    """Chunk planned from `step`: row j = [step, j, episode, 0...], so an action says where it came from."""
    chunk = np.zeros((H, A), np.float32)
    chunk[:, 0], chunk[:, 1], chunk[:, 2] = step, np.arange(H), episode
    return chunk


class FakePolicy:
    """A chunk policy that logs its calls. Its step counter is the number of observe calls since reset (the
    frames' order as it sees them); `gates[step]` blocks that step's plan until set (`waiting` is set while it
    does); `fail[step]` is raised by it."""

    config = SimpleNamespace(n_action_steps=N, action_dim=A)

    def __init__(self, chunk=encoded):
        self.chunk, self.log, self.gates, self.fail = chunk, [], {}, {}
        self.episode, self.seen = -1, 0
        self.waiting = threading.Event()

    def reset(self):
        self.episode, self.seen = self.episode + 1, 0
        self.log.append(("reset", self.episode))

    def observe(self, obs):
        self.log.append(("observe", obs.get("step")))
        self.seen += 1

    def plan(self, obs):
        step = self.seen - 1
        self.log.append(("plan", obs.get("step")))
        gate = self.gates.get(step)
        if gate is not None:
            self.waiting.set()
        if gate is not None and not gate.wait(5.0):
            raise AssertionError("the test never opened the gate: select_action must have waited for this plan")
        if step in self.fail:
            raise self.fail.pop(step)
        return self.chunk(self.episode, step, obs)


def obs(k):
    return {"image": np.full((4, 4, 3), k % 256, np.uint8), "state": STATE, "instruction": "x", "step": k}


def source(action):
    """(step the action's chunk was planned from, row), or None for the held starting state."""
    return None if np.array_equal(action, STATE) else (int(action[0]), int(action[1]))


@pytest.mark.parametrize("n,lead", [(N, 1), (N, 2), (N, 3), (4, 2)])  # (4, 2): moss-sim eval's n_action_steps=2
def test_chunk_from_step_s_supplies_step_s_plus_j_and_frames_arrive_in_order(n, lead):
    fake = FakePolicy()
    with AsyncChunkPlanner(fake, lead=lead, max_late_streak=10, n_steps=n) as planner:
        planner.reset()
        got = []
        for k in range(30):
            got.append(source(planner.select_action(obs(k))))
            assert planner.wait_idle(5.0)  # an instant planner: each chunk is there by the next step
        stats = planner.loop_stats()
    assert got[0] is None  # nothing planned yet at the episode's first step: hold the state
    period = n - lead  # a plan when the chunk in use has `lead` actions left, from that step's observation
    for k in range(1, 30):
        origin = period * ((k - 1) // period)
        assert got[k] == (origin, k - origin)  # row k - s of the chunk planned at step s
    plans = list(range(0, 30, period))
    expected = [("reset", 0)]
    for k in range(30):
        expected += [("observe", k)] + ([("plan", k)] if k in plans else [])
    assert fake.log == expected  # every frame once, in order; each plan right after its own frame
    assert stats["planner_late"] == 0 and stats["planner_start_holds"] == 1
    assert stats["plans"] == len(plans) and stats["plan_delay_steps"] == {"1": len(plans)}


def test_slow_plan_drops_elapsed_actions_then_holds_the_last_action_and_counts_it():
    fake = FakePolicy()
    fake.gates = {0: threading.Event(), 6: threading.Event()}
    with AsyncChunkPlanner(fake, lead=2, max_late_streak=10) as planner:
        planner.reset()
        got = [source(planner.select_action(obs(k))) for k in range(4)]
        assert got == [None] * 4  # the first plan is blocked: the starting state is held, no waiting
        fake.gates[0].set()
        assert planner.wait_idle(5.0)
        # the chunk from step 0 arrives at step 4: its actions 0..3 have elapsed and are dropped
        got = [source(planner.select_action(obs(k))) for k in range(4, 10)]
        # step 6 plans the next chunk (blocked): the old one lasts to step 7, then its last action is held
        assert got == [(0, 4), (0, 5), (0, 6), (0, 7), (0, 7), (0, 7)]
        assert planner.n_late == 2 and planner.n_start_holds == 4
        fake.gates[6].set()
        assert planner.wait_idle(5.0)
        assert source(planner.select_action(obs(10))) == (6, 4)
        stats = planner.loop_stats()
    assert stats["planner_late"] == 2 and stats["planner_longest_hold_streak"] == 4
    assert stats["plan_delay_steps"] == {"4": 2}


def test_a_long_hold_raises_planner_late():
    fake = FakePolicy()
    fake.gates = {0: threading.Event()}
    with AsyncChunkPlanner(fake, lead=2, max_late_streak=3) as planner:
        planner.reset()
        for k in range(3):
            planner.select_action(obs(k))
        with pytest.raises(PlannerError, match="planner late: no planned action for 4 steps"):
            planner.select_action(obs(3))
        fake.gates[0].set()


@pytest.mark.parametrize("failure", ["exception", "nan"])
def test_worker_failures_surface_in_the_main_thread_until_reset(failure):
    if failure == "exception":
        fake = FakePolicy()
        fake.fail = {6: RuntimeError("CUDA out of memory (pretend)")}
        match = "failed at step 6: RuntimeError: CUDA out of memory"
    else:
        def nan_at_6(episode, step, o):
            chunk = encoded(episode, step, o)
            chunk[3, 5] = np.nan if step == 6 and episode == 0 else chunk[3, 5]
            return chunk

        fake = FakePolicy(nan_at_6)
        match = "failed at step 6: non-finite action in the chunk planned from step 6"
    with AsyncChunkPlanner(fake, lead=2, max_late_streak=10) as planner:
        planner.reset()
        for k in range(7):
            planner.select_action(obs(k))
            assert planner.wait_idle(5.0)
        for k in (7, 8):  # raised on the next call, and on every call after it
            with pytest.raises(PlannerError, match=match):
                planner.select_action(obs(k))
        planner.reset()  # a new episode starts clean
        for k in range(8):
            planner.select_action(obs(k))
            assert planner.wait_idle(5.0)
        assert source(planner.select_action(obs(8))) == (6, 2)


def test_worker_exception_ends_the_control_loop_with_reason_controller():
    def hold_state(episode, step, o):
        return np.tile(np.asarray(o["state"], np.float32), (H, 1))

    fake = FakePolicy(hold_state)
    fake.fail = {6: RuntimeError("boom")}
    clock = SimClock()
    corners, raw = [[40, 20], [280, 30], [275, 160], [45, 165]], (180, 320)
    camera = SimCamera(lambda t: np.zeros((90, 160, 3), np.uint8), clock, corners, raw_size=raw)
    arm = SimArm(clock, Q_READY)
    with AsyncChunkPlanner(fake, lead=2, max_late_streak=10) as planner:
        planner.reset()
        loop = ControlLoop(clock, camera, DisplayCrop(corners, (32, 32), raw), arm, planner, "point")
        # waiting for the worker after each step makes the step the error shows up at deterministic
        result = loop.run(max_steps=50, on_step=[lambda info: planner.wait_idle(5.0)])
    assert result.reason == "controller" and result.n_steps == 7  # the step after the failed plan
    assert "PlannerError" in result.message and "step 6: RuntimeError: boom" in result.message
    summary = result.summary()
    assert summary["planner"] == "async" and summary["plans"] == 1 and summary["planner_start_holds"] == 1


def test_reset_cancels_the_pending_plan_and_the_queued_frames():
    fake = FakePolicy()
    fake.gates = {0: threading.Event()}
    with AsyncChunkPlanner(fake, lead=2, max_late_streak=10) as planner:
        planner.reset()
        for k in range(3):  # plan 0 blocks the worker; frames 1 and 2 wait behind it
            planner.select_action(obs(k))
        assert fake.waiting.wait(5.0)  # the worker is inside plan 0
        planner.reset()
        assert source(planner.select_action(obs(100))) is None  # new episode: holds, never the old chunk
        fake.gates[0].set()
        assert planner.wait_idle(5.0)
        action = planner.select_action(obs(101))
        assert source(action) == (0, 1) and action[2] == 1  # from the new episode's plan, not the old one
        assert planner.loop_stats()["plans"] == 1
        assert planner.wait_idle(5.0)
    # the running plan finished, the queued frames of the old episode were dropped, then the policy was reset
    assert fake.log == [("reset", 0), ("observe", 0), ("plan", 0), ("reset", 1), ("observe", 100), ("plan", 100),
                        ("observe", 101)]


def test_a_tiny_policy_through_the_planner_matches_its_own_observe_and_plan(one_thread):
    policy, reference = tiny_policy(inference_seed=0), tiny_policy(inference_seed=0)
    policy.eval()
    reference.eval()
    images = frames(20)
    state = np.linspace(-0.5, 0.5, 8, dtype=np.float32)
    with AsyncChunkPlanner(policy, lead=2, max_late_streak=10) as planner:
        planner.reset()
        got = []
        for im in images:
            got.append(planner.select_action({"image": im, "state": state, "instruction": INSTRUCTION}))
            assert planner.wait_idle(30.0)
    reference.reset()
    chunks = {}
    for k, im in enumerate(images):
        o = {"image": im, "state": state, "instruction": INSTRUCTION}
        reference.observe(o)
        if k % 6 == 0:  # lead 2 of 8: plans at steps 0, 6, 12, 18, each used from the next step on
            chunks[k] = reference.plan(o)
    np.testing.assert_array_equal(got[0], state)
    for k in range(1, 20):
        origin = 6 * ((k - 1) // 6)
        np.testing.assert_allclose(got[k], chunks[origin][k - origin], rtol=0, atol=1e-6)
    assert np.ptp(np.stack(got[1:]), axis=0).max() > 0  # the actions do change along the chunk


def test_select_action_is_observe_then_plan_every_n_action_steps(one_thread):
    policy, reference = tiny_policy(inference_seed=0), tiny_policy(inference_seed=0)
    state = np.zeros(8, np.float32)
    for p in (policy, reference):
        p.eval()
        p.reset()
    for k, im in enumerate(frames(10)):
        o = {"image": im, "state": state, "instruction": INSTRUCTION}
        reference.observe(o)
        if k % N == 0:
            chunk = reference.plan(o)
        assert chunk.shape == (H, A)
        np.testing.assert_array_equal(policy.select_action(o), chunk[k % N])


def test_make_controller_follows_the_planner_config():
    fake = FakePolicy()
    assert compose_config(["checkpoint=x"], "trial").planner.mode == "async"  # real-time trials default
    assert make_controller(fake, {"mode": "sync"}) is fake
    wrapped = make_controller(fake, {"mode": "async", "lead": 3, "max_late_streak": 4})
    try:
        assert isinstance(wrapped, AsyncChunkPlanner) and wrapped.lead == 3 and wrapped.max_late_streak == 4
    finally:
        wrapped.close()
    step_by_step = SimpleNamespace(reset=lambda: None, select_action=lambda o: STATE)  # nothing to plan
    assert make_controller(step_by_step, {"mode": "async", "lead": 2, "max_late_streak": 10}) is step_by_step
    with pytest.raises(ValueError, match="planner.mode"):
        make_controller(fake, {"mode": "threads"})
    # configs/trial.yaml is the one source of the planner's settings: none is defaulted in code
    with pytest.raises(ValueError, match=r"planner config: missing keys \['lead', 'max_late_streak'\].*trial.yaml"):
        make_controller(fake, {"mode": "async"})
    with pytest.raises(ValueError, match=r"planner config: missing keys \['mode'\]"):
        make_controller(fake, None)
    with pytest.raises(ValueError, match="lead must be in"):
        AsyncChunkPlanner(fake, lead=9, max_late_streak=10)
    # temporal ensembling happens inside select_action, which the async planner bypasses: refused, not skipped
    ensembling = FakePolicy()
    ensembling.config = SimpleNamespace(n_action_steps=1, action_dim=A, temporal_ensemble_coeff=0.01)
    with pytest.raises(ValueError, match=r"temporal_ensemble_coeff=0.01 .* planner.mode=sync"):
        make_controller(ensembling, {"mode": "async", "lead": 1, "max_late_streak": 10})
    assert make_controller(ensembling, {"mode": "sync"}) is ensembling


@pytest.mark.parametrize("n,lead", [(N, 1), (N, 2), (4, 2)])
def test_the_delayed_planner_at_delay_1_is_the_async_planner_with_an_instant_worker(n, lead):
    logs, actions = [], []
    for make in (lambda p: AsyncChunkPlanner(p, lead=lead, max_late_streak=10, n_steps=n),
                 lambda p: DelayedChunkPlanner(p, lead=lead, max_late_streak=10, delay=1, n_steps=n)):
        fake = FakePolicy()
        with make(fake) as planner:
            got = []
            for episode in range(2):  # reset between episodes
                planner.reset()
                for k in range(25):
                    got.append(planner.select_action(obs(k)))
                    if isinstance(planner, AsyncChunkPlanner):
                        assert planner.wait_idle(5.0)
            stats = planner.loop_stats()
        logs.append(fake.log)
        actions.append(np.stack(got))
        assert stats["plan_delay_steps"] == {"1": len(range(0, 24, n - lead))}  # the plan of step 24 comes too late
    assert logs[0] == logs[1]
    np.testing.assert_array_equal(actions[0], actions[1])


@pytest.mark.parametrize("delay", [2, 3, 5])
def test_a_delayed_chunk_drops_its_elapsed_actions_and_the_last_action_is_held_until_the_next(delay):
    fake = FakePolicy()
    lead, steps = 2, 40
    with DelayedChunkPlanner(fake, lead=lead, max_late_streak=10, delay=delay) as planner:
        planner.reset()
        got = [source(planner.select_action(obs(k))) for k in range(steps)]
        stats = planner.loop_stats()
    # the schedule worked out by hand: a plan at step s arrives at s + delay; the next plan is asked for once it
    # has arrived and has `lead` actions left (or none: at once), i.e. at max(s + delay, s + N - lead)
    plans, s = [], 0
    while s < steps:
        plans.append(s)
        s = max(s + delay, s + N - lead)
    expected = []
    for k in range(steps):
        arrived = [p for p in plans if p + delay <= k]
        if not arrived:
            expected.append(None)
        else:
            origin = arrived[-1]
            expected.append((origin, min(k - origin, N - 1)))  # past the chunk's end: its last action held
    assert got == expected
    late = sum(1 for k, e in enumerate(expected) if e is not None and k - e[0] >= N)
    assert stats["planner_late"] == late and stats["planner_start_holds"] == delay
    assert stats["planner_delay"] == delay and stats["plan_delay_steps"] == {str(delay): sum(p + delay < steps for p in plans)}
    assert (late > 0) == (delay > lead)  # a chunk outlasts the wait for the next only if delay <= lead


def test_delayed_planner_failures_raise_at_the_step_that_plans():
    fake = FakePolicy()
    fake.fail = {6: RuntimeError("boom")}
    planner = DelayedChunkPlanner(fake, lead=2, max_late_streak=10, delay=1)
    planner.reset()
    for k in range(6):
        planner.select_action(obs(k))
    with pytest.raises(PlannerError, match="failed at step 6: RuntimeError: boom"):
        planner.select_action(obs(6))
    planner.reset()  # a new episode: the plan of step 0 arrives at step 1
    assert [source(planner.select_action(obs(k))) for k in range(2)] == [None, (0, 1)]
    with pytest.raises(ValueError, match="delay must be >= 1"):
        DelayedChunkPlanner(fake, lead=2, max_late_streak=10, delay=0)
    with pytest.raises(ValueError, match="delay 4 must be below n_action_steps = 4: .* used up all its actions"):
        DelayedChunkPlanner(fake, lead=2, max_late_streak=10, delay=4, n_steps=4)


def test_make_controller_offers_the_modes_its_caller_can_run():
    fake = FakePolicy()
    delayed = make_controller(fake, {"mode": "delayed", "lead": 2, "max_late_streak": 10, "delay": 3},
                              modes=("sync", "delayed"), where="configs/sim_eval.yaml")
    assert isinstance(delayed, DelayedChunkPlanner) and (delayed.lead, delayed.delay) == (2, 3)
    with pytest.raises(ValueError, match=r"planner.mode must be one of \['sync', 'async'\] here, got 'delayed'"):
        make_controller(fake, {"mode": "delayed", "lead": 2, "max_late_streak": 10, "delay": 1})  # moss-trial's
    with pytest.raises(ValueError, match=r"one of \['sync', 'delayed'\] here, got 'async' \(configs/sim_eval.yaml\)"):
        make_controller(fake, {"mode": "async", "lead": 2, "max_late_streak": 10}, modes=("sync", "delayed"),
                        where="configs/sim_eval.yaml")
    with pytest.raises(ValueError, match=r"missing keys \['delay'\] \(the `planner` block of configs/sim_eval.yaml"):
        make_controller(fake, {"mode": "delayed", "lead": 2, "max_late_streak": 10}, modes=("sync", "delayed"),
                        where="configs/sim_eval.yaml")
