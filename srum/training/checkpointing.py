# SPDX-License-Identifier: Apache-2.0
"""Training checkpoints with torch.distributed.checkpoint (DCP).

Layout under ``<output_dir>/checkpoints``::

    latest                  one line: the name of the newest complete checkpoint
    step-000300/            one checkpoint
        .metadata, *.distcp   DCP shards: {"model": ..., "optimizer": ..., "ema": ...}
        trainer_state.json    step, data position, schedule, counters, world size
        config.yaml           the resolved training config
        rng/rank-00000.pt     RNG states of each rank

Writes are atomic: every rank writes into ``step-XXXXXX.tmp``; after a barrier rank 0
adds the JSON/YAML, renames the directory to its final name and then replaces
``latest`` (write to a temporary file + ``os.replace``). A crash at any point leaves
either the previous ``latest`` or the new one, both complete; stale ``*.tmp``
directories are removed on the next start. Model, optimizer and EMA states are
DTensors, so a checkpoint loads on any world size (DCP reshards). All ranks must see
the same filesystem.

``srum export`` (:mod:`srum.export.checkpoint`) turns a checkpoint into a model
directory in the published layout, reading the shards without a process group.
"""
from __future__ import annotations

import json
import logging
import os
import random
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (get_model_state_dict, get_optimizer_state_dict,
                                                     set_model_state_dict, set_optimizer_state_dict)

from ..fileio import atomic_write_text, remove_temp_files
from ..models.bagel.config import CheckpointError
from .dcp_safe import SafeReader, checkpoint_problem, read_metadata, read_train_state

log = logging.getLogger(__name__)

__all__ = ["STEP_PREFIX", "LATEST", "TRAIN_STATE", "step_dir_name", "list_checkpoints", "is_complete",
           "latest_checkpoint", "remove_stale", "save_checkpoint", "load_checkpoint", "read_checkpoint_tensors",
           "checkpoint_metadata", "load_without_process_group"]

STEP_PREFIX = "step-"
TMP_SUFFIX = ".tmp"
LATEST = "latest"
TRAIN_STATE = "trainer_state.json"
CONFIG_FILE = "config.yaml"
DCP_METADATA = ".metadata"


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def step_dir_name(step: int) -> str:
    return f"{STEP_PREFIX}{step:06d}"


def _step_of(path: Path) -> int | None:
    name = path.name
    if not name.startswith(STEP_PREFIX) or name.endswith(TMP_SUFFIX):
        return None
    try:
        return int(name[len(STEP_PREFIX):])
    except ValueError:
        return None


def is_complete(path: Path) -> bool:
    """A finished checkpoint: DCP metadata and the trainer state are both there."""
    return (path / DCP_METADATA).is_file() and (path / TRAIN_STATE).is_file()


def list_checkpoints(root: str | os.PathLike) -> list[tuple[int, Path]]:
    """Complete checkpoints under ``root``, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [(_step_of(p), p) for p in root.iterdir() if p.is_dir()]
    return sorted((s, p) for s, p in found if s is not None and is_complete(p))


def latest_checkpoint(root: str | os.PathLike) -> Path | None:
    """The newest checkpoint that is whole: the one ``latest`` names, else the newest
    complete one. A checkpoint that is broken (truncated or missing ``.metadata`` /
    ``*.distcp``, an unreadable trainer state, a metadata pickle that names anything but
    checkpoint metadata) is passed over with a warning naming the bad file, falling back
    to the one before it; None when no whole checkpoint is left."""
    root = Path(root)
    candidates = [p for _, p in reversed(list_checkpoints(root))]
    pointer = root / LATEST
    if pointer.is_file():
        name = pointer.read_text(encoding="utf-8", errors="replace").strip()
        named = root / name
        if name and "/" not in name and is_complete(named):
            candidates = [named] + [p for p in candidates if p != named]
        else:
            log.warning("%s names %r, which is not a complete checkpoint; using the newest complete one", pointer, name)
    for candidate in candidates:
        problem = checkpoint_problem(candidate)
        if problem is None:
            return candidate
        log.warning("checkpoint %s is broken and is skipped: %s; falling back to the previous complete checkpoint",
                    candidate, problem)
    return None


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_stale(root: str | os.PathLike) -> list[Path]:
    """Delete ``*.tmp`` checkpoint directories and temporary files an interrupted save
    left (rank 0 only; the caller holds the output directory's lock, so no live run
    is writing them)."""
    root = Path(root)
    removed = []
    if _rank() == 0 and root.is_dir():
        for p in root.iterdir():
            if p.is_dir() and p.name.startswith(STEP_PREFIX) and p.name.endswith(TMP_SUFFIX):
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p)
        removed += remove_temp_files(root)
    _barrier()
    return removed


def _rng_state() -> dict:
    np_state = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:])}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(tuple(x if not isinstance(x, list) else tuple(x) for x in state["python"]))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _training_state(model, optimizer, ema) -> dict:
    state = {"model": get_model_state_dict(model), "optimizer": get_optimizer_state_dict(model, optimizer)}
    if ema is not None:
        state["ema"] = ema.state_dict()
    return state


def save_checkpoint(root: str | os.PathLike, step: int, model, optimizer, ema, train_state: dict,
                    config_yaml: str, keep_last: int) -> Path:
    """Collective: every rank calls it. Returns the final checkpoint directory."""
    root = Path(root)
    final = root / step_dir_name(step)
    tmp = root / (final.name + TMP_SUFFIX)
    if _rank() == 0:
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        (tmp / "rng").mkdir()
    _barrier()
    dcp.save(_training_state(model, optimizer, ema), checkpoint_id=tmp)
    torch.save(_rng_state(), tmp / "rng" / f"rank-{_rank():05d}.pt")
    _barrier()
    if _rank() == 0:
        atomic_write_text(tmp / TRAIN_STATE, json.dumps(train_state, indent=1) + "\n")
        atomic_write_text(tmp / CONFIG_FILE, config_yaml)
        if final.exists():  # the same step saved again (e.g. a resumed run that ended there)
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(root)
        atomic_write_text(root / LATEST, final.name + "\n")
        _fsync_dir(root)
        for _, old in list_checkpoints(root)[:-keep_last]:
            if old != final:
                shutil.rmtree(old, ignore_errors=True)
    _barrier()
    return final


def load_checkpoint(path: str | os.PathLike, model, optimizer, ema) -> dict:
    """Collective: fill model, optimizer and EMA from ``path`` (any world size) and
    return its trainer state. The RNG states are restored when this rank has one."""
    path = Path(path)
    if not is_complete(path):
        raise CheckpointError(f"{path}: not a complete training checkpoint "
                              f"(needs {DCP_METADATA} and {TRAIN_STATE})")
    problem = checkpoint_problem(path)
    if problem:
        raise CheckpointError(f"cannot resume from {path}: {problem}")
    state = _training_state(model, optimizer, ema)
    saved = checkpoint_metadata(path)
    # Trainable parameters that never received a gradient (e.g. the understanding
    # expert's last MLP, whose output no loss reads) have no AdamW state in the saved
    # run; leave them without state here too instead of demanding it from the file.
    opt_state = state["optimizer"]["state"]
    for fqn in [f for f in opt_state if not any(f"optimizer.state.{f}.{k}" in saved for k in opt_state[f])]:
        del opt_state[fqn]
    if ema is not None:
        if not any(k.startswith("ema.") for k in saved):
            log.warning("%s has no EMA state: the EMA starts from the current weights", path)
            del state["ema"]
    dcp.load(state, storage_reader=SafeReader(path))
    set_model_state_dict(model, state["model"])
    set_optimizer_state_dict(model, optimizer, state["optimizer"])
    if "ema" in state:
        ema.load_state_dict(state["ema"])
    train_state = read_train_state(path)
    rng_file = path / "rng" / f"rank-{_rank():05d}.pt"
    if rng_file.is_file() and train_state.get("world_size") == (dist.get_world_size() if dist.is_initialized() else 1):
        _restore_rng(rng_file)
    return train_state


def _restore_rng(rng_file: Path) -> None:
    # the RNG state only matters for bit-identical continuation; a damaged file is not
    # worth refusing a resume over, but it is said
    try:
        _set_rng_state(torch.load(rng_file, weights_only=True))
    except Exception as err:  # torch.load raises many types for a damaged file
        log.warning("%s: unreadable RNG state (%s); the random streams restart from the seed", rng_file, err)


def checkpoint_metadata(path: Path) -> dict:
    """The tensor/bytes metadata of every entry, read without running pickled code."""
    return read_metadata(path).state_dict_metadata


def load_without_process_group(state: dict, path: Path) -> None:
    """dcp.load without a process group (it warns that it assumes so: we mean it)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load(state, storage_reader=SafeReader(path), no_dist=True)


def read_checkpoint_tensors(checkpoint_dir: str | os.PathLike, group: str = "model") -> dict[str, torch.Tensor]:
    """Every tensor of one group ("model" or "ema") of a checkpoint as full CPU tensors,
    keyed by parameter name; no process group needed (for inspection and tests: it
    holds the whole group in memory)."""
    path = Path(checkpoint_dir)
    prefix = group + "."
    state = {group: {k[len(prefix):]: torch.empty(tuple(m.size), dtype=m.properties.dtype)
                     for k, m in checkpoint_metadata(path).items() if k.startswith(prefix) and hasattr(m, "size")}}
    if not state[group]:
        raise CheckpointError(f"{path}: no {group!r} tensors in this checkpoint")
    load_without_process_group(state, path)
    return state[group]
