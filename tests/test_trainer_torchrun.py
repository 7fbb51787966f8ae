# SPDX-License-Identifier: Apache-2.0
"""The trainer end to end: real torchrun, 2 CPU processes (gloo, FSDP2), the tiny model.

A few runs are made once per module and shared by the asserts:

* A: 2 ranks x 2 micro-batches, 4 steps straight (step 3 gets a NaN loss injected);
* B: the same, hard-exited after step 2 (a kill), then resumed to step 4 with hybrid
  sharding (2 replicas of 1 shard: HSDP, and a different device mesh for DCP to reshard to);
* C: A's step-2 checkpoint resumed on ONE process with 4 micro-batches per step;
* D: one process, NaN twice in a row with max_consecutive_nonfinite=2;
* E: as C, with every decoder layer under torch.compile (aot_eager backend: dynamo and
  AOT autograd through activation checkpointing and FSDP2, without a C++ build).

Every step sees the same 4 samples with the same noise (one epoch per step, no noise
resampling), so the loss must fall and all three routes to step 4 must agree.
"""
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import srum
from helpers_train import write_reward_dataset
from srum.config import ConfigError
from srum.export.checkpoint import export_checkpoint
from srum.training.checkpointing import LATEST, latest_checkpoint, read_checkpoint_tensors, remove_stale
from srum.training.config import OptimConfig, load_train_config
from srum.training.metrics import peak_flops
from srum.training.trainer import lr_at

REPO = Path(__file__).resolve().parents[1]
SIZES = [(32, 48), (64, 64), (48, 32), (64, 64)]


def _common(out: Path, model_dir: Path, rewards: Path) -> list[str]:
    return [f"output_dir={out}", f"model.path={model_dir}", f"data.rewards=[{rewards}]",
            "data.expected_num_tokens=1", "data.max_num_tokens=64", "data.max_num_tokens_per_sample=64",
            "data.text_dropout_prob=0.0", "data.resample_noise_each_epoch=false", "train.total_steps=4",
            "optim.lr=1.0e-3", "optim.warmup_steps=2", "checkpoint.every_steps=2", "checkpoint.keep_last=3",
            "ema.enabled=true", "ema.decay=0.5", "debug.nonfinite_steps=[3]", "logging.progress_bar=false"]


def _env() -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))


def _launch(nproc: int | None, overrides: list[str]) -> subprocess.CompletedProcess:
    """nproc None: a plain single process (no torchrun)."""
    module = ["-m", "srum.training.main", "--config", str(REPO / "configs/train/tiny.yaml"), *overrides]
    if nproc is None:
        cmd = [sys.executable, *module]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *module]
    return subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)


def _metrics(out: Path) -> tuple[dict[int, dict], list[str]]:
    steps, events = {}, []
    for line in (out / "metrics.jsonl").read_text().splitlines():
        obj = json.loads(line)
        if "event" in obj:
            events.append(obj["event"])
        else:
            steps.setdefault(obj["step"], []).append(obj)
    return steps, events


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_dir):
    root = tmp_path_factory.mktemp("train")
    rewards = write_reward_dataset(root / "data", SIZES)
    out = {k: root / k for k in "ABCDE"}
    result = {"A": _launch(2, _common(out["A"], tiny_dir, rewards) + ["train.grad_accum=2"])}
    assert result["A"].returncode == 0, result["A"].stderr[-3000:]
    result["B1"] = _launch(2, _common(out["B"], tiny_dir, rewards) + ["train.grad_accum=2", "debug.exit_after_step=2"])
    result["B2"] = _launch(2, _common(out["B"], tiny_dir, rewards) + [
        "train.grad_accum=2", "parallel.sharding=hybrid", "parallel.shard_size=1"])
    for name in "CE":
        (out[name] / "checkpoints").mkdir(parents=True)
        shutil.copytree(out["A"] / "checkpoints" / "step-000002", out[name] / "checkpoints" / "step-000002")
        (out[name] / "checkpoints" / LATEST).write_text("step-000002\n")
    result["C"] = _launch(None, _common(out["C"], tiny_dir, rewards) + ["train.grad_accum=4"])
    result["E"] = _launch(None, _common(out["E"], tiny_dir, rewards) + [
        "train.grad_accum=4", "parallel.compile=true", "parallel.compile_backend=aot_eager"])
    result["D"] = _launch(None, _common(out["D"], tiny_dir, rewards) + [
        "debug.nonfinite_steps=[1,2]", "train.max_consecutive_nonfinite=2"])
    return {"out": out, "result": result, "rewards": rewards, "tiny_dir": tiny_dir}


def test_straight_run_learns_logs_and_checkpoints(runs):
    out = runs["out"]["A"]
    steps, events = _metrics(out)
    assert sorted(steps) == [1, 2, 3, 4]
    m = {k: v[0] for k, v in steps.items()}
    assert m[1]["lr"] == pytest.approx(5e-4) and m[2]["lr"] == pytest.approx(1e-3) and m[4]["lr"] == pytest.approx(1e-3)
    assert all(m[s]["latent_tokens"] == 6 + 16 + 6 + 16 and m[s]["samples"] == 4 for s in m)
    # the fixed batch: the loss falls; step 3 was skipped on every rank and counted
    assert m[2]["loss"] < m[1]["loss"] and m[4]["loss"] < m[1]["loss"]
    assert m[3]["skipped"] is True and m[3]["skipped_steps"] == 1 and m[4]["skipped_steps"] == 1
    assert m[3]["loss"] is None and m[3]["grad_norm"] is None  # non-finite values are written as null
    assert m[3]["constraint_term"] == m[4]["constraint_term"]  # the skipped step left the weights alone
    assert not m[1]["skipped"] and math.isfinite(m[1]["grad_norm"]) and m[1]["grad_norm"] > 0
    assert any("step 3: non-finite loss or gradient, step skipped" in e for e in events)
    # reward statistics: official map weights in [0, 1], alpha = (g + 1) / 2 of g in 0.2 .. 0.5
    assert 0 <= m[1]["weight_min"] <= m[1]["weight_mean"] <= m[1]["weight_max"] <= 1
    assert m[1]["alpha_mean"] == pytest.approx((0.6 + 0.65 + 0.7 + 0.75) / 4)
    assert m[1]["constraint_term"] > 0 and m[1]["tokens_per_s"] > 0
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert json.loads((out / "data_report.json").read_text())["kept"] == 4

    ckpts = out / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == [LATEST, "step-000002", "step-000004"]
    assert (ckpts / LATEST).read_text().strip() == "step-000004"
    state = json.loads((ckpts / "step-000004" / "trainer_state.json").read_text())
    assert state["step"] == 4 and state["world_size"] == 2
    assert state["data_position"] == {"epoch": 4, "offset": 0}  # 4 samples per step, one epoch each
    assert state["counters"]["skipped_steps"] == 1 and state["counters"]["samples_seen"] == 16
    assert "lambda_c: null" in (ckpts / "step-000004" / "config.yaml").read_text()
    # training moved the trainable weights, and the EMA lags behind them
    two, four = read_checkpoint_tensors(ckpts / "step-000002"), read_checkpoint_tensors(ckpts / "step-000004")
    key = "language_model.model.layers.0.mlp_moe_gen.up_proj.weight"
    assert not torch.equal(two[key], four[key])
    assert torch.equal(two["vit_model.vision_model.encoder.layers.0.mlp.fc1.weight"],
                       four["vit_model.vision_model.encoder.layers.0.mlp.fc1.weight"])  # frozen
    ema = read_checkpoint_tensors(ckpts / "step-000004", "ema")
    assert key in ema and "vit_model.vision_model.encoder.layers.0.mlp.fc1.weight" not in ema
    assert not torch.equal(ema[key], four[key])


def test_kill_and_resume_equals_straight_run(runs):
    b1, b2 = runs["result"]["B1"], runs["result"]["B2"]
    assert b1.returncode != 0
    assert b2.returncode == 0, b2.stderr[-3000:]
    out = runs["out"]["B"]
    steps, events = _metrics(out)
    assert sorted(steps) == [1, 2, 3, 4] and all(len(v) == 1 for v in steps.values())  # nothing repeated
    assert "resumed from" in b2.stderr and "step 2" in b2.stderr and "hybrid shard" in b2.stderr
    straight = read_checkpoint_tensors(runs["out"]["A"] / "checkpoints" / "step-000004")
    resumed = read_checkpoint_tensors(out / "checkpoints" / "step-000004")
    assert straight.keys() == resumed.keys()
    for k in straight:
        torch.testing.assert_close(resumed[k], straight[k], atol=1e-6, rtol=1e-5, msg=k)
    ema_a = read_checkpoint_tensors(runs["out"]["A"] / "checkpoints" / "step-000004", "ema")
    ema_b = read_checkpoint_tensors(out / "checkpoints" / "step-000004", "ema")
    for k in ema_a:
        torch.testing.assert_close(ema_b[k], ema_a[k], atol=1e-6, rtol=1e-5, msg=k)


def test_resume_on_a_different_world_size(runs):
    c = runs["result"]["C"]
    assert c.returncode == 0, c.stderr[-3000:]
    out = runs["out"]["C"]
    assert "saved on 2 rank(s), now 1" in c.stderr
    steps, _ = _metrics(out)
    assert sorted(steps) == [3, 4]
    straight = read_checkpoint_tensors(runs["out"]["A"] / "checkpoints" / "step-000004")
    resumed = read_checkpoint_tensors(out / "checkpoints" / "step-000004")
    for k in straight:
        torch.testing.assert_close(resumed[k], straight[k], atol=1e-5, rtol=1e-4, msg=k)
    assert json.loads((out / "checkpoints" / "step-000004" / "trainer_state.json").read_text())["world_size"] == 1


def test_compiled_layers_train_like_eager(runs):
    e = runs["result"]["E"]
    assert e.returncode == 0, e.stderr[-3000:]
    assert "compiled 2 decoder layers (aot_eager)" in e.stderr
    eager = read_checkpoint_tensors(runs["out"]["C"] / "checkpoints" / "step-000004")
    compiled = read_checkpoint_tensors(runs["out"]["E"] / "checkpoints" / "step-000004")
    assert eager.keys() == compiled.keys()  # Module.compile keeps the parameter names
    for k in eager:
        torch.testing.assert_close(compiled[k], eager[k], atol=1e-5, rtol=1e-4, msg=k)
    steps_c, _ = _metrics(runs["out"]["C"])
    steps_e, _ = _metrics(runs["out"]["E"])
    assert steps_e[3][0]["skipped"] and steps_c[3][0]["skipped"]  # the injected NaN
    assert steps_e[4][0]["loss"] == pytest.approx(steps_c[4][0]["loss"], rel=1e-4)


def test_too_many_nonfinite_steps_stop_the_run(runs):
    d = runs["result"]["D"]
    assert d.returncode == 1
    assert "2 consecutive steps had a non-finite loss or gradient" in d.stderr
    steps, _ = _metrics(runs["out"]["D"])
    assert sorted(steps) == [1, 2] and all(v[0]["skipped"] for v in steps.values())
    assert latest_checkpoint(runs["out"]["D"] / "checkpoints") is None


def test_export_loads_with_load_model(runs, tmp_path):
    """checkpoint -> published layout: trained tensors from the run, frozen ones bit-identical to the base."""
    ckpts, base_dir = runs["out"]["A"] / "checkpoints", runs["tiny_dir"]
    trained = read_checkpoint_tensors(ckpts / "step-000004")
    out = export_checkpoint(runs["out"]["A"], base_dir, tmp_path / "model", weights="model", dtype=torch.float32)
    assert (out / "ema.safetensors").is_file() and (out / "README.md").is_file()
    model = srum.load_model(out, dtype=torch.float32, device="cpu")
    base = srum.load_model(base_dir, dtype=torch.float32, device="cpu")
    state, base_state = model.state_dict(), base.state_dict()
    gen = "language_model.model.layers.1.self_attn.q_proj_moe_gen.weight"
    torch.testing.assert_close(state[gen], trained[gen])
    assert not torch.equal(state[gen], base_state[gen])
    frozen = [k for k in state if k.startswith(("vit_model.", "connector.", "vae.", "language_model.lm_head"))]
    assert frozen and all(torch.equal(state[k], base_state[k]) for k in frozen)
    meta = json.loads((out / "srum_export.json").read_text())
    assert meta["step"] == 4 and meta["weights"] == "model" and meta["tensors_from_base"] > 0
    assert "step | 4" in (out / "README.md").read_text()

    ema_out = export_checkpoint(ckpts / "step-000004", base_dir, tmp_path / "ema", max_shard_bytes=200_000)
    assert (ema_out / "ema.safetensors.index.json").is_file()  # small shards force the sharded layout
    assert json.loads((ema_out / "srum_export.json").read_text())["weights"] == "ema"  # auto: the run kept EMA
    ema_model = srum.load_model(ema_out, dtype=torch.float32, device="cpu")
    ema = read_checkpoint_tensors(ckpts / "step-000004", "ema")
    torch.testing.assert_close(ema_model.state_dict()[gen], ema[gen].to(torch.bfloat16).float())
    vit = "vit_model.vision_model.embeddings.patch_embedding.weight"
    assert torch.equal(ema_model.state_dict()[vit], base_state[vit].to(torch.bfloat16).float())


def test_export_refuses_a_mismatched_base(runs, tmp_path):
    from safetensors.torch import load_file, save_file
    other = tmp_path / "other-base"
    shutil.copytree(runs["tiny_dir"], other)
    weights = load_file(other / "ema.safetensors")
    key = "time_embedder.mlp.0.weight" if "time_embedder.mlp.0.weight" in weights else sorted(weights)[0]
    weights[key] = torch.zeros(weights[key].shape[0] + 1, *weights[key].shape[1:])
    save_file(weights, other / "ema.safetensors")
    with pytest.raises(srum.CheckpointError, match="has shape"):
        export_checkpoint(runs["out"]["A"], other, tmp_path / "out")
    with pytest.raises(ValueError, match="not over the base"):
        export_checkpoint(runs["out"]["A"], runs["tiny_dir"], runs["tiny_dir"])


def test_latest_survives_interrupted_saves(runs, tmp_path):
    root = tmp_path / "checkpoints"
    shutil.copytree(runs["out"]["A"] / "checkpoints", root)
    assert latest_checkpoint(root) == root / "step-000004"
    # a crash during the save of step 6: only the .tmp directory exists, latest unchanged
    (root / "step-000006.tmp").mkdir()
    (root / "step-000006.tmp" / "__0_0.distcp").write_bytes(b"partial")
    assert latest_checkpoint(root) == root / "step-000004"
    assert remove_stale(root) == [root / "step-000006.tmp"] and not (root / "step-000006.tmp").exists()
    # a pointer to something incomplete or missing falls back to the newest complete checkpoint
    (root / "step-000004" / "trainer_state.json").unlink()
    assert latest_checkpoint(root) == root / "step-000002"
    (root / LATEST).write_text("step-000009\n")
    assert latest_checkpoint(root) == root / "step-000002"
    (root / LATEST).unlink()
    assert latest_checkpoint(root) == root / "step-000002"


# --------------------------------------------------------------------------- no torchrun

def test_learning_rate_schedule():
    cfg = OptimConfig(lr=1.0, warmup_steps=4, schedule="constant")
    assert [lr_at(s, cfg, 10) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    cos = OptimConfig(lr=1.0, warmup_steps=2, schedule="cosine", min_lr=0.0)
    assert lr_at(2, cos, 12) == pytest.approx(1.0)
    assert lr_at(7, cos, 12) == pytest.approx(0.5)
    assert lr_at(12, cos, 12) == pytest.approx(0.0)


def test_freeze_switches(tiny_dir):
    from srum.models.bagel.checkpoint import WeightFiles, find_weights, read_config
    from srum.models.bagel.model import Bagel
    from srum.training.config import FreezeConfig
    from srum.training.parallel import freeze
    config = read_config(tiny_dir, WeightFiles.open(find_weights(tiny_dir)), WeightFiles.open(tiny_dir / "ae.safetensors"))
    with torch.device("meta"):
        model = Bagel(config)
    del model.vae
    names = set(freeze(model, FreezeConfig()))
    assert "language_model.model.layers.0.mlp.up_proj.weight" in names          # und expert trains by default
    assert "language_model.model.layers.0.mlp_moe_gen.up_proj.weight" in names
    assert "language_model.lm_head.weight" not in names                         # never gets a gradient
    assert not any(n.startswith(("vit_model.", "connector.")) for n in names)
    und = set(freeze(model, FreezeConfig(und_expert=True)))
    assert "language_model.model.layers.0.mlp.up_proj.weight" not in und
    assert "language_model.model.embed_tokens.weight" not in und and "language_model.model.norm.weight" not in und
    assert "language_model.model.norm_moe_gen.weight" in und and "vae2llm.weight" in und
    heads = set(freeze(model, FreezeConfig(llm=True)))
    assert {n.split(".")[0] for n in heads} == {"time_embedder", "vae2llm", "llm2vae"}
    # patterns freeze single tensors on top of the switches; one matching nothing is an error
    patch = "vit_model.vision_model.embeddings.patch_embedding.*"
    vit = set(freeze(model, FreezeConfig(vit=False, params=[patch])))
    assert "vit_model.vision_model.embeddings.position_embedding.weight" in vit and "connector.fc1.weight" in vit
    assert not any(n.startswith("vit_model.vision_model.embeddings.patch_embedding.") for n in vit)
    assert vit == names | {n for n in vit if n.startswith(("vit_model.", "connector."))}
    with pytest.raises(ValueError, match=r"freeze.params: \['vit_model.patch\*'\] match no parameter"):
        freeze(model, FreezeConfig(vit=False, params=["vit_model.patch*"]))


def test_configs_and_peak_flops():
    tiny = load_train_config(REPO / "configs/train/tiny.yaml")
    assert tiny.lambda_c == 0.5 and tiny.parallel.sharding == "full"
    ref = load_train_config(REPO / "configs/train/bagel7b_compbench.yaml")
    assert (ref.optim.lr, ref.lambda_c, ref.data.expected_num_tokens, ref.data.max_num_tokens) == (2e-5, 0.5, 8192, 9216)
    assert ref.train.total_steps == 309 and ref.ema.decay == 0.9999 and ref.freeze.vit and ref.freeze.vae
    sft = load_train_config(REPO / "configs/train/tiny.yaml", ["rewards.enabled=false"])
    assert sft.lambda_c == 0.0
    with pytest.raises(ConfigError, match="unknown field.*optim.learning_rate"):
        load_train_config(REPO / "configs/train/tiny.yaml", ["optim.learning_rate=1"])
    with pytest.raises(ConfigError, match="max_num_tokens_per_sample"):
        load_train_config(REPO / "configs/train/tiny.yaml", ["data.max_num_tokens_per_sample=1000"])
    assert peak_flops("NVIDIA H100 80GB HBM3") == 989e12 and peak_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert peak_flops("Some CPU") is None


def test_multinode_launcher_needs_its_environment():
    env = {k: v for k, v in os.environ.items() if k not in ("NNODES", "NODE_RANK", "MASTER_ADDR", "NPROC_PER_NODE")}
    res = subprocess.run(["bash", str(REPO / "scripts/train_multinode.sh"), "--config", "x.yaml"], env=env,
                         capture_output=True, text=True)
    assert res.returncode != 0 and "set NNODES" in res.stderr
