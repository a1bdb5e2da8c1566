"""Ctrl-C during `moss-record` (a real subprocess, real time): the arm stops, the episode in progress is
discarded, the writer is closed, the display process quits and the store is consistent."""

import os
import signal
import subprocess
import sys
import time

from moss_vla.episodes import EpisodeStore
from moss_vla.episodes.check import check_store
from moss_vla.episodes.store import writer_pid

SHORT = ["task.n_patterns=1", "task.pause=[0.3,0.3]", "task.motion_duration=[1.5,1.5]", "task.hold=[1.2,1.2]",
         "progress=false"]


def test_sigint_leaves_a_consistent_store(tmp_path):
    out = tmp_path / "rec.zarr"
    cmd = [sys.executable, "-c", "import sys; from rig.record_cli import main; sys.exit(main())",
           "camera=sim", "arm=sim", "teleop=scripted", f"out={out}", "episodes=5", f"log_dir={tmp_path}",
           f"display.log_dir={tmp_path}", "loop.max_missed_streak=1000", *SHORT]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    lines = []
    try:
        deadline = time.monotonic() + 60
        for line in proc.stdout:  # wait until the first episode is committed
            lines.append(line)
            if "committed as episode 0" in line:
                break
            assert time.monotonic() < deadline, "".join(lines)
        else:
            raise AssertionError("moss-record ended before committing an episode:\n" + "".join(lines))
        time.sleep(1.5)  # well into the second episode
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = "".join(lines) + rest
    assert proc.returncode == 130, text
    assert ": interrupted, discarded" in text
    store = EpisodeStore(out)
    assert store.n_episodes == 1 and store.episode_meta(0)["end_reason"] == "episode_done"
    result = check_store(out, images=True)
    assert result.ok, result.errors
    assert writer_pid(out) is None  # the writer lock was released
    # the display process quit too: its frame log ends with the close event
    log = next(tmp_path.glob("display_*.jsonl")).read_text().splitlines()
    assert '"event": "close"' in log[-1]
