"""`moss-data view STORE [--episodes ...] [--save out.rrd]`: an episode store in rerun.

Per episode `i`, on the timelines `step` (frame in the episode) and `time` (seconds from its first frame):
  episodes/<i>/camera              the cropped frame the policy sees
  episodes/<i>/camera/stimulus     the stimulus centre on that frame (stim_xy), labelled "<label> / <phase>"
  episodes/<i>/state/<joint>       the 7 joint positions and the gripper width
  episodes/<i>/action/<joint>      the commanded joint targets and gripper width
  episodes/<i>/stimulus/time_to_deadline, .../label, .../phase, .../interaction   the stim_* values
  episodes/<i>/stimulus/log        a text line whenever label, phase or interaction changes
  episodes/<i>/meta                the episode metadata (static)
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from moss_vla.episodes.store import EpisodeStore
from moss_vla.rerun_log import log_series, open_recording, set_step


def _name(names: list[str], i: int, none: str = "none") -> str:
    return names[i] if 0 <= i < len(names) else none


def log_episode(rec: Any, store: EpisodeStore, i: int) -> int:
    """Log episode i of `store` under episodes/<i>; returns its frame count."""
    import rerun as rr

    ep = store.episode(i)
    meta = store.episode_meta(i)
    labels, phases = list(meta.get("label_names") or []), list(meta.get("phase_names") or [])
    base = f"episodes/{i}"
    n = len(ep["timestamp"])
    steps, times = np.arange(n), ep["timestamp"] - ep["timestamp"][0]
    rec.log(f"{base}/meta", rr.TextDocument(json.dumps(meta, indent=1), media_type="text/markdown"), static=True)
    log_series(rec, f"{base}/state", steps, times, ep["state"])
    log_series(rec, f"{base}/action", steps, times, ep["action"])
    stim = np.stack([ep["stim_time_to_deadline"], ep["stim_label"], ep["stim_phase"], ep["stim_interaction"]], 1)
    log_series(rec, f"{base}/stimulus", steps, times, stim, ["time_to_deadline", "label", "phase", "interaction"])
    h, w = ep["image"].shape[1:3]
    last = None
    for t in range(n):
        set_step(rec, t, times[t])
        rec.log(f"{base}/camera", rr.Image(ep["image"][t]))
        label, phase = _name(labels, int(ep["stim_label"][t])), _name(phases, int(ep["stim_phase"][t]), "?")
        x, y = (float(v) for v in ep["stim_xy"][t])
        if (x, y) != (-1.0, -1.0):
            rec.log(f"{base}/camera/stimulus", rr.Points2D([[x * w, y * h]], radii=max(2.0, w / 40),
                                                          labels=[f"{label} / {phase}"]))
        else:
            rec.log(f"{base}/camera/stimulus", rr.Clear(recursive=False))
        now = (label, phase, int(ep["stim_interaction"][t]))
        if now != last:
            rec.log(f"{base}/stimulus/log", rr.TextLog(f"interaction {now[2]}: label {label}, phase {phase}"))
            last = now
    return n


def view_store(path: str | os.PathLike, episodes: Sequence[int] | None = None, save: str | os.PathLike | None = None,
               ) -> dict[str, Any]:
    """Log the chosen episodes (all by default) to `save` (.rrd) or, without it, to a spawned viewer."""
    store = EpisodeStore(path)
    n = store.n_episodes
    chosen = list(range(n)) if episodes is None else [int(e) for e in episodes]
    for e in chosen:
        if not -n <= e < n:
            raise IndexError(f"{path}: episode {e} out of range, the store has {n} episodes (0..{n - 1})")
    chosen = [e % n for e in chosen]
    rec = open_recording("moss-vla/episodes", save=save, spawn=save is None)
    frames = 0
    try:
        for e in chosen:
            frames += log_episode(rec, store, e)
    finally:
        rec.flush()
        if save is not None:
            rec.disconnect()
    return {"path": str(path), "episodes": chosen, "frames": frames, "save": str(save) if save else None}
