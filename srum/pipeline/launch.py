# SPDX-License-Identifier: Apache-2.0
"""Start one stage as a child process and keep its output in ``<stage_dir>/stage.log``.

Every stage runs in its own process: the model of one stage is gone before the next
loads, a crash cannot take the pipeline down, and launched stages can run under
torchrun with any number of processes exactly as the stage commands do by hand.
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from ..process import die_with_parent
from .config import LauncherConfig

# how long a stopped stage gets to end on SIGTERM before its process group is killed
STOP_GRACE_S = 20.0

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


class Stopped(SystemExit):
    """The launcher got SIGTERM or SIGHUP (e.g. the job scheduler ended it)."""


@contextlib.contextmanager
def _stop_on_signals():
    """Turn SIGTERM / SIGHUP into :class:`Stopped` while a stage runs (main thread only),
    so the clean-up below runs instead of the launcher vanishing and orphaning the stage."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise Stopped(128 + signum)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def end_process_group(proc: subprocess.Popen, grace_s: float = STOP_GRACE_S) -> None:
    """SIGTERM the stage's process group (torchrun and anything in its group), then
    SIGKILL what is left after ``grace_s``. torchrun's workers run in sessions of their
    own; they end with torchrun (:func:`~srum.distributed.die_with_torchrun`)."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


def stage_env(launcher: LauncherConfig, stage_dir: Path | None) -> dict[str, str]:
    """The environment a launched stage gets on top of the pipeline's: the collective
    timeout, per-rank logs in ``<stage_dir>/logs/`` and ``launcher.env``."""
    env = {"SRUM_DIST_TIMEOUT_MINUTES": f"{launcher.dist_timeout_minutes:g}"}
    if launcher.rank_logs and stage_dir is not None:
        env["SRUM_RANK_LOG_DIR"] = str(Path(stage_dir).absolute() / "logs")
    return {**env, **launcher.env}


def run_logged(command: list[str], log_path: Path, env: dict[str, str], cwd: str | None = None) -> int:
    """Run ``command``, echo its output and append it to ``log_path``; returns the exit code.
    The command runs in a process group of its own that is ended when the launcher is
    stopped (Ctrl-C, SIGTERM, SIGHUP), and it gets SIGTERM if the launcher is killed."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    full_env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
    with open(log_path, "a", encoding="utf-8") as log, _stop_on_signals():
        log.write(f"$ {' '.join(command)}\n")
        log.flush()
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=full_env, cwd=cwd,
                                text=True, errors="replace", bufsize=1, start_new_session=True,
                                preexec_fn=die_with_parent)
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                sys.stdout.write(f"    {line}")
                log.write(line)
            return proc.wait()
        except BaseException:
            end_process_group(proc)
            raise
