"""MoveSense and PongPredict: stimulus generators, the pygame display driver, scoring and the simulated
rig pieces that belong to the tasks.

`make_task(cfg, seed)` builds a task from a hydra task config (`configs/task/<name>.yaml`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tasks.movesense import MoveSenseLR, MoveSenseRot
from tasks.pongpredict import PongPredict
from tasks.stimulus import Interaction, StimulusState, StimulusTask

TASK_KINDS: dict[str, type[StimulusTask]] = {
    MoveSenseLR.kind: MoveSenseLR,
    MoveSenseRot.kind: MoveSenseRot,
    PongPredict.kind: PongPredict,
}


def make_task(cfg: Mapping[str, Any], seed: int) -> StimulusTask:
    """Build the task described by a task config (DictConfig or dict; `kind` picks the class, `name` is
    what episodes record) for one episode seed. The same (cfg, seed) always gives the same episode."""
    try:
        kind = str(cfg["kind"])
    except KeyError:
        raise ValueError("task config: missing key 'kind' (one of " + ", ".join(TASK_KINDS) + ")") from None
    if kind not in TASK_KINDS:
        raise ValueError(f"task config {cfg.get('name')}: unknown kind {kind!r}; expected one of {list(TASK_KINDS)}")
    try:
        return TASK_KINDS[kind](cfg, seed)
    except KeyError as e:
        raise ValueError(f"task config {cfg.get('name')}: missing key {e} (see configs/task/{kind}.yaml)") from e


__all__ = [
    "TASK_KINDS",
    "Interaction",
    "MoveSenseLR",
    "MoveSenseRot",
    "PongPredict",
    "StimulusState",
    "StimulusTask",
    "make_task",
]
