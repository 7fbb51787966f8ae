# SPDX-License-Identifier: Apache-2.0
"""Regions as sets of cells, and their combination into one weight map.

Shared by both cell rules of :mod:`.raster` (area coverage) and :mod:`.frame` (the
reference's bilinear rule): a region claims a block of cells (:class:`_Member`), and
:func:`_paint` combines the claimed values per cell by the configured overlap rule.
"""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import numpy as np

from ..records import RecordError

if TYPE_CHECKING:
    from .raster import RewardMapConfig


def _ones_runs(rle, width: int, height: int, where: str) -> tuple[np.ndarray, np.ndarray]:
    """COCO uncompressed RLE -> the runs of set pixels as flat column-major ``[start, end)``
    offsets (two int64 arrays, increasing; empty runs dropped). Nothing is decoded."""
    try:
        size = [int(v) for v in rle["size"]]
        counts = np.asarray(rle["counts"], dtype=np.int64)
    except (KeyError, TypeError, ValueError) as err:
        raise RecordError(f"{where}: mask is not an uncompressed RLE: {err}") from None
    if size != [height, width]:
        raise RecordError(f"{where}: mask size {size} != [height, width] = [{height}, {width}]")
    if counts.ndim != 1 or (counts < 0).any() or int(counts.sum()) != height * width:
        raise RecordError(f"{where}: mask RLE counts must be non-negative and sum to {height}*{width}")
    ends = np.cumsum(counts)
    starts, ends = (ends - counts)[1::2], ends[1::2]  # odd runs are the set pixels
    keep = ends > starts
    return starts[keep], ends[keep]



@dataclasses.dataclass(frozen=True)
class _Member:
    """The cells a region claims: ``block`` [len(rows), len(cols)] bool of the sub-grid
    ``[rows, cols]`` (possibly a strided view), or None when it claims all of it."""

    rows: slice
    cols: slice
    block: np.ndarray | None = None


def _shift(part: slice, offset: int) -> slice:
    return slice(part.start + offset, part.stop + offset)


def _member_of_dense(member: np.ndarray) -> _Member | None:
    """[h, w] bool -> the member's bounding sub-grid (None when empty)."""
    rows, cols = np.flatnonzero(member.any(axis=1)), np.flatnonzero(member.any(axis=0))
    if rows.size == 0:
        return None
    rs, cs = slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1)
    block = member[rs, cs]
    return _Member(rs, cs, None if block.all() else block)


def _paint_order(values: np.ndarray, areas: np.ndarray, overlap: str) -> np.ndarray:
    """Order in which to paint regions so that the ``overlap`` winner ends on top."""
    if overlap == "max":
        return np.argsort(values, kind="stable")
    if overlap == "smallest":  # largest first; among equal areas the later region is on top
        return np.lexsort((np.arange(len(areas)), -np.asarray(areas, dtype=np.float64)))
    return np.arange(len(values))


def _region_areas(rewarded: list[dict], config: RewardMapConfig) -> np.ndarray:
    """Area of each rewarded region in saved-image pixels: its mask's set pixels (mask
    shape, when it has one) or its box."""
    areas = []
    for region in rewarded:
        rle = region.get("mask") if config.region_shape == "mask" else None
        if rle is not None:
            areas.append(float(np.asarray(rle.get("counts", []), dtype=np.float64)[1::2].sum()))
        else:
            x1, y1, x2, y2 = (float(v) for v in region["bbox"])
            areas.append(max(x2 - x1, 0.0) * max(y2 - y1, 0.0))
    return np.asarray(areas, dtype=np.float64)

def _paint(members: list[_Member | None], values: np.ndarray, config: RewardMapConfig, alpha: float,
           grid_hw: tuple[int, int], areas: np.ndarray) -> np.ndarray:
    """Combine the regions' values over their cells -> weights ``alpha * R`` [h, w] float32.

    ``max``, ``last`` and ``smallest`` paint each region's final weight over its cells in an
    order that leaves the winner on top (ascending value; record order; descending area,
    ties to the later region), so no per-region map exists. ``mean`` accumulates a float64
    sum and a count per cell. ``areas`` [R]: the regions' areas (for ``smallest``)."""
    background = config.background_value
    official = config.mode == "official"
    if config.overlap == "mean":
        total, count = np.zeros(grid_hw, dtype=np.float64), np.zeros(grid_hw, dtype=np.int32)
        for member, value in zip(members, values):
            if member is None:
                continue
            sub_total, sub_count = total[member.rows, member.cols], count[member.rows, member.cols]
            np.add(sub_total, value, out=sub_total, where=True if member.block is None else member.block)
            np.add(sub_count, 1, out=sub_count, where=True if member.block is None else member.block)
        combined = total / np.maximum(count, 1)
        if official:
            combined = np.maximum(combined, background)  # background is a floor
        return (alpha * np.where(count > 0, combined, background)).astype(np.float32)

    # official: the background floors every region value, max(v, background)
    region_weight = (alpha * (np.maximum(values, background) if official else values)).astype(np.float32)
    out = np.full(grid_hw, np.float32(alpha * background), dtype=np.float32)
    order = _paint_order(values, areas, config.overlap)
    for i in order:
        member = members[i]
        if member is None:
            continue
        view = out[member.rows, member.cols]
        if member.block is None:
            view[...] = region_weight[i]
        else:
            np.copyto(view, region_weight[i], where=member.block)
    return out
