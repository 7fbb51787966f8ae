# SPDX-License-Identifier: Apache-2.0
"""``data.samples``: t2i / vqa / cot rows in the trainer.

The layouts must be the ones inference builds, token for token and position for
position, because the model is evaluated through inference: the first tests compare
the packed training forward with the KV-cache inference code on a small random model
(logits of every answer / plan position, velocities of the noised image). Then the
trainer end to end: the loss falls for each mode on a fixed batch, a killed and resumed
mixed run equals an uninterrupted one bit for bit, and 2 torchrun processes match 1.

The model is the tiny one with a small ViT (56 px, 4x4 patches) and a 4x4 latent grid
(64 px), so understanding images stay a few tokens long on the CPU.
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
import yaml

import srum
from helpers_train import write_reward_dataset
from srum.config import ConfigError
from srum.models.bagel.prompts import GENERATION_THINK_PROMPT
from srum.models.bagel.tiny import load_tiny_spec
from srum.models.bagel.tokenizer import encode_text
from srum.rewards.raster import RewardMapConfig
from srum.training.checkpointing import read_checkpoint_tensors
from srum.training.config import FreezeConfig, load_train_config
from srum.training.layout import PackPaths, layout_pack, to_packed_batch
from srum.training.samples import build_training_dataset

REPO = Path(__file__).resolve().parents[1]
IMAGES = {"a": (48, 32), "b": (64, 64), "c": (40, 72)}
ROWS = [
    {"mode": "vqa", "id": "q1", "image": ["img/a.png", "img/c.png"], "question": "What is left of the cube?",
     "answer": "A red ball.", "system": "Answer briefly."},
    {"mode": "cot", "id": "c1", "prompt": "a red cube", "plan": "<think> one red cube in the middle </think>",
     "image": "img/a.png"},
    {"mode": "t2i", "id": "t1", "prompt": "two cats", "image": "img/b.png"},
    {"mode": "vqa", "id": "q2", "image": "img/b.png", "question": "Is there a cat?", "answer": "Yes"},
    {"mode": "cot", "id": "c2", "prompt": "a blue ball", "plan": "a ball, blue, centered", "image": "img/c.png",
     "system": "Plan first."},
    {"mode": "t2i", "id": "t2", "prompt": "a house", "image": "img/c.png"},
]
VIT_PATCH_DIM = 3 * 14 * 14


def _write_rows(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def small_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("small-bagel")
    spec = load_tiny_spec()
    spec["vit"]["image_size"] = 56
    spec["vit_max_patches_per_side"] = 4
    spec["max_latent_size"] = 4
    (root / "spec.yaml").write_text(yaml.safe_dump(spec))
    return srum.write_tiny_checkpoint(root / "model", seed=0, config_path=root / "spec.yaml")


@pytest.fixture(scope="module")
def small_model(small_dir):
    return srum.load_model(small_dir, dtype=torch.float32, device="cpu")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("modes-data")
    (root / "img").mkdir()
    rng = np.random.default_rng(0)
    for name, (w, h) in IMAGES.items():
        PIL.Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / "img" / f"{name}.png")
    _write_rows(root / "rows.jsonl", ROWS)
    write_reward_dataset(root / "rewards", [(32, 48), (64, 64), (48, 32), (64, 64)])
    return root


def _build(model, rewards, samples, **overrides):
    cfg = model.config
    kwargs = dict(max_image_size=64, min_image_size=32, image_stride=16, latent_downsample=16,
                  max_latent_size=cfg.max_latent_size, latent_dim=cfg.patch_latent_dim, max_num_tokens_per_sample=500,
                  oversize="error", rewards_enabled=True, map_config=RewardMapConfig(), missing_global="skip",
                  text_dropout_prob=0.0, timestep_shift=1.0, seed=3)
    kwargs.update(overrides)
    return build_training_dataset([str(f) for f in rewards], [str(f) for f in samples], model.tokenizer,
                                  model.special_tokens, cfg, **kwargs)


def _enc(model, text):
    return encode_text(model.tokenizer, model.special_tokens, text)


def _image(data_dir, name):
    return PIL.Image.open(data_dir / "img" / f"{name}.png").convert("RGB")


def _forward(model, samples, paths=None, seed=5):
    cfg = model.config
    x = layout_pack(samples, model.special_tokens, cfg.latent_downsample, cfg.max_latent_size, paths)
    lat = torch.randn(x.latent_index.numel(), cfg.patch_latent_dim, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        out = model(to_packed_batch(x, lat if len(lat) else None, torch.device("cpu")))
    return x, lat, out


def _spans(lengths):
    """Slices of consecutive chunks of the given lengths (rows laid out sample by sample)."""
    out, start = [], 0
    for n in lengths:
        out.append(slice(start, start + n))
        start += n
    return out


def _teacher_forced_logits(model, cache, ids):
    """Feed ids one at a time as ``_decode`` does (commit each) -> logits [len(ids), V]."""
    rows = []
    with torch.no_grad():
        for tok in ids:
            hidden = model._forward_rows(cache, model.embed_text(torch.tensor([tok])), torch.tensor([1]), causal=True,
                                         single_position=False, commit=True)
            rows.append(model.language_model.lm_head(hidden).float())
    return torch.cat(rows)


def _velocity_from_cache(model, cache, sample, lat):
    h, w = sample.grid
    ds = model.config.latent_downsample
    st = model.special_tokens
    with torch.no_grad():
        frame = model.embed_text(torch.tensor([st.vision_start, st.vision_end]))
        return model._latent_velocity(cache, lat[None], sample.timestep, model.latent_position_ids(h * ds, w * ds),
                                      frame)[0]


# --------------------------------------------------------------------------- layouts vs inference

def test_vqa_layout_matches_inference(small_model, data_dir):
    """Every answer position's next-token logits of the packed training forward equal
    inference's (system prompt + two images, and no system via choice_probabilities),
    with other samples and padding in the same pack."""
    model = small_model
    ds, report = _build(model, [], [data_dir / "rows.jsonl"])
    assert report.kept == 6 and report.kept_by_mode == {"vqa": 2, "cot": 2, "t2i": 2}
    samples = [ds.load(i, 0) for i in range(len(ds))]
    q1, q2 = samples[0], samples[3]
    x, _, out = _forward(model, samples, ds.pack_paths(VIT_PATCH_DIM))
    assert x.num_vit_images == 3 and not x.has_dummy
    # labels are laid out per sample: q1's answer, c1's plan, q2's answer, c2's plan
    ans1, ans2 = _enc(model, ROWS[0]["answer"]), _enc(model, ROWS[3]["answer"])
    plan1, plan2 = _enc(model, ROWS[1]["plan"]), _enc(model, ROWS[4]["plan"])
    spans = _spans([len(ans1) - 1, len(plan1) - 1, len(ans2) - 1, len(plan2) - 1])
    assert x.labels[spans[0]].tolist() == ans1[1:] and x.labels[spans[2]].tolist() == ans2[1:]
    assert x.num_ce_tokens == sum(len(t) - 1 for t in (ans1, ans2, plan1, plan2))

    # q1: [system][image a][image c][question][answer], as understand(think=True, system)
    images = [_image(data_dir, "a"), _image(data_dir, "c")]
    with torch.no_grad():
        cache = model._understanding_cache([images], [ROWS[0]["question"]], True, ROWS[0]["system"], len(ans1) + 2)
    expected = _teacher_forced_logits(model, cache, ans1[:-1])
    torch.testing.assert_close(out["logits"][spans[0]], expected, atol=2e-5, rtol=1e-4)
    # positions: system 0..n-1, each image one position, then the question and the answer
    n_sys = len(_enc(model, ROWS[0]["system"]))
    n_q = len(_enc(model, ROWS[0]["question"]))
    seg = x.split_lens[0]
    pos = x.position_ids[:sum(seg)].tolist()
    assert pos[:n_sys] == list(range(n_sys))
    assert set(pos[n_sys:n_sys + seg[1]]) == {n_sys} and set(pos[n_sys + seg[1]:n_sys + seg[1] + seg[2]]) == {n_sys + 1}
    assert pos[-len(ans1):] == list(range(n_sys + 2 + n_q, n_sys + 2 + n_q + len(ans1)))

    # q2 (no system): the public scoring API reads the same first-answer distribution
    first = torch.log_softmax(out["logits"][spans[2]][0], dim=-1)
    choices = [["Yes", "yes"], ["No", "no"], ["A"]]
    with torch.no_grad():
        probs, mass = model.choice_probabilities(_image(data_dir, "b"), ROWS[3]["question"], choices)
    ids = [sorted({model.tokenizer.encode(s, add_special_tokens=False)[0] for s in c}) for c in choices]
    per_choice = torch.stack([torch.logsumexp(first[i], dim=-1) for i in ids])
    torch.testing.assert_close(probs[0], torch.softmax(per_choice, -1), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(mass[0], per_choice.logsumexp(-1).exp(), atol=1e-5, rtol=1e-4)
    with torch.no_grad():
        cache = model._understanding_cache([[_image(data_dir, "b")]], [ROWS[3]["question"]], False, None, 8)
    torch.testing.assert_close(out["logits"][spans[2]], _teacher_forced_logits(model, cache, ans2[:-1]),
                               atol=2e-5, rtol=1e-4)


def test_cot_layout_matches_inference(small_model, data_dir):
    """cot: the plan's logits equal think-mode decoding after [system][prompt]; the image's
    velocity equals inference's with the plan re-read as its own segment; a dropped sample
    equals the text-unconditional branch [system][image]. t2i: [prompt][image]."""
    model = small_model
    ds, _ = _build(model, [], [data_dir / "rows.jsonl"])
    samples = [ds.load(i, 0) for i in range(len(ds))]
    c1, t1, c2 = samples[1], samples[2], samples[4]
    x, lat, out = _forward(model, [c1, t1, c2])
    assert x.split_lens[0][:3] == [len(_enc(model, GENERATION_THINK_PROMPT)), len(_enc(model, ROWS[1]["prompt"])),
                                   len(_enc(model, ROWS[1]["plan"]))]
    assert x.attn_modes == [["causal"] * 3 + ["noise"], ["causal", "noise"], ["causal"] * 3 + ["noise"]]
    # the constraint term is for reward records only
    assert x.constraint_weights is not None and not x.constraint_weights.any()
    lat_spans = _spans([c1.num_latent_tokens, t1.num_latent_tokens, c2.num_latent_tokens])
    plan1, plan2 = _enc(model, ROWS[1]["plan"]), _enc(model, ROWS[4]["plan"])
    ce_spans = _spans([len(plan1) - 1, len(plan2) - 1])

    for sample, row, lat_span, ce_span, plan in ((c1, ROWS[1], lat_spans[0], ce_spans[0], plan1),
                                                 (c2, ROWS[4], lat_spans[2], ce_spans[1], plan2)):
        system = row.get("system") or GENERATION_THINK_PROMPT
        cache = model.new_cache(1, 256)
        with torch.no_grad():
            model._prefill_text(cache, [system])
            model._prefill_text(cache, [row["prompt"]])
            saved = cache.lengths.clone(), cache.next_pos.clone()
            plan_logits = _teacher_forced_logits(model, cache, plan[:-1])  # the think decode, from its bos
            cache.lengths.copy_(saved[0])
            cache.next_pos.copy_(saved[1])
            model._prefill_text(cache, [row["plan"]])
        torch.testing.assert_close(out["logits"][ce_span], plan_logits, atol=2e-5, rtol=1e-4)
        torch.testing.assert_close(out["velocity"][lat_span], _velocity_from_cache(model, cache, sample, lat[lat_span]),
                                   atol=2e-5, rtol=1e-4)

    cache = model.new_cache(1, 64)
    with torch.no_grad():
        model._prefill_text(cache, [ROWS[2]["prompt"]])
    torch.testing.assert_close(out["velocity"][lat_spans[1]], _velocity_from_cache(model, cache, t1, lat[lat_spans[1]]),
                               atol=2e-5, rtol=1e-4)

    # text dropout: cot keeps its system prompt only; t2i keeps nothing
    dropped_ds, _ = _build(model, [], [data_dir / "rows.jsonl"], text_dropout_prob=0.9999)
    d1, dt = dropped_ds.load(1, 0), dropped_ds.load(2, 0)
    assert d1.text_dropped and dt.text_dropped
    x, lat, out = _forward(model, [d1, dt], seed=7)
    assert x.split_lens[0] == [len(_enc(model, GENERATION_THINK_PROMPT)), d1.num_latent_tokens + 2]
    assert x.labels is None and x.split_lens[1] == [dt.num_latent_tokens + 2]
    n1 = d1.num_latent_tokens
    cache = model.new_cache(1, 128)
    with torch.no_grad():
        model._prefill_text(cache, [GENERATION_THINK_PROMPT])
    torch.testing.assert_close(out["velocity"][:n1], _velocity_from_cache(model, cache, d1, lat[:n1]),
                               atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(out["velocity"][n1:], _velocity_from_cache(model, model.new_cache(1, 32), dt, lat[n1:]),
                               atol=2e-5, rtol=1e-4)


def test_padding_sample_changes_nothing_real(small_model, data_dir):
    """A pack lacking a path the dataset uses gets a zero-weight dummy; the real samples'
    outputs are unchanged and the dummy adds no loss token."""
    model = small_model
    ds, _ = _build(model, [], [data_dir / "rows.jsonl"])
    q2, t1 = ds.load(3, 0), ds.load(2, 0)
    paths = PackPaths(latent=True, vit_patch_dim=VIT_PATCH_DIM, text_loss=True)
    plain, _, out_plain = _forward(model, [q2])
    padded, _, out_padded = _forward(model, [q2], paths)
    assert padded.has_dummy and padded.num_latent_tokens == 0 and padded.dummy_latent_tokens == 1
    assert padded.num_ce_tokens == plain.num_ce_tokens and padded.label_weights.tolist() == [1.0, 1.0]
    n = plain.labels.numel()
    torch.testing.assert_close(out_padded["logits"][:n], out_plain["logits"], atol=1e-5, rtol=1e-5)
    assert padded.constraint_weights.tolist() == [0.0] and padded.weights.tolist() == [0.0]
    # an image-only pack gets a ViT patch and a text-loss token of weight 0
    t_pad, _, out = _forward(model, [t1], paths)
    assert t_pad.num_vit_images == 1 and t_pad.num_ce_tokens == 0 and t_pad.label_weights.tolist() == [0.0]
    assert t_pad.dummy_latent_tokens == 0 and out["logits"].shape[0] == 1


# --------------------------------------------------------------------------- rows, config, freezing

def test_rows_are_validated_counted_and_reported(small_model, data_dir, tmp_path):
    model = small_model
    shutil.copytree(data_dir / "img", tmp_path / "img")
    bad = _write_rows(tmp_path / "rows.jsonl", [
        ROWS[2],
        "not json",
        {"mode": "edit", "id": "x", "image": "img/a.png"},
        {"mode": "vqa", "id": "x2", "image": "img/a.png", "question": "q"},
        {"mode": "cot", "id": "x3", "prompt": "p", "plan": "p", "image": "img/a.png", "sytem": "s"},
        {"mode": "t2i", "id": "x4", "prompt": "", "image": "img/a.png"},
        {"mode": "t2i", "id": "x5", "prompt": "p", "image": ["img/a.png"]},
        {"mode": "vqa", "id": "x6", "image": [], "question": "q", "answer": "a"},
        ROWS[2],                                                      # duplicate id
        {"mode": "t2i", "id": "sample_000_0", "prompt": "p", "image": "img/a.png"},  # a reward record's id
        {"mode": "vqa", "id": "x7", "image": ["img/a.png", str(data_dir / "img" / "b.png")], "question": "q",
         "answer": "a b", "meta": {"source": "anything"}},
    ])
    ds, report = _build(model, [data_dir / "rewards" / "rewards.jsonl"], [bad])
    where = str(bad)
    assert [m.split(": ", 1)[0] for m in report.bad_lines] == [f"{where}:{i}" for i in (2, 3, 4, 5, 6, 7, 8)]
    assert "invalid JSON" in report.bad_lines[0] and "'mode' must be one of t2i, vqa, cot" in report.bad_lines[1]
    assert "needs field 'answer'" in report.bad_lines[2] and "unknown field(s) 'sytem'" in report.bad_lines[3]
    assert "non-empty string" in report.bad_lines[4] and "must be a path" in report.bad_lines[5]
    assert "empty list" in report.bad_lines[6]
    assert len(report.skipped_duplicate) == 2 and f"{where}:9: id 't1' already read from {where}:1" \
        in report.skipped_duplicate[0]
    assert report.kept == 4 + 2 and report.kept_by_mode == {"reward": 4, "t2i": 1, "vqa": 1}
    assert report.records_read == 4 + 11 and "(kept: 4 reward, 1 t2i, 1 vqa)" in report.summary()
    # index order: reward records, then rows; token counts cover every segment
    assert [info.mode for info in ds.infos] == ["reward"] * 4 + ["t2i", "vqa"]
    vqa = ds.infos[5]
    assert vqa.vit_patches == [12, 16]  # 48x32 -> 56x42 (4x3 patches); 64x64 -> 56x56 (4x4)
    assert vqa.num_tokens == 14 + 18 + len(_enc(model, "q")) + len(_enc(model, "a b"))
    assert vqa.record["image_paths"][0] == str(tmp_path / "img" / "a.png")  # relative to the JSONL
    sample = ds.load(5, 0)
    assert [type(s).__name__ for s in sample.context] == ["VitSegment", "VitSegment", "TextSegment", "TextSegment"]
    assert sample.context[0].patches.shape == (12, VIT_PATCH_DIM) and sample.context[-1].loss
    t2i = ds.load(4, 0)
    assert torch.equal(t2i.weights, torch.ones(16)) and t2i.reward_stats == {} and t2i.mode == "t2i"

    cot = _build(model, [], [data_dir / "rows.jsonl"])[0].infos[1]
    assert cot.num_tokens == (len(_enc(model, GENERATION_THINK_PROMPT)) + len(_enc(model, ROWS[1]["prompt"]))
                              + len(_enc(model, ROWS[1]["plan"])) + 2 * 3 + 2)
    _write_rows(tmp_path / "missing.jsonl", [{"mode": "t2i", "id": "m", "prompt": "p", "image": "img/none.png"}])
    with pytest.raises(ValueError, match=r"missing.jsonl:1: cannot open the image .*none.png of row 'm'"):
        _build(model, [], [tmp_path / "missing.jsonl"])
    with pytest.raises(ValueError, match=r"rows.jsonl:1: row 'q1' needs \d+ tokens, more than"):
        _build(model, [], [data_dir / "rows.jsonl"], max_num_tokens_per_sample=40)
    with pytest.raises(FileNotFoundError, match="samples file not found"):
        _build(model, [], [tmp_path / "nope.jsonl"])


def test_config_data_sources_and_loss_weights(data_dir):
    base = REPO / "configs/train/tiny.yaml"
    with pytest.raises(ConfigError, match="data.rewards .*and/or data.samples"):
        load_train_config(base, ["data.rewards=[]"])
    cfg = load_train_config(base, ["data.rewards=[]", f"data.samples=[{data_dir / 'rows.jsonl'}]"])
    assert cfg.lambda_c == 0.0 and cfg.loss.ce_weight == 1.0 and cfg.loss.mse_weight == 1.0 and cfg.trains_lm_head
    mixed = load_train_config(base, [f"data.samples=[{data_dir / 'rows.jsonl'}]"])
    assert mixed.lambda_c == 0.5 and mixed.data.rewards
    assert not load_train_config(base).trains_lm_head
    assert not load_train_config(base, [f"data.samples=[{data_dir / 'rows.jsonl'}]", "freeze.und_expert=true"]
                                 ).trains_lm_head
    with pytest.raises(ConfigError, match="ce_weight"):
        load_train_config(base, ["loss.ce_weight=-1"])


def test_lm_head_trains_only_with_text_loss(small_dir):
    from srum.models.bagel.checkpoint import WeightFiles, find_weights, read_config
    from srum.models.bagel.model import Bagel
    from srum.training.parallel import freeze
    config = read_config(small_dir, WeightFiles.open(find_weights(small_dir)),
                         WeightFiles.open(small_dir / "ae.safetensors"))
    with torch.device("meta"):
        model = Bagel(config)
    del model.vae
    head = "language_model.lm_head.weight"
    assert head not in freeze(model, FreezeConfig())
    names = set(freeze(model, FreezeConfig(vit=False), train_lm_head=True))
    assert head in names and "language_model.model.embed_tokens.weight" in names
    assert "vit_model.vision_model.embeddings.patch_embedding.weight" in names and "connector.fc1.weight" in names
    assert head not in freeze(model, FreezeConfig(und_expert=True), train_lm_head=True)
    assert head not in freeze(model, FreezeConfig(llm=True), train_lm_head=True)


# --------------------------------------------------------------------------- the trainer end to end

def _env() -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))


def _launch(nproc, overrides):
    module = ["-m", "srum.training.main", "--config", str(REPO / "configs/train/tiny.yaml"), *overrides]
    cmd = [sys.executable, *module] if nproc is None else \
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *module]
    return subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)


def _steps(out: Path) -> dict[int, dict]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r for r in rows if "step" in r}


def _common(out, model_dir, rows, rewards=None, steps=4):
    return [f"output_dir={out}", f"model.path={model_dir}", f"data.rewards=[{rewards or ''}]",
            f"data.samples=[{rows}]", "data.text_dropout_prob=0.0", "data.resample_noise_each_epoch=false",
            f"train.total_steps={steps}", "optim.lr=2.0e-3", "optim.warmup_steps=1", "ema.enabled=true",
            "ema.decay=0.5", "logging.progress_bar=false", "logging.tensorboard=false"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, small_dir, data_dir):
    root = tmp_path_factory.mktemp("modes-train")
    per_mode = {}
    for mode in ("t2i", "vqa", "cot"):
        rows = _write_rows(root / f"{mode}.jsonl", [r for r in ROWS if r["mode"] == mode])
        shutil.copytree(data_dir / "img", root / "img", dirs_exist_ok=True)  # relative paths: next to the JSONL
        # one pack holds the whole (fixed) batch: every step sees the same samples and draws
        per_mode[mode] = _launch(None, _common(root / mode, small_dir, rows, steps=5) + [
            "data.expected_num_tokens=512", "data.max_num_tokens=512", "data.max_num_tokens_per_sample=512",
            "checkpoint.every_steps=0"])
    # mixed: reward records + every mode, one sample per pack, 4 packs per step
    mixed = _common(root / "M2", small_dir, data_dir / "rows.jsonl", data_dir / "rewards" / "rewards.jsonl") + [
        "data.expected_num_tokens=1", "data.max_num_tokens=256", "data.max_num_tokens_per_sample=256",
        "freeze.vit=false", "checkpoint.every_steps=2", "checkpoint.keep_last=3"]
    result = {"M2": _launch(2, mixed + ["train.grad_accum=2"])}
    kill = [o.replace(str(root / "M2"), str(root / "K")) for o in mixed] + ["train.grad_accum=2"]
    result["K1"] = _launch(2, kill + ["debug.exit_after_step=2"])
    result["K2"] = _launch(2, kill)
    result["M1"] = _launch(None, [o.replace(str(root / "M2"), str(root / "M1")) for o in mixed]
                           + ["train.grad_accum=4"])
    return {"root": root, "per_mode": per_mode, "result": result, "base": small_dir}


def test_each_mode_learns_a_fixed_batch(runs):
    root, base = runs["root"], runs["base"]
    for mode, proc in runs["per_mode"].items():
        assert proc.returncode == 0, f"{mode}: {proc.stderr[-3000:]}"
        m = _steps(root / mode)
        assert sorted(m) == [1, 2, 3, 4, 5]
        assert m[5]["loss"] < m[2]["loss"] < m[1]["loss"], (mode, [m[s]["loss"] for s in m])
        assert m[1][f"samples_{mode}"] == 2 and m[1]["samples"] == 2
    vqa, cot, t2i = (_steps(root / m)[1] for m in ("vqa", "cot", "t2i"))
    assert vqa["latent_tokens"] == 0 and "mse" not in vqa and vqa["ce_tokens"] > 0
    assert vqa["loss"] == pytest.approx(vqa["ce"])
    assert cot["ce_tokens"] > 0 and cot["latent_tokens"] == 6 + 8 and cot["constraint_term"] == 0.0
    assert cot["loss"] == pytest.approx(cot["mse"] + cot["ce"])
    assert t2i["ce_tokens"] == 0 and "ce" not in t2i and t2i["loss"] == pytest.approx(t2i["mse"])
    # frozen ViT (the default) with vqa samples: the ViT stays, the text path and lm_head train
    start = srum.load_model(base, dtype=torch.float32, device="cpu").state_dict()
    end = read_checkpoint_tensors(root / "vqa" / "checkpoints" / "step-000005")
    vit = "vit_model.vision_model.encoder.layers.0.mlp.fc1.weight"
    assert torch.equal(end[vit], start[vit]) and torch.equal(end["connector.fc1.weight"], start["connector.fc1.weight"])
    for key in ("language_model.lm_head.weight", "language_model.model.embed_tokens.weight",
                "language_model.model.layers.1.mlp.down_proj.weight"):
        assert not torch.equal(end[key], start[key]), key
    gen = "language_model.model.layers.0.mlp_moe_gen.up_proj.weight"  # no image: the gen expert is untouched
    assert torch.equal(end[gen], start[gen])


def test_mixed_modes_on_two_ranks_resume_and_world_size(runs):
    root, result = runs["root"], runs["result"]
    assert result["M2"].returncode == 0, result["M2"].stderr[-3000:]
    m = _steps(root / "M2")
    assert sorted(m) == [1, 2, 3, 4]
    # 10 rows (4 reward records, 2 of each mode) in 16 packs of one sample: 1.6 epochs
    assert sum(m[s]["samples"] for s in m) == 16
    assert all(sum(m[s][f"samples_{k}"] for s in m) >= 2 for k in ("t2i", "vqa", "cot"))
    assert any(m[s]["ce_tokens"] for s in m) and all(m[s]["loss"] > 0 for s in m)
    start = srum.load_model(runs["base"], dtype=torch.float32, device="cpu").state_dict()
    straight = read_checkpoint_tensors(root / "M2" / "checkpoints" / "step-000004")
    for key in ("vit_model.vision_model.encoder.layers.0.mlp.fc1.weight", "connector.fc1.weight",
                "language_model.lm_head.weight", "vae2llm.weight"):
        assert not torch.equal(straight[key], start[key]), key  # freeze.vit=false trains ViT + connector

    # killed after step 2, resumed: bit-identical weights and EMA
    assert result["K1"].returncode != 0 and result["K2"].returncode == 0, result["K2"].stderr[-3000:]
    assert "resumed from" in result["K2"].stderr
    resumed = read_checkpoint_tensors(root / "K" / "checkpoints" / "step-000004")
    assert resumed.keys() == straight.keys()
    assert all(torch.equal(resumed[k], straight[k]) for k in straight)
    ema_a = read_checkpoint_tensors(root / "M2" / "checkpoints" / "step-000004", "ema")
    ema_b = read_checkpoint_tensors(root / "K" / "checkpoints" / "step-000004", "ema")
    assert all(torch.equal(ema_a[k], ema_b[k]) for k in ema_a)
    assert [_steps(root / "K")[s]["loss"] for s in (3, 4)] == [m[s]["loss"] for s in (3, 4)]

    # one process with 4 micro-batches per step sees the same packs: same weights
    assert result["M1"].returncode == 0, result["M1"].stderr[-3000:]
    single = read_checkpoint_tensors(root / "M1" / "checkpoints" / "step-000004")
    for k in straight:
        if k.startswith("vit_model.") and k.endswith("self_attn.k_proj.bias"):
            # softmax ignores a key bias (it adds q.b to a whole row): its gradient is 0 up to
            # rounding, and AdamW scales that rounding noise to lr-sized steps of either sign
            continue
        torch.testing.assert_close(single[k], straight[k], atol=1e-5, rtol=1e-4, msg=k)
    m1 = _steps(root / "M1")
    for s in m:
        assert m1[s]["loss"] == pytest.approx(m[s]["loss"], rel=1e-5)
        assert m1[s]["ce_tokens"] == m[s]["ce_tokens"] and m1[s]["latent_tokens"] == m[s]["latent_tokens"]
