# SPDX-License-Identifier: Apache-2.0
"""Stage 2, ``srum propose``: images -> candidate regions (SAM -> cleanup -> the model's
own yes/no relevance filter).

Input: a generation manifest (``srum generate``'s ``manifest.jsonl`` or the reference's
``output.jsonl``). Output ``regions.jsonl``, one row per image::

    {"image_id", "prompt_id", "sample_index", "image_file" (relative to the output
     directory), "prompt", "category", "width", "height",
     "regions": [{"region_id", "bbox": [x1, y1, x2, y2] (pixels), "mask": COCO RLE,
                  "area", "predicted_iou", "stability_score",
                  "grounding": {"p_relevant", "mass", "kept"} | null}, ...],
     "stats": {"sam_masks", "cleanup": {...}, "grounding": {...}, "regions", "kept"}}

Regions rejected by the grounding filter stay in the row with ``grounding.kept = false``
(the judge skips them; the report shows them).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field

from srum import distributed
from srum.config import PATH
from srum.proposals import ProposalConfig, ask_boxes, build_mask_generator, propose_for_image

from .common import ImageItem, ImageStage, ModelConfig, lazy_model, relative_to
from .outdir import result_settings

# what a row depends on (batch_size counts as speed, as in the pipeline's config hash)
RESULT_FIELDS = ("model", "proposals")
NOT_RESULT_FIELDS = ("proposals.sam.points_per_batch",)


@dataclass
class ProposeStageConfig:
    images: str = field(metadata=PATH)     # generation manifest (JSONL)
    out_dir: str = field(metadata=PATH)
    model: ModelConfig | None = None       # the UMM that grounds regions (needed with grounding or backend self)
    proposals: ProposalConfig = field(default_factory=ProposalConfig)
    retry_errors: bool = False             # redo images recorded as failed
    fresh: bool = False                    # move earlier outputs of out_dir aside and start over
    timeout_minutes: float | None = None       # collectives wait this long (null: $SRUM_DIST_TIMEOUT_MINUTES or 120)
    batch_size: int = 8                    # images per step; backend self asks their boxes in one call

    def __post_init__(self):
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.proposals.backend == "self" and self.model is None:
            raise ValueError("model.path is required with proposals.backend=self (the model writes the boxes)")
        if self.proposals.grounding.enabled and self.model is None:
            raise ValueError("model.path is required while proposals.grounding.enabled is true "
                             "(the model filters its own regions); set proposals.grounding.enabled=false to skip")


def run_propose(cfg: ProposeStageConfig) -> dict:
    stage = ImageStage.open("propose", cfg.images, cfg.out_dir, manifest_name="regions.jsonl",
                            timeout_minutes=cfg.timeout_minutes)
    sam = functools.cache(lambda: build_mask_generator(cfg.proposals.sam, distributed.local_device(stage.info))
                          if cfg.proposals.backend == "sam" else None)
    uses_model = cfg.proposals.grounding.enabled or cfg.proposals.backend == "self"
    model = lazy_model(cfg.model if uses_model else None, stage.info)
    out_dir = stage.out.out_dir

    def propose_one(item: ImageItem, image, answer: str | None = None) -> dict:
        regions, stats = propose_for_image(image, item.prompt, sam(), model(), cfg.proposals, answer)
        return {"image_id": item.image_id, "prompt_id": item.prompt_id, "sample_index": item.sample_index,
                "image_file": relative_to(item.image_path, out_dir), "prompt": item.prompt,
                "category": item.category, "width": image.width, "height": image.height,
                "regions": regions, "stats": stats}

    def summarize(rows: list[dict]) -> dict:
        n_regions = sum(len(r["regions"]) for r in rows)
        n_kept = sum(r["stats"]["kept"] for r in rows)
        return {"num_regions": n_regions, "num_regions_kept": n_kept,
                "num_images_without_kept_region": sum(r["stats"]["kept"] == 0 for r in rows),
                "num_sam_masks": sum(r["stats"]["sam_masks"] for r in rows)}

    process = stage.each_image(propose_one)
    if cfg.proposals.backend == "self":
        # the boxes question of a whole batch in one batched (greedy) understand call
        process = stage.each_batch(lambda items, images: [
            propose_one(item, image, answer) for item, image, answer in
            zip(items, images, ask_boxes(model(), images, cfg.proposals.self_boxes))])
    return stage.run(process, config=cfg, retry_errors=cfg.retry_errors, summarize=summarize,
                     batch_size=cfg.batch_size, settings=result_settings(cfg, RESULT_FIELDS, NOT_RESULT_FIELDS),
                     fresh=cfg.fresh)
