"""The live rig in real time, assembled from a hydra config (configs/record.yaml, configs/trial.yaml).

    display process (pygame, own process) --UDP--> DisplayStimulus --(what is on screen at time m)-->
    camera (ZED / UVC, or the virtual ZED filming the display process) -> crop -> controller -> arm

Everything runs on one `RealClock` (the session clock: `time.monotonic()` minus the session start).
The display process publishes, for every shown frame, the monotonic time it was shown and its stimulus
state, so the stimulus ground truth of a camera frame is the state of the display frame on screen at the
frame's capture time (`DisplayStimulus.state_at`, through `StimulusSubscriber.sample_at`). With
`camera=sim` the virtual ZED films exactly that: it renders `task.render(t_stim)` where `t_stim` is the
display's stimulus time at the capture time, so pauses, late starts and dropped display frames of the real
display process show up in the images just as they would on a real monitor. `arm=sim` is the simulated FR3 integrated on the session clock;
`arm=franka` is the franky arm (a real FR3 or franky-sim on 127.0.0.1).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig

from moss_vla.config import plain
from rig.sim_rig import task_targets
from robot.cameras import make_camera, make_display_crop
from robot.clock import RealClock
from robot.display_crop import DisplayCrop
from robot.interfaces import Arm, Camera
from tasks import make_task
from tasks.display_driver import DisplayProcess
from tasks.stimulus import StimulusState, StimulusTask
from tasks.stimulus_link import StimulusSample
from tasks.targets import TargetSet, check_taken_on


class DisplayStimulus:
    """The display process's published stimulus, looked up on the session clock."""

    def __init__(self, display: DisplayProcess, task_cfg: Mapping[str, Any], clock: RealClock) -> None:
        self.display, self.task_cfg, self.clock = display, plain(task_cfg), clock
        self._tasks: dict[int, StimulusTask] = {}
        self._blank: np.ndarray | None = None

    def task(self, seed: int) -> StimulusTask:
        """The task episode the display shows for `seed` (the same (cfg, seed) always gives the same one)."""
        seed = int(seed)
        if seed not in self._tasks:
            if len(self._tasks) >= 4:
                self._tasks.pop(next(iter(self._tasks)))
            self._tasks[seed] = make_task(self.task_cfg, seed)
        return self._tasks[seed]

    def sample_at(self, t: float) -> StimulusSample | None:
        """The display frame on screen at session time t (`StimulusSubscriber.sample_at` on the monotonic
        clock the display stamps its frames with)."""
        if self.display.subscriber is None:
            return None
        return self.display.subscriber.sample_at(t + self.clock.t0)

    def latest(self) -> StimulusSample | None:
        return self.display.latest_sample()

    def state_at(self, t: float) -> StimulusState | None:
        """Stimulus ground truth of a camera frame captured at session time t (the loop's `stimulus`)."""
        s = self.sample_at(t)
        return None if s is None else s.state

    def stim_time(self, t: float) -> float | None:
        """Stimulus time at session time t, between display frames too (for scoring the arm's log)."""
        s = self.sample_at(t)
        if s is None:
            return None
        if s.status != "running":
            return s.state.t
        duration = self.task(s.seed).duration
        return min(s.state.t + max(0.0, t + self.clock.t0 - s.shown), duration)

    def render(self, t: float) -> np.ndarray:
        """What the monitor shows at session time t: the virtual ZED's picture source."""
        s = self.sample_at(t)
        if s is None:  # the display has not shown anything yet: a dark screen
            task = self.task(self.display.seed)
            if self._blank is None:
                w, h = task.screen_size
                self._blank = np.zeros((h, w, 3), np.uint8)
            return self._blank
        return self.task(s.seed).render(s.state.t)


@dataclass
class LiveRig:
    """Every part of a real-time session (one per session: camera, arm and display persist across episodes)."""

    cfg: DictConfig
    clock: RealClock
    display: DisplayProcess
    stimulus: DisplayStimulus
    camera: Camera
    crop: DisplayCrop
    arm: Arm
    targets: TargetSet
    label_to_target: dict[int, str]
    display_log: Path
    unix_offset: float = field(default_factory=lambda: time.time() - time.monotonic())
    display_episode: int = -1  # the display driver's episode counter of the episode it shows

    @property
    def camera_type(self) -> str:
        return str(self.cfg.camera.type)

    @property
    def arm_type(self) -> str:
        return str(self.cfg.arm.type)

    def frame_time(self, timestamp: float) -> float:
        """A camera frame timestamp -> session clock time, by the camera's `time_base`: the virtual ZED
        stamps frames on the session clock, ZED (SDK image time) and UVC (wall clock) in Unix time."""
        base = self.camera.time_base
        if base == "clock":
            return float(timestamp)
        if base == "unix":
            return float(timestamp) - self.unix_offset - self.clock.t0
        raise ValueError(unsupported_camera_message(self.camera_type, base))

    def stimulus_at_frame(self, timestamp: float) -> StimulusState | None:
        return self.stimulus.state_at(self.frame_time(timestamp))

    def show_episode(self, seed: int, timeout: float = 10.0) -> StimulusTask:
        """Have the display show episode `seed`, waiting to start; returns its task. The display process
        starts on the session's first seed (its episode 0); later episodes are loaded into it."""
        seed = int(seed)
        if self.display_episode < 0 and seed == self.display.seed:
            want = 0
        else:
            want = max(self.display_episode, 0) + 1
            self.display.load(seed)
        sample = self.display.wait_for(lambda s: s.episode == want and s.seed == seed and s.status == "waiting",
                                       timeout=timeout)
        if sample is None:
            raise RuntimeError(f"display process did not show episode seed {seed} within {timeout} s "
                               f"(exit code {self.display.proc.poll() if self.display.proc else None}): "
                               f"{self.display.stderr_tail()}")
        self.display_episode = want
        return self.stimulus.task(seed)

    def start_episode(self, timeout: float = 5.0) -> StimulusSample:
        """Start the stimulus on the display; returns its first running frame."""
        episode = self.display_episode
        self.display.start_episode()
        sample = self.display.wait_for(lambda s: s.status == "running" and s.episode == episode, timeout=timeout)
        if sample is None:
            raise RuntimeError(f"display process did not start the episode within {timeout} s: "
                               f"{self.display.stderr_tail()}")
        return sample

    def home_arm(self, seed: int, should_stop: Callable[[], bool] | None = None) -> None:
        """Bring the arm to the task's rest pose before an episode (like a person would); a real arm stops
        where it is as soon as ``should_stop()`` is true (e.g. Ctrl-C)."""
        home = self.targets.home.q
        if self.arm_type == "sim":
            # a simulated arm is put there directly, with the same small offset noise as the sim rig
            rng = np.random.default_rng([int(seed), 0xA12])
            self.arm = make_sim_arm(self.cfg, self.clock, home + rng.normal(0.0, float(self.cfg.rig.home_noise), 7))
        else:
            self.arm.move_to(home, should_stop=should_stop)

    def recover_arm(self, message: str = "", ask: Callable[[str], str] = input) -> bool:
        """After an arm error (e.g. a collision reflex) ended an episode; returns whether the session goes on
        (the next episode homes the arm). A simulated arm is rebuilt at that homing. A real arm, by the
        session's ``after_arm_error``: "ask" waits at the terminal for the operator to check the workspace
        (Enter: recover and go on, q: end the session; no terminal: end it), "recover" recovers at once
        (unattended), "stop" ends the session."""
        if self.arm_type == "sim":
            return True
        mode = after_arm_error(self.cfg)
        if mode == "stop":
            return False
        if mode == "ask":
            try:
                answer = ask(f"\nThe arm stopped: {message}\nCheck the workspace, then press Enter to recover the "
                             "arm and home it for the next episode, or type q and Enter to end the session: ")
            except EOFError:  # nobody at a terminal to confirm
                return False
            if answer.strip().lower().startswith("q"):
                return False
        recover = getattr(self.arm, "recover", None)
        if recover is not None:
            recover()
        return True

    def store_meta(self) -> dict[str, Any]:
        """Store-level metadata of a live recording."""
        cam = plain(self.cfg.camera)
        cam["crop"] = self.crop.to_config()
        task = self.stimulus.task(self.display.seed)
        return {
            "fps": round(1.0 / float(self.cfg.rig.period), 6),
            "camera": cam,
            "display": {"screen_size": list(task.screen_size), "fps": float(self.cfg.display.fps),
                        "config": plain(self.cfg.display)},
            "rig": {"type": "live", "camera": self.camera_type, "arm": plain(self.cfg.arm), **plain(self.cfg.rig)},
        }

    def close(self) -> None:
        """Stop the arm, release the camera and quit the display process (never raises)."""
        for step in (self.arm.stop, self.camera.close, self.display.stop):
            try:
                step()
            except Exception as e:  # noqa: BLE001 - cleanup must go on after any failure
                print(f"rig close: {getattr(step, '__qualname__', step)} failed: {e}")


def make_sim_arm(cfg: DictConfig, clock: RealClock, q0: np.ndarray) -> Arm:
    """The simulated FR3 of `cfg.arm` on the session clock, its gripper as the operator holds it."""
    from robot.sim_arm import SimArm

    return SimArm.from_config(plain(cfg.arm), clock, q0, gripper_width=float(cfg.teleop.get("gripper_width") or 0.0))


def make_arm(cfg: DictConfig, clock: RealClock, targets: TargetSet) -> Arm:
    """The arm named by `arm.type`: sim (starts at home) or franka (connects; homed before each episode)."""
    kind = str(cfg.arm.type)
    if kind == "sim":
        return make_sim_arm(cfg, clock, targets.home.q)
    if kind == "franka":
        from robot.franka_arm import FrankaArm

        # arm state timestamps on the session clock, like the camera's and the display's
        return FrankaArm.from_config(plain(cfg.arm), clock=clock.now)
    if kind == "remote":  # a moss-arm-server on the real-time PC (robot/arm_server.py; docs/rig.md section 4)
        from robot.arm_server import RemoteArm

        return RemoteArm.from_config(plain(cfg.arm), clock=clock.now)
    raise ValueError(f"arm: unknown arm.type {kind!r}; use arm=sim, arm=franka or arm=remote (configs/arm/)")


LIVE_TIME_BASES = ("clock", "unix")  # camera time bases the session clock can be matched with


def unsupported_camera_message(camera_type: str, time_base: str) -> str:
    return (f"camera.type={camera_type!r}: its frames carry {time_base} timestamps (robot.interfaces.TIME_BASES), "
            f"which cannot be matched with what the display shows now; the live rig (moss-record, moss-trial) "
            f"needs a live camera: camera=sim, camera=zed without svo_file, camera=uvc on a device. Play recorded "
            f"episodes with moss-replay")


def headless(cfg: DictConfig) -> bool:
    """Run the display with SDL's dummy driver: `display_headless` true, or null (auto) with camera=sim."""
    h = cfg.get("display_headless")
    return str(cfg.camera.type) == "sim" if h is None else bool(h)


def check_crop_calibrated(camera: DictConfig) -> None:
    """A real camera without display corners would show the policy the whole room, resized: refuse it
    unless the config says so (``camera.crop.full_frame``)."""
    crop = camera.get("crop") or {}
    if str(camera.type) != "sim" and crop.get("corners") is None and not crop.get("full_frame", False):
        raise ValueError(f"camera.crop.corners is not calibrated for camera={camera.type}: the policy would see the "
                         f"whole camera image instead of the display. Mark the display once with `moss-calibrate crop "
                         f"camera={camera.type}` (it writes the corners into configs/camera/{camera.type}.yaml), or set "
                         "camera.crop.full_frame=true to run on the whole image")


AFTER_ARM_ERROR = ("ask", "recover", "stop")


def after_arm_error(cfg: DictConfig) -> str:
    """The session's ``after_arm_error`` (configs/record.yaml), checked."""
    mode = str(cfg.get("after_arm_error", "ask"))
    if mode not in AFTER_ARM_ERROR:
        raise ValueError(f"after_arm_error must be one of {list(AFTER_ARM_ERROR)}, got {mode!r} (configs/record.yaml)")
    return mode


def build_live_rig(cfg: DictConfig, first_seed: int) -> LiveRig:
    """Start the display process on episode `first_seed`, open the camera and connect the arm."""
    after_arm_error(cfg)  # a typo fails now, not after the first reflex
    task0 = make_task(cfg.task, first_seed)
    targets, l2t = task_targets(cfg.task, task0.label_names)
    check_taken_on(targets, str(cfg.arm.get("serves") or cfg.arm.type))  # arm=remote: the arm its server drives
    clock = RealClock()
    log_dir = Path(str(cfg.display.log_dir))
    display_log = (log_dir / f"display_{time.strftime('%Y%m%d_%H%M%S')}_{id(clock) % 100000}.jsonl").resolve()
    display = DisplayProcess(cfg.task, first_seed, display_cfg=cfg.display, log_file=display_log,
                             headless=headless(cfg))
    display.start()
    camera = arm = None
    try:
        stimulus = DisplayStimulus(display, cfg.task, clock)
        cam_cfg = plain(cfg.camera)
        if cam_cfg.get("type") == "sim":
            # the monitor's refresh is the display process's own: the virtual camera must not quantize
            # time again, it films whatever display frame is on screen at the capture time
            cam_cfg["display_fps"] = 1000.0
        camera = make_camera(cam_cfg, clock=clock, render=stimulus.render, seed=int(first_seed))
        if camera.time_base not in LIVE_TIME_BASES:
            raise ValueError(unsupported_camera_message(str(cfg.camera.type), camera.time_base))
        check_crop_calibrated(cfg.camera)
        crop = make_display_crop(cfg.camera)
        arm = make_arm(cfg, clock, targets)
    except BaseException:
        if camera is not None:
            camera.close()
        display.stop()
        raise
    return LiveRig(cfg, clock, display, stimulus, camera, crop, arm, targets, l2t, display_log)
