"""`moss-calibrate`: record the named target poses of a task with the arm, or mark the display crop.

    moss-calibrate task=movesense_lr arm=franka teleop=gamepad            # record bowls + home
    moss-calibrate task=pongpredict arm=sim teleop=keyboard out=/tmp/p.yaml
    moss-calibrate crop camera=zed [image=FRAME.png]                      # robot/crop_calibration.py
    moss-calibrate --cfg task=pongpredict                                 # print the composed config

Targets: jog the arm (EE or joint jog; snap keys move to the previously stored pose of a target),
select the target name (keys.next / keys.prev), store the measured joint configuration under it
(keys.store), write the file (keys.save; also on quit once every target is stored). The file has
the format of tasks/targets.py (TargetSet.save): joint configurations and their flange positions.
The names are the task's rest target and its label targets (configs/task/*.yaml `targets`).
No camera is needed. The loop runs at teleop.control_hz on the wall clock (a SimClock in tests).
"""

from __future__ import annotations

import logging
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig

from moss_vla.command import command
from moss_vla.config import cli_config
from robot.fr3_kinematics import Q_READY
from robot.interfaces import Arm
from robot.safety import ArmError, SafetyChecker, UnsafeTargetError
from robot.teleop.operator import TeleopPolicy

log = logging.getLogger(__name__)


def target_names(task_cfg: Any) -> list[str]:
    """The targets a task needs: its rest pose first, then the label targets in label order."""
    t = task_cfg.targets
    names = [str(t.get("rest", "home"))]
    for label in task_cfg.label_names:
        name = str(t.labels[label])
        if name not in names:
            names.append(name)
    return names


class TargetRecorder:
    """Which target is selected, what has been stored; turns teleop events into actions."""

    def __init__(self, names: Sequence[str], existing: dict[str, np.ndarray] | None = None,
                 arm: str | None = None) -> None:
        self.names = list(names)
        self.arm = arm  # the arm type the poses are taken on (written into the file)
        self.existing = dict(existing or {})
        self.stored: dict[str, np.ndarray] = {}
        self.selected = 0
        self.saved = False

    @property
    def current(self) -> str:
        return self.names[self.selected]

    @property
    def complete(self) -> bool:
        return all(n in self.stored or n in self.existing for n in self.names)

    def configs(self) -> dict[str, np.ndarray]:
        """The file's contents: stored poses, else the previous ones."""
        return {n: self.stored.get(n, self.existing.get(n)) for n in self.names
                if n in self.stored or n in self.existing}

    def select(self, step: int) -> None:
        self.selected = (self.selected + step) % len(self.names)

    def store(self, q: np.ndarray) -> None:
        self.stored[self.current] = np.asarray(q, dtype=np.float64).copy()
        self.saved = False
        missing = [i for i, n in enumerate(self.names) if n not in self.stored]
        if missing:  # move on to the next target that still needs a pose
            later = [i for i in missing if i > self.selected]
            self.selected = (later or missing)[0]

    def status(self) -> str:
        marks = " ".join(f"[{n}]" if i == self.selected else n + ("*" if n in self.stored else "")
                         for i, n in enumerate(self.names))
        return f"targets: {marks}   (* = stored this session)"


def save_targets(path: Path, recorder: TargetRecorder) -> None:
    """Write the recorder's poses as a calibration file in the tasks/targets.py format (backup of an
    existing file: .bak); the recorder is then saved."""
    from tasks.targets import TargetSet

    path = Path(path)
    ts = TargetSet.from_joint_configs(recorder.configs(), source=str(path), home=recorder.names[0],
                                      arm=recorder.arm)
    if path.exists():
        shutil.copy(path, path.with_suffix(path.suffix + ".bak"))
    path.parent.mkdir(parents=True, exist_ok=True)
    ts.save(path)
    recorder.saved = True


def run_calibration(
    arm: Arm,
    teleop: TeleopPolicy,
    recorder: TargetRecorder,
    out: Path,
    clock: Any,
    period: float = 0.1,
    max_steps: int | None = None,
    on_step: Callable[[int], None] | None = None,
    print_fn: Callable[[str], None] = print,
) -> bool:
    """The calibration loop. Returns True if the file was written. Poses stored before Ctrl-C or an arm
    error that cannot be recovered are written as at a normal end (a complete set) before it ends."""
    try:
        _calibration_loop(arm, teleop, recorder, out, clock, period, max_steps, on_step, print_fn)
    except KeyboardInterrupt:
        print_fn("interrupted")
    finally:
        if recorder.stored and not recorder.saved:
            if recorder.complete:
                save_targets(out, recorder)
                print_fn(f"wrote {out}")
            else:
                missing = [n for n in recorder.names if n not in recorder.configs()]
                print_fn(f"not written: no pose yet for {missing}")
    return recorder.saved


def _calibration_loop(arm: Arm, teleop: TeleopPolicy, recorder: TargetRecorder, out: Path, clock: Any,
                      period: float, max_steps: int | None, on_step: Callable[[int], None] | None,
                      print_fn: Callable[[str], None]) -> None:
    k = 0
    t0 = clock.now()
    print_fn(recorder.status())
    while max_steps is None or k < max_steps:
        clock.sleep_until(t0 + k * period)
        if on_step is not None:
            on_step(k)
        state = arm.state()
        action = teleop.select_action({"state": state.as_vector(), "image": None, "instruction": "calibrate"})
        try:
            arm.command(action[:7], float(action[7]))
        except UnsafeTargetError as e:
            print_fn(f"refused: {e.reason}")
            teleop.reset()  # continue from where the arm is
        except ArmError as e:  # e.g. a reflex while jogging near the table: the arm stopped where it was
            if not e.recoverable or not hasattr(arm, "recover"):
                raise
            print_fn(f"arm error: {e.reason}; recovering (the arm stays where it stopped)")
            arm.recover()
            teleop.reset()
        events = teleop.last_input.events
        for ev in events:
            if ev == "next":
                recorder.select(+1)
            elif ev == "prev":
                recorder.select(-1)
            elif ev == "store":
                q = arm.state().q
                name = recorder.current
                recorder.store(q)
                teleop.targets[name] = q.copy()  # its snap key now goes to the new pose
                print_fn(f"stored {name}: q={np.round(q, 4).tolist()}")
            elif ev == "save":
                if not recorder.configs():
                    print_fn("nothing to save yet")
                    continue
                save_targets(out, recorder)
                print_fn(f"wrote {out}" + ("" if recorder.complete else " (incomplete)"))
        if events and any(e in ("next", "prev", "store") for e in events):
            print_fn(recorder.status())
        if "quit" in events:
            break
        # after a stall, go on from the current tick: the missed ones are not fired back to back
        k = max(k + 1, int((clock.now() - t0) / period))


def _make_arm(cfg: Any, clock: Any, q0: np.ndarray) -> tuple[Arm, SafetyChecker]:
    kind = cfg.arm.get("type")
    if kind == "sim":
        from robot.sim_arm import SimArm

        # the checks (and numbers) of the arm config's safety block, like the real arm
        arm = SimArm.from_config(cfg.arm, clock, q0)
        return arm, arm.safety
    if kind == "franka":
        from robot.franka_arm import FrankaArm

        arm = FrankaArm.from_config(cfg.arm, clock=clock.now)
        return arm, arm.safety
    raise SystemExit(f"moss-calibrate: unknown arm.type {kind!r} (arm=sim or arm=franka)")


def calibrate_targets(cfg: DictConfig, clock: Any = None, max_steps: int | None = None,
                      on_step: Callable[[int], None] | None = None, joystick: Any = None) -> bool:
    """Run the target calibration of the composed configs/calibrate.yaml."""
    from robot.clock import RealClock
    from robot.teleop.factory import make_teleop
    from tasks.targets import TargetSet, resolve_calibration

    names = target_names(cfg.task)
    calib = resolve_calibration(cfg.task.targets.calibration)
    out = Path(cfg.out) if cfg.get("out") else calib
    existing: dict[str, np.ndarray] = {}
    source = out if out.is_file() else calib
    if source.is_file():
        previous = TargetSet.load(source, home=names[0])
        if previous.arm == str(cfg.arm.type):
            existing = {n: previous[n].q for n in names if n in previous}
            print(f"previous poses from {source}: {sorted(existing)}")
        else:  # e.g. the simulated rig's poses for a real arm: neither snap targets nor kept in the file
            print(f"not using the poses of {source}: taken on arm={previous.arm}, this is arm={cfg.arm.type}")
    clock = clock or RealClock()
    q0 = existing.get(names[0], Q_READY)
    arm, safety = _make_arm(cfg, clock, np.asarray(q0))

    def is_safe(q: np.ndarray) -> bool:
        return not safety.workspace_violations(q)

    teleop = make_teleop(cfg.teleop, targets=dict(existing), snap_order=names[1:], is_safe=is_safe,
                         joystick=joystick)
    if names[0] != "home":  # the device's home key snaps to the rest target
        teleop.targets["home"] = teleop.targets.get(names[0], np.asarray(q0))
    recorder = TargetRecorder(names, existing, arm=str(cfg.arm.type))
    print(f"moss-calibrate: task {cfg.task.name}, arm {cfg.arm.type}, teleop {cfg.teleop.type}; writing {out}")
    try:
        return run_calibration(arm, teleop, recorder, out, clock, period=1.0 / float(cfg.teleop.control_hz),
                               max_steps=max_steps, on_step=on_step)
    finally:
        arm.close()
        teleop.device.close()


@command("moss-calibrate")
def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    if argv and argv[0] == "crop":
        from robot.crop_calibration import main as crop_main

        return crop_main(argv[1:])
    if argv and argv[0] == "targets":
        argv = argv[1:]
    cfg = cli_config(argv, "calibrate", __doc__)
    return 0 if cfg is None or calibrate_targets(cfg) else 1


if __name__ == "__main__":
    raise SystemExit(main())
