"""`moss-arm-server`: the arm behind a small network interface, on the real-time PC (hydra overrides of
configs/arm_server.yaml; robot/arm_server.py).

    moss-arm-server arm=franka arm.ip=172.16.0.2          # on the real-time PC (franky, PREEMPT_RT)
    moss-trial checkpoint=<dir> task=pongpredict arm=remote  # on the GPU box, through an SSH tunnel

The served arm runs its own safety checks (the `arm.safety` block) on every target; while a client streams
targets, `watchdog_s` of silence or a lost connection stop the arm. One client at a time. It listens on
127.0.0.1 unless `allow_remote=true` and a `token` are given; across machines forward the port with
`ssh -N -L 8766:127.0.0.1:8766 rt-pc` (docs/rig.md section 4). `arm=sim` serves the simulated arm on the
wall clock (for trying the split on one machine). Runs until Ctrl-C or SIGTERM, then stops the arm.
"""

from __future__ import annotations

import asyncio
import logging
import sys

from moss_vla.command import command
from moss_vla.config import Rule, cli_config, flag, integer, number, one_of, plain

# the one check of watchdog_s's range (ArmServer takes it as given)
ARM_SERVER_RULES = {"port": integer(0, 65535), "allow_remote": flag(), "watchdog_s": number(above=0, hi=2.0),
                    "host": Rule("str", hint="an address to listen on, e.g. 127.0.0.1"),
                    "token": Rule("str", optional=True), "arm.type": one_of("franka", "sim"),
                    "log_level": one_of("DEBUG", "INFO", "WARNING", "ERROR")}


def make_served_arm(cfg):
    """The arm of `cfg.arm` (franka: connects; sim: the simulated FR3 at its ready pose on the wall clock)."""
    if str(cfg.arm.type) == "franka":
        from robot.franka_arm import FrankaArm

        return FrankaArm.from_config(plain(cfg.arm))
    from robot.clock import RealClock
    from robot.fr3_kinematics import Q_READY
    from robot.sim_arm import SimArm

    return SimArm.from_config(plain(cfg.arm), RealClock(), Q_READY)


@command("moss-arm-server")
def main(argv: list[str] | None = None) -> int:
    cfg = cli_config(sys.argv[1:] if argv is None else list(argv), "arm_server", __doc__, ARM_SERVER_RULES)
    if cfg is None:
        return 0
    from moss_vla.wire import check_bind
    from robot.arm_server import ArmServer

    logging.basicConfig(level=str(cfg.log_level), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    token = str(cfg.token) if cfg.get("token") else None
    check_bind(str(cfg.host), bool(cfg.allow_remote), token, "moss-arm-server")  # before touching the arm
    arm = make_served_arm(cfg)
    server = ArmServer(arm, host=str(cfg.host), port=int(cfg.port), token=token, allow_remote=bool(cfg.allow_remote),
                       watchdog_s=float(cfg.watchdog_s), kind=str(cfg.arm.type))
    print(f"moss-arm-server: arm={cfg.arm.type} on ws://{cfg.host}:{cfg.port}, watchdog {cfg.watchdog_s} s "
          f"(Ctrl-C stops)", flush=True)
    try:
        asyncio.run(server.serve())
    finally:
        arm.close()
    return 0
