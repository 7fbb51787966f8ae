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
from srum.config import PATH, to_dict
from srum.data.prompts import PromptItem, read_prompts
from srum.distributed import DistInfo
from srum.models.bagel.prompts import read_think_prompt

from .common import ModelConfig, lazy_model, log_skipped, run_items
from .images import DrawnImage, image_batch_processor, png_saver
from .outdir import result_settings
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
    # think mode's system prompt: None = srum's own paraphrase (see srum.models.bagel.prompts;
    # BAGEL-7B-MoT was trained with the Bagel inferencer's GEN_THINK_SYSTEM_PROMPT)
    think_system_prompt: str | None = None
    think_system_prompt_file: str | None = None   # or read it from this file

    def __post_init__(self):
        if self.think_system_prompt is not None and self.think_system_prompt_file is not None:
            raise ValueError("sampling: give think_system_prompt or think_system_prompt_file, not both")

    def generate_kwargs(self) -> dict:
        """Keyword arguments of ``Bagel.generate_image`` for these settings (the think
        prompt file read into ``think_system_prompt``)."""
        kwargs = to_dict(self)
        kwargs["cfg_interval"] = tuple(kwargs["cfg_interval"])
        kwargs["think_system_prompt"] = read_think_prompt(kwargs["think_system_prompt"],
                                                          kwargs.pop("think_system_prompt_file"), "sampling")
        return kwargs


@dataclass
class GenerateConfig:
    model: ModelConfig
    prompts: list[str] = field(metadata=PATH)   # prompt files (.json reference / .txt T2I-CompBench / .jsonl)
    out_dir: str = field(metadata=PATH)
    categories: list[str] | None = None        # keep only these categories
    limit_per_category: int | None = None      # first N prompts of each category
    num_images_per_prompt: int = 1
    seed: int = 0                              # base seed; see image_seed()
    batch_size: int = 1                        # prompts per generate call on one process
    retry_errors: bool = False                 # redo items recorded as failed
    fresh: bool = False                        # move earlier outputs of out_dir aside and start over
    timeout_minutes: float | None = None       # collectives wait this long (null: $SRUM_DIST_TIMEOUT_MINUTES or 120)
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


@dataclass(frozen=True)
class PromptJobs:
    """The work of a run over prompt files: image ``k`` of every prompt (``srum generate``,
    ``srum eval compbench generate``)."""

    prompts: list[PromptItem]
    input_errors: list[str]                  # unusable prompt lines, as "file:line: reason"
    jobs: list[tuple[PromptItem, int]]       # (prompt, k), prompt by prompt
    keys: list[str]                          # the image id of each job

    @classmethod
    def read(cls, name: str, info: DistInfo, files: list[str], categories: list[str] | None,
             limit_per_category: int | None, num_images: int) -> PromptJobs:
        """Read the prompt files (an unusable line is logged and skipped; none usable is an error)."""
        prompts, input_errors = read_prompts(files, categories, limit_per_category)
        log_skipped(info, name, input_errors)
        if not prompts:
            raise ValueError(f"no usable prompts in {files}" + (f" for categories {categories}" if categories else ""))
        jobs = [(p, k) for p in prompts for k in range(num_images)]
        return cls(prompts, input_errors, jobs, [image_id_for(p.id, k, num_images) for p, k in jobs])

    def texts(self) -> list[str]:
        """The prompt text of each job."""
        return [p.prompt for p, _ in self.jobs]

    def seeds(self, base_seed: int) -> list[int]:
        """The noise seed of each job: :func:`image_seed` of (base seed, prompt id, k)."""
        return [image_seed(base_seed, p.id, k) for p, k in self.jobs]


_THINK = re.compile(r"</?think>", re.IGNORECASE)


def detailed_prompt(thought: str | None) -> str | None:
    """The plan written in think mode, without the think tags."""
    return None if thought is None else _THINK.sub("", thought).strip()


def run_generate(cfg: GenerateConfig) -> dict:
    info = distributed.init(cfg.timeout_minutes)
    work = PromptJobs.read("generate", info, cfg.prompts, cfg.categories, cfg.limit_per_category,
                           cfg.num_images_per_prompt)
    out_dir = Path(cfg.out_dir)
    out = ShardedOutput(out_dir, work.keys, info)
    sampling = cfg.sampling.generate_kwargs()   # what was drawn with (the think prompt's text included)

    def row(i: int, drawn: DrawnImage) -> dict:
        prompt, k = work.jobs[i]
        return {
            "image_id": drawn.key, "prompt_id": prompt.id, "sample_index": k, "image_file": drawn.image_file,
            "original_prompt": prompt.prompt, "prompt": prompt.prompt, "category": prompt.category,
            "detailed_prompt": detailed_prompt(drawn.thought), "think_output": drawn.thought, "seed": drawn.seed,
            "width": drawn.image.width, "height": drawn.image.height,
            "model": str(cfg.model.path), "sampling": sampling,
        }

    process = image_batch_processor(lazy_model(cfg.model, info), cfg.sampling, work.keys, work.texts(),
                                    work.seeds(cfg.seed), row=row,
                                    save=png_saver(out_dir, lambda i: f"images/{work.keys[i]}.png"))

    def summarize(rows: list[dict]) -> dict:
        return {"num_prompts": len(work.prompts), "num_images_per_prompt": cfg.num_images_per_prompt}

    return run_items("generate", out, process, batch_size=cfg.batch_size, info=info, config=cfg,
                     retry_errors=cfg.retry_errors, summarize=summarize, input_errors=work.input_errors,
                     settings=result_settings(cfg, RESULT_FIELDS), fresh=cfg.fresh)


# what an image depends on. Not batch_size: like the pipeline's config hash, it counts as
# speed (a batched forward may round a pixel one grey level differently, nothing more),
# so a run that ran out of memory can resume with a smaller batch
RESULT_FIELDS = ("model", "seed", "sampling")
