"""One front door (moss_vla/config.py): every moss-* command answers -h with its help and --cfg with its
composed config, and exits 0 without doing anything else."""

import importlib
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
SUBCOMMAND = {"moss-sim": ["eval"]}  # commands whose first word picks the config
NO_CONFIG = {"moss-data"}  # takes store paths; says so


def entry(name: str):
    module, func = SCRIPTS[name].split(":")
    return getattr(importlib.import_module(module), func)


def exit_code(name: str, argv: list[str]) -> int:
    """The exit status the console script would give (argparse's -h exits by SystemExit)."""
    try:
        return entry(name)(argv) or 0
    except SystemExit as e:
        return 0 if e.code is None else e.code


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_help_and_cfg_print_and_exit_0(name, capsys):
    argv = SUBCOMMAND.get(name, [])
    assert exit_code(name, [*argv, "-h"]) == 0
    assert len(capsys.readouterr().out.strip()) > 40
    assert exit_code(name, [*argv, "--cfg"]) == 0
    out = capsys.readouterr().out
    if name in NO_CONFIG:
        assert "no config" in out
    else:  # the composed YAML: top-level keys of the command's config
        assert any(line.split(":")[0].isidentifier() and not line.startswith(" ") for line in out.splitlines())


def test_cfg_applies_overrides_and_bad_overrides_name_the_key(capsys):
    assert entry("moss-sim")(["collect", "--cfg", "task=pongpredict", "episodes=7"]) == 0
    out = capsys.readouterr().out
    assert "name: pongpredict" in out and "episodes: 7" in out
    assert entry("moss-sim")(["eval", "--cfg", "nope.key=1"]) == 2  # a usage error: one line, no traceback
    err = capsys.readouterr().err
    assert "sim_eval: " in err and "nope" in err and "Traceback" not in err


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupt_while_a_command_is_still_importing_ends_it_cleanly(tmp_path, sig):
    """rig/launch.py: the console scripts import the command's heavy modules under a handler that exits 130."""
    marker = tmp_path / "importing"
    (tmp_path / "slow_start.py").write_text(f"import pathlib, time\npathlib.Path({str(marker)!r}).touch()\n"
                                            "time.sleep(60)\n\ndef main(argv=None):\n    return 0\n")
    code = (f"import sys; sys.path.insert(0, {str(tmp_path)!r}); "
            "from rig.launch import run; sys.exit(run('slow_start:main'))")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in err
    assert f"interrupted ({sig.name}) while starting; nothing was done" in err


def test_every_console_script_goes_through_the_launcher():
    assert all(target.startswith("rig.launch:") for target in SCRIPTS.values())
