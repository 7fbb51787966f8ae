# SPDX-License-Identifier: Apache-2.0
"""The shipped miniature Bagel (models/miniworld): it loads through the real loader and
reproduces the numbers recorded beside it on a small fixed set (models/miniworld/check.json,
written by `srum miniworld abilities --out models/miniworld/check.json` with the settings stored
there). CPU float32 inference is deterministic on one machine; the tolerance allows for other
BLAS builds flipping an image or an answer."""
from __future__ import annotations

import json

import pytest

import srum
from srum.miniworld import DEFAULT_MODEL_DIR
from srum.miniworld.abilities import AbilitiesConfig, measure_generation, measure_understanding

CHECK = DEFAULT_MODEL_DIR / "check.json"
TOLERANCE_POINTS = 5.0


@pytest.fixture(scope="module")
def shipped():
    assert CHECK.is_file(), f"{CHECK} is missing: the embedded model ships with its recorded numbers"
    recorded = json.loads(CHECK.read_text())
    model = srum.load_model(DEFAULT_MODEL_DIR, dtype="float32", device="cpu")
    return model, recorded


def test_shipped_model_is_small_and_in_the_published_layout():
    names = {p.name for p in DEFAULT_MODEL_DIR.iterdir()}
    assert {"llm_config.json", "vit_config.json", "ae.safetensors", "ema.safetensors", "tokenizer.json"} <= names
    assert sum(p.stat().st_size for p in DEFAULT_MODEL_DIR.iterdir()) <= 30 * 2 ** 20


def test_shipped_model_reproduces_its_recorded_numbers(shipped):
    model, recorded = shipped
    cfg = AbilitiesConfig(**recorded["config"])
    understanding = measure_understanding(model, cfg)
    generation, _, _ = measure_generation(model, cfg)
    tol = TOLERANCE_POINTS
    assert understanding["questions"] == recorded["understanding"]["questions"]
    assert abs(understanding["accuracy"] - recorded["understanding"]["accuracy"]) <= tol
    for mode in ("direct", "think"):
        for key in ("overall", "single_object", "multi_object"):
            assert abs(generation[mode][key] - recorded["generation"][mode][key]) <= tol, (mode, key)
