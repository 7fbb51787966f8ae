# SPDX-License-Identifier: Apache-2.0
"""Process-group set-up shared by every multi-process stage.

Stages run alone (one process) or under ``torchrun`` (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK`` in the environment). :func:`init` starts the process group only when
there is more than one process: NCCL when CUDA is available, gloo otherwise.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .process import die_with_parent  # noqa: F401  (re-exported: torch-free home)


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def env_info() -> DistInfo:
    """Rank layout from torchrun's environment variables (1 process when absent)."""
    def read(name: str, default: int) -> int:
        value = os.environ.get(name)
        try:
            return default if value in (None, "") else int(value)
        except ValueError:
            raise ValueError(f"environment variable {name}={value!r} is not an integer") from None
    info = DistInfo(read("RANK", 0), read("WORLD_SIZE", 1), read("LOCAL_RANK", 0))
    if not 0 <= info.rank < info.world_size:
        raise ValueError(f"RANK={info.rank} is outside WORLD_SIZE={info.world_size}")
    return info


DEFAULT_TIMEOUT_MINUTES = 120.0   # a 7B checkpoint save or a 72B judge's shard can take many minutes


def timeout_minutes(configured: float | None = None) -> float:
    """The collective timeout: the config's value, else ``$SRUM_DIST_TIMEOUT_MINUTES``
    (the pipeline's ``launcher.dist_timeout_minutes``), else :data:`DEFAULT_TIMEOUT_MINUTES`.
    NCCL's own default (10 min) is shorter than saving a DCP checkpoint of the 7B recipe."""
    if configured is not None:
        return float(configured)
    value = os.environ.get("SRUM_DIST_TIMEOUT_MINUTES")
    try:
        return float(value) if value else DEFAULT_TIMEOUT_MINUTES
    except ValueError:
        raise ValueError(f"SRUM_DIST_TIMEOUT_MINUTES={value!r} is not a number of minutes") from None


def init(timeout: float | None = None) -> DistInfo:
    """Start the process group when launched with more than one process (idempotent).
    ``timeout``: minutes a collective may wait (see :func:`timeout_minutes`)."""
    info = env_info()
    if info.enabled and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=timeout_minutes(timeout)))
    return info


def local_world_size() -> int:
    """Processes on this node (torchrun's ``LOCAL_WORLD_SIZE``; 1 without torchrun)."""
    value = os.environ.get("LOCAL_WORLD_SIZE")
    return int(value) if value else 1


def local_gpus(info: DistInfo, gpus_per_process: int) -> list[int]:
    """The GPUs of this process when each process spans ``gpus_per_process`` of them: the
    visible devices sliced by local rank, ``[local_rank * g, (local_rank + 1) * g)``.
    Raises with the launch that fits when the node has too few."""
    g = int(gpus_per_process)
    if g < 1:
        raise ValueError(f"gpus_per_process must be >= 1, got {g}")
    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    first = info.local_rank * g
    if g > 1 and first + g > visible:
        fits = max(visible // g, 1) if visible else 0
        raise ValueError(f"process {info.local_rank} of this node needs GPUs {list(range(first, first + g))} "
                         f"(gpus_per_process={g}) but {visible} are visible: launch {fits} process(es) per node "
                         "(nproc_per_node = GPUs / gpus_per_process)")
    return list(range(first, first + g))


def local_device(info: DistInfo) -> torch.device:
    """This process's accelerator: ``cuda:LOCAL_RANK`` when CUDA is available, else CPU."""
    return torch.device("cuda", info.local_rank) if torch.cuda.is_available() else torch.device("cpu")


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


class PeerFailed(RuntimeError):
    """Another rank stopped the run; it printed the reason itself."""


def on_main(fn, info: DistInfo, errors: tuple[type[BaseException], ...] = (ValueError, OSError)):
    """Run ``fn()`` on rank 0 only and return its result there (None elsewhere). When it
    raises one of ``errors``, rank 0 re-raises it and every other rank raises
    :class:`PeerFailed` with a one-line message, instead of waiting forever in the next
    collective (or dying with a backend traceback when rank 0 exits)."""
    result, message = None, None
    if info.is_main:
        try:
            result = fn()
        except errors as err:
            message = str(err) or type(err).__name__
            if not (info.enabled and dist.is_initialized()):
                raise
            _share([message])
            raise
    if info.enabled and dist.is_initialized():
        box = [message]
        _share(box)
        if box[0] is not None:
            raise PeerFailed(f"rank {info.rank}: stopped because rank 0 failed (its error is above)")
    return result


def _share(box: list) -> None:
    dist.broadcast_object_list(box, src=0)


def die_with_torchrun() -> None:
    """:func:`die_with_parent` when this process is a torchrun worker."""
    if "TORCHELASTIC_RUN_ID" in os.environ:
        die_with_parent()


_PEER_FAILURE_TEXT = ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "NCCL communicator",
                      "ProcessGroupGloo", "ProcessGroupNCCL")


def peer_failure_note(err: BaseException) -> str | None:
    """On a rank other than 0 of a multi-process run: the one line to print for an error
    that is only the echo of another rank ending (a collective whose peer is gone), so
    the real error, printed by that rank, is not buried under backend tracebacks. None
    for any other error, which is reported as usual."""
    info = env_info()
    if info.rank == 0 or info.world_size < 2:
        return None
    echo = isinstance(err, PeerFailed) or isinstance(err, getattr(dist, "DistError", ())) or (
        isinstance(err, RuntimeError) and any(text in str(err) for text in _PEER_FAILURE_TEXT))
    return f"rank {info.rank}: stopped because another rank failed (its error is above)" if echo else None
