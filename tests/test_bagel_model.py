# SPDX-License-Identifier: Apache-2.0
"""The packed-sequence machinery: masks, attention backends, and agreement between the
training forward (one packed sequence, explicit mask) and the cached inference path."""
from contextlib import contextmanager
from unittest import mock

import pytest
import torch
from PIL import Image

from srum.models.bagel import attention, language_model
from srum.models.bagel.attention import CachedLayout, PackedLayout, cached_attention, varlen_self_attention
from srum.models.bagel.masks import SegmentPlan, packed_attention_mask
from srum.models.bagel.model import PackedBatch
from srum.models.bagel.tokenizer import encode_text
from srum.models.bagel.transforms import flattened_position_ids, patchify, to_rgb, vae_transform, vit_transform


def test_mask_segment_rules():
    # sample 0: text(2, causal) | noised image(3) | text(2, causal); sample 1: clean image(2, full)
    m = packed_attention_mask([[2, 3, 2], [2]], [["causal", "noise", "causal"], ["full"]])
    assert m.shape == (9, 9)
    assert m[1, 0] and not m[0, 1]                     # causal within text
    assert m[2:5, 0:5].all()                           # noise block sees earlier text and itself fully
    assert not m[5:7, 2:5].any()                       # later text never sees the noise
    assert m[5:7, 0:2].all() and m[6, 5] and not m[5, 6]
    assert not m[:7, 7:].any() and not m[7:, :7].any()  # samples are isolated
    assert m[7:, 7:].all()
    assert m.diagonal().all()                          # every token sees itself


def test_mask_rejects_bad_input():
    with pytest.raises(ValueError, match="unknown attention mode"):
        packed_attention_mask([[2]], [["bidirectional"]])
    with pytest.raises(ValueError, match="split lengths"):
        packed_attention_mask([[2, 2]], [["causal"]])


def _naive(q, k, v, mask):
    """q [Lq, H, D], k/v [Lk, Hkv, D] -> [Lq, H, D] by explicit softmax."""
    rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    scores = torch.einsum("qhd,khd->hqk", q, k) / q.shape[-1] ** 0.5
    scores = scores.masked_fill(~mask[None], float("-inf"))
    return torch.einsum("hqk,khd->qhd", scores.softmax(-1), v)


def _reference_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal):
    """flash_attn_varlen_func's contract, by explicit softmax: sequence i has queries
    cu_q[i]:cu_q[i+1] and keys cu_k[i]:cu_k[i+1]; causal is aligned bottom-right."""
    outs = []
    for i in range(len(cu_seqlens_q) - 1):
        q0, q1, k0, k1 = (int(x) for x in (cu_seqlens_q[i], cu_seqlens_q[i + 1], cu_seqlens_k[i], cu_seqlens_k[i + 1]))
        lq, lk = q1 - q0, k1 - k0
        assert lq <= max_seqlen_q and lk <= max_seqlen_k
        mask = torch.ones(lq, lk, dtype=torch.bool)
        if causal:
            mask = torch.arange(lk)[None, :] <= torch.arange(lq)[:, None] + (lk - lq)
        outs.append(_naive(q[q0:q1], k[k0:k1], v[k0:k1], mask))
    return torch.cat(outs)


def _reference_kvcache(q, k_cache, v_cache, cache_seqlens, causal):
    """flash_attn_with_kvcache's contract (no new keys passed): q [B, Lq, H, D] against the
    first cache_seqlens[b] slots of cache row b; causal aligned bottom-right."""
    outs = []
    for b in range(q.shape[0]):
        lq, lk = q.shape[1], int(cache_seqlens[b])
        mask = torch.ones(lq, lk, dtype=torch.bool)
        if causal:
            mask = torch.arange(lk)[None, :] <= torch.arange(lq)[:, None] + (lk - lq)
        outs.append(_naive(q[b], k_cache[b, :lk], v_cache[b, :lk], mask) if lk else torch.zeros_like(q[b]))
    return torch.stack(outs)


@contextmanager
def _flash_emulated():
    """Route the flash-attn code paths to the reference varlen on CPU float32."""
    with mock.patch.object(attention, "_flash_varlen", _reference_varlen), \
            mock.patch.object(attention, "_flash_kvcache", _reference_kvcache), \
            mock.patch.object(attention, "use_flash", lambda x: True), \
            mock.patch.object(language_model, "use_flash", lambda x: True):
        yield


def test_flash_code_paths_match_sdpa_end_to_end(tiny_model):
    """Understanding (ViT varlen, prefill, in-place cache decoding) and sampling (CFG rows
    of different lengths) take the flash-attn code paths and give the SDPA results."""
    images = [Image.new("RGB", (40, 30), (220, 20, 20)), Image.new("RGB", (30, 50), (20, 20, 220))]
    questions = ["what is this?", "which colour is it?"]
    kwargs = dict(height=32, width=48, num_timesteps=4, seed=1, output_type="latent")
    want_text = tiny_model.understand(images, questions, max_new_tokens=6)
    want_latents = tiny_model.generate_image(["a red cube", "two cats"], **kwargs).images
    with _flash_emulated():
        got_text = tiny_model.understand(images, questions, max_new_tokens=6)
        got_latents = tiny_model.generate_image(["a red cube", "two cats"], **kwargs).images
    assert got_text == want_text
    torch.testing.assert_close(got_latents, want_latents, atol=1e-5, rtol=1e-4)


SEGMENT_LAYOUTS = [
    ([[5, 7], [3], [4, 2, 6]], [["causal", "noise"], ["noise"], ["causal", "full", "noise"]]),
    ([[3, 4, 2], [6]], [["full", "causal", "causal"], ["causal"]]),
]


@pytest.mark.parametrize("splits,modes", SEGMENT_LAYOUTS)
def test_segment_attention_equals_masked_attention(splits, modes):
    """Values and gradients of the varlen segment path equal the dense-mask path."""
    g = torch.Generator().manual_seed(3)
    n = sum(sum(s) for s in splits)
    q = torch.randn(n, 4, 8, generator=g, requires_grad=True)
    k, v = (torch.randn(n, 2, 8, generator=g, requires_grad=True) for _ in range(2))
    plan = SegmentPlan.from_splits(splits, modes)
    with mock.patch.object(attention, "_flash_varlen", _reference_varlen):
        got = attention.segment_attention(q, k, v, plan)
    want = attention.masked_attention(q, k, v, packed_attention_mask(splits, modes))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    up = torch.randn(got.shape, generator=g)
    grads_got = torch.autograd.grad(got, (q, k, v), up)
    grads_want = torch.autograd.grad(want, (q, k, v), up)
    for a, b in zip(grads_got, grads_want):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_segment_plan_needs_contiguous_keys():
    # a segment after a noise segment may not see it: its keys are not one run
    assert SegmentPlan.from_splits([[2, 3], [3, 2]], [["causal", "noise"], ["noise", "causal"]]) is None
    plan = SegmentPlan.from_splits([[2, 3]], [["causal", "noise"]])
    assert plan.causal.q_index.tolist() == [0, 1] and plan.causal.k_index.tolist() == [0, 1]
    assert plan.full.q_index.tolist() == [2, 3, 4] and plan.full.k_index.tolist() == [0, 1, 2, 3, 4]
    assert plan.full.cu_q.tolist() == [0, 3] and plan.full.cu_k.tolist() == [0, 5] and plan.full.max_k == 5


@pytest.mark.parametrize("causal,past,new", [
    (True, [3, 0, 5], [2, 4, 0]),
    (False, [3, 0, 5], [2, 4, 0]),
    (False, [3, 1, 0], [2, 4, 5]),   # every row 5 long: SDPA runs without a mask
    (True, [3, 1, 0], [2, 4, 5]),
    (True, [3, 2, 5], [1, 0, 1]),    # decoding: one token per live row (flash reads the cache in place)
    (True, [3, 2, 5], [2, 2, 2]),
])
@pytest.mark.parametrize("backend", ["sdpa", "flash-kvcache", "flash-varlen"])
def test_cached_attention_matches_naive(causal, past, new, backend):
    g = torch.Generator().manual_seed(0)
    past, new = torch.tensor(past), torch.tensor(new)
    layout = CachedLayout(PackedLayout.from_lengths(new), past, causal)
    assert (layout.mask(int(layout.total.max())) is None) == (not causal and len(set(layout.total.tolist())) == 1)
    heads, kv_heads, dim, cap = 4, 2, 8, 12
    k_cache = torch.randn(3, cap, kv_heads, dim, generator=g)
    v_cache = torch.randn(3, cap, kv_heads, dim, generator=g)
    q = torch.randn(int(new.sum()), heads, dim, generator=g)
    if backend == "sdpa":
        out = cached_attention(q, k_cache, v_cache, layout)
    else:  # the flash-attn code paths, with the kernels emulated
        kvcache = _reference_kvcache if backend == "flash-kvcache" else None
        if kvcache is not None:
            in_place = not causal or all(n in (0, int(new.max())) for n in new.tolist())
            with mock.patch.object(attention, "_flash_kvcache", kvcache):
                assert attention._reads_cache_in_place(layout) == in_place
        with mock.patch.object(attention, "_flash_varlen", _reference_varlen), \
                mock.patch.object(attention, "_flash_kvcache", kvcache), \
                mock.patch.object(attention, "use_flash", lambda x: True):
            out = cached_attention(q, k_cache, v_cache, layout)
    start = 0
    for b in range(3):
        n, p = int(new[b]), int(past[b])
        if n == 0:
            continue
        total = p + n
        mask = torch.ones(n, total, dtype=torch.bool)
        if causal:
            mask = torch.arange(total)[None, :] <= (p + torch.arange(n))[:, None]
        ref = _naive(q[start:start + n], k_cache[b, :total], v_cache[b, :total], mask)
        torch.testing.assert_close(out[start:start + n], ref, atol=1e-5, rtol=1e-5)
        start += n


@pytest.mark.parametrize("lengths", [[3, 5], [4, 4]])  # [4, 4]: no padding, no mask
def test_varlen_attention_isolates_sequences(lengths):
    g = torch.Generator().manual_seed(1)
    a, b = lengths
    q, k, v = (torch.randn(a + b, 2, 4, generator=g) for _ in range(3))
    layout = PackedLayout.from_lengths(torch.tensor(lengths))
    assert layout.uniform == (a == b)
    out = varlen_self_attention(q, k, v, layout)
    full = torch.ones(a, a, dtype=torch.bool)
    torch.testing.assert_close(out[:a], _naive(q[:a], k[:a], v[:a], full), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[a:], _naive(q[a:], k[a:], v[a:], torch.ones(b, b, dtype=torch.bool)),
                               atol=1e-5, rtol=1e-5)


def _t2i_sample(model, prompt, h, w):
    """(split_lens, modes, text ids+index, latent index, positions) for [prompt][noised image] at offset 0."""
    st = model.special_tokens
    ids = encode_text(model.tokenizer, st, prompt)
    n = len(ids)
    split_lens, modes = [n, h * w + 2], ["causal", "noise"]
    text_ids = ids + [st.vision_start, st.vision_end]
    text_index = list(range(n)) + [n, n + 1 + h * w]
    latent_index = list(range(n + 1, n + 1 + h * w))
    positions = list(range(n)) + [n] * (h * w + 2)
    return split_lens, modes, text_ids, text_index, latent_index, positions


def test_training_forward_matches_cached_inference(tiny_model):
    """The packed training path and the KV-cache inference path compute the same velocity."""
    model = tiny_model
    h, w = 2, 3
    g = torch.Generator().manual_seed(0)
    prompts = ["a red cube on a table", "two blue spheres"]
    xs = [torch.randn(h * w, model.config.patch_latent_dim, generator=g) for _ in prompts]
    t = 0.7
    pos_ids = model.latent_position_ids(h * 16, w * 16)

    # one packed sequence holding both samples
    splits, modes, text_ids, text_index, latent_index, positions, offset = [], [], [], [], [], [], 0
    for prompt in prompts:
        s, m, ti, tx, li, p = _t2i_sample(model, prompt, h, w)
        splits.append(s); modes.append(m); text_ids += ti
        text_index += [i + offset for i in tx]; latent_index += [i + offset for i in li]; positions += p
        offset += sum(s)
    batch = PackedBatch(
        sequence_length=offset, position_ids=torch.tensor(positions),
        attention_mask=packed_attention_mask(splits, modes), text_ids=torch.tensor(text_ids),
        text_index=torch.tensor(text_index), latent_tokens=torch.cat(xs),
        latent_timesteps=torch.full((len(prompts) * h * w,), t), latent_position_ids=pos_ids.repeat(len(prompts)),
        latent_index=torch.tensor(latent_index))
    with torch.no_grad():
        v_train = model(batch)["velocity"].view(len(prompts), h * w, -1)
        # the flash-attn training path (segments instead of the mask) gives the same velocity
        batch.attention_segments = SegmentPlan.from_splits(splits, modes)
        with _flash_emulated():
            v_segments = model(batch)["velocity"].view(len(prompts), h * w, -1)
    torch.testing.assert_close(v_segments, v_train, atol=1e-5, rtol=1e-4)

    # cached inference, one row per prompt
    cache = model.new_cache(len(prompts), 64)
    model._prefill_text(cache, prompts)
    frame = model.embed_text(torch.tensor([model.special_tokens.vision_start, model.special_tokens.vision_end]))
    lat = model.embed_latents(torch.cat(xs), torch.full((len(prompts) * h * w,), t), pos_ids.repeat(len(prompts)))
    block = torch.cat([frame[:1].expand(2, 1, -1), lat.view(2, h * w, -1), frame[1:].expand(2, 1, -1)], 1)
    is_gen = torch.ones(h * w + 2, dtype=torch.bool)
    is_gen[[0, -1]] = False
    with torch.no_grad():
        hidden = model._forward_rows(cache, block.reshape(-1, block.shape[-1]), torch.tensor([h * w + 2] * 2),
                                     causal=False, single_position=True, is_gen=is_gen.repeat(2), commit=False)
        v_inf = model.llm2vae(hidden.view(2, h * w + 2, -1)[:, 1:-1])
    torch.testing.assert_close(v_train, v_inf, atol=1e-5, rtol=1e-4)


def test_greedy_decode_matches_full_forward(tiny_model):
    """Tokens decoded with the KV cache are the argmax of a cache-free forward over
    [image][prompt][<|im_start|> answer] (checks cache, RoPE positions, ViT path)."""
    model = tiny_model
    image = Image.new("RGB", (50, 40), (200, 30, 30))
    prompt = "What colour is the square?"
    answer = model.understand(image, prompt, max_new_tokens=8)
    cache = model._understanding_cache([[image]], [prompt], False, None, 8)
    tokens = model._decode(cache, torch.tensor([0]), 8, False, 1.0, None)[0]
    assert model._decode_text(tokens) == answer

    st = model.special_tokens
    pixels = vit_transform(model.config)(vae_transform(model.config).resize(to_rgb(image)))
    p = model.config.vit.patch_size
    patches = patchify(pixels, p)
    nv = patches.shape[0]
    ids = encode_text(model.tokenizer, st, prompt)
    reply = [st.bos] + tokens
    s = nv + 2 + len(ids) + len(reply)
    text_ids = [st.vision_start, st.vision_end] + ids + reply
    text_index = [0, nv + 1] + list(range(nv + 2, s))
    positions = [0] * (nv + 2) + list(range(1, len(ids) + 1)) + list(range(len(ids) + 1, len(ids) + 1 + len(reply)))
    batch = PackedBatch(
        sequence_length=s, position_ids=torch.tensor(positions),
        attention_mask=packed_attention_mask([[nv + 2, len(ids), len(reply)]], [["full", "causal", "causal"]]),
        text_ids=torch.tensor(text_ids), text_index=torch.tensor(text_index), vit_patches=patches,
        vit_position_ids=flattened_position_ids(pixels.shape[1], pixels.shape[2], p, model.config.vit_max_patches_per_side),
        vit_lengths=torch.tensor([nv]), vit_index=torch.arange(1, nv + 1),
        logits_index=torch.arange(s - len(reply), s))
    with torch.no_grad():
        logits = model(batch)["logits"]
    predicted = logits.argmax(-1).tolist()
    assert predicted[:len(tokens)] == tokens
    if len(tokens) < 8:  # stopped early: the next prediction must be the end token
        assert predicted[len(tokens)] == st.eos

    # choice probabilities read the same first-reply distribution, restricted to the choices
    choices = ["0", "1", "2", "3"]
    ids = [model.tokenizer.encode(c, add_special_tokens=False)[0] for c in choices]
    probs, mass = model.choice_probabilities(image, prompt, choices)
    full = logits[0].softmax(-1)
    torch.testing.assert_close(probs[0], full[ids] / full[ids].sum(), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(mass[0], full[ids].sum(), atol=1e-6, rtol=1e-4)
