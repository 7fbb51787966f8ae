# SPDX-License-Identifier: Apache-2.0
"""Benchmark: image sampling with :meth:`Bagel.generate_image` (seconds per image and per
denoising step), CFG branches batched in one forward vs one forward per branch, for
batches of 1 and N prompts.

Cases per batch size: ``batched`` (the default code path), ``sequential``
(``cfg_batching="sequential"``) and ``nocfg`` (``cfg_text_scale=1``: one branch, the floor
any CFG scheme is measured against). Latents only (no VAE decode) unless ``--decode``.
The KV cache is checked, not assumed: every call must allocate exactly one cache and
never grow it (``kv_cache_allocs``, ``kv_cache_grown``).

    .venv/bin/python scripts/bench/sampling.py                      # tiny, CPU
    .venv/bin/python scripts/bench/sampling.py --device cuda --model bagel7b-width --layers 4 \\
        --size 1024 --steps 10 --batch-sizes 1,4
"""
from __future__ import annotations

import argparse
import itertools


from common import Reporter, add_common_args, add_model_args, build_model, peak_memory, setup, time_interleaved

PROMPTS = ["a red cube to the left of a blue sphere", "two green cats under a wooden table",
           "a yellow star above a small house", "three purple balls on a striped rug",
           "a silver car between two tall trees", "a pink heart to the right of a gray star",
           "an orange lamp on a desk next to a laptop", "a white boat on a calm blue lake"]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(p, reps=15, warmup=1)
    add_model_args(p)
    p.add_argument("--sizes", default="64,256",
                   help="comma-separated image sides in pixels (default 64,256: 4x4 and 16x16 latent tokens)")
    p.add_argument("--steps", type=int, default=8, help="num_timesteps (default 8: 7 denoising steps)")
    p.add_argument("--batch-sizes", default="1,4", help="comma-separated prompts per call (default 1,4)")
    p.add_argument("--modes", default="batched,sequential,nocfg",
                   help="comma-separated cases: batched, sequential, nocfg (default all three)")
    p.add_argument("--cfg-text-scale", type=float, default=4.0)
    p.add_argument("--cfg-img-scale", type=float, default=1.0,
                   help="> 1 adds the image-unconditional branch (3 branches)")
    p.add_argument("--cfg-interval", default="0.0,1.0",
                   help="CFG interval (default 0,1: every step guided, so per-step times compare)")
    p.add_argument("--timestep-shift", type=float, default=3.0)
    p.add_argument("--decode", action="store_true", help="also decode the latents with the VAE (timed)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile every decoder layer (compile: true in the generate stage; off by default)")
    p.add_argument("--compile-backend", default="inductor", help="torch.compile backend (default inductor)")
    return p.parse_args(argv)


class CacheWatch:
    """Wraps ``model.new_cache`` to count the caches a call allocates and whether any of
    them had to grow (its capacity changed after creation)."""

    def __init__(self, model):
        self.model = model
        self.inner = model.new_cache
        self.caches = []
        model.new_cache = self._new_cache

    def _new_cache(self, rows, capacity):
        cache = self.inner(rows, capacity)
        self.caches.append((cache, cache.capacity))
        return cache

    def reset(self) -> None:
        self.caches = []

    @property
    def grown(self) -> bool:
        return any(cache.capacity != cap for cache, cap in self.caches)


def main(argv=None) -> None:
    args = parse_args(argv)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    sizes = [int(v) for v in args.sizes.split(",")]
    modes = args.modes.split(",")
    unknown = set(modes) - {"batched", "sequential", "nocfg"}
    if unknown:
        raise SystemExit(f"--modes: unknown case(s) {sorted(unknown)}; expected batched, sequential, nocfg")
    interval = tuple(float(v) for v in args.cfg_interval.split(","))
    env = setup(args)
    model, desc = build_model(args, env)
    if args.compile:
        model.language_model.model.compile_layers(args.compile_backend)
    branches = 1 + (args.cfg_text_scale > 1) + (args.cfg_text_scale > 1 and args.cfg_img_scale > 1)
    watch = CacheWatch(model)
    reporter = Reporter("sampling", env, args.out, args.md)
    denoise_steps = args.steps - 1
    for size, batch in itertools.product(sizes, batch_sizes):
        tokens = model.latent_grid(size, size)
        prompts = [PROMPTS[i % len(PROMPTS)] for i in range(batch)]
        kwargs = {mode: dict(height=size, width=size, num_timesteps=args.steps,
                             cfg_text_scale=1.0 if mode == "nocfg" else args.cfg_text_scale,
                             cfg_img_scale=args.cfg_img_scale, cfg_interval=interval,
                             timestep_shift=args.timestep_shift, seed=args.seed,
                             output_type="pil" if args.decode else "latent",
                             cfg_batching="sequential" if mode == "sequential" else "batched")
                  for mode in modes}
        watches = {mode: [] for mode in modes}

        def call(mode):
            watch.reset()
            model.generate_image(prompts, **kwargs[mode])
            watches[mode].append((len(watch.caches), watch.grown))

        timings = time_interleaved({mode: (lambda m=mode: call(m)) for mode in modes}, reps=args.reps,
                                   warmup=args.warmup, device=env.device)
        per_step = {mode: timing.median / denoise_steps for mode, timing in timings.items()}
        rows = {}
        for mode, timing in timings.items():
            rows[mode] = dict(
                **desc, batch=batch, mode=mode, cfg_branches=1 if mode == "nocfg" else branches,
                forwards_per_step=(branches if mode == "sequential" else 1), size=size,
                latent_tokens=tokens[0] * tokens[1], num_timesteps=args.steps, decode=args.decode,
                s_per_call=timing.median, s_per_call_min=timing.min, s_per_call_max=timing.max, reps=len(timing.times),
                s_per_image=timing.median / batch, s_per_step=per_step[mode],
                s_per_image_step=per_step[mode] / batch,
                kv_cache_allocs=max(n for n, _ in watches[mode]), kv_cache_grown=any(g for _, g in watches[mode]),
                **peak_memory(env.device))
        for mode, row in rows.items():  # emitted once every mode of this batch size ran
            if mode == "batched" and "sequential" in per_step:
                row["speedup_vs_sequential"] = per_step["sequential"] / per_step["batched"]
                row["speedup_vs_sequential_of_min"] = timings["sequential"].min / timings["batched"].min
            reporter.emit(f"{size}px-b{batch}-{mode}", **row)
    reporter.finish(
        [("case", "case"), ("cfg_branches", "branches"), ("forwards_per_step", "forwards/step"),
         ("s_per_step", "s/step"), ("s_per_image", "s/image"), ("s_per_image_step", "s/image/step"),
         ("speedup_vs_sequential", "batched speedup"), ("kv_cache_allocs", "caches/call"),
         ("kv_cache_grown", "cache grew")],
        notes=[f"{args.steps} timesteps ({denoise_steps} denoising steps), "
               f"cfg_interval {list(interval)}; s/step includes the prompt prefill spread over the steps."])


if __name__ == "__main__":
    main()
