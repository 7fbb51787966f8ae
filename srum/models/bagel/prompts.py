# SPDX-License-Identifier: Apache-2.0
"""System prompts that switch Bagel into "think" mode.

They play the reference inferencer's role: one text segment placed before everything
else in the context, asking the model to reason inside ``<think> ... </think>`` first.

The wording here is ours, a paraphrase. BAGEL-7B-MoT was trained with its own wording,
published in the Bagel repository's ``inferencer.py`` (``GEN_THINK_SYSTEM_PROMPT`` for
generation, ``VLM_THINK_SYSTEM_PROMPT`` for understanding; SRUM's ``inferencer.py`` has
the same two). Think-mode results (candidate images and their chains of thought, the CoT
evaluation, think-mode self-judgment) depend on the wording, so to reproduce published
numbers give the trained text: ``think_system_prompt=`` on the inference calls, or the
``think_system_prompt`` / ``think_system_prompt_file`` fields of the generate, eval and
judge configs (and the pipeline's ``think_prompts``). A run that uses our wording on a
model of the published checkpoint's size logs a warning once per kind (generation,
understanding) and process.
"""
from __future__ import annotations

import logging
from pathlib import Path

from ...config import ConfigError

__all__ = ["GENERATION_THINK_PROMPT", "UNDERSTANDING_THINK_PROMPT", "read_think_prompt",
           "warn_if_builtin_think_prompt"]

GENERATION_THINK_PROMPT = (
    "Plan the picture before drawing it. Write the plan between <think> and </think>: "
    "the objects, their attributes, how many there are and where each one goes. "
    "Then generate the image."
)

UNDERSTANDING_THINK_PROMPT = (
    "Reason about the question before answering. Write the reasoning between <think> and </think>, "
    "then give the final answer after the closing tag."
)

_BUILT_IN = {GENERATION_THINK_PROMPT: "generation", UNDERSTANDING_THINK_PROMPT: "understanding"}
# The published BAGEL-7B-MoT's language model (Qwen2-7B): models of this size were trained
# (or fine-tuned from one trained) with the published think wording.
_PUBLISHED_LLM = {"hidden_size": 3584, "num_hidden_layers": 28}
_warned: set[str] = set()
log = logging.getLogger("srum.think_prompt")


def read_think_prompt(text: str | None, path: str | None, where: str) -> str | None:
    """The think system prompt a config asks for: ``text``, or the contents of the file
    ``path`` (one trailing newline removed), or None (the built-in wording)."""
    if text is not None and path is not None:
        raise ConfigError(f"{where}: give think_system_prompt or think_system_prompt_file, not both")
    if path is None:
        if text is not None and not text.strip():
            raise ConfigError(f"{where}: think_system_prompt is empty")
        return text
    try:
        content = Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"{where}: cannot read think_system_prompt_file {path}: {err}") from None
    content = content[:-1] if content.endswith("\n") else content
    if not content.strip():
        raise ConfigError(f"{where}: think_system_prompt_file {path} is empty")
    return content


def _published_size(config) -> bool:
    llm = getattr(config, "llm", None)
    return llm is not None and all(getattr(llm, k, None) == v for k, v in _PUBLISHED_LLM.items())


def warn_if_builtin_think_prompt(config, system: str | None) -> bool:
    """Log once per kind and process when think mode runs with our built-in wording on a
    model of the published checkpoint's size (``config``: its ``BagelConfig``). Returns
    whether it warned now."""
    kind = _BUILT_IN.get(system) if system is not None else None
    if kind is None or kind in _warned or not _published_size(config):
        return False
    _warned.add(kind)
    log.warning("think mode (%s) runs with srum's own system prompt, not the wording BAGEL-7B-MoT was trained "
                "with; results depend on it. Give the trained text (the Bagel repository's inferencer.py, "
                "%s) as think_system_prompt / think_system_prompt_file.", kind,
                "GEN_THINK_SYSTEM_PROMPT" if kind == "generation" else "VLM_THINK_SYSTEM_PROMPT")
    return True
