"""Crash safety for real: a child process writing episodes is SIGKILLed at random moments, many
times. Every committed episode must read back byte-identical and the store must stay writable."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time

import numpy as np

from moss_vla.episodes import EpisodeStore, EpisodeWriter
from moss_vla.episodes.check import check_store
from moss_vla.episodes.synthetic import synthetic_episode, write_episode

SHAPE = (12, 16, 3)
MIN_KILLS, MIN_COMMITTED, MAX_KILLS = 40, 15, 100  # on a loaded machine more kills are needed


def _write_forever(path: str, first_seed: int, conn) -> None:
    """Child: open (and so repair) the store, then write synthetic episodes until killed."""
    w = EpisodeWriter(path, image_shape=SHAPE, queue_size=4096)
    conn.send(("ready", -1))
    seed = first_seed
    while True:
        meta, frames = synthetic_episode(seed, image_shape=SHAPE)
        idx = write_episode(w, meta, frames)
        conn.send((idx, seed))  # one small pipe write: either fully there or not at all
        seed += 1


def _verify(path: str, reported: dict[int, int]) -> int:
    """Every committed episode equals its seed's data; every reported commit is in the store."""
    store = EpisodeStore(path)
    data = {k: store.read(k) for k in store.keys}  # whole arrays: one read per key
    for i in range(store.n_episodes):
        meta = store.episode_meta(i)
        exp_meta, exp = synthetic_episode(meta["seed"], image_shape=SHAPE)
        sl = store.episode_slice(i)
        assert meta["length"] == len(exp["image"]), f"episode {i} length"
        assert {k: meta[k] for k in exp_meta} == exp_meta
        for k, v in exp.items():
            got = data[k][sl]
            assert got.dtype == store.arrays[k].dtype
            assert got.tobytes() == v.astype(got.dtype).tobytes(), f"episode {i} (seed {meta['seed']}) key {k}"
    for idx, seed in reported.items():
        assert idx < store.n_episodes, f"episode {idx} was reported committed but is missing"
        assert store.episode_meta(idx)["seed"] == seed
    return store.n_episodes


def test_sigkill_many_times_keeps_committed_episodes(tmp_path):
    path = str(tmp_path / "crash.zarr")
    ctx = mp.get_context("forkserver")
    # children fork from a server that has imported everything: a child starts in milliseconds
    ctx.set_forkserver_preload(["numcodecs.blosc", "moss_vla.episodes.writer", "moss_vla.episodes.synthetic",
                                __name__])
    rng = np.random.default_rng(1234)
    reported: dict[int, int] = {}
    next_seed = 0
    n_before = 0
    kills_mid_episode = 0
    round_ = 0
    while round_ < MIN_KILLS or (n_before < MIN_COMMITTED and round_ < MAX_KILLS):
        round_ += 1
        rx, tx = ctx.Pipe(duplex=False)
        child = ctx.Process(target=_write_forever, args=(path, next_seed, tx), daemon=True)
        child.start()
        tx.close()
        if rng.uniform() < 0.25:  # anywhere in start-up, store creation or recovery
            time.sleep(float(rng.uniform(0.0, 0.3)))
        else:
            # anywhere in writing: after 1-3 messages (ready, commits), a random fraction of the last
            # episode's duration, so the kill lands anywhere in an episode however loaded the machine
            stamps = []
            for _ in range(int(rng.integers(1, 4))):
                assert rx.poll(30), "child stopped reporting"
                msg = rx.recv()
                stamps.append(time.perf_counter())
                if msg[0] != "ready":
                    reported[msg[0]] = msg[1]
            cycle = stamps[-1] - stamps[-2] if len(stamps) > 1 else 0.1
            time.sleep(float(rng.uniform(0.0, 1.2 * cycle)))
        os.kill(child.pid, signal.SIGKILL)
        child.join()
        assert child.exitcode == -signal.SIGKILL, f"round {round_}: child ended by itself ({child.exitcode})"
        while rx.poll():
            try:
                idx, seed = rx.recv()
            except EOFError:
                break
            if idx != "ready":
                reported[idx] = seed
        rx.close()
        # readers see exactly the committed episodes even before any repair
        n = _verify(path, reported) if os.path.exists(os.path.join(path, "zarr.json")) else 0
        assert n >= n_before, "committed episodes disappeared"
        n_before = n
        if n:
            next_seed = max(next_seed, EpisodeStore(path).episode_meta(n - 1)["seed"] + 1)
        kills_mid_episode += int(check_store(path, images=False).errors != [])
    print(f"{round_} kills, {n_before} episodes committed, {kills_mid_episode} kills left uncommitted data")
    assert n_before >= MIN_COMMITTED, f"only {n_before} episodes committed over {round_} kills"
    assert kills_mid_episode >= 5, "no kill left uncommitted data: the kills never hit a write"

    # the store is still writable: the opener truncates the leftovers and reports what it removed
    with EpisodeWriter(path, image_shape=SHAPE) as w:
        assert w.recovery.committed_episodes == n_before
        meta, frames = synthetic_episode(10_000, image_shape=SHAPE)
        assert write_episode(w, meta, frames) == n_before
    res = check_store(path)
    assert res.ok, res.errors
    assert _verify(path, reported) == n_before + 1
