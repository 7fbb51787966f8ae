# SPDX-License-Identifier: Apache-2.0
"""Bagel: one LLM that reads text and images and denoises image latents.

Token kinds in the LLM's sequence and how each is embedded:

* text: ``embed_tokens`` (understanding expert);
* ViT image: SigLIP patch features -> ``connector`` -> + ``vit_pos_embed`` (2-D sin-cos),
  framed by ``<|vision_start|>`` / ``<|vision_end|>`` text tokens (understanding expert);
* generated (noised VAE) image: 2x2 latent patches -> ``vae2llm`` + ``time_embedder(t)``
  + ``latent_pos_embed`` (2-D sin-cos), framed the same way; these tokens use the
  generation expert and ``llm2vae`` reads the velocity back out.

All tokens of one image share a single RoPE position. Latent tokens are in row-major
(h, w) order and each holds its 2x2 patch as (p, q, channel). Names of submodules
follow the published checkpoint exactly; the FLUX autoencoder lives at ``vae`` and
is stored separately in ``ae.safetensors`` (see :mod:`.checkpoint`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .autoencoder import AutoEncoder
from .config import BagelConfig
from .inference import BagelInferenceMixin
from .language_model import Qwen2MoTForCausalLM
from .layers import Connector, PositionTable, TimestepEmbedder
from .masks import SegmentPlan
from .siglip import SiglipVisionModel
from .transforms import flattened_position_ids, patchify


@dataclass
class PackedBatch:
    """One packed training sequence (several samples), built by the data pipeline.

    ``*_index`` tensors give positions inside the packed sequence of length S.
    Latent tokens are already noised: x_t = (1 - t) * x0 + t * eps."""

    sequence_length: int
    position_ids: torch.Tensor          # [S] RoPE ids
    attention_mask: torch.Tensor        # [S, S] bool, see masks.packed_attention_mask
    text_ids: torch.Tensor              # [Nt]
    text_index: torch.Tensor            # [Nt]
    vit_patches: torch.Tensor | None = None        # [Nv, 3*p*p]
    vit_position_ids: torch.Tensor | None = None   # [Nv]
    vit_lengths: torch.Tensor | None = None        # [num ViT images]
    vit_index: torch.Tensor | None = None          # [Nv]
    latent_tokens: torch.Tensor | None = None      # [Ng, p*p*z] noised
    latent_timesteps: torch.Tensor | None = None   # [Ng] t in [0, 1]
    latent_position_ids: torch.Tensor | None = None  # [Ng]
    latent_index: torch.Tensor | None = None       # [Ng]
    logits_index: torch.Tensor | None = None       # [Nl] positions whose next-token logits are wanted
    attention_segments: SegmentPlan | None = None  # the mask as key ranges (flash-attn path), or None


class Bagel(BagelInferenceMixin, nn.Module):
    def __init__(self, config: BagelConfig):
        super().__init__()
        self.config = config
        hidden = config.llm.hidden_size
        self.language_model = Qwen2MoTForCausalLM(config.llm)
        # generation side
        self.time_embedder = TimestepEmbedder(hidden)
        self.vae2llm = nn.Linear(config.patch_latent_dim, hidden)
        self.llm2vae = nn.Linear(hidden, config.patch_latent_dim)
        self.latent_pos_embed = PositionTable(config.max_latent_size, hidden)
        # understanding side
        self.vit_model = SiglipVisionModel(config.vit)
        self.connector = Connector(config.vit.hidden_size, hidden, config.connector_act)
        self.vit_pos_embed = PositionTable(config.vit_max_patches_per_side, hidden)
        self.vae = AutoEncoder(config.vae)
        # set by the loader: tokenizer and the ids of Bagel's special tokens
        self.tokenizer = None
        self.special_tokens = None

    # ------------------------------------------------------------------ helpers
    @property
    def device(self) -> torch.device:
        return self.vae2llm.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.vae2llm.weight.dtype

    def reset_position_tables(self) -> None:
        """Fill both sin-cos tables (they are fixed functions of their shape)."""
        self.latent_pos_embed.reset_table()
        self.vit_pos_embed.reset_table()

    def embed_text(self, ids: torch.Tensor) -> torch.Tensor:
        return self.language_model.model.embed_tokens(ids)

    def embed_vit_images(self, images: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Preprocessed images, each [3, H, W] with H, W multiples of the ViT patch ->
        (packed LLM inputs [sum of patches, hidden], patches per image [num_images])."""
        p = self.config.vit.patch_size
        patches = torch.cat([patchify(im, p) for im in images]).to(self.device, self.dtype)
        pos = torch.cat([
            flattened_position_ids(im.shape[1], im.shape[2], p, self.config.vit_max_patches_per_side) for im in images
        ]).to(self.device)
        lengths = torch.tensor([(im.shape[1] // p) * (im.shape[2] // p) for im in images], device=self.device)
        return self.embed_vit_patches(patches, pos, lengths), lengths

    def embed_vit_patches(self, patches: torch.Tensor, position_ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        features = self.vit_model(patches, position_ids, lengths)
        return self.connector(features) + self.vit_pos_embed(position_ids).to(features.dtype)

    def embed_latents(self, tokens: torch.Tensor, timesteps: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        """Noised latent tokens [N, p*p*z], their t [N] and grid ids [N] -> [N, hidden]."""
        x = self.vae2llm(tokens.to(self.dtype))
        return x + self.time_embedder(timesteps).to(x.dtype) + self.latent_pos_embed(position_ids).to(x.dtype)

    def latent_grid(self, height: int, width: int) -> tuple[int, int]:
        """Image size in pixels -> generation tokens per column and row (h, w)."""
        ds = self.config.latent_downsample
        return height // ds, width // ds

    def latent_position_ids(self, height: int, width: int) -> torch.Tensor:
        return flattened_position_ids(height, width, self.config.latent_downsample, self.config.max_latent_size)

    def patchify_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """[B, z, 2h, 2w] VAE latents -> [B, h*w, p*p*z] tokens (row-major, (p, q, c) inside)."""
        b, c, hh, ww = latents.shape
        p = self.config.latent_patch_size
        x = latents.reshape(b, c, hh // p, p, ww // p, p)
        return torch.einsum("bchpwq->bhwpqc", x).reshape(b, (hh // p) * (ww // p), p * p * c)

    def unpatchify_latents(self, tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """[B, h*w, p*p*z] tokens -> [B, z, p*h, p*w] latents."""
        b = tokens.shape[0]
        p, c = self.config.latent_patch_size, self.config.latent_channels
        x = tokens.reshape(b, h, w, p, p, c)
        return torch.einsum("bhwpqc->bchpwq", x).reshape(b, c, h * p, w * p)

    # ------------------------------------------------------------------ training
    def forward(self, batch: PackedBatch) -> dict[str, torch.Tensor | None]:
        """Packed training forward. Returns ``velocity`` [Ng, p*p*z] predicted at the
        latent tokens (flow-matching target eps - x0) and ``logits`` [Nl, vocab] at
        ``logits_index`` (None when not asked)."""
        hidden = self.config.llm.hidden_size
        text = self.embed_text(batch.text_ids)
        seq = text.new_zeros((batch.sequence_length, hidden))
        seq[batch.text_index] = text
        if batch.vit_patches is not None:
            seq[batch.vit_index] = self.embed_vit_patches(batch.vit_patches, batch.vit_position_ids, batch.vit_lengths).to(seq.dtype)
        is_gen = None
        if batch.latent_tokens is not None:
            seq[batch.latent_index] = self.embed_latents(
                batch.latent_tokens, batch.latent_timesteps, batch.latent_position_ids).to(seq.dtype)
            is_gen = torch.zeros(batch.sequence_length, dtype=torch.bool, device=seq.device)
            is_gen[batch.latent_index] = True
        out = self.language_model.model.forward_packed(seq, batch.position_ids, batch.attention_mask, is_gen,
                                                       batch.attention_segments)
        velocity = self.llm2vae(out[batch.latent_index]) if batch.latent_tokens is not None else None
        logits = self.language_model.lm_head(out[batch.logits_index]) if batch.logits_index is not None else None
        return {"velocity": velocity, "logits": logits}
