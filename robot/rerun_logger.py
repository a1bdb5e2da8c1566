"""Per-step logging of closed-loop episodes to rerun: `rerun=<file.rrd>` of moss-sim eval, moss-trial and
moss-replay (the rig commands hand `step` to the control loop as an on_step callback).

Per episode `<name>` (e.g. `trials/seed_1000000`), on the timelines `step` and `time` (seconds on the loop
clock from the episode's first step):
  <name>/camera                   the cropped frame the controller saw
  <name>/action                   the executed action (after the safety hook): one series per joint, named
  <name>/state                    the arm state the controller saw: one series per joint, named
  <name>/plan/chunk               the chunk in use (a tensor: its steps x 8), when the controller plans chunks;
                                  logged when a new chunk comes into use (the viewer shows it until the next)
  <name>/plan/age                 steps since that chunk's observation
  <name>/plan/late                late plans so far (chunk planners: steps held because no chunk was ready)
  <name>/distance/<target>        flange distance (m) to each target (forward kinematics of the arm state)
  <name>/latency_ms               command time - tick
  <name>/trials                   one text line per trial with its outcome, at its onset; and the loop's end
  <name>/outcome/success          1 / 0 per trial at its onset
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from moss_vla.rerun_log import JOINT_NAMES, open_recording, set_step
from robot.control_loop import StepInfo
from robot.fr3_kinematics import ee_position


def planned_chunk(controller: Any) -> tuple[int, np.ndarray] | None:
    """(the step it was planned from, the (n, A) chunk) of a chunk planner (robot/chunk_planner.py); for a policy
    stepped directly, (-1, the actions of its chunk still queued: none on the step that takes the last);
    None when there is none."""
    current = getattr(controller, "current_chunk", None)
    if current is not None:
        return current
    queue = getattr(controller, "_actions", None)  # MossVLAPolicy: the rest of its chunk, to be executed
    if queue:
        return -1, np.stack([np.asarray(a, dtype=np.float64).reshape(-1) for a in queue])
    inner = getattr(controller, "policy", None)  # a wrapper (moss-replay's open-loop probe)
    return planned_chunk(inner) if inner is not None and inner is not controller else None


class RerunStepLogger:
    """Logs every step of the episodes a rig command runs into one .rrd file (module docstring).

    targets: target name -> flange position (m) of the task's calibrated targets.
    """

    def __init__(self, path: str | os.PathLike, app_id: str, targets: Mapping[str, np.ndarray] | None = None) -> None:
        self.path = str(path)
        self.rec = open_recording(app_id, save=path)
        self.targets = {str(k): np.asarray(v, dtype=np.float64) for k, v in (targets or {}).items()}
        self.prefix = "episode"
        self.controller: Any = None
        self.t0: float | None = None
        self._times: list[float] = []  # each step's time in the episode
        self._named: set[str] = set()  # episodes whose action / state series are named
        self._chunk_key: Any = None
        self.n_steps = 0
        self.episodes = 0

    def start_episode(self, name: str, controller: Any = None, targets: Mapping[str, np.ndarray] | None = None) -> None:
        """Log the next steps under `name`; `controller` is asked for its planned chunk and late plans."""
        self.prefix, self.controller, self.t0, self._times = name, controller, None, []
        self._chunk_key: Any = None  # which chunk was logged last (its origin step; see step)
        if targets is not None:
            self.targets = {str(k): np.asarray(v, dtype=np.float64) for k, v in targets.items()}
        self.episodes += 1

    def step(self, info: StepInfo) -> None:
        """The control loop's on_step callback."""
        import rerun as rr

        if self.t0 is None:
            self.t0, self._times = info.tick, []
        self._times.append(info.tick - self.t0)
        set_step(self.rec, info.index, info.tick - self.t0)
        p, rec = self.prefix, self.rec
        image = info.observation.get("image")
        if image is not None:
            rec.log(f"{p}/camera", rr.Image(np.asarray(image)))
        if p not in self._named:  # the series' names, once per episode
            self._named.add(p)
            for what in ("action", "state"):
                rec.log(f"{p}/{what}", rr.SeriesLines(names=JOINT_NAMES), static=True)
        n = len(JOINT_NAMES)  # one call each for the action's and the state's joints
        rec.log(f"{p}/action", rr.Scalars(np.asarray(info.action, dtype=np.float64).reshape(-1)[:n]))
        rec.log(f"{p}/state", rr.Scalars(np.asarray(info.state.as_vector(), dtype=np.float64).reshape(-1)[:n]))
        rec.log(f"{p}/latency_ms", rr.Scalars(1e3 * float(info.latency)))
        chunk = planned_chunk(self.controller)
        if chunk is None:
            self._chunk_key = None
        else:
            origin, actions = chunk
            # a planner's chunk: its origin step; a policy's queue (origin -1): a new chunk when the queue grows
            key = origin if origin >= 0 else (-1, len(actions))
            new = key != self._chunk_key if origin >= 0 else (
                not isinstance(self._chunk_key, tuple) or len(actions) > self._chunk_key[1])
            self._chunk_key = key
            if new:
                rec.log(f"{p}/plan/chunk", rr.Tensor(np.asarray(actions, dtype=np.float32), dim_names=["step", "joint"]))
            if origin >= 0:
                rec.log(f"{p}/plan/age", rr.Scalars(float(info.index - origin)))
        late = getattr(self.controller, "n_late", None)
        if late is not None:
            rec.log(f"{p}/plan/late", rr.Scalars(float(late)))
        if self.targets:
            ee = ee_position(np.asarray(info.state.q, dtype=np.float64))
            for name, xyz in self.targets.items():
                rec.log(f"{p}/distance/{name}", rr.Scalars(float(np.linalg.norm(ee - xyz))))
        self.n_steps += 1

    __call__ = step

    def outcome(self, results: Sequence[Any], loop_end: str = "", message: str = "") -> None:
        """Each trial's outcome at its onset (InteractionResult-like: index, expected, success, reason, onset in
        stimulus time, which starts with the episode's first step, reaction_time, closest_target, closest_distance),
        and how the loop ended (at the last step)."""
        import rerun as rr

        for r in results:
            g = r.__dict__ if hasattr(r, "__dict__") else dict(r)
            onset = max(0.0, float(g.get("onset", 0.0)))
            set_step(self.rec, int(np.searchsorted(self._times, onset)), onset)
            rt = g.get("reaction_time")
            near = g.get("closest_target")
            text = (f"trial {g.get('index')}: expected {g.get('expected')}, "
                    f"{'success' if g.get('success') else 'FAILED ' + str(g.get('reason'))}"
                    + (f", reaction {rt:.2f} s" if rt is not None else "")
                    + (f", closest {near} at {100 * g['closest_distance']:.1f} cm" if near else ""))
            self.rec.log(f"{self.prefix}/trials", rr.TextLog(text, level="INFO" if g.get("success") else "WARN"))
            self.rec.log(f"{self.prefix}/outcome/success", rr.Scalars(1.0 if g.get("success") else 0.0))
        if loop_end:
            set_step(self.rec, max(len(self._times) - 1, 0), self._times[-1] if self._times else 0.0)
            self.rec.log(f"{self.prefix}/trials", rr.TextLog(f"episode ended: {loop_end} {message}".strip()))

    def close(self) -> None:
        self.rec.flush()
        self.rec.disconnect()
