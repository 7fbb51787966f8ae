# SPDX-License-Identifier: Apache-2.0
"""Loaded training samples and how a pack of them becomes one packed sequence.

A sample is a list of *context segments* followed by at most one noised image block:

====================  =================================  ==========  =====================
segment               tokens                             attention   RoPE positions
====================  =================================  ==========  =====================
text                  ``<|im_start|> text <|im_end|>``   causal      p .. p+n-1 (next: p+n)
ViT image             ``<|vision_start|>`` patches       full        p for all (next: p+1)
                      ``<|vision_end|>``
noised image (last)   ``<|vision_start|>`` h*w latents   noise       p for all
                      ``<|vision_end|>``
====================  =================================  ==========  =====================

``p`` starts at 0 for every sample and is carried from segment to segment exactly as
inference's KV cache does it (``_forward_rows``: a text segment of n tokens commits n
positions, an image block commits one). A text segment may carry a cross-entropy
loss: the logits at its positions 0 .. n-2 predict its tokens 1 .. n-1 (for an answer
``[bos] answer [eos]``: every answer token and the final eos, read from the bos on,
as decoding does after a fed ``<|im_start|>``).

Every segment sees the earlier segments of its own sample; samples never see each
other; nothing after a noise block may see it (it is always last).

FSDP2 gathers a sharded unit (the ViT, the connector, the lm_head, and within each
decoder layer the generation expert's gradients) only on ranks whose micro-batch uses
it, so every rank must use the same units in every micro-batch. :class:`PackPaths`
says which ones the dataset can use; a pack that lacks one gets a *dummy* sample
(one ViT patch, a ``[bos, eos]`` text segment, one latent token) whose loss weights
are zero: it changes no number of the real samples and no gradient value, but makes
every rank gather and reduce the same parameters.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..models.bagel.masks import SegmentPlan, packed_attention_mask
from ..models.bagel.model import PackedBatch
from ..models.bagel.tokenizer import SpecialTokens
from ..models.bagel.transforms import flattened_position_ids

__all__ = ["IMAGE_FRAME_TOKENS", "TextSegment", "VitSegment", "TrainSample", "PackPaths", "PackedInputs",
           "layout_pack", "to_packed_batch"]

# one text segment's framing adds bos + eos; one image block adds vision_start + vision_end
IMAGE_FRAME_TOKENS = 2
# flow time of the dummy latent token (any value in (0, 1): its loss weight is 0)
_DUMMY_TIMESTEP = 0.5


@dataclass
class TextSegment:
    """A framed text segment ``[bos] + ids + [eos]``; ``loss``: cross-entropy on
    predicting ids[1:] from the positions of ids[:-1]."""

    ids: list[int]
    loss: bool = False


@dataclass
class VitSegment:
    """One understanding image: ``patches`` [m, 3*p*p] (row-major, see
    ``transforms.patchify``) and ``position_ids`` [m] (``flattened_position_ids``)."""

    patches: torch.Tensor
    position_ids: torch.Tensor


@dataclass
class TrainSample:
    """One loaded sample, everything on the CPU.

    image / reference: [3, H, W] in [-1, 1] for the VAE (image None = no generated
    image, e.g. a vqa sample; reference None = the constraint image is the sample
    itself). weights: [h*w] reward weight per latent token, row-major.
    noise: [h*w, p*p*z] the flow-matching noise eps; timestep: t in (0, 1).

    ``context``: the segments before the noised image; None (reward records and t2i
    rows) means one prompt segment ``text_ids`` (nothing when the prompt was dropped).
    ``mode``: "reward", "t2i", "vqa" or "cot". ``text_dropped``: the sample's text was
    left out for CFG (None: derived from ``text_ids``)."""

    index: int
    image_id: str
    image: torch.Tensor | None
    reference: torch.Tensor | None
    text_ids: list[int]
    grid: tuple[int, int] | None
    weights: torch.Tensor
    reward_stats: dict
    timestep: float
    noise: torch.Tensor
    vae_seed: int
    mode: str = "reward"
    context: list | None = None
    text_dropped: bool | None = None

    def segments(self) -> list:
        if self.context is not None:
            return self.context
        return [TextSegment(self.text_ids)] if self.text_ids else []

    @property
    def dropped(self) -> bool:
        return (not self.text_ids) if self.text_dropped is None else self.text_dropped

    @property
    def num_latent_tokens(self) -> int:
        return 0 if self.image is None else self.grid[0] * self.grid[1]


@dataclass(frozen=True)
class PackPaths:
    """Model paths every pack must exercise (see the module docstring).

    latent: the dataset has generated images; vit_patch_dim: > 0 when it has ViT images
    (3 * patch**2 numbers per patch); text_loss: it has cross-entropy tokens."""

    latent: bool = False
    vit_patch_dim: int = 0
    text_loss: bool = False


@dataclass
class PackedInputs:
    """One micro-batch laid out as a packed sequence, all but the latents (CPU tensors).

    S = sequence_length tokens, Ng latent tokens (the dummy's last), D = p*p*z numbers
    per latent token. ``samples`` are in sequence order (the dummy is not one of them);
    their latent tokens are consecutive in that order. ``constraint_weights`` [Ng]: 1 for
    tokens of reward records, 0 for plain (t2i, cot) and dummy tokens; None = all 1."""

    sequence_length: int
    split_lens: list[list[int]]
    attn_modes: list[list[str]]
    position_ids: torch.Tensor          # [S]
    text_ids: torch.Tensor              # [Nt]
    text_index: torch.Tensor            # [Nt]
    latent_index: torch.Tensor          # [Ng]
    latent_position_ids: torch.Tensor   # [Ng]
    latent_timesteps: torch.Tensor      # [Ng]
    noise: torch.Tensor                 # [Ng, D]
    weights: torch.Tensor               # [Ng]
    samples: list[TrainSample]
    constraint_weights: torch.Tensor | None = None  # [Ng]
    dummy_latent_tokens: int = 0
    vit_patches: torch.Tensor | None = None         # [Nv, 3*p*p]
    vit_position_ids: torch.Tensor | None = None    # [Nv]
    vit_lengths: torch.Tensor | None = None         # [num ViT images]
    vit_index: torch.Tensor | None = None           # [Nv]
    logits_index: torch.Tensor | None = None        # [Nl] positions whose next token is a label
    labels: torch.Tensor | None = None              # [Nl]
    label_weights: torch.Tensor | None = None       # [Nl] 1 real, 0 dummy
    has_dummy: bool = False

    @property
    def num_latent_tokens(self) -> int:
        """Latent tokens of the real samples (the loss normaliser counts these)."""
        return int(self.latent_index.numel()) - self.dummy_latent_tokens

    @property
    def num_ce_tokens(self) -> int:
        return 0 if self.label_weights is None else int(self.label_weights.sum())

    @property
    def num_vit_images(self) -> int:
        return 0 if self.vit_lengths is None else int(self.vit_lengths.numel())


class _Builder:
    """Accumulates the packed sequence segment by segment."""

    def __init__(self, special: SpecialTokens, latent_downsample: int, max_latent_size: int):
        self.special, self.ds, self.side = special, latent_downsample, max_latent_size
        self.curr = 0
        self.split_lens, self.attn_modes, self.positions = [], [], []
        self.text_ids, self.text_index = [], []
        self.latent_index, self.latent_pos, self.timesteps = [], [], []
        self.vit_patches, self.vit_pos, self.vit_lengths, self.vit_index = [], [], [], []
        self.logits_index, self.labels, self.label_weights = [], [], []
        self._lens = self._modes = None
        self.rope = 0

    def begin(self) -> None:
        self._lens, self._modes, self.rope = [], [], 0

    def end(self) -> None:
        self.split_lens.append(self._lens)
        self.attn_modes.append(self._modes)

    def text(self, ids: list[int], loss: bool, label_weight: float = 1.0) -> None:
        n, curr = len(ids), self.curr
        self.text_ids += ids
        self.text_index += range(curr, curr + n)
        self.positions += range(self.rope, self.rope + n)
        if loss:
            self.logits_index += range(curr, curr + n - 1)
            self.labels += ids[1:]
            self.label_weights += [label_weight] * (n - 1)
        self._lens.append(n)
        self._modes.append("causal")
        self.curr, self.rope = curr + n, self.rope + n

    def vit(self, patches: torch.Tensor, position_ids: torch.Tensor) -> None:
        m, curr = int(patches.shape[0]), self.curr
        block = m + IMAGE_FRAME_TOKENS
        self.text_ids += [self.special.vision_start, self.special.vision_end]
        self.text_index += [curr, curr + block - 1]
        self.vit_index += range(curr + 1, curr + block - 1)
        self.positions += [self.rope] * block
        self.vit_patches.append(patches)
        self.vit_pos.append(position_ids)
        self.vit_lengths.append(m)
        self._lens.append(block)
        self._modes.append("full")
        self.curr, self.rope = curr + block, self.rope + 1

    def latent(self, grid: tuple[int, int], timestep: float) -> None:
        h, w = grid
        block, curr = h * w + IMAGE_FRAME_TOKENS, self.curr
        self.text_ids += [self.special.vision_start, self.special.vision_end]
        self.text_index += [curr, curr + block - 1]
        self.latent_index += range(curr + 1, curr + block - 1)
        self.positions += [self.rope] * block
        self._lens.append(block)
        self._modes.append("noise")
        self.curr += block
        self.latent_pos.append(flattened_position_ids(h * self.ds, w * self.ds, self.ds, self.side))
        self.timesteps.append(torch.full((h * w,), timestep))


def _long(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.long)


def layout_pack(samples: list[TrainSample], special: SpecialTokens, latent_downsample: int,
                max_latent_size: int, paths: PackPaths | None = None) -> PackedInputs:
    """Lay the samples of one pack out one after another (see the module docstring);
    ``paths``: append a zero-weight dummy sample for every path the pack lacks."""
    if not samples:
        raise ValueError("layout_pack: empty pack")
    b = _Builder(special, latent_downsample, max_latent_size)
    for s in samples:
        b.begin()
        for seg in s.segments():
            if isinstance(seg, TextSegment):
                b.text(seg.ids, seg.loss)
            else:
                b.vit(seg.patches, seg.position_ids)
        if s.image is not None:
            b.latent(s.grid, s.timestep)
        b.end()

    latent_dim = next((s.noise.shape[1] for s in samples if s.noise.ndim == 2), None)
    noise = [s.noise for s in samples if s.image is not None]
    weights = [s.weights for s in samples if s.image is not None]
    plain = any(s.image is not None and s.mode != "reward" for s in samples)
    constraint = [torch.full((s.num_latent_tokens,), 1.0 if s.mode == "reward" else 0.0)
                  for s in samples if s.image is not None]

    paths = paths or PackPaths()
    need_latent = paths.latent and not b.latent_index
    need_vit = paths.vit_patch_dim > 0 and not b.vit_lengths
    need_ce = (paths.text_loss and not b.labels) or need_vit
    dummy = 0
    if need_latent or need_vit or need_ce:
        b.begin()
        if need_vit:
            b.vit(torch.zeros(1, paths.vit_patch_dim), torch.zeros(1, dtype=torch.long))
        if need_ce:
            b.text([special.bos, special.eos], loss=True, label_weight=0.0)
        if need_latent:
            if latent_dim is None:
                raise ValueError("layout_pack: a dummy latent token needs the latent width; no sample gives it")
            b.latent((1, 1), _DUMMY_TIMESTEP)
            noise.append(torch.zeros(1, latent_dim))
            weights.append(torch.zeros(1))
            constraint.append(torch.zeros(1))
            dummy = 1
        b.end()

    has_latent = bool(b.latent_index)
    empty = torch.zeros(0)
    return PackedInputs(
        sequence_length=b.curr, split_lens=b.split_lens, attn_modes=b.attn_modes,
        position_ids=_long(b.positions), text_ids=_long(b.text_ids), text_index=_long(b.text_index),
        latent_index=_long(b.latent_index),
        latent_position_ids=torch.cat(b.latent_pos) if has_latent else _long([]),
        latent_timesteps=torch.cat(b.timesteps) if has_latent else empty,
        noise=torch.cat(noise) if noise else torch.zeros(0, latent_dim or 0),
        weights=torch.cat(weights) if weights else empty, samples=list(samples),
        constraint_weights=torch.cat(constraint) if (has_latent and (plain or dummy)) else None,
        dummy_latent_tokens=dummy,
        vit_patches=torch.cat(b.vit_patches) if b.vit_lengths else None,
        vit_position_ids=torch.cat(b.vit_pos) if b.vit_lengths else None,
        vit_lengths=_long(b.vit_lengths) if b.vit_lengths else None,
        vit_index=_long(b.vit_index) if b.vit_lengths else None,
        logits_index=_long(b.logits_index) if b.labels else None,
        labels=_long(b.labels) if b.labels else None,
        label_weights=torch.tensor(b.label_weights, dtype=torch.float32) if b.labels else None,
        has_dummy=need_latent or need_vit or need_ce)


def to_packed_batch(inputs: PackedInputs, latent_tokens: torch.Tensor | None, device: torch.device) -> PackedBatch:
    """The model input: ``latent_tokens`` [Ng, D] are the noised latents x_t (None or
    empty when the pack has no latent token)."""
    n_latent = int(inputs.latent_index.numel())
    got = 0 if latent_tokens is None else latent_tokens.shape[0]
    if got != n_latent:
        raise ValueError(f"{got} latent tokens for a layout of {n_latent}")
    batch = PackedBatch(
        sequence_length=inputs.sequence_length, position_ids=inputs.position_ids.to(device),
        attention_mask=packed_attention_mask(inputs.split_lens, inputs.attn_modes, device=device),
        attention_segments=SegmentPlan.from_splits(inputs.split_lens, inputs.attn_modes, device=device),
        text_ids=inputs.text_ids.to(device), text_index=inputs.text_index.to(device))
    if n_latent:
        batch.latent_tokens = latent_tokens.to(device)
        batch.latent_timesteps = inputs.latent_timesteps.to(device)
        batch.latent_position_ids = inputs.latent_position_ids.to(device)
        batch.latent_index = inputs.latent_index.to(device)
    if inputs.vit_patches is not None:
        batch.vit_patches = inputs.vit_patches.to(device)
        batch.vit_position_ids = inputs.vit_position_ids.to(device)
        batch.vit_lengths = inputs.vit_lengths.to(device)
        batch.vit_index = inputs.vit_index.to(device)
    if inputs.logits_index is not None:
        batch.logits_index = inputs.logits_index.to(device)
    return batch
