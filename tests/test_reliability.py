"""Issue 34: every bad input a clear error, every interrupt a clean stop, damaged data detected
(docs/reliability.md lists each case and the test here that covers it).

Commands run through their real entry points (in-process where a return code and stderr say it all, as a
subprocess where a signal must reach them); stores are small synthetic ones or a short simulated collection.
"""

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from moss_vla.data_cli import main as data_main
from moss_vla.episodes import EpisodeStore, EpisodeWriter, StoreError
from moss_vla.episodes.check import check_store
from moss_vla.episodes.store import chunk_bytes_problem, writer_pid
from moss_vla.episodes.synthetic import make_synthetic_store
from moss_vla.train import main as train_main
from rig.replay_cli import main as replay_main
from rig.sim_cli import main as sim_main
from rig.sim_eval import untrained_checkpoint

SHORT = ["task.n_patterns=1", "progress=false"]  # ~5 s simulated episodes
ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "SDL_VIDEODRIVER": "dummy",
       "SDL_AUDIODRIVER": "dummy", "PYTHONPATH": str(ROOT)}  # this checkout, whatever is installed


def run(main, argv, capsys) -> tuple[int, str]:
    """A command's exit code and its stderr (the front door returns; argparse / SystemExit raise)."""
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


@pytest.fixture
def store(tmp_path) -> Path:
    path = tmp_path / "s.zarr"
    make_synthetic_store(path, n_episodes=3, length=12, image_shape=(16, 16, 3))
    return path


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> Path:
    return untrained_checkpoint(tmp_path_factory.mktemp("ckpt") / "ckpt", "movesense_lr.yaml", "tiny")


# ------------------------------------------------------------------------------ bad values: exit 2, one line
@pytest.mark.parametrize("overrides, named", [
    (["steps=-5"], "steps=-5 must be >= 1"),
    (["steps=abc"], "steps='abc' must be an integer"),
    (["optim.lr=abc"], "optim.lr='abc' must be a number"),
    (["batch_size=0"], "batch_size=0 must be >= 1"),
    (["policy.n_frames=eight"], "policy.n_frames='eight' must be an integer"),
    (["device=gpu"], "device='gpu': expected auto | cpu | cuda | cuda:N"),
    (["device=mps"], "device='mps': expected auto | cpu | cuda | cuda:N"),  # the resolver's choices, not more
])
def test_train_refuses_bad_values_before_any_work(store, tmp_path, capsys, overrides, named):
    out = tmp_path / "run"
    code, err = run(train_main, [f"data.paths=[{store}]", f"out_dir={out}", *overrides], capsys)
    assert code == 2 and named in err and not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_train_on_cuda_without_a_gpu_says_so(store, tmp_path, capsys):
    code, err = run(train_main, [f"data.paths=[{store}]", f"out_dir={tmp_path / 'r'}", "device=cuda",
                                 "model=tiny", "model.input_image_size=16"], capsys)
    assert code == 1 and "no CUDA device; use device=cpu" in err


def test_collect_refuses_a_negative_episode_count_without_creating_a_store(tmp_path, capsys):
    out = tmp_path / "c.zarr"
    code, err = run(sim_main, ["collect", "episodes=-3", f"out={out}", *SHORT], capsys)
    assert code == 2 and "episodes=-3 must be >= 1" in err and not out.exists()


def test_replay_names_an_episode_the_store_lacks(store, capsys):
    code, err = run(replay_main, [f"store={store}", "episode=99", "realtime=false", "progress=false"], capsys)
    assert code == 2 and "episode=99 is not in" in err and "3 episode(s)" in err
    code, err = run(replay_main, [f"store={store}", "episode=abc", "progress=false"], capsys)
    assert code == 2 and "episode='abc' must be an integer" in err


def test_a_checkpoint_with_an_unknown_variant_or_a_bad_type_is_refused(tiny_ckpt, tmp_path, capsys):
    for key, value, named in (("variant", "mossy", "variant must name a policy config"),
                              ("n_frames", "eight", "n_frames must be int, got 'eight'")):
        bad = tmp_path / f"bad_{key}"
        bad.mkdir()
        for f in tiny_ckpt.iterdir():
            (bad / f.name).write_bytes(f.read_bytes())
        cfg = json.loads((bad / "config.json").read_text())
        cfg[key] = value
        (bad / "config.json").write_text(json.dumps(cfg))
        code, err = run(sim_main, ["eval", f"checkpoint={bad}", "trials=1", *SHORT], capsys)
        assert code == 2 and named in err and str(bad / "config.json") in err


def test_a_truncated_safetensors_file_is_named(tiny_ckpt, tmp_path, capsys):
    bad = tmp_path / "trunc"
    bad.mkdir()
    for f in tiny_ckpt.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    weights = bad / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    code, err = run(sim_main, ["eval", f"checkpoint={bad}", "trials=1", *SHORT], capsys)
    assert code == 2 and f"{weights}: cannot be read as safetensors" in err


def test_a_second_writer_and_a_read_only_store_are_one_line_errors(store, capsys, monkeypatch):
    with EpisodeWriter(store, image_shape=(16, 16, 3)):
        code, err = run(sim_main, ["collect", "episodes=1", f"out={store}", "append=true", *SHORT], capsys)
    assert code == 1 and f"another process (pid {os.getpid()}) is writing this store" in err
    real_open = os.open

    def read_only(path, flags, *a):
        if str(path).endswith("writer.lock") and flags & os.O_RDWR:
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *a)

    monkeypatch.setattr(os, "open", read_only)  # root ignores chmod: a read-only file system, as the OS says it
    code, err = run(sim_main, ["collect", "episodes=1", f"out={store}", "append=true", *SHORT], capsys)
    assert code == 1 and "the store is read-only for this user" in err


# ------------------------------------------------------------------------------------ damaged stores
def image_chunk(store: Path, frame: int) -> Path:
    return store / "data" / "image" / "c" / str(frame) / "0" / "0" / "0"


def test_new_stores_checksum_every_chunk(store):
    arr = json.loads((store / "data" / "state" / "zarr.json").read_text())
    assert [c["name"] for c in arr["codecs"]] == ["bytes", "blosc", "crc32c"]
    assert json.loads((store / "zarr.json").read_text())["attributes"]["chunks"]["all_written"] is True


def test_a_black_frame_is_written_so_a_missing_chunk_is_damage(tmp_path):
    path = tmp_path / "black.zarr"
    make_synthetic_store(path, n_episodes=1, length=3, image_shape=(16, 16, 3))
    with EpisodeWriter(path, image_shape=(16, 16, 3)) as w:
        w.start_episode({"task": "t", "instruction": "i"})
        for k in range(2):
            w.add_frame(np.zeros((16, 16, 3), np.uint8), state=np.zeros(8), action=np.zeros(8), timestamp=k)
        w.commit()
    assert image_chunk(path, 4).is_file() and check_store(path).ok


@pytest.mark.parametrize("damage", ["deleted", "truncated"])
def test_a_damaged_image_chunk_fails_check_readers_and_can_be_dropped(store, capsys, damage):
    chunk = image_chunk(store, 15)  # episode 1 (frames 12..23)
    if damage == "deleted":
        chunk.unlink()
    else:
        chunk.write_bytes(chunk.read_bytes()[:20])
    for quick in (False, True):
        res = check_store(store, images=not quick)
        assert not res.ok and res.damaged_episodes == {1}
        assert any("data/image: chunk 15 (frames 15..15, episode 1)" in e for e in res.errors), res.errors
    code, err = run(data_main, ["check", str(store)], capsys)
    assert code == 1
    with pytest.raises(StoreError, match=r"damaged, refusing to read it: .*data/image: chunk 15"):
        EpisodeStore(store)
    code, err = run(data_main, ["repair", str(store)], capsys)
    assert code == 1 and "--drop-damaged" in err
    code, err = run(data_main, ["repair", str(store), "--drop-damaged"], capsys)
    assert code == 0 and check_store(store).ok
    assert EpisodeStore(store).n_episodes == 2 and [m["seed"] for m in EpisodeStore(store).episode_metas] == [0, 2]
    assert len(list(store.parent.glob("s.zarr.damaged-*"))) == 1 and writer_pid(store) is None


def test_a_truncated_small_chunk_is_caught_before_decoding(store, capsys):
    chunk = store / "data" / "state" / "c" / "0" / "0"
    chunk.write_bytes(chunk.read_bytes()[:-7])
    res = check_store(store)
    assert res.damaged_episodes == {0, 1, 2} and any("data/state: chunk 0" in e and "checksum" in e for e in res.errors)
    with pytest.raises(StoreError, match="data/state: chunk 0"):
        EpisodeStore(store)
    for main, argv in ((train_main, [f"data.paths=[{store}]", "model=tiny", "model.input_image_size=16",
                                     f"out_dir={store.parent / 'run'}"]),
                       (replay_main, [f"store={store}", "realtime=false", "progress=false"])):
        code, err = run(main, argv, capsys)
        assert code == 1 and "the episode store is damaged" in err and "data/state: chunk 0" in err


def test_a_truncated_chunk_of_an_older_store_without_checksums_is_caught_by_its_blosc_header():
    from numcodecs import blosc

    data = blosc.compress(np.arange(4096, dtype=np.uint8).tobytes(), b"lz4", 3, blosc.NOSHUFFLE)
    assert chunk_bytes_problem(data, ["bytes", "blosc"], 4096) is None
    assert "truncated" in chunk_bytes_problem(data[:-10], ["bytes", "blosc"], 4096)


def test_half_written_episode_ends_names_the_file(store, capsys):
    f = store / "meta" / "episode_ends" / "zarr.json"
    f.write_text(f.read_text()[:200])
    with pytest.raises(StoreError, match=f"{f}: cannot be read"):
        EpisodeStore(store)
    res = check_store(store)
    assert not res.ok and str(f) in res.errors[0]


def test_metadata_end_disagreeing_with_episode_ends_is_refused_by_readers(store):
    f = store / "meta" / "episode_ends" / "zarr.json"
    doc = json.loads(f.read_text())
    doc["attributes"]["episodes"][1]["end"] = 22
    f.write_text(json.dumps(doc))
    assert any("episode 1: metadata start/end/length" in e for e in check_store(store).errors)
    with pytest.raises(StoreError, match="episode 1: metadata start/end/length 12/22/12 disagree"):
        EpisodeStore(store)


# --------------------------------------------------------------------------------------- faults
def test_the_scripted_operator_holds_without_a_stimulus_sample():
    from tasks.scripted_operator import ScriptedOperator
    from tasks.targets import load_targets

    op = ScriptedOperator(load_targets("movesense_lr.yaml"), ["left_bowl", "right_bowl"])
    state = np.concatenate([load_targets("movesense_lr.yaml").home.q, [0.0]])
    a = op.select_action({"stimulus": None, "state": state})
    np.testing.assert_allclose(a[:7], state[:7], atol=1e-6)


def test_eval_counts_a_nan_policy_as_a_fault_and_fails(tiny_ckpt, tmp_path, capsys):
    nan = tmp_path / "nan"
    nan.mkdir()
    for f in tiny_ckpt.iterdir():
        (nan / f.name).write_bytes(f.read_bytes())
    weights = load_file(str(nan / "model.safetensors"))
    key = next(k for k in sorted(weights) if k.startswith("action_head.") and k.endswith("norm1.linear.bias"))
    weights[key] = torch.full_like(weights[key], float("nan"))
    save_file(weights, str(nan / "model.safetensors"))
    code, err = run(sim_main, ["eval", f"checkpoint={nan}", "trials=1", f"eval_dir={tmp_path / 'ev'}", *SHORT], capsys)
    report = json.loads((tmp_path / "ev" / "results.json").read_text())
    assert code == 1 and "ended in a fault (safety 1)" in err and "invalid action" in err
    assert report["faults"] == {"safety": 1} and report["overall"]["failures"] == {"stopped:safety": 1}


# ------------------------------------------------------------------------- interrupts (real subprocesses)
def start(args: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import sys; from {} import {} as m; sys.exit(m())".format(*args[0].split(":")),
                             *args[1:]], cwd=cwd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(pred, timeout: float, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def finish(proc: subprocess.Popen, timeout: float = 20) -> tuple[int, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, out + err


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_collect_stops_on_ctrl_c_or_sigterm_with_a_clean_store(tmp_path, sig):
    out = tmp_path / "c.zarr"
    proc = start(["rig.sim_cli:main", "collect", "episodes=200", f"out={out}", *SHORT], tmp_path)
    wait_for(lambda: (out / "meta" / "episode_ends" / "zarr.json").exists() and EpisodeStore(out).n_episodes >= 1,
             120, proc)
    proc.send_signal(sig)
    code, text = finish(proc, timeout=120)  # a stop, not a hang (how soon depends on the machine's load)
    assert code == 130 and "Traceback" not in text, text
    assert check_store(out).ok and writer_pid(out) is None and EpisodeStore(out).n_episodes >= 1


def test_eval_stops_on_ctrl_c(tiny_ckpt, tmp_path):
    proc = start(["rig.sim_cli:main", "eval", f"checkpoint={tiny_ckpt}", "trials=500", "task.n_patterns=1",
                  f"eval_dir={tmp_path / 'ev'}"], tmp_path)
    err: list[str] = []

    def bar_shown() -> bool:  # the progress bar on stderr: the evaluation is under way
        # read only what is there (select): a blocking read would keep wait_for's timeout from ever firing
        if select.select([proc.stderr], [], [], 0.5)[0]:
            err.append(os.read(proc.stderr.fileno(), 4096).decode(errors="replace"))
        return "eval movesense_lr" in "".join(err)

    wait_for(bar_shown, 120, proc)
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    code, text = finish(proc)
    assert code == 130 and "Traceback" not in "".join(err) + text and not (tmp_path / "ev" / "results.json").exists()


def test_train_stops_on_ctrl_c_leaving_whole_checkpoints(store, tmp_path):
    run_dir = tmp_path / "run"
    proc = start(["moss_vla.train:main", f"data.paths=[{store}]", "model=tiny", "model.input_image_size=16",
                  "steps=100000", "ckpt_every=2", "batch_size=2", f"out_dir={run_dir}"], tmp_path)
    wait_for(lambda: (run_dir / "checkpoints" / "latest").exists(), 120, proc)
    proc.send_signal(signal.SIGINT)
    code, text = finish(proc)
    assert code == 130 and "Traceback" not in text, text
    ckpts = run_dir / "checkpoints"
    assert not list(ckpts.glob(".tmp_*")) and (ckpts / "latest" / "model.safetensors").is_file()


RECORD = ["rig.record_cli:main", "camera=sim", "arm=sim", "teleop=scripted", "episodes=20",
          "loop.max_missed_streak=1000", "task.n_patterns=1", "task.pause=[0.3,0.3]", "task.motion_duration=[1.5,1.5]",
          "task.hold=[1.2,1.2]", "progress=false"]


def test_record_second_ctrl_c_prints_no_traceback(tmp_path):
    out = tmp_path / "r.zarr"
    proc = start([*RECORD, f"out={out}", f"log_dir={tmp_path}", f"display.log_dir={tmp_path}"], tmp_path)
    wait_for(lambda: (out / "zarr.json").exists(), 120, proc)
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    code, text = finish(proc, 30)
    assert code == 130 and "Traceback" not in text, text
    assert check_store(out).ok and writer_pid(out) is None


def test_a_killed_record_leaves_no_display_process(tmp_path):
    out = tmp_path / "r.zarr"
    proc = start([*RECORD, f"out={out}", f"log_dir={tmp_path}", f"display.log_dir={tmp_path}"], tmp_path)
    wait_for(lambda: (out / "zarr.json").exists() and any(tmp_path.glob("display_*.jsonl")), 120, proc)
    log = next(tmp_path.glob("display_*.jsonl"))
    wait_for(lambda: '"open"' in log.read_text(), 30, proc)
    child = next(json.loads(line)["pid"] for line in log.read_text().splitlines() if '"open"' in line)
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 5
    while Path(f"/proc/{child}").exists() and time.monotonic() < deadline:
        try:  # reap it if it is our zombie (it is not our child: its parent was killed)
            os.waitpid(child, os.WNOHANG)
        except ChildProcessError:
            pass
        time.sleep(0.05)
    assert not Path(f"/proc/{child}").exists() or "zombie" in Path(f"/proc/{child}/status").read_text().lower()


@pytest.mark.parametrize("kind, reason", [("arm_error", "arm"), ("slow", "missed_deadlines")])
def test_simulated_arm_faults_end_a_recording_cleanly(tmp_path, kind, reason):
    """The simulated arm's fault hooks (robot/sim_arm.py set_fault) drive the live session's fault paths: an
    arm error ends the episode (reason arm; after_arm_error=stop ends the session), a streak of slow
    commands the missed-deadline stop; the store stays consistent and nothing is committed half-way."""
    out = tmp_path / "r.zarr"
    argv = [*RECORD[1:], "episodes=2", f"out={out}", f"log_dir={tmp_path}", f"display.log_dir={tmp_path}",
            f"+arm.fault={{kind: {kind}, at: {1.0 if kind == 'arm_error' else 0.0}}}", "after_arm_error=stop"]
    if kind == "slow":  # slow from the start, while the operator still holds home: two late steps stop it
        argv = [a for a in argv if not a.startswith("loop.max_missed_streak")] + ["loop.max_missed_streak=2"]
    proc = start([RECORD[0], *argv], tmp_path)
    code, text = finish(proc, 120)
    assert code == 1 and "Traceback" not in text, text
    report = json.loads(next(tmp_path.glob("record_*.json")).read_text())
    assert report["episodes"][0]["end_reason"] == reason and report["episodes_committed"] == 0
    assert check_store(out).ok and writer_pid(out) is None


def test_ctrl_c_inside_a_commit_stays_an_interrupt(store, monkeypatch):
    """A Ctrl-C that lands inside EpisodeWriter.commit must stop the command (exit 130), not turn into an
    EpisodeWriteError (exit 1); the store keeps its committed episodes (found by benchmarks/faults_bench.py)."""
    w = EpisodeWriter(store, image_shape=(16, 16, 3))
    w.start_episode({"task": "t", "instruction": "i"})
    w.add_frame(np.zeros((16, 16, 3), np.uint8), state=np.zeros(8), action=np.zeros(8), timestamp=0.0)

    def interrupted(coro):  # the signal arrives in the main thread while it waits for zarr's writes
        coro.close()
        raise KeyboardInterrupt

    monkeypatch.setattr("moss_vla.episodes.writer.sync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        w.commit()
    w.discard()
    w.close()
    assert EpisodeStore(store).n_episodes == 3 and check_store(store).ok


def test_a_signal_inside_a_writer_call_is_raised_when_the_call_returns(store, monkeypatch):
    """Under the front door's handler a Ctrl-C never cuts an EpisodeWriter call in two (a KeyboardInterrupt
    between a lock's acquire and release hung moss-sim collect): it is raised when the call returns."""
    from moss_vla.command import interrupt_signals

    w = EpisodeWriter(store, image_shape=(16, 16, 3))
    w.start_episode({"task": "t", "instruction": "i"})
    w.add_frame(np.zeros((16, 16, 3), np.uint8), state=np.zeros(8), action=np.zeros(8), timestamp=0.0)
    real_join = w._queue.join

    def join_with_ctrl_c():  # the signal lands while commit waits for the images
        signal.raise_signal(signal.SIGINT)
        real_join()

    monkeypatch.setattr(w._queue, "join", join_with_ctrl_c)
    with interrupt_signals(), pytest.raises(KeyboardInterrupt):
        w.commit()
    assert w.n_episodes == 4  # the commit ran to its end before the interrupt was raised
    w.close()
    assert EpisodeStore(store).n_episodes == 4 and check_store(store).ok
