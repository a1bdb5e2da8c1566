"""moss-demo (`make demo`): collect a small MoveSense L/R set in the simulated rig, train ContextVLA and
MOSS at the small preset, evaluate both in closed loop and print the comparison (configs/demo.yaml).
Any override of configs/demo.yaml can be passed: `moss-demo steps=1000 episodes=30`."""

from __future__ import annotations

import sys

from moss_vla.config import cli_config


def main(argv: list[str] | None = None) -> int:
    from rig.sim_bench import bench_main

    cfg = cli_config(sys.argv[1:] if argv is None else list(argv), "demo", __doc__)
    return 0 if cfg is None else bench_main(cfg)


if __name__ == "__main__":
    sys.exit(main())
