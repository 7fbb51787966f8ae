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


def _init_weights(model: Bagel, std: float, generator: torch.Generator) -> None:
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Embedding, nn.Conv2d)):
            module.weight.data = torch.randn(module.weight.shape, generator=generator) * std
            if getattr(module, "bias", None) is not None:
                module.bias.data = torch.randn(module.bias.shape, generator=generator) * std
        elif isinstance(module, (RMSNorm, nn.LayerNorm, nn.GroupNorm)):
            # gains near 1, not exactly 1, so that a swapped norm changes the output
            module.weight.data = 1 + torch.randn(module.weight.shape, generator=generator) * std
            if getattr(module, "bias", None) is not None:
                module.bias.data = torch.randn(module.bias.shape, generator=generator) * std
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
    _init_weights(model, float(spec.get("init_std", 0.05)), torch.Generator().manual_seed(seed))
    return model


def write_tiny_checkpoint(out_dir: str | os.PathLike, seed: int = 0, config_path: str | os.PathLike | None = None) -> Path:
    """Write a random tiny model to ``out_dir`` in the BAGEL-7B-MoT layout."""
    spec = load_tiny_spec(config_path)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    vocab = write_tiny_tokenizer(out, vocab_size=int(spec["tokenizer"].get("vocab_size", 512)))
    model = build_tiny_model(vocab, spec, seed)
    return save_model(model, out)  # model.tokenizer is None: its files are already written
