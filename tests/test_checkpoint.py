# SPDX-License-Identifier: Apache-2.0
"""Checkpoint I/O in the published BAGEL-7B-MoT layout: strict, bitwise loading,
sizes inferred from tensor shapes, errors that name the file (and key), sharded
weights, the full-size key set, and hub ids resolved through the offline cache."""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import srum
from srum.models.bagel import Bagel, BagelConfig, LanguageModelConfig, VisionConfig, save_model
from srum.models.bagel.autoencoder import AutoEncoderParams
from srum.models.bagel.checkpoint import read_config
from srum.models.bagel.tiny import TINY_CONFIG

EMA = "ema.safetensors"
AE = "ae.safetensors"
VIT_LAYER = re.compile(r"^vit_model\.vision_model\.encoder\.layers\.(\d+)\.")


# --------------------------------------------------------------------------- helpers
def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(path, framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def _copy(tiny_dir: Path, tmp_path: Path, name: str = "ckpt") -> Path:
    dst = tmp_path / name
    shutil.copytree(tiny_dir, dst)
    return dst


def _rewrite(path: Path, edit) -> None:
    """Load a safetensors file, let ``edit`` change the dict in place, write it back."""
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path, metadata={"format": "pt"})


def _load(path, **kw) -> Bagel:
    return srum.load_model(path, dtype=torch.float32, device="cpu", **kw)


def _load_error(path, **kw) -> str:
    with pytest.raises(srum.CheckpointError) as info:
        _load(path, **kw)
    return str(info.value)


def _assert_state_dicts_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert set(a) == set(b)
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        assert a[k].shape == b[k].shape, k
        assert torch.equal(a[k], b[k]), k


def _state_digest(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(str(v.dtype).encode())
        h.update(v.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


# --------------------------------------------------------------------------- 1. bitwise round trip
def test_load_is_bitwise_equal_to_files_and_key_accounting_is_strict(tiny_dir):
    model = _load(tiny_dir)
    state = model.state_dict()
    ema = _read_safetensors(tiny_dir / EMA)
    ae = _read_safetensors(tiny_dir / AE)

    assert not any(k.startswith("vae.") for k in ema), "main weights must not hold vae.* keys"
    assert all(k.startswith(("encoder.", "decoder.")) for k in ae), "ae.safetensors holds FLUX keys"
    file_keys = set(ema) | {"vae." + k for k in ae}
    assert len(file_keys) == len(ema) + len(ae)
    assert set(state) - file_keys == set(), "model has keys no file provides"
    assert file_keys - set(state) == set(), "files have keys the model lacks"

    for key, value in state.items():
        stored = ae[key[len("vae."):]] if key.startswith("vae.") else ema[key]
        assert value.device.type == "cpu"
        assert value.dtype == stored.dtype == torch.float32, key
        assert value.shape == stored.shape, key
        assert torch.equal(value, stored), key
    # the result is ready for inference
    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())
    assert model.tokenizer is not None and model.special_tokens is not None


def test_checkpoint_error_is_a_value_error():
    assert issubclass(srum.CheckpointError, ValueError)


# --------------------------------------------------------------------------- 2. writer round trip, dtype
def test_save_model_then_load_model_is_bitwise(tiny_model, tmp_path):
    out = tmp_path / "saved"
    save_model(tiny_model, out)
    for name in ("llm_config.json", "vit_config.json", AE, EMA):
        assert (out / name).is_file(), name
    reloaded = _load(out)
    _assert_state_dicts_equal(tiny_model.state_dict(), reloaded.state_dict())
    assert reloaded.config == tiny_model.config
    assert reloaded.special_tokens == tiny_model.special_tokens


def test_bfloat16_load_gives_bf16_tensors(tiny_dir, tiny_model):
    model = srum.load_model(tiny_dir, dtype=torch.bfloat16, device="cpu")
    assert model.dtype == torch.bfloat16
    reference = tiny_model.state_dict()
    for key, value in model.state_dict().items():
        if reference[key].is_floating_point():
            assert value.dtype == torch.bfloat16, key
            assert torch.equal(value, reference[key].to(torch.bfloat16)), key
        else:
            assert value.dtype == reference[key].dtype, key


def test_dtype_given_as_string(tiny_dir):
    model = srum.load_model(tiny_dir, dtype="bfloat16", device="cpu")
    assert model.vae2llm.weight.dtype == torch.bfloat16


# --------------------------------------------------------------------------- 3. inferred sizes
def test_sizes_not_in_json_are_inferred_from_tensor_shapes(tmp_path):
    spec = yaml.safe_load(TINY_CONFIG.read_text(encoding="utf-8"))
    assert spec["max_latent_size"] != 16 and spec["vae"]["num_res_blocks"] != 2
    spec["max_latent_size"] = 16
    spec["vae"]["num_res_blocks"] = 2
    config_path = tmp_path / "tiny16.yaml"
    config_path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    out = srum.write_tiny_checkpoint(tmp_path / "ckpt", config_path=config_path)

    # neither number is written into any JSON file
    for name in ("llm_config.json", "vit_config.json"):
        data = json.loads((out / name).read_text(encoding="utf-8"))
        assert "max_latent_size" not in data and "num_res_blocks" not in data

    model = _load(out)
    assert model.config.max_latent_size == 16
    assert model.config.vae.num_res_blocks == 2
    assert model.latent_pos_embed.pos_embed.shape == (16 * 16, spec["llm"]["hidden_size"])
    assert model.config.vae.ch == spec["vae"]["ch"]
    assert model.config.vae.ch_mult == tuple(spec["vae"]["ch_mult"])
    assert model.config.vae.z_channels == spec["vae"]["z_channels"]
    assert model.config.latent_patch_size == spec["latent_patch_size"]
    assert model.config.vit_max_patches_per_side == spec["vit_max_patches_per_side"]


def test_vit_uses_one_layer_less_than_vit_config_records(tiny_dir, tiny_model):
    recorded = json.loads((tiny_dir / "vit_config.json").read_text(encoding="utf-8"))["num_hidden_layers"]
    with safe_open(tiny_dir / EMA, framework="pt") as f:
        in_file = {int(m.group(1)) for k in f.keys() if (m := VIT_LAYER.match(k))}
    in_model = {int(m.group(1)) for k in tiny_model.state_dict() if (m := VIT_LAYER.match(k))}
    assert in_file == in_model == set(range(recorded - 1))
    assert tiny_model.config.vit.num_hidden_layers == recorded
    assert tiny_model.config.vit.num_layers_used == recorded - 1


# --------------------------------------------------------------------------- 4. errors
@pytest.mark.parametrize("name", [AE, "llm_config.json", "vit_config.json"])
def test_missing_required_file_is_named(tiny_dir, tmp_path, name):
    d = _copy(tiny_dir, tmp_path)
    (d / name).unlink()
    msg = _load_error(d)
    assert str(d / name) in msg


def test_malformed_vit_config_json(tiny_dir, tmp_path):
    d = _copy(tiny_dir, tmp_path)
    (d / "vit_config.json").write_text('{"hidden_size": 32, ', encoding="utf-8")
    msg = _load_error(d)
    assert str(d / "vit_config.json") in msg


def test_llm_config_missing_hidden_size(tiny_dir, tmp_path):
    d = _copy(tiny_dir, tmp_path)
    path = d / "llm_config.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    del data["hidden_size"]
    path.write_text(json.dumps(data), encoding="utf-8")
    msg = _load_error(d)
    assert str(path) in msg
    assert "hidden_size" in msg


def test_no_weight_file_at_all(tiny_dir, tmp_path):
    d = _copy(tiny_dir, tmp_path)
    (d / EMA).unlink()
    msg = _load_error(d)
    assert str(d) in msg
    assert EMA in msg and "model.safetensors" in msg


def test_missing_tensor_names_key_and_file(tiny_dir, tmp_path):
    d = _copy(tiny_dir, tmp_path)
    key = "language_model.model.layers.0.self_attn.q_norm_moe_gen.weight"
    _rewrite(d / EMA, lambda t: t.pop(key))
    msg = _load_error(d)
    assert key in msg
    assert EMA in msg


def test_missing_autoencoder_tensor_names_key_and_file(tiny_dir, tmp_path):
    d = _copy(tiny_dir, tmp_path)
    key = "decoder.conv_out.bias"
    _rewrite(d / AE, lambda t: t.pop(key))
    msg = _load_error(d)
    assert key in msg
    assert str(d / AE) in msg


def test_unexpected_tensor_names_key_and_file(tiny_dir, tmp_path):
    d = _copy(tiny_dir, tmp_path)
    key = "language_model.model.layers.0.self_attn.extra_proj.weight"
    _rewrite(d / EMA, lambda t: t.__setitem__(key, torch.zeros(3, 4)))
    msg = _load_error(d)
    assert key in msg
    assert str(d / EMA) in msg


def test_wrong_shape_names_file_key_and_both_shapes(tiny_dir, tmp_path):
    d = _copy(tiny_dir, tmp_path)
    key = "connector.fc2.bias"
    n = load_file(d / EMA)[key].shape[0]
    _rewrite(d / EMA, lambda t: t.__setitem__(key, torch.zeros(n + 1)))
    msg = _load_error(d)
    assert str(d / EMA) in msg
    assert key in msg
    assert f"[{n + 1}]" in msg and f"[{n}]" in msg


def test_garbage_weight_file(tiny_dir, tmp_path):
    d = _copy(tiny_dir, tmp_path)
    (d / EMA).write_bytes(b"this is not a safetensors file\n" * 8)
    msg = _load_error(d)
    assert str(d / EMA) in msg


def test_wrong_sincos_table_is_rejected(tiny_dir, tmp_path):
    d = _copy(tiny_dir, tmp_path)
    key = "latent_pos_embed.pos_embed"
    g = torch.Generator().manual_seed(0)
    _rewrite(d / EMA, lambda t: t.__setitem__(key, torch.randn(t[key].shape, generator=g)))
    msg = _load_error(d)
    assert str(d / EMA) in msg
    assert key in msg


def test_missing_tokenizer_names_directory(tiny_dir, tmp_path):
    d = _copy(tiny_dir, tmp_path)
    for name in ("tokenizer.json", "vocab.json", "merges.txt"):
        (d / name).unlink()
    msg = _load_error(d)
    assert str(d) in msg
    assert "tokenizer" in msg


def test_non_float_tensor_for_float_parameter_is_a_checkpoint_error(tiny_dir, tmp_path):
    d = _copy(tiny_dir, tmp_path)
    key = "connector.fc2.bias"
    _rewrite(d / EMA, lambda t: t.__setitem__(key, t[key].to(torch.int64)))
    msg = _load_error(d)  # not a bare RuntimeError from nn.Parameter
    assert str(d / EMA) in msg
    assert key in msg


def test_tensor_provided_by_both_weight_files_is_rejected(tiny_dir, tmp_path):
    """Strict accounting: ``vae.encoder.conv_in.weight`` in ema.safetensors and
    ``encoder.conv_in.weight`` in ae.safetensors both claim the same model tensor."""
    d = _copy(tiny_dir, tmp_path)
    ae_value = load_file(d / AE)["encoder.conv_in.weight"]
    _rewrite(d / EMA, lambda t: t.__setitem__("vae.encoder.conv_in.weight", torch.full_like(ae_value, 7.0)))
    msg = _load_error(d)
    assert "encoder.conv_in.weight" in msg
    assert EMA in msg


# --------------------------------------------------------------------------- 5. sharded weights
def test_sharded_weights_load_like_the_single_file(tiny_dir, tmp_path, tiny_model):
    d = _copy(tiny_dir, tmp_path)
    tensors = load_file(d / EMA)
    keys = sorted(tensors)
    halves = {"ema-00001-of-00002.safetensors": keys[: len(keys) // 2],
              "ema-00002-of-00002.safetensors": keys[len(keys) // 2:]}
    weight_map = {}
    for shard, shard_keys in halves.items():
        save_file({k: tensors[k] for k in shard_keys}, d / shard, metadata={"format": "pt"})
        weight_map.update({k: shard for k in shard_keys})
    (d / (EMA + ".index.json")).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}), encoding="utf-8")
    (d / EMA).unlink()

    model = _load(d)
    _assert_state_dicts_equal(tiny_model.state_dict(), model.state_dict())


def _write_sharded(d: Path) -> dict[str, str]:
    tensors = load_file(d / EMA)
    keys = sorted(tensors)
    weight_map = {k: "ema-00001-of-00002.safetensors" if i % 2 else "ema-00002-of-00002.safetensors"
                  for i, k in enumerate(keys)}
    for shard in set(weight_map.values()):
        save_file({k: tensors[k] for k, s in weight_map.items() if s == shard}, d / shard, metadata={"format": "pt"})
    (d / EMA).unlink()
    return weight_map


def test_index_pointing_at_a_missing_shard_names_the_shard(tiny_dir, tmp_path):
    d = _copy(tiny_dir, tmp_path)
    weight_map = _write_sharded(d)
    weight_map[next(iter(weight_map))] = "ema-00003-of-00002.safetensors"
    (d / (EMA + ".index.json")).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}), encoding="utf-8")
    msg = _load_error(d)
    assert str(d / "ema-00003-of-00002.safetensors") in msg


def test_index_listing_a_tensor_its_shard_lacks_names_shard_and_key(tiny_dir, tmp_path):
    d = _copy(tiny_dir, tmp_path)
    weight_map = _write_sharded(d)
    key = "language_model.model.layers.0.self_attn.q_norm_moe_gen.weight"
    wrong = next(s for s in set(weight_map.values()) if s != weight_map[key])
    weight_map[key] = wrong
    (d / (EMA + ".index.json")).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}), encoding="utf-8")
    msg = _load_error(d)
    assert str(d / wrong) in msg
    assert key in msg


def test_malformed_index_is_named(tiny_dir, tmp_path):
    d = _copy(tiny_dir, tmp_path)
    _write_sharded(d)
    (d / (EMA + ".index.json")).write_text('{"metadata": {}}', encoding="utf-8")
    msg = _load_error(d)
    assert str(d / (EMA + ".index.json")) in msg


def test_weights_model_on_ema_only_dir_is_an_error(tiny_dir):
    msg = _load_error(tiny_dir, weights="model")
    assert "model.safetensors" in msg
    assert str(tiny_dir) in msg


def test_weights_ema_and_model_pick_their_file(tiny_dir, tmp_path, tiny_model):
    d = _copy(tiny_dir, tmp_path)
    (d / EMA).rename(d / "model.safetensors")
    _assert_state_dicts_equal(tiny_model.state_dict(), _load(d, weights="model").state_dict())
    _assert_state_dicts_equal(tiny_model.state_dict(), _load(d).state_dict())  # auto falls back
    assert "ema.safetensors" in _load_error(d, weights="ema")


# --------------------------------------------------------------------------- 6. published layout
N_LLM_LAYERS, N_VIT_LAYERS_FILE = 28, 27


def _published_config() -> BagelConfig:
    llm = LanguageModelConfig(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                              num_attention_heads=28, num_key_value_heads=4, rope_theta=1000000.0)
    vit = VisionConfig(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16,
                       patch_size=14, image_size=980)
    return BagelConfig(llm, vit, AutoEncoderParams(), max_latent_size=64, vit_max_patches_per_side=70,
                       latent_patch_size=2)


@pytest.fixture(scope="module")
def published_shapes() -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        model = Bagel(_published_config())
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _published_main_keys() -> set[str]:
    keys = {
        "connector.fc1.weight", "connector.fc1.bias", "connector.fc2.weight", "connector.fc2.bias",
        "language_model.lm_head.weight", "language_model.model.embed_tokens.weight",
        "language_model.model.norm.weight", "language_model.model.norm_moe_gen.weight",
        "latent_pos_embed.pos_embed", "llm2vae.weight", "llm2vae.bias",
        "time_embedder.mlp.0.weight", "time_embedder.mlp.0.bias", "time_embedder.mlp.2.weight",
        "time_embedder.mlp.2.bias", "vae2llm.weight", "vae2llm.bias",
        "vit_model.vision_model.embeddings.patch_embedding.weight",
        "vit_model.vision_model.embeddings.patch_embedding.bias",
        "vit_model.vision_model.embeddings.position_embedding.weight",
        "vit_model.vision_model.post_layernorm.weight", "vit_model.vision_model.post_layernorm.bias",
        "vit_pos_embed.pos_embed",
    }
    llm_layer = ["input_layernorm.weight", "input_layernorm_moe_gen.weight",
                 "post_attention_layernorm.weight", "post_attention_layernorm_moe_gen.weight",
                 "self_attn.o_proj.weight", "self_attn.o_proj_moe_gen.weight"]
    llm_layer += [f"{mlp}.{p}_proj.weight" for mlp in ("mlp", "mlp_moe_gen") for p in ("down", "gate", "up")]
    llm_layer += [f"self_attn.{n}.weight" for n in ("k_norm", "k_norm_moe_gen", "q_norm", "q_norm_moe_gen")]
    llm_layer += [f"self_attn.{p}_proj{s}.{w}" for p in "qkv" for s in ("", "_moe_gen") for w in ("weight", "bias")]
    assert len(llm_layer) == 28
    vit_layer = [f"{n}.{w}" for n in ("layer_norm1", "layer_norm2", "mlp.fc1", "mlp.fc2") for w in ("weight", "bias")]
    vit_layer += [f"self_attn.{p}_proj.{w}" for p in ("q", "k", "v", "out") for w in ("weight", "bias")]
    assert len(vit_layer) == 16
    for i in range(N_LLM_LAYERS):
        keys |= {f"language_model.model.layers.{i}.{k}" for k in llm_layer}
    for i in range(N_VIT_LAYERS_FILE - 1):
        keys |= {f"vit_model.vision_model.encoder.layers.{i}.{k}" for k in vit_layer}
    return keys


def test_published_tensor_shapes(published_shapes):
    s = published_shapes
    L = "language_model.model.layers.27."
    V = "vit_model.vision_model."
    expected = {
        "language_model.model.embed_tokens.weight": (152064, 3584),
        "language_model.lm_head.weight": (152064, 3584),
        L + "self_attn.k_proj_moe_gen.weight": (512, 3584),
        L + "self_attn.k_proj.bias": (512,),
        L + "self_attn.q_norm.weight": (128,),
        L + "self_attn.o_proj_moe_gen.weight": (3584, 3584),
        L + "mlp_moe_gen.gate_proj.weight": (18944, 3584),
        "language_model.model.norm_moe_gen.weight": (3584,),
        V + "embeddings.patch_embedding.weight": (1152, 588),
        V + "embeddings.position_embedding.weight": (4900, 1152),
        V + "encoder.layers.25.mlp.fc1.weight": (4304, 1152),
        V + "post_layernorm.weight": (1152,),
        "connector.fc1.weight": (3584, 1152),
        "connector.fc2.weight": (3584, 3584),
        "vit_pos_embed.pos_embed": (4900, 3584),
        "latent_pos_embed.pos_embed": (4096, 3584),
        "time_embedder.mlp.0.weight": (3584, 256),
        "time_embedder.mlp.2.weight": (3584, 3584),
        "vae2llm.weight": (3584, 64),
        "llm2vae.weight": (64, 3584),
        "vae.encoder.conv_in.weight": (128, 3, 3, 3),
    }
    for key, shape in expected.items():
        assert key in s, key
        assert s[key] == shape, (key, s[key], shape)
    assert not any(k.startswith(V + "encoder.layers.26.") for k in s)


def test_published_non_vae_key_set_is_exact(published_shapes):
    main = {k for k in published_shapes if not k.startswith("vae.")}
    expected = _published_main_keys()
    assert sorted(main - expected) == [], "keys the published checkpoint does not have"
    assert sorted(expected - main) == [], "published keys the model does not have"


class _FakeWeights:
    """Stands in for checkpoint.WeightFiles: ``.shapes`` and ``.files`` only."""

    def __init__(self, shapes: dict[str, tuple[int, ...]], path: Path):
        self.shapes = dict(shapes)
        self.files = {k: path for k in shapes}


def test_published_shapes_give_back_the_published_config(published_shapes, tmp_path):
    cfg = _published_config()
    ae_shapes = {k[len("vae."):]: v for k, v in published_shapes.items() if k.startswith("vae.")}
    main_shapes = {k: v for k, v in published_shapes.items() if not k.startswith("vae.")}

    vae = AutoEncoderParams.from_state_dict_shapes(ae_shapes)
    assert (vae.ch, vae.ch_mult, vae.num_res_blocks, vae.z_channels) == (128, (1, 2, 4, 4), 2, 16)
    assert vae == AutoEncoderParams()

    (tmp_path / "llm_config.json").write_text(json.dumps(cfg.llm.to_json_dict()), encoding="utf-8")
    (tmp_path / "vit_config.json").write_text(json.dumps(cfg.vit.to_json_dict()), encoding="utf-8")
    inferred = read_config(tmp_path, _FakeWeights(main_shapes, tmp_path / EMA), _FakeWeights(ae_shapes, tmp_path / AE))
    assert inferred.max_latent_size == 64
    assert inferred.vit_max_patches_per_side == 70
    assert inferred.latent_patch_size == 2
    assert inferred.vit.num_layers_used == 26
    assert inferred == cfg


# --------------------------------------------------------------------------- 7. hub ids
def test_uncached_hub_id_offline_raises_naming_the_repo(tmp_path, monkeypatch):
    import huggingface_hub.constants as hf_constants

    cache = tmp_path / "hub-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    # huggingface_hub reads these at import time
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.chdir(tmp_path)

    msg = _load_error("someone/not-cached")
    assert "someone/not-cached" in msg
    assert "HF_HUB_OFFLINE" in msg


def test_cached_hub_id_loads_offline_in_subprocess(tiny_dir, tmp_path, tiny_model):
    cache = tmp_path / "hub-cache"
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / "models--tiny--bagel"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit, encoding="utf-8")
    snapshot = repo / "snapshots" / commit
    shutil.copytree(tiny_dir, snapshot)
    workdir = tmp_path / "cwd"  # "tiny/bagel" must not exist relative to the cwd
    workdir.mkdir()

    script = textwrap.dedent("""
        import hashlib, torch, srum
        model = srum.load_model("tiny/bagel", dtype=torch.float32, device="cpu")
        h = hashlib.sha256()
        for k, v in sorted(model.state_dict().items()):
            h.update(k.encode())
            h.update(str(v.dtype).encode())
            h.update(v.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
        print("LOADED-FROM", model.checkpoint_dir)
        print("DIGEST", h.hexdigest())
    """)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_", "TRANSFORMERS_"))}
    env.update(HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(cache), HF_HOME=str(tmp_path / "hf-home"),
               HF_HUB_DISABLE_TELEMETRY="1", PYTHONPATH=str(Path(srum.__file__).resolve().parents[1]))
    proc = subprocess.run([sys.executable, "-c", script], env=env, cwd=workdir, capture_output=True, text=True,
                          timeout=180)
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = dict(line.split(" ", 1) for line in proc.stdout.splitlines() if line.startswith(("LOADED-FROM", "DIGEST")))
    assert Path(lines["LOADED-FROM"]).resolve() == snapshot.resolve()
    assert lines["DIGEST"] == _state_digest(tiny_model)


@pytest.mark.parametrize("name", ["./nope", "../nope/x", "nope", "~/definitely-not-a-srum-checkpoint/x"])
def test_missing_local_looking_path_does_not_touch_the_hub(tmp_path, monkeypatch, name):
    import huggingface_hub

    def no_hub(*args, **kwargs):
        raise AssertionError(f"the hub was consulted for {args!r}")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", no_hub)
    monkeypatch.chdir(tmp_path)
    msg = _load_error(name)
    assert name in msg


def test_missing_absolute_path_does_not_touch_the_hub(tmp_path, monkeypatch):
    import huggingface_hub

    def no_hub(*args, **kwargs):
        raise AssertionError(f"the hub was consulted for {args!r}")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", no_hub)
    missing = tmp_path / "missing"
    msg = _load_error(missing)
    assert str(missing) in msg
