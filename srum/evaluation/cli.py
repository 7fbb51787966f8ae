# SPDX-License-Identifier: Apache-2.0
"""``srum eval ...``: argument parsing for the evaluations (wired into ``srum/cli.py``).

* ``srum eval compbench STEP [--config FILE] [KEY=VALUE ...]``, STEP one of
  ``generate`` (images), ``score`` (MLLM judge), ``summarize`` (tables, chart) or ``all``;
* ``srum eval t2i-reasonbench STEP [--config FILE] [KEY=VALUE ...]``: T2I-ReasonBench's
  prompts (the user's copy), judged against each prompt's question-criterion pairs;
* ``srum eval wise STEP [--config FILE] [KEY=VALUE ...]``: WISE's knowledge prompts (the
  user's copy), judged on consistency, realism and aesthetic quality (WiScore);
* ``srum eval miniworld STEP [--config FILE] [KEY=VALUE ...]``: the miniature world's
  held-out prompts, scored by its exact oracle (same steps and run layout);
* ``srum eval compare RUN ... --out DIR [--labels ...]``: runs side by side with deltas;
* ``srum eval official-layout RUN_OR_MANIFEST --out DIR``: T2I-CompBench's own layout;
* ``srum eval geneval-images [--config FILE] [KEY=VALUE ...]``: GenEval images;
* ``srum eval geneval [--config FILE] [KEY=VALUE ...]``: GenEval's own evaluator on them
  (run in the user's GenEval environment), per-task scores in our summary format.
"""
from __future__ import annotations

import argparse
import gc
import json
import sys
from pathlib import Path

COMPBENCH_STEPS = ("generate", "score", "summarize", "all")
_STATUS_OF_CODE = {0: "complete", 1: "incomplete", 2: "failed"}


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=None, help="YAML config (fields documented in EVAL.md)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="dotted overrides applied on top of the config, values parsed as YAML")
    p.add_argument("--dry-run", action="store_true",
                   help="preflight: check the model, judge, files, versions and GPUs, print the command; run nothing")


def _free_accelerator_memory() -> None:
    """Drop the generator before the judge loads (both may not fit at once)."""
    gc.collect()
    import torch
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_compbench(step: str, cfg) -> int:
    """Run one step (or all) of a CompBench evaluation; returns the exit code of its
    worst step's status (0 complete, 1 incomplete: some items failed, 2 failed; each step
    writes its ``status.json``: ``images/``, ``scores/``)."""
    from srum import distributed
    from srum.stages.status import EXIT_CODES, worst

    from .compbench import RunLayout, run_generate_images
    from .scoring import run_score
    from .summary import summarize_run

    if step not in COMPBENCH_STEPS:
        raise ValueError(f"step must be one of {COMPBENCH_STEPS}, got {step!r}")
    layout = RunLayout(Path(cfg.out_dir))
    if step == "all":
        check_all_steps_fit(cfg.judge.gpus_per_process)
    statuses = []  # summaries come back on rank 0 only ({} elsewhere)
    if step in ("generate", "all"):
        statuses.append(run_generate_images(cfg).get("status", "complete"))
        _free_accelerator_memory()
    if step in ("score", "all"):
        manifest = Path(cfg.images) if cfg.images else layout.images_manifest
        if not manifest.is_file():
            raise FileNotFoundError(f"{manifest}: no image manifest; run the generate step first or set images=")
        summary = run_score(manifest, layout.scores, cfg.judge, seed=cfg.seed, retry_errors=cfg.retry_errors,
                            category=cfg.images_category, config=cfg, fresh=cfg.fresh)
        statuses.append(summary.get("status", "complete"))
        _free_accelerator_memory()
    if step in ("summarize", "all") and distributed.env_info().is_main:
        summary = summarize_run(layout.root)
        print(json.dumps({k: summary[k] for k in ("overall", "overall_8cat", "complex_composite", "num_scored",
                                                  "num_failed")}))
        print(f"srum eval compbench: wrote {layout.summary}/summary.md", file=sys.stderr)
    return EXIT_CODES[worst(statuses)] if statuses else 0


def check_all_steps_fit(judge_gpus_per_process: int) -> None:
    """``all`` runs generation and the judge with the same processes: a judge that spans g
    GPUs per process needs ``processes per node * g`` GPUs. Say so before anything runs
    (not after hours of generation) and name the two launches that fit."""
    import os

    import torch
    g = judge_gpus_per_process
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if g > 1 and local * g > visible:
        raise ValueError(f"judge.gpus_per_process={g} with {local} process(es) per node needs {local * g} GPUs, "
                         f"{visible} visible: run the steps as separate launches, e.g. `torchrun "
                         f"--nproc_per_node={max(visible, 1)} -m srum eval compbench generate ...` then `torchrun "
                         f"--nproc_per_node={max(visible // g, 1)} -m srum eval compbench score ...` and "
                         "`srum eval compbench summarize ...` (srum pipeline does this itself)")


def cmd_compbench(args) -> int:
    from srum.config import load_config
    from srum.stages.status import run_stage

    from .compbench import CompBenchConfig
    cfg = load_config(CompBenchConfig, args.config, args.overrides)
    if getattr(args, "dry_run", False):
        from srum.preflight import check_stage
        return check_stage("eval compbench", cfg, args.step).report()
    return run_stage("eval compbench", lambda: {"status": _STATUS_OF_CODE[run_compbench(args.step, cfg)]})


def cmd_reasonbench(args) -> int:
    from srum.config import load_config
    from srum.stages.status import run_stage

    from .reasonbench import ReasonBenchConfig, run_reasonbench
    cfg = load_config(ReasonBenchConfig, args.config, args.overrides)
    if getattr(args, "dry_run", False):
        from srum.preflight import check_stage
        return check_stage("eval t2i-reasonbench", cfg, args.step).report()
    return run_stage("eval t2i-reasonbench",
                     lambda: {"status": _STATUS_OF_CODE[run_reasonbench(args.step, cfg)]})


def cmd_wise(args) -> int:
    from srum.config import load_config
    from srum.stages.status import run_stage

    from .wise import WiseConfig, run_wise
    cfg = load_config(WiseConfig, args.config, args.overrides)
    if getattr(args, "dry_run", False):
        from srum.preflight import check_stage
        return check_stage("eval wise", cfg, args.step).report()
    return run_stage("eval wise", lambda: {"status": _STATUS_OF_CODE[run_wise(args.step, cfg)]})


def cmd_miniworld(args) -> int:
    from srum.config import load_config
    from srum.miniworld.evaluation import MiniWorldEvalConfig, run_miniworld
    cfg = load_config(MiniWorldEvalConfig, args.config, args.overrides)
    if getattr(args, "dry_run", False):
        from srum.preflight import check_stage
        return check_stage("eval miniworld", cfg, args.step).report()
    return run_miniworld(args.step, cfg)


def _add_steps(parser: argparse.ArgumentParser, step_help: dict[str, str], example: str, func) -> None:
    """One sub-command per step, so that "--config FILE KEY=VALUE ..." parses after it."""
    steps = parser.add_subparsers(dest="step", required=True, metavar="STEP")
    for step in COMPBENCH_STEPS:
        s = steps.add_parser(step, help=step_help[step], formatter_class=argparse.RawDescriptionHelpFormatter,
                             description=f"{step_help[step]}. Example: {example.format(step=step)}")
        _config_args(s)
        s.set_defaults(func=func)


def cmd_compare(args) -> int:
    from .summary import compare_runs
    result = compare_runs(args.runs, args.out, args.labels, paper=not args.no_paper)
    print((Path(args.out) / "compare.md").read_text(), end="")
    return 0 if result["runs"] else 1


def cmd_official_layout(args) -> int:
    from .compbench import RunLayout, export_official_layout
    source = Path(args.source)
    manifest = RunLayout(source).images_manifest if source.is_dir() else source
    counts = export_official_layout(manifest, args.out, args.mode)
    print(json.dumps(counts))
    return 0


def cmd_geneval_images(args) -> int:
    from srum.config import load_config

    from .geneval import GenEvalConfig, run_geneval_images
    cfg = load_config(GenEvalConfig, args.config, args.overrides)
    if getattr(args, "dry_run", False):
        from srum.preflight import check_stage
        return check_stage("eval geneval-images", cfg).report()
    summary = run_geneval_images(cfg)
    return 0 if summary.get("complete", True) else 1


def cmd_geneval(args) -> int:
    from srum.config import load_config
    from srum.stages.status import run_stage

    from .geneval_score import GenEvalScoreConfig, run_geneval_score
    cfg = load_config(GenEvalScoreConfig, args.config, args.overrides)
    if getattr(args, "dry_run", False):
        from srum.preflight import check_stage
        return check_stage("eval geneval", cfg).report()

    def body() -> dict:
        summary = run_geneval_score(cfg)
        print(json.dumps({"overall": summary["overall"], **summary["table"]["values"],
                          "num_scored": summary["num_scored"], "num_missing": summary["num_missing"]}))
        print(f"srum eval geneval: wrote {Path(cfg.out_dir) / 'summary'}/summary.md", file=sys.stderr)
        return {"status": summary["status"]}
    return run_stage("eval geneval", body)


def add_eval_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``srum eval`` and its sub-commands on ``subparsers`` (of ``srum``)."""
    fmt = argparse.RawDescriptionHelpFormatter
    p = subparsers.add_parser("eval", help="benchmark evaluation: T2I-CompBench, T2I-ReasonBench and WISE (MLLM judge), "
                                           "miniature world, GenEval (images, official scorer)",
                              description=__doc__, formatter_class=fmt)
    sub = p.add_subparsers(dest="eval_command", required=True)

    c = sub.add_parser("compbench", help="T2I-CompBench val prompts: generate, score with an MLLM judge, summarize",
                       formatter_class=fmt,
                       description="Example: srum eval compbench all --config configs/eval/compbench.yaml "
                                   "model.path=/ckpt/BAGEL-7B-MoT out_dir=runs/eval/bagel")
    _add_steps(c, {"generate": "images for the val prompts into <out_dir>/images/<category>/",
                   "score": "judge every image (0-100) into <out_dir>/scores/scores.jsonl",
                   "summarize": "per-category means, overall, CSV/JSON/markdown/chart into <out_dir>/summary/",
                   "all": "generate, score and summarize in one go"},
               "srum eval compbench {step} --config configs/eval/compbench.yaml out_dir=runs/eval/bagel", cmd_compbench)

    c = sub.add_parser("t2i-reasonbench", help="T2I-ReasonBench (800 prompts, 4 dimensions): generate, score "
                                               "against each prompt's criteria with an MLLM judge, summarize",
                       formatter_class=fmt,
                       description="Example: srum eval t2i-reasonbench all --config configs/eval/t2i_reasonbench.yaml "
                                   "model.path=/ckpt/BAGEL-7B-MoT data_dir=/data/T2I-ReasonBench "
                                   "out_dir=runs/eval/reasonbench/bagel")
    _add_steps(c, {"generate": "images for the prompts into <out_dir>/images/<dimension>/<id:04d>.png",
                   "score": "judge every image (reasoning accuracy, image quality) into <out_dir>/scores/scores.jsonl",
                   "summarize": "per-dimension accuracy and quality, overall, CSV/JSON/markdown/chart into "
                                "<out_dir>/summary/",
                   "all": "generate, score and summarize in one go"},
               "srum eval t2i-reasonbench {step} --config configs/eval/t2i_reasonbench.yaml "
               "out_dir=runs/eval/reasonbench/bagel", cmd_reasonbench)

    c = sub.add_parser("wise", help="WISE (1000 world-knowledge prompts, 3 domains): generate, score consistency / "
                                    "realism / aesthetics with an MLLM judge (WiScore), summarize",
                       formatter_class=fmt,
                       description="Example: srum eval wise all --config configs/eval/wise.yaml "
                                   "model.path=/ckpt/BAGEL-7B-MoT data_dir=/data/WISE/WISE_legacy/data "
                                   "out_dir=runs/eval/wise/bagel")
    _add_steps(c, {"generate": "one image per prompt into <out_dir>/images/<prompt_id>.png (WISE's layout)",
                   "score": "judge every image (consistency, realism, aesthetic quality -> WiScore) into "
                            "<out_dir>/scores/scores.jsonl",
                   "summarize": "per-category, per-subcategory and per-domain WiScore, overall, "
                                "CSV/JSON/markdown/chart into <out_dir>/summary/",
                   "all": "generate, score and summarize in one go"},
               "srum eval wise {step} --config configs/eval/wise.yaml out_dir=runs/eval/wise/bagel", cmd_wise)

    c = sub.add_parser("miniworld", help="miniature world: held-out prompts, images, exact oracle, summary",
                       formatter_class=fmt,
                       description="Example: srum eval miniworld all --config configs/eval/miniworld.yaml "
                                   "model.path=runs/miniworld/model out_dir=runs/eval/miniworld/base")
    _add_steps(c, {"generate": "images for the held-out prompts into <out_dir>/images/<category>/",
                   "score": "the oracle's verdict (100 or 0) on every image into <out_dir>/scores/scores.jsonl",
                   "summarize": "per-category accuracy, overall, CSV/JSON/markdown/chart into <out_dir>/summary/",
                   "all": "generate, score and summarize in one go"},
               "srum eval miniworld {step} --config configs/eval/miniworld.yaml out_dir=runs/eval/miniworld/base",
               cmd_miniworld)

    c = sub.add_parser("compare", help="put two or more runs side by side, deltas against the first",
                       description="Example: srum eval compare runs/eval/bagel runs/eval/bagel_srum "
                                   "--labels Bagel Bagel+SRUM --out runs/eval/compare\n\nA run drawn in think mode "
                                   "(its summary's think: true) is labelled '<label> (CoT)', as the paper's Table 1, "
                                   "and its deltas are against the first CoT run: modes are never mixed.",
                       formatter_class=fmt)
    c.add_argument("runs", nargs="+", metavar="RUN", help="run directories (or summary.json files); the first of each mode (direct, CoT) = its base")
    c.add_argument("--out", required=True, help="folder for compare.{md,json,csv,png}")
    c.add_argument("--labels", nargs="+", default=None, help="one label per run (default: folder names)")
    c.add_argument("--no-paper", action="store_true",
                   help="leave out the SRUM paper's reported rows (listed by default for T2I-CompBench; with them "
                        "one run is enough)")
    c.set_defaults(func=cmd_compare)

    c = sub.add_parser("official-layout", help="link a run's images into T2I-CompBench's samples/ layout",
                       description="Example: srum eval official-layout runs/eval/bagel --out runs/eval/bagel_official",
                       formatter_class=fmt)
    c.add_argument("source", help="a run directory (uses images/manifest.jsonl) or an image manifest")
    c.add_argument("--out", required=True, help="output folder: <out>/<category>/samples/<prompt>_<index>.png")
    c.add_argument("--mode", choices=["hardlink", "copy", "symlink"], default="hardlink",
                   help="how files are placed (default hardlink, falling back to copy)")
    c.set_defaults(func=cmd_official_layout)

    c = sub.add_parser("geneval-images", help="images for GenEval's evaluation_metadata.jsonl in its folder layout",
                       description="Example: srum eval geneval-images model.path=/ckpt/BAGEL-7B-MoT "
                                   "metadata=geneval/prompts/evaluation_metadata.jsonl out_dir=runs/geneval/images",
                       formatter_class=fmt)
    _config_args(c)
    c.set_defaults(func=cmd_geneval_images)

    c = sub.add_parser("geneval", help="score GenEval images with GenEval's own evaluator (in its environment), "
                                       "summarize per task",
                       description="Example: srum eval geneval --config configs/eval/geneval.yaml "
                                   "images=runs/geneval/bagel/images out_dir=runs/geneval/bagel "
                                   "evaluator.python=/opt/conda/envs/geneval/bin/python evaluator.repo=/src/geneval "
                                   "evaluator.detector_path=/models/geneval-detector",
                       formatter_class=fmt)
    _config_args(c)
    c.set_defaults(func=cmd_geneval)
    from srum.understanding.cli import add_understanding_parser   # lmms-eval is imported only when it runs
    add_understanding_parser(sub)
    return p
