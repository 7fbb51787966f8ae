# SPDX-License-Identifier: Apache-2.0
"""The reference trainer's cell rule: a pixel map in the training frame, read bilinearly.

The reference trainer paints its reward map at the resolution of the resized training
image (the *frame*, ``H' x W'`` pixels, 16 per latent token), with integer box corners
(``int()`` of each coordinate, then clamped to the frame; a box with ``x1 >= x2`` or
``y1 >= y2`` after ``int()`` is skipped), and brings it to the latent grid with
``F.interpolate(mode="bilinear", align_corners=False)`` without antialiasing. Each token
therefore reads a handful of frame pixels: at 16 pixels per token, the 2 x 2 pixels at the
middle of its 16 x 16 cell, each with weight 1/4.

This module reproduces that without building the frame-sized map: it finds the frame
pixels the interpolation reads (at most two per grid row / column), evaluates the regions
only there, and leaves the combination (max / mean / last, background, alpha) and the
final interpolation to the caller. Boxes are first rescaled from the saved image (and
crop) to the frame, which the reference forgets to do (its boxes are in saved-image pixels
while its map has the resized size); with an unscaled frame (saved size == frame size) the
boxes are used as they are, exactly as the reference does.

A mask region (our extension; the reference has none) covers a frame pixel when the
saved-image pixel under that frame pixel's centre is set.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .members import _Member, _member_of_dense, _ones_runs, _paint, _region_areas

if TYPE_CHECKING:
    from .raster import RewardMapConfig

__all__ = ["LATENT_CELL_PIXELS", "bilinear_map", "bilinear_taps", "box_frame_spans", "frame_members",
           "mask_at_samples", "resize_samples", "spans_at_samples"]

# Frame pixels per latent token of a training image: VAE downsample 8 x latent patch 2.
LATENT_CELL_PIXELS = 16


def bilinear_taps(cells: int, pixels: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The frame pixels a bilinear resize of ``pixels`` to ``cells`` reads, and how.

    Follows ``F.interpolate(mode="bilinear", align_corners=False)`` with an output size (no
    scale factor), including its float32 arithmetic: scale ``pixels / cells``, source
    coordinate ``scale * (i + 0.5) - 0.5`` clamped at 0, the two neighbouring pixels (the
    second one clamped to the last pixel) weighted by the fractional part.

    Returns (samples [k] int64, the sorted distinct pixels read; first [cells], second
    [cells] int64, indices into ``samples`` of each cell's two pixels; frac [cells]
    float64, the weight of the second pixel)."""
    scale = np.float32(pixels) / np.float32(cells)
    source = scale * (np.arange(cells, dtype=np.float32) + np.float32(0.5)) - np.float32(0.5)
    source = np.maximum(source, np.float32(0.0))
    first = np.floor(source).astype(np.int64)
    second = np.minimum(first + 1, pixels - 1)
    frac = np.clip(source - first.astype(np.float32), 0.0, 1.0).astype(np.float64)
    samples, inverse = np.unique(np.concatenate([first, second]), return_inverse=True)
    return samples, inverse[:cells], inverse[cells:], frac


def _blend(values: np.ndarray, first: np.ndarray, second: np.ndarray, frac: np.ndarray, axis: int) -> np.ndarray:
    """Linear interpolation along one axis: ``values[first] * (1 - frac) + values[second] * frac``."""
    near = np.take(values, first, axis=axis)
    if not frac.any():  # e.g. one frame pixel per cell: the resize reads single pixels
        return near
    weight = frac.reshape((-1, 1) if axis == 0 else (1, -1))
    return near * (1.0 - weight) + np.take(values, second, axis=axis) * weight


def resize_samples(sampled: np.ndarray, rows: tuple[np.ndarray, ...], cols: tuple[np.ndarray, ...]) -> np.ndarray:
    """The bilinear resize from the map at the sampled pixels [k_rows, k_cols] to the grid
    [h, w] float32; ``rows`` / ``cols`` are the (first, second, frac) of :func:`bilinear_taps`.
    Columns are blended first, then rows, as PyTorch does."""
    across = _blend(sampled.astype(np.float64), *cols, axis=1)
    return _blend(across, *rows, axis=0).astype(np.float32)


def box_frame_spans(boxes: np.ndarray, crop: tuple[float, float, float, float],
                    frame_hw: tuple[int, int]) -> np.ndarray:
    """Boxes [R, 4] in saved-image pixels -> their integer frame spans [R, 4] int64
    ``(x1, y1, x2, y2)``, half-open, clamped to the frame; an empty span (x1 >= x2 or
    y1 >= y2) claims nothing.

    Each coordinate is rescaled ``(b - crop_origin) * frame_size / crop_size`` and then
    truncated towards zero (``int()``), as the reference does with the numbers it reads; a
    box whose corners cross after truncation is dropped before clamping, as there."""
    x0, y0, x1, y1 = crop
    fh, fw = frame_hw
    if (x0, y0, x1, y1) == (0.0, 0.0, float(fw), float(fh)):
        scaled = boxes.astype(np.float64)   # the frame is the saved image: the numbers as written
    else:
        scaled = np.empty_like(boxes, dtype=np.float64)
        scaled[:, 0::2] = (boxes[:, 0::2] - x0) * fw / (x1 - x0)
        scaled[:, 1::2] = (boxes[:, 1::2] - y0) * fh / (y1 - y0)
    spans = np.trunc(scaled).astype(np.int64)
    crossed = (spans[:, 0] >= spans[:, 2]) | (spans[:, 1] >= spans[:, 3])
    spans[:, 0::2] = np.clip(spans[:, 0::2], 0, fw)
    spans[:, 1::2] = np.clip(spans[:, 1::2], 0, fh)
    spans[crossed] = 0
    return spans


def spans_at_samples(lo: int, hi: int, samples: np.ndarray) -> slice | None:
    """The sorted ``samples`` with ``lo <= sample < hi``, as a slice (None when none)."""
    start, stop = np.searchsorted(samples, [lo, hi], side="left")
    return slice(int(start), int(stop)) if stop > start else None


def mask_at_samples(starts: np.ndarray, ends: np.ndarray, width: int, height: int,
                    crop: tuple[float, float, float, float], frame_hw: tuple[int, int],
                    row_samples: np.ndarray, col_samples: np.ndarray) -> np.ndarray:
    """A mask (its set runs: flat column-major ``[start, end)`` offsets in the saved image)
    at the sampled frame pixels: [len(rows), len(cols)] bool.

    A frame pixel is inside when the saved-image pixel under its centre is set."""
    x0, y0, x1, y1 = crop
    fh, fw = frame_hw
    if starts.size == 0:
        return np.zeros((row_samples.size, col_samples.size), dtype=bool)
    xs = np.clip(np.floor(x0 + (col_samples + 0.5) * (x1 - x0) / fw).astype(np.int64), 0, width - 1)
    ys = np.clip(np.floor(y0 + (row_samples + 0.5) * (y1 - y0) / fh).astype(np.int64), 0, height - 1)
    if 4 * xs.size * ys.size >= width * height:
        # many samples (e.g. one per pixel): decode the mask once, then pick
        mask = _decoded(starts, ends, width * height).reshape(width, height)   # [x, y]
        identity = xs.size == width and ys.size == height and (xs == np.arange(width)).all() \
            and (ys == np.arange(height)).all()
        return mask.T if identity else mask[np.ix_(xs, ys)].T
    flat = xs[None, :] * height + ys[:, None]
    run = np.searchsorted(starts, flat, side="right") - 1
    return (run >= 0) & (flat < ends[np.clip(run, 0, None)])


def _decoded(starts: np.ndarray, ends: np.ndarray, size: int) -> np.ndarray:
    """Set runs (flat ``[start, end)``, increasing, disjoint) -> the flat bool mask [size]."""
    lengths = np.empty(2 * starts.size + 1, dtype=np.int64)
    lengths[0:-1:2] = starts - np.concatenate([[0], ends[:-1]])   # gaps
    lengths[1::2] = ends - starts                                 # set runs
    lengths[-1] = size - ends[-1]
    values = np.zeros(lengths.size, dtype=bool)
    values[1::2] = True
    return np.repeat(values, lengths)


def frame_members(rewarded: list[dict], config: RewardMapConfig, crop: tuple[float, float, float, float],
                   width: int, height: int, frame_hw: tuple[int, int], row_samples: np.ndarray,
                   col_samples: np.ndarray, where: str, stats: dict) -> list[_Member | None]:
    """Under the bilinear rule: the sampled frame pixels each rewarded region covers, as
    members of the [len(row_samples), len(col_samples)] grid of samples."""
    use_mask = [config.region_shape == "mask" and r.get("mask") is not None for r in rewarded]
    if config.region_shape == "mask":
        stats["mask_fallbacks"] = use_mask.count(False)
    boxes = np.array([r["bbox"] for r in rewarded], dtype=np.float64).reshape(-1, 4)
    spans = box_frame_spans(boxes, crop, frame_hw)
    members: list[_Member | None] = []
    for i, region in enumerate(rewarded):
        if use_mask[i]:
            starts, ends = _ones_runs(region["mask"], width, height, f"{where} region {i}")
            inside = mask_at_samples(starts, ends, width, height, crop, frame_hw, row_samples, col_samples)
            members.append(_member_of_dense(inside))
            continue
        x1, y1, x2, y2 = (int(v) for v in spans[i])
        rows, cols = spans_at_samples(y1, y2, row_samples), spans_at_samples(x1, x2, col_samples)
        members.append(None if rows is None or cols is None else _Member(rows, cols))
    return members


def bilinear_map(rewarded: list[dict], values: np.ndarray, config: RewardMapConfig, alpha: float,
                  crop: tuple[float, float, float, float], width: int, height: int, grid_hw: tuple[int, int],
                  frame_hw: tuple[int, int], where: str, stats: dict) -> tuple[np.ndarray, int]:
    """The reference rule: the combined map at the frame pixels the bilinear resize reads,
    then the resize itself -> (weights [h, w] float32, regions covering some sample)."""
    row_samples, *row_taps = bilinear_taps(grid_hw[0], frame_hw[0])
    col_samples, *col_taps = bilinear_taps(grid_hw[1], frame_hw[1])
    members = frame_members(rewarded, config, crop, width, height, frame_hw, row_samples, col_samples,
                            where, stats)
    sampled = _paint(members, values, config, alpha, (row_samples.size, col_samples.size),
                     _region_areas(rewarded, config))
    weights = resize_samples(sampled, tuple(row_taps), tuple(col_taps))
    return weights, sum(m is not None for m in members)
