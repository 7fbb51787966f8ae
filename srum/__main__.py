# SPDX-License-Identifier: Apache-2.0
"""``python -m srum`` (and ``torchrun -m srum``) runs the command line.

Under torchrun the entry point is wrapped in torchelastic's ``record``: an uncaught error
of a worker is written to its error file (``TORCHELASTIC_ERROR_FILE``, under torchrun's
``--log-dir``), so torchrun's failure summary shows the root cause and its traceback.
With ``SRUM_RANK_LOG_DIR`` set, each process also writes ``rank-N.log`` (:mod:`srum.ranklog`)."""
import os
import sys


def entry_point():
    """The command line's ``main``, recorded by torchelastic when torchrun started us."""
    from srum.cli import main
    if os.environ.get("TORCHELASTIC_ERROR_FILE") or os.environ.get("TORCHELASTIC_RUN_ID"):
        from torch.distributed.elastic.multiprocessing.errors import record
        return record(main)
    return main


def run() -> int:
    from srum.ranklog import install_from_env
    install_from_env()
    return entry_point()()


if __name__ == "__main__":
    sys.exit(run())
