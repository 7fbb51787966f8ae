# SPDX-License-Identifier: Apache-2.0
"""Candidate regions for the local judgment: proposals -> cleanup -> self-grounding.

``propose_for_image`` chains the three steps for one image; the ``srum propose`` stage
runs it over a generation manifest. Each step lives in its own module: the proposals
come from SAM (:mod:`.sam`, ``backend: sam``, the paper's choice for Bagel) or from the
model's own boxes (:mod:`.self_boxes`, ``backend: self``, for models that ground
objects themselves); then :mod:`.cleanup` (size / duplicate / containment / top-k
rules) and :mod:`.grounding` (the model's own yes/no relevance filter).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

import PIL.Image

from .cleanup import CleanupConfig, clean_regions
from .grounding import DEFAULT_QUESTION, GroundingConfig, ground_regions, select_kept
from .sam import SamConfig, build_mask_generator, build_sam, propose_regions, write_tiny_sam
from .self_boxes import SelfBoxesConfig, ask_boxes, boxes_from_answer, propose_self_boxes

__all__ = ["CleanupConfig", "DEFAULT_QUESTION", "GroundingConfig", "ProposalConfig", "SamConfig",
           "build_mask_generator", "build_sam", "clean_regions", "ground_regions",
           "propose_for_image", "propose_regions", "select_kept", "write_tiny_sam", "SelfBoxesConfig", "ask_boxes"]

@dataclass
class ProposalConfig:
    """``proposals:`` section of the ``srum propose`` config. backend: where proposals come
    from ("sam": the ``sam`` settings; "self": the model's own boxes, ``self_boxes``)."""

    backend: Literal["sam", "self"] = "sam"
    sam: SamConfig = field(default_factory=SamConfig)
    self_boxes: SelfBoxesConfig = field(default_factory=SelfBoxesConfig)
    cleanup: CleanupConfig = field(default_factory=CleanupConfig)
    grounding: GroundingConfig = field(default_factory=GroundingConfig)


def _filter_settings(cfg: ProposalConfig) -> tuple[CleanupConfig, GroundingConfig]:
    """Where ``top_k`` applies. Filter off: in the cleanup, the largest (the reference's
    rule). Filter on: the cleanup passes the ``grounding_pool`` largest to the filter, and
    the filter keeps at most ``top_k`` of the regions it accepts, the most relevant."""
    top_k = cfg.cleanup.top_k
    if not cfg.grounding.enabled or not top_k:
        return cfg.cleanup, cfg.grounding
    cleanup = dataclasses.replace(cfg.cleanup, top_k=cfg.cleanup.grounding_pool)
    max_keep = top_k if cfg.grounding.max_keep is None else min(top_k, cfg.grounding.max_keep)
    grounding = dataclasses.replace(cfg.grounding, max_keep=max_keep, min_keep=min(cfg.grounding.min_keep, max_keep))
    return cleanup, grounding


def propose_for_image(image: PIL.Image.Image, prompt: str, mask_generator, model,
                      cfg: ProposalConfig, self_boxes_answer: str | None = None) -> tuple[list[dict], dict]:
    """Proposals (SAM, or the model's own boxes) -> cleanup -> grounding for one image.

    With the filter on, the filter sees the ``cleanup.grounding_pool`` largest cleaned
    regions and at most ``cleanup.top_k`` of those it accepts are kept (the most relevant;
    ``stats["grounding"]["removed_by_max_keep"]`` counts the others, which stay in the list
    as not kept); with it off, the ``top_k`` largest are kept.

    Returns ``(regions, stats)``. ``regions``: every region that survived cleanup, kept
    ones first, then those the grounding filter rejected, each group largest first;
    ``region_id`` = position in this list. Each has ``region_id``, ``bbox``, ``mask``,
    ``area``, ``predicted_iou``, ``stability_score`` and ``grounding`` (``{"p_relevant",
    "mass", "kept"}``, or ``None`` when the filter is disabled: then all are kept).
    ``stats``: ``{"sam_masks", "cleanup": {...}, "grounding": {...}, "regions", "kept"}``.
    ``model`` may be None when ``cfg.grounding.enabled`` is false and the backend is SAM;
    ``mask_generator`` may be None with the ``self`` backend (its regions have no mask,
    the stats add the model's raw ``self_boxes_answer``; pass it when it was already asked,
    e.g. for a batch of images with :func:`.self_boxes.ask_boxes`)."""
    extra = {}
    if cfg.backend == "self":
        if self_boxes_answer is None:
            proposed, answer = propose_self_boxes(model, image, cfg.self_boxes)
        else:
            proposed, answer = boxes_from_answer(self_boxes_answer, image.size, cfg.self_boxes), self_boxes_answer
        extra["self_boxes_answer"] = answer
    else:
        proposed = propose_regions(image, mask_generator)
    cleanup_cfg, grounding_cfg = _filter_settings(cfg)
    cleaned, cleanup_counts = clean_regions(proposed, image.size, cleanup_cfg)
    grounded, grounding_stats = ground_regions(model, image, prompt, cleaned, grounding_cfg)

    def is_kept(region: dict) -> bool:
        return region["grounding"] is None or region["grounding"]["kept"]

    # kept first; sorted() is stable, so each group stays largest first
    ordered = sorted(grounded, key=lambda r: not is_kept(r))
    regions = []
    for region_id, region in enumerate(ordered):
        # region_id first so that records read naturally
        regions.append({"region_id": region_id, **{k: v for k, v in region.items() if k != "region_id"}})
    kept = sum(is_kept(r) for r in regions)
    stats = {"sam_masks": len(proposed), "cleanup": cleanup_counts, "grounding": grounding_stats,
             "regions": len(regions), "kept": kept, **extra}
    return regions, stats
