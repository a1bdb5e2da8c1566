"""The one way every `moss-*` command composes its hydra config from configs/, and the one way to turn a
config into plain Python data."""

from __future__ import annotations

import sys
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from moss_vla.paths import CONFIG_DIR

CFG_PARTS = ("job", "hydra", "all")  # `--cfg job` as hydra's own commands spell it; all print the same here


def compose_config(overrides: list[str], config_name: str) -> DictConfig:
    """`configs/<config_name>.yaml` with hydra overrides (no working-directory change, no output dir).

    `${hydra:runtime.choices.<group>}` resolves as it does under `@hydra.main` (configs/train.yaml names
    its run directory after the chosen policy and model); it is resolved here, because the next
    composition replaces hydra's global state."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=list(overrides), return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    _resolve_hydra_values(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def _resolve_hydra_values(cfg: DictConfig) -> None:
    def paths(node: Any, prefix: str) -> list[str]:
        if isinstance(node, dict):
            return [p for k, v in node.items() if prefix or k != "hydra" for p in paths(v, f"{prefix}{k}.")]
        return [prefix[:-1]] if isinstance(node, str) and "${hydra:" in node else []

    for path in paths(OmegaConf.to_container(cfg, resolve=False), ""):
        OmegaConf.update(cfg, path, OmegaConf.select(cfg, path), force_add=True)


def plain(cfg: Any) -> Any:
    """A config (or any part of it) as plain dicts and lists, interpolations resolved; other values as they are."""
    return OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else cfg


def cli_config(argv: list[str], config_name: str, doc: str | None) -> DictConfig | None:
    """The composed config of a command, or None when the command only had to print something:
    `-h/--help` prints `doc`, `--cfg [job]` prints the composed config. A composition error (a bad key,
    group option or override) exits with hydra's message, which names it."""
    if "-h" in argv or "--help" in argv:
        print(doc or "")
        return None
    printing = "--cfg" in argv
    if printing:
        i = argv.index("--cfg")
        argv = argv[:i] + argv[i + 2 if argv[i + 1:i + 2] and argv[i + 1] in CFG_PARTS else i + 1:]
    try:
        cfg = compose_config(argv, config_name)
    except Exception as e:
        if type(e).__name__ in ("ConfigCompositionException", "MissingConfigException", "OverrideParseException"):
            sys.exit(f"{config_name}: {e}")
        raise
    if printing:
        try:
            print(OmegaConf.to_yaml(cfg, resolve=True))
        except OmegaConfBaseException as e:  # e.g. eval_dir: ${checkpoint}/... while checkpoint is still ???
            print(OmegaConf.to_yaml(cfg))
            print(f"({config_name}: printed unresolved, because {str(e).splitlines()[0]})", file=sys.stderr)
        return None
    return cfg
