"""`moss-record`: record episodes on the live rig in real time (hydra overrides of configs/record.yaml).

    moss-record task=movesense_lr camera=zed arm=franka teleop=gamepad display=monitor27 episodes=50
    moss-record task=pongpredict camera=sim arm=sim teleop=scripted episodes=2 out=/tmp/p.zarr
    moss-record --cfg camera=sim          # print the composed config and exit

Starts the display driver process, then for each episode: the display shows it, the arm is brought home,
the stimulus starts and the one 10 Hz control loop records through the episode writer (frames, arm state,
commands, the stim_* ground truth of the display frame on screen at each capture time; the display's frame
log path in the episode meta; step timing and the operator's score in the commit's extra_meta). Episodes
that do not run to their end are discarded, and the reason is kept in the session report. A stop key
(the display window's quit key, or the keyboard teleop's quit key) or Ctrl-C stops everything: the arm
is stopped, the episode in progress is discarded (or committed, with `on_interrupt=commit`), the writer
is closed and the store is consistent; so does a fault of the rig (camera failure or stall, display lost).
The teleop's discard key (keyboard Delete, gamepad left stick click: teleop.keys.discard / teleop.buttons.discard)
ends the episode in progress at once without keeping it (end reason "operator_discard") and the session goes on
with the next; an episode already committed is removed with `moss-data drop STORE -1`.
After an arm error the arm is recovered and re-homed only as `after_arm_error` says (default: the operator
confirms at the terminal). Exit code 0 when all episodes were recorded, 130 after a stop key
or Ctrl-C, 1 when episodes failed or the session stopped otherwise (the display process died).
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from moss_vla.command import command
from moss_vla.config import cli_config, flag, integer, number, one_of


def record_rules() -> dict:
    """What moss-record (and moss-trial, on top of it) checks before it starts the rig."""
    from rig.sim_rig import RIG_RULES

    return {**RIG_RULES, "episodes": integer(1), "seed": integer(0), "max_minutes": number(above=0, optional=True),
            "overwrite": flag(), "on_interrupt": one_of("discard", "commit"),
            "display_headless": flag(optional=True), "progress": flag(), "loop.stall_timeout": number(above=0),
            "loop.max_missed_streak": integer(1), "scripted_speed_factor": number(above=0)}


def record(cfg: DictConfig, on_episode: Callable[[Any], None] | None = None) -> dict[str, Any]:
    """Record `cfg.episodes` episodes into `cfg.out` (no new episode after `cfg.max_minutes`); returns the
    session report. `on_episode(LiveEpisode)` sees every episode (benchmarks collect the step times)."""
    from moss_vla.episodes import EpisodeWriter
    from moss_vla.episodes.check import check_store
    from rig.live_rig import build_live_rig
    from rig.session import end_of_episode, make_scripted_operator, make_teleop_operator, run_live_episode
    from robot.stop_conditions import StopFlag

    out = Path(str(cfg.out))
    if cfg.on_interrupt not in ("discard", "commit"):
        raise ValueError(f"record config: on_interrupt must be discard or commit, got {cfg.on_interrupt!r}")
    if out.exists() and cfg.overwrite:
        shutil.rmtree(out)
    stop = StopFlag()
    episodes: list[dict[str, Any]] = []
    seed0, n = int(cfg.seed), int(cfg.episodes)
    wall0 = time.perf_counter()
    with stop.sigint_sets():
        rig = build_live_rig(cfg, seed0)
        teleop = None
        try:
            # one teleop device (window, joystick) for the session, reset per episode by run_live_episode;
            # the scripted operator is seeded per episode
            if str(cfg.teleop.type) != "scripted":
                teleop = make_teleop_operator(cfg, rig)
            with EpisodeWriter(out, store_meta=rig.store_meta(), queue_size=int(cfg.rig.writer.queue_size)) as writer:
                n_before = writer.n_episodes
                for i in range(n):
                    if stop.is_set or (cfg.get("max_minutes") and time.perf_counter() - wall0 > 60 * cfg.max_minutes):
                        break
                    seed = seed0 + i
                    controller = teleop if teleop is not None else make_scripted_operator(cfg, rig, seed)
                    ep = run_live_episode(rig, controller, seed, stop, writer=writer, operator=str(cfg.teleop.type),
                                          progress=bool(cfg.progress), on_interrupt=str(cfg.on_interrupt))
                    if on_episode is not None:
                        on_episode(ep)
                    s = ep.loop.summary()
                    episodes.append({"seed": seed, "episode_index": ep.episode_index, "end_reason": ep.loop.reason,
                                     "message": ep.loop.message, "score": ep.score.to_dict(), "loop": s})
                    kept = f"committed as episode {ep.episode_index}" if ep.episode_index is not None else "discarded"
                    print(f"episode seed {seed}: {ep.loop.reason}, {kept}; {s['n_steps']} frames "
                          f"({s['frames_captured']} captured), step p50 {s['latency_ms_p50']:.1f} ms "
                          f"p99 {s['latency_ms_p99']:.1f} ms, missed {s['missed_deadlines']}; operator "
                          f"{ep.score.n_success}/{ep.score.n}", flush=True)
                    end_of_episode(rig, ep, stop)
                n_committed = writer.n_episodes - n_before
        finally:
            try:
                if teleop is not None:
                    teleop.device.close()
            finally:
                rig.close()
    check = check_store(out, images=False)
    report = {
        "out": str(out.resolve()),
        "task": str(cfg.task.name),
        "camera": str(cfg.camera.type),
        "arm": str(cfg.arm.type),
        "teleop": str(cfg.teleop.type),
        "display_log": str(rig.display_log),
        "episodes_requested": n,
        "episodes_committed": n_committed,
        "stopped": stop.reason,
        "wall_seconds": round(time.perf_counter() - wall0, 2),
        "store_check": "ok" if check.ok else check.errors,
        "episodes": episodes,
    }
    log_dir = Path(str(cfg.log_dir))
    log_dir.mkdir(parents=True, exist_ok=True)
    report_path = log_dir / f"record_{time.strftime('%Y%m%d_%H%M%S')}.json"
    report_path.write_text(json.dumps(report, indent=1, default=float))
    report["report"] = str(report_path)
    return report


@command("moss-record")
def main(argv: list[str] | None = None) -> int:
    from rig.session import OPERATOR_DISCARD, exit_code

    cfg = cli_config(sys.argv[1:] if argv is None else list(argv), "record", __doc__, record_rules())
    if cfg is None:
        return 0
    report = record(cfg)
    print(f"store {report['out']}: {report['episodes_committed']} episode(s) committed, check "
          f"{report['store_check']}; session report {report['report']}")
    ok = report["store_check"] == "ok" and all(e["end_reason"] in ("episode_done", OPERATOR_DISCARD)
                                               for e in report["episodes"])
    return exit_code(report["stopped"], ok)


if __name__ == "__main__":
    sys.exit(main())
