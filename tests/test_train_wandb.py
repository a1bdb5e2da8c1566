"""moss-train logger=wandb (moss_vla/train.py start_wandb): offline, no network; the run's files under
<run>/wandb, every logged row beside metrics.csv, and `resume=` continues the same run (its id is kept in
the run directory)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from moss_vla.episodes.synthetic import make_synthetic_store
from moss_vla.paths import CONFIG_DIR
from moss_vla.train import WANDB_ID, main, train

TINY = ["policy=moss", "model=tiny", "model.input_image_size=32", "log_every=1", "val_every=1000", "val_batches=1",
        "batch_size=4", "ckpt_every=2", "logger=wandb"]


@pytest.fixture
def offline(monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_MODE", "offline")
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb_home"))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)


def _cfg(store, out, *overrides):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("train", [f"data.paths=[{store}]", f"out_dir={out}", *TINY, *overrides])


def _wandb_log(segment: Path) -> tuple[str, dict, list[dict]]:
    """Run id, config and history rows of an offline wandb run, read back from its transaction log with wandb's
    own reader (offline runs keep no summary or config files)."""
    from wandb.proto import wandb_internal_pb2 as pb
    from wandb.sdk.internal.datastore import DataStore

    ds = DataStore()
    ds.open_for_scan(str(next(segment.glob("run-*.wandb"))))
    run_id, config, rows = "", {}, []
    while (data := ds.scan_data()) is not None:
        r = pb.Record()
        r.ParseFromString(data)
        kind = r.WhichOneof("record_type")
        if kind == "run":
            run_id, config = r.run.run_id, {c.key: json.loads(c.value_json) for c in r.run.config.update}
        elif kind == "history":
            rows.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item})
    return run_id, config, rows


def test_wandb_offline_logs_every_row_and_resume_continues_the_same_run(offline, tmp_path):
    store = tmp_path / "s.zarr"
    make_synthetic_store(store, 3, length=12, image_shape=(32, 32, 3))
    run = tmp_path / "run"
    train(_cfg(store, run, "steps=4"))
    run_id = (run / WANDB_ID).read_text().strip()
    (first,) = (run / "wandb").glob(f"offline-run-*-{run_id}")
    got_id, config, rows = _wandb_log(first)
    csv_rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert got_id == run_id and config["logger"] == "wandb" and config["steps"] == 4
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert [r["loss"] for r in rows] == pytest.approx([float(r["loss"]) for r in csv_rows])
    # resume from step 2 (as after a kill there): the same wandb run, a second offline segment of it
    train(_cfg(store, run, "steps=4", f"resume={run / 'checkpoints' / 'step_0000002'}"))
    assert (run / WANDB_ID).read_text().strip() == run_id
    segments = sorted((run / "wandb").glob(f"offline-run-*-{run_id}"))
    assert len(segments) == 2
    got_id, _, rows = _wandb_log(segments[-1])
    assert got_id == run_id and [r["step"] for r in rows] == [3, 4]


def test_a_bad_logger_is_refused_before_any_work(tmp_path, capsys):
    assert main([f"data.paths=[{tmp_path}]", "logger=mlflow"]) != 0
    assert "logger" in capsys.readouterr().err
