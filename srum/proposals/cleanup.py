# SPDX-License-Identifier: Apache-2.0
"""Cleanup of SAM proposals: size limits, duplicate and containment removal, top-k.

SAM's automatic generator returns many overlapping masks for one image: the whole
object, its parts and near-copies from neighbouring grid points. Judging every one
wastes model calls and lets one object dominate the reward map. The rules, in order:

1. ``min_area``: drop masks smaller than ``min_area_fraction`` of the image (too small
   to judge, and below the reward map's 16 px token grid).
2. ``max_area``: drop masks larger than ``max_area_fraction`` of the image (a near-full
   mask says nothing a region can add to the global judgment).
3. ``duplicate``: non-maximum suppression on **mask** IoU (box IoU would merge a cup and
   the table it stands on, whose boxes overlap heavily while the masks do not). Among
   near-copies the one with the highest SAM ``predicted_iou`` survives.
4. ``contained``: in order of decreasing area, drop a region when at least
   ``containment`` of its own area lies inside an already kept larger region (parts of
   an object: the handle of a cup). ``None`` disables the rule.
5. ``top_k``: keep the ``top_k`` largest survivors (the reference SRUM keeps the 10
   largest masks, without rules 1-4). With the self-grounding filter on,
   :func:`srum.proposals.propose_for_image` cuts here to ``grounding_pool`` instead, so
   the filter also sees small relevant objects, and applies ``top_k`` after the filter
   to the regions it accepts (the most relevant first).

Regions without a mask (``"mask": None``, e.g. imported boxes) make rules 3 and 4 use
box geometry for the whole image. Mask overlaps are computed on a sample grid of at most
``overlap_grid`` x ``overlap_grid`` pixels (every s-th pixel per side, exact for small
images; at 1024 px and 256 that is every 4th pixel, plenty for regions above the
minimum area).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torchvision.ops

from srum.records import decode_rle


@dataclass
class CleanupConfig:
    """Cleanup rules (see the module docstring for their order and meaning).

    * ``min_area_fraction``: drop regions with area < this x image area (0 disables).
    * ``max_area_fraction``: drop regions with area > this x image area (1 disables).
    * ``nms_iou``: drop a region whose mask IoU with a better-scored kept one is > this
      (1 disables).
    * ``containment``: drop a region when >= this fraction of it lies inside a kept larger
      region (``None`` disables).
    * ``top_k``: at most this many regions, the largest (``None``: no limit). With the
      self-grounding filter on, at most this many regions *kept by the filter*, the most
      relevant (see ``grounding_pool``).
    * ``grounding_pool``: with the filter on, the filter sees this many of the largest
      cleaned regions (``None``: all), so a small relevant object beyond the ``top_k``
      largest is still asked about; must be >= ``top_k`` (unused when ``top_k`` is null:
      the filter then sees every region). Each region costs the filter
      1/``batch_size`` of a model forward.
    * ``overlap_grid``: longest side of the sample grid used for mask overlaps.
    """

    min_area_fraction: float = 0.005
    max_area_fraction: float = 0.95
    nms_iou: float = 0.7
    containment: float | None = 0.9
    top_k: int | None = 10
    grounding_pool: int | None = 30
    overlap_grid: int = 256

    def __post_init__(self):
        if not 0.0 <= self.min_area_fraction <= 1.0:
            raise ValueError(f"min_area_fraction must be in [0, 1], got {self.min_area_fraction}")
        if not self.min_area_fraction <= self.max_area_fraction <= 1.0:
            raise ValueError(f"max_area_fraction must be in [min_area_fraction, 1], got {self.max_area_fraction}")
        if not 0.0 < self.nms_iou <= 1.0:
            raise ValueError(f"nms_iou must be in (0, 1], got {self.nms_iou}")
        if self.containment is not None and not 0.0 < self.containment <= 1.0:
            raise ValueError(f"containment must be in (0, 1] or null, got {self.containment}")
        if self.top_k is not None and self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 or null, got {self.top_k}")
        if self.grounding_pool is not None and self.top_k is not None and self.grounding_pool < max(self.top_k, 1):
            raise ValueError(f"grounding_pool must be null or >= max(top_k, 1) (top_k {self.top_k}), "
                             f"got {self.grounding_pool}")
        if self.overlap_grid < 1:
            raise ValueError(f"overlap_grid must be >= 1, got {self.overlap_grid}")


def _region_area(region: dict) -> float:
    if region.get("area") is not None:
        return float(region["area"])
    x1, y1, x2, y2 = region["bbox"]
    return max(0.0, x2 - x1) * max(0.0, y2 - y1)


def _sampled_masks(regions: Sequence[dict], image_size: tuple[int, int], grid: int) -> torch.Tensor:
    """Masks sampled every s-th pixel, flattened: float [N, samples] (1 = inside)."""
    width, height = image_size
    stride = max(1, math.ceil(max(width, height) / grid))
    rows = []
    for i, region in enumerate(regions):
        if list(region["mask"]["size"]) != [height, width]:
            raise ValueError(f"region {i}: mask size {region['mask']['size']} does not match the image "
                             f"(height, width) = ({height}, {width})")
        rows.append(torch.from_numpy(np.ascontiguousarray(decode_rle(region["mask"])[::stride, ::stride]).ravel()))
    return torch.stack(rows).float()


def overlap_matrices(regions: Sequence[dict], image_size: tuple[int, int], grid: int = 256
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Pairwise intersections [N, N] and sizes [N] of the regions, on masks when every
    region has one, else on boxes (in sampled pixels resp. square pixels)."""
    if all(r.get("mask") is not None for r in regions):
        masks = _sampled_masks(regions, image_size, grid)
        return masks @ masks.T, masks.sum(1)
    boxes = torch.tensor([r["bbox"] for r in regions], dtype=torch.float64)
    lt = torch.maximum(boxes[:, None, :2], boxes[None, :, :2])
    rb = torch.minimum(boxes[:, None, 2:], boxes[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    return inter, torchvision.ops.box_area(boxes)


def _greedy_nms(iou: torch.Tensor, order: Sequence[int], threshold: float) -> list[int]:
    """Indices kept by greedy suppression visiting ``order`` (best first)."""
    suppressed = torch.zeros(iou.shape[0], dtype=torch.bool)
    kept = []
    for i in order:
        if suppressed[i]:
            continue
        kept.append(i)
        suppressed |= iou[i] > threshold
    return kept


def clean_regions(regions: Sequence[dict], image_size: tuple[int, int], cfg: CleanupConfig
                  ) -> tuple[list[dict], dict]:
    """Apply the cleanup rules to proposals of one image of ``image_size = (width, height)``.

    ``regions``: dicts with ``bbox`` [x1, y1, x2, y2] pixels, ``mask`` (uncompressed RLE
    or None), ``area`` (pixels; box area when absent) and optionally ``predicted_iou``.
    Returns ``(kept, counts)``: the kept region dicts themselves (not copies), sorted by
    area, largest first; ``counts`` = ``{"input", "min_area", "max_area", "duplicate",
    "contained", "top_k", "kept"}`` (regions dropped per rule)."""
    width, height = image_size
    image_area = float(width * height)
    counts = dict.fromkeys(("min_area", "max_area", "duplicate", "contained", "top_k", "kept"), 0)
    counts = {"input": len(regions), **counts}
    survivors = []
    for region in regions:
        fraction = _region_area(region) / image_area
        if fraction < cfg.min_area_fraction or fraction <= 0:
            counts["min_area"] += 1
        elif fraction > cfg.max_area_fraction:
            counts["max_area"] += 1
        else:
            survivors.append(region)
    if not survivors:
        return [], counts

    # largest first; ties by SAM quality, then input order (stable sort)
    survivors.sort(key=lambda r: (-_region_area(r), -float(r.get("predicted_iou") or 0.0)))
    inter, sizes = overlap_matrices(survivors, image_size, cfg.overlap_grid)
    union = sizes[:, None] + sizes[None, :] - inter
    iou = torch.where(union > 0, inter / union.clamp(min=1e-9), torch.zeros_like(inter))
    iou.fill_diagonal_(0.0)

    quality = [float(r.get("predicted_iou") or 0.0) for r in survivors]
    by_quality = sorted(range(len(survivors)), key=lambda i: -quality[i])
    distinct = sorted(_greedy_nms(iou, by_quality, cfg.nms_iou))  # back to area order
    counts["duplicate"] = len(survivors) - len(distinct)

    kept: list[int] = []
    for i in distinct:
        if cfg.containment is not None and kept and sizes[i] > 0:
            inside = inter[i, kept] / sizes[i]
            if bool((inside >= cfg.containment).any()):
                counts["contained"] += 1
                continue
        kept.append(i)

    if cfg.top_k is not None and len(kept) > cfg.top_k:
        counts["top_k"] = len(kept) - cfg.top_k
        kept = kept[:cfg.top_k]
    counts["kept"] = len(kept)
    return [survivors[i] for i in kept], counts
