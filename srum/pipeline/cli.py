# SPDX-License-Identifier: Apache-2.0
"""``srum pipeline --config configs/pipeline/<name>.yaml [KEY=VALUE ...]``."""
from __future__ import annotations

import argparse
import sys

EXAMPLE = ("srum pipeline --config configs/pipeline/bagel7b_compbench.yaml "
           "model.path=/ckpt/BAGEL-7B-MoT run_dir=runs/srum launcher.nproc_per_node=8")


def cmd_pipeline(args) -> int:
    from .config import load_pipeline_config
    from .runner import PipelineError, run_pipeline
    cfg = load_pipeline_config(args.config, args.overrides)
    if args.print_config:
        import yaml

        from srum.config import to_dict
        print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
        return 0
    if args.dry_run:
        from .runner import Pipeline
        pipeline = Pipeline(cfg, args.config, dry_run=True)
        pipeline.run()
        return pipeline.preflight.report(commands=False)   # 1 when anything is missing, every problem listed
    try:
        report = run_pipeline(cfg, args.config)
    except PipelineError as err:
        print(f"srum pipeline: {err}", file=sys.stderr)
        return 1
    print(f"srum pipeline: run directory {cfg.run_dir} (stage timings in timing.json, overview in index.html)")
    if report is not None:
        print(f"srum pipeline: report at {report.resolve()}")
    return 0


def add_pipeline_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "pipeline", help="the whole self-rewarding loop, round after round, resumable stage by stage",
        description="generate -> propose -> judge -> train -> export -> eval -> report for each round; round k+1 "
                    "starts from round k's exported model. Finished stages are skipped, partial ones resumed, "
                    "changed ones rerun with everything downstream. Fields: TRAIN.md, 'The pipeline'. "
                    f"Example: {EXAMPLE}",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="pipeline YAML, e.g. configs/pipeline/tiny.yaml")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="dotted overrides parsed as YAML, e.g. rounds=3 train.overrides.optim.lr=1e-5")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("--dry-run", action="store_true",
                   help="preflight: check every stage's config, model, file, version and GPU need, print what "
                        "would run, skip or resume (and why) with each launch command; write nothing; exit 1 "
                        "listing every problem at once")
    p.set_defaults(func=cmd_pipeline)
    return p
