# SPDX-License-Identifier: Apache-2.0
"""Training checkpoints with torch.distributed.checkpoint (DCP), and export of weights.

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

:func:`export_weights` turns a checkpoint into a model directory in the published
layout that :func:`srum.load_model` reads, without a process group and without loading
the optimizer state.
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
from safetensors.torch import save_file
from torch.distributed.checkpoint.state_dict import (get_model_state_dict, get_optimizer_state_dict,
                                                     set_model_state_dict, set_optimizer_state_dict)

from ..models.bagel.checkpoint import AE_WEIGHTS, WEIGHT_NAMES, WeightFiles, find_weights, resolve_model_dir
from ..models.bagel.config import CheckpointError

log = logging.getLogger(__name__)

__all__ = ["STEP_PREFIX", "LATEST", "TRAIN_STATE", "step_dir_name", "list_checkpoints", "is_complete",
           "latest_checkpoint", "remove_stale", "save_checkpoint", "load_checkpoint", "read_checkpoint_tensors",
           "export_weights"]

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
    """The checkpoint ``latest`` names; if that pointer is missing or names something
    incomplete, the newest complete checkpoint (with a warning); None when there is none."""
    root = Path(root)
    pointer = root / LATEST
    if pointer.is_file():
        name = pointer.read_text(encoding="utf-8").strip()
        candidate = root / name
        if name and "/" not in name and is_complete(candidate):
            return candidate
        log.warning("%s names %r, which is not a complete checkpoint; using the newest complete one", pointer, name)
    found = list_checkpoints(root)
    return found[-1][1] if found else None


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


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
    """Delete ``*.tmp`` checkpoint directories an interrupted save left (rank 0 only)."""
    root = Path(root)
    removed = []
    if _rank() == 0 and root.is_dir():
        for p in root.iterdir():
            if p.is_dir() and p.name.startswith(STEP_PREFIX) and p.name.endswith(TMP_SUFFIX):
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p)
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
        _write_atomic(tmp / TRAIN_STATE, json.dumps(train_state, indent=1) + "\n")
        _write_atomic(tmp / CONFIG_FILE, config_yaml)
        if final.exists():  # the same step saved again (e.g. a resumed run that ended there)
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(root)
        _write_atomic(root / LATEST, final.name + "\n")
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
    state = _training_state(model, optimizer, ema)
    saved = _metadata_keys(path)
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
    dcp.load(state, checkpoint_id=path)
    set_model_state_dict(model, state["model"])
    set_optimizer_state_dict(model, optimizer, state["optimizer"])
    if "ema" in state:
        ema.load_state_dict(state["ema"])
    train_state = json.loads((path / TRAIN_STATE).read_text(encoding="utf-8"))
    rng_file = path / "rng" / f"rank-{_rank():05d}.pt"
    if rng_file.is_file() and train_state.get("world_size") == (dist.get_world_size() if dist.is_initialized() else 1):
        _set_rng_state(torch.load(rng_file, weights_only=True))
    return train_state


def _metadata_keys(path: Path) -> dict:
    return dcp.FileSystemReader(str(path)).read_metadata().state_dict_metadata


def _load_in_this_process(state: dict, path: Path) -> None:
    """dcp.load without a process group (it warns that it assumes so: we mean it)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load(state, checkpoint_id=path, no_dist=True)


def read_checkpoint_tensors(checkpoint_dir: str | os.PathLike, group: str = "model") -> dict[str, torch.Tensor]:
    """Every tensor of one group ("model" or "ema") of a checkpoint as full CPU tensors,
    keyed by parameter name; no process group needed (for inspection and tests: it
    holds the whole group in memory)."""
    path = Path(checkpoint_dir)
    prefix = group + "."
    state = {group: {k[len(prefix):]: torch.empty(tuple(m.size), dtype=m.properties.dtype)
                     for k, m in _metadata_keys(path).items() if k.startswith(prefix) and hasattr(m, "size")}}
    if not state[group]:
        raise CheckpointError(f"{path}: no {group!r} tensors in this checkpoint")
    _load_in_this_process(state, path)
    return state[group]


# --------------------------------------------------------------------------- export

def _copy_model_files(base: Path, out: Path) -> None:
    """Configs, tokenizer and the VAE of the base model (everything but its weights)."""
    for item in base.iterdir():
        if item.name.startswith(tuple(n.split(".")[0] for n in WEIGHT_NAMES)) or item.is_dir():
            continue  # ema*/model* weight files and shard indexes
        shutil.copy2(item, out / item.name)


def export_weights(checkpoint_dir: str | os.PathLike, base_model_dir: str | os.PathLike,
                   out_dir: str | os.PathLike, weights: str = "model", dtype: torch.dtype = torch.bfloat16,
                   max_shard_bytes: int = 5 * 2 ** 30) -> Path:
    """Checkpoint -> model directory loadable by :func:`srum.load_model`.

    ``weights="model"`` exports the trained parameters (what the reference's results
    come from); ``"ema"`` the moving average for trainable parameters (frozen ones are
    the trained state, equal to the base). Tensors are read from the DCP shards a
    shard-file at a time (about ``max_shard_bytes`` of host memory), cast to ``dtype``
    and written as ``model.safetensors`` / ``ema.safetensors`` (sharded with an index
    beyond ``max_shard_bytes``). Configs, tokenizer and ``ae.safetensors`` are copied
    from ``base_model_dir`` (the VAE is always frozen). Checks that every key of the
    base weights is exported with the same shape."""
    if weights not in ("model", "ema"):
        raise ValueError(f"weights must be 'model' or 'ema', got {weights!r}")
    ckpt = Path(checkpoint_dir)
    if ckpt.is_dir() and not is_complete(ckpt):
        latest = latest_checkpoint(ckpt)  # a checkpoints root was given
        if latest is None:
            raise CheckpointError(f"{ckpt}: no complete training checkpoint there")
        ckpt = latest
    if not ckpt.is_dir():
        raise CheckpointError(f"{ckpt}: checkpoint directory not found")
    base = resolve_model_dir(base_model_dir)
    if Path(out_dir).resolve() == base.resolve():
        raise ValueError(f"{out_dir}: export into a new directory, not over the base model")
    base_weights = WeightFiles.open(find_weights(base))
    metadata = _metadata_keys(ckpt)
    source = {}
    for key, shape in base_weights.shapes.items():
        name = f"model.{key}"
        if weights == "ema" and f"ema.{key}" in metadata:
            name = f"ema.{key}"
        meta = metadata.get(name)
        if meta is None or not hasattr(meta, "size"):
            raise CheckpointError(f"{ckpt}: tensor {key} of the base model {base} is not in the checkpoint")
        if tuple(meta.size) != tuple(shape):
            raise CheckpointError(f"{ckpt}: tensor {key} has shape {list(meta.size)}, base model has {list(shape)}")
        source[key] = (name, meta)
    if weights == "ema" and not any(k.startswith("ema.") for k in metadata):
        raise CheckpointError(f"{ckpt}: the run kept no EMA (ema.enabled was false)")

    itemsize = torch.empty((), dtype=dtype).element_size()
    shards, current, size = [], [], 0
    for key in sorted(source):
        nbytes = int(np.prod(source[key][1].size)) * itemsize
        if current and size + nbytes > max_shard_bytes:
            shards.append(current)
            current, size = [], 0
        current.append(key)
        size += nbytes
    shards.append(current)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = "ema" if weights == "ema" else "model"
    for stale in out.glob(f"{stem}*.safetensors*"):
        stale.unlink()
    weight_map, total = {}, 0
    for i, keys in enumerate(shards):
        state: dict = {}
        for key in keys:
            name, meta = source[key]
            group, _, fqn = name.partition(".")
            state.setdefault(group, {})[fqn] = torch.empty(tuple(meta.size), dtype=meta.properties.dtype)
        _load_in_this_process(state, ckpt)
        tensors = {}
        for key in keys:
            name, _ = source[key]
            group, _, fqn = name.partition(".")
            t = state[group][fqn]
            tensors[key] = (t.to(dtype) if t.is_floating_point() else t).contiguous()
            total += tensors[key].numel() * tensors[key].element_size()
        file = f"{stem}.safetensors" if len(shards) == 1 else f"{stem}-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(tensors, out / file, metadata={"format": "pt"})
        weight_map.update({k: file for k in keys})
        del state, tensors
    if len(shards) > 1:
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (out / f"{stem}.safetensors.index.json").write_text(json.dumps(index, indent=1) + "\n", encoding="utf-8")
    _copy_model_files(base, out)
    if not (out / AE_WEIGHTS).is_file():
        raise CheckpointError(f"{base}: no {AE_WEIGHTS} to copy")
    train_state = json.loads((ckpt / TRAIN_STATE).read_text(encoding="utf-8"))
    provenance = {"checkpoint": str(ckpt.resolve()), "step": train_state.get("step"), "weights": weights,
                  "base_model": str(base), "dtype": str(dtype).replace("torch.", "")}
    (out / "srum_export.json").write_text(json.dumps(provenance, indent=1) + "\n", encoding="utf-8")
    return out
