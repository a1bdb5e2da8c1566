"""The pygame display driver: shows a task on a monitor at 60 Hz, logs and publishes every shown frame.

It runs as its own process (`DisplayProcess` starts it from Python; `python -m tasks.display_driver
task=movesense_lr display=monitor27 seed=3` from a shell) so that the 10 Hz control loop can never
delay a screen refresh. Per frame it:

1. handles keys and loopback commands (start, pause, next interaction, quit, load another episode),
2. computes the stimulus time t at which the frame will be shown and renders `task.render(t)` (the same
   function the simulated rig renders, so what the robot saw is exactly reproducible),
3. waits for the refresh (vsync where SDL grants it, else an absolute-deadline timer) and flips,
4. appends (frame, monotonic time shown, t, stimulus state) to a JSONL frame log and sends the same
   record as one UDP datagram to the control process (`tasks.stimulus_link`).

Clocks: the stimulus time t runs at the rate of `time.monotonic()` while the episode runs, stops while
paused, and jumps on "next interaction". Every frame's record pairs t with `shown`, the monotonic time
right after the flip; both processes read the same system-wide CLOCK_MONOTONIC, so the control loop
aligns a camera frame taken at monotonic time m with the stimulus by `StimulusSubscriber.sample_at(m)`
(through rig/live_rig.py's `DisplayStimulus`, which converts the session clock to monotonic time).
(`shown` is when the frame was handed to the display; the panel's own latency, typically 5-20 ms, comes
on top and is the same for every frame.)
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Self

import numpy as np
from omegaconf import DictConfig, OmegaConf

from moss_vla.config import plain
from moss_vla.lifeline import PARENT_PIPE_FLAG, watch_parent_pipe
from tasks import make_task
from tasks.stimulus import StimulusState, StimulusTask
from tasks.stimulus_link import (
    LOOPBACK,
    CommandReceiver,
    StimulusPublisher,
    StimulusSample,
    StimulusSubscriber,
    send_command,
)

WAITING, RUNNING, PAUSED, DONE = "waiting", "running", "paused", "done"


class StimulusClock:
    """Stimulus time t as a function of the monotonic clock, with start / pause / resume / jump.

    waiting: t = 0 (not started); running: t = now - offset; paused: t frozen; done: t = duration."""

    def __init__(self) -> None:
        self.status = WAITING
        self._offset = 0.0
        self._frozen = 0.0

    def t(self, now: float) -> float:
        return now - self._offset if self.status == RUNNING else self._frozen

    def start(self, now: float) -> bool:
        """Start (waiting) or resume (paused). Returns whether anything changed."""
        if self.status == WAITING:
            self._offset, self.status = now, RUNNING
            return True
        return self.resume(now)

    def pause(self, now: float) -> bool:
        if self.status != RUNNING:
            return False
        self._frozen, self.status = self.t(now), PAUSED
        return True

    def resume(self, now: float) -> bool:
        if self.status != PAUSED:
            return False
        self._offset, self.status = now - self._frozen, RUNNING
        return True

    def jump(self, now: float, t_new: float) -> bool:
        """Continue from stimulus time t_new (running or paused)."""
        if self.status == RUNNING:
            self._offset = now - t_new
        elif self.status == PAUSED:
            self._frozen = t_new
        else:
            return False
        return True

    def finish(self, duration: float) -> None:
        self._frozen, self.status = duration, DONE

    def reset(self) -> None:
        self.__init__()


class FrameLog:
    """JSONL log of every shown frame and every event, flushed every `flush_every` frames."""

    def __init__(self, path: str | Path, flush_every: int = 30) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (kept open for the whole run)
        self.flush_every = max(1, int(flush_every))
        self._n = 0

    def frame(self, sample: StimulusSample) -> None:
        s = sample.state
        rec = {"frame": sample.frame, "shown": round(sample.shown, 6), "t": round(s.t, 6), "status": sample.status,
               "episode": sample.episode, "label": s.label, "phase": s.phase, "x": round(s.xy[0], 5),
               "y": round(s.xy[1], 5), "interaction": s.interaction, "ttd": round(s.time_to_deadline, 4)}
        self._f.write(json.dumps(rec) + "\n")
        self._n += 1
        if self._n % self.flush_every == 0:
            self._f.flush()

    def event(self, name: str, **fields: Any) -> None:
        self._f.write(json.dumps({"event": name, "mono": time.monotonic(), **fields}) + "\n")
        self._f.flush()

    def close(self) -> None:
        self._f.close()


def read_frame_log(path: str | Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(frame records, event records) of a display frame log."""
    frames, events = [], []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                rec = json.loads(line)
                (events if "event" in rec else frames).append(rec)
    return frames, events


class DisplayDriver:
    """The pygame loop. `run()` blocks until quit (key, command, window close or `max_seconds`)."""

    def __init__(self, task_cfg: Mapping[str, Any], seed: int, display_cfg: Mapping[str, Any]) -> None:
        self.task_cfg = OmegaConf.create(plain(task_cfg))
        self.seed = int(seed)
        self.cfg = display_cfg
        self.fps = float(display_cfg["fps"])
        if not 1 <= self.fps <= 500:
            raise ValueError(f"display config: fps must be in 1..500, got {self.fps}")
        self.keys = {action: [str(k).lower() for k in names] for action, names in display_cfg["keys"].items()}
        self.clock = StimulusClock()
        self.episode = 0
        self.quit_requested = False
        self.frame = 0
        self.n_late = 0
        self.task: StimulusTask | None = None
        self._surface_key: tuple[int, float] | None = None

    # -- set-up ----------------------------------------------------------------------------------------------
    def _open_window(self) -> None:
        import pygame

        pygame.display.init()
        index = int(self.cfg["index"])
        n_displays = pygame.display.get_num_displays()
        if not 0 <= index < n_displays:
            raise ValueError(f"display config: index {index} but SDL sees {n_displays} display(s) with sizes "
                             f"{pygame.display.get_desktop_sizes()}; set display.index")
        fullscreen = bool(self.cfg["fullscreen"])
        task_size = (int(self.task_cfg.screen.width), int(self.task_cfg.screen.height))
        if fullscreen and bool(self.cfg["match_screen"]):
            # render at the monitor's native size: sizes are in screen heights, so the stimulus keeps its look
            task_size = tuple(pygame.display.get_desktop_sizes()[index])
            self.task_cfg.screen.width, self.task_cfg.screen.height = task_size
        window_size = task_size
        if not fullscreen and self.cfg.get("window_size"):
            window_size = tuple(int(v) for v in self.cfg["window_size"])
        flags = pygame.FULLSCREEN if fullscreen else 0
        self.vsync = bool(self.cfg["vsync"])
        self.screen = None
        if self.vsync:
            try:  # SDL grants vsync only through its renderer, i.e. with SCALED (or OPENGL)
                self.screen = pygame.display.set_mode(window_size, flags | pygame.SCALED, display=index, vsync=1)
            except pygame.error as e:
                print(f"display driver: vsync refused ({e}); pacing with a timer", file=sys.stderr)
                self.vsync = False
        if self.screen is None and fullscreen:
            try:  # still let SDL scale the frames to the monitor rather than switching the monitor's mode
                self.screen = pygame.display.set_mode(window_size, flags | pygame.SCALED, display=index)
            except pygame.error:
                self.screen = None
        if self.screen is None:
            self.screen = pygame.display.set_mode(window_size, flags, display=index)
        self.window_size = self.screen.get_size()
        pygame.display.set_caption(f"moss-vla display: {self.task_cfg.name}")
        pygame.mouse.set_visible(not bool(self.cfg["hide_mouse"]))
        pacing = str(self.cfg["pacing"])
        if pacing not in ("auto", "vsync", "timer"):
            raise ValueError(f"display config: pacing must be auto, vsync or timer, got {pacing!r}")
        # auto starts trusting vsync and falls back to the timer if flip() turns out not to block
        self.pacing = "timer" if (pacing == "timer" or not self.vsync) else "vsync"
        self._auto = pacing == "auto" and self.pacing == "vsync"

    def _load(self, task_cfg: Mapping[str, Any] | None, seed: int) -> None:
        """Show a new episode (waiting for start). A bad config raises and leaves the current one."""
        new_cfg = self.task_cfg
        if task_cfg is not None:
            new_cfg = OmegaConf.create(plain(task_cfg))
            if bool(self.cfg["fullscreen"]) and bool(self.cfg["match_screen"]):
                new_cfg.screen.width, new_cfg.screen.height = self.task_cfg.screen.width, self.task_cfg.screen.height
        self.task = make_task(new_cfg, int(seed))
        self.task_cfg, self.seed = new_cfg, int(seed)
        self.clock.reset()
        self._surface_key = None

    # -- input -----------------------------------------------------------------------------------------------
    def _action(self, action: str, source: str, **fields: Any) -> None:
        now = time.monotonic()
        assert self.task is not None
        t_before = self.clock.t(now)
        if action == "start":
            changed = self.clock.start(now)
        elif action == "pause":
            changed = self.clock.pause(now)
        elif action == "resume":
            changed = self.clock.resume(now)
        elif action == "toggle_pause":
            changed = self.clock.pause(now) or self.clock.resume(now)
        elif action == "next":
            changed = self.clock.jump(now, self.task.next_start(t_before))
        elif action == "quit":
            self.quit_requested, changed = True, True
        elif action == "load":
            try:
                self._load(fields.get("task"), int(fields.get("seed", self.seed + 1)))
            except (ValueError, KeyError, TypeError) as e:
                self.log.event("error", source=source, action=action, error=str(e))
                return
            self.episode += 1
            self.log.event("load", source=source, episode=self.episode, meta=self.task.meta())
            return
        else:
            self.log.event("error", source=source, action=action, error="unknown command")
            return
        self.log.event(action, source=source, changed=changed, status=self.clock.status, t_before=t_before,
                       t=self.clock.t(time.monotonic()))

    def _handle_input(self) -> None:
        import pygame

        for msg in self.commands.poll():
            cmd = str(msg.get("cmd"))
            if cmd == "key":  # a key press posted into our own event queue: tests the key path end to end
                name = str(msg.get("key", ""))
                try:
                    code = pygame.key.key_code(name)
                except ValueError:
                    self.log.event("error", source="command", action="key", error=f"unknown key {name!r}")
                    continue
                pygame.event.post(pygame.event.Event(pygame.KEYDOWN, key=code, mod=0, unicode="", scancode=0))
            else:
                self._action(cmd, "command", **{k: v for k, v in msg.items() if k != "cmd"})
        for event in pygame.event.get():
            if event.type == pygame.QUIT:
                self._action("quit", "window")
            elif event.type == pygame.KEYDOWN:
                name = pygame.key.name(event.key).lower()
                for action, names in self.keys.items():
                    if name in names:
                        self._action("toggle_pause" if action == "pause" else action, f"key:{name}")
                        break

    # -- frames ----------------------------------------------------------------------------------------------
    def _stimulus(self, present: float) -> StimulusState:
        assert self.task is not None
        if self.clock.status == WAITING:
            return dataclasses.replace(self.task.state(-1.0), t=0.0)  # phase "idle": not started
        t = self.clock.t(present)
        if self.clock.status == RUNNING and t >= self.task.duration:
            self.clock.finish(self.task.duration)
            self.log.event("done", episode=self.episode, t=self.task.duration)
            t = self.task.duration
        return self.task.state(t)

    def _surface(self, t: float) -> Any:
        import pygame

        assert self.task is not None
        key = (self.episode, t)
        if key != self._surface_key:  # paused / waiting / done frames are rendered once
            w, h = self.task.screen_size
            if self._surface_key is None or self._frame.shape != (h, w, 3):
                # one frame buffer per task; the pygame surface shares its memory (frombuffer does not copy)
                self._frame = np.empty((h, w, 3), dtype=np.uint8)
                self._raw = pygame.image.frombuffer(self._frame, (w, h), "RGB")
            self.task.render(t, out=self._frame)
            surf = self._raw
            if (w, h) != self.window_size:
                surf = pygame.transform.smoothscale(surf, self.window_size)
            self._surf, self._surface_key = surf, key
        return self._surf

    def run(self, max_seconds: float | None = None) -> int:
        """Show frames until quit. Returns the process exit code (0)."""
        os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pygame's pkg_resources deprecation warning
            import pygame

        cfg = self.cfg
        log_file = cfg.get("log_file")
        if not log_file:
            log_file = Path(str(cfg["log_dir"])) / f"display_{time.strftime('%Y%m%d_%H%M%S')}_{os.getpid()}.jsonl"
        self.log = FrameLog(log_file, int(cfg["log_flush_every"]))
        self.publisher = StimulusPublisher(str(cfg["publish"]["host"]), int(cfg["publish"]["port"]))
        self.commands = CommandReceiver(str(cfg["commands"]["host"]), int(cfg["commands"]["port"]))
        try:
            self._open_window()
            self._load(None, self.seed)
            assert self.task is not None
            keys = ", ".join(f"{'/'.join(v)} {k}" for k, v in self.keys.items())
            print(f"display driver: {self.task.name} seed {self.seed} on display {self.cfg['index']} "
                  f"{self.window_size[0]}x{self.window_size[1]} ({self.pacing} pacing); frame log {self.log.path}; "
                  f"commands on udp {self.commands.port}; keys: {keys}", file=sys.stderr)
            self.log.event("open", pid=os.getpid(), fps=self.fps, vsync=self.vsync, pacing=self.pacing,
                           window_size=list(self.window_size), driver=pygame.display.get_driver(),
                           cmd_port=self.commands.port, publish_port=int(cfg["publish"]["port"]),
                           meta=self.task.meta())
            self._loop(pygame, max_seconds)
        finally:
            self.log.event("close", frames=self.frame, late=self.n_late, sent=getattr(self.publisher, "n_sent", 0),
                           dropped=getattr(self.publisher, "n_dropped", 0))
            self.log.close()
            self.publisher.close()
            self.commands.close()
            pygame.quit()
        return 0

    def _loop(self, pygame: Any, max_seconds: float | None) -> None:
        period = 1.0 / self.fps
        t_open = time.monotonic()
        next_due = t_open + period
        flip_blocked = True  # in vsync pacing: did the last flip() wait for the refresh?
        flip_times: list[float] = []
        while not self.quit_requested:
            self._handle_input()
            if self.quit_requested:
                break
            # the stimulus time of the moment this frame will be on screen
            present = max(next_due, time.monotonic())
            state = self._stimulus(present)
            self.screen.blit(self._surface(state.t), (0, 0))
            if self.pacing == "timer" or not flip_blocked:
                # timer pacing; also a guard in vsync pacing when a flip did not block (never run faster)
                delay = next_due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            t_flip = time.monotonic()
            pygame.display.flip()
            shown = time.monotonic()
            if self.pacing == "vsync":
                flip_blocked = shown - t_flip > 0.2 * period
                if self._auto and len(flip_times) < 30:
                    flip_times.append(shown - t_flip)
                    if len(flip_times) == 30 and sorted(flip_times)[15] < 0.2 * period:
                        # flip() returns at once: vsync is not really on, so pace with the timer
                        self.pacing, self._auto = "timer", False
                        self.log.event("pacing", pacing="timer", reason="flip() does not block on the refresh")
            assert self.task is not None
            sample = StimulusSample(state=state, shown=shown, frame=self.frame, status=self.clock.status,
                                    episode=self.episode, seed=self.seed, task=self.task.name,
                                    cmd_port=self.commands.port, received=shown)
            self.publisher.publish(sample)
            self.log.frame(sample)
            self.frame += 1
            if self.pacing == "timer" or not flip_blocked:
                next_due += period
                if shown > next_due:  # missed one or more refresh slots: skip them, keep the grid
                    missed = math.floor((shown - next_due) / period) + 1
                    self.n_late += missed
                    next_due += missed * period
            else:  # the refresh sets the grid; a flip later than 1.5 periods means a missed refresh
                if shown > next_due + 0.5 * period:
                    self.n_late += math.floor((shown - next_due) / period + 0.5)
                next_due = shown + period
            if max_seconds is not None and shown - t_open >= max_seconds:
                break


# -- configuration and the command line ------------------------------------------------------------------------
def compose_driver_config(overrides: Sequence[str] = ()) -> DictConfig:
    """configs/display_driver.yaml ({task, display, seed}) with hydra overrides, e.g.
    ["task=pongpredict", "display=monitor27", "seed=3", "display.index=1", "task.ball.radius=0.05"]."""
    from moss_vla.config import compose_config

    return compose_config(list(overrides), "display_driver")


def main(argv: Sequence[str] | None = None) -> int:
    """python -m tasks.display_driver [task=NAME] [display=NAME] [seed=N] [key.path=value ...]
    [--config-json PATH] [--max-seconds S]"""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m tasks.display_driver",
        description="Show a MoveSense / PongPredict task on a monitor (keys: space start, p pause, n next, q quit).")
    parser.add_argument("overrides", nargs="*", help="hydra-style: task=pongpredict display=monitor27 seed=3 "
                        "display.index=1 task.n_interactions=8")
    parser.add_argument("--config-json", help="a full {task, display, seed} config as JSON (DisplayProcess uses "
                        "this); overrides are applied on top")
    parser.add_argument("--max-seconds", type=float, default=None, help="quit after this many seconds")
    parser.add_argument(PARENT_PIPE_FLAG, action="store_true", help="quit when stdin reaches EOF (DisplayProcess "
                        "holds its other end: the driver never outlives the process that started it)")
    args = parser.parse_args(argv)
    if args.config_json:
        cfg = OmegaConf.create(json.loads(Path(args.config_json).read_text()))
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist([o.lstrip("+") for o in args.overrides]))
    else:
        cfg = compose_driver_config(args.overrides)
    driver = DisplayDriver(cfg.task, int(cfg.seed), cfg.display)
    if args.parent_pipe:
        watch_parent_pipe(on_eof=lambda: setattr(driver, "quit_requested", True))
    return driver.run(max_seconds=args.max_seconds)


class DisplayProcess:
    """Start the display driver as a subprocess and talk to it over loopback.

    >>> with DisplayProcess(task_cfg, seed=3, display_index=1, fullscreen=True) as disp:
    ...     disp.start_episode()
    ...     state = disp.latest()  # StimulusState of the frame on screen now

    `display_cfg` (default: configs/display/default.yaml) is the base; `display_index`, `fullscreen`,
    `log_dir`/`log_file` and `headless` override it. The subscriber port is chosen here, the command port
    by the driver (announced in its samples). `headless` sets SDL's dummy video and audio drivers.
    """

    def __init__(self, task_cfg: Mapping[str, Any], seed: int, display_index: int | None = None,
                 fullscreen: bool | None = None, display_cfg: Mapping[str, Any] | None = None,
                 log_dir: str | Path | None = None, log_file: str | Path | None = None,
                 headless: bool = False, env: Mapping[str, str] | None = None) -> None:
        if display_cfg is None:
            display_cfg = compose_driver_config(["display=headless" if headless else "display=default"]).display
        dcfg = OmegaConf.create(plain(display_cfg))
        if display_index is not None:
            dcfg.index = int(display_index)
        if fullscreen is not None:
            dcfg.fullscreen = bool(fullscreen)
        if log_dir is not None:
            dcfg.log_dir = str(log_dir)
        if log_file is not None:
            dcfg.log_file = str(log_file)
        self.task_cfg = plain(task_cfg)
        self.seed = int(seed)
        make_task(self.task_cfg, self.seed)  # a bad task config fails here, not in the child process
        self.display_cfg = dcfg
        self.headless = headless
        self.env = dict(env or {})
        self.proc: subprocess.Popen | None = None
        self.subscriber: StimulusSubscriber | None = None
        self.cmd_port: int | None = None

    def start(self, timeout: float = 20.0) -> Self:
        """Launch the driver and wait for its first shown frame."""
        self.subscriber = StimulusSubscriber(LOOPBACK, 0)
        self.display_cfg.publish = {"host": LOOPBACK, "port": self.subscriber.port}
        self.display_cfg.commands = {"host": LOOPBACK, "port": 0}
        full = {"task": self.task_cfg, "display": plain(self.display_cfg), "seed": self.seed}
        with tempfile.NamedTemporaryFile("w", suffix=".json", prefix="display_cfg_", delete=False) as f:
            json.dump(full, f)
        self._cfg_path = Path(f.name)
        self._stderr = tempfile.TemporaryFile("w+")  # noqa: SIM115 (read by stderr_tail, closed by stop)
        env = {**os.environ, "PYGAME_HIDE_SUPPORT_PROMPT": "1", **self.env}
        if self.headless:
            env.update(SDL_VIDEODRIVER="dummy", SDL_AUDIODRIVER="dummy")
        # the driver watches its stdin, whose other end only this process holds: it quits when we end, even
        # when we are killed (moss_vla/lifeline.py)
        self.proc = subprocess.Popen([sys.executable, "-m", "tasks.display_driver", "--config-json",
                                      str(self._cfg_path), PARENT_PIPE_FLAG], env=env, stderr=self._stderr,
                                     stdin=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            first = self.subscriber.wait_for(None, timeout=0.2)
            if first is not None:
                self.cmd_port = first.cmd_port
                return self
            if self.proc.poll() is not None:
                break
        code, tail = self.proc.poll(), self.stderr_tail()
        self.stop()
        raise RuntimeError(f"display driver did not start within {timeout} s (exit code {code}): {tail}")

    def stderr_tail(self, n: int = 2000) -> str:
        if getattr(self, "_stderr", None) is None or self._stderr.closed:
            return ""
        self._stderr.seek(0)
        return self._stderr.read()[-n:]

    def send(self, cmd: str, **fields: Any) -> None:
        """Send a command: start, pause, resume, next, quit, load (seed=, task=), key (key=pygame key name)."""
        if self.cmd_port is None:
            raise RuntimeError("display process: not started")
        send_command(cmd, self.cmd_port, LOOPBACK, **fields)

    def start_episode(self) -> None:
        self.send("start")

    def pause(self) -> None:
        self.send("pause")

    def resume(self) -> None:
        self.send("resume")

    def next_interaction(self) -> None:
        self.send("next")

    def load(self, seed: int, task_cfg: Mapping[str, Any] | None = None) -> None:
        """Show a new episode (waiting for start): same task with another seed, or another task config."""
        fields: dict[str, Any] = {"seed": int(seed)}
        if task_cfg is not None:
            fields["task"] = plain(task_cfg)
        self.send("load", **fields)

    def latest(self) -> StimulusState | None:
        return None if self.subscriber is None else self.subscriber.latest()

    def latest_sample(self) -> StimulusSample | None:
        return None if self.subscriber is None else self.subscriber.latest_sample()

    def state_at(self, mono: float) -> StimulusState | None:
        return None if self.subscriber is None else self.subscriber.state_at(mono)

    def wait_for(self, predicate: Any = None, timeout: float = 5.0) -> StimulusSample | None:
        if self.subscriber is None:
            raise RuntimeError("display process: not started")
        return self.subscriber.wait_for(predicate, timeout)

    def stop(self, timeout: float = 5.0) -> int | None:
        """Ask the driver to quit; terminate it if it does not. Returns its exit code."""
        code = None
        if self.proc is not None:
            if self.proc.poll() is None and self.cmd_port is not None:
                self.send("quit")
            try:
                code = self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.terminate()
                try:
                    code = self.proc.wait(2.0)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    code = self.proc.wait()
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        if self.subscriber is not None:
            self.subscriber.close()
        if getattr(self, "_cfg_path", None) is not None:
            self._cfg_path.unlink(missing_ok=True)
        if getattr(self, "_stderr", None) is not None:
            self._stderr.close()
        return code

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


if __name__ == "__main__":
    sys.exit(main())
