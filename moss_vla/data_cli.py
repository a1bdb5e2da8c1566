"""`moss-data`: inspect, validate, repair and export episode stores (data/README.md).

  moss-data info PATH [--json]             episodes, frames, tasks, duration, success labels
  moss-data check PATH [--quick]           validate the store; exit code 0 (ok) or 1 (problems)
  moss-data repair PATH [--drop-damaged]   truncate uncommitted data left by an interrupted writer; with
                                           --drop-damaged also drop episodes holding damaged chunks
  moss-data view PATH [--episodes ...] [--save out.rrd]   episodes in rerun (frames, series, stimulus)
  moss-data drop PATH [EPISODE ...] [--where KEY=VALUE]   remove episodes (crash-safe)
  moss-data export-lerobot SRC DST         write a LeRobotDataset (v3.0, video) for lerobot 0.4.4
  moss-data import-lerobot SRC DST         read a local LeRobotDataset (v3.0) into a new store

It takes store paths, not a hydra config: `moss-data --cfg` says so (the other moss-* commands print
their composed config there).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from moss_vla.command import command
from moss_vla.episodes.schema import SchemaError
from moss_vla.episodes.store import StoreError


def _info(args: argparse.Namespace) -> int:
    from moss_vla.episodes.check import store_info

    info = store_info(args.path)
    if args.json:
        print(json.dumps(info, indent=1))
        return 0
    print(f"{info['path']}  (schema v{info['schema_version']}, {info['fps']} fps, image {info['image_shape']})")
    print(f"  episodes: {info['episodes']}   frames: {info['frames']}   duration: {info['duration_s']:.1f} s")
    if info["episode_length"]:
        el = info["episode_length"]
        print(f"  episode length (frames): min {el['min']}  mean {el['mean']}  max {el['max']}")
    print("  tasks: " + (", ".join(f"{t} ({n})" for t, n in info["tasks"].items()) or "-"))
    for text in info["instructions"]:
        print(f"    instruction: {text}")
    sl = info["success_labels"]
    labels = ", ".join(f"{k}: {v['true']} true / {v['false']} false" for k, v in sl.items() if isinstance(v, dict))
    print(f"  success labels: {sl['episodes_labelled']} of {info['episodes']} episodes labelled"
          + (f" ({labels})" if labels else ""))
    if info["operators"]:
        print("  operators: " + ", ".join(f"{k} ({n})" for k, n in info["operators"].items()))
    if info["camera"]:
        print(f"  camera: {json.dumps(info['camera'])}")
    if info["display"]:
        print(f"  display: {json.dumps(info['display'])}")
    return 0


def _check(args: argparse.Namespace) -> int:
    from moss_vla.episodes.check import check_store

    res = check_store(args.path, images=not args.quick, progress=True)
    for w in res.warnings:
        print(f"warning: {w}")
    for e in res.errors:
        print(f"error: {e}")
    if res.ok:
        print(f"ok: {res.path}: {res.n_episodes} episodes, {res.n_frames} frames")
        return 0
    print(f"FAILED: {res.path}: {len(res.errors)} problem(s)")
    return 1


def _repair(args: argparse.Namespace) -> int:
    from moss_vla.episodes.check import check_store
    from moss_vla.episodes.repair import drop_damaged, finish_interrupted_repair
    from moss_vla.episodes.store import open_root, read_store_meta
    from moss_vla.episodes.writer import EpisodeWriter

    finished = finish_interrupted_repair(args.path)
    if finished:
        print(finished)
    shape = tuple(read_store_meta(open_root(args.path), args.path)["image_shape"])
    with EpisodeWriter(args.path, image_shape=shape) as w:  # opening for writing truncates uncommitted data
        print(w.recovery)
    damaged = check_store(args.path, images=True).damaged_episodes
    if not damaged:
        return 0
    if not args.drop_damaged:
        print(f"error: episodes {sorted(damaged)} hold damaged chunks (moss-data check {args.path} names them); "
              f"pass --drop-damaged to write the store again without them", file=sys.stderr)
        return 1
    report = drop_damaged(args.path, damaged)
    print(f"{args.path}: dropped damaged episodes {report['dropped_episodes']}, kept {report['kept_episodes']}; "
          f"the damaged store is kept at {report['damaged_store_kept_at']}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from moss_vla.episodes.lerobot_export import export_lerobot

    dst = export_lerobot(args.src, args.dst, repo_id=args.repo_id, use_videos=not args.images,
                         vcodec=args.vcodec)
    print(f"wrote LeRobotDataset to {dst}; load it with "
          f"LeRobotDataset({args.repo_id or 'local/<name>'!r}, root={str(dst)!r}, video_backend='pyav')")
    return 0


def _drop(args: argparse.Namespace) -> int:
    from moss_vla.episodes.curate import drop_episodes, parse_where, select_episodes
    from moss_vla.episodes.store import EpisodeStore

    if not args.episodes and not args.where:
        print("error: name the episodes to drop (moss-data drop STORE 3 7) or a filter (--where success=false)",
              file=sys.stderr)
        return 1
    store = EpisodeStore(args.path)
    chosen = select_episodes(store, args.episodes, parse_where(args.where))
    seeds = [store.episode_meta(i).get("seed") for i in chosen]
    if args.dry_run or not chosen:
        print(f"{args.path}: would drop {len(chosen)} of {store.n_episodes} episodes: {chosen} (seeds {seeds})")
        return 0
    r = drop_episodes(args.path, chosen, keep_backup=args.keep_backup)
    print(f"{args.path}: dropped episodes {r['dropped']} (seeds {r['dropped_seeds']}), kept {r['kept']}; {r['how']}"
          + (f", {r['frames_rewritten']} frames rewritten" if r.get("frames_rewritten") else "")
          + (f"; the old store is kept at {r['backup']}" if r.get("backup") else ""))
    return 0


def _import(args: argparse.Namespace) -> int:
    from moss_vla.episodes.lerobot_import import import_lerobot

    r = import_lerobot(args.src, args.dst, image_key=args.image_key, state_key=args.state_key,
                       action_key=args.action_key, gripper_key=args.gripper_key, image_size=args.image_size,
                       task=args.task, episodes=args.episodes)
    step = f", 1 of every {r['frame_step']} source frames (10 Hz)" if r["frame_step"] > 1 else ""
    print(f"wrote {r['episodes']} episodes, {r['frames']} frames to {r['dst']} (image {r['image_key']} -> "
          f"{r['image_shape']}, state {r['state_key']}, action {r['action_key']}{step}"
          + (f"; stimulus keys {r['moss_features']}" if r["moss_features"] else "") + ")")
    return 0


def _view(args: argparse.Namespace) -> int:
    from moss_vla.episodes.viewer import view_store

    r = view_store(args.path, episodes=args.episodes, save=args.save)
    where = f"wrote {r['save']} (open it with `rerun {r['save']}`)" if r["save"] else "sent to the rerun viewer"
    print(f"{args.path}: episodes {r['episodes']}, {r['frames']} frames {where}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="moss-data", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("info", help="summarise a store")
    p.add_argument("path")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_info)
    p = sub.add_parser("check", help="validate a store (exit code 0 ok, 1 problems)")
    p.add_argument("path")
    p.add_argument("--quick", action="store_true", help="skip decoding every image chunk")
    p.set_defaults(func=_check)
    p = sub.add_parser("repair", help="truncate uncommitted data of an interrupted writer")
    p.add_argument("path")
    p.add_argument("--drop-damaged", action="store_true",
                   help="write the store again without the episodes that hold damaged chunks (crash-safe; the "
                        "damaged store is kept as <path>.damaged-<time>)")
    p.set_defaults(func=_repair)
    p = sub.add_parser("view", help="show episodes in rerun: frames, state/action series, the stimulus")
    p.add_argument("path")
    p.add_argument("--episodes", type=int, nargs="+", default=None, help="episode indices (default: all)")
    p.add_argument("--save", default=None, metavar="OUT.rrd",
                   help="write a rerun recording file instead of opening the viewer (needs no display)")
    p.set_defaults(func=_view)
    p = sub.add_parser("drop", help="remove episodes from a store (crash-safe; indices as moss-data info counts them)")
    p.add_argument("path")
    p.add_argument("episodes", nargs="*", type=int, help="episode indices (negative: from the end, -1 the last)")
    p.add_argument("--where", action="append", default=[], metavar="KEY=VALUE",
                   help="also drop the episodes whose metadata has KEY == VALUE (JSON value), e.g. success=false; "
                        "repeat to require several")
    p.add_argument("--dry-run", action="store_true", help="only say which episodes would be dropped")
    p.add_argument("--keep-backup", action="store_true",
                   help="keep the old store as <path>.dropped-<time> when episodes before the last are dropped")
    p.set_defaults(func=_drop)
    p = sub.add_parser("export-lerobot", help="write a LeRobotDataset v3.0 (lerobot 0.4.4)")
    p.add_argument("src")
    p.add_argument("dst", help="new directory (the dataset root)")
    p.add_argument("--repo-id", default=None, help="LeRobot repo id (default local/<store name>)")
    p.add_argument("--vcodec", default="libsvtav1", help="video codec (libsvtav1, h264, hevc)")
    p.add_argument("--images", action="store_true",
                   help="store PNG image features instead of video (fallback if no video encoder works)")
    p.set_defaults(func=_export)
    p = sub.add_parser("import-lerobot", help="read a local LeRobotDataset (v3.0) into a new store")
    p.add_argument("src", help="the dataset root (the directory holding meta/info.json)")
    p.add_argument("dst", help="new episode store path")
    p.add_argument("--image-key", default=None, help="image/video feature (default: the only one, or "
                                                     "observation.images.display)")
    p.add_argument("--state-key", default="observation.state", help="(8,) joints + gripper, or (7,) with --gripper-key")
    p.add_argument("--action-key", default="action", help="(8,) absolute joint targets + gripper, or (7,)")
    p.add_argument("--gripper-key", default=None, help="a (1,) gripper feature appended to 7-value state/action")
    p.add_argument("--image-size", type=int, default=None, help="centre-crop to a square and resize (e.g. 224)")
    p.add_argument("--task", default=None, help="episode metadata 'task' (default: from our export, else lerobot)")
    p.add_argument("--episodes", type=int, nargs="+", default=None, help="only these source episodes")
    p.set_defaults(func=_import)
    return ap


@command("moss-data")
def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--cfg" in argv:  # answered like the other moss-* commands, which print their composed config
        print("moss-data takes store paths (see moss-data --help) and has no config to print")
        return 0
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (StoreError, SchemaError, FileExistsError, FileNotFoundError, ValueError, IndexError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
