# SPDX-License-Identifier: Apache-2.0
"""Building the sharded training model: process group, device mesh, freezing,
activation checkpointing, FSDP2 and shard-wise weight loading.

Loading without a full copy per rank
------------------------------------
The model is built on the meta device, frozen parts are marked, every decoder layer
(and the ViT, connector and lm_head, so text-to-image training never gathers them)
becomes its own ``fully_shard`` unit, and only then is storage allocated (``to_empty``): each rank owns
just its shards. Weights are then copied in one tensor at a time: every rank
memory-maps the safetensors file (the page cache is shared by the ranks of a node),
reads one full tensor, and keeps its own slice with
``distribute_tensor(..., src_data_rank=None)`` (each rank slices its local copy, no
communication). Peak host memory per rank is one tensor, never the model. We chose
this over "rank 0 reads everything and broadcasts" (rank 0 would hold the whole 14 GB
model, and every tensor would cross the network) because every node has the files.

The VAE stays outside the sharded model: a frozen replicated copy per rank encodes the
training images under ``no_grad`` (84M parameters, cheap to replicate).
"""
from __future__ import annotations

import datetime
import fnmatch
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor, distribute_tensor
from torch.utils.checkpoint import checkpoint

from ..distributed import DistInfo, env_info
from ..distributed import timeout_minutes as resolve_timeout
from ..models.bagel.autoencoder import AutoEncoder
from ..models.bagel.checkpoint import (AE_WEIGHTS, SINCOS_TABLES, WeightFiles, find_weights, read_config,
                                       resolve_model_dir)
from ..models.bagel.config import BagelConfig, CheckpointError
from ..models.bagel.language_model import MoTDecoderLayer
from ..models.bagel.model import Bagel
from ..models.bagel.tokenizer import load_tokenizer
from .config import FreezeConfig, ParallelConfig


__all__ = ["init_process_group", "build_mesh", "compute_dtype", "freeze", "enable_activation_checkpointing",
           "shard", "load_sharded_weights", "TrainingModel", "build_training_model", "GEN_HEADS"]

# trained whenever the language model is not frozen entirely: the generation-only heads
GEN_HEADS = ("time_embedder.", "vae2llm.", "llm2vae.")
VIT_PARTS = ("vit_model.", "connector.")
LLM_PREFIX = "language_model."
# trained only with cross-entropy samples (data.samples); reward records compute no logits
LM_HEAD = ("language_model.lm_head.",)


def init_process_group(timeout_minutes: float | None = None) -> DistInfo:
    """Start the process group: torchrun's when launched by it, otherwise a
    one-process group (FSDP2 needs a mesh even on one device). ``timeout_minutes``:
    ``parallel.timeout_minutes`` (see :func:`srum.distributed.timeout_minutes`)."""
    info = env_info()
    if dist.is_initialized():
        return info
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(info.local_rank)
    timeout = datetime.timedelta(minutes=resolve_timeout(timeout_minutes))
    if info.world_size > 1 or "MASTER_ADDR" in os.environ:
        dist.init_process_group(backend, timeout=timeout)
    else:
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1, timeout=timeout)
    return info


def build_mesh(cfg: ParallelConfig, world_size: int, device_type: str) -> DeviceMesh:
    """1-D mesh (full shard) or 2-D (replicate, shard) mesh (hybrid shard)."""
    if cfg.sharding == "full":
        return init_device_mesh(device_type, (world_size,), mesh_dim_names=("shard",))
    shard_size = cfg.shard_size or int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
    if world_size % shard_size:
        raise ValueError(f"parallel.shard_size={shard_size} does not divide the world size {world_size}")
    return init_device_mesh(device_type, (world_size // shard_size, shard_size),
                            mesh_dim_names=("replicate", "shard"))


def compute_dtype(cfg: ParallelConfig, device: torch.device) -> torch.dtype:
    if cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return torch.float32


def _is_und_expert(name: str) -> bool:
    """Language-model parameters of the understanding expert (text path): every name
    in ``language_model`` whose module path has no ``*_moe_gen`` component."""
    if not name.startswith(LLM_PREFIX):
        return False
    return not any(part.endswith("_moe_gen") for part in name.split(".")[:-1])


def freeze(model: Bagel, cfg: FreezeConfig, train_lm_head: bool = False) -> list[str]:
    """Set ``requires_grad`` from the freeze switches; returns the trainable names. The
    lm_head trains only with ``train_lm_head`` (cross-entropy samples; see
    ``TrainConfig.trains_lm_head``) and when neither llm nor und_expert is frozen."""
    trainable = []
    unmatched = set(cfg.params)
    for name, param in model.named_parameters():
        by_pattern = {p for p in cfg.params if fnmatch.fnmatchcase(name, p)}
        unmatched -= by_pattern
        frozen = ((name.startswith(LM_HEAD) and not train_lm_head)
                  or (cfg.vit and name.startswith(VIT_PARTS))
                  or (cfg.llm and name.startswith(LLM_PREFIX))
                  or (cfg.und_expert and _is_und_expert(name))
                  or bool(by_pattern))
        param.requires_grad_(not frozen)
        if not frozen:
            trainable.append(name)
    if unmatched:
        raise ValueError(f"freeze.params: {sorted(unmatched)} match no parameter of the model "
                         "(names look like 'vit_model.vision_model.embeddings.patch_embedding.weight')")
    if not trainable:
        raise ValueError("every parameter is frozen: nothing to train (check the freeze section)")
    return trainable


def enable_activation_checkpointing(model: Bagel) -> int:
    """Recompute every decoder layer in backward (non-reentrant checkpointing).

    The layer's ``forward`` is replaced on the instance, so parameter names (and with
    them checkpoint keys) do not change, and FSDP's unshard hooks, which run around
    ``forward``, stay outside the recomputed region. The layers draw no random numbers,
    so the RNG state need not be replayed."""
    count = 0
    for module in model.modules():
        if isinstance(module, MoTDecoderLayer):
            inner = module.forward

            def checkpointed(*args, _inner=inner, **kwargs):
                return checkpoint(_inner, *args, use_reentrant=False, preserve_rng_state=False, **kwargs)

            module.forward = checkpointed
            count += 1
    return count


def shard(model: Bagel, mesh: DeviceMesh, dtype: torch.dtype, reshard_after_forward: bool = True) -> Bagel:
    """FSDP2 units: each decoder layer, the ViT, the connector, the lm_head (the last
    three are not used by text-to-image training, so as units of their own they are
    never gathered there; with vqa/cot samples every micro-batch uses them, see
    :mod:`.layout`), then the root (embeddings, norms, generation heads).

    Mixed precision keeps fp32 master shards and reduces gradients in fp32; forward
    inputs are not cast (flow times stay fp32 until the time embedder)."""
    mp = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32, cast_forward_inputs=False) \
        if dtype != torch.float32 else MixedPrecisionPolicy(cast_forward_inputs=False)
    kwargs = dict(mesh=mesh, mp_policy=mp, reshard_after_forward=reshard_after_forward)
    for layer in model.language_model.model.layers:
        fully_shard(layer, **kwargs)
    for unit in (model.vit_model, model.connector, model.language_model.lm_head):
        fully_shard(unit, **kwargs)
    fully_shard(model, **kwargs)
    return model


@torch.no_grad()
def load_sharded_weights(model: nn.Module, weights: WeightFiles, device: torch.device) -> None:
    """Copy every tensor of ``weights`` into the (sharded, materialised) model, one at a
    time, each rank keeping only its slice. Keys must match exactly; the sin-cos tables
    are recomputed by the caller instead of read."""
    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    expected = set(model.state_dict().keys())
    provided = set(weights.shapes)
    missing, unexpected = sorted(expected - provided), sorted(provided - expected)
    if missing or unexpected:
        raise CheckpointError(f"{weights.source}: keys do not match the training model: "
                              f"missing {missing[:5]}{' ...' if len(missing) > 5 else ''}, "
                              f"unexpected {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
    for key, tensor in weights.tensors(sorted(provided)):
        if key in SINCOS_TABLES:
            continue
        target = params.get(key, buffers.get(key))
        if tuple(tensor.shape) != tuple(target.shape):
            raise CheckpointError(f"{weights.files[key]}: tensor {key} has shape {list(tensor.shape)}, "
                                  f"model expects {list(target.shape)}")
        full = tensor.to(device=device, dtype=target.dtype)
        if isinstance(target, DTensor):
            local = distribute_tensor(full, target.device_mesh, target.placements, src_data_rank=None)
            target.to_local().copy_(local.to_local())
        else:
            target.copy_(full)
        del full


@dataclass
class TrainingModel:
    """The sharded model (without ``vae``), the frozen VAE, tokenizer and metadata."""

    model: Bagel
    vae: AutoEncoder
    tokenizer: object
    special_tokens: object
    config: BagelConfig
    model_dir: Path
    mesh: DeviceMesh
    dtype: torch.dtype
    trainable: list[str]


def _load_vae(config: BagelConfig, ae: WeightFiles, device: torch.device, dtype: torch.dtype) -> AutoEncoder:
    with torch.device("meta"):
        vae = AutoEncoder(config.vae)
    state = dict(ae.tensors(list(ae.shapes)))
    vae.load_state_dict(state, strict=True, assign=True)
    return vae.to(device=device, dtype=dtype).eval().requires_grad_(False)


def build_training_model(model_path: str, weights: str, freeze_cfg: FreezeConfig, parallel_cfg: ParallelConfig,
                         info: DistInfo, device: torch.device, load_weights: bool = True,
                         train_lm_head: bool = False) -> TrainingModel:
    """Meta-device build -> freeze -> checkpointing -> shard -> materialise -> load.

    ``load_weights=False`` leaves the parameters uninitialised (a resume fills them
    from the training checkpoint)."""
    if info.is_main:
        model_dir = resolve_model_dir(model_path, weights=weights)  # may download once
    if dist.get_world_size() > 1:
        dist.barrier()
    if not info.is_main:
        model_dir = resolve_model_dir(model_path, weights=weights)
    weight_files = WeightFiles.open(find_weights(model_dir, weights))
    ae_files = WeightFiles.open(model_dir / AE_WEIGHTS)
    config = read_config(model_dir, weight_files, ae_files)
    tokenizer, special = load_tokenizer(model_dir)
    dtype = compute_dtype(parallel_cfg, device)

    with torch.device("meta"):
        model = Bagel(config)
    del model.vae  # encoded outside the sharded model, see the module docstring
    trainable = freeze(model, freeze_cfg, train_lm_head)
    if parallel_cfg.activation_checkpointing:
        enable_activation_checkpointing(model)
    if parallel_cfg.compile:  # after checkpointing, before sharding (FSDP2's order)
        model.language_model.model.compile_layers(parallel_cfg.compile_backend)
    mesh = build_mesh(parallel_cfg, dist.get_world_size(), device.type)
    shard(model, mesh, dtype, parallel_cfg.reshard_after_forward)
    model.to_empty(device=device)
    if load_weights:
        load_sharded_weights(model, weight_files, device)
    model.reset_position_tables()
    model.tokenizer, model.special_tokens = tokenizer, special
    vae = _load_vae(config, ae_files, device, dtype)
    from srum.models.bagel.attention import log_attention_backend
    log_attention_backend(str(device), dtype)
    return TrainingModel(model, vae, tokenizer, special, config, Path(model_dir), mesh, dtype, trainable)
