"""`moss-serve`: serve a checkpoint's policy to rigs over websockets (hydra overrides of configs/serve.yaml).

    moss-serve checkpoint=runs/<run>/checkpoints/latest device=auto port=8765
    moss-trial checkpoint=<label> task=pongpredict planner.remote=127.0.0.1:8765   # on the rig

One session per connected rig, each with its own streaming state (moss_vla/serve.py); the rig commands
(moss-trial, moss-sim eval, moss-replay) plan through it with `planner.remote=<host>:<port>`. It listens on
127.0.0.1 unless `allow_remote=true` and a `token` are given; across machines forward the port with
`ssh -N -L 8765:127.0.0.1:8765 gpu-box` (or put a TLS proxy in front, wss), docs/rig.md section 4. Runs until
Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import asyncio
import logging
import sys

from moss_vla.command import command
from moss_vla.config import Rule, cli_config, flag, integer, one_of

SERVE_RULES = {"port": integer(0, 65535), "threads": integer(0), "allow_remote": flag(),
               "host": Rule("str", hint="an address to listen on, e.g. 127.0.0.1"),
               "token": Rule("str", optional=True), "log_level": one_of("DEBUG", "INFO", "WARNING", "ERROR")}


@command("moss-serve")
def main(argv: list[str] | None = None) -> int:
    cfg = cli_config(sys.argv[1:] if argv is None else list(argv), "serve", __doc__, SERVE_RULES)
    if cfg is None:
        return 0
    import torch

    from moss_vla.serve import PolicyServer
    from moss_vla.wire import check_bind
    from rig.sim_eval import load_policy

    logging.basicConfig(level=str(cfg.log_level), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    token = str(cfg.token) if cfg.get("token") else None
    check_bind(str(cfg.host), bool(cfg.allow_remote), token, "moss-serve")  # before loading the weights
    if int(cfg.threads) > 0:
        torch.set_num_threads(int(cfg.threads))
    policy = load_policy(cfg, "moss-serve").eval()
    server = PolicyServer(policy, host=str(cfg.host), port=int(cfg.port), token=token,
                          allow_remote=bool(cfg.allow_remote), label=str(cfg.checkpoint))
    seconds = server.warm_up()
    print(f"moss-serve: {cfg.checkpoint} on {policy.device} (warmed up in {seconds:.1f} s), listening on ws://{cfg.host}:{cfg.port} "
          f"(Ctrl-C stops)", flush=True)
    asyncio.run(server.serve())
    return 0
