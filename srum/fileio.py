# SPDX-License-Identifier: Apache-2.0
"""Small file helpers used everywhere: atomic writes (a crash leaves the old file or the
new one, never half of one) and tolerant JSONL reading with line numbers."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Iterator

# Names of the temporary files our atomic writes use (".<name>.tmp<pid>[.suffix]", and
# tempfile's ".<name>.<random>.tmp"): what a kill can leave behind.
_TEMP_NAME = re.compile(r"^\..+\.tmp\d*(\.[A-Za-z0-9]+)?$")


def write_error(path: Path, err: OSError) -> OSError:
    """An OSError that names the file being written (disk full, read-only, quota ...)."""
    return OSError(err.errno, f"cannot write {path}: {err.strerror or err}")


def _unlink_quietly(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same directory + rename;
    a failure (disk full ...) removes the temporary file and names ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        _unlink_quietly(tmp)
        raise write_error(path, err) from err


def atomic_save_image(image, path: Path) -> None:
    """Save a PIL image atomically (a kill never leaves a half-written PNG under its name)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
    try:
        image.save(tmp)
        os.replace(tmp, path)
    except OSError as err:
        _unlink_quietly(tmp)
        raise write_error(path, err) from err


def remove_temp_files(directory: Path) -> list[Path]:
    """Delete the temporary files of atomic writes that a killed process left in
    ``directory`` (not recursive). Only call it while holding the directory's lock: a
    live writer's temporary file looks the same."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    removed = [p for p in directory.iterdir() if p.is_file() and _TEMP_NAME.match(p.name)]
    for p in removed:
        _unlink_quietly(p)
    return removed


def iter_jsonl(path: Path) -> Iterator[tuple[int, dict | None, str | None]]:
    """Yield ``(line number, object or None, error or None)``; blank lines skipped."""
    # undecodable bytes become U+FFFD rather than aborting the read of every other line
    with open(path, encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            truncated = not line.endswith("\n")
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                reason = "truncated last line (interrupted write)" if truncated else f"not valid JSON ({err.msg})"
                yield n, None, f"{path}:{n}: {reason}"
                continue
            if not isinstance(obj, dict):
                yield n, None, f"{path}:{n}: expected a JSON object"
                continue
            yield n, obj, None
