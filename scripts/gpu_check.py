# SPDX-License-Identifier: Apache-2.0
"""One command that exercises every CUDA path of srum and writes a JSON of figures.

Run by ``scripts/gpu_check.sh`` (see there for the command line). On CUDA the model is
width-faithful and depth-reduced: Bagel-7B-MoT's widths (hidden 3584, 28 / 4 heads, MLP
18944, vocab 152064, SigLIP-so400m, FLUX autoencoder) with ``--layers`` decoder layers and
random weights (``scripts/bench/common.py``, preset ``bagel7b-width``). Checks, in order:

1. ``environment``: torch / CUDA / GPU, flash-attn (version, or why it does not import),
   the attention backend a bf16 model gets;
2. ``attention_parity``: flash-attn and SDPA give the same results in decoding (greedy
   tokens and first-token answer probabilities), in sampling (CFG latents, same seed)
   and in training (the trainer's own ``train_step``: loss and gradient norm);
3. ``train``: bf16 FSDP2 training steps (``scripts/bench/train_step.py``): tokens/s, MFU,
   peak memory;
4. ``sampling``: batched CFG sampling vs one forward per branch (``sampling.py``);
5. ``decode``: KV-cache decoding over context lengths (``decode.py``);
6. ``judge``: self-judgment, text and logits modes (``judge.py``), and the in-process
   Qwen2.5-VL judge on the device (a random tiny checkpoint through ``from_pretrained``).

Every check records ``ok`` and its figures or its error; one failing check does not stop
the others. The exit code is 0 only when every check is ok. ``--device cpu`` runs the same
steps on the tiny model with tiny sizes (a dry run of the script itself: flash-attn is not
available there, so the parity compares SDPA with SDPA).
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time
import traceback
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "scripts" / "bench"
sys.path[:0] = [str(REPO), str(BENCH)]

import torch  # noqa: E402

# bench arguments per device: (CUDA: the real widths; CPU: the smallest that runs the path)
BENCH_ARGS = {
    "train": {"cuda": ["--tokens", "8192", "--image-size", "512", "--reps", "3", "--warmup", "1"],
              "cpu": ["--tokens", "48", "--image-size", "32", "--prompt-tokens", "4", "--reps", "1", "--warmup", "0"]},
    "sampling": {"cuda": ["--sizes", "512", "--batch-sizes", "1,4", "--steps", "11", "--modes", "batched,sequential",
                          "--reps", "2", "--warmup", "1"],
                 "cpu": ["--sizes", "32", "--batch-sizes", "1,2", "--steps", "3", "--modes", "batched,sequential",
                         "--reps", "1", "--warmup", "0"]},
    "decode": {"cuda": ["--contexts", "128,2048", "--new-tokens", "32", "--reps", "2", "--warmup", "1"],
               "cpu": ["--contexts", "8,16", "--new-tokens", "4", "--reps", "1", "--warmup", "0"]},
    "judge": {"cuda": ["--image-size", "512", "--regions", "4", "--max-new-tokens", "64", "--reps", "2",
                       "--warmup", "0", "--logits-reps", "2"],
              "cpu": ["--image-size", "32", "--regions", "2", "--max-new-tokens", "4", "--reps", "1", "--warmup", "0",
                      "--logits-reps", "1"]},
}
BENCH_SCRIPT = {"train": "train_step", "sampling": "sampling", "decode": "decode", "judge": "judge"}
CHECKS = ("environment", "attention_parity", *BENCH_SCRIPT, "qwen_judge")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", help="cuda[:N] (default) or cpu (a dry run on the tiny model)")
    p.add_argument("--out", default=str(REPO / "outputs" / "gpu_check"), help="folder for gpu_check.json and logs")
    p.add_argument("--layers", type=int, default=4, help="decoder layers of the width-faithful model (default 4)")
    p.add_argument("--parity-layers", type=int, default=2, help="decoder layers of the parity model (default 2)")
    p.add_argument("--only", default=None, help="comma-separated subset of the checks: " + ", ".join(CHECKS))
    p.add_argument("--bench-timeout", type=int, default=240, help="seconds per bench script (default 240)")
    return p.parse_args(argv)


@contextmanager
def attention_backend(name: str):
    """``sdpa`` forces SDPA; ``auto`` lets flash-attn run where it can (the env var is
    read at every attention call)."""
    old = os.environ.get("SRUM_ATTN_BACKEND")
    os.environ["SRUM_ATTN_BACKEND"] = name
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("SRUM_ATTN_BACKEND", None)
        else:
            os.environ["SRUM_ATTN_BACKEND"] = old


def free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ------------------------------------------------------------------ 1. environment
def check_environment(device: torch.device) -> dict:
    import transformers

    from srum.models.bagel import attention
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    info = {"torch": torch.__version__, "transformers": transformers.__version__, "cuda": torch.version.cuda,
            "device": str(device), "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
            "gpu_memory_gib": (torch.cuda.get_device_properties(device).total_memory / 2 ** 30
                               if device.type == "cuda" else None),
            "flash_attn_imported": attention._flash_varlen is not None,
            "flash_attn_error": attention.FLASH_IMPORT_ERROR,
            "attention_backend": attention.attention_backend(device, dtype)}
    # on CUDA a broken flash-attn build is a failed check: the cluster would train on SDPA
    info["ok"] = device.type != "cuda" or info["flash_attn_error"] is None
    return info


# ------------------------------------------------------------------ 2. flash vs SDPA
def _parity_model(args, device: torch.device, training: bool):
    from common import BenchEnv, build_model, machine_info
    preset = argparse.Namespace(model_dir=None, model="bagel7b-width" if device.type == "cuda" else "tiny",
                                layers=args.parity_layers if device.type == "cuda" else None, seed=0)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    return build_model(preset, BenchEnv(device, dtype, machine_info(device)), training=training)[0]


def _inference_outputs(model, size: int) -> dict:
    from PIL import Image
    images = [Image.new("RGB", (size, size), (200, 30, 30)), Image.new("RGB", (size, size // 2), (30, 30, 200))]
    questions = ["What colour is the square?", "Is it blue? Answer yes or no."]
    tokens = model.understand(images, questions, max_new_tokens=16)
    probs, _ = model.choice_probabilities(images, questions, [str(d) for d in range(1, 10)])
    latents = model.generate_image(["a red cube to the left of a blue sphere", "three apples"], height=size,
                                   width=size, num_timesteps=6, cfg_interval=(0.0, 1.0), seed=3,
                                   output_type="latent").images
    return {"tokens": tokens, "probs": probs.float().cpu(), "latents": latents.float().cpu()}


def _train_outputs(model, device: torch.device) -> dict:
    from train_step import synthetic_samples

    from srum.training.config import (DataConfig, FreezeConfig, ModelConfig, OptimConfig, ParallelConfig, TrainConfig,
                                      TrainLoopConfig)
    from srum.training.data import StepData
    from srum.training.packing import DataPosition
    from srum.training.parallel import TrainingModel, build_mesh, freeze, init_process_group
    from srum.training.trainer import train_step

    init_process_group()   # a one-process group: the trainer's collectives run as on one rank
    dtype = next(model.parameters()).dtype
    vae = model.vae.eval().requires_grad_(False)
    del model.vae          # encoded outside the trained model, as in the trainer
    trainable = freeze(model, FreezeConfig())
    mesh = build_mesh(ParallelConfig(), 1, device.type)
    tm = TrainingModel(model, vae, model.tokenizer, model.special_tokens, model.config, None, mesh, dtype, trainable)
    # lr 0: the weights stay the same, so both backends see the same model
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.0)
    cfg = TrainConfig(output_dir="-", model=ModelConfig(path="-"), data=DataConfig(rewards=["<synthetic>"]),
                      train=TrainLoopConfig(total_steps=1), optim=OptimConfig())
    sizes = argparse.Namespace(image_size=256 if device.type == "cuda" else 32, prompt_tokens=16,
                               tokens=2048 if device.type == "cuda" else 96)
    samples = synthetic_samples(sizes, model, model.special_tokens, torch.Generator().manual_seed(0))
    data = StepData(packs=[], all_packs=[], samples=[samples], position_after=DataPosition())
    result = {}
    for backend in ("sdpa", "auto"):
        with attention_backend(backend):
            metrics = train_step(tm, optimizer, None, data, cfg, 0, device, cfg.lambda_c).metrics
        result[backend] = {"loss": float(metrics["loss"]), "grad_norm": float(metrics["grad_norm"])}
    return result


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


def check_attention_parity(args, device: torch.device) -> dict:
    from srum.models.bagel import attention
    flash = device.type == "cuda" and attention._flash_varlen is not None
    out = {"compared": "flash-attn vs SDPA" if flash else "SDPA vs SDPA (flash-attn unavailable: a dry run)"}
    model = _parity_model(args, device, training=False)
    size = 256 if device.type == "cuda" else 32
    with attention_backend("sdpa"):
        ref = _inference_outputs(model, size)
    with attention_backend("auto"):
        got = _inference_outputs(model, size)
    out["decode_tokens_equal"] = got["tokens"] == ref["tokens"]
    out["choice_probs_max_abs_diff"] = float((got["probs"] - ref["probs"]).abs().max())
    out["sampling_latents_rel_l2"] = _rel(got["latents"], ref["latents"])
    del model
    free(device)
    model = _parity_model(args, device, training=True)
    train = _train_outputs(model, device)
    out["train_loss"] = train
    out["train_loss_rel_diff"] = abs(train["auto"]["loss"] - train["sdpa"]["loss"]) / max(abs(train["sdpa"]["loss"]),
                                                                                          1e-12)
    out["train_grad_norm_rel_diff"] = (abs(train["auto"]["grad_norm"] - train["sdpa"]["grad_norm"])
                                       / max(train["sdpa"]["grad_norm"], 1e-12))
    del model
    free(device)
    # bf16 tolerances: kernels sum in different orders; random weights make argmax ties rare
    out["ok"] = (out["choice_probs_max_abs_diff"] < 2e-2 and out["sampling_latents_rel_l2"] < 5e-2
                 and out["train_loss_rel_diff"] < 2e-2 and out["train_grad_norm_rel_diff"] < 5e-2)
    return out


# ------------------------------------------------------------------ 3-6. the bench scripts
def run_bench(name: str, args, device: torch.device, out_dir: Path) -> dict:
    kind = "cuda" if device.type == "cuda" else "cpu"
    model = ["--model", "bagel7b-width", "--layers", str(args.layers)] if kind == "cuda" else ["--model", "tiny"]
    lines = out_dir / f"{name}.jsonl"
    lines.unlink(missing_ok=True)
    cmd = [sys.executable, str(BENCH / f"{BENCH_SCRIPT[name]}.py"), "--device", str(device), *model,
           *BENCH_ARGS[name][kind], "--out", str(lines), "--md", str(out_dir / f"{name}.md")]
    if kind == "cpu":
        cmd += ["--threads", "1"]
    try:
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=args.bench_timeout)
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"timed out after {args.bench_timeout} s", "command": " ".join(cmd)}
    (out_dir / f"{name}.log").write_text(proc.stdout + proc.stderr)
    rows = [json.loads(line) for line in lines.read_text().splitlines()] if lines.is_file() else []
    for row in rows:
        row.pop("machine", None)
    result = {"ok": proc.returncode == 0 and bool(rows), "cases": rows, "command": " ".join(cmd)}
    if proc.returncode != 0:
        result["error"] = (proc.stderr or proc.stdout).strip()[-2000:]
    return result


def check_qwen_judge(device: torch.device, out_dir: Path) -> dict:
    """The in-process transformers judge on the device (weights loaded straight onto it)."""
    import PIL.Image

    from srum.judge import JudgeConfig, QwenVLJudge, judge_image, write_tiny_qwen_vl
    path = write_tiny_qwen_vl(out_dir / "tiny-qwen-vl", seed=0)
    dtype = "bfloat16" if device.type == "cuda" else "float32"
    t0 = time.perf_counter()
    judge = QwenVLJudge(path, dtype=dtype, device=str(device))
    load_s = time.perf_counter() - t0
    image = PIL.Image.new("RGB", (256, 256), (90, 140, 60))
    regions = [{"region_id": 0, "bbox": [0, 0, 128, 128]}, {"region_id": 1, "bbox": [64, 64, 256, 256]}]
    cfg = JudgeConfig(backend="qwen2_5_vl", judge_model=str(path), mode="logits", min_scale_mass=0.0)
    t0 = time.perf_counter()
    glob, local = judge_image(judge, image, "a red apple", regions, cfg)
    return {"ok": all(e["status"] == "ok" for e in (glob, *local)), "device": str(judge.device),
            "load_s": load_s, "logits_s_per_image": time.perf_counter() - t0}


# ------------------------------------------------------------------ main
def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: CUDA is not available (use --device cpu for a dry run)")
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    wanted = set(args.only.split(",")) if args.only else set(CHECKS)
    if wanted - set(CHECKS):
        raise SystemExit(f"--only: unknown check(s) {sorted(wanted - set(CHECKS))}; known: {', '.join(CHECKS)}")
    steps = [("environment", lambda: check_environment(device)),
             ("attention_parity", lambda: check_attention_parity(args, device)),
             *[(name, (lambda n=name: run_bench(n, args, device, out_dir))) for name in BENCH_SCRIPT],
             ("qwen_judge", lambda: check_qwen_judge(device, out_dir))]
    report = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "device": str(device),
              "model": (f"bagel7b-width, {args.layers} decoder layers (parity: {args.parity_layers})"
                        if device.type == "cuda" else "tiny (dry run)"), "checks": {}}
    start = time.perf_counter()
    for name, step in steps:
        if name not in wanted:
            continue
        t0 = time.perf_counter()
        try:
            result = step()
        except Exception as err:  # noqa: BLE001 - a failed check is recorded, the others still run
            result = {"ok": False, "error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()[-3000:]}
        result["seconds"] = round(time.perf_counter() - t0, 2)
        report["checks"][name] = result
        print(f"[gpu_check] {name}: {'ok' if result['ok'] else 'FAILED'} ({result['seconds']} s)"
              + ("" if result["ok"] else f": {result.get('error', 'see the figures')}"[:400]), flush=True)
        free(device)
    report["wall_s"] = round(time.perf_counter() - start, 1)
    report["ok"] = all(c["ok"] for c in report["checks"].values())
    (out_dir / "gpu_check.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    print(f"[gpu_check] {'all checks ok' if report['ok'] else 'some checks FAILED'} in {report['wall_s']} s; "
          f"figures: {out_dir / 'gpu_check.json'}", flush=True)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
