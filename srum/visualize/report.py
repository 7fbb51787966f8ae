# SPDX-License-Identifier: Apache-2.0
"""The HTML run report: one self-contained folder that opens in any browser, no server.

``render_report`` writes into ``out_dir``::

    report.html                 inline CSS, no scripts, no network
    images/<image id>.png       one card per judged image (srum.visualize.pictures)
    plots/loss_<k>.png          loss curves, one per metrics file
    eval/<chart file>           a copy of the evaluation chart, when given

Every ``src``/``href`` in the page is a relative path inside ``out_dir`` (or an in-page
``#anchor``), so the folder can be zipped and moved. Every text taken from the data
(prompts, reasons, labels, chains of thought, file names) is HTML-escaped.
"""
from __future__ import annotations

import html
import json
import math
import os
import re
import shutil
import tempfile
import time
import urllib.parse
from collections import Counter, defaultdict
from pathlib import Path
from typing import Iterable, Sequence

from ..fileio import iter_jsonl
from ..records import carries_reward, read_records
from .pictures import SCORE_SCALE, draw_card, region_state, resolve_reward_config
from .plots import LOSS_KEYS, MetricsRun, loss_plot, read_metrics

__all__ = ["render_report", "read_cot_manifest", "safe_file_name", "json_summary_html", "markdown_tables_html"]

# Metrics shown in the "last step" table of a training run, when present.
LAST_STEP_KEYS = ("loss", "reward_term", "constraint_term", "mse", "grad_norm", "lr", "weight_mean",
                  "weight_neg_frac", "alpha_mean", "regions_per_sample", "skipped_steps", "tokens_per_s",
                  "mfu", "samples_seen", "epoch")

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;margin:0;
 background:#f4f5f7;color:#1e1e1e;line-height:1.4}
main{max-width:1280px;margin:0 auto;padding:16px 24px 48px}
h1{font-size:1.6em;margin:.4em 0 .1em}h2{border-bottom:2px solid #ccd;padding-bottom:4px;margin-top:1.6em}
h3{margin:.2em 0 .4em;font-size:1.1em}h4{margin:1em 0 .3em}
.meta{color:#555;font-size:.9em}
table{border-collapse:collapse;margin:.4em 0 1em;background:#fff;font-size:.92em}
th,td{border:1px solid #d5d8de;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#eceef2}td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tr:nth-child(even) td{background:#fafbfc}
.card{background:#fff;border:1px solid #d5d8de;border-radius:6px;padding:12px 16px;margin:18px 0}
.card img,.plot img,.chart img{max-width:100%;height:auto;border:1px solid #e2e4e8}
.tag{display:inline-block;background:#e8ecf5;color:#334;border-radius:4px;padding:0 6px;font-size:.8em;
 font-weight:normal;margin-left:6px}
.score{display:inline-block;padding:0 6px;border-radius:3px;border:1px solid #999;font-variant-numeric:tabular-nums}
.failed{color:#b00020;font-weight:600}.filtered{color:#777}
.note{background:#fff6d6;border-left:4px solid #e0b000;padding:4px 8px;margin:6px 0;font-size:.92em}
.error{background:#fde8ea;border-left:4px solid #b00020;padding:4px 8px;margin:6px 0}
details{margin:6px 0}summary{cursor:pointer;color:#234}
pre{white-space:pre-wrap;word-break:break-word;background:#f6f7f9;border:1px solid #e2e4e8;padding:8px;
 font-size:.88em;max-height:420px;overflow:auto}
.bar{display:inline-block;height:10px;background:#4a7fc1;vertical-align:middle;margin-left:6px}
.grid{display:flex;flex-wrap:wrap;gap:8px 24px;align-items:flex-start}
"""


# --------------------------------------------------------------------------- small helpers

def _esc(value) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _src(relative: Path | str) -> str:
    """A relative file path as an attribute value (URL-quoted, then HTML-escaped)."""
    return _esc(urllib.parse.quote(Path(relative).as_posix()))


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _fmt(value, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if value != 0 and (abs(value) >= 1e5 or abs(value) < 10 ** -digits):
            return f"{value:.3e}"
        return f"{value:.{digits}f}".rstrip("0").rstrip(".")
    return str(value)


def _score_badge(score: float | None) -> str:
    if score is None:
        return '<span class="failed">failed</span>'
    r, g, b = SCORE_SCALE.color(score)
    tint = tuple(round(c + (255 - c) * 0.35) for c in (r, g, b))  # lighter, so black text stays readable
    return f'<span class="score" style="background:rgb{tint}">{score:+.2f}</span>'


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def safe_file_name(name: str, taken: set[str]) -> str:
    """A file-system and URL safe stem for ``name`` (letters, digits, ``._-``), unique in
    ``taken`` (which it is added to)."""
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", name).lstrip(".") or "image"
    stem = stem[:150]
    candidate, k = stem, 2
    while candidate.lower() in taken:
        candidate, k = f"{stem}-{k}", k + 1
    taken.add(candidate.lower())
    return candidate


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def read_cot_manifest(path: str | os.PathLike) -> tuple[dict[str, dict], list[str]]:
    """Rows of a generation ``manifest.jsonl`` by ``image_id`` (else the image file's stem),
    and ``file:line: why`` messages for unreadable lines. Only the keys matter here
    (``think_output``, ``detailed_prompt``); the images need not exist."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest not found: {path}")
    rows, errors = {}, []
    for number, row, err in iter_jsonl(path):
        if err:
            errors.append(err)
            continue
        image_id = row.get("image_id")
        if not isinstance(image_id, str) and isinstance(row.get("image_file"), str):
            image_id = Path(row["image_file"]).stem
        if not isinstance(image_id, str):
            errors.append(f"{path}:{number}: no image_id or image_file")
            continue
        rows.setdefault(image_id, row)
    return rows, errors


# --------------------------------------------------------------------------- generic tables

def _scalar(value) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def _kv_table(items: Iterable[tuple[str, object]], bars: bool = False) -> str:
    rows = []
    for key, value in items:
        cell = _esc(_fmt(value))
        if bars and _number(value) and 0.0 <= value <= 1.0:
            cell += f'<span class="bar" style="width:{round(120 * value)}px"></span>'
        rows.append(f'<tr><th>{_esc(key)}</th><td class="{"num" if _number(value) else ""}">{cell}</td></tr>')
    return "<table>" + "".join(rows) + "</table>"


def _rows_table(rows: Sequence[tuple[str, dict]], first: str) -> str:
    columns: list[str] = []
    for _, row in rows:
        columns += [k for k in row if k not in columns]
    head = "".join(f"<th>{_esc(c)}</th>" for c in [first] + columns)
    body = "".join("<tr><th>" + _esc(name) + "</th>" + "".join(
        f'<td class="{"num" if _number(row.get(c)) else ""}">{_esc(_fmt(row.get(c)))}</td>' for c in columns)
        + "</tr>" for name, row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def json_summary_html(data) -> str:
    """Any JSON summary as tables: top-level scalars as one key/value table; each nested
    object of scalars (e.g. ``"categories": {name: mean}``) as a name/value table with
    bars for values in [0, 1]; objects or lists of flat objects as one row each; anything
    else as indented JSON."""
    if not isinstance(data, dict):
        return f"<pre>{_esc(json.dumps(data, indent=1, ensure_ascii=False))}</pre>"
    parts = []
    scalars = [(k, v) for k, v in data.items() if _scalar(v)]
    if scalars:
        parts.append(_kv_table(scalars))
    for key, value in data.items():
        if _scalar(value):
            continue
        parts.append(f"<h4>{_esc(key)}</h4>")
        if isinstance(value, dict) and all(_scalar(v) for v in value.values()):
            parts.append(_kv_table(value.items(), bars=True))
        elif isinstance(value, dict) and all(isinstance(v, dict) and all(_scalar(x) for x in v.values())
                                             for v in value.values()):
            parts.append(_rows_table(list(value.items()), "name"))
        elif isinstance(value, list) and value and all(isinstance(v, dict) and all(_scalar(x) for x in v.values())
                                                       for v in value):
            parts.append(_rows_table([(str(i), v) for i, v in enumerate(value)], "#"))
        else:
            parts.append(f"<pre>{_esc(json.dumps(value, indent=1, ensure_ascii=False))}</pre>")
    return "".join(parts)


_MD_SEPARATOR = re.compile(r"^\|?\s*:?-{2,}:?\s*(\|\s*:?-{2,}:?\s*)*\|?\s*$")


def markdown_tables_html(text: str) -> str:
    """A markdown summary (pipe tables, ``#`` headings, paragraphs) as escaped HTML; other
    markdown syntax is shown as plain text."""
    out, table = [], []

    def flush() -> None:
        if table:
            header, *rows = table
            out.append("<table><tr>" + "".join(f"<th>{_esc(c)}</th>" for c in header) + "</tr>" + "".join(
                "<tr>" + "".join(f"<td>{_esc(c)}</td>" for c in row) + "</tr>" for row in rows) + "</table>")
            table.clear()

    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("|"):
            if not _MD_SEPARATOR.match(stripped):
                table.append([c.strip() for c in stripped.strip("|").split("|")])
            continue
        flush()
        if stripped.startswith("#"):
            out.append(f"<h4>{_esc(stripped.lstrip('#').strip())}</h4>")
        elif stripped:
            out.append(f"<p>{_esc(stripped)}</p>")
    flush()
    return "".join(out)


# --------------------------------------------------------------------------- sections

def _summary_section(records: list[dict], read_errors: list[str], map_config, missing_global: str,
                     cards: int, cards_failed: int, manifest_errors: list[str]) -> str:
    glob_ok = [r["global"]["score"] for r in records if carries_reward(r["global"])]
    states = Counter(region_state(g) for r in records for g in r["regions"])
    local_ok = [g["score"] for r in records for g in r["regions"] if region_state(g) == "ok"]
    judges = Counter("/".join(str((r.get("judge") or {}).get(k) or "?") for k in ("backend", "mode")) for r in records)
    no_map = sum(1 for r in records if not carries_reward(r["global"]) and map_config.use_global
                 and missing_global == "skip")
    items = [
        ("images (records)", len(records)),
        ("unreadable lines skipped", len(read_errors)),
        ("cards rendered", cards),
        ("cards without a picture", cards_failed),
        ("global judgments ok", len(glob_ok)),
        ("global judgments failed", len(records) - len(glob_ok)),
        ("mean global score (ok only)", _mean(glob_ok)),
        ("regions", sum(states.values())),
        ("regions rewarded (ok)", states["ok"]),
        ("regions failed", states["failed"]),
        ("regions filtered by grounding", states["filtered"]),
        ("mean local score (rewarded)", _mean(local_ok)),
        ("judge backend/mode", ", ".join(f"{k}: {v}" for k, v in judges.most_common()) or "–"),
        ("reward map", f"{map_config.mode}, {map_config.region_shape}, overlap {map_config.overlap}, "
                       f"cells {map_config.cell_rule}, "
                       f"global {'on' if map_config.use_global else 'off'}, missing_global={missing_global}"),
        ("images without a map (failed global, skipped in training)", no_map),
    ]
    parts = ['<section id="summary"><h2>Run summary</h2>', _kv_table(items)]
    per_category: dict[str, list[dict]] = defaultdict(list)
    for record in records:
        per_category[record.get("category") or "(none)"].append(record)
    if len(per_category) > 1 or "(none)" not in per_category:
        rows = []
        for category, recs in sorted(per_category.items()):
            scores = [r["global"]["score"] for r in recs if carries_reward(r["global"])]
            local = [g["score"] for r in recs for g in r["regions"] if region_state(g) == "ok"]
            rows.append((category, {"images": len(recs), "global failed": len(recs) - len(scores),
                                    "mean global": _mean(scores), "mean local": _mean(local)}))
        parts += ["<h4>By category</h4>", _rows_table(rows, "category")]
    for title, errors in (("unreadable reward lines", read_errors), ("unreadable manifest lines", manifest_errors)):
        if errors:
            listing = "\n".join(errors[:200]) + (f"\n... and {len(errors) - 200} more" if len(errors) > 200 else "")
            parts.append(f"<details><summary>{len(errors)} {title}</summary><pre>{_esc(listing)}</pre></details>")
    parts.append("</section>")
    return "".join(parts)


def _training_section(runs: list[MetricsRun], out_dir: Path) -> str:
    parts = ['<section id="training"><h2>Training</h2>']
    (out_dir / "plots").mkdir(parents=True, exist_ok=True)
    for k, run in enumerate(runs):
        parts.append(f"<h3>{_esc(run.name)} <span class=\"tag\">{_esc(run.path)}</span></h3>")
        if not run.rows:
            parts.append('<p class="note">no step rows in this metrics file</p>')
        plot = loss_plot(run)
        if plot is not None:
            relative = Path("plots") / f"loss_{k}.png"
            plot.save(out_dir / relative)
            parts.append(f'<div class="plot"><img src="{_src(relative)}" '
                         f'alt="{_esc("loss curves of " + run.name)}"></div>')
        elif run.rows:
            parts.append(f'<p class="note">none of {", ".join(LOSS_KEYS)} in this metrics file</p>')
        if run.rows:
            last = run.rows[-1]
            items = [("steps logged", len(run.rows)), ("last step", last["step"])]
            items += [(key, last[key]) for key in LAST_STEP_KEYS if key in last]
            if run.duplicate_steps:
                items.append(("steps logged twice (resume; later kept)", run.duplicate_steps))
            parts.append(_kv_table(items))
        if run.events:
            listing = "\n".join(run.events)
            parts.append(f"<details><summary>{len(run.events)} events</summary><pre>{_esc(listing)}</pre></details>")
        if run.errors:
            parts.append(f"<details><summary>{len(run.errors)} unreadable lines</summary>"
                         f"<pre>{_esc(chr(10).join(run.errors))}</pre></details>")
    parts.append("</section>")
    return "".join(parts)


def _copy_in(source: Path, out_dir: Path) -> Path:
    """Copy ``source`` into ``out_dir/eval`` (unless it is that file); returns the relative path."""
    relative = Path("eval") / safe_file_name(source.name, set())
    target = out_dir / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    if not (target.exists() and os.path.samefile(source, target)):
        shutil.copyfile(source, target)
    return relative


def _evaluation_section(summary: Path | None, chart: Path | None, out_dir: Path,
                        figures: Sequence[tuple[str, Path, str | None]] = ()) -> str:
    parts = ['<section id="evaluation"><h2>Evaluation</h2><div class="grid">']
    if summary is not None:
        text = summary.read_text(encoding="utf-8")
        if summary.suffix.lower() == ".json":
            try:
                body = json_summary_html(json.loads(text))
            except json.JSONDecodeError as err:
                raise ValueError(f"{summary}: invalid JSON ({err.msg} at line {err.lineno})") from None
        else:
            body = markdown_tables_html(text)
        parts.append(f'<div><p class="meta">{_esc(summary.name)}</p>{body}</div>')
    if chart is not None:
        relative = _copy_in(chart, out_dir)
        parts.append(f'<div class="chart"><img src="{_src(relative)}" alt="evaluation chart"></div>')
    parts.append("</div>")
    for title, path, caption in figures:
        relative = _copy_in(path, out_dir)
        parts.append(f'<h3>{_esc(title)}</h3>' + (f'<p class="meta">{_esc(caption)}</p>' if caption else "")
                     + f'<div class="chart"><img src="{_src(relative)}" alt="{_esc(title)}"></div>')
    parts.append("</section>")
    return "".join(parts)


def _region_rows(record: dict) -> str:
    head = ("<tr><th>#</th><th>label</th><th>score</th><th>status</th><th>reason</th><th>p_relevant</th>"
            "<th>shape</th><th>bbox</th></tr>")
    rows = []
    for region in record["regions"]:
        state = region_state(region)
        grounding = region.get("grounding") or {}
        reason = region.get("reason") or ""
        error = (region.get("detail") or {}).get("error")
        if error and state != "ok":
            reason = f"{reason} (error: {error})" if reason else f"error: {error}"
        status = {"ok": "ok", "failed": '<span class="failed">failed</span>',
                  "filtered": '<span class="filtered">filtered (grounding)</span>'}[state]
        bbox = ", ".join(f"{v:g}" for v in region["bbox"])
        rows.append(
            f"<tr><td class=\"num\">{_esc(region['region_id'])}</td><td>{_esc(region.get('label') or '')}</td>"
            f"<td>{_score_badge(region['score']) if region['score'] is not None else '–'}</td>"
            f"<td>{status} <span class=\"meta\">{_esc(region.get('method'))}</span></td><td>{_esc(reason)}</td>"
            f"<td class=\"num\">{_esc(_fmt(grounding.get('p_relevant'), 3))}</td>"
            f"<td>{'mask' if region.get('mask') else 'box'}</td><td class=\"num\">[{_esc(bbox)}]</td></tr>")
    if not rows:
        return "<p class=\"meta\">no regions</p>"
    return f'<table class="regions">{head}{"".join(rows)}</table>'


def _card_html(record: dict, anchor: str, picture: Path | None, card, error: str | None,
               manifest_row: dict | None) -> str:
    category = f'<span class="tag">{_esc(record["category"])}</span>' if record.get("category") else ""
    parts = [f'<article class="card" id="{_esc(anchor)}"><h3>{_esc(record["image_id"])}{category}</h3>',
             f'<p><b>Prompt:</b> {_esc(record["prompt"])}</p>']
    if manifest_row is not None:
        cot = manifest_row.get("think_output") or manifest_row.get("detailed_prompt")
        if cot:
            parts.append(f"<details><summary>Chain of thought</summary><pre>{_esc(cot)}</pre></details>")
        else:
            parts.append('<p class="meta">no chain of thought in the manifest</p>')
    if picture is not None:
        parts.append(f'<img src="{_src(picture)}" alt="{_esc("regions and reward map of " + record["image_id"])}" '
                     f'width="{card.layout.size[0]}" height="{card.layout.size[1]}" loading="lazy">')
    if error:
        parts.append(f'<p class="error">no picture: {_esc(error)}</p>')
    for note in (card.notes if card is not None else []):
        parts.append(f'<p class="note">{_esc(note)}</p>')
    glob = record["global"]
    reason = glob.get("reason") or ""
    if glob["status"] != "ok" and (glob.get("detail") or {}).get("error"):
        reason = f"{reason} (error: {glob['detail']['error']})" if reason else f"error: {glob['detail']['error']}"
    parts.append(f'<p><b>Global:</b> {_score_badge(glob["score"] if carries_reward(glob) else None)} '
                 f'<span class="meta">{_esc(glob.get("method"))}</span> {_esc(reason)}</p>')
    if card is not None and card.map_stats is not None:
        s = card.map_stats
        parts.append(f'<p class="meta">reward map: alpha {s["alpha"]:.3f}, weight mean {s["mean"]:.4f} '
                     f'(min {s["min"]:.3f}, max {s["max"]:.3f}), regions used {s["regions_used"]}, '
                     f'unrewarded {s["regions_unrewarded"]}, too small {s["regions_empty"]}'
                     + (f', mask fallbacks {s["mask_fallbacks"]}' if s["mask_fallbacks"] else "") + "</p>")
    parts.append(_region_rows(record))
    judge = record.get("judge") or {}
    parts.append(f'<p class="meta">image: {_esc(record.get("image_path") or record["image_file"])} '
                 f'({record["width"]}×{record["height"]}) · judge: {_esc(judge.get("backend"))} '
                 f'{_esc(judge.get("mode"))} {_esc(judge.get("model"))}</p></article>')
    return "".join(parts)


# --------------------------------------------------------------------------- the report

def render_report(rewards, out_dir: str | os.PathLike, *, manifest: str | os.PathLike | None = None,
                  metrics: Sequence[str | os.PathLike] | str | os.PathLike = (),
                  eval_summary: str | os.PathLike | None = None, eval_chart: str | os.PathLike | None = None,
                  reward_config=None, missing_global: str | None = None, limit: int | None = None,
                  title: str | None = None, progress: bool = False,
                  figures: Sequence[tuple[str, str | os.PathLike, str | None]] = ()) -> Path:
    """Write ``out_dir/report.html`` with its pictures; returns the report's path.

    Args:
        rewards: a reward JSONL path (either schema; bad lines are listed in the report) or
            records already read with :func:`srum.records.read_records`.
        manifest: the generation ``manifest.jsonl`` (chains of thought by image id).
        metrics: the trainer's ``metrics.jsonl`` file(s), one loss plot each.
        eval_summary: an evaluation summary, ``.json`` (rendered as tables) or markdown.
        eval_chart: an image (e.g. the evaluation bar chart), copied into ``out_dir/eval``.
        figures: more images for the evaluation section, ``(title, path, caption or None)``
            each (e.g. the side-by-side grid of :func:`srum.visualize.grid.eval_grid`), copied
            into ``out_dir/eval``.
        reward_config: :class:`RewardMapConfig`, the training config's ``rewards`` section, or
            None (official defaults); missing_global: see :func:`pictures.draw_card`.
        limit: cards for the first ``limit`` records only (the summary counts all).
    Raises FileNotFoundError for a missing input file; an unreadable image only costs its
    card's picture (the card says why).
    """
    map_config, missing = resolve_reward_config(reward_config, missing_global)
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    out_dir = Path(out_dir)
    if isinstance(rewards, (str, os.PathLike)):
        source = Path(rewards)
        if not source.is_file():
            raise FileNotFoundError(f"rewards file not found: {source}")
        records, read_errors = read_records(source)
        default_title = f"SRUM report: {source.resolve().parent.name}/{source.name}"
    else:
        records, read_errors, source = list(rewards), [], None
        default_title = "SRUM report"
    if isinstance(metrics, (str, os.PathLike)):
        metrics = [metrics]
    runs = [read_metrics(p) for p in metrics]
    manifest_rows, manifest_errors = read_cot_manifest(manifest) if manifest is not None else (None, [])
    summary_path = Path(eval_summary) if eval_summary is not None else None
    chart_path = Path(eval_chart) if eval_chart is not None else None
    figures = [(str(t), Path(p), c) for t, p, c in figures]
    for label, path in (("evaluation summary", summary_path), ("evaluation chart", chart_path),
                        *(("figure", p) for _, p, _ in figures)):
        if path is not None and not path.is_file():
            raise FileNotFoundError(f"{label} not found: {path}")

    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    shown = records if limit is None else records[:limit]
    taken: set[str] = set()
    cards_html, stems, failed = [], [], 0
    iterator = shown
    if progress:
        from tqdm import tqdm
        iterator = tqdm(shown, desc="visualize", dynamic_ncols=True)
    for record in iterator:
        stem = safe_file_name(record["image_id"], taken)
        stems.append(stem)
        picture, card, error = None, None, None
        try:
            card = draw_card(record, map_config, missing_global=missing)
            card.image.save(out_dir / "images" / f"{stem}.png")
            picture = Path("images") / f"{stem}.png"
        except (OSError, ValueError) as err:  # unreadable image (PIL raises OSError subclasses)
            failed += 1
            error = f"{type(err).__name__}: {err}"
        row = manifest_rows.get(record["image_id"]) if manifest_rows is not None else None
        if manifest_rows is not None and row is None:
            row = {}
        cards_html.append(_card_html(record, f"img-{stem}", picture, card, error, row))

    index_rows = []
    for record, stem in zip(shown, stems):
        states = Counter(region_state(g) for g in record["regions"])
        glob = record["global"]
        index_rows.append(
            f'<tr><td><a href="#img-{_esc(stem)}">{_esc(record["image_id"])}</a></td>'
            f'<td>{_esc(record.get("category") or "")}</td>'
            f'<td>{_score_badge(glob["score"] if carries_reward(glob) else None)}</td>'
            f'<td class="num">{states["ok"]}</td><td class="num">{states["failed"]}</td>'
            f'<td class="num">{states["filtered"]}</td></tr>')

    page_title = title or default_title
    generated = time.strftime("%Y-%m-%d %H:%M:%S")
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             f"<title>{_esc(page_title)}</title><style>{CSS}</style></head><body><main>",
             f"<h1>{_esc(page_title)}</h1>",
             f'<p class="meta">generated {generated}'
             + (f" from {_esc(source)}" if source is not None else "") + "</p>",
             _summary_section(records, read_errors, map_config, missing, len(shown), failed, manifest_errors)]
    if runs:
        parts.append(_training_section(runs, out_dir))
    if summary_path is not None or chart_path is not None or figures:
        parts.append(_evaluation_section(summary_path, chart_path, out_dir, figures))
    parts.append(f'<section id="images"><h2>Judged images ({len(shown)} of {len(records)})</h2>')
    if index_rows:
        parts.append("<details><summary>Index</summary><table><tr><th>image</th><th>category</th><th>global</th>"
                     "<th>regions ok</th><th>failed</th><th>filtered</th></tr>" + "".join(index_rows)
                     + "</table></details>")
    parts += cards_html
    parts.append("</section></main></body></html>\n")
    report = out_dir / "report.html"
    _write_atomic(report, "\n".join(parts))
    return report
