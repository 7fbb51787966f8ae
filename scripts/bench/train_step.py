# SPDX-License-Identifier: Apache-2.0
"""Benchmark: one SRUM training step (tokens/s, step time, peak memory, MFU on CUDA).

Runs the trainer's own :func:`srum.training.trainer.train_step` (VAE encode of the
images, packed attention mask, forward, SRUM loss, backward, gradient clipping, AdamW)
on synthetic reward samples: each sample is a ``--prompt-tokens`` prompt plus an
``--image-size`` square image (random pixels, a reward map of two regions), packed up to
``--tokens`` tokens per step. The model is wrapped as the trainer wraps it: the frozen
parts marked, activation checkpointing, FSDP2 on a one-process group (``--wrap fsdp``;
fp32 master weights, ``--dtype`` compute); ``--wrap none`` runs the bare module in
``--dtype``.

MFU = model FLOPs of the step (6 per active weight and token, plus attention over the
pairs the mask allows; :func:`srum.training.metrics.step_flops`) / step time / the GPU's
dense bf16 peak. Only reported on CUDA devices with a known peak.

    .venv/bin/python scripts/bench/train_step.py                     # tiny, CPU
    .venv/bin/python scripts/bench/train_step.py --device cuda --model bagel7b-width --layers 4 \\
        --tokens 8192 --image-size 512
"""
from __future__ import annotations

import argparse

import torch

from common import Reporter, add_common_args, add_model_args, build_model, peak_memory, setup, time_fn


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(p, reps=5, warmup=1)
    add_model_args(p)
    p.add_argument("--tokens", type=int, default=1024, help="token budget of the step's pack (default 1024)")
    p.add_argument("--image-size", type=int, default=128,
                   help="side of each training image in pixels, a multiple of 16 (default 128)")
    p.add_argument("--prompt-tokens", type=int, default=16, help="prompt length per sample (default 16)")
    p.add_argument("--wrap", choices=["fsdp", "none"], default="fsdp",
                   help="fsdp: FSDP2 on one process, as the trainer (default); none: the bare module")
    p.add_argument("--no-activation-checkpointing", action="store_true",
                   help="keep activations instead of recomputing each layer in backward")
    p.add_argument("--freeze-und-expert", action="store_true",
                   help="train only the generation expert (freeze.und_expert=true)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile every decoder layer, as parallel.compile=true does (off by default)")
    p.add_argument("--compile-backend", default="inductor", help="torch.compile backend (default inductor)")
    return p.parse_args(argv)


def synthetic_samples(args, model, special, generator: torch.Generator):
    """Samples of ``--prompt-tokens`` + one ``--image-size`` image each, as many as fit in
    ``--tokens`` (at least one)."""
    from srum.training.data import IMAGE_FRAME_TOKENS, TrainSample

    ds = model.config.latent_downsample
    if args.image_size % ds or args.image_size < ds:
        raise SystemExit(f"--image-size must be a positive multiple of {ds}, got {args.image_size}")
    side = args.image_size // ds
    if side > model.config.max_latent_size:
        raise SystemExit(f"--image-size {args.image_size}: beyond the model's latent grid "
                         f"({model.config.max_image_side} px)")
    per_sample = args.prompt_tokens + 2 + side * side + IMAGE_FRAME_TOKENS
    count = max(1, args.tokens // per_sample)
    vocab = min(len(model.tokenizer), special.bos)  # plain text ids, below the special tokens
    samples = []
    for i in range(count):
        weights = torch.full((side, side), 0.5)
        weights[:, : side // 2] = 0.9        # a well-judged left half
        weights[side - side // 4:, side - side // 4:] = 0.1   # a badly drawn corner
        text = torch.randint(0, vocab, (args.prompt_tokens,), generator=generator).tolist()
        samples.append(TrainSample(
            index=i, image_id=f"bench_{i}", image=torch.rand((3, args.image_size, args.image_size), generator=generator) * 2 - 1,
            reference=None, text_ids=[special.bos, *text, special.eos], grid=(side, side), weights=weights.reshape(-1),
            reward_stats={"alpha": 0.8, "regions_used": 2}, timestep=float(torch.rand((), generator=generator)),
            noise=torch.randn((side * side, model.config.patch_latent_dim), generator=generator),
            vae_seed=int(torch.randint(0, 2 ** 62, (), generator=generator))))
    return samples


def main(argv=None) -> None:
    args = parse_args(argv)
    env = setup(args)
    from srum.training.config import (DataConfig, FreezeConfig, ModelConfig, OptimConfig, ParallelConfig, TrainConfig,
                                      TrainLoopConfig)
    from srum.training.metrics import peak_flops, step_flops
    from srum.training.packing import DataPosition
    from srum.training.parallel import (TrainingModel, build_mesh, enable_activation_checkpointing, freeze,
                                        init_process_group, shard)
    from srum.training.data import StepData
    from srum.training.trainer import encode_latents, train_step

    init_process_group()  # one-process group: the trainer's collectives run as on one rank
    compute = env.dtype
    # FSDP keeps fp32 master weights and computes in --dtype, as the trainer does
    build_env = type(env)(env.device, torch.float32 if args.wrap == "fsdp" else compute, env.machine)
    model, desc = build_model(args, build_env, training=True)
    vae = model.vae.to(dtype=compute).eval().requires_grad_(False)
    del model.vae  # encoded outside the trained model, as in the trainer
    freeze_cfg = FreezeConfig(und_expert=args.freeze_und_expert)
    trainable = freeze(model, freeze_cfg)
    if not args.no_activation_checkpointing:
        enable_activation_checkpointing(model)
    if args.compile:
        model.language_model.model.compile_layers(args.compile_backend)
    mesh = build_mesh(ParallelConfig(), 1, env.device.type)
    if args.wrap == "fsdp":
        shard(model, mesh, compute)
    tm = TrainingModel(model, vae, model.tokenizer, model.special_tokens, model.config, None, mesh, compute, trainable)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5, betas=(0.9, 0.95),
                                  eps=1e-15, weight_decay=0.0)
    cfg = TrainConfig(output_dir="-", model=ModelConfig(path="-"), data=DataConfig(rewards=["<synthetic>"], vae_sample=True),
                      train=TrainLoopConfig(total_steps=1), optim=OptimConfig())
    samples = synthetic_samples(args, model, model.special_tokens, torch.Generator().manual_seed(args.seed))
    data = StepData(packs=[], all_packs=[], samples=[samples], position_after=DataPosition())

    results = []

    def one_step():
        results.append(train_step(tm, optimizer, None, data, cfg, len(results), env.device, cfg.lambda_c))

    if env.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(env.device)
    timing = time_fn(one_step, reps=args.reps, warmup=args.warmup, device=env.device)
    # the step's share spent encoding images with the frozen VAE (same-size images batched, 8 per call)
    vae_timing = time_fn(lambda: encode_latents(tm, samples, env.device, True), reps=args.reps, warmup=1,
                         device=env.device)
    metrics = results[-1].metrics
    seq_tokens, attended = metrics["seq_tokens"], int(metrics["attended_pairs"])
    flops = step_flops(model.config, seq_tokens, attended)
    peak = peak_flops(env.machine["gpu"]) if env.machine.get("gpu") else None
    step_s = timing.median
    reporter = Reporter("train_step", env, args.out, args.md)
    reporter.emit(
        f"{desc['model']}-L{desc['layers']}-{args.wrap}",
        **desc, compute_dtype=compute, wrap=args.wrap, activation_checkpointing=not args.no_activation_checkpointing,
        compile=args.compile, samples=len(samples), seq_tokens=seq_tokens, latent_tokens=metrics["latent_tokens"],
        attended_pairs=attended, trainable_params_m=sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6,
        step_s=step_s, step_s_min=timing.min, step_s_max=timing.max, reps=len(timing.times),
        vae_encode_s=vae_timing.median,
        tokens_per_s=seq_tokens / step_s, latent_tokens_per_s=metrics["latent_tokens"] / step_s,
        step_tflop=flops / 1e12, achieved_tflops=flops / step_s / 1e12,
        mfu=flops / step_s / peak if peak else None, skipped_steps=sum(r.skipped for r in results),
        loss=metrics["loss"], **peak_memory(env.device))
    reporter.finish(
        [("case", "case"), ("seq_tokens", "tokens/step"), ("step_s", "step s (median)"),
         ("vae_encode_s", "of which VAE encode s"), ("tokens_per_s", "tokens/s"),
         ("achieved_tflops", "TFLOP/s"), ("mfu", "MFU"), ("peak_mem_gib", "peak GPU GiB"),
         ("peak_rss_gib", "peak RSS GiB")],
        notes=["Step = the trainer's train_step: VAE encode, mask, forward, SRUM loss, backward, clip, AdamW.",
               "MFU only on CUDA with a known peak; peak RSS on CPU is the whole process's maximum."])


if __name__ == "__main__":
    main()
