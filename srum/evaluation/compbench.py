# SPDX-License-Identifier: Apache-2.0
"""T2I-CompBench evaluation runs: configuration, image generation, official layout.

A run directory (``out_dir``) holds the three steps of ``srum eval compbench``::

    <out_dir>/images/<category>/<prompt id>[_<k>].png   generated images (step "generate")
    <out_dir>/images/manifest.jsonl                     one row per image (+ parts/, errors, summary)
    <out_dir>/scores/scores.jsonl                       one judge row per image (step "score")
    <out_dir>/summary/{results.csv, summary.json, summary.md, scores.png}   (step "summarize")

Prompts: the reference's ``val_comp.json`` (300 per category; ``complex_action`` and
``complex_spatial`` are subsets of the complex prompts) or T2I-CompBench's own
``<category>_val.txt`` files. Image ``k`` of prompt ``p`` is drawn from
:func:`~srum.stages.generate.image_seed` ``(seed, p, k)``: the picture depends on the
prompt, never on the rank or the number of processes.

:func:`export_official_layout` links the images into T2I-CompBench's own layout
(``<dir>/<category>/samples/<prompt>_<index:06d>.png``) so that its BLIP-VQA, UniDet and
CLIP scripts can score them.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

from srum import distributed
from srum.config import PATH, to_dict
from srum.data.prompts import PromptItem
from srum.fileio import atomic_write_text
from srum.stages.common import ModelConfig, lazy_model, read_image_manifest, run_items
from srum.stages.outdir import result_settings
from srum.stages.generate import PromptJobs, SamplingConfig, detailed_prompt
from srum.stages.images import DrawnImage, image_batch_processor, png_saver
from srum.stages.shards import ShardedOutput

from .scoring import SCORES_FILE, CompBenchJudgeConfig

# The ten val categories of the reference JSON, in its order.
COMPBENCH_CATEGORIES = ("3d_spatial", "color", "complex", "complex_action", "complex_spatial", "non-spatial",
                        "numeracy", "shape", "spatial", "texture")
_SAFE_CATEGORY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
UNCATEGORIZED = "uncategorized"


@dataclass
class EvalSamplingConfig(SamplingConfig):
    """Generation settings of an evaluation: the reference's settings, think off by default
    (set ``think: true`` for the CoT variant)."""

    think: bool = False


@dataclass
class CompBenchConfig:
    """Everything ``srum eval compbench`` needs (fields documented in EVAL.md)."""

    out_dir: str = field(metadata=PATH)               # the run directory
    model: ModelConfig | None = None                  # the Bagel to evaluate (step "generate")
    prompts: list[str] = field(default_factory=lambda: ["data/prompts/val_comp.json"], metadata=PATH)
    categories: list[str] | None = field(default_factory=lambda: list(COMPBENCH_CATEGORIES))
    limit_per_category: int | None = None             # first N prompts of each category (quick runs)
    num_images_per_prompt: int = 1
    seed: int = 0                                     # base seed of image noise and judge retries
    batch_size: int = 1                               # prompts per generation call on one process
    retry_errors: bool = False                        # redo items recorded in errors.jsonl
    fresh: bool = False                               # generate: move earlier images aside and start over
    timeout_minutes: float | None = None       # collectives wait this long (null: $SRUM_DIST_TIMEOUT_MINUTES or 120)
    sampling: EvalSamplingConfig = field(default_factory=EvalSamplingConfig)
    judge: CompBenchJudgeConfig = field(default_factory=CompBenchJudgeConfig)
    images: str | None = field(default=None, metadata=PATH)   # score this image manifest instead of the run's own
    images_category: str | None = None               # category of manifest rows that have none

    def __post_init__(self):
        if self.num_images_per_prompt < 1 or self.batch_size < 1:
            raise ValueError("num_images_per_prompt and batch_size must be >= 1")
        if not self.prompts:
            raise ValueError("prompts: give at least one prompt file")
        for cat in (self.categories or []):
            if not _SAFE_CATEGORY.match(cat):
                raise ValueError(f"categories: {cat!r} cannot be a folder name")


@dataclass(frozen=True)
class RunLayout:
    """Where each step of a run reads and writes."""

    root: Path

    @property
    def images(self) -> Path:
        return self.root / "images"

    @property
    def images_manifest(self) -> Path:
        return self.images / "manifest.jsonl"

    @property
    def scores(self) -> Path:
        return self.root / "scores"

    @property
    def scores_file(self) -> Path:
        return self.scores / SCORES_FILE

    @property
    def summary(self) -> Path:
        return self.root / "summary"


def category_folder(category: str | None) -> str:
    """The folder of a category (prompts without one go to ``uncategorized``)."""
    if category is None:
        return UNCATEGORIZED
    if not _SAFE_CATEGORY.match(category):
        raise ValueError(f"category {category!r} cannot be a folder name")
    return category


# ------------------------------------------------------------------ generation
def run_generate_images(cfg: CompBenchConfig) -> dict:
    """Step "generate": one image per (prompt, k) into ``images/<category>/``; sharded
    over torchrun processes and resumable. Returns the stage summary."""
    if cfg.model is None:
        raise ValueError("model.path is required to generate images")
    info = distributed.init(cfg.timeout_minutes)
    work = PromptJobs.read("eval generate", info, cfg.prompts, cfg.categories, cfg.limit_per_category,
                           cfg.num_images_per_prompt)
    return generate_prompt_images(cfg, work, info)


def generate_prompt_images(cfg, work: PromptJobs, info: distributed.DistInfo, *, name: str = "eval generate",
                           model: Callable[[], Any] | None = None, model_name: str | None = None,
                           extra_fields: Callable[[PromptItem], dict] | None = None,
                           image_file: Callable[[int], str] | None = None) -> dict:
    """Draw ``work`` into ``<cfg.out_dir>/images/<category>/<image id>.png`` with its
    manifest (the "generate" step of an evaluation run; shared by ``srum eval compbench``
    and ``srum eval miniworld``). ``cfg``: a config with ``out_dir``, ``model``,
    ``sampling``, ``seed``, ``batch_size``, ``retry_errors`` and ``num_images_per_prompt``.
    ``model``: a loader of anything with Bagel's ``generate_image`` (default: ``cfg.model``,
    loaded at the first batch) and ``model_name`` what rows call it; ``extra_fields(prompt)``:
    more fields for each row; ``image_file(i)``: job ``i``'s file under ``images/`` (default
    ``<category>/<image id>.png``). Returns the stage summary."""
    folders = {p.category: category_folder(p.category) for p in work.prompts}
    layout = RunLayout(Path(cfg.out_dir))
    out = ShardedOutput(layout.images, work.keys, info)
    sampling = cfg.sampling.generate_kwargs()   # what was drawn with (the think prompt's text included)
    model_name = model_name or str(cfg.model.path)

    def row(i: int, drawn: DrawnImage) -> dict:
        prompt, k = work.jobs[i]
        return {
            "image_id": drawn.key, "prompt_id": prompt.id, "sample_index": k, "image_file": drawn.image_file,
            "category": prompt.category, "prompt": prompt.prompt, "original_prompt": prompt.prompt,
            "detailed_prompt": detailed_prompt(drawn.thought), "think_output": drawn.thought,
            "think": cfg.sampling.think, "seed": drawn.seed, "width": drawn.image.width,
            "height": drawn.image.height, "model": model_name, "sampling": sampling,
            **(extra_fields(prompt) if extra_fields else {}),
        }

    process = image_batch_processor(
        model or lazy_model(cfg.model, info), cfg.sampling, work.keys, work.texts(), work.seeds(cfg.seed), row=row,
        save=png_saver(layout.images,
                       image_file or (lambda i: f"{folders[work.jobs[i][0].category]}/{work.keys[i]}.png")))

    def summarize(rows: list[dict]) -> dict:
        per_category: dict[str, int] = {}
        for r in rows:
            folder = folders.get(r["category"], UNCATEGORIZED)
            per_category[folder] = per_category.get(folder, 0) + 1
        return {"num_prompts": len(work.prompts), "num_images_per_prompt": cfg.num_images_per_prompt,
                "images_per_category": per_category, "think": cfg.sampling.think}

    return run_items(name, out, process, batch_size=cfg.batch_size, info=info, config=cfg,
                     retry_errors=cfg.retry_errors, summarize=summarize, input_errors=work.input_errors,
                     settings=result_settings(cfg, IMAGE_RESULT_FIELDS), fresh=getattr(cfg, "fresh", False))


# what an evaluation image depends on (as for srum generate); a resume with others is refused
IMAGE_RESULT_FIELDS = ("model", "seed", "sampling")


# ------------------------------------------------------------------ official T2I-CompBench layout
_MAX_NAME_BYTES = 240  # file names are limited to 255 bytes; keep room for "_000000.png"


def official_file_stem(prompt: str) -> tuple[str, bool]:
    """The prompt as the official scripts read it back from a file name (they split the
    name at ``_``): ``_`` and path separators become spaces, over-long names are cut at
    :data:`_MAX_NAME_BYTES`. Returns ``(stem, changed)``."""
    stem = re.sub(r"[_/\\\x00]", " ", prompt).strip()
    while len(stem.encode("utf-8")) > _MAX_NAME_BYTES:
        stem = stem[:-1]
    stem = stem.rstrip() or "prompt"
    return stem, stem != prompt


def _place(src: Path, dst: Path, mode: str) -> None:
    tmp = dst.with_name(f".{dst.name}.tmp{os.getpid()}")
    if tmp.exists() or tmp.is_symlink():
        tmp.unlink()
    if mode == "hardlink":
        try:
            os.link(src, tmp)
        except OSError:  # another filesystem, or links not allowed: copy instead
            shutil.copyfile(src, tmp)
    elif mode == "symlink":
        os.symlink(os.path.abspath(src), tmp)
    else:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def export_official_layout(images_manifest: str | os.PathLike, out_dir: str | os.PathLike,
                           mode: Literal["hardlink", "copy", "symlink"] = "hardlink") -> dict:
    """Put the images of ``images_manifest`` into T2I-CompBench's layout::

        <out_dir>/<category>/samples/<prompt>_<index:06d>.png   (the source's extension)
        <out_dir>/<category>/index.jsonl    index -> image_id, prompt, source image

    ``index`` counts the category's images in manifest order from 0 (the official scripts
    take it as the question id). Point their ``--out_dir`` at ``<out_dir>/<category>``.
    ``samples/`` is rebuilt from scratch, so it holds nothing else (the scripts read every
    file in it). Returns ``{category: number of images}``."""
    if mode not in ("hardlink", "copy", "symlink"):
        raise ValueError(f"mode must be hardlink, copy or symlink, got {mode!r}")
    items, errors = read_image_manifest(images_manifest)
    if errors:
        raise ValueError(f"{images_manifest}: {len(errors)} unusable row(s), first: {errors[0]}")
    by_category: dict[str, list] = {}
    for item in items:
        by_category.setdefault(category_folder(item.category), []).append(item)
    out_dir = Path(out_dir)
    counts = {}
    for category, members in by_category.items():
        samples = out_dir / category / "samples"
        if samples.exists():
            shutil.rmtree(samples)
        samples.mkdir(parents=True)
        index_rows = []
        for index, item in enumerate(members):
            if not item.image_path.is_file():
                raise FileNotFoundError(f"{item.source}: image not found: {item.image_path}")
            stem, changed = official_file_stem(item.prompt)
            name = f"{stem}_{index:06d}{item.image_path.suffix.lower() or '.png'}"
            _place(item.image_path, samples / name, mode)
            index_rows.append({"index": index, "file": f"samples/{name}", "image_id": item.image_id,
                               "prompt_id": item.prompt_id, "prompt": item.prompt, "name_changed": changed,
                               "source": str(item.image_path)})
        atomic_write_text(out_dir / category / "index.jsonl",
                          "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in index_rows))
        counts[category] = len(members)
    return counts
