# SPDX-License-Identifier: Apache-2.0
"""``srum eval t2i-reasonbench``: T2I-ReasonBench (arXiv 2508.17472) with a Qwen2.5-VL judge.

The benchmark: 800 prompts in 4 dimensions of 200 (idiom interpretation, textual image
design, entity reasoning, scientific reasoning). The user provides its files
(``data_dir``; the project ships none of them)::

    <data_dir>/prompts/{idiom_interpretation,textual_image_design,entity_reasoning,scientific_reasoning}.json
    <data_dir>/deepseek_evaluation_qs/evaluation_{idiom,textual_image,entity,scientific}.json
        (or evaluation_qs/; ``qs_dir`` names another folder)

A prompt file is a JSON array of ``{"id": 1.., "prompt": ...}``; a question file an array
of ``{"id", <section>: {"q1", "c1", "q2", "c2", ...}}`` (question ``qk``, scoring
criterion ``ck`` giving 1 / 0.5 / 0; a few entries write ``aq1``, ``sci_q1``, ... or give a
criterion as an object of levels: any key ending in ``q<k>`` is question k).

A run directory has the layout of ``srum eval compbench``::

    <out_dir>/images/<dimension folder>/<id:04d>.png   step "generate": the benchmark's own layout
    <out_dir>/images/manifest.jsonl                     (+ parts/, errors, summary)
    <out_dir>/scores/scores.jsonl                       step "score": one judge row per image
    <out_dir>/summary/{results.csv, summary.json, summary.md, scores.png}   step "summarize"

Protocol (the benchmark's): the judge first describes the image ("Describe this image."),
then, in the same conversation, scores each question-criterion section of the prompt
(1, 0.5 or 0 per question, JSON ``{"reason": ..., "score": [...]}``). Per image:

* idiom, textual image: accuracy = mean of ``reason_evaluation``;
* entity, scientific: accuracy = 0.7 * mean of ``entity_evaluation`` (or
  ``scientific_evaluation``) + 0.3 * mean of ``other_details_evaluation``;
* quality = mean of ``quality_evaluation``.

A dimension's reasoning accuracy and image quality are the means over its scored images
(x 100); ``overall`` (the SRUM paper's Table 4) = mean of the 4 dimensions' accuracies,
``overall_quality`` likewise. An image whose description or any section cannot be read
from the judge after ``retries`` sampled re-asks is ``status: "failed"``: counted, never
averaged in (the official script skips such rows as well). Our prompt wording differs
from the official script's; the structure and the arithmetic are the benchmark's.
"""
from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from srum import distributed
from srum.config import MODEL, PATH
from srum.data.prompts import PromptItem
from srum.judge.openai_backend import OpenAIServerConfig
from srum.stages.common import ImageStage, ModelConfig, error_row, relative_to
from srum.stages.generate import PromptJobs, image_id_for

from .compbench import EvalSamplingConfig, RunLayout, generate_prompt_images
from .judged import fmt, markdown_head, run_info, run_steps, stage_counts, write_summary_files
from .scoring import DEFAULT_JUDGE, SCORES_FILE, check_judge_settings, failed_judgment
from .reasonbench_judge import DESCRIBE_QUESTION, question_keys, score_reasonbench_images
from .summary import read_scores, summarize_scores



@dataclass(frozen=True)
class Dimension:
    name: str             # our category name
    prompt_file: str      # prompts/<prompt_file>.json; also the image folder
    qs_file: str          # <qs dir>/<qs_file>.json
    primary: str          # the section that measures the reasoning
    details: str | None   # entity / scientific: the other-details section (weight 0.3)
    header: str           # column header (the paper's Table 4)


DIMENSIONS = {d.name: d for d in (
    Dimension("entity", "entity_reasoning", "evaluation_entity", "entity_evaluation",
              "other_details_evaluation", "Entity"),
    Dimension("idiom", "idiom_interpretation", "evaluation_idiom", "reason_evaluation", None, "Idiom"),
    Dimension("scientific", "scientific_reasoning", "evaluation_scientific", "scientific_evaluation",
              "other_details_evaluation", "Scientific"),
    Dimension("textual_image", "textual_image_design", "evaluation_textual_image", "reason_evaluation", None,
              "Textual"),
)}
_FOLDER_DIMENSION = {d.prompt_file: d.name for d in DIMENSIONS.values()}
QUALITY_SECTION = "quality_evaluation"
PRIMARY_WEIGHT, DETAILS_WEIGHT = 0.7, 0.3          # entity / scientific accuracy
QS_DIRS = ("deepseek_evaluation_qs", "evaluation_qs")   # the upstream name, then the short one
TABLE_COLUMNS = ("entity", "idiom", "scientific", "textual_image", "overall", "overall_quality")
TABLE_HEADERS = {**{d.name: d.header for d in DIMENSIONS.values()}, "overall": "Overall",
                 "overall_quality": "Quality"}
TABLE_NOTE = ("Reasoning accuracy (0-100) per dimension; Overall: mean of the 4 dimensions' accuracies (the SRUM "
              "paper's Table 4); Quality: mean of the 4 dimensions' image-quality scores.")
CSV_FIELDS = ("image_id", "category", "benchmark_id", "prompt_id", "sample_index", "score", "quality", "status",
              "explanation", "prompt", "image_file")
PAPER = "SRUM paper (arXiv 2510.12784), Table 4, Qwen2.5-VL judge, no CoT"
_PAPER_COLUMNS = ("entity", "idiom", "scientific", "textual_image", "overall")
PAPER_ROWS = {label: dict(zip(_PAPER_COLUMNS, values)) for label, values in {
    "Bagel": (49.70, 34.46, 47.52, 43.59, 43.82),
    "Bagel+SFT": (50.53, 39.43, 47.45, 44.08, 45.37),
    "Bagel+SRUM": (52.85, 40.51, 47.83, 45.83, 46.75),
}.items()}


# ------------------------------------------------------------------ config
@dataclass
class ReasonBenchJudgeConfig:
    """The judge of ``srum eval t2i-reasonbench score`` (placement as for compbench's judge)."""

    model: str = field(default=DEFAULT_JUDGE, metadata=MODEL)   # Qwen2.5-VL-Instruct directory or hub id
    backend: Literal["transformers", "openai"] = "transformers"
    server: OpenAIServerConfig = field(default_factory=OpenAIServerConfig)
    dtype: str | None = "bfloat16"
    device: str | None = None
    device_map: str | None = None
    gpus_per_process: int = 1
    max_new_tokens: int = 1000          # per answer (the official script's budget)
    batch_size: int = 4                 # images per greedy judge call
    retries: int = 2                    # sampled re-asks of an answer that does not parse
    retry_temperature: float = 0.7

    def __post_init__(self):
        check_judge_settings(self)


@dataclass
class ReasonBenchConfig:
    """Everything ``srum eval t2i-reasonbench`` needs (fields documented in EVAL.md)."""

    out_dir: str = field(metadata=PATH)
    data_dir: str = field(default="data/t2i-reasonbench", metadata=PATH)   # the user's copy of the benchmark
    qs_dir: str | None = field(default=None, metadata=PATH)   # question files; None: data_dir/{QS_DIRS}
    model: ModelConfig | None = None
    dimensions: list[str] = field(default_factory=lambda: list(DIMENSIONS))
    limit_per_dimension: int | None = None      # first N prompts of each dimension (quick runs)
    num_images_per_prompt: int = 1              # > 1 names files <id>_<k>.png (outside the official layout)
    seed: int = 0
    batch_size: int = 1
    retry_errors: bool = False
    fresh: bool = False
    timeout_minutes: float | None = None
    sampling: EvalSamplingConfig = field(default_factory=EvalSamplingConfig)   # think: false (the paper)
    judge: ReasonBenchJudgeConfig = field(default_factory=ReasonBenchJudgeConfig)
    images: str | None = field(default=None, metadata=PATH)   # score this image manifest instead of the run's own

    def __post_init__(self):
        if self.num_images_per_prompt < 1 or self.batch_size < 1:
            raise ValueError("num_images_per_prompt and batch_size must be >= 1")
        unknown = [d for d in self.dimensions if d not in DIMENSIONS]
        if unknown or not self.dimensions:
            raise ValueError(f"dimensions: {unknown or 'none'}; choose from {list(DIMENSIONS)}")
        if self.limit_per_dimension is not None and self.limit_per_dimension < 1:
            raise ValueError("limit_per_dimension must be >= 1 or null")

    def question_dir(self) -> Path:
        if self.qs_dir:
            return Path(self.qs_dir)
        for name in QS_DIRS:
            if (Path(self.data_dir) / name).is_dir():
                return Path(self.data_dir) / name
        raise FileNotFoundError(f"{self.data_dir}: no {' or '.join(QS_DIRS)} folder (set qs_dir=)")


# ------------------------------------------------------------------ benchmark files
def _read_array(path: Path) -> list:
    if not path.is_file():
        raise FileNotFoundError(f"T2I-ReasonBench file not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON array")
    return data


def _entry_id(entry) -> int | None:
    value = entry.get("id") if isinstance(entry, dict) else None
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 1 else None


def read_prompts(cfg: ReasonBenchConfig) -> tuple[list[tuple[PromptItem, int]], list[str]]:
    """``([(prompt item, benchmark id)], input errors)`` of the configured dimensions, in
    dimension order, each in its file's order (first ``limit_per_dimension``). Prompt ids:
    ``<dimension>_<id:04d>``."""
    out, errors = [], []
    for name in cfg.dimensions:
        dim = DIMENSIONS[name]
        path = Path(cfg.data_dir) / "prompts" / f"{dim.prompt_file}.json"
        seen, taken = set(), 0
        for n, entry in enumerate(_read_array(path)):
            where = f"{path}:[{n}]"
            bid = _entry_id(entry)
            text = entry.get("prompt") if isinstance(entry, dict) else None
            if bid is None:
                errors.append(f"{where}: no integer 'id' >= 1")
            elif bid in seen:
                errors.append(f"{where}: duplicate id {bid}")
            elif not isinstance(text, str) or not text.strip():
                errors.append(f"{where}: no 'prompt' text")
            elif cfg.limit_per_dimension is None or taken < cfg.limit_per_dimension:
                seen.add(bid)
                taken += 1
                out.append((PromptItem(f"{name}_{bid:04d}", text.strip(), name, where), bid))
    return out, errors


def sections_of(dim: Dimension, entry: dict, where: str) -> dict[str, dict]:
    """The sections the judge scores for one prompt, in asking order (primary, details,
    quality), each as the benchmark's ``{"q1", "c1", ...}`` object (checked)."""
    names = [dim.primary] + ([dim.details] if dim.details else []) + [QUALITY_SECTION]
    out = {}
    for name in names:
        section = entry.get(name)
        try:
            question_keys(section)
        except ValueError as err:
            raise ValueError(f"{where}: {name}: {err}") from None
        out[name] = section
    return out


@functools.cache
def _question_index(path: str) -> dict[int, dict]:
    return {bid: e for e in _read_array(Path(path)) if (bid := _entry_id(e)) is not None}


def question_entry(cfg: ReasonBenchConfig, dimension: str, benchmark_id: int) -> dict:
    dim = DIMENSIONS[dimension]
    path = cfg.question_dir() / f"{dim.qs_file}.json"
    entry = _question_index(str(path)).get(benchmark_id)
    if entry is None:
        raise ValueError(f"{path}: no entry with id {benchmark_id}")
    return sections_of(dim, entry, f"{path} id {benchmark_id}")


# ------------------------------------------------------------------ per-image arithmetic
def _mean(values):
    return sum(values) / len(values) if values else None


def image_scores(dimension: str, section_scores: dict[str, list[float]]) -> tuple[float, float]:
    """``(reasoning accuracy, image quality)`` of one image, 0-100, from its sections'
    per-question scores (each 0..1), by the benchmark's formula (module docstring)."""
    dim = DIMENSIONS[dimension]
    primary = _mean(section_scores[dim.primary])
    accuracy = primary if dim.details is None else \
        PRIMARY_WEIGHT * primary + DETAILS_WEIGHT * _mean(section_scores[dim.details])
    return 100.0 * accuracy, 100.0 * _mean(section_scores[QUALITY_SECTION])


def reasonbench_overall(accuracies: dict[str, float | None]) -> float | None:
    """Mean of the 4 dimensions' values; None when one is missing (not comparable)."""
    parts = [accuracies.get(d) for d in DIMENSIONS]
    return None if any(p is None for p in parts) else sum(parts) / len(parts)


def summarize_rows(rows: list[dict]) -> dict:
    """CompBench's summary numbers (``categories``: per-dimension accuracy means) plus
    per-dimension ``quality``, ``overall`` (accuracy) and ``overall_quality``."""
    summary = summarize_scores(rows)
    quality = {}
    for cat, stats in summary["categories"].items():
        values = [float(r["quality"]) for r in rows if r["category"] == cat and r["status"] == "ok"]
        stats["quality"] = quality[cat] = _mean(values)
    accuracy = {c: s["mean"] for c, s in summary["categories"].items()}
    missing = [d for d in DIMENSIONS if accuracy.get(d) is None]
    summary.update({"benchmark": "t2i-reasonbench", "overall": reasonbench_overall(accuracy),
                    "overall_quality": reasonbench_overall(quality), "overall_8cat": None,
                    "complex_composite": None, "complex_parts": [], "missing_categories": missing})
    return summary


def table_values(summary: dict) -> dict[str, float | None]:
    values = {d: summary["categories"].get(d, {}).get("mean") for d in DIMENSIONS}
    values.update({"overall": summary.get("overall"), "overall_quality": summary.get("overall_quality")})
    return values


# ------------------------------------------------------------------ step "generate"
def image_file_name(prompt: PromptItem, benchmark_id: int, k: int, n: int) -> str:
    """``<dimension folder>/<id:04d>.png`` (the benchmark's layout), ``..._<k>.png`` for n > 1."""
    return f"{DIMENSIONS[prompt.category].prompt_file}/{benchmark_id:04d}{'' if n == 1 else f'_{k}'}.png"


def run_generate(cfg: ReasonBenchConfig) -> dict:
    if cfg.model is None:
        raise ValueError("model.path is required to generate images")
    info = distributed.init(cfg.timeout_minutes)
    items, input_errors = read_prompts(cfg)
    if not items:
        raise ValueError(f"{cfg.data_dir}: no usable prompts for dimensions {cfg.dimensions}")
    n = cfg.num_images_per_prompt
    prompts = [p for p, _ in items]
    bid = {p.id: b for p, b in items}
    jobs = [(p, k) for p in prompts for k in range(n)]
    work = PromptJobs(prompts, input_errors, jobs, [image_id_for(p.id, k, n) for p, k in jobs])

    def extra(prompt: PromptItem) -> dict:
        return {"dimension": prompt.category, "benchmark_id": bid[prompt.id]}

    return generate_prompt_images(cfg, work, info, name="eval t2i-reasonbench generate", extra_fields=extra,
                                  image_file=lambda i: image_file_name(jobs[i][0], bid[jobs[i][0].id], jobs[i][1], n))


# ------------------------------------------------------------------ step "score"
def _benchmark_id(item) -> int:
    value = item.row.get("benchmark_id")
    if isinstance(value, int) and value >= 1:
        return value
    stem = item.image_path.stem.split("_")[0]   # <id:04d>.png, as in the benchmark's layout
    if stem.isdigit():
        return int(stem)
    raise ValueError(f"{item.source}: no 'benchmark_id' and the file name {item.image_path.name} is not <id>.png")


def run_score(manifest: str | os.PathLike, out_dir: str | os.PathLike, cfg: ReasonBenchConfig,
              backend=None) -> dict:
    """Judge every image of ``manifest`` into ``out_dir/scores.jsonl`` (sharded over
    torchrun, resumable; ``retry_errors`` re-asks failed judgments). ``backend``: a built
    judge (tests); default: load ``cfg.judge``. Returns the stage summary (rank 0)."""
    import torch

    from srum.stages.generate import image_seed

    from .scoring import judge_result_settings, load_judge

    cfg.question_dir()   # a missing question folder stops here, before any image is judged
    stage = ImageStage.open("eval t2i-reasonbench score", manifest, out_dir, manifest_name=SCORES_FILE,
                            retryable=failed_judgment, timeout_minutes=cfg.timeout_minutes)
    judge = (lambda: backend) if backend is not None else functools.cache(lambda: load_judge(cfg.judge, stage.info))

    def handle(items, images) -> list[dict]:
        rows: dict[int, dict] = {}
        todo = []
        for j, item in enumerate(items):
            dimension = item.row.get("dimension") or item.category
            dimension = _FOLDER_DIMENSION.get(dimension, dimension)   # "idiom_interpretation" -> "idiom"
            try:
                if dimension not in DIMENSIONS:
                    raise ValueError(f"{item.source}: dimension {dimension!r} is not one of {list(DIMENSIONS)}")
                bid = _benchmark_id(item)
                todo.append((j, dimension, bid, question_entry(cfg, dimension, bid)))
            except ValueError as err:   # this image's row or entry; a missing file stops the stage
                rows[j] = error_row("image_id", item.image_id, str(err))
        if todo:
            generators = [torch.Generator().manual_seed(image_seed(cfg.seed, items[j].image_id, 0)) for j, *_ in todo]
            results = score_reasonbench_images(judge(), [images[j] for j, *_ in todo], [s for *_, s in todo],
                                               cfg.judge, generators)
            for (j, dimension, bid, _), result in zip(todo, results):
                item = items[j]
                accuracy = quality = None
                if result["status"] == "ok":
                    accuracy, quality = image_scores(dimension, {k: v["scores"] for k, v in result["sections"].items()})
                rows[j] = {"image_id": item.image_id, "prompt_id": item.prompt_id, "sample_index": item.sample_index,
                           "category": dimension, "dimension": dimension, "benchmark_id": bid, "prompt": item.prompt,
                           "image_file": relative_to(item.image_path, stage.out.out_dir), "score": accuracy,
                           "quality": quality, **result, "judge": getattr(judge(), "model_id", cfg.judge.model),
                           "think": item.row.get("think")}
        return [rows[j] for j in range(len(items))]

    def summarize(rows: list[dict]) -> dict:
        ok = [r for r in rows if r.get("status") == "ok"]
        return {"num_scored": len(ok), "num_failed": sum(failed_judgment(r) for r in rows),
                "mean_score": _mean([r["score"] for r in ok]), "mean_quality": _mean([r["quality"] for r in ok])}

    settings = judge_result_settings(cfg.judge, seed=cfg.seed, questions=str(cfg.question_dir().resolve()))
    return stage.run(stage.each_batch(handle), batch_size=cfg.judge.batch_size, config=cfg,
                     retry_errors=cfg.retry_errors, summarize=summarize, settings=settings, fresh=cfg.fresh)


# ------------------------------------------------------------------ step "summarize"
def markdown_summary(summary: dict, title: str) -> str:
    lines = markdown_head(title, summary, "unreadable or no questions")
    if summary["missing_categories"]:
        lines.append(f"Not available (no scored image): {', '.join(summary['missing_categories'])}.")
    lines += ["", "| dimension | images | scored | failed | reasoning accuracy | image quality |",
              "|---|---:|---:|---:|---:|---:|"]
    for cat, s in summary["categories"].items():
        lines.append(f"| {cat} | {s['num_images']} | {s['num_scored']} | {s['num_failed']} | {fmt(s['mean'])} "
                     f"| {fmt(s.get('quality'))} |")
    lines += ["", f"Reported in the paper ({PAPER}): "
              + "; ".join(f"{label} {row['overall']:.2f}" for label, row in PAPER_ROWS.items()) + " (Overall)."]
    return "\n".join(lines) + "\n"


def summarize_run(run_dir: str | os.PathLike, label: str | None = None) -> dict:
    """``scores/scores.jsonl`` -> ``summary/`` (the CompBench files). Returns the summary."""
    layout = RunLayout(Path(run_dir))
    rows = read_scores(layout.scores_file)
    if not rows:
        raise ValueError(f"{layout.scores_file}: no scored rows")
    summary = summarize_rows(rows)
    summary.update(stage_counts(layout))
    summary["run"] = run_info(rows, layout)
    title = f"T2I-ReasonBench (MLLM judge): {label or layout.root.resolve().name}"
    summary["title"] = title
    summary["table"] = {"name": "T2I-ReasonBench", "columns": list(TABLE_COLUMNS), "headers": TABLE_HEADERS,
                        "values": table_values(summary), "note": TABLE_NOTE,
                        "paper": {"source": PAPER, "rows": PAPER_ROWS}}
    write_summary_files(layout, rows, summary, CSV_FIELDS, markdown_summary(summary, title))
    return summary


# ------------------------------------------------------------------ all steps
def run_reasonbench(step: str, cfg: ReasonBenchConfig) -> int:
    """One step (or all); returns the exit code of the worst step's status (:func:`.judged.run_steps`)."""
    return run_steps("t2i-reasonbench", step, cfg, run_generate, run_score, summarize_run, ("overall", "overall_quality", "num_scored", "num_failed"))


__all__ = ["DESCRIBE_QUESTION", "DIMENSIONS", "ReasonBenchConfig", "ReasonBenchJudgeConfig", "image_scores",
           "reasonbench_overall", "run_reasonbench", "run_score", "summarize_rows", "summarize_run"]
