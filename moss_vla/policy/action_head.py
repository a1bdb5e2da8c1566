"""GR00T N1.5 flow-matching action head: lerobot 0.4.4's ``FlowmatchingActionHead`` with our sizes.

What it computes (docs/design.md section 4.5): the VL features pass a LayerNorm and self-attention blocks; the
state (B, 1, S) and the noised action chunk (B, H, A) are embedded (per-embodiment MLPs; action encoder
= linear(action) ++ sinusoidal(timestep) -> linear + swish -> linear); the DiT runs on
``[state (1), future tokens (32, learned), action tokens (H)]`` with AdaLN timestep conditioning, even
blocks cross-attending to the VL features and odd blocks self-attending; the decoder predicts the
velocity. Training: u ~ Beta(1.5, 1), t = (0.999 - u) / 0.999, x_t = (1 - t) noise + t action, target
action - noise, timestep floor(1000 t), masked MSE. Inference: 4 Euler steps from t = 0.

Notes on the lerobot implementation that matter here:
- its DiT ignores ``backbone_attention_mask`` (the argument is commented out upstream), so padded text
  tokens are attended to; the backbone trims text padding to the longest instruction of each batch;
- the noise comes from the global torch RNG (``torch.randn`` in ``forward`` and ``get_action``, and
  ``Beta.sample``): :meth:`ActionHead.sample` takes a ``seed`` and then draws the noise from a private
  generator seeded with it (on CPU the same numbers as the global RNG seeded alike), so that two calls
  with the same seed use the same noise without touching the caller's RNG state;
- it prints parameter counts on construction; we silence that.

Fast sampling (:meth:`ActionHead.sample`, eval mode). lerobot's ``get_action`` redoes at each of the 4
Euler steps work that does not depend on the step's actions, and at the small preset (width 64, ~50
tokens) a replan is bound by the number of operators run (each costs ~10-40 us of dispatch and small-
kernel overhead on our CPUs), not by arithmetic. Our sampler reuses lerobot's modules and weights
(VL LayerNorm + self-attention, state encoder, timestep encoder, the blocks' LayerNorms, projections and
feed-forward layers, output layers) from its own loop, and computes once per chunk: the timestep
embeddings and every block's AdaLN scale/shift for all steps, the cross-attention keys/values of the VL
features, the [state, future tokens] prefix, the per-embodiment weight selection, the timestep half of
the action encoder's W2 (with the position embeddings folded into W3's bias); per step it runs the
self-attention projections as one fused matmul, skips the dropouts (identities in eval mode) and
diffusers' per-call ``inspect.signature``, and computes the last block's queries, attention output and
feed-forward, the output norm and the decoder for the action tokens only (the only rows read; keys and
values still come from all tokens). Same function: equal to
``get_action`` on the same weights and noise up to float rounding (tests/test_action_head.py,
max abs diff < 1e-5). Its operator count, FLOPs and time per chunk against ``get_action``:
benchmarks/results/policy.json (docs/results.md section 3).
"""

from __future__ import annotations

import contextlib
import io
import warnings
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from lerobot.policies.groot.action_head.flow_matching_action_head import (
    CategorySpecificLinear,
    FlowmatchingActionHead,
    FlowmatchingActionHeadConfig,
)
from torch import Tensor, nn
from transformers.feature_extraction_utils import BatchFeature

KV = tuple[Tensor, Tensor]

from moss_vla.policy.configuration import ActionHeadConfig
from moss_vla.rtc import Guide, guided_velocity


def lerobot_head_config(cfg: ActionHeadConfig, state_dim: int, action_dim: int,
                        backbone_dim: int) -> FlowmatchingActionHeadConfig:
    """Our sizes in lerobot's config (max_num_embodiments = 1, no padding of state/action dims)."""
    vl_heads = cfg.vl_self_attention_heads
    return FlowmatchingActionHeadConfig(
        action_dim=action_dim,
        action_horizon=cfg.horizon,
        max_state_dim=state_dim,
        max_action_dim=action_dim,
        hidden_size=cfg.hidden_size,
        input_embedding_dim=cfg.input_embedding_dim,
        backbone_embedding_dim=backbone_dim,
        max_num_embodiments=1,
        num_inference_timesteps=cfg.num_inference_steps,
        num_target_vision_tokens=cfg.num_future_tokens,
        max_seq_len=1024,
        add_pos_embed=True,
        use_vlln=True,
        noise_beta_alpha=cfg.noise_beta_alpha,
        noise_beta_beta=cfg.noise_beta_beta,
        noise_s=cfg.noise_s,
        num_timestep_buckets=cfg.num_timestep_buckets,
        tune_projector=True,
        tune_diffusion_model=True,
        diffusion_model_cfg={
            "num_attention_heads": cfg.num_heads,
            "attention_head_dim": cfg.head_dim,
            "output_dim": cfg.hidden_size,
            "num_layers": cfg.num_layers,
            "dropout": cfg.dropout,
            "final_dropout": True,
            "interleave_self_attention": True,
            "norm_type": "ada_norm",
            "positional_embeddings": None,  # as in GR00T N1.5's released config
            "cross_attention_dim": backbone_dim,
        },
        vl_self_attention_cfg={
            "num_attention_heads": vl_heads,
            "attention_head_dim": backbone_dim // vl_heads,
            "num_layers": cfg.vl_self_attention_layers,
            "dropout": cfg.dropout,
            "final_dropout": True,
            "positional_embeddings": None,
        },
    )


def check_fast_sampler_applies(head: FlowmatchingActionHead) -> None:
    """Raise if lerobot's DiT is configured in a way :class:`ActionHead`'s sampler does not reproduce
    (it re-implements only the control flow of ``DiT.forward``/``BasicTransformerBlock.forward``,
    diffusers' ``AttnProcessor2_0`` and ``FeedForward`` for our configuration: AdaLN, no positional
    embedding inside the blocks, plain attention without norms, residual or rescaling)."""
    problems = []
    for i, blk in enumerate(head.model.transformer_blocks):
        attn: Attention = blk.attn1
        checks = {"norm_type": (blk.norm_type, "ada_norm"), "pos_embed": (blk.pos_embed, None),
                  "processor": (type(attn.processor), AttnProcessor2_0), "spatial_norm": (attn.spatial_norm, None),
                  "group_norm": (attn.group_norm, None), "norm_q": (attn.norm_q, None), "norm_k": (attn.norm_k, None),
                  "norm_cross": (attn.norm_cross, None), "residual_connection": (attn.residual_connection, False),
                  "rescale_output_factor": (attn.rescale_output_factor, 1.0)}
        problems += [f"block {i} {name}: expected {want!r}, got {got!r}" for name, (got, want) in checks.items()
                     if got != want]
        # FeedForward.net = [projection + activation, dropout, linear, (dropout)]: identity dropouts in eval
        layout = [type(m).__name__ for m in blk.ff.net]
        if layout[1:3] != ["Dropout", "Linear"] or layout[3:] not in ([], ["Dropout"]):
            problems.append(f"block {i} feed-forward: expected [activation, Dropout, Linear(, Dropout)], got {layout}")
    if problems:
        raise ValueError("lerobot's action head differs from what ActionHead.sample reproduces: " + "; ".join(problems))


class BlockParts(NamedTuple):
    """One DiT block's modules, looked up once per chunk, and its per-chunk constants."""

    norm1: nn.Module  # AdaLayerNorm's affine-free LayerNorm
    heads: int
    to_q: nn.Linear
    to_out: nn.Linear
    norm3: nn.Module
    ff_in: nn.Module  # diffusers GELU: linear + tanh-GELU
    ff_out: nn.Linear
    ada: KV  # AdaLN (1 + scale, shift), each (steps, B, 1, D)
    kv: KV | None  # cross-attention block: VL keys/values, (B, heads, N, d) each
    qkv: KV | None  # self-attention block: to_q/to_k/to_v fused into one (weight, bias)


@dataclass
class ChunkConstants:
    """What the Euler steps of one action chunk share (computed once per chunk by ``ActionHead._prepare``).

    Per-embodiment linear maps are stored as (weight, bias) already selected for the batch's embodiment
    ids, (B, in, out) and (B, 1, out), as ``CategorySpecificLinear`` selects them at every call."""

    prefix: Tensor  # (B, 1 + n_future, D): state features ++ future tokens, the DiT input before the actions
    encoder_w1: KV  # action encoder W1 (actions -> w)
    encoder_w2_action: Tensor  # (B, w, w): the rows of W2 that multiply the action half of [a_emb, tau_emb]
    encoder_w2_time: Tensor  # (steps, B, H, w): tau_emb @ (the timestep rows of W2) + b2, per step
    encoder_w3: KV  # W3, with the action tokens' position embeddings added to its bias: (B, H, D)
    blocks: list[BlockParts]
    out_mod: KV  # output modulation (1 + scale, shift), each (steps, B, 1, D)
    decoder: tuple[KV, KV]  # action decoder layer1, layer2


def select_embodiment(linear: CategorySpecificLinear, ids: Tensor) -> KV:
    """``CategorySpecificLinear``'s per-call selection, done once: (B, in, out) weight, (B, 1, out) bias."""
    return linear.W[ids], linear.b[ids].unsqueeze(1)


class TracedSampler(nn.Module):
    """:meth:`ActionHead.integrate` as a module, for ``torch.jit.trace``.

    At the small preset a chunk is hundreds of small operators, and Python's per-operator overhead (module
    calls, argument parsing) is a large part of their cost; a trace runs the same operators from
    TorchScript's interpreter, with the same output (tests; time per chunk, traced vs eager:
    benchmarks/results/policy.json, docs/results.md section 3). The trace holds the head's parameters
    themselves (not copies), so in-place weight updates (``load_state_dict``) reach it. ``torch.export``
    and ``make_fx`` graphs still run from Python (no faster here); ``torch.compile`` was faster per chunk
    but slow to build for each input shape (docs/results.md section 3)."""

    def __init__(self, head: ActionHead) -> None:
        super().__init__()
        self.head = head

    def forward(self, vl: Tensor, state: Tensor, noise: Tensor) -> Tensor:
        return self.head.integrate(vl, state, noise)


class TracedGuidedSampler(TracedSampler):
    """:class:`TracedSampler` with real-time chunking's guide (moss_vla/rtc.py) as three more inputs."""

    def forward(self, vl: Tensor, state: Tensor, noise: Tensor, prefix: Tensor, weights: Tensor,  # type: ignore[override]
                guidance: Tensor) -> Tensor:
        return self.head.integrate(vl, state, noise, Guide(prefix, weights, guidance))


class ActionHead(nn.Module):
    """Thin adapter around lerobot's FlowmatchingActionHead (plain tensors in, tensors out)."""

    def __init__(self, cfg: ActionHeadConfig, state_dim: int, action_dim: int, backbone_dim: int,
                 torchscript: bool = False) -> None:
        super().__init__()
        self.cfg = cfg
        self.torchscript = torchscript  # run eval-mode sampling as a TorchScript trace (TracedSampler)
        self._traces: dict[tuple, torch.jit.ScriptModule] = {}
        self.state_dim, self.action_dim = state_dim, action_dim
        with contextlib.redirect_stdout(io.StringIO()):  # lerobot prints parameter counts
            self.head = FlowmatchingActionHead(lerobot_head_config(cfg, state_dim, action_dim, backbone_dim))
        if cfg.init == "scaled":  # see ActionHeadConfig.init
            for m in self.head.modules():
                if isinstance(m, CategorySpecificLinear):
                    nn.init.normal_(m.W, 0.0, m.W.shape[1] ** -0.5)  # W: (embodiments, fan_in, fan_out)
        elif cfg.init != "lerobot":
            raise ValueError(f"action_head.init: expected 'scaled' or 'lerobot', got {cfg.init!r}")
        check_fast_sampler_applies(self.head)

    def _inputs(self, vl: Tensor, vl_mask: Tensor, state: Tensor) -> tuple[BatchFeature, dict]:
        B = vl.shape[0]
        backbone = BatchFeature(data={"backbone_features": vl, "backbone_attention_mask": vl_mask})
        action_input = {"state": state[:, None, :], "embodiment_id": torch.zeros(B, dtype=torch.long, device=vl.device)}
        return backbone, action_input

    def loss(self, vl: Tensor, vl_mask: Tensor, state: Tensor, action: Tensor, action_is_pad: Tensor) -> Tensor:
        """Flow-matching loss. vl (B, N, D), state (B, S) and action (B, H, A) normalised; pad (B, H) bool."""
        backbone, action_input = self._inputs(vl, vl_mask, state)
        action_input["action"] = action
        action_input["action_mask"] = (~action_is_pad)[:, :, None].to(action.dtype).expand_as(action)
        return self.head(backbone, BatchFeature(data=action_input))["loss"]

    @torch.inference_mode()
    def sample(self, vl: Tensor, vl_mask: Tensor, state: Tensor, seed: int | None = None,
               guide: Guide | None = None) -> Tensor:
        """Euler-integrated action chunk (B, H, A), normalised. ``seed`` fixes the initial noise; ``guide``
        (eval mode only) keeps the chunk with the previous one (real-time chunking, moss_vla/rtc.py).

        In eval mode, the same result as :meth:`sample_reference` (lerobot's ``get_action``) for the same
        noise, faster (see the module docstring); in training mode (dropout active) it is
        ``sample_reference``. The backbone attention mask is ignored, as in lerobot. Runs in inference
        mode: the chunk cannot enter autograd (nothing differentiates through sampling).
        With :attr:`torchscript` set, the sampler runs as a TorchScript trace (see :class:`TracedSampler`)."""
        if self.training:
            if guide is not None:
                raise RuntimeError("real-time chunking (planner.rtc.enabled) samples in eval mode only")
            return self.sample_reference(vl, vl_mask, state, seed)
        shape = (vl.shape[0], self.cfg.horizon, self.action_dim)
        # a private generator: same numbers as the global RNG seeded alike (CPU), without fork_rng's cost
        generator = None if seed is None else torch.Generator(vl.device).manual_seed(seed)
        noise = torch.randn(shape, dtype=vl.dtype, device=vl.device, generator=generator)
        if self.torchscript:
            inputs = (vl, state, noise) if guide is None else (vl, state, noise, *guide)
            return self._traced(*inputs)(*inputs)
        return self.integrate(vl, state, noise, guide)

    def integrate(self, vl: Tensor, state: Tensor, actions: Tensor, guide: Guide | None = None) -> Tensor:
        """The Euler integration of :meth:`sample` (eval mode) from the noise ``actions`` (B, H, A); with a
        ``guide``, each step's velocity is corrected towards its prefix (real-time chunking)."""
        head = self.head
        # as get_action: VL LayerNorm + self-attention, state encoder (once per chunk)
        vl = head.process_backbone_output(BatchFeature(data={"backbone_features": vl}))["backbone_features"]
        embodiment = torch.zeros(vl.shape[0], dtype=torch.long, device=vl.device)
        state_features = head.state_encoder(state[:, None, :], embodiment)
        c = self._prepare(vl, state_features, embodiment)
        dt = 1.0 / self.cfg.num_inference_steps
        for step in range(self.cfg.num_inference_steps):
            velocity = self._velocity(actions, c, step)
            if guide is not None:
                velocity = guided_velocity(actions, velocity, step * dt, guide, step)
            actions = torch.add(actions, velocity, alpha=dt)  # Euler step
        return actions

    def _traced(self, vl: Tensor, state: Tensor, noise: Tensor, *guide: Tensor) -> torch.jit.ScriptModule:
        """The TorchScript trace of :meth:`integrate` for these input shapes, guided or not (traced at first
        use; the noise's and the guide's shapes follow from vl's batch size)."""
        key = (tuple(vl.shape), tuple(state.shape), vl.dtype, vl.device, bool(guide))
        if key not in self._traces:
            with warnings.catch_warnings():
                # TracerWarning: Python ints taken from shapes become constants, hence one trace per key;
                # DeprecationWarning: torch 2.10 deprecates torch.jit (still supported in our pinned
                # torch; torch.compile's C++ build takes over a minute per shape here, see TracedSampler)
                warnings.simplefilter("ignore", torch.jit.TracerWarning)
                warnings.simplefilter("ignore", DeprecationWarning)
                module = TracedGuidedSampler(self) if guide else TracedSampler(self)
                self._traces[key] = torch.jit.trace(module, (vl, state, noise, *guide), check_trace=False)
        return self._traces[key]

    def train(self, mode: bool = True) -> ActionHead:
        self._traces.clear()  # traces are for eval mode; rebuilt on the next eval-mode sample
        return super().train(mode)

    def _apply(self, fn, *args, **kwargs):  # .to(), .float(), ...: parameters may be new tensors
        self._traces.clear()
        return super()._apply(fn, *args, **kwargs)

    def _prepare(self, vl: Tensor, state_features: Tensor, embodiment: Tensor) -> ChunkConstants:
        """Everything of the DiT that does not depend on the step's actions (see :class:`ChunkConstants`)."""
        head, dit = self.head, self.head.model
        B, H, n_steps = vl.shape[0], self.cfg.horizon, self.cfg.num_inference_steps
        # t = 0, 1/n, ... as get_action: int(t * buckets), the same for the whole batch
        ticks = [int(k / float(n_steps) * head.num_timestep_buckets) for k in range(n_steps)]
        timesteps = torch.tensor(ticks, device=vl.device)[:, None].expand(n_steps, B).reshape(-1)  # (steps * B,)
        temb = dit.timestep_encoder(timesteps)  # (steps * B, D): all steps at once
        act = F.silu(temb)  # the SiLU that every AdaLayerNorm and the output modulation apply first

        def modulation(linear: nn.Linear, scale_first: bool) -> KV:
            a, b = linear(act).view(n_steps, B, 1, -1).chunk(2, dim=-1)
            scale, shift = (a, b) if scale_first else (b, a)
            return 1 + scale, shift

        blocks = []
        for i, blk in enumerate(dit.transformer_blocks):
            attn, kv, qkv = blk.attn1, None, None
            if i % 2 == 1 and dit.config.interleave_self_attention:  # DiT.forward's rule: self-attention
                lins = (attn.to_q, attn.to_k, attn.to_v)
                bias = None if attn.to_q.bias is None else torch.cat([lin.bias for lin in lins])
                qkv = torch.cat([lin.weight for lin in lins]), bias
            else:
                kv = self._heads(attn.heads, attn.to_k(vl)), self._heads(attn.heads, attn.to_v(vl))
            blocks.append(BlockParts(
                norm1=blk.norm1.norm, heads=attn.heads, to_q=attn.to_q, to_out=attn.to_out[0], norm3=blk.norm3,
                ff_in=blk.ff.net[0], ff_out=blk.ff.net[2], ada=modulation(blk.norm1.linear, scale_first=True),
                kv=kv, qkv=qkv))

        enc = head.action_encoder
        w = enc.hidden_size
        # the action encoder's input to W2 is [W1(actions), sinusoid(timestep)]: the timestep half is fixed per step
        tau = enc.pos_encoding(timesteps[:, None].expand(-1, H)).to(vl.dtype).view(n_steps, B, H, w)
        w2, b2 = select_embodiment(enc.W2, embodiment)
        w3, b3 = select_embodiment(enc.W3, embodiment)
        if head.config.add_pos_embed:
            b3 = b3 + head.position_embedding(torch.arange(H, device=vl.device)).unsqueeze(0)
        future = head.future_tokens.weight.unsqueeze(0).expand(B, -1, -1)
        return ChunkConstants(
            prefix=torch.cat((state_features, future), dim=1),
            encoder_w1=select_embodiment(enc.W1, embodiment), encoder_w2_action=w2[:, :w],
            encoder_w2_time=torch.matmul(tau, w2[:, w:]) + b2, encoder_w3=(w3, b3), blocks=blocks,
            out_mod=modulation(dit.proj_out_1, scale_first=False),  # DiT: shift, scale = proj_out_1(...)
            decoder=(select_embodiment(head.action_decoder.layer1, embodiment),
                     select_embodiment(head.action_decoder.layer2, embodiment)))

    @staticmethod
    def _heads(heads: int, x: Tensor) -> Tensor:
        """(B, N, heads * d) -> (B, heads, N, d), as AttnProcessor2_0."""
        return x.view(x.shape[0], -1, heads, x.shape[-1] // heads).transpose(1, 2)

    def _velocity(self, actions: Tensor, c: ChunkConstants, step: int) -> Tensor:
        """One DiT evaluation (B, H, A) -> predicted velocity (B, H, A): ``get_action``'s loop body."""
        dit = self.head.model
        H = actions.shape[1]
        # MultiEmbodimentActionEncoder: W3(swish(W2([W1(a), tau]))) (+ position embeddings, in W3's bias)
        a_emb = torch.baddbmm(c.encoder_w1[1], actions, c.encoder_w1[0])
        x = F.silu(torch.baddbmm(c.encoder_w2_time[step], a_emb, c.encoder_w2_action))
        h = torch.cat((c.prefix, torch.baddbmm(c.encoder_w3[1], x, c.encoder_w3[0])), dim=1)
        for i, parts in enumerate(c.blocks):
            # only the action tokens' outputs are read: the last block computes just their rows
            h = self._block(parts, h, step, H if i == len(c.blocks) - 1 else None)
        scale, shift = c.out_mod
        h = dit.proj_out_2(torch.addcmul(shift[step], dit.norm_out(h), scale[step]))
        (w1, b1), (w2, b2) = c.decoder  # CategorySpecificMLP: layer2(relu(layer1(h)))
        return torch.baddbmm(b2, F.relu(torch.baddbmm(b1, h, w1)), w2)

    def _block(self, p: BlockParts, h: Tensor, step: int, last_rows: int | None) -> Tensor:
        """``BasicTransformerBlock.forward`` in eval mode (dropouts are identities): AdaLN, attention,
        feed-forward, with the per-chunk constants of ``p``; ``last_rows``: only the last rows' outputs."""
        x = torch.addcmul(p.ada[1][step], p.norm1(h), p.ada[0][step])  # norm(h) * (1 + scale) + shift
        if p.kv is None:  # self-attention: q, k, v of all rows in one matmul
            B, N = x.shape[:2]
            q, k, v = F.linear(x, *p.qkv).view(B, N, 3, p.heads, -1).permute(2, 0, 3, 1, 4)
            if last_rows is not None:
                q, h = q[:, :, -last_rows:], h[:, -last_rows:]
        else:
            if last_rows is not None:
                x, h = x[:, -last_rows:], h[:, -last_rows:]
            q, (k, v) = self._heads(p.heads, p.to_q(x)), p.kv
        a = F.scaled_dot_product_attention(q, k, v, dropout_p=0.0, is_causal=False)
        h = p.to_out(a.transpose(1, 2).flatten(2)) + h
        return p.ff_out(p.ff_in(p.norm3(h))) + h

    @torch.no_grad()
    def sample_reference(self, vl: Tensor, vl_mask: Tensor, state: Tensor, seed: int | None = None) -> Tensor:
        """lerobot's own ``get_action`` (the reference :meth:`sample` is tested against)."""
        backbone, action_input = self._inputs(vl, vl_mask, state)
        if seed is None:
            return self.head.get_action(backbone, BatchFeature(data=action_input))["action_pred"]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.head.get_action(backbone, BatchFeature(data=action_input))["action_pred"]
