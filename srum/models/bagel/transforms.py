# SPDX-License-Identifier: Apache-2.0
"""Image preprocessing for Bagel-7B-MoT.

Bagel feeds an image to two encoders with different geometry:

* the VAE path: long side <= 1024, short side >= 512, sides divisible by 16
  (the VAE downsamples 8x and latents are packed 2x2);
* the ViT path (SigLIP, 14-px patches): long side <= 980, short side >= 224,
  sides divisible by 14.

Both produce ``[3, H, W]`` float32 tensors in ``[-1, 1]``. The resize
arithmetic below reproduces the reference implementation to the pixel,
including its quirks (see :meth:`ImageResize.target_size`), because the
trained model only ever saw images sized that way.
"""

from __future__ import annotations

import PIL.Image
import torch
import torchvision.transforms.functional as TF
from torchvision.transforms import InterpolationMode

__all__ = [
    "to_rgb",
    "ImageResize",
    "ImageTransform",
    "vae_transform",
    "vit_transform",
    "patchify",
    "flattened_position_ids",
]

DEFAULT_MAX_PIXELS = 14 * 14 * 9 * 1024

# Modes whose pixels carry an alpha band (premultiplied variants included).
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})


def to_rgb(image: PIL.Image.Image) -> PIL.Image.Image:
    """Convert any PIL image to 3-channel RGB.

    Transparent images (an alpha band, or a palette/greyscale image with a
    ``transparency`` entry) are composited over white: a plain ``convert``
    would expose whatever colour happens to sit under transparent pixels,
    usually black.
    """
    if image.mode in _ALPHA_MODES or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        background = PIL.Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")


def _check_positive_int(name: str, value: object) -> int:
    # bool is an int subclass; True as a size is always a bug.
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


class ImageResize:
    """Resize so sides fit ``[min_size, max_size]``, are multiples of ``stride``
    and the area stays within ``max_pixels``.

    The bounds are targets of the reference arithmetic, not guarantees: when
    the pixel or long-side clamp fires it may push the short side below
    ``min_size``. Sides are always multiples of ``stride`` and at least
    ``stride``.
    """

    def __init__(self, max_size: int, min_size: int, stride: int, max_pixels: int = DEFAULT_MAX_PIXELS):
        self.max_size = _check_positive_int("max_size", max_size)
        self.min_size = _check_positive_int("min_size", min_size)
        self.stride = _check_positive_int("stride", stride)
        self.max_pixels = _check_positive_int("max_pixels", max_pixels)
        if min_size > max_size:
            raise ValueError(f"min_size ({min_size}) must not exceed max_size ({max_size})")
        if stride > max_size:
            raise ValueError(f"stride ({stride}) must not exceed max_size ({max_size})")

    def _snap(self, value: int) -> int:
        # Nearest multiple of stride (Python's banker's rounding, as in the
        # reference), never collapsing to zero.
        return max(self.stride, int(round(value / self.stride) * self.stride))

    def _scaled(self, width: int, height: int, scale: float) -> tuple[int, int]:
        return self._snap(round(width * scale)), self._snap(round(height * scale))

    def target_size(self, width: int, height: int) -> tuple[int, int]:
        """Output ``(new_width, new_height)`` for an input of ``width x height``.

        Steps (all with Python ``round``):

        1. scale down so the long side fits ``max_size`` (never up), then up
           so the short side reaches ``min_size``; snap both sides to the
           stride;
        2. if the area exceeds ``max_pixels``, multiply the sides by
           ``max_pixels / area`` (an area ratio applied linearly, exactly as
           the reference does; it over-shrinks, which is intended here) and
           snap again;
        3. if the long side still exceeds ``max_size``, rescale it to
           ``max_size`` and snap again.
        """
        _check_positive_int("width", width)
        _check_positive_int("height", height)
        scale = min(self.max_size / max(width, height), 1.0)
        scale = max(scale, self.min_size / min(width, height))
        new_w, new_h = self._scaled(width, height, scale)
        if new_w * new_h > self.max_pixels:
            new_w, new_h = self._scaled(new_w, new_h, self.max_pixels / (new_w * new_h))
        if max(new_w, new_h) > self.max_size:
            new_w, new_h = self._scaled(new_w, new_h, self.max_size / max(new_w, new_h))
        return new_w, new_h

    def __call__(self, image: PIL.Image.Image) -> PIL.Image.Image:
        """Resize a PIL image (bicubic, antialiased) to :meth:`target_size`."""
        if not isinstance(image, PIL.Image.Image):
            raise TypeError(f"expected a PIL.Image.Image, got {type(image).__name__}")
        new_w, new_h = self.target_size(*image.size)
        # torchvision on a PIL image delegates to PIL's resampler, which
        # always antialiases; antialias=True just states it explicitly.
        return TF.resize(image, [new_h, new_w], interpolation=InterpolationMode.BICUBIC, antialias=True)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(max_size={self.max_size}, min_size={self.min_size}, "
            f"stride={self.stride}, max_pixels={self.max_pixels})"
        )


class ImageTransform:
    """PIL image -> ``[3, H, W]`` float32 tensor in ``[-1, 1]``.

    Non-RGB inputs go through :func:`to_rgb` first, so the channel count is
    always 3. ``H`` and ``W`` are given by ``self.resize.target_size``.
    """

    def __init__(self, max_size: int, min_size: int, stride: int, max_pixels: int = DEFAULT_MAX_PIXELS):
        self.resize = ImageResize(max_size, min_size, stride, max_pixels)

    @property
    def stride(self) -> int:
        return self.resize.stride

    def __call__(self, image: PIL.Image.Image) -> torch.Tensor:
        if not isinstance(image, PIL.Image.Image):
            raise TypeError(f"expected a PIL.Image.Image, got {type(image).__name__}")
        if image.mode != "RGB":
            image = to_rgb(image)
        tensor = TF.to_tensor(self.resize(image))  # [3, H, W] in [0, 1]
        # mean = std = 0.5 maps [0, 1] onto [-1, 1].
        return tensor.sub_(0.5).div_(0.5)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.resize!r})"


def vae_transform(config=None) -> ImageTransform:
    """Preprocessing for the VAE (generation/editing) path: Bagel's 1024 / 512 / 16.

    With a :class:`~srum.models.bagel.config.BagelConfig`, the sizes are capped by what
    the model covers: long side at most ``config.max_image_side`` (the latent position
    table), short side at least ``min(512, that)``, stride ``config.latent_downsample``.
    For BAGEL-7B-MoT (64 latent positions x 16 px = 1024) this is exactly the default;
    a small model (e.g. the miniature world's 64 px one) keeps its own images unscaled."""
    if config is None:
        return ImageTransform(1024, 512, 16)
    largest = min(1024, config.max_image_side)
    return ImageTransform(largest, min(512, largest), config.latent_downsample)


def vit_transform(config=None) -> ImageTransform:
    """Preprocessing for the SigLIP ViT (understanding) path: Bagel's 980 / 224 / 14.

    With a config: long side at most ``config.vit.image_size`` (980 for SigLIP-so400m-14-980,
    which gives the default), short side at least ``min(224, that)``, stride the ViT patch."""
    if config is None:
        return ImageTransform(980, 224, 14)
    largest = min(980, config.vit.image_size)
    return ImageTransform(largest, min(224, largest), config.vit.patch_size)


def patchify(image: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Cut ``[C, H, W]`` into non-overlapping ``p x p`` patches.

    Returns:
        ``[(H/p) * (W/p), p * p * C]``: patches in row-major grid order; the
        numbers inside a patch are ordered ``(p_row, p_col, channel)``, i.e.
        channel varies fastest, matching the ViT patch-embedding weights.
    """
    p = _check_positive_int("patch_size", patch_size)
    if image.dim() != 3:
        raise ValueError(f"patchify expects a [C, H, W] tensor, got shape {tuple(image.shape)}")
    c, h, w = image.shape
    if h % p or w % p:
        raise ValueError(f"image size {h}x{w} is not divisible by patch_size {p}")
    gh, gw = h // p, w // p
    # [C, gh, p, gw, p] -> [gh, gw, p_row, p_col, C]
    patches = image.reshape(c, gh, p, gw, p).permute(1, 3, 2, 4, 0)
    return patches.reshape(gh * gw, p * p * c)


def flattened_position_ids(height: int, width: int, patch_size: int, max_patches_per_side: int) -> torch.Tensor:
    """Position ids of an image's patch grid inside a fixed-size table.

    Each patch at grid ``(row, col)`` gets ``row * max_patches_per_side + col``,
    so the id of a location does not depend on the image's width (the
    position-embedding table is a ``max x max`` grid).

    Returns:
        long tensor ``[(height/p) * (width/p)]``, row-major.
    """
    _check_positive_int("height", height)
    _check_positive_int("width", width)
    p = _check_positive_int("patch_size", patch_size)
    side = _check_positive_int("max_patches_per_side", max_patches_per_side)
    if height % p or width % p:
        raise ValueError(f"image size {height}x{width} is not divisible by patch_size {p}")
    gh, gw = height // p, width // p
    if gh > side or gw > side:
        # Larger grids would alias ids (cols) or index past the table (rows).
        raise ValueError(f"patch grid {gh}x{gw} exceeds max_patches_per_side={side}")
    rows = torch.arange(gh, dtype=torch.long)
    cols = torch.arange(gw, dtype=torch.long)
    return (rows[:, None] * side + cols[None, :]).flatten()
