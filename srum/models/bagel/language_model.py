# SPDX-License-Identifier: Apache-2.0
"""The Qwen2 decoder with Mixture-of-Transformers (MoT) experts.

Every layer holds two full sets of weights ("experts"): the understanding expert
(plain Qwen2 names: ``q_proj``, ``mlp``, ``input_layernorm`` ...) serves text and ViT
tokens, the generation expert (same names ending in ``_moe_gen``) serves noised VAE
latent tokens. Attention itself is one joint attention over all tokens, so the two
streams read each other. Module names follow the published checkpoint:
``language_model.model.layers.{i}.self_attn.q_proj_moe_gen.weight`` and so on.

Two ways to run it, sharing all the weights code:

* :meth:`Qwen2MoTModel.forward_packed`: one packed training sequence with an explicit
  attention mask (see :func:`srum.models.bagel.masks.packed_attention_mask`);
* :meth:`Qwen2MoTModel.forward_cached`: inference against a :class:`KVCache`, one row
  per sequence, new tokens appended (or written as scratch for CFG/flow steps).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .attention import CachedLayout, cached_attention, masked_attention, segment_attention, use_flash
from .config import LanguageModelConfig
from .kv_cache import KVCache
from .layers import RMSNorm, SwiGLU, apply_rope, rope_cos_sin
from .masks import SegmentPlan


def check_compile_backend(name: str, field: str = "compile_backend") -> None:
    """Raise a ValueError naming ``field`` when torch.compile has no backend ``name``."""
    import torch._dynamo  # imported only when compiling is asked for

    known = torch._dynamo.list_backends(exclude_tags=())
    if name not in known:
        raise ValueError(f"{field}: unknown torch.compile backend {name!r} (known: {', '.join(sorted(known))})")


class ExpertRouting:
    """Which packed tokens go through the generation expert.

    ``is_gen`` [N] bool, or None when every token is an understanding token (text-only
    and ViT calls skip the gather/scatter entirely)."""

    def __init__(self, is_gen: torch.Tensor | None):
        if is_gen is not None and not bool(is_gen.any()):
            is_gen = None
        self.is_gen = is_gen
        if is_gen is not None:
            self.gen_idx = torch.nonzero(is_gen, as_tuple=True)[0]
            self.und_idx = torch.nonzero(~is_gen, as_tuple=True)[0]
            # where each token sits in [understanding tokens..., generation tokens...]:
            # outputs are put back in order with one gather (index_select), which is
            # several times faster on CPU than scattering into an empty tensor
            self.restore = torch.argsort(torch.cat([self.und_idx, self.gen_idx]))

    def to(self, device: torch.device) -> "ExpertRouting":
        if self.is_gen is None or self.is_gen.device == device:
            return self
        return ExpertRouting(self.is_gen.to(device))

    def __call__(self, x: torch.Tensor, und: Callable, gen: Callable) -> torch.Tensor:
        """Apply ``und`` to understanding tokens and ``gen`` to generation tokens of x [N, ...]."""
        if self.is_gen is None:
            return und(x)
        if self.und_idx.numel() == 0:
            return gen(x)
        y_und = und(x.index_select(0, self.und_idx))
        y_gen = gen(x.index_select(0, self.gen_idx))
        return torch.cat([y_und, y_gen.to(y_und.dtype)]).index_select(0, self.restore)


class MoTAttention(nn.Module):
    """Joint attention with per-expert q/k/v/o projections and q/k RMS norms."""

    def __init__(self, cfg: LanguageModelConfig):
        super().__init__()
        self.num_heads = cfg.num_attention_heads
        self.num_kv_heads = cfg.num_key_value_heads
        self.head_dim = cfg.head_dim
        q_dim, kv_dim = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        for suffix in ("", "_moe_gen"):
            setattr(self, f"q_proj{suffix}", nn.Linear(cfg.hidden_size, q_dim, bias=True))
            setattr(self, f"k_proj{suffix}", nn.Linear(cfg.hidden_size, kv_dim, bias=True))
            setattr(self, f"v_proj{suffix}", nn.Linear(cfg.hidden_size, kv_dim, bias=True))
            setattr(self, f"o_proj{suffix}", nn.Linear(q_dim, cfg.hidden_size, bias=False))
            setattr(self, f"q_norm{suffix}", RMSNorm(self.head_dim, cfg.rms_norm_eps))
            setattr(self, f"k_norm{suffix}", RMSNorm(self.head_dim, cfg.rms_norm_eps))

    def project(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], route: ExpertRouting):
        """x [N, hidden] -> q [N, Hq, D], k/v [N, Hkv, D] with qk-norm and RoPE applied."""
        n = x.shape[0]
        q = route(x, self.q_proj, self.q_proj_moe_gen).view(n, self.num_heads, self.head_dim)
        k = route(x, self.k_proj, self.k_proj_moe_gen).view(n, self.num_kv_heads, self.head_dim)
        v = route(x, self.v_proj, self.v_proj_moe_gen).view(n, self.num_kv_heads, self.head_dim)
        q = route(q, self.q_norm, self.q_norm_moe_gen)
        k = route(k, self.k_norm, self.k_norm_moe_gen)
        cos, sin = rope
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v

    def out(self, attn: torch.Tensor, route: ExpertRouting) -> torch.Tensor:
        return route(attn.flatten(1), self.o_proj, self.o_proj_moe_gen)


class MoTDecoderLayer(nn.Module):
    def __init__(self, cfg: LanguageModelConfig):
        super().__init__()
        self.self_attn = MoTAttention(cfg)
        self.mlp = SwiGLU(cfg.hidden_size, cfg.intermediate_size)
        self.mlp_moe_gen = SwiGLU(cfg.hidden_size, cfg.intermediate_size)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.input_layernorm_moe_gen = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm_moe_gen = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, x: torch.Tensor, rope, route: ExpertRouting, attend: Callable) -> torch.Tensor:
        """x [N, hidden] -> [N, hidden]. ``attend(q, k, v) -> [N, Hq, D]`` is the attention
        rule of the caller (masked training attention or cached inference attention)."""
        h = route(x, self.input_layernorm, self.input_layernorm_moe_gen)
        q, k, v = self.self_attn.project(h, rope, route)
        x = x + self.self_attn.out(attend(q, k, v), route)
        h = route(
            x,
            lambda t: self.mlp(self.post_attention_layernorm(t)),
            lambda t: self.mlp_moe_gen(self.post_attention_layernorm_moe_gen(t)),
        )
        return x + h


class Qwen2MoTModel(nn.Module):
    """Embedding, MoT decoder layers and one final norm per expert."""

    def __init__(self, cfg: LanguageModelConfig):
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList([MoTDecoderLayer(cfg) for _ in range(cfg.num_hidden_layers)])
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.norm_moe_gen = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def compile_layers(self, backend: str = "inductor") -> int:
        """``torch.compile`` every decoder layer in place; returns how many.

        Per-layer graphs stay small (one compile serves every layer of the same shape)
        and leave room between layers for FSDP's hooks or a device hop (device_map).
        ``Module.compile`` compiles the call, not the module, so parameter names and
        checkpoint keys do not change. Lengths change from call to call (packed
        sequences, prompts, cache rows): after the first recompile torch marks them
        dynamic instead of compiling again for every length."""
        check_compile_backend(backend)
        for layer in self.layers:
            layer.compile(backend=backend)
        return len(self.layers)

    def _rope(self, positions: torch.Tensor, dtype: torch.dtype):
        return rope_cos_sin(positions, self.cfg.head_dim, self.cfg.rope_theta, dtype)

    def forward_packed(self, x: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor,
                       is_gen: torch.Tensor | None = None, segments: SegmentPlan | None = None) -> torch.Tensor:
        """Training / scoring forward of one packed sequence.

        x [S, hidden] token inputs, positions [S] RoPE ids, mask [S, S] bool,
        is_gen [S] bool -> final hidden states [S, hidden] (per-expert final norm).
        ``segments``: the same mask as contiguous key ranges; with flash-attn (CUDA,
        half precision) attention runs as varlen calls over them instead of the mask."""
        route = ExpertRouting(is_gen)
        rope = self._rope(positions, x.dtype)

        def attend(q, k, v):
            if segments is not None and use_flash(q):
                return segment_attention(q, k, v, segments)
            return masked_attention(q, k, v, mask)

        for layer in self.layers:
            x = layer(x, rope, route, attend)
        return route(x, self.norm, self.norm_moe_gen)

    def forward_cached(self, x: torch.Tensor, positions: torch.Tensor, layout: CachedLayout,
                       cache: KVCache, is_gen: torch.Tensor | None = None) -> torch.Tensor:
        """Inference forward of new tokens against ``cache``.

        x [N, hidden] packed new tokens of all rows, positions [N] RoPE ids, layout says
        which row each token belongs to and where its slot is. The new keys/values are
        written at their slots in every layer; whether they are kept is the caller's
        choice (:meth:`KVCache.commit`), so CFG/flow steps reuse the same scratch slots
        without copying the cache. Returns final hidden states [N, hidden]."""
        route = ExpertRouting(is_gen)
        rope = self._rope(positions, x.dtype)
        rows, slots = layout.query.row, layout.slot
        for i, layer in enumerate(self.layers):
            k_cache, v_cache = cache.keys[i], cache.values[i]
            if k_cache.device != x.device:  # layers spread over GPUs (device_map): follow the layer
                dev = k_cache.device
                x, rope, route, layout = x.to(dev), tuple(t.to(dev) for t in rope), route.to(dev), layout.to(dev)
                rows, slots = layout.query.row, layout.slot

            def attend(q, k, v, k_cache=k_cache, v_cache=v_cache, layout=layout, rows=rows, slots=slots):
                k_cache[rows, slots] = k.to(k_cache.dtype)
                v_cache[rows, slots] = v.to(v_cache.dtype)
                return cached_attention(q, k_cache, v_cache, layout)

            x = layer(x, rope, route, attend)
        dev = self.norm.weight.device
        return route.to(dev)(x.to(dev), self.norm, self.norm_moe_gen)


class Qwen2MoTForCausalLM(nn.Module):
    """``model`` (the decoder) plus an untied ``lm_head``, named as in the checkpoint."""

    def __init__(self, cfg: LanguageModelConfig):
        super().__init__()
        self.cfg = cfg
        self.model = Qwen2MoTModel(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
