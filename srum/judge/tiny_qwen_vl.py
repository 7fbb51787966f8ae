# SPDX-License-Identifier: Apache-2.0
"""Random tiny Qwen2.5-VL checkpoints in the published Hugging Face layout, for tests.

``write_tiny_qwen_vl(path)`` writes what a ``Qwen/Qwen2.5-VL-*-Instruct`` download
holds, at toy size: ``config.json`` (the hub's *flat* form: text fields at the top
level, ``vision_config`` nested, ``rope_scaling`` of type ``mrope``), ``generation_config.json``,
``model.safetensors``, tokenizer files (``tokenizer.json``, ``tokenizer_config.json``,
``vocab.json``, ``merges.txt``) with Qwen's special tokens, ``preprocessor_config.json``
and ``chat_template.json``. Loading it with :class:`~srum.judge.backends.QwenVLJudge`
therefore goes through the same ``from_pretrained`` path as the real model.

Pitfalls this avoids (see PLATFORM_NOTES.md): the token ids in the config must lie inside
the tiny vocabulary (transformers' defaults 151643... do not), and the tokenizer must be
built from an in-memory vocabulary (file-path arguments silently give an empty one).
"""
from __future__ import annotations

import inspect
import json
import os
from pathlib import Path

import torch
import transformers
from safetensors.torch import save_file

from srum.models.bagel.tokenizer import TINY_CORPUS, train_byte_level_bpe

# Qwen2.5-VL's special tokens, in the order of the published tokenizer (ids follow the
# trained vocabulary here instead of starting at 151643).
QWEN_VL_SPECIAL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
)

# Same rendering as the published Qwen2-VL / Qwen2.5-VL template: a default system turn,
# each image as <|vision_start|><|image_pad|><|vision_end|> (the processor expands the pad
# to one token per merged patch), optional "Picture N:" labels, generation prompt
# "<|im_start|>assistant\n".
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}"
    "{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}"
    "{{ message['content'] }}"
    "{% else %}"
    "{% for part in message['content'] %}"
    "{% if part['type'] == 'image' or 'image' in part or 'image_url' in part %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'video' or 'video' in part %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in part %}"
    "{{ part['text'] }}"
    "{% endif %}"
    "{% endfor %}"
    "{% endif %}"
    "<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Toy sizes. head_dim = 64 / 4 = 16, so the M-RoPE sections (temporal, height, width)
# must sum to head_dim / 2 = 8.
_TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=4096, rms_norm_eps=1e-6, rope_theta=1000000.0,
             hidden_act="silu", max_window_layers=2, sliding_window=4096, use_sliding_window=False)
_VISION = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, in_chans=3, out_hidden_size=64,
               patch_size=14, spatial_merge_size=2, spatial_patch_size=14, temporal_patch_size=2,
               window_size=56, fullatt_block_indexes=[1], tokens_per_second=2, hidden_act="silu")
# 28 = patch 14 x merge 2: every image becomes between 2x2 and 4x4 merged tokens.
_MIN_PIXELS, _MAX_PIXELS = 56 * 56, 112 * 112


def _build_tokenizer(vocab_size: int):
    vocab, merges = train_byte_level_bpe(TINY_CORPUS, vocab_size)
    kwargs = dict(unk_token=None, bos_token=None, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                  additional_special_tokens=[t for t in QWEN_VL_SPECIAL_TOKENS if t != "<|endoftext|>"])
    cls = transformers.Qwen2Tokenizer
    if "vocab" not in inspect.signature(cls.__init__).parameters:  # transformers 4.x takes only files
        raise RuntimeError("write_tiny_qwen_vl needs transformers >= 5 (Qwen2Tokenizer(vocab=..., merges=...))")
    tokenizer = cls(vocab=vocab, merges=merges, **kwargs)
    probe = "Rate it from 1 to 9: 7\n"
    if tokenizer.decode(tokenizer.encode(probe, add_special_tokens=False)) != probe:
        raise RuntimeError("the tiny Qwen tokenizer does not round-trip text; transformers API mismatch")
    return tokenizer, vocab, merges


def write_tiny_qwen_vl(path: str | os.PathLike, seed: int = 0, vocab_size: int = 400) -> Path:
    """Write a random tiny Qwen2.5-VL-Instruct checkpoint to ``path``; returns the directory.

    Deterministic for a given ``seed``. The directory loads with
    ``Qwen2_5_VLForConditionalGeneration.from_pretrained`` and ``AutoProcessor.from_pretrained``
    offline."""
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer, vocab, merges = _build_tokenizer(vocab_size)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_VL_SPECIAL_TOKENS}
    n_vocab = -(-len(tokenizer) // 16) * 16  # padded like the published embedding (152064 > 151665)

    config = {
        "architectures": ["Qwen2_5_VLForConditionalGeneration"],
        "model_type": "qwen2_5_vl",
        **_TEXT,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "vocab_size": n_vocab,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "use_cache": True,
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"],
        "pad_token_id": ids["<|endoftext|>"],
        "vision_start_token_id": ids["<|vision_start|>"],
        "vision_end_token_id": ids["<|vision_end|>"],
        "vision_token_id": ids["<|vision_pad|>"],
        "image_token_id": ids["<|image_pad|>"],
        "video_token_id": ids["<|video_pad|>"],
        "vision_config": dict(_VISION),
        "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]},
    }
    (out / "config.json").write_text(json.dumps(config, indent=2))
    # The published file asks for near-greedy sampling (top_k=1 etc.); the judge must
    # override it, so the tiny checkpoint carries the same trap.
    generation = {"bos_token_id": ids["<|endoftext|>"], "pad_token_id": ids["<|endoftext|>"],
                  "eos_token_id": [ids["<|im_end|>"], ids["<|endoftext|>"]], "do_sample": True,
                  "repetition_penalty": 1.05, "temperature": 0.1, "top_p": 0.001, "top_k": 1}
    (out / "generation_config.json").write_text(json.dumps(generation, indent=2))

    torch_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model_config = transformers.Qwen2_5_VLConfig(**{k: v for k, v in config.items() if k != "architectures"})
        model = transformers.Qwen2_5_VLForConditionalGeneration(model_config).float()
    finally:
        torch.random.set_rng_state(torch_state)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})

    tokenizer.save_pretrained(str(out))
    with open(out / "vocab.json", "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False)
    with open(out / "merges.txt", "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    tok_cfg_path = out / "tokenizer_config.json"
    tok_cfg = json.loads(tok_cfg_path.read_text())
    tok_cfg["chat_template"] = CHAT_TEMPLATE
    tok_cfg["padding_side"] = "right"  # published default; the judge switches to left for batches
    tok_cfg_path.write_text(json.dumps(tok_cfg, indent=2, ensure_ascii=False))

    preprocessor = {"min_pixels": _MIN_PIXELS, "max_pixels": _MAX_PIXELS, "patch_size": 14, "temporal_patch_size": 2,
                    "merge_size": 2, "image_mean": [0.48145466, 0.4578275, 0.40821073],
                    "image_std": [0.26862954, 0.26130258, 0.27577711],
                    "image_processor_type": "Qwen2VLImageProcessor", "processor_class": "Qwen2_5_VLProcessor"}
    (out / "preprocessor_config.json").write_text(json.dumps(preprocessor, indent=2))
    (out / "chat_template.json").write_text(json.dumps({"chat_template": CHAT_TEMPLATE}, indent=2))
    return out
