# SPDX-License-Identifier: Apache-2.0
"""Region proposals written by the model itself (``proposals.backend: self``).

The SRUM paper notes that a unified model with grounding of its own (BLIP3o) proposes
regions itself instead of running SAM. This backend asks the model one question per
image, greedily decoded, and reads boxes out of the answer: every match of
``name (x1, y1, x2, y2)``, numbers on a 0..``coords_scale`` grid relative to the image
width and height (the same convention as the ``coords`` region view,
:func:`srum.regions.normalised_box`). The boxes then go through the usual cleanup and
relevance filter. Regions carry no mask (``mask: None``): reward maps use their boxes.

Nothing here is specific to a model or a world: the question and the scale are config,
and the answer format is the one most grounding-capable models write.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import PIL.Image

__all__ = ["SelfBoxesConfig", "DEFAULT_BOXES_QUESTION", "parse_boxes", "propose_self_boxes", "ask_boxes",
           "boxes_from_answer"]

DEFAULT_BOXES_QUESTION = ("List every object in the picture from left to right. Write each one as its "
                          "colour and shape followed by its box (x1, y1, x2, y2) in pixels.")

_ITEM = re.compile(r"([^;,.()\n]*?)\s*\(\s*(\d+(?:\.\d+)?)\s*,\s*(\d+(?:\.\d+)?)\s*,\s*(\d+(?:\.\d+)?)\s*,"
                   r"\s*(\d+(?:\.\d+)?)\s*\)")


@dataclass
class SelfBoxesConfig:
    """question: what the model is asked (its answer must contain ``name (x1, y1, x2, y2)``
    items). coords_scale: the grid of those numbers (e.g. 1000 for normalised boxes, or the
    image side when the model answers in pixels). max_new_tokens: answer budget.
    max_regions: keep at most this many boxes (in answer order)."""

    question: str = DEFAULT_BOXES_QUESTION
    coords_scale: int = 1000
    max_new_tokens: int = 256
    max_regions: int = 16

    def __post_init__(self):
        if self.coords_scale < 1 or self.max_new_tokens < 1 or self.max_regions < 1:
            raise ValueError("proposals.self_boxes: coords_scale, max_new_tokens and max_regions must be >= 1")


def parse_boxes(text: str, image_size: tuple[int, int], coords_scale: int) -> list[dict]:
    """Boxes from an answer -> ``[{"label", "bbox"}]`` in pixels of ``image_size = (w, h)``,
    clipped to the image; empty or inverted boxes are left out."""
    width, height = image_size
    out = []
    for name, *numbers in _ITEM.findall(text):
        x1, y1, x2, y2 = (float(v) for v in numbers)
        box = [min(max(x1 / coords_scale * width, 0.0), width), min(max(y1 / coords_scale * height, 0.0), height),
               min(max(x2 / coords_scale * width, 0.0), width), min(max(y2 / coords_scale * height, 0.0), height)]
        if box[2] - box[0] >= 1.0 and box[3] - box[1] >= 1.0:
            out.append({"label": name.strip() or None, "bbox": box})
    return out


def ask_boxes(model, images: list[PIL.Image.Image], cfg: SelfBoxesConfig) -> list[str]:
    """The model's answers to the boxes question for several images, in one batched
    ``understand`` call (greedy: each answer is the one a single-image call gives)."""
    if not images:
        return []
    return list(model.understand([[im] for im in images], [cfg.question] * len(images),
                                 max_new_tokens=cfg.max_new_tokens))


def boxes_from_answer(answer: str, image_size: tuple[int, int], cfg: SelfBoxesConfig) -> list[dict]:
    """The regions an answer names, in the shape SAM's proposals have (``bbox``, ``mask``
    None, ``area`` of the box, ``label`` the model's name for it)."""
    regions = []
    for item in parse_boxes(answer, image_size, cfg.coords_scale)[:cfg.max_regions]:
        x1, y1, x2, y2 = item["bbox"]
        regions.append({"bbox": item["bbox"], "mask": None, "area": (x2 - x1) * (y2 - y1),
                        "predicted_iou": None, "stability_score": None, "label": item["label"]})
    return regions


def propose_self_boxes(model, image: PIL.Image.Image, cfg: SelfBoxesConfig) -> tuple[list[dict], str]:
    """Ask ``model`` (anything with Bagel's ``understand``) for boxes; returns the regions
    in the shape SAM's proposals have (``bbox``, ``mask`` None, ``area`` of the box,
    ``label`` the model's name for it) and the raw answer."""
    answer = model.understand(image, cfg.question, max_new_tokens=cfg.max_new_tokens)
    return boxes_from_answer(answer, image.size, cfg), answer
