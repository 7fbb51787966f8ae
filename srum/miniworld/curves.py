# SPDX-License-Identifier: Apache-2.0
"""``srum miniworld curves``: the training curves of a chain of pretraining stages as one CSV.

Each stage of ``srum miniworld pretrain`` leaves ``<out_dir>/train/metrics.jsonl`` (one line
per optimizer step, and event lines such as checkpoint saves; a resumed run repeats steps,
and the later line wins). This reads the
stages in the order given and writes, per window of ``every`` steps, the means of the
flow-matching MSE (``mse``: steps that had drawing rows), the cross-entropy (``ce``: steps
that had answer or plan tokens), the gradient norm and the seconds per step, with a global
step counted across the stages. A stage that was stopped by a wall-clock budget and then
exported from its last checkpoint keeps only the steps up to it (``model/srum_export.json``).
``models/miniworld/training_curve.csv`` is this file.
"""
from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

__all__ = ["stage_steps", "curve_rows", "write_curves", "COLUMNS"]

COLUMNS = ("stage", "step_in_stage", "global_step", "flow_mse", "cross_entropy", "grad_norm", "seconds_per_step")


def stage_steps(metrics: str | os.PathLike) -> list[dict]:
    """The lines of one ``metrics.jsonl`` by step, the last line of a repeated step kept;
    a malformed line is an error naming the file and line."""
    by_step: dict[int, dict] = {}
    with open(metrics, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                if "step" not in row and "event" in row:   # checkpoint saves and other events
                    continue
                by_step[int(row["step"])] = row
            except (ValueError, KeyError, TypeError) as err:
                raise ValueError(f"{metrics}:{n}: not a metrics line ({err})") from None
    return [by_step[s] for s in sorted(by_step)]


def _mean(rows: list[dict], key: str) -> float | None:
    values = [float(r[key]) for r in rows if r.get(key) is not None and math.isfinite(float(r[key]))]
    return sum(values) / len(values) if values else None


def curve_rows(stages: list[tuple[str, list[dict]]], every: int = 50) -> list[dict]:
    """``[(stage name, its steps)]`` -> one row per ``every`` steps of each stage."""
    if every < 1:
        raise ValueError(f"every must be >= 1, got {every}")
    out, offset = [], 0
    for name, steps in stages:
        for start in range(0, len(steps), every):
            window = steps[start:start + every]
            ce_rows = [r for r in window if r.get("ce_tokens", 1)]          # steps with answer tokens
            mse_rows = [r for r in window if r.get("latent_tokens", 0)]    # steps with drawing rows
            out.append({
                "stage": name, "step_in_stage": int(window[-1]["step"]), "global_step": offset + int(window[-1]["step"]),
                "flow_mse": _mean(mse_rows, "mse"), "cross_entropy": _mean(ce_rows, "ce"),
                "grad_norm": _mean(window, "grad_norm"), "seconds_per_step": _mean(window, "step_time_s"),
            })
        offset += int(steps[-1]["step"]) if steps else 0
    return out


def _fmt(value) -> str:
    if value is None:
        return ""
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def write_curves(out: str | os.PathLike, stage_dirs: list[str | os.PathLike], names: list[str] | None = None,
                 every: int = 50) -> int:
    """Write the CSV for the given ``srum miniworld pretrain`` output directories; returns
    the number of rows."""
    names = names or [str(i + 1) for i in range(len(stage_dirs))]
    if len(names) != len(stage_dirs):
        raise ValueError(f"{len(names)} names for {len(stage_dirs)} stage directories")
    stages = []
    for name, d in zip(names, stage_dirs):
        metrics = Path(d) / "train" / "metrics.jsonl"
        if not metrics.is_file():
            raise FileNotFoundError(f"{metrics}: no training metrics (is {d} a srum miniworld pretrain directory?)")
        steps = stage_steps(metrics)
        exported = Path(d) / "model" / "srum_export.json"
        if exported.is_file():   # a stage stopped by a budget was exported from its last checkpoint
            last = int(json.loads(exported.read_text(encoding="utf-8"))["step"])
            steps = [r for r in steps if int(r["step"]) <= last]
        stages.append((name, steps))
    rows = curve_rows(stages, every)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(COLUMNS)
        for row in rows:
            writer.writerow([_fmt(row[c]) for c in COLUMNS])
    return len(rows)
