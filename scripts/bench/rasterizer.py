# SPDX-License-Identifier: Apache-2.0
"""Benchmark: reward records -> weight maps (maps per second) with
:func:`srum.rewards.pixel_reward_map` (the saved image's pixel grid, for pictures) and
:func:`srum.rewards.reward_weights` on the latent-token grid (what training builds, one
cell per 16x16 pixels), for ``--regions`` regions given as boxes or as RLE masks.

Each timed call is the full public function: record -> map, including decoding the
masks' RLE.

    .venv/bin/python scripts/bench/rasterizer.py                    # 1024 px, 10 regions
"""
from __future__ import annotations

import argparse
import itertools

import numpy as np

from common import Reporter, add_common_args, setup, time_fn


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(p, reps=20, warmup=2)
    p.add_argument("--size", type=int, default=1024, help="image side in pixels (default 1024)")
    p.add_argument("--regions", type=int, default=10, help="regions per record (default 10)")
    p.add_argument("--shapes", default="box,mask", help="comma-separated region shapes: box, mask (default both)")
    p.add_argument("--grids", default="pixel,latent",
                   help="comma-separated grids: pixel (size x size) and/or latent (size/16 per side)")
    p.add_argument("--mode", default="official", choices=["official", "signed"], help="reward map mode")
    p.add_argument("--cell-rule", default="bilinear", choices=["bilinear", "coverage"],
                   help="bilinear (the reference trainer's maps, the default) or coverage (area coverage)")
    return p.parse_args(argv)


def bench_record(size: int, regions: int, seed: int) -> dict:
    """A validated ``srum.reward.v1`` record: ``regions`` random boxes, each with an
    elliptic mask inside its box, random scores."""
    from srum.records import SCHEMA, encode_rle, validate_record

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    out = []
    for i in range(regions):
        x1, y1 = (int(v) for v in rng.integers(0, size * 3 // 4, 2))
        w, h = (int(v) for v in rng.integers(size // 16, size // 3, 2))
        x2, y2 = min(size, x1 + w), min(size, y1 + h)
        cx, cy, rx, ry = (x1 + x2) / 2, (y1 + y2) / 2, (x2 - x1) / 2, (y2 - y1) / 2
        mask = ((xx + 0.5 - cx) / rx) ** 2 + ((yy + 0.5 - cy) / ry) ** 2 <= 1.0
        out.append({"region_id": i, "bbox": [x1, y1, x2, y2], "mask": encode_rle(mask), "label": f"object {i}",
                    "score": float(rng.uniform(-1, 1)), "reason": "", "status": "ok", "method": "text",
                    "grounding": None, "detail": {}})
    glob = {"score": 0.4, "reason": "", "status": "ok", "method": "text"}
    return validate_record({"schema": SCHEMA, "image_id": "bench", "image_file": "bench.png", "prompt": "p",
                            "width": size, "height": size, "global": glob, "regions": out}, "bench record")


def main(argv=None) -> None:
    args = parse_args(argv)
    env = setup(args)
    from srum.rewards import RewardMapConfig, pixel_reward_map, reward_weights

    shapes, grids = args.shapes.split(","), args.grids.split(",")
    if set(shapes) - {"box", "mask"} or set(grids) - {"pixel", "latent"}:
        raise SystemExit("--shapes takes box/mask, --grids takes pixel/latent")
    record = bench_record(args.size, args.regions, args.seed)
    reporter = Reporter("rasterizer", env, args.out, args.md)
    for grid, shape in itertools.product(grids, shapes):
        cfg = RewardMapConfig(mode=args.mode, region_shape=shape, cell_rule=args.cell_rule)
        if grid == "pixel":
            cells = (args.size, args.size)
            fn = lambda: pixel_reward_map(record, cfg)  # noqa: E731
        else:
            cells = (max(1, args.size // 16), max(1, args.size // 16))
            fn = lambda: reward_weights(record, cells, cfg)  # noqa: E731
        timing = time_fn(fn, reps=args.reps, warmup=args.warmup, device=env.device)
        reporter.emit(f"{grid}-{shape}", grid=grid, shape=shape, mode=args.mode, size=args.size, regions=args.regions,
                      grid_h=cells[0], grid_w=cells[1], s_per_map=timing.median, s_per_map_min=timing.min,
                      s_per_map_max=timing.max, reps=len(timing.times), maps_per_s=1.0 / timing.median)
    reporter.finish(
        [("case", "case"), ("grid_h", "grid h"), ("grid_w", "grid w"), ("s_per_map", "s/map (median)"),
         ("maps_per_s", "maps/s")],
        notes=[f"{args.size}x{args.size} record, {args.regions} regions, mode {args.mode}, cell rule {args.cell_rule}; "
               "mask cases decode the RLE masks inside every call."])


if __name__ == "__main__":
    main()
