# SPDX-License-Identifier: Apache-2.0
"""Prompt files -> a list of :class:`PromptItem` with stable, unique ids.

Three formats, chosen by extension:

* ``.json``: the reference's array of ``{"Question", "Category", "Question_id"}``
  (``prompt`` / ``category`` / ``id`` accepted too). The id is ``str(Question_id)``.
  WISE's files (``{"Prompt", "Explanation", "Category", "Subcategory", "prompt_id"}``)
  read the same way: id ``str(prompt_id)``, category as WISE spells it ("Cultural
  knowledge", "time", "Space", "Biology", "Physical Knowledge", "Chemistry"), so a WISE
  domain's file is a training prompt set (the SRUM paper's WISE protocol).
* ``.txt``: T2I-CompBench, one prompt per line. The category comes from the file name
  (``color_val.txt`` -> ``color``, ``complex_val_action.txt`` -> ``complex_action``,
  ``non_spatial_train.txt`` -> ``non-spatial`` as in the reference JSON), and the id is
  ``<file stem>_<line index, 5 digits>`` counted over non-empty lines from 0
  (``color_val_00012``), so ids never collide across files.
* ``.jsonl``: one object per line with ``prompt`` (or ``Question``), ``id`` (or
  ``prompt_id`` / ``Question_id``) and optionally ``category`` (or ``Category``).

Bad rows (no prompt text, no id, an id that is not filesystem-safe, a duplicate id) are
reported as ``file:line: reason`` and skipped; the rest is kept.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_SPLIT_WORDS = ("train", "val", "test")


@dataclass(frozen=True)
class PromptItem:
    id: str
    prompt: str
    category: str | None
    source: str          # "file:line" where the prompt was read, for error messages

    def to_dict(self) -> dict:
        return {"id": self.id, "prompt": self.prompt, "category": self.category}


class PromptFileError(ValueError):
    """A prompt file that cannot be read at all (missing, wrong top-level shape)."""


def category_from_filename(path: str | os.PathLike) -> str | None:
    """T2I-CompBench file name -> category (None when the name has no split word)."""
    parts = Path(path).stem.split("_")
    for i, word in enumerate(parts):
        if word in _SPLIT_WORDS and i > 0:
            category = "_".join(parts[:i])
            subset = parts[i + 1:]
            if category == "complex" and subset and subset[0] in ("action", "spatial", "spatialaction"):
                category = f"complex_{subset[0]}"
            return "non-spatial" if category == "non_spatial" else category
    return None


def _first(obj: dict, keys: Sequence[str]):
    for k in keys:
        if k in obj and obj[k] is not None:
            return obj[k]
    return None


def _item_from_object(obj, where: str, default_category: str | None) -> PromptItem:
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: expected an object, got {type(obj).__name__}")
    prompt = _first(obj, ("prompt", "Question", "Prompt", "original_prompt"))   # "Prompt": WISE's files
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(f"{where}: no prompt text (expected a non-empty 'prompt', 'Question' or 'Prompt')")
    pid = _first(obj, ("id", "prompt_id", "Question_id"))
    if pid is None or isinstance(pid, bool) or not isinstance(pid, (str, int)):
        raise ValueError(f"{where}: prompt has no id (expected 'id', 'prompt_id' or 'Question_id')")
    category = _first(obj, ("category", "Category"))
    if category is not None and not isinstance(category, str):
        # str() of a number, list or object would invent a category nobody wrote
        raise ValueError(f"{where}: category must be a string, got {type(category).__name__} {category!r}")
    return PromptItem(str(pid), prompt.strip(), category if category is not None else default_category, where)


def _decode_lines(path: Path, errors: list[str]) -> list[tuple[int, str | None]]:
    """The file's lines with their numbers. A line that is not valid UTF-8 is reported
    (``file:line: ...``) and comes back as None, instead of the whole file being refused."""
    data = path.read_bytes()
    try:
        return list(enumerate(data.decode("utf-8").splitlines(), 1))
    except UnicodeDecodeError:
        pass
    lines: list[tuple[int, str | None]] = []
    for n, raw in enumerate(data.splitlines(), 1):
        try:
            lines.append((n, raw.decode("utf-8")))
        except UnicodeDecodeError as err:
            errors.append(f"{path}:{n}: not valid UTF-8 ({err.reason} at byte {err.start} of the line)")
            lines.append((n, None))
    return lines


def _json_text(path: Path) -> str:
    """A whole .json file as text; invalid UTF-8 names the line it is on."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[:err.start].count(b"\n") + 1
        raise PromptFileError(f"{path}:{line}: not valid UTF-8 ({err.reason}); the file cannot be read") from None


def _read_one(path: Path, errors: list[str]) -> list[PromptItem]:
    if not path.is_file():
        raise FileNotFoundError(f"prompt file not found: {path}")
    suffix = path.suffix.lower()
    items: list[PromptItem] = []
    if suffix == ".json":
        try:
            data = json.loads(_json_text(path))
        except json.JSONDecodeError as err:
            raise PromptFileError(f"{path}:{err.lineno}: not valid JSON ({err.msg})") from None
        if not isinstance(data, list):
            raise PromptFileError(f"{path}: expected a JSON array of prompt objects")
        for i, obj in enumerate(data):
            try:
                items.append(_item_from_object(obj, f"{path}[{i}]", None))
            except ValueError as err:
                errors.append(str(err))
    elif suffix == ".jsonl":
        for n, line in _decode_lines(path, errors):
            if line is None or not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                errors.append(f"{path}:{n}: not valid JSON ({err.msg})")
                continue
            try:
                items.append(_item_from_object(obj, f"{path}:{n}", None))
            except ValueError as err:
                errors.append(str(err))
    elif suffix == ".txt":
        category = category_from_filename(path)
        index = 0
        for n, line in _decode_lines(path, errors):
            if line is None:  # reported; it still takes its index so later ids stay put
                index += 1
                continue
            if not line.strip():
                continue
            items.append(PromptItem(f"{path.stem}_{index:05d}", line.strip(), category, f"{path}:{n}"))
            index += 1
    else:
        raise PromptFileError(f"{path}: unknown prompt file type {suffix!r} (expected .json, .jsonl or .txt)")
    return items


def read_prompts(paths: str | os.PathLike | Iterable[str | os.PathLike], categories: Sequence[str] | None = None,
                 limit_per_category: int | None = None) -> tuple[list[PromptItem], list[str]]:
    """Read one or more prompt files. Returns ``(items, errors)``; ``errors`` lists every
    skipped row as ``file:line: reason``. ``categories`` keeps only those categories;
    ``limit_per_category`` keeps the first N of each (in file order)."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    errors: list[str] = []
    seen: dict[str, str] = {}
    per_category: dict[str | None, int] = {}
    out: list[PromptItem] = []
    wanted = set(categories) if categories else None
    for path in paths:
        for item in _read_one(Path(path), errors):
            if not _SAFE_ID.match(item.id):
                errors.append(f"{item.source}: id {item.id!r} is not usable in a file name "
                              "(letters, digits, '.', '_', '-'; at most 128 characters)")
                continue
            if item.id in seen:
                errors.append(f"{item.source}: duplicate id {item.id!r} (first at {seen[item.id]})")
                continue
            seen[item.id] = item.source
            if wanted is not None and item.category not in wanted:
                continue
            count = per_category.get(item.category, 0)
            if limit_per_category is not None and count >= limit_per_category:
                continue
            per_category[item.category] = count + 1
            out.append(item)
    return out, errors
