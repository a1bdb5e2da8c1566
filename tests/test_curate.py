"""Curation (moss_vla/episodes/curate.py, `moss-data drop`): episodes leave the store for good, the others
read back byte-identical, and a SIGKILL at any moment of a drop loses nothing committed (tested the way
recording is: a child dropping episodes is killed at random moments)."""

from __future__ import annotations

import multiprocessing as mp
import os
import shutil
import signal
import time

import numpy as np
import pytest

from moss_vla.data_cli import main
from moss_vla.episodes import EpisodeStore, EpisodeWriter
from moss_vla.episodes.check import check_store
from moss_vla.episodes.curate import drop_episodes
from moss_vla.episodes.repair import finish_interrupted_repair
from moss_vla.episodes.synthetic import make_synthetic_store, synthetic_episode, write_episode

SHAPE = (12, 16, 3)
N = 8


def _seeds_intact(path) -> list[int]:
    """The seeds of the store's episodes, after checking every byte of each against its seed's data."""
    store = EpisodeStore(path)
    data = {k: store.read(k) for k in store.keys}
    seeds = []
    for i in range(store.n_episodes):
        meta = store.episode_meta(i)
        exp_meta, exp = synthetic_episode(meta["seed"], 5, SHAPE)
        assert meta["index"] == i and {k: meta[k] for k in exp_meta} == exp_meta
        for k, v in exp.items():
            assert data[k][store.episode_slice(i)].tobytes() == v.astype(store.arrays[k].dtype).tobytes(), (i, k)
        seeds.append(meta["seed"])
    return seeds


@pytest.fixture
def store(tmp_path):
    path = tmp_path / "s.zarr"
    make_synthetic_store(path, N, length=5, image_shape=SHAPE)
    return path


def _run(capsys, *argv) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out + out.err


def test_drop_middle_tail_and_by_metadata(store, capsys):
    code, out = _run(capsys, "drop", store, "2", "5")
    assert code == 0 and "rewritten" in out, out
    assert _seeds_intact(store) == [0, 1, 3, 4, 6, 7]
    assert not list(store.parent.glob("s.zarr.*"))  # no clone or backup left behind
    code, out = _run(capsys, "drop", store, "-1")  # the last: in place
    assert code == 0 and "in place" in out and _seeds_intact(store) == [0, 1, 3, 4, 6]
    # synthetic success labels: seed % 3 != 0; dry run first
    code, out = _run(capsys, "drop", store, "--where", "success=false", "--dry-run")
    assert code == 0 and "would drop 3 of 5 episodes: [0, 2, 4] (seeds [0, 3, 6])" in out and _seeds_intact(store) == [0, 1, 3, 4, 6]
    code, out = _run(capsys, "drop", store, "--where", "success=false", "--keep-backup")
    assert code == 0 and _seeds_intact(store) == [1, 4]
    assert len(list(store.parent.glob("s.zarr.dropped-*"))) == 1 and check_store(store).ok
    with EpisodeWriter(store, image_shape=SHAPE) as w:  # still writable, appends after the kept ones
        assert w.recovery.clean
        meta, frames = synthetic_episode(9, 5, SHAPE)
        assert write_episode(w, meta, frames) == 2
    assert _seeds_intact(store) == [1, 4, 9] and check_store(store).ok


def test_each_bad_input_is_one_clear_error(store, tmp_path, capsys):
    code, out = _run(capsys, "drop", store, "8")
    assert code == 1 and "episode 8 out of range, the store has 8 episodes (0..7)" in out
    code, out = _run(capsys, "drop", store, "--where", "colour=red")
    assert code == 1 and "no episode has the metadata key 'colour'" in out
    code, out = _run(capsys, "drop", store)
    assert code == 1 and "name the episodes to drop" in out
    code, out = _run(capsys, "drop", tmp_path / "nope.zarr", "0")
    assert code == 1 and "no such episode store" in out
    assert _seeds_intact(store) == list(range(N))


def test_drop_last_removes_the_stale_statistics_and_the_writer_goes_on(store):
    (store / "norm_stats.json").write_text("{}")
    with EpisodeWriter(store, image_shape=SHAPE) as w:
        with pytest.raises(IndexError, match="cannot drop the last 9"):
            w.drop_last(9)
        assert [m["seed"] for m in w.drop_last(2)] == [6, 7]
        meta, frames = synthetic_episode(20, 5, SHAPE)
        assert write_episode(w, meta, frames) == 6
    assert not (store / "norm_stats.json").exists()
    assert _seeds_intact(store) == [0, 1, 2, 3, 4, 5, 20] and check_store(store).ok


def _drop_child(path: str, drop: list[int], conn) -> None:
    conn.send("start")
    drop_episodes(path, drop)
    conn.send("done")
    time.sleep(60)


def test_sigkill_during_a_drop_loses_nothing_committed(tmp_path):
    template = tmp_path / "template.zarr"
    make_synthetic_store(template, N, length=5, image_shape=SHAPE)
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["numcodecs.blosc", "moss_vla.episodes.curate", __name__])
    rng = np.random.default_rng(7)
    cases = [[3], [N - 1], [1, N - 1], [0, 4, 5]]

    def one(drop: list[int], delay: float | None) -> tuple[float, bool]:
        path = tmp_path / "s.zarr"
        shutil.rmtree(path, ignore_errors=True)
        shutil.copytree(template, path)
        rx, tx = ctx.Pipe(duplex=False)
        child = ctx.Process(target=_drop_child, args=(str(path), drop, tx), daemon=True)
        child.start()
        tx.close()
        assert rx.poll(30) and rx.recv() == "start"
        t0 = time.perf_counter()
        if delay is None:
            assert rx.poll(30) and rx.recv() == "done"
        else:
            time.sleep(delay)
        took = time.perf_counter() - t0
        os.kill(child.pid, signal.SIGKILL)
        child.join()
        try:
            done = delay is None or (rx.poll() and rx.recv() == "done")
        except EOFError:
            done = False
        rx.close()
        # what the next moss-data drop / repair does first, then the store is either before or after
        finish_interrupted_repair(path)
        assert not list(path.parent.glob("s.zarr.*")), (drop, delay)  # no clone or old store left behind
        seeds = _seeds_intact(path)
        want_after = [s for s in range(N) if s not in drop]
        assert seeds in (list(range(N)), want_after), (drop, delay, seeds)
        assert not done or seeds == want_after
        res = check_store(path, images=False)
        assert res.ok or all("moss-data repair" in e for e in res.errors), res.errors  # leftovers, not damage
        if seeds == want_after:  # the next writer truncates the dropped frames left behind
            EpisodeWriter(path, image_shape=SHAPE).close()
        else:  # running the drop again finishes the job
            drop_episodes(path, drop)
        assert _seeds_intact(path) == want_after and check_store(path, images=False).ok
        return took, seeds == want_after

    durations = {tuple(d): one(d, None)[0] for d in cases}
    outcomes = []
    for r in range(12):
        drop = cases[r % len(cases)]
        outcomes.append(one(drop, float(rng.uniform(0, 1.1 * durations[tuple(drop)])))[1])
    print(f"durations {durations}; {sum(outcomes)} of {len(outcomes)} killed drops had finished")
    assert 0 < sum(outcomes) < len(outcomes), "the kills never landed inside a drop"


class _Killed(BaseException):
    pass


@pytest.mark.parametrize("keep_backup", [False, True])
@pytest.mark.parametrize("at", ["between the renames", "after the swap"])
def test_a_kill_around_the_swap_leaves_no_old_store_behind_unless_kept(store, monkeypatch, at, keep_backup):
    from moss_vla.episodes import curate

    real_rename = os.rename

    def rename(src, dst):
        if at == "between the renames" and ".repairing-" in str(src):
            raise _Killed
        real_rename(src, dst)

    def finish_swap(path):
        raise _Killed

    monkeypatch.setattr(curate.os, "rename", rename)
    if at == "after the swap":
        monkeypatch.setattr(curate, "finish_swap", finish_swap)
    with pytest.raises(_Killed):
        drop_episodes(store, [2], keep_backup=keep_backup)
    monkeypatch.undo()
    assert len(list(store.parent.glob("s.zarr.dropped-*"))) == 1  # the old store, aside
    done = finish_interrupted_repair(store)  # what the next moss-data drop / repair does first
    assert (done is None) == (keep_backup and at == "after the swap"), done
    assert _seeds_intact(store) == [s for s in range(N) if s != 2] and check_store(store).ok
    assert not list(store.parent.glob("s.zarr.repairing-*"))
    assert len(list(store.parent.glob("s.zarr.dropped-*"))) == (1 if keep_backup else 0)
    assert finish_interrupted_repair(store) is None
