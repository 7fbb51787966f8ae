# SPDX-License-Identifier: Apache-2.0
"""Training checkpoint (DCP shards) -> a directory in the published BAGEL-7B-MoT layout.

The output holds one ``ema.safetensors`` by default: the file Bagel's own app and eval
scripts and the SRUM reference's scripts open (they do not read a sharded index). Given
``max_shard_bytes`` it is split into ``ema-0000i-of-0000N.safetensors`` +
``ema.safetensors.index.json`` (srum's loader reads both), ``llm_config.json``, ``vit_config.json``, ``ae.safetensors``, the
tokenizer files, a ``README.md`` model card and ``srum_export.json`` (provenance).

Where each tensor comes from:

* parameters the run trained: the checkpoint's EMA when the run kept one (``weights:
  auto`` or ``ema``), else its trained weights (``model``);
* parameters the run froze (ViT, VAE, ... per the checkpoint's own ``freeze`` section):
  the base model directory, so they are bit-identical to the base in its dtype.

Every tensor of the base model must exist in the checkpoint with the same name and
shape; anything else is a :class:`CheckpointError`, never a silent fill. Tensors are read
from the shards one output file at a time, so host memory stays near one output file: the
whole model (~29 GB for BAGEL-7B-MoT in bf16) for the single file, ``max_shard_bytes``
when sharded.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import torch
import yaml
from safetensors.torch import save_file

from srum.config import build
from srum.models.bagel.checkpoint import (AE_WEIGHTS, WEIGHT_NAMES, WeightFiles, find_weights, read_config,
                                          resolve_model_dir)
from srum.models.bagel.config import CheckpointError
from srum.models.bagel.model import Bagel
from srum.training.checkpointing import (CONFIG_FILE, TRAIN_STATE, checkpoint_metadata, is_complete,
                                         latest_checkpoint, load_without_process_group)
from srum.training.dcp_safe import checkpoint_problem, read_train_state
from srum.training.config import TrainConfig
from srum.training.parallel import freeze

OUT_WEIGHTS = "ema"   # published layout: loaders read ema.safetensors


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A step directory, or a run's ``checkpoints`` root / run directory (-> its newest
    whole checkpoint: a broken one is passed over with a warning). A step directory that
    is broken (truncated shard or metadata, ...) is an error naming the bad file."""
    path = Path(path)
    if path.is_dir() and is_complete(path):
        problem = checkpoint_problem(path)
        if problem:
            raise CheckpointError(f"cannot export {path}: {problem}")
        return path
    for root in (path, path / "checkpoints"):
        if root.is_dir():
            latest = latest_checkpoint(root)
            if latest is not None:
                return latest
    raise CheckpointError(f"{path}: no complete training checkpoint (a step-NNNNNN directory with its "
                          f"{TRAIN_STATE}, or a checkpoints root that holds one)")


def trained_parameter_names(checkpoint: Path, base_dir: Path) -> tuple[set[str], TrainConfig]:
    """Names the run trained, from the checkpoint's saved config applied to the base architecture."""
    cfg = build(TrainConfig, yaml.safe_load((checkpoint / CONFIG_FILE).read_text(encoding="utf-8")))
    weights = WeightFiles.open(find_weights(base_dir))
    with torch.device("meta"):
        model = Bagel(read_config(base_dir, weights, WeightFiles.open(base_dir / AE_WEIGHTS)))
    return set(freeze(model, cfg.freeze, cfg.trains_lm_head)), cfg


def _shard_plan(keys: list[str], sizes: dict[str, int], max_bytes: int | None) -> list[list[str]]:
    if max_bytes is None:   # one ema.safetensors, what every Bagel loader opens
        return [list(keys)]
    shards, current, size = [], [], 0
    for key in keys:
        if current and size + sizes[key] > max_bytes:
            shards.append(current)
            current, size = [], 0
        current.append(key)
        size += sizes[key]
    shards.append(current)
    return shards


def export_checkpoint(checkpoint: str | os.PathLike, base_model: str | os.PathLike, out_dir: str | os.PathLike,
                      weights: str = "auto", dtype: torch.dtype | str = torch.bfloat16,
                      max_shard_bytes: int | None = None) -> Path:
    """Write the exported model directory; returns its path (see the module docstring)."""
    if weights not in ("auto", "ema", "model"):
        raise ValueError(f"weights must be 'auto', 'ema' or 'model', got {weights!r}")
    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    if dtype not in (torch.bfloat16, torch.float32, torch.float16):
        raise ValueError(f"dtype must be bfloat16, float16 or float32, got {dtype}")
    ckpt = resolve_checkpoint(checkpoint)
    base = resolve_model_dir(base_model)
    out = Path(out_dir)
    if out.resolve() == base.resolve():
        raise ValueError(f"{out}: export into a new directory, not over the base model")
    metadata = checkpoint_metadata(ckpt)
    has_ema = any(k.startswith("ema.") for k in metadata)
    if weights == "ema" and not has_ema:
        raise CheckpointError(f"{ckpt}: the run kept no EMA (ema.enabled was false); use weights=model")
    group = "ema" if (weights == "ema" or (weights == "auto" and has_ema)) else "model"
    trained, cfg = trained_parameter_names(ckpt, base)
    base_weights = WeightFiles.open(find_weights(base))

    source: dict[str, str | None] = {}   # key -> checkpoint name, or None = from the base
    for key, shape in base_weights.shapes.items():
        meta = metadata.get(f"model.{key}")
        if meta is None or not hasattr(meta, "size"):
            raise CheckpointError(f"{ckpt}: tensor {key} of the base model {base} is not in the checkpoint "
                                  "(was the run trained from another architecture?)")
        if tuple(meta.size) != tuple(shape):
            raise CheckpointError(f"{ckpt}: tensor {key} has shape {list(meta.size)}, the base model {base} "
                                  f"has {list(shape)}")
        if key not in trained:
            source[key] = None
        elif group == "ema" and f"ema.{key}" in metadata:
            source[key] = f"ema.{key}"
        else:
            source[key] = f"model.{key}"
    missing_in_base = sorted(k[len("model."):] for k in metadata
                             if k.startswith("model.") and k[len("model."):] not in base_weights.shapes
                             and not k.startswith("model.vae."))
    if missing_in_base:
        raise CheckpointError(f"{ckpt}: tensors not in the base model {base}: {', '.join(missing_in_base[:5])}"
                              f"{' ...' if len(missing_in_base) > 5 else ''}")

    itemsize = torch.empty((), dtype=dtype).element_size()
    sizes = {k: int(torch.Size(s).numel()) * itemsize for k, s in base_weights.shapes.items()}
    shards = _shard_plan(sorted(source), sizes, max_shard_bytes)
    out.mkdir(parents=True, exist_ok=True)
    for stale in list(out.glob(f"{OUT_WEIGHTS}*.safetensors*")):
        stale.unlink()
    weight_map, total = {}, 0
    for i, keys in enumerate(shards):
        from_ckpt = {source[k]: k for k in keys if source[k] is not None}
        state: dict = {}
        for name in from_ckpt:
            grp, _, fqn = name.partition(".")
            meta = metadata[name]
            state.setdefault(grp, {})[fqn] = torch.empty(tuple(meta.size), dtype=meta.properties.dtype)
        if state:
            load_without_process_group(state, ckpt)
        tensors = {}
        for name, key in from_ckpt.items():
            grp, _, fqn = name.partition(".")
            tensors[key] = state[grp][fqn]
        tensors.update(base_weights.tensors([k for k in keys if source[k] is None]))
        for key, t in tensors.items():
            tensors[key] = (t.to(dtype) if t.is_floating_point() else t).contiguous()
            total += tensors[key].numel() * tensors[key].element_size()
        file = (f"{OUT_WEIGHTS}.safetensors" if len(shards) == 1
                else f"{OUT_WEIGHTS}-{i + 1:05d}-of-{len(shards):05d}.safetensors")
        tmp = out / f".{file}.tmp"
        save_file(tensors, tmp, metadata={"format": "pt"})
        os.replace(tmp, out / file)
        weight_map.update({k: file for k in keys})
        del state, tensors
    if len(shards) > 1:
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (out / f"{OUT_WEIGHTS}.safetensors.index.json").write_text(json.dumps(index, indent=1) + "\n")
    _copy_base_files(base, out)

    train_state = read_train_state(ckpt)
    n_trained = sum(1 for k in source if source[k] is not None)
    provenance = {"checkpoint": str(ckpt.resolve()), "step": train_state.get("step"), "weights": group,
                  "base_model": str(base_model), "base_model_dir": str(base), "dtype": str(dtype).replace("torch.", ""),
                  "tensors_from_checkpoint": n_trained, "tensors_from_base": len(source) - n_trained,
                  "data": list(cfg.data.rewards), "exported_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
    (out / "srum_export.json").write_text(json.dumps(provenance, indent=1) + "\n")
    (out / "README.md").write_text(_model_card(provenance, (ckpt / CONFIG_FILE).read_text(encoding="utf-8")))
    return out


def _copy_base_files(base: Path, out: Path) -> None:
    """Configs, tokenizer and the VAE of the base model: everything but its weight files."""
    weight_stems = tuple(name.split(".")[0] for name in WEIGHT_NAMES)
    for item in base.iterdir():
        if item.is_dir() or item.name.startswith(weight_stems) or item.name in ("README.md", "srum_export.json"):
            continue
        shutil.copy2(item, out / item.name)
    if not (out / AE_WEIGHTS).is_file():
        raise CheckpointError(f"{base}: no {AE_WEIGHTS} to copy")


def _model_card(p: dict, config_yaml: str) -> str:
    data = "\n".join(f"- `{d}`" for d in p["data"]) or "- (not recorded)"
    return f"""# SRUM post-trained Bagel

Exported by `srum export` from a SRUM training run. Same layout as BAGEL-7B-MoT: load it
with `srum.load_model("<this directory>")`, `srum generate model.path=<this directory>`,
or any loader that reads the published BAGEL-7B-MoT files.

| | |
|---|---|
| base model | `{p['base_model']}` |
| training checkpoint | `{p['checkpoint']}` |
| step | {p['step']} |
| weights | `{p['weights']}` ({'moving average' if p['weights'] == 'ema' else 'trained weights'}) for trained tensors, base model for frozen ones |
| dtype | {p['dtype']} |
| tensors from the run / from the base | {p['tensors_from_checkpoint']} / {p['tensors_from_base']} |
| exported | {p['exported_at']} |

## Training data

{data}

## Training config

```yaml
{config_yaml.rstrip()}
```
"""
