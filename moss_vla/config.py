"""Composing the hydra configs in configs/ from code and from the command-line tools."""

from __future__ import annotations

import sys

from omegaconf import DictConfig, OmegaConf

from moss_vla.paths import CONFIG_DIR


def compose_config(overrides: list[str], config_name: str) -> DictConfig:
    """`configs/<config_name>.yaml` with hydra overrides (no working-directory change, no output dir)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name=config_name, overrides=list(overrides))


def cli_config(argv: list[str], config_name: str, doc: str | None) -> DictConfig | None:
    """The composed config of a command, or None when the command only had to print something:
    `-h/--help` prints `doc`, `--cfg` prints the composed config."""
    if "-h" in argv or "--help" in argv:
        print(doc or "")
        return None
    if "--cfg" in argv:
        print(OmegaConf.to_yaml(compose_config([a for a in argv if a != "--cfg"], config_name), resolve=True))
        return None
    try:
        return compose_config(argv, config_name)
    except Exception as e:  # hydra's composition errors name the bad key or option: show just that
        if type(e).__name__ in ("ConfigCompositionException", "MissingConfigException", "OverrideParseException"):
            sys.exit(f"{config_name}: {e}")
        raise
