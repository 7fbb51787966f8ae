# SPDX-License-Identifier: Apache-2.0
"""Batched VAE encoding of training images: the result does not depend on the grouping."""
from types import SimpleNamespace

import pytest
import torch

from srum.training.data import TrainSample
from srum.training.trainer import encode_latents


def _sample(index: int, size: tuple[int, int], seed: int, reference: bool) -> TrainSample:
    gen = torch.Generator().manual_seed(1000 + index)
    image = torch.rand((3, *size), generator=gen) * 2 - 1
    ref = torch.rand((3, *size), generator=gen) * 2 - 1 if reference else None
    return TrainSample(index=index, image_id=f"im{index}", image=image, reference=ref, text_ids=[1],
                       grid=(size[0] // 16, size[1] // 16), weights=torch.ones(1), reward_stats={},
                       timestep=0.5, noise=torch.zeros(1), vae_seed=seed)


def _one_at_a_time(tm, samples, sample_posterior):
    """The plain definition: every image encoded alone with its sample's seed."""
    x0, x0_gt = [], []
    for s in samples:
        gen = torch.Generator().manual_seed(s.vae_seed)
        tok = tm.model.patchify_latents(tm.vae.encode(s.image[None], sample=sample_posterior, generator=gen))[0]
        x0.append(tok)
        if s.reference is None:
            x0_gt.append(tok)
        else:
            gen = torch.Generator().manual_seed(s.vae_seed)
            x0_gt.append(tm.model.patchify_latents(
                tm.vae.encode(s.reference[None], sample=sample_posterior, generator=gen))[0])
    return torch.cat(x0), torch.cat(x0_gt)


@pytest.mark.parametrize("sample_posterior", [True, False])
def test_grouping_does_not_change_latents(tiny_model, sample_posterior):
    tm = SimpleNamespace(vae=tiny_model.vae, model=tiny_model, dtype=torch.float32)
    sizes = [(32, 48), (32, 32), (32, 48), (32, 48), (32, 32)]
    samples = [_sample(i, size, seed=7 * i + 3, reference=(i == 2)) for i, size in enumerate(sizes)]
    want_x0, want_gt = _one_at_a_time(tm, samples, sample_posterior)
    for max_batch in (1, 2, 8):
        x0, x0_gt = encode_latents(tm, samples, torch.device("cpu"), sample_posterior, max_batch=max_batch)
        torch.testing.assert_close(x0, want_x0, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(x0_gt, want_gt, rtol=1e-5, atol=1e-5)
    # sample 2's constraint image is its reference; the others fall back to the sample itself
    n = [h * w // 4 for h, w in ((s[0] // 8, s[1] // 8) for s in sizes)]
    start = sum(n[:2])
    assert not torch.allclose(x0[start:start + n[2]], x0_gt[start:start + n[2]])
    torch.testing.assert_close(x0[:start], x0_gt[:start])


def test_no_reference_gives_no_constraint_latents(tiny_model):
    tm = SimpleNamespace(vae=tiny_model.vae, model=tiny_model, dtype=torch.float32)
    samples = [_sample(i, (32, 32), seed=i, reference=False) for i in range(3)]
    _, x0_gt = encode_latents(tm, samples, torch.device("cpu"), True)
    assert x0_gt is None


def test_per_image_generators_must_match_batch(tiny_model):
    images = torch.zeros(2, 3, 32, 32)
    with pytest.raises(ValueError, match="1 generators for 2 images"):
        tiny_model.vae.encode(images, sample=True, generator=[torch.Generator()])
