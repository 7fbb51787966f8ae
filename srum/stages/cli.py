# SPDX-License-Identifier: Apache-2.0
"""``srum generate | propose | judge | records``: argument parsing for the data stages.

Every stage takes ``--config FILE.yaml`` and any number of dotted overrides
(``out_dir=runs/x sampling.num_timesteps=30``); see TRAIN.md for every field."""
from __future__ import annotations

import argparse
import json


def _stage_parser(sub, name: str, help_text: str, example: str) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help_text, description=f"{help_text}. Example: {example}",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=None, help="YAML config (fields documented in TRAIN.md)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="dotted overrides applied on top of the config, values parsed as YAML")
    p.add_argument("--dry-run", action="store_true",
                   help="preflight: check the model, files, versions and GPUs, print the command; run nothing")
    return p


def _dry_run(name: str, cfg) -> int:
    from srum.preflight import check_stage
    return check_stage(name, cfg).report()


def cmd_generate(args) -> int:
    from srum.config import load_config
    from .generate import GenerateConfig, run_generate
    from .status import run_stage
    cfg = load_config(GenerateConfig, args.config, args.overrides)
    if args.dry_run:
        return _dry_run("generate", cfg)
    return run_stage("generate", lambda: run_generate(cfg))


def cmd_propose(args) -> int:
    from srum.config import load_config
    from .propose import ProposeStageConfig, run_propose
    from .status import run_stage
    cfg = load_config(ProposeStageConfig, args.config, args.overrides)
    if args.dry_run:
        return _dry_run("propose", cfg)
    return run_stage("propose", lambda: run_propose(cfg))


def cmd_judge(args) -> int:
    from srum.config import load_config
    from .judge import JudgeStageConfig, run_judge
    from .status import run_stage
    cfg = load_config(JudgeStageConfig, args.config, args.overrides)
    if args.dry_run:
        return _dry_run("judge", cfg)
    return run_stage("judge", lambda: run_judge(cfg))


def cmd_records(args) -> int:
    from srum import records
    if args.action == "export-reference":
        if args.image_root is not None:
            raise ValueError("--image-root applies to import-reference only")
        counts = records.export_reference(args.src, args.dst)
    else:
        counts = records.import_reference(args.src, args.dst, image_root=args.image_root)
    print(json.dumps(counts))
    return 0


def add_stage_parsers(sub) -> None:
    p = _stage_parser(sub, "generate", "stage 1: prompts -> candidate images with chain of thought",
                      "srum generate --config configs/data/generate.yaml model.path=BAGEL-7B-MoT out_dir=runs/r1/generate")
    p.set_defaults(func=cmd_generate)
    p = _stage_parser(sub, "propose", "stage 2: images -> SAM regions filtered by the model's own understanding",
                      "srum propose --config configs/data/propose.yaml images=runs/r1/generate/manifest.jsonl")
    p.set_defaults(func=cmd_propose)
    p = _stage_parser(sub, "judge", "stage 3: images + regions -> global and local self-judgment reward records",
                      "srum judge --config configs/data/judge.yaml regions=runs/r1/propose/regions.jsonl")
    p.set_defaults(func=cmd_judge)
    p = sub.add_parser("records", help="convert reward records to / from the reference's formatted schema")
    p.add_argument("action", choices=["export-reference", "import-reference"],
                   help="export-reference: our rewards.jsonl -> reference JSONL; import-reference: the reverse")
    p.add_argument("src", help="input JSONL")
    p.add_argument("dst", help="output JSONL (written atomically)")
    p.add_argument("--image-root", default=None,
                   help="import-reference: the folder the rows' image names are relative to (default: the input "
                        "JSONL's folder), e.g. the image folder of Wayne-King/SRUM_6k_CompBench_Train")
    p.set_defaults(func=cmd_records)
