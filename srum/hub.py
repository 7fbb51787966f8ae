# SPDX-License-Identifier: Apache-2.0
"""Fetching hub models once per node.

Under torchrun every process of a stage loads the same model. Left alone, each would
call ``snapshot_download`` at once: eight downloads of 29 GB racing into one cache, or
eight hub round-trips per stage. :func:`fetch_once_per_node` lets local rank 0 fetch
while the other processes of its node wait for a marker file it writes when done (or
failed: they then stop with its error instead of trying themselves). No process group
is needed, so this works before ``init_process_group`` and in stages that have none.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Callable

__all__ = ["fetch_once_per_node", "snapshot"]


def _node_group() -> str | None:
    """An id shared by the processes one torchrun agent started on this node (None alone)."""
    if int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1) <= 1:
        return None
    # the agent is every local worker's parent; the run id tells restarts apart
    return f"{os.environ.get('TORCHELASTIC_RUN_ID', '')}-{os.getppid()}"


def _wait_seconds() -> float:
    from srum.distributed import timeout_minutes
    return timeout_minutes() * 60


def fetch_once_per_node(key: str, fetch: Callable[[], str], *, local_rank: int | None = None,
                        group: str | None = None, marker_dir: str | os.PathLike | None = None,
                        timeout_s: float | None = None, poll_s: float = 1.0) -> str:
    """``fetch()`` (-> a local path) on local rank 0 only; the node's other processes wait
    for its result. ``key`` names what is fetched (e.g. repo id + revision + patterns).
    Without torchrun (one process per node) this is just ``fetch()``."""
    group = group if group is not None else _node_group()
    if group is None:
        return fetch()
    local_rank = int(os.environ.get("LOCAL_RANK", "0")) if local_rank is None else local_rank
    digest = hashlib.sha256(f"{group}\0{key}".encode()).hexdigest()[:24]
    marker = Path(marker_dir or Path(tempfile.gettempdir()) / "srum-fetch") / f"{digest}.json"
    if local_rank == 0:
        marker.parent.mkdir(parents=True, exist_ok=True)
        try:
            path = fetch()
        except Exception as err:
            _write(marker, {"error": f"{type(err).__name__}: {err}"})
            raise
        _write(marker, {"path": str(path)})
        return path
    deadline = time.monotonic() + (timeout_s if timeout_s is not None else _wait_seconds())
    while not marker.is_file():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{key}: local rank 0 did not finish fetching it in time (waited for {marker}; "
                               "raise launcher.dist_timeout_minutes / $SRUM_DIST_TIMEOUT_MINUTES)")
        time.sleep(poll_s)
    result = json.loads(marker.read_text())
    if "error" in result:
        raise OSError(f"{key}: local rank 0 could not fetch it: {result['error']}")
    return result["path"]


def _write(path: Path, obj: dict) -> None:
    from srum.fileio import atomic_write_text
    atomic_write_text(path, json.dumps(obj))


def snapshot(repo_id: str, revision: str | None = None, allow_patterns: list[str] | None = None) -> Path:
    """``huggingface_hub.snapshot_download`` of a hub repo, once per node."""
    from huggingface_hub import snapshot_download
    key = json.dumps([repo_id, revision, allow_patterns])
    return Path(fetch_once_per_node(key, lambda: snapshot_download(repo_id, revision=revision,
                                                                    allow_patterns=allow_patterns)))


def local_or_snapshot(model: str) -> str:
    """``model`` itself when it is a folder or looks like a path; a hub id (``owner/name``
    that is no folder here) fetched once per node: local rank 0 downloads, the node's other
    processes wait and read the same cache."""
    if Path(model).expanduser().exists() or model.count("/") != 1 or model.startswith((".", "/", "~")):
        return model
    return str(snapshot(model))
