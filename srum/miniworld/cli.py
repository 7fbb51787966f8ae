# SPDX-License-Identifier: Apache-2.0
"""``srum miniworld pretrain | abilities``.

* ``pretrain [--config configs/miniworld/pretrain.yaml] [KEY=VALUE ...]``: train the
  miniature Bagel from scratch (data, tokenizer + autoencoder, ``srum train``, export);
  rerunning continues where it stopped;
* ``abilities [--model DIR] [--out FILE] [KEY=VALUE ...]``: measure understanding,
  generation (direct and think) and judge agreement on held-out data (:mod:`.abilities`);
  the model defaults to the embedded miniature Bagel (``models/miniworld``).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

DEFAULT_PRETRAIN_CONFIG = "configs/miniworld/pretrain.yaml"


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


def add_miniworld_parser(sub) -> None:
    p = sub.add_parser("miniworld", help="the miniature world: pretrain its Bagel, measure its abilities",
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
