# SPDX-License-Identifier: Apache-2.0
"""``srum eval miniworld``: the miniature world's held-out prompts, drawn by a Bagel and
scored by the exact oracle, summarised like a T2I-CompBench run.

A run directory has the layout of ``srum eval compbench`` (so ``srum eval compare``
reads it unchanged)::

    <out_dir>/images/<category>/<prompt id>[_<k>].png    step "generate" (+ manifest.jsonl)
    <out_dir>/scores/scores.jsonl                         step "score": one oracle row per image
    <out_dir>/summary/{results.csv, summary.json, summary.md, scores.png}   step "summarize"

* **generate** reuses the CompBench generation (sharded over torchrun, resumable, image
  ``k`` of prompt ``p`` drawn from ``image_seed(seed, p, k)``). Prompts come from
  :func:`~srum.miniworld.world.eval_prompts` (``prompts.split / per_category / seed``),
  ids ``<category>_<index:04d>``. Each manifest row also carries ``spec`` (the prompt
  as :meth:`PromptSpec.to_dict`) and ``num_objects``. ``generator: render`` draws each
  prompt's ground-truth scene instead of asking a model (an upper bound: 100 %).
* **score** runs the oracle on every image of the manifest (no model): ``score`` 100
  (correct) or 0, ``correct``, ``readable``, ``requirements``, ``failed``,
  ``detected`` (the objects read). An unreadable picture scores 0 and is counted. A
  manifest written by another tool works too (``images=FILE``; step ``all`` then skips
  generating): each row needs
  ``image_file`` and ``prompt``, plus ``spec`` or else a prompt text of the configured
  prompt set; ``category`` defaults to the spec's.
* **summarize**: per-category accuracy (percent) in the CompBench summary files;
  ``overall`` = mean of the 6 category accuracies (``null`` when one has no image);
  ``single_object`` / ``multi_object``: accuracy over prompts asking for one object /
  more than one; ``readable``: percent of pictures with a recognised object.
"""
from __future__ import annotations

import functools
import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Literal

import numpy as np

from srum import distributed
from srum.data.prompts import PromptItem
from srum.evaluation.compbench import EvalSamplingConfig, RunLayout, generate_prompt_images
from srum.evaluation.scoring import SCORES_FILE
from srum.evaluation.summary import bar_chart, read_scores, summarize_scores, write_results_csv
from srum.fileio import atomic_write_text
from srum.stages.common import ImageItem, ImageStage, ModelConfig, error_row, relative_to
from srum.stages.generate import PromptJobs, image_id_for

from . import world as W
from .oracle import check

MINIWORLD_STEPS = ("generate", "score", "summarize", "all")
JUDGE_NAME = "miniworld-oracle"
# Columns of the run's table and chart: the 6 categories, the two object-count groups, overall.
TABLE_COLUMNS = (*W.CATEGORIES, "single_object", "multi_object", "overall")
TABLE_HEADERS = {"color": "Color", "shape": "Shape", "texture": "Texture", "spatial": "Spatial",
                 "numeracy": "Numeracy", "complex": "Complex", "single_object": "1 object",
                 "multi_object": "2+ objects", "overall": "Overall"}
TABLE_NOTE = ("Accuracy in percent (exact oracle). Overall: mean of the 6 categories; 1 object / 2+ objects: by the "
              "number of objects the prompt asks for.")


@dataclass
class MiniWorldPrompts:
    """Which prompts: :func:`~srum.miniworld.world.eval_prompts` of these settings."""

    split: Literal["heldout", "train", "all"] = "heldout"
    per_category: int = 50
    seed: int = 0
    categories: list[str] = field(default_factory=lambda: list(W.CATEGORIES))

    def __post_init__(self):
        if self.per_category < 1:
            raise ValueError(f"prompts.per_category must be >= 1, got {self.per_category}")
        unknown = [c for c in self.categories if c not in W.CATEGORIES]
        if unknown or not self.categories:
            raise ValueError(f"prompts.categories: {unknown or 'none'}; choose from {list(W.CATEGORIES)}")

    def specs(self) -> list[W.PromptSpec]:
        return W.eval_prompts(self.split, self.per_category, self.seed, self.categories)


@dataclass
class MiniWorldSampling(EvalSamplingConfig):
    """Sampling for the 64x64 world: 20 steps, CFG 3 over the whole schedule, no time shift."""

    height: int = W.IMAGE_SIZE
    width: int = W.IMAGE_SIZE
    num_timesteps: int = 20
    cfg_text_scale: float = 3.0
    cfg_interval: tuple[float, float] = (0.0, 1.0)
    timestep_shift: float = 1.0
    max_think_tokens: int = 256


@dataclass
class MiniWorldEvalConfig:
    """Everything ``srum eval miniworld`` needs (fields documented in EVAL.md)."""

    out_dir: str
    model: ModelConfig | None = None
    generator: Literal["model", "render"] = "model"   # render: the ground-truth pictures (no model)
    prompts: MiniWorldPrompts = field(default_factory=MiniWorldPrompts)
    num_images_per_prompt: int = 1
    seed: int = 0                     # image k of prompt p: image_seed(seed, p, k)
    batch_size: int = 8               # prompts per generation call on one process
    retry_errors: bool = False
    sampling: MiniWorldSampling = field(default_factory=MiniWorldSampling)
    images: str | None = None         # score this image manifest instead of the run's own

    def __post_init__(self):
        if self.num_images_per_prompt < 1 or self.batch_size < 1:
            raise ValueError("num_images_per_prompt and batch_size must be >= 1")


# ------------------------------------------------------------------ generate
def prompt_items(specs: list[W.PromptSpec]) -> list[PromptItem]:
    """Prompt items with ids ``<category>_<index within the category:04d>``."""
    seen: dict[str, int] = {}
    items = []
    for spec in specs:
        index = seen.get(spec.category, 0)
        seen[spec.category] = index + 1
        items.append(PromptItem(f"{spec.category}_{index:04d}", spec.text, spec.category, "miniworld"))
    return items


class GroundTruthPainter:
    """A stand-in for Bagel's ``generate_image`` that draws each prompt's own scene
    (:func:`~srum.miniworld.world.sample_scene` from the image's seed): the pictures a
    perfect generator would make."""

    def __init__(self, specs: list[W.PromptSpec]):
        self.by_text = {s.text: s for s in specs}

    def generate_image(self, prompts: list[str], seed: list[int], **_) -> SimpleNamespace:
        images = [W.render(W.sample_scene(self.by_text[p], np.random.default_rng(s))) for p, s in zip(prompts, seed)]
        return SimpleNamespace(images=images, thoughts=None)


def run_generate(cfg: MiniWorldEvalConfig) -> dict:
    """Step "generate" (see the module docstring). Returns the stage summary."""
    if cfg.generator == "model" and cfg.model is None:
        raise ValueError("model.path is required to generate images (or set generator=render)")
    info = distributed.init()
    specs = cfg.prompts.specs()
    items = prompt_items(specs)
    n = cfg.num_images_per_prompt
    jobs = [(p, k) for p in items for k in range(n)]
    work = PromptJobs(items, [], jobs, [image_id_for(p.id, k, n) for p, k in jobs])
    spec_of = {item.id: spec for item, spec in zip(items, specs)}

    def extra(prompt: PromptItem) -> dict:
        spec = spec_of[prompt.id]
        return {"spec": spec.to_dict(), "num_objects": spec.num_objects, "split": cfg.prompts.split}

    painter = None
    if cfg.generator == "render":
        p = GroundTruthPainter(specs)
        painter = lambda: p  # noqa: E731
    return generate_prompt_images(cfg, work, info, name="eval miniworld generate", model=painter,
                                  model_name="ground truth (render)" if painter else None, extra_fields=extra)


# ------------------------------------------------------------------ score
def _spec_of(item: ImageItem, prompt_set) -> W.PromptSpec:
    """The row's ``spec`` (a dict or its JSON text), else the prompt set's spec of its text
    (``prompt_set()``: ``{text: spec}``). Raises ``ValueError`` naming the manifest line."""
    spec = item.row.get("spec")
    try:
        if isinstance(spec, str):
            spec = json.loads(spec)
        if isinstance(spec, dict):
            return W.PromptSpec.from_dict(spec)
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{item.source}: unusable 'spec' ({err!r})") from None
    found = prompt_set().get(item.prompt)
    if found is None:
        raise ValueError(f"{item.source}: no 'spec', and the prompt is not in the configured prompt set: "
                         f"{item.prompt!r}")
    return found


def run_score(manifest: str | os.PathLike, out_dir: str | os.PathLike, cfg: MiniWorldEvalConfig) -> dict:
    """Step "score": the oracle's verdict on every image of ``manifest`` into
    ``out_dir/scores.jsonl`` (sharded, resumable). Returns the stage summary."""
    stage = ImageStage.open("eval miniworld score", manifest, out_dir, manifest_name=SCORES_FILE)
    # the configured prompt set, built only when a row comes without its spec
    prompt_set = functools.cache(lambda: {s.text: s for s in cfg.prompts.specs()})

    def handle(item: ImageItem, image) -> dict:
        try:
            spec = _spec_of(item, prompt_set)
        except ValueError as err:
            return error_row("image_id", item.image_id, str(err))
        verdict = check(spec, image)
        failed = verdict.failed()
        return {"image_id": item.image_id, "prompt_id": item.prompt_id, "sample_index": item.sample_index,
                "category": item.category or spec.category, "prompt": item.prompt,
                "image_file": relative_to(item.image_path, stage.out.out_dir),
                "score": 100 if verdict.correct else 0, "status": "ok", "correct": verdict.correct,
                "readable": verdict.readable, "num_objects": spec.num_objects,
                "requirements": verdict.requirements, "failed": failed,
                "explanation": "correct" if verdict.correct else "failed: " + ", ".join(failed),
                "detected": [o.to_dict() for o in verdict.objects], "judge": JUDGE_NAME,
                "think": item.row.get("think"), "split": item.row.get("split"), "spec": spec.to_dict()}

    def summarize(rows: list[dict]) -> dict:
        return {"num_scored": len(rows), "num_failed": 0,
                "mean_score": sum(r["score"] for r in rows) / len(rows) if rows else None,
                "num_unreadable": sum(not r["readable"] for r in rows)}

    return stage.run(stage.each_image(handle), batch_size=16, config=cfg, retry_errors=cfg.retry_errors,
                     summarize=summarize)


# ------------------------------------------------------------------ summarize
def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def summarize_rows(rows: list[dict]) -> dict:
    """The numbers of a run: CompBench's summary (per-category stats, ``complex_composite``
    = the complex accuracy) with ``overall`` the mean of the 6 categories, plus
    ``single_object``, ``multi_object`` and ``readable`` (percent)."""
    summary = summarize_scores(rows)
    means = {c: s["mean"] for c, s in summary["categories"].items()}
    missing = [c for c in W.CATEGORIES if means.get(c) is None]
    ok = [r for r in rows if r["status"] == "ok"]
    summary.update({
        "overall": None if missing else sum(means[c] for c in W.CATEGORIES) / len(W.CATEGORIES),
        "overall_8cat": None, "missing_categories": missing,
        "single_object": _mean([r["score"] for r in ok if int(r.get("num_objects") or 0) == 1]),
        "multi_object": _mean([r["score"] for r in ok if int(r.get("num_objects") or 0) > 1]),
        "readable": _mean([100.0 * bool(r.get("readable")) for r in ok]),
        "benchmark": "miniworld",
    })
    return summary


def table_values(summary: dict) -> dict[str, float | None]:
    """The run's table row (:data:`TABLE_COLUMNS`)."""
    values = {c: summary["categories"].get(c, {}).get("mean") for c in W.CATEGORIES}
    values.update({k: summary.get(k) for k in ("single_object", "multi_object", "overall")})
    return values


def _fmt(value: float | None) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.1f}"


def markdown_summary(summary: dict, title: str) -> str:
    values = table_values(summary)
    info = summary.get("run") or {}
    lines = [f"# {title}", "", f"- prompts: {info.get('prompts', 'n/a')}",
             f"- images: {summary['num_images']} scored by the exact oracle (100 = correct, 0 = wrong); "
             f"readable: {_fmt(summary['readable'])} %"
             + (f"; {summary['num_errors']} images could not be read at all" if summary.get("num_errors") else "")
             + (f"; {summary['num_missing']} not scored yet" if summary.get("num_missing") else ""), "",
             "| " + " | ".join(TABLE_HEADERS[c] for c in TABLE_COLUMNS) + " |",
             "|" + "|".join("---:" for _ in TABLE_COLUMNS) + "|",
             "| " + " | ".join(_fmt(values[c]) for c in TABLE_COLUMNS) + " |", "",
             TABLE_NOTE]
    if summary["missing_categories"]:
        lines.append(f"Not available (no image): {', '.join(summary['missing_categories'])}.")
    lines += ["", "| category | images | accuracy | std |", "|---|---:|---:|---:|"]
    for cat, s in summary["categories"].items():
        lines.append(f"| {cat} | {s['num_images']} | {_fmt(s['mean'])} | {_fmt(s['std'])} |")
    return "\n".join(lines) + "\n"


def summarize_run(run_dir: str | os.PathLike, label: str | None = None) -> dict:
    """Step "summarize": ``scores/scores.jsonl`` -> ``summary/`` (the CompBench files:
    ``results.csv``, ``summary.json``, ``summary.md``, ``scores.png``). Returns the summary."""
    layout = RunLayout(Path(run_dir))
    rows = read_scores(layout.scores_file)
    if not rows:
        raise ValueError(f"{layout.scores_file}: no scored rows")
    summary = summarize_rows(rows)
    stage = _read_json(layout.scores / "summary.json")
    summary.update({"num_errors": stage.get("num_errors", 0), "num_missing": stage.get("num_missing", 0),
                    "scoring_complete": stage.get("complete")})
    splits = sorted({str(r["split"]) for r in rows if r.get("split")})
    prompts = _read_json(layout.images / "summary.json")
    summary["run"] = {"judge": JUDGE_NAME, "run_dir": str(layout.root), "split": ", ".join(splits) or None,
                      "prompts": prompts.get("num_prompts", len({r.get("prompt_id") for r in rows})),
                      "think": ", ".join(sorted({str(r.get("think")).lower() for r in rows
                                                 if r.get("think") is not None})) or None}
    title = f"Miniature world (exact oracle): {label or layout.root.resolve().name}"
    summary["title"] = title
    summary["table"] = {"name": "Miniature world (exact oracle)", "columns": list(TABLE_COLUMNS),
                        "headers": TABLE_HEADERS, "values": table_values(summary), "note": TABLE_NOTE}
    layout.summary.mkdir(parents=True, exist_ok=True)
    write_results_csv(rows, layout.summary / "results.csv")
    atomic_write_text(layout.summary / "summary.json", json.dumps(summary, indent=2) + "\n")
    atomic_write_text(layout.summary / "summary.md", markdown_summary(summary, title))
    values = table_values(summary)
    bar_chart({title: values}, TABLE_COLUMNS, layout.summary / "scores.png", title, TABLE_HEADERS)
    return summary


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


# ------------------------------------------------------------------ all steps
def run_miniworld(step: str, cfg: MiniWorldEvalConfig) -> int:
    """Run one step (or all) of a miniworld evaluation; returns the exit code (0 done,
    1 incomplete: some items failed or are missing)."""
    if step not in MINIWORLD_STEPS:
        raise ValueError(f"step must be one of {MINIWORLD_STEPS}, got {step!r}")
    layout = RunLayout(Path(cfg.out_dir))
    complete = True  # summaries come back on rank 0 only ({} elsewhere)
    if step == "generate" or (step == "all" and not cfg.images):   # images=: someone else drew them
        complete &= bool(run_generate(cfg).get("complete", True))
    if step in ("score", "all"):
        manifest = Path(cfg.images) if cfg.images else layout.images_manifest
        if not manifest.is_file():
            raise FileNotFoundError(f"{manifest}: no image manifest; run the generate step first or set images=")
        complete &= bool(run_score(manifest, layout.scores, cfg).get("complete", True))
    if step in ("summarize", "all") and distributed.env_info().is_main:
        summary = summarize_run(layout.root)
        print(json.dumps({k: summary[k] for k in ("overall", "single_object", "multi_object", "readable",
                                                  "num_images")}))
        print(f"srum eval miniworld: wrote {layout.summary}/summary.md", file=sys.stderr)
    return 0 if complete else 1
