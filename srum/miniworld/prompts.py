# SPDX-License-Identifier: Apache-2.0
"""Prompt files of the miniature world, in the formats ``srum generate`` reads.

``write_prompt_file(path, split, per_category, seed)`` writes
:func:`~srum.miniworld.world.eval_prompts` of those settings (distinct texts per
category, deterministic) as

* ``.jsonl``: ``{"id", "prompt", "category", "spec"}`` per line (``spec``: the prompt as
  :meth:`PromptSpec.to_dict`, ignored by the prompt reader, kept for tools that score
  with the oracle);
* ``.json``: the reference's array of ``{"Question", "Category", "Question_id"}``.

Ids are ``mw_<split>_<category>_<index:04d>`` (``.json``: the running number, as the
reference's integer ``Question_id``). The training split never contains a held-out
combination (:mod:`.world`); its single-object prompts can share a text with the
held-out evaluation set, as in the world's own split. ``srum miniworld prompts`` is the
command; the shipped ``data/prompts/miniworld_train.jsonl`` (registry name
``miniworld_train``) was written by
``srum miniworld prompts --split train --per-category 200 --seed 1 --out data/prompts/miniworld_train.jsonl``.
"""
from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Sequence

from ..fileio import atomic_write_text
from . import world as W

__all__ = ["prompt_rows", "write_prompt_file"]


def prompt_rows(split: str = "train", per_category: int = 200, seed: int = 1,
                categories: Sequence[str] | None = None) -> list[dict]:
    """``[{"id", "prompt", "category", "spec"}]``, category by category (None: all 6)."""
    specs = W.eval_prompts(split, per_category, seed, tuple(categories or W.CATEGORIES))
    index: Counter = Counter()
    rows = []
    for spec in specs:
        rows.append({"id": f"mw_{split}_{spec.category}_{index[spec.category]:04d}", "prompt": spec.text,
                     "category": spec.category, "spec": spec.to_dict()})
        index[spec.category] += 1
    return rows


def write_prompt_file(path: str | os.PathLike, split: str = "train", per_category: int = 200, seed: int = 1,
                      categories: Sequence[str] | None = None) -> dict:
    """Write the prompts (format by extension: ``.jsonl`` or ``.json``); returns counts."""
    path = Path(path)
    rows = prompt_rows(split, per_category, seed, categories)
    if path.suffix.lower() == ".jsonl":
        text = "".join(json.dumps(r) + "\n" for r in rows)
    elif path.suffix.lower() == ".json":
        text = json.dumps([{"Question": r["prompt"], "Category": r["category"], "Question_id": i}
                           for i, r in enumerate(rows)], indent=1) + "\n"
    else:
        raise ValueError(f"{path}: write .jsonl or .json (the reference format)")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, text)
    return {"path": str(path), "prompts": len(rows), "split": split, "seed": seed,
            "per_category": dict(Counter(r["category"] for r in rows))}
