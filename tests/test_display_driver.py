"""The pygame display driver: headless (SDL dummy) in a subprocess, its frame log, the loopback link to the
control process, and the start / pause / next / quit keys and commands."""

from __future__ import annotations

import json
import time
from types import SimpleNamespace

import numpy as np
import pytest
from omegaconf import OmegaConf

from moss_vla.paths import CONFIG_DIR
from tasks import make_task
from tasks.display_driver import (
    PAUSED,
    RUNNING,
    WAITING,
    DisplayProcess,
    StimulusClock,
    compose_driver_config,
    read_frame_log,
)
from tasks.stimulus import StimulusState
from tasks.stimulus_link import (
    CommandReceiver,
    StimulusPublisher,
    StimulusSample,
    StimulusSubscriber,
    send_command,
)


def test_stimulus_clock_start_pause_resume_jump():
    c = StimulusClock()
    assert c.t(100.0) == 0.0 and c.status == WAITING
    assert not c.pause(100.0) and not c.jump(100.0, 5.0)  # nothing to pause or skip before the start
    assert c.start(100.0) and c.status == RUNNING
    assert c.t(101.5) == pytest.approx(1.5)
    assert c.pause(102.0) and c.status == PAUSED
    assert c.t(110.0) == pytest.approx(2.0)  # frozen while paused
    assert c.start(110.0)  # start while paused resumes
    assert c.t(111.0) == pytest.approx(3.0)
    assert c.jump(111.0, 7.0) and c.t(112.0) == pytest.approx(8.0)
    c.finish(20.0)
    assert c.t(500.0) == 20.0 and not c.start(500.0)


def test_publisher_subscriber_and_commands_over_loopback():
    with StimulusSubscriber() as sub:
        pub = StimulusPublisher(port=sub.port)
        base = time.monotonic()
        for i in range(20):
            st = StimulusState(t=i / 60, label=i % 2, phase=2, xy=(0.1 * (i % 10), 0.5), interaction=0,
                               time_to_deadline=1.0 - i / 60)
            assert pub.publish(StimulusSample(st, shown=base + i / 60, frame=i, status=RUNNING, episode=0,
                                              seed=1, task="movesense_lr", cmd_port=1, received=0.0))
        deadline = time.monotonic() + 2.0
        while sub.n_received < 20 and time.monotonic() < deadline:
            time.sleep(0.01)
        got = sub.latest_sample()
        assert got is not None and got.frame == 19 and sub.n_received == 20
        assert sub.latest().t == pytest.approx(19 / 60)
        # the frame on screen at a given monotonic time is the last one shown before it
        assert sub.state_at(base + 5.5 / 60).t == pytest.approx(5 / 60)
        assert sub.state_at(base - 1.0) is None
        assert sub.sample_at(base + 5.5 / 60).frame == 5 and sub.sample_at(base + 5 / 60).frame == 5
        assert sub.sample_at(base + 1.0).frame == 19 and sub.sample_at(base - 1.0) is None
        pub.close()
    # nobody listening: publishing must neither block nor raise
    lonely = StimulusPublisher(port=sub.port)
    t0 = time.monotonic()
    for _ in range(200):
        lonely.publish(got)
    assert time.monotonic() - t0 < 0.5
    lonely.close()
    rx = CommandReceiver(port=0)
    send_command("load", rx.port, seed=4)
    send_command("next", rx.port)
    time.sleep(0.05)
    assert rx.poll() == [{"cmd": "load", "seed": 4}, {"cmd": "next"}]
    assert rx.poll() == []
    rx.close()


def test_cli_config_composition():
    cfg = compose_driver_config(["task=pongpredict", "display=monitor27", "seed=5", "task.n_interactions=7",
                                 "display.index=2"])
    assert cfg.task.name == "pongpredict" and cfg.task.n_interactions == 7
    assert cfg.seed == 5 and cfg.display.index == 2 and cfg.display.fullscreen is True and cfg.display.fps == 60
    default = compose_driver_config([])
    assert default.task.name == "movesense_lr" and default.display.fullscreen is False


def _wait_status(disp, status, timeout=5.0):
    s = disp.wait_for(lambda s: s.status == status, timeout)
    assert s is not None, f"driver never reported status {status!r}; stderr: {disp.stderr_tail()}"
    return s


def test_headless_driver_runs_at_60hz_publishes_and_obeys_keys_and_commands(tmp_path):
    task_cfg = OmegaConf.load(CONFIG_DIR / "task" / "movesense_lr.yaml")
    task_cfg.screen = {"width": 640, "height": 360}
    log_file = tmp_path / "frames.jsonl"
    disp = DisplayProcess(task_cfg, seed=3, headless=True, log_file=log_file).start()
    try:
        first = disp.latest_sample()
        assert first.status == WAITING and first.state.phase == 0  # "idle" until started
        time.sleep(0.3)
        disp.send("key", key="space")  # a key press through pygame's event queue: start
        started = _wait_status(disp, RUNNING)
        time.sleep(1.0)
        run = disp.latest_sample()
        # t runs at the rate of the monotonic clock shared by both processes (tolerance: a late frame or two
        # on a loaded machine)
        assert run.state.t - started.state.t == pytest.approx(run.shown - started.shown, abs=0.05)
        assert 0.9 < run.state.t < 1.6
        # the published state is the task's ground truth at the published t
        reference = make_task(task_cfg, 3)
        assert run.state == reference.state(run.state.t)
        # camera-frame alignment: the state on screen at a monotonic time
        mid = disp.state_at(run.shown - 0.5)
        assert mid is not None and mid.t == pytest.approx(run.state.t - 0.5, abs=0.06)

        disp.send("key", key="p")  # toggles pause
        paused = _wait_status(disp, PAUSED)
        time.sleep(0.3)
        assert disp.latest_sample().state.t == paused.state.t
        disp.send("key", key="p")  # and resumes
        _wait_status(disp, RUNNING)

        disp.next_interaction()  # command: jump to the start of the next interaction
        nxt = disp.wait_for(lambda s: s.state.t >= reference.interactions[1].start, timeout=3.0)
        assert nxt is not None and nxt.state.t < reference.interactions[1].start + 0.2
        disp.send("key", key="n")  # the next key: the third interaction
        nxt2 = disp.wait_for(lambda s: s.state.t >= reference.interactions[2].start, timeout=3.0)
        assert nxt2 is not None and nxt2.state.t < reference.interactions[2].start + 0.2

        disp.pause()
        _wait_status(disp, PAUSED)
        disp.resume()
        _wait_status(disp, RUNNING)

        disp.send("load", seed=2, task={"name": "x", "kind": "tennis"})  # refused: the episode goes on
        disp.load(seed=9)  # a new episode, waiting for its start
        loaded = disp.wait_for(lambda s: s.episode == 1, timeout=3.0)
        assert loaded is not None and loaded.status == WAITING and loaded.seed == 9
        received = disp.subscriber.n_received
        disp.send("key", key="q")
        assert disp.proc.wait(5.0) == 0
    finally:
        code = disp.stop()
    assert code == 0

    frames, events = read_frame_log(log_file)
    assert events[0]["event"] == "open" and events[-1]["event"] == "close"
    kinds = [e["event"] for e in events]
    for k in ("start", "toggle_pause", "next", "pause", "resume", "load", "quit"):
        assert k in kinds, k
    assert [e["source"] for e in events if e["event"] in ("start", "quit")] == ["key:space", "key:q"]
    assert [e["error"] for e in events if e["event"] == "error"] == [
        "task config x: unknown kind 'tennis'; expected one of ['movesense_lr', 'movesense_rot', 'pongpredict']"]
    assert [e["episode"] for e in events if e["event"] == "load"] == [1]
    assert [f["frame"] for f in frames] == list(range(len(frames)))
    shown = np.array([f["shown"] for f in frames])
    dt = np.diff(shown)
    assert np.median(dt) == pytest.approx(1 / 60, rel=0.05)
    # ~60 Hz over the whole run (a loaded CI machine may miss a few refreshes, never many)
    assert len(frames) >= 0.8 * 60 * (shown[-1] - shown[0])
    assert received >= 0.95 * len(frames) - 5  # loopback datagrams are not lost
    # the log holds the same states as the published ones
    rec = next(f for f in frames if f["frame"] == run.frame)
    assert rec["t"] == pytest.approx(run.state.t, abs=1e-6) and rec["label"] == run.state.label
    assert json.loads(json.dumps(events[0]["meta"]))["interactions"][0]["label"] == reference.interactions[0].label


def test_display_process_reports_bad_configs(tmp_path):
    task_cfg = OmegaConf.load(CONFIG_DIR / "task" / "pongpredict.yaml")
    task_cfg.kind = "tennis"
    with pytest.raises(ValueError, match="tennis"):  # checked before a process is started
        DisplayProcess(task_cfg, seed=0, headless=True, log_dir=tmp_path)
    task_cfg.kind = "pongpredict"
    disp = DisplayProcess(task_cfg, seed=0, display_index=3, headless=True, log_dir=tmp_path)
    with pytest.raises(RuntimeError, match="display.index"):  # the driver fails: its error is reported
        disp.start(timeout=15.0)
    assert disp.proc.poll() is not None


def test_the_control_loop_looks_up_the_stimulus_through_the_subscriber(monkeypatch):
    """rig.live_rig.DisplayStimulus (the live loop's `stimulus` and the arm log's stimulus times) uses
    StimulusSubscriber.sample_at, on the session clock: one lookup, tested here through the class the loop
    uses."""
    from rig.live_rig import DisplayStimulus
    from robot.clock import RealClock

    with StimulusSubscriber() as sub:
        pub = StimulusPublisher(port=sub.port)
        clock = RealClock()
        base = clock.t0 + 10.0  # session time 10 s
        for i, status in enumerate([RUNNING] * 6 + ["done"]):
            st = StimulusState(t=i / 60, label=0, phase=2, xy=(0.5, 0.5), interaction=0, time_to_deadline=1.0)
            pub.publish(StimulusSample(st, shown=base + i / 60, frame=i, status=status, episode=0, seed=3,
                                       task="movesense_lr", cmd_port=1, received=0.0))
        deadline = time.monotonic() + 2.0
        while sub.n_received < 7 and time.monotonic() < deadline:
            time.sleep(0.01)
        calls = []
        lookup = sub.sample_at
        monkeypatch.setattr(sub, "sample_at", lambda mono: calls.append(mono) or lookup(mono))
        display = SimpleNamespace(subscriber=sub, seed=3)
        stim = DisplayStimulus(display, OmegaConf.load(CONFIG_DIR / "task" / "movesense_lr.yaml"), clock)
        assert stim.state_at(10.0 + 2.5 / 60).t == pytest.approx(2 / 60)
        assert stim.state_at(9.0) is None  # before the first frame shown
        # between two running frames the stimulus time runs on with the clock
        assert stim.stim_time(10.0 + 2.5 / 60) == pytest.approx(2.5 / 60)
        assert stim.stim_time(11.0) == pytest.approx(6 / 60)  # "done": held at the last frame's time
        assert calls == pytest.approx([base + 2.5 / 60, base - 1.0, base + 2.5 / 60, base + 1.0])
        pub.close()
