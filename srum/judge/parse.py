# SPDX-License-Identifier: Apache-2.0
"""Read a score, a reason and (for regions) a label out of a judge's free-text answer.

Models answer in many layouts even when asked for one JSON object. :func:`parse_judgment`
accepts, in this order of preference:

1. a JSON-like object with a score key. The *last* such object wins (a model that drafts
   an answer and then corrects it means the correction). Lenient: code fences and prose
   around it, single quotes, trailing commas, ``True/None``, unquoted keys, nested
   objects (``{"global": {"score": ...}}``), key variants (``score``, ``Score``,
   ``rating``, ``reward``, ``global_layout_score``, ``final score``, ...), numbers
   written as strings (``"0.6"``);
2. ``key: value`` lines (``Score: 0.6``, ``**Final score:** -0.4``, ``Rating = 0.5``,
   ``Score (from -1 to 1): 0.3``), the last score line winning, with ``Reason:`` and
   ``Identified Object:``/``Object:``/``Label:`` lines. A score line starts its line: a
   ``score: 0.9`` inside a reason's text never wins over it; a score field in running
   text ("... so I give it a score: 0.6") counts only when no line starts with one, and
   never inside a reason;
3. an answer that is nothing but a number.

Before that, the reasoning is removed: everything up to the last ``</think>``. An
``<think>`` that is never closed means the answer was cut off inside the reasoning: the
text before ``<think>`` is parsed (usually nothing, so :class:`ParseError`); numbers inside
unfinished reasoning are never taken for the answer. Chat special tokens (``<|im_end|>``)
are dropped.

Scale policy: scores are on [-1, 1]. A number outside is *clamped* and the judgment says
so (``clamped=True``, ``raw_score`` keeps the number). We never guess that an answer used
another scale: a number that *declares* one (``7/10``, ``8 out of 10``, ``70%``) is a
:class:`ParseError`, as are ranges (``0.5 to 0.9``), NaN and infinities, and non-numeric
scores. ``x/1`` is accepted as ``x``. A missing reason is ``""``, a missing label ``None``.
"""
from __future__ import annotations

import ast
import json
import math
import re
from dataclasses import dataclass
from typing import Any, Iterator, Literal


class ParseError(ValueError):
    """The answer holds no usable score; the message says why."""


@dataclass(frozen=True)
class ParsedJudgment:
    """``score`` in [-1, 1] (after clamping); ``raw_score`` the number as written;
    ``clamped`` whether they differ; ``source`` the layout it was read from
    ("json", "lines" or "number")."""

    score: float
    reason: str
    label: str | None
    clamped: bool = False
    raw_score: float | None = None
    source: str = "json"


_SCORE_KEYS = {
    "score", "rating", "reward", "global_layout_score", "global_layout_reward", "global_score", "layout_score",
    "local_score", "region_score", "final_score", "overall_score", "final_rating", "overall_rating",
}
_REASON_KEYS = {"reason", "reasoning", "explanation", "justification", "rationale", "comment"}
_LABEL_KEYS = {"object", "label", "identified_object", "object_name", "object_description", "description",
               "identified", "content"}

# A number: optional sign (ASCII, Unicode minus, en dash), digits with optional decimal
# point or comma, or a bare fraction. Never matches "inf"/"nan" (those are rejected).
_NUM = r"[+\-\u2212\u2013]?(?:\d+(?:[.,]\d+)?\.?|\.\d+)"
_WRAP = r"[\s*_`\"'\[(]*"  # markdown/quotes/brackets between a key and its value
_SCORE_NAME = (r"(?:(?:final|overall|global(?:[ _]layout)?|layout|local|region)[ _])?"
               r"(?:score|rating|reward)")
_SCORE_FIELD = (
    rf"(?<![A-Za-z])(?<!confidence )(?<!confidence_)[\"'*_`#]*{_SCORE_NAME}[\"'*_`]*\s*"  # key, not "confidence score"
    rf"(?:\([^()\n]*\)\s*)?[\"'*_`]*\s*[:=]{_WRAP}(?P<num>{_NUM})")                    # "(from -1 to 1)", ":" or "="
# A score field that starts its line (after indentation, a bullet or a list number): the
# answer's score line. "Reason: a higher score: 0.9 would need ..." mentions a score inside
# the reason text; such a mention never wins over a score line.
_SCORE_LINE = re.compile(rf"^[ \t]*(?:[-+>]+[ \t]*|\d+[.)][ \t]*)?{_SCORE_FIELD}", re.IGNORECASE | re.MULTILINE)
# A score field anywhere: used only when no line starts with one, and never inside a reason.
_SCORE_ANYWHERE = re.compile(_SCORE_FIELD, re.IGNORECASE)
# what may follow a score and change its meaning
_AFTER_RANGE = re.compile(rf"[ \t]*(?:to|-|\u2013|~|\.\.)[ \t]*{_NUM}(?![\d])", re.IGNORECASE)
_AFTER_PERCENT = re.compile(r"\s*%")
_AFTER_FRACTION = re.compile(rf"[ \t]*\(?[ \t]*(?:/|out\s+of)\s*(?P<den>{_NUM})", re.IGNORECASE)
_REASON_LINE = re.compile(r"(?<![A-Za-z])[\"'*_`#]*(?:reason|reasoning|explanation|justification|rationale)"
                          r"[\"'*_`]*\s*:[\s*_`]*(?P<text>.*)", re.IGNORECASE)
_LABEL_LINE = re.compile(r"(?<![A-Za-z])[\"'*_`#]*(?:identified[ _]object|object|label)[\"'*_`]*\s*:[\s*_`]*"
                         r"(?P<text>[^\n]*)", re.IGNORECASE)
# a line that starts another "Key: value" field (ends a multi-line reason)
_KEY_LINE_START = re.compile(r"^[ \t]*[\"'*_`#-]*[ \t]*[A-Za-z][A-Za-z _]{0,30}[\"'*_`]*[ \t]*(?:\([^()\n]*\)[ \t]*)?"
                             r"[\"'*_`]*[ \t]*[:=]", re.MULTILINE)
_SPECIAL_TOKEN = re.compile(r"<\|[^<>|]{1,40}\|>")
_THINK_OPEN = re.compile(r"<think>", re.IGNORECASE)
_THINK_CLOSE = re.compile(r"</think>", re.IGNORECASE)


# ------------------------------------------------------------------ entry point
def parse_judgment(text: str, kind: Literal["global", "local"] = "global") -> ParsedJudgment:
    """Parse one judge answer. ``kind`` "local" also looks for the region's label.

    Raises :class:`ParseError` when no usable score is found (see the module docstring)."""
    if kind not in ("global", "local"):
        raise ValueError(f"kind must be 'global' or 'local', got {kind!r}")
    if not isinstance(text, str):
        raise ParseError(f"expected the answer as a string, got {type(text).__name__}")
    answer = strip_reasoning(text)
    if not answer.strip():
        raise ParseError("empty answer")
    want_label = kind == "local"

    found = _from_json(answer, want_label)
    if found is not None:
        return found
    found = _from_lines(answer, want_label)
    if found is not None:
        return found
    bare = re.fullmatch(rf"{_WRAP}(?P<num>{_NUM})[\s*_`\"'\])]*\.?\s*", answer)
    if bare:
        score, raw, clamped = _checked_score(_read_number(bare["num"]), answer, bare.end("num"))
        return ParsedJudgment(score, "", None, clamped, raw, "number")
    raise ParseError(f"no score found in the answer: {_excerpt(answer)}")


def strip_reasoning(text: str) -> str:
    """The answer part of a reply: after the last ``</think>``; before an unclosed ``<think>``;
    special chat tokens removed. Raises :class:`ParseError` for an unclosed think with
    nothing before it (the reply was cut off while reasoning)."""
    text = _SPECIAL_TOKEN.sub(" ", text)
    closes = list(_THINK_CLOSE.finditer(text))
    if closes:
        return text[closes[-1].end():]
    opened = _THINK_OPEN.search(text)
    if opened:
        before = text[:opened.start()]
        if not before.strip():
            raise ParseError("the reply stops inside an unclosed <think> block (no answer after the reasoning)")
        return before
    return text


# ------------------------------------------------------------------ JSON layout
def _from_json(answer: str, want_label: bool) -> ParsedJudgment | None:
    """The last JSON-like object (outermost braces) that carries a score key."""
    for snippet in reversed(list(brace_blocks(answer))):
        obj = load_lenient(snippet)
        if not isinstance(obj, (dict, list)):
            continue
        holder = _find_score_holder(obj)
        if holder is None:
            continue
        key = next(k for k in holder if _norm_key(k) in _SCORE_KEYS)
        score, raw, clamped = _checked_score(holder[key], snippet, None)
        reason = _first_string(holder, _REASON_KEYS) or _first_string(obj, _REASON_KEYS) or ""
        label = (_first_string(holder, _LABEL_KEYS) or _first_string(obj, _LABEL_KEYS)) if want_label else None
        return ParsedJudgment(score, _clean(reason), _clean(label) or None if label else None, clamped, raw, "json")
    return None


def brace_blocks(text: str) -> Iterator[str]:
    """The balanced top-level ``{...}`` spans of ``text``, in order. Braces inside quoted
    strings do not count (an apostrophe between letters does not open a string); an
    unbalanced (truncated) span is skipped."""
    depth, start, quote, escaped = 0, -1, "", False
    for i, ch in enumerate(text):
        if quote:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == "\n" or (ch == quote and not (quote == "'" and _is_apostrophe(text, i))):
                quote = ""  # (a newline ends a runaway, unbalanced quote)
            continue
        if ch == '"' or (ch == "'" and depth > 0 and not _is_apostrophe(text, i)):
            if depth > 0:
                quote = ch
        elif ch == "{":
            if depth == 0:
                start = i
            depth += 1
        elif ch == "}" and depth > 0:
            depth -= 1
            if depth == 0:
                yield text[start:i + 1]


def _is_apostrophe(text: str, i: int) -> bool:
    """A ' between two letters (don't, cat's) is not a string delimiter."""
    return 0 < i < len(text) - 1 and text[i - 1].isalpha() and text[i + 1].isalpha()


def load_lenient(snippet: str) -> Any:
    """``snippet`` (one ``{...}`` span, e.g. from :func:`brace_blocks`) read as JSON, forgiving
    what models write: trailing commas, single-quoted strings, unquoted keys, Python's
    ``True``/``None`` or JSON's ``true``/``null``. Returns the value, or None when no
    reading works."""
    attempts = [snippet]
    no_trailing = re.sub(r",\s*([}\]])", r"\1", snippet)
    attempts.append(no_trailing)
    attempts.append(_requote(no_trailing))
    quoted_keys = re.sub(r"([{,]\s*)([A-Za-z_][A-Za-z0-9_ ]*?)\s*:", r'\1"\2":', no_trailing)
    attempts.append(quoted_keys)
    for candidate in attempts:
        try:
            return json.loads(candidate)
        except ValueError:
            pass
    for candidate in attempts:
        python = re.sub(r"\btrue\b", "True", re.sub(r"\bfalse\b", "False", re.sub(r"\bnull\b", "None", candidate)))
        try:
            return ast.literal_eval(python)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            pass
    return None


def _requote(snippet: str) -> str:
    """Single-quoted strings -> JSON double-quoted ones; an apostrophe between letters
    (``'the cat's tail'``) stays part of the string."""
    out, quote, i = [], "", 0
    while i < len(snippet):
        ch = snippet[i]
        if quote == '"':
            out.append(ch)
            if ch == "\\" and i + 1 < len(snippet):
                out.append(snippet[i + 1])
                i += 1
            elif ch == '"':
                quote = ""
        elif quote == "'":
            if ch == "'" and not _is_apostrophe(snippet, i):
                out.append('"')
                quote = ""
            else:
                out.append('\\"' if ch == '"' else ch)
        else:
            if ch in "\"'":
                quote = ch
                ch = '"'
            out.append(ch)
        i += 1
    return "".join(out)


def _norm_key(key: Any) -> str:
    return re.sub(r"[\s\-]+", "_", str(key).strip().strip("*_:`").lower())


def _find_score_holder(obj: Any, depth: int = 0) -> dict | None:
    """The dict that holds a score key: ``obj`` itself, else the last nested one."""
    if depth > 6:
        return None
    if isinstance(obj, dict):
        if any(_norm_key(k) in _SCORE_KEYS for k in obj):
            return obj
        children = list(obj.values())
    elif isinstance(obj, list):
        children = obj
    else:
        return None
    for child in reversed(children):
        found = _find_score_holder(child, depth + 1)
        if found is not None:
            return found
    return None


def _first_string(obj: Any, keys: set[str]) -> str | None:
    if isinstance(obj, dict):
        for k, v in obj.items():
            if _norm_key(k) in keys and isinstance(v, str):
                return v
    return None


# ------------------------------------------------------------------ line layout
def _reason_spans(answer: str) -> list[tuple[int, int]]:
    """(start, end) of every reason field's text: from after ``Reason:`` to the next
    ``Key:`` line (or the end)."""
    spans = []
    for r in _REASON_LINE.finditer(answer):
        nxt = _KEY_LINE_START.search(answer[r.start("text"):], pos=1)
        spans.append((r.start("text"), r.start("text") + nxt.start() if nxt else len(answer)))
    return spans


def _score_field(answer: str, reasons: list[tuple[int, int]]) -> re.Match | None:
    """The answer's score: the last line that starts with a score field; else the last
    score field outside every reason text."""
    lines = list(_SCORE_LINE.finditer(answer))
    if lines:
        return lines[-1]
    loose = [m for m in _SCORE_ANYWHERE.finditer(answer)
             if not any(start <= m.start() < end for start, end in reasons)]
    return loose[-1] if loose else None


def _from_lines(answer: str, want_label: bool) -> ParsedJudgment | None:
    reasons = _reason_spans(answer)
    last = _score_field(answer, reasons)
    if last is None:
        return None
    score, raw, clamped = _checked_score(_read_number(last["num"]), answer, last.end("num"))
    reason = ""
    if reasons:
        start, end = reasons[-1]
        # a "reason": "..." line of JSON too broken to load: drop the closing quote/brace
        reason = re.sub(r"[\"']?\s*[}\]]+\s*$", "", answer[start:end].strip())
    label = None
    if want_label:
        labels = [m for m in _LABEL_LINE.finditer(answer) if m["text"].strip()]
        if labels:
            label = _clean(labels[-1]["text"]) or None
    return ParsedJudgment(score, _clean(reason), label, clamped, raw, "lines")


# ------------------------------------------------------------------ numbers
def _read_number(token: str) -> float:
    token = token.replace("\u2212", "-").replace("\u2013", "-").rstrip(".")
    token = token.replace(",", ".")
    return float(token)


def _checked_score(value: Any, context: str, end: int | None) -> tuple[float, float, bool]:
    """Validate a score value -> (clamped score, raw value, clamped?). ``context`` and
    ``end`` (index after the number in ``context``; None for JSON values) let us see a
    scale or range written after the number."""
    if isinstance(value, bool) or value is None:
        raise ParseError(f"score is {value!r}, not a number")
    if isinstance(value, str):
        m = re.fullmatch(rf"{_WRAP}(?P<num>{_NUM})(?P<rest>.*)", value.strip(), re.DOTALL)
        if not m:
            raise ParseError(f"score {value!r} is not a number")
        _check_suffix(m["rest"], value)
        value = _read_number(m["num"])
    elif isinstance(value, (int, float)):
        value = float(value)
    else:
        raise ParseError(f"score {value!r} is not a number")
    if not math.isfinite(value):
        raise ParseError(f"score is {value}, not a finite number")
    if end is not None:
        _check_suffix(context[end:], context[max(0, end - 20):end + 20])
    clamped = min(1.0, max(-1.0, value))
    return clamped, value, clamped != value


def _check_suffix(rest: str, shown: str) -> None:
    """Reject a number followed by a range, a percent sign or a denominator other than 1."""
    if _AFTER_RANGE.match(rest):
        raise ParseError(f"the score is a range, not a number: {_excerpt(shown)}")
    if _AFTER_PERCENT.match(rest):
        raise ParseError(f"the score is a percentage; the scale is [-1, 1], not converted: {_excerpt(shown)}")
    frac = _AFTER_FRACTION.match(rest)
    if frac and _read_number(frac["den"]) != 1.0:
        raise ParseError(f"the score is on another scale ({frac.group(0).strip()}); the scale is [-1, 1], "
                         f"not converted: {_excerpt(shown)}")


def _clean(text: str | None) -> str:
    if not text:
        return ""
    text = " ".join(text.split())
    return text.strip(" *_`\"'").strip()


def _excerpt(text: str, n: int = 160) -> str:
    text = " ".join(text.split())
    return repr(text if len(text) <= n else text[:n] + "...")
