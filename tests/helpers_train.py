# SPDX-License-Identifier: Apache-2.0
"""Shared helpers for the training tests: a tiny reward dataset."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import PIL.Image

from srum.records import SCHEMA

PROMPTS = ["a red cube to the left of a blue sphere", "two green cats under a table",
           "a yellow star above a small house", "three purple balls on a rug",
           "a silver car between two trees", "a pink heart to the right of a gray star"]


def make_record(image_id: str, image_file: str, prompt: str, width: int, height: int, *,
                global_score: float | None = 0.6, regions: list[tuple[list[float], float]] | None = None) -> dict:
    """One srum.reward.v1 record; ``regions`` = [(bbox, score), ...]; global_score None = failed."""
    glob = {"score": global_score, "reason": "", "status": "ok" if global_score is not None else "failed",
            "method": "text", "detail": {}}
    regs = [{"region_id": i, "bbox": list(map(float, box)), "mask": None, "label": f"object {i}", "score": s,
             "reason": "", "status": "ok", "method": "text", "grounding": None, "detail": {}}
            for i, (box, s) in enumerate(regions or [])]
    return {"schema": SCHEMA, "image_id": image_id, "prompt_id": image_id.rsplit("_", 1)[0], "sample_index": 0,
            "image_file": image_file, "reference_image_file": None, "prompt": prompt, "category": None,
            "width": width, "height": height, "global": glob, "regions": regs,
            "judge": {"backend": "self", "model": "tiny", "mode": "text"}}


def write_reward_dataset(out_dir: str | os.PathLike, sizes: list[tuple[int, int]], seed: int = 0,
                         failed_global: tuple[int, ...] = ()) -> Path:
    """Random PNGs of the given (width, height) + rewards.jsonl; returns the JSONL path.
    Record i gets two regions (left half positive, a corner box negative)."""
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    lines = []
    for i, (w, h) in enumerate(sizes):
        pixels = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        name = f"images/sample_{i:03d}_0.png"
        PIL.Image.fromarray(pixels).save(out / name)
        regions = [([0, 0, w / 2, h], 0.8), ([w * 0.75, h * 0.75, w, h], -0.6)]
        rec = make_record(f"sample_{i:03d}_0", name, PROMPTS[i % len(PROMPTS)], w, h,
                          global_score=None if i in failed_global else 0.2 + 0.1 * (i % 5), regions=regions)
        lines.append(json.dumps(rec))
    path = out / "rewards.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
