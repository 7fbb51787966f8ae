# SPDX-License-Identifier: Apache-2.0
"""The SRUM training loop (``srum train``).

The recipe, step by step (:func:`train`):

1. start the process group, build the sharded model (frozen parts marked, weights
   loaded shard-wise) and the frozen VAE;
2. read the reward records and sample rows (t2i, vqa, cot: :mod:`.samples`), plan every
   sample's tokens, pack them into the global deterministic stream (see :mod:`.packing`);
3. resume from the newest checkpoint when there is one (model, optimizer, EMA, step,
   data position);
4. every step: for each of this rank's packs, encode the images with the VAE, noise
   them (x_t = (1 - t) x0 + t eps), run the model, and backpropagate the SRUM loss
   normalised by the latent-token count of the whole step on all ranks, plus the text
   cross-entropy (vqa answers, cot plans) normalised by the step's cross-entropy token
   count; then clip, step AdamW, update the EMA; a non-finite loss or gradient on any
   rank skips the step on every rank;
5. log, checkpoint every N steps and at the end.
"""
from __future__ import annotations

import logging
import math
import os
import random
import resource
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import yaml

from ..config import to_dict
from ..distributed import DistInfo, local_device
from ..distributed import on_main
from ..fileio import atomic_write_text
from ..locking import DirectoryLock
from .checkpointing import load_checkpoint, remove_stale, save_checkpoint
from .config import OptimConfig, TrainConfig
from .data import StepData, StepLoader, TrainSample, write_report
from .ema import EMA
from .layout import PackedInputs, PackPaths, layout_pack, to_packed_batch
from .loss import flow_matching_terms, srum_loss, text_ce_sum
from .metrics import MetricsLogger, peak_flops, peak_memory_gib, step_flops
from .packing import DataPosition, PackingConfig, PackStream, StepPlanner
from .parallel import TrainingModel, build_training_model, init_process_group
from .resume import check_resume_settings, resume_target, start_fresh
from .samples import build_training_dataset

log = logging.getLogger("srum.train")

__all__ = ["train", "lr_at", "encode_latents", "NonFiniteError"]


class NonFiniteError(RuntimeError):
    """Too many consecutive steps had a non-finite loss or gradient."""


def lr_at(step: int, cfg: OptimConfig, total_steps: int) -> float:
    """Learning rate of optimizer step ``step`` (0-based): linear warmup reaching
    ``lr`` at step ``warmup_steps - 1`` (the first step already moves, unlike a
    schedule starting at 0), then constant or cosine down to ``min_lr``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    span = max(1, total_steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.min_lr + (cfg.lr - cfg.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


@torch.no_grad()
def encode_latents(tm: TrainingModel, samples: list[TrainSample], device: torch.device,
                   sample_posterior: bool, max_batch: int = 8) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Clean latent tokens of the samples' images, in sequence order.

    Returns (x0 [Ng, D], x0_gt [Ng, D] or None when every constraint image is the sample
    itself), float32. Images of the same size are encoded together, at most ``max_batch``
    per VAE call (the encoder's activations at 1024 px are large); the posterior draw of
    each image still uses the sample's own seed, so the result does not depend on the
    grouping. A constraint image shares its sample's seed. Samples without a generated
    image (vqa) contribute nothing."""
    samples = [s for s in samples if s.image is not None]
    if not samples:
        return torch.zeros(0, tm.config.patch_latent_dim, device=device), None
    # one job per image to encode: (sample index, which image, the image)
    jobs = [(i, "image", s.image) for i, s in enumerate(samples)]
    jobs += [(i, "reference", s.reference) for i, s in enumerate(samples) if s.reference is not None]
    by_shape: dict[tuple, list] = {}
    for job in jobs:
        by_shape.setdefault(tuple(job[2].shape), []).append(job)
    tokens: dict[tuple[int, str], torch.Tensor] = {}
    for group in by_shape.values():
        for start in range(0, len(group), max_batch):
            chunk = group[start:start + max_batch]
            images = torch.stack([im for _, _, im in chunk]).to(device, tm.dtype)
            gens = [torch.Generator().manual_seed(samples[i].vae_seed) for i, _, _ in chunk]
            lat = tm.vae.encode(images, sample=sample_posterior, generator=gens)
            for (i, kind, _), tok in zip(chunk, tm.model.patchify_latents(lat.float()).unbind(0)):
                tokens[i, kind] = tok
    x0 = [tokens[i, "image"] for i in range(len(samples))]
    any_reference = any(s.reference is not None for s in samples)
    x0_gt = [tokens.get((i, "reference"), tokens[i, "image"]) for i in range(len(samples))]
    return torch.cat(x0), (torch.cat(x0_gt) if any_reference else None)


# --------------------------------------------------------------------------- one step

# per-step sums all-reduced across ranks (one collective)
_SUM_KEYS = ("reward_sum", "constraint_sum", "mse_sum", "weight_sum", "weight_neg", "latent_tokens",
             "seq_tokens", "attended_pairs", "samples", "text_dropped", "alpha_sum", "rewarded_samples",
             "global_missing", "regions_used", "ce_sum", "ce_tokens", "samples_t2i", "samples_vqa", "samples_cot")


@dataclass
class StepResult:
    metrics: dict
    skipped: bool


def _reward_counts(samples: list[TrainSample]) -> dict:
    out = {"alpha_sum": 0.0, "rewarded_samples": 0, "global_missing": 0, "regions_used": 0, "text_dropped": 0,
           "samples_t2i": 0, "samples_vqa": 0, "samples_cot": 0}
    for s in samples:
        out["text_dropped"] += int(s.dropped)
        if s.mode != "reward":
            out[f"samples_{s.mode}"] += 1
        if s.reward_stats:
            out["rewarded_samples"] += 1
            out["alpha_sum"] += s.reward_stats["alpha"]
            out["global_missing"] += int(bool(s.reward_stats.get("global_missing")))
            out["regions_used"] += s.reward_stats.get("regions_used", 0)
    return out


def _noised_latents(tm: TrainingModel, inputs: PackedInputs, cfg: TrainConfig, device: torch.device):
    """(x0, x0_gt or None, eps, x_t) for every latent token of the pack (the dummy's are 0)."""
    x0, x0_gt = encode_latents(tm, inputs.samples, device, cfg.data.vae_sample, max_batch=cfg.parallel.vae_batch_size)
    if inputs.dummy_latent_tokens:
        pad = torch.zeros(inputs.dummy_latent_tokens, x0.shape[1], device=device, dtype=x0.dtype)
        x0 = torch.cat([x0, pad])
        x0_gt = torch.cat([x0_gt, pad]) if x0_gt is not None else None
    t = inputs.latent_timesteps.to(device)[:, None]
    eps = inputs.noise.to(device)
    return x0, x0_gt, eps, (1 - t) * x0 + t * eps


def train_step(tm: TrainingModel, optimizer: torch.optim.Optimizer, ema: EMA | None, data: StepData,
               cfg: TrainConfig, step: int, device: torch.device, lambda_c: float,
               paths: PackPaths | None = None) -> StepResult:
    """Forward/backward over this rank's packs, then one (or a skipped) optimizer step.

    ``step`` is the 0-based index of this step. The flow-matching loss of every
    micro-batch is divided by the latent-token count of the whole step on all ranks, the
    cross-entropy by the step's cross-entropy token count on all ranks, so the
    accumulated, rank-averaged gradient is that of the global per-token means.
    ``paths``: the model paths every pack must use (``RewardDataset.pack_paths``; None =
    none required, right for reward records alone)."""
    model = tm.model
    world = dist.get_world_size()
    layouts: list[PackedInputs] = [
        layout_pack(samples, tm.special_tokens, tm.config.latent_downsample, tm.config.max_latent_size, paths)
        for samples in data.samples]
    counts = torch.tensor([float(sum(x.num_latent_tokens for x in layouts)),
                           float(sum(x.num_ce_tokens for x in layouts))], device=device, dtype=torch.float64)
    dist.all_reduce(counts)
    global_tokens, global_ce = counts[0], float(counts[1])
    mse_weight, ce_weight = cfg.loss.mse_weight, cfg.loss.ce_weight

    sums = dict.fromkeys(_SUM_KEYS, 0.0)
    w_min, w_max = math.inf, -math.inf
    for inputs in layouts:
        has_latent = inputs.latent_index.numel() > 0
        x_t = None
        if has_latent:
            x0, x0_gt, eps, x_t = _noised_latents(tm, inputs, cfg, device)
        batch = to_packed_batch(inputs, x_t, device)
        out = model(batch)
        loss = None
        n_real = inputs.num_latent_tokens
        if has_latent:
            velocity = out["velocity"]
            weights = inputs.weights.to(device)
            constraint_w = inputs.constraint_weights.to(device) if inputs.constraint_weights is not None else None
            reward_sum, constraint_sum = flow_matching_terms(velocity, eps, x0, x0_gt, weights, constraint_w,
                                                             repel=cfg.repel_rule)
            # a step with only padding latents (every pack text-only) still backpropagates its zeros
            denominator = global_tokens if float(global_tokens) > 0 else 1
            loss = srum_loss(reward_sum, constraint_sum, lambda_c, denominator, world)["loss"]
            if mse_weight != 1.0:
                loss = loss * mse_weight
        ce_sum = None
        if inputs.labels is not None:
            ce_sum = text_ce_sum(out["logits"], inputs.labels.to(device), inputs.label_weights.to(device))
            ce_loss = ce_sum * (ce_weight * world / max(global_ce, 1.0))
            loss = ce_loss if loss is None else loss + ce_loss
        if loss is None:
            raise AssertionError("a pack with neither latent nor cross-entropy tokens")
        inject_nan = step + 1 in cfg.debug.nonfinite_steps  # debug: 1-based step numbers, as logged
        if inject_nan:
            loss = loss * float("nan")
        if not loss.requires_grad:
            raise ValueError("no trainable parameter receives this step's loss (e.g. vqa samples with the text path "
                             "and the ViT frozen): check the freeze section")
        loss.backward()
        with torch.no_grad():
            if has_latent:
                sums["reward_sum"] += float(reward_sum)
                sums["constraint_sum"] += float(constraint_sum)
            if n_real:
                real_w = weights[:n_real] if inputs.dummy_latent_tokens else weights
                real_err = (velocity.float() - (eps - x0))[:n_real] if inputs.dummy_latent_tokens \
                    else velocity.float() - (eps - x0)
                sums["mse_sum"] += float(real_err.pow(2).mean(-1).sum())
                sums["weight_sum"] += float(real_w.sum())
                sums["weight_neg"] += float((real_w < 0).sum())
                w_min, w_max = min(w_min, float(real_w.min())), max(w_max, float(real_w.max()))
            if ce_sum is not None:
                sums["ce_sum"] += float(ce_sum)
                sums["ce_tokens"] += inputs.num_ce_tokens
            if inject_nan:
                sums["reward_sum"] = sums["ce_sum"] = float("nan")
            sums["latent_tokens"] += n_real
            sums["seq_tokens"] += inputs.sequence_length
            sums["attended_pairs"] += float(batch.attention_mask.sum())
            sums["samples"] += len(inputs.samples)
            for k, v in _reward_counts(inputs.samples).items():
                sums[k] += v
        del batch, out, loss

    totals = torch.tensor([sums[k] for k in _SUM_KEYS], device=device, dtype=torch.float64)
    dist.all_reduce(totals)
    totals = dict(zip(_SUM_KEYS, totals.tolist()))
    local_bad = not all(math.isfinite(sums[k]) for k in ("reward_sum", "constraint_sum", "mse_sum", "ce_sum"))
    extremes = torch.tensor([-w_min, w_max, float(local_bad)], device=device, dtype=torch.float64)
    dist.all_reduce(extremes, op=dist.ReduceOp.MAX)

    # the norm of sharded gradients is a DTensor; full_tensor() reduces it over the mesh
    params = [p for p in model.parameters() if p.grad is not None]
    grad_norm = torch.nn.utils.get_total_norm([p.grad for p in params], norm_type=2.0, foreach=True) if params \
        else torch.zeros((), device=device)
    grad_norm = float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm)
    skipped = bool(extremes[2] > 0) or not math.isfinite(grad_norm)
    if not skipped:
        torch.nn.utils.clip_grads_with_norm_(params, cfg.optim.grad_clip, torch.tensor(grad_norm, device=device))
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if ema is not None and not skipped:
        ema.update()

    n, c = totals["latent_tokens"], totals["ce_tokens"]
    loss_value = (totals["reward_sum"] + lambda_c * totals["constraint_sum"]) / n if n else 0.0
    if mse_weight != 1.0:
        loss_value *= mse_weight
    if c:
        loss_value += ce_weight * totals["ce_sum"] / c
    metrics = {"loss": loss_value}
    if n:
        metrics.update({
            "reward_term": totals["reward_sum"] / n,
            "constraint_term": totals["constraint_sum"] / n,
            "mse": totals["mse_sum"] / n,
        })
    metrics["grad_norm"] = grad_norm
    if n:
        metrics.update({
            "weight_mean": totals["weight_sum"] / n,
            "weight_min": -float(extremes[0]),
            "weight_max": float(extremes[1]),
            "weight_neg_frac": totals["weight_neg"] / n,
        })
    metrics.update({
        "latent_tokens": int(n),
        "seq_tokens": int(totals["seq_tokens"]),
        "attended_pairs": totals["attended_pairs"],
        "samples": int(totals["samples"]),
        "text_dropped": int(totals["text_dropped"]),
    })
    if cfg.data.samples:
        metrics.update({k: int(totals[k]) for k in ("samples_t2i", "samples_vqa", "samples_cot", "ce_tokens")})
        if c:
            metrics["ce"] = totals["ce_sum"] / c
    if totals["rewarded_samples"]:
        metrics["alpha_mean"] = totals["alpha_sum"] / totals["rewarded_samples"]
        metrics["global_missing"] = int(totals["global_missing"])
        metrics["regions_per_sample"] = totals["regions_used"] / totals["rewarded_samples"]
    return StepResult(metrics, skipped)


# --------------------------------------------------------------------------- the run

def _setup_logging(info: DistInfo) -> None:
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(f"%(asctime)s [rank{info.rank}] %(levelname)s %(message)s",
                                               "%H:%M:%S"))
        root.addHandler(handler)
    root.setLevel(logging.INFO if info.is_main else logging.WARNING)


def _seed_everything(seed: int, rank: int) -> None:
    torch.manual_seed(seed + rank)
    np.random.seed((seed + rank) % 2 ** 32)
    random.seed(seed + rank)


def _peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # kilobytes on Linux


def _take_output_dir(cfg: TrainConfig, out: Path, world: int) -> tuple[DirectoryLock, Path | None]:
    """Rank 0: lock ``output_dir`` (one run at a time), start fresh when asked, pick the
    checkpoint to resume and check its settings. Returns the lock and that checkpoint."""
    lock = DirectoryLock.acquire(out, "srum train")
    try:
        if cfg.checkpoint.resume == "fresh":
            moved = start_fresh(out)
            if moved is not None:
                log.info("checkpoint.resume=fresh: the earlier outputs moved to %s", moved)
        resume_path = resume_target(cfg, out / "checkpoints")
        if resume_path is not None:
            check_resume_settings(cfg, resume_path, world)
    except BaseException:
        lock.release()
        raise
    return lock, resume_path


def train(cfg: TrainConfig) -> dict:
    """Run (or resume) a training run; returns a summary dict. Collective: every rank calls it."""
    info = init_process_group(cfg.parallel.timeout_minutes)
    _setup_logging(info)
    world = dist.get_world_size()
    out = Path(cfg.output_dir)
    taken = on_main(lambda: _take_output_dir(cfg, out, world), info)
    lock, resume_path = taken if taken is not None else (None, None)
    try:
        # every rank resumes from the checkpoint rank 0 chose and checked
        box = [str(resume_path) if resume_path is not None else None]
        dist.broadcast_object_list(box, src=0)
        return _train(cfg, info, out, Path(box[0]) if box[0] is not None else None)
    finally:
        if lock is not None:
            lock.release()


def _train(cfg: TrainConfig, info: DistInfo, out: Path, resume_path: Path | None) -> dict:
    device = local_device(info)
    world = dist.get_world_size()
    _seed_everything(cfg.train.seed, info.rank)
    ckpt_root = out / "checkpoints"
    remove_stale(ckpt_root)

    tm = build_training_model(cfg.model.path, cfg.model.weights, cfg.freeze, cfg.parallel, info, device,
                              load_weights=resume_path is None, train_lm_head=cfg.trains_lm_head)
    model = tm.model
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    n_total = sum(p.numel() for p in model.parameters())
    log.info("model %s: %.1fM parameters, %.1fM trainable, %s compute on %s, %d rank(s), %s shard",
             tm.model_dir, n_total / 1e6, n_train / 1e6, str(tm.dtype).replace("torch.", ""), device.type, world,
             cfg.parallel.sharding)
    if cfg.parallel.compile:
        log.info("compiled %d decoder layers (%s); the first steps include the compile time",
                 tm.config.llm.num_hidden_layers, cfg.parallel.compile_backend)

    dataset, report = build_training_dataset(
        cfg.data.rewards, cfg.data.samples, tm.tokenizer, tm.special_tokens, tm.config,
        max_image_size=cfg.data.max_image_size,
        min_image_size=cfg.data.min_image_size, image_stride=cfg.data.image_stride,
        latent_downsample=tm.config.latent_downsample, max_latent_size=tm.config.max_latent_size,
        latent_dim=tm.config.patch_latent_dim, max_num_tokens_per_sample=cfg.data.max_num_tokens_per_sample,
        oversize=cfg.data.oversize, rewards_enabled=cfg.rewards.enabled, map_config=cfg.rewards.map,
        missing_global=cfg.rewards.missing_global, drop_zero_global=cfg.rewards.drop_zero_global,
        text_dropout_prob=cfg.data.text_dropout_prob,
        timestep_shift=cfg.loss.timestep_shift, seed=cfg.data.seed,
        resample_noise_each_epoch=cfg.data.resample_noise_each_epoch)
    log.info("data: %s", report.summary())
    for message in report.bad_lines[:5]:
        log.warning("data: %s", message)
    if info.is_main:
        write_report(report, str(out / "data_report.json"))
    stream = PackStream(dataset.lengths, PackingConfig(cfg.data.expected_num_tokens, cfg.data.max_num_tokens,
                                                       cfg.data.max_num_tokens_per_sample), seed=cfg.data.seed)
    planner = StepPlanner(stream, world, info.rank, cfg.train.grad_accum)
    paths = dataset.pack_paths(3 * tm.config.vit.patch_size ** 2)

    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=cfg.optim.lr, betas=cfg.optim.betas, eps=cfg.optim.eps,
                                  weight_decay=cfg.optim.weight_decay)
    ema = EMA(model, cfg.ema.decay) if cfg.ema.enabled else None

    step, position = 0, DataPosition()
    counters = {"skipped_steps": 0, "consecutive_nonfinite": 0, "samples_seen": 0, "tokens_seen": 0}
    if resume_path is not None:
        state = load_checkpoint(resume_path, model, optimizer, ema)
        step = int(state["step"])
        position = DataPosition.from_dict(state["data_position"], f"{resume_path}/trainer_state.json")
        counters.update({k: state.get("counters", {}).get(k, v) for k, v in counters.items()})
        log.info("resumed from %s: step %d, data position %s (saved on %s rank(s), now %d)", resume_path, step,
                 position.to_dict(), state.get("world_size"), world)
    config_yaml = yaml.safe_dump(to_dict(cfg), sort_keys=False)
    if info.is_main:
        atomic_write_text(out / "config.yaml", config_yaml)

    metrics_log = MetricsLogger(out, enabled=info.is_main, total_steps=cfg.train.total_steps, start_step=step,
                                every_steps=cfg.logging.every_steps, tensorboard=cfg.logging.tensorboard,
                                progress_bar=cfg.logging.progress_bar, wandb=cfg.logging.wandb,
                                wandb_project=cfg.logging.wandb_project, run_name=cfg.logging.run_name,
                                config=to_dict(cfg))
    peak = peak_flops(torch.cuda.get_device_name(device)) if device.type == "cuda" else None
    lambda_c = cfg.lambda_c

    def save(at_step: int) -> None:
        train_state = {"step": at_step, "data_position": position.to_dict(), "world_size": world,
                       "scheduler": {"schedule": cfg.optim.schedule, "next_step": at_step,
                                     "lr": lr_at(max(at_step - 1, 0), cfg.optim, cfg.train.total_steps)},
                       "counters": counters, "epoch": position.epoch}
        path = save_checkpoint(ckpt_root, at_step, model, optimizer, ema, train_state, config_yaml,
                               cfg.checkpoint.keep_last)
        metrics_log.event(f"saved checkpoint {path}", warning=False)

    loader = StepLoader(dataset, planner, cfg.data.num_workers)
    last_saved = step if resume_path is not None else None
    try:
        steps = loader.steps(position)
        while step < cfg.train.total_steps:
            data = next(steps)
            lr = lr_at(step, cfg.optim, cfg.train.total_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            t0 = time.perf_counter()
            result = train_step(tm, optimizer, ema, data, cfg, step, device, lambda_c, paths)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            elapsed = time.perf_counter() - t0
            step += 1
            position = data.position_after
            counters["samples_seen"] += result.metrics["samples"]
            counters["tokens_seen"] += result.metrics["seq_tokens"]
            if result.skipped:
                counters["skipped_steps"] += 1
                counters["consecutive_nonfinite"] += 1
                metrics_log.event(f"step {step}: non-finite loss or gradient, step skipped "
                                  f"({counters['consecutive_nonfinite']} in a row, {counters['skipped_steps']} in total)")
            else:
                counters["consecutive_nonfinite"] = 0

            m = dict(result.metrics, lr=lr, step_time_s=elapsed, skipped=result.skipped,
                     skipped_steps=counters["skipped_steps"], epoch=data.packs[-1].epoch,
                     tokens_per_s=result.metrics["seq_tokens"] / elapsed, samples_seen=counters["samples_seen"])
            if peak is not None:
                flops = step_flops(tm.config, result.metrics["seq_tokens"], int(result.metrics["attended_pairs"]))
                m["mfu"] = flops / (elapsed * peak * world)
                m["peak_mem_gib"] = peak_memory_gib(device)
            else:
                m["peak_rss_gib"] = _peak_rss_gib()
            metrics_log.log(step, m)

            if counters["consecutive_nonfinite"] >= cfg.train.max_consecutive_nonfinite:
                raise NonFiniteError(
                    f"stopping at step {step}: {counters['consecutive_nonfinite']} consecutive steps had a non-finite "
                    f"loss or gradient (train.max_consecutive_nonfinite={cfg.train.max_consecutive_nonfinite}); "
                    "the last checkpoint is intact. Lower optim.lr or check the data.")
            every = cfg.checkpoint.every_steps
            if step == cfg.train.total_steps or (every and step % every == 0):
                save(step)
                last_saved = step
            if cfg.debug.exit_after_step is not None and step == cfg.debug.exit_after_step:
                metrics_log.close()
                logging.shutdown()
                os._exit(3)  # simulate a kill: no cleanup, no final save
        if last_saved != step:
            save(step)
    finally:
        loader.close()
        metrics_log.close()
    summary = {"step": step, "data_position": position.to_dict(), **counters}
    log.info("done: %s", summary)
    return summary
