# SPDX-License-Identifier: Apache-2.0
"""What the pipeline knows about one stage folder: ``<stage_dir>/stage.json``.

The marker records the stage's resolved config (and its hash), the run ids of the
stages it read from, its status and its timing. A stage is

* skipped when the marker says it finished with the same config and the same inputs,
  and its output files are all there;
* resumed when the marker says it started (or finished but an output file is gone)
  with the same config and inputs: the stage itself skips the items it already did;
* started fresh when the config or an input changed, or a folder exists that the
  pipeline did not write: the old folder is moved to ``<run_dir>/stale/`` (or deleted).

Each finished stage gets a new ``run_id``; a stage whose upstream ``run_id`` changed is
stale, which is how a rerun propagates to exactly the stages that depend on it.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import time
import uuid
from pathlib import Path

from ..fileio import atomic_write_text

MARKER = "stage.json"
# settings that change how fast a stage runs, not what it writes (beyond float rounding):
# not part of the hash, so changing one resumes a stage instead of redoing it
OPERATIONAL_KEYS = frozenset({"batch_size", "retry_errors", "num_workers", "progress", "vae_batch_size",
                              "compile", "compile_backend", "gpus_per_process", "timeout_minutes"})


def config_hash(config: dict) -> str:
    def strip(x):
        if isinstance(x, dict):
            return {k: strip(v) for k, v in x.items() if k not in OPERATIONAL_KEYS}
        if isinstance(x, list):
            return [strip(v) for v in x]
        return x
    text = json.dumps(strip(config), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def read_marker(stage_dir: Path) -> dict | None:
    path = Path(stage_dir) / MARKER
    if not path.is_file():
        return None
    try:
        marker = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return marker if isinstance(marker, dict) else None


def decide(stage_dir: Path, digest: str, inputs: dict[str, str], outputs: list[str]) -> tuple[str, str]:
    """-> (action, why): action is "skip", "resume" or "fresh"."""
    stage_dir = Path(stage_dir)
    marker = read_marker(stage_dir)
    if marker is None:
        if stage_dir.exists() and any(stage_dir.iterdir()):
            return "fresh", "folder has no stage.json (not written by the pipeline)"
        return "fresh", "not run yet"
    if marker.get("config_hash") != digest:
        return "fresh", "config changed"
    if marker.get("inputs") != inputs:
        changed = sorted(k for k in set(inputs) | set(marker.get("inputs") or {})
                         if inputs.get(k) != (marker.get("inputs") or {}).get(k))
        return "fresh", f"input(s) changed: {', '.join(changed)}"
    missing = [o for o in outputs if not (stage_dir / o).exists()]
    if marker.get("status") in ("complete", "incomplete") and not missing:
        return "skip", marker["status"]
    if missing and marker.get("status") in ("complete", "incomplete"):
        return "resume", f"output(s) missing: {', '.join(missing)}"
    return "resume", "partial"


def set_aside(stage_dir: Path, run_dir: Path, keep: bool) -> Path | None:
    """Move an invalidated stage folder to ``<run_dir>/stale/`` (or delete it)."""
    stage_dir = Path(stage_dir)
    if not stage_dir.exists():
        return None
    if not keep:
        shutil.rmtree(stage_dir)
        return None
    rel = stage_dir.resolve().relative_to(Path(run_dir).resolve())
    target = Path(run_dir) / "stale" / f"{'-'.join(rel.parts)}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    target.parent.mkdir(parents=True, exist_ok=True)
    stage_dir.rename(target)
    return target


def begin(stage_dir: Path, stage: str, config: dict, digest: str, inputs: dict[str, str]) -> dict:
    """Write the "running" marker (keeps earlier attempts' timing)."""
    stage_dir = Path(stage_dir)
    stage_dir.mkdir(parents=True, exist_ok=True)
    previous = read_marker(stage_dir) or {}
    marker = {"stage": stage, "status": "running", "config_hash": digest, "inputs": inputs, "config": config,
              "attempts": list(previous.get("attempts") or []) + [{"started": time.time()}]}
    atomic_write_text(stage_dir / MARKER, json.dumps(marker, indent=2, default=str) + "\n")
    return marker


def finish(stage_dir: Path, marker: dict, status: str, returncode: int) -> dict:
    """Close the current attempt; a finished stage gets a new ``run_id``."""
    attempt = marker["attempts"][-1]
    attempt.update(finished=time.time(), seconds=round(time.time() - attempt["started"], 3),
                   returncode=returncode, status=status)
    marker["status"] = status
    if status in ("complete", "incomplete"):
        marker["run_id"] = uuid.uuid4().hex
        marker["seconds"] = round(sum(a.get("seconds", 0.0) for a in marker["attempts"]), 3)
    atomic_write_text(Path(stage_dir) / MARKER, json.dumps(marker, indent=2, default=str) + "\n")
    return marker
