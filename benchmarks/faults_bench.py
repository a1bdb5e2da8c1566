"""Fault injection at scale: the real commands, killed and interrupted at random moments, fed damaged stores,
faulting arms, lost displays and a NaN policy (issue 34; the table of cases is docs/reliability.md).

  python benchmarks/faults_bench.py [--kills 100] [--seed 0] [--out benchmarks/results/faults.json]

1. Kills: `--kills` times, a command drawn from record / collect / eval / train / repair is started as its
   own process and, after a random delay, sent SIGKILL (60%), SIGINT (30%) or SIGTERM (10%). Checked after
   each: the episodes committed before the signal are all still there (store opened as every reader opens
   it, which also checks every chunk); an interrupted command exits 130 within 15 s without a traceback; a
   killed moss-record leaves no display process (it watches its pipe to the parent).
2. Cases, each run once: a damaged chunk of each kind (deleted / truncated image chunk, truncated small
   chunk, half-written episode_ends, metadata disagreeing with episode_ends) through check, train and replay;
   a NaN policy in moss-sim eval; an arm error, a deadline streak, a lost display and a frozen display in
   moss-record. Each must end with its own exit code and message, never a traceback, a hang or exit 0.
3. What the per-chunk crc32c checksum costs `EpisodeWriter.add_frame` and the background writes.
Writes `--out` (JSON): kills, episodes committed and lost, orphaned processes, cases by outcome.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from machine import machine_info  # benchmarks/machine.py (scripts run from this folder)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from moss_vla.episodes import EpisodeStore, EpisodeWriter
from moss_vla.episodes.check import check_store
from moss_vla.episodes.synthetic import make_synthetic_store

ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "SDL_VIDEODRIVER": "dummy",
       "SDL_AUDIODRIVER": "dummy", "PYTHONPATH": str(ROOT)}
SIM = ["task.n_patterns=1", "progress=false"]
LIVE = ["camera=sim", "arm=sim", "teleop=scripted", "loop.max_missed_streak=1000", "task.n_patterns=1",
        "task.pause=[0.3,0.3]", "task.motion_duration=[1.5,1.5]", "task.hold=[1.2,1.2]", "progress=false"]


def command(entry: str, *args: str) -> list[str]:
    module, func = entry.split(":")
    return [sys.executable, "-c", f"import sys; from {module} import {func} as m; sys.exit(m())", *args]


def committed(store: Path) -> int:
    try:
        return EpisodeStore(store, verify=False).n_episodes
    except Exception:  # noqa: BLE001 - not created yet, or being created
        return 0


def alive(pid: int) -> bool:
    try:
        return "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()
    except OSError:
        return False


def display_pids(log_dir: Path, seen: set[Path]) -> list[int]:
    pids = []
    for log in log_dir.glob("display_*.jsonl"):
        if log in seen:
            continue
        for line in log.read_text().splitlines()[:3]:
            if '"open"' in line:  # a log is taken once its driver has announced its pid
                pids.append(int(json.loads(line)["pid"]))
                seen.add(log)
    return pids


class Bench:
    def __init__(self, work: Path, rng: random.Random) -> None:
        self.work, self.rng = work, rng
        from rig.sim_eval import untrained_checkpoint

        self.ckpt = untrained_checkpoint(work / "ckpt", "movesense_lr.yaml", "tiny")
        self.train_store = work / "train.zarr"
        make_synthetic_store(self.train_store, n_episodes=3, length=16, image_shape=(16, 16, 3))
        self.logs = work / "logs"
        self.logs.mkdir()
        self.seen_logs: set[Path] = set()
        self.n = 0

    def job(self, name: str) -> tuple[list[str], Path | None]:
        self.n += 1
        w = self.work
        if name == "record":
            return command("rig.record_cli:main", *LIVE, "episodes=50", f"out={w / 'rec.zarr'}", f"seed={self.n * 100}",
                           f"log_dir={self.logs}", f"display.log_dir={self.logs}"), w / "rec.zarr"
        if name == "collect":
            return command("rig.sim_cli:main", "collect", "episodes=200", f"out={w / 'col.zarr'}", "append=true",
                           f"base_seed={self.n * 1000}", *SIM), w / "col.zarr"
        if name == "eval":
            return command("rig.sim_cli:main", "eval", f"checkpoint={self.ckpt}", "trials=200",
                           f"eval_dir={w / f'eval_{self.n}'}", *SIM), None
        if name == "train":
            return command("moss_vla.train:main", f"data.paths=[{self.train_store}]", "model=tiny",
                           "model.input_image_size=16", "steps=100000", "ckpt_every=3", "batch_size=2",
                           f"out_dir={w / f'train_{self.n}'}"), None
        if name == "repair":  # a copy of a store with one damaged episode, repaired
            src = w / f"rep_{self.n}.zarr"
            make_synthetic_store(src, n_episodes=20, length=16, image_shape=(16, 16, 3))
            (src / "data" / "image" / "c" / "20" / "0" / "0" / "0").unlink()
            return command("moss_vla.data_cli:main", "repair", str(src), "--drop-damaged"), src
        raise ValueError(name)

    def kill(self, name: str, sig: signal.Signals) -> dict[str, Any]:
        argv, store = self.job(name)
        proc = subprocess.Popen(argv, cwd=self.work, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)
        delay = self.rng.uniform(0.3, 9.0)
        time.sleep(delay)
        # the episodes that must survive: those committed so far (a repair keeps the 19 undamaged ones)
        before = 19 if name == "repair" else committed(store) if store is not None else 0
        t0 = time.monotonic()
        running = proc.poll() is None
        if running:
            proc.send_signal(sig)
        try:
            out, _ = proc.communicate(timeout=15)
            hang = False
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
            hang = True
        stop_s = time.monotonic() - t0
        time.sleep(0.5 if name != "record" else 3.0)
        orphans = [p for p in display_pids(self.logs, self.seen_logs) if alive(p)] if name == "record" else []
        after, consistent = before, True
        if store is not None:
            if name == "repair":
                # a killed repair leaves the store whole (the original, or the repaired one), never none
                from moss_vla.episodes.repair import finish_interrupted_repair

                finish_interrupted_repair(store)
                res = check_store(store)
                after = res.n_episodes - len(res.damaged_episodes) if store.exists() else 0
                consistent = store.exists() and (res.ok or res.damaged_episodes == {1})
            else:
                try:
                    after = EpisodeStore(store).n_episodes if store.exists() else 0  # every reader's checks
                except Exception as exc:  # noqa: BLE001 - a finding
                    consistent, after = False, 0
                    out += f"\nreader: {exc}"
        if hang:
            outcome = "hang"
        elif "Traceback" in out and out.rstrip().endswith("KeyboardInterrupt") and "moss_vla/command.py" not in out:
            outcome = "interrupted_at_startup"  # before the command's main ran (Python still importing it)
        elif "Traceback" in out:
            outcome = "traceback"
        elif not consistent:
            outcome = "store_damaged"
        elif orphans:
            outcome = "orphan"
        elif not running:
            outcome = "finished_before_signal"
        elif sig == signal.SIGKILL:
            outcome = "killed" if proc.returncode == -9 else "wrong_exit"
        else:
            outcome = "stopped_130" if proc.returncode == 130 else ("finished" if proc.returncode == 0 else "wrong_exit")
        return {"command": name, "signal": sig.name, "delay_s": round(delay, 2), "exit": proc.returncode,
                "stop_s": round(stop_s, 2), "committed_before": before, "committed_after": after,
                "lost": max(0, before - after), "orphans": len(orphans), "outcome": outcome,
                "tail": out[-300:] if outcome not in ("killed", "stopped_130", "finished", "finished_before_signal")
                else ""}


def report(case: dict[str, Any]) -> dict[str, Any]:
    print(f"case {case['case']}: {case['outcome']} (exit {case['exit']}): {case['message'][:160]}", flush=True)
    return case


def run_case(name: str, argv: list[str], cwd: Path, expect: int, must_say: str, timeout: float = 180) -> dict[str, Any]:
    t0 = time.monotonic()
    try:
        p = subprocess.run(argv, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout, check=False)
        code, out = p.returncode, p.stdout + p.stderr
    except subprocess.TimeoutExpired as e:
        code, out = None, str(e.stdout or "") + str(e.stderr or "")
    outcome = ("hang" if code is None else "traceback" if "Traceback" in out else "silent" if code == 0
               else "clear_error" if code == expect and must_say in out else "wrong_message")
    return report({"case": name, "exit": code, "expected_exit": expect, "outcome": outcome,
                   "seconds": round(time.monotonic() - t0, 1),
                   "message": out.strip().splitlines()[-1][-300:] if out.strip() else ""})


def damaged_store(work: Path, kind: str) -> Path:
    path = work / f"damaged_{kind}.zarr"
    make_synthetic_store(path, n_episodes=3, length=12, image_shape=(16, 16, 3))
    if kind == "deleted_image_chunk":
        (path / "data" / "image" / "c" / "13" / "0" / "0" / "0").unlink()
    elif kind == "truncated_image_chunk":
        f = path / "data" / "image" / "c" / "13" / "0" / "0" / "0"
        f.write_bytes(f.read_bytes()[:25])
    elif kind == "truncated_small_chunk":
        f = path / "data" / "action" / "c" / "0" / "0"
        f.write_bytes(f.read_bytes()[:-9])
    elif kind == "half_written_episode_ends":
        f = path / "meta" / "episode_ends" / "zarr.json"
        f.write_text(f.read_text()[:300])
    elif kind == "metadata_end_disagrees":
        f = path / "meta" / "episode_ends" / "zarr.json"
        doc = json.loads(f.read_text())
        doc["attributes"]["episodes"][1]["end"] = 20
        f.write_text(json.dumps(doc))
    return path


def cases(b: Bench) -> list[dict[str, Any]]:
    w, out = b.work, []
    for kind in ("deleted_image_chunk", "truncated_image_chunk", "truncated_small_chunk", "half_written_episode_ends",
                 "metadata_end_disagrees"):
        store = damaged_store(w, kind)
        out.append(run_case(f"{kind}: moss-data check", command("moss_vla.data_cli:main", "check", str(store)), w, 1,
                            str(store)))
        out.append(run_case(f"{kind}: moss-train", command("moss_vla.train:main", f"data.paths=[{store}]", "model=tiny",
                                                            "model.input_image_size=16", "steps=2",
                                                            f"out_dir={w / f'tr_{kind}'}"), w, 1, str(store)))
        out.append(run_case(f"{kind}: moss-replay", command("rig.replay_cli:main", f"store={store}", "realtime=false",
                                                             "progress=false"), w, 1, str(store)))
    from safetensors.torch import load_file, save_file

    nan = w / "nan_ckpt"
    shutil.copytree(b.ckpt, nan)
    weights = load_file(str(nan / "model.safetensors"))
    key = next(k for k in sorted(weights) if k.startswith("action_head.") and k.endswith("norm1.linear.bias"))
    weights[key] = weights[key] * float("nan")
    save_file(weights, str(nan / "model.safetensors"))
    out.append(run_case("NaN policy: moss-sim eval", command("rig.sim_cli:main", "eval", f"checkpoint={nan}", "trials=2",
                                                             f"eval_dir={w / 'nan_eval'}", *SIM), w, 1, "fault"))
    rec = [*LIVE, "episodes=2", f"log_dir={b.logs}", f"display.log_dir={b.logs}", "after_arm_error=stop"]
    out.append(run_case("arm error: moss-record", command("rig.record_cli:main", *rec, f"out={w / 'arm.zarr'}",
                                                          "+arm.fault={kind: arm_error, at: 1.0}"), w, 1, ": arm, discarded"))
    streak = [a for a in rec if not a.startswith("loop.max_missed")]
    out.append(run_case("deadline streak: moss-record", command("rig.record_cli:main", *streak, f"out={w / 'slow.zarr'}",
                                                                "+arm.fault={kind: slow, at: 0.0}", "loop.max_missed_streak=2"), w, 1,
                            "missed_deadlines"))
    for what, sig in (("lost display", signal.SIGKILL), ("frozen display", signal.SIGSTOP)):
        store = w / f"{what.replace(' ', '_')}.zarr"
        display_pids(b.logs, b.seen_logs)  # the displays of earlier runs are not this one's
        t0 = time.monotonic()
        proc = subprocess.Popen(command("rig.record_cli:main", *rec, f"out={store}"), cwd=w, env=ENV,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        pids: list[int] = []
        while not pids and time.monotonic() - t0 < 60:
            time.sleep(0.2)
            pids = display_pids(b.logs, b.seen_logs)
        time.sleep(2.0)
        os.kill(pids[0], sig)
        try:
            text, _ = proc.communicate(timeout=60)
            code = proc.returncode
        except subprocess.TimeoutExpired:
            proc.kill()
            text, code = proc.communicate()[0], None
        if sig == signal.SIGSTOP and alive(pids[0]):  # (moss-record's close normally kills it)
            os.kill(pids[0], signal.SIGCONT)
        ok = code == 1 and "Traceback" not in text and check_store(store).ok
        out.append(report({"case": f"{what}: moss-record", "exit": code, "expected_exit": 1,
                           "outcome": "hang" if code is None else "traceback" if "Traceback" in text
                           else "clear_error" if ok else "wrong_message",
                           "message": text.strip().splitlines()[-1][-300:]}))
    return out


def checksum_cost(work: Path, frames: int = 300) -> dict[str, Any]:
    """add_frame p99 on the caller's thread and background write throughput at 224x224, with and without the
    crc32c codec (a store without it is made by the writer of the previous release's layout)."""
    import zarr
    from zarr.codecs import BloscCodec

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (224, 224, 3), dtype=np.uint8) // 16 * 16 for _ in range(16)]
    out = {}
    for label in ("crc32c", "no_checksum"):
        path = work / f"cost_{label}.zarr"
        with EpisodeWriter(path, image_shape=(224, 224, 3)):
            pass
        if label == "no_checksum":  # rewrite the empty image array without the crc32c codec
            root = zarr.open_group(str(path), mode="r+")
            attrs = dict(root["data/image"].attrs)
            del root["data/image"]
            root["data"].create_array("image", shape=(0, 224, 224, 3), dtype=np.uint8, chunks=(1, 224, 224, 3),
                                      compressors=BloscCodec(cname="lz4", clevel=3, shuffle="noshuffle"),
                                      fill_value=0, attributes=attrs)
        lat = []
        with EpisodeWriter(path, image_shape=(224, 224, 3), queue_size=frames + 1) as w:
            w.start_episode({"task": "t", "instruction": "i"})
            t0 = time.perf_counter()
            for k in range(frames):
                a = time.perf_counter()
                w.add_frame(images[k % 16], state=np.zeros(8), action=np.zeros(8), timestamp=float(k))
                lat.append(time.perf_counter() - a)
            w.commit()
            wall = time.perf_counter() - t0
        out[label] = {"add_frame_ms_p50": round(1e3 * float(np.percentile(lat, 50)), 3),
                      "add_frame_ms_p99": round(1e3 * float(np.percentile(lat, 99)), 3),
                      "frames_written_per_s": round(frames / wall, 1)}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kills", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--commands", nargs="+", default=["record", "collect", "eval", "train", "repair"])
    ap.add_argument("--skip-cases", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "faults.json"))
    args = ap.parse_args()
    # the commands start with Ctrl-C's default disposition, as from a terminal (a shell's `&` or nohup would
    # hand them SIGINT ignored until their front door re-enables it)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    rng = random.Random(args.seed)
    wall0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="faults_bench_") as tmp:
        b = Bench(Path(tmp), rng)
        kills = []
        for i in range(args.kills):
            name = rng.choice(args.commands)
            sig = rng.choices([signal.SIGKILL, signal.SIGINT, signal.SIGTERM], [0.6, 0.3, 0.1])[0]
            kills.append(b.kill(name, sig))
            k = kills[-1]
            print(f"[{i + 1}/{args.kills}] {name} {sig.name} after {k['delay_s']} s: {k['outcome']} (exit {k['exit']}, "
                  f"stopped in {k['stop_s']} s, committed {k['committed_before']} -> {k['committed_after']})", flush=True)
        case_results = [] if args.skip_cases else cases(b)
        cost = checksum_cost(b.work)
        stores = {n: committed(b.work / f"{n}.zarr") for n in ("rec", "col")}
    interrupted = [k for k in kills if k["signal"] != "SIGKILL" and k["outcome"] == "stopped_130"]
    result = {
        "machine": machine_info(),
        "wall_minutes": round((time.perf_counter() - wall0) / 60, 1),
        "kills": len(kills),
        "kills_by_command": dict(Counter(k["command"] for k in kills)),
        "signals": dict(Counter(k["signal"] for k in kills)),
        "episodes_committed": sum(stores.values()),
        "episodes_committed_before_signals": sum(k["committed_before"] for k in kills),
        "episodes_lost": sum(k["lost"] for k in kills),
        "orphaned_processes": sum(k["orphans"] for k in kills),
        "kill_outcomes": dict(Counter(k["outcome"] for k in kills)),
        "interrupt_stop_seconds_max": max((k["stop_s"] for k in interrupted), default=None),
        "case_outcomes": dict(Counter(c["outcome"] for c in case_results)),
        "checksum_cost_224": cost,
        "cases": case_results,
        "kill_log": kills,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k not in ("cases", "kill_log", "machine")}, indent=1))
    bad = {k: v for k, v in result["kill_outcomes"].items() if k in ("hang", "traceback", "store_damaged", "orphan",
                                                                      "wrong_exit")}
    return 1 if bad or result["episodes_lost"] or set(result["case_outcomes"]) - {"clear_error"} else 0


if __name__ == "__main__":
    sys.exit(main())
