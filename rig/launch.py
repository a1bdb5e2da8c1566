"""The console scripts' entry points (pyproject.toml [project.scripts]): light, so that a Ctrl-C or SIGTERM
that arrives while a command is still importing its modules (torch, lerobot: about a second) ends it with
exit 130 and one line, like an interrupt at any later moment (moss_vla/command.py), instead of a traceback
from inside an import. Nothing is open yet at that point, so there is nothing to close."""

from __future__ import annotations

import functools
import importlib
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

INTERRUPTED = 130  # moss_vla.command.INTERRUPTED, not imported: this module must stay light


def _interrupted_while_starting(signum: int, frame: Any) -> None:
    sys.stderr.write(f"\ninterrupted ({signal.Signals(signum).name}) while starting; nothing was done\n")
    os._exit(INTERRUPTED)


def run(target: str, argv: list[str] | None = None) -> int:
    """Import `module:function` with Ctrl-C / SIGTERM meaning "stop, nothing done", then run it."""
    previous = {s: signal.signal(s, _interrupted_while_starting) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        module, func = target.split(":")
        entry: Callable[..., int | None] = getattr(importlib.import_module(module), func)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return entry(argv)


def _script(target: str) -> Callable[..., int | None]:
    return functools.partial(run, target)


moss_viz = _script("moss_vla.viz:cli")
moss_data = _script("moss_vla.data_cli:main")
moss_train = _script("moss_vla.train:main")
moss_check = _script("moss_vla.groot_n15.check:main")
moss_demo = _script("rig.demo:main")
moss_sim = _script("rig.sim_cli:main")
moss_record = _script("rig.record_cli:main")
moss_trial = _script("rig.trial_cli:main")
moss_replay = _script("rig.replay_cli:main")
moss_calibrate = _script("rig.calibrate_cli:main")
moss_serve = _script("rig.serve_cli:main")
moss_arm_server = _script("rig.arm_server_cli:main")
