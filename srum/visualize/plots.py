# SPDX-License-Identifier: Apache-2.0
"""Training curves without matplotlib: reading ``metrics.jsonl`` and a small PIL line plot.

``metrics.jsonl`` (written by :class:`srum.training.metrics.MetricsLogger`) holds one
``{"step": N, "loss": ..., ...}`` object per optimizer step and ``{"event": "..."}`` lines.
A resumed run appends to the same file, so steps after the last checkpoint appear twice;
the later line wins (it is what the resumed run actually trained).
"""
from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Sequence

from PIL import Image, ImageDraw

from ..fileio import iter_jsonl
from .pictures import font, line_height, text_width

__all__ = ["MetricsRun", "read_metrics", "Series", "nice_ticks", "moving_average", "line_plot", "PALETTE",
           "LOSS_KEYS", "loss_plot"]

# Colour-blind-safe qualitative colours (Okabe & Ito).
PALETTE = ((0, 114, 178), (213, 94, 0), (0, 158, 115), (204, 121, 167), (230, 159, 0), (86, 180, 233),
           (0, 0, 0), (240, 228, 66))
LOSS_KEYS = ("loss", "reward_term", "constraint_term")


@dataclasses.dataclass
class MetricsRun:
    """One metrics file: ``rows`` sorted by step (later duplicates replace earlier ones),
    ``events`` in file order, ``errors`` for unreadable lines (``path:line: why``)."""

    name: str
    path: Path
    rows: list[dict]
    events: list[str]
    errors: list[str]
    duplicate_steps: int = 0

    def series(self, key: str) -> tuple[list[float], list[float | None]]:
        """(steps, values) of one metric; missing or non-numeric values are None (gaps)."""
        xs, ys = [], []
        for row in self.rows:
            value = row.get(key)
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            xs.append(float(row["step"]))
            ys.append(float(value) if ok else None)
        return xs, ys

    def has(self, key: str) -> bool:
        return any(y is not None for y in self.series(key)[1])


def read_metrics(path: str | os.PathLike, name: str | None = None) -> MetricsRun:
    """Read a trainer's ``metrics.jsonl``. ``name`` defaults to the file's directory name.
    Raises FileNotFoundError when the file is missing; bad lines are listed, not fatal."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"metrics file not found: {path}")
    by_step: dict[int, dict] = {}
    events, errors, duplicates = [], [], 0
    for number, row, err in iter_jsonl(path):
        if err:
            errors.append(err)
        elif "event" in row:
            events.append(str(row["event"]))
        elif isinstance(row.get("step"), int) and not isinstance(row.get("step"), bool):
            duplicates += row["step"] in by_step
            by_step[row["step"]] = row
        else:
            errors.append(f"{path}:{number}: neither a step row (integer 'step') nor an event")
    rows = [by_step[s] for s in sorted(by_step)]
    return MetricsRun(name or path.resolve().parent.name or str(path), path, rows, events, errors, duplicates)


# --------------------------------------------------------------------------- the plot

@dataclasses.dataclass
class Series:
    """One line: ``ys[k] = None`` leaves a gap. ``color`` None takes the next palette colour."""

    name: str
    xs: Sequence[float]
    ys: Sequence[float | None]
    color: tuple[int, int, int] | None = None


def nice_ticks(lo: float, hi: float, max_ticks: int = 6) -> list[float]:
    """Round tick values (steps of 1, 2 or 5 times a power of ten) covering [lo, hi]."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"tick range must be finite, got [{lo}, {hi}]")
    if hi < lo:
        lo, hi = hi, lo
    if hi == lo:
        pad = abs(lo) * 0.1 or 1.0
        lo, hi = lo - pad, hi + pad
    raw = (hi - lo) / max(1, max_ticks - 1)
    power = 10.0 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw - 1e-12 * power)
    first = math.floor(lo / step + 1e-9) * step
    digits = max(0, 2 - math.floor(math.log10(step)))
    ticks, k = [], 0
    while True:
        value = first + k * step
        ticks.append(round(value, digits) + 0.0)  # no 0.30000000000000004, no -0.0
        if value >= hi - 1e-9 * step:
            break
        k += 1
    return ticks


def moving_average(ys: Sequence[float | None], window: int) -> list[float | None]:
    """Trailing mean over the last ``window`` values, ignoring gaps (None stays None)."""
    out: list[float | None] = []
    recent: list[float] = []
    for y in ys:
        if y is None:
            out.append(None)
            continue
        recent.append(y)
        if len(recent) > window:
            recent.pop(0)
        out.append(sum(recent) / len(recent))
    return out


def _format_tick(value: float, step: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1e5 or abs(value) < 1e-3:
        return f"{value:.2g}"
    fraction = f"{step:.8f}".rstrip("0").split(".")[1]  # as many decimals as the tick step has
    return f"{value:.{len(fraction)}f}"


def _lighter(color: tuple[int, int, int], amount: float = 0.6) -> tuple[int, int, int]:
    return tuple(round(c + (255 - c) * amount) for c in color)  # type: ignore[return-value]


def line_plot(series: Sequence[Series], *, title: str = "", x_label: str = "step", y_label: str = "",
              size: tuple[int, int] = (760, 380), smooth_over: int = 60) -> Image.Image:
    """Line chart with axes, round ticks, grid, legend and title, as a PIL image.

    When a series has more than ``smooth_over`` points it is drawn twice: the raw values as
    a thin light line and a trailing moving average (window = points / 30, at least 5) as
    the thick line. Raises ValueError when no series has a finite value.
    """
    width, height = size
    fnt = font(13)
    line_h = line_height(fnt)
    colored = [dataclasses.replace(s, color=s.color or PALETTE[k % len(PALETTE)]) for k, s in enumerate(series)]
    points = [(x, y) for s in colored for x, y in zip(s.xs, s.ys) if y is not None and math.isfinite(y)]
    if not points:
        raise ValueError(f"nothing to plot{' for ' + title if title else ''}: no finite values")
    xs_all, ys_all = [p[0] for p in points], [p[1] for p in points]
    x_ticks, y_ticks = nice_ticks(min(xs_all), max(xs_all), 8), nice_ticks(min(ys_all), max(ys_all), 6)
    x_lo, x_hi, y_lo, y_hi = x_ticks[0], x_ticks[-1], y_ticks[0], y_ticks[-1]
    x_step = x_ticks[1] - x_ticks[0] if len(x_ticks) > 1 else 1.0
    y_step = y_ticks[1] - y_ticks[0] if len(y_ticks) > 1 else 1.0
    y_labels = [_format_tick(v, y_step) for v in y_ticks]

    left = 12 + line_h + max(int(text_width(t, fnt)) for t in y_labels) + 8
    top = 10 + (line_h + 4 if title else 0)
    legend_h = line_h + 6
    right, bottom = width - 16, height - (2 * line_h + 12) - legend_h
    if right - left < 40 or bottom - top < 40:
        raise ValueError(f"plot size {size} too small")

    def to_px(x: float, y: float) -> tuple[float, float]:
        return (left + (x - x_lo) / (x_hi - x_lo) * (right - left),
                bottom - (y - y_lo) / (y_hi - y_lo) * (bottom - top))

    image = Image.new("RGB", size, (255, 255, 255))
    draw = ImageDraw.Draw(image)
    if title:
        draw.text(((width - text_width(title, fnt)) / 2, 8), title, fill=(20, 20, 20), font=fnt)
    for value, text in zip(y_ticks, y_labels):
        _, y = to_px(x_lo, value)
        draw.line((left, y, right, y), fill=(230, 230, 230))
        draw.line((left - 4, y, left, y), fill=(60, 60, 60))
        draw.text((left - 7 - text_width(text, fnt), y - line_h / 2), text, fill=(40, 40, 40), font=fnt)
    for value in x_ticks:
        x, _ = to_px(value, y_lo)
        text = _format_tick(value, x_step)
        draw.line((x, top, x, bottom), fill=(238, 238, 238))
        draw.line((x, bottom, x, bottom + 4), fill=(60, 60, 60))
        draw.text((x - text_width(text, fnt) / 2, bottom + 6), text, fill=(40, 40, 40), font=fnt)
    draw.rectangle((left, top, right, bottom), outline=(60, 60, 60))
    if x_label:
        draw.text(((left + right - text_width(x_label, fnt)) / 2, bottom + 6 + line_h), x_label,
                  fill=(20, 20, 20), font=fnt)
    if y_label:  # rotated text: draw on its own strip, then turn it
        strip = Image.new("RGB", (int(text_width(y_label, fnt)) + 2, line_h), (255, 255, 255))
        ImageDraw.Draw(strip).text((1, 0), y_label, fill=(20, 20, 20), font=fnt)
        strip = strip.rotate(90, expand=True)
        image.paste(strip, (6, max(top, int((top + bottom - strip.size[1]) / 2))))

    def polyline(xs, ys, color, line_width):
        run: list[tuple[float, float]] = []
        for x, y in list(zip(xs, ys)) + [(None, None)]:
            if y is None or not math.isfinite(y):
                if len(run) > 1:
                    draw.line(run, fill=color, width=line_width, joint="curve")
                elif len(run) == 1:
                    cx, cy = run[0]
                    draw.ellipse((cx - 2, cy - 2, cx + 2, cy + 2), fill=color)
                run = []
            else:
                run.append(to_px(x, y))

    for s in colored:
        n = sum(y is not None for y in s.ys)
        if n > smooth_over:
            polyline(s.xs, s.ys, _lighter(s.color), 1)
            polyline(s.xs, moving_average(s.ys, max(5, n // 30)), s.color, 2)
        else:
            polyline(s.xs, s.ys, s.color, 2)

    x = left
    legend_y = height - legend_h
    for s in colored:
        draw.line((x, legend_y + line_h / 2, x + 22, legend_y + line_h / 2), fill=s.color, width=3)
        draw.text((x + 27, legend_y), s.name, fill=(20, 20, 20), font=fnt)
        x += 27 + text_width(s.name, fnt) + 18
    return image


def loss_plot(run: MetricsRun, keys: Sequence[str] = LOSS_KEYS,
              size: tuple[int, int] = (760, 380)) -> Image.Image | None:
    """The loss terms of one run (those present); None when the run has none of them."""
    series = []
    for key in keys:
        if run.has(key):
            xs, ys = run.series(key)
            series.append(Series(key, xs, ys))
    if not series:
        return None
    return line_plot(series, title=f"training loss: {run.name}", x_label="step", y_label="loss", size=size)

