# SPDX-License-Identifier: Apache-2.0
"""Reward records -> dense weight maps, checked against hand-computed maps."""
import numpy as np
import pytest
import torch

from srum.config import ConfigError
from srum.records import SCHEMA, RecordError, carries_reward, decode_rle, encode_rle, validate_record
from srum.rewards import GlobalRewardMissing, RewardMapConfig, pixel_reward_map, reward_weights
from srum.rewards import raster


def region(rid, bbox, score, mask=None, **extra):
    out = {"region_id": rid, "bbox": bbox, "mask": mask, "label": f"r{rid}", "score": score,
           "reason": "", "status": "ok", "method": "text", "grounding": None, "detail": {}}
    out.update(extra)
    return out


def coverage_config(**cfg):
    """The area-coverage cell rule (the tests below were written for it). Signed maps keep
    the ``max`` overlap these tests were written with unless a case names another."""
    cfg.setdefault("cell_rule", "coverage")
    if cfg.get("mode") == "signed":
        cfg.setdefault("overlap", "max")
    return RewardMapConfig(**cfg)


def record(regions, width=64, height=32, global_score=0.6):
    glob = ({"score": global_score, "reason": "", "status": "ok", "method": "text"} if global_score is not None
            else {"score": None, "reason": "", "status": "failed", "method": "text"})
    return validate_record({"schema": SCHEMA, "image_id": "img_0", "image_file": "img_0.png", "prompt": "p",
                            "width": width, "height": height, "global": glob, "regions": regions}, "test")


def box_mask(bbox, width, height):
    mask = np.zeros((height, width), dtype=bool)
    x1, y1, x2, y2 = bbox
    mask[y1:y2, x1:x2] = True
    return mask


# Image 64 x 32, grid (h=2, w=4): cells are 16 x 16 pixels.
# A covers cells (0,0), (0,1).  B covers half of column 1 (0.5 >= threshold) and columns 2-3.
A = [0, 0, 32, 16]
B = [24, 0, 64, 32]
GRID = (2, 4)


def two_regions(**kw):
    return record([region(0, A, 0.4), region(1, B, -0.6)], **kw)


def weights(rec, grid=GRID, **cfg):
    w, stats = reward_weights(rec, grid, coverage_config(**cfg))
    assert w.dtype == torch.float32 and tuple(w.shape) == tuple(grid)
    return w, stats


# --------------------------------------------------------------------------- modes and overlap

@pytest.mark.parametrize("cfg, expected", [
    # official: floor 0.5, A -> 0.7, B -> 0.2 (below the floor: no effect); alpha 0.8
    (dict(), [[0.56, 0.56, 0.4, 0.4], [0.4, 0.4, 0.4, 0.4]]),
    (dict(overlap="mean"), [[0.56, 0.4, 0.4, 0.4], [0.4, 0.4, 0.4, 0.4]]),     # (0.7+0.2)/2 < floor
    (dict(overlap="last"), [[0.56, 0.4, 0.4, 0.4], [0.4, 0.4, 0.4, 0.4]]),
    (dict(background=0.1), [[0.56, 0.56, 0.16, 0.16], [0.08, 0.16, 0.16, 0.16]]),
    # signed: R = s inside, 0 outside; alpha 0.8
    (dict(mode="signed"), [[0.32, 0.32, -0.48, -0.48], [0.0, -0.48, -0.48, -0.48]]),
    (dict(mode="signed", overlap="mean"), [[0.32, -0.08, -0.48, -0.48], [0.0, -0.48, -0.48, -0.48]]),
    (dict(mode="signed", overlap="last"), [[0.32, -0.48, -0.48, -0.48], [0.0, -0.48, -0.48, -0.48]]),
    (dict(mode="signed", background=0.25), [[0.32, 0.32, -0.48, -0.48], [0.2, -0.48, -0.48, -0.48]]),
    # B covers only half of column 1: below a 0.6 threshold it drops out there
    (dict(mode="signed", coverage_threshold=0.6), [[0.32, 0.32, -0.48, -0.48], [0.0, 0.0, -0.48, -0.48]]),
    # ablations
    (dict(use_global=False), [[0.7, 0.7, 0.5, 0.5], [0.5, 0.5, 0.5, 0.5]]),
    (dict(mode="signed", use_global=False), [[0.4, 0.4, -0.6, -0.6], [0.0, -0.6, -0.6, -0.6]]),
    (dict(binarize=True), [[0.8, 0.8, 0.4, 0.4], [0.4, 0.4, 0.4, 0.4]]),
    (dict(mode="signed", binarize=True), [[0.8, 0.8, -0.8, -0.8], [0.0, -0.8, -0.8, -0.8]]),
    (dict(sample_level=True), [[0.36] * 4] * 2),                    # mean(0.7, 0.2) * 0.8
    (dict(mode="signed", sample_level=True), [[-0.08] * 4] * 2),    # mean(0.4, -0.6) * 0.8
])
def test_hand_computed_maps(cfg, expected):
    w, stats = weights(two_regions(), **cfg)
    torch.testing.assert_close(w, torch.tensor(expected), atol=1e-6, rtol=0)
    assert stats["alpha"] == pytest.approx(1.0 if cfg.get("use_global") is False else 0.8)
    assert stats["min"] == pytest.approx(min(map(min, expected)))
    assert stats["max"] == pytest.approx(max(map(max, expected)))
    assert stats["mean"] == pytest.approx(float(np.mean(expected)))


def test_no_regions_and_stats():
    w, stats = weights(record([], global_score=-0.5))
    torch.testing.assert_close(w, torch.full(GRID, 0.125))  # 0.5 * (1 - 0.5) / 2
    w, _ = weights(record([], global_score=-0.5), mode="signed")
    torch.testing.assert_close(w, torch.zeros(GRID))
    rec = record([region(0, A, 0.4), region(1, B, None, status="failed"),
                  region(2, [0, 16, 64, 32], 1.0, grounding={"p_relevant": 0.1, "kept": False}),
                  region(3, [40, 20, 44, 24], 1.0)])  # 1/16 of a cell: covers none
    w, stats = weights(rec, mode="signed")
    torch.testing.assert_close(w, torch.tensor([[0.32, 0.32, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]))
    assert {k: stats[k] for k in ("regions_total", "regions_unrewarded", "regions_used", "regions_empty")} == \
        {"regions_total": 4, "regions_unrewarded": 2, "regions_used": 1, "regions_empty": 1}


def test_missing_global():
    rec = two_regions(global_score=None)
    with pytest.raises(GlobalRewardMissing, match="img_0: global judgment failed"):
        reward_weights(rec, GRID, coverage_config())
    w, stats = reward_weights(rec, GRID, coverage_config(mode="signed"), missing_global="neutral")
    torch.testing.assert_close(w, torch.tensor([[0.2, 0.2, -0.3, -0.3], [0.0, -0.3, -0.3, -0.3]]))
    assert stats["alpha"] == 0.5 and stats["global_missing"] and stats["global_score"] is None
    # Without the global reward a failed global judgment does not matter.
    w, stats = reward_weights(rec, GRID, coverage_config(mode="signed", use_global=False))
    torch.testing.assert_close(w, torch.tensor([[0.4, 0.4, -0.6, -0.6], [0.0, -0.6, -0.6, -0.6]]))


def test_config_checks():
    with pytest.raises(ConfigError, match="mode"):
        RewardMapConfig(mode="paper")
    with pytest.raises(ConfigError, match="coverage_threshold"):
        RewardMapConfig(coverage_threshold=0.0)
    with pytest.raises(ValueError, match="grid_hw"):
        reward_weights(two_regions(), (2, 0), RewardMapConfig())
    with pytest.raises(ValueError, match="missing_global"):
        reward_weights(two_regions(), GRID, RewardMapConfig(), missing_global="zero")


# --------------------------------------------------------------------------- masks

def test_mask_shaped_like_box_gives_same_map():
    boxed = two_regions()
    masked = record([region(0, A, 0.4, mask=encode_rle(box_mask(A, 64, 32))),
                     region(1, B, -0.6, mask=encode_rle(box_mask(B, 64, 32)))])
    for cfg in (dict(), dict(mode="signed"), dict(mode="signed", overlap="mean")):
        for grid in (GRID, (3, 5), (32, 64)):
            expected, _ = weights(boxed, grid=grid, **cfg)
            got, stats = weights(masked, grid=grid, region_shape="mask", **cfg)
            torch.testing.assert_close(got, expected)
            assert stats["mask_fallbacks"] == 0


def test_l_shaped_mask_differs_from_its_box():
    # bbox covers cells (0,0), (0,1), (1,0), (1,1); the L covers column 0 and the bottom row.
    mask = np.zeros((32, 64), dtype=bool)
    mask[:, 0:16] = True
    mask[16:32, 0:32] = True
    mask[0:4, 16:32] = True  # a sliver into cell (0,1): coverage 0.25 < 0.5
    rec = record([region(0, [0, 0, 32, 32], -0.5, mask=encode_rle(mask)), region(1, [48, 0, 64, 16], 0.5)])
    box, _ = weights(rec, mode="signed", use_global=False)
    got, stats = weights(rec, mode="signed", use_global=False, region_shape="mask")
    torch.testing.assert_close(box, torch.tensor([[-0.5, -0.5, 0.0, 0.5], [-0.5, -0.5, 0.0, 0.0]]))
    torch.testing.assert_close(got, torch.tensor([[-0.5, 0.0, 0.0, 0.5], [-0.5, -0.5, 0.0, 0.0]]))
    assert stats["mask_fallbacks"] == 1  # region 1 has no mask: its box is used
    # A lower threshold lets the sliver claim cell (0,1).
    got, _ = weights(rec, mode="signed", use_global=False, region_shape="mask", coverage_threshold=0.25)
    assert got[0, 1].item() == pytest.approx(-0.5)


def mask_coverage(mask, crop, grid):
    """The rasterizer's area coverage of a bool mask [H, W] as a dense [h, w] array."""
    height, width = mask.shape
    rle = encode_rle(mask)
    pieces = raster._column_pieces(*raster._ones_runs(rle, width, height, "test"), height)
    out = np.zeros(grid)
    covered = raster._mask_cell_coverage(pieces, crop, width, height, grid)
    if covered is not None:
        rows, cols, coverage = covered
        out[rows, cols] = coverage
    return out


def test_mask_coverage_general_path_is_exact_area():
    rng = np.random.default_rng(0)
    boxes = [[3, 5, 41, 30], [0, 0, 64, 32], [17, 2, 18, 31]]
    for crop, grid in [((0, 0, 64, 32), (3, 5)), ((10.5, 2.0, 50.25, 31.0), (4, 7)), ((8, 0, 56, 32), (2, 4)),
                       ((0, 0, 64, 32), (70, 130)), ((1.5, 0.5, 60.5, 31.5), (32, 64))]:
        rows, cols = raster._box_axis_coverage(np.array(boxes, dtype=np.float64), crop, grid)
        for box, row_cov, col_cov in zip(boxes, rows, cols):
            np.testing.assert_allclose(mask_coverage(box_mask(box, 64, 32), crop, grid),
                                       np.outer(row_cov, col_cov), atol=1e-12, rtol=0)
    random_mask = rng.random((32, 64)) < 0.5
    cov = mask_coverage(random_mask, (0, 0, 64, 32), (3, 5))
    assert cov.sum() * (64 / 5) * (32 / 3) == pytest.approx(random_mask.sum(), rel=1e-12)
    assert mask_coverage(np.zeros((32, 64), dtype=bool), (0, 0, 64, 32), (3, 5)).sum() == 0


@pytest.mark.parametrize("start, end, pixels, cells", [
    (0.0, 64.0, 64, 4), (0.0, 64.0, 64, 5), (10.5, 50.25, 64, 7), (0.0, 7.0, 7, 30), (2.0, 5.0, 9, 3),
    (0.25, 99.75, 100, 100), (0.0, 1.0, 1, 1), (3.0, 3.5, 4, 2)])
def test_axis_bands_are_area_fractions(start, end, pixels, cells, monkeypatch):
    """Every cell's pixels add up to the whole cell; sparse and dense forms agree."""
    bands = raster._axis_bands.__wrapped__(start, end, pixels, cells)
    monkeypatch.setattr(raster, "_DENSE_BAND_ENTRIES", 0)
    sparse = raster._axis_bands.__wrapped__(start, end, pixels, cells)
    assert bands.dense is not None and sparse.dense is None
    lengths = np.diff(bands.bounds).astype(np.float64)
    np.testing.assert_allclose(bands.dense @ lengths, np.ones(cells), atol=1e-12, rtol=0)
    np.testing.assert_allclose(np.bincount(bands.cell, bands.weight * lengths[bands.interval]), np.ones(cells),
                               atol=1e-12, rtol=0)
    counts = np.random.default_rng(1).integers(0, 5, (lengths.size, 3)).astype(np.float64)
    for k0 in range(0, lengths.size, max(1, lengths.size // 3)):
        for k1 in (k0 + 1, lengths.size):
            cells_dense, dense = bands.apply(counts[k0:k1], k0)
            cells_sparse, fractions = sparse.apply(counts[k0:k1], k0)
            assert cells_dense == cells_sparse
            np.testing.assert_allclose(fractions, dense, atol=1e-12, rtol=0)
            full = np.zeros_like(counts)
            full[k0:k1] = counts[k0:k1]
            outside = np.ones(cells, dtype=bool)
            outside[cells_dense] = False
            np.testing.assert_allclose((bands.dense @ full)[cells_dense], dense, atol=1e-12, rtol=0)
            assert not (bands.dense @ full)[outside].any()


def test_broken_mask_is_a_record_error():
    rec = record([region(0, A, 0.4, mask=encode_rle(box_mask(A, 64, 32)))])
    rec["regions"][0]["mask"] = {"size": [32, 64], "counts": [5, 3]}
    with pytest.raises(RecordError, match="img_0 region 0: mask RLE counts"):
        reward_weights(rec, GRID, coverage_config(region_shape="mask"))
    rec["regions"][0]["mask"] = {"size": [16, 64], "counts": [16 * 64]}
    with pytest.raises(RecordError, match=r"img_0 region 0: mask size \[16, 64\]"):
        reward_weights(rec, GRID, coverage_config(region_shape="mask"))
    # Box regions do not read the mask.
    reward_weights(rec, GRID, coverage_config())


# --------------------------------------------------------------------------- geometry

def test_rescaled_records_give_identical_latent_maps():
    small = record([region(0, [8, 8, 40, 24], 0.5), region(1, [32, 16, 64, 64], -0.5)], width=64, height=64)
    large = record([region(0, [16, 16, 80, 48], 0.5), region(1, [64, 32, 128, 128], -0.5)], width=128, height=128)
    for cfg in (dict(), dict(mode="signed", overlap="mean")):
        a, _ = weights(small, grid=(4, 4), **cfg)
        b, _ = weights(large, grid=(4, 4), **cfg)
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    # Masks too.
    small_m = record([region(0, [8, 8, 40, 24], 0.5, mask=encode_rle(box_mask([8, 8, 40, 24], 64, 64)))],
                     width=64, height=64)
    large_m = record([region(0, [16, 16, 80, 48], 0.5, mask=encode_rle(box_mask([16, 16, 80, 48], 128, 128)))],
                     width=128, height=128)
    a, _ = weights(small_m, grid=(4, 4), region_shape="mask", mode="signed")
    b, _ = weights(large_m, grid=(4, 4), region_shape="mask", mode="signed")
    torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_non_square_training_resize():
    # Saved 64 x 32; training resize to 128 x 48 -> token grid (3, 8). The box [0, 0, 32, 16]
    # is the top-left quarter: columns 0-3 fully; rows: 1.5 cells -> row 0 full, row 1 half (kept).
    rec = record([region(0, [0, 0, 32, 16], 1.0)])
    w, _ = weights(rec, grid=(3, 8), mode="signed", use_global=False)
    expected = torch.zeros(3, 8)
    expected[0:2, 0:4] = 1.0
    torch.testing.assert_close(w, expected)
    w, _ = weights(rec, grid=(3, 8), mode="signed", use_global=False, coverage_threshold=0.75)
    expected[1] = 0.0
    torch.testing.assert_close(w, expected)


def test_crop_box():
    # Crop the middle 32 x 32 of the 64 x 32 image, grid (2, 2) of 16-px cells.
    # A (x 0..32) -> crop x 0..16: cell (0,0). B (x 24..64) -> crop x 8..32: half of column 0, all of column 1.
    rec = two_regions()
    w, _ = reward_weights(rec, (2, 2), coverage_config(mode="signed"), crop_box=(16, 0, 48, 32))
    torch.testing.assert_close(w, torch.tensor([[0.32, -0.48], [-0.48, -0.48]]))
    masked = record([region(0, A, 0.4, mask=encode_rle(box_mask(A, 64, 32))),
                     region(1, B, -0.6, mask=encode_rle(box_mask(B, 64, 32)))])
    wm, _ = reward_weights(masked, (2, 2), coverage_config(mode="signed", region_shape="mask"),
                           crop_box=(16, 0, 48, 32))
    torch.testing.assert_close(wm, w)
    with pytest.raises(ValueError, match="crop_box"):
        reward_weights(rec, (2, 2), coverage_config(), crop_box=(16, 0, 80, 32))


def test_pixel_reward_map():
    rec = two_regions()
    pixels = pixel_reward_map(rec, coverage_config(mode="signed"))
    assert pixels.shape == (32, 64) and pixels.dtype == np.float32
    assert pixels[0, 0] == pytest.approx(0.32)       # A only
    assert pixels[5, 25] == pytest.approx(0.32)      # A and B: max
    assert pixels[5, 33] == pytest.approx(-0.48)     # B only
    assert pixels[20, 23] == pytest.approx(0.0)      # background
    assert pixels[20, 24] == pytest.approx(-0.48)    # first column of B
    assert np.isclose(pixels, 0.32).sum() == 32 * 16  # A is 32 x 16 pixels


# --------------------------------------------------------------------------- against a slow reference
#
# A direct dense float64 computation of the documented rule: coverage of every region as a
# full [h, w] map (boxes: outer product of the 1-D overlaps; masks: area weights of every
# pixel for every cell, applied as dense matrices), membership ``coverage >= threshold - 1e-6``,
# then the combination. The rasterizer must give the same maps and statistics.

def _fractions(lo, hi, n):
    """[K] normalised intervals -> [K, n] fraction of each of n equal cells of [0, 1] covered."""
    edges = np.arange(n + 1, dtype=np.float64) / n
    return np.maximum(np.minimum(hi[:, None], edges[None, 1:]) - np.maximum(lo[:, None], edges[None, :-1]), 0) * n


def _pixel_weights(start, end, pixels, cells):
    """[cells, pixels]: fraction of each cell covered by each pixel of the crop [start, end]."""
    pix = np.arange(pixels, dtype=np.float64)
    return _fractions(np.clip((pix - start) / (end - start), 0, 1),
                      np.clip((pix + 1 - start) / (end - start), 0, 1), cells).T


def reference_weights(rec, grid, cfg, crop=None, missing_global="skip"):
    h, w = grid
    width, height = rec["width"], rec["height"]
    x0, y0, x1, y1 = (0.0, 0.0, float(width), float(height)) if crop is None else (float(v) for v in crop)
    glob = rec["global"]
    if not cfg.use_global:
        alpha = 1.0
    elif not carries_reward(glob):
        if missing_global == "skip":
            raise GlobalRewardMissing("reference")
        alpha = 0.5
    else:
        alpha = (glob["score"] + 1.0) / 2.0
    background = cfg.background_value
    rewarded = [r for r in rec["regions"] if carries_reward(r)]
    values = cfg.region_value(torch.tensor([float(r["score"]) for r in rewarded], dtype=torch.float64)).numpy()
    used = fallbacks = 0
    if cfg.sample_level or not rewarded:
        reward = np.full(grid, values.mean() if cfg.sample_level and rewarded else background)
        used = len(rewarded) if cfg.sample_level else 0
    else:
        coverage = []
        for r in rewarded:
            if cfg.region_shape == "mask" and r["mask"] is not None:
                cov = (_pixel_weights(y0, y1, height, h) @ decode_rle(r["mask"]).astype(np.float64)
                       @ _pixel_weights(x0, x1, width, w).T)
            else:
                fallbacks += cfg.region_shape == "mask"
                bx0, by0, bx1, by1 = r["bbox"]
                rows = _fractions(np.clip([(by0 - y0) / (y1 - y0)], 0, 1), np.clip([(by1 - y0) / (y1 - y0)], 0, 1), h)
                cols = _fractions(np.clip([(bx0 - x0) / (x1 - x0)], 0, 1), np.clip([(bx1 - x0) / (x1 - x0)], 0, 1), w)
                cov = np.outer(rows[0], cols[0])
            coverage.append(cov)
        member = np.stack(coverage) >= cfg.coverage_threshold - 1e-6          # [R, h, w]
        used = int(member.reshape(len(rewarded), -1).any(axis=1).sum())
        covered = member.any(axis=0)
        vals = values[:, None, None] * np.ones_like(member, dtype=np.float64)
        if cfg.overlap == "max":
            combined = np.where(member, vals, -np.inf).max(axis=0)
        elif cfg.overlap == "mean":
            combined = (vals * member).sum(axis=0) / np.maximum(member.sum(axis=0), 1)
        else:
            combined = values[(np.arange(1, len(rewarded) + 1)[:, None, None] * member).argmax(axis=0)]
        if cfg.mode == "official":
            combined = np.maximum(combined, background)
        reward = np.where(covered, combined, background)
    weights = (alpha * reward).astype(np.float32)
    stats = {"regions_used": used, "regions_empty": 0 if cfg.sample_level else len(rewarded) - used,
             "mask_fallbacks": fallbacks if not cfg.sample_level else 0}
    return weights, stats


def random_record(rng, width, height, regions):
    yy, xx = np.mgrid[0:height, 0:width]
    out = []
    for i in range(regions):
        bx0, by0 = rng.uniform(-0.2, 0.9) * width, rng.uniform(-0.2, 0.9) * height
        box = [max(0.0, bx0), max(0.0, by0), min(width, bx0 + rng.uniform(0.05, 0.7) * width),
               min(height, by0 + rng.uniform(0.05, 0.7) * height)]
        if rng.random() < 0.5:
            box = [float(round(v)) for v in box]
        if box[2] <= box[0] or box[3] <= box[1]:
            box = [0.0, 0.0, float(width), float(height)]
        kind = rng.integers(4)
        if kind == 0:
            mask = None                                               # falls back to the box
        elif kind == 1:
            mask = rng.random((height, width)) < rng.uniform(0.1, 0.9)  # noise, beyond the box too
        elif kind == 2:                                               # ellipse inside the box
            cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
            rx, ry = (box[2] - box[0]) / 2 + 0.5, (box[3] - box[1]) / 2 + 0.5
            mask = ((xx + 0.5 - cx) / rx) ** 2 + ((yy + 0.5 - cy) / ry) ** 2 <= 1.0
        else:
            mask = box_mask([int(box[0]), int(box[1]), int(np.ceil(box[2])), int(np.ceil(box[3]))], width, height)
        score = float(rng.choice([rng.uniform(-1, 1), rng.uniform(-1, 1), 0.0, 1.0, -1.0]))
        extra = {"status": "failed", "score": None} if rng.random() < 0.1 else {}
        out.append(region(i, box, score, mask=None if mask is None else encode_rle(mask), **extra))
    return record(out, width=width, height=height, global_score=float(rng.uniform(-1, 1)))


CONFIGS = [dict(), dict(region_shape="mask"), dict(overlap="mean"), dict(overlap="last", region_shape="mask"),
           dict(mode="signed", region_shape="mask"), dict(mode="signed", overlap="mean", region_shape="mask"),
           dict(mode="signed", overlap="last"), dict(region_shape="mask", coverage_threshold=1.0),
           dict(mode="signed", region_shape="mask", coverage_threshold=0.25, background=0.1),
           dict(region_shape="mask", coverage_threshold=1e-7),  # at most eps: zero coverage counts too
           dict(region_shape="mask", binarize=True, use_global=False), dict(sample_level=True, region_shape="mask")]


def cases(rng, width, height):
    """(crop, grid) pairs: whole image, integral and fractional crops; grids coarser than,
    equal to (one cell per pixel) and finer than the pixels, dividing or not."""
    ix0, iy0 = int(rng.integers(0, width // 2)), int(rng.integers(0, height // 2))
    int_crop = (ix0, iy0, int(rng.integers(ix0 + 1, width + 1)), int(rng.integers(iy0 + 1, height + 1)))
    fx0, fy0 = rng.uniform(0, width / 2), rng.uniform(0, height / 2)
    frac_crop = (fx0, fy0, rng.uniform(fx0 + 1, width), rng.uniform(fy0 + 1, height))
    out = []
    for crop in (None, int_crop, frac_crop):
        cw, ch = (width, height) if crop is None else (crop[2] - crop[0], crop[3] - crop[1])
        out += [(crop, (int(rng.integers(1, 9)), int(rng.integers(1, 9)))),
                (crop, (max(1, int(ch)), max(1, int(cw)))),
                (crop, (int(rng.integers(1, 2 * height)), int(rng.integers(1, 2 * width))))]
        if crop is not int_crop and int(ch) % 2 == 0 and int(cw) % 2 == 0:
            out.append((crop, (int(ch) // 2, int(cw) // 2)))
    return out


@pytest.fixture(params=["dense", "sparse"])
def band_form(request, monkeypatch):
    """Run with the small-axis dense band matrices and with the sparse form large axes use."""
    if request.param == "sparse":
        monkeypatch.setattr(raster, "_DENSE_BAND_ENTRIES", 0)
    raster._axis_bands.cache_clear()
    yield request.param
    raster._axis_bands.cache_clear()


@pytest.mark.parametrize("seed", range(4))
def test_matches_slow_reference_on_random_records(seed, band_form):
    rng = np.random.default_rng(seed)
    for width, height in [(int(rng.integers(6, 40)), int(rng.integers(6, 40))), (32, 24)]:
        rec = random_record(rng, width, height, int(rng.integers(1, 7)))
        for crop, grid in cases(rng, width, height):
            for cfg in CONFIGS:
                config = coverage_config(**cfg)
                got, stats = reward_weights(rec, grid, config, crop_box=crop)
                expected, expected_stats = reference_weights(rec, grid, config, crop)
                where = f"{width}x{height} crop {crop} grid {grid} {cfg}"
                np.testing.assert_allclose(got.numpy(), expected, atol=1e-6, rtol=0, err_msg=where)
                assert {k: stats[k] for k in expected_stats} == expected_stats, where
                assert (stats["min"], stats["max"]) == (float(expected.min()), float(expected.max())), where
                assert stats["mean"] == pytest.approx(float(expected.mean()), abs=1e-6), where


def test_pixel_map_matches_reference_with_masks():
    """The picture path (one cell per pixel) on a bench-like record: overlapping ellipses."""
    rng = np.random.default_rng(7)
    rec = random_record(rng, 96, 80, 10)
    for cfg in CONFIGS:
        config = coverage_config(**cfg)
        expected, _ = reference_weights(rec, (80, 96), config)
        np.testing.assert_allclose(pixel_reward_map(rec, config), expected, atol=1e-6, rtol=0, err_msg=str(cfg))


def test_box_edges_on_cell_middles_count_half():
    """Fractional box edges on the pixel grid and on a coarse grid: an edge on a cell's
    middle gives exactly 0.5 coverage, claimed at threshold 0.5, not at 0.5 + 1e-5; a
    corner cell with two such edges has 0.25."""
    rec = record([region(0, [2.5, 1.5, 6.5, 3.0], 1.0)], width=8, height=4)
    expected = np.zeros((4, 8), dtype=np.float32)
    expected[1:3, 2:7] = 1.0
    expected[1, 2] = expected[1, 6] = 0.0  # corners: 0.5 * 0.5
    got, _ = reward_weights(rec, (4, 8), coverage_config(mode="signed", use_global=False))
    np.testing.assert_array_equal(got.numpy(), expected)
    expected[1, :] = 0.0
    expected[:, 2] = expected[:, 6] = 0.0
    got, _ = reward_weights(rec, (4, 8), coverage_config(mode="signed", use_global=False,
                                                          coverage_threshold=0.5 + 1e-5))
    np.testing.assert_array_equal(got.numpy(), expected)
    # Coarse: 2 x 2 cells of 4 x 2 pixels; the box covers half of cell (1, 0) in x.
    got, _ = reward_weights(record([region(0, [2.0, 2.0, 8.0, 4.0], 1.0)], width=8, height=4), (2, 2),
                            coverage_config(mode="signed", use_global=False))
    np.testing.assert_array_equal(got.numpy(), [[0.0, 0.0], [1.0, 1.0]])


def test_pixel_map_of_cropped_mask_is_the_mask():
    """An integral crop at one cell per pixel: the map is the cropped mask itself."""
    rng = np.random.default_rng(3)
    mask = rng.random((32, 64)) < 0.3
    rec = record([region(0, [0, 0, 64, 32], 0.5, mask=encode_rle(mask))])
    crop = (5, 3, 50, 30)
    got, stats = reward_weights(rec, (27, 45), coverage_config(mode="signed", use_global=False,
                                                               region_shape="mask"), crop_box=crop)
    np.testing.assert_array_equal(got.numpy(), np.where(mask[3:30, 5:50], 0.5, 0.0).astype(np.float32))
    assert stats["regions_used"] == 1
    # A mask with no pixel inside the crop claims nothing.
    outside = np.zeros((32, 64), dtype=bool)
    outside[:, 55:] = True
    rec = record([region(0, [55, 0, 64, 32], 0.5, mask=encode_rle(outside))])
    for grid in ((27, 45), (4, 4)):
        got, stats = reward_weights(rec, grid, coverage_config(region_shape="mask"), crop_box=crop)
        assert stats["regions_used"] == 0 and stats["regions_empty"] == 1
        assert (got.numpy() == np.float32(0.5 * 0.8)).all()


# --------------------------------------------------------------------------- the reference trainer's bilinear rule
#
# Written from the reference trainer's description, independently of srum.rewards.frame: a
# float32 pixel map of the training frame starting at 0.5, each region's box corners
# truncated with int() (after rescaling to the frame, our documented fix), a box whose
# corners cross skipped, the rest clamped to the frame and raised to max(map, (s+1)/2),
# the map multiplied by (g+1)/2 and brought to the latent grid by F.interpolate(bilinear,
# align_corners=False).

def reference_trainer_map(rec, grid, frame, crop=None):
    fh, fw = frame
    x0, y0, x1, y1 = (0.0, 0.0, float(rec["width"]), float(rec["height"])) if crop is None else crop
    pixels = np.full((fh, fw), 0.5, dtype=np.float32)
    for r in rec["regions"]:
        if not carries_reward(r):
            continue
        bx1, by1, bx2, by2 = r["bbox"]
        xa, xb = int((bx1 - x0) * fw / (x1 - x0)), int((bx2 - x0) * fw / (x1 - x0))
        ya, yb = int((by1 - y0) * fh / (y1 - y0)), int((by2 - y0) * fh / (y1 - y0))
        if xa >= xb or ya >= yb:
            continue
        xa, xb, ya, yb = max(0, xa), min(fw, xb), max(0, ya), min(fh, yb)
        if xa < xb and ya < yb:
            np.maximum(pixels[ya:yb, xa:xb], (r["score"] + 1.0) / 2.0, out=pixels[ya:yb, xa:xb])
    pixels = pixels * ((rec["global"]["score"] + 1.0) / 2.0)
    return torch.nn.functional.interpolate(torch.from_numpy(pixels)[None, None], size=grid, mode="bilinear",
                                           align_corners=False)[0, 0]


def trainer_like_record(rng):
    """A saved image whose sides are not multiples of 16, with overlapping boxes, boxes
    touching the image edges, boxes of a pixel or less in the frame and fractional corners."""
    width, height = (int(v) for v in rng.integers(20, 300, size=2))
    width, height = width + (width % 16 == 0), height + (height % 16 == 0)
    regions = []
    for i in range(int(rng.integers(0, 9))):
        x1, y1 = rng.uniform(0, width - 1), rng.uniform(0, height - 1)
        x2 = rng.choice([rng.uniform(x1 + 0.1, width), float(width), x1 + rng.uniform(0.1, 2.0)])
        y2 = rng.choice([rng.uniform(y1 + 0.1, height), float(height), y1 + rng.uniform(0.1, 2.0)])
        box = [0.0 if rng.random() < 0.2 else x1, 0.0 if rng.random() < 0.2 else y1,
               min(float(x2), width), min(float(y2), height)]
        if rng.random() < 0.5:
            box = [float(np.floor(box[0])), float(np.floor(box[1])), float(np.ceil(box[2])), float(np.ceil(box[3]))]
        if i and rng.random() < 0.3:  # the same box as the previous region, another score
            box = list(regions[-1]["bbox"])
        failed = rng.random() < 0.1
        score = None if failed else float(rng.choice([rng.uniform(-1, 1), 1.0, -1.0, 0.0]))
        regions.append(region(i, box, score, **({"status": "failed"} if failed else {})))
    return record(regions, width=width, height=height, global_score=float(rng.uniform(-1, 1)))


def trainer_like_crop(rng, rec):
    if rng.random() < 0.5:
        return None
    width, height = rec["width"], rec["height"]
    x0, y0 = rng.uniform(0, width / 2), rng.uniform(0, height / 2)
    crop = (x0, y0, rng.uniform(x0 + 4, width), rng.uniform(y0 + 4, height))
    return tuple(float(round(v)) for v in crop) if rng.random() < 0.5 else crop


def test_official_map_equals_reference_trainer_on_random_records():
    """400 random records: the default (official, bilinear) map equals the reference rule at
    16 frame pixels per token, with and without crops; so does the pixel-resolution map."""
    rng = np.random.default_rng(14)
    largest = 0.0
    for _ in range(400):
        rec = trainer_like_record(rng)
        crop = trainer_like_crop(rng, rec)
        grid = (int(rng.integers(1, 24)), int(rng.integers(1, 24)))
        frame = (16 * grid[0], 16 * grid[1])
        got, stats = reward_weights(rec, grid, RewardMapConfig(), crop_box=crop)
        expected = reference_trainer_map(rec, grid, frame, crop)
        largest = max(largest, float((got - expected).abs().max()))
        where = f"{rec['width']}x{rec['height']} {crop} {grid}"
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=0, msg=where)
        assert stats["regions_used"] + stats["regions_empty"] + stats["regions_unrewarded"] == len(rec["regions"])
    assert largest < 1e-6


def test_pixel_map_equals_reference_trainer_map_at_the_saved_size():
    """At one cell per pixel with the frame the saved image, the boxes are used unscaled, as
    the reference uses them: the map is the painted pixel map itself."""
    rng = np.random.default_rng(15)
    for _ in range(100):
        rec = trainer_like_record(rng)
        size = (rec["height"], rec["width"])
        expected = reference_trainer_map(rec, size, size)
        np.testing.assert_allclose(pixel_reward_map(rec, RewardMapConfig()), expected.numpy(), atol=1e-6, rtol=0)


def test_bilinear_rule_at_box_edges_differs_from_coverage():
    """The issue's examples on a 1024 x 1024 image, 64 x 64 tokens: a box ending at x = 520
    reaches half of token column 32's two centre pixels (0.75), where the coverage rule
    gives the whole token (8 of 16 pixels = half its area: 1.0); a 9 x 9 box over a token's
    centre pixels gives that token 1.0, where its area coverage (81/256) leaves 0.5."""
    edge = record([region(0, [0, 0, 520, 1024], 1.0)], width=1024, height=1024, global_score=1.0)
    got, _ = reward_weights(edge, (64, 64), RewardMapConfig())
    assert got[10, 32].item() == pytest.approx(0.75) and got[10, 31].item() == 1.0 and got[10, 33].item() == 0.5
    old, _ = reward_weights(edge, (64, 64), RewardMapConfig(cell_rule="coverage"))
    assert old[10, 32].item() == 1.0
    small = record([region(0, [515, 515, 524, 524], 1.0)], width=1024, height=1024, global_score=1.0)
    got, stats = reward_weights(small, (64, 64), RewardMapConfig())
    assert got[32, 32].item() == 1.0 and (got.sum().item() - 1.0) == pytest.approx(0.5 * (64 * 64 - 1))
    assert stats["regions_used"] == 1
    old, stats = reward_weights(small, (64, 64), RewardMapConfig(cell_rule="coverage"))
    assert old[32, 32].item() == 0.5 and stats["regions_empty"] == 1


def test_bilinear_rule_rescales_boxes_to_the_training_frame():
    """A 500 x 300 saved image trained at 512 x 304 (32 x 19 tokens): the boxes are
    rescaled to the frame first (the reference would use them unscaled)."""
    rec = record([region(0, [250, 0, 500, 300], 1.0)], width=500, height=300, global_score=1.0)
    got, _ = reward_weights(rec, (19, 32), RewardMapConfig(), frame_hw=(304, 512))
    # x = 250 -> 256 in the frame: token 16 starts there and is fully inside.
    assert (got[:, 16:] == 1.0).all() and (got[:, :16] == 0.5).all()
    np.testing.assert_allclose(got.numpy(), reference_trainer_map(rec, (19, 32), (304, 512)).numpy(), atol=1e-6)


def test_bilinear_rule_masks_signed_and_overlaps():
    """Mask regions under the bilinear rule: a frame pixel is in the mask when the saved
    pixel under its centre is set, so a box-shaped mask gives its box's map; signed maps
    and every overlap rule work on the sampled pixels."""
    boxed = two_regions()
    masked = record([region(0, A, 0.4, mask=encode_rle(box_mask(A, 64, 32))),
                     region(1, B, -0.6, mask=encode_rle(box_mask(B, 64, 32)))])
    for cfg in (dict(), dict(mode="signed"), dict(mode="signed", overlap="mean"), dict(overlap="last"),
                dict(mode="signed", overlap="smallest")):
        for grid in (GRID, (3, 5), (32, 64)):
            expected, _ = reward_weights(boxed, grid, RewardMapConfig(**cfg))
            got, stats = reward_weights(masked, grid, RewardMapConfig(region_shape="mask", **cfg))
            torch.testing.assert_close(got, expected)
            assert stats["mask_fallbacks"] == 0
    # 16 px cells on the 64 x 32 image: a token reads pixels 7, 8 of its cell. B starts at
    # x = 24, between the centre pixels 23 and 24 of column 1: the lower token there blends
    # background and B (-0.24); the upper one is inside A, the smaller region (0.32).
    got, _ = reward_weights(boxed, GRID, RewardMapConfig(mode="signed"), frame_hw=(32, 64))
    torch.testing.assert_close(got, torch.tensor([[0.32, 0.32, -0.48, -0.48], [0.0, -0.24, -0.48, -0.48]]))


# --------------------------------------------------------------------------- signed overlaps

def test_signed_maps_let_a_nested_bad_region_repel():
    """A badly drawn part (s = -0.8) inside a well drawn object's box (s = 0.6): under the
    signed default (smallest region wins) the part gets its negative weight; under max it
    would be hidden by the object's score and never repelled."""
    rec = record([region(0, [0, 0, 64, 32], 0.6), region(1, [16, 0, 32, 16], -0.8)], global_score=1.0)
    for rule in ("bilinear", "coverage"):
        signed = RewardMapConfig(mode="signed", cell_rule=rule)
        assert signed.overlap == "smallest"
        got, _ = reward_weights(rec, GRID, signed)
        torch.testing.assert_close(got, torch.tensor([[0.6, -0.8, 0.6, 0.6], [0.6, 0.6, 0.6, 0.6]]))
        got, _ = reward_weights(rec, GRID, RewardMapConfig(mode="signed", cell_rule=rule, overlap="max"))
        assert (got >= 0.6 - 1e-6).all()
    # listed the other way round, the smaller region still wins; equal areas: the later one
    flipped = record([region(1, [16, 0, 32, 16], -0.8), region(0, [0, 0, 64, 32], 0.6)], global_score=1.0)
    got, _ = reward_weights(flipped, GRID, RewardMapConfig(mode="signed"))
    assert got[0, 1].item() == pytest.approx(-0.8)
    twins = record([region(0, A, 0.6), region(1, A, -0.4)], global_score=1.0)
    got, _ = reward_weights(twins, GRID, RewardMapConfig(mode="signed"))
    assert got[0, 0].item() == pytest.approx(-0.4)
    assert RewardMapConfig().overlap == "max"  # official keeps the reference's rule


def test_sample_level_region_mean_or_map_mean():
    """region_mean: the plain mean of the region values, no floor ((0.7 + 0.2) / 2 * 0.8);
    map_mean: the spatial map's mean, the official 0.5 floor and background included."""
    rec = two_regions()
    got, _ = reward_weights(rec, GRID, RewardMapConfig(sample_level=True))
    torch.testing.assert_close(got, torch.full(GRID, 0.36))
    spatial, _ = reward_weights(rec, GRID, RewardMapConfig())
    got, stats = reward_weights(rec, GRID, RewardMapConfig(sample_level=True, sample_value="map_mean"))
    torch.testing.assert_close(got, torch.full(GRID, float(spatial.double().mean())))
    assert float(got[0, 0]) > 0.4 and stats["regions_used"] == 2          # above the floored background
    with pytest.raises(ConfigError, match="sample_value"):
        RewardMapConfig(sample_value="median")
