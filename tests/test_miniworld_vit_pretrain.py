# SPDX-License-Identifier: Apache-2.0
"""The miniature world's ViT pretraining (srum/miniworld/vit_pretrain.py): per-patch
targets, and that the task is learnt."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from srum.miniworld import world as W
from srum.miniworld.vit_pretrain import ATTRIBUTES, VitPretrainConfig, patch_targets, pretrain_vit
from srum.models.bagel.config import VisionConfig
from srum.models.bagel.siglip import SiglipVisionModel
from srum.models.bagel.tiny import init_weights


def test_patch_targets_name_the_object_centred_in_each_patch():
    scene = W.Scene((
        W.WorldObject("triangle", "blue", "large", "striped", x=40.0, y=12.0),   # row 0, col 2
        W.WorldObject("circle", "red", "small", "solid", x=7.0, y=57.0),         # row 3, col 0
    ))
    t = patch_targets(scene, 16)
    assert {k: v.shape for k, v in t.items()} == {k: (16,) for k in ATTRIBUTES}
    assert [t[k][2] for k in ("shape", "color", "fill", "size")] == [
        W.SHAPES.index("triangle"), list(W.COLORS).index("blue"), W.FILLS.index("striped"), list(W.SIZES).index("large")]
    assert t["shape"][12] == W.SHAPES.index("circle") and t["color"][12] == list(W.COLORS).index("red")
    empty = [i for i in range(16) if i not in (2, 12)]
    assert all(t[k][i] == len(v) for k, v in ATTRIBUTES.items() for i in empty)


def test_two_centres_in_one_patch_keep_the_larger_object():
    small = W.WorldObject("square", "green", "small", "solid", x=17.0, y=17.0)
    large = W.WorldObject("diamond", "yellow", "large", "solid", x=30.0, y=30.0)
    for objects in ((small, large), (large, small)):
        assert patch_targets(W.Scene(objects), 16)["shape"][5] == W.SHAPES.index("diamond")


def test_pretraining_learns_to_name_colours_and_keeps_the_patch_embedding():
    torch.manual_seed(0)
    vit = SiglipVisionModel(VisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                                         num_attention_heads=2, patch_size=16, image_size=64))
    init_weights(vit, 0.02, torch.Generator().manual_seed(0))
    patch = vit.vision_model.embeddings.patch_embedding.weight
    before = patch.detach().clone()
    cfg = VitPretrainConfig(steps=250, batch_size=16, lr=3e-3, warmup_steps=10, eval_scenes=64, log_every=50)
    report = pretrain_vit(vit, cfg, max_patches_per_side=4)
    first, last = report["curve"][0], report["final"]
    assert [c["step"] for c in report["curve"]] == [50, 100, 150, 200, 250]
    assert last["color"] > 55 and last["color"] > first["color"] + 30      # chance: 1 in 6
    assert last["object"] > 90 and last["loss"] < first["loss"]
    assert torch.equal(patch, before) and patch.requires_grad            # frozen while training, then released


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="vit.batch_size"):
        VitPretrainConfig(batch_size=0)
    with pytest.raises(ValueError, match="vit.lr"):
        VitPretrainConfig(lr=0)
