# SPDX-License-Identifier: Apache-2.0
"""The tables of ``srum miniworld study`` (``study.json``, ``study.md``): per-variant accuracy
as mean ± std over seeds, paired differences to the baseline, understanding before/after,
candidate counts, the oracle's check of the candidates (:mod:`.candidate_check`) and
runtimes, computed from the finished units only (no clock readings,
so a rerun that changes nothing rewrites nothing)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..fileio import atomic_write_text
from ..pipeline import state
from . import world as W
from .candidate_check import check_candidates

if TYPE_CHECKING:  # the units live in study.py, which imports this module
    from .study import Study

__all__ = ["COLUMNS", "HEADERS", "aggregate", "markdown", "write_report"]


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _write_if_changed(path: Path, text: str) -> bool:
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return False
    atomic_write_text(path, text)
    return True

PHASES = ("generate", "propose", "judge", "train", "export", "eval", "understanding", "result")
COLUMNS = (*W.CATEGORIES, "single_object", "multi_object", "overall")
HEADERS = {"color": "Color", "shape": "Shape", "texture": "Texture", "spatial": "Spatial", "numeracy": "Numeracy",
           "complex": "Complex", "single_object": "1 obj", "multi_object": "2+ obj", "overall": "Overall"}


# ------------------------------------------------------------------ the tables
def _stats(values: list[float]) -> dict:
    vals = [v for v in values if v is not None]
    n = len(vals)
    return {"mean": float(np.mean(vals)) if n else None,
            "std": float(np.std(vals, ddof=1)) if n >= 2 else None, "n": n}


def _specs(prompts_file: Path) -> dict[str, W.PromptSpec]:
    with open(prompts_file, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return {r["prompt"]: W.PromptSpec.from_dict(r["spec"]) for r in rows}


def aggregate(study: Study) -> dict:
    """study.json's contents from the finished units (deterministic: no clock readings)."""
    cfg, root = study.cfg, study.root
    variants = cfg.run_variants()
    units: dict[str, dict] = {}
    results: dict[str, dict[int, dict]] = {v: {} for v in variants}
    missing = []
    for seed in cfg.seeds:
        for variant in variants:
            trained = cfg.variants[variant] is not None
            d = study.baseline_dir(seed) if variant == cfg.baseline and not trained else root / f"seed-{seed}" / variant
            marker = state.read_marker(d) or {}
            label = str(d.relative_to(root))
            if label not in units:
                units[label] = _unit_runtime(d, marker)
            res = _read_json(d / "result.json") if marker.get("status") == "complete" else {}
            if res:
                results[variant][seed] = res
            elif label not in missing:
                missing.append(label)
    candidates = {}
    specs = _specs(study.prompts_file) if study.prompts_file.is_file() else None
    for seed in cfg.seeds:
        d = root / f"seed-{seed}" / "candidates"
        marker = state.read_marker(d) or {}
        candidates[str(seed)] = {**_unit_runtime(d, marker), **_read_json(d / "candidates.json")}
        if marker.get("status") == "complete" and specs is not None:
            candidates[str(seed)]["oracle_check"] = check_candidates(d / "judge", specs)

    accuracy, per_seed, paired, understanding = {}, {}, {}, {}
    base = results[cfg.baseline]
    for variant in variants:
        rows = results[variant]
        per_seed[variant] = {str(s): r["accuracy"] for s, r in sorted(rows.items())}
        accuracy[variant] = {c: _stats([r["accuracy"].get(c) for r in rows.values()]) for c in COLUMNS}
        und = {str(s): (r.get("understanding") or {}).get("accuracy") for s, r in sorted(rows.items())}
        understanding[variant] = {"per_seed": und, **_stats(list(und.values()))}
        if variant == cfg.baseline:
            continue
        common = sorted(s for s in rows if s in base)
        diff = {}
        for c in COLUMNS:
            per = {str(s): _sub(rows[s]["accuracy"].get(c), base[s]["accuracy"].get(c)) for s in common}
            diff[c] = {"per_seed": per, **_stats(list(per.values()))}
        gained = {str(s): sum(1 for k, v in rows[s]["per_image"].items() if v and not base[s]["per_image"].get(k, 0))
                  for s in common}
        lost = {str(s): sum(1 for k, v in rows[s]["per_image"].items()
                            if not v and base[s]["per_image"].get(k, 0)) for s in common}
        paired[variant] = {"columns": diff, "images_gained": gained, "images_lost": lost,
                           "images_gained_total": sum(gained.values()), "images_lost_total": sum(lost.values())}
        uper = {str(s): _sub((rows[s].get("understanding") or {}).get("accuracy"),
                             (base[s].get("understanding") or {}).get("accuracy")) for s in common}
        understanding[variant]["difference"] = {"per_seed": uper, **_stats(list(uper.values()))}
    train_info = {v: {str(s): r.get("train") for s, r in sorted(results[v].items()) if r.get("train")}
                  for v in variants if cfg.variants[v] is not None}
    total = sum(u["seconds"] or 0.0 for u in units.values()) + sum(c["seconds"] or 0.0 for c in candidates.values())
    return {
        "title": "SRUM in the miniature world: the study",
        "model": study.model, "seeds": list(cfg.seeds), "variants": variants, "baseline": cfg.baseline,
        "variant_overrides": {v: cfg.variants[v] for v in variants},
        "columns": list(COLUMNS),
        "sizes": {"prompts_per_seed": 6 * cfg.candidates.prompts_per_category,
                  "candidates_per_prompt": cfg.candidates.per_prompt,
                  "train_steps": cfg.train.steps, "eval_per_category": cfg.eval.per_category,
                  "eval_prompts": 6 * cfg.eval.per_category,
                  "understanding_questions": cfg.understanding.scenes * cfg.understanding.questions_per_scene
                  if cfg.understanding.enabled else 0},
        "prompts": getattr(study, "prompt_info", None),
        "eval": {"split": "heldout", "think": False, "prompt_seed": cfg.eval.prompt_seed,
                 "image_seeds": {str(s): study.eval_seed(s) for s in cfg.seeds}},
        "accuracy": accuracy, "per_seed": per_seed, "paired_difference": paired,
        "understanding": understanding, "train": train_info, "candidates": candidates,
        "runtime": {"total_seconds": round(total, 1), "units": units},
        "complete": not missing, "missing": missing,
    }


def _sub(a, b):
    return None if a is None or b is None else float(a) - float(b)


def _unit_runtime(d: Path, marker: dict) -> dict:
    phases = {}
    for name in PHASES:
        if (d / f"phase-{name}.json").is_file():
            phases[name] = _read_json(d / f"phase-{name}.json").get("seconds")
    seconds = marker.get("seconds")
    if seconds is None and marker.get("attempts"):
        seconds = round(sum(a.get("seconds", 0.0) for a in marker["attempts"]), 3)
    return {"status": marker.get("status", "not run"), "seconds": seconds,
            "attempts": len(marker.get("attempts") or []), "phases": phases}


def _fmt(s: dict | None, signed: bool = False) -> str:
    if not s or s.get("mean") is None:
        return "n/a"
    text = f"{s['mean']:+.1f}" if signed else f"{s['mean']:.1f}"
    return text + (f" ± {s['std']:.1f}" if s.get("std") is not None else "")


def markdown(report: dict) -> str:
    cols = report["columns"]
    sz = report["sizes"]
    n_seeds = len(report["seeds"])
    lines = [f"# {report['title']}", "",
             f"- base model: `{report['model']}`; seeds {report['seeds']} "
             "(each: its own candidates and training order)",
             f"- candidates per seed: {sz['prompts_per_seed']} training-split prompts x {sz['candidates_per_prompt']} "
             f"(think mode), regions proposed and judged (logits) by the base model itself; "
             f"{sz['train_steps']} training steps per variant",
             f"- evaluation: {sz['eval_prompts']} held-out prompts, direct mode, one image each, the same prompts "
             f"and image seeds for every variant, scored by the exact oracle (100 = correct)",
             "", f"## Accuracy (percent; mean ± std over {n_seeds} seed(s))", "",
             "| variant | " + " | ".join(HEADERS[c] for c in cols) + " |",
             "|---|" + "|".join("---:" for _ in cols) + "|"]
    for v in report["variants"]:
        lines.append(f"| {v} | " + " | ".join(_fmt(report["accuracy"][v][c]) for c in cols) + " |")
    lines += ["", f"## Paired difference to {report['baseline']} (points; per seed on the same prompts and image "
                  "seeds, then mean ± std over seeds)", "",
              "| variant | " + " | ".join(HEADERS[c] for c in cols) + " | images gained / lost |",
              "|---|" + "|".join("---:" for _ in cols) + "|---:|"]
    for v, p in report["paired_difference"].items():
        lines.append(f"| {v} | " + " | ".join(_fmt(p["columns"][c], signed=True) for c in cols)
                     + f" | {p['images_gained_total']} / {p['images_lost_total']} |")
    lines += ["", f"## Understanding (exact-match accuracy on {sz['understanding_questions']} questions about "
                  "held-out rendered scenes)", "", f"| variant | accuracy | difference to {report['baseline']} |",
              "|---|---:|---:|"]
    for v in report["variants"]:
        u = report["understanding"][v]
        lines.append(f"| {v} | {_fmt(u)} | {_fmt(u.get('difference'), signed=True) if 'difference' in u else '-'} |")
    lines += ["", "## Candidates (per seed)", "",
              "| seed | images | global judged / failed | mean global score | regions kept / judged | "
              "mean local score |", "|---|---:|---:|---:|---:|---:|"]
    for seed, c in report["candidates"].items():
        if "records" in c:
            lines.append(f"| {seed} | {c['records']} | {c['global_ok']} / {c['global_failed']} | "
                         f"{_num(c['global_mean'])} | {c['propose'].get('num_regions_kept', 'n/a')} / "
                         f"{c['regions_judged']} | {_num(c['local_mean'])} |")
    checked = {seed: c["oracle_check"] for seed, c in report["candidates"].items() if c.get("oracle_check")}
    if checked:
        lines += ["", "## Candidates by the oracle (a diagnostic, never used in training)", "",
                  "Correct: candidates the oracle calls correct. AUC: how well the self-judge's scores rank "
                  "correct images above wrong ones (global score) and regions of objects with every asked "
                  "attribute above the others (local score, regions on an object the oracle reads); 50 = random.",
                  "", "| seed | correct % | by category | global AUC | mean global correct / wrong | "
                  "regions on an object (good) | local AUC |", "|---|---:|---|---:|---:|---:|---:|"]
        for seed, k in checked.items():
            cats = ", ".join(f"{c} {v:.1f}" for c, v in k["oracle_accuracy_by_category"].items())
            lines.append(f"| {seed} | {_fmt1(k['oracle_accuracy'])} | {cats} | {_fmt1(k['global_auc'])} | "
                         f"{_num(k['global_mean_correct'])} / {_num(k['global_mean_wrong'])} | "
                         f"{k['regions_matched']} ({k['regions_good']}) | {_fmt1(k['local_auc'])} |")
    rt = report["runtime"]
    lines += ["", f"## Runtime: {rt['total_seconds']:.0f} s in all", "",
              "| unit | status | seconds | attempts | phases |", "|---|---|---:|---:|---|"]
    for seed, c in report["candidates"].items():
        lines.append(f"| seed-{seed}/candidates | {c['status']} | {_secs(c['seconds'])} | {c['attempts']} | "
                     + ", ".join(f"{k} {_secs(s)}" for k, s in c["phases"].items()) + " |")
    for label, u in rt["units"].items():
        lines.append(f"| {label} | {u['status']} | {_secs(u['seconds'])} | {u['attempts']} | "
                     + ", ".join(f"{k} {_secs(s)}" for k, s in u["phases"].items()) + " |")
    if report["missing"]:
        lines += ["", "Not finished (left out of the tables): " + ", ".join(report["missing"]) + "."]
    lines += ["", "How to read: a paired difference is a variant's accuracy minus the baseline's on the same "
                  "held-out prompts and image seeds, per seed, then averaged; it is trustworthy when its mean "
                  "is large against its std and the images gained clearly outnumber those lost. With one "
                  "evaluation image per prompt, a category of n prompts moves in steps of 100/n points."]
    return "\n".join(lines) + "\n"


def _num(x) -> str:
    return "n/a" if x is None else f"{x:+.2f}"


def _fmt1(x) -> str:
    return "n/a" if x is None else f"{x:.1f}"


def _secs(s) -> str:
    return "n/a" if s is None else f"{s:.1f}"


def write_report(study: Study) -> dict:
    """Write ``study.json`` and ``study.md`` (only when their content changes); returns the report."""
    report = aggregate(study)
    _write_if_changed(study.root / "study.json", json.dumps(report, indent=1) + "\n")
    _write_if_changed(study.root / "study.md", markdown(report))
    return report


