"""Real-time chunking (moss_vla/rtc.py, `planner.rtc`): our guided Euler step is lerobot's RTC step in our flow
time; at delay d a tiny policy's chunks keep the actions executed while they were planned and jump less where
they take over; RTC off samples exactly as before; policies and modes that cannot do it refuse, naming
planner.rtc.enabled; a policy served by moss-serve takes the request over the wire."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from lerobot.policies.rtc.modeling_rtc import RTCProcessor
from policy_helpers import INSTRUCTION, frames, tiny_policy

from moss_vla.config import compose_config
from moss_vla.groot_n15.policy import GrootN15Policy
from moss_vla.policy.lerobot_adapter import LeRobotPolicy
from moss_vla.remote_policy import RemotePolicy, RemotePolicyError
from moss_vla.rtc import RTCRequest, guided_velocity, make_guide, rtc_settings
from moss_vla.serve import PolicyServer
from moss_vla.wire import decode, encode
from robot.chunk_planner import DelayedChunkPlanner, make_controller

pytestmark = pytest.mark.usefixtures("one_thread")


PLANNER = dict(compose_config(["checkpoint=x"], "sim_eval").planner)  # configs/sim_eval.yaml's planner block


def settings(enabled: bool = True, **changes) -> object:
    """configs' planner.rtc settings (lerobot's RTCConfig), with `changes`."""
    return rtc_settings({**PLANNER["rtc"], **changes, "enabled": enabled})


@pytest.fixture(scope="module")
def line_policy():
    """A tiny policy whose head learnt (a few hundred steps, head only) chunks that are straight lines with a
    random start and slope: smooth chunks that differ from sample to sample, as a trained policy's do."""
    torch.manual_seed(0)
    torch.set_num_threads(1)
    policy = tiny_policy()
    cfg = policy.config
    H, A, T, S = cfg.action_head.horizon, cfg.action_dim, cfg.n_frames, cfg.input_image_size
    with torch.no_grad():
        ims = torch.from_numpy(np.stack(frames(8 * T, seed=5))).permute(0, 3, 1, 2).float() / 255
        vl, mask = policy.encode(ims.view(8, T, 3, S, S), INSTRUCTION)
    head = policy.action_head.train()
    opt = torch.optim.Adam(head.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(0)
    ramp = torch.linspace(0, 1, H)[None, :, None]
    for _ in range(300):
        i = torch.randint(0, 8, (32,), generator=g)
        lines = (torch.rand(32, 1, A, generator=g) - 0.5) + (torch.rand(32, 1, A, generator=g) - 0.5) * ramp
        loss = head.loss(vl[i], mask[i], torch.zeros(32, cfg.state_dim), lines, torch.zeros(32, H, dtype=torch.bool))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return policy.eval()


def run(policy, delay: int, rtc=None, steps: int = 60, seed: int = 0) -> tuple[np.ndarray, DelayedChunkPlanner]:
    """`steps` steps of the delayed planner (lead 3) on random frames; the actions and the planner."""
    torch.manual_seed(seed)
    state = np.zeros(8, np.float32)
    with DelayedChunkPlanner(policy, lead=3, max_late_streak=10, delay=delay, rtc=rtc) as planner:
        planner.reset()
        actions = [planner.select_action({"image": im, "state": state, "instruction": INSTRUCTION})
                   for im in frames(steps, seed=seed)]
    assert planner.n_late == 0
    return np.stack(actions), planner


def test_our_guided_step_is_lerobots_rtc_step_with_time_and_velocity_converted():
    """lerobot's denoise_step (time 1 -> 0, velocity noise - actions, its autograd correction) and ours (time
    0 -> 1, velocity actions - noise, no autograd) give the same step, for each schedule and cut horizon."""
    g = torch.Generator().manual_seed(0)
    B, H, A, steps = 2, 16, 8, 4
    x, v = torch.randn(B, H, A, generator=g), torch.randn(B, H, A, generator=g)
    for schedule, delay, horizon, n in [("LINEAR", 2, 8, 10), ("EXP", 1, 12, 16), ("ZEROS", 3, 8, 5), ("ONES", 2, 6, 9)]:
        rtc = settings(prefix_attention_schedule=schedule, execution_horizon=horizon, max_guidance_weight=4.0)
        prefix = torch.randn(B, n, A, generator=g)
        guide = make_guide(RTCRequest(np.zeros((n, A), np.float32), delay, rtc), prefix, H, steps)
        for step in range(steps):
            t = step / steps
            ours = guided_velocity(x, v, t, guide, step)
            theirs = RTCProcessor(rtc).denoise_step(x, prefix, delay, 1.0 - t, lambda x_t: -v, horizon)
            torch.testing.assert_close(ours, -theirs, rtol=1e-5, atol=1e-5)
        assert (guided_velocity(x, v, 0.0, guide, 0) - v).abs().max() > 0.5  # the correction is not nothing
    # the weights: 1 on the delay, falling over the prefix to the horizon (cut to the prefix's length), 0 after
    w = make_guide(RTCRequest(np.zeros((5, A), np.float32), 2, settings(execution_horizon=8)),
                   torch.zeros(5, A), H, steps).weights.flatten()
    np.testing.assert_allclose(w.numpy(), [1, 1, 0.75, 0.5, 0.25] + [0] * 11, atol=1e-6)


def test_rtc_off_samples_exactly_as_before(line_policy):
    """Disabled (or absent) RTC calls plan(obs) as before: the same actions bit for bit; a guide with zero
    weights (eager and traced sampler) adds exactly nothing to the velocity."""
    plain, _ = run(line_policy, 2)
    off, planner = run(line_policy, 2, settings(enabled=False))
    np.testing.assert_array_equal(plain, off)
    assert planner.rtc is None and planner.loop_stats()["planner_rtc"] is False
    with torch.no_grad():
        vl, mask = torch.randn(1, 20, 32), torch.ones(1, 20, dtype=torch.bool)
        state = torch.zeros(1, 8)
        head = line_policy.action_head
        request = RTCRequest(np.ones((10, 8), np.float32), 2, settings())
        guide = make_guide(request, torch.ones(10, 8), 16, 4)
        zero = guide._replace(weights=torch.zeros_like(guide.weights))
        guided = {}
        try:
            for traced in (False, True):
                head.torchscript = traced
                unguided = head.sample(vl, mask, state, seed=3)
                assert torch.equal(head.sample(vl, mask, state, seed=3, guide=zero), unguided)
                guided[traced] = head.sample(vl, mask, state, seed=3, guide=guide)
                assert (guided[traced] - unguided).abs().max() > 0.1
        finally:
            head.torchscript = line_policy.config.torchscript_sampler
        assert (guided[True] - guided[False]).abs().max() < 1e-5  # the traced guided sampler is the eager one


@pytest.mark.parametrize("delay", [1, 2, 3])
def test_rtc_at_delay_d_keeps_the_executed_prefix_and_shrinks_the_boundary_jump(line_policy, delay):
    """Each guided chunk's first d actions (run from the previous chunk while it was planned) are the previous
    chunk's, much closer than the same noise sampled unguided; the jump where a chunk takes over shrinks to
    the size of a step within a chunk."""
    record = []
    plan = line_policy.plan

    def both(obs, rtc=None):  # the guided chunk, and the unguided one from the same noise (same RNG state)
        rng = torch.get_rng_state()
        unguided = plan(obs)
        torch.set_rng_state(rng)
        guided = plan(obs, rtc=rtc)
        if rtc is not None:
            record.append((rtc.prefix[:rtc.delay], guided[:rtc.delay], unguided[:rtc.delay]))
        return guided

    line_policy.plan = both
    try:
        _, guided = run(line_policy, delay, settings())
    finally:
        del line_policy.plan
    _, plain = run(line_policy, delay)
    assert len(record) >= len(guided.boundary_jumps) >= 8  # every plan after the first is guided
    for prefix, got, unguided in record:
        assert np.abs(got - prefix).max() < 0.35 * np.abs(unguided - prefix).max()
    off, on = np.mean(plain.boundary_jumps), np.mean(guided.boundary_jumps)
    within = np.mean(guided.within_steps)
    assert on < 0.6 * off and on < 2 * within < off
    assert guided.loop_stats()["boundary_jump_mean"] == pytest.approx(on)


def test_the_prefix_is_the_chunk_in_use_from_the_plans_step_with_held_steps_held():
    """The request carries the whole planned chunk from the plan's step on (past n_action_steps), and a step of
    the delay that the chunk in use no longer covers holds its last used action, as the planner will."""
    requests = []

    class Policy:
        config = SimpleNamespace(n_action_steps=4, action_dim=1)
        supports_rtc = True

        def reset(self) -> None: ...

        def observe(self, obs) -> None: ...

        def plan(self, obs, rtc=None):
            requests.append(rtc)
            return np.arange(obs["step"], obs["step"] + 8, dtype=np.float32)[:, None]

    with DelayedChunkPlanner(Policy(), lead=1, max_late_streak=10, delay=3, rtc=settings()) as planner:
        planner.reset()
        for k in range(8):
            planner.select_action({"step": 100 * k, "state": np.zeros(1, np.float32)})
    assert requests[0] is None  # no chunk before the first
    # plan at step 3 (1 action left of the chunk from step 0, which arrived at step 3): delay 3 > lead 1
    r = requests[1]
    assert r.delay == 3 and r.prefix[:, 0].tolist() == [3, 3, 3, 6, 7]
    assert planner.loop_stats()["planner_late"] > 0


def test_policies_and_modes_that_cannot_do_rtc_refuse_naming_the_setting(line_policy):
    block = {**PLANNER, "mode": "delayed", "rtc": {**PLANNER["rtc"], "enabled": True}}
    planner = make_controller(line_policy, block, modes=("sync", "delayed"))
    assert isinstance(planner, DelayedChunkPlanner) and planner.rtc.max_guidance_weight == 4.0
    # a lerobot policy: refused when the planner is built, and by its own plan
    lerobot = SimpleNamespace(reset=lambda: None, observe=lambda o: None, plan=lambda o: None,
                              config=SimpleNamespace(n_action_steps=8, action_dim=8, temporal_ensemble_coeff=None))
    with pytest.raises(ValueError, match=r"planner.rtc.enabled=true: SimpleNamespace cannot .* set planner.rtc.enabled=false"):
        make_controller(lerobot, block, modes=("sync", "delayed"))
    request = RTCRequest(np.zeros((4, 8), np.float32), 1, settings())
    assert LeRobotPolicy.supports_rtc is False and GrootN15Policy.supports_rtc is False
    with pytest.raises(ValueError, match=r"planner.rtc.enabled: lerobot's act policy"):
        LeRobotPolicy.plan(SimpleNamespace(config=SimpleNamespace(type="act")), {}, rtc=request)
    with pytest.raises(ValueError, match=r"planner.rtc.enabled: model=groot_n15"):
        GrootN15Policy.sample_from_features(None, None, None, None, None, rtc=request)
    # sync: the chunk is used at once, nothing to stay with
    with pytest.raises(ValueError, match=r"planner.rtc.enabled=true needs planner.mode in \['async', 'delayed'\]"):
        make_controller(line_policy, {**block, "mode": "sync"}, modes=("sync", "delayed"))
    with pytest.raises(ValueError, match=r"prefix_attention_schedule must be one of"):
        make_controller(line_policy, {**block, "rtc": {**block["rtc"], "prefix_attention_schedule": "cosine"}},
                        modes=("sync", "delayed"))
    with pytest.raises(ValueError, match=r"the previous chunk has actions of 3 values"):
        line_policy.plan({"state": np.zeros(8, np.float32), "instruction": INSTRUCTION},
                         rtc=RTCRequest(np.zeros((4, 3), np.float32), 1, settings()))


def test_a_served_policy_takes_the_rtc_request_over_the_wire(line_policy):
    """planner.remote: the plan message carries the request (header + the prefix array), and the served chunk
    equals the in-process one bit for bit; a server whose policy cannot do RTC says so in hello, and the
    planner refuses; a malformed request is a protocol error."""
    request = RTCRequest(np.linspace(-0.3, 0.3, 80, dtype=np.float32).reshape(10, 8), 2, settings())
    obs = {"image": frames(1)[0], "state": np.zeros(8, np.float32), "instruction": INSTRUCTION}
    torch.manual_seed(4)
    line_policy.reset()
    line_policy.observe(obs)
    want = line_policy.plan(obs, rtc=request)
    assert np.abs(want - line_policy.plan(obs)).max() > 1e-3  # the request changes the chunk
    server = PolicyServer(line_policy, host="127.0.0.1", port=0).start()
    try:
        client = RemotePolicy(server.address, timeout=30.0)
        assert client.supports_rtc
        torch.manual_seed(4)
        client.reset()
        client.observe(obs)
        np.testing.assert_array_equal(client.plan(obs, rtc=request), want)
        # a request without its prefix array: protocol error, the connection is dropped
        from websockets.sync.client import connect

        with connect(f"ws://{server.address}", max_size=None) as ws:
            ws.send(encode({"op": "hello", "token": None, "settings": {}}))
            decode(ws.recv(timeout=10))
            for seq, op in enumerate(("reset", "observe"), 1):
                arrays = {"image": obs["image"], "state": obs["state"]} if op == "observe" else None
                ws.send(encode({"op": op, "seq": seq, "seed": 0, "instruction": INSTRUCTION}, arrays))
                decode(ws.recv(timeout=30))
            ws.send(encode({"op": "plan", "seq": 3, "instruction": INSTRUCTION, "rtc": request.header()},
                           {"state": obs["state"]}))
            reply, _ = decode(ws.recv(timeout=30))
            assert reply["op"] == "error" and reply["kind"] == "protocol" and "rtc_prefix" in reply["message"]
        client.close()
        line_policy.supports_rtc = False  # as a served lerobot / groot_n15 policy
        refused = RemotePolicy(server.address, timeout=30.0)
        assert not refused.supports_rtc
        block = {**PLANNER, "mode": "delayed", "rtc": {**PLANNER["rtc"], "enabled": True}}
        with pytest.raises(ValueError, match=r"planner.rtc.enabled=true: RemotePolicy cannot"):
            make_controller(refused, block, modes=("delayed",))
        with pytest.raises(RemotePolicyError, match=r"planner.rtc.enabled: the policy served .* takes no"):
            refused.plan(obs, rtc=request)
        refused.close()
    finally:
        del line_policy.supports_rtc
        server.stop()
