# SPDX-License-Identifier: Apache-2.0
"""`srum miniworld pretrain` end to end at minimal sizes: every phase, the published
layout, and a rerun that redoes nothing."""
from __future__ import annotations

import json

import pytest
import torch

import srum
from srum.miniworld.pretrain import load_pretrain_config, pretrain


def test_pretrain_phases_export_a_loadable_model_and_rerun_is_a_no_op(tmp_path):
    cfg = load_pretrain_config("configs/miniworld/pretrain_tiny.yaml", [f"out_dir={tmp_path / 'run'}"])
    report = pretrain(cfg)
    run = tmp_path / "run"
    for phase in ("init", "train", "model"):
        assert (run / phase / "done.json").is_file()
    assert report["train"]["summary"]["step"] == 3
    rows = {n: sum(1 for _ in open(run / "data" / n)) for n in ("t2i.jsonl", "cot.jsonl", "vqa.jsonl")}
    assert rows["t2i.jsonl"] == rows["cot.jsonl"] == 48 and rows["vqa.jsonl"] > 24 * 3
    model = srum.load_model(run / "model", dtype="float32", device="cpu")
    assert model.config.vit.patch_size == 16 and model.config.max_latent_size == 4
    image = model.generate_image("a red circle", height=64, width=64, num_timesteps=2, seed=0).images[0]
    assert image.size == (64, 64)
    assert isinstance(model.understand(image, "What colour is the circle?", max_new_tokens=3), str)

    stamps = {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()}
    again = pretrain(cfg)
    assert again["train"] == report["train"]
    changed = [p for p, t in stamps.items() if p.stat().st_mtime_ns != t and p.name != "pretrain_report.json"
               and p.name != "pretrain_config.json"]
    assert changed == []
    assert json.loads((run / "init" / "done.json").read_text())["vocab_size"] > 256

    # a further stage: fresh ViT and connector by the model config's rule, the ViT pretrained
    # on its own (srum/miniworld/vit_pretrain.py), vqa rows only
    from safetensors.torch import load_file
    stage = load_pretrain_config("configs/miniworld/pretrain_tiny.yaml", [
        f"out_dir={tmp_path / 'stage2'}", f"init_from={run / 'model'}", "reinit_vit=true", "samples=[vqa]", "seed=5",
        "vit.steps=4", "vit.batch_size=4", "vit.eval_scenes=8", "vit.log_every=2"])
    pretrain(stage)
    vit_report = json.loads((tmp_path / "stage2" / "init" / "done.json").read_text())["vit_pretraining"]
    assert [c["step"] for c in vit_report["curve"]] == [2, 4] and "shape" in vit_report["final"]
    before = load_file(str(run / "model" / "ema.safetensors"))
    after = load_file(str(tmp_path / "stage2" / "init" / "ema.safetensors"))
    assert before.keys() == after.keys()
    tower = [k for k in before if k.startswith(("vit_model.", "connector."))]
    assert tower and all(not torch.equal(before[k], after[k]) for k in tower)
    assert all(torch.equal(before[k], after[k]) for k in before if k not in tower)
    patch = after["vit_model.vision_model.embeddings.patch_embedding.weight"]
    assert patch.mean(dim=1).abs().max() < 1e-6      # configs/model/miniworld.yaml: vit_patch_zero_mean
    trained = (tmp_path / "stage2" / "train" / "config.yaml").read_text()
    assert "vqa.jsonl" in trained and "t2i.jsonl" not in trained and "cot.jsonl" not in trained
    with pytest.raises(ValueError, match="samples must be a non-empty subset"):
        load_pretrain_config("configs/miniworld/pretrain_tiny.yaml", ["samples=[images]"])
    with pytest.raises(ValueError, match="vit.steps > 0 with init_from needs reinit_vit"):
        load_pretrain_config("configs/miniworld/pretrain_tiny.yaml", [f"init_from={run / 'model'}", "vit.steps=5"])
    with pytest.raises(ValueError, match="reinit_vit needs init_from"):
        load_pretrain_config("configs/miniworld/pretrain_tiny.yaml", ["reinit_vit=true"])
    fc2 = after["connector.fc2.weight"]                # connector_init: fan_in
    assert 0.8 < float(fc2.std() * fc2.shape[1] ** 0.5) < 1.2
