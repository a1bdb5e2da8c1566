"""moss-demo end to end on a planted tiny zoo: (a) every zoo entry scored on fresh trials, the table beside
the paper's, a plot; (b) collect -> score -> fine-tune the zoo checkpoint -> score again."""

import json

from moss_vla import zoo
from moss_vla.config import compose_config
from rig.demo import main, run_demo
from rig.sim_eval import untrained_checkpoint


def test_demo_scores_the_zoo_and_fine_tunes_one_of_its_checkpoints(tmp_path, monkeypatch):
    monkeypatch.setattr(zoo, "ZOO_DIR", tmp_path / "zoo")
    for task in ("movesense_lr", "movesense_rot"):
        entry = untrained_checkpoint(tmp_path / "zoo" / task / "moss", task)
        (entry / "recipe.json").write_text(json.dumps(["policy=moss", "model=tiny", "steps=3000", "seed=4"]))
    work = tmp_path / "demo"
    cfg = compose_config([f"work_dir={work}", "progress=false", "zoo.trials=1", "pipeline.episodes=1",
                          "pipeline.steps=2", "pipeline.batch_size=2", "pipeline.trials=1"], "demo")
    out = run_demo(cfg)
    md = out["md"].read_text()
    assert "## (a) The model zoo on fresh trials" in md and "| moss |" in md and "[paper 95.8]" in md
    assert "## (b) The pipeline live" in md and "before fine-tuning" in md and "after 2 steps on 1 demonstrations" in md
    table = json.loads(out["json"].read_text())
    assert set(table["zoo"]) == {"movesense_lr", "movesense_rot"}
    assert table["zoo"]["movesense_rot"]["moss"]["eval_seeds"][0] == 3000000  # fresh: apart from the bench's
    fine = table["pipeline"]
    assert fine["before"]["trials"] == fine["after"]["trials"] == 1 and fine["steps"] == 2
    assert (work / "finetune-movesense_lr" / "checkpoints" / "step_0000002" / "model.safetensors").exists()
    assert out["png"].stat().st_size > 10_000
    assert not list((tmp_path / "zoo").rglob("eval_*"))  # the zoo stays as shipped


def test_demo_cfg_prints_the_settings(capsys):
    assert main(["--cfg"]) == 0
    out = capsys.readouterr().out
    assert "start_from: zoo:movesense_rot/moss" in out and "eval_seed: 3000000" in out
