"""The model zoo: small checkpoints our own bench trained, shipped with the package (docs/zoo.md).

`checkpoint=zoo:<task>/<policy>` works wherever a checkpoint directory does; each entry is a folder
`<task>/<policy>/` here with the inference files save_pretrained writes (config.json, model.safetensors,
stats.json, training_data.json) and PROVENANCE.md (command, commit, data seeds, steps, training time,
evaluation). How an entry is made: benchmarks/zoo_export.py.
"""

from __future__ import annotations

from pathlib import Path

ZOO_DIR = Path(__file__).resolve().parent
PREFIX = "zoo:"


def entries() -> list[str]:
    """Every `<task>/<policy>` in the zoo."""
    return sorted(f"{d.parent.name}/{d.name}" for d in ZOO_DIR.glob("*/*") if (d / "model.safetensors").is_file())


def resolve_checkpoint(name_or_path: str | Path) -> Path:
    """`zoo:<task>/<policy>` -> its folder here; anything else is a checkpoint directory, returned as a Path.
    An unknown zoo name is refused with the list of what the zoo holds."""
    text = str(name_or_path)
    if not text.startswith(PREFIX):
        return Path(text)
    entry = text[len(PREFIX):].strip("/")
    folder = ZOO_DIR / entry
    if entry.count("/") != 1 or not (folder / "model.safetensors").is_file():
        raise FileNotFoundError(f"checkpoint={text}: no such zoo entry; the zoo has "
                                f"{', '.join(PREFIX + e for e in entries()) or 'nothing yet'} (docs/zoo.md)")
    return folder


def results_dir(checkpoint: str) -> str:
    """Where a command writes what it finds about `checkpoint` (configs: `${results_dir:${checkpoint}}`): beside
    a checkpoint directory, or runs/zoo/<task>/<policy> for a zoo entry (the package's folder stays as shipped)."""
    text = str(checkpoint)
    return f"runs/zoo/{text[len(PREFIX):].strip('/')}" if text.startswith(PREFIX) else text


def register_resolvers() -> None:
    from omegaconf import OmegaConf

    OmegaConf.register_new_resolver("results_dir", results_dir, replace=True)
