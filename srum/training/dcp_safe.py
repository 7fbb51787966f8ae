# SPDX-License-Identifier: Apache-2.0
"""Reading DCP checkpoints without running code from them, and checking they are whole.

A DCP checkpoint's ``.metadata`` is a Python pickle, and ``pickle.load`` (what torch's
``FileSystemReader`` uses) runs whatever a crafted file asks for. :class:`SafeReader`
reads it with an unpickler that only builds the checkpoint-metadata classes of
``torch.distributed.checkpoint`` and the few torch values they hold (dtypes,
``torch.Size``, the strided layout, paths); anything else is refused with the file
named. The tensor shards (``*.distcp``) are read by torch with ``weights_only=True``,
which is restricted already.

:func:`checkpoint_problem` says what is wrong with a checkpoint directory (an
unreadable or truncated ``.metadata``, a missing or short ``.distcp``, a bad
``trainer_state.json``) without loading any tensor: resume and export use it to skip a
half-copied checkpoint.
"""
from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import torch
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta

__all__ = ["UnsafeCheckpointError", "SafeReader", "read_metadata", "checkpoint_problem", "read_train_state"]

METADATA_FILE = ".metadata"
TRAIN_STATE = "trainer_state.json"

_DCP = "torch.distributed.checkpoint"
# (module, name) pairs a DCP metadata pickle may name: its own dataclasses and the
# torch values they hold. Every one only stores data; none runs anything on load.
_ALLOWED = {
    (f"{_DCP}.metadata", name) for name in (
        "Metadata", "TensorStorageMetadata", "BytesStorageMetadata", "TensorProperties", "ChunkStorageMetadata",
        "MetadataIndex", "StorageMeta", "_MEM_FORMAT_ENCODING")
} | {
    (f"{_DCP}.filesystem", "_StorageInfo"),
    ("torch", "Size"),
    ("torch.serialization", "_get_layout"),     # maps the name "torch.strided" to the layout object
    ("pathlib", "PosixPath"), ("pathlib", "PurePosixPath"), ("pathlib", "WindowsPath"),
    ("pathlib", "PureWindowsPath"), ("pathlib", "Path"),
    ("collections", "OrderedDict"),
}


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A ``.metadata`` pickle that names something other than checkpoint metadata."""


class _MetadataUnpickler(pickle.Unpickler):
    def __init__(self, file, source: Path):
        super().__init__(file)
        self.source = source

    def find_class(self, module: str, name: str):
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise UnsafeCheckpointError(f"{self.source}: refers to {module}.{name}, which is not checkpoint "
                                    "metadata; refusing to load it (a DCP .metadata file only holds "
                                    "torch.distributed.checkpoint metadata)")


def read_metadata(path: str | os.PathLike) -> Metadata:
    """The ``Metadata`` of checkpoint directory ``path``, read with the restricted unpickler.
    Raises :class:`UnsafeCheckpointError` for a file that names anything else, and
    ``pickle.UnpicklingError`` / ``EOFError`` / ``OSError`` for an unreadable one."""
    source = Path(path) / METADATA_FILE
    with open(source, "rb") as f:
        metadata = _MetadataUnpickler(f, source).load()
    if not isinstance(metadata, Metadata):
        raise UnsafeCheckpointError(f"{source}: holds a {type(metadata).__name__}, not DCP checkpoint metadata")
    return metadata


class SafeReader(FileSystemReader):
    """torch's ``FileSystemReader`` with the metadata read by :func:`read_metadata`."""

    def read_metadata(self, *args, **kwargs) -> Metadata:
        if kwargs.get("rank") is not None:  # per-rank metadata files are not a layout we write
            raise UnsafeCheckpointError(f"{self.path}: per-rank DCP metadata is not supported")
        metadata = read_metadata(self.path)
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


def _shard_problem(path: Path, metadata: Metadata) -> str | None:
    """A ``*.distcp`` file the metadata needs that is missing or shorter than the bytes it lists."""
    needed: dict[str, int] = {}
    for info in (metadata.storage_data or {}).values():
        relative = getattr(info, "relative_path", None)
        if not isinstance(relative, str) or "/" in relative or relative.startswith("."):
            return f"{path / METADATA_FILE}: lists a shard file {relative!r} outside the checkpoint directory"
        needed[relative] = max(needed.get(relative, 0), int(info.offset) + int(info.length))
    for name, size in sorted(needed.items()):
        shard = path / name
        if not shard.is_file():
            return f"{shard}: missing (the checkpoint's metadata lists it)"
        actual = shard.stat().st_size
        if actual < size:
            return f"{shard}: truncated ({actual} bytes, the metadata lists {size})"
    return None


def read_train_state(path: str | os.PathLike) -> dict:
    """``trainer_state.json`` of a checkpoint, checked for the fields resume needs;
    ``ValueError`` naming the file when it is unreadable or incomplete."""
    file = Path(path) / TRAIN_STATE
    try:
        state = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{file}: not a readable trainer state ({err})") from None
    if not isinstance(state, dict):
        raise ValueError(f"{file}: expected a JSON object")
    if not isinstance(state.get("step"), int) or isinstance(state.get("step"), bool) or state["step"] < 0:
        raise ValueError(f"{file}: 'step' must be a non-negative integer, got {state.get('step')!r}")
    if not isinstance(state.get("data_position"), dict):
        raise ValueError(f"{file}: 'data_position' must be an object")
    return state


def checkpoint_problem(path: str | os.PathLike) -> str | None:
    """Why checkpoint directory ``path`` cannot be loaded, naming the file (None: it is whole)."""
    path = Path(path)
    try:
        metadata = read_metadata(path)
    except UnsafeCheckpointError as err:
        return str(err)
    except (pickle.UnpicklingError, EOFError, OSError, AttributeError, TypeError, ValueError, IndexError) as err:
        return f"{path / METADATA_FILE}: unreadable or truncated ({type(err).__name__}: {err})"
    problem = _shard_problem(path, metadata)
    if problem:
        return problem
    try:
        read_train_state(path)
    except ValueError as err:
        return str(err)
    return None
