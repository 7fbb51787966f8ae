# SPDX-License-Identifier: Apache-2.0
"""Judge one image: a global layout score and one local score per kept region.

Two ways to get a score (``JudgeConfig.mode``):

* ``text``: the judge writes (optionally reasons first in think mode, then) an answer
  that :func:`srum.judge.parse.parse_judgment` reads. All questions of an image (global +
  regions) are asked in batches of ``batch_size``. An answer that does not parse is asked
  again up to ``retries`` times *with sampling* at ``retry_temperature`` from the caller's
  generator (a greedy retry would write the same answer again); runs stay reproducible
  for a seeded generator. If every attempt fails, the entry is ``status: "failed"``,
  ``score: null``, with every raw answer and parse error in ``detail``.
* ``logits``: no text; one forward per question (batched) reads the next-token
  distribution over the digits of :data:`~srum.judge.rubric.RATING_SCALE` and the score is
  its expectation, ``sum_k p_k * value_k``. Deterministic. If the digits hold less than
  ``min_scale_mass`` of the probability (the model wanted to say something else), the
  entry is ``failed``; the distribution is kept in ``detail`` either way.

Every entry states how it was obtained (``method``, ``detail``); a failed judgment is
never a silent 0.0.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import PIL.Image
import torch

from srum.models.bagel.prompts import read_think_prompt
from srum.config import MODEL
from srum.models.bagel.transforms import to_rgb
from srum.regions import RegionView, show_region

from .errors import JudgeRequestError
from .openai_backend import OpenAIServerConfig
from .parse import ParseError, parse_judgment
from .rubric import RATING_SCALE, WORDINGS, global_question, local_question


@dataclass
class JudgeConfig:
    """Settings of ``srum judge`` (documented in TRAIN.md, "Self-judgment")."""

    backend: Literal["self", "qwen2_5_vl", "openai"] = "self"   # "self": the Bagel being trained judges itself
    judge_model: str | None = field(default=None, metadata=MODEL)   # qwen2_5_vl: directory or hub id; openai: served name
    mode: Literal["text", "logits"] = "text"   # parsed written answers, or expected score from logits
    wording: Literal["rubric", "compact"] = "rubric"   # the questions' text; compact: ~30 tokens, logits mode only
    think: bool = True                  # text mode: reason inside <think> ... </think> before answering
    think_system_prompt: str | None = None   # None: the backend's own (Bagel's think prompt for "self")
    think_system_prompt_file: str | None = None   # or read it from this file (e.g. the trained wording)
    max_new_tokens: int = 1024          # text mode: reply budget per attempt, reasoning included
    retries: int = 2                    # text mode: sampled re-asks after an unparseable answer
    retry_temperature: float = 0.7      # text mode: sampling temperature of those re-asks
    min_scale_mass: float = 0.1         # logits mode: below this probability on the digits 1-9 -> failed
    view: RegionView = field(default_factory=RegionView)   # how a region is shown (mark / crop / coords)
    batch_size: int = 8                 # questions (global + regions) per backend call
    judge_global: bool = True           # ask the global layout question
    judge_local: bool = True            # ask one question per kept region
    dtype: str | None = None            # qwen2_5_vl: bfloat16 | float16 | float32; None = checkpoint's
    device: str | None = None           # qwen2_5_vl: e.g. "cuda:0"; None = CUDA if available, else CPU
    device_map: str | None = None       # qwen2_5_vl: e.g. "auto" to shard a large judge over GPUs
    server: OpenAIServerConfig = field(default_factory=OpenAIServerConfig)   # openai: the judge server (EVAL.md)

    def __post_init__(self):
        if self.wording not in WORDINGS:
            raise ValueError(f"wording must be one of {list(WORDINGS)}, got {self.wording!r}")
        if self.wording == "compact" and self.mode != "logits":
            raise ValueError("wording 'compact' asks for a digit: it needs mode 'logits'")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.retries < 0:
            raise ValueError(f"retries must be >= 0, got {self.retries}")
        if not self.retry_temperature > 0:
            raise ValueError(f"retry_temperature must be > 0, got {self.retry_temperature}")
        if not 0.0 <= self.min_scale_mass <= 1.0:
            raise ValueError(f"min_scale_mass must be in [0, 1], got {self.min_scale_mass}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.think_system_prompt is not None and self.think_system_prompt_file is not None:
            raise ValueError("give think_system_prompt or think_system_prompt_file, not both")
        if self.backend == "qwen2_5_vl" and not self.judge_model:
            raise ValueError("backend qwen2_5_vl needs judge_model (a checkpoint directory or hub id)")
        if self.backend == "openai":
            self.server.check("judge")
            if not (self.judge_model or self.server.model):
                raise ValueError("backend openai needs judge_model (or server.model): the served model name")


@dataclass
class _Question:
    """One question to the judge and what came back."""

    kind: Literal["global", "local"]
    images: list[PIL.Image.Image]
    text: str
    answers: list[str] = field(default_factory=list)
    sampled: list[bool] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    entry: dict | None = None   # score/reason/status/method/detail (+ label for regions)


# ------------------------------------------------------------------ public entry point
def judge_image(backend, image: PIL.Image.Image, prompt: str, regions: list[dict], cfg: JudgeConfig,
                generator: torch.Generator | None = None) -> tuple[dict, list[dict]]:
    """Judge ``image`` (made from ``prompt``) and its ``regions``.

    ``regions``: dicts with at least ``bbox`` ([x1, y1, x2, y2], pixels of ``image``);
    ``region_id``, ``mask``, ``grounding`` and any other keys are kept. Returns
    ``(global_entry, region_entries)`` in the ``srum.reward.v1`` shape:
    ``global_entry = {score, reason, status, method, detail}``; ``region_entries[i]`` is
    ``regions[i]`` plus ``label, score, reason, status, method, detail``, same order and
    length as ``regions``. Regions with ``grounding.kept == False`` are not asked about;
    they come back ``failed`` with ``detail.skipped``, as does everything when
    ``judge_global``/``judge_local`` is off. ``generator`` drives sampled retries."""
    questions = _questions(image, prompt, regions, cfg)
    asked = questions.asked()
    if asked:
        if cfg.mode == "text":
            _ask_text(backend, asked, cfg, generator)
        else:
            _ask_logits(backend, asked, cfg)
    return questions.entries(cfg)


def judge_images(backend, jobs: list[tuple[PIL.Image.Image, str, list[dict]]], cfg: JudgeConfig,
                 generators: list[torch.Generator | None] | None = None) -> list[tuple[dict, list[dict]]]:
    """:func:`judge_image` for several ``(image, prompt, regions)`` at once, same results.
    In logits mode the questions of all images share backend calls (``cfg.batch_size``
    questions each), which is much faster for small images; text mode asks image by image
    (each image's sampled retries use its own generator)."""
    generators = generators if generators is not None else [None] * len(jobs)
    if len(generators) != len(jobs):
        raise ValueError(f"{len(generators)} generators for {len(jobs)} images")
    if cfg.mode == "text":
        return [judge_image(backend, image, prompt, regions, cfg, g)
                for (image, prompt, regions), g in zip(jobs, generators)]
    prepared = [_questions(image, prompt, regions, cfg) for image, prompt, regions in jobs]
    asked = [q for p in prepared for q in p.asked()]
    if asked:
        _ask_logits(backend, asked, cfg)
    return [p.entries(cfg) for p in prepared]


@dataclass
class _ImageQuestions:
    """The questions about one image: the global one (or None) and one per region (None
    where the region is not asked about)."""

    regions: list[dict]
    global_q: _Question | None
    local_qs: list[_Question | None]

    def asked(self) -> list[_Question]:
        return [q for q in [self.global_q, *self.local_qs] if q is not None]

    def entries(self, cfg: JudgeConfig) -> tuple[dict, list[dict]]:
        if self.global_q is not None:
            global_entry = {k: v for k, v in self.global_q.entry.items() if k != "label"}
        else:
            global_entry = _skipped(cfg.mode, "judge_global is false", with_label=False)
        region_entries = []
        for region, q in zip(self.regions, self.local_qs):
            if q is not None:
                entry = q.entry
            elif not cfg.judge_local:
                entry = _skipped(cfg.mode, "judge_local is false", with_label=True)
            else:
                entry = _skipped(cfg.mode, "not kept by the grounding filter", with_label=True)
            region_entries.append({**region, **entry})
        return global_entry, region_entries


def _questions(image: PIL.Image.Image, prompt: str, regions: list[dict], cfg: JudgeConfig) -> _ImageQuestions:
    if not isinstance(prompt, str):
        raise TypeError(f"prompt: expected a str, got {type(prompt).__name__}")
    image = image if image.mode == "RGB" else to_rgb(image)   # kept as is: see show_region
    for k, region in enumerate(regions):
        _check_bbox(region, k, image.size)
    global_q = None
    if cfg.judge_global:
        global_q = _Question("global", [image], global_question(prompt, cfg.mode, cfg.wording))
    local_qs: list[_Question | None] = []
    for region in regions:
        if not cfg.judge_local or not _is_kept(region):
            local_qs.append(None)
            continue
        views, phrase = show_region(image, region["bbox"], cfg.view)
        local_qs.append(_Question("local", views, local_question(prompt, phrase, cfg.mode, cfg.wording)))
    return _ImageQuestions(regions, global_q, local_qs)


# ------------------------------------------------------------------ text mode
def _ask_text(backend, questions: list[_Question], cfg: JudgeConfig, generator) -> None:
    given = read_think_prompt(cfg.think_system_prompt, cfg.think_system_prompt_file, "judge") if cfg.think else None
    system = (given or backend.think_system_prompt) if cfg.think else None
    pending = list(questions)
    for attempt in range(1 + cfg.retries):
        if not pending:
            break
        sample = attempt > 0
        for chunk in _chunks(pending, cfg.batch_size):
            try:
                replies = backend.generate([q.images for q in chunk], [q.text for q in chunk], system=system,
                                           max_new_tokens=cfg.max_new_tokens, do_sample=sample,
                                           temperature=cfg.retry_temperature, generator=generator if sample else None)
            except JudgeRequestError as err:   # rows without an answer: a failed attempt each, like a bad answer
                replies = [a if a is not None else _NoAnswer(e) for a, e in zip(err.answers, err.errors)]
            if len(replies) != len(chunk):
                raise RuntimeError(f"judge backend {backend.name!r} returned {len(replies)} replies "
                                   f"for {len(chunk)} questions")
            for q, reply in zip(chunk, replies):
                if isinstance(reply, _NoAnswer):
                    q.answers.append(None)
                    q.sampled.append(sample)
                    q.errors.append(f"judge request failed: {reply.error}")
                    continue
                q.answers.append(reply)
                q.sampled.append(sample)
                try:
                    parsed = parse_judgment(reply, q.kind)
                except ParseError as err:
                    q.errors.append(str(err))
                    continue
                q.entry = {
                    "label": parsed.label, "score": parsed.score, "reason": parsed.reason, "status": "ok",
                    "method": "text",
                    "detail": {"attempts": len(q.answers), "sampled": sample, "answer": reply,
                               "earlier_answers": q.answers[:-1], "errors": list(q.errors),
                               "raw_score": parsed.raw_score, "clamped": parsed.clamped, "format": parsed.source},
                }
        pending = [q for q in pending if q.entry is None]
    for q in pending:
        q.entry = {
            "label": None, "score": None, "reason": "", "status": "failed", "method": "text",
            "detail": {"attempts": len(q.answers), "error": f"no parseable answer in {len(q.answers)} attempt(s)",
                       "answers": list(q.answers), "sampled": list(q.sampled), "errors": list(q.errors)},
        }


@dataclass
class _NoAnswer:
    """A row of a judge call that got no answer (see :class:`~srum.judge.errors.JudgeRequestError`)."""

    error: str


# ------------------------------------------------------------------ logits mode
def _ask_logits(backend, questions: list[_Question], cfg: JudgeConfig) -> None:
    scale = RATING_SCALE
    values = torch.tensor(scale.values, dtype=torch.float64)
    digits = torch.tensor([float(t) for t in scale.tokens], dtype=torch.float64)
    for chunk in _chunks(questions, cfg.batch_size):
        probs, mass = backend.choice_probabilities([q.images for q in chunk], [q.text for q in chunk], scale.choices)
        probs, mass = probs.detach().double().cpu(), mass.detach().double().cpu()
        if tuple(probs.shape) != (len(chunk), len(scale.tokens)) or tuple(mass.shape) != (len(chunk),):
            raise RuntimeError(f"judge backend {backend.name!r} returned probabilities of shape {list(probs.shape)} "
                               f"and mass {list(mass.shape)} for {len(chunk)} questions x {len(scale.tokens)} answers")
        for q, p, m in zip(chunk, probs, mass):
            expected = float(p @ values)
            top = int(p.argmax())
            detail = {"choices": scale.choices, "values": list(scale.values), "probabilities": [float(x) for x in p],
                      "scale_mass": float(m), "min_scale_mass": cfg.min_scale_mass, "expected_score": expected,
                      "expected_rating": float(p @ digits)}
            if not (math.isfinite(expected) and math.isfinite(float(m))):
                q.entry = _failed_logits(detail, "non-finite probabilities from the judge")
            elif float(m) < cfg.min_scale_mass:
                q.entry = _failed_logits(detail, f"only {float(m):.3g} of the next-token probability is on the "
                                                 f"rating digits (min_scale_mass {cfg.min_scale_mass})")
            else:
                # no written reason in this mode: the reason summarises the distribution
                reason = (f"expected rating {float(p @ digits):.2f} on the 1-9 scale; most likely "
                          f"{scale.tokens[top]} (p={float(p[top]):.2f}); {float(m):.2f} of the probability "
                          f"on the scale")
                q.entry = {"label": None, "score": expected, "reason": reason, "status": "ok", "method": "logits",
                           "detail": detail}


def _failed_logits(detail: dict, error: str) -> dict:
    return {"label": None, "score": None, "reason": "", "status": "failed", "method": "logits",
            "detail": {**detail, "error": error}}


# ------------------------------------------------------------------ helpers
def _skipped(mode: str, why: str, with_label: bool) -> dict:
    entry = {"score": None, "reason": "", "status": "failed", "method": mode, "detail": {"skipped": why}}
    return {"label": None, **entry} if with_label else entry


def _is_kept(region: dict) -> bool:
    grounding = region.get("grounding")
    return not (isinstance(grounding, dict) and grounding.get("kept") is False)


def _check_bbox(region: Any, index: int, size: tuple[int, int]) -> None:
    where = f"regions[{index}]" + (f" (region_id {region.get('region_id')})" if isinstance(region, dict)
                                   and "region_id" in region else "")
    if not isinstance(region, dict):
        raise TypeError(f"{where}: expected a dict, got {type(region).__name__}")
    box = region.get("bbox")
    if not isinstance(box, (list, tuple)) or len(box) != 4 or \
            not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in box):
        raise ValueError(f"{where}: bbox must be four finite numbers [x1, y1, x2, y2], got {box!r}")
    w, h = size
    x1, y1, x2, y2 = box
    if not (0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h):
        raise ValueError(f"{where}: bbox {list(box)} is not inside the {w}x{h} image with x1 < x2 and y1 < y2")


def _chunks(items: list, n: int):
    for i in range(0, len(items), n):
        yield items[i:i + n]
