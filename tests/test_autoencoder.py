# SPDX-License-Identifier: Apache-2.0
import dataclasses

import pytest
import torch

from srum.models.bagel.autoencoder import (
    AutoEncoder,
    AutoEncoderParams,
    tiny_autoencoder_params,
)


def _shapes(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def tiny_model() -> AutoEncoder:
    torch.manual_seed(0)
    return AutoEncoder(tiny_autoencoder_params()).eval()


def test_tiny_params():
    p = tiny_autoencoder_params()
    assert p.downsample == 8
    assert AutoEncoderParams().downsample == 8


def test_state_dict_keys_tiny(tiny_model):
    keys = set(tiny_model.state_dict())
    expected_present = {
        "encoder.conv_in.weight",
        "encoder.down.0.block.0.norm1.weight",
        "encoder.down.0.block.0.conv1.weight",
        "encoder.down.0.block.0.norm2.bias",
        "encoder.down.0.block.0.conv2.weight",
        "encoder.down.0.downsample.conv.weight",
        "encoder.down.2.downsample.conv.weight",
        "encoder.down.3.block.0.conv1.weight",
        "encoder.mid.block_1.conv1.weight",
        "encoder.mid.attn_1.norm.weight",
        "encoder.mid.attn_1.q.weight",
        "encoder.mid.attn_1.k.weight",
        "encoder.mid.attn_1.v.weight",
        "encoder.mid.attn_1.proj_out.weight",
        "encoder.mid.block_2.conv2.bias",
        "encoder.norm_out.weight",
        "encoder.conv_out.weight",
        "decoder.conv_in.weight",
        "decoder.mid.block_1.conv1.weight",
        "decoder.mid.attn_1.q.weight",
        "decoder.mid.block_2.conv2.weight",
        "decoder.up.0.block.0.conv1.weight",
        "decoder.up.0.block.1.conv1.weight",  # num_res_blocks + 1 blocks per level
        "decoder.up.3.block.1.conv2.weight",
        "decoder.up.1.upsample.conv.weight",
        "decoder.up.3.upsample.conv.weight",
        "decoder.norm_out.weight",
        "decoder.conv_out.weight",
    }
    assert expected_present <= keys
    absent_prefixes = (
        "encoder.down.3.downsample",
        "encoder.down.0.block.1.",  # num_res_blocks=1 in the encoder
        "decoder.up.0.upsample",
        "decoder.up.0.block.2.",
        "decoder.up.4.",
        "encoder.down.4.",
    )
    for prefix in absent_prefixes:
        assert not any(k.startswith(prefix) for k in keys), prefix
    # All widths equal in the tiny config, so there are no projections.
    assert not any("nin_shortcut" in k for k in keys)
    # Only weights and biases: no buffers (the Gaussian sampler has no state).
    assert all(k.endswith((".weight", ".bias")) for k in keys)
    assert len(list(tiny_model.buffers())) == 0
    assert tiny_model.state_dict()["encoder.conv_out.weight"].shape[0] == 32
    assert tiny_model.state_dict()["decoder.conv_out.weight"].shape[0] == 3


def test_nin_shortcut_only_where_width_changes():
    p = dataclasses.replace(tiny_autoencoder_params(), ch_mult=(1, 2, 2, 2))
    keys = AutoEncoder(p).state_dict().keys()
    with_shortcut = {k.rsplit(".nin_shortcut.", 1)[0] for k in keys if ".nin_shortcut." in k}
    # Encoder widens 32 -> 64 entering level 1; decoder narrows 64 -> 32 entering level 0.
    assert with_shortcut == {"encoder.down.1.block.0", "decoder.up.0.block.0"}
    assert "encoder.down.1.block.0.nin_shortcut.weight" in keys
    assert "decoder.up.0.block.0.nin_shortcut.bias" in keys


@pytest.mark.parametrize(
    "params",
    [
        tiny_autoencoder_params(),
        AutoEncoderParams(ch=32, ch_mult=(1, 2, 2, 2), num_res_blocks=2, z_channels=4),
        AutoEncoderParams(in_channels=4, out_channels=1, ch=64, ch_mult=(1, 2, 3),
                          num_res_blocks=1, z_channels=8),
    ],
)
def test_from_state_dict_shapes_roundtrip(params):
    with torch.device("meta"):
        model = AutoEncoder(params)
    assert AutoEncoderParams.from_state_dict_shapes(_shapes(model)) == params


def test_from_state_dict_shapes_full_flux():
    with torch.device("meta"):
        model = AutoEncoder(AutoEncoderParams())
    shapes = _shapes(model)
    assert shapes["encoder.conv_out.weight"] == (32, 512, 3, 3)
    assert shapes["decoder.up.0.block.0.nin_shortcut.weight"] == (128, 256, 1, 1)
    p = AutoEncoderParams.from_state_dict_shapes(shapes)
    assert p.ch == 128
    assert p.ch_mult == (1, 2, 4, 4)
    assert p.num_res_blocks == 2
    assert p.z_channels == 16
    assert (p.in_channels, p.out_channels) == (3, 3)
    assert p == AutoEncoderParams()
    # Scale/shift are not in the file; they are passed through.
    p2 = AutoEncoderParams.from_state_dict_shapes(shapes, scale_factor=1.5, shift_factor=0.0)
    assert (p2.scale_factor, p2.shift_factor) == (1.5, 0.0)


def test_from_state_dict_shapes_errors(tiny_model):
    shapes = _shapes(tiny_model)

    missing = dict(shapes)
    del missing["encoder.conv_in.weight"]
    with pytest.raises(ValueError, match="encoder.conv_in.weight"):
        AutoEncoderParams.from_state_dict_shapes(missing)

    missing = dict(shapes)
    del missing["decoder.mid.attn_1.q.bias"]
    with pytest.raises(ValueError, match=r"decoder\.mid\.attn_1\.q\.bias"):
        AutoEncoderParams.from_state_dict_shapes(missing)

    wrong = dict(shapes)
    wrong["decoder.up.2.upsample.conv.weight"] = (32, 32, 1, 1)
    with pytest.raises(ValueError, match=r"decoder\.up\.2\.upsample\.conv\.weight"):
        AutoEncoderParams.from_state_dict_shapes(wrong)

    extra = dict(shapes)
    extra["decoder.up.0.block.5.conv1.weight"] = (32, 32, 3, 3)
    with pytest.raises(ValueError, match=r"decoder\.up\.0\.block\.5"):
        AutoEncoderParams.from_state_dict_shapes(extra)

    with pytest.raises(ValueError, match="encoder.conv_in.weight"):
        AutoEncoderParams.from_state_dict_shapes({})


@torch.no_grad()
def test_encode_decode_shapes_and_determinism(tiny_model):
    images = torch.rand(2, 3, 32, 48, generator=torch.Generator().manual_seed(1)) * 2 - 1
    latents = tiny_model.encode(images)
    assert latents.shape == (2, 16, 4, 6)
    assert torch.equal(latents, tiny_model.encode(images))
    recon = tiny_model.decode(latents)
    assert recon.shape == (2, 3, 32, 48)
    assert torch.isfinite(recon).all()


@torch.no_grad()
def test_encode_sampling_uses_generator(tiny_model):
    images = torch.rand(1, 3, 32, 48, generator=torch.Generator().manual_seed(2)) * 2 - 1
    a = tiny_model.encode(images, sample=True, generator=torch.Generator().manual_seed(7))
    b = tiny_model.encode(images, sample=True, generator=torch.Generator().manual_seed(7))
    c = tiny_model.encode(images, sample=True, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    assert not torch.allclose(a, tiny_model.encode(images))


@torch.no_grad()
def test_scaling_is_applied_exactly(tiny_model):
    p = tiny_model.params
    images = torch.rand(2, 3, 32, 48, generator=torch.Generator().manual_seed(3)) * 2 - 1
    mean, logvar = tiny_model.encoder(images).chunk(2, dim=1)
    assert logvar.shape == mean.shape == (2, 16, 4, 6)
    latents = tiny_model.encode(images)
    torch.testing.assert_close(latents, p.scale_factor * (mean - p.shift_factor), rtol=0, atol=0)

    # Sampling: same noise stream reproduces mean + std * noise, then scaling.
    noise = torch.randn(mean.shape, generator=torch.Generator().manual_seed(5))
    sampled = tiny_model.encode(images, sample=True, generator=torch.Generator().manual_seed(5))
    expected = p.scale_factor * (mean + torch.exp(0.5 * logvar) * noise - p.shift_factor)
    torch.testing.assert_close(sampled, expected)

    # Decode undoes the scaling before the decoder network.
    raw = tiny_model.decoder(latents / p.scale_factor + p.shift_factor)
    torch.testing.assert_close(tiny_model.decode(latents), raw, rtol=0, atol=0)
    torch.testing.assert_close(tiny_model.decoder(mean), raw, rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_bfloat16_forward(tiny_model):
    model = AutoEncoder(tiny_autoencoder_params()).to(torch.bfloat16).eval()
    model.load_state_dict(tiny_model.state_dict())  # copies, casting to bf16
    images = torch.rand(1, 3, 32, 48).to(torch.bfloat16) * 2 - 1
    latents = model.encode(images, sample=True, generator=torch.Generator().manual_seed(0))
    assert latents.dtype == torch.bfloat16 and latents.shape == (1, 16, 4, 6)
    recon = model.decode(latents)
    assert recon.dtype == torch.bfloat16 and recon.shape == (1, 3, 32, 48)
    assert torch.isfinite(recon.float()).all()


def test_load_state_dict_strict_roundtrip(tiny_model):
    other = AutoEncoder(tiny_autoencoder_params())
    result = other.load_state_dict(tiny_model.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
