# SPDX-License-Identifier: Apache-2.0
"""Stage 1, ``srum generate``: prompts -> candidate images (+ chain of thought).

Each prompt gets ``num_images_per_prompt`` images ``images/<image_id>.png`` where
``image_id`` is ``<prompt_id>`` (one image per prompt) or ``<prompt_id>_<k>``. The seed
of every image is :func:`image_seed` of (base seed, prompt id, k): never of the rank or
the number of processes, so 1 and 8 GPUs draw the same pictures.

Manifest rows (``manifest.jsonl``) carry the reference ``output.jsonl`` fields
(``prompt_id``, ``image_file``, ``original_prompt``, ``detailed_prompt``,
``think_output``) plus ``image_id``, ``sample_index``, ``prompt``, ``category``,
``seed``, ``width``, ``height`` and every sampling setting.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from srum import distributed
from srum.config import to_dict
from srum.data.prompts import read_prompts

from .common import ModelConfig, error_row, load_stage_model, log, run_items
from srum.fileio import atomic_save_image

from .shards import ShardedOutput


@dataclass
class SamplingConfig:
    """Flow-matching sampling (defaults: the reference's SRUM data-generation settings)."""

    height: int = 1024
    width: int = 1024
    num_timesteps: int = 50
    cfg_text_scale: float = 4.0
    cfg_img_scale: float = 1.0
    cfg_interval: tuple[float, float] = (0.4, 1.0)
    timestep_shift: float = 3.0
    cfg_renorm_min: float = 0.0
    cfg_renorm_type: Literal["global", "channel", "text_channel"] = "global"
    think: bool = True                 # chain of thought before drawing (on for data generation)
    max_think_tokens: int = 1000
    think_do_sample: bool = False      # greedy CoT (default) is independent of batching
    think_temperature: float = 0.3

    def generate_kwargs(self) -> dict:
        """Keyword arguments of ``Bagel.generate_image`` for these settings."""
        kwargs = to_dict(self)
        kwargs["cfg_interval"] = tuple(kwargs["cfg_interval"])
        return kwargs


@dataclass
class GenerateConfig:
    model: ModelConfig
    prompts: list[str]                 # prompt files (.json reference / .txt T2I-CompBench / .jsonl)
    out_dir: str
    categories: list[str] | None = None        # keep only these categories
    limit_per_category: int | None = None      # first N prompts of each category
    num_images_per_prompt: int = 1
    seed: int = 0                              # base seed; see image_seed()
    batch_size: int = 1                        # prompts per generate call on one process
    retry_errors: bool = False                 # redo items recorded as failed
    sampling: SamplingConfig = field(default_factory=SamplingConfig)

    def __post_init__(self):
        if not self.prompts:
            raise ValueError("prompts: give at least one prompt file")
        if self.num_images_per_prompt < 1 or self.batch_size < 1:
            raise ValueError("num_images_per_prompt and batch_size must be >= 1")


def image_seed(base_seed: int, prompt_id: str, sample_index: int) -> int:
    """Seed of one image: the first 31 bits of sha256("<base>/<prompt id>/<k>")."""
    digest = hashlib.sha256(f"{base_seed}/{prompt_id}/{sample_index}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def image_id_for(prompt_id: str, sample_index: int, num_images: int) -> str:
    return prompt_id if num_images == 1 else f"{prompt_id}_{sample_index}"


_THINK = re.compile(r"</?think>", re.IGNORECASE)


def detailed_prompt(thought: str | None) -> str | None:
    """The plan written in think mode, without the think tags."""
    return None if thought is None else _THINK.sub("", thought).strip()


def run_generate(cfg: GenerateConfig) -> dict:
    info = distributed.init()
    prompts, input_errors = read_prompts(cfg.prompts, cfg.categories, cfg.limit_per_category)
    for err in input_errors[:20]:
        log(info, f"srum generate: skipped {err}")
    if not prompts:
        raise ValueError(f"no usable prompts in {cfg.prompts}")
    n = cfg.num_images_per_prompt
    jobs = [(p, k) for p in prompts for k in range(n)]
    keys = [image_id_for(p.id, k, n) for p, k in jobs]
    out_dir = Path(cfg.out_dir)
    out = ShardedOutput(out_dir, keys, info)
    sampling = to_dict(cfg.sampling)
    state: dict = {}

    def process(indices: list[int]) -> list[dict]:
        if "model" not in state:
            state["model"] = load_stage_model(cfg.model, info)
        model = state["model"]
        batch = [jobs[i] for i in indices]
        seeds = [image_seed(cfg.seed, p.id, k) for p, k in batch]
        try:
            result = model.generate_image([p.prompt for p, _ in batch], seed=seeds, **cfg.sampling.generate_kwargs())
        except ValueError as err:  # bad settings or a prompt the model cannot take
            return [error_row("image_id", keys[i], str(err)) for i in indices]
        rows = []
        for j, i in enumerate(indices):
            prompt, k = batch[j]
            image_file = f"images/{keys[i]}.png"
            atomic_save_image(result.images[j], out_dir / image_file)
            thought = result.thoughts[j] if result.thoughts else None
            rows.append({
                "image_id": keys[i], "prompt_id": prompt.id, "sample_index": k, "image_file": image_file,
                "original_prompt": prompt.prompt, "prompt": prompt.prompt, "category": prompt.category,
                "detailed_prompt": detailed_prompt(thought), "think_output": thought, "seed": seeds[j],
                "width": result.images[j].width, "height": result.images[j].height,
                "model": str(cfg.model.path), "sampling": sampling,
            })
        return rows

    def summarize(rows: list[dict]) -> dict:
        return {"num_prompts": len(prompts), "num_images_per_prompt": n}

    return run_items("generate", out, process, batch_size=cfg.batch_size, info=info, config=cfg,
                     retry_errors=cfg.retry_errors, summarize=summarize, input_errors=input_errors)
