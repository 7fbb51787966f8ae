# SPDX-License-Identifier: Apache-2.0
"""Judge backends: the tiny Qwen2.5-VL checkpoint writer, QwenVLJudge through the real
from_pretrained path (offline), SelfJudge on the tiny Bagel, load_judge_backend."""
import json
import shutil

import PIL.Image
import pytest
import torch
import transformers
from safetensors.torch import load_file

from srum.judge import (RATING_SCALE, JudgeBackend, JudgeConfig, QwenVLJudge, SelfJudge, judge_image,
                        load_judge_backend, write_tiny_qwen_vl)

PROMPT = "a red apple to the left of a blue cup"
PUBLISHED_FILES = {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                   "tokenizer_config.json", "vocab.json", "merges.txt", "preprocessor_config.json",
                   "chat_template.json"}


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory):
    return write_tiny_qwen_vl(tmp_path_factory.mktemp("tiny-qwen-vl"), seed=0)


@pytest.fixture(scope="module")
def qwen_judge(qwen_dir):
    return QwenVLJudge(qwen_dir, dtype="float32", device="cpu")


def _rows():
    red = PIL.Image.new("RGB", (64, 48), (200, 20, 20))
    blue = PIL.Image.new("RGB", (40, 64), (20, 20, 200))
    return [[red], [red, blue], []], ["Is the apple red?", "Which image is bluer?", "Say a digit."]


# ------------------------------------------------------------------ the checkpoint writer
def test_tiny_checkpoint_has_the_published_layout(qwen_dir, tmp_path):
    assert PUBLISHED_FILES <= {p.name for p in qwen_dir.iterdir()}
    config = json.loads((qwen_dir / "config.json").read_text())
    # the hub's flat form: text fields at the top level, nested vision config, mrope
    assert config["model_type"] == "qwen2_5_vl" and config["architectures"] == ["Qwen2_5_VLForConditionalGeneration"]
    assert "text_config" not in config and config["hidden_size"] == 64
    assert config["rope_scaling"]["type"] == "mrope" and "depth" in config["vision_config"]
    tok = transformers.AutoTokenizer.from_pretrained(qwen_dir)
    for key in ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id",
                "bos_token_id", "eos_token_id"):
        assert config[key] < config["vocab_size"]
    assert tok.convert_ids_to_tokens(config["image_token_id"]) == "<|image_pad|>"
    assert tok.convert_ids_to_tokens(config["eos_token_id"]) == "<|im_end|>"
    assert json.loads((qwen_dir / "chat_template.json").read_text())["chat_template"]
    # deterministic for a seed, different for another
    again = write_tiny_qwen_vl(tmp_path / "again", seed=0)
    other = write_tiny_qwen_vl(tmp_path / "other", seed=1)
    a, b, c = (load_file(str(d / "model.safetensors")) for d in (qwen_dir, again, other))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


# ------------------------------------------------------------------ QwenVLJudge
def test_qwen_judge_loads_offline_through_from_pretrained(qwen_judge, qwen_dir):
    assert isinstance(qwen_judge, JudgeBackend)
    assert qwen_judge.name == "qwen2_5_vl" and qwen_judge.model_id == str(qwen_dir)
    assert isinstance(qwen_judge.model, transformers.Qwen2_5_VLForConditionalGeneration)
    assert type(qwen_judge.processor).__name__ == "Qwen2_5_VLProcessor"
    assert qwen_judge.tokenizer.padding_side == "left"
    text = qwen_judge._chat_text(2, "Compare.", "Be brief.")
    assert text == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n"
                    "<|vision_start|><|image_pad|><|vision_end|><|vision_start|><|image_pad|><|vision_end|>"
                    "Compare.<|im_end|>\n<|im_start|>assistant\n")
    assert qwen_judge._chat_text(0, "Hi", None).startswith("<|im_start|>system\nYou are a helpful assistant.")


def test_qwen_judge_generate(qwen_judge):
    images, prompts = _rows()
    greedy = qwen_judge.generate(images, prompts, system=None, max_new_tokens=5, do_sample=False, temperature=1.0,
                                 generator=None)
    assert len(greedy) == 3 and all(isinstance(t, str) for t in greedy)
    assert greedy == qwen_judge.generate(images, prompts, system=None, max_new_tokens=5, do_sample=False,
                                         temperature=1.0, generator=None)
    # batched greedy == one row at a time (left padding is handled)
    assert greedy[1] == qwen_judge.generate(images[1:2], prompts[1:2], system=None, max_new_tokens=5,
                                            do_sample=False, temperature=1.0, generator=None)[0]
    # sampling follows the caller's generator and leaves the global RNG alone
    state = torch.random.get_rng_state()
    kw = dict(system="think", max_new_tokens=8, do_sample=True, temperature=1.0)
    first = qwen_judge.generate(images, prompts, generator=torch.Generator().manual_seed(5), **kw)
    assert torch.equal(state, torch.random.get_rng_state())
    assert first == qwen_judge.generate(images, prompts, generator=torch.Generator().manual_seed(5), **kw)
    # the checkpoint's generation_config (top_k=1, top_p=0.001) must not make sampling greedy
    draws = {tuple(qwen_judge.generate(images, prompts, generator=torch.Generator().manual_seed(s), **kw))
             for s in range(4)}
    assert len(draws) > 1
    with pytest.raises(ValueError, match="rows"):
        qwen_judge.generate(images[:2], prompts, system=None, max_new_tokens=2, do_sample=False, temperature=1.0,
                            generator=None)


def test_qwen_judge_choice_probabilities(qwen_judge):
    images, prompts = _rows()
    probs, mass = qwen_judge.choice_probabilities(images, prompts, RATING_SCALE.choices)
    assert probs.shape == (3, 9) and mass.shape == (3,)
    assert torch.allclose(probs.sum(-1), torch.ones(3), atol=1e-6)
    assert bool(((mass > 0) & (mass < 1)).all())
    for i in range(3):
        p1, m1 = qwen_judge.choice_probabilities(images[i:i + 1], prompts[i:i + 1], RATING_SCALE.choices)
        assert torch.allclose(p1[0], probs[i], atol=1e-5) and torch.allclose(m1[0], mass[i], atol=1e-5)
    # answers given by several spellings pool their first tokens
    pooled, _ = qwen_judge.choice_probabilities(images, prompts, [["1", "2"], ["3", "4"]])
    assert pooled.shape == (3, 2)
    with pytest.raises(ValueError, match="start with the same token"):
        qwen_judge.choice_probabilities(images, prompts, ["7", ["7", "8"]])


def test_judge_image_with_qwen_judge(qwen_judge):
    image = PIL.Image.new("RGB", (64, 48), (90, 140, 60))
    regions = [{"region_id": 0, "bbox": [0, 0, 32, 24], "mask": None, "grounding": None},
               {"region_id": 1, "bbox": [10, 10, 64, 48], "mask": None, "grounding": {"p_relevant": 0.7, "kept": True}}]
    cfg = JudgeConfig(backend="qwen2_5_vl", judge_model="unused-here", mode="logits", min_scale_mass=0.0)
    glob, out = judge_image(qwen_judge, image, PROMPT, regions, cfg)
    again = judge_image(qwen_judge, image, PROMPT, regions, cfg)
    assert json.dumps([glob, out]) == json.dumps(list(again))
    for e in (glob, *out):
        assert e["status"] == "ok" and e["method"] == "logits" and -1.0 <= e["score"] <= 1.0
        assert sum(e["detail"]["probabilities"]) == pytest.approx(1.0, abs=1e-6)
    text_cfg = JudgeConfig(backend="qwen2_5_vl", judge_model="unused-here", max_new_tokens=3, retries=1)
    glob, out = judge_image(qwen_judge, image, PROMPT, regions[:1], text_cfg, torch.Generator().manual_seed(0))
    for e in (glob, *out):
        assert e["method"] == "text" and e["status"] in ("ok", "failed")
        if e["status"] == "failed":
            assert e["score"] is None and len(e["detail"]["answers"]) == 2


def test_qwen_judge_missing_files(tmp_path, qwen_dir):
    with pytest.raises(FileNotFoundError, match="not found"):
        QwenVLJudge(tmp_path / "nowhere")
    broken = tmp_path / "broken"
    shutil.copytree(qwen_dir, broken)
    (broken / "preprocessor_config.json").unlink()
    with pytest.raises((OSError, ValueError), match="broken"):
        QwenVLJudge(broken, device="cpu")


# ------------------------------------------------------------------ SelfJudge and the factory
def test_self_judge_wraps_bagel(tiny_model, tiny_dir):
    judge = SelfJudge(tiny_model)
    assert isinstance(judge, JudgeBackend) and judge.name == "self" and judge.model_id == str(tiny_dir)
    image = PIL.Image.new("RGB", (32, 32), (10, 200, 10))
    out = judge.generate([[image], []], ["What colour?", "Hi"], system=None, max_new_tokens=3, do_sample=False,
                         temperature=1.0, generator=None)
    assert out == tiny_model.understand([[image], []], ["What colour?", "Hi"], max_new_tokens=3)
    thought = judge.generate([[image]], ["What colour?"], system="Think first.", max_new_tokens=3, do_sample=False,
                             temperature=1.0, generator=None)
    assert thought == tiny_model.understand([[image]], ["What colour?"], think=True, max_new_tokens=3,
                                            think_system_prompt="Think first.")
    probs, mass = judge.choice_probabilities([[image]], ["Rate it."], RATING_SCALE.choices)
    assert probs.shape == (1, 9) and probs.device.type == "cpu" and mass.shape == (1,)
    with pytest.raises(NotImplementedError):
        judge.choice_probabilities([[image]], ["Rate it."], RATING_SCALE.choices, system="x")


def test_load_judge_backend(tiny_model, qwen_dir):
    assert isinstance(load_judge_backend(JudgeConfig(), model=tiny_model), SelfJudge)
    with pytest.raises(ValueError, match="needs the loaded Bagel"):
        load_judge_backend(JudgeConfig())
    judge = load_judge_backend(JudgeConfig(backend="qwen2_5_vl", judge_model=str(qwen_dir), dtype="float32",
                                           device="cpu"))
    assert isinstance(judge, QwenVLJudge) and judge.model.dtype == torch.float32
    with pytest.raises(ValueError, match="dtype"):
        load_judge_backend(JudgeConfig(backend="qwen2_5_vl", judge_model=str(qwen_dir), dtype="int8"))
