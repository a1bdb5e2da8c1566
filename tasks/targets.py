"""Named pointing targets: joint configurations of the arm and their end-effector (flange) positions.

One small YAML calibration file per task (`tasks/calibration/<name>.yaml`) holds `home` plus the bowls
(MoveSense) or cups (PongPredict). The scripted operator moves to the joint configurations; scoring
compares the arm's flange position with the stored positions. Users record their own files with the
real arm; the stored position must match the forward kinematics of the stored joints (checked on load,
so a file recorded with a tool offset is caught instead of silently breaking scoring). A file says which
arm its poses were taken on (`arm: sim` for the built-in ones; `moss-calibrate` writes the arm it ran on),
so that a real arm is never homed to, or scored against, the simulated rig's poses.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from robot.fr3_kinematics import Q_MAX, Q_MIN, ee_position

CALIBRATION_DIR = Path(__file__).resolve().parent / "calibration"
HOME = "home"


@dataclass(frozen=True)
class Target:
    """A named arm configuration `q` (7,) rad and its flange position `ee` (3,) m in the base frame."""

    name: str
    q: np.ndarray
    ee: np.ndarray


class TargetSet:
    """The targets of one task: `home` plus the pointing targets, looked up by name."""

    def __init__(self, targets: Mapping[str, Target], source: str = "<memory>", home: str = HOME,
                 arm: str | None = None) -> None:
        self.source = source
        self.arm = arm  # the arm type the poses were taken on ("sim", "franka"); None: not recorded
        self.targets = dict(targets)
        self.home_name = home
        if home not in self.targets:
            raise ValueError(f"{source}: the calibration needs a '{home}' target (where the arm rests between "
                             f"interactions), have {sorted(self.targets)}")

    # --- access ---------------------------------------------------------------------------------------
    def __getitem__(self, name: str) -> Target:
        try:
            return self.targets[name]
        except KeyError:
            raise KeyError(f"{self.source}: no target named '{name}' (have {sorted(self.targets)})") from None

    def __contains__(self, name: object) -> bool:
        return name in self.targets

    @property
    def names(self) -> list[str]:
        return list(self.targets)

    @property
    def home(self) -> Target:
        return self.targets[self.home_name]

    @property
    def pointing_names(self) -> list[str]:
        """All targets except home: the places the arm can point to."""
        return [n for n in self.targets if n != self.home_name]

    def ee_positions(self, names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """name -> flange position (3,) for `names` (default: the pointing targets)."""
        return {n: self[n].ee for n in (self.pointing_names if names is None else names)}

    # --- construction / io -------------------------------------------------------------------------------
    @classmethod
    def from_joint_configs(
        cls, configs: Mapping[str, Sequence[float]], source: str = "<memory>", home: str = HOME,
        arm: str | None = None,
    ) -> TargetSet:
        """Targets from joint configurations (taken on `arm`); positions from the FR3 forward kinematics."""
        targets = {}
        for name, q in configs.items():
            q = np.asarray(q, dtype=np.float64)
            targets[name] = Target(name, q, ee_position(q))
        return cls(targets, source, home, arm)

    @classmethod
    def load(cls, path: str | Path, home: str = HOME, ee_tolerance: float = 0.01) -> TargetSet:
        """Read a calibration YAML (see tasks/calibration/movesense_lr.yaml) and check it."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"targets calibration file {path} does not exist "
                                    f"(built-in ones: {sorted(p.stem for p in CALIBRATION_DIR.glob('*.yaml'))})")
        with open(path) as f:
            doc = yaml.safe_load(f)
        if not isinstance(doc, dict) or not isinstance(doc.get("targets"), dict):
            raise TypeError(f"{path}: expected a mapping with a 'targets:' section of name -> {{q: [...], ee: [...]}}")
        targets = {}
        for name, entry in doc["targets"].items():
            where = f"{path}: targets.{name}"
            if not isinstance(entry, dict) or "q" not in entry:
                raise ValueError(f"{where}: needs 'q' (7 joint positions, rad) and 'ee' (flange x, y, z, m)")
            q = np.asarray(entry["q"], dtype=np.float64)
            if q.shape != (7,):
                raise ValueError(f"{where}.q: expected 7 joint positions, got {entry['q']}")
            if np.any(q < Q_MIN) or np.any(q > Q_MAX):
                raise ValueError(f"{where}.q = {q.tolist()} lies outside the FR3 joint limits")
            fk = ee_position(q)
            ee = np.asarray(entry.get("ee", fk), dtype=np.float64)
            if ee.shape != (3,):
                raise ValueError(f"{where}.ee: expected a flange position [x, y, z], got {entry.get('ee')}")
            if np.linalg.norm(ee - fk) > ee_tolerance:
                raise ValueError(
                    f"{where}.ee = {ee.tolist()} differs from the forward kinematics of q "
                    f"({np.round(fk, 4).tolist()}) by {np.linalg.norm(ee - fk):.3f} m; store the FLANGE "
                    f"position (no tool offset), e.g. recompute it with tasks.targets.TargetSet.from_joint_configs"
                )
            targets[name] = Target(str(name), q, ee)
        arm = doc.get("arm")
        return cls(targets, str(path), home, None if arm is None else str(arm))

    def save(self, path: str | Path) -> None:
        doc = {
            "frame": "base",
            "ee": "flange",
            **({} if self.arm is None else {"arm": self.arm}),
            "targets": {
                n: {"q": [round(float(v), 5) for v in t.q], "ee": [round(float(v), 4) for v in t.ee]}
                for n, t in self.targets.items()
            },
        }
        with open(path, "w") as f:
            yaml.safe_dump(doc, f, sort_keys=False, default_flow_style=None)

    def check_separation(self, names: Sequence[str], min_distance: float) -> None:
        """Raise if two of `names` are closer than `min_distance` (scoring could not tell them apart)."""
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                d = float(np.linalg.norm(self[a].ee - self[b].ee))
                if d < min_distance:
                    raise ValueError(f"{self.source}: targets '{a}' and '{b}' are only {d:.3f} m apart; "
                                     f"scoring needs more than {min_distance} m")


def check_taken_on(targets: TargetSet, arm_type: str) -> None:
    """Refuse to drive a real arm with poses taken on another arm (the built-in files are the simulated
    rig's): homing would move it to places nobody checked, and scoring would judge against them."""
    if arm_type != "sim" and targets.arm != arm_type:
        taken = f"poses taken on arm={targets.arm}" if targets.arm else "poses without an 'arm:' entry"
        raise ValueError(f"{targets.source} holds {taken}, not on arm={arm_type}: record this rig's own with "
                         f"`moss-calibrate targets task=<task> arm={arm_type} out=<file>` and set "
                         f"task.targets.calibration=<file> (or, if the file's poses were taken on this arm, add "
                         f"'arm: {arm_type}' to it)")


def resolve_calibration(name_or_path: str | Path) -> Path:
    """A built-in calibration name ('movesense') or a path to a YAML file."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.is_file():
        return p if p.is_absolute() or p.is_file() else CALIBRATION_DIR / p
    return CALIBRATION_DIR / f"{name_or_path}.yaml"


def load_targets(name_or_path: str | Path, home: str = HOME) -> TargetSet:
    """Load the targets of a task: `load_targets('pongpredict')` or `load_targets('my_rig.yaml')`."""
    return TargetSet.load(resolve_calibration(name_or_path), home)
