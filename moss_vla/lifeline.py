"""Child processes die with their parent, even when the parent is killed with SIGKILL.

The parent starts the child with `stdin=subprocess.PIPE` and keeps the write end open for its whole life
(never writing to it); the child calls `watch_parent_pipe()`. When the parent ends, however it ends, the
OS closes the write end and the child's read returns EOF: the child then stops itself (`on_eof`, e.g. a
quit request that lets it close its logs) and, if still alive `grace` seconds later, exits hard. More
robust than polling the parent pid (a re-used pid) or PR_SET_PDEATHSIG (it fires when the spawning
*thread* ends, and is Linux only). The child also ignores SIGINT: a Ctrl-C in the terminal reaches the
whole process group, and the parent decides when its children stop.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable

PARENT_PIPE_FLAG = "--parent-pipe"  # command-line flag of a child started with a lifeline on its stdin


def watch_parent_pipe(on_eof: Callable[[], None] | None = None, grace: float = 2.0, fd: int = 0,
                      ignore_sigint: bool = True) -> threading.Thread:
    """Child side (see module docstring): a daemon thread that ends this process once `fd` (stdin) hits EOF."""
    if ignore_sigint and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    def watch() -> None:
        with contextlib.suppress(OSError):  # a closed / broken pipe is an end of the parent too
            while os.read(fd, 4096):
                pass  # the parent never writes; anything read is ignored
        if on_eof is not None:
            with contextlib.suppress(Exception):  # the hard exit below still ends the process
                on_eof()
        time.sleep(grace)
        os._exit(1)

    thread = threading.Thread(target=watch, name="parent-lifeline", daemon=True)
    thread.start()
    return thread
