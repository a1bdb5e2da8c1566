"""The model zoo (moss_vla/zoo/): `zoo:<task>/<policy>` resolves wherever a checkpoint directory is taken,
results of a zoo checkpoint go to runs/zoo/, moss-train init_from fine-tunes from one, and the shipped
entries load and are scored by moss-sim eval."""

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

from moss_vla import zoo
from moss_vla.config import compose_config
from moss_vla.episodes.synthetic import make_synthetic_store
from moss_vla.train import train
from rig.sim_cli import main as moss_sim
from rig.sim_eval import untrained_checkpoint


@pytest.fixture
def planted_zoo(tmp_path, monkeypatch) -> Path:
    """A zoo folder holding one untrained tiny entry, movesense_lr/moss."""
    monkeypatch.setattr(zoo, "ZOO_DIR", tmp_path / "zoo")
    untrained_checkpoint(tmp_path / "zoo" / "movesense_lr" / "moss", "movesense_lr")
    return tmp_path / "zoo"


def test_names_resolve_and_unknown_ones_list_the_zoo(planted_zoo):
    assert zoo.entries() == ["movesense_lr/moss"]
    assert zoo.resolve_checkpoint("zoo:movesense_lr/moss") == planted_zoo / "movesense_lr" / "moss"
    assert zoo.resolve_checkpoint("runs/x/checkpoints/latest") == Path("runs/x/checkpoints/latest")
    for bad in ("zoo:movesense_lr/mossy", "zoo:movesense_lr", "zoo:a/b/c"):
        with pytest.raises(FileNotFoundError, match=r"no such zoo entry; the zoo has zoo:movesense_lr/moss"):
            zoo.resolve_checkpoint(bad)


def test_moss_sim_eval_scores_a_zoo_name_and_writes_under_runs_zoo(planted_zoo, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert moss_sim(["eval", "checkpoint=zoo:movesense_lr/moss", "task=movesense_lr", "trials=1",
                     "progress=false", "task.n_patterns=1"]) == 0
    report = json.loads((tmp_path / "runs/zoo/movesense_lr/moss/eval_movesense_lr/results.json").read_text())
    assert report["trials"] == 1 and report["checkpoint"] == str(planted_zoo / "movesense_lr" / "moss")
    assert not list(planted_zoo.rglob("eval_*"))  # the zoo folder stays as shipped


def test_init_from_starts_training_from_the_checkpoint_weights(tmp_path):
    store = tmp_path / "s.zarr"
    make_synthetic_store(store, n_episodes=3, length=20, image_shape=(32, 32, 3))
    common = [f"data.paths=[{store}]", "policy=moss", "model=tiny", "model.input_image_size=32", "steps=1",
              "batch_size=2", "val_every=1000", "val_batches=1", "log_every=1", "ckpt_every=1"]
    first = train(compose_config([*common, f"out_dir={tmp_path / 'a'}", "seed=1"], "train")).checkpoint
    tuned = train(compose_config([*common, f"out_dir={tmp_path / 'b'}", "seed=2", f"init_from={first}",
                                  "optim.lr=1e-12", "optim.warmup_steps=0"], "train")).checkpoint
    fresh = train(compose_config([*common, f"out_dir={tmp_path / 'c'}", "seed=2", "optim.lr=1e-12",
                                  "optim.warmup_steps=0"], "train")).checkpoint
    a, b, c = (load_file(str(p / "model.safetensors")) for p in (first, tuned, fresh))
    # every weight as the checkpoint left it (lr ~ 0; BatchNorm's running statistics move without a gradient),
    # where a run from scratch has its own random init
    weights = [k for k in a if "running_" not in k and "num_batches_tracked" not in k]
    assert max(float((a[k].float() - b[k].float()).abs().max()) for k in weights) < 1e-5
    assert max(float((a[k].float() - c[k].float()).abs().max()) for k in weights) > 0.1
    with pytest.raises(FileNotFoundError, match=r"init_from=.*nope: no model.safetensors"):
        train(compose_config([*common, f"out_dir={tmp_path / 'd'}", f"init_from={tmp_path / 'nope'}"], "train"))


def test_the_zoo_ships_the_cw_ccw_column():
    # docs/zoo.md: training seed 1 of every cell; the other tasks' cells are still to be trained
    assert {"movesense_rot/groot", "movesense_rot/contextvla", "movesense_rot/moss"} <= set(zoo.entries())


@pytest.mark.parametrize("entry", zoo.entries())
def test_every_shipped_entry_has_provenance_fits_the_size_limit_and_is_scored(entry, tmp_path, monkeypatch):
    folder = zoo.ZOO_DIR / entry
    provenance = (folder / "PROVENANCE.md").read_text()
    for must in ("command", "commit", "collect_seed", "steps", "training time", "success"):
        assert must in provenance.lower(), f"{folder}/PROVENANCE.md does not say its {must}"
    assert (folder / "model.safetensors").stat().st_size <= 4.2e6
    monkeypatch.chdir(tmp_path)
    task = entry.split("/")[0]
    assert moss_sim(["eval", f"checkpoint=zoo:{entry}", f"task={task}", "trials=2", "progress=false",
                     "eval_seed=5000000"]) == 0
    report = json.loads((tmp_path / f"runs/zoo/{entry}/eval_{task}/results.json").read_text())
    assert report["trials"] == 2 and report["faults"] == {}  # loaded, planned and moved the arm for every step
