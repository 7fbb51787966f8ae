# SPDX-License-Identifier: Apache-2.0
"""SigLIP vision encoder run NaViT-style on packed images of different sizes.

Each image is cut into ``patch_size`` squares (see :func:`transforms.patchify`); the
patches of all images are packed into one sequence and attend only within their own
image. The patch embedding is a Linear over the flattened (row, col, channel) patch,
which is how the published checkpoint stores it; each patch adds a learned position
embedding looked up by ``row * max_patches_per_side + col``. Bagel uses the features
of the penultimate layer, so the model is built without the last encoder layer, and
the final LayerNorm is kept. Names follow ``vit_model.vision_model.*`` in the checkpoint.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .attention import PackedLayout, varlen_self_attention
from .config import VisionConfig


class SiglipAttention(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.num_heads = cfg.num_attention_heads
        self.head_dim = cfg.hidden_size // cfg.num_attention_heads
        self.q_proj = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.k_proj = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.v_proj = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.out_proj = nn.Linear(cfg.hidden_size, cfg.hidden_size)

    def forward(self, x: torch.Tensor, layout: PackedLayout) -> torch.Tensor:
        """x [N, hidden] packed patches of all images -> [N, hidden]."""
        n = x.shape[0]
        q, k, v = (proj(x).view(n, self.num_heads, self.head_dim) for proj in (self.q_proj, self.k_proj, self.v_proj))
        return self.out_proj(varlen_self_attention(q, k, v, layout).reshape(n, -1))


class SiglipMLP(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        if cfg.hidden_act != "gelu_pytorch_tanh":
            raise ValueError(f"vit hidden_act {cfg.hidden_act!r} is not supported")
        self.fc1 = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.fc2 = nn.Linear(cfg.intermediate_size, cfg.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class SiglipEncoderLayer(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.self_attn = SiglipAttention(cfg)
        self.layer_norm2 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.mlp = SiglipMLP(cfg)

    def forward(self, x: torch.Tensor, layout: PackedLayout) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x), layout)
        return x + self.mlp(self.layer_norm2(x))


class SiglipEmbeddings(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.patch_embedding = nn.Linear(cfg.num_channels * cfg.patch_size ** 2, cfg.hidden_size)
        self.position_embedding = nn.Embedding(cfg.num_positions, cfg.hidden_size)

    def forward(self, patches: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        return self.patch_embedding(patches) + self.position_embedding(position_ids)


class SiglipEncoder(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.layers = nn.ModuleList([SiglipEncoderLayer(cfg) for _ in range(cfg.num_layers_used)])


class SiglipTransformer(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.embeddings = SiglipEmbeddings(cfg)
        self.encoder = SiglipEncoder(cfg)
        self.post_layernorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)


class SiglipVisionModel(nn.Module):
    """Packed patches -> per-patch features.

    ``patches`` [N, 3 * p * p] (all images, row-major per image), ``position_ids`` [N],
    ``lengths`` [num_images] patches per image -> [N, vit hidden]."""

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.cfg = cfg
        self.vision_model = SiglipTransformer(cfg)

    def forward(self, patches: torch.Tensor, position_ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        vm = self.vision_model
        layout = PackedLayout.from_lengths(lengths)
        x = vm.embeddings(patches.to(vm.embeddings.patch_embedding.weight.dtype), position_ids)
        for layer in vm.encoder.layers:
            x = layer(x, layout)
        return vm.post_layernorm(x)
