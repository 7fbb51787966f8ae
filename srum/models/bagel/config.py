# SPDX-License-Identifier: Apache-2.0
"""Configuration of a Bagel model, read from the published checkpoint files.

A BAGEL-7B-MoT directory records the language model in ``llm_config.json`` (a Qwen2
``config.json``) and the vision tower in ``vit_config.json`` (a SigLIP vision config).
Everything else the model needs (latent grid size, ViT position table size, latent
patch size, the autoencoder's widths) is not written anywhere; the reference scripts
hard-code it. We infer those numbers from tensor shapes in the weight files instead
(see :mod:`srum.models.bagel.checkpoint`), so checkpoints of any size load.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Mapping

from .autoencoder import AutoEncoderParams


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable or inconsistent. The message names the file."""


def _read_json(path: str | os.PathLike) -> dict[str, Any]:
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: file not found")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _take(cls, data: Mapping[str, Any], source: str, required: tuple[str, ...]):
    """Build dataclass ``cls`` from the known keys of ``data``; unknown keys are ignored
    (the published files carry many HF bookkeeping fields we do not need)."""
    missing = [k for k in required if k not in data]
    if missing:
        raise CheckpointError(f"{source}: missing field(s) {', '.join(missing)}")
    known = {f.name for f in fields(cls)}
    kwargs = {k: v for k, v in data.items() if k in known}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{source}: {err}") from err


@dataclass
class LanguageModelConfig:
    """The Qwen2 decoder. Field names follow ``llm_config.json``.

    Bagel always uses qk-norm and the Mixture-of-Transformers layer (the reference
    scripts force both), so neither is read from the file."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    hidden_act: str = "silu"
    max_position_embeddings: int = 32768
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None
    head_dim: int | None = None

    def __post_init__(self):
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads={self.num_attention_heads} is not a multiple of "
                f"num_key_value_heads={self.num_key_value_heads}")
        if self.rope_scaling not in (None, {}) and self.rope_scaling.get("rope_type", self.rope_scaling.get("type")) != "default":
            raise ValueError(f"rope_scaling={self.rope_scaling} is not supported (Bagel uses plain RoPE)")
        if self.hidden_act != "silu":
            raise ValueError(f"hidden_act={self.hidden_act!r} is not supported (Qwen2 uses 'silu')")

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> "LanguageModelConfig":
        return _take(cls, _read_json(path), str(path), (
            "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
            "num_attention_heads", "num_key_value_heads"))

    def to_json_dict(self) -> dict[str, Any]:
        # Written in the Qwen2 config.json shape so other tools read it too.
        data = asdict(self)
        data.update(model_type="qwen2", architectures=["Qwen2ForCausalLM"],
                    tie_word_embeddings=False, torch_dtype="bfloat16")
        return data


@dataclass
class VisionConfig:
    """The SigLIP vision tower. Field names follow ``vit_config.json``.

    ``num_hidden_layers`` is the depth recorded in the file. Bagel drops the last
    encoder layer (it uses the penultimate layer's features), so the model built
    has ``num_hidden_layers - 1`` layers: see :attr:`num_layers_used`."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    patch_size: int
    image_size: int
    num_channels: int = 3
    hidden_act: str = "gelu_pytorch_tanh"
    layer_norm_eps: float = 1e-6

    def __post_init__(self):
        if self.num_hidden_layers < 2:
            raise ValueError(f"num_hidden_layers={self.num_hidden_layers}: need at least 2 (the last one is dropped)")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size={self.image_size} is not a multiple of patch_size={self.patch_size}")

    @property
    def num_layers_used(self) -> int:
        return self.num_hidden_layers - 1

    @property
    def num_positions(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> "VisionConfig":
        return _take(cls, _read_json(path), str(path), (
            "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "patch_size", "image_size"))

    def to_json_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(model_type="siglip_vision_model")
        return data


@dataclass
class BagelConfig:
    """Everything needed to build a :class:`~srum.models.bagel.model.Bagel`.

    The last four fields are not recorded in the published directory; the loader
    infers them from tensor shapes (``latent_pos_embed.pos_embed`` is
    ``[max_latent_size**2, hidden]``, ``vit_pos_embed.pos_embed`` is
    ``[vit_max_patches_per_side**2, hidden]``, ``vae2llm.weight`` is
    ``[hidden, latent_patch_size**2 * z_channels]``)."""

    llm: LanguageModelConfig
    vit: VisionConfig
    vae: AutoEncoderParams = field(default_factory=AutoEncoderParams)
    max_latent_size: int = 64
    vit_max_patches_per_side: int = 70
    latent_patch_size: int = 2
    connector_act: str = "gelu_pytorch_tanh"

    @property
    def latent_channels(self) -> int:
        return self.vae.z_channels

    @property
    def patch_latent_dim(self) -> int:
        """Numbers per generation token: a p x p patch of the latent, all channels."""
        return self.latent_patch_size ** 2 * self.vae.z_channels

    @property
    def latent_downsample(self) -> int:
        """Pixels per generation token side (VAE downsample x latent patch)."""
        return self.vae.downsample * self.latent_patch_size

    @property
    def max_image_side(self) -> int:
        """Largest image side the latent position table covers."""
        return self.max_latent_size * self.latent_downsample


def square_side(rows: int, name: str) -> int:
    """Side of a square position table with ``rows`` entries (``rows == side**2``)."""
    side = math.isqrt(rows)
    if side * side != rows:
        raise CheckpointError(f"{name}: {rows} rows is not a square grid")
    return side
