# SPDX-License-Identifier: Apache-2.0
"""What the MLLM-judged benchmarks that read their own prompts (T2I-ReasonBench, WISE)
share: the generate / score / summarize step sequence of ``srum eval <benchmark> STEP`` and
the summary files (``results.csv``, ``summary.json``, ``summary.md``, ``scores.png``) in
the CompBench run layout (:class:`.compbench.RunLayout`)."""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Callable

from srum import distributed
from srum.fileio import atomic_write_text

from .compbench import RunLayout
from .summary import bar_chart, write_results_csv

__all__ = ["STEPS", "fmt", "stage_counts", "run_info", "markdown_head", "write_summary_files", "run_steps"]

STEPS = ("generate", "score", "summarize", "all")


def fmt(value) -> str:
    """A table cell: two decimals, ``n/a`` for a missing value."""
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.2f}"


def stage_counts(layout: RunLayout) -> dict:
    """The score step's own counts (``scores/summary.json``): items not judged, not yet
    scored, and whether it finished."""
    stage_file = layout.scores / "summary.json"
    stage = json.loads(stage_file.read_text()) if stage_file.is_file() else {}
    return {"num_errors": stage.get("num_errors", 0), "num_missing": stage.get("num_missing", 0),
            "scoring_complete": stage.get("complete")}


def run_info(rows: list[dict], layout: RunLayout) -> dict:
    """The judge(s) and think mode(s) the scored rows record, and the run directory."""
    judges = sorted({str(r.get("judge")) for r in rows if r.get("judge")})
    thinks = sorted({str(r.get("think")).lower() for r in rows if r.get("think") is not None})
    return {"judge": ", ".join(judges) or None, "think": ", ".join(thinks) or None, "run_dir": str(layout.root)}


def markdown_head(title: str, summary: dict, not_judged: str, extra: tuple[str, ...] = ()) -> list[str]:
    """The top of ``summary.md``: title, judge and think mode, ``extra`` lines, the image
    counts (``not_judged`` says why an item was not judged) and the headline table of
    ``summary["table"]`` with its note."""
    table, info = summary["table"], summary.get("run") or {}
    columns, values = table["columns"], table["values"]
    lines = [f"# {title}", ""]
    lines += [f"- {key}: {info[key]}" for key in ("judge", "think") if info.get(key) is not None]
    lines += list(extra)
    lines += [f"- images: {summary['num_images']} ({summary['num_scored']} scored, {summary['num_failed']} failed "
              f"judgments excluded from the means"
              + (f", {summary['num_errors']} not judged ({not_judged})" if summary.get("num_errors") else "")
              + (f", {summary['num_missing']} not scored yet" if summary.get("num_missing") else "") + ")", "",
              "| " + " | ".join(table["headers"][c] for c in columns) + " |",
              "|" + "|".join("---:" for _ in columns) + "|",
              "| " + " | ".join(fmt(values[c]) for c in columns) + " |", "", table["note"]]
    return lines


def write_summary_files(layout: RunLayout, rows: list[dict], summary: dict, csv_fields, markdown: str) -> None:
    """``summary/``: the per-image CSV, ``summary.json``, ``summary.md`` and the bar chart of
    ``summary["table"]`` (its columns, headers and values)."""
    table = summary["table"]
    layout.summary.mkdir(parents=True, exist_ok=True)
    write_results_csv(rows, layout.summary / "results.csv", csv_fields)
    atomic_write_text(layout.summary / "summary.json", json.dumps(summary, indent=2) + "\n")
    atomic_write_text(layout.summary / "summary.md", markdown)
    bar_chart({summary["title"]: table["values"]}, table["columns"], layout.summary / "scores.png", summary["title"],
              table["headers"])


def run_steps(benchmark: str, step: str, cfg, run_generate: Callable, run_score: Callable,
              summarize_run: Callable, headline: tuple[str, ...]) -> int:
    """One step of ``srum eval <benchmark>`` (or all); returns the exit code of the worst
    step's status (0 complete, 1 incomplete, 2 failed; each step writes its
    ``status.json``). ``all`` with ``images=`` set scores those images without generating."""
    from srum.stages.status import EXIT_CODES, worst

    from .cli import _free_accelerator_memory, check_all_steps_fit

    if step not in STEPS:
        raise ValueError(f"step must be one of {STEPS}, got {step!r}")
    layout = RunLayout(Path(cfg.out_dir))
    statuses = []
    if step == "generate" or (step == "all" and not cfg.images):
        if step == "all":
            check_all_steps_fit(cfg.judge.gpus_per_process)
        statuses.append(run_generate(cfg).get("status", "complete"))
        _free_accelerator_memory()
    if step in ("score", "all"):
        manifest = Path(cfg.images) if cfg.images else layout.images_manifest
        if not manifest.is_file():
            raise FileNotFoundError(f"{manifest}: no image manifest; run the generate step first or set images=")
        statuses.append(run_score(manifest, layout.scores, cfg).get("status", "complete"))
        _free_accelerator_memory()
    if step in ("summarize", "all") and distributed.env_info().is_main:
        summary = summarize_run(layout.root)
        print(json.dumps({k: summary[k] for k in headline}))
        print(f"srum eval {benchmark}: wrote {layout.summary}/summary.md", file=sys.stderr)
    return EXIT_CODES[worst(statuses)] if statuses else 0
