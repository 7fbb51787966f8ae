# SPDX-License-Identifier: Apache-2.0
"""`srum miniworld pretrain` end to end at minimal sizes: every phase, the published
layout, and a rerun that redoes nothing."""
from __future__ import annotations

import json

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
