# SPDX-License-Identifier: Apache-2.0
"""The public inference API on a tiny random Bagel: understand, choice probabilities, generate_image."""
import pytest
import torch
from PIL import Image

import srum.models.bagel.inference as inference
from srum.models.bagel.kv_cache import KVCache

FAST = dict(height=32, width=48, num_timesteps=5)


@pytest.fixture(scope="module")
def images():
    return [Image.new("RGB", (40, 30), (220, 20, 20)), Image.new("RGB", (30, 50), (20, 20, 220))]


def test_understand_is_deterministic_and_batch_consistent(tiny_model, images):
    a = tiny_model.understand(images[0], "What colour is it?", max_new_tokens=10)
    assert isinstance(a, str) and a == tiny_model.understand(images[0], "What colour is it?", max_new_tokens=10)
    b = tiny_model.understand(images[1], "How many objects?", max_new_tokens=10)
    assert tiny_model.understand(images, ["What colour is it?", "How many objects?"], max_new_tokens=10) == [a, b]
    no_image = tiny_model.understand(None, "What colour is it?", max_new_tokens=10)
    think = tiny_model.understand(images[0], "What colour is it?", think=True, max_new_tokens=10)
    assert len({a, no_image, think}) > 1  # the context matters


def test_understand_sampling_is_reproducible_with_a_generator(tiny_model, images):
    run = lambda s: tiny_model.understand(images[0], "Describe it.", do_sample=True, temperature=1.5,  # noqa: E731
                                          max_new_tokens=12, generator=torch.Generator().manual_seed(s))
    assert run(1) == run(1)
    assert len({run(1), run(2), run(3)}) > 1


def test_decode_never_reallocates_the_cache(tiny_model, images, monkeypatch):
    grows = []
    original = KVCache.ensure_capacity

    def spy(self, needed):
        if needed > self.capacity:
            grows.append(needed)
        original(self, needed)

    monkeypatch.setattr(KVCache, "ensure_capacity", spy)
    tiny_model.understand(images[0], "Describe it.", max_new_tokens=40, do_sample=True, temperature=2.0,
                          generator=torch.Generator().manual_seed(0))
    assert grows == []


def test_choice_probabilities(tiny_model, images):
    probs, mass = tiny_model.choice_probabilities(images, ["Is it red?", "Is it blue?"], [["Yes", "yes"], ["No", "no"]])
    assert probs.shape == (2, 2) and mass.shape == (2,)
    torch.testing.assert_close(probs.sum(-1), torch.ones(2))
    assert ((mass > 0) & (mass <= 1)).all()
    single, _ = tiny_model.choice_probabilities(images[1], "Is it blue?", [["Yes", "yes"], ["No", "no"]])
    torch.testing.assert_close(single[0], probs[1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(tiny_model.score_yes_no(images, ["Is it red?", "Is it blue?"]), probs[:, 0])
    # a digit scale, as the logits-mode judge uses
    digits, _ = tiny_model.choice_probabilities(images[0], "Rate it from 0 to 4.", ["0", "1", "2", "3", "4"])
    assert digits.shape == (1, 5)
    with pytest.raises(ValueError, match="same token"):
        tiny_model.choice_probabilities(images[0], "?", ["Yes", "Yes"])


def test_generate_shapes_and_output_types(tiny_model):
    out = tiny_model.generate_image(["a cat", "a dog"], seed=0, **FAST)
    assert [im.size for im in out.images] == [(48, 32), (48, 32)]
    assert out.seeds == [0, 1] and out.thoughts is None
    lat = tiny_model.generate_image(["a cat", "a dog"], seed=0, output_type="latent", **FAST).images
    assert lat.shape == (2, 16, 4, 6) and lat.dtype == torch.float32


def test_generate_is_deterministic_for_a_seed_and_for_given_latents(tiny_model):
    run = lambda **kw: tiny_model.generate_image("a red cube", output_type="latent", **FAST, **kw).images  # noqa: E731
    a = run(seed=5)
    assert torch.equal(a, run(seed=5))
    assert not torch.allclose(a, run(seed=6))
    # the seed path draws randn(h*w, p*p*z) per image: the same noise given as latents gives the same image
    noise = torch.randn((2 * 3, tiny_model.config.patch_latent_dim), generator=torch.Generator().manual_seed(5))
    latents = tiny_model.unpatchify_latents(noise[None], 2, 3)
    torch.testing.assert_close(run(latents=latents), a, atol=1e-6, rtol=1e-6)
    g1, g2 = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    assert torch.equal(run(generator=g1), run(generator=g2))


def test_batched_generation_equals_one_by_one(tiny_model):
    batch = tiny_model.generate_image(["a red cube", "two green balls"], seed=[3, 7], output_type="latent", **FAST).images
    one = tiny_model.generate_image("a red cube", seed=3, output_type="latent", **FAST).images
    two = tiny_model.generate_image("two green balls", seed=7, output_type="latent", **FAST).images
    torch.testing.assert_close(batch, torch.cat([one, two]), atol=1e-5, rtol=1e-5)


def test_cfg_on_off_and_interval(tiny_model, monkeypatch):
    run = lambda **kw: tiny_model.generate_image("a red cube", seed=1, output_type="latent", **{**FAST, **kw}).images  # noqa: E731
    off = run(cfg_text_scale=1.0)
    on = run(cfg_text_scale=4.0, cfg_interval=(0.0, 1.0))
    assert not torch.allclose(on, off, atol=1e-4)
    # an empty interval (low = high) means no guided step at all
    torch.testing.assert_close(run(cfg_text_scale=4.0, cfg_interval=(0.5, 0.5)), off, atol=1e-5, rtol=1e-5)
    calls = []
    original = inference._combine_cfg
    monkeypatch.setattr(inference, "_combine_cfg", lambda *a: calls.append(1) or original(*a))
    # 6 points, no shift: steps at t = 1.0, 0.8, 0.6, 0.4, 0.2; (0.5, 0.9] holds 0.8 and 0.6
    run(cfg_text_scale=4.0, cfg_interval=(0.5, 0.9), num_timesteps=6, timestep_shift=1.0)
    assert len(calls) == 2


def test_cfg_branches_run_in_one_forward_per_step(tiny_model, monkeypatch):
    lm = tiny_model.language_model.model
    calls = []
    original = lm.forward_cached
    monkeypatch.setattr(lm, "forward_cached", lambda *a, **k: calls.append(a[2].query.lengths.tolist()) or original(*a, **k))
    tiny_model.generate_image(["a", "b"], seed=0, cfg_text_scale=4.0, cfg_img_scale=2.0, cfg_interval=(0.0, 1.0), **FAST)
    denoise = calls[-(FAST["num_timesteps"] - 1):]
    assert len(calls) == 1 + len(denoise)  # one prompt prefill, then one forward per step
    assert all(len(rows) == 6 and all(n == 2 * 3 + 2 for n in rows) for rows in denoise)  # 2 prompts x 3 branches


def test_renorm_modes(tiny_model):
    run = lambda t, m: tiny_model.generate_image("a red cube", seed=2, output_type="latent", cfg_text_scale=6.0,  # noqa: E731
                                                  cfg_interval=(0.0, 1.0), cfg_renorm_type=t, cfg_renorm_min=m, **FAST).images
    # with the clamp at 1 the renorm scale is always 1: all modes agree
    ref = run("global", 1.0)
    for mode in ("channel", "text_channel"):
        torch.testing.assert_close(run(mode, 1.0), ref)
    assert not torch.allclose(run("global", 0.0), run("channel", 0.0), atol=1e-6)


def test_combine_cfg_renorm_bounds():
    g = torch.Generator().manual_seed(0)
    v = torch.randn(2, 3, 5, 4, generator=g)
    out = inference._combine_cfg(v, 4.0, None, "global", 0.0)
    assert (out.flatten(1).norm(dim=1) <= v[0].flatten(1).norm(dim=1) + 1e-5).all()
    out = inference._combine_cfg(v, 4.0, None, "channel", 0.0)
    assert (out.norm(dim=-1) <= v[0].norm(dim=-1) + 1e-5).all()
    unclamped = v[1] + 4.0 * (v[0] - v[1])
    torch.testing.assert_close(inference._combine_cfg(v, 4.0, None, "global", 1.0), unclamped)


def test_think_mode_returns_thoughts_and_changes_the_image(tiny_model):
    out = tiny_model.generate_image(["a cat", "a dog"], seed=0, think=True, max_think_tokens=6, output_type="latent", **FAST)
    assert isinstance(out.thoughts, list) and len(out.thoughts) == 2 and all(isinstance(t, str) for t in out.thoughts)
    plain = tiny_model.generate_image(["a cat", "a dog"], seed=0, output_type="latent", **FAST).images
    assert not torch.allclose(out.images, plain, atol=1e-5)


@pytest.mark.parametrize("kwargs, message", [
    (dict(height=30), "height must be a positive multiple of 16"),
    (dict(width=1024), "exceeds the latent position table"),
    (dict(num_timesteps=1), "num_timesteps"),
    (dict(cfg_interval=(0.8, 0.2)), "cfg_interval"),
    (dict(cfg_interval=(0.1, 1.5)), "cfg_interval"),
    (dict(cfg_text_scale=0.5), "cfg_text_scale"),
    (dict(cfg_renorm_type="norm"), "cfg_renorm_type"),
    (dict(cfg_renorm_min=2.0), "cfg_renorm_min"),
    (dict(timestep_shift=0.0), "timestep_shift"),
    (dict(output_type="np"), "output_type"),
    (dict(seed=1, latents=torch.zeros(1, 16, 4, 6)), "at most one"),
    (dict(latents=torch.zeros(1, 16, 6, 4)), "latents: expected shape"),
    (dict(seed=[1, 2]), "seed: 2 seeds for 1 prompts"),
])
def test_generation_arguments_are_validated(tiny_model, kwargs, message):
    with pytest.raises(ValueError, match=message):
        tiny_model.generate_image("a cube", **{**FAST, **kwargs})


def test_rows_with_the_same_image_share_one_prefill(tiny_model, images, monkeypatch):
    """Several questions about one picture: the ViT sees it once and the answers equal
    those of separate copies of the picture."""
    img = images[0]
    questions = ["Is there a cat?", "Is the area (10, 20)-(300, 400) red?", "Is it blue?", "hello"]
    seen = []
    embed = tiny_model.embed_vit_images

    def counting(tensors, *args, **kwargs):
        seen.append(len(tensors))
        return embed(tensors, *args, **kwargs)
    monkeypatch.setattr(tiny_model, "embed_vit_images", counting)
    shared = tiny_model.choice_probabilities([img, img, img, None], questions, [["Yes"], ["No"]])
    assert seen == [1]
    seen.clear()
    apart = tiny_model.choice_probabilities([img.copy(), img.copy(), img.copy(), None], questions, [["Yes"], ["No"]])
    assert seen == [3]
    torch.testing.assert_close(shared[0], apart[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(shared[1], apart[1], rtol=0, atol=1e-6)
    assert (tiny_model.understand([img, img], questions[:2], max_new_tokens=6)
            == tiny_model.understand([img.copy(), img.copy()], questions[:2], max_new_tokens=6))


def test_compiled_layers_give_the_same_results(tiny_dir, images):
    """compile_layers (the stages' ``model.compile``) changes speed, not results: sampling
    and decoding match the eager model. aot_eager traces the layers like inductor does,
    without building kernels (a C++ build per shape would take minutes here)."""
    from srum.distributed import env_info
    from srum.stages.common import ModelConfig, load_stage_model

    eager = load_stage_model(ModelConfig(path=str(tiny_dir), dtype="float32"), env_info())
    compiled = load_stage_model(ModelConfig(path=str(tiny_dir), dtype="float32", compile=True,
                                            compile_backend="aot_eager"), env_info())
    layers = compiled.language_model.model.layers
    assert all(layer._compiled_call_impl is not None for layer in layers)
    assert compiled.state_dict().keys() == eager.state_dict().keys()
    kwargs = dict(height=64, width=48, num_timesteps=4, seed=3, output_type="latent")
    want = eager.generate_image(["a red cube", "two cats"], **kwargs).images
    got = compiled.generate_image(["a red cube", "two cats"], **kwargs).images
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    questions = ["what is this?", "which colour?"]
    assert compiled.understand(images[:2], questions, max_new_tokens=6) == \
        eager.understand(images[:2], questions, max_new_tokens=6)


def test_unknown_compile_backend_is_named_at_config_time():
    from srum.stages.common import ModelConfig
    from srum.training.config import ParallelConfig

    with pytest.raises(ValueError, match="model.compile_backend: unknown torch.compile backend 'indcutor'"):
        ModelConfig(path="-", compile=True, compile_backend="indcutor")
    with pytest.raises(ValueError, match="parallel.compile_backend: unknown torch.compile backend 'x'"):
        ParallelConfig(compile=True, compile_backend="x")
    ModelConfig(path="-", compile_backend="x")  # not compiling: the backend is never used
