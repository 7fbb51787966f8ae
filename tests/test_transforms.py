# SPDX-License-Identifier: Apache-2.0
"""Tests for srum.models.bagel.transforms (CPU)."""

import random

import PIL.Image
import pytest
import torch

from srum.models.bagel.transforms import (
    ImageResize,
    flattened_position_ids,
    patchify,
    to_rgb,
    vae_transform,
    vit_transform,
)


# ---------------------------------------------------------------- sizes
# Expected values worked out by hand from the size rule (see comments).
@pytest.mark.parametrize(
    "maker, size, expected",
    [
        # already within bounds and divisible: untouched
        (vae_transform, (1024, 1024), (1024, 1024)),
        # short side 200 -> 512: scale 2.56 -> 768 x 512
        (vae_transform, (300, 200), (768, 512)),
        # scale 512/480: 682.67 -> 683 -> 688 (43*16); 512 stays
        (vae_transform, (640, 480), (688, 512)),
        # scale 1.024 -> 4096x512 (2.1 MP > 1.8 MP); area ratio 0.861328125 ->
        # 3528x441 -> snap 3520 (220.5 rounds to even) x 448; long side > 1024 ->
        # scale 1024/3520 -> 1024 x 130.3 -> 130 -> 128
        (vae_transform, (4000, 500), (1024, 128)),
        # tall version of the same
        (vae_transform, (500, 4000), (128, 1024)),
        # ViT: 1024 -> 980 = 70 * 14
        (vit_transform, (1024, 1024), (980, 980)),
        # ViT: no scaling, snap 640 -> 644 (45.7 -> 46 * 14), 480 -> 476 (34.3 -> 34 * 14)
        (vit_transform, (640, 480), (644, 476)),
        # ViT: tiny image upscaled to the minimum 224 = 16 * 14
        (vit_transform, (10, 10), (224, 224)),
        # degenerate sliver: 224 x 448000 -> area clamp -> 14 x 8064 -> long clamp -> 14 x 980
        (vit_transform, (1, 2000), (14, 980)),
    ],
)
def test_target_size_hand_cases(maker, size, expected):
    assert maker().resize.target_size(*size) == expected


def test_max_pixels_clamp():
    resize = ImageResize(max_size=1024, min_size=16, stride=16, max_pixels=256 * 256)
    # 1000 -> 992 (62.5 rounds to 62); 992^2 > 65536 -> scale 65536/984064 ->
    # 66.06 -> 66 -> 64 (4.125 -> 4)
    assert resize.target_size(1000, 1000) == (64, 64)
    # under the limit: only snapping
    assert resize.target_size(256, 240) == (256, 240)


def test_banker_rounding_in_snap():
    resize = ImageResize(max_size=4096, min_size=1, stride=16)
    # 40 / 16 = 2.5 -> 2 (round half to even), 56 / 16 = 3.5 -> 4
    assert resize.target_size(40, 56) == (32, 64)
    # nothing collapses to zero
    assert resize.target_size(3, 5) == (16, 16)


def test_divisible_and_bounded_randomised():
    rng = random.Random(0)
    for maker in (vae_transform, vit_transform):
        r = maker().resize
        for _ in range(2000):
            w, h = rng.randint(1, 6000), rng.randint(1, 6000)
            nw, nh = r.target_size(w, h)
            assert nw % r.stride == 0 and nh % r.stride == 0
            assert nw >= r.stride and nh >= r.stride
            assert max(nw, nh) <= r.max_size
            assert nw * nh <= r.max_pixels
            # Non-extreme aspect ratios honour the minimum short side (minus snapping).
            if max(w, h) <= 2 * min(w, h):
                assert min(nw, nh) >= r.min_size - r.stride


@pytest.mark.parametrize(
    "args",
    [(0, 1, 1), (10, -1, 1), (10, 1, 0), (10.0, 1, 1), (10, 1, 1, 0), (True, 1, 1), (10, 20, 2), (10, 1, 20)],
)
def test_invalid_arguments(args):
    with pytest.raises(ValueError):
        ImageResize(*args)


def test_invalid_target_size_arguments():
    r = vae_transform().resize
    with pytest.raises(ValueError):
        r.target_size(0, 10)
    with pytest.raises(ValueError):
        r.target_size(10, 2.5)


# ---------------------------------------------------------------- tensors
def test_image_transform_output():
    torch.manual_seed(0)
    noise = (torch.rand(200, 300, 3) * 255).to(torch.uint8).numpy()
    image = PIL.Image.fromarray(noise, "RGB")
    out = vae_transform()(image)
    assert out.shape == (3, 512, 768)
    assert out.dtype == torch.float32
    assert out.min() >= -1.0 and out.max() <= 1.0
    assert out.min() < -0.5 and out.max() > 0.5  # uses the full range

    resized = vae_transform().resize(image)
    assert resized.size == (768, 512)

    white = vit_transform()(PIL.Image.new("RGB", (224, 224), (255, 255, 255)))
    black = vit_transform()(PIL.Image.new("RGB", (224, 224), (0, 0, 0)))
    assert white.shape == (3, 224, 224)
    assert torch.all(white == 1.0) and torch.all(black == -1.0)


def test_image_transform_non_rgb_inputs():
    gray = PIL.Image.new("L", (300, 300), 128)
    out = vit_transform()(gray)
    assert out.shape == (3, 294, 294)  # 300 / 14 = 21.4 -> 21 * 14
    rgba = PIL.Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    out = vit_transform()(rgba)  # fully transparent -> white after compositing
    assert out.shape == (3, 224, 224)
    assert torch.allclose(out, torch.ones_like(out))
    with pytest.raises(TypeError):
        vit_transform()(torch.zeros(3, 224, 224))


def test_to_rgb_composites_rgba_on_white():
    img = PIL.Image.new("RGBA", (3, 1))
    img.putpixel((0, 0), (255, 0, 0, 0))  # invisible red -> white
    img.putpixel((1, 0), (0, 0, 255, 255))  # opaque blue stays blue
    img.putpixel((2, 0), (0, 0, 0, 128))  # half-transparent black -> mid grey
    out = to_rgb(img)
    assert out.mode == "RGB" and out.size == (3, 1)
    assert out.getpixel((0, 0)) == (255, 255, 255)
    assert out.getpixel((1, 0)) == (0, 0, 255)
    assert all(abs(v - 127) <= 1 for v in out.getpixel((2, 0)))


def test_to_rgb_palette_with_transparency():
    img = PIL.Image.new("P", (2, 1))
    img.putpalette([0, 0, 0, 10, 200, 30] + [0] * (256 * 3 - 6))
    img.putpixel((0, 0), 0)
    img.putpixel((1, 0), 1)
    img.info["transparency"] = 0  # palette index 0 is transparent
    out = to_rgb(img)
    assert out.getpixel((0, 0)) == (255, 255, 255)
    assert out.getpixel((1, 0)) == (10, 200, 30)


def test_to_rgb_plain_modes():
    assert to_rgb(PIL.Image.new("L", (2, 2), 7)).getpixel((0, 0)) == (7, 7, 7)
    assert to_rgb(PIL.Image.new("RGB", (2, 2), (1, 2, 3))).getpixel((1, 1)) == (1, 2, 3)
    assert to_rgb(PIL.Image.new("CMYK", (2, 2))).mode == "RGB"


# ---------------------------------------------------------------- patches
def test_patchify_ordering():
    # x[c, r, k] = 16 c + 4 r + k
    x = torch.arange(32).reshape(2, 4, 4)
    out = patchify(x, 2)
    expected = torch.tensor(
        [
            [0, 16, 1, 17, 4, 20, 5, 21],  # grid (0, 0): (row, col, channel) order
            [2, 18, 3, 19, 6, 22, 7, 23],  # grid (0, 1)
            [8, 24, 9, 25, 12, 28, 13, 29],  # grid (1, 0)
            [10, 26, 11, 27, 14, 30, 15, 31],  # grid (1, 1)
        ]
    )
    assert torch.equal(out, expected)


def test_patchify_non_square_and_errors():
    x = torch.randn(3, 28, 42)
    out = patchify(x, 14)
    assert out.shape == (2 * 3, 14 * 14 * 3)
    # patch (1, 2), pixel (row 5, col 7), channel 2
    assert out[1 * 3 + 2, (5 * 14 + 7) * 3 + 2] == x[2, 14 + 5, 28 + 7]
    with pytest.raises(ValueError):
        patchify(torch.zeros(3, 15, 14), 14)
    with pytest.raises(ValueError):
        patchify(torch.zeros(14, 14), 14)


def test_flattened_position_ids():
    ids = flattened_position_ids(28, 42, 14, 70)
    assert ids.dtype == torch.long
    assert ids.tolist() == [0, 1, 2, 70, 71, 72]
    full = flattened_position_ids(980, 980, 14, 70)
    assert full.shape == (4900,) and full.max().item() == 70 * 70 - 1
    with pytest.raises(ValueError):
        flattened_position_ids(30, 42, 14, 70)  # not divisible
    with pytest.raises(ValueError):
        flattened_position_ids(14, 14 * 71, 14, 70)  # grid wider than the table
