# SPDX-License-Identifier: Apache-2.0
"""lmms-eval model adapter for srum (Bagel) checkpoints: ``--model srum``.

A "simple" lmms-eval model: a task hands over its prompt as a plain string and its
pictures through ``doc_to_visual``; the adapter answers with Bagel's own understanding
path (:meth:`Bagel.understand`, :meth:`Bagel.continuation_logprobs`), the same code the
self-judge uses, so an lmms-eval score measures exactly the understanding SRUM relies on.

Request layouts (lmms-eval 0.7, ``Instance.args``):

* ``generate_until``: ``(context, gen_kwargs, doc_to_visual, doc_id, task, split)``;
* ``loglikelihood``: ``(context, continuation, doc_to_visual, doc_id, task, split)``,
  ``continuation`` a str or a ``doc -> str`` function (the task's ``doc_to_target``);
* ``generate_until_multi_round``: ``(context, gen_kwargs, doc_to_visual, doc_to_text,
  doc_id, task, split)``; round k > 0 asks ``doc_to_text(doc, previous_output=...,
  round_idx=k, previous_round_info=...)`` for ``(visuals, context, terminal, outputs, info)``.

Prompt layout: every picture first, then the text (Bagel's understanding context; it has
no image placeholders inside text), so LLaVA-style ``<image>`` tags are removed from the
context. Generation settings honoured: ``max_new_tokens``, ``until`` (stop strings, cut
after decoding: Bagel stops at its end token, so for greedy decoding the answer is the
same as stopping early), ``do_sample`` + ``temperature``. ``num_beams > 1`` and
``top_p`` are not implemented: the adapter says so once and decodes greedily / samples
the full distribution.
"""
from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import PIL.Image
from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms

log = logging.getLogger(__name__)

MODEL_NAME = "srum"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
# LLaVA-style placeholders some task prompts carry; Bagel puts the pictures before the text
_IMAGE_TAG = re.compile(r"<image>\s*", re.IGNORECASE)


# ------------------------------------------------------------------ request handling (pure)
def _as_bool(value: Any) -> bool:
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off", ""):
            return False
        raise ValueError(f"expected a boolean, got {value!r}")
    return bool(value)


def _optional_int(value: Any) -> int | None:
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none", "null")):
        return None
    return int(value)


def stop_strings(until: Any) -> list[str]:
    """A task's ``until`` (None, a str or a list of str) as a list of non-empty strings."""
    if until is None:
        return []
    if isinstance(until, str):
        return [until] if until else []
    if isinstance(until, (list, tuple)) and all(isinstance(u, str) for u in until):
        return [u for u in until if u]
    raise ValueError(f"generation_kwargs.until: expected a str or a list of str, got {until!r}")


def truncate_at_stop(text: str, until: Sequence[str]) -> str:
    """``text`` up to the earliest occurrence of any stop string (excluded)."""
    cut = min((i for i in (text.find(u) for u in until) if i >= 0), default=len(text))
    return text[:cut]


def prompt_text(context: str) -> str:
    return _IMAGE_TAG.sub("", context).strip() if isinstance(context, str) else ""


@dataclass(frozen=True)
class GenerationSettings:
    """What Bagel's decoder does for one request; comparable, so that consecutive
    requests with the same settings can share a batch."""

    until: tuple[str, ...]
    max_new_tokens: int
    do_sample: bool
    temperature: float


def generation_settings(gen_kwargs: dict | None, default_max_new_tokens: int, cap: int | None,
                        warn: Callable[[str], None] = log.warning) -> GenerationSettings:
    """A task's ``generation_kwargs`` -> what Bagel's decoder does. Greedy unless
    ``do_sample`` is true with a temperature > 0 (lmms-eval tasks write ``temperature: 0``
    for greedy); ``max_new_tokens`` bounded by ``cap`` when given."""
    kw = dict(gen_kwargs or {})
    until = stop_strings(kw.pop("until", None))
    max_new = _optional_int(kw.pop("max_new_tokens", None)) or default_max_new_tokens
    if max_new < 1:
        raise ValueError(f"generation_kwargs.max_new_tokens must be >= 1, got {max_new}")
    if cap is not None:
        max_new = min(max_new, cap)
    temperature = float(kw.pop("temperature", 0) or 0)
    do_sample = _as_bool(kw.pop("do_sample", False)) and temperature > 0
    num_beams = _optional_int(kw.pop("num_beams", 1)) or 1
    if num_beams > 1:
        warn(f"generation_kwargs.num_beams={num_beams}: beam search is not implemented; decoding greedily")
    top_p = kw.pop("top_p", None)
    if do_sample and top_p is not None and float(top_p) < 1.0:
        warn(f"generation_kwargs.top_p={top_p}: nucleus sampling is not implemented; sampling the full distribution")
    for key in sorted(kw):
        warn(f"generation_kwargs.{key}={kw[key]!r}: not used by the srum adapter")
    return GenerationSettings(tuple(until), max_new, do_sample, temperature if do_sample else 0.0)


def load_visuals(visuals: Any) -> list[PIL.Image.Image]:
    """What a task's ``doc_to_visual`` returned -> RGB PIL images. Accepts None, one image,
    an image file path or a list of them; anything else (video, audio) is refused, naming it."""
    if visuals is None:
        return []
    items = visuals if isinstance(visuals, (list, tuple)) else [visuals]
    images = []
    for item in items:
        if item is None:
            continue
        if isinstance(item, PIL.Image.Image):
            images.append(item.convert("RGB") if item.mode != "RGB" else item)
        elif isinstance(item, (str, os.PathLike)) and Path(item).suffix.lower() in IMAGE_SUFFIXES:
            with PIL.Image.open(item) as im:
                images.append(im.convert("RGB"))
        else:
            kind = type(item).__name__ + (f" {str(item)[:80]!r}" if isinstance(item, (str, os.PathLike)) else "")
            raise ValueError(f"the srum adapter takes images only; the task gave a {kind} (video or audio tasks "
                             "are not supported)")
    return images


# ------------------------------------------------------------------ the model
class SrumBagelLMM(lmms):
    """lmms-eval model over a srum / BAGEL-7B-MoT checkpoint.

    ``pretrained``: a checkpoint directory or hub id (or ``model``: an already loaded
    :class:`~srum.models.bagel.Bagel`). ``dtype`` / ``device`` / ``device_map`` /
    ``weights``: as :func:`srum.load_model`. ``batch_size``: requests per forward (rows
    of one cache; consecutive requests with the same settings). ``think``: reason in
    ``<think>`` first (the answer is what follows ``</think>``); ``think_system_prompt``:
    its wording. ``max_new_tokens``: the limit when a task sets none;
    ``max_new_tokens_cap``: an upper bound on every task's limit (MathVista asks for
    16384). ``max_rounds``: safety bound for multi-round tasks. ``loglikelihood_value``:
    ``nll`` (what lmms-eval 0.7's multiple-choice scoring expects) or ``logprob``."""

    is_simple = True

    def __init__(self, pretrained: str | None = None, model=None, dtype: str | None = None,
                 device: str | None = None, device_map: str | None = None, weights: str = "auto",
                 batch_size: int | str = 1, think: bool | str = False, think_system_prompt: str | None = None,
                 max_new_tokens: int | str = 256, max_new_tokens_cap: int | str | None = None,
                 max_rounds: int | str = 32, loglikelihood_value: str = "nll", **kwargs) -> None:
        super().__init__()
        kwargs.pop("max_batch_size", None)   # lmms-eval passes it to every model; batches here are fixed
        if kwargs:
            log.warning("srum adapter: ignoring unknown model_args %s", sorted(kwargs))
        if model is None:
            if not pretrained:
                raise ValueError("the srum adapter needs pretrained=<checkpoint directory or hub id>")
            import srum
            model = srum.load_model(pretrained, dtype=dtype, device=device, device_map=device_map, weights=weights)
        self.model = model
        self.pretrained = str(pretrained or getattr(model, "checkpoint_dir", "") or "")
        self.batch_size = int(batch_size) if str(batch_size) != "auto" else 1
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.think = _as_bool(think)
        self.think_system_prompt = think_system_prompt
        self.default_max_new_tokens = int(max_new_tokens)
        self.max_new_tokens_cap = _optional_int(max_new_tokens_cap)
        self.max_rounds = int(max_rounds)
        if loglikelihood_value not in ("nll", "logprob"):
            raise ValueError(f"loglikelihood_value must be 'nll' or 'logprob', got {loglikelihood_value!r}")
        self.loglikelihood_value = loglikelihood_value
        self._warned: set[str] = set()

    # -------------------------------------------------------------- helpers
    def _warn_once(self, message: str) -> None:
        if message not in self._warned:
            self._warned.add(message)
            log.warning("srum adapter: %s", message)

    def _doc(self, task: str, split: str, doc_id):
        return self.task_dict[task][split][doc_id]

    def _settings(self, gen_kwargs) -> GenerationSettings:
        return generation_settings(gen_kwargs, self.default_max_new_tokens, self.max_new_tokens_cap, self._warn_once)

    def _answer(self, text: str, until: Sequence[str]) -> str:
        if self.think:
            from srum.judge.parse import ParseError, strip_reasoning
            try:
                text = strip_reasoning(text)
            except ParseError:   # cut off while reasoning: no answer, scored as such
                text = ""
        return truncate_at_stop(text, until).strip()

    def _understand(self, images: list[list[PIL.Image.Image]], prompts: list[str],
                    settings: GenerationSettings) -> list[str]:
        raw = self.model.understand(images, prompts, think=self.think, max_new_tokens=settings.max_new_tokens,
                                    do_sample=settings.do_sample, temperature=settings.temperature or 1.0,
                                    think_system_prompt=self.think_system_prompt)
        return [self._answer(text, settings.until) for text in raw]

    def _progress(self, total: int, desc: str):
        from tqdm import tqdm
        return tqdm(total=total, disable=self.rank != 0, desc=desc)

    # -------------------------------------------------------------- lmms-eval API
    def generate_until(self, requests: list[Instance]) -> list[str]:
        """Greedy (or sampled) answers, cut at the task's stop strings, in request order.
        Consecutive requests with the same settings share a batch of ``batch_size``."""
        answers: list[str] = []
        pbar = self._progress(len(requests), "srum: answering")
        start = 0
        while start < len(requests):
            first = requests[start].args
            settings = self._settings(first[1])
            stop = start + 1
            while (stop < len(requests) and stop - start < self.batch_size
                   and self._settings(requests[stop].args[1]) == settings):
                stop += 1
            chunk = [r.args for r in requests[start:stop]]
            images = [load_visuals(doc_to_visual(self._doc(task, split, doc_id)))
                      for _, _, doc_to_visual, doc_id, task, split in chunk]
            out = self._understand(images, [prompt_text(a[0]) for a in chunk], settings)
            for args, answer in zip(chunk, out):
                self.cache_hook.add_partial("generate_until", (args[0], args[1]), answer)
            answers += out
            pbar.update(len(chunk))
            start = stop
        pbar.close()
        return answers

    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        """``(score, is_greedy)`` per request, from log P(continuation | pictures + context)
        read where Bagel starts its reply. The reply begins a new turn after
        ``<|im_start|>`` (no text before it on that line), so a continuation's leading
        whitespace, which lmms-eval adds as a word separator, is dropped.

        ``score`` is the negative log-likelihood by default (``loglikelihood_value=nll``):
        lmms-eval 0.7 picks a multiple-choice answer with ``argmin`` (its built-in models
        return a loss there, against the docstring of ``lmms.loglikelihood``), so a
        log-probability would choose the least likely answer. ``loglikelihood_value=logprob``
        returns the log-probability itself (for a harness that takes the argmax)."""
        results: list[tuple[float, bool]] = []
        pbar = self._progress(len(requests), "srum: scoring")
        for start in range(0, len(requests), self.batch_size):
            chunk = [r.args for r in requests[start:start + self.batch_size]]
            images, prompts, replies = [], [], []
            for context, continuation, doc_to_visual, doc_id, task, split in chunk:
                doc = self._doc(task, split, doc_id)
                text = continuation if isinstance(continuation, str) else continuation(doc)
                if isinstance(text, (list, tuple)):
                    raise ValueError(f"{task}: loglikelihood continuation must be a single string, got a list")
                text = str(text)
                replies.append(text.lstrip() or text)
                images.append(load_visuals(doc_to_visual(doc)))
                prompts.append(prompt_text(context))
            scored = self.model.continuation_logprobs(images, prompts, replies)
            if self.loglikelihood_value == "nll":
                scored = [(-logp, greedy) for logp, greedy in scored]
            for args, value in zip(chunk, scored):
                self.cache_hook.add_partial("loglikelihood", (args[0], args[1]), value)
            results += scored
            pbar.update(len(chunk))
        pbar.close()
        return results

    def generate_until_multi_round(self, requests: list[Instance]) -> list[list[str]]:
        """One answer per round and document (batch size 1): round 0 answers the task's
        context; each later round takes its pictures and context from the task's
        ``doc_to_text`` until that signals the end. Returns the rounds' answers per request."""
        results = []
        pbar = self._progress(len(requests), "srum: multi-round")
        for request in requests:
            context, gen_kwargs, doc_to_visual, doc_to_text, doc_id, task, split = request.args
            settings = self._settings(gen_kwargs)
            doc = self._doc(task, split, doc_id)
            visuals, outputs, info = doc_to_visual(doc), [], None
            for round_idx in range(self.max_rounds + 1):
                if round_idx > 0:
                    visuals, context, terminal, outputs, info = doc_to_text(
                        doc, previous_output=list(outputs), round_idx=round_idx, previous_round_info=info)
                    outputs = list(outputs)
                    if terminal:
                        break
                if round_idx == self.max_rounds:
                    raise RuntimeError(f"{task} doc {doc_id}: no end signal after {self.max_rounds} rounds "
                                       "(raise max_rounds in the model args)")
                outputs.append(self._understand([load_visuals(visuals)], [prompt_text(context)], settings)[0])
            results.append(outputs)
            pbar.update(1)
        pbar.close()
        return results
