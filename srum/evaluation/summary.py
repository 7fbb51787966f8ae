# SPDX-License-Identifier: Apache-2.0
"""T2I-CompBench scores -> per-category means, the overall score, tables and charts.

Arithmetic (the protocol SRUM reports):

* a category's mean is over its *scored* images; images whose judgment failed are
  counted (``num_failed``) and left out, never averaged in as -1 or 0;
* ``complex_composite`` = mean of the category means of ``complex``, ``complex_action``
  and ``complex_spatial`` (those present);
* ``overall`` (the reference formula) = mean of the 7 base categories (3d_spatial, color,
  non-spatial, numeracy, shape, spatial, texture) and ``complex_composite``. It equals
  the plain mean of the README table's 8 columns, whose "Complex" is the composite;
* ``overall_8cat`` = plain mean of the 8 category means with "complex" the complex
  category alone (what you get when only ``complex`` was evaluated).
  An overall is ``null`` when one of its categories has no scored image (listed in
  ``missing_categories``): a partial overall is not comparable to a full one.

Files of :func:`write_summary`: ``results.csv`` (one row per image), ``summary.json``,
``summary.md`` and ``scores.png`` (bar chart). :func:`compare_runs` puts several runs
side by side with deltas against the first of the same mode, direct or CoT
(``compare.{json,csv,md,png}``).
"""
from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path
from typing import Iterable, Sequence

from srum.fileio import atomic_write_text, iter_jsonl

BASE_CATEGORIES = ("3d_spatial", "color", "non-spatial", "numeracy", "shape", "spatial", "texture")
COMPLEX_GROUP = ("complex", "complex_action", "complex_spatial")
COMPOSITE = "complex_composite"
# The README table's columns, in its order ("complex" is the composite there).
TABLE_COLUMNS = ("3d_spatial", "color", COMPOSITE, "non-spatial", "numeracy", "shape", "spatial", "texture")
TABLE_HEADERS = {"3d_spatial": "3d spatial", "color": "Color", COMPOSITE: "Complex", "non-spatial": "Nonspatial",
                 "numeracy": "Numeracy", "shape": "Shape", "spatial": "Spatial", "texture": "Texture",
                 "overall": "Overall"}
CSV_FIELDS = ("image_id", "category", "prompt_id", "sample_index", "score", "status", "explanation", "prompt",
              "image_file")


# ------------------------------------------------------------------ reading scores
def _score_value(text, where: str) -> float | None:
    if text is None or (isinstance(text, str) and not text.strip()):
        return None
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: score {text!r} is not a number") from None
    if not math.isfinite(value):
        raise ValueError(f"{where}: score {text!r} is not finite")
    return value


def _check_row(row: dict, where: str) -> dict:
    if not isinstance(row.get("category"), str) or not row["category"]:
        raise ValueError(f"{where}: no 'category'")
    status = row.get("status")
    if status not in ("ok", "failed"):
        raise ValueError(f"{where}: status must be 'ok' or 'failed', got {status!r}")
    score = _score_value(row.get("score"), where)
    if status == "ok" and score is None:
        raise ValueError(f"{where}: status ok without a score")
    if score is not None and not 0.0 <= score <= 100.0 and status == "ok":
        raise ValueError(f"{where}: score {score:g} is outside 0-100")
    return {**row, "score": score if status == "ok" else None}


def read_scores(path: str | os.PathLike) -> list[dict]:
    """Per-image score rows from ``scores.jsonl`` (ours), ``results.csv`` (ours) or a
    reference ``qwen_eval.py`` CSV (``question_id, prompt, category, score``; its score
    -1 marks a failed judgment). Rows: ``category``, ``score`` (None when failed),
    ``status`` and whatever else the file holds. Bad rows raise ``ValueError`` naming the
    file and line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"scores file not found: {path}")
    rows = []
    if path.suffix.lower() == ".jsonl":
        for n, obj, err in iter_jsonl(path):
            if err:
                raise ValueError(err)
            if "_error" in obj:
                continue
            rows.append(_check_row(obj, f"{path}:{n}"))
        return rows
    if path.suffix.lower() != ".csv":
        raise ValueError(f"{path}: expected a .jsonl or .csv scores file")
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        fields = set(reader.fieldnames or [])
        if not {"category", "score"} <= fields:
            raise ValueError(f"{path}: CSV needs 'category' and 'score' columns, has {sorted(fields)}")
        for n, raw in enumerate(reader, 2):
            row = dict(raw)
            where = f"{path}:{n}"
            if "status" not in fields:  # the reference's CSV: -1 (or nothing) = the judge failed
                score = _score_value(row.get("score"), where)
                row["status"] = "failed" if score is None or score < 0 else "ok"
                row.setdefault("image_id", row.get("question_id"))
            rows.append(_check_row(row, where))
    return rows


# ------------------------------------------------------------------ arithmetic
def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def category_stats(rows: Iterable[dict]) -> dict[str, dict]:
    """``{category: {num_images, num_scored, num_failed, mean, std}}`` (std: population)."""
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r["category"], []).append(r)
    stats = {}
    for cat in sorted(groups):
        scores = [r["score"] for r in groups[cat] if r["status"] == "ok"]
        mean = _mean(scores)
        std = math.sqrt(sum((s - mean) ** 2 for s in scores) / len(scores)) if scores else None
        stats[cat] = {"num_images": len(groups[cat]), "num_scored": len(scores),
                      "num_failed": len(groups[cat]) - len(scores), "mean": mean, "std": std}
    return stats


def complex_composite(means: dict[str, float | None]) -> float | None:
    """Mean of the complex / complex_action / complex_spatial means that exist."""
    return _mean([means[c] for c in COMPLEX_GROUP if means.get(c) is not None])


def reference_overall(means: dict[str, float | None]) -> float | None:
    """(sum of the 7 base category means + complex composite) / 8; None if one is missing."""
    parts = [means.get(c) for c in BASE_CATEGORIES] + [complex_composite(means)]
    return None if any(p is None for p in parts) else sum(parts) / len(parts)


def plain_8cat_mean(means: dict[str, float | None]) -> float | None:
    """Mean of the 7 base means and the plain ``complex`` mean; None if one is missing."""
    parts = [means.get(c) for c in (*BASE_CATEGORIES, "complex")]
    return None if any(p is None for p in parts) else sum(parts) / len(parts)


def summarize_scores(rows: Sequence[dict]) -> dict:
    """The numbers of a run (see the module docstring)."""
    stats = category_stats(rows)
    means = {c: s["mean"] for c, s in stats.items()}
    composite = complex_composite(means)
    missing = [c for c in BASE_CATEGORIES if means.get(c) is None]
    if composite is None:
        missing.append("complex (or complex_action / complex_spatial)")
    scored = [r["score"] for r in rows if r["status"] == "ok"]
    return {
        "categories": stats,
        COMPOSITE: composite,
        "complex_parts": [c for c in COMPLEX_GROUP if means.get(c) is not None],
        "overall": reference_overall(means),
        "overall_8cat": plain_8cat_mean(means),
        "missing_categories": missing,
        "num_images": len(rows), "num_scored": len(scored), "num_failed": len(rows) - len(scored),
        "mean_all_images": _mean(scored),
    }


def table_values(summary: dict) -> dict[str, float | None]:
    """The README table row of a summary: its 8 columns and the overall."""
    values = {c: (summary.get(COMPOSITE) if c == COMPOSITE else summary.get("categories", {}).get(c, {}).get("mean"))
              for c in TABLE_COLUMNS}
    values["overall"] = summary.get("overall")
    return values


# ------------------------------------------------------------------ writing one run
def _fmt(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "n/a"
    return f"{value:+.2f}" if signed else f"{value:.2f}"


def write_results_csv(rows: Sequence[dict], path: Path, fields: Sequence[str] = CSV_FIELDS) -> None:
    import io
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(fields), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in fields})
    atomic_write_text(path, buf.getvalue())


def markdown_summary(summary: dict, title: str) -> str:
    values = table_values(summary)
    cols = [*TABLE_COLUMNS, "overall"]
    lines = [f"# {title}", ""]
    info = summary.get("run") or {}
    for key in ("judge", "think"):
        if info.get(key) is not None:
            lines.append(f"- {key}: {info[key]}")
    lines += [f"- images: {summary['num_images']} ({summary['num_scored']} scored, {summary['num_failed']} failed "
              f"judgments excluded from the means"
              + (f", {summary['num_errors']} unreadable" if summary.get("num_errors") else "")
              + (f", {summary['num_missing']} not scored yet" if summary.get("num_missing") else "") + ")", ""]
    lines += ["| " + " | ".join(TABLE_HEADERS[c] for c in cols) + " |",
              "|" + "|".join("---:" for _ in cols) + "|",
              "| " + " | ".join(_fmt(values[c]) for c in cols) + " |", ""]
    lines.append(f"Overall (reference formula: 7 base categories + complex composite, / 8): "
                 f"{_fmt(summary['overall'])}; plain mean of the 8 categories with `complex` alone: "
                 f"{_fmt(summary['overall_8cat'])}.")
    if summary["missing_categories"]:
        lines.append(f"Not available (no scored image): {', '.join(summary['missing_categories'])}.")
    lines += ["", "| category | images | scored | failed | mean | std |", "|---|---:|---:|---:|---:|---:|"]
    for cat, s in summary["categories"].items():
        lines.append(f"| {cat} | {s['num_images']} | {s['num_scored']} | {s['num_failed']} | {_fmt(s['mean'])} "
                     f"| {_fmt(s['std'])} |")
    lines.append(f"| complex composite ({', '.join(summary['complex_parts']) or 'none'}) | | | | "
                 f"{_fmt(summary[COMPOSITE])} | |")
    return "\n".join(lines) + "\n"


def write_summary(rows: Sequence[dict], out_dir: str | os.PathLike, title: str = "T2I-CompBench (MLLM judge)",
                  run_info: dict | None = None, extra: dict | None = None) -> dict:
    """Write ``results.csv``, ``summary.json``, ``summary.md`` and ``scores.png`` for
    ``rows`` into ``out_dir``; returns the summary dict."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = summarize_scores(rows)
    summary.update(extra or {})
    summary["run"] = dict(run_info or {})
    summary["title"] = title
    write_results_csv(rows, out_dir / "results.csv")
    atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    atomic_write_text(out_dir / "summary.md", markdown_summary(summary, title))
    values = table_values(summary)
    bar_chart({title: values}, [*TABLE_COLUMNS, "overall"], out_dir / "scores.png", title)
    return summary


def summarize_run(run_dir: str | os.PathLike, label: str | None = None) -> dict:
    """Step "summarize" of a run directory (``scores/scores.jsonl`` -> ``summary/``)."""
    from .compbench import RunLayout
    layout = RunLayout(Path(run_dir))
    rows = read_scores(layout.scores_file)
    if not rows:
        raise ValueError(f"{layout.scores_file}: no scored rows")
    extra, info = {}, {}
    stage = _read_json(layout.scores / "summary.json")
    if stage:
        extra = {"num_errors": stage.get("num_errors", 0), "num_missing": stage.get("num_missing", 0),
                 "scoring_complete": stage.get("complete")}
    judges = sorted({str(r.get("judge")) for r in rows if r.get("judge")})
    thinks = sorted({str(r.get("think")).lower() for r in rows if r.get("think") is not None})
    info = {"judge": ", ".join(judges) or None, "think": ", ".join(thinks) or None, "run_dir": str(layout.root)}
    title = f"T2I-CompBench (MLLM judge): {label or layout.root.resolve().name}"
    return write_summary(rows, layout.summary, title, info, extra)


def _read_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None


# ------------------------------------------------------------------ comparing runs
def load_run_summary(source: str | os.PathLike) -> dict:
    """A summary from a run directory, its ``summary/`` folder or a ``summary.json``;
    a run with scores but no summary yet is summarized on the fly (nothing written)."""
    path = Path(source)
    for candidate in (path, path / "summary.json", path / "summary" / "summary.json"):
        if candidate.is_file():
            return _read_json(candidate)
    scores = path / "scores" / "scores.jsonl"
    if scores.is_file():
        return summarize_scores(read_scores(scores))
    raise FileNotFoundError(f"{source}: no summary.json and no scores/scores.jsonl")


COT_SUFFIX = " (CoT)"


def run_mode(summary: dict, source) -> str:
    """``"think"`` (CoT) or ``"direct"``: how a run's images were drawn, from the ``think``
    its summary records. A run that records none (an older summary, a reference CSV) is
    direct, the evaluations' default. A run whose images mix both cannot stand for either
    mode: refused, naming it."""
    think = str((summary.get("run") or {}).get("think") or "").strip().lower()
    if think in ("", "none", "false"):
        return "direct"
    if think == "true":
        return "think"
    raise ValueError(f"{source}: its images mix think modes (think: {think}); evaluate each mode into its own "
                     "run directory (sampling.think=true for the CoT one)")


def mode_label(label: str, mode: str) -> str:
    """The paper's Table 1 names a CoT row "<model> (CoT)"; a direct row keeps its name."""
    return label if mode != "think" or label.endswith(COT_SUFFIX) else label + COT_SUFFIX


def _own_table(summaries: list[dict]) -> dict | None:
    """The benchmark's own table (``summary["table"]``: ``name``, ``columns``, ``headers``,
    ``values``, ``note``) when every run has one with the same name and columns, else None
    (the CompBench table)."""
    tables = [s.get("table") for s in summaries]
    if not all(isinstance(t, dict) for t in tables):
        return None
    first = tables[0]
    if any(t.get("name") != first.get("name") or t.get("columns") != first.get("columns") for t in tables):
        return None
    return first


def compare_runs(sources: Sequence[str | os.PathLike], out_dir: str | os.PathLike,
                 labels: Sequence[str] | None = None, paper: bool = True) -> dict:
    """Side-by-side table of two or more runs with deltas against the first (the base).
    Writes ``compare.json``, ``compare.csv``, ``compare.md`` and ``compare.png``.

    The columns are T2I-CompBench's, unless every run's summary carries the same own
    ``table`` (e.g. ``srum eval miniworld``: its 6 categories, 1 object / 2+ objects,
    overall): then those columns, headers and values are compared. With ``paper`` (the
    default) a T2I-CompBench comparison also lists the SRUM paper's reported rows
    (:mod:`srum.evaluation.paper`; ``paper`` key of the JSON, ``paper`` rows of the CSV, a
    second table in the Markdown); then a single run is enough. A benchmark's own table may
    carry its paper rows too (``table["paper"]``: ``source``, ``rows``; e.g. T2I-ReasonBench).

    Modes: a run whose summary records ``think: true`` is a CoT run, labelled "<label> (CoT)"
    as in the paper's Table 1, and its deltas are against the first CoT run, never against a
    direct one (each mode has its own base; :func:`run_mode`)."""
    if len(sources) < (1 if paper else 2):
        raise ValueError("compare needs at least two runs (or one, with the paper's rows)")
    if labels is not None and len(labels) != len(sources):
        raise ValueError(f"{len(labels)} labels for {len(sources)} runs")
    labels = list(labels) if labels else [Path(s).resolve().name or str(s) for s in sources]
    summaries = [load_run_summary(source) for source in sources]
    # CoT runs are labelled as the paper's rows are, and compared only with CoT runs: the
    # first run of each mode is that mode's base (deltas never cross modes)
    modes = [run_mode(summary, source) for source, summary in zip(sources, summaries)]
    labels = [mode_label(label, mode) for label, mode in zip(labels, modes)]
    if len(set(labels)) != len(labels):
        labels = [f"{i + 1}:{lab}" for i, lab in enumerate(labels)]
    bases: dict[str, str] = {}
    for label, mode in zip(labels, modes):
        bases.setdefault(mode, label)
    own = _own_table(summaries)
    cols = list(own["columns"]) if own else [*TABLE_COLUMNS, "overall"]
    headers = {**TABLE_HEADERS, **own.get("headers", {})} if own else TABLE_HEADERS
    name = own.get("name", "Evaluation") if own else "T2I-CompBench"
    runs = []
    for label, mode, source, summary in zip(labels, modes, sources, summaries):
        values = dict(summary["table"]["values"]) if own else table_values(summary)
        runs.append({"label": label, "mode": mode, "base": bases[mode], "source": str(source),
                     "values": {c: values.get(c) for c in cols}, "overall_8cat": summary.get("overall_8cat"),
                     "num_scored": summary.get("num_scored"), "num_failed": summary.get("num_failed")})
    base_values = {run["label"]: run["values"] for run in runs if run["label"] in bases.values()}
    for run in runs:
        if run["label"] == run["base"]:
            continue
        base = base_values[run["base"]]
        run["delta"] = {c: (None if run["values"][c] is None or base[c] is None else run["values"][c] - base[c])
                        for c in cols}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    result = {"benchmark": name, "columns": cols, "base": labels[0], "bases": bases, "runs": runs}
    if paper and not own:
        from .paper import PAPER, PAPER_ROWS
        result["paper"] = {"source": PAPER, "rows": PAPER_ROWS}
    elif paper and own and isinstance(own.get("paper"), dict):   # a benchmark's own reported rows
        result["paper"] = own["paper"]
    atomic_write_text(out_dir / "compare.json", json.dumps(result, indent=2) + "\n")

    import io
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["run", "kind", *cols, "scored", "failed"])
    for run in runs:
        writer.writerow([run["label"], "score", *("" if run["values"][c] is None else f"{run['values'][c]:.4f}"
                                                   for c in cols), run["num_scored"], run["num_failed"]])
        if "delta" in run:
            writer.writerow([run["label"], f"delta vs {run['base']}",
                             *("" if run["delta"][c] is None else f"{run['delta'][c]:+.4f}" for c in cols), "", ""])
    for label, values in (result.get("paper") or {}).get("rows", {}).items():
        writer.writerow([f"paper: {label}", "paper", *("" if values.get(c) is None else f"{values[c]:.2f}"
                                                       for c in cols), "", ""])
    atomic_write_text(out_dir / "compare.csv", buf.getvalue())

    base_text = "; ".join(f"{'CoT ' if m == 'think' and len(bases) > 1 else ''}base: {b}" for m, b in bases.items())
    lines = [f"# {name} comparison ({base_text})", "",
             "| run | " + " | ".join(headers.get(c, c) for c in cols) + " | scored | failed |",
             "|---|" + "|".join("---:" for _ in cols) + "|---:|---:|"]
    for run in runs:
        cells = []
        for c in cols:
            cell = _fmt(run["values"][c])
            if "delta" in run and run["delta"][c] is not None:
                cell += f" ({_fmt(run['delta'][c], signed=True)})"
            cells.append(cell)
        lines.append(f"| {run['label']} | " + " | ".join(cells) + f" | {run['num_scored']} | {run['num_failed']} |")
    note = own.get("note") if own else ("Overall: the reference formula (7 base categories + complex composite, "
                                        "/ 8).")
    against = ("the first run" if len(bases) == 1 else
               "the first run of the same mode (" + ", ".join(f"{'CoT' if m == 'think' else 'direct'}: {b}"
                                                              for m, b in bases.items()) + ")")
    lines += ["", f"Deltas in parentheses are against {against}." + (f" {note}" if note else "")]
    if "paper" in result:
        lines += ["", f"## Reported in the paper ({result['paper']['source']})", "",
                  "| model | " + " | ".join(headers.get(c, c) for c in cols) + " |",
                  "|---|" + "|".join("---:" for _ in cols) + "|"]
        lines += [f"| {label} | " + " | ".join(_fmt(values.get(c)) for c in cols) + " |"
                  for label, values in result["paper"]["rows"].items()]
        lines += ["", result["paper"].get("note") or ("Same protocol, our rubric wording: close, not identical, "
                                                       "numbers are expected (EVAL.md, \"Checking a set-up against "
                                                       "the paper\").")]
    atomic_write_text(out_dir / "compare.md", "\n".join(lines) + "\n")
    bar_chart({r["label"]: r["values"] for r in runs}, cols, out_dir / "compare.png",
              f"{name} comparison ({base_text})", headers,
              axis_max=float(own.get("axis_max", 100.0)) if own else 100.0)
    return result


# ------------------------------------------------------------------ bar chart (PIL only)
_COLORS = ((76, 114, 176), (221, 132, 82), (85, 168, 104), (196, 78, 82), (129, 114, 179), (147, 120, 96))


def bar_chart(series: dict[str, dict[str, float | None]], columns: Sequence[str], path: str | os.PathLike,
              title: str, headers: dict[str, str] | None = None, axis_max: float = 100.0) -> None:
    """Grouped bars: one group per column, one bar per series, on a fixed 0-``axis_max`` axis
    (100 for percentages; 1 for GenEval's fractions; missing values drawn as "n/a").
    Written atomically as PNG. ``headers``: column labels (default: the CompBench table's)."""
    headers = TABLE_HEADERS if headers is None else headers
    from PIL import Image, ImageDraw, ImageFont

    def font(size):
        try:
            return ImageFont.load_default(size=size)
        except TypeError:  # Pillow < 10.1 has one bitmap size
            return ImageFont.load_default()

    small, normal, big = font(11), font(13), font(16)
    n = max(1, len(series))
    group_w = max(76, 18 * n + 24)
    left, right, top, bottom = 50, 20, 56 + 18 * ((n + 3) // 4), 70
    plot_h = 300
    width = left + right + group_w * len(columns)
    height = top + plot_h + bottom
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    draw.text((left, 10), title, fill="black", font=big)
    for i, label in enumerate(series):  # legend, four entries per line
        x, y = left + (i % 4) * ((width - left - right) // 4), 34 + 18 * (i // 4)
        draw.rectangle([x, y + 2, x + 12, y + 12], fill=_COLORS[i % len(_COLORS)])
        draw.text((x + 18, y), str(label)[:40], fill="black", font=normal)
    y0 = top + plot_h
    for tick in range(0, 101, 20):
        y = y0 - tick * plot_h / 100
        draw.line([left, y, width - right, y], fill=(225, 225, 225))
        draw.text((left - 8, y), f"{tick * axis_max / 100:g}", fill="black", font=small, anchor="rm")
    draw.line([left, top, left, y0], fill="black")
    draw.line([left, y0, width - right, y0], fill="black")
    bar_w = (group_w - 16) / n
    for g, column in enumerate(columns):
        gx = left + g * group_w + 8
        for i, values in enumerate(series.values()):
            value = values.get(column)
            x1 = gx + i * bar_w
            if value is None:
                draw.text((x1 + bar_w / 2, y0 - 4), "n/a", fill="gray", font=small, anchor="mb")
                continue
            y = y0 - max(0.0, min(axis_max, value)) * plot_h / axis_max
            draw.rectangle([x1, y, x1 + bar_w - 2, y0], fill=_COLORS[i % len(_COLORS)])
            if bar_w >= 22:
                draw.text((x1 + bar_w / 2, y - 2), f"{value:.1f}" if axis_max > 10 else f"{value:.2f}", fill="black",
                          font=small, anchor="mb")
        draw.text((gx + (group_w - 16) / 2, y0 + 8), headers.get(column, column), fill="black", font=normal,
                  anchor="ma")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}.png")
    image.save(tmp)
    os.replace(tmp, path)
