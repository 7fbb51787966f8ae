# SPDX-License-Identifier: Apache-2.0
"""``srum eval geneval-images``: images for GenEval's prompts, in the layout its scorer reads.

GenEval (djghosh13/geneval) ships ``prompts/evaluation_metadata.jsonl`` (553 lines of
``{"tag", "include", "prompt", ...}``) and scores a folder with
``evaluation/evaluate_images.py <outdir>``, which reads::

    <outdir>/<index:05d>/metadata.jsonl      line ``index`` of evaluation_metadata.jsonl (as JSON)
    <outdir>/<index:05d>/samples/<k:04d>.png every file in samples/ is scored

The scorer takes every file inside ``samples/``, so temporary files are written next to
``samples/`` and renamed into it. Stage bookkeeping (``parts/``, ``manifest.jsonl``,
``summary.json``, ``errors.jsonl``, ``config.yaml``) sits at the top of ``<outdir>``,
where the scorer ignores anything that is not a folder with a numeric name.

Image ``k`` of line ``index`` is drawn from :func:`~srum.stages.generate.image_seed`
``(seed, "geneval_<index:05d>", k)``: independent of ranks and batching. ``srum eval
geneval`` (:mod:`srum.evaluation.geneval_score`) then runs GenEval's scorer on the folder. Defaults follow
Bagel's GenEval script: 4 images per prompt, 1024x1024, 50 steps, text CFG 4.0 over the
whole trajectory (``cfg_interval [0, 1]``), timestep shift 3.0, no thinking.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from srum import distributed
from srum.config import PATH, to_dict
from srum.fileio import atomic_write_text
from srum.stages.common import ModelConfig, lazy_model, log_skipped, run_items
from srum.stages.outdir import result_settings
from srum.stages.generate import SamplingConfig, image_seed
from srum.stages.images import DrawnImage, image_batch_processor
from srum.stages.shards import ShardedOutput


@dataclass
class GenEvalSamplingConfig(SamplingConfig):
    """Bagel's GenEval settings (``cfg_interval`` [0, 1], think off)."""

    cfg_interval: tuple[float, float] = (0.0, 1.0)
    think: bool = False


@dataclass
class GenEvalConfig:
    model: ModelConfig
    metadata: str = field(metadata=PATH)   # GenEval's prompts/evaluation_metadata.jsonl
    out_dir: str = field(metadata=PATH)    # <IMAGE_FOLDER> for evaluation/evaluate_images.py
    num_images_per_prompt: int = 4
    seed: int = 0
    batch_size: int = 1                  # images per generation call on one process
    limit: int | None = None             # first N metadata lines (quick runs)
    retry_errors: bool = False
    fresh: bool = False                  # move earlier images aside and start over
    sampling: GenEvalSamplingConfig = field(default_factory=GenEvalSamplingConfig)

    def __post_init__(self):
        if self.num_images_per_prompt < 1 or self.batch_size < 1:
            raise ValueError("num_images_per_prompt and batch_size must be >= 1")
        if self.num_images_per_prompt > 10000:
            raise ValueError("num_images_per_prompt must be <= 10000 (file names have 4 digits)")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be >= 1, got {self.limit}")


@dataclass(frozen=True)
class GenEvalPrompt:
    index: int          # 0-based position among the file's non-blank lines = the folder number
    prompt: str
    metadata: dict      # the line as parsed (written back to <index>/metadata.jsonl)


def read_geneval_metadata(path: str | os.PathLike) -> tuple[list[GenEvalPrompt], list[str]]:
    """Parse ``evaluation_metadata.jsonl``. A bad line (invalid JSON, not an object, no
    ``prompt`` string) is reported as ``file:line: reason`` and skipped; it keeps its
    index, so folder ``N`` always matches line ``N`` of the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"GenEval metadata file not found: {path}")
    prompts, errors, index = [], [], 0
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            errors.append(f"{where}: not valid JSON ({err.msg})")
        else:
            if not isinstance(obj, dict):
                errors.append(f"{where}: expected a JSON object")
            elif not isinstance(obj.get("prompt"), str) or not obj["prompt"].strip():
                errors.append(f"{where}: no 'prompt' string")
            else:
                prompts.append(GenEvalPrompt(index, obj["prompt"].strip(), obj))
        index += 1
    return prompts, errors


def _save_sample(image, folder: Path, k: int) -> str:
    """Save image ``k`` as ``folder/samples/<k:04d>.png`` without ever leaving a partial or
    temporary file inside ``samples/``."""
    samples = folder / "samples"
    samples.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{k:04d}.tmp{os.getpid()}.png"
    image.save(tmp)
    os.replace(tmp, samples / f"{k:04d}.png")
    return f"{folder.name}/samples/{k:04d}.png"


def run_geneval_images(cfg: GenEvalConfig) -> dict:
    """Generate the images (sharded over torchrun processes, resumable); returns the stage summary."""
    info = distributed.init()
    prompts, input_errors = read_geneval_metadata(cfg.metadata)
    log_skipped(info, "eval geneval-images", input_errors)
    if cfg.limit is not None:
        prompts = prompts[:cfg.limit]
    if not prompts:
        raise ValueError(f"{cfg.metadata}: no usable prompts")
    n = cfg.num_images_per_prompt
    jobs = [(p, k) for p in prompts for k in range(n)]
    keys = [f"{p.index:05d}/{k:04d}" for p, k in jobs]
    out_dir = Path(cfg.out_dir)
    out = ShardedOutput(out_dir, keys, info)
    sampling = cfg.sampling.generate_kwargs()   # what was drawn with (the think prompt's text included)

    def save(i: int, image) -> str:
        prompt, k = jobs[i]
        folder = out_dir / f"{prompt.index:05d}"
        # every process writing into this folder writes the same text; the rename is atomic
        atomic_write_text(folder / "metadata.jsonl", json.dumps(prompt.metadata, ensure_ascii=False) + "\n")
        return _save_sample(image, folder, k)

    def row(i: int, drawn: DrawnImage) -> dict:
        prompt, k = jobs[i]
        return {"image_id": drawn.key, "index": prompt.index, "sample_index": k, "image_file": drawn.image_file,
                "prompt": prompt.prompt, "tag": prompt.metadata.get("tag"), "seed": drawn.seed,
                "width": drawn.image.width, "height": drawn.image.height, "think": cfg.sampling.think,
                "think_output": drawn.thought,
                "model": str(cfg.model.path), "sampling": sampling}

    process = image_batch_processor(lazy_model(cfg.model, info), cfg.sampling, keys, [p.prompt for p, _ in jobs],
                                    [image_seed(cfg.seed, f"geneval_{p.index:05d}", k) for p, k in jobs],
                                    save=save, row=row)

    def summarize(rows: list[dict]) -> dict:
        return {"num_prompts": len(prompts), "num_images_per_prompt": n, "think": cfg.sampling.think,
                "scorer": f"srum eval geneval images={out_dir} out_dir=<run dir> (GenEval's "
                          "evaluation/evaluate_images.py in its own environment)"}

    return run_items("eval geneval-images", out, process, batch_size=cfg.batch_size, info=info, config=cfg,
                     retry_errors=cfg.retry_errors, summarize=summarize, input_errors=input_errors,
                     settings=result_settings(cfg, ("model", "seed", "sampling")), fresh=cfg.fresh)
