"""The front door of every `moss-*` command: how it ends (docs/reliability.md).

`@command("moss-x")` wraps a command's `main(argv) -> int`:
  - a bad input ends with one line on stderr naming the key, file or value and what to do, exit 2 for a
    usage error (`ConfigError`: a config value, an override) and 1 for anything else that went wrong at
    run time (a damaged store, a missing checkpoint, a read-only directory, a second writer, ...);
    no traceback unless `MOSS_DEBUG=1` asks for it (then the exception propagates as it is);
  - Ctrl-C (SIGINT) and SIGTERM stop the command: both raise KeyboardInterrupt in the main thread (a
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


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


@contextmanager
def interrupt_signals() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt like Ctrl-C while active (main thread only; restored after)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGTERM, _raise_interrupt)
    if previous[signal.SIGINT] in (signal.SIG_DFL, signal.SIG_IGN):  # e.g. started in the background by a shell
        signal.signal(signal.SIGINT, signal.default_int_handler)
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
