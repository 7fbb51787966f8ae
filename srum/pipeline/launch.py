# SPDX-License-Identifier: Apache-2.0
"""Start one stage as a child process and keep its output in ``<stage_dir>/stage.log``.

Every stage runs in its own process: the model of one stage is gone before the next
loads, a crash cannot take the pipeline down, and launched stages can run under
torchrun with any number of processes exactly as the stage commands do by hand.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from .config import LauncherConfig

_MULTINODE_FLAGS = ("--nnodes", "--rdzv", "--master", "--node", "--standalone")


def srum_command(launcher: LauncherConfig, args: list[str], distributed: bool, nproc: int | None = None,
                 log_dir: Path | None = None) -> list[str]:
    """``python -m srum ARGS``, under torchrun (and the prefix) for distributed stages.
    ``nproc``: processes per node of this step (default ``launcher.nproc_per_node``);
    ``log_dir``: torchrun writes each worker's error file (its traceback) below it."""
    python = launcher.python or sys.executable
    if not distributed:
        return [python, "-m", "srum", *args]
    nproc = launcher.nproc_per_node if nproc is None else nproc
    torchrun = list(launcher.torchrun_args)
    single = nproc == 1 and not torchrun and not launcher.prefix
    if single:
        return [python, "-m", "srum", *args]
    if not any(a.startswith(_MULTINODE_FLAGS) for a in torchrun):
        torchrun = ["--standalone", *torchrun]
    if log_dir is not None:
        torchrun.append(f"--log-dir={log_dir}")
    return [*launcher.prefix, python, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
            *torchrun, "-m", "srum", *args]


def stage_env(launcher: LauncherConfig, stage_dir: Path | None) -> dict[str, str]:
    """The environment a launched stage gets on top of the pipeline's: the collective
    timeout, per-rank logs in ``<stage_dir>/logs/`` and ``launcher.env``."""
    env = {"SRUM_DIST_TIMEOUT_MINUTES": f"{launcher.dist_timeout_minutes:g}"}
    if launcher.rank_logs and stage_dir is not None:
        env["SRUM_RANK_LOG_DIR"] = str(Path(stage_dir).absolute() / "logs")
    return {**env, **launcher.env}


def run_logged(command: list[str], log_path: Path, env: dict[str, str], cwd: str | None = None) -> int:
    """Run ``command``, echo its output and append it to ``log_path``; returns the exit code."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    full_env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(f"$ {' '.join(command)}\n")
        log.flush()
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=full_env, cwd=cwd,
                                text=True, errors="replace", bufsize=1)
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                sys.stdout.write(f"    {line}")
                log.write(line)
            return proc.wait()
        except KeyboardInterrupt:
            proc.terminate()
            proc.wait()
            raise
