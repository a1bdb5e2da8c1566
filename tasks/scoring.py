"""Scoring of pointing interactions from a log of arm samples (simulated or live; no sim dependency).

Definitions (the same for the scripted operator, sim evaluation and live trials):
- The arm POINTS at a target when consecutive samples of the log (the 10 Hz state log) have its flange
  within `tolerance` of the target's stored position for at least `dwell` seconds. The pointing starts
  at the first of those samples (`enter`) and is confirmed at the first of them at or after
  enter + dwell (`confirmed`, a sample time). Only samples count: a run whose last in-tolerance sample
  comes before enter + dwell is no pointing, even if the arm left only after that sample.
- Interaction i (onset, deadline) SUCCEEDS if the first pointing that starts at or after the onset
  and is confirmed by the deadline is at the expected target. An arm still resting at a target from
  before the onset does not count: it has to leave and come back (the operator returns home between
  interactions, so policies learn to as well).
- Reaction time = enter - onset of the pointing that decided the interaction.
Failure reasons: "wrong_target" (first pointing went elsewhere), "late" (the first pointing after the
onset was confirmed after the deadline), "no_pointing" (none before the next interaction's onset).
Each result also names the target the flange came closest to in its interaction's window, and how close.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from robot.fr3_kinematics import ee_position

_EPS = 1e-6


@dataclass(frozen=True)
class PointingEvent:
    """The arm held `target` from `enter`; pointing confirmed at `confirmed`; it left at `leave` (None: end of log)."""

    target: str
    enter: float
    confirmed: float
    leave: float | None


@dataclass(frozen=True)
class InteractionResult:
    index: int
    label: int
    expected: str
    pointed: str | None  # target of the first pointing after the onset (None: none at all)
    success: bool
    reason: str  # "ok", "wrong_target", "late", "no_pointing"
    reaction_time: float | None  # enter - onset of the deciding pointing (also reported when late/wrong)
    onset: float
    deadline: float
    # how close the flange came to any target between the onset and the next onset (tells a failed trial
    # that never left home from one that hovered just outside the tolerance): that target and the distance (m)
    closest_target: str | None = None
    closest_distance: float | None = None


@dataclass(frozen=True)
class ScoreSummary:
    results: list[InteractionResult]

    @property
    def n(self) -> int:
        return len(self.results)

    @property
    def n_success(self) -> int:
        return sum(r.success for r in self.results)

    @property
    def success_rate(self) -> float:
        return self.n_success / self.n if self.n else float("nan")

    @property
    def mean_reaction_time(self) -> float | None:
        rts = [r.reaction_time for r in self.results if r.success and r.reaction_time is not None]
        return float(np.mean(rts)) if rts else None

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (stored in the episode metadata as the success labels)."""
        return {
            "n_interactions": self.n,
            "n_success": self.n_success,
            "success_rate": None if not self.n else self.success_rate,
            "mean_reaction_time": self.mean_reaction_time,
            "interactions": [asdict(r) for r in self.results],
        }


def positions_from_log(samples: np.ndarray) -> np.ndarray:
    """(N, 3) flange positions from a log of either flange positions (N, 3) or joint positions (N, 7|8)."""
    samples = np.asarray(samples, dtype=np.float64)
    if samples.ndim != 2 or samples.shape[1] not in (3, 7, 8):
        raise ValueError(f"scoring: expected (N, 3) flange positions or (N, 7/8) joint states, got {samples.shape}")
    if samples.shape[1] == 3:
        return samples
    return ee_position(samples[:, :7])


def pointing_events(
    times: np.ndarray,
    positions: np.ndarray,
    targets: Mapping[str, np.ndarray],
    tolerance: float,
    dwell: float,
) -> list[PointingEvent]:
    """All pointings in a log: runs of samples within `tolerance` of one target lasting >= `dwell`."""
    times = np.asarray(times, dtype=np.float64)
    positions = positions_from_log(positions)
    if len(times) != len(positions):
        raise ValueError(f"scoring: {len(times)} times but {len(positions)} samples")
    if len(times) > 1 and np.any(np.diff(times) < 0):
        raise ValueError("scoring: sample times must be non-decreasing")
    names = list(targets)
    if not names or len(times) == 0:
        return []
    centres = np.stack([np.asarray(targets[n], dtype=np.float64) for n in names])  # (K, 3)
    dist = np.linalg.norm(positions[:, None, :] - centres[None], axis=-1)  # (N, K)
    nearest = dist.argmin(axis=1)
    inside = np.where(dist[np.arange(len(times)), nearest] <= tolerance, nearest, -1)

    events = []
    i, n = 0, len(times)
    while i < n:
        k = inside[i]
        if k < 0:
            i += 1
            continue
        j = i
        while j + 1 < n and inside[j + 1] == k:
            j += 1
        enter = times[i]
        held = np.nonzero(times[i:j + 1] >= enter + dwell - _EPS)[0]
        if len(held):
            leave = times[j + 1] if j + 1 < n else None
            events.append(PointingEvent(names[k], float(enter), float(times[i + held[0]]),
                                        None if leave is None else float(leave)))
        i = j + 1
    return events


def _field(it: Any, key: str) -> Any:
    return it[key] if isinstance(it, Mapping) else getattr(it, key)


def score_interactions(
    times: np.ndarray,
    samples: np.ndarray,
    interactions: Sequence[Any],
    expected_target: Mapping[int, str] | Callable[[int], str],
    targets: Mapping[str, np.ndarray],
    tolerance: float = 0.05,
    dwell: float = 0.3,
) -> ScoreSummary:
    """Score every interaction of an episode.

    times (N,) s and samples (N, 3) flange positions or (N, 7/8) joint states on the same time base
    as the interactions' onset/deadline; `interactions`: objects or dicts with index, label, onset,
    deadline (tasks.stimulus.Interaction or the episode metadata); `expected_target`: label -> target
    name; `targets`: target name -> flange position (pointing targets only, not home).
    """
    times = np.asarray(times, dtype=np.float64)
    positions = positions_from_log(samples)
    events = pointing_events(times, positions, targets, tolerance, dwell)
    names = list(targets)
    dist = (np.linalg.norm(positions[:, None, :] - np.stack([np.asarray(targets[n], dtype=np.float64)
                                                             for n in names])[None], axis=-1)
            if names and len(times) else np.zeros((len(times), 0)))  # (N, K) flange -> target
    lookup = expected_target if callable(expected_target) else expected_target.__getitem__
    onsets = sorted(float(_field(it, "onset")) for it in interactions)
    results = []
    for it in interactions:
        index, label = int(_field(it, "index")), int(_field(it, "label"))
        onset, deadline = float(_field(it, "onset")), float(_field(it, "deadline"))
        expected = lookup(label)
        # a pointing belongs to the last interaction whose onset precedes it
        window_end = min((o for o in onsets if o > onset + _EPS), default=np.inf)
        after = [e for e in events if onset - _EPS <= e.enter < window_end - _EPS]
        first = after[0] if after else None
        if first is None:
            pointed, success, reason, rt = None, False, "no_pointing", None
        else:
            pointed, rt = first.target, first.enter - onset
            if first.confirmed > deadline + _EPS:
                success, reason = False, "late"
            elif first.target != expected:
                success, reason = False, "wrong_target"
            else:
                success, reason = True, "ok"
        in_window = (times >= onset - _EPS) & (times < window_end - _EPS)
        closest, closest_d = None, None
        if in_window.any() and names:
            near = dist[in_window].min(axis=0)  # (K,) closest approach to each target
            closest, closest_d = names[int(near.argmin())], float(near.min())
        results.append(InteractionResult(index, label, expected, pointed, success, reason, rt, onset, deadline,
                                         closest, closest_d))
    return ScoreSummary(results)


def stopped_early(results: list[InteractionResult], t_last: float, reason: str,
                  count_cut: bool = True) -> list[InteractionResult]:
    """The results of an episode whose loop stopped at stimulus time `t_last` for `reason` (a fault: the
    policy raised or gave a non-finite action, a safety stop, an arm error, ...): trials whose deadline had
    passed keep their score; the others fail with reason "stopped:<reason>" (so a fault is counted as
    one, never as "no_pointing"), or are left out when `count_cut` is false (the operator stopped the
    session, or the rig failed: not the policy's doing)."""
    out = []
    for r in results:
        if r.deadline <= t_last:
            out.append(r)
        elif count_cut:
            out.append(dataclasses.replace(r, pointed=None, success=False, reason=f"stopped:{reason}",
                                           reaction_time=None, closest_target=None, closest_distance=None))
    return out
