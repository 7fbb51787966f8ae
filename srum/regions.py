# SPDX-License-Identifier: Apache-2.0
"""How a region of an image is shown to a model that is asked about it.

The self-grounding filter (``srum propose``) and the local judgment (``srum judge``) both
ask the model about one region at a time. Four ways to point at it, chosen by
:class:`RegionView`:

* ``mark``: the whole image with the region's box drawn as a coloured rectangle; the
  question refers to "the area inside the <colour> rectangle". The model sees where the
  region sits in the composition.
* ``crop``: the box (enlarged by ``crop_margin`` of its size on every side, clipped to the
  image) cut out; with ``crop_context`` the full image comes first, then the crop.
* ``isolate``: the whole image with everything outside the box (enlarged by
  ``crop_margin`` as for ``crop``) painted black: the region at its own scale and place,
  alone. A crop is resized to the model's input size, which magnifies a small region far
  beyond anything the vision encoder saw; an isolated region keeps its size (the
  miniature world, whose ViT learnt objects at one scale on a black background).
* ``coords``: the unmodified image and the box as text, ``(x1, y1, x2, y2)`` on a
  0..``coords_scale`` grid relative to the image's width and height, origin top-left,
  x to the right, y down. Normalised coordinates are invariant to the resize that the
  model's image transform applies, so the numbers describe the image the model actually
  sees (pixel coordinates of the saved image would not). ``coords_phrase: compact`` names
  the box in a few words ("the box (x1, y1, x2, y2)"), for a small model trained on its
  own region questions (the miniature world).

Boxes are ``[x1, y1, x2, y2]`` in pixels of the saved image.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import PIL.Image
import PIL.ImageDraw

from srum.models.bagel.transforms import to_rgb

_COLOURS = {"red": (255, 0, 0), "green": (0, 200, 0), "blue": (0, 80, 255), "yellow": (255, 220, 0)}


@dataclass
class RegionView:
    """How regions are presented (documented in TRAIN.md, "Showing regions to the model")."""

    mode: Literal["mark", "crop", "isolate", "coords"] = "mark"
    mark_colour: Literal["red", "green", "blue", "yellow"] = "red"
    mark_width: float = 0.006        # line width as a fraction of the image's longer side (>= 1 px)
    crop_margin: float = 0.1         # crop / isolate: box grown by this fraction of its width/height per side
    crop_context: bool = False       # crop mode: also show the full image before the crop
    coords_scale: int = 1000         # coords mode: coordinates on a 0..scale grid
    coords_phrase: Literal["full", "compact"] = "full"   # coords mode: the grid explained, or the box alone

    def __post_init__(self):
        if not 0 < self.mark_width < 0.2:
            raise ValueError(f"mark_width must be in (0, 0.2), got {self.mark_width}")
        if self.crop_margin < 0:
            raise ValueError(f"crop_margin must be >= 0, got {self.crop_margin}")
        if self.coords_scale < 1:
            raise ValueError(f"coords_scale must be >= 1, got {self.coords_scale}")
        if self.coords_phrase not in ("full", "compact"):
            raise ValueError(f"coords_phrase must be 'full' or 'compact', got {self.coords_phrase!r}")


def normalised_box(bbox: Sequence[float], size: tuple[int, int], scale: int) -> tuple[int, int, int, int]:
    """Pixel box in an image of ``size = (width, height)`` -> integer box on a 0..scale grid."""
    w, h = size
    x1, y1, x2, y2 = bbox
    return (round(x1 / w * scale), round(y1 / h * scale), round(x2 / w * scale), round(y2 / h * scale))


def crop_box(bbox: Sequence[float], size: tuple[int, int], margin: float) -> tuple[int, int, int, int]:
    """The pixel window the ``crop`` view cuts: box grown by ``margin`` and clipped, >= 1 px."""
    w, h = size
    x1, y1, x2, y2 = bbox
    dx, dy = (x2 - x1) * margin, (y2 - y1) * margin
    left, top = max(0, int(x1 - dx)), max(0, int(y1 - dy))
    right, bottom = min(w, int(round(x2 + dx))), min(h, int(round(y2 + dy)))
    return left, top, max(right, left + 1), max(bottom, top + 1)


def show_region(image: PIL.Image.Image, bbox: Sequence[float], view: RegionView) -> tuple[list[PIL.Image.Image], str]:
    """Images to give the model for one region, and the phrase that names the region in a
    question (e.g. "the area inside the red rectangle")."""
    image = image if image.mode == "RGB" else to_rgb(image)   # the same object: questions share its prefill
    if view.mode == "mark":
        marked = image.copy()
        width = max(1, round(view.mark_width * max(image.size)))
        x1, y1, x2, y2 = bbox
        PIL.ImageDraw.Draw(marked).rectangle([x1, y1, max(x1, x2 - 1), max(y1, y2 - 1)],
                                             outline=_COLOURS[view.mark_colour], width=width)
        return [marked], f"the area inside the {view.mark_colour} rectangle"
    if view.mode == "crop":
        crop = image.crop(crop_box(bbox, image.size, view.crop_margin))
        if view.crop_context:
            return [image, crop], "the area shown in the second image, a crop of the first"
        return [crop], "this crop of the generated image"
    if view.mode == "isolate":
        window = crop_box(bbox, image.size, view.crop_margin)
        isolated = PIL.Image.new("RGB", image.size)
        isolated.paste(image.crop(window), window[:2])
        return [isolated], "the part of the image left visible"
    x1, y1, x2, y2 = normalised_box(bbox, image.size, view.coords_scale)
    if view.coords_phrase == "compact":
        return [image], f"the box ({x1}, {y1}, {x2}, {y2})"
    return [image], (f"the area with corners ({x1}, {y1}) and ({x2}, {y2}), in coordinates from 0 to "
                     f"{view.coords_scale} relative to the image width and height, origin at the top left")
