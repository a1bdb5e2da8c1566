"""A tiny GR00T N1.5 for the bridge tests: lerobot's own classes at small sizes, saved in the layout of
the real assets (a local copy of nvidia/GR00T-N1.5-3B and of lerobot/eagle2hg-processor-groot-n1p5),
with a small byte-level BPE tokenizer built here. Nothing is downloaded."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from moss_vla.groot_n15 import shim

IMAGE = 28  # SigLIP input (the tile size): 28 px, patch 7 -> 4 x 4 tokens, pixel shuffle -> 2 x 2 = 4 per frame
TOKENS_PER_FRAME = 4
INSTRUCTION = "Point left when the circle on the display moves left, and point right when it moves right."
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<img>", "</img>", "<IMG_CONTEXT>"]
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for c in message['content'] %}"
    "{% if c['type'] == 'image' %}{% set image_count.value = image_count.value + 1 %}<image-{{ image_count.value }}>"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def write_tokenizer_assets(directory: Path) -> Path:
    """Tokenizer, chat template, processor settings and a tiny Eagle config, as in the real assets repo."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    directory.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIAL,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([INSTRUCTION, "user assistant system Frame image video"] * 4, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   model_input_names=["input_ids", "attention_mask"])  # as Qwen2Tokenizer
    fast.save_pretrained(str(directory))
    image_token = fast.convert_tokens_to_ids("<IMG_CONTEXT>")
    (directory / "chat_template.json").write_text(json.dumps({"chat_template": CHAT_TEMPLATE}))
    (directory / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "Eagle25VLImageProcessorFast", "size": {"height": IMAGE, "width": IMAGE},
        "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "max_dynamic_tiles": 1,
        "min_dynamic_tiles": 1, "use_thumbnail": False, "do_pad": False}))
    (directory / "processor_config.json").write_text(json.dumps({
        "processor_class": "Eagle25VLProcessor", "tokens_per_tile": TOKENS_PER_FRAME,
        "image_token": "<IMG_CONTEXT>", "video_token": "<IMG_CONTEXT>"}))
    eagle = {
        "model_type": "eagle_2_5_vl", "select_layer": -1, "downsample_ratio": 0.5, "use_pixel_shuffle": True,
        "mlp_connector_layers": 2, "force_image_size": IMAGE, "image_token_index": image_token,
        "vision_config": {"model_type": "siglip_vision_model", "hidden_size": 32, "intermediate_size": 64,
                          "num_hidden_layers": 4, "num_attention_heads": 2, "image_size": IMAGE, "patch_size": 7},
        "text_config": {"architectures": ["Qwen3ForCausalLM"], "hidden_size": 32, "intermediate_size": 64,
                        "num_hidden_layers": 4, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 16,
                        "vocab_size": len(fast), "max_position_embeddings": 512, "tie_word_embeddings": True},
    }
    (directory / "config.json").write_text(json.dumps(eagle, indent=1))
    return directory


def groot_config_dict(select_layer: int = 3) -> dict:
    """GR00TN15Config fields in the layout of the real config.json, at tiny sizes."""
    return {
        "model_type": "gr00t_n1_5", "action_horizon": 16, "action_dim": 32, "compute_dtype": "float32",
        "backbone_cfg": {"tune_llm": False, "tune_visual": True, "select_layer": select_layer,
                         "reproject_vision": False, "use_flash_attention": False, "load_bf16": False,
                         "project_to_dim": None},
        "action_head_cfg": {
            "action_dim": 32, "action_horizon": 16, "add_pos_embed": True, "backbone_embedding_dim": 32,
            "hidden_size": 32, "input_embedding_dim": 32, "max_action_dim": 32, "max_state_dim": 64,
            "max_num_embodiments": 32, "num_inference_timesteps": 4, "num_target_vision_tokens": 4,
            "num_timestep_buckets": 1000, "noise_beta_alpha": 1.5, "noise_beta_beta": 1.0, "noise_s": 0.999,
            "tune_diffusion_model": True, "tune_projector": True, "use_vlln": True, "max_seq_len": 64,
            "diffusion_model_cfg": {"attention_head_dim": 16, "cross_attention_dim": 32, "dropout": 0.2,
                                    "final_dropout": True, "interleave_self_attention": True,
                                    "norm_type": "ada_norm", "num_attention_heads": 2, "num_layers": 2,
                                    "output_dim": 32, "positional_embeddings": None},
            "vl_self_attention_cfg": {"attention_head_dim": 16, "dropout": 0.2, "final_dropout": True,
                                      "num_attention_heads": 2, "num_layers": 1, "positional_embeddings": None},
        },
    }


def write_tiny_groot(root: Path, seed: int = 0) -> tuple[Path, Path]:
    """(pretrained_path, tokenizer_path): a random tiny GR00T N1.5 saved with transformers' save_pretrained
    (sharded, as the real checkpoint is), and its tokenizer assets."""
    tokenizer = write_tokenizer_assets(root / "eagle_assets")
    checkpoint = root / "GR00T-N1.5-tiny"
    with shim.lerobot_offline(tokenizer) as groot_n1:
        torch.manual_seed(seed)
        model = groot_n1.GR00TN15(groot_n1.GR00TN15Config(**groot_config_dict()), local_model_path=str(checkpoint))
        model.save_pretrained(str(checkpoint), max_shard_size="200KB")
    return checkpoint, tokenizer
