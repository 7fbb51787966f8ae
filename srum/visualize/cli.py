# SPDX-License-Identifier: Apache-2.0
"""``srum visualize``: pictures of reward records and the HTML run report."""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

EXAMPLE = ("srum visualize runs/r1/judge/rewards.jsonl --out runs/r1/report "
           "--manifest runs/r1/generate/manifest.jsonl --metrics runs/r1/train/metrics.jsonl --limit 50")


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def reward_settings_from_train_config(path: str | Path) -> tuple[dict, str | None]:
    """The ``rewards.map`` fields and ``rewards.missing_global`` of a training YAML (only
    that section is read, so the rest of the file need not be complete)."""
    import yaml
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"training config not found: {path}")
    with open(path, encoding="utf-8") as handle:
        data = yaml.safe_load(handle) or {}
    rewards = data.get("rewards") or {}
    if not isinstance(rewards, dict) or not isinstance(rewards.get("map") or {}, dict):
        raise ValueError(f"{path}: 'rewards' must be a mapping with an optional 'map' mapping")
    return dict(rewards.get("map") or {}), rewards.get("missing_global")


def cmd_visualize(args) -> int:
    from srum.config import ConfigError
    from srum.rewards.raster import RewardMapConfig
    from .report import render_report

    fields, missing = ({}, None) if args.train_config is None else reward_settings_from_train_config(args.train_config)
    known = {f.name for f in dataclasses.fields(RewardMapConfig)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ConfigError(f"{args.train_config}: unknown rewards.map field(s) {', '.join(unknown)}")
    for name, value in (("mode", args.reward_mode), ("region_shape", args.region_shape), ("overlap", args.overlap),
                        ("cell_rule", args.cell_rule)):
        if value is not None:
            fields[name] = value
    if args.no_global:
        fields["use_global"] = False
    config = RewardMapConfig(**fields)
    report = render_report(args.rewards, args.out, manifest=args.manifest, metrics=args.metrics or (),
                           eval_summary=args.eval_summary, eval_chart=args.eval_chart, reward_config=config,
                           missing_global=args.missing_global or missing, limit=args.limit, title=args.title,
                           progress=True)
    print(f"wrote {report} (open it in a browser; the folder {report.parent} is self-contained)")
    return 0


def add_visualize_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``srum visualize`` on the ``srum`` command's subparsers."""
    p = subparsers.add_parser(
        "visualize", help="pictures of judged images (regions, reward map) and an HTML run report",
        description="Draw every judged image with its regions coloured by local score beside its dense reward "
                    "map, and write a self-contained HTML report (summary, loss curves, evaluation, one card "
                    f"per image) into --out. Example: {EXAMPLE}",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("rewards", help="reward JSONL (srum.reward.v1 or the reference's formatted schema)")
    p.add_argument("--out", required=True, help="output folder (report.html, images/, plots/, eval/)")
    p.add_argument("--manifest", default=None, help="generation manifest.jsonl: adds each image's chain of thought")
    p.add_argument("--metrics", nargs="+", action="extend", default=None, metavar="METRICS_JSONL",
                   help="trainer metrics.jsonl file(s): one loss plot each")
    p.add_argument("--eval-summary", default=None, help="evaluation summary (.json rendered as tables, or markdown)")
    p.add_argument("--eval-chart", default=None, help="evaluation chart image (copied into OUT/eval/)")
    p.add_argument("--train-config", default=None,
                   help="training YAML whose rewards.map / rewards.missing_global the map follows "
                        "(the flags below override it)")
    p.add_argument("--reward-mode", choices=["official", "signed"], default=None,
                   help="reward map: official (reference, weights in [0, 1]) or signed ([-1, 1]); default official")
    p.add_argument("--region-shape", choices=["box", "mask"], default=None,
                   help="regions as boxes or masks (default box)")
    p.add_argument("--overlap", choices=["max", "mean", "last", "smallest"], default=None,
                   help="how overlapping regions combine (default max for official, smallest for signed)")
    p.add_argument("--cell-rule", choices=["bilinear", "coverage"], default=None,
                   help="which pixels a region reaches: bilinear (the reference trainer's rule, default) or "
                        "coverage (area coverage per pixel)")
    p.add_argument("--no-global", action="store_true", help="map without the global weight alpha (ablation)")
    p.add_argument("--missing-global", choices=["skip", "neutral"], default=None,
                   help="failed global judgment: skip = no map (as training drops it, default), neutral = alpha 0.5")
    p.add_argument("--limit", type=_non_negative_int, default=None,
                   help="cards for the first N records only (summary counts all; default all)")
    p.add_argument("--title", default=None, help="report title")
    p.set_defaults(func=cmd_visualize)
    return p
