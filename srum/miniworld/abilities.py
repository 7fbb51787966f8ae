# SPDX-License-Identifier: Apache-2.0
"""``srum miniworld abilities``: what a miniature Bagel can do, measured on held-out data.

Four numbers, each on fixed held-out prompts / scenes and fixed seeds:

* **understanding**: exact-match accuracy of greedy answers to the plain questions of
  :func:`tasks.scene_questions` about *rendered* held-out scenes (existence, colour,
  shape, fill, size, count, relation);
* **generation**: the oracle's accuracy (:mod:`.oracle`) on images the model draws for the
  held-out evaluation prompts, per category, in direct mode and in think mode;
* **judge agreement**: how often the model's own logits-mode judgments of its *own
  generated* images agree with the oracle: the global question on prompts with a
  relation (agree when the expected score is > 0 exactly when the oracle finds the
  relation satisfied), and the local question on a region around every object the oracle
  reads (agree when the score is > 0 exactly when that object has every attribute some
  prompt object asks for). Neutral cases (no relation; background) are not counted.
  Reported *balanced* (the mean of the agreement on oracle-good and on oracle-bad cases),
  so a judge that always answers alike scores 50 %; the raw rate is reported beside it.

Everything runs through the public ``srum`` model API (``understand``, ``generate_image``,
:func:`srum.judge.scoring.judge_image` with the ``self`` backend), so these are the same
code paths the SRUM stages use.
"""
from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass

import numpy as np
import torch

from . import oracle as O
from . import tasks
from . import world as W

log = logging.getLogger("srum.miniworld")

__all__ = ["AbilitiesConfig", "measure_understanding", "measure_generation", "measure_judge_agreement",
           "measure_abilities"]


@dataclass
class AbilitiesConfig:
    """scenes / questions_per_scene: held-out rendered scenes for understanding.
    per_category: held-out prompts per category for generation and judge agreement.
    seed: scene, question and image seeds. judge_wording: the judge's questions ("compact",
    as the shipped model was trained: ``data.judge_wording``, or "rubric" for models of
    stages 1-15); judge_view: how it shows a region ("isolate", as the shipped model was
    trained: ``data.judge_view``, or "coords" for models of stages 1-18). Sampling: the defaults of ``srum eval miniworld``
    (configs/eval/miniworld.yaml): 20 steps, text CFG 3 over the whole schedule, no shift."""

    scenes: int = 300
    questions_per_scene: int = 3
    per_category: int = 50
    seed: int = 0
    num_timesteps: int = 20
    cfg_text_scale: float = 3.0
    cfg_interval: tuple[float, float] = (0.0, 1.0)
    timestep_shift: float = 1.0
    batch_size: int = 32
    think: bool = True
    judge_wording: str = "compact"
    judge_view: str = "isolate"

    def __post_init__(self):   # bad values stop here, not after minutes of drawing
        if self.judge_wording not in ("rubric", "compact"):
            raise ValueError(f"judge_wording must be 'rubric' or 'compact', got {self.judge_wording!r}")
        if self.judge_view not in tasks.REGION_VIEWS:
            raise ValueError(f"judge_view must be one of {list(tasks.REGION_VIEWS)}, got {self.judge_view!r}")


def _normalise(answer: str) -> str:
    return re.sub(r"[^a-z0-9]+", " ", answer.lower()).strip()


def heldout_scenes(n: int, seed: int) -> list[W.Scene]:
    """Rendered-scene material for understanding: scenes of held-out prompts (every
    category), so their combinations never occurred in training."""
    specs = W.eval_prompts(split="heldout", per_category=max(1, -(-n // len(W.CATEGORIES))), seed=seed + 1)
    out = []
    for i, spec in enumerate(specs[:n]):
        out.append(W.sample_scene(spec, np.random.default_rng([seed, 7, i])))
    return out


@torch.no_grad()
def measure_understanding(model, cfg: AbilitiesConfig) -> dict:
    rows = []
    for i, scene in enumerate(heldout_scenes(cfg.scenes, cfg.seed)):
        rng = np.random.default_rng([cfg.seed, 8, i])
        image = W.render(scene)
        rows += [(kind, image, q, a) for kind, q, a in tasks.scene_questions(scene, rng, cfg.questions_per_scene)]
    correct: dict[str, list[int]] = {}
    for start in range(0, len(rows), cfg.batch_size):
        chunk = rows[start:start + cfg.batch_size]
        answers = model.understand([[r[1]] for r in chunk], [r[2] for r in chunk], max_new_tokens=8)
        for (kind, _, _, truth), got in zip(chunk, answers):
            correct.setdefault(kind, []).append(int(_normalise(got) == _normalise(truth)))
    flat = [c for v in correct.values() for c in v]
    return {"accuracy": 100.0 * float(np.mean(flat)), "questions": len(flat),
            "per_kind": {k: 100.0 * float(np.mean(v)) for k, v in sorted(correct.items())}}


def _generate(model, specs, cfg: AbilitiesConfig, think: bool):
    images = []
    for start in range(0, len(specs), cfg.batch_size):
        chunk = specs[start:start + cfg.batch_size]
        out = model.generate_image([s.text for s in chunk], height=W.IMAGE_SIZE, width=W.IMAGE_SIZE,
                                   num_timesteps=cfg.num_timesteps, cfg_text_scale=cfg.cfg_text_scale,
                                   cfg_interval=tuple(cfg.cfg_interval), timestep_shift=cfg.timestep_shift, think=think, max_think_tokens=96,
                                   seed=[cfg.seed * 100003 + start + k for k in range(len(chunk))])
        images += out.images
    return images


def _accuracy_table(specs, images) -> dict:
    """The oracle's verdicts summarised exactly as ``srum eval miniworld`` does (percent)."""
    from .evaluation import summarize_rows, table_values
    rows = []
    for spec, image in zip(specs, images):
        verdict = O.check(spec, image)
        rows.append({"category": spec.category, "score": 100 if verdict.correct else 0, "status": "ok",
                     "num_objects": spec.num_objects, "readable": verdict.readable})
    summary = summarize_rows(rows)
    return {**table_values(summary), "readable": summary["readable"]}


@torch.no_grad()
def measure_generation(model, cfg: AbilitiesConfig) -> tuple[dict, list, list]:
    specs = W.eval_prompts(split="heldout", per_category=cfg.per_category, seed=cfg.seed)
    direct = _generate(model, specs, cfg, think=False)
    result = {"direct": _accuracy_table(specs, direct), "prompts": len(specs)}
    if cfg.think:
        result["think"] = _accuracy_table(specs, _generate(model, specs, cfg, think=True))
    return result, specs, direct


@torch.no_grad()
def measure_judge_agreement(model, specs, images, wording: str = "rubric", view: str = "coords") -> dict:
    from ..judge.backends import SelfJudge
    from ..judge.scoring import JudgeConfig, judge_image
    judge = SelfJudge(model)
    cfg = JudgeConfig(mode="logits", wording=wording, view=tasks.region_view(wording, view), min_scale_mass=0.0, batch_size=16)
    pairs = {"global": [], "local": []}   # (judge says good, oracle says good)
    for spec, image in zip(specs, images):
        verdict = O.check(spec, image)
        objects = verdict.objects
        regions = [{"bbox": list(o.bbox)} for o in objects]
        global_entry, region_entries = judge_image(judge, image, spec.text, regions, cfg)
        if spec.relation is not None and global_entry["status"] == "ok":
            pairs["global"].append((global_entry["score"] > 0, bool(verdict.requirements["relation"])))
        for obj, entry in zip(objects, region_entries):
            if entry["status"] == "ok":
                pairs["local"].append((entry["score"] > 0, any(s.matches(obj) for s in spec.objects)))
    out = {"agreement": _balanced(pairs["global"] + pairs["local"]),
           "judgments": len(pairs["global"]) + len(pairs["local"])}
    for kind, got in pairs.items():
        out[kind] = _balanced(got)
        out[f"{kind}_raw"] = 100.0 * float(np.mean([p == t for p, t in got])) if got else None
        out[f"{kind}_positives"] = sum(t for _, t in got)
        out[f"{kind}_negatives"] = sum(not t for _, t in got)
    return out


def _balanced(pairs: list[tuple[bool, bool]]) -> float | None:
    """Balanced agreement: the mean of the agreement on images the oracle calls good and on
    those it calls bad, so that a judge that always says the same thing scores 50 %."""
    rates = [float(np.mean([p == t for p, t in pairs if t == cls])) for cls in (True, False)
             if any(t == cls for _, t in pairs)]
    return 100.0 * float(np.mean(rates)) if rates else None


def measure_abilities(model, cfg: AbilitiesConfig) -> dict:
    t0 = time.perf_counter()
    out = {"understanding": measure_understanding(model, cfg)}
    log.info("understanding: %.1f %%", out["understanding"]["accuracy"])
    out["generation"], specs, images = measure_generation(model, cfg)
    log.info("generation: %s", out["generation"])
    out["judge_agreement"] = measure_judge_agreement(model, specs, images, cfg.judge_wording, cfg.judge_view)
    log.info("judge agreement: %s", out["judge_agreement"])
    out["seconds"] = time.perf_counter() - t0
    return out
