"""The front door of every `moss-*` command: how it ends (docs/reliability.md).

`@command("moss-x")` wraps a command's `main(argv) -> int`:
  - a bad input ends with one line on stderr naming the key, file or value and what to do, exit 2 for a
    usage error (`ConfigError`: a config value, an override) and 1 for anything else that went wrong at
    run time (a damaged store, a missing checkpoint, a read-only directory, a second writer, ...);
    no traceback unless `MOSS_DEBUG=1` asks for it (then the exception propagates as it is);
  - Ctrl-C (SIGINT) and SIGTERM stop the command: both raise KeyboardInterrupt in the main thread, never
    inside a `deferred_interrupts` section (an episode commit: raised when it ends) (a
    session that installs its own handler, robot/stop_conditions.py `StopFlag.sigint_sets`, turns the first
    one into a stop request instead); the command's `finally` blocks close stores and child processes
    on the way out, and it exits 130. Once interrupted, further Ctrl-C / SIGTERM are ignored while the
    command winds down, so a second Ctrl-C never prints a traceback (a third party that must stop it
    at once sends SIGKILL: stores are crash-safe, children watch their pipe to the parent).
"""

from __future__ import annotations

import functools
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

INTERRUPTED = 130  # exit status after Ctrl-C or SIGTERM (128 + SIGINT, as shells report a Ctrl-C)
USAGE = 2  # a bad command line or config value
FAILED = 1  # the command ran and something went wrong


class ConfigError(ValueError):
    """A config value (or override, or command-line argument) is invalid: the message names the key, the
    value and what to pass instead. Commands exit 2 with it."""


def debug() -> bool:
    return os.environ.get("MOSS_DEBUG", "") not in ("", "0", "false")


_critical = 0  # depth of `deferred_interrupts` sections on the main thread
_pending: str | None = None  # a signal that arrived inside one, raised when the outermost section ends


def raise_interrupt(signum: int, frame: Any) -> None:
    """The front door's SIGINT / SIGTERM handler: `interrupt` (deferred inside `deferred_interrupts`)."""
    interrupt(signal.Signals(signum).name)


def interrupt(reason: str = "SIGINT") -> None:
    """Raise KeyboardInterrupt now, or, inside a `deferred_interrupts` section, as soon as it ends."""
    global _pending
    if _critical:
        _pending = reason
        return
    raise KeyboardInterrupt(reason)


@contextmanager
def deferred_interrupts() -> Iterator[None]:
    """A section a Ctrl-C / SIGTERM must not cut in two (an episode commit, a queue hand-over: a
    KeyboardInterrupt raised between a lock's acquire and release leaves the lock held and the writer's
    thread waiting on it for ever). Under the front door's handlers a signal that arrives inside is raised
    when the section ends; elsewhere (no handler of ours installed) this changes nothing."""
    global _critical, _pending
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _critical += 1
    try:
        yield
    finally:
        _critical -= 1
        if not _critical and _pending is not None:
            reason, _pending = _pending, None
            raise KeyboardInterrupt(reason)


@contextmanager
def interrupt_signals() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt like Ctrl-C while active (main thread only; restored after)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGTERM, raise_interrupt)
    # SIGINT too (also when a shell started us with it ignored, in the background): raised as
    # KeyboardInterrupt, but never inside a deferred_interrupts section
    signal.signal(signal.SIGINT, raise_interrupt)
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def ignore_interrupts() -> None:
    """From here on Ctrl-C and SIGTERM are ignored (the command is already winding down)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


def message(name: str, exc: BaseException) -> str:
    """`exc` as one line for the user, prefixed with the command unless the message names one already."""
    text = str(exc).strip() or type(exc).__name__
    if isinstance(exc, (KeyError, IndexError)) and text.startswith("'"):
        text = text.strip("'")
    return text if text.startswith("moss-") else f"{name}: {text}"


# errors whose message is written for the user (they name the file / key at fault); anything else is a bug
# or an unforeseen failure, reported with its type and a pointer to MOSS_DEBUG
EXPECTED_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError, RuntimeError, KeyError, IndexError,
                                                    TypeError)


def command(name: str) -> Callable[[Callable[..., int | None]], Callable[..., int]]:
    """Decorator for a command's `main(argv=None) -> int` (see module docstring)."""

    def wrap(main: Callable[..., int | None]) -> Callable[..., int]:
        @functools.wraps(main)
        def run(argv: Any = None) -> int:
            interrupted = False
            try:
                with interrupt_signals():
                    try:
                        return int(main(argv) or 0)
                    except KeyboardInterrupt:
                        interrupted = True
                        ignore_interrupts()
                        print(f"{name}: interrupted; stopped cleanly (exit {INTERRUPTED})", file=sys.stderr,
                              flush=True)
                        return INTERRUPTED
            except SystemExit:
                raise
            except Exception as exc:
                if debug():
                    raise
                code = USAGE if isinstance(exc, ConfigError) else FAILED
                line = message(name, exc)
                if not isinstance(exc, EXPECTED_ERRORS):
                    line += f" ({type(exc).__name__}; run with MOSS_DEBUG=1 for the traceback)"
                print(line, file=sys.stderr, flush=True)
                return code
            finally:
                if interrupted and argv is None:  # a console script: stay deaf to Ctrl-C until the process ends
                    ignore_interrupts()

        return run

    return wrap
