# SPDX-License-Identifier: Apache-2.0
"""Segment Anything region proposals: building the mask generator and running it on an image.

SAM comes from the ``segment-anything`` package. We build the architecture without
weights and load the checkpoint ourselves (``torch.load(weights_only=True)`` and a
strict ``load_state_dict``) so that a wrong or truncated file fails with a message
naming the file and the offending keys instead of a bare traceback.

``model_type="tiny"`` is a small fixed SAM (defined here) for tests and demos; its
checkpoint is a ``.pth`` state dict like the real ones (:func:`write_tiny_sam`).
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Literal

import numpy as np
import PIL.Image
import torch
from segment_anything import SamAutomaticMaskGenerator, sam_model_registry
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

from srum.config import PATH
from srum.models.bagel import CheckpointError
from srum.models.bagel.transforms import to_rgb

# Thresholds SAM's automatic generator uses by default (tuned for ViT-H). A random tiny
# SAM predicts IoUs around 0 and unstable masks, so with these it returns nothing; for
# "tiny" the quality filters default to off instead.
_SAM_QUALITY_DEFAULTS = {"pred_iou_thresh": 0.88, "stability_score_thresh": 0.95}
_TINY_QUALITY_DEFAULTS = {"pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}

# The tiny architecture: 128 px input, 16 px patches (8x8 embedding grid), width 32.
TINY_IMG_SIZE = 128
_TINY_PATCH = 16
_TINY_DIM = 32


@dataclass
class SamConfig:
    """Which SAM to load and how its automatic mask generator samples and filters masks.

    Fields (defaults are SAM's own; the reference SRUM code uses SAM ViT-H with every
    generator setting at its default):

    * ``model_type``: ``vit_h`` / ``vit_l`` / ``vit_b`` (the published SAM checkpoints,
      e.g. ``sam_vit_h_4b8939.pth``) or ``tiny`` (random test model, see module doc).
    * ``checkpoint``: path to the ``.pth`` state dict. Required for ``vit_*``; for
      ``tiny`` ``None`` means the random weights of ``write_tiny_sam(seed=0)``.
    * ``points_per_side``: the generator prompts SAM with a grid of
      ``points_per_side**2`` points over the image (per crop layer 0).
    * ``points_per_batch``: points run through the mask decoder at once (memory/speed).
    * ``pred_iou_thresh``: drop masks whose predicted IoU is not above this. ``None``:
      0.88 (SAM's default) for ``vit_*``, 0.0 (off) for ``tiny``.
    * ``stability_score_thresh``: drop masks whose stability score (IoU of the mask
      thresholded at ``+-stability_score_offset`` around the logit cut-off) is below
      this. ``None``: 0.95 for ``vit_*``, 0.0 (off) for ``tiny``.
    * ``stability_score_offset``: the logit offset used for the stability score.
    * ``box_nms_thresh``: box IoU above which SAM suppresses duplicates within a crop.
    * ``crop_n_layers``: >0 also runs SAM on ``2**i`` x ``2**i`` crops for layer i
      (finds small objects; costs one image encoding per crop).
    * ``crop_nms_thresh``: box IoU for the duplicate suppression across crops.
    * ``crop_overlap_ratio``: overlap of neighbouring crops, fraction of the image side.
    * ``crop_n_points_downscale_factor``: point grid of layer i has
      ``points_per_side / factor**i`` points per side.
    * ``min_mask_region_area``: >0 removes holes and islands smaller than this many
      pixels from each mask (needs OpenCV, ``pip install opencv-python-headless``).
    """

    model_type: Literal["vit_h", "vit_l", "vit_b", "tiny"] = "vit_h"
    checkpoint: str | None = field(default=None, metadata=PATH)
    points_per_side: int = 32
    points_per_batch: int = 64
    pred_iou_thresh: float | None = None
    stability_score_thresh: float | None = None
    stability_score_offset: float = 1.0
    box_nms_thresh: float = 0.7
    crop_n_layers: int = 0
    crop_nms_thresh: float = 0.7
    crop_overlap_ratio: float = 512 / 1500
    crop_n_points_downscale_factor: int = 1
    min_mask_region_area: int = 0

    def __post_init__(self):
        for name in ("points_per_side", "points_per_batch", "crop_n_points_downscale_factor"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("crop_n_layers", "min_mask_region_area"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("pred_iou_thresh", "stability_score_thresh", "box_nms_thresh", "crop_nms_thresh",
                     "crop_overlap_ratio"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if self.stability_score_offset <= 0:
            raise ValueError(f"stability_score_offset must be > 0, got {self.stability_score_offset}")

    def generator_kwargs(self) -> dict:
        """Keyword arguments for ``SamAutomaticMaskGenerator`` with the ``None`` thresholds
        resolved for this model type (what was actually used; worth logging)."""
        kwargs = {k: v for k, v in asdict(self).items() if k not in ("model_type", "checkpoint")}
        defaults = _TINY_QUALITY_DEFAULTS if self.model_type == "tiny" else _SAM_QUALITY_DEFAULTS
        for name, value in defaults.items():
            if kwargs[name] is None:
                kwargs[name] = value
        return kwargs


# ---------------------------------------------------------------- models
def build_tiny_sam_model() -> Sam:
    """The fixed tiny SAM architecture, randomly initialised (global RNG)."""
    grid = TINY_IMG_SIZE // _TINY_PATCH
    return Sam(
        image_encoder=ImageEncoderViT(
            img_size=TINY_IMG_SIZE, patch_size=_TINY_PATCH, embed_dim=_TINY_DIM, depth=2, num_heads=2,
            mlp_ratio=2.0, out_chans=_TINY_DIM, qkv_bias=True, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            use_rel_pos=True, window_size=4, global_attn_indexes=(1,)),
        prompt_encoder=PromptEncoder(
            embed_dim=_TINY_DIM, image_embedding_size=(grid, grid),
            input_image_size=(TINY_IMG_SIZE, TINY_IMG_SIZE), mask_in_chans=4),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=1, embedding_dim=_TINY_DIM, mlp_dim=64, num_heads=2),
            transformer_dim=_TINY_DIM, iou_head_depth=2, iou_head_hidden_dim=32),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    ).eval()


def _random_tiny_state_dict(seed: int) -> dict[str, torch.Tensor]:
    # fork_rng: a seeded build without disturbing the caller's random stream
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_tiny_sam_model().state_dict()


def write_tiny_sam(path: str | os.PathLike, seed: int = 0) -> Path:
    """Write a random tiny SAM checkpoint (a ``.pth`` state dict, like SAM's published
    ones) to ``path``; deterministic for a seed. Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(_random_tiny_state_dict(seed), path)
    return path


def load_sam_state_dict(model: Sam, path: str | os.PathLike) -> None:
    """Load a ``.pth`` state dict into ``model`` strictly; errors name the file and keys."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: SAM checkpoint not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling errors come in many types
        raise CheckpointError(f"{path}: not a readable SAM checkpoint ({type(err).__name__}: {err})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: expected a state dict of tensors, got {type(state).__name__}")
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{path}: keys do not match the SAM architecture: missing {_head(missing)}; "
                              f"unexpected {_head(unexpected)} (wrong model_type?)")
    wrong_shape = [f"{k} {list(state[k].shape)} != {list(v.shape)}" for k, v in expected.items()
                   if state[k].shape != v.shape]
    if wrong_shape:
        raise CheckpointError(f"{path}: tensor shapes do not match the SAM architecture "
                              f"(checkpoint != model): {_head(wrong_shape)} (wrong model_type?)")
    model.load_state_dict(state, strict=True)


def _head(items: list[str], n: int = 5) -> str:
    if not items:
        return "none"
    return ", ".join(items[:n]) + (f" and {len(items) - n} more" if len(items) > n else "")


def build_sam(cfg: SamConfig, device: str | torch.device = "cpu") -> Sam:
    """The SAM model of ``cfg`` with its checkpoint loaded, in eval mode on ``device``."""
    if cfg.model_type == "tiny":
        model = build_tiny_sam_model()
        if cfg.checkpoint is None:
            model.load_state_dict(_random_tiny_state_dict(0), strict=True)
        else:
            load_sam_state_dict(model, cfg.checkpoint)
    else:
        if cfg.checkpoint is None:
            raise CheckpointError(f"sam.checkpoint is required for model_type {cfg.model_type!r} "
                                  f"(e.g. sam_vit_h_4b8939.pth from the segment-anything release)")
        if not Path(cfg.checkpoint).is_file():  # fail before spending time building the model
            raise CheckpointError(f"{cfg.checkpoint}: SAM checkpoint not found")
        model = sam_model_registry[cfg.model_type](checkpoint=None)
        load_sam_state_dict(model, cfg.checkpoint)
    return model.to(device).eval()


def build_mask_generator(cfg: SamConfig, device: str | torch.device = "cpu") -> SamAutomaticMaskGenerator:
    """SAM + automatic mask generator with ``cfg``'s settings, masks as uncompressed RLE."""
    kwargs = cfg.generator_kwargs()
    if kwargs["min_mask_region_area"] > 0:
        try:
            import cv2  # noqa: F401  (SAM's hole/island removal uses it)
        except ImportError:
            raise ImportError("sam.min_mask_region_area > 0 needs OpenCV: pip install opencv-python-headless, "
                              "or set it to 0") from None
    return SamAutomaticMaskGenerator(build_sam(cfg, device), output_mode="uncompressed_rle", **kwargs)


# ---------------------------------------------------------------- proposals
def propose_regions(image: PIL.Image.Image, generator: SamAutomaticMaskGenerator) -> list[dict]:
    """Run SAM's automatic mask generator on one image.

    Returns one dict per mask, in SAM's order, masks with zero area dropped:
    ``bbox`` [x1, y1, x2, y2] float pixels, pixel-edge convention (a mask covering
    columns 3..7 has x1 = 3, x2 = 8), so ``0 <= x1 < x2 <= width``; ``mask`` COCO
    uncompressed RLE ``{"size": [h, w], "counts": [...]}`` (column-major, zeros
    first); ``area`` int pixels; ``predicted_iou``, ``stability_score`` floats.
    SAM reports XYWH with inclusive max indices (w = max_x - min_x); we convert."""
    if generator.output_mode != "uncompressed_rle":
        raise ValueError(f"mask generator must use output_mode='uncompressed_rle', got {generator.output_mode!r}")
    pixels = np.asarray(to_rgb(image), dtype=np.uint8)
    regions = []
    for ann in generator.generate(pixels):
        area = int(ann["area"])
        if area <= 0:
            continue
        x, y, w, h = (float(v) for v in ann["bbox"])
        rle = ann["segmentation"]
        regions.append({
            "bbox": [x, y, x + w + 1.0, y + h + 1.0],
            "mask": {"size": [int(s) for s in rle["size"]], "counts": [int(c) for c in rle["counts"]]},
            "area": area,
            "predicted_iou": float(ann["predicted_iou"]),
            "stability_score": float(ann["stability_score"]),
        })
    return regions
