# SPDX-License-Identifier: Apache-2.0
"""A judge served by an inference engine over the OpenAI-compatible HTTP API.

vLLM (``vllm serve``) and SGLang (``python -m sglang.launch_server``) serve a model at
``/v1/chat/completions``; this backend sends each question there as one chat request
(system turn, then a user turn with the row's images as base64 PNG ``image_url`` parts
followed by its text) through the ``openai`` client. That is how a 72B judge runs on GPUs
of its own while the GPUs that generate stay free (EVAL.md, "A judge served by vLLM").

* **Concurrency**: the rows of one call are sent in parallel, ``concurrency`` at a time
  (the engine batches them itself).
* **Retries**: a request that times out, cannot connect, is rate-limited or gets a 5xx is
  sent again after ``backoff_s``, ``2*backoff_s``, ... (at most ``max_backoff_s``), up to
  ``max_retries`` times. A request the server refuses (400/422) is not retried.
* **Failure accounting**: a row still without an answer fails *that row only*
  (:class:`~srum.judge.errors.JudgeRequestError` carries the other rows' answers); the
  callers count it as a failed attempt, like an answer that does not parse. A server that
  stays unreachable, rejects the key (401/403) or does not serve the model (404) stops the
  stage (:class:`~srum.judge.errors.JudgeBackendFatal`).
* **Sampling**: greedy is ``temperature 0``; a sampled retry sends ``temperature`` and a
  per-row ``seed`` drawn from the caller's generator, so retries are reproducible on
  engines that honour ``seed`` (vLLM does).
* **Logits mode**: ``choice_probabilities`` asks for one token with ``top_logprobs`` and
  sums the returned probabilities of each answer's spellings (a spelling counts when the
  served token is exactly it). Answers outside the top ``top_logprobs`` tokens count as 0,
  so the reported mass is a lower bound.

The API key is read from the environment variable named by ``api_key_env`` (never from a
config file); unset, ``"EMPTY"`` is sent, which a vLLM server without ``--api-key`` accepts.
"""
from __future__ import annotations

import base64
import io
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Sequence

import PIL.Image

from .errors import JudgeBackendFatal, JudgeRequestError
from .rubric import JUDGE_THINK_PROMPT


@dataclass
class OpenAIServerConfig:
    """Where and how to reach an OpenAI-compatible judge server (EVAL.md documents it)."""

    # how the questions reach the server, not what it answers (a resume may change them)
    OPERATIONAL_FIELDS = ("base_url", "api_key_env", "concurrency", "timeout_s", "max_retries", "backoff_s",
                          "max_backoff_s")

    base_url: str | None = None         # e.g. http://judge-node:8000/v1 (required for backend openai)
    model: str | None = None            # the served model name; None = the judge's model id
    api_key_env: str = "OPENAI_API_KEY"  # name of the variable holding the key (unset -> "EMPTY")
    concurrency: int = 16               # requests in flight per process
    timeout_s: float = 300.0            # per request, reasoning included
    max_retries: int = 4                # re-sends of a request that timed out / hit a 5xx / 429 / no connection
    backoff_s: float = 2.0              # wait before the first re-send; doubles each time
    max_backoff_s: float = 60.0         # longest wait between re-sends
    top_logprobs: int = 20              # logits mode: tokens asked for (vLLM's --max-logprobs default is 20)

    def __post_init__(self):
        if self.concurrency < 1 or self.max_retries < 0 or self.top_logprobs < 1:
            raise ValueError("server: concurrency and top_logprobs must be >= 1, max_retries >= 0")
        if not (self.timeout_s > 0 and self.backoff_s >= 0 and self.max_backoff_s >= 0):
            raise ValueError("server: timeout_s must be > 0, backoff_s and max_backoff_s >= 0")

    def check(self, where: str) -> None:
        """The fields a run needs (checked when the backend is chosen, not on every config)."""
        if not self.base_url:
            raise ValueError(f"{where}: backend openai needs server.base_url (e.g. http://localhost:8000/v1)")


def image_part(image: PIL.Image.Image) -> dict:
    """An image as an OpenAI chat ``image_url`` part (a lossless base64 PNG data URL)."""
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="PNG")
    return {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()}}


def chat_messages(images: Sequence[PIL.Image.Image], prompt: str, system: str | None, history=()) -> list[dict]:
    """The chat turns of one question: what QwenVLJudge renders with its chat template
    (``history``: earlier ``(user text, assistant reply)`` turns; the images go with the
    first user turn)."""
    messages = [{"role": "system", "content": system}] if system is not None else []
    for t, (user, reply) in enumerate([*history, (prompt, None)]):
        content = ([image_part(im) for im in images] if t == 0 else []) + [{"type": "text", "text": user}]
        messages.append({"role": "user", "content": content})
        if reply is not None:
            messages.append({"role": "assistant", "content": reply})
    return messages


class OpenAIJudge:
    """:class:`~srum.judge.backends.JudgeBackend` over an OpenAI-compatible server.

    ``model_id``: the served model name (recorded in every reward / score row, as the
    in-process judge records its checkpoint). ``client``: an ``openai.OpenAI`` (tests)."""

    name = "openai"
    think_system_prompt = JUDGE_THINK_PROMPT

    def __init__(self, cfg: OpenAIServerConfig, model: str | None = None, client=None, sleep=time.sleep):
        cfg.check("judge")
        self.cfg = cfg
        self.model_id = cfg.model or model
        if not self.model_id:
            raise ValueError("judge: backend openai needs the served model name (server.model or the judge model)")
        if client is None:
            import openai
            # retries are ours (with the failure accounting above), so the client's are off
            client = openai.OpenAI(base_url=cfg.base_url, api_key=os.environ.get(cfg.api_key_env) or "EMPTY",
                                   timeout=cfg.timeout_s, max_retries=0)
        self.client = client
        self._sleep = sleep
        self._pool = ThreadPoolExecutor(max_workers=cfg.concurrency, thread_name_prefix="srum-judge")

    # ------------------------------------------------------------ one request, retried
    def _create(self, messages: list[dict], **params):
        import openai
        attempt = 0
        while True:
            try:
                return self.client.chat.completions.create(model=self.model_id, messages=messages, **params)
            except (openai.AuthenticationError, openai.PermissionDeniedError, openai.NotFoundError) as err:
                raise JudgeBackendFatal(f"judge server {self.cfg.base_url} refused model {self.model_id!r} "
                                        f"(HTTP {err.status_code}): {_short(err)}. Check server.base_url, "
                                        f"server.model and ${self.cfg.api_key_env}.") from err
            except (openai.APIConnectionError, openai.RateLimitError, openai.InternalServerError) as err:
                if attempt >= self.cfg.max_retries:
                    if isinstance(err, openai.APIConnectionError) and not isinstance(err, openai.APITimeoutError):
                        raise JudgeBackendFatal(f"judge server {self.cfg.base_url} unreachable after "
                                                f"{attempt + 1} tries: {_short(err)}. Is it running?") from err
                    raise _RowFailed(f"{type(err).__name__} after {attempt + 1} tries: {_short(err)}") from err
            except openai.APIStatusError as err:   # 400 / 422 ...: this request, not the server
                if err.status_code < 500 and err.status_code not in _RETRIED_STATUS:
                    raise _RowFailed(f"HTTP {err.status_code}: {_short(err)}") from err
                if attempt >= self.cfg.max_retries:
                    raise _RowFailed(f"HTTP {err.status_code} after {attempt + 1} tries: {_short(err)}") from err
            except openai.APIError as err:           # a reply the client could not read
                raise _RowFailed(f"{type(err).__name__}: {_short(err)}") from err
            self._sleep(min(self.cfg.backoff_s * 2 ** attempt, self.cfg.max_backoff_s))
            attempt += 1

    def _map(self, fn, rows: list) -> list:
        """``fn`` over ``rows`` in parallel; per-row failures -> :class:`JudgeRequestError`."""
        futures = [self._pool.submit(fn, row) for row in rows]
        answers, errors = [], []
        for future in futures:
            try:
                answers.append(future.result())
                errors.append(None)
            except _RowFailed as err:
                answers.append(None)
                errors.append(str(err))
        if any(e is not None for e in errors):
            raise JudgeRequestError(answers, errors)
        return answers

    # ------------------------------------------------------------ JudgeBackend
    def generate(self, images, prompts, *, system=None, max_new_tokens=1024, do_sample=False, temperature=0.7,
                 generator=None, history=None) -> list[str]:
        from .backends import _check_history, _check_rows
        _check_rows(images, prompts)
        history = _check_history(history, len(prompts))
        if do_sample and not temperature > 0:
            raise ValueError(f"temperature must be > 0 when sampling, got {temperature}")
        seeds = [None] * len(prompts)
        if do_sample and generator is not None:
            import torch
            seeds = [int(s) for s in torch.randint(0, 2**31 - 1, (len(prompts),), generator=generator)]

        def ask(row):
            row_images, prompt, seed, turns = row
            params = dict(max_tokens=max_new_tokens, temperature=float(temperature) if do_sample else 0.0, top_p=1.0)
            if seed is not None:
                params["seed"] = seed
            reply = self._create(chat_messages(row_images, prompt, system, turns), **params)
            with _malformed(reply):
                return reply.choices[0].message.content or ""

        return self._map(ask, list(zip(images, prompts, seeds, history)))

    def choice_probabilities(self, images, prompts, choices, *, system=None):
        import torch

        from .backends import _check_rows
        _check_rows(images, prompts)
        spellings = [{choice} if isinstance(choice, str) else set(choice) for choice in choices]

        def ask(row):
            reply = self._create(chat_messages(row[0], row[1], system), max_tokens=1, temperature=0.0,
                                 logprobs=True, top_logprobs=self.cfg.top_logprobs)
            with _malformed(reply):
                content = reply.choices[0].logprobs.content if reply.choices[0].logprobs else None
                if not content:
                    raise _RowFailed("the server returned no logprobs (does it support top_logprobs?)")
                top = {t.token: t.logprob for t in content[0].top_logprobs}
            return [sum(math.exp(lp) for tok, lp in top.items() if tok in s) for s in spellings]

        try:
            rows = self._map(ask, list(zip(images, prompts)))
        except JudgeRequestError as err:   # no probabilities for a row: NaN, which the logits mode counts as failed
            rows = [a if a is not None else [float("nan")] * len(choices) for a in err.answers]
        per_choice = torch.tensor(rows, dtype=torch.float64)
        mass = per_choice.sum(-1)
        probs = per_choice / mass.clamp_min(1e-300).unsqueeze(-1)
        return probs.float(), mass.float()


_RETRIED_STATUS = (408, 409, 429)   # request timeout, conflict, rate limit: sent again like a 5xx


class _RowFailed(Exception):
    """One request without an answer after its retries (internal: becomes JudgeRequestError)."""


@contextmanager
def _malformed(reply):
    """A reply without the fields asked for fails its row (not the stage)."""
    try:
        yield
    except (AttributeError, IndexError, KeyError, TypeError) as err:
        raise _RowFailed(f"malformed reply ({type(err).__name__}: {err}): {str(reply)[:200]}") from err


def _short(err: BaseException, limit: int = 300) -> str:
    text = " ".join(str(err).split())
    return text if len(text) <= limit else text[:limit] + "..."
