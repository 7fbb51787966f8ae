# SPDX-License-Identifier: Apache-2.0
"""The FLUX.1 KL autoencoder that Bagel-7B-MoT uses for its image latents.

Images [B, 3, H, W] in [-1, 1] map to latents [B, z, H/8, W/8] and back. Module
and attribute names follow the LDM/FLUX key layout so that the published
``ae.safetensors`` loads with ``load_state_dict`` unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class AutoEncoderParams:
    in_channels: int = 3
    out_channels: int = 3
    ch: int = 128  # base width; level i has ch * ch_mult[i] channels
    ch_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2  # per encoder level; the decoder has one more
    z_channels: int = 16
    scale_factor: float = 0.3611  # latent normalisation used by FLUX/Bagel
    shift_factor: float = 0.1159

    @property
    def downsample(self) -> int:
        """Spatial reduction: every level but the deepest halves H and W."""
        return 2 ** (len(self.ch_mult) - 1)

    @classmethod
    def from_state_dict_shapes(
        cls,
        shapes: Mapping[str, Sequence[int]],
        scale_factor: float = 0.3611,
        shift_factor: float = 0.1159,
    ) -> "AutoEncoderParams":
        """Infer the architecture from tensor shapes alone.

        The checkpoint carries no config, so widths are read off conv weights
        ([out, in, kh, kw]) and depths from which block indices exist. The guess
        is then verified against a meta-device model built from it, so any
        missing, surplus or mis-shaped key raises ValueError naming that key.
        """
        shapes = {k: tuple(int(d) for d in v) for k, v in shapes.items()}

        def shape(key: str) -> tuple[int, ...]:
            if key not in shapes:
                raise ValueError(f"autoencoder state dict lacks key {key!r}")
            return shapes[key]

        def count(pattern: str) -> int:  # how many consecutive indices exist
            n = 0
            while pattern.format(n) in shapes:
                n += 1
            return n

        ch, in_channels = shape("encoder.conv_in.weight")[:2]
        num_levels = count("encoder.down.{}.block.0.conv1.weight")
        num_res_blocks = count("encoder.down.0.block.{}.conv1.weight")
        if num_levels == 0:
            shape("encoder.down.0.block.0.conv1.weight")  # raises, naming it
        ch_mult = []
        for i in range(num_levels):
            key = f"encoder.down.{i}.block.0.conv1.weight"
            if ch <= 0 or shape(key)[0] % ch:
                raise ValueError(f"{key!r} width {shape(key)[0]} is not a multiple of ch={ch}")
            ch_mult.append(shape(key)[0] // ch)
        moments = shape("encoder.conv_out.weight")[0]  # mean and logvar
        if moments % 2:
            raise ValueError(f"'encoder.conv_out.weight' has odd width {moments}")
        params = cls(in_channels=in_channels, out_channels=shape("decoder.conv_out.weight")[0],
                     ch=ch, ch_mult=tuple(ch_mult), num_res_blocks=num_res_blocks,
                     z_channels=moments // 2, scale_factor=scale_factor,
                     shift_factor=shift_factor)

        # Cross-check every tensor; cheap because meta tensors own no storage.
        try:
            with torch.device("meta"):
                expected = AutoEncoder(params).state_dict()
        except ValueError as err:  # e.g. a width GroupNorm(32) cannot split
            raise ValueError(f"inferred {params} is not buildable: {err}") from err
        for key, tensor in expected.items():
            if shape(key) != tuple(tensor.shape):
                raise ValueError(f"key {key!r} has shape {shapes[key]}, "
                                 f"expected {tuple(tensor.shape)}")
        for key in shapes:
            if key.startswith(("encoder.", "decoder.")) and key not in expected:
                raise ValueError(f"unexpected autoencoder key {key!r}")
        return params


def tiny_autoencoder_params() -> AutoEncoderParams:
    """A CPU-test sized config: still downsample 8, widths divisible by 32."""
    return AutoEncoderParams(ch=32, ch_mult=(1, 1, 1, 1), num_res_blocks=1, z_channels=16)


def _norm(channels: int) -> nn.GroupNorm:
    # 32 groups and eps 1e-6 are what the published weights were trained with.
    return nn.GroupNorm(32, channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    """[B, c_in, H, W] -> [B, c_out, H, W]: two norm-swish-conv steps plus a skip."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.norm1 = _norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = _norm(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        # The skip path needs a projection only when the width changes; the
        # checkpoint has no such tensor otherwise, so we must not create one.
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        skip = self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x
        return skip + h


class AttnBlock(nn.Module):
    """[B, c, H, W] -> same: one attention head over all H*W positions, width c."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = _norm(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        normed = self.norm(x)

        def tokens(t: Tensor) -> Tensor:  # [B, c, H, W] -> [B, 1 head, H*W, c]
            return t.flatten(2).transpose(1, 2).unsqueeze(1)

        q, k, v = tokens(self.q(normed)), tokens(self.k(normed)), tokens(self.v(normed))
        out = F.scaled_dot_product_attention(q, k, v)  # default scale is 1/sqrt(c)
        out = out.squeeze(1).transpose(1, 2).reshape(b, c, h, w)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    """[B, c, H, W] -> [B, c, ceil(H/2), ceil(W/2)]."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: Tensor) -> Tensor:
        # Asymmetric pad (right and bottom only) is what the weights expect.
        return self.conv(F.pad(x, (0, 1, 0, 1), mode="constant", value=0.0))


class Upsample(nn.Module):
    """[B, c, H, W] -> [B, c, 2H, 2W]: nearest-neighbour doubling, then a conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class MidBlock(nn.Module):
    """[B, c, H, W] -> same: resnet, attention, resnet at the lowest resolution."""

    def __init__(self, channels: int):
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels)
        self.attn_1 = AttnBlock(channels)
        self.block_2 = ResnetBlock(channels, channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class Level(nn.Module):
    """[B, c_in, H, W] -> [B, c, H', W']: resnet blocks, then an optional resampler.

    The resampler is registered as ``downsample`` or ``upsample`` because that
    name is part of the checkpoint keys; the level without one has no such key.
    """

    def __init__(self, in_width: int, width: int, num_blocks: int, resample: str | None):
        super().__init__()
        self.block = nn.ModuleList(
            ResnetBlock(in_width if j == 0 else width, width) for j in range(num_blocks)
        )
        if resample == "downsample":
            self.downsample = Downsample(width)
        elif resample == "upsample":
            self.upsample = Upsample(width)

    def forward(self, h: Tensor) -> Tensor:
        for block in self.block:
            h = block(h)
        for name in ("downsample", "upsample"):
            if name in self._modules:
                h = self._modules[name](h)
        return h


class Encoder(nn.Module):
    """[B, in, H, W] -> [B, 2*z, H/ds, W/ds] (mean and logvar stacked on channels)."""

    def __init__(self, p: AutoEncoderParams):
        super().__init__()
        widths = [p.ch * m for m in p.ch_mult]
        self.conv_in = nn.Conv2d(p.in_channels, p.ch, 3, padding=1)
        self.down = nn.ModuleList()
        in_width = p.ch  # conv_in output, i.e. ch * 1
        for i, width in enumerate(widths):
            last = i == len(widths) - 1
            self.down.append(Level(in_width, width, p.num_res_blocks,
                                   None if last else "downsample"))
            in_width = width
        self.mid = MidBlock(widths[-1])
        self.norm_out = _norm(widths[-1])
        self.conv_out = nn.Conv2d(widths[-1], 2 * p.z_channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv_in(x)
        for level in self.down:
            h = level(h)
        h = self.mid(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """[B, z, h, w] -> [B, out, h*ds, w*ds]."""

    def __init__(self, p: AutoEncoderParams):
        super().__init__()
        widths = [p.ch * m for m in p.ch_mult]
        self.conv_in = nn.Conv2d(p.z_channels, widths[-1], 3, padding=1)
        self.mid = MidBlock(widths[-1])
        # Built deepest first (the order data flows) but stored by level index,
        # so up.{i} always names level i as in the checkpoint.
        levels: dict[int, nn.Module] = {}
        in_width = widths[-1]
        for i in reversed(range(len(widths))):
            levels[i] = Level(in_width, widths[i], p.num_res_blocks + 1,
                              "upsample" if i != 0 else None)
            in_width = widths[i]
        self.up = nn.ModuleList(levels[i] for i in range(len(widths)))
        self.norm_out = _norm(widths[0])
        self.conv_out = nn.Conv2d(widths[0], p.out_channels, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            h = level(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class AutoEncoder(nn.Module):
    """KL autoencoder whose encode/decode work in scaled latent space."""

    def __init__(self, params: AutoEncoderParams):
        super().__init__()
        self.params = params
        self.encoder = Encoder(params)
        self.decoder = Decoder(params)

    def encode(
        self, images: Tensor, sample: bool = False,
        generator: torch.Generator | list[torch.Generator] | None = None,
    ) -> Tensor:
        """[B, in, H, W] in [-1, 1] -> scaled latents [B, z, H/ds, W/ds].

        sample=False returns the posterior mean; sample=True draws from the
        diagonal Gaussian (mean + std * noise), as Bagel does when training.
        ``generator`` may be one generator for the batch or one per image; with one
        per image, image i's draw is the one it would get encoded alone, so batching
        images never changes what a seed means.
        """
        mean, logvar = self.encoder(images).chunk(2, dim=1)
        z = mean
        if sample:
            gens = generator if isinstance(generator, (list, tuple)) else None
            if gens is not None and len(gens) != mean.shape[0]:
                raise ValueError(f"encode: {len(gens)} generators for {mean.shape[0]} images")
            if gens is None:
                noise = self._noise(mean.shape, generator, mean)
            else:
                noise = torch.cat([self._noise((1, *mean.shape[1:]), g, mean) for g in gens])
            z = mean + torch.exp(0.5 * logvar) * noise
        # Shift and scale bring the latents to roughly zero mean, unit variance.
        return self.params.scale_factor * (z - self.params.shift_factor)

    @staticmethod
    def _noise(shape, generator: torch.Generator | None, like: Tensor) -> Tensor:
        # Draw on the generator's own device so a CPU generator also works for a
        # model on GPU, then move the noise over.
        device = generator.device if generator is not None else like.device
        return torch.randn(shape, generator=generator, device=device, dtype=like.dtype).to(like.device)

    def decode(self, latents: Tensor) -> Tensor:
        """Scaled latents [B, z, h, w] -> images [B, out, h*ds, w*ds], unclamped."""
        z = latents / self.params.scale_factor + self.params.shift_factor
        return self.decoder(z)
