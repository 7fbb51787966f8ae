# SPDX-License-Identifier: Apache-2.0
"""Reward records -> dense weight maps, checked against hand-computed maps."""
import numpy as np
import pytest
import torch

from srum.config import ConfigError
from srum.records import SCHEMA, encode_rle, validate_record
from srum.rewards import GlobalRewardMissing, RewardMapConfig, pixel_reward_map, reward_weights
from srum.rewards.raster import _box_coverage, _mask_coverage


def region(rid, bbox, score, mask=None, **extra):
    out = {"region_id": rid, "bbox": bbox, "mask": mask, "label": f"r{rid}", "score": score,
           "reason": "", "status": "ok", "method": "text", "grounding": None, "detail": {}}
    out.update(extra)
    return out


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
    w, stats = reward_weights(rec, grid, RewardMapConfig(**cfg))
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
        reward_weights(rec, GRID, RewardMapConfig())
    w, stats = reward_weights(rec, GRID, RewardMapConfig(mode="signed"), missing_global="neutral")
    torch.testing.assert_close(w, torch.tensor([[0.2, 0.2, -0.3, -0.3], [0.0, -0.3, -0.3, -0.3]]))
    assert stats["alpha"] == 0.5 and stats["global_missing"] and stats["global_score"] is None
    # Without the global reward a failed global judgment does not matter.
    w, stats = reward_weights(rec, GRID, RewardMapConfig(mode="signed", use_global=False))
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


def test_mask_coverage_general_path_is_exact_area():
    rng = np.random.default_rng(0)
    boxes = [[3, 5, 41, 30], [0, 0, 64, 32], [17, 2, 18, 31]]
    masks = torch.from_numpy(np.stack([box_mask(b, 64, 32) for b in boxes]))
    for crop, grid in [((0, 0, 64, 32), (3, 5)), ((10.5, 2.0, 50.25, 31.0), (4, 7)), ((8, 0, 56, 32), (2, 4))]:
        expected = _box_coverage(torch.tensor(boxes, dtype=torch.float64), crop, grid)
        torch.testing.assert_close(_mask_coverage(masks, crop, grid), expected, atol=1e-5, rtol=0)
    random_mask = torch.from_numpy(rng.random((1, 32, 64)) < 0.5)
    cov = _mask_coverage(random_mask, (0, 0, 64, 32), (3, 5))
    assert cov.sum().item() * (64 / 5) * (32 / 3) == pytest.approx(random_mask.sum().item(), rel=1e-5)


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
    w, _ = reward_weights(rec, (2, 2), RewardMapConfig(mode="signed"), crop_box=(16, 0, 48, 32))
    torch.testing.assert_close(w, torch.tensor([[0.32, -0.48], [-0.48, -0.48]]))
    masked = record([region(0, A, 0.4, mask=encode_rle(box_mask(A, 64, 32))),
                     region(1, B, -0.6, mask=encode_rle(box_mask(B, 64, 32)))])
    wm, _ = reward_weights(masked, (2, 2), RewardMapConfig(mode="signed", region_shape="mask"),
                           crop_box=(16, 0, 48, 32))
    torch.testing.assert_close(wm, w)
    with pytest.raises(ValueError, match="crop_box"):
        reward_weights(rec, (2, 2), RewardMapConfig(), crop_box=(16, 0, 80, 32))


def test_pixel_reward_map():
    rec = two_regions()
    pixels = pixel_reward_map(rec, RewardMapConfig(mode="signed"))
    assert pixels.shape == (32, 64) and pixels.dtype == np.float32
    assert pixels[0, 0] == pytest.approx(0.32)       # A only
    assert pixels[5, 25] == pytest.approx(0.32)      # A and B: max
    assert pixels[5, 33] == pytest.approx(-0.48)     # B only
    assert pixels[20, 23] == pytest.approx(0.0)      # background
    assert pixels[20, 24] == pytest.approx(-0.48)    # first column of B
    assert np.isclose(pixels, 0.32).sum() == 32 * 16  # A is 32 x 16 pixels
