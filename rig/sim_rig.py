"""The simulated rig, assembled from config: task display -> virtual ZED -> crop -> controller -> SimArm.

`build_sim_rig(cfg, seed)` makes every part of one episode from the composed `configs/sim.yaml`
(groups task, camera, arm, teleop, rig) and a seed; `SimRig.run_episode(controller, writer)` runs the
one control loop (robot/control_loop.py) over the task on a SimClock, writes the episode if a writer
is given, and scores it with tasks/scoring.py. Collection (`moss-sim collect`) and evaluation of a
policy both go through `run_episode`; only the controller differs.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from omegaconf import DictConfig

from moss_vla.config import Rule, integer, number, one_of, plain
from robot.cameras.factory import make_camera, make_display_crop
from robot.clock import SimClock
from robot.control_loop import ControlLoop, JointLimitSafety, LoopResult, StepInfo
from robot.display_crop import DisplayCrop
from robot.sim_arm import SimArm
from robot.sim_camera import SimCamera
from tasks import make_task
from tasks.scoring import ScoreSummary, score_interactions
from tasks.scripted_operator import ScriptedOperator
from tasks.stimulus import StimulusTask
from tasks.targets import TargetSet, load_targets

# the `rig` group (configs/rig/*.yaml) as every command checks it before any work (moss_vla/config.py)
RIG_RULES: dict[str, Rule] = {
    "rig.period": number(above=0, hint="control period in s, e.g. 0.1"),
    "rig.camera_timeout": number(above=0),
    "rig.loop_sync": one_of("frame", "clock"),
    "rig.tail": number(lo=0),
    "rig.home_noise": number(lo=0),
    "rig.scoring.tolerance": number(above=0),
    "rig.scoring.dwell": number(lo=0),
    "rig.safety.margin": number(lo=0),
    "rig.writer.queue_size": integer(1),
}


@dataclass
class EpisodeOutcome:
    """What one simulated episode produced."""

    seed: int
    loop: LoopResult
    score: ScoreSummary
    times: np.ndarray  # (N,) arm state times (s, = stimulus time)
    q: np.ndarray  # (N, 7) arm joint positions at those times
    episode_index: int | None  # index in the store, None if not written (or not committed)


def label_targets(task_cfg: Mapping[str, Any], label_names: list[str]) -> dict[int, str]:
    """label index -> target name, from the task config's `targets.labels` map (label name -> target)."""
    labels = task_cfg["targets"]["labels"]
    missing = [n for n in label_names if n not in labels]
    if missing:
        raise ValueError(f"task config {task_cfg.get('name')}: targets.labels has no target for labels {missing}")
    return {i: str(labels[n]) for i, n in enumerate(label_names)}


def task_targets(task_cfg: Mapping[str, Any], label_names: list[str]) -> tuple[TargetSet, dict[int, str]]:
    """The task's calibrated targets and its label -> target map; a target the labels name but the
    calibration file lacks fails here, naming the file."""
    targets = load_targets(str(task_cfg["targets"]["calibration"]), home=str(task_cfg["targets"].get("rest", "home")))
    l2t = label_targets(task_cfg, label_names)
    for name in l2t.values():
        targets[name]
    return targets, l2t


@dataclass
class SimRig:
    """All parts of one simulated episode (fresh per episode: a rig is cheap to build)."""

    cfg: DictConfig
    seed: int
    task: StimulusTask
    targets: TargetSet
    label_to_target: dict[int, str]
    clock: SimClock
    camera: SimCamera
    crop: DisplayCrop
    arm: SimArm

    @property
    def period(self) -> float:
        return float(self.cfg.rig.period)

    def stimulus(self, t: float):
        """Ground truth of what the display shows at camera time t (the 60 Hz refresh before t)."""
        return self.task.state(self.camera.display_time(t))

    def scripted_operator(self) -> ScriptedOperator:
        """The scripted operator configured by the `teleop` group, seeded with the episode seed.

        Unlike the live rig (`scripted_speed_factor`, configs/record.yaml) its peak speed needs no margin:
        the virtual ZED captures mid-refresh (configs/camera/sim.yaml: phase -0.04 s, jitter <= 6 ms), so
        the stimulus time advances by exactly one period per frame; the largest joint step measured over
        200 episodes of each task was 0.0896 rad (step limit 0.1)."""
        return ScriptedOperator.from_config(self.cfg.teleop, self.targets, self.label_to_target, self.seed,
                                            dwell=float(self.cfg.rig.scoring.dwell), task_kind=str(self.cfg.task.kind))

    def store_meta(self) -> dict[str, Any]:
        """Store-level metadata of a simulated recording (camera, display, rig)."""
        cam = plain(self.cfg.camera)
        cam["crop"] = self.crop.to_config()
        return {
            "fps": round(1.0 / self.period, 6),
            "camera": cam,
            "display": {"screen_size": list(self.task.screen_size), "fps": float(self.cfg.camera.display_fps)},
            "rig": {"type": "sim", "arm": plain(self.cfg.arm), **plain(self.cfg.rig)},
        }

    def episode_meta(self, operator: str) -> dict[str, Any]:
        meta = self.task.meta()
        meta.update(
            operator=operator,
            start_time=time.time(),
            sim=True,
            targets={
                "calibration": str(self.cfg.task.targets.calibration),
                "label_to_target": {self.task.label_names[i]: n for i, n in self.label_to_target.items()},
                "ee": {n: self.targets[n].ee.tolist() for n in self.targets.names},
            },
        )
        return meta

    def score(self, times: np.ndarray, q: np.ndarray) -> ScoreSummary:
        sc = self.cfg.rig.scoring
        return score_interactions(times, q, self.task.interactions, self.label_to_target,
                                  self.targets.ee_positions(sorted(set(self.label_to_target.values()))),
                                  tolerance=float(sc.tolerance), dwell=float(sc.dwell))

    def run_episode(self, controller: Any, writer: Any | None = None, operator: str | None = None,
                    on_step: Any | None = None) -> EpisodeOutcome:
        """Run the task once with `controller` (policy or operator), write it (committed only if the loop
        ran to the end) and score it. The success labels go into the episode metadata. `on_step(StepInfo)`
        sees every step (e.g. robot/rerun_logger.py). A rig runs one
        episode (its clock, arm and camera move on): build a new one for the next."""
        if self.clock.now() != 0.0:
            raise RuntimeError("SimRig.run_episode: this rig already ran an episode; build_sim_rig(cfg, seed) again")
        safety = JointLimitSafety(**plain(self.cfg.rig.safety))
        loop = ControlLoop(self.clock, self.camera, self.crop, self.arm, controller, self.task.instruction,
                           stimulus=self.stimulus, safety=safety, writer=writer, period=self.period,
                           camera_timeout=float(self.cfg.rig.camera_timeout), sync=str(self.cfg.rig.loop_sync))
        log_t: list[float] = []
        log_q: list[np.ndarray] = []

        def record(info: StepInfo) -> None:
            log_t.append(info.state.timestamp)
            log_q.append(info.state.q)

        controller.reset()
        name = operator or getattr(controller, "name", type(controller).__name__)
        if writer is not None:
            writer.start_episode(self.episode_meta(name))
        try:
            result = loop.run(duration=self.task.duration + float(self.cfg.rig.tail),
                              on_step=[record] + ([on_step] if on_step is not None else []))
        except BaseException:
            if writer is not None:
                writer.discard()
            raise
        times, q = np.asarray(log_t), np.asarray(log_q).reshape(-1, 7)
        score = self.score(times, q)
        index = None
        if writer is not None:
            if result.reason == "duration":
                index = writer.commit({"success": bool(score.n and score.n_success == score.n),
                                       "score": score.to_dict(), "loop": result.summary()})
            else:
                writer.discard()
        return EpisodeOutcome(self.seed, result, score, times, q, index)


def build_sim_rig(cfg: DictConfig, seed: int) -> SimRig:
    """Every part of one simulated episode from the composed sim config and the episode seed."""
    task = make_task(cfg.task, seed)
    targets, label_to_target = task_targets(cfg.task, task.label_names)
    clock = SimClock(0.0)
    rng = np.random.default_rng([int(seed), 0xA12])
    q0 = targets.home.q + rng.normal(0.0, float(cfg.rig.home_noise), 7)
    arm = SimArm.from_config(plain(cfg.arm), clock, q0, gripper_width=float(cfg.teleop.get("gripper_width", 0.0)))
    camera = make_camera(cfg.camera, clock=clock, render=task.render, seed=int(seed))
    crop = make_display_crop(cfg.camera)
    return SimRig(cfg, int(seed), task, targets, label_to_target, clock, camera, crop, arm)
