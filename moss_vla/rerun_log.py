"""Rerun recordings (rerun-sdk, installed with lerobot): open one, log joint series, read one back.

Shared by the episode viewer (`moss-data view`, moss_vla/episodes/viewer.py) and the rig's per-step trial
logger (robot/rerun_logger.py: `rerun=<file.rrd>` of moss-sim eval, moss-trial, moss-replay). Writing an
.rrd needs no display; open it later with `rerun <file.rrd>` (the viewer ships with rerun-sdk).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

JOINT_NAMES = [f"joint_{i}" for i in range(1, 8)] + ["gripper"]


def open_recording(app_id: str, save: str | os.PathLike | None = None, spawn: bool = False) -> Any:
    """A rerun RecordingStream writing to the file `save` (parents created), or sending to a spawned viewer
    (`spawn`); one of the two. Without a display a viewer cannot be spawned: the error says to pass a file."""
    import rerun as rr

    rec = rr.RecordingStream(app_id)
    if save is not None:
        path = Path(save)
        if path.suffix != ".rrd":
            raise ValueError(f"{path}: a rerun recording file ends in .rrd")
        path.parent.mkdir(parents=True, exist_ok=True)
        rec.save(str(path))
    elif spawn:
        if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")) and os.name != "nt":
            raise ValueError("no display to open the rerun viewer on: pass a file to save the recording to "
                             "(--save out.rrd / rerun=out.rrd) and open it with `rerun out.rrd`")
        rec.spawn()
    else:
        raise ValueError("open_recording: pass a file to save to or spawn=True")
    return rec


def log_series(rec: Any, prefix: str, steps: np.ndarray, times: np.ndarray, values: np.ndarray,
               names: Sequence[str] = JOINT_NAMES) -> None:
    """One scalar time series per column of `values` (N, D) at `prefix/<name>`, on the `step` and `time`
    timelines, sent as columns (one call per series, not per step)."""
    import rerun as rr

    values = np.asarray(values, dtype=np.float64).reshape(len(steps), -1)
    index = [rr.TimeColumn("step", sequence=np.asarray(steps, dtype=np.int64)),
             rr.TimeColumn("time", duration=np.asarray(times, dtype=np.float64))]
    for j, name in enumerate(names[: values.shape[1]]):
        rec.send_columns(f"{prefix}/{name}", indexes=index, columns=rr.Scalars.columns(scalars=values[:, j]))


def set_step(rec: Any, step: int, t: float) -> None:
    """The `step` (sequence) and `time` (seconds) timelines of what is logged next."""
    rec.set_time("step", sequence=int(step))
    rec.set_time("time", duration=float(t))


def rrd_contents(path: str | os.PathLike, index: str = "step") -> dict[str, int]:
    """What a saved .rrd holds, read back with rerun's own API: entity path -> rows with data on `index`
    (static entities, e.g. episode metadata, count 1)."""
    import rerun.dataframe as rdf

    recording = rdf.load_recording(str(path))
    out: dict[str, int] = {}
    for col in recording.schema().component_columns():
        entity = col.entity_path
        if entity.startswith("/__"):  # rerun's own (recording properties)
            continue
        if col.is_static:
            out.setdefault(entity, 1)
            continue
        table = recording.view(index=index, contents=entity).select(col).read_all()
        n = sum(1 for v in table.column(table.num_columns - 1).to_pylist() if v is not None)
        out[entity] = max(out.get(entity, 0), n)
    return out
