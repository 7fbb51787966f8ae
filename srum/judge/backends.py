# SPDX-License-Identifier: Apache-2.0
"""Who answers the judge's questions.

A :class:`JudgeBackend` does two things, both batched (row ``i`` = ``images[i]`` +
``prompts[i]``; each row may carry several images, shown in order before its prompt):

* ``generate``: free text (greedy, or sampled from a ``torch.Generator`` so that sampled
  retries are reproducible);
* ``choice_probabilities``: the probability of each of a few single-token answers at the
  first token of the reply, renormalised over the answers, plus the probability mass the
  answers hold under the full vocabulary. No text is generated.

Backends:

* :class:`SelfJudge` (``"self"``): the Bagel being trained; that is the self-rewarding.
* :class:`QwenVLJudge` (``"qwen2_5_vl"``): an external Qwen2.5-VL through transformers,
  for comparison studies and for benchmark evaluation. Any directory in the published HF
  layout or hub id works; ``HF_HUB_OFFLINE=1`` is honoured and remote code never runs.
* :class:`~srum.judge.openai_backend.OpenAIJudge` (``"openai"``): the same external judge
  served by vLLM / SGLang over the OpenAI-compatible HTTP API.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol, Sequence, runtime_checkable

import PIL.Image
import torch

from srum.models.bagel.prompts import UNDERSTANDING_THINK_PROMPT
from srum.models.bagel.transforms import to_rgb

from .rubric import JUDGE_THINK_PROMPT

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16}


@runtime_checkable
class JudgeBackend(Protocol):
    """What :func:`srum.judge.scoring.judge_image` needs from a judge model.

    ``name``: "self" or "qwen2_5_vl"; ``model_id``: checkpoint path or hub id (recorded in
    every reward record); ``think_system_prompt``: the system text used for think-mode
    questions when the config does not give one."""

    name: str
    model_id: str
    think_system_prompt: str

    def generate(self, images: list[list[PIL.Image.Image]], prompts: list[str], *, system: str | None,
                 max_new_tokens: int, do_sample: bool, temperature: float,
                 generator: torch.Generator | None) -> list[str]:
        """One reply per row. ``system``: a system turn (for the self judge: think mode with
        that system prompt; None = no system turn / no think mode)."""
        ...

    def choice_probabilities(self, images: list[list[PIL.Image.Image]], prompts: list[str],
                             choices: Sequence[str | Sequence[str]], *,
                             system: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(probs [B, C], mass [B])`` for answers ``choices`` (each one string or a list of
        spellings, counted by their first token), read at the first reply token."""
        ...


def _check_rows(images, prompts) -> None:
    if len(images) != len(prompts):
        raise ValueError(f"images: {len(images)} rows for {len(prompts)} prompts")
    if not prompts:
        raise ValueError("prompts: at least one row is needed")
    for row in images:
        if not isinstance(row, (list, tuple)) or not all(isinstance(im, PIL.Image.Image) for im in row):
            raise TypeError("images: expected one list of PIL images per prompt")


def _check_history(history, n: int) -> list:
    """Per-row earlier turns (``generate(history=...)``): None -> no earlier turns."""
    if history is None:
        return [()] * n
    if len(history) != n:
        raise ValueError(f"history: {len(history)} rows for {n} prompts")
    for row in history:
        if not all(isinstance(t, (list, tuple)) and len(t) == 2 and all(isinstance(x, str) for x in t) for t in row):
            raise TypeError("history: expected one list of (user text, assistant reply) pairs per prompt")
    return [tuple(tuple(t) for t in row) for row in history]


class SelfJudge:
    """The Bagel model judging its own images through ``Bagel.understand`` and
    ``Bagel.choice_probabilities``.

    Think mode is Bagel's: a system segment before the images asking for reasoning inside
    ``<think> ... </think>``; by default Bagel's own understanding think prompt
    (:data:`srum.models.bagel.prompts.UNDERSTANDING_THINK_PROMPT`)."""

    name = "self"
    think_system_prompt = UNDERSTANDING_THINK_PROMPT

    def __init__(self, model, model_id: str | None = None):
        self.model = model
        self.model_id = model_id or str(getattr(model, "checkpoint_dir", None) or "bagel")

    def generate(self, images, prompts, *, system=None, max_new_tokens=1024, do_sample=False, temperature=0.7,
                 generator=None) -> list[str]:
        _check_rows(images, prompts)
        answers = self.model.understand([list(r) for r in images], list(prompts), think=system is not None,
                                        max_new_tokens=max_new_tokens, do_sample=do_sample, temperature=temperature,
                                        generator=generator, think_system_prompt=system)
        return list(answers)

    def choice_probabilities(self, images, prompts, choices, *, system=None) -> tuple[torch.Tensor, torch.Tensor]:
        _check_rows(images, prompts)
        if system is not None:
            # Bagel.choice_probabilities builds its context without a system segment
            raise NotImplementedError("SelfJudge.choice_probabilities: a system turn is not supported")
        probs, mass = self.model.choice_probabilities([list(r) for r in images], list(prompts), choices)
        return probs.float().cpu(), mass.float().cpu()


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """"bfloat16"/"bf16"/"float16"/"fp16"/"float32"/"fp32", a torch dtype or None (keep)."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    try:
        return _DTYPES[str(dtype).lower()]
    except KeyError:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}") from None


class QwenVLJudge:
    """An external Qwen2.5-VL judge (``Qwen2_5_VLForConditionalGeneration`` + its processor).

    ``path_or_id``: a local directory in the published layout or a hub id (downloads follow
    the usual HF cache; ``HF_HUB_OFFLINE=1`` forbids them). ``dtype``: None keeps the
    checkpoint's ``torch_dtype``. ``device``: where the model runs (default: CUDA if
    available, else CPU); ignored when ``device_map`` (e.g. "auto") shards it.

    Questions are chat turns built with the processor's chat template: an optional system
    turn, then a user turn with the row's images followed by its text; the reply starts
    after the template's generation prompt (``<|im_start|>assistant\\n``). Batches are
    left-padded, so the last position of every row is the reply's first-token position.
    Decoding is plain greedy or plain temperature sampling: the checkpoint's own sampling
    defaults (the published files set top_k=1, top_p=0.001) are replaced, else a sampled
    retry would be as greedy as the first try."""

    name = "qwen2_5_vl"
    think_system_prompt = JUDGE_THINK_PROMPT

    def __init__(self, path_or_id: str | os.PathLike, dtype: str | torch.dtype | None = None,
                 device: str | torch.device | None = None, device_map: str | dict | None = None):
        from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

        self.model_id = str(path_or_id)
        local = Path(path_or_id).expanduser().is_dir()
        if not local and (self.model_id.startswith(("/", ".", "~")) or Path(path_or_id).exists()):
            raise FileNotFoundError(f"{self.model_id}: Qwen2.5-VL judge directory not found")
        if local:
            self.model_id = str(Path(path_or_id).expanduser())
        common = dict(trust_remote_code=False)
        if local:
            common["local_files_only"] = True
        torch_dtype = resolve_dtype(dtype)
        if device_map is None:
            # load straight onto the device: no full copy of a 72B judge in host RAM per process
            device = torch.device(device) if device is not None else \
                torch.device("cuda" if torch.cuda.is_available() else "cpu")
            if device.type == "cuda" and device.index is None:
                device = torch.device("cuda", torch.cuda.current_device())
        try:
            self.model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
                self.model_id, dtype=torch_dtype if torch_dtype is not None else "auto",
                device_map=device_map if device_map is not None else {"": str(device)}, **common).eval()
            self.processor = AutoProcessor.from_pretrained(self.model_id, **common)
        except OSError as err:
            offline = os.environ.get("HF_HUB_OFFLINE") not in (None, "", "0")
            hint = (" (HF_HUB_OFFLINE is set: only local directories and cached ids load)"
                    if offline and not local else "")
            raise OSError(f"could not load the Qwen2.5-VL judge {self.model_id!r}{hint}: {err}") from err
        if getattr(self.processor, "image_processor", None) is None or not hasattr(self.processor, "tokenizer"):
            raise ValueError(f"{self.model_id}: no Qwen2.5-VL processor (preprocessor_config.json missing?); "
                             f"got {type(self.processor).__name__}")
        self.device = next(self.model.parameters()).device if device_map is None else \
            self.model.get_input_embeddings().weight.device
        self.tokenizer = self.processor.tokenizer
        self.tokenizer.padding_side = "left"
        gen = self.model.generation_config
        eos = gen.eos_token_id if gen.eos_token_id is not None else self.tokenizer.eos_token_id
        self._eos_ids = [eos] if isinstance(eos, int) else list(eos)
        pad = gen.pad_token_id if gen.pad_token_id is not None else self.tokenizer.pad_token_id
        self._pad_id = pad if pad is not None else self._eos_ids[0]

    # ------------------------------------------------------------ inputs
    def _chat_text(self, n_images: int, prompt: str, system: str | None, history=()) -> str:
        messages = []
        if system is not None:
            messages.append({"role": "system", "content": [{"type": "text", "text": system}]})
        turns = [*history, (prompt, None)]   # the images go with the first user turn
        for t, (user, reply) in enumerate(turns):
            content = [{"type": "image"} for _ in range(n_images if t == 0 else 0)] + [{"type": "text", "text": user}]
            messages.append({"role": "user", "content": content})
            if reply is not None:
                messages.append({"role": "assistant", "content": [{"type": "text", "text": reply}]})
        return self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def _inputs(self, images, prompts, system, history=None) -> dict:
        _check_rows(images, prompts)
        history = _check_history(history, len(prompts))
        texts = [self._chat_text(len(row), p, system, h) for row, p, h in zip(images, prompts, history)]
        flat = [to_rgb(im) for row in images for im in row]
        batch = self.processor(text=texts, images=flat or None, padding=True, return_tensors="pt")
        return {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in batch.items()}

    # ------------------------------------------------------------ API
    @torch.no_grad()
    def generate(self, images, prompts, *, system=None, max_new_tokens=1024, do_sample=False, temperature=0.7,
                 generator=None, history=None) -> list[str]:
        """``history``: per row, earlier ``(user text, assistant reply)`` turns of the same
        conversation (the row's images go with the first user turn); None: one turn."""
        from transformers import GenerationConfig

        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if do_sample and not temperature > 0:
            raise ValueError(f"temperature must be > 0 when sampling, got {temperature}")
        inputs = self._inputs(images, prompts, system, history)
        # every sampling knob is set explicitly: transformers fills unset (None) fields from
        # the checkpoint's generation_config.json
        config = GenerationConfig(max_new_tokens=max_new_tokens, eos_token_id=self._eos_ids, pad_token_id=self._pad_id,
                                  do_sample=bool(do_sample), temperature=float(temperature) if do_sample else 1.0,
                                  top_k=0 if do_sample else 50,  # 0 = off; 50 is what greedy expects unset
                                  top_p=1.0, min_p=None, typical_p=1.0, repetition_penalty=1.0)
        if do_sample and generator is not None:
            # transformers samples from the global RNG: seed it from the caller's generator
            # inside a fork, so results depend only on that generator and global state is kept
            seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
            cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
            with torch.random.fork_rng(devices=cuda):
                torch.manual_seed(seed)
                out = self.model.generate(**inputs, generation_config=config)
        else:
            out = self.model.generate(**inputs, generation_config=config)
        new = out[:, inputs["input_ids"].shape[1]:]
        return self.processor.batch_decode(new, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def _choice_token_groups(self, choices) -> list[list[int]]:
        groups, owner = [], {}
        for c, choice in enumerate(choices):
            spellings = [choice] if isinstance(choice, str) else list(choice)
            ids = sorted({self.tokenizer.encode(s, add_special_tokens=False)[0] for s in spellings if s})
            if not ids:
                raise ValueError(f"choices: answer {choice!r} has no tokens")
            for t in ids:
                if owner.setdefault(t, c) != c:
                    raise ValueError(f"choices: answers {choices[owner[t]]!r} and {choice!r} start with the same token")
            groups.append(ids)
        return groups

    @torch.no_grad()
    def choice_probabilities(self, images, prompts, choices, *, system=None) -> tuple[torch.Tensor, torch.Tensor]:
        groups = self._choice_token_groups(choices)
        inputs = self._inputs(images, prompts, system)
        logits = self.model(**inputs, use_cache=False).logits[:, -1, :].float()
        logp = torch.log_softmax(logits, dim=-1)
        per_choice = torch.stack([torch.logsumexp(logp[:, ids], dim=-1) for ids in groups], dim=-1)
        mass = per_choice.logsumexp(-1).exp()
        return torch.softmax(per_choice, dim=-1).cpu(), mass.cpu()


def load_judge_backend(cfg, model=None) -> JudgeBackend:
    """The backend a :class:`~srum.judge.scoring.JudgeConfig` asks for. ``model``: the
    loaded Bagel (required for ``backend="self"``)."""
    if cfg.backend == "self":
        if model is None:
            raise ValueError("judge backend 'self' needs the loaded Bagel model")
        return SelfJudge(model)
    if cfg.backend == "qwen2_5_vl":
        if not cfg.judge_model:
            raise ValueError("judge backend 'qwen2_5_vl' needs judge_model (a checkpoint directory or hub id)")
        from ..hub import local_or_snapshot   # a hub id: downloaded once per node, not once per rank
        return QwenVLJudge(local_or_snapshot(cfg.judge_model), dtype=cfg.dtype, device=cfg.device,
                           device_map=cfg.device_map)
    if cfg.backend == "openai":
        from .openai_backend import OpenAIJudge
        return OpenAIJudge(cfg.server, model=cfg.judge_model)
    raise ValueError(f"unknown judge backend {cfg.backend!r}; expected 'self', 'qwen2_5_vl' or 'openai'")
