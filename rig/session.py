"""One real-time episode on the live rig: the piece `moss-record` and `moss-trial` share.

`run_live_episode` shows the episode on the display, homes the arm, starts the stimulus and runs the
one control loop (robot/control_loop.py) until the display's episode is over (plus a tail), a stop
condition fires (camera stall, a streak of missed deadlines, a stop key or Ctrl-C through the session's
`StopFlag`), or the loop ends on its own (safety stop, arm error, camera failure, controller exception).
The arm is stopped on every abnormal end (by the loop). The arm's joint log, with stimulus times taken
from the display process, is scored by tasks/scoring.py. If a writer is given the episode is committed
only when it ran to its end (`commit_reasons`); otherwise it is discarded, deliberately, and the caller
records why. Step timing is shown live (tqdm) and returned with the loop result.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from omegaconf import DictConfig

from moss_vla.config import plain
from rig.live_rig import LiveRig
from robot.control_loop import ControlLoop, JointLimitSafety, LoopResult, StepInfo
from robot.stop_conditions import CameraStall, MissedDeadlineStreak, StopFlag, Until
from tasks.scoring import InteractionResult, ScoreSummary, score_interactions, stopped_early

EPISODE_DONE = "episode_done"
USER_STOPS = ("interrupted", "stop_key")  # the operator ended the session: unfinished trials are not counted
# the rig failed, not the policy or the operator: the session ends (the next episodes would fail the same
# way) and the trials it cut short are not counted
RIG_FAULTS = ("camera", "camera_stall", "display_lost", "display_timeout")
SESSION_ENDS = USER_STOPS + RIG_FAULTS
OPERATOR_DISCARD = "operator_discard"  # the teleop's discard key: the episode ends, is not kept, the session goes on


def exit_code(stopped: str | None, ok: bool = True) -> int:
    """A session CLI's exit code: 130 after a user stop (`USER_STOPS`: stop key, Ctrl-C), 1 after any other
    stop of the session (e.g. the display process died) or when not `ok`, else 0."""
    if stopped in USER_STOPS:
        return 130
    return 1 if stopped is not None or not ok else 0


@dataclass
class LiveEpisode:
    """What one real-time episode produced."""

    seed: int
    task_name: str
    label_names: list[str]
    loop: LoopResult
    score: ScoreSummary  # interactions judged (see `trial_results` for aborted episodes)
    times: np.ndarray  # (N,) stimulus times of the arm samples
    q: np.ndarray  # (N, 7) arm joint positions
    episode_index: int | None  # index in the store if committed
    interactions: list[Any] = field(default_factory=list)

    @property
    def completed(self) -> bool:
        return self.loop.reason == EPISODE_DONE

    def trial_results(self) -> list[InteractionResult]:
        """One result per interaction of the episode. If the loop stopped early, interactions whose
        deadline had not passed fail with reason "stopped:<loop reason>" (a fault of the policy, or of the
        arm it drove, is a failed trial), except when the operator stopped the session or the rig failed
        (`SESSION_ENDS`): those are not counted."""
        if self.completed:
            return list(self.score.results)
        t_last = float(self.times[-1]) if len(self.times) else -np.inf
        return stopped_early(self.score.results, t_last, self.loop.reason,
                             count_cut=self.loop.reason not in SESSION_ENDS)


def end_of_episode(rig: LiveRig, ep: LiveEpisode, stop: StopFlag, ask: Callable[[str], str] = input) -> None:
    """Between two episodes of a session: a user stop or a rig fault ends the session (`stop` is set); so
    does an arm error unless the arm is recovered (`LiveRig.recover_arm`, by the session's after_arm_error)."""
    reason, message = ep.loop.reason, ep.loop.message
    if reason in SESSION_ENDS:
        stop.set(reason, message)
    elif reason == "arm" and not rig.recover_arm(message, ask):
        stop.set("arm_error", message)


class LiveStatus:
    """Live deadline accounting: a tqdm bar over the episode's stimulus time with step p50/p99 and misses."""

    def __init__(self, desc: str, total: float, period: float, enabled: bool = True, every: int = 5) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=round(total, 1), desc=desc, unit="s", disable=not enabled,
                        bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.1f}/{total:.1f} s {postfix}")
        self.period, self.every = period, max(1, int(every))
        self.latencies: list[float] = []
        self.missed = 0

    def update(self, info: StepInfo, t_stim: float | None) -> None:
        self.latencies.append(info.latency)
        self.missed += info.latency > self.period
        if t_stim is not None:
            self.bar.n = round(min(t_stim, self.bar.total), 1)
        if info.index % self.every == 0:
            lat = 1e3 * np.asarray(self.latencies)
            self.bar.set_postfix_str(f"step p50 {np.percentile(lat, 50):.0f} ms p99 {np.percentile(lat, 99):.0f} ms "
                                     f"missed {self.missed}", refresh=False)
            self.bar.refresh()

    def close(self) -> None:
        self.bar.close()


def make_scripted_operator(cfg: DictConfig, rig: LiveRig, seed: int) -> Any:
    """The scripted operator of episode `seed` (`teleop=scripted`: reads the display's stimulus ground truth;
    seeded per episode, so built per episode)."""
    from tasks.scripted_operator import ScriptedOperator

    # in real time the stimulus time between two frames varies (display refresh, capture jitter), so the
    # peak speed keeps a margin below the arm's step limit
    return ScriptedOperator.from_config(cfg.teleop, rig.targets, rig.label_to_target, seed,
                                        dwell=float(cfg.rig.scoring.dwell), task_kind=str(cfg.task.kind),
                                        speed_factor=float(cfg.scripted_speed_factor))


def make_teleop_operator(cfg: DictConfig, rig: LiveRig) -> Any:
    """The keyboard / gamepad teleoperator of a recording session, snapping to the task's targets. It holds
    a device (a pygame window, a joystick): build one per session and close its `.device` at the end."""
    from robot.teleop import make_teleop

    # snap keys/buttons in label order (left bowl, right bowl / red, green, blue cups), then home
    order = [rig.label_to_target[i] for i in sorted(rig.label_to_target)]
    order += [n for n in rig.targets.names if n not in order]

    def is_safe(q: np.ndarray) -> bool:
        # the rig's arm of the moment (arm=sim is rebuilt at every homing)
        checker = getattr(rig.arm, "safety", None)
        return checker is None or not checker.workspace_violations(q)

    return make_teleop(plain(cfg.teleop), {n: rig.targets[n].q for n in rig.targets.names}, snap_order=order,
                       is_safe=is_safe)


def episode_meta(rig: LiveRig, task: Any, seed: int, operator: str) -> dict[str, Any]:
    meta = task.meta()
    meta.update(
        operator=operator,
        seed=int(seed),
        start_time=time.time(),
        sim=rig.camera_type == "sim" and rig.arm_type == "sim",
        live=True,
        camera=rig.camera_type,
        arm=rig.arm_type,
        display_log=str(rig.display_log),  # the display's JSONL frame log (every shown frame, events)
        display_episode=rig.display_episode,  # the driver's episode counter in that log
        targets={
            "calibration": str(rig.cfg.task.targets.calibration),
            "label_to_target": {task.label_names[i]: n for i, n in rig.label_to_target.items()},
            "ee": {n: rig.targets[n].ee.tolist() for n in rig.targets.names},
        },
    )
    return meta


def run_live_episode(
    rig: LiveRig,
    controller: Any,
    seed: int,
    stop: StopFlag,
    writer: Any | None = None,
    operator: str = "policy",
    progress: bool = True,
    on_step: Callable[[StepInfo], None] | None = None,
    on_interrupt: str = "discard",
) -> LiveEpisode:
    """Run episode `seed` once in real time (see module docstring)."""
    cfg = rig.cfg
    lc, period, tail = cfg.loop, float(cfg.rig.period), float(cfg.rig.tail)
    task = rig.show_episode(seed)
    rig.home_arm(seed, should_stop=lambda: stop.is_set)
    controller.reset()
    safety = JointLimitSafety(**plain(cfg.rig.safety))
    loop = ControlLoop(rig.clock, rig.camera, rig.crop, rig.arm, controller, task.instruction,
                       stimulus=rig.stimulus_at_frame, safety=safety, writer=writer, period=period,
                       camera_timeout=float(cfg.rig.camera_timeout), sync=str(cfg.rig.loop_sync))
    t_end = task.duration + tail

    done_at: list[float] = []

    def done(info: StepInfo) -> bool:
        """The display reached the episode's end (status "done") at least `tail` seconds ago."""
        s = rig.stimulus.latest()
        if s is None or s.episode != rig.display_episode or s.status != "done":
            return False
        if not done_at:
            done_at.append(rig.clock.now())
        return rig.clock.now() - done_at[0] >= tail - 1e-9

    def display_alive(info: StepInfo) -> str | None:
        code = rig.display.proc.poll() if rig.display.proc is not None else None
        if code is None:
            return None
        # the display's quit key / window close ends the process normally: the operator's stop key
        return "stop_key" if code == 0 else "display_lost"

    def teleop_quit(info: StepInfo) -> str | tuple[str, str] | None:
        last = getattr(controller, "last_input", None)
        events = getattr(last, "events", ()) if last is not None else ()
        if "discard" in events and writer is not None:  # moss-record's discard key: this episode is not kept
            return OPERATOR_DISCARD, "the operator pressed the discard key"
        return "stop_key" if "quit" in events else None

    # frame age when the controller got it (obs["t"]): a slow step is the deadline accounting's business
    stall = CameraStall(float(lc.stall_timeout), rig.clock.now,
                        frame_age=lambda info: info.observation["t"] - rig.frame_time(info.frame.timestamp))
    conditions = [stop, display_alive, teleop_quit, stall,
                  MissedDeadlineStreak(int(lc.max_missed_streak), period), Until(done, EPISODE_DONE)]
    status = LiveStatus(f"{task.name} seed {seed}", t_end, period, enabled=progress)
    log_t: list[float] = []
    log_q: list[np.ndarray] = []

    def record(info: StepInfo) -> None:
        t_stim = rig.stimulus.stim_time(info.state.timestamp)
        if t_stim is not None and (not log_t or t_stim >= log_t[-1]):
            log_t.append(t_stim)
            log_q.append(info.state.q)
        status.update(info, t_stim)
        if on_step is not None:
            on_step(info)

    if writer is not None:
        writer.start_episode(episode_meta(rig, task, seed, operator))
    try:
        if stop.is_set:  # stopped while homing: not one step of the episode
            result = LoopResult(stop.reason or "interrupted", stop.detail)
        else:
            rig.start_episode()
            # a guard: the display's "episode over" normally ends the loop well before this
            result = loop.run(duration=t_end + 5.0, stop_conditions=conditions, on_step=[record])
        if result.reason == "duration":
            result.reason, result.message = "display_timeout", "the display never reported the episode's end"
    except BaseException:
        status.close()
        if writer is not None:
            writer.discard()
        raise
    status.close()
    if result.reason != EPISODE_DONE:
        rig.arm.stop()
    times, q = np.asarray(log_t, dtype=np.float64), np.asarray(log_q).reshape(-1, 7)
    sc = cfg.rig.scoring
    score = score_interactions(times, q, task.interactions, rig.label_to_target,
                               rig.targets.ee_positions(sorted(set(rig.label_to_target.values()))),
                               tolerance=float(sc.tolerance), dwell=float(sc.dwell))
    index = None
    if writer is not None:
        keep = result.reason == EPISODE_DONE or (result.reason in USER_STOPS and on_interrupt == "commit")
        if keep and writer.n_frames_in_episode > 0:
            index = writer.commit({"success": bool(score.n and score.n_success == score.n),
                                   "score": score.to_dict(), "loop": result.summary(),
                                   "end_reason": result.reason, "complete": result.reason == EPISODE_DONE})
        else:
            writer.discard()
    return LiveEpisode(int(seed), task.name, list(task.label_names), result, score, times, q, index,
                       list(task.interactions))

