# SPDX-License-Identifier: Apache-2.0
"""Shared pieces of the benchmark scripts in ``scripts/bench/``.

* :func:`add_common_args` / :func:`setup`: the flags every bench takes (device, dtype,
  threads, repetitions, output files) and what they set up;
* :func:`time_fn`: wall-clock timing with warmup and CUDA synchronisation; we report the
  median of the repetitions because the benches run on shared machines;
* :class:`Reporter`: one JSON line per case (stdout and ``--out``), then a markdown table
  (stdout and ``--md``);
* :func:`machine_info`: CPU model, cores, torch version, GPU name; stored in every line so
  a line can be read on its own;
* :func:`build_model`: a randomly initialised Bagel built in memory from a preset
  (``tiny``: configs/model/tiny.yaml; ``bagel7b-width``: Bagel-7B-MoT's widths with few
  layers) with the tiny tokenizer, or a real checkpoint with ``--model-dir``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:  # run as a plain script from any directory
    sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
PRESETS = ("tiny", "bagel7b-width")


# --------------------------------------------------------------------------- flags

def add_common_args(parser: argparse.ArgumentParser, *, reps: int, warmup: int) -> None:
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    parser.add_argument("--dtype", default="auto", choices=["auto", *DTYPES],
                        help="model dtype; auto = float32 on CPU, bfloat16 on CUDA")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--reps", type=int, default=reps, help=f"timed repetitions per case (default {reps})")
    parser.add_argument("--warmup", type=int, default=warmup, help=f"untimed runs before timing (default {warmup})")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random model and inputs")
    parser.add_argument("--out", default=None, help="append the JSON lines to this file as well")
    parser.add_argument("--md", default=None, help="write the markdown table to this file as well")


def add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="tiny", choices=PRESETS,
                        help="random model preset: tiny (configs/model/tiny.yaml) or bagel7b-width "
                             "(Bagel-7B-MoT widths, --layers decoder layers; for a GPU)")
    parser.add_argument("--layers", type=int, default=None,
                        help="decoder layers (default: the preset's; 2 for bagel7b-width)")
    parser.add_argument("--model-dir", default=None,
                        help="load this Bagel checkpoint directory instead of a random preset")


@dataclass
class BenchEnv:
    device: torch.device
    dtype: torch.dtype
    machine: dict


def setup(args: argparse.Namespace) -> BenchEnv:
    """Apply --threads/--seed, resolve --device/--dtype (clear errors for impossible ones)."""
    if args.reps < 1:
        raise SystemExit(f"--reps must be >= 1, got {args.reps}")
    if args.warmup < 0:
        raise SystemExit(f"--warmup must be >= 0, got {args.warmup}")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: CUDA is not available on this machine")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dtype = DTYPES[args.dtype] if args.dtype != "auto" else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    torch.manual_seed(args.seed)
    return BenchEnv(device, dtype, machine_info(device))


# --------------------------------------------------------------------------- timing

def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Timing:
    """Seconds of each timed repetition."""

    times: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def min(self) -> float:
        return min(self.times)

    @property
    def max(self) -> float:
        return max(self.times)

    def to_dict(self, prefix: str = "s") -> dict:
        """``{prefix}_median, {prefix}_min, {prefix}_max, reps``."""
        return {f"{prefix}_median": self.median, f"{prefix}_min": self.min, f"{prefix}_max": self.max,
                "reps": len(self.times)}


def time_fn(fn: Callable[[], object], *, reps: int, warmup: int, device: torch.device) -> Timing:
    """Run ``fn`` ``warmup`` times untimed, then ``reps`` times timed with
    ``time.perf_counter``; CUDA is synchronised before and after each timed run so
    queued kernels are charged to the run that queued them."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(reps):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return Timing(times)


def time_interleaved(fns: dict[str, Callable[[], object]], *, reps: int, warmup: int,
                     device: torch.device) -> dict[str, Timing]:
    """Like :func:`time_fn` for several cases that are compared with each other: the
    repetitions take turns (a, b, c, a, b, c, ...), so a slow spell of a shared machine
    hits every case alike instead of whichever ran during it."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            synchronize(device)
            start = time.perf_counter()
            fn()
            synchronize(device)
            times[name].append(time.perf_counter() - start)
    return {name: Timing(t) for name, t in times.items()}


def peak_memory(device: torch.device) -> dict:
    """Peak memory so far: CUDA max allocated (resettable with
    ``torch.cuda.reset_peak_memory_stats``) or, on CPU, the process's peak resident set
    (``ru_maxrss``, not resettable: it is the maximum over the whole process)."""
    if device.type == "cuda":
        return {"peak_mem_gib": torch.cuda.max_memory_allocated(device) / 2 ** 30}
    return {"peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20}


# --------------------------------------------------------------------------- machine

def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: torch.device) -> dict:
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count()
    info = {"cpu": cpu_model(), "logical_cores": os.cpu_count(), "usable_cores": usable,
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "device": str(device), "gpu": None}
    if device.type == "cuda":
        from srum.models.bagel import attention
        info.update(gpu=torch.cuda.get_device_name(device), cuda=torch.version.cuda,
                    flash_attn=attention._flash_varlen is not None)
    return info


def describe_machine(machine: dict) -> str:
    gpu = f", GPU {machine['gpu']}" if machine.get("gpu") else ", no GPU"
    return (f"{machine['cpu']}, {machine['usable_cores']} usable cores, {machine['torch_threads']} torch threads, "
            f"torch {machine['torch']}{gpu}")


# --------------------------------------------------------------------------- output

def _json_safe(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, torch.dtype):
        return str(value).removeprefix("torch.")
    return value


class Reporter:
    """Collects the cases of one bench: each is printed as one JSON line at once (and
    appended to ``out``); :meth:`finish` prints the markdown table (and writes ``md``)."""

    def __init__(self, bench: str, env: BenchEnv, out: str | None, md: str | None):
        self.bench = bench
        self.env = env
        self.out = Path(out) if out else None
        self.md = Path(md) if md else None
        self.rows: list[dict] = []
        for path in (self.out, self.md):
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)

    def emit(self, case: str, **fields) -> dict:
        row = _json_safe({"bench": self.bench, "case": case, **fields, "machine": self.env.machine})
        line = json.dumps(row)
        print(line, flush=True)
        if self.out is not None:
            with open(self.out, "a", encoding="utf-8") as f:
                f.write(line + "\n")
        self.rows.append(row)
        return row

    def finish(self, columns: Sequence[tuple[str, str]], notes: Sequence[str] = ()) -> str:
        """``columns``: (key, header) pairs. Numbers print with 4 significant digits."""
        lines = [f"### {self.bench}", "", f"Machine: {describe_machine(self.env.machine)}", ""]
        lines.append("| " + " | ".join(h for _, h in columns) + " |")
        lines.append("|" + "|".join("---" for _ in columns) + "|")
        for row in self.rows:
            lines.append("| " + " | ".join(_cell(row.get(k)) for k, _ in columns) + " |")
        lines += [""] + [f"{n}" for n in notes]
        text = "\n".join(lines).rstrip() + "\n"
        print(text, flush=True)
        if self.md is not None:
            self.md.write_text(text, encoding="utf-8")
        return text


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


# --------------------------------------------------------------------------- models

def bagel7b_width_config(layers: int, vocab_size: int = 152064):
    """Bagel-7B-MoT's architecture (Qwen2.5-7B widths: hidden 3584, 28 query / 4 key-value
    heads, MLP 18944; SigLIP-so400m; the FLUX autoencoder; 64x64 latent grid) with only
    ``layers`` decoder layers, so one GPU holds it with optimizer state."""
    from srum.models.bagel.autoencoder import AutoEncoderParams
    from srum.models.bagel.config import BagelConfig, LanguageModelConfig, VisionConfig

    llm = LanguageModelConfig(vocab_size=vocab_size, hidden_size=3584, intermediate_size=18944,
                              num_hidden_layers=layers, num_attention_heads=28, num_key_value_heads=4,
                              max_position_embeddings=32768, rope_theta=1000000.0)
    vit = VisionConfig(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16,
                       patch_size=14, image_size=980)
    return BagelConfig(llm=llm, vit=vit, vae=AutoEncoderParams(), max_latent_size=64)


@torch.no_grad()
def _random_init(model, std: float, seed: int) -> None:
    """Normal(0, std) matrices and embeddings, unit norm gains, zero biases, drawn on the
    model's own device (a 7B-width model is never materialised on the host)."""
    gen_device = next(model.parameters()).device
    gen = torch.Generator(device=gen_device).manual_seed(seed)
    for name, p in model.named_parameters():
        if p.ndim >= 2:
            p.copy_(torch.randn(p.shape, generator=gen, device=gen_device, dtype=torch.float32) * std)
        elif name.endswith("bias"):
            p.zero_()
        else:
            p.fill_(1.0)
    model.reset_position_tables()


def tiny_tokenizer():
    """The tiny BPE tokenizer (trained in a temporary directory, ~0.1 s) and its special
    token ids; its ids (< 520) fit every preset's embedding."""
    from srum.models.bagel.tokenizer import load_tokenizer, write_tiny_tokenizer

    with tempfile.TemporaryDirectory(prefix="srum-bench-tok-") as tmp:
        write_tiny_tokenizer(tmp, vocab_size=512)
        return load_tokenizer(tmp)


def build_model(args: argparse.Namespace, env: BenchEnv, *, training: bool = False):
    """The model a bench runs: ``--model-dir`` (a real checkpoint) or a random preset.

    ``training=False``: eval mode, gradients off (as :func:`srum.load_model` returns).
    Returns (model, description dict for the JSON lines)."""
    from srum.models.bagel.model import Bagel

    if args.model_dir:
        import srum
        model = srum.load_model(args.model_dir, dtype=env.dtype, device=env.device)
        desc = {"model": str(args.model_dir)}
    elif args.model == "tiny":
        from srum.models.bagel.tiny import build_tiny_model, load_tiny_spec
        spec = load_tiny_spec()
        if args.layers is not None:
            spec["llm"]["num_hidden_layers"] = args.layers
        tokenizer, special = tiny_tokenizer()
        model = build_tiny_model(len(tokenizer), spec, seed=args.seed).to(env.device, env.dtype)
        model.tokenizer, model.special_tokens = tokenizer, special
        desc = {"model": "tiny"}
    else:
        config = bagel7b_width_config(args.layers or 2)
        with torch.device("meta"):
            model = Bagel(config)
        model.to_empty(device=env.device)
        _random_init(model, 0.02, args.seed)
        model.to(env.dtype)
        model.tokenizer, model.special_tokens = tiny_tokenizer()
        desc = {"model": "bagel7b-width"}
    cfg = model.config.llm
    desc.update(layers=cfg.num_hidden_layers, hidden=cfg.hidden_size, heads=cfg.num_attention_heads,
                kv_heads=cfg.num_key_value_heads, intermediate=cfg.intermediate_size,
                params_m=sum(p.numel() for p in model.parameters()) / 1e6, dtype=str(env.dtype).removeprefix("torch."))
    if training:
        model.train()
    else:
        model.eval().requires_grad_(False)
    return model, desc
