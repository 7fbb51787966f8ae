# SPDX-License-Identifier: Apache-2.0
"""``srum miniworld pretrain``: train the miniature world's Bagel from scratch, once.

The recipe, phase by phase (each one leaves a ``done.json`` and is skipped on a rerun;
a killed run resumes at the phase it was in, and training resumes from its last
checkpoint):

1. ``data``: render the training sets (:mod:`.data`): t2i and cot rows from training
   prompts, vqa rows (plain questions, object boxes, the judge's and the relevance
   filter's questions) from rendered scenes;
2. ``init``: train the byte-level BPE tokenizer on the world's text, train the FLUX-
   architecture autoencoder on world images (:mod:`srum.training.autoencoder`), build a
   Bagel from ``configs/model/miniworld.yaml`` with random weights around it and write
   it in the BAGEL-7B-MoT layout;
3. ``train``: ``srum train`` with the t2i / cot / vqa data modes, from that directory
   (the same trainer, packing, FSDP2 and checkpoints as SRUM's own training);
4. ``export``: the EMA weights of the last checkpoint as a model directory
   (``ema.safetensors`` in bfloat16), loadable by every ``srum`` command.
"""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch

from ..config import load_config, to_dict
from ..fileio import atomic_write_text
from ..training.autoencoder import AutoencoderTrainConfig, latent_moments, train_autoencoder
from .data import DataConfig, text_corpus, write_training_data
from .vit_pretrain import VitPretrainConfig

log = logging.getLogger("srum.miniworld")

__all__ = ["PretrainConfig", "pretrain", "load_pretrain_config"]

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class PretrainConfig:
    """out_dir: where every phase writes (data/, init/, train/, model/).
    model_config: the architecture YAML (``configs/model/miniworld.yaml``).
    train_config / train_overrides: the ``srum train`` YAML of phase 3 and dotted overrides
        (model.path, data.samples and output_dir are set by this command).
    autoencoder_images: how many of the rendered images the autoencoder trains on.
    autoencoder_from: reuse a trained ``ae.safetensors`` (a file, or a model directory
        holding one) instead of training the autoencoder; it must match model_config's
        ``vae`` widths (loaded strictly).
    init_from: continue from a trained model directory instead of a random one: phase 2
        copies it (weights, autoencoder, tokenizer: the vocabulary must not change), so
        training stages with different data mixes chain (a curriculum). The model config
        and the autoencoder settings are then not used.
    reinit_vit: with init_from, give the ViT and connector fresh weights by model_config's
        init rule (``init_std``, ``vit_patch_zero_mean``) and the seed: the stage that
        teaches reading pictures to a model whose ViT learnt nothing (generation does not
        use them, so what it draws is kept).
    vit: the ViT's own pretraining at the end of phase 2 (:mod:`.vit_pretrain`, the world's
        stand-in for SigLIP; ``vit.steps: 0`` skips it), on a fresh model or after
        ``reinit_vit``.
    samples: the data modes phase 3 trains on, any of t2i / cot / vqa (their files of
        the data phase).
    export_dtype / export_weights: dtype of the exported weights and which ones ("auto": the
        EMA when the run kept one; "model": the trained weights). device: "auto" (cuda when
        available)."""

    out_dir: str
    model_config: str = "configs/model/miniworld.yaml"
    train_config: str = "configs/train/miniworld_pretrain.yaml"
    train_overrides: list[str] = field(default_factory=list)
    data: DataConfig = field(default_factory=DataConfig)
    autoencoder: AutoencoderTrainConfig = field(default_factory=AutoencoderTrainConfig)
    autoencoder_images: int = 20000
    autoencoder_from: str | None = None
    init_from: str | None = None
    reinit_vit: bool = False
    vit: VitPretrainConfig = field(default_factory=VitPretrainConfig)
    samples: list[str] = field(default_factory=lambda: ["t2i", "cot", "vqa"])
    seed: int = 0
    export_dtype: str = "bfloat16"
    export_weights: Literal["auto", "ema", "model"] = "auto"
    device: str = "auto"


SAMPLE_MODES = ("t2i", "cot", "vqa")


def load_pretrain_config(path, overrides=()) -> PretrainConfig:
    cfg = load_config(PretrainConfig, path, overrides)
    bad = [m for m in cfg.samples if m not in SAMPLE_MODES]
    if bad or not cfg.samples:
        raise ValueError(f"{path}: samples must be a non-empty subset of {list(SAMPLE_MODES)}, got {cfg.samples}")
    if cfg.reinit_vit and not cfg.init_from:
        raise ValueError(f"{path}: reinit_vit needs init_from (a random model's ViT is new anyway)")
    if cfg.vit.steps > 0 and cfg.init_from and not cfg.reinit_vit:
        raise ValueError(f"{path}: vit.steps > 0 with init_from needs reinit_vit: true (pretraining a trained "
                         "model's ViT again would move features its connector and LLM have learnt to read)")
    return cfg


def _resolve(path: str) -> Path:
    """A config path as given, else relative to the repository (for the shipped YAMLs)."""
    p = Path(path)
    return p if p.exists() or p.is_absolute() else REPO_ROOT / p


def _done(phase_dir: Path) -> dict | None:
    marker = phase_dir / "done.json"
    return json.loads(marker.read_text(encoding="utf-8")) if marker.is_file() else None


def _mark(phase_dir: Path, info: dict) -> None:
    phase_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(phase_dir / "done.json", json.dumps(info, indent=1))


def _device(cfg: PretrainConfig) -> torch.device:
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(cfg.device)


def _load_images(data_dir: Path, limit: int) -> torch.Tensor:
    """Up to ``limit`` rendered training images as uint8 [N, 3, H, W]."""
    import numpy as np
    import PIL.Image
    paths = sorted((data_dir / "images" / "prompt").glob("*.png")) + sorted((data_dir / "images" / "vqa").glob("*.png"))
    paths = paths[::max(1, len(paths) // limit)][:limit]
    arrays = []
    for p in paths:
        with PIL.Image.open(p) as im:
            arrays.append(np.asarray(im.convert("RGB")))
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def _load_autoencoder(path: str, params) -> "torch.nn.Module":
    """A trained autoencoder from ``ae.safetensors`` (or a directory holding it), strictly."""
    from safetensors.torch import load_file

    from ..models.bagel.autoencoder import AutoEncoder
    p = Path(path)
    p = p / "ae.safetensors" if p.is_dir() else p
    if not p.is_file():
        raise FileNotFoundError(f"autoencoder_from: {p} not found")
    ae = AutoEncoder(params)
    try:
        ae.load_state_dict(load_file(str(p)), strict=True)
    except RuntimeError as err:
        raise ValueError(f"autoencoder_from: {p} does not match the model config's vae widths: {err}") from None
    return ae.eval()


def build_initial_model(cfg: PretrainConfig, data_dir: Path, out: Path, device: torch.device) -> dict:
    """Tokenizer + trained autoencoder + random Bagel -> ``out`` in the published layout."""
    from ..models.bagel.autoencoder import AutoEncoderParams
    from ..models.bagel.checkpoint import save_model
    from ..models.bagel.tiny import build_tiny_model, load_tiny_spec
    from ..models.bagel.tokenizer import write_tiny_tokenizer

    spec = load_tiny_spec(_resolve(cfg.model_config))
    out.mkdir(parents=True, exist_ok=True)
    vocab = write_tiny_tokenizer(out, vocab_size=int(spec["tokenizer"]["vocab_size"]), corpus=text_corpus(data_dir))
    model = build_tiny_model(vocab, spec, seed=cfg.seed)

    # a reused autoencoder is only measured (on the held-out slice): no need to read the rest
    images = _load_images(data_dir, 512 * 10 if cfg.autoencoder_from else cfg.autoencoder_images)
    gen = torch.Generator().manual_seed(cfg.autoencoder.seed)
    order = torch.randperm(len(images), generator=gen)
    n_held = min(512, len(images) // 10)   # a held-out slice for the reconstruction figure
    held = images[order[:n_held]].float() / 127.5 - 1
    train_images = images[order[n_held:]]

    def sample_batch(step: int, batch: int) -> torch.Tensor:
        idx = torch.randint(0, len(train_images), (batch,), generator=torch.Generator().manual_seed(step))
        return train_images[idx].float() / 127.5 - 1

    curve = []
    vae_spec = dict(spec["vae"])
    vae_spec["ch_mult"] = tuple(vae_spec["ch_mult"])
    t0 = time.perf_counter()
    if cfg.autoencoder_from:
        log.info("autoencoder: reusing %s", cfg.autoencoder_from)
        ae = _load_autoencoder(cfg.autoencoder_from, AutoEncoderParams(**vae_spec))
    else:
        log.info("autoencoder: training on %d images for %d steps on %s", len(train_images), cfg.autoencoder.steps,
                 device)
        ae = train_autoencoder(AutoEncoderParams(**vae_spec), sample_batch, cfg.autoencoder, device,
                               on_log=lambda step, m: curve.append(m))  # PyTorch's default conv init
    model.vae = ae
    moments = latent_moments(ae, held)
    log.info("autoencoder: held-out PSNR %.1f dB, latents mean %.3f std %.3f", moments["psnr"],
             moments["latent_mean"], moments["latent_std"])
    save_model(model, out)
    return {"vocab_size": vocab, "autoencoder_heldout": moments, "autoencoder_curve": curve,
            "autoencoder_from": cfg.autoencoder_from,
            "autoencoder_seconds": time.perf_counter() - t0,
            "parameters": sum(p.numel() for p in model.parameters())}


def copy_initial_model(source: str, out: Path, reinit_vit_spec: dict | None = None, seed: int = 0) -> dict:
    """Phase 2 with ``init_from``: the given model directory, copied file by file; with
    ``reinit_vit_spec`` (a model config) its ViT and connector then get fresh weights."""
    import shutil

    from ..models.bagel.checkpoint import find_weights
    src = Path(source)
    if not (src / "llm_config.json").is_file():
        raise FileNotFoundError(f"init_from: {src} is not a model directory (no llm_config.json)")
    find_weights(src)  # a clear error when it holds no weights
    out.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.is_file() and f.name != "done.json":
            shutil.copy2(f, out / f.name)
    if reinit_vit_spec is None:
        return {"init_from": str(src)}
    from ..models.bagel.checkpoint import load_model, save_model
    from ..models.bagel.tiny import reinit_understanding_tower
    weights = find_weights(out)
    model = load_model(out, dtype=torch.float32, device="cpu")
    reinit_understanding_tower(model, reinit_vit_spec, seed)
    save_model(model, out, weights_name=weights.name)
    return {"init_from": str(src), "reinit_vit": True, "seed": seed}


def pretrain_model_vit(model_dir: Path, cfg: VitPretrainConfig, device: torch.device) -> dict:
    """Phase 2's last step: :func:`.vit_pretrain.pretrain_vit` on the model in ``model_dir``,
    written back in place (same weight file and dtype)."""
    from ..models.bagel.checkpoint import find_weights, load_model, save_model
    from .vit_pretrain import pretrain_vit
    weights = find_weights(model_dir)
    model = load_model(model_dir, dtype=torch.float32, device="cpu")
    model.vit_model.requires_grad_(True)
    report = pretrain_vit(model.vit_model, cfg, model.config.vit_max_patches_per_side, device)
    model.to("cpu")
    save_model(model, model_dir, weights_name=weights.name)
    return report


def _train_config(cfg: PretrainConfig, init_dir: Path, data_dir: Path, train_dir: Path):
    from ..training.config import load_train_config
    overrides = list(cfg.train_overrides) + [
        f"output_dir={train_dir}", f"model.path={init_dir}",
        "data.samples=" + json.dumps([str(data_dir / f"{mode}.jsonl") for mode in cfg.samples]),
    ]
    return load_train_config(_resolve(cfg.train_config), overrides)


def pretrain(cfg: PretrainConfig) -> dict:
    """Run every phase that is not done yet; returns the combined ``done.json`` contents."""
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = _device(cfg)
    atomic_write_text(out / "pretrain_config.json", json.dumps(to_dict(cfg), indent=1))
    data_dir, init_dir, train_dir, model_dir = out / "data", out / "init", out / "train", out / "model"
    report: dict = {}

    t0 = time.perf_counter()
    report["data"] = write_training_data(data_dir, cfg.data)
    report["data_seconds"] = time.perf_counter() - t0
    log.info("data: %d t2i, %d cot, %d vqa rows (%.0f s)", report["data"]["t2i"], report["data"]["cot"],
             report["data"]["vqa"], report["data_seconds"])

    init = _done(init_dir)
    if init is None:
        if cfg.init_from:
            from ..models.bagel.tiny import load_tiny_spec
            spec = load_tiny_spec(_resolve(cfg.model_config)) if cfg.reinit_vit else None
            init = copy_initial_model(cfg.init_from, init_dir, spec, cfg.seed)
        else:
            init = build_initial_model(cfg, data_dir, init_dir, device)
        if cfg.vit.steps > 0:
            init["vit_pretraining"] = pretrain_model_vit(init_dir, cfg.vit, device)
        _mark(init_dir, init)
    report["init"] = {k: v for k, v in init.items() if k != "autoencoder_curve"}

    train_cfg = _train_config(cfg, init_dir, data_dir, train_dir)
    trained = _done(train_dir)
    if trained is None:
        from ..distributed import shutdown
        from ..training.trainer import train
        t1 = time.perf_counter()
        try:
            summary = train(train_cfg)
        finally:
            shutdown()
        trained = {"summary": summary, "seconds": time.perf_counter() - t1, "device": str(device),
                   "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"}
        _mark(train_dir, trained)
    report["train"] = trained

    if _done(model_dir) is None:
        from ..export.checkpoint import export_checkpoint
        export_checkpoint(train_dir, init_dir, model_dir, weights=cfg.export_weights, dtype=cfg.export_dtype,
                          max_shard_bytes=2 ** 40)
        _mark(model_dir, {"from": str(train_dir), "dtype": cfg.export_dtype, "weights": cfg.export_weights})
    report["model"] = str(model_dir)
    atomic_write_text(out / "pretrain_report.json", json.dumps(report, indent=1, default=str))
    return report
