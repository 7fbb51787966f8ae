# SPDX-License-Identifier: Apache-2.0
"""The benchmark scripts (scripts/bench/) run and report well-formed numbers, and the
sequential CFG baseline they compare against samples the same images as the batched path.

The five scripts run once each, concurrently, as subprocesses with the smallest settings;
no timing is asserted."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "scripts" / "bench"

SMALLEST = {
    "train_step": ["--tokens", "48", "--image-size", "32", "--prompt-tokens", "4"],
    "sampling": ["--sizes", "32", "--batch-sizes", "1,2", "--steps", "3"],
    "decode": ["--contexts", "8,16", "--new-tokens", "4"],
    "judge": ["--regions", "2", "--max-new-tokens", "4", "--image-size", "32", "--logits-reps", "1"],
    "rasterizer": ["--size", "64", "--regions", "3"],
}

# keys every line of a bench carries, and which of them must be positive numbers
EXPECTED = {
    "train_step": (["seq_tokens", "latent_tokens", "attended_pairs", "step_s", "tokens_per_s", "vae_encode_s",
                    "step_tflop", "achieved_tflops", "peak_rss_gib", "trainable_params_m"], ["mfu", "loss"]),
    "sampling": (["s_per_call", "s_per_image", "s_per_step", "s_per_image_step", "latent_tokens", "cfg_branches",
                  "kv_cache_allocs"], ["kv_cache_grown", "mode", "batch", "size"]),
    "decode": (["s_per_token", "tokens_per_s", "prefill_s", "decode_s", "per_token_vs_first", "context"],
               ["kv_cache_grown"]),
    "judge": (["s_per_image", "llm_tokens_per_image", "llm_forwards_per_image", "vit_patches_per_image", "questions"],
              ["mode", "failed_entries"]),
    "rasterizer": (["s_per_map", "maps_per_s", "grid_h", "grid_w"], ["grid", "shape"]),
}


@pytest.fixture(scope="module")
def bench_runs(tmp_path_factory):
    """Run every bench script once (concurrently); {name: (returncode, stdout, stderr, out_dir)}."""
    out = tmp_path_factory.mktemp("bench")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    procs = {}
    for name, extra in SMALLEST.items():
        cmd = [sys.executable, str(BENCH / f"{name}.py"), "--reps", "1", "--warmup", "0", "--threads", "1",
               "--out", str(out / f"{name}.jsonl"), "--md", str(out / f"{name}.md"), *extra]
        procs[name] = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                       text=True)
    results = {}
    for name, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=300)
        results[name] = (proc.returncode, stdout, stderr, out)
    return results


def _lines(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


@pytest.mark.parametrize("name", list(SMALLEST))
def test_bench_script_reports(bench_runs, name):
    code, stdout, stderr, out = bench_runs[name]
    assert code == 0, f"{name} failed:\n{stderr[-3000:]}"
    rows = _lines(stdout)
    assert rows, f"{name}: no JSON lines on stdout"
    # the --out file holds exactly the printed lines
    assert [json.loads(x) for x in (out / f"{name}.jsonl").read_text().splitlines()] == rows
    positive, present = EXPECTED[name]
    for row in rows:
        assert row["bench"] == name and isinstance(row["case"], str) and row["case"]
        machine = row["machine"]
        assert machine["cpu"] and machine["torch"] == torch.__version__ and machine["usable_cores"] >= 1
        assert machine["torch_threads"] == 1
        for key in positive:
            assert isinstance(row[key], (int, float)) and not isinstance(row[key], bool), (name, key, row[key])
            assert row[key] > 0, (name, key, row[key])
        for key in present:
            assert key in row, (name, key)
    assert len({row["case"] for row in rows}) == len(rows), "case names must be unique"
    table = (out / f"{name}.md").read_text()
    assert table.startswith(f"### {name}") and table.count("\n|") == len(rows) + 2
    assert "| " + rows[0]["case"] + " |" in table


def test_bench_cases_cover_the_comparisons(bench_runs):
    sampling = {r["case"]: r for r in _lines(bench_runs["sampling"][1])}
    assert set(sampling) == {f"32px-b{b}-{m}" for b in (1, 2) for m in ("batched", "sequential", "nocfg")}
    for b in (1, 2):
        batched, sequential = sampling[f"32px-b{b}-batched"], sampling[f"32px-b{b}-sequential"]
        assert batched["speedup_vs_sequential"] == pytest.approx(sequential["s_per_step"] / batched["s_per_step"])
        assert (batched["forwards_per_step"], sequential["forwards_per_step"]) == (1, 2)
        # one KV cache per call, never re-allocated, whatever the CFG scheme
        assert all(sampling[f"32px-b{b}-{m}"]["kv_cache_allocs"] == 1 for m in ("batched", "sequential", "nocfg"))
        assert not any(sampling[f"32px-b{b}-{m}"]["kv_cache_grown"] for m in ("batched", "sequential", "nocfg"))
    assert sampling["32px-b2-batched"]["s_per_image"] == pytest.approx(sampling["32px-b2-batched"]["s_per_call"] / 2)

    decode = _lines(bench_runs["decode"][1])
    assert [r["context"] for r in decode] == [8, 16] and decode[0]["per_token_vs_first"] == 1.0
    assert all(r["new_tokens"] == 4 and not r["kv_cache_grown"] for r in decode)

    judge = {r["case"]: r for r in _lines(bench_runs["judge"][1])}
    text, logits = judge["text"], judge["logits"]
    assert text["questions"] == logits["questions"] == 3  # global + 2 regions
    # same images through the ViT in both modes; text mode decodes on top of the same prefill
    assert text["vit_patches_per_image"] == logits["vit_patches_per_image"]
    assert text["llm_tokens_per_image"] > logits["llm_tokens_per_image"]
    # logits: one image prefill, one prompt prefill and one answer forward per batch
    assert logits["llm_forwards_per_image"] == 3
    assert logits["speedup_vs_text"] == pytest.approx(text["s_per_image"] / logits["s_per_image"])

    raster = {r["case"] for r in _lines(bench_runs["rasterizer"][1])}
    assert raster == {"pixel-box", "pixel-mask", "latent-box", "latent-mask"}


def test_bench_rejects_bad_flags():
    proc = subprocess.run([sys.executable, str(BENCH / "sampling.py"), "--modes", "batched,parallel"], cwd=REPO,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "parallel" in proc.stderr


# --------------------------------------------------------------------------- sequential CFG

@pytest.mark.parametrize("cfg_img_scale, renorm", [(1.0, "global"), (2.0, "text_channel")])
def test_sequential_cfg_matches_batched(tiny_model, cfg_img_scale, renorm):
    """One forward per CFG branch gives the batched result (2 and 3 branches), for a
    batch of prompts of different lengths (so the branch rows' cache lengths differ)."""
    kwargs = dict(height=32, width=48, num_timesteps=4, cfg_text_scale=4.0, cfg_img_scale=cfg_img_scale,
                  cfg_interval=(0.0, 1.0), cfg_renorm_type=renorm, seed=[3, 7], output_type="latent")
    prompts = ["a red cube", "two green cats sitting under a long wooden table"]
    batched = tiny_model.generate_image(prompts, cfg_batching="batched", **kwargs).images
    sequential = tiny_model.generate_image(prompts, cfg_batching="sequential", **kwargs).images
    assert batched.shape == (2, 16, 4, 6)
    torch.testing.assert_close(sequential, batched, rtol=1e-4, atol=1e-5)
    # CFG really acted: without it the result differs
    plain = tiny_model.generate_image(prompts, **{**kwargs, "cfg_text_scale": 1.0}).images
    assert (plain - batched).abs().max() > 1e-3


def test_sequential_cfg_outside_interval_is_the_plain_path(tiny_model):
    kwargs = dict(height=32, width=32, num_timesteps=3, cfg_interval=(0.0, 0.0), seed=1, output_type="latent")
    a = tiny_model.generate_image("a cat", cfg_batching="sequential", **kwargs).images
    b = tiny_model.generate_image("a cat", cfg_batching="batched", **kwargs).images
    assert torch.equal(a, b)


def test_cfg_batching_rejects_unknown_value(tiny_model):
    with pytest.raises(ValueError, match="cfg_batching"):
        tiny_model.generate_image("a cat", height=32, width=32, num_timesteps=2, cfg_batching="parallel")
