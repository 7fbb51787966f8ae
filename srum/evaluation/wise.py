# SPDX-License-Identifier: Apache-2.0
"""``srum eval wise``: WISE (World Knowledge-Informed Semantic Evaluation, arXiv 2503.07265)
with a Qwen2.5-VL judge.

The benchmark: 1000 prompts that name something only world knowledge resolves ("the
round pastry shared at Mid-Autumn Festival gatherings"), each with an explanation of
what the image should show. Three *domains*, one prompt file each, and six *categories*
(WISE's own grouping, from each prompt's ``Category`` field), 25 *subcategories*:

    domain       file (in data_dir)                        categories
    culture      cultural_common_sense[_verified].json     culture
    space-time   spatio-temporal_reasoning[_verified].json time, space
    science      natural_science[_verified].json           biology, physics, chemistry

The user provides the files (the project ships none): the original release
(``WISE_legacy/data/*.json`` of PKU-YuanGroup/WISE, what the SRUM paper used) or
WISE_Verified (``data_verified/*_verified.json``, about 200 prompts refreshed).
``variant`` picks one (``auto``: whichever is there). The prompt entries are
``{"Prompt", "Explanation", "Category", "Subcategory", "prompt_id"}``.

A run directory has the layout of ``srum eval compbench``::

    <out_dir>/images/<prompt_id>.png     step "generate": WISE's layout (its scripts read <id>.png)
    <out_dir>/images/manifest.jsonl      (+ parts/, errors, summary)
    <out_dir>/scores/scores.jsonl        step "score": one judge row per image
    <out_dir>/summary/{results.csv, summary.json, summary.md, scores.png}   step "summarize"

Scores (:mod:`.wise_judge`): consistency, realism, aesthetic quality (0-2 each) ->
WiScore in [0, 1] per image; a category's WiScore is the mean over its scored images; a
domain's and the overall are WISE's weighted means of the category means, with the
published weights of the variant (original: culture 0.4, time 0.167, space 0.133,
biology / physics / chemistry 0.1 each; verified: 0.4 and 0.12 for the other five: in
both, each category's share of the prompts). ``overall`` needs all six categories (as
WISE's script); ``overall_evaluated`` renormalizes the weights over the categories that
were evaluated (the SRUM paper's protocol evaluates two domains). Tables show WiScore x 100
(the project's 0-100 scale); ``summary.json`` also has the 0-1 values (``wiscore``).
Failed judgments are counted, never averaged in.
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
from .summary import category_stats, read_scores
from .wise_judge import CRITERIA, check_question_template, score_wise_images, wise_question



@dataclass(frozen=True)
class Domain:
    name: str                       # WISE's calculate script's --category name
    file_stem: str                  # <file_stem>.json (original) / <file_stem>_verified.json
    categories: tuple[str, ...]
    header: str


DOMAINS = {d.name: d for d in (
    Domain("culture", "cultural_common_sense", ("culture",), "Cultural"),
    Domain("space-time", "spatio-temporal_reasoning", ("time", "space"), "Space-time"),
    Domain("science", "natural_science", ("biology", "physics", "chemistry"), "Science"),
)}
CATEGORIES = ("culture", "time", "space", "biology", "physics", "chemistry")   # WISE's table order
DOMAIN_OF = {c: d.name for d in DOMAINS.values() for c in d.categories}
# a prompt's "Category" field (lower case) -> our category; both releases spell them so
CATEGORY_FIELD = {"cultural knowledge": "culture", "culture": "culture", "time": "time", "space": "space",
                  "biology": "biology", "physical knowledge": "physics", "physics": "physics",
                  "chemistry": "chemistry"}
VARIANTS = ("original", "verified")
FILE_SUFFIX = {"original": "", "verified": "_verified"}
# where a clone of PKU-YuanGroup/WISE keeps each variant, besides data_dir itself
_REPO_DIRS = {"original": ("WISE_legacy/data",), "verified": ("data_verified",)}
# WISE's overall weights (its calculate scripts): each category's share of the 1000 prompts
CATEGORY_WEIGHTS = {
    "original": {"culture": 0.4, "time": 0.167, "space": 0.133, "biology": 0.1, "physics": 0.1, "chemistry": 0.1},
    "verified": {"culture": 0.4, "time": 0.12, "space": 0.12, "biology": 0.12, "physics": 0.12, "chemistry": 0.12},
}
# the domains of several categories get a column (the culture domain is the culture category)
DOMAIN_COLUMNS = tuple(f"domain:{d.name}" for d in DOMAINS.values() if len(d.categories) > 1)
HEADERS = {"culture": "Cultural", "time": "Time", "space": "Space", "biology": "Biology", "physics": "Physics",
           "chemistry": "Chemistry", **{f"domain:{d.name}": d.header for d in DOMAINS.values()},
           "overall": "Overall", "overall_evaluated": "Evaluated"}
TABLE_COLUMNS = (*CATEGORIES, *DOMAIN_COLUMNS, "overall", "overall_evaluated")
TABLE_NOTE = ("WiScore x 100 (WISE publishes 0-1: divide by 100). Cultural ... Chemistry: category means; Space-time, "
              "Science (the domains) and Overall: WISE's weighted means of the category means; Evaluated: the same "
              "weights over the evaluated categories only.")
CSV_FIELDS = ("image_id", "category", "subcategory", "domain", "wise_id", "prompt_id", "sample_index", "consistency",
              "realism", "aesthetic_quality", "wiscore", "score", "status", "prompt", "image_file")


# ------------------------------------------------------------------ config
@dataclass
class WiseJudgeConfig:
    """The judge of ``srum eval wise score`` (placement as for compbench's judge)."""

    model: str = field(default=DEFAULT_JUDGE, metadata=MODEL)   # Qwen2.5-VL-Instruct directory or hub id
    backend: Literal["transformers", "openai"] = "transformers"
    server: OpenAIServerConfig = field(default_factory=OpenAIServerConfig)
    dtype: str | None = "bfloat16"
    device: str | None = None
    device_map: str | None = None
    gpus_per_process: int = 1
    max_new_tokens: int = 64            # three short lines
    batch_size: int = 4                 # images per greedy judge call
    retries: int = 2                    # sampled re-asks of an answer that does not parse
    retry_temperature: float = 0.7
    question_template: str | None = None   # None = wise_judge.WISE_QUESTION; {prompt} and {explanation}

    def __post_init__(self):
        check_judge_settings(self)
        check_question_template(self.question_template)


@dataclass
class WiseConfig:
    """Everything ``srum eval wise`` needs (fields documented in EVAL.md)."""

    out_dir: str = field(metadata=PATH)
    data_dir: str = field(default="data/wise", metadata=PATH)    # the user's copy of the prompt files
    variant: Literal["auto", "original", "verified"] = "auto"
    domains: list[str] = field(default_factory=lambda: list(DOMAINS))      # which prompt files
    categories: list[str] = field(default_factory=lambda: list(CATEGORIES))
    limit_per_category: int | None = None       # first N prompts of each category (quick runs)
    model: ModelConfig | None = None
    num_images_per_prompt: int = 1              # > 1 names files <id>_<k>.png (outside WISE's layout)
    seed: int = 0
    batch_size: int = 1
    retry_errors: bool = False
    fresh: bool = False
    timeout_minutes: float | None = None
    sampling: EvalSamplingConfig = field(default_factory=EvalSamplingConfig)   # think: false by default
    judge: WiseJudgeConfig = field(default_factory=WiseJudgeConfig)
    images: str | None = field(default=None, metadata=PATH)   # score this image manifest instead of the run's own

    def __post_init__(self):
        if self.num_images_per_prompt < 1 or self.batch_size < 1:
            raise ValueError("num_images_per_prompt and batch_size must be >= 1")
        unknown = [d for d in self.domains if d not in DOMAINS]
        if unknown or not self.domains:
            raise ValueError(f"domains: {unknown or 'none'}; choose from {list(DOMAINS)}")
        unknown = [c for c in self.categories if c not in CATEGORIES]
        if unknown or not self.categories:
            raise ValueError(f"categories: {unknown or 'none'}; choose from {list(CATEGORIES)}")
        if not any(DOMAIN_OF[c] in self.domains for c in self.categories):
            raise ValueError(f"categories {self.categories} are in none of the domains {self.domains}")
        if self.limit_per_category is not None and self.limit_per_category < 1:
            raise ValueError("limit_per_category must be >= 1 or null")

    def prompt_file(self, domain: str) -> tuple[Path, str]:
        """``(file, variant)`` of a domain's prompts (see the module docstring)."""
        stem = DOMAINS[domain].file_stem
        found = []
        for variant in (VARIANTS if self.variant == "auto" else (self.variant,)):
            for folder in (".", *_REPO_DIRS[variant]):
                path = Path(self.data_dir) / folder / f"{stem}{FILE_SUFFIX[variant]}.json"
                if path.is_file():
                    found.append((path, variant))
                    break
        if not found:
            names = " or ".join(f"{stem}{FILE_SUFFIX[v]}.json" for v in VARIANTS)
            raise FileNotFoundError(f"WISE prompt file not found: {self.data_dir}/{names} (data_dir= names your copy; "
                                    "EVAL.md, \"WISE\")")
        if len(found) > 1:
            raise ValueError(f"{self.data_dir}: both WISE releases are there ({found[0][0].name}, {found[1][0].name});"
                             " set variant=original or variant=verified")
        return found[0]

    def resolved_variant(self) -> str:
        variants = {self.prompt_file(d)[1] for d in self.domains}
        if len(variants) > 1:
            raise ValueError(f"{self.data_dir}: the domains' files are of different releases {sorted(variants)}; "
                             "set variant=")
        return variants.pop()


def data_problems(cfg: WiseConfig) -> list[str]:
    """What is wrong with the configured prompt files, as preflight lines (empty: fine)."""
    problems = []
    for domain in cfg.domains:
        try:
            cfg.prompt_file(domain)
        except (FileNotFoundError, ValueError) as err:
            problems.append(f"data_dir: {err}")
    return problems


# ------------------------------------------------------------------ benchmark files
@dataclass(frozen=True)
class WisePrompt:
    wise_id: int
    prompt: str
    explanation: str
    category: str
    subcategory: str
    domain: str
    source: str           # "file[index]"


def _entries(path: Path) -> list:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON array of prompt objects")
    return data


def _wise_prompt(entry, domain: str, where: str) -> WisePrompt:
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: expected an object")
    pid = entry.get("prompt_id")
    if isinstance(pid, str) and pid.strip().isdigit():
        pid = int(pid)
    if not isinstance(pid, int) or isinstance(pid, bool) or pid < 1:
        raise ValueError(f"{where}: no integer 'prompt_id' >= 1")
    texts = {k: entry.get(k) for k in ("Prompt", "Explanation")}
    for key, text in texts.items():
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"{where}: no '{key}' text")
    raw = entry.get("Category")
    category = CATEGORY_FIELD.get(raw.strip().lower()) if isinstance(raw, str) else None
    if category is None:
        raise ValueError(f"{where}: 'Category' {raw!r} is none of WISE's ({', '.join(sorted(CATEGORY_FIELD))})")
    if DOMAIN_OF[category] != domain:
        raise ValueError(f"{where}: 'Category' {raw!r} belongs to domain {DOMAIN_OF[category]}, not {domain}")
    sub = entry.get("Subcategory")
    return WisePrompt(pid, texts["Prompt"].strip(), texts["Explanation"].strip(), category,
                      sub.strip() if isinstance(sub, str) and sub.strip() else "unknown", domain, where)


@functools.lru_cache(maxsize=16)
def _read_file(path: str, domain: str, stamp: tuple) -> tuple[tuple[WisePrompt, ...], tuple[str, ...]]:
    """One prompt file (cached by path and ``stamp``, its size and mtime: an edited file is read again)."""
    prompts, errors, seen = [], [], {}
    for n, entry in enumerate(_entries(Path(path))):
        where = f"{path}[{n}]"
        try:
            p = _wise_prompt(entry, domain, where)
        except ValueError as err:
            errors.append(str(err))
            continue
        if p.wise_id in seen:
            errors.append(f"{where}: duplicate prompt_id {p.wise_id} (first at {seen[p.wise_id]})")
            continue
        seen[p.wise_id] = where
        prompts.append(p)
    return tuple(prompts), tuple(errors)


def read_prompts(cfg: WiseConfig, *, selected: bool = True) -> tuple[list[WisePrompt], list[str]]:
    """``(prompts, input errors)``: the configured domains' prompts in file order, kept when
    their category is configured (first ``limit_per_category`` of each). ``selected=False``:
    every prompt of the three domains whose file is there (the score step looks images up
    by id, whatever produced them)."""
    out, errors, taken, owner = [], [], {}, {}
    for domain in (cfg.domains if selected else DOMAINS):
        try:
            path, _ = cfg.prompt_file(domain)
        except FileNotFoundError:
            if selected:
                raise
            continue
        st = path.stat()
        prompts, bad = _read_file(str(path), domain, (st.st_size, st.st_mtime_ns))
        errors += bad
        for p in prompts:
            if p.wise_id in owner:
                errors.append(f"{p.source}: prompt_id {p.wise_id} is also in {owner[p.wise_id]}")
                continue
            owner[p.wise_id] = p.source
            if selected and (p.category not in cfg.categories or (cfg.limit_per_category is not None and
                                                                  taken.get(p.category, 0) >= cfg.limit_per_category)):
                continue
            taken[p.category] = taken.get(p.category, 0) + 1
            out.append(p)
    return out, errors


# ------------------------------------------------------------------ arithmetic
def _mean(values):
    return sum(values) / len(values) if values else None


def weighted(means: dict[str, float | None], categories, variant: str, *, partial: bool = False) -> float | None:
    """WISE's weighted mean of ``categories``' means. None when one has no value, unless
    ``partial`` (then the weights of those present are renormalized; None if none is)."""
    weights = CATEGORY_WEIGHTS[variant]
    present = [c for c in categories if means.get(c) is not None]
    if not present or (len(present) < len(categories) and not partial):
        return None
    total = sum(weights[c] for c in present)
    return sum(weights[c] * means[c] for c in present) / total


def summarize_rows(rows: list[dict], variant: str) -> dict:
    """Per-category, per-subcategory and per-domain WiScore (x 100 in ``mean``, 0-1 in
    ``wiscore``), ``overall`` (all six categories, else None) and ``overall_evaluated``."""
    found = category_stats(rows)
    cats = {c: found[c] for c in CATEGORIES if c in found}   # WISE's order
    for name, stats in cats.items():
        ok = [r for r in rows if r["category"] == name and r["status"] == "ok"]
        stats["wiscore"] = None if stats["mean"] is None else stats["mean"] / 100
        stats.update({c: _mean([float(r[c]) for r in ok]) for c in CRITERIA})   # mean level of each criterion
    found = category_stats([{**r, "category": f"{r['category']}/{r.get('subcategory') or 'unknown'}"} for r in rows])
    subs = dict(sorted(found.items(), key=lambda kv: (CATEGORIES.index(kv[0].split("/")[0]), kv[0])))
    means = {c: s["mean"] for c, s in cats.items()}
    domains = {}
    for d in DOMAINS.values():
        members = [r for r in rows if r["category"] in d.categories]
        if members:
            domains[d.name] = {"num_images": len(members), "num_scored": sum(r["status"] == "ok" for r in members),
                               "num_failed": sum(r["status"] != "ok" for r in members),
                               "mean": weighted(means, d.categories, variant),
                               "categories": [c for c in d.categories if c in cats]}
    scored = [r for r in rows if r["status"] == "ok"]
    overall = weighted(means, CATEGORIES, variant)
    evaluated = weighted(means, CATEGORIES, variant, partial=True)
    return {"benchmark": "wise", "variant": variant, "categories": cats, "subcategories": subs, "domains": domains,
            "overall": overall, "overall_evaluated": evaluated,
            "wiscore": {"overall": None if overall is None else overall / 100,
                        "overall_evaluated": None if evaluated is None else evaluated / 100},
            "missing_categories": [c for c in CATEGORIES if means.get(c) is None],
            "num_images": len(rows), "num_scored": len(scored), "num_failed": len(rows) - len(scored),
            "mean_all_images": _mean([r["score"] for r in scored]), "overall_8cat": None}


def table_values(summary: dict) -> dict[str, float | None]:
    values = {c: summary["categories"].get(c, {}).get("mean") for c in CATEGORIES}
    values.update({c: summary["domains"].get(c.removeprefix("domain:"), {}).get("mean") for c in DOMAIN_COLUMNS})
    values.update({"overall": summary.get("overall"), "overall_evaluated": summary.get("overall_evaluated")})
    return values


# ------------------------------------------------------------------ step "generate"
def image_file_name(wise_id: int, k: int, n: int) -> str:
    """``<prompt_id>.png``, WISE's layout (``<prompt_id>_<k>.png`` for n > 1, outside it)."""
    return f"{wise_id}.png" if n == 1 else f"{wise_id}_{k}.png"


def run_generate(cfg: WiseConfig) -> dict:
    if cfg.model is None:
        raise ValueError("model.path is required to generate images")
    info = distributed.init(cfg.timeout_minutes)
    wise, input_errors = read_prompts(cfg)
    if not wise:
        raise ValueError(f"{cfg.data_dir}: no usable prompts for domains {cfg.domains}, categories {cfg.categories}")
    variant = cfg.resolved_variant()
    n = cfg.num_images_per_prompt
    by_id = {str(p.wise_id): p for p in wise}
    prompts = [PromptItem(str(p.wise_id), p.prompt, p.category, p.source) for p in wise]
    jobs = [(p, k) for p in prompts for k in range(n)]
    work = PromptJobs(prompts, input_errors, jobs, [image_id_for(p.id, k, n) for p, k in jobs])

    def extra(prompt: PromptItem) -> dict:
        p = by_id[prompt.id]
        return {"wise_id": p.wise_id, "domain": p.domain, "subcategory": p.subcategory, "explanation": p.explanation,
                "variant": variant}

    return generate_prompt_images(cfg, work, info, name="eval wise generate", extra_fields=extra,
                                  image_file=lambda i: image_file_name(by_id[jobs[i][0].id].wise_id, jobs[i][1], n))


# ------------------------------------------------------------------ step "score"
def _wise_id(item) -> int:
    value = item.row.get("wise_id")
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    stem = item.image_path.stem.split("_")[0]   # <prompt_id>.png, as in WISE's layout
    if stem.isdigit():
        return int(stem)
    raise ValueError(f"{item.source}: no 'wise_id' and the file name {item.image_path.name} is not <prompt_id>.png")


def run_score(manifest: str | os.PathLike, out_dir: str | os.PathLike, cfg: WiseConfig, backend=None) -> dict:
    """Judge every image of ``manifest`` into ``out_dir/scores.jsonl`` (sharded over
    torchrun, resumable; ``retry_errors`` re-asks failed judgments). The prompt and its
    explanation come from the benchmark files, looked up by prompt id. ``backend``: a built
    judge (tests); default: load ``cfg.judge``. Returns the stage summary (rank 0)."""
    import torch

    from srum.stages.generate import image_seed

    from .scoring import judge_result_settings, load_judge

    variant = cfg.resolved_variant()   # a missing prompt file stops here, before any image is judged
    entries = {p.wise_id: p for p in read_prompts(cfg, selected=False)[0]}
    stage = ImageStage.open("eval wise score", manifest, out_dir, manifest_name=SCORES_FILE,
                            retryable=failed_judgment, timeout_minutes=cfg.timeout_minutes)
    judge = (lambda: backend) if backend is not None else functools.cache(lambda: load_judge(cfg.judge, stage.info))

    def handle(items, images) -> list[dict]:
        rows: dict[int, dict] = {}
        todo = []
        for j, item in enumerate(items):
            try:
                wid = _wise_id(item)
                if wid not in entries:
                    raise ValueError(f"{item.source}: prompt_id {wid} is in none of the WISE files of {cfg.data_dir}")
                todo.append((j, entries[wid]))
            except ValueError as err:   # this image's row; a missing file stops the stage
                rows[j] = error_row("image_id", item.image_id, str(err))
        if todo:
            generators = [torch.Generator().manual_seed(image_seed(cfg.seed, items[j].image_id, 0)) for j, _ in todo]
            questions = [wise_question(p.prompt, p.explanation, cfg.judge.question_template) for _, p in todo]
            results = score_wise_images(judge(), [images[j] for j, _ in todo], questions, cfg.judge, generators)
            for (j, p), result in zip(todo, results):
                item = items[j]
                w = result["wiscore"]
                rows[j] = {"image_id": item.image_id, "prompt_id": item.prompt_id, "sample_index": item.sample_index,
                           "wise_id": p.wise_id, "category": p.category, "subcategory": p.subcategory,
                           "domain": p.domain, "prompt": p.prompt, "explanation": p.explanation,
                           "image_file": relative_to(item.image_path, stage.out.out_dir),
                           "score": None if w is None else 100.0 * w, **result, "variant": variant,
                           "judge": getattr(judge(), "model_id", cfg.judge.model), "think": item.row.get("think")}
        return [rows[j] for j in range(len(items))]

    def summarize(rows: list[dict]) -> dict:
        ok = [r for r in rows if r.get("status") == "ok"]
        return {"num_scored": len(ok), "num_failed": sum(failed_judgment(r) for r in rows),
                "mean_score": _mean([r["score"] for r in ok])}

    settings = judge_result_settings(cfg.judge, seed=cfg.seed, variant=variant,
                                     data_dir=str(Path(cfg.data_dir).resolve()))
    return stage.run(stage.each_batch(handle), batch_size=cfg.judge.batch_size, config=cfg,
                     retry_errors=cfg.retry_errors, summarize=summarize, settings=settings, fresh=cfg.fresh)


# ------------------------------------------------------------------ step "summarize"
def markdown_summary(summary: dict, title: str) -> str:
    weights = f"- prompts: WISE {summary['variant']} release; weights {CATEGORY_WEIGHTS[summary['variant']]}"
    lines = markdown_head(title, summary, "unreadable or unknown prompt id", (weights,))
    if summary["missing_categories"]:
        lines.append(f"No scored image (Overall needs all six): {', '.join(summary['missing_categories'])}.")
    lines += ["", "| category | images | scored | failed | WiScore x 100 | consistency | realism | aesthetic |",
              "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for cat, s in summary["categories"].items():
        lines.append(f"| {cat} | {s['num_images']} | {s['num_scored']} | {s['num_failed']} | {fmt(s['mean'])} | "
                     + " | ".join(fmt(s.get(c)) for c in CRITERIA) + " |")
    lines += ["", "| subcategory | images | scored | failed | WiScore x 100 |", "|---|---:|---:|---:|---:|"]
    for sub, s in summary["subcategories"].items():
        lines.append(f"| {sub} | {s['num_images']} | {s['num_scored']} | {s['num_failed']} | {fmt(s['mean'])} |")
    return "\n".join(lines) + "\n"


def summarize_run(run_dir: str | os.PathLike, label: str | None = None) -> dict:
    """``scores/scores.jsonl`` -> ``summary/`` (the CompBench files). Returns the summary."""
    layout = RunLayout(Path(run_dir))
    rows = read_scores(layout.scores_file)
    if not rows:
        raise ValueError(f"{layout.scores_file}: no scored rows")
    variants = sorted({str(r.get("variant")) for r in rows if r.get("variant")})
    if len(variants) > 1:
        raise ValueError(f"{layout.scores_file}: rows of both WISE releases ({variants}); score them in separate runs")
    summary = summarize_rows(rows, variants[0] if variants else "original")
    summary.update(stage_counts(layout))
    summary["run"] = run_info(rows, layout)
    title = f"WISE (MLLM judge): {label or layout.root.resolve().name}"
    summary["title"] = title
    # no "paper" rows: the SRUM paper shows its WISE results only as a figure (Figure 6)
    summary["table"] = {"name": "WISE", "columns": list(TABLE_COLUMNS), "headers": HEADERS,
                        "values": table_values(summary), "note": TABLE_NOTE}
    write_summary_files(layout, rows, summary, CSV_FIELDS, markdown_summary(summary, title))
    return summary


# ------------------------------------------------------------------ all steps
def run_wise(step: str, cfg: WiseConfig) -> int:
    """One step (or all); returns the exit code of the worst step's status (:func:`.judged.run_steps`)."""
    return run_steps("wise", step, cfg, run_generate, run_score, summarize_run, ("overall", "overall_evaluated", "num_scored", "num_failed"))


__all__ = ["CATEGORIES", "CATEGORY_WEIGHTS", "DOMAINS", "WiseConfig", "WiseJudgeConfig", "read_prompts",
           "run_score", "run_wise", "summarize_rows", "summarize_run", "weighted"]
