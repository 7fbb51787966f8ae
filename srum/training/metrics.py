# SPDX-License-Identifier: Apache-2.0
"""Training metrics on rank 0: console, progress bar, TensorBoard, metrics.jsonl and
optionally Weights & Biases; plus the FLOP count behind MFU.

``metrics.jsonl`` gets one JSON object per step (every step, whatever the logging
period) so reports can plot the whole run; it is appended to on resume, after the rows
of the steps the resumed run repeats (those after its checkpoint) are cut off, and
TensorBoard purges the same steps, so each step appears once.
"""
from __future__ import annotations

import json
import logging
import math
import os
import sys
from pathlib import Path

import torch

from ..fileio import atomic_write_text, write_error
from ..models.bagel.config import BagelConfig

log = logging.getLogger(__name__)

__all__ = ["PEAK_BF16_FLOPS", "peak_flops", "active_params_per_token", "step_flops", "MetricsLogger"]

# Dense bf16 tensor-core peak per device (FLOP/s), without sparsity.
PEAK_BF16_FLOPS = {
    "GB200": 2.5e15, "B200": 2.25e15, "B100": 1.75e15,
    "H200": 989e12, "H100": 989e12, "H800": 989e12, "H20": 148e12,
    "A100": 312e12, "A800": 312e12, "A10G": 70e12, "A10": 125e12,
    "L40S": 362e12, "L40": 181e12, "L4": 121e12, "4090": 165e12,
}


def peak_flops(device_name: str) -> float | None:
    """Peak bf16 FLOP/s for a CUDA device name such as "NVIDIA H100 80GB HBM3"
    (None when unknown: MFU is then not reported)."""
    name = device_name.upper()
    for key in sorted(PEAK_BF16_FLOPS, key=len, reverse=True):  # "H100" before "H10"...
        if key in name:
            return PEAK_BF16_FLOPS[key]
    return None


def active_params_per_token(config: BagelConfig) -> int:
    """Weights one latent token passes through: one expert's share of every decoder
    layer, plus the generation heads (the MoT routes each token to one expert)."""
    c = config.llm
    q, kv = c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim
    per_layer = c.hidden_size * (q + 2 * kv) + q * c.hidden_size + 3 * c.hidden_size * c.intermediate_size
    d, hid = config.patch_latent_dim, c.hidden_size
    heads = 2 * d * hid + 256 * hid + hid * hid
    return c.num_hidden_layers * per_layer + heads


def step_flops(config: BagelConfig, tokens: int, attended_pairs: int) -> float:
    """Model FLOPs of forward + backward for ``tokens`` tokens whose attention masks
    allow ``attended_pairs`` (query, key) pairs in total: 6 per weight and token, and
    12 * layers * q_width per pair (QK^T and AV, forward + backward). Recomputation by
    activation checkpointing is not counted (the MFU convention)."""
    c = config.llm
    q = c.num_attention_heads * c.head_dim
    return 6.0 * active_params_per_token(config) * tokens + 12.0 * c.num_hidden_layers * q * attended_pairs


class MetricsLogger:
    """Writes step metrics; a no-op on ranks other than 0."""

    def __init__(self, output_dir: str | os.PathLike, *, enabled: bool, total_steps: int, start_step: int,
                 every_steps: int = 1, tensorboard: bool = True, progress_bar: bool = True, wandb: bool = False,
                 wandb_project: str = "srum", run_name: str | None = None, config: dict | None = None):
        self.enabled = enabled
        self.every = max(1, every_steps)
        self.tb = self.bar = self.wandb = self.jsonl = None
        if not enabled:
            return
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        truncate_metrics(out / "metrics.jsonl", start_step)
        self.jsonl = open(out / "metrics.jsonl", "a", encoding="utf-8")
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter
            # events of the steps this run does again are dropped from the earlier files
            self.tb = SummaryWriter(log_dir=str(out / "tensorboard"), purge_step=start_step + 1)
        if progress_bar:
            from tqdm import tqdm
            self.bar = tqdm(total=total_steps, initial=start_step, desc="train", dynamic_ncols=True,
                            disable=not sys.stderr.isatty() and os.environ.get("SRUM_PROGRESS") != "1")
        if wandb:
            if not os.environ.get("WANDB_API_KEY"):
                raise RuntimeError("logging.wandb=true needs the WANDB_API_KEY environment variable "
                                   "(the key is never read from the config)")
            try:
                import wandb as wandb_module
            except ImportError:
                raise RuntimeError("logging.wandb=true but the wandb package is not installed "
                                   "(pip install wandb)") from None
            self.wandb = wandb_module.init(project=wandb_project, name=run_name, config=config or {},
                                           dir=str(out), resume="allow")

    def log(self, step: int, metrics: dict) -> None:
        """One step's metrics (step = the number of optimizer steps done)."""
        if not self.enabled:
            return
        # JSON has no NaN/inf: non-finite values (a skipped step's loss) are written as null
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in metrics.items()}
        self._append({"step": step, **clean})
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{metrics.get('loss', float('nan')):.4f}", lr=f"{metrics.get('lr', 0):.2e}")
        if step % self.every and step != 1:
            return
        numbers = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if self.tb is not None:
            for k, v in numbers.items():
                self.tb.add_scalar(k, v, step)
        if self.wandb is not None:
            self.wandb.log(numbers, step=step)
        parts = [f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in numbers.items()
                 if k in ("loss", "reward_term", "constraint_term", "ce", "grad_norm", "lr", "tokens_per_s", "mfu",
                          "weight_mean", "skipped_steps")]
        log.info("step %d: %s", step, ", ".join(parts))

    def event(self, message: str, warning: bool = True) -> None:
        """A notable event (skipped step, checkpoint) in the console and the JSONL."""
        if not self.enabled:
            return
        log.log(logging.WARNING if warning else logging.INFO, message)
        self._append({"event": message})

    def _append(self, row: dict) -> None:
        try:
            self.jsonl.write(json.dumps(row) + "\n")
            self.jsonl.flush()
        except OSError as err:  # disk full, quota: say which file
            raise write_error(Path(self.jsonl.name), err) from err

    def close(self) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.close()
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()
        self.jsonl.close()


def truncate_metrics(path: Path, last_step: int) -> None:
    """Cut ``metrics.jsonl`` before the first row of a step after ``last_step`` (rows an
    interrupted run wrote after its last checkpoint, which the resumed run writes again),
    and a partial last line. Events before that row stay."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines(keepends=True):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            break
        if not line.endswith("\n"):
            break
        if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] > last_step:
            break
        kept.append(line)
    text = "".join(kept)
    if text != path.read_text(encoding="utf-8", errors="replace"):
        atomic_write_text(path, text)


def peak_memory_gib(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2 ** 30
