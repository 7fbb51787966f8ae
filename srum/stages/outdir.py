# SPDX-License-Identifier: Apache-2.0
"""Taking a stage's output directory before writing into it: the lock (one run at a
time), the result-changing settings (a resume must use the same ones, or start fresh),
and the clean-up of temporary files a killed run left. Done once, by rank 0, before
any rank writes; a refusal stops every rank with one message."""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from srum import distributed
from srum.config import to_dict
from srum.distributed import DistInfo
from srum.fileio import iter_jsonl, remove_temp_files
from srum.locking import LOCK_NAME, DirectoryLock
from srum.stages.shards import ERROR_KEY
from srum.run_settings import (REPLACED_PREFIX, differences, move_aside, record_settings, recorded_settings,
                               refuse_changes)

# fields of a stage's ``model`` section that change how it runs, not what it produces
_MODEL_OPERATIONAL = ("device_map", "compile", "compile_backend", "gpus_per_process")


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def result_settings(cfg: Any, fields: tuple[str, ...], ignore: tuple[str, ...] = ()) -> dict:
    """The result-changing part of a stage config: the named top-level fields, less the
    model section's operational fields and the dotted ``ignore`` fields."""
    settings = {}
    for name in fields:
        value = to_dict(getattr(cfg, name))
        if name == "model" and isinstance(value, dict):
            value = {k: v for k, v in value.items() if k not in _MODEL_OPERATIONAL}
        settings[name] = value
    for dotted in ignore:
        *parents, leaf = dotted.split(".")
        node = settings
        for key in parents:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(leaf, None)
    return settings


def _has_result_rows(out_dir: Path) -> bool:
    """Whether a stage already wrote a result here: a row that is not an error row. Rows
    that only record failures (a wrong model path, say) do not bind the settings, so the
    corrected rerun is not refused."""
    parts = sorted((out_dir / "parts").glob("rank-*.jsonl")) if (out_dir / "parts").is_dir() else []
    for path in parts:
        if any(row is not None and ERROR_KEY not in row for _, row, _ in iter_jsonl(path)):
            return True
    return False


def _check_settings(out_dir: Path, name: str, settings: dict, retry_changes: bool) -> None:
    recorded = recorded_settings(out_dir)
    has_results = _has_result_rows(out_dir)
    diffs = differences(recorded, settings) if recorded is not None and has_results else []
    if diffs and retry_changes:
        # a finished run whose failed items are redone on purpose with other settings
        # (e.g. another judge mode): allowed, said, and the earlier settings kept
        _say(f"srum {name}: retry_errors redoes the failed items with other settings than the rest:"
             + "".join(f"\n  {d}" for d in diffs))
        record_settings(out_dir, settings, earlier=recorded)
        return
    if diffs:
        refuse_changes(f"srum {name}: {out_dir}", diffs,
                       "start afresh with fresh=true (the earlier outputs move to "
                       f"{out_dir}/{REPLACED_PREFIX}<time>/)")
    if recorded is None and has_results:
        _say(f"srum {name}: {out_dir} holds outputs without a settings record (an older version "
             "wrote them): they cannot be checked against the current settings")
    record_settings(out_dir, settings)


def _remove_temp_files_below(out_dir: Path) -> int:
    removed = 0
    for folder, dirs, _ in os.walk(out_dir):
        dirs[:] = [d for d in dirs if not d.startswith(REPLACED_PREFIX)]
        removed += len(remove_temp_files(Path(folder)))
    return removed


def _take(out_dir: Path, name: str, settings: dict | None, fresh: bool, retry_changes: bool) -> DirectoryLock:
    lock = DirectoryLock.acquire(out_dir, f"srum {name}")
    try:
        if fresh:
            moved = move_aside(out_dir, keep=(LOCK_NAME,))
            if moved is not None:
                _say(f"srum {name}: fresh start: the earlier outputs moved to {moved}")
        if settings is not None:
            _check_settings(out_dir, name, settings, retry_changes)
        removed = _remove_temp_files_below(out_dir)
        if removed:
            _say(f"srum {name}: removed {removed} temporary file(s) an interrupted run left")
    except BaseException:
        lock.release()
        raise
    return lock


def take_output_dir(out_dir: str | os.PathLike, name: str, info: DistInfo, settings: dict | None = None,
                    fresh: bool = False, retry_changes: bool = False) -> DirectoryLock | None:
    """Lock ``out_dir`` for stage ``name`` and check (or, with ``fresh``, reset) it; the
    lock on rank 0, None elsewhere. Raises on every rank when the directory is locked or
    the settings differ (rank 0 with the reason, the others with a one-line note).
    ``retry_changes``: other settings are allowed (``retry_errors`` on a finished run
    redoes only its failed items, on purpose with other settings)."""
    return distributed.on_main(lambda: _take(Path(out_dir), name, settings, fresh, retry_changes), info)
