# SPDX-License-Identifier: Apache-2.0
"""Self-grounding filter: the model's own understanding decides which regions matter.

The SRUM paper keeps only proposals that show something the prompt asks for (objects,
their attributes, relevant background); the reference code skips this step. For every
region we show it to the model (:func:`srum.regions.show_region`) and ask a yes/no
question, reading P(yes) from the next-token distribution of a single forward
(``Bagel.choice_probabilities``), several regions per forward. No text is generated,
so there is nothing to parse and nothing that can fail to parse.

Keep rule (:class:`GroundingConfig`), with regions ranked by ``p_relevant``, highest
first (ties: earlier region first, i.e. the larger one after cleanup):

1. keep every region with ``p_relevant >= threshold``;
2. if fewer than ``min_keep`` are kept, add the best-ranked others until ``min_keep``
   (or until none are left), so an image is not left without regions;
3. if ``max_keep`` is set and more are kept, keep only the ``max_keep`` best-ranked.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import PIL.Image
import torch

from srum.regions import RegionView, show_region

YES_NO = [["Yes", "yes"], ["No", "no"]]

# Placeholders: {prompt} = the generation prompt, {region} = the phrase from show_region.
DEFAULT_QUESTION = (
    'This image was generated for the prompt: "{prompt}".\n'
    "Consider {region}. Does it show something the prompt asks for: one of the objects it "
    "mentions, an attribute of such an object, or a part of the background the prompt "
    "describes? Answer yes or no."
)
# The compact wording (``wording: compact``): the same question in a few words, for a small
# model trained on its own relevance rows (the miniature world; see srum.judge.rubric).
COMPACT_QUESTION = 'Prompt: "{prompt}".\nRegion: {region}.\nIs the region relevant? Yes or no.'
QUESTIONS = {"full": DEFAULT_QUESTION, "compact": COMPACT_QUESTION}


@dataclass
class GroundingConfig:
    """The self-grounding filter.

    * ``enabled``: ask the model; when false every region is kept and its ``grounding``
      is ``None``.
    * ``view``: how a region is shown (:class:`srum.regions.RegionView`).
    * ``threshold``: keep a region when ``p_relevant >= threshold``.
    * ``min_keep``: keep at least this many (the most probable) even below the
      threshold; 0 allows an image with no kept region.
    * ``max_keep``: keep at most this many (the most probable); ``None``: no limit.
    * ``batch_size``: regions per model forward.
    * ``wording``: "full" (:data:`DEFAULT_QUESTION`) or "compact" (:data:`COMPACT_QUESTION`).
    * ``question``: the question template, overriding ``wording``; ``None`` uses the
      wording's. Must contain ``{prompt}`` and ``{region}``.
    """

    enabled: bool = True
    view: RegionView = field(default_factory=RegionView)
    threshold: float = 0.5
    min_keep: int = 1
    max_keep: int | None = None
    batch_size: int = 8
    wording: str = "full"
    question: str | None = None

    def __post_init__(self):
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {self.threshold}")
        if self.min_keep < 0:
            raise ValueError(f"min_keep must be >= 0, got {self.min_keep}")
        if self.max_keep is not None and self.max_keep < max(self.min_keep, 1):
            raise ValueError(f"max_keep must be >= max(min_keep, 1) or null, got {self.max_keep} "
                             f"(min_keep {self.min_keep})")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.wording not in QUESTIONS:
            raise ValueError(f"wording must be one of {list(QUESTIONS)}, got {self.wording!r}")
        if self.question is not None:
            for key in ("{prompt}", "{region}"):
                if key not in self.question:
                    raise ValueError(f"question must contain {key}")
            try:
                self.question.format(prompt="", region="")
            except (KeyError, IndexError, ValueError) as err:
                raise ValueError(f"question: bad template ({type(err).__name__}: {err}); "
                                 "only {prompt} and {region} may appear in braces") from None

    def question_for(self, prompt: str, region_phrase: str) -> str:
        return (self.question or QUESTIONS[self.wording]).format(prompt=prompt, region=region_phrase)


def select_kept(p_relevant: Sequence[float], cfg: GroundingConfig) -> tuple[list[bool], dict]:
    """Apply the keep rule (module docstring) to probabilities in region order.

    Returns per-region kept flags and counts: ``above_threshold``, ``added_by_min_keep``,
    ``removed_by_max_keep``, ``kept``."""
    ranked = sorted(range(len(p_relevant)), key=lambda i: -p_relevant[i])  # stable: ties keep region order
    kept = [i for i in ranked if p_relevant[i] >= cfg.threshold]
    above = len(kept)
    if len(kept) < cfg.min_keep:
        kept = ranked[:min(cfg.min_keep, len(ranked))]
    added = len(kept) - above
    removed = 0
    if cfg.max_keep is not None and len(kept) > cfg.max_keep:
        removed = len(kept) - cfg.max_keep
        kept = kept[:cfg.max_keep]
    flags = [False] * len(p_relevant)
    for i in kept:
        flags[i] = True
    return flags, {"above_threshold": above, "added_by_min_keep": added, "removed_by_max_keep": removed,
                   "kept": len(kept)}


@torch.no_grad()
def relevance_probabilities(model, image: PIL.Image.Image, prompt: str, regions: Sequence[dict],
                            cfg: GroundingConfig) -> tuple[list[float], list[float], int]:
    """P(yes) and the yes/no probability mass per region, ``cfg.batch_size`` regions per
    forward. Returns ``(p_relevant, mass, forwards)``."""
    p_relevant: list[float] = []
    mass: list[float] = []
    forwards = 0
    for start in range(0, len(regions), cfg.batch_size):
        images, questions = [], []
        for region in regions[start:start + cfg.batch_size]:
            shown, phrase = show_region(image, region["bbox"], cfg.view)
            images.append(shown)
            questions.append(cfg.question_for(prompt, phrase))
        probs, yes_no_mass = model.choice_probabilities(images, questions, YES_NO)
        p_relevant += [float(p) for p in probs[:, 0].float().cpu()]
        mass += [float(m) for m in yes_no_mass.float().cpu()]
        forwards += 1
    return p_relevant, mass, forwards


def ground_regions(model, image: PIL.Image.Image, prompt: str, regions: Sequence[dict],
                   cfg: GroundingConfig) -> tuple[list[dict], dict]:
    """Ask the model about every region and mark which are kept.

    Every region dict gets ``"grounding": {"p_relevant", "mass", "kept"}`` (``None``
    when ``cfg.enabled`` is false, then all are kept); dicts are updated in place and
    returned in the input order. ``stats``: ``regions``, ``forwards`` and the counts of
    :func:`select_kept`."""
    regions = list(regions)
    if not cfg.enabled:
        for region in regions:
            region["grounding"] = None
        return regions, {"enabled": False, "regions": len(regions), "forwards": 0, "kept": len(regions)}
    if not regions:
        return [], {"enabled": True, "regions": 0, "forwards": 0, "above_threshold": 0, "added_by_min_keep": 0,
                    "removed_by_max_keep": 0, "kept": 0}
    if model is None:
        raise ValueError("grounding is enabled but no model was given (set grounding.enabled=false to skip the filter)")
    p_relevant, mass, forwards = relevance_probabilities(model, image, prompt, regions, cfg)
    flags, counts = select_kept(p_relevant, cfg)
    for region, p, m, kept in zip(regions, p_relevant, mass, flags):
        region["grounding"] = {"p_relevant": p, "mass": m, "kept": kept}
    return regions, {"enabled": True, "regions": len(regions), "forwards": forwards, **counts}
