# SPDX-License-Identifier: Apache-2.0
"""Inference API of :class:`~srum.models.bagel.model.Bagel`: understanding, scoring and
image generation, batch-first, on a preallocated KV cache.

Context layout (the reference inferencer's): every text segment is
``<|im_start|> text <|im_end|>`` with consecutive RoPE positions; an input image is
``<|vision_start|> ViT patches <|vision_end|>`` at one position; an answer is decoded
after a fed ``<|im_start|>``. In think mode a system-prompt segment comes first.

Text-to-image CFG branches (one cache row each, all evaluated in one forward per step):

* conditional: [think prompt] + prompt (+ chain of thought);
* text-unconditional: [think prompt] (what came before the prompt);
* image-unconditional: [think prompt] + prompt (no input image; only used when
  ``cfg_img_scale > 1`` and text CFG is on, as in the reference).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import PIL.Image
import torch

from .attention import CachedLayout, PackedLayout
from .kv_cache import KVCache
from .prompts import GENERATION_THINK_PROMPT, UNDERSTANDING_THINK_PROMPT, warn_if_builtin_think_prompt
from .tokenizer import encode_text
from .transforms import to_rgb, vae_transform, vit_transform

RENORM_TYPES = ("global", "channel", "text_channel")
CFG_BATCHING = ("batched", "sequential")


@dataclass
class ImageGenerationOutput:
    """``images``: PIL images (output_type="pil") or a latent tensor [B, z, H/8, W/8]
    (output_type="latent"); ``thoughts``: the decoded chain of thought per image when
    think=True, else None; ``seeds``: the seed of each image when seeds were given."""

    images: list[PIL.Image.Image] | torch.Tensor
    thoughts: list[str] | None
    seeds: list[int] | None


def _as_list(x, name: str) -> list:
    if isinstance(x, (str, PIL.Image.Image)) or x is None:
        return [x]
    if isinstance(x, Sequence):
        return list(x)
    raise TypeError(f"{name}: expected a str, a PIL image or a list of them, got {type(x).__name__}")


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise ValueError(message)


class BagelInferenceMixin:
    """Methods mixed into :class:`Bagel`; they use its modules and ``tokenizer``."""

    # ------------------------------------------------------------ low level
    def new_cache(self, rows: int, capacity: int) -> KVCache:
        cfg = self.config.llm
        layer_devices = [layer.input_layernorm.weight.device for layer in self.language_model.model.layers]
        return KVCache(layer_devices, rows, capacity, cfg.num_key_value_heads, cfg.head_dim, self.dtype, self.device)

    def _forward_rows(self, cache: KVCache, embeds: torch.Tensor, lengths: torch.Tensor, *, causal: bool,
                      single_position: bool, is_gen: torch.Tensor | None = None, commit: bool) -> torch.Tensor:
        """Run new tokens of several cache rows through the LLM.

        embeds [N, hidden] packed by row, lengths [rows] (0 for rows not taking part).
        Text uses consecutive RoPE positions; an image block (``single_position``) uses
        one. Returns final hidden states [N, hidden]."""
        query = PackedLayout.from_lengths(lengths)
        layout = CachedLayout(query, cache.lengths.clone(), causal)
        cache.ensure_capacity(layout.key_len)
        positions = cache.next_pos[query.row] + (0 if single_position else query.col)
        hidden = self.language_model.model.forward_cached(embeds, positions, layout, cache, is_gen)
        if commit:
            used = (lengths > 0).long() if single_position else lengths
            cache.commit(lengths, used)
        return hidden

    def _prefill_text(self, cache: KVCache, texts: list[str | None]) -> None:
        """Append one text segment to each row (None: leave the row alone)."""
        ids = [encode_text(self.tokenizer, self.special_tokens, t) if t is not None else [] for t in texts]
        lengths = torch.tensor([len(i) for i in ids], device=self.device)
        if int(lengths.sum()) == 0:
            return
        flat = torch.tensor([t for row in ids for t in row], device=self.device)
        self._forward_rows(cache, self.embed_text(flat), lengths, causal=True, single_position=False, commit=True)

    def _prefill_images(self, cache: KVCache, images: list[PIL.Image.Image | None]) -> None:
        """Append one ViT image block to each row that has an image."""
        vae_resize, vit = vae_transform(self.config).resize, vit_transform(self.config)
        tensors = [vit(vae_resize(to_rgb(im))) for im in images if im is not None]
        if not tensors:
            return
        vit_embeds, patch_counts = self.embed_vit_images(tensors)
        st = self.special_tokens
        frame = self.embed_text(torch.tensor([st.vision_start, st.vision_end], device=self.device))
        pieces, lengths, k = [], [], 0
        for im in images:
            if im is None:
                lengths.append(0)
                continue
            start = int(patch_counts[:k].sum())
            n = int(patch_counts[k])
            pieces += [frame[:1], vit_embeds[start:start + n].to(frame.dtype), frame[1:]]
            lengths.append(n + 2)
            k += 1
        self._forward_rows(cache, torch.cat(pieces), torch.tensor(lengths, device=self.device), causal=False,
                           single_position=True, commit=True)

    def _decode(self, cache: KVCache, rows: torch.Tensor, max_new_tokens: int, do_sample: bool,
                temperature: float, generator: torch.Generator | None) -> list[list[int]]:
        """Greedy or sampled decoding for the given cache rows, after a fed ``<|im_start|>``.

        The decoded tokens are scratch: the rows' committed context is restored
        afterwards, so callers can re-prefill the decoded *text* as its own segment (what
        the reference does with a chain of thought). Returns token ids per row, without
        the end token."""
        _check(bool((rows[1:] > rows[:-1]).all()), "rows must be strictly increasing")
        saved_len, saved_pos = cache.lengths.clone(), cache.next_pos.clone()
        eos = self.special_tokens.eos
        out: list[list[int]] = [[] for _ in range(len(rows))]
        current = torch.full((len(rows),), self.special_tokens.bos, device=self.device)
        alive = torch.ones(len(rows), dtype=torch.bool, device=self.device)
        lm_head = self.language_model.lm_head
        for _ in range(max_new_tokens):
            lengths = torch.zeros(cache.rows, dtype=torch.long, device=self.device)
            lengths[rows[alive]] = 1
            # rows are increasing, so packed outputs come back in the order of alive entries
            hidden = self._forward_rows(cache, self.embed_text(current[alive]), lengths, causal=True,
                                        single_position=False, commit=True)
            logits = lm_head(hidden).float()
            if do_sample:
                probs = torch.softmax(logits / temperature, dim=-1)
                where = generator.device if generator is not None else probs.device
                nxt = torch.multinomial(probs.to(where), 1, generator=generator).squeeze(1).to(self.device)
            else:
                nxt = logits.argmax(-1)
            alive_idx = torch.nonzero(alive, as_tuple=True)[0]
            for j, tok in zip(alive_idx.tolist(), nxt.tolist()):
                if tok == eos:
                    alive[j] = False
                else:
                    out[j].append(tok)
            current[alive_idx] = nxt
            if not bool(alive.any()):
                break
        cache.lengths.copy_(saved_len)
        cache.next_pos.copy_(saved_pos)
        return out

    def _decode_text(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False)

    def _text_tokens(self, text: str | None) -> int:
        return 0 if text is None else len(encode_text(self.tokenizer, self.special_tokens, text))

    def _vit_tokens(self, image: PIL.Image.Image) -> int:
        """Cache slots an input image takes: its ViT patches plus the two frame tokens."""
        w, h = vit_transform(self.config).resize.target_size(*vae_transform(self.config).resize.target_size(*image.size))
        p = self.config.vit.patch_size
        return (w // p) * (h // p) + 2

    def _understanding_cache(self, images_per_row: list[list], prompts: list[str], think: bool,
                             think_system_prompt: str | None, extra: int) -> KVCache:
        system = (think_system_prompt or UNDERSTANDING_THINK_PROMPT) if think else None
        warn_if_builtin_think_prompt(self.config, system)
        # sized exactly, so decoding never re-allocates
        capacity = max(self._text_tokens(system) + sum(self._vit_tokens(im) for im in ims) + self._text_tokens(p)
                       for ims, p in zip(images_per_row, prompts)) + extra
        cache = self.new_cache(len(prompts), capacity)
        if think:
            self._prefill_text(cache, [system] * len(prompts))
        # Rows that show the very same images (same objects, e.g. every question about one
        # picture) share its prefill: the ViT and LLM run on it once, then the rows are copied.
        first_row: dict[tuple, int] = {}
        leader = [first_row.setdefault(tuple(map(id, ims)), i) for i, ims in enumerate(images_per_row)]
        for k in range(max((len(ims) for ims in images_per_row), default=0)):
            self._prefill_images(cache, [ims[k] if k < len(ims) and leader[i] == i else None
                                         for i, ims in enumerate(images_per_row)])
        followers = [i for i, ims in enumerate(images_per_row) if ims and leader[i] != i]
        if followers:
            cache.copy_rows(torch.tensor([leader[i] for i in followers], device=self.device),
                            torch.tensor(followers, device=self.device))
        self._prefill_text(cache, prompts)
        return cache

    @staticmethod
    def _batch_inputs(images, prompt) -> tuple[list[list[PIL.Image.Image]], list[str], bool]:
        single = isinstance(prompt, str)
        prompts = [prompt] if single else list(prompt)
        _check(len(prompts) > 0 and all(isinstance(p, str) for p in prompts), "prompt: expected a str or a non-empty list of str")
        if single:
            per_row = [[im for im in _as_list(images, "images") if im is not None]]
        else:
            imgs = [None] * len(prompts) if images is None else list(images)
            _check(len(imgs) == len(prompts), f"images: {len(imgs)} entries for {len(prompts)} prompts")
            per_row = [[i for i in _as_list(x, "images") if i is not None] for x in imgs]
        for row in per_row:
            for im in row:
                if not isinstance(im, PIL.Image.Image):
                    raise TypeError(f"images: expected PIL images, got {type(im).__name__}")
        return per_row, prompts, single

    # ------------------------------------------------------------ understanding
    @torch.no_grad()
    def understand(self, images, prompt: str | Sequence[str], think: bool = False, max_new_tokens: int = 512,
                   do_sample: bool = False, temperature: float = 0.3, generator: torch.Generator | None = None,
                   think_system_prompt: str | None = None) -> str | list[str]:
        """Answer ``prompt`` about ``images``.

        Single query: ``images`` is a PIL image, a list of them or None and ``prompt`` a
        str; returns a str. Batch: ``prompt`` is a list of str and ``images`` a list with
        one entry (image, list of images or None) per prompt; returns a list of str.
        Greedy by default; ``do_sample`` samples at ``temperature``."""
        _check(max_new_tokens >= 1, f"max_new_tokens must be >= 1, got {max_new_tokens}")
        _check(not do_sample or temperature > 0, f"temperature must be > 0 when sampling, got {temperature}")
        per_row, prompts, single = self._batch_inputs(images, prompt)
        cache = self._understanding_cache(per_row, prompts, think, think_system_prompt, max_new_tokens)
        rows = torch.arange(len(prompts), device=self.device)
        answers = [self._decode_text(t) for t in self._decode(cache, rows, max_new_tokens, do_sample, temperature, generator)]
        return answers[0] if single else answers

    @torch.no_grad()
    def choice_probabilities(self, images, prompt: str | Sequence[str], choices: Sequence[str | Sequence[str]],
                             think_system_prompt: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Next-token probabilities of a set of answers, in one forward, no generated text.

        ``choices``: one entry per answer, each a string or a list of spellings (e.g.
        ``[["Yes", "yes"], ["No", "no"]]``); an answer's probability is the summed
        probability of the first token of each spelling, read at the first position of
        the reply (right after the fed ``<|im_start|>``). Returns ``(probs, mass)``:
        probs [B, C] renormalised over the choices, mass [B] the total probability the
        choices hold under the full vocabulary (low mass = the model wanted to say
        something else). For a single str prompt B = 1."""
        per_row, prompts, _ = self._batch_inputs(images, prompt)
        token_groups = []
        for choice in choices:
            spellings = [choice] if isinstance(choice, str) else list(choice)
            ids = sorted({self.tokenizer.encode(s, add_special_tokens=False)[0] for s in spellings if s})
            _check(bool(ids), f"choices: answer {choice!r} has no tokens")
            token_groups.append(ids)
        owner: dict[int, int] = {}
        for c, ids in enumerate(token_groups):
            for t in ids:
                _check(owner.setdefault(t, c) == c,
                       f"choices: answers {choices[owner[t]]!r} and {choices[c]!r} start with the same token")
        cache = self._understanding_cache(per_row, prompts, False, think_system_prompt, 1)
        bos = torch.full((len(prompts),), self.special_tokens.bos, device=self.device)
        lengths = torch.ones(len(prompts), dtype=torch.long, device=self.device)
        hidden = self._forward_rows(cache, self.embed_text(bos), lengths, causal=True, single_position=False, commit=False)
        logp = torch.log_softmax(self.language_model.lm_head(hidden).float(), dim=-1)
        per_choice = torch.stack([torch.logsumexp(logp[:, ids], dim=-1) for ids in token_groups], dim=-1)
        mass = per_choice.logsumexp(-1)
        return torch.softmax(per_choice, dim=-1), mass.exp()

    @torch.no_grad()
    def continuation_logprobs(self, images, prompt: str | Sequence[str],
                              continuations: Sequence[str | Sequence[int]]) -> list[tuple[float, bool]]:
        """Log-probability of each reply, teacher-forced, in one forward per batch.

        Row i is ``images[i]`` + ``prompt[i]`` and its reply ``continuations[i]`` (a str,
        tokenised without special tokens, or token ids), read after the fed
        ``<|im_start|>`` exactly where :meth:`understand` starts decoding. Returns
        ``(sum of log P(token | context, earlier tokens), is_greedy)`` per row; is_greedy:
        every token is the argmax of its position (what greedy decoding would write, not
        counting where it would stop). For a single str prompt, one continuation."""
        per_row, prompts, _ = self._batch_inputs(images, prompt)
        _check(len(continuations) == len(prompts), f"continuations: {len(continuations)} for {len(prompts)} prompts")
        ids = [self.tokenizer.encode(c, add_special_tokens=False) if isinstance(c, str) else [int(t) for t in c]
               for c in continuations]
        _check(all(ids), "continuations: every reply needs at least one token")
        cache = self._understanding_cache(per_row, prompts, False, None, max(len(i) for i in ids) + 1)
        bos = self.special_tokens.bos
        flat = torch.tensor([t for row in ids for t in [bos, *row]], device=self.device)
        lengths = torch.tensor([len(row) + 1 for row in ids], device=self.device)
        hidden = self._forward_rows(cache, self.embed_text(flat), lengths, causal=True, single_position=False,
                                    commit=False)
        logp = torch.log_softmax(self.language_model.lm_head(hidden).float(), dim=-1)
        out, start = [], 0
        for row in ids:
            # position j (the fed <|im_start|> and the reply's tokens) predicts reply token j
            rows_logp = logp[start:start + len(row)]
            target = torch.tensor(row, device=logp.device)
            out.append((float(rows_logp.gather(1, target[:, None]).sum()),
                        bool((rows_logp.argmax(-1) == target).all())))
            start += len(row) + 1
        return out

    def score_yes_no(self, images, prompt: str | Sequence[str]) -> torch.Tensor:
        """P(yes) [B] renormalised over {yes, no}, read from one forward."""
        probs, _ = self.choice_probabilities(images, prompt, [["Yes", "yes"], ["No", "no"]])
        return probs[:, 0]

    # ------------------------------------------------------------ generation
    def _check_generation_args(self, n, height, width, num_timesteps, cfg_text_scale, cfg_img_scale, cfg_interval,
                               timestep_shift, cfg_renorm_min, cfg_renorm_type, seed, generator, latents, output_type):
        ds = self.config.latent_downsample
        for name, side in (("height", height), ("width", width)):
            _check(isinstance(side, int) and side > 0 and side % ds == 0,
                   f"{name} must be a positive multiple of {ds}, got {side!r}")
            _check(side <= self.config.max_image_side,
                   f"{name}={side} exceeds the latent position table ({self.config.max_image_side} px per side)")
        _check(isinstance(num_timesteps, int) and num_timesteps >= 2, f"num_timesteps must be an int >= 2, got {num_timesteps!r}")
        _check(cfg_text_scale >= 1.0, f"cfg_text_scale must be >= 1.0 (1.0 = off), got {cfg_text_scale}")
        _check(cfg_img_scale >= 1.0, f"cfg_img_scale must be >= 1.0 (1.0 = off), got {cfg_img_scale}")
        _check(len(cfg_interval) == 2 and 0.0 <= cfg_interval[0] <= cfg_interval[1] <= 1.0,
               f"cfg_interval must be [low, high] with 0 <= low <= high <= 1, got {list(cfg_interval)}")
        _check(timestep_shift > 0, f"timestep_shift must be > 0, got {timestep_shift}")
        _check(0.0 <= cfg_renorm_min <= 1.0, f"cfg_renorm_min must be in [0, 1], got {cfg_renorm_min}")
        _check(cfg_renorm_type in RENORM_TYPES, f"cfg_renorm_type must be one of {RENORM_TYPES}, got {cfg_renorm_type!r}")
        _check(sum(x is not None for x in (seed, generator, latents)) <= 1, "give at most one of seed, generator, latents")
        _check(output_type in ("pil", "latent"), f"output_type must be 'pil' or 'latent', got {output_type!r}")
        if latents is not None:
            expected = (n, self.config.latent_channels, height // self.config.vae.downsample, width // self.config.vae.downsample)
            _check(tuple(latents.shape) == expected, f"latents: expected shape {list(expected)}, got {list(latents.shape)}")

    def _initial_noise(self, n: int, h: int, w: int, seed, generator, latents) -> tuple[torch.Tensor, list[int] | None]:
        """Initial noise in token layout [n, h*w, p*p*z], float32.

        Each seeded image draws ``randn(h*w, p*p*z)`` from its own CPU generator, the same
        draw the reference makes after ``torch.manual_seed(seed)``, so images depend only
        on their seed (not on batch composition or device count)."""
        shape = (h * w, self.config.patch_latent_dim)
        if latents is not None:
            return self.patchify_latents(latents.float()).to(self.device), None
        if seed is not None:
            seeds = [int(seed) + i for i in range(n)] if isinstance(seed, int) else [int(s) for s in seed]
            _check(len(seeds) == n, f"seed: {len(seeds)} seeds for {n} prompts")
            noise = [torch.randn(shape, generator=torch.Generator().manual_seed(s)) for s in seeds]
            return torch.stack(noise).to(self.device), seeds
        gen_device = generator.device if generator is not None else "cpu"
        noise = torch.stack([torch.randn(shape, generator=generator, device=gen_device) for _ in range(n)])
        return noise.to(self.device), None

    @torch.no_grad()
    def generate_image(self, prompts: str | Sequence[str], height: int = 1024, width: int = 1024,
                       num_timesteps: int = 50, cfg_text_scale: float = 4.0, cfg_img_scale: float = 1.0,
                       cfg_interval: Sequence[float] = (0.4, 1.0), timestep_shift: float = 3.0,
                       cfg_renorm_min: float = 0.0, cfg_renorm_type: str = "global", think: bool = False,
                       seed: int | Sequence[int] | None = None, generator: torch.Generator | None = None,
                       latents: torch.Tensor | None = None, output_type: str = "pil",
                       max_think_tokens: int = 1000, think_do_sample: bool = False, think_temperature: float = 0.3,
                       think_system_prompt: str | None = None, progress: bool = False,
                       cfg_batching: str = "batched") -> ImageGenerationOutput:
        """Text-to-image with flow matching (Euler), CFG branches batched in one forward.

        Time runs from 1 (noise) to 0 on ``num_timesteps`` points shifted by
        ``timestep_shift``; CFG applies while ``cfg_interval[0] < t <= cfg_interval[1]``.
        ``seed`` (int: seed + i for prompt i, or one seed per prompt), ``generator`` or
        ``latents`` [B, z, H/8, W/8] fix the initial noise. Defaults are the reference
        sampling settings used by SRUM. ``cfg_batching="sequential"`` runs one forward per
        CFG branch instead (same result within float tolerance; a baseline for benchmarks)."""
        prompts = _as_list(prompts, "prompts")
        _check(len(prompts) > 0 and all(isinstance(p, str) for p in prompts), "prompts: expected a str or a non-empty list of str")
        self._check_generation_args(len(prompts), height, width, num_timesteps, cfg_text_scale, cfg_img_scale, cfg_interval,
                                    timestep_shift, cfg_renorm_min, cfg_renorm_type, seed, generator, latents, output_type)
        _check(cfg_batching in CFG_BATCHING, f"cfg_batching must be one of {CFG_BATCHING}, got {cfg_batching!r}")
        n = len(prompts)
        h, w = self.latent_grid(height, width)
        text_cfg = cfg_text_scale > 1.0
        img_cfg = text_cfg and cfg_img_scale > 1.0  # the reference applies image CFG only inside text CFG
        branches = 1 + text_cfg + img_cfg
        rows = n * branches  # [cond x n | text-uncond x n | img-uncond x n]

        system = (think_system_prompt or GENERATION_THINK_PROMPT) if think else None
        warn_if_builtin_think_prompt(self.config, system)
        context = self._text_tokens(system) + max(self._text_tokens(p) for p in prompts)
        cache = self.new_cache(rows, context + (max_think_tokens + 2 if think else 0) + h * w + 2)
        if think:
            self._prefill_text(cache, [system] * rows)
        with_prompt = list(prompts) + [None] * n * text_cfg + list(prompts) * img_cfg
        self._prefill_text(cache, with_prompt)
        thoughts = None
        if think:
            cond_rows = torch.arange(n, device=self.device)
            tokens = self._decode(cache, cond_rows, max_think_tokens, think_do_sample, think_temperature, generator)
            thoughts = [self._decode_text(t) for t in tokens]
            self._prefill_text(cache, thoughts + [None] * (rows - n))

        x, seeds = self._initial_noise(n, h, w, seed, generator, latents)
        pos_ids = self.latent_position_ids(height, width).to(self.device)
        st = self.special_tokens
        frame = self.embed_text(torch.tensor([st.vision_start, st.vision_end], device=self.device))
        t_grid = torch.linspace(1, 0, num_timesteps, device=self.device)
        t_grid = timestep_shift * t_grid / (1 + (timestep_shift - 1) * t_grid)
        steps = range(num_timesteps - 1)
        if progress:
            from tqdm import tqdm
            steps = tqdm(steps, desc="denoising", leave=False)
        for i in steps:
            t, dt = float(t_grid[i]), float(t_grid[i] - t_grid[i + 1])
            use_cfg = text_cfg and cfg_interval[0] < t <= cfg_interval[1]
            if not use_cfg:
                v = self._latent_velocity(cache, x, t, pos_ids, frame)
            elif cfg_batching == "batched":
                # the same noisy image goes to every branch of its prompt
                v = self._latent_velocity(cache, x.repeat(branches, 1, 1), t, pos_ids, frame)
            else:
                v = torch.cat([self._latent_velocity(cache.row_view(b * n, (b + 1) * n), x, t, pos_ids, frame)
                               for b in range(branches)])
            if use_cfg:
                v = _combine_cfg(v.view(branches, n, h * w, -1), cfg_text_scale, cfg_img_scale if img_cfg else None,
                                 cfg_renorm_type, cfg_renorm_min)
            x = x - v * dt

        latents_out = self.unpatchify_latents(x, h, w)
        images = latents_out if output_type == "latent" else self.decode_latents(latents_out)
        return ImageGenerationOutput(images=images, thoughts=thoughts, seeds=seeds)

    def _latent_velocity(self, cache: KVCache, x: torch.Tensor, t: float, pos_ids: torch.Tensor,
                         frame: torch.Tensor) -> torch.Tensor:
        """One denoising forward: noisy latent tokens x [active, h*w, p*p*z] for the first
        ``active`` rows of ``cache``, at flow time t, as scratch (nothing committed) ->
        velocity [active, h*w, p*p*z] float32. pos_ids [h*w] are the latent grid ids,
        frame [2, hidden] the embedded vision start / end tokens around the block."""
        active, tokens, _ = x.shape
        # every token of the step shares t: embed it once, broadcast over the tokens
        t_vec = torch.full((1,), t, device=self.device)
        lat = self.embed_latents(x.reshape(active * tokens, -1), t_vec, pos_ids.repeat(active))
        block = torch.cat([frame[:1].expand(active, 1, -1), lat.view(active, tokens, -1).to(frame.dtype),
                           frame[1:].expand(active, 1, -1)], dim=1)
        is_gen = torch.ones(tokens + 2, dtype=torch.bool, device=self.device)
        is_gen[[0, -1]] = False
        lengths = torch.zeros(cache.rows, dtype=torch.long, device=self.device)
        lengths[:active] = tokens + 2
        hidden = self._forward_rows(cache, block.reshape(-1, block.shape[-1]), lengths, causal=False,
                                    single_position=True, is_gen=is_gen.repeat(active), commit=False)
        return self.llm2vae(hidden.view(active, tokens + 2, -1)[:, 1:-1]).float()

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> list[PIL.Image.Image]:
        """[B, z, H/8, W/8] latents -> PIL images (values truncated to uint8 as the reference does)."""
        pixels = self.vae.decode(latents.to(self.device, self.dtype)).float()
        pixels = ((pixels * 0.5 + 0.5).clamp(0, 1) * 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        return [PIL.Image.fromarray(p) for p in pixels]


def _combine_cfg(v: torch.Tensor, text_scale: float, img_scale: float | None, renorm_type: str,
                 renorm_min: float) -> torch.Tensor:
    """Guided velocity from branch velocities v [branches, B, tokens, dim] ->
    [B, tokens, dim]. Branch 0 is conditional, 1 text-unconditional, 2 image-unconditional.

    The guided velocity is rescaled so its norm does not exceed the conditional one
    (scale clamped to [renorm_min, 1]): over a whole image ("global"), per token
    ("channel"), or per token right after the text guidance ("text_channel")."""
    cond, text_uncond = v[0], v[1]
    guided = text_uncond + text_scale * (cond - text_uncond)

    def renorm(x: torch.Tensor, dims) -> torch.Tensor:
        scale = cond.norm(dim=dims, keepdim=True) / (x.norm(dim=dims, keepdim=True) + 1e-8)
        return x * scale.clamp(min=renorm_min, max=1.0)

    if renorm_type == "text_channel":
        guided = renorm(guided, (-1,))
        return v[2] + img_scale * (guided - v[2]) if img_scale is not None else guided
    if img_scale is not None:
        guided = v[2] + img_scale * (guided - v[2])
    return renorm(guided, (-2, -1) if renorm_type == "global" else (-1,))
