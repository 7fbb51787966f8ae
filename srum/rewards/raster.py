# SPDX-License-Identifier: Apache-2.0
"""Reward record -> dense per-cell weight map ``alpha * R`` for the SRUM loss.

The map is computed on a grid covering the whole (optionally cropped) saved image: the
latent-token grid for training (``h = H'/16, w = W'/16`` after the training resize) or the
pixel grid for pictures. Boxes and masks live in the saved image's pixels and are mapped
through normalised coordinates, so a resize of any aspect ratio lands them on the right
cells (the reference trainer builds its map at the resized size from unrescaled boxes).

Per cell the steps are:

1. *coverage* ``c_i`` of every rewarded region ``i``: the fraction of the cell's area
   inside the region's box (analytic) or mask (area average of the mask's pixels);
2. *membership*: the cell belongs to region ``i`` when ``c_i >= coverage_threshold``;
3. *region value* ``v_i`` from the score ``s_i``: official ``(s+1)/2`` in [0, 1], signed
   ``s`` in [-1, 1] (binarised variants below);
4. *combination* of the values of the regions the cell belongs to (``overlap``), and the
   background value where it belongs to none; in official mode the background is also a
   floor under the combined value;
5. *global weight* ``alpha = (g+1)/2`` (or 1 when the global reward is switched off);
   the returned weight is ``alpha * R``.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from ..config import ConfigError
from ..records import RecordError, carries_reward, decode_rle

__all__ = ["RewardMapConfig", "GlobalRewardMissing", "reward_weights", "pixel_reward_map"]

# Coverage is a float; a box edge exactly on a cell's middle must count as 0.5, not 0.4999999.
_COVERAGE_EPS = 1e-6


class GlobalRewardMissing(RecordError):
    """The record's global judgment failed and the caller asked to skip such records."""


@dataclasses.dataclass
class RewardMapConfig:
    """How a reward record becomes a weight map (defaults in brackets).

    mode ["official"]: ``"official"`` is the reference trainer's rule, which produced the
        published results: the map starts at the background (0.5), each region raises the
        cells it covers to ``max(map, (s+1)/2)``, and the whole map is multiplied by
        ``alpha = (g+1)/2``. Every weight is in [0, 1]; a badly drawn region merely keeps
        the background weight, so nothing is ever repelled. ``"signed"`` is the paper's
        formulation: ``R = s`` in [-1, 1] inside regions, background elsewhere, weight
        ``alpha * R``; negative regions get negative weight and push the prediction away
        from the sample.
    region_shape ["box"]: ``"box"`` uses each region's bbox (as the reference does);
        ``"mask"`` uses its segmentation mask, falling back to the box when a region has
        none (counted in the stats as ``mask_fallbacks``).
    overlap ["max"]: how a cell inside several regions combines their values: ``"max"``
        (the reference's rule), ``"mean"`` (average of the covering regions' values) or
        ``"last"`` (the region listed last in the record wins).
    background [None]: value of cells outside every region; None = the mode's default,
        0.5 for official (where it is also a floor under region values) and 0.0 for signed
        (no reward outside judged regions).
    use_global [True]: multiply by ``alpha = (g+1)/2``; False sets ``alpha = 1``
        (ablation "no global reward"; a failed global judgment is then irrelevant).
    binarize [False]: ablation "0/1 reward": a region's value becomes 1 if ``s > 0`` else
        0 (official) or +1 / -1 (signed) instead of the dense score.
    sample_level [False]: ablation "no spatial map": every cell gets one scalar, the plain
        mean of the rewarded regions' values (official ``(s+1)/2``, signed ``s``, after
        ``binarize``; no background floor), or the background when no region is rewarded;
        still multiplied by ``alpha``.
    coverage_threshold [0.5]: a cell belongs to a region when at least this fraction of its
        area is inside the region; in (0, 1].
    """

    mode: Literal["official", "signed"] = "official"
    region_shape: Literal["box", "mask"] = "box"
    overlap: Literal["max", "mean", "last"] = "max"
    background: float | None = None
    use_global: bool = True
    binarize: bool = False
    sample_level: bool = False
    coverage_threshold: float = 0.5

    def __post_init__(self) -> None:
        choices = {"mode": ("official", "signed"), "region_shape": ("box", "mask"),
                   "overlap": ("max", "mean", "last")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"reward map {name} must be one of {list(allowed)}, got {getattr(self, name)!r}")
        if self.background is not None and not math.isfinite(self.background):
            raise ConfigError(f"reward map background must be finite, got {self.background!r}")
        if not 0.0 < self.coverage_threshold <= 1.0:
            raise ConfigError(f"reward map coverage_threshold must be in (0, 1], got {self.coverage_threshold!r}")

    @property
    def background_value(self) -> float:
        if self.background is not None:
            return float(self.background)
        return 0.5 if self.mode == "official" else 0.0

    def region_value(self, scores: torch.Tensor) -> torch.Tensor:
        """Scores in [-1, 1] -> region values (see ``mode`` and ``binarize``)."""
        if self.binarize:
            low = 0.0 if self.mode == "official" else -1.0
            return torch.where(scores > 0, torch.ones_like(scores), torch.full_like(scores, low))
        return (scores + 1.0) / 2.0 if self.mode == "official" else scores


# --------------------------------------------------------------------------- coverage

def _overlap_fraction(lo: torch.Tensor, hi: torch.Tensor, n: int) -> torch.Tensor:
    """Fraction of each of ``n`` equal cells of [0, 1] covered by intervals ``[lo, hi]``.

    lo, hi: [K] normalised coordinates -> [K, n]."""
    edges = torch.arange(n + 1, dtype=torch.float64) / n
    left, right = edges[:-1], edges[1:]
    inter = torch.minimum(hi[:, None], right[None, :]) - torch.maximum(lo[:, None], left[None, :])
    return inter.clamp(min=0.0) * n


def _box_coverage(boxes: torch.Tensor, crop: tuple[float, float, float, float],
                  grid_hw: tuple[int, int]) -> torch.Tensor:
    """boxes [R, 4] (saved-image pixels) -> coverage [R, h, w] in [0, 1]."""
    x0, y0, x1, y1 = crop
    u1 = ((boxes[:, 0] - x0) / (x1 - x0)).clamp(0, 1)
    u2 = ((boxes[:, 2] - x0) / (x1 - x0)).clamp(0, 1)
    v1 = ((boxes[:, 1] - y0) / (y1 - y0)).clamp(0, 1)
    v2 = ((boxes[:, 3] - y0) / (y1 - y0)).clamp(0, 1)
    h, w = grid_hw
    return _overlap_fraction(v1, v2, h)[:, :, None] * _overlap_fraction(u1, u2, w)[:, None, :]


def _pixel_to_cell(start: float, end: float, pixels: int, cells: int) -> torch.Tensor:
    """Matrix [cells, pixels]: fraction of each cell's extent covered by each pixel, for a
    crop ``[start, end]`` of a ``pixels``-long axis split into ``cells`` cells."""
    pix = torch.arange(pixels, dtype=torch.float64)
    lo = ((pix - start) / (end - start)).clamp(0, 1)
    hi = ((pix + 1 - start) / (end - start)).clamp(0, 1)
    return _overlap_fraction(lo, hi, cells).T.contiguous()


def _mask_coverage(masks: torch.Tensor, crop: tuple[float, float, float, float],
                   grid_hw: tuple[int, int]) -> torch.Tensor:
    """masks [R, H, W] bool (saved image) -> coverage [R, h, w]: area average per cell."""
    x0, y0, x1, y1 = crop
    _, height, width = masks.shape
    h, w = grid_hw
    integral = all(float(v).is_integer() for v in crop)
    if integral:
        xi0, yi0, xi1, yi1 = (int(v) for v in crop)
        cropped = masks[:, yi0:yi1, xi0:xi1].to(torch.float32)
        ch, cw = yi1 - yi0, xi1 - xi0
        if (ch, cw) == (h, w):
            return cropped.to(torch.float64)
        if ch % h == 0 and cw % w == 0:  # whole pixels per cell: a plain average pool is exact
            return F.avg_pool2d(cropped[:, None], kernel_size=(ch // h, cw // w))[:, 0].to(torch.float64)
    # General case (fractional crop or cells straddling pixels): exact area weights.
    rows = _pixel_to_cell(y0, y1, height, h).to(torch.float32)   # [h, H]
    cols = _pixel_to_cell(x0, x1, width, w).to(torch.float32)    # [w, W]
    return (rows @ masks.to(torch.float32) @ cols.T).to(torch.float64)


# --------------------------------------------------------------------------- the map

def _check_grid(grid_hw) -> tuple[int, int]:
    if (not isinstance(grid_hw, (tuple, list)) or len(grid_hw) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in grid_hw)):
        raise ValueError(f"grid_hw must be two positive ints (h, w), got {grid_hw!r}")
    return int(grid_hw[0]), int(grid_hw[1])


def _check_crop(crop_box, width: int, height: int, where: str) -> tuple[float, float, float, float]:
    if crop_box is None:
        return 0.0, 0.0, float(width), float(height)
    try:
        x0, y0, x1, y1 = (float(v) for v in crop_box)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: crop_box must be (x0, y0, x1, y1), got {crop_box!r}") from None
    if not (0.0 <= x0 < x1 <= width and 0.0 <= y0 < y1 <= height):
        raise ValueError(f"{where}: crop_box {crop_box!r} must satisfy 0 <= x0 < x1 <= {width}, "
                         f"0 <= y0 < y1 <= {height}")
    return x0, y0, x1, y1


def _combine(values: torch.Tensor, member: torch.Tensor, overlap: str) -> tuple[torch.Tensor, torch.Tensor]:
    """values [R], member [R, h, w] bool -> (combined [h, w], covered [h, w] bool)."""
    covered = member.any(dim=0)
    vals = values[:, None, None].expand_as(member)
    if overlap == "max":
        combined = torch.where(member, vals, torch.full_like(vals, -math.inf)).amax(dim=0)
    elif overlap == "mean":
        count = member.sum(dim=0).clamp(min=1)
        combined = (vals * member).sum(dim=0) / count
    else:  # "last": the highest-index covering region wins
        order = torch.arange(1, values.numel() + 1)[:, None, None] * member
        combined = values[order.argmax(dim=0)]
    return torch.where(covered, combined, torch.zeros_like(combined)), covered


def reward_weights(record: dict, grid_hw: tuple[int, int], config: RewardMapConfig,
                   crop_box: tuple[float, float, float, float] | None = None,
                   missing_global: Literal["skip", "neutral"] = "skip") -> tuple[torch.Tensor, dict]:
    """Weight map ``alpha * R`` of one validated record on a ``grid_hw`` grid.

    Args:
        record: a validated ``srum.reward.v1`` record (boxes/masks in its width x height).
        grid_hw: (h, w) cells covering the (cropped) image, e.g. the latent-token grid
            ``(H'/16, W'/16)`` of the resized training image, or ``(H, W)`` for pixels.
        config: see :class:`RewardMapConfig`.
        crop_box: (x0, y0, x1, y1) in saved-image pixels when the transform crops; None =
            the whole image.
        missing_global: what a failed global judgment means when ``config.use_global``:
            ``"skip"`` raises :class:`GlobalRewardMissing` (the caller drops the sample);
            ``"neutral"`` uses ``g = 0`` (``alpha = 0.5``). A 0.0 is never invented silently.

    Returns:
        (weights [h, w] float32, stats) with stats keys ``alpha``, ``global_score``
        (None when failed), ``global_missing``, ``mean``/``min``/``max`` of the weights,
        ``regions_total``, ``regions_used`` (rewarded and covering at least one cell),
        ``regions_unrewarded`` (failed or filtered out), ``regions_empty`` (rewarded but
        covering no cell at this resolution), ``mask_fallbacks``.
    """
    if missing_global not in ("skip", "neutral"):
        raise ValueError(f"missing_global must be 'skip' or 'neutral', got {missing_global!r}")
    h, w = _check_grid(grid_hw)
    where = str(record.get("image_id", "<record>"))
    width, height = int(record["width"]), int(record["height"])
    crop = _check_crop(crop_box, width, height, where)

    glob = record["global"]
    global_missing = not carries_reward(glob)
    if not config.use_global:
        alpha = 1.0
    elif global_missing:
        if missing_global == "skip":
            raise GlobalRewardMissing(f"{where}: global judgment failed; no global reward to weight with")
        alpha = 0.5
    else:
        alpha = (float(glob["score"]) + 1.0) / 2.0

    rewarded = [r for r in record["regions"] if carries_reward(r)]
    stats = {"alpha": alpha, "global_score": None if global_missing else float(glob["score"]),
             "global_missing": global_missing, "regions_total": len(record["regions"]),
             "regions_unrewarded": len(record["regions"]) - len(rewarded), "regions_used": 0,
             "regions_empty": 0, "mask_fallbacks": 0}
    background = config.background_value
    values = config.region_value(torch.tensor([float(r["score"]) for r in rewarded], dtype=torch.float64))

    if config.sample_level:
        scalar = values.mean().item() if rewarded else background
        reward = torch.full((h, w), scalar, dtype=torch.float64)
        stats["regions_used"] = len(rewarded)
    elif not rewarded:
        reward = torch.full((h, w), background, dtype=torch.float64)
    else:
        boxes = torch.tensor([r["bbox"] for r in rewarded], dtype=torch.float64)
        coverage = _box_coverage(boxes, crop, (h, w))
        if config.region_shape == "mask":
            with_mask = [i for i, r in enumerate(rewarded) if r.get("mask") is not None]
            stats["mask_fallbacks"] = len(rewarded) - len(with_mask)
            if with_mask:
                masks = torch.from_numpy(np.stack([decode_rle(rewarded[i]["mask"]) for i in with_mask]))
                coverage[with_mask] = _mask_coverage(masks, crop, (h, w))
        member = coverage >= config.coverage_threshold - _COVERAGE_EPS
        used = member.flatten(1).any(dim=1)
        stats["regions_used"] = int(used.sum())
        stats["regions_empty"] = len(rewarded) - stats["regions_used"]
        combined, covered = _combine(values, member, config.overlap)
        if config.mode == "official":
            combined = torch.clamp(combined, min=background)  # background is a floor
        reward = torch.where(covered, combined, torch.full_like(combined, background))

    weights = (alpha * reward).to(torch.float32)
    stats.update(mean=float(weights.mean()), min=float(weights.min()), max=float(weights.max()))
    return weights, stats


def pixel_reward_map(record: dict, config: RewardMapConfig,
                     missing_global: Literal["skip", "neutral"] = "skip") -> np.ndarray:
    """Weight map at the saved image's pixel resolution, ``[H, W]`` float32 (for pictures)."""
    weights, _ = reward_weights(record, (int(record["height"]), int(record["width"])), config,
                                missing_global=missing_global)
    return weights.numpy()
