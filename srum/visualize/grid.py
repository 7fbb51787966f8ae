# SPDX-License-Identifier: Apache-2.0
"""Side-by-side pictures of evaluation runs: the same prompts and seeds, one column per run.

``eval_grid(runs, out)`` reads each run directory of ``srum eval compbench`` or ``srum eval
miniworld`` (``images/manifest.jsonl`` and, when scored, ``scores/scores.jsonl``) and draws
one block per image id present in every run: the prompt above, then each run's picture
side by side with its score below (green at 100, red at 0; "failed" for a failed
judgment, "-" when not scored). Evaluation seeds depend on the prompt id and the sample
index only, so a block compares the models on the same prompt and the same starting noise.

Blocks are picked category by category in turn (manifest order within a category), up to
``limit``. Small pictures (the 64 px miniature world) are enlarged with nearest-neighbour
sampling, so pixels stay visible. Nothing here needs torch.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

from PIL import Image, ImageDraw

from ..fileio import atomic_write_text, iter_jsonl
from .pictures import font, line_height, wrap_text

__all__ = ["eval_grid", "read_eval_run"]

_GOOD, _BAD, _NONE = (40, 160, 70), (200, 50, 50), (150, 150, 150)


def read_eval_run(run_dir: str | os.PathLike) -> dict[str, dict]:
    """``{image_id: {"path", "prompt", "category", "seed", "score", "status"}}`` of one run
    (score and status None when the image was not scored). Unreadable lines are skipped."""
    root = Path(run_dir)
    manifest = root / "images" / "manifest.jsonl"
    if not manifest.is_file():
        raise FileNotFoundError(f"{manifest}: not an evaluation run (no image manifest)")
    out: dict[str, dict] = {}
    for row in _rows(manifest):
        if isinstance(row.get("image_id"), str) and isinstance(row.get("image_file"), str):
            out[row["image_id"]] = {"path": manifest.parent / row["image_file"], "prompt": str(row.get("prompt", "")),
                                    "category": row.get("category"), "seed": row.get("seed"),
                                    "score": None, "status": None}
    scores = root / "scores" / "scores.jsonl"
    if scores.is_file():
        for row in _rows(scores):
            entry = out.get(row.get("image_id"))
            if entry is not None:
                entry["status"] = row.get("status")
                entry["score"] = row.get("score") if row.get("status") == "ok" else None
    return out


def _rows(path: Path):
    for _, row, _ in iter_jsonl(path):
        if isinstance(row, dict):
            yield row


def _pick(ids: list[str], runs: list[dict[str, dict]], limit: int | None) -> list[str]:
    """Ids present in every run, categories in turn (first run's order)."""
    common = [i for i in ids if all(i in r for r in runs)]
    by_category: dict[str, list[str]] = {}
    for i in common:
        by_category.setdefault(str(runs[0][i]["category"]), []).append(i)
    picked: list[str] = []
    queues = list(by_category.values())
    while queues and (limit is None or len(picked) < limit):
        for queue in list(queues):
            if limit is not None and len(picked) >= limit:
                break
            picked.append(queue.pop(0))
            if not queue:
                queues.remove(queue)
    return picked


def _verdict(entry: dict) -> tuple[str, tuple[int, int, int]]:
    if entry["status"] is None:
        return "-", _NONE
    if entry["score"] is None:
        return "failed", _NONE
    score = float(entry["score"])
    if score >= 100:
        return f"{score:.0f}", _GOOD
    if score <= 0:
        return f"{score:.0f}", _BAD
    t = min(max(score / 100.0, 0.0), 1.0)
    return f"{score:.0f}", tuple(round(b + (g - b) * t) for b, g in zip(_BAD, _GOOD))


def eval_grid(runs: Sequence[tuple[str, str | os.PathLike]], out: str | os.PathLike, *, limit: int | None = 24,
              cell: int = 128, width: int = 1200) -> dict:
    """Draw the grid of ``runs`` (``(label, run directory)``, first = the reference column)
    into the PNG ``out`` (and its numbers into ``out`` with suffix ``.json``): one block per
    image id, the prompt above the runs' pictures side by side, blocks filling lines of
    about ``width`` pixels. Returns ``{"path", "rows", "columns", "changed"}``: ``rows`` is
    the number of blocks drawn; ``changed`` counts, over every image id common to the
    first and last run (not only the drawn ones), ``better`` / ``worse`` / ``same`` scores
    of the last run against the first (both scored)."""
    if len(runs) < 2:
        raise ValueError("a grid needs at least two runs")
    read = [read_eval_run(path) for _, path in runs]
    ids = list(read[0])
    picked = _pick(ids, read, limit)
    first, last = read[0], read[-1]
    changed = {"better": 0, "worse": 0, "same": 0}
    for i in ids:
        if i in last and first[i]["score"] is not None and last[i]["score"] is not None:
            delta = float(last[i]["score"]) - float(first[i]["score"])
            changed["better" if delta > 0 else "worse" if delta < 0 else "same"] += 1

    fnt, small = font(13), font(11)
    lh, slh = line_height(fnt), line_height(small)
    gap, pad = 8, 24
    block_w = len(runs) * (cell + gap) - gap
    per_line = max(1, (width + pad) // (block_w + pad))
    caption_lines = 3
    block_h = caption_lines * slh + 4 + cell + lh + 8
    header = lh + 12
    lines = max(1, -(-len(picked) // per_line))
    canvas_w = per_line * (block_w + pad) - pad + 16
    canvas = Image.new("RGB", (canvas_w, header + lines * (block_h + pad)), "white")
    draw = ImageDraw.Draw(canvas)
    legend = "in each block, left to right: " + " | ".join(str(label) for label, _ in runs) + \
             " (same prompt, same seed); the oracle's score below each picture"
    draw.text((8, 4), legend, fill="black", font=fnt)
    if not picked:
        draw.text((8, header), "no image id is common to these runs", fill=_BAD, font=fnt)
    for b, image_id in enumerate(picked):
        x0 = 8 + (b % per_line) * (block_w + pad)
        y0 = header + (b // per_line) * (block_h + pad)
        entry0 = first[image_id]
        caption = f"{image_id}: {entry0['prompt']}"
        for k, text in enumerate(wrap_text(caption, small, block_w, max_lines=caption_lines)):
            draw.text((x0, y0 + k * slh), text, fill="black", font=small)
        y = y0 + caption_lines * slh + 4
        for c, run in enumerate(read):
            entry = run[image_id]
            x = x0 + c * (cell + gap)
            text, color = _verdict(entry)
            try:
                with Image.open(entry["path"]) as im:
                    picture = im.convert("RGB")
                w, h = picture.size
                scale = cell / max(w, h)
                resample = Image.NEAREST if max(w, h) * 2 <= cell else Image.BILINEAR
                canvas.paste(picture.resize((max(1, round(w * scale)), max(1, round(h * scale))), resample), (x, y))
            except (OSError, ValueError):
                draw.text((x + 4, y + cell // 2), "unreadable", fill=_BAD, font=small)
            draw.rectangle([x - 2, y - 2, x + cell + 1, y + cell + 1], outline=color, width=2)
            draw.text((x + cell // 2, y + cell + 4), f"{runs[c][0]}: {text}", fill=color, font=small, anchor="ma")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.tmp{os.getpid()}.png")
    canvas.save(tmp)
    os.replace(tmp, out)
    result = {"path": str(out), "rows": len(picked), "columns": [label for label, _ in runs], "changed": changed}
    atomic_write_text(out.with_suffix(".json"), json.dumps(result, indent=1) + "\n")
    return result
