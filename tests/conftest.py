"""Shared test fixtures."""

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch


def _franky_sim_exe() -> str:
    exe = Path(sys.executable).with_name("franky-sim")
    if exe.exists():
        return str(exe)
    found = shutil.which("franky-sim")
    assert found, "franky-sim is not installed (pip install franky-sim; it is a dependency of moss-vla)"
    return found


@pytest.fixture(scope="module")
def franky_sim(tmp_path_factory):
    """Start `franky-sim --simulator mujoco --hostname 127.0.0.1`, wait until it listens, kill it at the end."""
    log_path = tmp_path_factory.mktemp("franky_sim") / "server.log"
    log = open(log_path, "w")  # noqa: SIM115 - closed at teardown
    env = {**os.environ, "MUJOCO_GL": "egl", "PYTHONUNBUFFERED": "1"}  # no window: rendering stays off
    proc = subprocess.Popen([_franky_sim_exe(), "--simulator", "mujoco", "--hostname", "127.0.0.1"],
                            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    deadline = time.monotonic() + 60
    try:
        while "Press Ctrl+C" not in log_path.read_text():  # printed once both ports are bound
            if proc.poll() is not None:
                pytest.fail(f"franky-sim exited with code {proc.returncode}:\n{log_path.read_text()}")
            if time.monotonic() > deadline:
                pytest.fail(f"franky-sim did not start within 60 s:\n{log_path.read_text()}")
            time.sleep(0.1)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        log.close()


@pytest.fixture
def ws_connections(monkeypatch):
    """Every websocket client connection opened (websockets.sync.client.connect) during the test, in order."""
    from websockets.sync import client

    opened, connect = [], client.connect

    def recording(*args, **kwargs):
        opened.append(connect(*args, **kwargs))
        return opened[-1]

    monkeypatch.setattr(client, "connect", recording)
    return opened


@pytest.fixture
def one_thread():
    """Tiny models: one intra-op thread is faster, and much faster on a busy 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
