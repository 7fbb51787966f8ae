# SPDX-License-Identifier: Apache-2.0
"""``srum eval understanding``: lmms-eval tasks on a srum checkpoint (wired into ``srum eval``).

    srum eval understanding --model /ckpt --tasks mme,mmbench_en_dev,mmmu_val,mmvet,mathvista_testmini,mmvp,pope \\
        --out runs/understanding/base
    srum eval understanding --config configs/eval/understanding.yaml model.path=/ckpt out_dir=runs/understanding/r1

The flags are shorthands for config fields (a flag wins over the file; ``KEY=VALUE``
overrides win over both). Exit code: 0 complete, 1 incomplete (a task without its
headline number), 2 failed (status.json says why).
"""
from __future__ import annotations

import argparse
import json
import sys

EXAMPLE = ("srum eval understanding --model /ckpt/BAGEL-7B-MoT --tasks mme,mmbench_en_dev,mmmu_val,mmvet,"
           "mathvista_testmini,mmvp,pope --out runs/understanding/base")


def _overrides(args) -> list[str]:
    """The shorthand flags as dotted overrides (JSON values, which YAML reads as written)."""
    out = []
    if args.model is not None:
        out.append(f"model.path={json.dumps(args.model)}")
    if args.tasks is not None:
        out.append(f"tasks={json.dumps([t.strip() for t in args.tasks.split(',') if t.strip()])}")
    if args.out is not None:
        out.append(f"out_dir={json.dumps(args.out)}")
    if args.include_path:
        out.append(f"include_path={json.dumps(args.include_path)}")
    if args.limit is not None:
        out.append(f"limit={args.limit}")
    if args.batch_size is not None:
        out.append(f"batch_size={args.batch_size}")
    if args.device_map is not None:
        out.append(f"model.device_map={args.device_map}")
    return out + list(args.overrides)


def cmd_understanding(args) -> int:
    from srum.config import load_config
    from srum.stages.status import run_stage

    from .runner import UnderstandingConfig, run_understanding
    cfg = load_config(UnderstandingConfig, args.config, _overrides(args))

    def body() -> dict:
        summary = run_understanding(cfg, label=args.label)
        print(json.dumps({"status": summary["status"], **summary["table"]["values"]}))
        print(f"srum eval understanding: wrote {cfg.out_dir}/summary.md", file=sys.stderr)
        return summary
    return run_stage("eval understanding", body)


def add_understanding_parser(sub) -> argparse.ArgumentParser:
    """Register ``understanding`` on the ``srum eval`` sub-parsers."""
    p = sub.add_parser("understanding", help="understanding benchmarks (MME, MMBench, MMMU, MM-Vet, MathVista, MMVP, "
                                             "POPE, ...) through lmms-eval; needs the 'understanding' extra",
                       description=f"{__doc__}\nExample: {EXAMPLE}",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=None, help="YAML config (fields in EVAL.md, \"Understanding preserved\")")
    p.add_argument("--model", default=None, help="checkpoint directory or hub id (model.path)")
    p.add_argument("--tasks", default=None, help="comma-separated lmms-eval tasks (default: the paper's set + POPE)")
    p.add_argument("--out", default=None, help="output folder (out_dir)")
    p.add_argument("--include-path", nargs="+", default=None, help="folders of extra lmms-eval task YAMLs")
    p.add_argument("--limit", type=float, default=None, help="documents per task (smoke tests only)")
    p.add_argument("--batch-size", type=int, default=None, help="requests per forward (default 1)")
    p.add_argument("--device-map", choices=["auto"], default=None, help="spread the model over all visible GPUs")
    p.add_argument("--label", default=None, help="name of this run in the summary (default: the model folder)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted config overrides (YAML values)")
    p.set_defaults(func=cmd_understanding)
    return p
