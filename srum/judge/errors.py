# SPDX-License-Identifier: Apache-2.0
"""What a judge call may raise, and which of it stops a stage.

Two kinds of failure are kept apart:

* :class:`JudgeRequestError`: some questions of one call got no answer (an HTTP request
  that timed out or kept failing after its retries, a request the server refused). Those
  questions count as failed attempts, exactly like an answer that does not parse; the
  other rows of the call keep their answers.
* :class:`JudgeBackendFatal`: the judge itself is unusable (CUDA out of memory, a CUDA
  error, a server that cannot be reached or rejects our key). Counting it per item would
  turn one broken set-up into thousands of "failed" judgments, so it stops the stage with
  a message that says what to change. It is deliberately not a ``RuntimeError``: no
  per-item ``except RuntimeError`` can swallow it.
"""
from __future__ import annotations

import re
from typing import Sequence

# RuntimeError texts that mean the device (not the question) is broken
_CUDA_PATTERNS = re.compile(r"CUDA out of memory|out of memory|CUDA error|CUBLAS_STATUS|CUDNN_STATUS|cuDNN error|"
                            r"NCCL error|device-side assert|illegal memory access", re.IGNORECASE)


class JudgeRequestError(RuntimeError):
    """Rows of one judge call without an answer. ``answers[i]``: row ``i``'s reply (None
    where it failed); ``errors[i]``: why it failed (None where it has an answer)."""

    def __init__(self, answers: Sequence, errors: Sequence[str | None]):
        self.answers, self.errors = list(answers), list(errors)
        failed = [e for e in self.errors if e is not None]
        super().__init__(f"{len(failed)} of {len(self.errors)} judge request(s) failed; first: {failed[0] if failed else '?'}")


class JudgeBackendFatal(Exception):
    """The judge cannot work at all: stop the stage (see the module docstring)."""


def fatal_reason(err: BaseException) -> str | None:
    """Why ``err`` means the judge's device is broken (CUDA out of memory, a CUDA/cuBLAS/
    NCCL error), or None when it concerns only the questions asked."""
    try:
        import torch
        if isinstance(err, torch.OutOfMemoryError):
            return "CUDA out of memory"
    except (ImportError, AttributeError):
        pass
    if isinstance(err, RuntimeError) and _CUDA_PATTERNS.search(str(err)):
        return "CUDA error"
    return None


def raise_if_fatal(err: BaseException, where: str) -> None:
    """Re-raise ``err`` as :class:`JudgeBackendFatal` when it breaks the judge itself."""
    if isinstance(err, JudgeBackendFatal):
        raise err
    reason = fatal_reason(err)
    if reason is not None:
        hint = (" Lower the judge's batch_size, give it more GPUs (gpus_per_process / device_map), or serve it "
                "apart with backend: openai (EVAL.md).") if "memory" in reason else ""
        raise JudgeBackendFatal(f"{where}: {reason}, stopping instead of counting every item as failed: "
                                f"{type(err).__name__}: {err}.{hint}") from err
