# SPDX-License-Identifier: Apache-2.0
"""The exit contract: every stage says how it ended in ``<out_dir>/status.json``.

torchrun turns any worker's failure into exit code 1 and a clean run into 0, so its code
cannot tell "some items failed" from "rank 3 crashed". The pipeline therefore reads the
status the stage itself wrote::

    {"status": "complete" | "incomplete" | "failed", "reason": str | null,
     "counts": {...}, "rank": int, "written_at": "..."}

* ``complete``: every item has a usable result (training: ``step == total_steps``);
* ``incomplete``: every item was attempted, some failed as items (an unreadable image);
  they are rows in ``errors.jsonl`` that a rerun with ``retry_errors`` redoes (a judgment
  that stayed unparseable after its retries is a result, counted: still complete);
* ``failed``: the stage stopped (model, config or device error, every item failed,
  items left undone). ``reason`` says why; a rerun resumes.

A stage that wrote no status (killed, crashed before it could) counts as failed: the
pipeline removes ``status.json`` before each attempt, so an old one never answers for a
new attempt.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from srum.fileio import atomic_write_text

STATUS_FILE = "status.json"
STATUSES = ("complete", "incomplete", "failed")
EXIT_CODES = {"complete": 0, "incomplete": 1, "failed": 2}


class StageFailure(RuntimeError):
    """An error that is not about one item (the model does not load, the settings are
    refused, the device fails): the stage stops once, writes no error rows, and a rerun
    with the cause fixed starts where it stopped."""


def write_status(out_dir: str | Path, status: str, reason: str | None = None, rank: int = 0, **counts) -> dict:
    if status not in STATUSES:
        raise ValueError(f"status must be one of {STATUSES}, got {status!r}")
    record = {"status": status, "reason": reason, "counts": counts, "rank": rank,
              "written_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
    atomic_write_text(Path(out_dir) / STATUS_FILE, json.dumps(record, indent=2, default=str) + "\n")
    return record


def read_status(out_dir: str | Path) -> dict | None:
    """The status a stage wrote, or None (none written, or unreadable)."""
    path = Path(out_dir) / STATUS_FILE
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return record if isinstance(record, dict) and record.get("status") in STATUSES else None


def clear_status(out_dir: str | Path) -> None:
    (Path(out_dir) / STATUS_FILE).unlink(missing_ok=True)


def status_of_summary(summary: dict) -> tuple[str, str | None]:
    """(status, reason) of a per-item stage from its ``summary.json`` counts."""
    items, ok = summary.get("num_items", 0), summary.get("num_ok", 0)
    errors, missing = summary.get("num_errors", 0), summary.get("num_missing", 0)
    retryable = summary.get("num_retryable", 0)
    if missing:
        return "failed", f"{missing} of {items} items were not done (a process stopped early); a rerun does them"
    if items and ok == 0:
        return "failed", f"every item failed ({errors} error rows): nothing for the next stage; see errors.jsonl"
    if errors:
        return "incomplete", (f"{errors} of {items} items failed (errors.jsonl); retry_errors=true redoes them"
                              + (f", and the {retryable} failed judgments" if retryable else ""))
    if retryable:   # a judgment that failed after its retries is a recorded, counted result
        return "complete", f"{retryable} of {items} judgments failed after their retries (counted, not averaged)"
    return "complete", None


def write_summary_status(out_dir: str | Path, summary: dict, rank: int = 0) -> dict:
    status, reason = status_of_summary(summary)
    counts = {k: summary.get(k) for k in ("num_items", "num_ok", "num_errors", "num_retryable", "num_missing")}
    return write_status(out_dir, status, reason, rank=rank, **counts)


def worst(statuses: list[str]) -> str:
    """The status of a stage made of several steps: its worst step's."""
    return max(statuses, key=STATUSES.index) if statuses else "failed"


def exit_code(summary: dict) -> int:
    """A stage command's exit code from its summary (``{}`` on ranks other than 0: 0)."""
    return EXIT_CODES.get(summary.get("status", "complete"), 2)


def run_stage(name: str, fn) -> int:
    """Run a stage command's body; a :class:`StageFailure`, or a model, config or file
    error (``ValueError``, ``OSError``: a checkpoint that does not load), ends it with one
    clear line and exit code 2 (the status file already says failed, with the reason)."""
    import sys

    from srum.distributed import env_info
    try:
        return exit_code(fn() or {})
    except (StageFailure, ValueError, OSError) as err:
        record_for_torchrun(err)
        info = env_info()
        message = str(err) if info.rank == 0 else f"stopped: {err}"
        print(f"srum {name}: error{f' (rank {info.rank})' if info.world_size > 1 else ''}: {message}",
              file=sys.stderr, flush=True)
        return 2


def record_for_torchrun(err: BaseException) -> None:
    """Under torchrun, put a handled error into this worker's error file, so torchrun's
    failure summary names it (an exception that escapes is recorded by ``srum.__main__``)."""
    import os
    if not os.environ.get("TORCHELASTIC_ERROR_FILE"):
        return
    try:
        from torch.distributed.elastic.multiprocessing.errors import ErrorHandler
        ErrorHandler().record_exception(err)
    except Exception:   # the error file is a convenience; never hide the real error behind it
        pass
