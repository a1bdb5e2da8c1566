"""Chunk planning outside the control step: the 10 Hz loop never waits for the policy to plan its next
action chunk, and simulated trials can be run on the same schedule.

A policy step has two halves: `observe` (check the observation, encode the newest frame into the
streaming window: every step, in order) and `plan` (the rest of the vision tower, the VL backbone and
the 4-step flow-matching head: the whole chunk; its cost per preset is in
benchmarks/results/policy.json and loop.json, docs/results.md sections 3 and 8) every n_action_steps
steps. Done inside one 100 ms period, the planning steps can miss their deadlines (under load).
`AsyncChunkPlanner` wraps the policy with the same controller interface (`reset`, `select_action`) and
runs both halves on one worker thread:

    step k, main thread:  take the chunk the worker finished, if any -> hand obs_k to the worker (observe,
                          and plan too if the chunk in use has `lead` actions left) -> return the
                          chunk's action for step k at once
    worker (FIFO):        observe(obs_0), plan(obs_0), observe(obs_1), ...: frames reach the streaming
                          cache in order and a plan sees exactly the window that ends at its step

Alignment (how the policy was trained: actions t..t+H-1 from the window ending at t): the chunk planned
from the observation of step s holds the actions of steps s, s+1, ...; when it arrives d steps later its
first d actions have elapsed and are dropped, and step k uses chunk[k - s]. Only the first
n_action_steps actions of a chunk are used (the policy's execution horizon, as in `select_action`).
If the chunk in use runs out before the next one arrives, the last action is held and counted
("planner late"); before an episode's first chunk arrives, the arm holds the state of the episode's
first step (state and action share one layout: 7 joint positions + gripper width).

`DelayedChunkPlanner` is the same schedule in simulated time (`moss-sim eval planner.mode=delayed`): it
plans inline, where the clock stands still, and delivers each chunk exactly `delay` steps after its
observation (1 on the rig, as measured: benchmarks/results/loop.json), so that closed-loop
trials show what the rig's planner does to a policy, deterministically. `ChunkPlanner` holds the schedule
both share; the two differ only in where a job runs and when its chunk becomes visible.

Real-time chunking (`planner.rtc.enabled`, moss_vla/rtc.py): each plan also hands the policy the rest of the
chunk in use from the plan's step on (the whole planned chunk, past the n_action_steps that run; a step the
delay runs past those holds their last) and the delay d (delayed: `delay`; async: the delay of the episode's
last chunk, 1 before the first), so the new chunk is sampled to agree with the d actions that will have run
when it arrives and to blend in after them. Every switch to a new chunk is measured: `boundary_jumps` (the
L2 distance between the first action used from the new chunk and the last one executed; over the action
vector: joint angles in rad and the gripper width in m) against `within_steps` (the same between two steps
of one chunk), per episode.

Failures while planning (an exception, a non-finite action) are raised by `select_action` (the async
planner's: the next one) as `PlannerError`, so the control loop stops the arm and ends the trial with
reason "controller" and the message; so is a hold longer than `max_late_streak` steps (the planner cannot
keep up: the arm no longer follows what the camera sees). The loop reports `loop_stats()` with its
deadline statistics, plus the policy's own when it has them (a `RemotePolicy` served by moss-serve,
`planner.remote`: round trips, failures, reconnects; moss_vla/remote_policy.py).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Self

import numpy as np

from moss_vla.rtc import RTCRequest, rtc_settings

if TYPE_CHECKING:
    from lerobot.policies.rtc.configuration_rtc import RTCConfig


class PlannerError(RuntimeError):
    """The chunk planner failed (exception, non-finite action) or fell too far behind."""


def is_chunk_policy(policy: Any) -> bool:
    """Whether `policy` splits its step into `observe(obs)` and `plan(obs) -> (H, A)` (MossVLAPolicy does)."""
    return all(callable(getattr(policy, name, None)) for name in ("reset", "observe", "plan"))


@dataclass
class _Job:
    generation: int  # the episode (reset() count) the job belongs to: jobs of an older one are skipped
    step: int
    obs: dict[str, Any] | None  # None: reset the policy
    plan: bool
    rtc: RTCRequest | None = None  # real-time chunking: the chunk to stay with


@dataclass
class _Chunk:
    generation: int
    origin: int  # the step whose observation it was planned from
    actions: np.ndarray  # (n_steps, A)
    seconds: float  # planning time
    planned: np.ndarray  # (H, A): the whole chunk (the prefix of the next plan's real-time chunking)


class ChunkPlanner:
    """`select_action(obs) -> (A,)` from chunks planned outside the step (see module docstring); subclasses
    decide where a job runs (`_submit`) and when a planned chunk is visible (`_collect`).

    `policy`: has reset / observe / plan (`is_chunk_policy`); `lead`: actions left in the chunk in use
    when the next one is planned (1..n_steps); `n_steps`, `action_dim`: default to the policy config's
    n_action_steps and action_dim; `max_late_streak`: held steps in a row that end the episode; `rtc`: real-time
    chunking's settings (lerobot's RTCConfig, `planner.rtc`; None or not enabled: off).
    """

    mode = ""  # the `planner.mode` that builds it

    def __init__(self, policy: Any, lead: int, max_late_streak: int, n_steps: int | None = None,
                 action_dim: int | None = None, rtc: RTCConfig | None = None) -> None:
        if not is_chunk_policy(policy):
            raise TypeError(f"{type(self).__name__} needs a policy with reset(), observe(obs) and plan(obs); "
                            f"got {type(policy).__name__}")
        self.rtc = rtc if rtc is not None and rtc.enabled else None
        if self.rtc is not None and not getattr(policy, "supports_rtc", False):
            raise ValueError(f"planner.rtc.enabled=true: {type(policy).__name__} cannot sample a chunk guided by the "
                             f"previous one (real-time chunking needs MossVLAPolicy's flow-matching head, in process "
                             f"or served by moss-serve); set planner.rtc.enabled=false")
        config = getattr(policy, "config", None)
        self.n_steps = int(n_steps if n_steps is not None else config.n_action_steps)
        self.action_dim = int(action_dim if action_dim is not None else config.action_dim)
        if not 1 <= int(lead) <= self.n_steps:
            raise ValueError(f"planner lead must be in [1, n_action_steps = {self.n_steps}], got {lead}")
        if int(max_late_streak) < 1:
            raise ValueError(f"planner max_late_streak must be >= 1, got {max_late_streak}")
        self.policy, self.lead, self.max_late_streak = policy, int(lead), int(max_late_streak)
        self._generation = 0
        self._clear_episode()

    # ---- to be provided by a subclass ------------------------------------------------------------------
    def _submit(self, job: _Job) -> None:
        """Hand `job` over (it is run after every job submitted before it)."""
        raise NotImplementedError

    def _collect(self, step: int) -> _Chunk | None:
        """The chunk of this episode that became visible by `step`, if any (once)."""
        raise NotImplementedError

    # ---- the schedule ----------------------------------------------------------------------------------
    def _clear_episode(self) -> None:
        self._step = 0
        self._chunk: np.ndarray | None = None  # (n, A) chunk in use
        self._planned: np.ndarray | None = None  # (H, A) the whole of it, as planned
        self._origin = 0  # the step whose observation it was planned from
        self._from_chunk = False  # the last action came from the chunk in use (not held)
        self.boundary_jumps: list[float] = []  # |first action of a new chunk - last action executed|
        self.within_steps: list[float] = []  # |action - the one before| within one chunk
        self._pending: int | None = None  # the step of the plan under way
        self._last: np.ndarray | None = None
        self._hold_streak = 0
        self.n_late = self.n_start_holds = self.longest_hold_streak = 0
        self.n_failed = 0  # plans that failed (the episode ends at the first: at most 1)
        self.plan_seconds: list[float] = []
        self.plan_delays: list[int] = []  # steps from a plan's observation to the step that first used it

    def _new_generation(self) -> None:
        """Count a new episode: whatever belongs to an older one is dropped."""
        self._generation += 1

    def reset(self) -> None:
        """Start a new episode: a plan not yet delivered is cancelled (a running one is finished and its
        chunk dropped); the policy is reset after the jobs already submitted."""
        self._new_generation()
        self._clear_episode()
        self._submit(_Job(self._generation, 0, None, False))

    @property
    def current_chunk(self) -> tuple[int, np.ndarray] | None:
        """(the step whose observation it was planned from, the (n, A) chunk in use), None before the first plan
        of the episode (for loggers: robot/rerun_logger.py)."""
        return None if self._chunk is None else (self._origin, self._chunk)

    def select_action(self, obs: dict[str, Any]) -> np.ndarray:
        """The action (A,) for this step; hands `obs` over for observing (and planning) and never waits."""
        k = self._step
        switched = self._take_chunk(k)
        plan = self._pending is None and (self._chunk is None or self._origin + len(self._chunk) - k <= self.lead)
        if plan:
            self._pending = k
        # the loop may reuse its buffers: the planner gets its own copy of the arrays
        snapshot = {key: np.array(v) if isinstance(v, np.ndarray) else v for key, v in obs.items()}
        self._submit(_Job(self._generation, k, snapshot, plan, self._rtc_request(k) if plan else None))
        j = k - self._origin
        if self._chunk is not None and j < len(self._chunk):
            action, self._hold_streak = self._chunk[j], 0
            if switched or self._from_chunk:
                jump = float(np.linalg.norm(action - self._last))
                (self.boundary_jumps if switched else self.within_steps).append(jump)
            self._from_chunk = True
        else:
            action, self._from_chunk = self._hold(obs), False
        self._last = action
        self._step += 1
        return action.copy()

    def _hold(self, obs: dict[str, Any]) -> np.ndarray:
        """No planned action for this step: hold the last one (or the episode's starting state)."""
        if self._chunk is None:
            self.n_start_holds += 1
        else:
            self.n_late += 1
        self._hold_streak += 1
        self.longest_hold_streak = max(self.longest_hold_streak, self._hold_streak)
        if self._hold_streak > self.max_late_streak:
            raise PlannerError(f"planner late: no planned action for {self._hold_streak} steps in a row (plan from "
                               f"step {self._pending} not ready; lead {self.lead}, max_late_streak "
                               f"{self.max_late_streak})")
        if self._last is not None:
            return self._last
        state = np.asarray(obs["state"], dtype=np.float32)
        if state.shape != (self.action_dim,):
            raise PlannerError(f"cannot hold the starting state until the first chunk arrives: state has shape "
                               f"{state.shape}, actions have ({self.action_dim},)")
        return state

    def _take_chunk(self, k: int) -> bool:
        """Take the chunk that became visible by step `k`, if any; True if it replaced one in use."""
        chunk = self._collect(k)
        if chunk is None:
            return False
        replaced = self._chunk is not None
        self._chunk, self._planned, self._origin, self._pending = chunk.actions, chunk.planned, chunk.origin, None
        self.plan_seconds.append(chunk.seconds)
        self.plan_delays.append(k - chunk.origin)
        return replaced

    def _rtc_delay(self) -> int:
        """Steps a plan submitted now takes to arrive: the last chunk's delay (1 before the first)."""
        return self.plan_delays[-1] if self.plan_delays else 1

    def _rtc_request(self, k: int) -> RTCRequest | None:
        """Real-time chunking's request for a plan from step `k`: the chunk in use from step k on (None:
        RTC off, no chunk yet, or the chunk is used up and its last action held)."""
        j = k - self._origin
        if self.rtc is None or self._planned is None or j >= self.n_steps:
            return None
        delay = self._rtc_delay()
        prefix = self._planned[j:].copy()
        prefix[self.n_steps - j: delay] = self._planned[self.n_steps - 1]  # steps of the delay that will hold
        return RTCRequest(prefix, delay, self.rtc)

    def _run(self, job: _Job) -> _Chunk | None:
        """Do `job`: reset, or observe (and plan: its first n_steps actions, checked)."""
        if job.obs is None:
            self.policy.reset()
            return None
        self.policy.observe(job.obs)
        if not job.plan:
            return None
        t0 = time.perf_counter()
        # without RTC, plan(obs) exactly as before: policies that cannot guide need not take the argument
        planned = np.array(self.policy.plan(job.obs) if job.rtc is None else self.policy.plan(job.obs, rtc=job.rtc),
                           dtype=np.float32)
        actions = planned[: self.n_steps]
        seconds = time.perf_counter() - t0
        if actions.shape != (self.n_steps, self.action_dim):
            raise PlannerError(f"plan returned a chunk of shape {actions.shape} (first n_steps rows), expected "
                               f"({self.n_steps}, {self.action_dim})")
        if not np.all(np.isfinite(actions)) or self.rtc is not None and not np.all(np.isfinite(planned)):
            # with RTC the unused rest of the chunk guides the next one: it must be finite too
            raise PlannerError(f"non-finite action in the chunk planned from step {job.step}: "
                               f"{planned[~np.isfinite(planned).all(1)][0]!r}")
        return _Chunk(job.generation, job.step, actions, seconds, planned)

    @staticmethod
    def _failure(step: int, e: BaseException) -> PlannerError:
        detail = str(e) if isinstance(e, PlannerError) else f"{type(e).__name__}: {e}"
        return PlannerError(f"chunk planner failed at step {step}: {detail}")

    def loop_stats(self) -> dict[str, Any]:
        """This episode's planner numbers, reported with the loop's deadline statistics."""
        ms = 1e3 * np.asarray(self.plan_seconds)
        delays = np.bincount(np.asarray(self.plan_delays, dtype=int)) if self.plan_delays else np.zeros(0, int)
        # a policy with numbers of its own (a RemotePolicy: round trips, failures, reconnects) adds them
        policy_stats = getattr(self.policy, "loop_stats", None)
        return {**(policy_stats() if callable(policy_stats) else {}),
                "planner": self.mode, "planner_lead": self.lead, "plans": len(self.plan_seconds),
                "planner_late": self.n_late, "planner_failed": self.n_failed, "planner_start_holds": self.n_start_holds,
                "planner_longest_hold_streak": self.longest_hold_streak,
                "plan_ms_p50": float(np.percentile(ms, 50)) if len(ms) else float("nan"),
                "plan_ms_p99": float(np.percentile(ms, 99)) if len(ms) else float("nan"),
                "plan_ms_max": float(ms.max()) if len(ms) else float("nan"),
                "plan_delay_steps": {str(d): int(n) for d, n in enumerate(delays) if n},
                "planner_rtc": self.rtc is not None, "boundary_jumps": len(self.boundary_jumps),
                "boundary_jump_mean": float(np.mean(self.boundary_jumps)) if self.boundary_jumps else float("nan"),
                "boundary_jump_max": max(self.boundary_jumps, default=float("nan"))}

    def close(self, timeout: float = 10.0) -> None:
        """Release what the planner holds (the async planner's worker thread)."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncChunkPlanner(ChunkPlanner):
    """Plans on a worker thread: a chunk is taken at the first step after the worker finished it."""

    mode = "async"

    def __init__(self, policy: Any, lead: int, max_late_streak: int, n_steps: int | None = None,
                 action_dim: int | None = None, rtc: RTCConfig | None = None) -> None:
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._submitted = self._done = 0
        self._result: _Chunk | None = None
        self._error: tuple[int, int, BaseException] | None = None  # generation, step, exception
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        super().__init__(policy, lead, max_late_streak, n_steps, action_dim, rtc)
        self._worker = threading.Thread(target=self._work, name="chunk-planner", daemon=True)
        self._worker.start()

    def _new_generation(self) -> None:
        with self._lock:  # the worker skips the queued jobs of the old generation
            super()._new_generation()
            self._result = self._error = None

    def _submit(self, job: _Job | None) -> None:
        with self._lock:
            self._submitted += 1
        self._jobs.put(job)

    def _collect(self, step: int) -> _Chunk | None:
        with self._lock:
            # a failure on the worker is raised here, at the first step after it (and every step until reset)
            error = self._error if self._error is not None and self._error[0] == self._generation else None
            result, self._result = self._result, None
        if error is not None:
            self.n_failed = 1
            raise self._failure(error[1], error[2]) from error[2]
        return result if result is not None and result.generation == self._generation else None

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until the worker has handled every job handed to it so far (False on timeout). For tests
        and shutdown; the control loop never calls it."""
        with self._idle:
            return self._idle.wait_for(lambda: self._done >= self._submitted, timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Stop the worker (after the job it is running)."""
        if self._worker.is_alive():
            with self._lock:
                self._generation += 1  # skip whatever is still queued
            self._submit(None)
            self._worker.join(timeout)

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            try:
                if job is None:
                    return
                with self._lock:
                    failed = self._error is not None and self._error[0] == job.generation
                    if job.generation != self._generation or failed:
                        continue  # cancelled by reset(), or this episode already failed
                try:
                    chunk = self._run(job)
                except Exception as e:  # noqa: BLE001 - any failure is the main thread's to report (next step)
                    with self._lock:
                        self._error = (job.generation, job.step, e)
                    continue
                if chunk is not None:
                    with self._lock:
                        self._result = chunk
            finally:
                with self._idle:
                    self._done += 1
                    self._idle.notify_all()


class DelayedChunkPlanner(ChunkPlanner):
    """Plans inline (in simulated time the clock does not move meanwhile) and delivers each chunk exactly
    `delay` steps after the observation it was planned from: the async planner's schedule, deterministic."""

    mode = "delayed"

    def __init__(self, policy: Any, lead: int, max_late_streak: int, delay: int, n_steps: int | None = None,
                 action_dim: int | None = None, rtc: RTCConfig | None = None) -> None:
        if int(delay) < 1:
            raise ValueError(f"planner delay must be >= 1 step (a chunk is taken at a step after the one it was "
                             f"planned from), got {delay}")
        self.delay = int(delay)
        self._ready: _Chunk | None = None
        super().__init__(policy, lead, max_late_streak, n_steps, action_dim, rtc)
        if self.delay >= self.n_steps:
            raise ValueError(f"planner delay {self.delay} must be below n_action_steps = {self.n_steps}: a chunk "
                             f"arriving {self.delay} steps after its observation has used up all its actions")

    def _new_generation(self) -> None:
        super()._new_generation()
        self._ready = None  # a guard: step 0's plan of the new episode replaces it before it could arrive

    def _submit(self, job: _Job) -> None:
        try:
            chunk = self._run(job)
        except Exception as e:
            self.n_failed = 1
            raise self._failure(job.step, e) from e
        if chunk is not None:
            self._ready = chunk  # one plan at a time: the schedule waits for it before asking again

    def _collect(self, step: int) -> _Chunk | None:
        if self._ready is None or step < self._ready.origin + self.delay:
            return None
        chunk, self._ready = self._ready, None
        return chunk

    def _rtc_delay(self) -> int:
        return self.delay

    def loop_stats(self) -> dict[str, Any]:
        return {**super().loop_stats(), "planner_delay": self.delay}


PLANNER_KEYS = {"sync": [], "async": ["lead", "max_late_streak"], "delayed": ["lead", "max_late_streak", "delay"]}
RTC_MODES = ("async", "delayed")  # a sync chunk is used at once: nothing of the one before runs while it is planned


def make_controller(policy: Any, cfg: Mapping[str, Any] | None, modes: tuple[str, ...] = ("sync", "async"),
                    where: str = "configs/trial.yaml") -> Any:
    """The control loop's controller from a `planner` config block (`where`: the file it comes from, named in
    errors): `mode: async` wraps a chunk policy in an AsyncChunkPlanner (`lead`, `max_late_streak`; real time),
    `mode: delayed` in a DelayedChunkPlanner (also `delay`; simulated time); `mode: sync`, or a controller that
    does not plan chunks (`is_chunk_policy` false: it acts step by step), is used as it is. `modes`: the modes
    the caller can run (async needs a real clock, delayed a simulated one). An `rtc` block with `enabled: true`
    turns on real-time chunking (async and delayed only)."""
    cfg = {} if cfg is None else cfg
    mode = str(cfg.get("mode"))
    if "mode" in cfg and mode not in modes:
        raise ValueError(f"planner.mode must be one of {list(modes)} here, got {mode!r} ({where})")
    missing = [k for k in ["mode"] + PLANNER_KEYS.get(mode, []) if k not in cfg]
    if missing:
        raise ValueError(f"planner config: missing keys {missing} (the `planner` block of {where})")
    rtc = None
    if (cfg.get("rtc") or {}).get("enabled"):
        try:
            rtc = rtc_settings(cfg["rtc"])
        except ValueError as e:
            raise ValueError(f"{e} ({where})") from None
        if mode not in RTC_MODES or not is_chunk_policy(policy):
            raise ValueError(f"planner.rtc.enabled=true needs planner.mode in {list(RTC_MODES)} and a policy that plans "
                             f"chunks (got mode {mode!r}, {type(policy).__name__}): a sync chunk is used at once, "
                             f"nothing of the one before runs while it is planned ({where})")
    if mode == "sync" or not is_chunk_policy(policy):
        return policy
    coeff = getattr(getattr(policy, "config", None), "temporal_ensemble_coeff", None)
    if coeff is not None:  # a chunk planner executes chunks as planned and would silently skip the ensemble
        raise ValueError(f"temporal_ensemble_coeff={coeff} averages a chunk planned every step inside select_action; "
                         f"the {mode} planner executes chunks as planned: run it with planner.mode=sync")
    if mode == "delayed":
        return DelayedChunkPlanner(policy, lead=int(cfg["lead"]), max_late_streak=int(cfg["max_late_streak"]),
                                   delay=int(cfg["delay"]), rtc=rtc)
    return AsyncChunkPlanner(policy, lead=int(cfg["lead"]), max_late_streak=int(cfg["max_late_streak"]), rtc=rtc)
