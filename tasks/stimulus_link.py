"""Loopback link between the display process and the control process.

Display -> control: one UDP datagram (JSON) per shown frame carrying the stimulus state, the frame
counter, and `shown`, the `time.monotonic()` reading right after the frame was flipped. The sender
never waits for the receiver (non-blocking socket; a datagram nobody reads is simply dropped), so the
control loop can never delay a screen refresh.
Control -> display: small JSON commands ({"cmd": "start" | "pause" | "resume" | "next" | "quit" |
"load" | "key", ...}) to the driver's command port, announced in every published state as `cmd_port`.

Clocks: both processes read CLOCK_MONOTONIC (`time.monotonic()` on Linux and macOS is system-wide), so
`shown` is directly comparable with the control loop's own monotonic timestamps; `state.t` is the
stimulus time (seconds since the episode started, pauses excluded) of the frame shown at `shown`.
"""

from __future__ import annotations

import collections
import json
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Self

from tasks.stimulus import StimulusState

LOOPBACK = "127.0.0.1"
_MAX_DATAGRAM = 65507


@dataclass(frozen=True)
class StimulusSample:
    """One shown frame as the control process receives it."""

    state: StimulusState
    shown: float  # time.monotonic() just after the frame was flipped (display process)
    frame: int  # frame counter of the driver (since the driver started)
    status: str  # waiting | running | paused | done
    episode: int  # how many episodes the driver has loaded (0 for the first)
    seed: int
    task: str
    cmd_port: int  # where the driver listens for commands
    received: float  # time.monotonic() when this process received it

    def to_message(self) -> dict[str, Any]:
        return {"v": 1, "state": self.state.to_dict(), "shown": self.shown, "frame": self.frame,
                "status": self.status, "episode": self.episode, "seed": self.seed, "task": self.task,
                "cmd_port": self.cmd_port}

    @classmethod
    def from_message(cls, msg: dict[str, Any], received: float) -> StimulusSample:
        return cls(state=StimulusState.from_dict(msg["state"]), shown=float(msg["shown"]), frame=int(msg["frame"]),
                   status=str(msg["status"]), episode=int(msg["episode"]), seed=int(msg["seed"]),
                   task=str(msg["task"]), cmd_port=int(msg["cmd_port"]), received=received)


class StimulusPublisher:
    """Display side: send one sample per shown frame; never blocks."""

    def __init__(self, host: str = LOOPBACK, port: int = 47600) -> None:
        self.address = (host, int(port))
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self.n_sent = 0
        self.n_dropped = 0

    def publish(self, sample: StimulusSample) -> bool:
        """Send `sample`; False if it was dropped (socket buffer full, nobody listening)."""
        try:
            self.sock.sendto(json.dumps(sample.to_message()).encode(), self.address)
        except OSError:  # BlockingIOError, ConnectionRefusedError (ICMP from an earlier datagram), ...
            self.n_dropped += 1
            return False
        self.n_sent += 1
        return True

    def close(self) -> None:
        self.sock.close()


class StimulusSubscriber:
    """Control side: receive samples on a background thread and keep the latest ones.

    `port=0` binds any free port (read it back from `.port` and give it to the driver)."""

    def __init__(self, host: str = LOOPBACK, port: int = 0, history: int = 600) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, int(port)))
        self.sock.settimeout(0.1)  # so that close() stops the thread promptly
        self.port: int = self.sock.getsockname()[1]
        self._history: collections.deque[StimulusSample] = collections.deque(maxlen=history)
        self._cond = threading.Condition()
        self._closed = False
        self.n_received = 0
        self.n_invalid = 0
        self._thread = threading.Thread(target=self._run, name="stimulus-subscriber", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._closed:
            try:
                data = self.sock.recv(_MAX_DATAGRAM)
            except TimeoutError:
                continue
            except OSError:
                break  # socket closed
            now = time.monotonic()
            try:
                sample = StimulusSample.from_message(json.loads(data), now)
            except (ValueError, KeyError, TypeError):
                self.n_invalid += 1
                continue
            with self._cond:
                self._history.append(sample)
                self.n_received += 1
                self._cond.notify_all()

    def latest_sample(self) -> StimulusSample | None:
        """The most recently received sample, or None before the first."""
        with self._cond:
            return self._history[-1] if self._history else None

    def latest(self) -> StimulusState | None:
        """Stimulus state of the most recently shown frame, or None before the first."""
        s = self.latest_sample()
        return None if s is None else s.state

    def sample_at(self, mono: float) -> StimulusSample | None:
        """The frame that was on screen at monotonic time `mono` (the last frame shown at or before it), from
        the kept history; None if `mono` is older than the history. The one lookup of what a camera frame
        showed: the live rig's DisplayStimulus (rig/live_rig.py) uses it."""
        with self._cond:
            # newest first: the control loop asks about the last frames (a scan of a few samples)
            for s in reversed(self._history):
                if s.shown <= mono:
                    return s
        return None

    def state_at(self, mono: float) -> StimulusState | None:
        """Stimulus state of the frame on screen at monotonic time `mono` (see `sample_at`)."""
        s = self.sample_at(mono)
        return None if s is None else s.state

    def wait_for(self, predicate: Callable[[StimulusSample], bool] | None = None,
                 timeout: float = 5.0) -> StimulusSample | None:
        """Block until a sample arriving from now on satisfies `predicate` (any sample if None)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            seen = self.n_received
            while True:
                new = min(self.n_received - seen, len(self._history))
                for s in list(self._history)[len(self._history) - new:]:
                    if predicate is None or predicate(s):
                        return s
                seen = self.n_received
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)

    def close(self) -> None:
        self._closed = True
        self.sock.close()
        self._thread.join(timeout=1.0)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def send_command(cmd: str, port: int, host: str = LOOPBACK, **fields: Any) -> None:
    """Send one command to a display driver (fire and forget; the published states show its effect)."""
    msg = {"cmd": cmd, **fields}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.sendto(json.dumps(msg).encode(), (host, int(port)))


class CommandReceiver:
    """Display side: non-blocking poll of the command port."""

    def __init__(self, host: str = LOOPBACK, port: int = 47601) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, int(port)))
        self.sock.setblocking(False)
        self.port: int = self.sock.getsockname()[1]

    def poll(self) -> list[dict[str, Any]]:
        """All commands received since the last poll (malformed ones are returned as {"cmd": "invalid"})."""
        out: list[dict[str, Any]] = []
        while True:
            try:
                data = self.sock.recv(_MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return out
            except OSError:
                return out
            try:
                msg = json.loads(data)
                if not isinstance(msg, dict) or "cmd" not in msg:
                    raise ValueError
            except ValueError:
                msg = {"cmd": "invalid", "raw": data[:200].decode(errors="replace")}
            out.append(msg)

    def close(self) -> None:
        self.sock.close()
