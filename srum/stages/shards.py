# SPDX-License-Identifier: Apache-2.0
"""Sharded, resumable output of a per-item stage (generate, propose, judge, eval).

A stage maps a list of work items, each with a unique key, to one JSON row per item.
Output directory layout::

    <out>/parts/rank-00000.jsonl   rows appended by process 0 (flushed + fsync'ed per row)
    <out>/parts/rank-00001.jsonl   ... one file per process
    <out>/<manifest>.jsonl         the merged result: one row per item, in input order
    <out>/errors.jsonl             items that failed, with the reason (merged)
    <out>/summary.json             counts, timing, complete flag

The full item list is cut into batches of ``batch_size`` consecutive items, and process r
of W takes batches ``r, r + W, r + 2W, ...`` (a deterministic shard that does not depend
on what is already done). So every batch holds the same items whatever the number of
processes, and batched computation (which may round differently from unbatched) gives
byte-identical results on 1 or N processes. Of a batch only the items not done yet are
run (together), so a retry asks exactly the failed items again; the one batch per
process that a kill interrupted is finished with its remaining items only (batched
arithmetic may then round a value of those items differently, never what they are). The
row is written after the item's files (written atomically by the stage), so a row
always points at complete files. A process killed mid-row leaves a truncated last
line: it is ignored on reading and cut off before the next append, so a rerun redoes
that item once. Merging reads every part, keeps the first row per key, and replaces
the manifest atomically; rerunning with another world size works the same way.

Two kinds of rows are redone by ``retry_errors``: *error rows* (``_error``: the item
produced nothing usable, e.g. an unreadable image; merged into ``errors.jsonl``) and
*retryable results*, which the stage recognises with its ``retryable`` predicate (e.g.
a judgment that failed after all its attempts: a real result, merged into the
manifest like any other, but worth asking again after a config or backend change). A
newer row of an item replaces an error row or a retryable result.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from srum.distributed import DistInfo
from srum.fileio import atomic_write_text, iter_jsonl, write_error

ERROR_KEY = "_error"


def _is_json_object(raw: bytes) -> bool:
    try:
        return isinstance(json.loads(raw.decode("utf-8")), dict)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return False


class PartWriter:
    """Append-only JSONL part of one process; every row is flushed and fsync'ed."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._repair()
        self._file = open(path, "a", encoding="utf-8")

    def _repair(self) -> None:
        # A kill -9 mid-row leaves a partial last line: cut it so the next row starts
        # clean. A last row that is complete JSON and only lacks its newline (killed
        # between the two, or a file copied without it) is a finished item: keep it.
        if not self.path.exists():
            return
        with open(self.path, "rb+") as f:
            data = f.read()
            if not data or data.endswith(b"\n"):
                return
            start = data.rfind(b"\n") + 1
            if _is_json_object(data[start:]):
                f.write(b"\n")
            else:
                f.truncate(start)

    def write(self, row: dict) -> None:
        try:
            self._file.write(json.dumps(row, ensure_ascii=False) + "\n")
            self._file.flush()
            os.fsync(self._file.fileno())
        except OSError as err:  # disk full, quota, ...: say which file
            raise write_error(self.path, err) from err

    def close(self) -> None:
        self._file.close()


@dataclass
class MergeResult:
    rows: list[dict]
    errors: list[dict]
    missing: list[str]
    duplicates: int = 0
    bad_lines: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not self.missing


class ShardedOutput:
    """Resumable per-item output of one stage in ``out_dir`` (see the module docstring)."""

    def __init__(self, out_dir: str | os.PathLike, keys: list[str], info: DistInfo, manifest_name: str = "manifest.jsonl",
                 key_field: str = "image_id", retryable: Callable[[dict], bool] | None = None):
        if len(set(keys)) != len(keys):
            raise ValueError("work item keys must be unique")
        self.retryable = retryable or (lambda row: False)
        self.out_dir = Path(out_dir)
        self.keys = keys
        self.info = info
        self.key_field = key_field
        self.manifest_path = self.out_dir / manifest_name
        self.parts_dir = self.out_dir / "parts"
        self.errors_path = self.out_dir / "errors.jsonl"
        self.summary_path = self.out_dir / "summary.json"

    # ------------------------------------------------------------------ reading
    def _part_files(self) -> list[Path]:
        return sorted(self.parts_dir.glob("rank-*.jsonl")) if self.parts_dir.is_dir() else []

    def _read_rows(self) -> tuple[dict[str, dict], int, list[str]]:
        """All finished rows (parts, then the merged manifest and errors), first per key."""
        rows: dict[str, dict] = {}
        duplicates, bad = 0, []
        sources = self._part_files() + [p for p in (self.manifest_path, self.errors_path) if p.exists()]
        for path in sources:
            for _, obj, err in iter_jsonl(path):
                if err:
                    bad.append(err)
                    continue
                key = obj.get(self.key_field)
                if not isinstance(key, str):
                    bad.append(f"{path}: row without a string {self.key_field!r}")
                    continue
                if key in rows:
                    old = rows[key]
                    if self._redo(old) and ERROR_KEY not in obj and path.parent == self.parts_dir:
                        # a retry (appended after the row it redoes) replaces it
                        rows[key] = obj
                    elif ERROR_KEY in old and ERROR_KEY not in obj:
                        rows[key] = obj
                    elif path.parent == self.parts_dir and ERROR_KEY not in obj and not self._redo(obj):
                        duplicates += 1
                    continue
                rows[key] = obj
        return rows, duplicates, bad

    def _redo(self, row: dict) -> bool:
        """Whether ``retry_errors`` redoes this row."""
        return ERROR_KEY in row or bool(self.retryable(row))

    def done_keys(self, retry_errors: bool = False) -> set[str]:
        rows, _, _ = self._read_rows()
        return {k for k, r in rows.items() if not (retry_errors and self._redo(r))}

    def is_complete(self) -> bool:
        """True when the merged manifest (plus recorded errors) covers every key."""
        if not self.summary_path.exists() or not self.manifest_path.exists():
            return False
        try:
            summary = json.loads(self.summary_path.read_text())
        except json.JSONDecodeError:
            return False
        return bool(summary.get("complete")) and summary.get("num_items") == len(self.keys)

    # ------------------------------------------------------------------ writing
    def my_batches(self, done: set[str], batch_size: int = 1) -> list[tuple[list[int], set[int]]]:
        """This process's batches with something to do: ``(indices of the whole batch,
        the indices in it whose key is not in done)``; see the module docstring."""
        out = []
        starts = range(self.info.rank * batch_size, len(self.keys), self.info.world_size * batch_size)
        for start in starts:
            batch = list(range(start, min(start + batch_size, len(self.keys))))
            todo = {i for i in batch if self.keys[i] not in done}
            if todo:
                out.append((batch, todo))
        return out

    def my_todo(self, done: set[str], batch_size: int = 1) -> list[int]:
        """Indices (into ``keys``) of this process's shard that are not in ``done``."""
        return [i for batch, todo in self.my_batches(done, batch_size) for i in batch if i in todo]

    def writer(self) -> PartWriter:
        return PartWriter(self.parts_dir / f"rank-{self.info.rank:05d}.jsonl")

    def merge(self, extra_summary: dict | None = None, started: float | None = None,
              summarize: Callable[[list[dict]], dict] | None = None) -> MergeResult:
        """Combine all parts into the manifest and errors files (call on one process only)."""
        rows, duplicates, bad = self._read_rows()
        ok, errors, missing = [], [], []
        for key in self.keys:
            row = rows.get(key)
            if row is None:
                missing.append(key)
            elif ERROR_KEY in row:
                errors.append(row)
            else:
                ok.append(row)
        atomic_write_text(self.manifest_path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in ok))
        atomic_write_text(self.errors_path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in errors))
        result = MergeResult(ok, errors, missing, duplicates, bad)
        summary = {"num_items": len(self.keys), "num_ok": len(ok), "num_errors": len(errors),
                   "num_retryable": sum(bool(self.retryable(r)) for r in ok),
                   "num_missing": len(missing), "complete": result.complete, "world_size": self.info.world_size,
                   "merged_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
        if started is not None:
            summary["seconds"] = round(time.time() - started, 3)
        summary.update(extra_summary or {})
        if summarize is not None:
            summary.update(summarize(ok))
        atomic_write_text(self.summary_path, json.dumps(summary, indent=2) + "\n")
        return result
