"""The policy server (moss_vla/serve.py, moss-serve) and its client (moss_vla/remote_policy.py), on loopback:
remote plans equal in-process ones bit for bit, sessions keep their own streaming state, malformed /
oversized / out-of-order messages and a wrong token get their error without disturbing another session,
moss-sim eval with planner.remote gives the in-process results, and a server killed mid-trial ends that trial
with its reason while the next episode reconnects."""

import json
import logging
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from moss_vla.config import compose_config
from moss_vla.policy import MossVLAPolicy
from moss_vla.remote_policy import RemotePolicy, RemotePolicyError
from moss_vla.serve import PolicyServer
from moss_vla.wire import decode, encode
from rig.sim_eval import untrained_checkpoint

SHORT = ["task.n_patterns=1", "task.pause=[0.3,0.3]", "task.motion_duration=[1.5,1.5]", "task.hold=[1.2,1.2]",
         "progress=false"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return untrained_checkpoint(tmp_path_factory.mktemp("serve") / "ckpt", "movesense_lr.yaml", "tiny")


@pytest.fixture
def server(ckpt, one_thread):
    s = PolicyServer(MossVLAPolicy.from_pretrained(ckpt).eval(), host="127.0.0.1", port=0, token="t0k").start()
    yield s
    s.stop()


def remote(server, **kw):
    return RemotePolicy(server.address, **{"token": "t0k", "timeout": 30.0, **kw})


def observations(seed, n, size=224):
    rng = np.random.default_rng(seed)
    return [{"image": rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
             "state": rng.normal(0, 0.01, 8).astype(np.float32), "instruction": "point left"} for _ in range(n)]


def chunks(policy, obs, seed):
    torch.manual_seed(seed)
    policy.reset()
    out = []
    for o in obs:
        policy.observe(o)
        out.append(policy.plan(o))
    return np.stack(out)


def test_remote_plans_equal_in_process_and_sessions_keep_their_own_state(ckpt, server):
    local = MossVLAPolicy.from_pretrained(ckpt).eval()
    obs_a, obs_b = observations(1, 6), observations(2, 6)
    want_a, want_b = chunks(local, obs_a, 11), chunks(local, obs_b, 12)
    a, b = remote(server), remote(server)
    assert a.session != b.session and a.config.n_action_steps == local.config.n_action_steps
    torch.manual_seed(11)
    a.reset()
    torch.manual_seed(12)
    b.reset()
    got_a, got_b = [], []
    for oa, ob in zip(obs_a, obs_b, strict=True):  # interleaved: each session sees only its own frames and RNG
        a.observe(oa)
        b.observe(ob)
        got_b.append(b.plan(ob))
        got_a.append(a.plan(oa))
    np.testing.assert_array_equal(np.stack(got_a), want_a)
    np.testing.assert_array_equal(np.stack(got_b), want_b)
    # select_action (a sync controller), with this session's own n_action_steps
    local.config = type(local.config)(**{**local.config.__dict__, "n_action_steps": 3})
    c = remote(server, settings={"n_action_steps": 3})
    acted = []
    for pol in (local, c):  # one after the other: the in-thread server shares this process's torch RNG
        torch.manual_seed(5)
        pol.reset()
        acted.append(np.stack([pol.select_action(o) for o in obs_a]))
    np.testing.assert_array_equal(acted[1], acted[0])
    stats = a.loop_stats()
    assert stats["remote_requests"] == 13 and stats["remote_failures"] == 0 and stats["remote_rtt_ms_p99"] > 0


def raw_call(ws, message):
    ws.send(message)
    return decode(ws.recv(timeout=5))[0]


def test_bad_messages_get_errors_and_never_disturb_another_session(ckpt, server):
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    local = MossVLAPolicy.from_pretrained(ckpt).eval()
    obs = observations(3, 4)
    want = chunks(local, obs, 7)
    good = remote(server)
    torch.manual_seed(7)
    good.reset()
    got = []
    with connect(f"ws://{server.address}", max_size=None) as ws:
        bad = [b"\x01\x02", "text", b"\xff\xff\x00\x00garbage", encode({"op": "observe", "seq": 1}),  # before hello
               b"\x00" * (server.max_message + 1)]  # oversized (under the transport's cut)
        for i, message in enumerate(bad):
            reply = raw_call(ws, message)
            assert reply["op"] == "error", reply
            if i < 4:  # the good session goes on in between
                good.observe(obs[i])
                got.append(good.plan(obs[i]))
        assert "over the limit" in reply["message"]
        assert raw_call(ws, encode({"op": "hello", "token": "t0k"}))["op"] == "hello"
        assert "out of order" in raw_call(ws, encode({"op": "reset", "seq": 5}))["message"]
        assert raw_call(ws, encode({"op": "reset", "seq": 1}))["op"] == "ok"
        reply = raw_call(ws, encode({"op": "plan", "seq": 2, "instruction": "x"}, {"state": np.zeros(8, np.float32)}))
        assert "plan before any observe" in reply["message"] and reply["kind"] == "protocol"
        # a request in order uses its seq even when it fails: the next one is seq 3
        reply = raw_call(ws, encode({"op": "observe", "seq": 3, "instruction": "x"},
                                    {"image": np.zeros((3, 3, 3), np.uint8), "state": np.zeros(8, np.float32)}))
        assert reply["op"] == "error" and "ValueError" in reply["message"]  # the policy's own check
        assert reply["kind"] == "policy" and reply["seq"] == 3
        head = json.dumps({"op": "observe", "seq": 4, "arrays": [["image", "object", [1]]]}).encode()
        assert "bad array spec" in raw_call(ws, struct.pack("<I", len(head)) + head + b"x")["message"]  # no pickle
        short = encode({"op": "observe", "seq": 4, "instruction": "x"}, {"image": np.zeros((224, 224, 3), np.uint8)})
        assert "needs 150528 bytes" in raw_call(ws, short[:-10])["message"]  # not decoded: no seq used
        assert raw_call(ws, encode({"op": "observe", "seq": 4, "instruction": "x"},  # the session still works
                                   {"image": obs[0]["image"], "state": obs[0]["state"]}))["op"] == "ok"
    with connect(f"ws://{server.address}") as ws:  # a wrong token: an error, then the connection is closed
        assert raw_call(ws, encode({"op": "hello", "token": "wrong"}))["message"] == "wrong or missing token"
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=5)
    with pytest.raises(RemotePolicyError, match="token"):
        remote(server, token=None)
    np.testing.assert_array_equal(np.stack(got), want)  # the good session never noticed
    assert server.errors >= 10


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_serve(ckpt, port, log):
    exe = Path(sys.executable).with_name("moss-serve")
    f = open(log, "w")  # noqa: SIM115 - lives as long as the server
    proc = subprocess.Popen([str(exe), f"checkpoint={ckpt}", f"port={port}", "threads=1", "device=cpu",
                             "log_level=DEBUG"], stdout=f, stderr=subprocess.STDOUT)
    t0 = time.monotonic()
    while "serving" not in log.read_text():
        assert proc.poll() is None and time.monotonic() - t0 < 60, log.read_text()
        time.sleep(0.05)
    return proc


class Recorder:
    """A policy as it is, keeping every chunk and action it hands out."""

    def __init__(self, policy):
        self.policy, self.config, self.out = policy, policy.config, []

    def eval(self):
        self.policy.eval()
        return self

    def reset(self):
        self.policy.reset()

    def observe(self, obs):
        self.policy.observe(obs)

    def plan(self, obs):
        self.out.append(self.policy.plan(obs))
        return self.out[-1]

    def select_action(self, obs):
        self.out.append(self.policy.select_action(obs))
        return self.out[-1]

    def loop_stats(self):
        return getattr(self.policy, "loop_stats", dict)()


def test_sim_eval_with_planner_remote_on_moss_serve_gives_the_in_process_results(ckpt, tmp_path, one_thread):
    from rig.sim_eval import evaluate, load_policy

    port = free_port()
    proc = start_serve(ckpt, port, tmp_path / "serve.log")
    try:
        for mode in ("delayed", "sync"):
            args = [f"checkpoint={ckpt}", "task=movesense_lr", "trials=2", f"planner.mode={mode}", "threads=1",
                    "device=cpu", "n_action_steps=4", *SHORT]
            here_cfg = compose_config([*args, f"eval_dir={tmp_path / mode / 'here'}"], "sim_eval")
            there_cfg = compose_config([*args, f"eval_dir={tmp_path / mode / 'there'}",
                                        f"planner.remote=127.0.0.1:{port}"], "sim_eval")
            remote = load_policy(there_cfg, "test")  # planner.remote: a RemotePolicy with the same settings
            assert isinstance(remote, RemotePolicy) and remote.config.n_action_steps == 4
            local, served = Recorder(load_policy(here_cfg, "test")), Recorder(remote)
            here, there = evaluate(here_cfg, local), evaluate(there_cfg, served)
            assert len(served.out) == len(local.out) > 10  # the same chunks / actions, bit for bit
            np.testing.assert_array_equal(np.stack(served.out), np.stack(local.out))
            for a, b in zip(here["episode_log"], there["episode_log"], strict=True):
                assert a["results"] == b["results"] and a["loop_end"] == b["loop_end"] == "duration"
                if mode == "delayed":
                    assert a["planner"]["plans"] == b["planner"]["plans"] > 3
                    assert b["planner"]["remote_requests"] > b["planner"]["plans"]
                    assert b["planner"]["remote_failures"] == 0 and b["planner"]["planner_failed"] == 0
            assert here["overall"] == there["overall"]
        # and the command's own path: moss-sim eval planner.remote=... (the RemotePolicy load_policy builds)
        report = evaluate(there_cfg)
        assert report["overall"] == here["overall"] and report["episode_log"][0]["loop_end"] == "duration"
    finally:
        proc.kill()
        proc.wait()


def test_a_server_killed_mid_trial_ends_that_trial_and_the_next_episode_reconnects(ckpt, tmp_path, one_thread):
    from moss_vla.episodes import EpisodeStore
    from rig.trial_cli import run_trials

    port, log = free_port(), tmp_path / "serve.log"
    procs = [start_serve(ckpt, port, log)]

    def kill_mid_episode():  # after the warm-up's reset and the episode's reset, a few plans in
        t0 = time.monotonic()
        while log.read_text().count(" plan seq") < 4 or log.read_text().count(" reset seq") < 2:
            if time.monotonic() - t0 > 60:
                return
            time.sleep(0.01)
        procs[0].kill()

    episodes = []

    def on_episode(ep):
        episodes.append(ep)
        if len(episodes) == 1:  # the operator restarts the server before the next episode
            procs[0].wait()
            procs.append(start_serve(ckpt, port, tmp_path / "serve2.log"))

    killer = threading.Thread(target=kill_mid_episode, daemon=True)
    killer.start()
    cfg = compose_config([f"checkpoint={ckpt}", "task=movesense_lr", "trials=2", "camera=sim", "arm=sim",
                          f"eval_dir={tmp_path / 'trials'}", f"display.log_dir={tmp_path}", f"record={tmp_path / 's.zarr'}",
                          "loop.max_missed_streak=1000", f"planner.remote=127.0.0.1:{port}", *SHORT], "trial")
    try:
        report = run_trials(cfg, on_episode=on_episode)
    finally:
        for p in procs:
            p.kill()
            p.wait()
    first, second = report["episode_log"][:2]
    assert first["loop_end"] == "controller" and "policy server" in first["message"], first["message"]
    assert first["loop"]["planner_failed"] == 1 and first["loop"]["remote_failures"] >= 1
    assert second["loop_end"] == "episode_done" and second["loop"]["remote_reconnects"] == 1
    assert second["loop"]["planner_failed"] == 0 and second["loop"]["plans"] >= 2
    store = EpisodeStore(tmp_path / "s.zarr")  # the cut-short episode is not committed, the next one is
    assert store.n_episodes == 1


def test_an_error_reply_leaves_the_session_usable_and_a_protocol_error_drops_it_until_the_next_episode(
        ckpt, server, caplog):
    local = MossVLAPolicy.from_pretrained(ckpt).eval()
    obs = observations(4, 3)
    want = chunks(local, obs, 9)
    observe = server.policy.observe

    def flaky(o):  # any exception from the policy is an error reply, not only ValueError / TypeError / RuntimeError
        if o["instruction"] == "boom":
            raise KeyError("boom")
        observe(o)

    server.policy.observe = flaky
    pol = remote(server)

    def episode():
        torch.manual_seed(9)
        pol.reset()
        got = []
        for o in obs:
            with pytest.raises(RemotePolicyError, match="KeyError"):
                pol.observe({**o, "instruction": "boom"})
            with pytest.raises(RemotePolicyError, match="ValueError"):  # the policy's own check
                pol.observe({**o, "image": o["image"][:8]})
            pol.observe(o)  # the same session goes on: the failed requests used their seq on both sides
            got.append(pol.plan(o))
        np.testing.assert_array_equal(np.stack(got), want)

    with caplog.at_level(logging.WARNING, "moss_vla.serve"):
        episode()
    assert any(r.exc_info and r.exc_info[0] is KeyError for r in caplog.records)  # logged with its traceback
    stats = pol.loop_stats()
    assert stats["remote_failures"] == 6 and stats["remote_reconnects"] == 0
    first = pol.session
    with pytest.raises(RemotePolicyError, match="unknown op"):  # a protocol error: the client drops the connection
        pol._call({"op": "dance"})
    with pytest.raises(RemotePolicyError, match="lost earlier"):
        pol.observe(obs[0])
    episode()  # the next episode reconnects: a new session
    assert pol.session != first and pol.loop_stats()["remote_reconnects"] == 1
    pol.reset()
    assert pol.loop_stats()["remote_reconnects"] == 0  # per episode, like every remote_* number
    pol.close()


def test_a_refused_hello_closes_its_socket_and_a_bad_address_names_its_key(server, ws_connections):
    from websockets.protocol import State

    with pytest.raises(RemotePolicyError, match="n_action_steps"):  # refused by the server, which keeps it open
        remote(server, settings={"n_action_steps": 999})
    assert len(ws_connections) == 1 and ws_connections[0].state is State.CLOSED
    with pytest.raises(ValueError, match="planner.remote='nope'"):
        RemotePolicy("nope", timeout=1.0)


def test_start_raises_the_error_that_stopped_it_listening(server):
    t0 = time.monotonic()
    with pytest.raises(OSError):  # the port is in use
        PolicyServer(server.policy, host="127.0.0.1", port=server.port).start()
    assert time.monotonic() - t0 < 5
