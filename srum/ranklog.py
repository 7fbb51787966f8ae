# SPDX-License-Identifier: Apache-2.0
"""Per-rank logs of a launched stage: ``<stage>/logs/rank-N.log``.

torchrun interleaves every worker's output in one stream. When ``SRUM_RANK_LOG_DIR`` is
set (``srum pipeline`` sets it to ``<stage>/logs``), :func:`install_from_env` makes this
process's ``sys.stdout`` and ``sys.stderr`` write every line both to the console and to
``rank-N.log``, prefixed ``[rank N]`` under torchrun, so the interleaved ``stage.log``
still says who wrote what and each rank's own story can be read alone. Output written
below Python (NCCL's C++ warnings, a segfault) does not pass through here; torchrun's
error files (``--log-dir``) keep the traceback of a failed worker.
"""
from __future__ import annotations

import io
import os
from pathlib import Path

__all__ = ["RankTee", "install_from_env"]


class RankTee(io.TextIOBase):
    """A text stream that writes to ``stream`` and ``log``, every line prefixed."""

    def __init__(self, stream, log, prefix: str):
        self._stream, self._log, self._prefix = stream, log, prefix
        self._line_start = True

    def write(self, text: str) -> int:
        out = []
        for piece in text.splitlines(keepends=True):
            if self._line_start and self._prefix:
                out.append(self._prefix)
            out.append(piece)
            # a progress bar redraws with "\r": the redrawn line gets its prefix too
            self._line_start = piece.endswith(("\n", "\r"))
        joined = "".join(out)
        self._stream.write(joined)
        self._log.write(joined)
        return len(text)

    def flush(self) -> None:
        self._stream.flush()
        self._log.flush()

    def isatty(self) -> bool:
        return False

    @property
    def encoding(self):
        return getattr(self._stream, "encoding", "utf-8")

    def fileno(self) -> int:   # faulthandler and subprocesses write to the real descriptor
        return self._stream.fileno()


def install_from_env() -> Path | None:
    """Tee stdout/stderr into ``$SRUM_RANK_LOG_DIR/rank-$RANK.log``; returns the log path
    (None when the variable is unset)."""
    import sys
    log_dir = os.environ.get("SRUM_RANK_LOG_DIR")
    if not log_dir:
        return None
    rank = int(os.environ.get("RANK", "0") or 0)
    prefix = f"[rank {rank}] " if "WORLD_SIZE" in os.environ else ""
    path = Path(log_dir) / f"rank-{rank}.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    log = open(path, "a", encoding="utf-8", buffering=1)   # line-buffered: a crash loses little
    sys.stdout = RankTee(sys.stdout, log, prefix)
    sys.stderr = RankTee(sys.stderr, log, prefix)
    return path
