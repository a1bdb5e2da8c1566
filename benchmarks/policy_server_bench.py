"""Round trip of the policy server (moss-serve, moss_vla/serve.py) on loopback against the same planning
in-process, side by side in one run: per step observe (every step) and plan (every step here, to get many
samples), at the `tiny` and `small` presets (untrained weights: the cost does not depend on them).

    python benchmarks/policy_server_bench.py        # ~1-2 min; writes benchmarks/results/policy_server.json

The server runs in its own process (as moss-serve does), one torch thread each side. Added latency = the
client's round trip minus the server's compute time for the same request (the wire, the websocket and
the copies); the in-process numbers are the same calls on a local policy.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from machine import machine_info  # benchmarks/machine.py (scripts run from this folder)

from moss_vla.policy import MossVLAPolicy
from moss_vla.remote_policy import RemotePolicy
from rig.sim_eval import untrained_checkpoint

OUT = Path(__file__).resolve().parent / "results" / "policy_server.json"
STEPS = 120


def pct(a, q):
    return float(np.percentile(np.asarray(a), q))


def run(policy, obs):
    """ms per observe and per plan, and the chunks."""
    policy.reset()
    t_obs, t_plan, chunks = [], [], []
    for o in obs:
        t = time.perf_counter()
        policy.observe(o)
        t_obs.append(1e3 * (time.perf_counter() - t))
        t = time.perf_counter()
        chunks.append(policy.plan(o))
        t_plan.append(1e3 * (time.perf_counter() - t))
    return t_obs[5:], t_plan[5:], np.stack(chunks)


def main() -> None:
    torch.set_num_threads(1)
    results = {"steps": STEPS, "presets": {}}
    tmp = Path(tempfile.mkdtemp())
    for preset in ("tiny", "small"):
        ckpt = untrained_checkpoint(tmp / preset, "movesense_lr.yaml", preset)
        local = MossVLAPolicy.from_pretrained(ckpt).eval()
        size = local.config.input_image_size
        rng = np.random.default_rng(0)
        obs = [{"image": rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
                "state": rng.normal(0, 0.01, 8).astype(np.float32), "instruction": "point left"} for _ in range(STEPS)]
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        log = tmp / f"serve_{preset}.log"
        proc = subprocess.Popen([str(Path(sys.executable).with_name("moss-serve")), f"checkpoint={ckpt}", f"port={port}",
                                 "threads=1", "device=cpu"], stdout=open(log, "w"), stderr=subprocess.STDOUT,  # noqa: SIM115
                                env={**os.environ, "OMP_NUM_THREADS": "1"})
        try:
            while "serving" not in log.read_text():
                assert proc.poll() is None, log.read_text()
                time.sleep(0.1)
            remote = RemotePolicy(f"127.0.0.1:{port}", timeout=30.0)
            torch.manual_seed(0)
            lo, lp, lc = run(local, obs)
            torch.manual_seed(0)
            remote.reset()
            remote._clear_stats()
            ro, rp, rc = run(remote, obs)
            added = np.asarray(remote.rtt_ms) - np.asarray(remote.server_ms)
        finally:
            proc.terminate()
            proc.wait(10)
        r = {"image_px": size, "message_bytes_observe": int(size * size * 3),
             "in_process": {"observe_ms_p50": pct(lo, 50), "observe_ms_p99": pct(lo, 99),
                            "plan_ms_p50": pct(lp, 50), "plan_ms_p99": pct(lp, 99),
                            "step_ms_p50": pct(np.add(lo, lp), 50), "step_ms_p99": pct(np.add(lo, lp), 99)},
             "server": {"observe_ms_p50": pct(ro, 50), "observe_ms_p99": pct(ro, 99),
                        "plan_ms_p50": pct(rp, 50), "plan_ms_p99": pct(rp, 99),
                        "step_ms_p50": pct(np.add(ro, rp), 50), "step_ms_p99": pct(np.add(ro, rp), 99),
                        "added_ms_per_request_p50": pct(added, 50), "added_ms_per_request_p99": pct(added, 99)},
             "same_chunks": bool(np.array_equal(lc, rc))}
        results["presets"][preset] = r
        i, s = r["in_process"], r["server"]
        print(f"{preset:5s} observe+plan p50/p99: in-process {i['step_ms_p50']:.2f}/{i['step_ms_p99']:.2f} ms, "
              f"server {s['step_ms_p50']:.2f}/{s['step_ms_p99']:.2f} ms; added per request p50/p99 "
              f"{s['added_ms_per_request_p50']:.2f}/{s['added_ms_per_request_p99']:.2f} ms; same chunks "
              f"{r['same_chunks']}")
    results = {"machine": machine_info(), **results}  # taken at the end: its load averages cover the run
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(results, indent=2))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
