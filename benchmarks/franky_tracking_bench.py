"""How well FrankaArm (franky client) follows 10 Hz absolute joint targets on franky-sim, side by side
for several relative dynamics factors and stream speeds; plus what the display crop costs per frame.

    python benchmarks/franky_tracking_bench.py            # ~40 s; writes benchmarks/results/franky_tracking.json
    python benchmarks/franky_tracking_bench.py --smooth   # ~1 min; arm.target_velocity zero vs stream, side by
                                                          # side: benchmarks/results/franky_smooth.json

Tracking is measured like the control loop sees it: at each tick, the distance between the measured
joints and the target sent one period earlier (max over joints), and the same for franky's
motion-generator output q_d (planner tracking, without franky-sim's joint-controller lag).
franky-sim is a Python MuJoCo server: on a busy machine it falls behind real time and errors grow,
so the load average is recorded with the numbers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from machine import machine_info  # benchmarks/machine.py (scripts run from this folder)

from robot.display_crop import DisplayCrop
from robot.franka_arm import FrankaArm
from robot.safety import SafetyChecker, SafetyLimits
from robot.teleop.motion import MinJerkTrajectory

OUT = Path(__file__).resolve().parent / "results" / "franky_tracking.json"
FACTORS = (1.0, 0.5, 0.2)
PEAK_SPEEDS = (0.15, 0.3, 0.6)  # rad/s of the streamed min-jerk motion (teleop snaps use 0.6)
DELTA = np.array([0.3, 0.1, 0.0, 0.2, 0.0, -0.1, 0.2])


def start_sim(log_path: Path) -> subprocess.Popen:
    exe = Path(sys.executable).with_name("franky-sim")
    log = open(log_path, "w")  # noqa: SIM115 - lives as long as the server
    proc = subprocess.Popen([str(exe), "--simulator", "mujoco", "--hostname", "127.0.0.1"], stdout=log,
                            stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.monotonic() + 60
    while "Press Ctrl+C" not in log_path.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"franky-sim did not start:\n{log_path.read_text()}")
        time.sleep(0.1)
    return proc


def run_stream(arm: FrankaArm, q_goal: np.ndarray, peak_speed: float, period: float = 0.1) -> dict:
    traj = MinJerkTrajectory(arm.state().q, q_goal, peak_speed=peak_speed)
    n = int(np.ceil(traj.duration / period))
    meas, plan, late = [], [], 0
    prev = None
    t0 = time.monotonic()
    for k in range(n + 1):
        while time.monotonic() - t0 < k * period:
            time.sleep(0.0005)
        if time.monotonic() - t0 > (k + 0.5) * period:
            late += 1
        if prev is not None:
            meas.append(np.abs(arm.state().q - prev).max())
            plan.append(np.abs(arm.q_desired - prev).max())
        prev = traj.sample(min(k * period, traj.duration))
        arm.command(prev)
    t_end = time.monotonic() + 3.0
    while time.monotonic() < t_end and np.abs(arm.state().q - q_goal).max() > 0.002:
        time.sleep(0.02)
    settle = time.monotonic() - (t_end - 3.0)
    return {"targets": n + 1, "measured_max": float(np.max(meas)), "measured_mean": float(np.mean(meas)),
            "planner_max": float(np.max(plan)), "planner_mean": float(np.mean(plan)),
            "final": float(np.abs(arm.state().q - q_goal).max()), "settle_s": settle, "late_ticks": late}


def run_sampled(arm: FrankaArm, q_goal: np.ndarray, peak_speed: float, period: float = 0.1,
                dt: float = 0.005) -> dict:
    """Stream a min-jerk move at 10 Hz and sample the joints every `dt` s: tracking lag (measured joints
    against the min-jerk path, as a time shift) and jerk (third difference of the sampled joints)."""
    traj = MinJerkTrajectory(arm.state().q, q_goal, peak_speed=peak_speed)
    n = int(np.ceil(traj.duration / period))
    t_s, q_s = [], []
    t0 = time.monotonic()
    k = 0
    while True:
        now = time.monotonic() - t0
        if k <= n and now >= k * period:
            arm.command(traj.sample(min(k * period, traj.duration)))
            k += 1
        t_s.append(now)
        q_s.append(arm.state().q)
        if now > traj.duration + 1.5:
            break
        time.sleep(max(0.0, t0 + len(t_s) * dt - time.monotonic()))
    t_s, q_s = np.asarray(t_s), np.asarray(q_s)
    grid = np.arange(0.0, t_s[-1], dt)
    q = np.stack([np.interp(grid, t_s, q_s[:, j]) for j in range(7)], 1)
    ref = np.stack([traj.sample(min(t, traj.duration)) for t in grid])
    err = np.abs(q - ref).max(1)
    moving = grid <= traj.duration
    lags = np.arange(0.0, 0.6, dt)  # the time shift of the reference that best matches the motion
    shift = [np.abs(q[moving] - np.stack([traj.sample(min(max(t - s, 0.0), traj.duration))
                                           for t in grid[moving]])).max(1).mean() for s in lags]
    jerk = np.abs(np.diff(q, 3, axis=0)).max(1) / dt**3
    return {"peak_speed": peak_speed, "lag_s": float(lags[int(np.argmin(shift))]),
            "error_max": float(err[moving].max()), "error_mean": float(err[moving].mean()),
            "jerk_p99": float(np.percentile(jerk, 99)), "jerk_rms": float(np.sqrt(np.mean(jerk**2))),
            "final": float(np.abs(q_s[-1] - q_goal).max())}


def smooth_main(factor: float = 0.5) -> None:
    """arm.target_velocity zero (a JointMotion ending at rest per target) vs stream, the same moves, one run."""
    out = Path(__file__).resolve().parent / "results" / "franky_smooth.json"
    results = {"machine": machine_info(), "relative_dynamics_factor": factor, "runs": []}
    proc = start_sim(out.parent / "franky_sim_bench.log")
    try:
        arm = FrankaArm("127.0.0.1", gripper=False, relative_dynamics_factor=factor,
                        safety=SafetyChecker(SafetyLimits(max_step=0.1, max_deviation=0.6)))
        home = arm.state().q
        for speed in PEAK_SPEEDS:
            for mode in ("zero", "stream"):  # side by side, each move there and back
                arm.target_velocity = mode
                for goal in (home + DELTA, home):
                    r = run_sampled(arm, goal, speed)
                    r["target_velocity"] = mode
                    results["runs"].append(r)
                    print(f"peak {speed:.2f} rad/s {mode:6s}: lag {1e3 * r['lag_s']:.0f} ms, error max "
                          f"{r['error_max']:.3f} mean {r['error_mean']:.3f} rad, jerk p99 {r['jerk_p99']:.0f} "
                          f"rms {r['jerk_rms']:.0f} rad/s^3, final {r['final']:.4f}")
                    arm.stop()
        arm.close()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    results["machine"]["loadavg_1min_end"] = os.getloadavg()[0]
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out}")


def crop_cost(n: int = 200) -> dict:
    """ms per 720p frame: plain bilinear warp vs area-averaged (antialiased) crop, same corners."""
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (720, 1280, 3), dtype=np.uint8)
    corners = [[250, 110], [1060, 165], [1045, 600], [265, 640]]
    out = {}
    for name, aa in (("warp_only", False), ("area_then_warp", True)):
        crop = DisplayCrop(corners, (224, 224), (720, 1280), antialias=aa)
        crop(img)
        t = time.perf_counter()
        for _ in range(n):
            crop(img)
        out[name] = (time.perf_counter() - t) / n * 1e3
    out["ratio_area_over_plain"] = out["area_then_warp"] / out["warp_only"]
    return out


def main() -> None:
    results = {"machine": machine_info(), "tracking": [], "crop_ms_per_frame": crop_cost()}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    proc = start_sim(OUT.parent / "franky_sim_bench.log")
    try:
        arm = FrankaArm("127.0.0.1", safety=SafetyChecker(SafetyLimits(max_step=0.1, max_deviation=0.6)))
        home = arm.state().q
        for factor in FACTORS:
            arm.robot.relative_dynamics_factor = factor
            for speed in PEAK_SPEEDS:
                for goal in (home + DELTA, home):  # there and back
                    r = run_stream(arm, goal, speed)
                    r.update(relative_dynamics_factor=factor, peak_speed=speed)
                    results["tracking"].append(r)
                    print(f"factor {factor:.1f} peak {speed:.2f} rad/s: measured max {r['measured_max']:.3f} "
                          f"mean {r['measured_mean']:.3f} | planner max {r['planner_max']:.3f} | final "
                          f"{r['final']:.4f} rad | late ticks {r['late_ticks']}")
        arm.close()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    c = results["crop_ms_per_frame"]
    print(f"display crop 720p -> 224: warp only {c['warp_only']:.2f} ms, area+warp {c['area_then_warp']:.2f} ms "
          f"(ratio {c['ratio_area_over_plain']:.2f})")
    results["machine"]["loadavg_1min_end"] = os.getloadavg()[0]
    OUT.write_text(json.dumps(results, indent=2))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    smooth_main() if "--smooth" in sys.argv else main()
