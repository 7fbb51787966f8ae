# SPDX-License-Identifier: Apache-2.0
"""srum: self-rewarding post-training (SRUM) for the unified multimodal model Bagel."""
from __future__ import annotations

import importlib

__version__ = "0.1.0"
__all__ = ["CheckpointError", "load_model", "save_model", "write_tiny_checkpoint", "__version__"]

# Loaded on first use (PEP 562): importing srum (and so `srum --help`) must not import
# torch and transformers, which takes tens of seconds on a cluster filesystem.
_LAZY = {name: "srum.models.bagel" for name in ("CheckpointError", "load_model", "save_model",
                                                  "write_tiny_checkpoint")}


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'srum' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
