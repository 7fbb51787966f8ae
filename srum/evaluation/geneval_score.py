# SPDX-License-Identifier: Apache-2.0
"""``srum eval geneval``: GenEval's own scorer on the images of ``srum eval geneval-images``.

GenEval scores with an object detector (Mask2Former, mmdet 2.x) and CLIP colour
classification, in an environment of its own that srum does not try to share (mmdet 2.x
pins an old torch / mmcv). So srum runs the official script in the user's GenEval
environment as a subprocess, with the command line of GenEval's README::

    <evaluator.python> <evaluator.repo>/evaluation/evaluate_images.py <images> \\
        --outfile <results.jsonl> --model-path <evaluator.detector_path>

and reads what it writes: one JSON line per image with ``filename``, ``tag``, ``prompt``,
``correct`` (bool), ``reason``, ``metadata`` (the prompt's line, as a string) and
``details``. The arithmetic is ``evaluation/summary_scores.py``'s: a task's score is the
fraction of its images judged correct, the overall score is the plain mean of the task
scores (not of the images). An overall is left out (null) when one of the six tasks has no
scored image: a partial overall is not comparable to a full one.

Run directory (``out_dir``)::

    scores/results.jsonl                    the evaluator's output, unchanged
    scores/evaluator.{stdout,stderr}.log    its output streams
    scores/summary.json, scores/status.json what was scored and how it ended
    summary/{summary.json, summary.md, results.csv, scores.png}

The evaluator scores a whole folder in one go and writes its file only at the end, so the
step resumes at that grain: results whose images and command are unchanged are kept (only
the summary is rewritten), anything else runs the evaluator again into a temporary file
that replaces the old one only when it succeeded.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from srum.config import PATH
from srum.fileio import atomic_write_text, iter_jsonl
from srum.stages.status import StageFailure, read_status, write_status

GENEVAL_TASKS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
TASK_HEADERS = {"single_object": "Single obj.", "two_object": "Two obj.", "counting": "Counting",
                "colors": "Colors", "position": "Position", "color_attr": "Color attr.", "overall": "Overall"}
# evaluate_images.py opens <--model-path>/<detector name>.pth; the name can be changed with --options model=...
DEFAULT_DETECTOR = "mask2former_swin-s-p4-w7-224_lsj_8x2_50e_coco"
EVALUATOR_SCRIPT = "evaluation/evaluate_images.py"
_SAMPLE = re.compile(r"\d+\.png")   # the files evaluate_images.py takes (re.match: a prefix match, as upstream)
_TAIL_CHARS = 3000


@dataclass
class GenEvalEvaluatorConfig:
    """The user's GenEval environment (README of djghosh13/geneval, "Setup").

    python: that environment's interpreter (absolute path or a name on PATH; it needs
        mmdet 2.x, open_clip, clip_benchmark, pandas). repo: a clone of djghosh13/geneval.
    detector_path: the folder ``evaluation/download_models.sh <folder>`` filled (it holds
        ``mask2former_swin-s-p4-w7-224_lsj_8x2_50e_coco.pth``). model_config: the
        detector's mmdet config (null: the script's default inside mmdet's configs).
    options: passed as ``--options KEY=VALUE ...`` (threshold, counting_threshold, ...;
        empty: GenEval's defaults, which published scores use). env: extra environment
        variables (e.g. CUDA_VISIBLE_DEVICES). timeout_minutes: stop a hung evaluator."""

    python: str | None = None
    repo: str | None = field(default=None, metadata=PATH)
    detector_path: str | None = field(default=None, metadata=PATH)
    model_config: str | None = field(default=None, metadata=PATH)
    options: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    timeout_minutes: float | None = None

    def __post_init__(self):
        for option in self.options:
            if "=" not in option:
                raise ValueError(f"evaluator.options: {option!r} is not KEY=VALUE")
        if self.timeout_minutes is not None and not self.timeout_minutes > 0:
            raise ValueError(f"evaluator.timeout_minutes must be > 0, got {self.timeout_minutes}")

    def detector_file(self) -> Path:
        name = dict(o.split("=", 1) for o in self.options).get("model", DEFAULT_DETECTOR)
        return Path(self.detector_path or "") / f"{name}.pth"


@dataclass
class GenEvalScoreConfig:
    """images: the folder ``srum eval geneval-images`` wrote (GenEval's layout). out_dir: the
    run directory (scores/, summary/). results: summarize this results.jsonl (the evaluator
    run by hand elsewhere) instead of running the evaluator. fresh: run the evaluator again
    even when its results are up to date."""

    images: str = field(metadata=PATH)
    out_dir: str = field(metadata=PATH)
    evaluator: GenEvalEvaluatorConfig = field(default_factory=GenEvalEvaluatorConfig)
    results: str | None = field(default=None, metadata=PATH)
    fresh: bool = False


# ------------------------------------------------------------------ what the evaluator sees
def scored_images(images: str | os.PathLike) -> tuple[list[str], list[str]]:
    """The images evaluate_images.py scores, as ``<folder>/samples/<file>`` keys (sorted), and
    the numbered folders it would stop at (no ``metadata.jsonl``: the script crashes there)."""
    root = Path(images)
    if not root.is_dir():
        raise FileNotFoundError(f"images: {root} is not a folder (run `srum eval geneval-images` first)")
    keys, broken = [], []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and p.name.isdigit()):
        if not (folder / "metadata.jsonl").is_file():
            broken.append(f"{folder}: no metadata.jsonl")
            continue
        samples = folder / "samples"
        if not samples.is_dir():
            broken.append(f"{folder}: no samples/ folder")
            continue
        keys += [f"{folder.name}/samples/{f.name}" for f in sorted(samples.iterdir())
                 if f.is_file() and _SAMPLE.match(f.name)]
    return keys, broken


def evaluator_command(cfg: GenEvalScoreConfig, outfile: Path) -> list[str]:
    ev = cfg.evaluator   # unset fields show as <evaluator.field> (a dry run prints the command)
    cmd = [ev.python or "<evaluator.python>", str(Path(ev.repo or "<evaluator.repo>") / EVALUATOR_SCRIPT),
           str(cfg.images), "--outfile", str(outfile), "--model-path", ev.detector_path or "<evaluator.detector_path>"]
    if ev.model_config:
        cmd += ["--model-config", str(ev.model_config)]
    if ev.options:
        cmd += ["--options", *ev.options]
    return cmd


def _fingerprint(root: Path, keys: list[str], command: list[str]) -> str:
    """Changes when an image is added, removed or rewritten, or the command changes."""
    h = hashlib.sha256(json.dumps(command).encode())
    for key in keys:
        st = (root / key).stat()
        h.update(f"{key}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _tail(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return text[-_TAIL_CHARS:].strip()


def run_evaluator(cfg: GenEvalScoreConfig, scores: Path, keys: list[str]) -> tuple[Path, bool]:
    """Run the official evaluator unless its results for these images and this command are
    there already; returns (results file, whether it ran)."""
    results = scores / "results.jsonl"
    command = evaluator_command(cfg, scores / "results.partial.jsonl")
    fingerprint = _fingerprint(Path(cfg.images), keys, command)
    record = _read_json(scores / "summary.json") or {}
    if (not cfg.fresh and results.is_file() and record.get("fingerprint") == fingerprint
            and (read_status(scores) or {}).get("status") in ("complete", "incomplete")):
        return results, False
    ev = cfg.evaluator
    missing = []
    if not ev.python or not (shutil.which(ev.python) or Path(ev.python).is_file()):
        missing.append(f"evaluator.python: {ev.python!r} (the GenEval environment's python) not found")
    for label, value, needed in (("evaluator.repo", ev.repo, Path(ev.repo or "") / EVALUATOR_SCRIPT),
                                 ("evaluator.detector_path", ev.detector_path, ev.detector_file())):
        if not value:
            missing.append(f"{label}: not set")
        elif not needed.is_file():
            missing.append(f"{label}: {needed} not found")
    if missing:
        raise StageFailure("GenEval evaluator not set up: " + "; ".join(missing)
                           + " (EVAL.md, \"GenEval\": setting up its environment)")
    partial = scores / "results.partial.jsonl"
    partial.unlink(missing_ok=True)
    out_log, err_log = scores / "evaluator.stdout.log", scores / "evaluator.stderr.log"
    print(f"srum eval geneval: running the GenEval evaluator on {len(keys)} images: "
          f"{' '.join(command)}", file=sys.stderr, flush=True)
    timeout = ev.timeout_minutes * 60 if ev.timeout_minutes else None
    with open(out_log, "w") as out, open(err_log, "w") as err:
        try:
            proc = subprocess.run(command, stdout=out, stderr=err, cwd=ev.repo, timeout=timeout,
                                  env={**os.environ, **{k: str(v) for k, v in ev.env.items()}})
            code = proc.returncode
        except subprocess.TimeoutExpired:
            code = None
    if code != 0 or not partial.is_file():
        why = (f"timed out after {ev.timeout_minutes:g} min" if code is None
               else f"exited with code {code}" if code != 0 else f"exited 0 but wrote no {partial.name}")
        raise StageFailure(f"GenEval evaluator {why}; command: {' '.join(command)}; log: {err_log}; "
                           f"stderr tail:\n{_tail(err_log) or '(empty)'}")
    os.replace(partial, results)
    atomic_write_text(scores / "summary.json", json.dumps({"fingerprint": fingerprint, "command": command,
                                                           "num_images": len(keys)}, indent=2) + "\n")
    return results, True


# ------------------------------------------------------------------ reading and arithmetic
def _image_key(filename: str) -> str:
    """``<folder>/samples/<file>``: the evaluator writes ``os.path.join(imagedir, ...)``, so
    only the last three parts identify an image whatever ``imagedir`` was."""
    return "/".join(Path(filename).parts[-3:])


def read_results(path: str | os.PathLike, expected: list[str] | None = None) -> tuple[list[dict], dict]:
    """Rows of an evaluator ``results.jsonl`` and what did not fit: ``bad_rows`` (``file:line:
    reason``: not JSON, no ``tag`` string, ``correct`` not a boolean, an image scored twice or
    not among ``expected``) and ``missing`` (expected images without a row)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"GenEval results not found: {path}")
    rows, bad, seen = [], [], set()
    wanted = set(expected) if expected is not None else None
    for n, obj, err in iter_jsonl(path):
        where = f"{path}:{n}"
        if err:
            bad.append(err)
            continue
        if not isinstance(obj, dict):
            bad.append(f"{where}: expected a JSON object")
            continue
        if not isinstance(obj.get("tag"), str) or not obj["tag"]:
            bad.append(f"{where}: no 'tag' string")
            continue
        if not isinstance(obj.get("correct"), bool):
            bad.append(f"{where}: 'correct' must be true or false, got {obj.get('correct')!r}")
            continue
        key = _image_key(str(obj.get("filename") or f"line-{n}"))
        if key in seen:
            bad.append(f"{where}: {key} scored twice")
            continue
        if wanted is not None and key not in wanted:
            bad.append(f"{where}: {key} is not an image of this folder (results from another run?)")
            continue
        seen.add(key)
        rows.append({**obj, "image": key})
    missing = sorted(wanted - seen) if wanted is not None else []
    return rows, {"bad_rows": bad, "missing": missing}


def geneval_scores(rows: list[dict]) -> dict:
    """``summary_scores.py``'s numbers: per task the fraction of correct images, the overall
    as the mean over tasks (null when a GenEval task is absent), and the fractions of correct
    images and of prompts with at least one correct image."""
    tasks: dict[str, dict] = {}
    for r in rows:
        t = tasks.setdefault(r["tag"], {"num_images": 0, "num_correct": 0})
        t["num_images"] += 1
        t["num_correct"] += int(r["correct"])
    for t in tasks.values():
        t["accuracy"] = t["num_correct"] / t["num_images"]
    # shown in GenEval's column order (the overall, a mean over tasks, does not depend on it)
    tasks = {**{tag: tasks[tag] for tag in GENEVAL_TASKS if tag in tasks},
             **{tag: t for tag, t in tasks.items() if tag not in GENEVAL_TASKS}}
    missing_tasks = [t for t in GENEVAL_TASKS if t not in tasks]
    prompts: dict[str, bool] = {}
    for r in rows:
        key = str(r.get("metadata") or r.get("prompt"))
        prompts[key] = prompts.get(key, False) or r["correct"]
    return {"tasks": tasks, "missing_tasks": missing_tasks,
            "overall": (sum(t["accuracy"] for t in tasks.values()) / len(tasks)) if tasks and not missing_tasks
            else None,
            "correct_images": sum(r["correct"] for r in rows) / len(rows) if rows else None,
            "correct_prompts": sum(prompts.values()) / len(prompts) if prompts else None}


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _images_think(images: Path) -> str | None:
    """``think`` of the image run (its manifest's sampling settings), as the other summaries record it."""
    manifest = images / "manifest.jsonl"
    if not manifest.is_file():
        return None
    values = set()
    for _, obj, err in iter_jsonl(manifest):
        if not err and isinstance(obj, dict):
            think = obj.get("think", (obj.get("sampling") or {}).get("think"))
            if think is not None:
                values.add(str(think).lower())
    return ", ".join(sorted(values)) or None


# ------------------------------------------------------------------ the step
def run_geneval_score(cfg: GenEvalScoreConfig) -> dict:
    """Run (or reuse) the evaluator, summarize, write ``status.json``; returns the summary
    with its ``status``. An evaluator that fails raises :class:`StageFailure` (status failed)."""
    from .paper import GENEVAL_PAPER, GENEVAL_PAPER_ROWS
    from .summary import bar_chart, write_results_csv
    out_dir, images = Path(cfg.out_dir), Path(cfg.images)
    scores = out_dir / "scores"
    scores.mkdir(parents=True, exist_ok=True)
    try:
        keys, broken = scored_images(images)
        if broken:
            raise StageFailure("images: the evaluator would stop at " + "; ".join(broken[:5])
                               + (f" (and {len(broken) - 5} more)" if len(broken) > 5 else ""))
        if not keys:
            raise StageFailure(f"images: {images} has no <index>/samples/<k>.png image to score")
        if cfg.results:
            results, ran = Path(cfg.results), False
        else:
            results, ran = run_evaluator(cfg, scores, keys)
        rows, problems = read_results(results, keys)
        if not rows:
            raise StageFailure(f"{results}: no usable result row for the {len(keys)} images"
                               + (f" ({problems['bad_rows'][0]})" if problems["bad_rows"] else ""))
    except (StageFailure, OSError, ValueError) as err:
        write_status(scores, "failed", str(err))
        raise
    numbers = geneval_scores(rows)
    n_bad, n_missing = len(problems["bad_rows"]), len(problems["missing"])
    reasons = []
    if n_missing:
        reasons.append(f"{n_missing} of {len(keys)} images have no result row (e.g. {problems['missing'][0]})")
    if n_bad:
        reasons.append(f"{n_bad} unusable result rows (e.g. {problems['bad_rows'][0]})")
    image_status = read_status(images)
    if image_status and image_status.get("status") != "complete":
        reasons.append(f"the image step is {image_status['status']} ({images}/status.json): some prompts lack images")
    status = "incomplete" if reasons else "complete"
    values = {t: numbers["tasks"].get(t, {}).get("accuracy") for t in GENEVAL_TASKS}
    values["overall"] = numbers["overall"]
    extra_tasks = [t for t in numbers["tasks"] if t not in GENEVAL_TASKS]
    summary = {
        "benchmark": "GenEval", **numbers,
        "num_images": len(keys), "num_scored": len(rows), "num_failed": n_missing + n_bad,
        "num_missing": n_missing, "num_bad_rows": n_bad, "bad_rows": problems["bad_rows"][:20],
        "status": status, "reason": "; ".join(reasons) or None,
        "run": {"think": _images_think(images), "images": str(images), "results": str(results),
                "evaluator_ran": ran},
        "title": f"GenEval: {out_dir.resolve().name}",
        "table": {"name": "GenEval", "columns": [*GENEVAL_TASKS, "overall"], "headers": TASK_HEADERS,
                  "values": values, "axis_max": 1.0,
                  "note": "Scores are fractions of images judged correct by GenEval's own detector-based "
                          "scorer; overall = mean of the six task scores.",
                  "paper": {"source": GENEVAL_PAPER, "rows": GENEVAL_PAPER_ROWS,
                            "note": "The paper does not name the scorer of its Table 3; its Bagel row differs from "
                                    "the Bagel report's GenEval numbers in Color attr. (0.82 vs 0.63): compare our "
                                    "runs with each other first (EVAL.md, \"GenEval\")."}},
    }
    if extra_tasks:
        summary["table"]["note"] += f" Also in the results (and in the overall): {', '.join(extra_tasks)}."
    target = out_dir / "summary"
    write_results_csv(rows, target / "results.csv", ("image", "tag", "correct", "reason", "prompt"))
    atomic_write_text(target / "summary.json", json.dumps(summary, indent=2) + "\n")
    atomic_write_text(target / "summary.md", markdown_summary(summary))
    bar_chart({summary["title"]: values}, [*GENEVAL_TASKS, "overall"], target / "scores.png", summary["title"],
              TASK_HEADERS, axis_max=1.0)
    write_status(scores, status, summary["reason"], num_items=len(keys), num_ok=len(rows),
                 num_missing=n_missing, num_errors=n_bad)
    return summary


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def markdown_summary(summary: dict) -> str:
    cols = [*GENEVAL_TASKS, "overall"]
    values = summary["table"]["values"]
    lines = [f"# {summary['title']}", ""]
    if summary["run"].get("think") is not None:
        lines.append(f"- think: {summary['run']['think']}")
    lines += [f"- images: {summary['num_images']} ({summary['num_scored']} scored, {summary['num_missing']} without "
              f"a result row, {summary['num_bad_rows']} unusable rows)", "",
              "| " + " | ".join(TASK_HEADERS[c] for c in cols) + " |", "|" + "|".join("---:" for _ in cols) + "|",
              "| " + " | ".join(_fmt(values[c]) for c in cols) + " |", "",
              "Overall: the mean of the six task scores (GenEval's `summary_scores.py`)"
              + (f"; not available, no scored image for: {', '.join(summary['missing_tasks'])}."
                 if summary["missing_tasks"] else "."),
              f"Correct images: {_fmt(summary['correct_images'])}; prompts with a correct image: "
              f"{_fmt(summary['correct_prompts'])}.", "",
              "| task | images | correct | score |", "|---|---:|---:|---:|"]
    lines += [f"| {tag} | {t['num_images']} | {t['num_correct']} | {t['accuracy']:.4f} |"
              for tag, t in summary["tasks"].items()]
    if summary.get("reason"):
        lines += ["", f"Incomplete: {summary['reason']}."]
    return "\n".join(lines) + "\n"


def check_geneval_setup(pf, cfg: GenEvalScoreConfig) -> None:
    """The preflight of ``srum eval geneval --dry-run``: the image folder, the evaluator's
    interpreter (and that it imports GenEval's dependencies), script and detector checkpoint."""
    try:
        keys, broken = scored_images(cfg.images)
    except FileNotFoundError as err:
        pf.problem(str(err))
    else:
        for b in broken:
            pf.problem(f"images: {b} (the evaluator would stop there)")
        if not keys:
            pf.problem(f"images: {cfg.images} has no <index>/samples/<k>.png image")
    if cfg.results:
        pf.file("results", cfg.results)
        return
    ev = cfg.evaluator
    python = shutil.which(ev.python) if ev.python else None
    python = python or (ev.python if ev.python and Path(ev.python).is_file() else None)
    if python is None:
        pf.problem(f"evaluator.python: {ev.python!r} not found; give the GenEval environment's interpreter, e.g. "
                   "$(conda run -n geneval which python)")
    else:
        try:
            proc = subprocess.run([python, "-c", "import mmdet, open_clip, clip_benchmark, pandas"],
                                  capture_output=True, text=True, timeout=300,
                                  env={**os.environ, **{k: str(v) for k, v in ev.env.items()}})
            if proc.returncode != 0:
                pf.problem(f"evaluator.python: {python} cannot import GenEval's dependencies (mmdet, open_clip, "
                           f"clip_benchmark, pandas): {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
        except (OSError, subprocess.TimeoutExpired) as err:
            pf.problem(f"evaluator.python: {python} does not run ({err})")
    if not ev.repo:
        pf.problem("evaluator.repo: give the path of a clone of https://github.com/djghosh13/geneval")
    else:
        pf.file("evaluator.repo", Path(ev.repo) / EVALUATOR_SCRIPT, "git clone https://github.com/djghosh13/geneval")
    if not ev.detector_path:
        pf.problem("evaluator.detector_path: give the folder of the Mask2Former checkpoint "
                   "(evaluation/download_models.sh <folder> in the GenEval repository)")
    else:
        pf.file("evaluator.detector_path", ev.detector_file(),
                "run evaluation/download_models.sh <folder> in the GenEval repository")
    pf.file("evaluator.model_config", ev.model_config)
    pf.launch("eval geneval", evaluator_command(cfg, Path(cfg.out_dir) / "scores" / "results.partial.jsonl"), 1)
    pf.note("the GenEval evaluator needs a CUDA GPU (evaluate_images.py asserts one)")
