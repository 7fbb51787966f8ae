# SPDX-License-Identifier: Apache-2.0
"""Process helpers that must not import torch (the pipeline launcher uses them)."""
from __future__ import annotations

import os
import signal
import sys


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """Ask the kernel (Linux) to send ``sig`` to this process when its parent ends.

    torchrun starts its workers in sessions of their own, so a killed torchrun (or a
    killed launcher) would leave them running, still writing the output directory;
    with this they stop with it. Safe to call in a ``preexec_fn``. No-op elsewhere."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    pr_set_pdeathsig = 1
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(pr_set_pdeathsig, int(sig), 0, 0, 0) != 0:
            return
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the parent was already gone before the request took effect
        os.kill(os.getpid(), sig)
