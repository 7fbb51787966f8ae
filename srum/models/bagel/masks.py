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

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

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


def _range_indices(starts: list[int], ends: list[int], device) -> torch.Tensor:
    """Concatenation of ``arange(s, e)`` for every (s, e), as one int64 tensor."""
    starts_t = torch.tensor(starts, dtype=torch.long, device=device)
    lens = torch.tensor(ends, dtype=torch.long, device=device) - starts_t
    offsets = torch.cumsum(lens, 0) - lens
    total = int(lens.sum())
    return torch.repeat_interleave(starts_t - offsets, lens) + torch.arange(total, device=device)


@dataclass
class SegmentGroup:
    """Segments of one attention kind (causal, or full/noise) as flash-attn varlen inputs:
    query token indices ``q_index`` [Nq] and key token indices ``k_index`` [Nk] into the
    packed sequence, segment by segment, with cumulative lengths ``cu_q`` / ``cu_k``
    [segments + 1] (int32) and the longest ``max_q`` / ``max_k``."""

    q_index: torch.Tensor
    k_index: torch.Tensor
    cu_q: torch.Tensor
    cu_k: torch.Tensor
    max_q: int
    max_k: int


@dataclass
class SegmentPlan:
    """The packed training mask as contiguous key ranges, for kernels without a mask.

    Segment j of a sample sees a contiguous run of keys, from the sample's first token to
    its own last token, as long as no earlier segment of the sample is a noise segment
    (those are hidden from later tokens). Then causal segments are a bottom-right aligned
    causal attention of the segment's queries over that run, and full/noise segments a
    plain attention over it: two varlen calls compute exactly
    :func:`packed_attention_mask`, without its [S, S] mask and without the masked-out
    blocks. SRUM's text-to-image samples ([prompt][noised image]) always qualify."""

    causal: SegmentGroup | None
    full: SegmentGroup | None

    @classmethod
    def from_splits(cls, split_lens: Sequence[Sequence[int]], attn_modes: Sequence[Sequence[str]],
                    device: torch.device | str = "cpu") -> "SegmentPlan | None":
        """The plan, or None when some sample has a segment after a noise segment (use
        the dense mask then)."""
        ranges: dict[bool, list[list[int]]] = {True: [[], [], [], []], False: [[], [], [], []]}
        pos = 0
        for sample_lens, sample_modes in zip(split_lens, attn_modes, strict=True):
            start, seen_noise = pos, False
            for length, mode in zip(sample_lens, sample_modes, strict=True):
                if seen_noise:
                    return None
                q0, q1, k0 = pos, pos + length, start
                for lst, value in zip(ranges[mode == "causal"], (q0, q1, k0, q1)):
                    lst.append(value)
                seen_noise = mode == "noise"
                pos = q1
        groups = {}
        for causal, (q0, q1, k0, k1) in ranges.items():
            if not q0:
                groups[causal] = None
                continue
            q_len = torch.tensor(q1) - torch.tensor(q0)
            k_len = torch.tensor(k1) - torch.tensor(k0)
            groups[causal] = SegmentGroup(
                q_index=_range_indices(q0, q1, device), k_index=_range_indices(k0, k1, device),
                cu_q=F.pad(torch.cumsum(q_len, 0), (1, 0)).to(device=device, dtype=torch.int32),
                cu_k=F.pad(torch.cumsum(k_len, 0), (1, 0)).to(device=device, dtype=torch.int32),
                max_q=int(q_len.max()), max_k=int(k_len.max()))
        return cls(causal=groups[True], full=groups[False])
