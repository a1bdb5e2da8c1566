"""Building lerobot's GR00TN15 offline: from the local checkpoint (real weights) or from configs (random
weights, e.g. the real-size benchmark). Everything goes through :func:`~moss_vla.groot_n15.shim.lerobot_offline`."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any

from torch import nn

from moss_vla.groot_n15 import shim


@contextlib.contextmanager
def _quiet():
    """lerobot and the DiT print their settings and parameter counts on construction."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def set_trainable(groot: nn.Module, tune_llm: bool, tune_visual: bool, tune_projector: bool,
                  tune_diffusion_model: bool) -> None:
    """lerobot's own fine-tuning knobs (``set_trainable_parameters`` of the backbone and the head)."""
    with _quiet():
        groot.backbone.set_trainable_parameters(tune_llm=tune_llm, tune_visual=tune_visual)
        groot.action_head.set_trainable_parameters(tune_projector=tune_projector,
                                                   tune_diffusion_model=tune_diffusion_model)


def load_groot(pretrained_path: str | Path, tokenizer_path: str | Path, attn: str | None = None) -> nn.Module:
    """lerobot's ``GR00TN15`` with the weights of a local copy of nvidia/GR00T-N1.5-3B.

    transformers' loader is called as lerobot's ``GR00TN15.from_pretrained`` calls it (without its hub
    look-up), with ``output_loading_info``, so a checkpoint that does not fit the Eagle config in
    ``tokenizer_path`` is an error naming the tensors, not a silent random initialisation."""
    from transformers import PreTrainedModel

    directory = shim.check_checkpoint_dir(pretrained_path)
    with shim.lerobot_offline(tokenizer_path, attn) as groot_n1, _quiet():
        try:
            model, info = PreTrainedModel.from_pretrained.__func__(
                groot_n1.GR00TN15, str(directory), local_model_path=str(directory), local_files_only=True,
                output_loading_info=True)
        except RuntimeError as e:
            if "size mismatch" not in str(e):
                raise
            raise ValueError(f"checkpoint {directory} does not fit the Eagle config in {tokenizer_path} "
                             f"(config.json there): {str(e)[:800]}") from e
    bad = {k: v for k in ("missing_keys", "unexpected_keys", "mismatched_keys") if (v := list(info.get(k) or []))}
    if bad:
        detail = "; ".join(f"{k}: {v[:5]}{'...' if len(v) > 5 else ''}" for k, v in bad.items())
        raise ValueError(f"checkpoint {directory} does not fit the GR00T N1.5 model that its config.json and the "
                         f"Eagle config in {tokenizer_path} describe ({detail})")
    return model


def build_groot(groot_config: dict[str, Any], tokenizer_path: str | Path, attn: str | None = None) -> nn.Module:
    """lerobot's ``GR00TN15`` with random weights, from a GR00TN15Config dict (the checkpoint's config.json
    layout) and the Eagle config in ``tokenizer_path``."""
    with shim.lerobot_offline(tokenizer_path, attn) as groot_n1, _quiet():
        return groot_n1.GR00TN15(groot_n1.GR00TN15Config(**groot_config), local_model_path="")


def checkpoint_configs(pretrained_path: str | Path, tokenizer_path: str | Path) -> dict[str, Any]:
    """The two configs that define the architecture (recorded in our checkpoints to detect a mismatch)."""
    groot = json.loads((Path(pretrained_path) / "config.json").read_text())
    eagle = json.loads((Path(tokenizer_path) / "config.json").read_text())
    keep = ("action_head_cfg", "backbone_cfg", "action_horizon", "action_dim")
    return {"groot": {k: groot.get(k) for k in keep},
            "eagle": {k: eagle.get(k) for k in ("vision_config", "text_config", "downsample_ratio",
                                                 "use_pixel_shuffle", "mlp_connector_layers", "select_layer")}}
