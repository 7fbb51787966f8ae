# SPDX-License-Identifier: Apache-2.0
"""Reward record -> dense per-cell weight map ``alpha * R`` for the SRUM loss.

Two rules decide which cells a region reaches (``RewardMapConfig.cell_rule``):

* ``"bilinear"`` (default): the reference trainer's rule, in :mod:`.frame`: a pixel map
  at the training resolution with integer box corners, read by a bilinear resize to the
  grid (each latent token sees the 2 x 2 pixels at the middle of its 16 x 16 cell);
* ``"coverage"``: the area rule described below, independent of the resolution.

Under the coverage rule the map is computed on a grid covering the whole (optionally cropped) saved image: the
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

How it is computed (the map is built per region on the cells the region touches; nothing
of size ``[regions, h, w]`` or float per full-resolution pixel exists):

* a box's coverage is separable: the outer product of its 1-D row and column coverages
  (float64, exact at cell middles); only its bounding cells are compared to the threshold;
* a mask is never decoded to a full image: its RLE runs are split into per-column pieces,
  counted per interval of pixels (the pixels between two cell edges, and each pixel that a
  cell edge cuts), and pooled with the exact area weights of those intervals, cached per
  axis; at one cell per pixel the (cropped) mask itself is decoded straight to bool over
  its extent;
* ``max`` and ``last`` paint each region's final float32 weight over its cells in an order
  that leaves the winner on top; ``mean`` keeps a sum and a count per cell.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Literal

import numpy as np
import torch

from ..config import ConfigError
from ..records import RecordError, carries_reward
from .frame import LATENT_CELL_PIXELS, bilinear_map
from .members import _Member, _member_of_dense, _ones_runs, _paint, _region_areas, _shift

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
        ``alpha = (g+1)/2`` (with ``cell_rule="bilinear"`` the maps equal the reference
        trainer's, boxes rescaled to the training resize). Every weight is in [0, 1]; a badly drawn region merely keeps
        the background weight, so nothing is ever repelled. ``"signed"`` is the paper's
        formulation: ``R = s`` in [-1, 1] inside regions, background elsewhere, weight
        ``alpha * R``; negative regions get negative weight and push the prediction away
        from the sample.
    region_shape ["box"]: ``"box"`` uses each region's bbox (as the reference does);
        ``"mask"`` uses its segmentation mask, falling back to the box when a region has
        none (counted in the stats as ``mask_fallbacks``).
    overlap [None = "max" for official, "smallest" for signed]: how a cell inside several
        regions combines their values: ``"max"`` (the reference's rule), ``"mean"``
        (average of the covering regions' values), ``"last"`` (the region listed last in
        the record wins) or ``"smallest"`` (the region of smallest area wins: the most
        specific judgment, e.g. a badly drawn hand inside a well drawn person's box). Signed
        maps default to ``"smallest"`` because under ``"max"`` a bad region nested in a
        better region's box never gets its negative weight, so it is never repelled.
    background [None]: value of cells outside every region; None = the mode's default,
        0.5 for official (where it is also a floor under region values) and 0.0 for signed
        (no reward outside judged regions).
    use_global [True]: multiply by ``alpha = (g+1)/2``; False sets ``alpha = 1``
        (ablation "no global reward"; a failed global judgment is then irrelevant).
    binarize [False]: ablation "0/1 reward": a region's value becomes 1 if ``s > 0`` else
        0 (official) or +1 / -1 (signed) instead of the dense score.
    sample_level [False]: ablation "no spatial map": every cell gets one scalar (see
        ``sample_value``), still multiplied by ``alpha``. The paper has no such ablation;
        it is ours.
    sample_value ["region_mean"]: the scalar of ``sample_level``. ``"region_mean"``: the
        plain mean of the rewarded regions' values (official ``(s+1)/2``, signed ``s``,
        after ``binarize``; no background floor, however small the regions), or the
        background when no region is rewarded. ``"map_mean"``: the mean of the spatial map
        over the image (background and official floor included): the same total weight
        as the spatial map, spread evenly.
    cell_rule ["bilinear"]: which cells a region reaches. ``"bilinear"`` is the reference
        trainer's rule (see :mod:`.frame`): the map is painted at the training resolution
        with integer box corners and resized bilinearly to the grid, so a token reads the
        2 x 2 pixels at the middle of its 16 x 16 cell and a box edge through a cell gives
        a blend. ``"coverage"``: a cell takes a region's value when at least
        ``coverage_threshold`` of its area is inside the region (no blends; the same map
        at every resolution of the same picture).
    coverage_threshold [0.5]: under ``cell_rule="coverage"``, a cell belongs to a region
        when at least this fraction of its area is inside the region; in (0, 1].
    """

    mode: Literal["official", "signed"] = "official"
    region_shape: Literal["box", "mask"] = "box"
    overlap: Literal["max", "mean", "last", "smallest"] | None = None
    background: float | None = None
    use_global: bool = True
    binarize: bool = False
    sample_level: bool = False
    sample_value: Literal["region_mean", "map_mean"] = "region_mean"
    coverage_threshold: float = 0.5
    cell_rule: Literal["bilinear", "coverage"] = "bilinear"

    def __post_init__(self) -> None:
        if self.overlap is None and self.mode in ("official", "signed"):
            self.overlap = "max" if self.mode == "official" else "smallest"
        choices = {"mode": ("official", "signed"), "region_shape": ("box", "mask"),
                   "overlap": ("max", "mean", "last", "smallest"), "cell_rule": ("bilinear", "coverage"),
                   "sample_value": ("region_mean", "map_mean")}
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
#
# Coverages are float64 (they are compared against ``coverage_threshold``) and exist only
# for the cells a region touches.

def _overlap_fraction(lo: np.ndarray, hi: np.ndarray, n: int) -> np.ndarray:
    """Fraction of each of ``n`` equal cells of [0, 1] covered by intervals ``[lo, hi]``.

    lo, hi: [K] normalised coordinates (float64) -> [K, n] float64. The cell edges are
    ``k / n`` exactly, so an interval ending on a cell's middle gives exactly 0.5."""
    edges = np.arange(n + 1, dtype=np.float64) / n
    inter = np.minimum(hi[:, None], edges[None, 1:]) - np.maximum(lo[:, None], edges[None, :-1])
    return np.maximum(inter, 0.0) * n


def _box_axis_coverage(boxes: np.ndarray, crop: tuple[float, float, float, float],
                       grid_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """boxes [R, 4] (saved-image pixels) -> (row coverage [R, h], column coverage [R, w]).

    A box's coverage of cell (i, j) is the product ``rows[r, i] * cols[r, j]``."""
    x0, y0, x1, y1 = crop
    u1 = np.clip((boxes[:, 0] - x0) / (x1 - x0), 0.0, 1.0)
    u2 = np.clip((boxes[:, 2] - x0) / (x1 - x0), 0.0, 1.0)
    v1 = np.clip((boxes[:, 1] - y0) / (y1 - y0), 0.0, 1.0)
    v2 = np.clip((boxes[:, 3] - y0) / (y1 - y0), 0.0, 1.0)
    h, w = grid_hw
    return _overlap_fraction(v1, v2, h), _overlap_fraction(u1, u2, w)


def _column_pieces(starts: np.ndarray, ends: np.ndarray, height: int) -> tuple[np.ndarray, ...]:
    """Flat column-major runs -> their pieces within single columns: (col, y0, y1), each
    [P] int64, set rows ``[y0, y1)`` of column ``col``, in flat order."""
    first, last = starts // height, (ends - 1) // height
    per_run = last - first + 1
    run = np.repeat(np.arange(starts.size), per_run)
    col = first[run] + np.arange(run.size) - np.repeat(np.cumsum(per_run) - per_run, per_run)
    y0 = np.where(col == first[run], starts[run] - col * height, 0)
    y1 = np.where(col == last[run], ends[run] - col * height, height)
    return col, y0, y1


# Below this many matrix entries a band's weights are also kept dense: a small matmul is
# cheaper than gathering and reducing the sparse entries (e.g. 64 cells over 1024 pixels).
_DENSE_BAND_ENTRIES = 1 << 15


@dataclasses.dataclass(frozen=True)
class _AxisBands:
    """Area weights of one axis: pixels grouped into intervals, each either one pixel or a
    run of whole pixels inside one cell, and the sparse matrix ``[cells, intervals]`` of
    per-pixel weights (the fraction of a cell's extent that one pixel of the interval
    covers), stored as its non-zero entries sorted by cell (every cell has one), and dense
    as well when small. Shared between calls (cached): the arrays are read-only."""

    bounds: np.ndarray      # [m + 1] int64 pixel boundaries of the m intervals
    cell: np.ndarray        # [nnz] int64, non-decreasing
    interval: np.ndarray    # [nnz] int64
    weight: np.ndarray      # [nnz] float64
    row_start: np.ndarray   # [cells + 1] index of each cell's first entry, then nnz
    first_cell: np.ndarray  # [m] first / last cell each interval overlaps (non-decreasing)
    last_cell: np.ndarray   # [m]
    dense: np.ndarray | None  # [cells, m] float64, or None for large axes

    def apply(self, per_interval: np.ndarray, k0: int = 0) -> tuple[slice, np.ndarray]:
        """Counts [n, k] for the intervals ``k0 .. k0 + n - 1`` (the others count 0) ->
        (the cells those intervals overlap, their area fractions [len(cells), k])."""
        k1 = k0 + per_interval.shape[0]
        c0, c1 = int(self.first_cell[k0]), int(self.last_cell[k1 - 1]) + 1
        if self.dense is not None:
            return slice(c0, c1), self.dense[c0:c1, k0:k1] @ per_interval
        e0, e1 = int(self.row_start[c0]), int(self.row_start[c1])
        local = self.interval[e0:e1] - k0
        inside = (local >= 0) & (local < k1 - k0)
        weighted = np.where(inside, self.weight[e0:e1], 0.0)[:, None] * per_interval[np.clip(local, 0, k1 - k0 - 1)]
        return slice(c0, c1), np.add.reduceat(weighted, self.row_start[c0:c1] - e0, axis=0)


@functools.lru_cache(maxsize=64)
def _axis_bands(start: float, end: float, pixels: int, cells: int) -> _AxisBands:
    """Bands for a crop ``[start, end]`` of a ``pixels``-long axis split into ``cells``.

    The weights are the reference area fractions: in normalised crop coordinates, a pixel
    ``[lo, hi]`` covers ``(min(hi, (i+1)/n) - max(lo, i/n)) * n`` of cell ``i``."""
    length = end - start
    first_pix, last_pix = math.floor(start), min(pixels, math.ceil(end))
    # A pixel holding a cell edge (or a crop edge) inside it is an interval of its own;
    # the pixels between two such pixels all lie inside one cell.
    edges = start + np.arange(cells + 1, dtype=np.float64) * (length / cells)
    bounds = np.unique(np.clip(np.concatenate([np.floor(edges), np.ceil(edges), [first_pix, last_pix]]),
                               first_pix, last_pix)).astype(np.int64)
    # The intervals' [lo, hi] tile [0, 1] exactly (shared bounds, the first clipped to 0,
    # the last to 1), so every cell overlaps some interval by a positive amount.
    lo = np.clip((bounds[:-1] - start) / length, 0.0, 1.0)
    hi = np.clip((bounds[1:] - start) / length, 0.0, 1.0)
    # Candidate cells of each interval, widened by one on each side against rounding;
    # candidates with a zero overlap are dropped below.
    first = np.clip(np.floor(lo * cells).astype(np.int64) - 1, 0, cells - 1)
    last = np.clip(np.ceil(hi * cells).astype(np.int64) + 1, 0, cells - 1)
    per_interval = last - first + 1
    interval = np.repeat(np.arange(lo.size), per_interval)
    cell = first[interval] + np.arange(interval.size) - np.repeat(np.cumsum(per_interval) - per_interval,
                                                                  per_interval)
    inter = np.minimum(hi[interval], (cell + 1) / cells) - np.maximum(lo[interval], cell / cells)
    weight = np.maximum(inter, 0.0) * cells / np.diff(bounds)[interval]
    keep = weight > 0
    order = np.argsort(cell[keep], kind="stable")
    cell, interval, weight = cell[keep][order], interval[keep][order], weight[keep][order]
    row_start = np.searchsorted(cell, np.arange(cells + 1))
    if np.any(np.diff(row_start) == 0):  # reduceat needs one entry per cell
        raise AssertionError(f"axis bands left a cell without pixels: {start}..{end} of {pixels} in {cells}")
    first_cell = np.full(lo.size, cells, dtype=np.int64)
    last_cell = np.full(lo.size, -1, dtype=np.int64)
    np.minimum.at(first_cell, interval, cell)
    np.maximum.at(last_cell, interval, cell)
    dense = None
    if cells * lo.size <= _DENSE_BAND_ENTRIES:
        dense = np.zeros((cells, lo.size), dtype=np.float64)
        np.add.at(dense, (cell, interval), weight)
    bands = _AxisBands(bounds, cell, interval, weight, row_start, first_cell, last_cell, dense)
    for array in dataclasses.astuple(bands):
        if array is not None:
            array.flags.writeable = False
    return bands


def _interval_counts(col: np.ndarray, y0: np.ndarray, y1: np.ndarray, x_bounds: np.ndarray,
                     y_bounds: np.ndarray) -> np.ndarray:
    """Set pixels per (column interval, row interval): [mx, my] float64 (exact integers).

    col, y0, y1: [P] column pieces, all inside the bounds' extent."""
    mx, my = x_bounds.size - 1, y_bounds.size - 1
    kx = np.searchsorted(x_bounds, col, side="right") - 1
    ka = np.searchsorted(y_bounds, y0, side="right") - 1   # row interval holding y0
    kb = np.searchsorted(y_bounds, y1, side="left") - 1    # row interval holding y1 - 1
    same = ka == kb
    # Partial first / last row intervals of each piece ...
    index = np.concatenate([kx * my + ka, (kx * my + kb)[~same]])
    amount = np.concatenate([np.where(same, y1 - y0, y_bounds[np.minimum(ka + 1, my)] - y0),
                             (y1 - y_bounds[kb])[~same]])
    counts = np.bincount(index, weights=amount, minlength=mx * my).reshape(mx, my)
    # ... and the row intervals strictly between them, in full (difference array + cumsum).
    inner = ~same
    delta = (np.bincount(kx[inner] * my + ka[inner] + 1, minlength=mx * my)
             - np.bincount(kx[inner] * my + kb[inner], minlength=mx * my)).reshape(mx, my)
    return counts + np.cumsum(delta, axis=1) * np.diff(y_bounds)[None, :]


def _mask_cell_coverage(pieces: tuple[np.ndarray, ...], crop: tuple[float, float, float, float],
                        width: int, height: int, grid_hw: tuple[int, int]
                        ) -> tuple[slice, slice, np.ndarray] | None:
    """Area average of a mask (its column pieces) over the cells its pixels touch:
    (rows, cols, coverage [len(rows), len(cols)] float64); None when no set pixel is in the
    crop. Other cells have coverage 0.

    Exact for any crop and grid, including cells whose edges fall inside pixels (such a
    pixel counts for the fraction of it inside each cell)."""
    x0, y0, x1, y1 = crop
    h, w = grid_hw
    row_bands, col_bands = _axis_bands(y0, y1, height, h), _axis_bands(x0, x1, width, w)
    xb, yb = col_bands.bounds, row_bands.bounds
    col, top, bottom = pieces
    top, bottom = np.maximum(top, yb[0]), np.minimum(bottom, yb[-1])
    keep = (col >= xb[0]) & (col < xb[-1]) & (bottom > top)
    if not keep.any():
        return None
    col, top, bottom = col[keep], top[keep], bottom[keep]
    # Only the intervals between the first and last set pixel are counted.
    kx0, kx1 = np.searchsorted(xb, [col[0], col[-1]], side="right") - 1   # pieces in column order
    ky0 = int(np.searchsorted(yb, top.min(), side="right")) - 1
    ky1 = int(np.searchsorted(yb, bottom.max(), side="left")) - 1
    counts = _interval_counts(col, top, bottom, xb[kx0:kx1 + 2], yb[ky0:ky1 + 2])  # [mx, my]
    cols, per_col = col_bands.apply(counts, int(kx0))      # [w', my]
    rows, coverage = row_bands.apply(per_col.T, ky0)       # [h', w']
    return rows, cols, coverage


# --------------------------------------------------------------------------- membership

# A box spanning more cells than this forms its coverage products per distinct value.
_DIRECT_BOX_CELLS = 1 << 14


def _box_member(row_cov: np.ndarray, col_cov: np.ndarray, threshold: float) -> _Member | None:
    """A box's cells from its row and column coverages ([h], [w] float64).

    Cell (i, j) is a member when ``row_cov[i] * col_cov[j] >= threshold``. On large grids
    the products are formed only for the distinct coverage values (few: the full rows or
    columns plus the edges) and then expanded."""
    rows, cols = np.flatnonzero(row_cov > 0), np.flatnonzero(col_cov > 0)
    if rows.size == 0 or cols.size == 0:
        return None
    rs, cs = slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1)
    if rows.size * cols.size <= _DIRECT_BOX_CELLS:
        claimed = row_cov[rs, None] * col_cov[None, cs] >= threshold
        row_of = col_of = None
    else:
        row_vals, row_of = np.unique(row_cov[rs], return_inverse=True)
        col_vals, col_of = np.unique(col_cov[cs], return_inverse=True)
        claimed = row_vals[:, None] * col_vals[None, :] >= threshold
    if claimed.all():
        return _Member(rs, cs)
    if not claimed.any():
        return None
    return _Member(rs, cs, claimed if row_of is None else claimed[row_of][:, col_of])


def _mask_member(rle, width: int, height: int, crop: tuple[float, float, float, float],
                 grid_hw: tuple[int, int], threshold: float, where: str) -> _Member | None:
    """A mask's cells: area coverage >= threshold (``threshold`` > 0)."""
    pieces = _column_pieces(*_ones_runs(rle, width, height, where), height)
    x0, y0, x1, y1 = crop
    h, w = grid_hw
    if all(float(v).is_integer() for v in crop) and (int(y1 - y0), int(x1 - x0)) == (h, w):
        # One cell per pixel: the coverage is the (cropped) mask itself, 0 or 1.
        return _pixel_member(pieces, int(x0), int(y0), int(x1), int(y1))
    covered = _mask_cell_coverage(pieces, crop, width, height, grid_hw)
    if covered is None:
        return None
    rows, cols, coverage = covered
    member = _member_of_dense(coverage >= threshold)
    if member is None:
        return None
    return _Member(_shift(member.rows, rows.start), _shift(member.cols, cols.start), member.block)


def _pixel_member(pieces: tuple[np.ndarray, ...], x0: int, y0: int, x1: int, y1: int) -> _Member | None:
    """Column pieces clipped to the pixel crop -> the mask as a bool block over its extent,
    decoded straight to bool (np.repeat over alternating gap / run lengths)."""
    col, top, bottom = pieces
    top, bottom = np.maximum(top, y0), np.minimum(bottom, y1)
    keep = (col >= x0) & (col < x1) & (bottom > top)
    if not keep.any():
        return None
    col, top, bottom = col[keep], top[keep], bottom[keep]
    c0, c1 = int(col[0]), int(col[-1]) + 1            # pieces are in column order
    r0, r1 = int(top.min()), int(bottom.max())
    rows = r1 - r0
    begin = (col - c0) * rows + (top - r0)            # flat offsets in the [c1-c0, rows] block
    end = begin + (bottom - top)
    lengths = np.empty(2 * begin.size + 1, dtype=np.int64)
    lengths[0:-1:2] = begin - np.concatenate([[0], end[:-1]])   # gaps
    lengths[1::2] = end - begin                                  # set runs
    lengths[-1] = (c1 - c0) * rows - end[-1]
    values = np.zeros(lengths.size, dtype=bool)
    values[1::2] = True
    block_t = np.repeat(values, lengths).reshape(c1 - c0, rows)  # column-major: [cols, rows]
    return _Member(slice(r0 - y0, r1 - y0), slice(c0 - x0, c1 - x0), block_t.T)


# --------------------------------------------------------------------------- the map

def _check_grid(grid_hw) -> tuple[int, int]:
    if (not isinstance(grid_hw, (tuple, list)) or len(grid_hw) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in grid_hw)):
        raise ValueError(f"grid_hw must be two positive ints (h, w), got {grid_hw!r}")
    return int(grid_hw[0]), int(grid_hw[1])


def _check_frame(frame_hw, grid_hw: tuple[int, int]) -> tuple[int, int]:
    if frame_hw is None:
        return grid_hw[0] * LATENT_CELL_PIXELS, grid_hw[1] * LATENT_CELL_PIXELS
    return _check_grid(tuple(frame_hw)) if isinstance(frame_hw, (tuple, list)) else _check_grid(frame_hw)


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


def _region_members(rewarded: list[dict], config: RewardMapConfig, crop: tuple[float, float, float, float],
                    width: int, height: int, grid_hw: tuple[int, int], where: str,
                    stats: dict) -> list[_Member | None]:
    """The cells each rewarded region claims (None: no cell at this resolution)."""
    h, w = grid_hw
    threshold = config.coverage_threshold - _COVERAGE_EPS
    use_mask = [config.region_shape == "mask" and r.get("mask") is not None for r in rewarded]
    if config.region_shape == "mask":
        stats["mask_fallbacks"] = use_mask.count(False)
    if threshold <= 0.0:  # a zero coverage passes too: every region claims every cell
        for i, region in enumerate(rewarded):
            if use_mask[i]:
                _ones_runs(region["mask"], width, height, where)  # still reject a broken mask
        return [_Member(slice(0, h), slice(0, w)) for _ in rewarded]
    boxes = np.array([r["bbox"] for r in rewarded], dtype=np.float64).reshape(-1, 4)
    row_cov, col_cov = _box_axis_coverage(boxes, crop, grid_hw)
    return [_mask_member(region["mask"], width, height, crop, grid_hw, threshold, f"{where} region {i}")
            if use_mask[i] else _box_member(row_cov[i], col_cov[i], threshold)
            for i, region in enumerate(rewarded)]


def reward_weights(record: dict, grid_hw: tuple[int, int], config: RewardMapConfig,
                   crop_box: tuple[float, float, float, float] | None = None,
                   missing_global: Literal["skip", "neutral"] = "skip",
                   frame_hw: tuple[int, int] | None = None) -> tuple[torch.Tensor, dict]:
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
        frame_hw: (H', W') pixels of the training frame the grid covers, where the bilinear
            rule paints its map (the resized training image); None = 16 pixels per cell
            (the latent grid of a training image). Give ``grid_hw`` itself for a map at
            one cell per pixel. Unused by the coverage rule.

    Returns:
        (weights [h, w] float32, stats) with stats keys ``alpha``, ``global_score``
        (None when failed), ``global_missing``, ``mean``/``min``/``max`` of the weights,
        ``regions_total``, ``regions_used`` (rewarded and reaching at least one cell; under
        the bilinear rule: covering a frame pixel the resize reads), ``regions_unrewarded``
        (failed or filtered out), ``regions_empty`` (rewarded but reaching no cell at this
        resolution), ``mask_fallbacks``.
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

    region_mean = config.sample_level and config.sample_value == "region_mean"
    if region_mean or not rewarded:
        scalar = values.mean().item() if region_mean and rewarded else background
        weights = np.full((h, w), np.float32(alpha * scalar), dtype=np.float32)
        if config.sample_level:
            stats["regions_used"] = len(rewarded)
    elif config.cell_rule == "bilinear":
        frame = _check_frame(frame_hw, (h, w))
        weights, stats["regions_used"] = bilinear_map(rewarded, values.numpy(), config, alpha, crop, width,
                                                       height, (h, w), frame, where, stats)
        stats["regions_empty"] = len(rewarded) - stats["regions_used"]
    else:
        members = _region_members(rewarded, config, crop, width, height, (h, w), where, stats)
        stats["regions_used"] = sum(m is not None for m in members)
        stats["regions_empty"] = len(rewarded) - stats["regions_used"]
        weights = _paint(members, values.numpy(), config, alpha, (h, w), _region_areas(rewarded, config))

    if config.sample_level and config.sample_value == "map_mean":
        weights = np.full((h, w), np.float32(weights.mean(dtype=np.float64)), dtype=np.float32)
    weights = torch.from_numpy(weights)
    stats.update(mean=float(weights.mean()), min=float(weights.min()), max=float(weights.max()))
    return weights, stats


def pixel_reward_map(record: dict, config: RewardMapConfig,
                     missing_global: Literal["skip", "neutral"] = "skip") -> np.ndarray:
    """Weight map at the saved image's pixel resolution, ``[H, W]`` float32 (for pictures)."""
    pixels = (int(record["height"]), int(record["width"]))
    weights, _ = reward_weights(record, pixels, config, missing_global=missing_global, frame_hw=pixels)
    return weights.numpy()
