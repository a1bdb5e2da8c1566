"""The one way every `moss-*` command composes its hydra config from configs/, and the one way to turn a
config into plain Python data."""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from moss_vla.command import ConfigError
from moss_vla.paths import CONFIG_DIR
from moss_vla.zoo import register_resolvers

register_resolvers()  # ${results_dir:...} in configs/sim_eval.yaml, trial.yaml

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


def cli_config(argv: list[str], config_name: str, doc: str | None,
               rules: dict[str, Rule] | None = None) -> DictConfig | None:
    """The composed config of a command, or None when the command only had to print something:
    `-h/--help` prints `doc`, `--cfg [job]` prints the composed config. A composition error (a bad key,
    group option or override) raises ConfigError with hydra's message, which names it. Before the command
    does anything, every value is checked (`check_config`): its type against the default in configs/, and
    the command's `rules` (ranges, choices)."""
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
            raise ConfigError(f"{config_name}: {e}") from None
        raise
    if printing:
        try:
            print(OmegaConf.to_yaml(cfg, resolve=True))
        except OmegaConfBaseException as e:  # e.g. eval_dir: ${checkpoint}/... while checkpoint is still ???
            print(OmegaConf.to_yaml(cfg))
            print(f"({config_name}: printed unresolved, because {str(e).splitlines()[0]})", file=sys.stderr)
        return None
    check_config(cfg, config_name, argv, rules or {})
    return cfg


# ------------------------------------------------------------------------------------------- value checks
@dataclass(frozen=True)
class Rule:
    """What one config value may be: `kind` int | float | bool | str | list, a range (`lo`/`hi`, `above`:
    strictly greater than), `choices`, `optional` (null allowed) and a `hint` (what to pass)."""

    kind: str
    lo: float | None = None
    hi: float | None = None
    above: float | None = None
    choices: tuple[Any, ...] = ()
    optional: bool = False
    hint: str = ""

    def problem(self, value: Any) -> str | None:
        """Why `value` breaks the rule (None: it does not)."""
        if value is None:
            return None if self.optional else "must be set (it is null)"
        kinds = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string",
                 "list": "a list"}
        ok = {"int": isinstance(value, int) and not isinstance(value, bool),
              "float": isinstance(value, (int, float)) and not isinstance(value, bool),
              "bool": isinstance(value, bool), "str": isinstance(value, str),
              "list": isinstance(value, (list, tuple))}[self.kind]
        if not ok:
            return f"must be {kinds[self.kind]}{' or null' if self.optional else ''}"
        if self.kind in ("int", "float"):
            if self.kind == "float" and not math.isfinite(value):
                return "must be a finite number"
            if self.lo is not None and value < self.lo:
                return f"must be >= {self.lo:g}"
            if self.above is not None and value <= self.above:
                return f"must be > {self.above:g}"
            if self.hi is not None and value > self.hi:
                return f"must be <= {self.hi:g}"
        if self.choices and value not in self.choices:
            return f"must be one of {', '.join(map(str, self.choices))}"
        return None


def integer(lo: float | None = None, hi: float | None = None, optional: bool = False, hint: str = "") -> Rule:
    return Rule("int", lo=lo, hi=hi, optional=optional, hint=hint)


def number(lo: float | None = None, hi: float | None = None, above: float | None = None, optional: bool = False,
           hint: str = "") -> Rule:
    return Rule("float", lo=lo, hi=hi, above=above, optional=optional, hint=hint)


def one_of(*choices: Any, optional: bool = False) -> Rule:
    return Rule("str", choices=choices, optional=optional)


def flag(optional: bool = False) -> Rule:
    return Rule("bool", optional=optional)


def _leaves(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        return {k: v for key, sub in node.items() for k, v in _leaves(sub, f"{prefix}{key}.").items()}
    return {prefix[:-1]: node}


def _type_problem(default: Any, value: Any) -> str | None:
    """Why `value` cannot stand where configs/ has `default` (None: it can)."""
    if default is None or default == "???" or value is None or isinstance(value, str) and "${" in value:
        return None
    if isinstance(default, str):
        return None if not isinstance(value, (dict, list)) else "must be a single value"
    if isinstance(default, bool):
        return None if isinstance(value, bool) else "must be true or false"
    if isinstance(default, int):
        return None if isinstance(value, int) and not isinstance(value, bool) else "must be an integer"
    if isinstance(default, float):
        return None if isinstance(value, (int, float)) and not isinstance(value, bool) else "must be a number"
    if isinstance(default, list):
        return None if isinstance(value, list) else "must be a list, e.g. [a, b]"
    return None


def check_config(cfg: DictConfig, config_name: str, argv: list[str] = (), rules: dict[str, Rule] | None = None,
                 where: str | None = None) -> None:
    """Every value of a composed config, checked once before a command does any work: its type against the
    value configs/ gives it (with the same group choices: `steps=abc` where the default is 2000), then the
    command's `rules` (dotted key -> Rule). Raises one ConfigError listing every problem, each naming the
    key, the value given and what it must be."""
    where = where or f"configs/{config_name}.yaml"
    choices = [a for a in argv if "=" in a and (CONFIG_DIR / a.split("=", 1)[0].lstrip("+")).is_dir()]
    try:
        defaults = _leaves(OmegaConf.to_container(compose_config(choices, config_name), resolve=False))
    except Exception:  # noqa: BLE001 - the given config composed; without defaults only the rules apply
        defaults = {}
    given = _leaves(OmegaConf.to_container(cfg, resolve=False))
    problems = []
    for key, value in given.items():
        why = _type_problem(defaults.get(key), value) if key in defaults and key not in (rules or {}) else None
        if why:
            problems.append(f"{key}={value!r} {why} (configs/ give {defaults[key]!r}; see {where})")
    for key, rule in (rules or {}).items():
        value = OmegaConf.select(cfg, key, default=None)
        value = plain(value)
        why = rule.problem(value)
        if why:
            problems.append(f"{key}={value!r} {why}" + (f" ({rule.hint})" if rule.hint else ""))
    if problems:
        raise ConfigError(f"invalid config value{'s' if len(problems) > 1 else ''} ({where} with the overrides "
                          f"given): " + "; ".join(problems))
