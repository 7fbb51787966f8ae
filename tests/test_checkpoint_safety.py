# SPDX-License-Identifier: Apache-2.0
"""Training checkpoints from untrusted or damaged directories: the DCP metadata pickle is
read without running code; a truncated shard or metadata falls back to the previous whole
checkpoint (resume) or is named (export). Small DCP checkpoints written in-process."""
import json
import logging
import os
import pickle
import warnings

import pytest
import torch
import torch.distributed.checkpoint as dcp

from srum.export.checkpoint import export_checkpoint, resolve_checkpoint
from srum.models.bagel.config import CheckpointError
from srum.training.checkpointing import (LATEST, checkpoint_metadata, latest_checkpoint, read_checkpoint_tensors,
                                         remove_stale)
from srum.training.dcp_safe import UnsafeCheckpointError, checkpoint_problem, read_metadata


def _write_checkpoint(root, step, value=1.0):
    path = root / f"step-{step:06d}"
    state = {"model": {"w": torch.full((4, 3), float(value)), "b": torch.arange(5.0)},
             "optimizer": {"param_groups": [{"lr": 0.1}]}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save(state, checkpoint_id=path, no_dist=True)
    (path / "trainer_state.json").write_text(json.dumps({"step": step, "data_position": {"epoch": 0, "offset": 0}}))
    (path / "config.yaml").write_text("seed: 0\n")
    (root / LATEST).write_text(path.name + "\n")
    return path


def _shard(path):
    return next(p for p in path.iterdir() if p.suffix == ".distcp")


class _Boom:
    """Pickles as a call of os.system: what a crafted .metadata would do."""

    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_metadata_is_read_without_pickle_and_tensors_load(tmp_path):
    path = _write_checkpoint(tmp_path, 2, value=3.0)
    meta = read_metadata(path)
    assert "model.w" in meta.state_dict_metadata and tuple(checkpoint_metadata(path)["model.w"].size) == (4, 3)
    assert checkpoint_problem(path) is None
    assert torch.equal(read_checkpoint_tensors(path)["w"], torch.full((4, 3), 3.0))


def test_crafted_metadata_is_refused_and_runs_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "checkpoints"
    good = _write_checkpoint(root, 2)
    bad = _write_checkpoint(root, 4)
    (bad / ".metadata").write_bytes(pickle.dumps(_Boom()))
    with pytest.raises(UnsafeCheckpointError, match=r"\.metadata: refers to posix\.system"):
        read_metadata(bad)
    assert not (tmp_path / "PWNED").exists()
    assert "not checkpoint metadata" in checkpoint_problem(bad)
    assert latest_checkpoint(root) == good  # resume passes over it
    with pytest.raises(CheckpointError, match=r"step-000004/\.metadata"):
        export_checkpoint(bad, tmp_path / "base", tmp_path / "out")
    with pytest.raises(UnsafeCheckpointError):
        read_checkpoint_tensors(bad)
    assert not (tmp_path / "PWNED").exists()


def test_truncated_shard_falls_back_with_a_warning_naming_it(tmp_path, caplog):
    root = tmp_path / "checkpoints"
    older = _write_checkpoint(root, 2)
    newer = _write_checkpoint(root, 4)
    shard = _shard(newer)
    shard.write_bytes(shard.read_bytes()[:20])  # a half-copied checkpoint
    with caplog.at_level(logging.WARNING):
        assert latest_checkpoint(root) == older
    assert str(shard) in caplog.text and "truncated" in caplog.text and "falling back" in caplog.text
    assert resolve_checkpoint(root) == older
    with pytest.raises(CheckpointError, match=f"{shard}: truncated"):
        resolve_checkpoint(newer)


@pytest.mark.parametrize("damage", ["truncate", "empty", "shard_missing", "state"])
def test_every_kind_of_damage_names_the_file(tmp_path, damage):
    root = tmp_path / "checkpoints"
    older = _write_checkpoint(root, 2)
    newer = _write_checkpoint(root, 4)
    if damage == "truncate":
        data = (newer / ".metadata").read_bytes()
        (newer / ".metadata").write_bytes(data[:len(data) // 2])
        named = newer / ".metadata"
    elif damage == "empty":
        (newer / ".metadata").write_bytes(b"")
        named = newer / ".metadata"
    elif damage == "shard_missing":
        named = _shard(newer)
        named.unlink()
    else:
        (newer / "trainer_state.json").write_text('{"step": 4, "data_posit')
        named = newer / "trainer_state.json"
    assert str(named) in checkpoint_problem(newer)
    assert latest_checkpoint(root) == older
    with pytest.raises(CheckpointError, match=str(named)):
        resolve_checkpoint(newer)


def test_nothing_whole_left_is_none(tmp_path):
    root = tmp_path / "checkpoints"
    only = _write_checkpoint(root, 2)
    (only / ".metadata").write_bytes(b"\x80\x04garbage")
    assert latest_checkpoint(root) is None


def test_remove_stale_also_removes_temp_files_of_a_killed_save(tmp_path):
    root = tmp_path / "checkpoints"
    _write_checkpoint(root, 2)
    (root / f".{LATEST}.tmp12345").write_text("step-000004\n")
    (root / "step-000004.tmp").mkdir()
    removed = remove_stale(root)
    assert sorted(p.name for p in removed) == [f".{LATEST}.tmp12345", "step-000004.tmp"]
    assert (root / LATEST).read_text() == "step-000002\n"
