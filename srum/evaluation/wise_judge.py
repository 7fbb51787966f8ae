# SPDX-License-Identifier: Apache-2.0
"""The WISE judge: its three-criterion rubric, the reading of its answers, and WiScore.

The judge sees one image, the prompt and the prompt's explanation (what the prompt means:
the knowledge-based answer the image should show), and gives three scores of 0, 1 or 2:
*consistency* (the image shows what the prompt means), *realism* and *aesthetic quality*.
These are the original WISE protocol's criteria (arXiv 2503.07265, ``WISE_legacy`` in
PKU-YuanGroup/WISE); :data:`WISE_QUESTION` is our wording of them, and
``judge.question_template`` takes another text (with ``{prompt}`` and ``{explanation}``).

Per image, WISE's formula::

    WiScore = (0.7 * consistency + 0.2 * realism + 0.1 * aesthetic_quality) / 2   in [0, 1]

:func:`parse_wise_scores` reads ``Consistency: 2`` / ``Realism: 1`` / ``Aesthetic Quality: 0``
lines (markdown emphasis, ``(0-2)`` after the name and ``2/2`` are fine), a JSON object
with those keys, or an answer of exactly three bare numbers (in that order, as the
upstream script also accepts). A value must be 0, 1 or 2: 1.5, 3 or 8/10 do not parse,
and a criterion given twice with two values is ambiguous and does not parse either
(WISE's own regex would take the first digit it sees). An answer that does not parse is
re-asked ``retries`` times with sampling; then the image is ``status: "failed"``: counted,
never averaged in (upstream skips such images as well).
"""
from __future__ import annotations

import math
import re
from typing import Sequence

from srum.judge.parse import ParseError, brace_blocks, load_lenient, strip_reasoning

from .reasonbench_judge import judge_turn

CRITERIA = ("consistency", "realism", "aesthetic_quality")
CRITERION_WEIGHTS = {"consistency": 0.7, "realism": 0.2, "aesthetic_quality": 0.1}   # WISE's WiScore weights
MAX_LEVEL = 2   # each criterion is scored 0, 1 or 2; WiScore divides by it

WISE_QUESTION = (
    "You are checking an image generated from a text prompt that tests world knowledge.\n"
    'Prompt: "{prompt}"\n'
    'What the prompt refers to (the image should show this): "{explanation}"\n'
    "Give the image three scores, each 0, 1 or 2. Be strict: a 2 is for images without any flaw in that "
    "respect, and when you hesitate between two scores, give the lower one.\n"
    "Consistency: does the image show what the prompt refers to, completely and correctly?\n"
    "  0: the key content is missing, wrong, or contradicts the prompt;\n"
    "  1: partly right: some elements are missing or inaccurate, or the intended meaning is only partly shown;\n"
    "  2: every element of the prompt and its meaning is shown correctly and unambiguously.\n"
    "Realism: how believable is the image as a photograph of the real world?\n"
    "  0: clearly artificial, or physically impossible;\n"
    "  1: mostly believable, with noticeable unrealistic details;\n"
    "  2: could pass for a real photograph: light, materials, physics and space are all right.\n"
    "Aesthetic Quality: composition, colour harmony and visual appeal.\n"
    "  0: poor composition, unappealing;\n"
    "  1: acceptable and pleasant, but ordinary;\n"
    "  2: exceptional, striking artistic quality.\n"
    "Answer with exactly these three lines and nothing else:\n"
    "Consistency: <0, 1 or 2>\n"
    "Realism: <0, 1 or 2>\n"
    "Aesthetic Quality: <0, 1 or 2>"
)


def wiscore(consistency: float, realism: float, aesthetic_quality: float) -> float:
    """WISE's per-image score, in [0, 1] (module docstring). Computed in tenths, (7c + 2r + a) / 20:
    the same number, but exact for whole levels (0.7 * 2 + 0.2 * 2 + 0.1 * 2 is 1.9999999999999998)."""
    tenths = {c: round(10 * w) for c, w in CRITERION_WEIGHTS.items()}
    return (tenths["consistency"] * consistency + tenths["realism"] * realism
            + tenths["aesthetic_quality"] * aesthetic_quality) / (10 * MAX_LEVEL)


def check_question_template(template: str | None) -> None:
    if template is None:
        return
    try:
        template.format(prompt="x", explanation="y")
    except (KeyError, IndexError, ValueError) as err:
        raise ValueError(f"question_template may only use {{prompt}} and {{explanation}} (double literal braces): "
                         f"{err!r}") from None
    if "{prompt}" not in template:
        raise ValueError("question_template must contain {prompt}")


def wise_question(prompt: str, explanation: str, template: str | None = None) -> str:
    return (template or WISE_QUESTION).format(prompt=prompt, explanation=explanation)


# ------------------------------------------------------------------ parsing
def _criterion(name: str) -> str | None:
    """A criterion name as the judge may write it -> ours (None: not a criterion)."""
    key = re.sub(r"[\s\-_*`#\"']+", " ", name).strip().lower()
    if key == "consistency":
        return "consistency"
    if key == "realism":
        return "realism"
    if key in ("aesthetic quality", "aesthetic", "aesthetics", "aesthetic score"):
        return "aesthetic_quality"
    return None


def _level(value, name: str) -> int:
    """0, 1 or 2 (an integral float or numeric string, optionally written ``n/2``)."""
    if isinstance(value, bool) or value is None:
        raise ParseError(f"{name} is {value!r}, not a number")
    if isinstance(value, str):
        m = re.fullmatch(r"\s*([+-]?\d+(?:\.\d+)?)\s*(?:/\s*(\d+(?:\.\d+)?))?\s*\.?\s*", value)
        if not m:
            raise ParseError(f"{name} {value!r} is not a number")
        if m[2] is not None and float(m[2]) != MAX_LEVEL:
            raise ParseError(f"{name} {value.strip()} is on another scale; expected 0, 1 or 2")
        value = float(m[1])
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ParseError(f"{name} {value!r} is not a number")
    if float(value) not in (0.0, 1.0, 2.0):
        raise ParseError(f"{name} {value:g} is not 0, 1 or 2")
    return int(value)


_LINE = re.compile(r"^[ \t>*_`#-]*(?P<name>consistency|realism|aesthetics?(?:[ _]quality)?)[ \t*_`]*"
                   r"(?:\([^()\n]*\)[ \t*_`]*)?[:=][ \t*_`]*(?P<value>[^\n]*)$", re.IGNORECASE | re.MULTILINE)
_VALUE = re.compile(r"^([+-]?\d+(?:\.\d+)?(?:\s*/\s*\d+(?:\.\d+)?)?)(?!\d|\.\d)")
_BARE_LINE = re.compile(r"^\s*(\S+)\s*$")


def _store(found: dict, name: str, value: int) -> None:
    if name in found and found[name] != value:
        raise ParseError(f"{name} is given twice with different values ({found[name]} and {value})")
    found[name] = value


def _complete(found: dict, how: str) -> dict[str, int]:
    missing = [c for c in CRITERIA if c not in found]
    if missing:
        raise ParseError(f"{how}: no {', '.join(missing)}")
    return {c: found[c] for c in CRITERIA}


def parse_wise_scores(text: str) -> dict[str, int]:
    """``{"consistency", "realism", "aesthetic_quality"}`` (each 0, 1 or 2) from a judge
    answer (formats in the module docstring). Raises
    :class:`~srum.judge.parse.ParseError` saying why."""
    if not isinstance(text, str):
        raise ParseError(f"expected the answer as a string, got {type(text).__name__}")
    answer = strip_reasoning(text)
    if not answer.strip():
        raise ParseError("empty answer")
    for snippet in reversed(list(brace_blocks(answer))):   # a JSON object with the three keys
        obj = load_lenient(snippet)
        if not isinstance(obj, dict):
            continue
        found: dict[str, int] = {}
        for key, value in obj.items():
            name = _criterion(str(key))
            if name is not None:
                _store(found, name, _level(value, name))
        if found:
            return _complete(found, "JSON answer")
    found = {}
    for m in _LINE.finditer(answer):
        # a line whose value is not a number (the rubric echoed back: "Realism: how believable ...") is no score
        value = _VALUE.match(m["value"].strip().strip("*_`\"'").strip())
        if value is not None:
            name = _criterion(m["name"])
            _store(found, name, _level(value[1], name))
    if found:
        return _complete(found, "answer")
    bare = [m[1] for line in answer.strip().splitlines() if (m := _BARE_LINE.match(line))]
    if len(bare) == 3 and len(answer.strip().splitlines()) == 3:   # "2\n1\n0": the three scores in order
        return {c: _level(v, c) for c, v in zip(CRITERIA, bare)}
    shown = " ".join(answer.split())
    raise ParseError(f"no Consistency / Realism / Aesthetic Quality scores in the answer: {shown[:160]!r}")


# ------------------------------------------------------------------ asking
def score_wise_images(backend, images: Sequence, questions: Sequence[str], cfg, generators: Sequence) -> list[dict]:
    """Judge ``images[i]`` with ``questions[i]`` (greedy together, failures re-asked alone,
    sampled from ``generators[i]``). One result per image: ``status`` ("ok" / "failed"),
    the three criteria (None when failed), ``wiscore`` (0-1, None when failed) and
    ``attempts`` (every raw answer with its parse error)."""
    if not (len(images) == len(questions) == len(generators)):
        raise ValueError("images, questions and generators must have the same length")
    turn = judge_turn(backend, list(images), list(questions), None, lambda i, answer: parse_wise_scores(answer),
                      cfg, list(generators))
    results = []
    for parsed, attempts in turn:
        if parsed is None:
            results.append({"status": "failed", **{c: None for c in CRITERIA}, "wiscore": None, "attempts": attempts})
        else:
            results.append({"status": "ok", **parsed, "wiscore": wiscore(**parsed), "attempts": attempts})
    return results
