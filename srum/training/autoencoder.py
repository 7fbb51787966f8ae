# SPDX-License-Identifier: Apache-2.0
"""Training the FLUX-architecture autoencoder from scratch (``ae.safetensors``).

Bagel's published autoencoder is FLUX's; a model trained from scratch (the miniature
world's) needs its own, with the same architecture at narrow widths so that the
checkpoint layout, the 8x downsampling and the latent conventions stay Bagel's.

Objective, per image x in [-1, 1] with posterior N(mu, sigma^2) from the encoder and
z ~ N(mu, sigma^2) decoded to x_hat:

    L = |x_hat - x|_1 + |x_hat - x|_2^2                       (reconstruction, pixel mean)
        + kl_weight * KL(N(mu, sigma^2) || N(0, 1))            (per latent number, mean)
        + moment_weight * (mean(s)^2 + (std(s) - 1)^2)         (latent normalisation)

where s = scale_factor * (mu - shift_factor) are the latents the rest of Bagel sees
(:meth:`AutoEncoder.encode` applies exactly that map, with FLUX's fixed constants 0.3611
and 0.1159, which no checkpoint file records). FLUX's own latents are brought to about
zero mean and unit variance by choosing those constants after training; here the
constants are fixed, so the last term asks the encoder to produce latents for which they
are right (batch moments of s over all channels and positions). Flow matching relies on
that scale: noise and data of the same magnitude.

Deterministic for a seed on one device: batches come from ``sample_batch(step, rng)``.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from ..models.bagel.autoencoder import AutoEncoder, AutoEncoderParams

log = logging.getLogger("srum.autoencoder")

__all__ = ["AutoencoderTrainConfig", "autoencoder_loss", "train_autoencoder", "latent_moments"]


@dataclass
class AutoencoderTrainConfig:
    """steps / batch_size / lr: AdamW schedule (linear warmup, cosine to lr/10).
    kl_weight, moment_weight: see the module docstring. seed: initial weights and noise."""

    steps: int = 3000
    batch_size: int = 64
    lr: float = 1e-3
    warmup_steps: int = 100
    kl_weight: float = 1e-4
    moment_weight: float = 0.1
    grad_clip: float = 1.0
    seed: int = 0
    log_every: int = 100

    def __post_init__(self):
        if self.steps < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError("autoencoder: steps, batch_size must be >= 1 and lr > 0")
        if self.kl_weight < 0 or self.moment_weight < 0:
            raise ValueError("autoencoder: kl_weight and moment_weight must be >= 0")


def autoencoder_loss(ae: AutoEncoder, images: torch.Tensor, cfg: AutoencoderTrainConfig,
                     generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict]:
    """images [B, 3, H, W] in [-1, 1] -> (loss, float metrics)."""
    mean, logvar = ae.encoder(images).chunk(2, dim=1)
    logvar = logvar.clamp(-30.0, 20.0)
    noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
    z = mean + torch.exp(0.5 * logvar) * noise
    recon = ae.decoder(z)
    l1 = (recon - images).abs().mean()
    l2 = (recon - images).pow(2).mean()
    kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).mean()
    s = ae.params.scale_factor * (mean - ae.params.shift_factor)
    moment = s.mean().pow(2) + (s.std() - 1.0).pow(2)
    loss = l1 + l2 + cfg.kl_weight * kl + cfg.moment_weight * moment
    psnr = 10 * math.log10(4.0 / max(float(l2.detach()), 1e-12))  # peak-to-peak 2 in [-1, 1]
    return loss, {"loss": float(loss.detach()), "l1": float(l1.detach()), "mse": float(l2.detach()), "kl": float(kl.detach()),
                  "latent_mean": float(s.detach().mean()), "latent_std": float(s.detach().std()), "psnr": psnr}


def _lr(step: int, cfg: AutoencoderTrainConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def train_autoencoder(params: AutoEncoderParams, sample_batch: Callable[[int, int], torch.Tensor],
                      cfg: AutoencoderTrainConfig, device: torch.device | str = "cpu",
                      on_log: Callable[[int, dict], None] | None = None,
                      init: AutoEncoder | None = None) -> AutoEncoder:
    """Train an autoencoder; ``sample_batch(step, batch_size)`` returns images [B, 3, H, W]
    in [-1, 1] (deterministic in ``step``). Returns the trained model (float32, on CPU)."""
    device = torch.device(device)
    torch.manual_seed(cfg.seed)
    ae = init if init is not None else AutoEncoder(params)
    ae = ae.to(device).float().train()
    opt = torch.optim.AdamW(ae.parameters(), lr=cfg.lr, betas=(0.9, 0.99), weight_decay=0.0)
    gen = torch.Generator(device=device).manual_seed(cfg.seed + 1)
    t0 = time.perf_counter()
    for step in range(cfg.steps):
        for group in opt.param_groups:
            group["lr"] = _lr(step, cfg)
        images = sample_batch(step, cfg.batch_size).to(device, torch.float32)
        loss, metrics = autoencoder_loss(ae, images, cfg, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(ae.parameters(), cfg.grad_clip)
        opt.step()
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            metrics.update(step=step + 1, elapsed_s=time.perf_counter() - t0)
            log.info("autoencoder step %d/%d: loss %.4f psnr %.1f dB kl %.3f latents mean %.3f std %.3f",
                     step + 1, cfg.steps, metrics["loss"], metrics["psnr"], metrics["kl"],
                     metrics["latent_mean"], metrics["latent_std"])
            if on_log is not None:
                on_log(step + 1, metrics)
    return ae.eval().cpu()


@torch.no_grad()
def latent_moments(ae: AutoEncoder, images: torch.Tensor) -> dict:
    """Mean, std of the scaled posterior means and the reconstruction PSNR on ``images``."""
    device = next(ae.parameters()).device
    images = images.to(device, torch.float32)
    s = ae.encode(images)
    recon = ae.decode(s).clamp(-1, 1)
    mse = float((recon - images).pow(2).mean())
    return {"latent_mean": float(s.mean()), "latent_std": float(s.std()),
            "psnr": 10 * math.log10(4.0 / max(mse, 1e-12))}
