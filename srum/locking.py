# SPDX-License-Identifier: Apache-2.0
"""One run at a time per output directory.

A stage (or ``srum train``) takes ``<out_dir>/.srum.lock`` before it writes anything
there and removes it when it ends. The file records who holds it (pid, host, stage,
start time, and the process's start tick so a recycled pid is not mistaken for the
holder). A second run finds the file and stops with an error naming the holder. A lock
left by a process that no longer exists *on this host* (a kill -9, a crashed node that
came back) is taken over with a warning. A lock from another host cannot be checked
from here: the error says so and names the file to delete once that run is known dead.

The file is created with ``O_CREAT | O_EXCL`` (atomic on local filesystems and NFSv3+),
and a stale one is renamed away before it is replaced, so two runs taking over the same
stale lock at once cannot both win.
"""
from __future__ import annotations

import json
import os
import socket
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

__all__ = ["LOCK_NAME", "DirectoryLocked", "DirectoryLock"]

LOCK_NAME = ".srum.lock"


class DirectoryLocked(ValueError):
    """Another live run holds the output directory."""


def _process_start(pid: int) -> str | None:
    """The start time of process ``pid`` in clock ticks since boot (Linux), else None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[-1].split()[19]  # field 22 of the line, counted after the name


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _holder_alive(holder: dict) -> bool:
    """Whether the process a lock names still runs; True when that cannot be checked here."""
    if holder.get("host") != socket.gethostname():
        return True
    pid = holder.get("pid")
    if not isinstance(pid, int) or not _pid_alive(pid):
        return False
    recorded = holder.get("process_start")
    return recorded is None or _process_start(pid) in (None, recorded)


def _describe(holder: dict) -> str:
    return (f"{holder.get('stage', 'a run')} (pid {holder.get('pid')} on host {holder.get('host')}, "
            f"since {holder.get('started', '?')})")


@dataclass
class DirectoryLock:
    """A held lock; :meth:`release` (or leaving the ``with`` block) removes it."""

    path: Path
    token: str

    @classmethod
    def acquire(cls, directory: str | os.PathLike, stage: str) -> DirectoryLock:
        """Take ``directory``'s lock for ``stage`` or raise :class:`DirectoryLocked`."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / LOCK_NAME
        record = {"pid": os.getpid(), "host": socket.gethostname(), "stage": stage,
                  "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "process_start": _process_start(os.getpid()),
                  "token": uuid.uuid4().hex}
        for _ in range(5):
            if cls._create(path, record):
                return cls(path, record["token"])
            holder = cls._read(path)
            if holder is None:
                continue  # removed in between, or still being written: look again
            if _holder_alive(holder):
                raise DirectoryLocked(cls._locked_message(directory, path, holder))
            cls._take_over(path, holder)
        raise DirectoryLocked(f"{directory}: could not take the lock {path} (other runs keep taking it)")

    @staticmethod
    def _create(path: Path, record: dict) -> bool:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
        return True

    @staticmethod
    def _read(path: Path) -> dict | None:
        """The holder a lock file names; None when it is gone. A file that is not valid
        JSON (a writer killed mid-write) reads as a holder that no longer exists once it
        is a few seconds old, and as a live one before that (it may be being written)."""
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
            age = time.time() - path.stat().st_mtime
        except FileNotFoundError:
            return None
        try:
            holder = json.loads(text)
            if isinstance(holder, dict):
                return holder
        except json.JSONDecodeError:
            pass
        if age < 5:
            time.sleep(0.2)
            return None
        return {"pid": None, "host": socket.gethostname(), "stage": "an unreadable lock"}

    @staticmethod
    def _take_over(path: Path, holder: dict) -> None:
        # rename first: of two runs taking over at once, only one rename gets the stale file
        aside = path.with_name(f"{path.name}.stale{os.getpid()}")
        try:
            os.replace(path, aside)
        except FileNotFoundError:
            return
        moved = DirectoryLock._read(aside)
        if moved is not None and moved.get("token") != holder.get("token"):
            # another run took over between our read and the rename: put its live lock back
            try:
                os.link(aside, path)
            except OSError:
                pass
            aside.unlink(missing_ok=True)
            return
        aside.unlink(missing_ok=True)
        print(f"srum: took over the lock {path} of {_describe(holder)}, which is no longer running",
              file=sys.stderr, flush=True)

    @staticmethod
    def _locked_message(directory: Path, path: Path, holder: dict) -> str:
        where = ("" if holder.get("host") == socket.gethostname() else
                 "; it runs on another host, so whether it is still alive cannot be checked from here: "
                 f"if it is not, delete {path}")
        return (f"{directory} is in use by {_describe(holder)}: two runs must not write the same output "
                f"directory; wait for it to end or choose another output directory{where}")

    def release(self) -> None:
        """Remove the lock if it is still ours (a takeover may have replaced it)."""
        try:
            holder = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return
        if isinstance(holder, dict) and holder.get("token") == self.token:
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> DirectoryLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()
