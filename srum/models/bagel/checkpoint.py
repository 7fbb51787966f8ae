# SPDX-License-Identifier: Apache-2.0
"""Reading and writing Bagel checkpoints in the published BAGEL-7B-MoT layout.

A checkpoint directory holds::

    llm_config.json        Qwen2 decoder config
    vit_config.json        SigLIP vision config (records one layer more than is used)
    ae.safetensors         FLUX autoencoder (keys ``encoder.*`` / ``decoder.*``)
    ema.safetensors        all other weights (or model.safetensors; or a sharded
                           ``<name>.safetensors.index.json`` + shards)
    tokenizer files        Qwen2: tokenizer.json / vocab.json + merges.txt, tokenizer_config.json

Every tensor in the weight files must be consumed and every model tensor must be
present, with the same shape. The one intentional exception to "loaded as stored":
the two sin-cos tables ``latent_pos_embed.pos_embed`` and ``vit_pos_embed.pos_embed``
are read (their shapes give the grid sizes, their values are checked) and then
recomputed in float32, since they are fixed functions of their shape.

The model is built on the meta device and each tensor is read from its
(memory-mapped) file, cast and moved to its device one at a time, so host memory
stays near the size of one tensor plus the safetensors page cache.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterator

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from .attention import log_attention_backend
from .autoencoder import AutoEncoderParams
from .config import BagelConfig, CheckpointError, LanguageModelConfig, VisionConfig, square_side
from .layers import sincos_table_2d
from .model import Bagel
from .tokenizer import load_tokenizer

LLM_CONFIG = "llm_config.json"
VIT_CONFIG = "vit_config.json"
AE_WEIGHTS = "ae.safetensors"
WEIGHT_NAMES = ("ema.safetensors", "model.safetensors")
VAE_PREFIX = "vae."
SINCOS_TABLES = ("latent_pos_embed.pos_embed", "vit_pos_embed.pos_embed")
# submodules that must not be split across devices by multi-GPU dispatch
NO_SPLIT_MODULES = ["MoTDecoderLayer", "SiglipEncoderLayer", "AutoEncoder"]


class WeightFiles:
    """Key -> file lookup over a single safetensors file or an index of shards."""

    def __init__(self, files: dict[str, Path], source: Path):
        self.files = files
        self.source = source  # the file or index the keys came from, for error messages
        self._shapes: dict[str, tuple[int, ...]] = {}
        for path in sorted(set(files.values())):
            try:
                with safe_open(path, framework="pt") as f:
                    for key in f.keys():
                        if files.get(key) == path:
                            self._shapes[key] = tuple(f.get_slice(key).get_shape())
            except Exception as err:  # safetensors raises its own error types
                raise CheckpointError(f"{path}: not a readable safetensors file ({err})") from err
        missing = [k for k in files if k not in self._shapes]
        if missing:
            raise CheckpointError(f"{files[missing[0]]}: index lists {len(missing)} tensor(s) the shard lacks, e.g. {missing[0]}")

    @classmethod
    def open(cls, path: Path) -> "WeightFiles":
        index = Path(str(path) + ".index.json")
        if path.is_file():
            try:
                with safe_open(path, framework="pt") as f:
                    keys = list(f.keys())
            except Exception as err:
                raise CheckpointError(f"{path}: not a readable safetensors file ({err})") from err
            return cls({k: path for k in keys}, path)
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            except (OSError, ValueError, KeyError, TypeError) as err:
                raise CheckpointError(f"{index}: not a valid safetensors index ({err})") from err
            return cls({k: path.parent / v for k, v in weight_map.items()}, index)
        raise CheckpointError(f"{path}: file not found")

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        return self._shapes

    def tensors(self, keys: list[str]) -> Iterator[tuple[str, torch.Tensor]]:
        by_file: dict[Path, list[str]] = {}
        for k in keys:
            by_file.setdefault(self.files[k], []).append(k)
        for path, file_keys in by_file.items():
            with safe_open(path, framework="pt") as f:
                for k in file_keys:
                    yield k, f.get_tensor(k)


def find_weights(model_dir: Path, weights: str = "auto") -> Path:
    """The main weight file: ``ema.safetensors`` first (the published inference weights),
    else ``model.safetensors``; ``weights="ema"|"model"`` forces one."""
    if weights not in ("auto", "ema", "model"):
        raise ValueError(f"weights must be 'auto', 'ema' or 'model', got {weights!r}")
    names = WEIGHT_NAMES if weights == "auto" else (f"{weights}.safetensors",)
    for name in names:
        p = model_dir / name
        if p.is_file() or Path(str(p) + ".index.json").is_file():
            return p
    raise CheckpointError(f"{model_dir}: no weight file found (expected one of {', '.join(names)} or a .index.json)")


def read_config(model_dir: Path, weights: WeightFiles, ae: WeightFiles) -> BagelConfig:
    """Configs from the JSON files plus the sizes only the tensor shapes record."""
    llm = LanguageModelConfig.from_json_file(model_dir / LLM_CONFIG)
    vit = VisionConfig.from_json_file(model_dir / VIT_CONFIG)
    shapes = weights.shapes
    src = weights.files.get(SINCOS_TABLES[0], model_dir)
    for key in (*SINCOS_TABLES, "vae2llm.weight"):
        if key not in shapes:
            raise CheckpointError(f"{src}: tensor {key} is missing")
    try:
        vae = AutoEncoderParams.from_state_dict_shapes(ae.shapes)
    except ValueError as err:
        raise CheckpointError(f"{model_dir / AE_WEIGHTS}: {err}") from err
    in_dim = shapes["vae2llm.weight"][1]
    patch = round((in_dim / vae.z_channels) ** 0.5)
    if patch * patch * vae.z_channels != in_dim:
        raise CheckpointError(f"{src}: vae2llm.weight input width {in_dim} is not p*p*{vae.z_channels}")
    return BagelConfig(
        llm=llm, vit=vit, vae=vae,
        max_latent_size=square_side(shapes[SINCOS_TABLES[0]][0], f"{src}: {SINCOS_TABLES[0]}"),
        vit_max_patches_per_side=square_side(shapes[SINCOS_TABLES[1]][0], f"{src}: {SINCOS_TABLES[1]}"),
        latent_patch_size=patch,
    )


def _assign(model: nn.Module, key: str, value: torch.Tensor) -> None:
    """Replace a (meta) parameter or buffer by ``value``, keeping its kind."""
    module_name, _, name = key.rpartition(".")
    module = model.get_submodule(module_name)
    if name in module._parameters:
        module._parameters[name] = nn.Parameter(value, requires_grad=module._parameters[name].requires_grad)
    else:
        module._buffers[name] = value


def _device_for(key: str, device_map: dict[str, str | int] | None, default: torch.device) -> torch.device:
    if not device_map:
        return default
    parts = key.split(".")
    for i in range(len(parts), -1, -1):
        prefix = ".".join(parts[:i])
        if prefix in device_map:
            d = device_map[prefix]
            return torch.device(f"cuda:{d}" if isinstance(d, int) else d)
    return default


def load_state_into(model: Bagel, weights: WeightFiles, ae: WeightFiles, dtype: torch.dtype, device: torch.device,
                    device_map: dict | None = None) -> None:
    """Strictly load both weight files into a meta-device ``model``."""
    model_state = model.state_dict()
    expected = {k: tuple(v.shape) for k, v in model_state.items()}
    provided = {k: (weights, k, s) for k, s in weights.shapes.items()}
    for k, s in ae.shapes.items():
        if VAE_PREFIX + k in provided:
            raise CheckpointError(f"{weights.files[VAE_PREFIX + k]}: tensor {VAE_PREFIX + k} duplicates {k} in {ae.files[k]}")
        provided[VAE_PREFIX + k] = (ae, k, s)
    missing = sorted(set(expected) - set(provided))
    unexpected = sorted(set(provided) - set(expected))
    if missing or unexpected:
        def where(k):
            files, raw, _ = provided[k]
            return f"{files.files[raw]}: {raw}"

        def source(k):
            return f"{(ae if k.startswith(VAE_PREFIX) else weights).source}: {k[len(VAE_PREFIX):] if k.startswith(VAE_PREFIX) else k}"
        lines = [f"missing (model needs, files lack): {'; '.join(source(k) for k in missing[:8])}{' ...' if len(missing) > 8 else ''}" if missing else "",
                 f"unexpected (files hold, model lacks): {'; '.join(where(k) for k in unexpected[:8])}{' ...' if len(unexpected) > 8 else ''}" if unexpected else ""]
        raise CheckpointError("checkpoint keys do not match the model: " + " | ".join(x for x in lines if x))
    for k, shape in expected.items():
        files, raw, got = provided[k]
        if got != shape:
            raise CheckpointError(f"{files.files[raw]}: tensor {raw} has shape {list(got)}, model expects {list(shape)}")
    for files, prefix in ((weights, ""), (ae, VAE_PREFIX)):
        for raw, tensor in files.tensors(list(files.shapes)):
            key = prefix + raw
            target = _device_for(key, device_map, device)
            if key in SINCOS_TABLES:
                fresh = sincos_table_2d(tensor.shape[1], square_side(tensor.shape[0], f"{files.files[raw]}: {raw}"))
                if not torch.allclose(tensor.float(), fresh, atol=2e-2):
                    raise CheckpointError(f"{files.files[raw]}: {raw} is not the 2-D sin-cos table its shape implies")
                tensor = fresh
            if tensor.is_floating_point() != model_state[key].is_floating_point():
                raise CheckpointError(f"{files.files[raw]}: tensor {raw} has dtype {tensor.dtype}, "
                                      f"model expects a {'floating' if model_state[key].is_floating_point() else 'integer'} tensor")
            cast = tensor.to(dtype) if tensor.is_floating_point() else tensor
            _assign(model, key, cast.to(target))


def resolve_model_dir(path_or_repo_id: str | os.PathLike, revision: str | None = None, weights: str = "auto") -> Path:
    """A local directory, or a hub repo id fetched with ``snapshot_download``
    (``HF_HUB_OFFLINE=1`` makes that use the local cache only). Only the configs,
    tokenizer, ``ae.safetensors`` and the chosen weights (ema by default) are fetched."""
    path = Path(path_or_repo_id).expanduser()
    if path.is_dir():
        return path
    text = str(path_or_repo_id)
    if os.path.exists(text) or text.count("/") != 1 or text.startswith((".", "/", "~")):
        raise CheckpointError(f"{text}: not a checkpoint directory (and not a hub repo id of the form owner/name)")
    from srum.hub import snapshot
    main_weights = "model*.safetensors" if weights == "model" else "ema*.safetensors"
    patterns = ["*.json", "*.txt", AE_WEIGHTS, main_weights]
    try:
        return snapshot(text, revision=revision, allow_patterns=patterns)   # local rank 0 fetches, the rest wait
    except Exception as err:  # hub errors (offline, not found, auth) all end here
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false")
        hint = " (HF_HUB_OFFLINE is set: only the local cache was searched)" if offline else ""
        # "outputs/my-bagel" reads as a hub id too: most likely a local folder is missing
        local = (f"no folder {text} (relative to {os.getcwd()}), and " if not os.path.isabs(text) else "")
        raise CheckpointError(f"{text}: {local}could not fetch it from the hub or its cache{hint}: "
                              f"{_first_line(err)}") from err


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_model(path_or_repo_id: str | os.PathLike, dtype: torch.dtype | str | None = None,
               device: torch.device | str | None = None, device_map: str | dict | None = None,
               weights: str = "auto", revision: str | None = None, max_memory: dict | None = None) -> Bagel:
    """Load a Bagel checkpoint for inference (``eval()`` mode, gradients off).

    ``dtype`` defaults to bfloat16 on CUDA and float32 on CPU. ``device_map="auto"``
    (or an explicit {module prefix: device} dict) spreads the model over several GPUs
    with accelerate's planner; otherwise everything goes to ``device``."""
    model_dir = resolve_model_dir(path_or_repo_id, revision, weights)
    device = torch.device(device) if device is not None else default_device()
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    for name in (LLM_CONFIG, VIT_CONFIG, AE_WEIGHTS):
        if not (model_dir / name).is_file():
            raise CheckpointError(f"{model_dir / name}: file not found (a BAGEL-7B-MoT directory needs it)")
    weight_files = WeightFiles.open(find_weights(model_dir, weights))
    ae_files = WeightFiles.open(model_dir / AE_WEIGHTS)
    config = read_config(model_dir, weight_files, ae_files)
    try:
        tokenizer, special = load_tokenizer(model_dir)
    except (FileNotFoundError, ValueError) as err:
        raise CheckpointError(str(err)) from err
    if max(special.bos, special.eos, special.vision_start, special.vision_end) >= config.llm.vocab_size:
        raise CheckpointError(f"{model_dir}: tokenizer ids exceed the embedding size vocab_size={config.llm.vocab_size}")
    with torch.device("meta"):
        model = Bagel(config)
    if device_map is not None and not isinstance(device_map, dict):
        device_map = plan_device_map(model, dtype, max_memory)
    load_state_into(model, weight_files, ae_files, dtype, device, device_map)
    model.tokenizer, model.special_tokens = tokenizer, special
    model.checkpoint_dir = model_dir
    log_attention_backend(str(device) if device_map is None else "cuda (device_map)", dtype)
    return model.eval().requires_grad_(False)


def plan_device_map(model: Bagel, dtype: torch.dtype, max_memory: dict | None = None) -> dict:
    """accelerate's balanced placement of whole decoder/ViT layers over the visible GPUs.
    The embedding-side modules stay on the first device: the inference code builds its
    inputs there."""
    from accelerate import infer_auto_device_map
    device_map = infer_auto_device_map(model, max_memory=max_memory, no_split_module_classes=NO_SPLIT_MODULES, dtype=dtype)
    first = device_map.get("language_model.model.embed_tokens", device_map.get("", 0))
    pinned = ("language_model.model.embed_tokens", "language_model.model.norm", "language_model.model.norm_moe_gen",
              "language_model.lm_head", "time_embedder", "vae2llm", "llm2vae", "latent_pos_embed", "connector",
              "vit_pos_embed", "vae", "vit_model")
    # drop entries that contain a pinned module (accelerate may group them, or map "" = everything);
    # modules left without an entry go to the default device
    device_map = {k: v for k, v in device_map.items() if k and not any(p == k or p.startswith(k + ".") for p in pinned)}
    for name in pinned:
        device_map[name] = first
    return device_map


def save_model(model: Bagel, out_dir: str | os.PathLike, weights_name: str = "ema.safetensors",
               dtype: torch.dtype | None = None) -> Path:
    """Write ``model`` in the published layout (configs, ae.safetensors, weights, tokenizer)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = model.config
    llm_json = cfg.llm.to_json_dict()
    (out / LLM_CONFIG).write_text(json.dumps(llm_json, indent=2) + "\n", encoding="utf-8")
    (out / VIT_CONFIG).write_text(json.dumps(cfg.vit.to_json_dict(), indent=2) + "\n", encoding="utf-8")
    main, ae = {}, {}
    for k, v in model.state_dict().items():
        v = v.detach().to("cpu", dtype) if dtype is not None and v.is_floating_point() else v.detach().cpu()
        if k.startswith(VAE_PREFIX):
            ae[k[len(VAE_PREFIX):]] = v.contiguous()
        else:
            main[k] = v.contiguous()
    save_file(ae, out / AE_WEIGHTS, metadata={"format": "pt"})
    save_file(main, out / weights_name, metadata={"format": "pt"})
    if model.tokenizer is not None:
        model.tokenizer.save_pretrained(out)
    return out
