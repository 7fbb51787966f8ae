# SPDX-License-Identifier: Apache-2.0
"""Rendering the miniature world's training sets to disk, in ``srum train``'s row formats.

``write_training_data(out_dir, cfg)`` writes ``t2i.jsonl``, ``cot.jsonl`` and ``vqa.jsonl``
(rows described in :mod:`.tasks`; image paths relative to ``out_dir``) plus the images
under ``images/``. Item ``i`` of a kind draws everything from its own generator seeded by
``(seed, kind, i)``, so the files do not depend on the number of worker processes, and
only training-split prompts and scenes are used (:mod:`.world` keeps held-out
combinations out of both text and images).

A finished directory holds ``data.json`` (counts, config); a directory without it is
rebuilt from scratch (rendering is minutes at most, so partial output is not resumed).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..fileio import atomic_write_text
from . import tasks
from . import world as W

log = logging.getLogger("srum.miniworld")

__all__ = ["DataConfig", "write_training_data", "item_rng", "text_corpus"]

KINDS = {"prompt": 1, "vqa": 2, "judge": 3, "region": 4}


@dataclass
class DataConfig:
    """Sizes of the training sets.

    prompts: (prompt, scene) pairs; each gives one ``t2i`` and one ``cot`` row (same image).
    vqa_scenes / questions_per_scene: random training scenes (1-4 objects) and the plain
        questions asked about each (plus the detection question with ``detection_prob``).
    one_object_share: the share of those scenes with exactly one object (the rest: 1-4 at
        random); simple scenes make the picture the only way to answer, which is what gets a
        ViT trained from scratch to carry the picture's content at all.
    question_kinds: the plain question kinds asked (``tasks.QUESTION_KINDS``; empty: all).
        One kind at a time is how a model that answers from the question alone first learns
        to look at the picture (measured: TRAIN.md, "The miniature world").
    judge_scenes: (prompt, scene) pairs, half of them violating it (:func:`world.sample_negative_scene`),
        each asked the judge's global question and local + relevance questions for up to
        two regions.
    artifact_prob: the share of the other judge scenes (those that satisfy their prompt) drawn
        with one asked object malformed (:func:`world.sample_artifact_scene`), which the local
        rubric rates 3: the judge's examples of what an undertrained generator draws.
    judge_wording: the wording of those judge and relevance questions, "rubric" or "compact"
        (``judge.wording`` / ``proposals.grounding.wording`` of the pipeline that will ask them;
        compact rows are ~30 tokens instead of 200-700, so a pack holds far more of them).
    judge_view: how those questions show a region (``judge.view`` / ``proposals.grounding.view``
        of that pipeline): "coords" (the box as text on the whole picture) or "isolate" (the
        picture with everything outside the region black; the row then has its own image).
    region_scenes: one-object pictures in the isolate view, each asked the local and relevance
        questions for a training prompt with the object's attributes drawn to balance the
        ratings (:func:`tasks.region_questions`); needs ``judge_view: isolate``.
    workers: rendering processes (0 = in this process)."""

    prompts: int = 60000
    vqa_scenes: int = 30000
    one_object_share: float = 0.0
    questions_per_scene: int = 3
    question_kinds: list[str] = field(default_factory=list)
    detection_prob: float = 0.3
    judge_scenes: int = 10000
    corrupt_prob: float = 0.5
    artifact_prob: float = 0.0
    judge_wording: str = "compact"
    judge_view: str = "coords"
    region_scenes: int = 0
    seed: int = 0
    workers: int = 0

    def __post_init__(self):
        bad = [k for k in self.question_kinds if k not in tasks.QUESTION_KINDS]
        if bad:
            raise ValueError(f"data.question_kinds: {bad} are not question kinds {list(tasks.QUESTION_KINDS)}")
        if self.judge_wording not in ("rubric", "compact"):
            raise ValueError(f"data.judge_wording must be 'rubric' or 'compact', got {self.judge_wording!r}")
        if self.judge_view not in tasks.REGION_VIEWS:
            raise ValueError(f"data.judge_view must be one of {list(tasks.REGION_VIEWS)}, got {self.judge_view!r}")
        if self.region_scenes and self.judge_view != "isolate":
            raise ValueError("data.region_scenes asks about regions in the isolate view: set data.judge_view: isolate")
        if not 0.0 <= self.artifact_prob <= 1.0:
            raise ValueError(f"data.artifact_prob must be in [0, 1], got {self.artifact_prob}")


def item_rng(seed: int, kind: str, index: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), KINDS[kind], int(index)])


def _save(image, out: Path, rel: str) -> str:
    path = out / rel
    image.save(path, format="PNG", optimize=False, compress_level=1)
    return rel


def _prompt_rows(out: Path, cfg: DataConfig, start: int, stop: int) -> tuple[list, list]:
    t2i, cot = [], []
    for i in range(start, stop):
        rng = item_rng(cfg.seed, "prompt", i)
        category = W.CATEGORIES[i % len(W.CATEGORIES)]
        spec = W.sample_prompt(category, rng, "train")
        scene = W.sample_scene(spec, rng)
        rel = _save(W.render(scene), out, f"images/prompt/{i:07d}.png")
        t2i.append({"mode": "t2i", "id": f"t2i-{i:07d}", "prompt": spec.text, "image": rel, "meta": {"category": category}})
        cot.append({"mode": "cot", "id": f"cot-{i:07d}", "prompt": spec.text, "plan": tasks.plan_text(scene),
                    "image": rel, "meta": {"category": category}})
    return t2i, cot


def _vqa_rows(out: Path, cfg: DataConfig, start: int, stop: int) -> list:
    rows = []
    for i in range(start, stop):
        rng = item_rng(cfg.seed, "vqa", i)
        # (no draw when the share is 0, so older configs render the very same scenes)
        one = cfg.one_object_share > 0 and rng.random() < cfg.one_object_share
        n_objects = 1 if one else int(rng.integers(1, 5))
        scene = W.sample_training_scene(rng, n_objects)
        rel = _save(W.render(scene), out, f"images/vqa/{i:07d}.png")
        qas = tasks.scene_questions(scene, rng, cfg.questions_per_scene, cfg.question_kinds)
        if rng.random() < cfg.detection_prob:
            qas.append(("detect", tasks.DETECTION_QUESTION, tasks.detection_answer(scene)))
        for k, (kind, question, answer) in enumerate(qas):
            rows.append({"mode": "vqa", "id": f"vqa-{i:07d}-{k}", "image": rel, "question": question,
                         "answer": answer, "meta": {"kind": kind}})
    return rows


def _judge_rows(out: Path, cfg: DataConfig, start: int, stop: int) -> list:
    rows = []
    for i in range(start, stop):
        rng = item_rng(cfg.seed, "judge", i)
        category = W.CATEGORIES[i % len(W.CATEGORIES)]
        spec = W.sample_prompt(category, rng, "train")
        scene = W.sample_scene(spec, rng)
        violation = None
        if rng.random() < cfg.corrupt_prob:
            try:
                scene, violation = W.sample_negative_scene(spec, rng)
            except RuntimeError:  # no violating layout for this prompt: the good one stays (counted)
                violation = "none found"
        elif cfg.artifact_prob > 0 and rng.random() < cfg.artifact_prob:
            melted = W.sample_artifact_scene(spec, rng)
            if melted is not None:
                scene, violation = melted, "artifact"
        image = W.render(scene)
        rel = _save(image, out, f"images/judge/{i:07d}.png")
        questions = tasks.judge_questions(spec, scene, image, rng, wording=cfg.judge_wording, view=cfg.judge_view)
        saved = {id(image): rel}   # a region view of its own (isolate) is saved once, beside the scene
        for k, (kind, question, answer, picture) in enumerate(questions):
            if id(picture) not in saved:
                saved[id(picture)] = _save(picture, out, f"images/judge/{i:07d}-r{len(saved) - 1}.png")
            shown = saved[id(picture)]
            rows.append({"mode": "vqa", "id": f"judge-{i:07d}-{k}", "image": shown, "question": question,
                         "answer": answer, "meta": {"kind": kind, "violation": violation}})
    return rows


def _region_rows(out: Path, cfg: DataConfig, start: int, stop: int) -> list:
    rows = []
    for i in range(start, stop):
        rng = item_rng(cfg.seed, "region", i)
        spec = W.sample_prompt(W.CATEGORIES[i % len(W.CATEGORIES)], rng, "train")
        questions = tasks.region_questions(spec, rng, wording=cfg.judge_wording)
        rel = _save(questions[0][3], out, f"images/region/{i:07d}.png")
        for k, (kind, question, answer, _) in enumerate(questions):
            rows.append({"mode": "vqa", "id": f"region-{i:07d}-{k}", "image": rel, "question": question,
                         "answer": answer, "meta": {"kind": kind}})
    return rows


def _chunk(job):
    fn, out, cfg, start, stop = job
    return fn(Path(out), cfg, start, stop)


def _run(fn, out: Path, cfg: DataConfig, n: int, chunk: int = 2000) -> list:
    jobs = [(fn, str(out), cfg, s, min(n, s + chunk)) for s in range(0, n, chunk)]
    if cfg.workers > 0 and len(jobs) > 1:
        with ProcessPoolExecutor(cfg.workers) as pool:
            return list(pool.map(_chunk, jobs))
    return [_chunk(job) for job in jobs]


def _write_jsonl(path: Path, rows: list) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def write_training_data(out_dir: str | os.PathLike, cfg: DataConfig) -> dict:
    """Render every training set into ``out_dir`` (see the module docstring); returns the
    counts written to ``data.json``. A finished directory with the same config is kept."""
    out = Path(out_dir)
    marker = out / "data.json"
    if marker.is_file():
        done = json.loads(marker.read_text(encoding="utf-8"))
        if done.get("config") == asdict(cfg):
            return done
    if out.exists():
        log.info("data: %s is unfinished or was made with another config: rendering it again", out)
        shutil.rmtree(out)
    for sub in ("prompt", "vqa", "judge", "region"):
        (out / "images" / sub).mkdir(parents=True, exist_ok=True)
    t2i, cot = [], []
    for a, b in _run(_prompt_rows, out, cfg, cfg.prompts):
        t2i += a
        cot += b
    vqa = [r for part in _run(_vqa_rows, out, cfg, cfg.vqa_scenes) for r in part]
    vqa += [r for part in _run(_judge_rows, out, cfg, cfg.judge_scenes) for r in part]
    vqa += [r for part in _run(_region_rows, out, cfg, cfg.region_scenes) for r in part]
    _write_jsonl(out / "t2i.jsonl", t2i)
    _write_jsonl(out / "cot.jsonl", cot)
    _write_jsonl(out / "vqa.jsonl", vqa)
    kinds: dict[str, int] = {}
    for r in vqa:
        kinds[r["meta"]["kind"]] = kinds.get(r["meta"]["kind"], 0) + 1
    violations: dict[str, int] = {}   # judge scenes by how they violate their prompt (per question row)
    for r in vqa:
        v = r["meta"].get("violation")
        if v is not None:
            violations[v] = violations.get(v, 0) + 1
    summary = {"config": asdict(cfg), "t2i": len(t2i), "cot": len(cot), "vqa": len(vqa), "vqa_kinds": kinds,
               "judge_violations": violations,
               "files": ["t2i.jsonl", "cot.jsonl", "vqa.jsonl"]}
    atomic_write_text(marker, json.dumps(summary, indent=1))
    return summary


def text_corpus(data_dir: str | os.PathLike, max_rows_per_file: int = 20000) -> list[str]:
    """Training text for the tokenizer: the world's words plus the texts of the first rows
    of every training file (prompts, plans, questions with the judge's rubric, answers)."""
    from ..models.bagel.prompts import GENERATION_THINK_PROMPT, UNDERSTANDING_THINK_PROMPT
    corpus = list(W.world_corpus()) + [GENERATION_THINK_PROMPT, UNDERSTANDING_THINK_PROMPT]
    for name in ("t2i.jsonl", "cot.jsonl", "vqa.jsonl"):
        with open(Path(data_dir) / name, encoding="utf-8") as f:
            for k, line in enumerate(f):
                if k >= max_rows_per_file:
                    break
                row = json.loads(line)
                corpus += [row[key] for key in ("prompt", "plan", "question", "answer") if key in row]
    return corpus
