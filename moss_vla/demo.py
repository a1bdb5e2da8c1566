"""moss-demo (`make demo`): collect a small MoveSense L/R set in the simulated rig, train ContextVLA and
MOSS at the small preset, evaluate both in closed loop and print the comparison (configs/demo.yaml).
Any override of configs/demo.yaml can be passed: `moss-demo steps=1000 episodes=30`."""

import sys


def main() -> None:
    from tasks.sim_bench import bench_main

    sys.exit(bench_main(sys.argv[1:], config_name="demo"))


if __name__ == "__main__":
    main()
