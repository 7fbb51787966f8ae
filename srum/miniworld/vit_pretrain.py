# SPDX-License-Identifier: Apache-2.0
"""The miniature world's SigLIP: the ViT learns to see before the model learns to talk about it.

BAGEL-7B-MoT never learns vision from its own answers: its ViT starts as SigLIP, an
encoder trained beforehand on hundreds of millions of image-text pairs. The miniature
model has no such encoder, and learning one through the answer tokens alone was measured
to fail within the CPU budget: after 7300 steps of ``srum train`` the model read colour
but answered shape questions at chance (TRAIN.md, "The miniature world"), while the same
ViT given a direct, dense target reads shape in about a thousand small steps.

This module is that earlier, separate training, done on the world itself: every patch
token predicts the attributes (shape, colour, fill, size, or "no object") of the object
whose box centre falls in that patch, with one linear head per attribute on the ViT's
last features. The heads are thrown away afterwards; only the ViT's weights go into the
Bagel, and the connector and LLM then learn to read it with ``srum train`` as usual.

Scenes come from :func:`world.sample_training_scene` (1-4 objects, never a held-out
colour-shape combination). Images go through the same preprocessing as the model's
understanding path (``[-1, 1]`` pixels, :func:`patchify`, :func:`flattened_position_ids`).
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..models.bagel.siglip import SiglipVisionModel
from ..models.bagel.transforms import flattened_position_ids, patchify
from . import world as W

log = logging.getLogger("srum.miniworld")

__all__ = ["VitPretrainConfig", "ATTRIBUTES", "patch_targets", "pretrain_vit", "measure_vit"]

# the attributes each patch predicts; class len(values) means "no object centred here"
ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "shape": W.SHAPES, "color": tuple(W.COLORS), "fill": W.FILLS, "size": tuple(W.SIZES),
}


@dataclass
class VitPretrainConfig:
    """steps: optimiser steps (0: no ViT pretraining). batch_size: scenes per step.
    lr / warmup_steps: AdamW peak rate (weight decay 0) after a linear warm-up, then cosine
    to 10 %. freeze_patch_embedding: keep the zero-mean patch embedding fixed (Adam
    otherwise inflates the black background's response; :func:`tiny.zero_mean_patch_embedding`).
    eval_scenes: held-aside scenes (their own seed) measured every ``log_every`` steps
    and at the end. seed: scenes and head initialisation."""

    steps: int = 0
    batch_size: int = 64
    lr: float = 1.0e-3
    warmup_steps: int = 50
    freeze_patch_embedding: bool = True
    eval_scenes: int = 400
    log_every: int = 200
    seed: int = 0

    def __post_init__(self):
        for name in ("steps", "warmup_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"vit.{name} must be >= 0, got {getattr(self, name)}")
        for name in ("batch_size", "eval_scenes", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"vit.{name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"vit.lr must be > 0, got {self.lr}")


def patch_targets(scene: W.Scene, patch_size: int) -> dict[str, np.ndarray]:
    """Per-patch class indices ``{attribute: [grid * grid]}`` (row-major) for ``scene``:
    the object whose box centre lies in a patch gives that patch its attributes; patches
    with none get the "no object" class. Two centres in one patch (rare: objects do not
    overlap) keep the larger object, then the first."""
    grid = W.IMAGE_SIZE // patch_size
    targets = {k: np.full(grid * grid, len(v), dtype=np.int64) for k, v in ATTRIBUTES.items()}
    owner_extent = np.zeros(grid * grid)
    for obj in scene.objects:
        cell = min(int(obj.y // patch_size), grid - 1) * grid + min(int(obj.x // patch_size), grid - 1)
        if obj.extent <= owner_extent[cell]:
            continue
        owner_extent[cell] = obj.extent
        for name, values in ATTRIBUTES.items():
            targets[name][cell] = values.index(getattr(obj, name))
    return targets


def _batch(rng: np.random.Generator, n: int, patch_size: int, max_per_side: int):
    """``n`` random training scenes -> (patches [n*g*g, 3*p*p], position ids, lengths, targets)."""
    pixels, targets = [], {k: [] for k in ATTRIBUTES}
    for _ in range(n):
        scene = W.sample_training_scene(rng)
        image = torch.from_numpy(np.asarray(W.render(scene), dtype=np.float32)).permute(2, 0, 1) / 127.5 - 1
        pixels.append(patchify(image, patch_size))
        for name, t in patch_targets(scene, patch_size).items():
            targets[name].append(t)
    per_image = pixels[0].shape[0]
    pos = flattened_position_ids(W.IMAGE_SIZE, W.IMAGE_SIZE, patch_size, max_per_side)
    return (torch.cat(pixels), pos.repeat(n), torch.full((n,), per_image, dtype=torch.long),
            {k: torch.from_numpy(np.concatenate(v)) for k, v in targets.items()})


def _heads(width: int, generator: torch.Generator) -> nn.ModuleDict:
    heads = nn.ModuleDict({k: nn.Linear(width, len(v) + 1) for k, v in ATTRIBUTES.items()})
    for head in heads.values():
        head.weight.data = torch.randn(head.weight.shape, generator=generator) / width ** 0.5
        head.bias.data.zero_()
    return heads


@torch.no_grad()
def measure_vit(vit: SiglipVisionModel, heads: nn.ModuleDict, batch, device) -> dict[str, float]:
    """Accuracy (%) of each attribute on the patches that hold an object's centre, and of
    telling such patches from empty ones (``object``)."""
    patches, pos, lengths, targets = batch
    was_training = vit.training
    vit.eval()
    features = vit(patches.to(device), pos.to(device), lengths.to(device)).float()
    vit.train(was_training)
    has_object = targets["shape"].to(device) != len(ATTRIBUTES["shape"])
    out = {}
    for name in ATTRIBUTES:
        pred = heads[name](features).argmax(-1)
        out[name] = 100.0 * (pred[has_object] == targets[name].to(device)[has_object]).float().mean().item()
    found = heads["shape"](features).argmax(-1) != len(ATTRIBUTES["shape"])
    out["object"] = 100.0 * (found == has_object).float().mean().item()
    return out


def pretrain_vit(vit: SiglipVisionModel, cfg: VitPretrainConfig, max_patches_per_side: int,
                 device: torch.device | str = "cpu") -> dict:
    """Train ``vit`` in place on the per-patch attribute task; returns the curve (loss and
    held-aside accuracies every ``log_every`` steps), the final accuracies and the time."""
    device = torch.device(device)
    patch = vit.cfg.patch_size
    if W.IMAGE_SIZE % patch:
        raise ValueError(f"vit patch_size {patch} does not divide the world's {W.IMAGE_SIZE}-px images")
    gen = torch.Generator().manual_seed(cfg.seed)
    heads = _heads(vit.cfg.hidden_size, gen).to(device)
    vit.to(device).train()
    patch_embedding = vit.vision_model.embeddings.patch_embedding.weight
    frozen = patch_embedding.requires_grad and cfg.freeze_patch_embedding
    if frozen:
        patch_embedding.requires_grad_(False)
    params = [p for p in list(vit.parameters()) + list(heads.parameters()) if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)

    def rate(step: int) -> float:   # linear warm-up, then cosine to 10 % of the peak
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, rate)

    rng = np.random.default_rng([cfg.seed, 1])
    held = _batch(np.random.default_rng([cfg.seed, 2]), cfg.eval_scenes, patch, max_patches_per_side)
    curve, t0 = [], time.perf_counter()
    try:
        for step in range(1, cfg.steps + 1):
            patches, pos, lengths, targets = _batch(rng, cfg.batch_size, patch, max_patches_per_side)
            features = vit(patches.to(device), pos.to(device), lengths.to(device)).float()
            loss = sum(F.cross_entropy(heads[k](features), targets[k].to(device)) for k in ATTRIBUTES)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if step % cfg.log_every == 0 or step == cfg.steps:
                acc = measure_vit(vit, heads, held, device)
                curve.append({"step": step, "loss": round(loss.item(), 4), **{k: round(v, 2) for k, v in acc.items()}})
                log.info("vit pretraining: step %d loss %.3f held-aside %s", step, loss.item(),
                         " ".join(f"{k} {v:.1f}" for k, v in acc.items()))
    finally:
        if frozen:
            patch_embedding.requires_grad_(True)
    final = curve[-1] if curve else {}
    return {"steps": cfg.steps, "curve": curve, "final": final, "seconds": time.perf_counter() - t0}
