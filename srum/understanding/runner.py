# SPDX-License-Identifier: Apache-2.0
"""``srum eval understanding``: lmms-eval tasks on a srum checkpoint, with srum's summary.

One process runs lmms-eval's Python API (``simple_evaluate``) with the model already
loaded and wrapped in :class:`~srum.understanding.lmms_adapter.SrumBagelLMM` (a 7B Bagel
spreads over the visible GPUs with ``model.device_map: auto``). Outputs in ``out_dir``:

* ``lmms_eval/<model>/<time>_results.json`` and ``..._samples_<task>.jsonl``: lmms-eval's
  own files, exactly as its command line writes them;
* ``summary.json``: per task the number of documents scored, every metric, and the
  headline metric(s) on the paper's scale (:mod:`.benchmarks`), plus a ``table`` in the
  convention of :mod:`srum.evaluation.summary` so that ``srum eval compare`` puts a base
  and a trained run side by side (with the paper's rows);
* ``summary.md``: the same as a table; ``status.json``: the exit contract
  (:mod:`srum.stages.status`): complete when every task produced its headline numbers,
  incomplete when some did not (named in the reason), failed when lmms-eval stopped.
"""
from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from srum.config import PATH, to_dict
from srum.fileio import atomic_write_text
from srum.stages.common import ModelConfig
from srum.stages.status import StageFailure, clear_status, write_status

from .benchmarks import DEFAULT_TASKS, JUDGED_TASKS, PAPER, PAPER_ROWS, headlines_for

TABLE_NAME = "Understanding (lmms-eval)"
INSTALL_HINT = 'pip install -e ".[understanding]" (or pip install lmms-eval)'


@dataclass
class UnderstandingConfig:
    """Fields of ``srum eval understanding`` (EVAL.md, "Understanding preserved").

    tasks: lmms-eval task or group names. include_path: folders of extra task YAMLs
    (lmms-eval's ``--include_path``); include_default_tasks: also index lmms-eval's own
    (false: only include_path's, a few seconds faster). limit: documents per task (an int, or a fraction
    < 1; None: all; for smoke tests only, the numbers are then not comparable).
    batch_size: requests per forward. think / think_system_prompt: answer after a chain
    of thought. max_new_tokens: when a task sets no limit; max_new_tokens_cap: an upper
    bound on every task's. bootstrap_iters: lmms-eval's resamples for standard errors
    (0: none). log_samples: write every document's answer. seed: lmms-eval's seeds."""

    out_dir: str = field(default="runs/understanding", metadata=PATH)
    model: ModelConfig | None = None
    tasks: list[str] = field(default_factory=lambda: list(DEFAULT_TASKS))
    include_path: list[str] = field(default_factory=list, metadata=PATH)
    include_default_tasks: bool = True
    limit: float | None = None
    batch_size: int = 1
    think: bool = False
    think_system_prompt: str | None = None
    max_new_tokens: int = 256
    max_new_tokens_cap: int | None = None
    bootstrap_iters: int = 1000
    log_samples: bool = True
    seed: int = 0
    verbosity: str = "WARNING"

    def __post_init__(self):
        if self.model is None:
            raise ValueError("model: give the checkpoint (model.path=... or --model)")
        if not self.tasks or not all(isinstance(t, str) and t.strip() for t in self.tasks):
            raise ValueError("tasks: name at least one lmms-eval task")
        if self.batch_size < 1 or self.max_new_tokens < 1:
            raise ValueError("batch_size and max_new_tokens must be >= 1")
        if self.limit is not None and not self.limit > 0:
            raise ValueError(f"limit must be > 0 (or null), got {self.limit}")
        if self.bootstrap_iters < 0:
            raise ValueError(f"bootstrap_iters must be >= 0, got {self.bootstrap_iters}")


# ------------------------------------------------------------------ summary (no lmms-eval needed)
def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def task_metrics(task_results: dict) -> dict[str, float]:
    """``{"mme_perception_score,none": 1500.0, "alias": ...}`` -> ``{metric: value}``
    (numbers only; standard errors and non-numeric entries such as a submission file left out;
    the filter suffix dropped, the first filter of a metric kept)."""
    out: dict[str, float] = {}
    for key, value in task_results.items():
        if "," not in key:
            continue
        metric = key.split(",", 1)[0]
        number = _number(value)
        if "_stderr" in metric or number is None or metric in out:
            continue
        out[metric] = number
    return out


def summarize_results(results: dict, tasks: list[str], run_info: dict | None = None) -> dict:
    """srum's summary of lmms-eval's ``results`` (what ``simple_evaluate`` returns).

    Leaf tasks are those with a sample count (``n-samples``); a requested group (e.g.
    ``mathvista_testmini``) shows up as its leaf tasks. A known task's headline columns
    come from :data:`.benchmarks.HEADLINES`; any other task's headline is its first
    numeric metric, on lmms-eval's scale."""
    per_task = results.get("results") or {}
    counts = results.get("n-samples") or {}
    leaves = [t for t in per_task if t in counts] or list(per_task)
    columns, headers, values, detail, problems = [], {}, {}, {}, []
    for task in leaves:
        metrics = task_metrics(per_task[task])
        n = counts.get(task) or {}
        num_docs = int(n.get("effective", n.get("original", 0)) or 0)
        heads = [(h.column, h.header, h.metric, h.scale) for h in headlines_for(task)]
        if not heads and metrics:
            first = next(iter(metrics))
            heads = [(task, f"{task} ({first})", first, 1.0)]
        rows = []
        for column, header, metric, scale in heads:
            value = metrics.get(metric)
            columns.append(column)
            headers[column] = header
            values[column] = None if value is None else value * scale
            rows.append({"column": column, "metric": metric, "value": value, "scale": scale,
                         "paper_scale_value": values[column]})
            if value is None:
                problems.append(f"{task}: no value for {metric}")
        if not heads:
            problems.append(f"{task}: no numeric metric")
        if num_docs == 0:
            problems.append(f"{task}: no document scored")
        detail[task] = {"num_docs": num_docs, "num_docs_total": int(n.get("original", num_docs) or 0),
                        "metrics": metrics, "headline": rows}
    paper_cols = [c for c in columns if any(c in row for row in PAPER_ROWS.values())]
    table = {"name": TABLE_NAME, "columns": columns, "headers": headers, "values": values,
             "note": "The paper's benchmarks on the paper's scale (percent; MME as lmms-eval's summed score), "
                     "other tasks on lmms-eval's own. Tasks scored by an LLM judge depend on the judge lmms-eval "
                     "was given."}
    if paper_cols:
        table["paper"] = {"source": PAPER, "rows": {label: {c: row.get(c) for c in columns}
                                                    for label, row in PAPER_ROWS.items()}}
    return {"benchmark": "understanding", "tool": "lmms-eval", "requested_tasks": list(tasks), "tasks": detail,
            "table": table, "num_tasks": len(detail), "num_scored": sum(d["num_docs"] for d in detail.values()),
            "num_failed": len(problems), "problems": problems, "run": dict(run_info or {})}


def status_of(summary: dict) -> tuple[str, str | None]:
    if not summary["tasks"] or all(v is None for v in summary["table"]["values"].values()):
        return "failed", "no task produced a headline number" + (
            f" ({'; '.join(summary['problems'])})" if summary["problems"] else "")
    if summary["problems"]:
        return "incomplete", "; ".join(summary["problems"])
    return "complete", None


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def markdown_summary(summary: dict) -> str:
    table = summary["table"]
    lines = [f"# {TABLE_NAME}: {summary['run'].get('label') or summary['run'].get('model', '')}", "",
             "| task | metric | lmms-eval value | headline (paper scale) | documents |", "|---|---|---:|---:|---:|"]
    for task, d in summary["tasks"].items():
        for row in d["headline"] or [{"metric": "(none)", "value": None, "paper_scale_value": None}]:
            lines.append(f"| {task} | {row['metric']} | {_fmt(row['value'])} | {_fmt(row['paper_scale_value'])} | "
                         f"{d['num_docs']} |")
    if "paper" in table:
        cols = [c for c in table["columns"] if any(v.get(c) is not None for v in table["paper"]["rows"].values())]
        lines += ["", f"## Beside the paper ({table['paper']['source']})", "",
                  "| model | " + " | ".join(table["headers"][c] for c in cols) + " |",
                  "|---|" + "|".join("---:" for _ in cols) + "|",
                  "| this run | " + " | ".join(_fmt(table["values"][c]) for c in cols) + " |"]
        lines += [f"| paper: {label} | " + " | ".join(_fmt(row.get(c)) for c in cols) + " |"
                  for label, row in table["paper"]["rows"].items()]
    if summary["problems"]:
        lines += ["", "Problems: " + "; ".join(summary["problems"]) + "."]
    lines += ["", table["note"]]
    return "\n".join(lines) + "\n"


def write_summary(summary: dict, out_dir: Path) -> None:
    atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=2, default=str) + "\n")
    atomic_write_text(out_dir / "summary.md", markdown_summary(summary))


# ------------------------------------------------------------------ the run
def _import_lmms_eval():
    try:
        import lmms_eval  # noqa: F401
        from lmms_eval import evaluator
        from lmms_eval.loggers import EvaluationTracker
        from lmms_eval.tasks import TaskManager
    except ImportError as err:
        raise StageFailure(f"lmms-eval is not installed ({err}); {INSTALL_HINT}") from None
    return evaluator, EvaluationTracker, TaskManager


@contextlib.contextmanager
def loglikelihood_passthrough(evaluator):
    """Keep ``(log-probability, is_greedy)`` answers intact inside lmms-eval's evaluator.

    lmms-eval 0.7.3 passes every model answer through ``unwrap_generation_output``, which
    turns anything that is not text into ``str(answer)``: a loglikelihood pair becomes the
    string "(-3.2, True)" and every ``multiple_choice`` / ``loglikelihood`` task then fails
    in its ``process_results`` ("too many values to unpack"), for any model. While our run
    lasts, pairs of (number, bool) go through unchanged; when the installed lmms-eval keeps
    them already, nothing is patched."""
    original = getattr(evaluator, "unwrap_generation_output", None)
    if original is None or original((0.0, True))[0] == (0.0, True):
        yield
        return

    def unwrap(output):
        if (isinstance(output, tuple) and len(output) == 2 and isinstance(output[1], bool)
                and isinstance(output[0], (int, float))):
            return output, None
        return original(output)
    evaluator.unwrap_generation_output = unwrap
    try:
        yield
    finally:
        evaluator.unwrap_generation_output = original


def _check_tasks(manager, tasks: list[str]) -> None:
    known = set(manager.all_tasks)
    unknown = [t for t in tasks if t not in known]
    if unknown:
        raise StageFailure(f"unknown lmms-eval task(s) {unknown}; `lmms-eval --tasks list` names them "
                           "(own task YAMLs: include_path)")


def _evaluate(cfg: UnderstandingConfig, model, out: Path) -> tuple[dict, dict]:
    """Run lmms-eval; returns (results without samples, run info)."""
    evaluator, EvaluationTracker, TaskManager = _import_lmms_eval()
    from lmms_eval.utils import get_datetime_str

    from .lmms_adapter import SrumBagelLMM
    from .registration import register_in_process
    register_in_process()   # so lmms-eval's own config records resolve "srum" too
    manager = TaskManager(cfg.verbosity, include_path=[str(p) for p in cfg.include_path] or None,
                          include_defaults=cfg.include_default_tasks)
    _check_tasks(manager, list(cfg.tasks))
    adapter = SrumBagelLMM(model=model, pretrained=cfg.model.path, batch_size=cfg.batch_size, think=cfg.think,
                           think_system_prompt=cfg.think_system_prompt, max_new_tokens=cfg.max_new_tokens,
                           max_new_tokens_cap=cfg.max_new_tokens_cap)
    tracker = EvaluationTracker(output_path=str(out / "lmms_eval"))
    stamp = get_datetime_str()
    limit = None if cfg.limit is None else (int(cfg.limit) if cfg.limit >= 1 else float(cfg.limit))
    seeds = dict(random_seed=cfg.seed, numpy_random_seed=cfg.seed + 1234, torch_random_seed=cfg.seed + 1234,
                 fewshot_random_seed=cfg.seed + 1234)
    with loglikelihood_passthrough(evaluator):
        results = evaluator.simple_evaluate(
            model=adapter, model_args=f"pretrained={cfg.model.path}", tasks=list(cfg.tasks),
            batch_size=cfg.batch_size, limit=limit, bootstrap_iters=cfg.bootstrap_iters, log_samples=cfg.log_samples,
            evaluation_tracker=tracker, task_manager=manager, verbosity=cfg.verbosity, datetime_str=stamp, **seeds)
    if results is None:   # lmms-eval returns None on ranks other than 0; we run one process
        raise StageFailure("lmms-eval returned no results")
    samples = results.pop("samples", None)
    tracker.save_results_aggregated(results=results, samples=samples, datetime_str=stamp)
    if cfg.log_samples and samples:
        for task in results.get("configs", {}):
            if task in samples:
                tracker.save_results_samples(task_name=task, samples=samples[task])
    date_id = stamp.replace(":", "-")   # how lmms-eval names its files
    found = sorted((out / "lmms_eval").glob(f"**/{date_id}_results.json"))
    if not found:   # lmms-eval logs a failed save as a warning only: do not claim a file that is not there
        raise StageFailure(f"lmms-eval did not write its results file under {out / 'lmms_eval'}")
    from importlib.metadata import version
    info = {"lmms_eval_version": version("lmms_eval"), "lmms_eval_results": str(found[-1]),
            "lmms_eval_samples": [str(p) for p in sorted(found[-1].parent.glob(f"{date_id}_samples_*.jsonl"))]}
    return results, info


def run_understanding(cfg: UnderstandingConfig, model=None, label: str | None = None) -> dict:
    """Evaluate ``cfg.model`` (or the given loaded ``model``) on ``cfg.tasks``; write
    lmms-eval's files, ``summary.json``, ``summary.md`` and ``status.json`` in
    ``cfg.out_dir``. Returns the summary with its ``status``. A stop (lmms-eval missing,
    an unknown task, a model or task error) writes ``failed`` with the reason, then raises."""
    from srum import distributed
    from srum.locking import DirectoryLock
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    info = distributed.env_info()
    if info.world_size > 1:
        raise StageFailure("srum eval understanding runs as one process (lmms-eval's loop with the loaded "
                           "model); spread a large model over the GPUs with model.device_map=auto")
    with DirectoryLock.acquire(out, "eval understanding"):
        clear_status(out)
        started = time.time()
        try:
            if model is None:
                _import_lmms_eval()   # fail before a 7B model loads
                from srum.stages.common import load_stage_model
                model = load_stage_model(cfg.model, info)
            results, run = _evaluate(cfg, model, out)
        except BaseException as err:
            reason = f"{type(err).__name__}: {err}" if not isinstance(err, StageFailure) else str(err)
            write_status(out, "failed", reason, tasks=len(cfg.tasks))
            if isinstance(err, (StageFailure, KeyboardInterrupt)):
                raise
            raise StageFailure(reason) from err
        run.update({"model": cfg.model.path, "label": label or Path(cfg.model.path).name,
                    "seconds": round(time.time() - started, 1), "config": to_dict(cfg)})
        summary = summarize_results(results, list(cfg.tasks), run)
        judged = [t for t in summary["tasks"] if t in JUDGED_TASKS]
        if judged:
            summary["run"]["llm_judged_tasks"] = judged
        status, reason = status_of(summary)
        summary["status"], summary["reason"] = status, reason
        write_summary(summary, out)
        write_status(out, status, reason, tasks=summary["num_tasks"], documents=summary["num_scored"],
                     problems=summary["num_failed"])
    return summary
