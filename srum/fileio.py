# SPDX-License-Identifier: Apache-2.0
"""Small file helpers used everywhere: atomic writes (a crash leaves the old file or the
new one, never half of one) and tolerant JSONL reading with line numbers."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterator


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same directory + rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_save_image(image, path: Path) -> None:
    """Save a PIL image atomically (a kill never leaves a half-written PNG under its name)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
    image.save(tmp)
    os.replace(tmp, path)


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
