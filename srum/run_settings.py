# SPDX-License-Identifier: Apache-2.0
"""Result-changing settings of a resumable run: compare before resuming, or start fresh.

A stage that resumes into an output directory adds rows to those of an earlier run, and
``srum train`` continues the weights of an earlier run. Both are only right when every
setting that changes a result is the same as before. Each run records those settings
(a stage in ``<out_dir>/run_settings.json``, training in every checkpoint's
``config.yaml``); a resume compares them with the current ones and refuses, naming
each differing field with both values. A *fresh start* (``fresh=true`` for a stage,
``checkpoint.resume=fresh`` for training) moves the earlier outputs aside into
``<out_dir>/replaced-<time>/`` (nothing is deleted) and starts over.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Iterable

from .fileio import atomic_write_text

__all__ = ["SETTINGS_FILE", "REPLACED_PREFIX", "SettingsChanged", "flatten", "differences", "refuse_changes",
           "recorded_settings", "record_settings", "move_aside"]

SETTINGS_FILE = "run_settings.json"
REPLACED_PREFIX = "replaced-"
# what `srum pipeline` keeps in a stage folder about the stage (not the stage's output):
# a fresh start leaves it in place
PIPELINE_FILES = ("stage.json", "stage.log")


class SettingsChanged(ValueError):
    """A resume whose result-changing settings differ from the run it continues."""


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists stay values)."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            out.update(flatten(value, name))
        else:
            out[name] = value
    return out


def _same(a: Any, b: Any) -> bool:
    # YAML/JSON round trips turn tuples into lists and may write 2e-05 for 2.0e-5
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool) \
            and not isinstance(b, bool):
        return float(a) == float(b)
    return a == b


def differences(recorded: dict, current: dict, ignore: Iterable[str] = ()) -> list[str]:
    """``"field: <recorded> before, <current> now"`` for every dotted field whose value
    differs. Fields under an ``ignore`` prefix are skipped, and so are fields the record
    does not have (settings added to the code since it was written)."""
    ignore = tuple(ignore)
    old, new = flatten(recorded), flatten(current)
    out = []
    for key in sorted(new):
        if key not in old or any(key == p or key.startswith(p + ".") for p in ignore):
            continue
        if not _same(old[key], new[key]):
            out.append(f"{key}: {json.dumps(old[key])} before, {json.dumps(new[key])} now")
    return out


def refuse_changes(what: str, diffs: list[str], fresh_hint: str) -> None:
    """Raise :class:`SettingsChanged` listing ``diffs`` (nothing when there are none)."""
    if diffs:
        listed = "".join(f"\n  {d}" for d in diffs)
        raise SettingsChanged(f"{what} was made with other result-changing settings; resuming would mix "
                              f"results of both:{listed}\nRun again with the earlier settings, or {fresh_hint}")


def recorded_settings(directory: Path) -> dict | None:
    """The settings a stage recorded in ``directory`` (None when there is no record)."""
    path = Path(directory) / SETTINGS_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise SettingsChanged(f"{path}: unreadable ({err}); delete it to accept the current settings") from None
    if not isinstance(data, dict) or not isinstance(data.get("settings"), dict):
        raise SettingsChanged(f"{path}: not a settings record; delete it to accept the current settings")
    return data["settings"]


def record_settings(directory: Path, settings: dict, earlier: dict | None = None) -> None:
    """Record ``settings``; ``earlier``: the settings they replace (a retry of failed
    items with other settings), kept in the record's ``earlier`` list."""
    path = Path(directory) / SETTINGS_FILE
    history = []
    if earlier is not None:
        try:
            history = json.loads(path.read_text(encoding="utf-8")).get("earlier", [])
        except (OSError, ValueError, AttributeError):
            history = []
        history.append(earlier)
    record = {"settings": settings, "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
    if history:
        record["earlier"] = history
    atomic_write_text(path, json.dumps(record, indent=1) + "\n")


def move_aside(directory: Path, keep: Iterable[str] = ()) -> Path | None:
    """Move everything in ``directory`` except ``keep``, the pipeline's own files and
    earlier ``replaced-*`` folders into ``directory/replaced-<time>/``; returns that
    folder (None: nothing to move)."""
    directory = Path(directory)
    keep = set(keep) | set(PIPELINE_FILES)
    entries = [p for p in directory.iterdir() if p.name not in keep and not p.name.startswith(REPLACED_PREFIX)] \
        if directory.is_dir() else []
    if not entries:
        return None
    target = directory / f"{REPLACED_PREFIX}{time.strftime('%Y%m%d-%H%M%S')}"
    n = 1
    while target.exists():
        n += 1
        target = directory / f"{REPLACED_PREFIX}{time.strftime('%Y%m%d-%H%M%S')}-{n}"
    target.mkdir()
    for entry in entries:
        os.replace(entry, target / entry.name)
    return target
