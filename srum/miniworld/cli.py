# SPDX-License-Identifier: Apache-2.0
"""``srum miniworld pretrain | abilities | prompts | study | curves``.

* ``pretrain [--config configs/miniworld/pretrain.yaml] [KEY=VALUE ...]``: train the
  miniature Bagel from scratch (data, tokenizer + autoencoder, ``srum train``, export);
  rerunning continues where it stopped;
* ``abilities [--model DIR] [--out FILE] [KEY=VALUE ...]``: measure understanding,
  generation (direct and think) and judge agreement on held-out data (:mod:`.abilities`);
  the model defaults to the embedded miniature Bagel (``models/miniworld``);
* ``prompts --split train --per-category N --out FILE``: a prompt file (``.jsonl``, or
  ``.json`` in the reference format) for ``srum generate`` / the dataset registry
  (:mod:`.prompts`);
* ``study [--config configs/miniworld/study.yaml] [--quick] [--report-only] [KEY=VALUE ...]``:
  SRUM, SFT and the ablations trained from one set of self-judged candidates per seed and
  measured on held-out prompts by the oracle (:mod:`.study`); rerunning resumes;
* ``curves --out FILE STAGE_DIR ...``: the training curves of a chain of pretraining stages
  as one CSV (:mod:`.curves`).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

DEFAULT_PRETRAIN_CONFIG = "configs/miniworld/pretrain.yaml"
DEFAULT_STUDY_CONFIG = "configs/miniworld/study.yaml"


def cmd_pretrain(args) -> int:
    from ..config import ConfigError
    from .pretrain import _resolve, load_pretrain_config, pretrain
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s",
                        datefmt="%H:%M:%S")
    try:
        cfg = load_pretrain_config(_resolve(args.config), args.overrides)
    except (ConfigError, FileNotFoundError) as err:
        print(f"srum miniworld pretrain: error: {err}", file=sys.stderr)
        return 2
    report = pretrain(cfg)
    print(json.dumps({"model": report["model"], "train": report["train"].get("summary")}, default=str))
    return 0


def cmd_curves(args) -> int:
    from .curves import write_curves
    try:
        rows = write_curves(args.out, args.stage_dirs, args.names, args.every)
    except (ValueError, FileNotFoundError) as err:
        print(f"srum miniworld curves: error: {err}", file=sys.stderr)
        return 2
    print(f"{args.out}: {rows} rows")
    return 0


def cmd_abilities(args) -> int:
    from ..config import build, parse_overrides
    from .abilities import AbilitiesConfig, measure_abilities
    import srum
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s",
                        datefmt="%H:%M:%S")
    cfg = build(AbilitiesConfig, parse_overrides(args.overrides), "abilities")
    from . import default_model_dir
    path = args.model or default_model_dir()
    model = srum.load_model(path, dtype=args.dtype, device=args.device)
    result = {"model": str(path), "config": cfg.__dict__, **measure_abilities(model, cfg)}
    text = json.dumps(result, indent=1)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n", encoding="utf-8")
    print(text)
    return 0


def cmd_prompts(args) -> int:
    from .prompts import write_prompt_file
    try:
        info = write_prompt_file(args.out, args.split, args.per_category, args.seed, args.categories or None)
    except ValueError as err:
        print(f"srum miniworld prompts: error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(info))
    return 0


def cmd_study(args) -> int:
    from ..config import ConfigError
    from .study import load_study_config, run_study
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s",
                        datefmt="%H:%M:%S")
    try:
        cfg = load_study_config(args.config, args.overrides, quick=args.quick)
        report = run_study(cfg, report_only=args.report_only)
    except (ConfigError, FileNotFoundError) as err:
        print(f"srum miniworld study: error: {err}", file=sys.stderr)
        return 2
    overall = {v: report["accuracy"][v]["overall"]["mean"] for v in report["variants"]}
    print(json.dumps({"study": str(Path(cfg.out_dir) / "study.md"), "overall": overall,
                      "seconds": report["runtime"]["total_seconds"], "missing": report["missing"],
                      "failures": report["failures"]}, indent=1))
    return 0 if report["complete"] and not report["failures"] else 1


def add_miniworld_parser(sub) -> None:
    p = sub.add_parser("miniworld",
                       help="the miniature world: pretrain its Bagel, measure its abilities, run the SRUM study",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = p.add_subparsers(dest="miniworld_action", required=True)
    t = actions.add_parser("pretrain", help="train the miniature Bagel from scratch (resumable)")
    t.add_argument("--config", default=DEFAULT_PRETRAIN_CONFIG, help=f"YAML (default {DEFAULT_PRETRAIN_CONFIG})")
    t.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, values parsed as YAML")
    t.set_defaults(func=cmd_pretrain)
    a = actions.add_parser("abilities", help="understanding, generation and judge agreement on held-out data")
    a.add_argument("--model", default=None,
                   help="model directory in the BAGEL-7B-MoT layout (default: the embedded models/miniworld)")
    a.add_argument("--out", default=None, help="also write the JSON result here")
    a.add_argument("--dtype", choices=["float32", "bfloat16"], default=None, help="weight dtype (default: float32 on CPU)")
    a.add_argument("--device", default=None, help="torch device (default: cuda if available)")
    a.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="AbilitiesConfig fields: scenes, questions_per_scene, per_category, seed, num_timesteps, "
                        "cfg_text_scale, timestep_shift, batch_size, think")
    a.set_defaults(func=cmd_abilities)
    s = actions.add_parser("study", help="SRUM vs SFT vs ablations from one set of candidates per seed, "
                                         "scored by the oracle (resumable)")
    s.add_argument("--config", default=DEFAULT_STUDY_CONFIG, help=f"YAML (default {DEFAULT_STUDY_CONFIG})")
    s.add_argument("--quick", action="store_true",
                   help="CI-sized preset (srum.miniworld.study.QUICK: 1 seed, base/sft/srum_official, 6 prompts, "
                        "2 steps; out_dir outputs/miniworld/study-quick), applied before the overrides")
    s.add_argument("--report-only", action="store_true",
                   help="only rewrite study.json / study.md from the units finished so far")
    s.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, values parsed as YAML")
    s.set_defaults(func=cmd_study)
    from .world import CATEGORIES, SPLITS
    c = actions.add_parser("curves", help="training curves of a chain of pretraining stages as one CSV")
    c.add_argument("stage_dirs", nargs="+", metavar="STAGE_DIR", help="srum miniworld pretrain out_dirs, in order")
    c.add_argument("--out", required=True, help="the CSV to write")
    c.add_argument("--names", nargs="+", help="stage names (default: 1, 2, ...)")
    c.add_argument("--every", type=int, default=50, help="steps per row (means over the window; default 50)")
    c.set_defaults(func=cmd_curves)
    w = actions.add_parser("prompts", help="write a prompt file of the world (train or held-out split)")
    w.add_argument("--split", choices=SPLITS, default="train", help="train (no held-out combination), heldout, all")
    w.add_argument("--per-category", type=int, default=200, help="distinct prompts per category (default 200)")
    w.add_argument("--seed", type=int, default=1, help="seed of the prompt set (default 1; the eval set uses 0)")
    w.add_argument("--categories", nargs="*", choices=CATEGORIES, default=None, help="default: all 6")
    w.add_argument("--out", required=True, help="FILE.jsonl, or FILE.json (the reference format)")
    w.set_defaults(func=cmd_prompts)
