"""The one place that handles the traps of lerobot 0.4.4's GR00T N1.5 port (docs/design.md section 5.8).

lerobot's ``GR00TN15`` (``lerobot/policies/groot/groot_n1.py``) is used as it is; this module only changes
where it looks for things, while :func:`lerobot_offline` is active:

- ``EagleBackbone.__init__`` calls ``ensure_eagle_cache_ready``, which copies the vendored Eagle code to
  ``HF_LEROBOT_HOME/<tokenizer_assets_repo>`` and downloads tokenizer files from the hub, then reads the
  Eagle config from there with ``trust_remote_code``: here the config comes from ``tokenizer_path`` (a
  local copy of the Eagle processor assets) through lerobot's vendored ``Eagle25VLConfig``, and nothing is
  copied or downloaded;
- the vendored Eagle model hard-codes ``flash_attention_2`` for SigLIP when no ``vision_model`` is passed,
  and fails to build without flash-attn: the model is built with a prebuilt SigLIP that uses
  :func:`attn_implementation` (flash-attn when it is installed and a GPU is there, else SDPA), and the
  Qwen3 LLM gets the same;
- ``GR00TN15.from_pretrained`` calls ``snapshot_download`` first: here it is given the local directory;
- ``GR00TN15.prepare_input`` uses ``tree.map_structure`` from dm-tree, which plain lerobot does not
  install (and which is not installable here): :func:`map_structure` is the small map over the dicts that
  ``prepare_input`` passes (installed only when ``tree`` is missing).

Missing files raise :class:`MissingAssetError`, which names the file and the command that fetches the
directory on a machine with internet access.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

CHECKPOINT_REPO = "nvidia/GR00T-N1.5-3B"
TOKENIZER_REPO = "lerobot/eagle2hg-processor-groot-n1p5"
# the Eagle config (model sizes), the tokenizer and the processor settings, all read from tokenizer_path
TOKENIZER_FILES = ("config.json", "tokenizer_config.json", "preprocessor_config.json", "processor_config.json")
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")


class MissingAssetError(FileNotFoundError):
    """A file of the GR00T checkpoint or of the Eagle tokenizer assets is not where it was looked for."""


def _fetch_hint(repo: str, directory: Path) -> str:
    return (f"on a machine with internet access run `huggingface-cli download {repo} --local-dir {directory}` "
            f"and copy the directory here")


def check_checkpoint_dir(path: str | Path | None) -> Path:
    """The local copy of nvidia/GR00T-N1.5-3B: ``config.json`` and its safetensors weights."""
    if not path:
        raise MissingAssetError(f"model.pretrained_path is not set: give the local copy of {CHECKPOINT_REPO} "
                                f"({_fetch_hint(CHECKPOINT_REPO, Path('<dir>'))})")
    directory = Path(path).expanduser()
    config = directory / "config.json"
    if not config.is_file():
        raise MissingAssetError(f"{config} not found: model.pretrained_path must be a local copy of "
                                f"{CHECKPOINT_REPO}; {_fetch_hint(CHECKPOINT_REPO, directory)}")
    if not any((directory / name).is_file() for name in WEIGHT_FILES):
        raise MissingAssetError(f"{directory / WEIGHT_FILES[0]} (or {WEIGHT_FILES[1]}) not found: the GR00T "
                                f"weights are missing; {_fetch_hint(CHECKPOINT_REPO, directory)}")
    index = directory / WEIGHT_FILES[1]
    if index.is_file():
        for shard in sorted(set(json.loads(index.read_text())["weight_map"].values())):
            if not (directory / shard).is_file():
                raise MissingAssetError(f"{directory / shard} not found (listed in {index}): the download is "
                                        f"incomplete; {_fetch_hint(CHECKPOINT_REPO, directory)}")
    return directory


def check_tokenizer_dir(path: str | Path | None) -> Path:
    """The local Eagle processor assets: the Eagle config, tokenizer and processor settings."""
    if not path:
        raise MissingAssetError(f"model.tokenizer_path is not set: give the local copy of {TOKENIZER_REPO} "
                                f"({_fetch_hint(TOKENIZER_REPO, Path('<dir>'))})")
    directory = Path(path).expanduser()
    for name in TOKENIZER_FILES:
        if not (directory / name).is_file():
            raise MissingAssetError(f"{directory / name} not found: model.tokenizer_path must hold the Eagle "
                                    f"tokenizer and processor assets; {_fetch_hint(TOKENIZER_REPO, directory)}")
    if not ((directory / "tokenizer.json").is_file()
            or ((directory / "vocab.json").is_file() and (directory / "merges.txt").is_file())):
        raise MissingAssetError(f"{directory / 'tokenizer.json'} (or vocab.json + merges.txt) not found: the "
                                f"Eagle tokenizer is missing; {_fetch_hint(TOKENIZER_REPO, directory)}")
    return directory


def attn_implementation() -> str:
    """flash-attn where it is installed and a GPU is there, else PyTorch's SDPA (same function)."""
    if torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


def map_structure(fn: Callable[[Any], Any], x: Any) -> Any:
    """``fn`` on every leaf of nested dicts / lists / tuples (``BatchFeature`` stays a ``BatchFeature``):
    what ``GR00TN15.prepare_input`` needs of dm-tree's ``tree.map_structure``."""
    from transformers.feature_extraction_utils import BatchFeature

    if isinstance(x, BatchFeature):
        return BatchFeature(data={k: map_structure(fn, v) for k, v in x.items()})
    if isinstance(x, dict):
        return type(x)((k, map_structure(fn, v)) for k, v in x.items())
    if isinstance(x, list | tuple):
        return type(x)(map_structure(fn, v) for v in x)
    return fn(x)


def groot_module():
    """``lerobot.policies.groot.groot_n1`` with the dm-tree fallback installed where ``tree`` is missing."""
    from lerobot.policies.groot import groot_n1

    if groot_n1.tree is None:
        groot_n1.tree = SimpleNamespace(map_structure=map_structure)
    return groot_n1


def eagle_config(tokenizer_dir: str | Path, attn: str | None = None):
    """lerobot's vendored ``Eagle25VLConfig`` from ``<tokenizer_dir>/config.json``, with the attention
    implementation of SigLIP and the LLM set to ``attn`` (default :func:`attn_implementation`)."""
    from lerobot.policies.groot.eagle2_hg_model.configuration_eagle2_5_vl import Eagle25VLConfig

    directory = check_tokenizer_dir(tokenizer_dir)
    config = Eagle25VLConfig.from_pretrained(str(directory), local_files_only=True)
    attn = attn or attn_implementation()
    for c in (config, config.vision_config, config.text_config):
        c._attn_implementation = attn
    return config


def build_eagle_model(config):
    """lerobot's vendored Eagle 2.5 VL model, given a prebuilt SigLIP (so no flash-attn is forced on it)."""
    from lerobot.policies.groot.eagle2_hg_model.modeling_eagle2_5_vl import Eagle25VLForConditionalGeneration
    from transformers import SiglipVisionModel

    return Eagle25VLForConditionalGeneration(config, vision_model=SiglipVisionModel(config.vision_config))


@contextmanager
def lerobot_offline(tokenizer_dir: Any, attn: str | None = None) -> Iterator[Any]:
    """While active, lerobot's ``EagleBackbone`` / ``GR00TN15`` read everything from local directories
    (``tokenizer_dir`` for the Eagle config, or an ``Eagle25VLConfig`` itself; ``GR00TN15.from_pretrained`` from the path it is given) and
    never reach the hub. Yields the ``groot_n1`` module."""
    groot_n1 = groot_module()
    config = tokenizer_dir if hasattr(tokenizer_dir, "vision_config") else eagle_config(tokenizer_dir, attn)

    def no_cache(*args: Any, **kwargs: Any) -> None:  # would copy files and download tokenizer assets
        return None

    def local_path(repo_id: str, *args: Any, **kwargs: Any) -> str:
        return str(check_checkpoint_dir(repo_id))

    patches = {
        "ensure_eagle_cache_ready": no_cache,
        "AutoConfig": SimpleNamespace(from_pretrained=lambda *a, **k: config),
        "AutoModel": SimpleNamespace(from_config=lambda cfg, **k: build_eagle_model(cfg)),
        "snapshot_download": local_path,
    }
    saved = {name: getattr(groot_n1, name) for name in patches}
    try:
        for name, value in patches.items():
            setattr(groot_n1, name, value)
        yield groot_n1
    finally:
        for name, value in saved.items():
            setattr(groot_n1, name, value)
