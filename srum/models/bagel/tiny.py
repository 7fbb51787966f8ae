# SPDX-License-Identifier: Apache-2.0
"""Random tiny Bagel checkpoints in the published layout, for tests and demos.

``write_tiny_checkpoint(out_dir)`` trains a small real BPE tokenizer, builds a Bagel
from ``configs/model/tiny.yaml`` with random weights (deterministic for a seed) and
saves it with :func:`checkpoint.save_model`, i.e. through exactly the files and key
names a BAGEL-7B-MoT download has. Loading it therefore exercises the real loader.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
import yaml
from torch import nn

from .autoencoder import AutoEncoderParams
from .checkpoint import save_model
from .config import BagelConfig, LanguageModelConfig, VisionConfig
from .layers import RMSNorm
from .model import Bagel
from .tokenizer import write_tiny_tokenizer

REPO_ROOT = Path(__file__).resolve().parents[3]
TINY_CONFIG = REPO_ROOT / "configs" / "model" / "tiny.yaml"


def load_tiny_spec(path: str | os.PathLike | None = None) -> dict:
    path = Path(path) if path is not None else TINY_CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"{path}: tiny model config not found")
    with open(path, encoding="utf-8") as f:
        spec = yaml.safe_load(f)
    for section in ("tokenizer", "llm", "vit", "vae"):
        if not isinstance(spec.get(section), dict):
            raise ValueError(f"{path}: section '{section}' missing or not a mapping")
    return spec


def init_weights(module: nn.Module, std: float, generator: torch.Generator) -> None:
    """Linear / embedding / conv weights and biases ~ N(0, std); norm gains 1 + N(0, std)."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Embedding, nn.Conv2d)):
            m.weight.data = torch.randn(m.weight.shape, generator=generator) * std
            if getattr(m, "bias", None) is not None:
                m.bias.data = torch.randn(m.bias.shape, generator=generator) * std
        elif isinstance(m, (RMSNorm, nn.LayerNorm, nn.GroupNorm)):
            # gains near 1, not exactly 1, so that a swapped norm changes the output
            m.weight.data = 1 + torch.randn(m.weight.shape, generator=generator) * std
            if getattr(m, "bias", None) is not None:
                m.bias.data = torch.randn(m.bias.shape, generator=generator) * std


def zero_mean_patch_embedding(model: Bagel) -> None:
    """Centre every row of the ViT patch embedding: a uniform grey patch (the miniature
    world's black background among them) then maps to the bias alone, and a patch's
    embedding is its content. Why: with random rows the background's response is as large
    as an object's, and Adam, whose step on a row is about the same for each of its
    3 * p * p inputs when they are all the background value, grows that response by about
    lr * 3 * p * p per step (768 at p = 16): measured on the miniature model, it reached a
    norm of 390 against object differences of 3, and the ViT carried nothing of the
    picture. A colour still changes the response (its channels differ)."""
    weight = model.vit_model.vision_model.embeddings.patch_embedding.weight
    weight.data -= weight.data.mean(dim=1, keepdim=True)


def fan_in_connector(model: Bagel, generator: torch.Generator) -> None:
    """Connector weights ~ N(0, 1 / fan_in), so that its output is as large as its input.
    Why: an image token is ``connector(ViT features) + vit_pos_embed`` and the 2-D sin-cos
    table has a norm of sqrt(hidden / 2) (8 at width 128); with small random weights
    (std 0.02) the picture's part is about 0.04 % of the token, the LLM cannot see it, and
    training never finds it (measured on the miniature model)."""
    for linear in (model.connector.fc1, model.connector.fc2):
        linear.weight.data = torch.randn(linear.weight.shape, generator=generator) / linear.in_features ** 0.5


CONNECTOR_INITS = ("init_std", "fan_in")


def _tower_rules(model: Bagel, spec: dict, generator: torch.Generator) -> None:
    """The understanding tower's init options of a model config, after ``init_weights``."""
    if spec.get("vit_patch_zero_mean", False):
        zero_mean_patch_embedding(model)
    rule = spec.get("connector_init", "init_std")
    if rule not in CONNECTOR_INITS:
        raise ValueError(f"connector_init must be one of {list(CONNECTOR_INITS)}, got {rule!r}")
    if rule == "fan_in":
        fan_in_connector(model, generator)


def reinit_understanding_tower(model: Bagel, spec: dict, seed: int) -> None:
    """Fresh ViT and connector weights by the model config's rules (``init_std``,
    ``vit_patch_zero_mean``, ``connector_init``); the rest of ``model`` is untouched."""
    generator = torch.Generator().manual_seed(seed)
    std = float(spec.get("init_std", 0.05))
    init_weights(model.vit_model, std, generator)
    init_weights(model.connector, std, generator)
    _tower_rules(model, spec, generator)


def _init_weights(model: Bagel, spec: dict, generator: torch.Generator) -> None:
    init_weights(model, float(spec.get("init_std", 0.05)), generator)
    _tower_rules(model, spec, generator)
    model.reset_position_tables()


def build_tiny_model(vocab_size: int, spec: dict, seed: int = 0) -> Bagel:
    llm_spec = dict(spec["llm"])
    multiple = int(llm_spec.pop("vocab_multiple", 1))
    llm = LanguageModelConfig(vocab_size=-(-vocab_size // multiple) * multiple, **llm_spec)
    vae_spec = dict(spec["vae"])
    vae_spec["ch_mult"] = tuple(vae_spec["ch_mult"])
    config = BagelConfig(
        llm=llm, vit=VisionConfig(**spec["vit"]), vae=AutoEncoderParams(**vae_spec),
        max_latent_size=int(spec.get("max_latent_size", 32)),
        vit_max_patches_per_side=int(spec.get("vit_max_patches_per_side", 70)),
        latent_patch_size=int(spec.get("latent_patch_size", 2)),
    )
    model = Bagel(config)
    _init_weights(model, spec, torch.Generator().manual_seed(seed))
    return model


def write_tiny_checkpoint(out_dir: str | os.PathLike, seed: int = 0, config_path: str | os.PathLike | None = None) -> Path:
    """Write a random tiny model to ``out_dir`` in the BAGEL-7B-MoT layout."""
    spec = load_tiny_spec(config_path)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    vocab = write_tiny_tokenizer(out, vocab_size=int(spec["tokenizer"].get("vocab_size", 512)))
    model = build_tiny_model(vocab, spec, seed)
    return save_model(model, out)  # model.tokenizer is None: its files are already written
