# SPDX-License-Identifier: Apache-2.0
"""srum: self-rewarding post-training (SRUM) for the unified multimodal model Bagel."""
from .models.bagel import CheckpointError, load_model, save_model, write_tiny_checkpoint

__version__ = "0.1.0"
__all__ = ["CheckpointError", "load_model", "save_model", "write_tiny_checkpoint", "__version__"]
