"""The instruction through the Eagle processor, as lerobot's GR00T preprocessor builds it.

lerobot (``processor_groot.py``) gives the Eagle processor one user turn: the image(s), then the text
``str([instruction])``, through the chat template and the processor's image placeholders (``<img>`` +
``tokens_per_tile`` image tokens + ``</img>`` per image). It builds single-frame video (T = 1); here a
window of T frames is T images in that turn, in time order. The prompt's tokens do not depend on the
pixels, so they are made once per (instruction, T) with blank images, through lerobot's vendored
``Eagle25VLProcessor`` built from the local assets (no ``trust_remote_code``, no hub); the pixels go to
the tower directly (the processor's resize / rescale / normalise of a 224 frame is SigLIP's (x - 0.5) / 0.5).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from moss_vla.groot_n15.shim import check_tokenizer_dir


def build_processor(tokenizer_dir: str | Path):
    """lerobot's vendored Eagle processor (image processor + tokenizer + chat template) from local files."""
    from lerobot.policies.groot.eagle2_hg_model.image_processing_eagle2_5_vl_fast import (
        Eagle25VLImageProcessorFast,
    )
    from lerobot.policies.groot.eagle2_hg_model.processing_eagle2_5_vl import Eagle25VLProcessor
    from transformers import AutoTokenizer

    directory = check_tokenizer_dir(tokenizer_dir)
    tokenizer = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    tokenizer.padding_side = "left"
    image_cfg = json.loads((directory / "preprocessor_config.json").read_text())
    image_cfg = {k: v for k, v in image_cfg.items() if k not in ("image_processor_type", "processor_class", "auto_map")}
    proc_cfg = json.loads((directory / "processor_config.json").read_text())
    proc_cfg = {k: v for k, v in proc_cfg.items() if k not in ("processor_class", "auto_map")}
    template_file = directory / "chat_template.json"
    template = (json.loads(template_file.read_text())["chat_template"] if template_file.is_file()
                else tokenizer.chat_template)
    if template is None:
        raise FileNotFoundError(f"{template_file} not found and the tokenizer has no chat template")
    return Eagle25VLProcessor(image_processor=Eagle25VLImageProcessorFast(**image_cfg), tokenizer=tokenizer,
                              chat_template=template, **proc_cfg)


class EaglePrompt:
    """Token ids of the Eagle prompt for T frames and an instruction, cached per (instruction, T)."""

    def __init__(self, tokenizer_dir: str | Path) -> None:
        self.processor = build_processor(tokenizer_dir)
        size = self.processor.image_processor.size
        self.tile = int(size.get("height", 448))
        self._ids: dict[tuple[str, int], Tensor] = {}

    def conversation(self, instruction: str, images: list) -> list[dict]:
        content = [{"type": "image", "image": im} for im in images] + [{"type": "text", "text": str([instruction])}]
        return [{"role": "user", "content": content}]

    def encode(self, instruction: str, images: list) -> dict[str, Tensor]:
        """The processor's output (``input_ids``, ``attention_mask``, ``pixel_values``, ``image_sizes``) for
        PIL images and an instruction: lerobot's own path (tests and the GPU check compare against it)."""
        p = self.processor
        text = p.apply_chat_template(self.conversation(instruction, images), tokenize=False, add_generation_prompt=True)
        return p(text=[text], images=list(images), return_tensors="pt", padding=True,
                 images_kwargs={"min_dynamic_tiles": 1, "max_dynamic_tiles": 1, "use_thumbnail": False})

    def ids(self, instruction: str, n_frames: int) -> Tensor:
        key = (instruction, n_frames)
        if key not in self._ids:
            from PIL import Image

            blank = Image.fromarray(np.zeros((self.tile, self.tile, 3), np.uint8))
            self._ids[key] = self.encode(instruction, [blank] * n_frames)["input_ids"][0]
        return self._ids[key]

    def __call__(self, instructions: list[str], n_frames: int) -> tuple[Tensor, Tensor]:
        """Left-padded (B, L) input ids and attention mask (as the processor pads a batch)."""
        rows = [self.ids(s, n_frames) for s in instructions]
        L = max(len(r) for r in rows)
        pad = self.processor.tokenizer.pad_token_id or 0
        ids = torch.full((len(rows), L), pad, dtype=torch.long)
        mask = torch.zeros(len(rows), L, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, L - len(r):] = r
            mask[i, L - len(r):] = 1
        return ids, mask
