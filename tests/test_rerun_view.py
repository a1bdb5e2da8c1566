"""The rerun viewer (`moss-data view`, moss_vla/episodes/viewer.py) and the per-step trial logger
(robot/rerun_logger.py: `rerun=` of moss-sim eval and moss-replay): headless, an .rrd is written and read back
with rerun's own API (rerun.dataframe), checking the entities, their row counts and a frame's pixels."""

from __future__ import annotations

import numpy as np
import pytest

from moss_vla.config import compose_config
from moss_vla.data_cli import main
from moss_vla.episodes import EpisodeStore
from moss_vla.episodes.synthetic import make_synthetic_store
from moss_vla.rerun_log import JOINT_NAMES, rrd_contents

SHORT = ["task.n_patterns=1", "task.pause=[0.3,0.3]", "task.motion_duration=[1.5,1.5]", "task.hold=[1.2,1.2]",
         "progress=false"]


def _image_at(path, entity: str, step: int) -> np.ndarray:
    """The image logged at `entity` on step `step`, read back with rerun.dataframe."""
    import rerun.dataframe as rdf

    rec = rdf.load_recording(str(path))
    cols = {c.component: c for c in rec.schema().component_columns() if c.entity_path == entity}
    buf, fmt = cols["Image:buffer"], cols["Image:format"]
    table = rec.view(index="step", contents=entity).filter_range_sequence(step, step).select(buf, fmt).read_all()
    data = np.asarray(table.column(0).to_pylist()[0][0], dtype=np.uint8)
    f = table.column(1).to_pylist()[0][0]
    return data.reshape(f["height"], f["width"], -1)


def _series_width(path, entity: str) -> int:
    """How many scalars (joints) each row of `entity` holds."""
    import rerun.dataframe as rdf

    rec = rdf.load_recording(str(path))
    col = next(c for c in rec.schema().component_columns() if c.entity_path == entity and c.component.endswith("scalars"))
    table = rec.view(index="step", contents=entity).select(col).read_all()
    return len(next(v for v in table.column(table.num_columns - 1).to_pylist() if v is not None))


def test_moss_data_view_writes_every_step_of_the_chosen_episodes(tmp_path, capsys):
    store = tmp_path / "s.zarr"
    make_synthetic_store(store, 3, length=6, image_shape=(16, 16, 3))
    out = tmp_path / "view" / "s.rrd"
    assert main(["view", str(store), "--episodes", "0", "2", "--save", str(out)]) == 0
    assert "episodes [0, 2], 12 frames" in capsys.readouterr().out
    got = rrd_contents(out)
    want = {f"/episodes/{i}/{what}" for i in (0, 2) for what in
            ["camera", "camera/stimulus", "meta", "stimulus/log", "stimulus/label", "stimulus/phase",
             "stimulus/interaction", "stimulus/time_to_deadline"]
            + [f"{s}/{j}" for s in ("state", "action") for j in JOINT_NAMES]}
    assert set(got) == want, set(got) ^ want
    assert all(n == 6 for k, n in got.items() if not k.endswith("/meta")), got
    frames = EpisodeStore(store).episode(2)["image"]
    np.testing.assert_array_equal(_image_at(out, "/episodes/2/camera", 4), frames[4])


def test_view_bad_inputs_are_one_clear_error(tmp_path, capsys, monkeypatch):
    store = tmp_path / "s.zarr"
    make_synthetic_store(store, 2, length=3, image_shape=(16, 16, 3))
    assert main(["view", str(store), "--episodes", "5", "--save", str(tmp_path / "o.rrd")]) == 1
    assert "episode 5 out of range, the store has 2 episodes" in capsys.readouterr().err
    assert main(["view", str(store), "--save", str(tmp_path / "o.txt")]) == 1
    assert "a rerun recording file ends in .rrd" in capsys.readouterr().err
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    assert main(["view", str(store)]) == 1
    assert "no display to open the rerun viewer on" in capsys.readouterr().err
    assert main(["view", str(tmp_path / "none.zarr"), "--save", str(tmp_path / "o.rrd")]) == 1
    assert "no such episode store" in capsys.readouterr().err


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    from rig.sim_eval import untrained_checkpoint

    return untrained_checkpoint(tmp_path_factory.mktemp("ckpt") / "ckpt", "movesense_lr.yaml", "tiny")


def test_sim_eval_and_replay_log_every_step_to_rerun(ckpt, tmp_path):
    import torch

    from rig.replay_cli import replay
    from rig.sim_eval import evaluate
    from rig.sim_rig import build_sim_rig

    torch.set_num_threads(1)
    out = tmp_path / "eval.rrd"
    for mode in ("sync", "delayed"):
        cfg = compose_config([f"checkpoint={ckpt}", "task=movesense_lr", "trials=1", f"planner.mode={mode}",
                              "threads=1", "device=cpu", "n_action_steps=4", f"eval_dir={tmp_path / mode}",
                              f"rerun={out}", *SHORT], "sim_eval")
        report = evaluate(cfg)
        got = rrd_contents(out)
        seed = report["eval_seeds"][0]
        p = f"/trials/seed_{seed}"
        targets = list(build_sim_rig(cfg, seed).targets.ee_positions())
        n_steps = got[f"{p}/camera"]
        assert n_steps > 20 and got[f"{p}/latency_ms"] == n_steps
        assert got[f"{p}/action"] == n_steps and got[f"{p}/state"] == n_steps  # all 8 joints in one call each
        assert _series_width(out, f"{p}/action") == len(JOINT_NAMES) == _series_width(out, f"{p}/state")
        assert {f"{p}/distance/{t}" for t in targets} <= set(got) and got[f"{p}/distance/{targets[0]}"] == n_steps
        # the chunk is logged when a new one comes into use, not every step: the policy stepped directly
        # (sync) takes a new chunk every 4th step; a chunk planner (delayed) replans as chunks run out
        chunks = got[f"{p}/plan/chunk"]
        assert chunks == -(-n_steps // 4) if mode == "sync" else 2 <= chunks <= n_steps // 2, (mode, n_steps, chunks)
        assert got[f"{p}/trials"] == 2 and got[f"{p}/outcome/success"] == 1  # the trial, then the loop's end
        if mode == "delayed":
            assert got[f"{p}/plan/late"] == n_steps and got[f"{p}/plan/age"] >= n_steps - 2
    # moss-replay: a recorded sim episode, re-sent through the loop
    from moss_vla.config import compose_config as cc
    from rig.sim_cli import collect

    store = tmp_path / "sim.zarr"
    assert collect(cc([f"out={store}", "episodes=1", *SHORT], "sim"))["store_check"] == "ok"
    rr_out = tmp_path / "replay.rrd"
    rep = replay(cc([f"store={store}", "realtime=false", f"rerun={rr_out}", "progress=false"], "replay"))
    assert rep["all_played_to_end"]
    got = rrd_contents(rr_out)
    n = EpisodeStore(store).episode_lengths[0]
    assert got["/replay/episode_0/camera"] == n and got["/replay/episode_0/action"] == n
    assert got["/replay/episode_0/outcome/success"] == 1 and any(k.startswith("/replay/episode_0/distance/") for k in got)


def test_moss_trial_logs_every_step_to_rerun(ckpt, tmp_path):
    from rig.trial_cli import main as trial_main

    out = tmp_path / "trial.rrd"
    code = trial_main([f"checkpoint={ckpt}", "task=movesense_lr", "trials=1", "camera=sim", "arm=sim",
                       f"eval_dir={tmp_path / 'trials'}", f"display.log_dir={tmp_path}", "loop.max_missed_streak=1000",
                       f"rerun={out}", *SHORT])
    assert code == 0
    got = rrd_contents(out)
    p = "/trials/seed_1000000"
    n_steps = got[f"{p}/camera"]
    assert n_steps >= 20 and got[f"{p}/action"] == n_steps and got[f"{p}/plan/late"] == n_steps
    assert 2 <= got[f"{p}/plan/chunk"] <= n_steps // 2 and got[f"{p}/outcome/success"] == 1  # new chunks only
    assert {f"{p}/distance/left_bowl", f"{p}/distance/right_bowl"} <= set(got)
