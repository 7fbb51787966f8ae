# SPDX-License-Identifier: Apache-2.0
"""Small building blocks shared by the Bagel modules."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    """Qwen2's RMS norm: statistics in float32, result cast back before the gain,
    so bf16 models round exactly where the reference does."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(dtype)


class SwiGLU(nn.Module):
    """Qwen2 MLP: down(silu(gate(x)) * up(x))."""

    def __init__(self, hidden_size: int, intermediate_size: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


def rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype):
    """1-D RoPE tables for integer ``positions`` [N] -> (cos, sin), each [N, head_dim].

    Angles are computed in float32 (as HF Qwen2 does) and cast to ``dtype`` last."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.int64).float() / head_dim))
    angles = positions.float()[:, None] * inv_freq[None, :]
    emb = torch.cat((angles, angles), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` [N, heads, head_dim] by the per-token tables [N, head_dim]."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos[:, None, :] + rotated * sin[:, None, :]


def sincos_table_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    """DiT-style sin-cos features: [M] -> [M, dim], sines first, float64 math."""
    omega = torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0)
    omega = 1.0 / 10000 ** omega
    out = positions.reshape(-1).to(torch.float64)[:, None] * omega[None, :]
    return torch.cat([out.sin(), out.cos()], dim=1)


def sincos_table_2d(dim: int, grid_size: int) -> torch.Tensor:
    """2-D sin-cos position table [grid_size**2, dim] for a square grid, row-major.

    The first half of the features encodes the column, the second half the row
    (the grid is built with the width coordinate first, as in DiT/MAE)."""
    if dim % 4:
        raise ValueError(f"sin-cos table width {dim} must be a multiple of 4")
    coords = torch.arange(grid_size, dtype=torch.float64)
    rows, cols = torch.meshgrid(coords, coords, indexing="ij")
    table = torch.cat([sincos_table_1d(dim // 2, cols), sincos_table_1d(dim // 2, rows)], dim=1)
    return table.float()


class PositionTable(nn.Module):
    """A fixed 2-D sin-cos table looked up by flattened grid index (row * side + col).

    Stored as a persistent buffer named ``pos_embed`` so the checkpoint key matches the
    published one; the loader checks the stored values and recomputes them in float32."""

    def __init__(self, grid_size: int, dim: int):
        super().__init__()
        self.grid_size = grid_size
        self.dim = dim
        self.register_buffer("pos_embed", torch.zeros(grid_size ** 2, dim), persistent=True)

    def reset_table(self) -> None:
        self.pos_embed.copy_(sincos_table_2d(self.dim, self.grid_size).to(self.pos_embed))

    def forward(self, position_ids: torch.Tensor) -> torch.Tensor:
        return self.pos_embed[position_ids]


class TimestepEmbedder(nn.Module):
    """Flow time t in [0, 1] -> a hidden-size vector (DiT's sinusoidal features + MLP).

    Features are [cos, sin] of t * exp(-ln(10000) * k / half), k < half."""

    def __init__(self, hidden_size: int, frequency_dim: int = 256):
        super().__init__()
        self.frequency_dim = frequency_dim
        self.mlp = nn.Sequential(
            nn.Linear(frequency_dim, hidden_size, bias=True),
            nn.SiLU(),
            nn.Linear(hidden_size, hidden_size, bias=True),
        )

    def features(self, t: torch.Tensor) -> torch.Tensor:
        half = self.frequency_dim // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        args = t.float()[:, None] * freqs[None]
        return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """t [N] -> [N, hidden]."""
        feats = self.features(t).to(self.mlp[0].weight.dtype)
        return self.mlp(feats)


class Connector(nn.Module):
    """Two-layer MLP from the ViT width to the LLM width."""

    def __init__(self, in_dim: int, out_dim: int, act: str = "gelu_pytorch_tanh"):
        super().__init__()
        if act != "gelu_pytorch_tanh":
            raise ValueError(f"connector activation {act!r} is not supported")
        self.fc1 = nn.Linear(in_dim, out_dim)
        self.fc2 = nn.Linear(out_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))
