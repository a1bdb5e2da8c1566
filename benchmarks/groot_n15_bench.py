"""GR00T N1.5-3B with MOSS and ContextVLA at the real size, random weights (nothing downloaded).

    python benchmarks/groot_n15_bench.py                      # CPU: parameters and FLOPs on the meta device
    python benchmarks/groot_n15_bench.py --device cuda        # + training steps (batch 8, 64), select_action
    python benchmarks/groot_n15_bench.py --eagle-config <tokenizer_path>/config.json --groot-config <ckpt>/config.json

The architecture is lerobot 0.4.4's GR00TN15 (moss_vla/groot_n15/) built from configs: the real
checkpoint's config.json (as published; --groot-config reads a local copy instead) and an Eagle 2.5 VL
config with the sizes in docs/design.md section 5.8 (SigLIP 27 x 1152, patch 14 at 224, pixel shuffle 0.5,
Qwen3-1.7B cut to 12 layers; --eagle-config reads the real assets' config.json instead, which this
machine has never seen). On the CPU the model is built on the meta device: exact parameter counts and
FLOPs (torch's FlopCounterMode on shapes, no memory, no compute) of one 8-frame window with and without
MOSS; the LLM's FLOPs are counted per decoder layer at the sequence lengths before and after the
ContextVLA compression. With --device cuda the model is built on the GPU (fp32 weights, bf16 autocast)
and the training step and select_action are timed as moss-check does. Results:
benchmarks/results/groot_n15.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_info

from moss_vla.device import resolve_device
from moss_vla.groot_n15.loading import build_groot
from moss_vla.groot_n15.model import MossGrootN15
from moss_vla.policy.configuration import TemporalConfig

RESULTS = Path(__file__).resolve().parent / "results" / "groot_n15.json"
IMAGE_TOKEN = 151669
# nvidia/GR00T-N1.5-3B config.json (architecture keys, as published)
REAL_GROOT = {
    "action_horizon": 16, "action_dim": 32, "compute_dtype": "float32",
    "backbone_cfg": {"tune_llm": False, "tune_visual": False, "select_layer": 12, "reproject_vision": False,
                     "use_flash_attention": True, "load_bf16": False, "project_to_dim": None},
    "action_head_cfg": {
        "action_dim": 32, "action_horizon": 16, "add_pos_embed": True, "backbone_embedding_dim": 2048,
        "hidden_size": 1024, "input_embedding_dim": 1536, "max_action_dim": 32, "max_state_dim": 64,
        "model_dtype": "float32", "noise_beta_alpha": 1.5, "noise_beta_beta": 1.0, "noise_s": 0.999,
        "num_inference_timesteps": 4, "num_target_vision_tokens": 32, "num_timestep_buckets": 1000,
        "tune_diffusion_model": True, "tune_projector": True, "use_vlln": True,
        "diffusion_model_cfg": {"attention_head_dim": 48, "cross_attention_dim": 2048, "dropout": 0.2,
                                "final_dropout": True, "interleave_self_attention": True, "norm_type": "ada_norm",
                                "num_attention_heads": 32, "num_layers": 16, "output_dim": 1024,
                                "positional_embeddings": None},
        "vl_self_attention_cfg": {"attention_head_dim": 64, "dropout": 0.2, "final_dropout": True,
                                  "num_attention_heads": 32, "num_layers": 4, "positional_embeddings": None},
    },
}
# Eagle 2.5 VL as docs/design.md section 5.8 describes it (SigLIP-so400m geometry, Qwen3-1.7B)
REAL_EAGLE = {
    "select_layer": -1, "downsample_ratio": 0.5, "use_pixel_shuffle": True, "mlp_connector_layers": 2,
    "force_image_size": 224, "image_token_index": IMAGE_TOKEN,
    "vision_config": {"model_type": "siglip_vision_model", "hidden_size": 1152, "intermediate_size": 4304,
                      "num_hidden_layers": 27, "num_attention_heads": 16, "image_size": 224, "patch_size": 14},
    "text_config": {"architectures": ["Qwen3ForCausalLM"], "hidden_size": 2048, "intermediate_size": 6144,
                    "num_hidden_layers": 28, "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 128,
                    "vocab_size": 151936, "max_position_embeddings": 40960, "rope_theta": 1000000,
                    "rms_norm_eps": 1e-6, "tie_word_embeddings": True},
}
MOSS = TemporalConfig(module="moss", window=(5, 9, 9), hidden=64, orders=(1, 2), conv_blocks=3)
TEXT_TOKENS = 60  # chat template + instruction around the images (about what the Eagle prompt has)
FRAME_TEXT = 6  # "<image k><img>" ... "</img>" around each frame's image tokens


def eagle_config(path: str | None):
    from lerobot.policies.groot.eagle2_hg_model.configuration_eagle2_5_vl import Eagle25VLConfig

    cfg = Eagle25VLConfig(**(json.loads(Path(path).read_text()) if path else REAL_EAGLE))
    for c in (cfg, cfg.vision_config, cfg.text_config):
        c._attn_implementation = "sdpa"
    return cfg


def build(groot_cfg: dict, eagle_cfg, temporal: TemporalConfig, device: torch.device | str) -> MossGrootN15:
    validate = torch.distributions.Distribution._validate_args
    torch.distributions.Distribution.set_default_validate_args(False)  # the head's Beta checks values: not on meta
    try:
        with torch.device(device):
            groot = build_groot(groot_cfg, eagle_cfg)
            return MossGrootN15(groot, temporal, 6, 8, True, 2)
    finally:
        torch.distributions.Distribution.set_default_validate_args(validate)


def count_flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def window_flops(model: MossGrootN15, n_frames: int = 8) -> dict[str, int]:
    """FLOPs of one uncached replan on the meta device: tower on n_frames frames (MOSS apart), projector,
    LLM layers (before / after the compression), the 4-step action head."""
    tower = model.tower
    S = tower.cfg.image_size
    pixels = torch.empty(1, n_frames, 3, S, S, device="meta")
    with torch.no_grad():
        pre = count_flops(lambda: tower.pre(pixels.flatten(0, 1)))
        grid = torch.empty(1, n_frames, tower.grid, tower.grid, tower.cfg.hidden_size, device="meta")
        moss = count_flops(lambda: tower.temporal(grid)) if tower.temporal is not None else 0
        post = count_flops(lambda: tower.post(torch.empty(n_frames, tower.grid**2, tower.cfg.hidden_size,
                                                          device="meta")))
        tokens = torch.empty(1, n_frames, tower.grid**2, tower.cfg.hidden_size, device="meta")
        n = model.project(tokens).shape[2]
        proj = count_flops(lambda: model.project(tokens))
        llm = model.llm
        D = llm.config.hidden_size
        L = TEXT_TOKENS + n_frames * (n + FRAME_TEXT)
        L_after = L - (n_frames - 1) * n + 1 if model.compress else L

        rotary = type(llm.rotary_emb)(config=llm.config, device="cpu")  # RoPE tables (autocast has no meta)

        def layer_flops(length: int) -> int:
            x = torch.empty(1, length, D, device="meta")
            pos = torch.arange(length, device="meta")[None]
            rope = tuple(r.to("meta") for r in rotary(torch.empty(1, length, D), torch.arange(length)[None]))
            return count_flops(lambda: llm.layers[0](x, attention_mask=None, position_ids=pos,
                                                     position_embeddings=rope))

        k, K = model.compress_after, len(llm.layers)
        lm = k * layer_flops(L) + (K - k) * layer_flops(L_after)
        feats = torch.empty(1, L_after, D, device="meta")
        head = model.groot.action_head
        action_input = {"state": torch.empty(1, 1, 64, device="meta"),
                        "embodiment_id": torch.zeros(1, dtype=torch.long, device="meta")}
        act = count_flops(lambda: model.sample(feats, torch.ones(1, L_after, dtype=torch.long, device="meta"),
                                               action_input))
        del head
    return {"siglip": pre + post, "moss": moss, "projector": proj, "llm": lm, "action_head_4_steps": act,
            "sequence_before_compression": L, "sequence_after_compression": L_after, "image_tokens_per_frame": n}


def meta_report(groot_cfg: dict, eagle_cfg) -> dict:
    t0 = time.perf_counter()
    model = build(groot_cfg, eagle_cfg, MOSS, "meta")
    total = sum(p.numel() for p in model.parameters())
    moss_params = sum(p.numel() for p in model.tower.temporal.parameters())
    parts = {"siglip": sum(p.numel() for n, p in model.tower.named_parameters() if not n.startswith("temporal.")),
             "llm_kept_layers_and_embeddings": sum(p.numel() for p in model.eagle.language_model.parameters()),
             "projector_mlp1": sum(p.numel() for p in model.eagle.mlp1.parameters()),
             "action_head": sum(p.numel() for p in model.groot.action_head.parameters())}
    flops = window_flops(model)
    without = sum(v for k, v in flops.items() if k in ("siglip", "projector", "llm", "action_head_4_steps"))
    return {
        "parameters": {"total_with_moss": total, "moss": moss_params, "without_moss": total - moss_params,
                       "moss_ratio": moss_params / (total - moss_params),
                       "moss_mb_fp32": moss_params * 4 / 1e6, **parts},
        "flops_one_window": {**flops, "total_without_moss": without, "moss_ratio": flops["moss"] / without},
        "seconds": time.perf_counter() - t0,
    }


def gpu_report(groot_cfg: dict, eagle_cfg, device: torch.device, batch_sizes: list[int], steps: int) -> dict:
    from moss_vla.groot_n15.check import time_select_action, time_training, unit_stats
    from moss_vla.groot_n15.configuration import GrootN15Config
    from moss_vla.groot_n15.policy import GrootN15Policy

    class SyntheticPrompt:  # the Eagle prompt's layout without the tokenizer: text, then per frame its tokens
        def __call__(self, instructions, n_frames):
            n = model.project(torch.empty(1, 1, model.tower.grid**2, model.tower.cfg.hidden_size,
                                          device="meta")).shape[2]
            row = [1] * (TEXT_TOKENS // 2)
            for _ in range(n_frames):
                row += [2] * (FRAME_TEXT - 1) + [IMAGE_TOKEN] * n + [3]
            row += [4] * (TEXT_TOKENS // 2)
            ids = torch.tensor([row] * len(instructions))
            return ids, torch.ones_like(ids)

    with torch.device(device):
        groot = build_groot(groot_cfg, eagle_cfg)
    model = MossGrootN15.__new__(MossGrootN15)  # only for SyntheticPrompt's sizes below
    cfg = GrootN15Config.from_dict({"variant": "moss", "n_frames": 8, "backbone": {"context_compression": True},
                                    "temporal": {"module": "moss", "window": [5, 9, 9], "hidden": 64,
                                                 "conv_blocks": 3}})
    policy = GrootN15Policy(cfg, unit_stats(), groot=groot, prompt=SyntheticPrompt()).to(device)
    model = policy.model
    out = {f"training_batch_{b}": time_training(policy, b, steps, device) for b in batch_sizes}
    out["select_action"] = time_select_action(policy, 20, device)
    if device.type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(device)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", help="auto | cpu | cuda | cuda:N (cpu: meta-device counts only)")
    ap.add_argument("--eagle-config", default=None, help="the real Eagle config.json (tokenizer_path/config.json)")
    ap.add_argument("--groot-config", default=None, help="the real checkpoint's config.json")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 64])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args()
    device = resolve_device(args.device)
    groot_cfg = REAL_GROOT if args.groot_config is None else {
        k: v for k, v in json.loads(Path(args.groot_config).read_text()).items()
        if k in ("action_horizon", "action_dim", "backbone_cfg", "action_head_cfg")}
    eagle_cfg = eagle_config(args.eagle_config)
    report = {"what": "GR00T N1.5-3B (lerobot GR00TN15) + MOSS after SigLIP layer 6 (window (5, 9, 9), D 64, "
                      "orders 1, 2) + ContextVLA (8 frames, compression after LLM block 2), random weights",
              "configs": {"groot": "as published" if args.groot_config is None else args.groot_config,
                          "eagle": "docs/design.md section 5.8 sizes" if args.eagle_config is None
                          else args.eagle_config},
              "meta": meta_report(groot_cfg, eagle_cfg)}
    if device.type == "cuda":
        report["gpu"] = gpu_report(groot_cfg, eagle_cfg, device, args.batch_sizes, args.steps)
    else:
        report["gpu"] = "not measured: run with --device cuda on a GPU machine"
    report["machine"] = machine_info(device=str(device))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    m = report["meta"]
    print(f"parameters: {m['parameters']['without_moss'] / 1e9:.3f} B without MOSS, MOSS "
          f"{m['parameters']['moss'] / 1e6:.2f} M (+{100 * m['parameters']['moss_ratio']:.2f}%, "
          f"{m['parameters']['moss_mb_fp32']:.1f} MB fp32)")
    f = m["flops_one_window"]
    print(f"FLOPs of one 8-frame window: {f['total_without_moss'] / 1e12:.3f} TFLOP without MOSS, MOSS "
          f"{f['moss'] / 1e9:.1f} GFLOP (+{100 * f['moss_ratio']:.2f}%; goal <= +3%, paper +1.8%)")
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
