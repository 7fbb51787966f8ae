# SPDX-License-Identifier: Apache-2.0
"""Bagel-7B-MoT: model, checkpoint I/O and inference."""
from .checkpoint import CheckpointError, load_model, save_model
from .config import BagelConfig, LanguageModelConfig, VisionConfig
from .inference import ImageGenerationOutput
from .model import Bagel, PackedBatch
from .tiny import write_tiny_checkpoint

__all__ = ["Bagel", "BagelConfig", "CheckpointError", "ImageGenerationOutput", "LanguageModelConfig", "PackedBatch",
           "VisionConfig", "load_model", "save_model", "write_tiny_checkpoint"]
