"""A non-editable install works without the source tree: the wheel carries the configs and the task
calibrations, and the commands find them there."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The project's wheel, built from this checkout and installed (without dependencies, which the
    test environment already has) into a throwaway folder."""
    tmp = tmp_path_factory.mktemp("wheel")
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp / "dist"), str(ROOT)],
                   check=True, cwd=tmp)
    wheel = next((tmp / "dist").glob("moss_vla-*.whl"))
    subprocess.run([*pip, "install", "--no-deps", "--target", str(tmp / "site"), str(wheel)], check=True, cwd=tmp)
    return tmp


def run_installed(tmp: Path, *args: str) -> subprocess.CompletedProcess:
    """Run from a folder outside the checkout, with the installed copy first on the path."""
    env = {**os.environ, "PYTHONPATH": str(tmp / "site"), "OMP_NUM_THREADS": "1"}
    return subprocess.run(args, check=False, cwd=tmp, env=env, capture_output=True, text=True, timeout=300)


def test_the_installed_package_is_the_one_imported(installed):
    out = run_installed(installed, sys.executable, "-c",
                        "import moss_vla.paths as p, tasks.targets as t, rig.sim_cli as s; "
                        "print(p.CONFIG_DIR, t.CALIBRATION_DIR, s.__file__)")
    assert out.returncode == 0, out.stderr
    config_dir, calibration_dir, module = out.stdout.split()
    site = str(installed / "site")
    assert config_dir.startswith(site) and module.startswith(site) and calibration_dir.startswith(site)
    assert (Path(config_dir) / "sim.yaml").is_file() and (Path(config_dir) / "task" / "pongpredict.yaml").is_file()
    assert (Path(calibration_dir) / "pongpredict.yaml").is_file()


def test_installed_commands_compose_and_collect(installed):
    moss_sim = str(installed / "site" / "bin" / "moss-sim")
    cfg = run_installed(installed, moss_sim, "collect", "--cfg", "task=pongpredict")
    assert cfg.returncode == 0, cfg.stderr
    assert "name: pongpredict" in cfg.stdout
    train_cfg = run_installed(installed, str(installed / "site" / "bin" / "moss-train"), "--cfg", "job",
                              "policy=moss", "model=tiny")
    assert train_cfg.returncode == 0, train_cfg.stderr
    assert "name: moss" in train_cfg.stdout
    out = installed / "one.zarr"
    collect = run_installed(installed, moss_sim, "collect", "task=movesense_lr", "episodes=1", f"out={out}",
                            "progress=false")
    assert collect.returncode == 0, collect.stderr
    report = json.loads(collect.stdout)
    assert report["episodes_in_store"] == 1 and report["store_check"] == "ok"
