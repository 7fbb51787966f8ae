# SPDX-License-Identifier: Apache-2.0
"""Stage 3, ``srum judge``: images + regions -> reward records (``rewards.jsonl``).

Input: ``srum propose``'s ``regions.jsonl`` (or any image manifest: then only the global
judgment is made). Output: one ``srum.reward.v1`` record per image (schema in TRAIN.md),
validated before it is written. A region whose box is unusable (NaN, negative, inverted,
out of frame) is left out of the record and listed under ``skipped_regions`` with the
reason; an unreadable image becomes an entry in ``errors.jsonl``. Sampled retries of
the text mode use a generator seeded from (seed, image id), so reruns and other world
sizes give the same records.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import torch

from srum.config import PATH
from srum.judge.backends import load_judge_backend
from srum.judge.openai_backend import OpenAIServerConfig
from srum.judge.scoring import JudgeConfig, judge_images
from srum.records import SCHEMA, RecordError, mask_problem, validate_record

from .common import ImageItem, ImageStage, ModelConfig, error_row, lazy_model, relative_to
from .generate import image_seed
from .outdir import result_settings

# what a record depends on (batch sizes count as speed, as in the pipeline's config hash;
# judge.retries only adds attempts after the same first ones: raising it and
# retry_errors=true re-asks the judgments that failed; the openai server's address, key,
# concurrency, timeouts and re-sends only decide how the same questions reach it)
RESULT_FIELDS = ("model", "judge", "seed")
NOT_RESULT_FIELDS = ("judge.batch_size", "judge.device", "judge.device_map", "judge.retries",
                     *(f"judge.server.{name}" for name in OpenAIServerConfig.OPERATIONAL_FIELDS))


@dataclass
class JudgeStageConfig:
    regions: str = field(metadata=PATH)      # regions.jsonl from `srum propose` (or an image manifest)
    out_dir: str = field(metadata=PATH)
    model: ModelConfig | None = None         # the UMM judging itself (backend "self")
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    seed: int = 0                            # base seed of the sampled retries
    retry_errors: bool = False               # redo unreadable images and records with a failed judgment
    fresh: bool = False                      # move earlier outputs of out_dir aside and start over
    timeout_minutes: float | None = None       # collectives wait this long (null: $SRUM_DIST_TIMEOUT_MINUTES or 120)
    batch_size: int = 8                      # images per step; logits mode asks their questions together

    def __post_init__(self):
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.judge.backend == "self" and self.model is None:
            raise ValueError("model.path is required for judge.backend=self (the model judges its own images)")


def region_problem(region, width: int, height: int) -> str | None:
    """Why a region from the input cannot be judged (None when it is fine)."""
    if not isinstance(region, dict):
        return "not an object"
    box = region.get("bbox")
    if not isinstance(box, (list, tuple)) or len(box) != 4:
        return f"bbox must be [x1, y1, x2, y2], got {box!r}"
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in box):
        return f"bbox has a non-finite or non-numeric value: {box!r}"
    x1, y1, x2, y2 = box
    if min(box) < 0:
        return f"bbox has a negative coordinate: {list(box)}"
    if x2 <= x1 or y2 <= y1:
        return f"bbox is empty or inverted: {list(box)}"
    if x2 > width + 1 or y2 > height + 1:
        return f"bbox {list(box)} lies outside the {width}x{height} image"
    if min(x2, width) <= x1 or min(y2, height) <= y1:
        return f"bbox {list(box)} is empty once clipped to the {width}x{height} image"
    # a bad mask costs its region only, as a bad box does (the record would refuse it)
    return mask_problem(region.get("mask"), width, height)


def run_judge(cfg: JudgeStageConfig) -> dict:
    stage = ImageStage.open("judge", cfg.regions, cfg.out_dir, manifest_name="rewards.jsonl",
                            retryable=has_failed_judgment, timeout_minutes=cfg.timeout_minutes)
    model = lazy_model(cfg.model if cfg.judge.backend == "self" else None, stage.info)
    backend = functools.cache(lambda: load_judge_backend(cfg.judge, model()))
    out_dir = stage.out.out_dir
    judge_info = {"backend": cfg.judge.backend, "mode": cfg.judge.mode,
                  "model": (cfg.model.path if cfg.judge.backend == "self"
                            else cfg.judge.server.model or cfg.judge.judge_model if cfg.judge.backend == "openai"
                            else cfg.judge.judge_model)}
    if cfg.judge.backend == "openai":
        judge_info["endpoint"] = cfg.judge.server.base_url

    def usable_regions(item: ImageItem, image) -> tuple[list[dict], list[dict]] | str:
        """The row's regions that can be judged (clipped) and those skipped with the reason,
        or an error message when the row's regions are not a list."""
        regions, skipped = [], []
        raw_regions = item.row.get("regions") or []
        if not isinstance(raw_regions, list):
            return f"{item.source}: 'regions' must be a list"
        for k, region in enumerate(raw_regions):
            problem = region_problem(region, image.width, image.height)
            if problem:
                skipped.append({"index": k, "reason": f"{item.source}: region {k}: {problem}"})
                continue
            # up to 1 px over the edge is float noise from resizing: clip it
            region = {**region, "bbox": [float(min(v, lim)) for v, lim in
                                         zip(region["bbox"], (image.width, image.height) * 2)]}
            region.setdefault("region_id", k)
            regions.append(region)
        return regions, skipped

    def record(item: ImageItem, image, global_entry: dict, region_entries: list[dict], skipped: list[dict]) -> dict:
        record = {"schema": SCHEMA, "image_id": item.image_id, "prompt_id": item.prompt_id,
                  "sample_index": item.sample_index, "image_file": relative_to(item.image_path, out_dir),
                  "reference_image_file": None, "prompt": item.prompt, "category": item.category,
                  "width": image.width, "height": image.height, "global": global_entry,
                  "regions": [_region_record(r) for r in region_entries], "judge": judge_info,
                  "skipped_regions": skipped}
        try:
            return validate_record(record, item.source)
        except RecordError as err:
            return error_row("image_id", item.image_id, f"invalid record: {err}")

    def judge_batch(items: list[ImageItem], images: list) -> list[dict]:
        rows: list[dict | None] = [None] * len(items)
        jobs, where, skips, generators = [], [], [], []
        for i, (item, image) in enumerate(zip(items, images)):
            usable = usable_regions(item, image)
            if isinstance(usable, str):
                rows[i] = error_row("image_id", item.image_id, usable)
                continue
            jobs.append((image, item.prompt, usable[0]))
            skips.append(usable[1])
            where.append(i)
            generators.append(torch.Generator().manual_seed(image_seed(cfg.seed, item.image_id, 0)))
        for i, skipped, (global_entry, region_entries) in zip(
                where, skips, judge_images(backend(), jobs, cfg.judge, generators)):
            rows[i] = record(items[i], images[i], global_entry, region_entries, skipped)
        return rows

    return stage.run(stage.each_batch(judge_batch), config=cfg, retry_errors=cfg.retry_errors,
                     summarize=summarize_rewards, batch_size=cfg.batch_size,
                     settings=result_settings(cfg, RESULT_FIELDS, NOT_RESULT_FIELDS), fresh=cfg.fresh)


def _not_asked(region: dict) -> bool:
    return bool((region.get("detail") or {}).get("skipped"))


def has_failed_judgment(record: dict) -> bool:
    """Whether a record's global judgment, or one of its asked regions, failed after all
    attempts. Such records are kept (training skips or neutralises them); ``retry_errors``
    judges the image again, e.g. after raising ``judge.retries`` or changing the judge."""
    if (record.get("global") or {}).get("status") == "failed":
        return True
    return any(r.get("status") == "failed" and not _not_asked(r) for r in record.get("regions") or [])


_REGION_KEYS = ("region_id", "bbox", "mask", "label", "score", "reason", "status", "method", "grounding", "detail")


def _region_record(entry: dict) -> dict:
    """A judged region in the record shape; SAM's own numbers move under ``detail.proposal``."""
    out = {k: entry.get(k) for k in _REGION_KEYS}
    out["detail"] = dict(entry.get("detail") or {})
    extra = {k: v for k, v in entry.items() if k not in _REGION_KEYS}
    if extra:
        out["detail"]["proposal"] = extra
    return out


def _clamped(entry: dict) -> bool:
    """Whether the judge answered a score outside [-1, 1] that was clamped into it."""
    return bool((entry.get("detail") or {}).get("clamped"))


def summarize_rewards(records: list[dict]) -> dict:
    """Counts of a reward file: global ok / failed, regions judged ok / failed / not asked,
    and how many scores were clamped into [-1, 1] (a judge off the scale shows here)."""
    g_ok = [r["global"]["score"] for r in records if r["global"]["status"] == "ok"]
    regions = [x for r in records for x in r["regions"]]
    r_ok = [x["score"] for x in regions if x["status"] == "ok"]
    return {
        "global_ok": len(g_ok), "global_failed": sum(r["global"]["status"] == "failed" for r in records),
        "global_mean": sum(g_ok) / len(g_ok) if g_ok else None,
        "regions_ok": len(r_ok), "regions_failed": sum(x["status"] == "failed" and not _not_asked(x) for x in regions),
        "regions_not_asked": sum(_not_asked(x) for x in regions),
        "regions_mean": sum(r_ok) / len(r_ok) if r_ok else None,
        "regions_skipped_bad_input": sum(len(r.get("skipped_regions", [])) for r in records),
        "global_clamped": sum(_clamped(r["global"]) for r in records),
        "regions_clamped": sum(_clamped(x) for x in regions),
    }
