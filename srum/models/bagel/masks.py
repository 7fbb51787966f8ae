# SPDX-License-Identifier: Apache-2.0
"""Attention masks for packed training sequences.

A packed sequence holds several samples one after another; each sample is a list of
segments ("splits"), each with an attention mode:

* ``causal``: text. A token sees earlier tokens of its segment and itself;
* ``full``: a clean image (ViT tokens or a clean VAE image). Sees its whole segment;
* ``noise``: a noised VAE image being denoised. Sees its whole segment, and no token
  outside the segment may see it (later text must not read the noise).

Every segment also sees all earlier segments of its own sample; samples never see
each other. The mask is built with tensor ops from per-token ids, no Python loop over
tokens.
"""
from __future__ import annotations

from typing import Sequence

import torch

MODES = {"causal": 0, "full": 1, "noise": 2}


def packed_attention_mask(split_lens: Sequence[Sequence[int]], attn_modes: Sequence[Sequence[str]],
                          device: torch.device | str = "cpu") -> torch.Tensor:
    """split_lens[i][j] / attn_modes[i][j]: length and mode of segment j of sample i.

    Returns a boolean [S, S] mask (True = query row may attend to key column),
    S = total number of tokens."""
    lens, modes, samples = [], [], []
    for i, (sample_lens, sample_modes) in enumerate(zip(split_lens, attn_modes, strict=True)):
        if len(sample_lens) != len(sample_modes):
            raise ValueError(f"sample {i}: {len(sample_lens)} split lengths but {len(sample_modes)} modes")
        for length, mode in zip(sample_lens, sample_modes):
            if mode not in MODES:
                raise ValueError(f"sample {i}: unknown attention mode {mode!r} (expected one of {sorted(MODES)})")
            if length <= 0:
                raise ValueError(f"sample {i}: split length must be positive, got {length}")
            lens.append(length)
            modes.append(MODES[mode])
            samples.append(i)
    lens_t = torch.tensor(lens, device=device)
    split = torch.repeat_interleave(torch.arange(len(lens), device=device), lens_t)
    mode = torch.tensor(modes, device=device)[split]
    sample = torch.tensor(samples, device=device)[split]
    pos = torch.arange(split.numel(), device=device)

    same_sample = sample[:, None] == sample[None, :]
    earlier_split = split[None, :] < split[:, None]
    same_split = split[:, None] == split[None, :]
    within = same_split & ((mode[:, None] != MODES["causal"]) | (pos[None, :] <= pos[:, None]))
    hidden_noise = (mode[None, :] == MODES["noise"]) & ~same_split
    return same_sample & (earlier_split | within) & ~hidden_noise
