"""`moss-replay`: the mock environment (hydra overrides of configs/replay.yaml).

    moss-replay store=data/movesense_lr_live.zarr                 # re-send the recorded actions
    moss-replay store=data/movesense_lr_live.zarr episode=3 checkpoint=runs/<run>/checkpoints/latest

Recorded episodes play through `ReplayCamera` (their frames, with their recorded timestamps) and a mock
arm (robot/mock_arm.py: the recorded arm states, in lockstep) in the one control loop:
  - without a checkpoint the recorded actions are sent again, through the loop's safety hook and the arm's
    safety checks (strict: a rejected target stops the loop like on the real arm). Checks the loop and the
    safety path: every episode must play to its end and the sent actions must equal the recorded ones.
  - with a checkpoint the policy runs open loop on the recorded frames and states; its actions are
    compared with the recorded ones (joint error, rad; gripper error, m) and its step latency is measured.
    Targets the arm's safety checks would reject are counted, not sent.
With `realtime=true` (default) the loop runs on the wall clock at 10 Hz with the recorded frame spacing,
so step timing and deadlines are those of a live run; `realtime=false` runs as fast as possible.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig

from moss_vla.command import ConfigError, command
from moss_vla.config import Rule, cli_config, flag, integer, plain


class RecordedActions:
    """Controller that returns the action recorded with the frame it is shown (matched by timestamp)."""

    name = "recorded"

    def __init__(self, actions: np.ndarray, timestamps: np.ndarray) -> None:
        self.actions, self.timestamps = np.asarray(actions), np.asarray(timestamps, dtype=np.float64)

    def reset(self) -> None:
        pass

    def index(self, frame_timestamp: float) -> int:
        i = int(np.searchsorted(self.timestamps, frame_timestamp))
        if i >= len(self.timestamps) or self.timestamps[i] != frame_timestamp:
            raise KeyError(f"no recorded frame with timestamp {frame_timestamp}")
        return i

    def select_action(self, obs: dict[str, Any]) -> np.ndarray:
        return self.actions[self.index(obs["frame_timestamp"])].astype(np.float32)


class OpenLoopProbe(RecordedActions):
    """Runs a policy on the recorded observations; keeps its actions, the recorded ones and its latency."""

    name = "policy"

    def __init__(self, policy: Any, actions: np.ndarray, timestamps: np.ndarray) -> None:
        super().__init__(actions, timestamps)
        self.policy = policy
        self.predicted: list[np.ndarray] = []
        self.recorded: list[np.ndarray] = []
        self.latency: list[float] = []

    def reset(self) -> None:
        self.policy.reset()

    def select_action(self, obs: dict[str, Any]) -> np.ndarray:
        i = self.index(obs["frame_timestamp"])
        t0 = time.perf_counter()
        a = np.asarray(self.policy.select_action(obs), dtype=np.float32)
        self.latency.append(time.perf_counter() - t0)
        self.predicted.append(a)
        self.recorded.append(self.actions[i].astype(np.float32))
        return a


def _pct(values: list[float] | np.ndarray, q: float) -> float | None:
    return float(np.percentile(values, q)) if len(values) else None


def replay_episode(cfg: DictConfig, store: Any, index: int, policy: Any | None = None,
                   logger: Any | None = None) -> dict[str, Any]:
    """Play episode `index` of `store` through the loop (see module docstring); returns its report."""
    from robot.cameras.replay import ReplayCamera
    from robot.clock import RealClock, SimClock
    from robot.control_loop import ControlLoop, JointLimitSafety
    from robot.display_crop import DisplayCrop
    from robot.mock_arm import ReplayArm
    from robot.safety import SafetyChecker, SafetyLimits

    data = store.episode(index, keys=["state", "action", "timestamp"])
    meta = store.episode_meta(index)
    realtime = bool(cfg.realtime)
    clock = RealClock() if realtime else SimClock(0.0)
    camera = ReplayCamera(store.path, episodes=[index], realtime=realtime, clock=clock)
    crop = DisplayCrop.full_frame(camera.image_size, camera.image_size)  # stored frames: the policy's view
    checker = SafetyChecker(SafetyLimits.from_config(plain(cfg.arm.safety)))
    arm = ReplayArm(data["state"], data["timestamp"], safety=checker, strict=policy is None,
                    period=float(cfg.rig.period))
    controller = (RecordedActions(data["action"], data["timestamp"]) if policy is None
                  else OpenLoopProbe(policy, data["action"], data["timestamp"]))
    controller.reset()
    loop = ControlLoop(clock, camera, crop, arm, controller, str(meta.get("instruction", "")),
                       safety=JointLimitSafety(**plain(cfg.rig.safety)), period=float(cfg.rig.period),
                       # played as fast as read, recorded frames have no arrival times: the loop clock paces
                       sync=str(cfg.rig.loop_sync) if realtime else "clock")
    n = len(data["timestamp"])
    if logger is not None:  # robot/rerun_logger.py; the recorded episode's targets and, after it, its score
        logger.start_episode(f"replay/episode_{index}", controller, (meta.get("targets") or {}).get("ee") or {})
    result = loop.run(max_steps=n + 1, on_step=[logger] if logger is not None else ())  # the (n+1)th read ends
    if logger is not None:                                               # the stream: reason "end_of_stream"
        logger.outcome((meta.get("score") or {}).get("interactions") or [], result.reason, result.message)
    camera.close()
    s = result.summary()
    report: dict[str, Any] = {"episode": index, "frames": n, "loop_end": result.reason, "message": result.message,
                              "played_to_end": result.reason == "end_of_stream" and result.n_steps == n,
                              "loop": s, "rejected_targets": len(arm.rejected), "arm_stops": arm.n_stops}
    if policy is None:
        sent = np.stack(arm.commands) if arm.commands else np.zeros((0, 8))
        rec = np.asarray(data["action"][: len(sent)], dtype=np.float64)
        report["commands_sent"] = len(sent)
        report["max_abs_diff_sent_vs_recorded"] = float(np.abs(sent[:, :7] - rec[:, :7]).max()) if len(sent) else None
    else:
        pred, rec = np.stack(controller.predicted), np.stack(controller.recorded)
        err = np.abs(pred - rec)
        report.update({
            "steps": len(pred),
            "joint_abs_error_mean_rad": float(err[:, :7].mean()),
            "joint_abs_error_max_rad": float(err[:, :7].max()),
            "joint_rmse_rad": float(np.sqrt((err[:, :7] ** 2).mean())),
            "gripper_abs_error_mean_m": float(err[:, 7].mean()),
            "policy_ms_p50": 1e3 * _pct(controller.latency, 50),
            "policy_ms_p99": 1e3 * _pct(controller.latency, 99),
            "policy_ms_max": 1e3 * float(np.max(controller.latency)),
        })
    return report


def replay(cfg: DictConfig) -> dict[str, Any]:
    """Replay `cfg.episode` (or every episode) of `cfg.store`; returns the report."""
    from tqdm import tqdm

    from moss_vla.episodes import EpisodeStore

    store_path = Path(str(cfg.store))
    if not store_path.exists():
        raise FileNotFoundError(f"moss-replay: store={store_path} does not exist")
    store = EpisodeStore(store_path)
    if cfg.episode is not None and not 0 <= int(cfg.episode) < store.n_episodes:
        raise ConfigError(f"moss-replay: episode={cfg.episode} is not in {store_path}, which has {store.n_episodes} "
                          f"episode(s) (0..{store.n_episodes - 1}); or episode=null for all")
    episodes = list(range(store.n_episodes)) if cfg.episode is None else [int(cfg.episode)]
    policy = None
    if cfg.planner.get("remote"):  # served by moss-serve (moss_vla/serve.py)
        from moss_vla.remote_policy import RemotePolicy

        policy = RemotePolicy.from_config(cfg.planner)
    elif cfg.get("checkpoint"):
        import torch

        from moss_vla.device import resolve_device
        from moss_vla.policy import MossVLAPolicy
        from moss_vla.zoo import resolve_checkpoint

        if int(cfg.threads) > 0:  # see configs/replay.yaml
            torch.set_num_threads(int(cfg.threads))
        policy = MossVLAPolicy.from_pretrained(resolve_checkpoint(cfg.checkpoint))
        policy.to(resolve_device(cfg.get("device", "auto"))).eval()  # bf16 autocast on a GPU (moss_vla/device.py)
    logger = None
    if cfg.get("rerun"):
        from robot.rerun_logger import RerunStepLogger

        logger = RerunStepLogger(str(cfg.rerun), "moss-vla/moss-replay")
    try:
        reports = [replay_episode(cfg, store, i, policy, logger)
                   for i in tqdm(episodes, desc="replay", unit="ep", disable=not cfg.progress)]
    finally:
        if logger is not None:
            logger.close()
    out: dict[str, Any] = {"store": str(store_path.resolve()), "mode": "policy" if policy is not None else "actions",
                           "checkpoint": str(cfg.checkpoint) if policy is not None else None,
                           "remote": cfg.planner.get("remote"),
                           "realtime": bool(cfg.realtime), "episodes": reports,
                           "all_played_to_end": all(r["played_to_end"] for r in reports)}
    lat = [r["loop"]["latency_ms_p99"] for r in reports]
    out["step_ms_p99_max"] = max(lat) if lat else None
    out["missed_deadlines"] = sum(r["loop"]["missed_deadlines"] for r in reports)
    if policy is not None:
        steps = np.array([r["steps"] for r in reports], dtype=float)
        out["joint_abs_error_mean_rad"] = float(np.average([r["joint_abs_error_mean_rad"] for r in reports],
                                                           weights=steps))
        out["policy_ms_p99_max"] = max(r["policy_ms_p99"] for r in reports)
        out["rejected_targets"] = sum(r["rejected_targets"] for r in reports)
    if cfg.get("out"):
        Path(str(cfg.out)).parent.mkdir(parents=True, exist_ok=True)
        Path(str(cfg.out)).write_text(json.dumps(out, indent=1, default=float))
    return out


REPLAY_RULES = {"episode": integer(0, optional=True, hint="an episode index of the store, or null for all"),
                "threads": integer(0), "realtime": flag(), "progress": flag(),
                "planner.remote": Rule("str", optional=True, hint="<host>:<port> of a moss-serve, or null"),
                "rerun": Rule("str", optional=True, hint="a file.rrd to log every step to, or null")}


@command("moss-replay")
def main(argv: list[str] | None = None) -> int:
    cfg = cli_config(sys.argv[1:] if argv is None else list(argv), "replay", __doc__, REPLAY_RULES)
    if cfg is None:
        return 0
    out = replay(cfg)
    for r in out["episodes"]:
        line = (f"episode {r['episode']}: {r['loop_end']} after {r['loop']['n_steps']}/{r['frames']} frames, step p50 "
                f"{r['loop']['latency_ms_p50']:.1f} ms p99 {r['loop']['latency_ms_p99']:.1f} ms, missed "
                f"{r['loop']['missed_deadlines']}")
        if out["mode"] == "actions":
            line += f"; sent {r['commands_sent']} recorded actions (max diff {r['max_abs_diff_sent_vs_recorded']})"
        else:
            line += (f"; policy {r['policy_ms_p50']:.1f}/{r['policy_ms_p99']:.1f} ms p50/p99, joint error "
                     f"{r['joint_abs_error_mean_rad']:.4f} rad mean, {r['rejected_targets']} targets unsafe")
        if r["message"]:
            line += f" ({r['message']})"
        print(line)
    if cfg.get("out"):
        print(f"report: {cfg.out}")
    return 0 if out["all_played_to_end"] else 1


if __name__ == "__main__":
    sys.exit(main())
