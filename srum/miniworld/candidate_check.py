# SPDX-License-Identifier: Apache-2.0
"""How good a study's candidates are, and how well the model's own judgments rank them,
measured by the exact oracle.

A diagnostic for the study's report, never an input of training: SRUM's rewards come
from the self-judge alone (``judge/rewards.jsonl``); this module only reads them next
to the oracle's verdict on the same images, so a reader can tell whether a null result
comes from the candidates (few correct ones), from the judge (scores unrelated to
correctness), or from training.

Per seed it reports:

* ``oracle_accuracy``: percent of candidates the oracle calls correct (per category too);
* ``global_auc``: the probability that a correct candidate gets a higher global score than
  a wrong one (ties count half), i.e. the ROC AUC of the global score as a detector of
  correct images: 50 % is a judge that ranks at random, 100 % a perfect ranking. Only
  the *ranking* matters to a reward-weighted loss, so this is threshold-free;
* ``local_auc``: the same for region scores against whether the oracle object the region
  covers (IoU >= 0.5 with its box) has every attribute some prompt object asks for;
  regions that cover no oracle object are left out;
* the mean global score of correct and of wrong candidates.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from . import oracle as O
from . import world as W

__all__ = ["auc", "box_iou", "check_candidates"]

MIN_REGION_IOU = 0.5


def auc(scores: list[float], labels: list[bool]) -> float | None:
    """ROC AUC in percent (Mann-Whitney, ties count half); None without both classes."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=bool)
    pos, neg = s[y], s[~y]
    if not len(pos) or not len(neg):
        return None
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return 100.0 * float(greater + 0.5 * ties) / (len(pos) * len(neg))


def box_iou(a, b) -> float:
    """IoU of two ``(x1, y1, x2, y2)`` boxes."""
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def check_candidates(judge_dir: str | Path, specs: dict[str, W.PromptSpec]) -> dict:
    """The oracle's view of the records of ``judge_dir/rewards.jsonl``; ``specs``: prompt
    text -> its specification (the study's prompt file). Records whose prompt is not in
    ``specs`` or whose image cannot be read are counted in ``skipped``."""
    judge_dir = Path(judge_dir)
    correct, g_scores, g_labels, l_scores, l_labels = [], [], [], [], []
    per_category: dict[str, list[bool]] = {}
    skipped = 0
    with open(judge_dir / "rewards.jsonl", encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            rec = json.loads(line)
            spec = specs.get(rec.get("prompt"))
            try:
                with Image.open(judge_dir / rec["image_file"]) as im:
                    image = im.convert("RGB")
            except (OSError, KeyError):
                image = None
            if spec is None or image is None:
                skipped += 1
                continue
            verdict = O.check(spec, image)
            correct.append(verdict.correct)
            per_category.setdefault(spec.category, []).append(verdict.correct)
            g = rec.get("global") or {}
            if g.get("status") == "ok":
                g_scores.append(float(g["score"]))
                g_labels.append(verdict.correct)
            for region in rec.get("regions") or []:
                if region.get("status") != "ok" or not region.get("bbox"):
                    continue
                best = max(verdict.objects, key=lambda o: box_iou(region["bbox"], o.bbox), default=None)
                if best is None or box_iou(region["bbox"], best.bbox) < MIN_REGION_IOU:
                    continue
                l_scores.append(float(region["score"]))
                l_labels.append(best.shape is not None and any(s.matches(best) for s in spec.objects))
    g_arr, y_arr = np.asarray(g_scores), np.asarray(g_labels, dtype=bool)
    return {
        "images": len(correct), "skipped": skipped,
        "oracle_accuracy": 100.0 * float(np.mean(correct)) if correct else None,
        "oracle_accuracy_by_category": {c: 100.0 * float(np.mean(v)) for c, v in sorted(per_category.items())},
        "global_auc": auc(g_scores, g_labels),
        "global_mean_correct": _mean(list(g_arr[y_arr])), "global_mean_wrong": _mean(list(g_arr[~y_arr])),
        "regions_matched": len(l_scores), "regions_good": int(sum(l_labels)),
        "local_auc": auc(l_scores, l_labels),
    }
