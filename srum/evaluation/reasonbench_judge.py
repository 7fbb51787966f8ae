# SPDX-License-Identifier: Apache-2.0
"""The T2I-ReasonBench judge conversation and the reading of its answers.

Per image (the benchmark's protocol, our wording): turn 1 asks for a description
(:data:`DESCRIBE_QUESTION`); then each question-criterion section is asked as a second
turn after that description (:data:`SECTION_QUESTION`), independently of the other
sections. Every call is greedy and batched over images; an answer that does not parse,
or a call that raised for its questions, is re-asked alone up to ``retries`` times,
sampled from the image's own generator (so reruns give the same rows). An image whose
description or any section stays without a valid answer is ``status: "failed"``.

:func:`parse_section_scores` reads ``{"reason": ..., "score": [s1, s2, ...]}``: the last
JSON-like object with a ``score`` (or ``scores``) list (or a ``{"q1": s1, ...}`` object);
values are numbers or numeric strings in [0, 1]; the list must have one score per
question (a shorter or longer list cannot be matched to the questions, so it does not
parse: the official script would average whatever it got).
"""
from __future__ import annotations

import json
import math
import re
from typing import Any, Sequence

from srum.judge.errors import JudgeRequestError, raise_if_fatal
from srum.judge.parse import ParseError, brace_blocks, load_lenient, strip_reasoning

from .scoring import BACKEND_ERRORS

DESCRIBE_QUESTION = "Describe this image."
SECTION_QUESTION = (
    "Using the image and the description you just gave, answer the questions q1, q2, ... below.\n"
    "Score each question 1, 0.5 or 0 following its scoring criterion (c1 for q1, c2 for q2, and so on).\n"
    "Questions and criteria: {criteria}\n"
    "Look at the image carefully for every question before you answer. Reply in JSON: "
    '{{"reason": "<your reasoning for each question>", "score": [<score of q1>, <score of q2>, ...]}}'
)


def section_question(section: dict) -> str:
    return SECTION_QUESTION.format(criteria=json.dumps(section, ensure_ascii=False))


_QUESTION_KEY = re.compile(r"q(\d+)$", re.IGNORECASE)


def question_keys(section) -> list[str]:
    """The question keys of a section in their numeric order: ``q1``, ``q2``, ... (the
    benchmark's files also write ``aq1``, ``sci_q1``, ``det_q1``; criteria ``c1`` ... may
    be text or an object of score levels). Raises ``ValueError`` for a section without any."""
    if not isinstance(section, dict):
        raise ValueError("expected an object of questions and criteria (q1, c1, ...)")
    keys = sorted((int(m[1]), k) for k in section if isinstance(k, str) and (m := _QUESTION_KEY.search(k)))
    if not keys:
        raise ValueError(f"no questions (q1, c1, ...) among the keys {list(section)}")
    return [k for _, k in keys]


def num_questions(section: dict) -> int:
    return len(question_keys(section))


# ------------------------------------------------------------------ parsing
def _value(v: Any) -> float:
    if isinstance(v, bool) or v is None:
        raise ParseError(f"score {v!r} is not a number")
    if isinstance(v, str):
        try:
            v = float(v.strip())
        except ValueError:
            raise ParseError(f"score {v!r} is not a number") from None
    if not isinstance(v, (int, float)):
        raise ParseError(f"score {v!r} is not a number")
    v = float(v)
    if not math.isfinite(v) or not 0.0 <= v <= 1.0:
        raise ParseError(f"score {v:g} is outside 0-1")
    return v


def parse_section_scores(text: str, n: int) -> tuple[list[float], str]:
    """``(scores, reason)`` from a section answer with ``n`` questions (module docstring).
    Raises :class:`~srum.judge.parse.ParseError` saying why."""
    if not isinstance(text, str):
        raise ParseError(f"expected the answer as a string, got {type(text).__name__}")
    answer = strip_reasoning(text)
    if not answer.strip():
        raise ParseError("empty answer")
    for snippet in reversed(list(brace_blocks(answer))):
        obj = load_lenient(snippet)
        if not isinstance(obj, dict):
            continue
        key = next((k for k in obj if str(k).strip().lower() in ("score", "scores")), None)
        if key is None:
            continue
        raw = obj[key]
        if isinstance(raw, dict):   # {"q1": s1, ...}: in question order
            numbered = sorted((int(m[1]), v) for k, v in raw.items() if (m := _QUESTION_KEY.search(str(k).strip())))
            if len(numbered) != len(raw):
                raise ParseError(f"score object has keys {list(raw)}, expected q1..q{n}")
            raw = [v for _, v in numbered]
        if not isinstance(raw, list):
            raise ParseError(f"score is {raw!r}, not a list")
        if len(raw) != n:
            raise ParseError(f"{len(raw)} scores for {n} questions")
        reason = obj.get("reason", "")
        if isinstance(reason, list):
            reason = " ".join(str(r) for r in reason)
        return [_value(v) for v in raw], " ".join(str(reason).split())
    shown = " ".join(answer.split())
    raise ParseError(f"no JSON object with a score list in the answer: {shown[:160]!r}")


# ------------------------------------------------------------------ asking
def _ask(backend, images, questions, history, cfg, generator):
    sampled = generator is not None
    try:
        return backend.generate([[im] for im in images], list(questions), system=None,
                                max_new_tokens=cfg.max_new_tokens, do_sample=sampled,
                                temperature=cfg.retry_temperature if sampled else 1.0, generator=generator,
                                history=history)
    except JudgeRequestError as err:
        return [a if a is not None else JudgeRequestError([None], [e]) for a, e in zip(err.answers, err.errors)]
    except BACKEND_ERRORS as err:
        raise_if_fatal(err, f"judge {getattr(backend, 'model_id', '?')}")
        return [err] * len(images)


def judge_turn(backend, images, questions, history, parse, cfg, generators) -> list[tuple[Any, list[dict]]]:
    """One turn for every image: greedy together, failures re-asked alone (sampled).
    ``parse(i, answer)`` reads image i's answer or raises ``ParseError``; ``history``: the
    earlier turns of each image's conversation (None: a fresh one). Returns ``(parsed value
    or None, attempts)`` per image. Shared by the T2I-ReasonBench and WISE judges."""
    greedy = _ask(backend, images, questions, history, cfg, None)
    out = []
    for i in range(len(images)):
        attempts, parsed = [], None
        for attempt in range(cfg.retries + 1):
            answer = greedy[i] if attempt == 0 else _ask(backend, [images[i]], [questions[i]],
                                                         None if history is None else [history[i]], cfg,
                                                         generators[i])[0]
            if isinstance(answer, BaseException):
                attempts.append({"answer": None, "sampled": attempt > 0,
                                 "error": f"judge raised {type(answer).__name__}: {answer}"})
                continue
            try:
                parsed = parse(i, answer)
                attempts.append({"answer": answer, "sampled": attempt > 0, "error": None})
                break
            except ParseError as err:
                attempts.append({"answer": answer, "sampled": attempt > 0, "error": str(err)})
        out.append((parsed, attempts))
    return out


def score_reasonbench_images(backend, images: Sequence, sections: Sequence[dict[str, dict]], cfg,
                             generators: Sequence) -> list[dict]:
    """Judge ``images[i]`` against ``sections[i]`` (``{section name: {"q1", "c1", ...}}``,
    asked in order). One result per image: ``status`` ("ok" / "failed"), ``description``,
    ``sections`` (``{name: {"scores", "mean", "reason"}}``, those that parsed),
    ``explanation`` (the first section's reason) and ``attempts`` (``{"describe": [...],
    name: [...]}``: every raw answer with its parse error)."""
    if not (len(images) == len(sections) == len(generators)):
        raise ValueError("images, sections and generators must have the same length")

    def describe(i, answer):
        if not answer.strip():
            raise ParseError("empty description")
        return answer.strip()

    described = judge_turn(backend, images, [DESCRIBE_QUESTION] * len(images), None, describe, cfg, generators)
    results = [{"status": "ok", "description": d, "sections": {}, "explanation": "", "attempts": {"describe": a}}
               for d, a in described]
    for i, (d, _) in enumerate(described):
        if d is None:
            results[i]["status"] = "failed"
    depth = max((len(s) for s in sections), default=0)
    for s in range(depth):
        todo = [i for i in range(len(images)) if results[i]["status"] == "ok" and s < len(sections[i])]
        if not todo:
            continue
        names = [list(sections[i])[s] for i in todo]
        asked = [sections[i][name] for i, name in zip(todo, names)]
        counts = [num_questions(sec) for sec in asked]
        history = [[(DESCRIBE_QUESTION, results[i]["description"])] for i in todo]
        turn = judge_turn(backend, [images[i] for i in todo], [section_question(sec) for sec in asked], history,
                     lambda j, answer: parse_section_scores(answer, counts[j]), cfg, [generators[i] for i in todo])
        for i, name, (parsed, attempts) in zip(todo, names, turn):
            results[i]["attempts"][name] = attempts
            if parsed is None:
                results[i]["status"] = "failed"
                continue
            scores, reason = parsed
            results[i]["sections"][name] = {"scores": scores, "mean": sum(scores) / len(scores), "reason": reason}
            if s == 0:
                results[i]["explanation"] = reason
    return results
