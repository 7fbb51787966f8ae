# SPDX-License-Identifier: Apache-2.0
"""What the judge is asked: the global and local rubrics and the discrete rating scale.

The rubric follows the paper's self-judgment (appendix Tables 6-7), in our own words:

* **global**: does the *arrangement* of the scene follow the prompt's spatial intent?
  Prompts without spatial instructions get a score from the neutral band.
* **local**: for one region: what is it, and how relevant and how well drawn is it?
  Strict: full marks only for a flawless, relevant object; severe artifacts land in the
  "bad" band.

Both use the same five bands on [-1, 1]: 1.0 | 0.5..0.9 | -0.4..0.4 (neutral, 0.0 fully
neutral) | -0.9..-0.5 | -1.0.

Two phrasings of each question:

* text mode asks for one JSON object ``{"score": ..., "reason": ...}`` (local: plus
  ``"object"``); :mod:`srum.judge.parse` reads it (and many other layouts).
* logits mode asks for a single digit on :data:`RATING_SCALE` (1..9). Single digits are
  single tokens in Qwen2 tokenizers (Bagel's and Qwen2.5-VL's split every digit), so the
  whole answer is decided at the first reply token and its probability can be read
  without generating.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RatingScale:
    """A discrete answer scale: ``tokens[i]`` (what the model writes) means ``values[i]`` in [-1, 1]."""

    tokens: tuple[str, ...]
    values: tuple[float, ...]

    def __post_init__(self):
        if len(self.tokens) != len(self.values) or len(self.tokens) < 2:
            raise ValueError("a rating scale needs >= 2 tokens and one value per token")
        if len(set(self.tokens)) != len(self.tokens):
            raise ValueError(f"rating scale tokens must be distinct, got {self.tokens}")
        if not all(-1.0 <= v <= 1.0 for v in self.values):
            raise ValueError(f"rating scale values must lie in [-1, 1], got {self.values}")

    @property
    def choices(self) -> list[str]:
        """The answers as passed to a backend's ``choice_probabilities``."""
        return list(self.tokens)

    def value(self, token: str) -> float:
        return self.values[self.tokens.index(token)]


# 1..9 -> -1..1 in steps of 0.25; 5 is exactly neutral. Each digit falls inside the
# rubric band it is described with: 9 perfect (1.0), 7-8 very good (0.5, 0.75),
# 4-6 neutral (-0.25..0.25), 2-3 bad (-0.75, -0.5), 1 very bad (-1.0).
RATING_SCALE = RatingScale(tokens=tuple(str(d) for d in range(1, 10)),
                           values=tuple((d - 5) / 4 for d in range(1, 10)))


@dataclass(frozen=True)
class Band:
    """One rubric band: its range on [-1, 1], the digits that stand for it on the 1..9
    scale, and what it means."""

    scores: str
    digits: str
    meaning: str


GLOBAL_BANDS = (
    Band("1.0", "9", "the arrangement is exactly what the prompt describes"),
    Band("0.5 to 0.9", "7-8", "the arrangement is mostly right, with small deviations"),
    Band("-0.4 to 0.4", "4-6", "neutral: the prompt gives no spatial instruction (for example \"a photo of a "
         "red car\"), or the layout is generic; 0.0 (digit 5) is fully neutral"),
    Band("-0.9 to -0.5", "2-3", "the arrangement is wrong or contradicts the prompt, for example two objects "
         "are swapped or one that should be on top is underneath"),
    Band("-1.0", "1", "the arrangement is the opposite of what the prompt asks for"),
)

LOCAL_BANDS = (
    Band("1.0", "9", "exactly what the prompt asks for, drawn without any visible flaw"),
    Band("0.5 to 0.9", "7-8", "relevant and well drawn with minor flaws, or a well-made secondary element"),
    Band("-0.4 to 0.4", "4-6", "neutral: partly relevant, of mixed quality, or harmless background the prompt "
         "does not mention; 0.0 (digit 5) is fully neutral"),
    Band("-0.9 to -0.5", "2-3", "bad: an irrelevant, distracting element, or a relevant object with severe "
         "artifacts (distorted or melted shapes, merged or extra parts, smeared texture) or the wrong "
         "colour, shape, material or count"),
    Band("-1.0", "1", "the region works against the prompt: it shows what the prompt rules out or ruins the "
         "main subject"),
)

_GLOBAL_TASK = (
    "You are grading the layout of a generated image against the text prompt it was made from.\n\n"
    "Prompt: \"{prompt}\"\n\n"
    "Judge only the composition: where the things the prompt names are placed and how they relate in "
    "space (left or right of, above or below, in front of or behind, inside, next to, hidden by), and "
    "their relative sizes. Ignore rendering quality and small details.\n\n"
)

_LOCAL_TASK = (
    "You are grading one region of a generated image against the text prompt the image was made from.\n\n"
    "Prompt: \"{prompt}\"\n"
    "Region: {region}.\n\n"
    "Decide what the region mainly shows. Then rate it strictly, combining two things: how relevant "
    "its content is to the prompt, and how well it is drawn (the shape, colour, material and count the "
    "prompt asks for; no distortions or artifacts). Give the top mark only when the region is relevant "
    "and flawless beyond doubt.\n\n"
)

_TEXT_FORMAT_GLOBAL = (
    "Reply with one JSON object and nothing after it:\n"
    "{{\"score\": <a number from -1.0 to 1.0>, \"reason\": \"<one or two sentences>\"}}\n\n"
    "Examples:\n"
    "Prompt \"a lamp above a sofa\", the lamp stands on the floor beside the sofa:\n"
    "{{\"score\": -0.6, \"reason\": \"The lamp is next to the sofa instead of above it.\"}}\n"
    "Prompt \"a bowl of oranges\" (no spatial instruction), a bowl centred on a table:\n"
    "{{\"score\": 0.1, \"reason\": \"The prompt sets no arrangement and the centred bowl is a generic layout.\"}}"
)

_TEXT_FORMAT_LOCAL = (
    "Reply with one JSON object and nothing after it:\n"
    "{{\"object\": \"<what the region shows>\", \"score\": <a number from -1.0 to 1.0>, "
    "\"reason\": \"<one sentence>\"}}\n\n"
    "Examples:\n"
    "{{\"object\": \"a blue ceramic cup\", \"score\": 0.8, \"reason\": \"The cup the prompt asks for, cleanly "
    "drawn, with a slightly bent handle.\"}}\n"
    "{{\"object\": \"a wooden floor\", \"score\": 0.0, \"reason\": \"Plain background the prompt does not "
    "mention; harmless.\"}}\n"
    "{{\"object\": \"a dog with five legs\", \"score\": -0.8, \"reason\": \"The requested dog is badly "
    "deformed.\"}}"
)

_DIGIT_FORMAT = "Answer with a single digit from 1 to 9 and nothing else."

# The compact wording (``judge.wording: compact``, logits mode only): the same questions in
# a few words instead of 500-700 tokens. For a small model trained on its own judge rows (the
# miniature world), where the rubric's fixed text would take most of every training pack while
# the answer is one digit; the meaning of the digits is then learnt from the training answers.
_COMPACT_GLOBAL = 'Prompt: "{prompt}".\nRate the layout from 1 to 9.'
_COMPACT_LOCAL = 'Prompt: "{prompt}".\nRegion: {region}.\nRate the region from 1 to 9.'
WORDINGS = ("rubric", "compact")


def _bands_as_scores(bands: tuple[Band, ...]) -> str:
    return "Scale from -1.0 to 1.0:\n" + "".join(f"- {b.scores}: {b.meaning}.\n" for b in bands) + "\n"


def _bands_as_digits(bands: tuple[Band, ...]) -> str:
    return "Rating from 1 to 9:\n" + "".join(f"- {b.digits}: {b.meaning}.\n" for b in bands) + "\n"


def _quote(text: str) -> str:
    # the prompt is shown inside double quotes; keep it on one line and unambiguous
    return " ".join(str(text).split()).replace('"', "'")


def _check_wording(mode: str, wording: str) -> None:
    if wording not in WORDINGS:
        raise ValueError(f"wording must be one of {list(WORDINGS)}, got {wording!r}")
    if wording == "compact" and mode != "logits":
        raise ValueError(f"the compact wording asks for a digit: it needs mode 'logits', got {mode!r}")


def global_question(prompt: str, mode: str, wording: str = "rubric") -> str:
    """The global layout question for a text prompt; ``mode`` is "text" or "logits";
    ``wording`` "rubric" (the full rubric) or "compact" (logits mode only)."""
    _check_wording(mode, wording)
    if wording == "compact":
        return _COMPACT_GLOBAL.format(prompt=_quote(prompt))
    task = _GLOBAL_TASK.format(prompt=_quote(prompt))
    if mode == "text":
        return task + _bands_as_scores(GLOBAL_BANDS) + _TEXT_FORMAT_GLOBAL.format()
    if mode == "logits":
        return task + _bands_as_digits(GLOBAL_BANDS) + _DIGIT_FORMAT
    raise ValueError(f"mode must be 'text' or 'logits', got {mode!r}")


def local_question(prompt: str, region_phrase: str, mode: str, wording: str = "rubric") -> str:
    """The local question about one region, named by ``region_phrase`` (from
    :func:`srum.regions.show_region`, e.g. "the area inside the red rectangle");
    ``wording`` as for :func:`global_question`."""
    _check_wording(mode, wording)
    if wording == "compact":
        return _COMPACT_LOCAL.format(prompt=_quote(prompt), region=region_phrase)
    task = _LOCAL_TASK.format(prompt=_quote(prompt), region=region_phrase)
    if mode == "text":
        return task + _bands_as_scores(LOCAL_BANDS) + _TEXT_FORMAT_LOCAL.format()
    if mode == "logits":
        return task + _bands_as_digits(LOCAL_BANDS) + _DIGIT_FORMAT
    raise ValueError(f"mode must be 'text' or 'logits', got {mode!r}")


# System turn that asks an external judge (which has no think mode of its own) to reason
# before answering. The self judge uses Bagel's own think prompt by default.
JUDGE_THINK_PROMPT = (
    "Think about the question step by step before answering. Write your reasoning between <think> and "
    "</think>, then write the final answer after the closing tag, in exactly the requested format."
)
