# SPDX-License-Identifier: Apache-2.0
"""Where a training run starts: a fresh start, or a resume that continues the same run.

``checkpoint.resume``: ``auto`` continues from the newest whole checkpoint under
``output_dir/checkpoints`` (none: start at step 0); ``never`` refuses an output
directory that holds checkpoints; ``fresh`` moves the earlier outputs of
``output_dir`` aside into ``replaced-<time>/`` and starts at step 0; a path resumes
from that checkpoint directory.

A resume is refused when a result-changing setting differs from the checkpoint's own
``config.yaml`` (each field is named with both values): the continued run would
otherwise be a mix of two configs that neither file describes. Settings that only say
how the run is operated are free to change: the step count to reach, checkpointing,
logging, debugging, parallelism and compilation, data loader threads; so is the
split of a step between processes and micro-batches, as long as their product (the
packs per step) stays the same.
"""
from __future__ import annotations

from pathlib import Path

import yaml

from ..config import to_dict
from ..locking import LOCK_NAME
from ..models.bagel.config import CheckpointError
from ..run_settings import differences, move_aside, refuse_changes
from .checkpointing import CONFIG_FILE, latest_checkpoint, list_checkpoints
from .config import TrainConfig
from .dcp_safe import read_train_state

__all__ = ["OPERATIONAL_FIELDS", "resume_target", "check_resume_settings", "start_fresh"]

OPERATIONAL_FIELDS = ("output_dir", "train.total_steps", "train.max_consecutive_nonfinite", "train.grad_accum",
                      "parallel", "checkpoint", "logging", "debug", "data.num_workers")


def resume_target(cfg: TrainConfig, ckpt_root: Path) -> Path | None:
    """The checkpoint to resume from, or None for a start at step 0."""
    resume = cfg.checkpoint.resume
    if resume in ("auto", "fresh"):
        return latest_checkpoint(ckpt_root) if resume == "auto" else None
    if resume == "never":
        if list_checkpoints(ckpt_root):
            raise ValueError(f"{ckpt_root} already holds checkpoints and checkpoint.resume=never: "
                             "choose another output_dir, resume=auto to continue, or resume=fresh to start over")
        return None
    path = Path(resume)
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint.resume={resume}: no such checkpoint directory")
    return path


def start_fresh(output_dir: Path) -> Path | None:
    """``checkpoint.resume=fresh``: move the earlier outputs aside (rank 0, lock held)."""
    return move_aside(output_dir, keep=(LOCK_NAME,))


def _saved_config(checkpoint: Path) -> dict:
    path = checkpoint / CONFIG_FILE
    try:
        saved = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise CheckpointError(f"{path}: unreadable ({err})") from None
    if not isinstance(saved, dict):
        raise CheckpointError(f"{path}: not a training config")
    return saved


def check_resume_settings(cfg: TrainConfig, checkpoint: Path, world_size: int) -> None:
    """Refuse (``SettingsChanged``) to resume ``checkpoint`` with other result-changing settings."""
    saved = _saved_config(checkpoint)
    diffs = differences(saved, to_dict(cfg), ignore=OPERATIONAL_FIELDS)
    saved_world = read_train_state(checkpoint).get("world_size")
    saved_accum = (saved.get("train") or {}).get("grad_accum")
    if isinstance(saved_world, int) and isinstance(saved_accum, int) \
            and saved_world * saved_accum != world_size * cfg.train.grad_accum:
        diffs.append(f"packs per step (processes x train.grad_accum): {saved_world * saved_accum} "
                     f"({saved_world} x {saved_accum}) before, {world_size * cfg.train.grad_accum} "
                     f"({world_size} x {cfg.train.grad_accum}) now")
    refuse_changes(f"srum train: {checkpoint}", diffs,
                   "start over with checkpoint.resume=fresh (the earlier outputs move to "
                   f"{cfg.output_dir}/replaced-<time>/), or use another output_dir")
