# SPDX-License-Identifier: Apache-2.0
"""One picture per judged image: the image with its regions, the dense reward map beside it.

A card (:func:`draw_card`) is laid out as::

    +------------------------------------------------------------------+
    | image id · category                                              |
    | prompt (wrapped)                                                 |
    | [swatch] global: +0.60 · alpha 0.80 · mean weight 0.46           |
    +-----------------------+  +-----------------------+  +-+ 1.0      |
    | image + region boxes  |  | reward map heat map   |  | |          |
    |                       |  |                       |  | | 0.5      |
    +-----------------------+  +-----------------------+  +-+ 0.0      |
    | local score legend    |  | map caption           |               |
    +------------------------------------------------------------------+

Both panels show the saved image's frame at the same display size: small images are
enlarged by a whole factor (nearest neighbour, so every source pixel is a clean block),
large ones shrunk to ``max_side``.

Colour scales (all piecewise linear in RGB):

* local scores and the *signed* reward map, range [-1, 1], diverging: red (-1),
  white (0), green (+1) (the end colours of ColorBrewer's RdYlGn);
* the *official* reward map, range [0, 1], sequential: viridis (dark purple 0 ->
  teal 0.5 -> yellow 1), which stays readable in grey scale and for red-green blindness.

Map values outside the scale's range (only possible with a custom ``background``) are
clipped for display.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Literal, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..records import carries_reward, decode_rle
from ..rewards.raster import RewardMapConfig, reward_weights

__all__ = [
    "RED", "WHITE", "GREEN", "GREY",
    "ColorScale", "SCORE_SCALE", "SIGNED_MAP_SCALE", "OFFICIAL_MAP_SCALE", "map_scale",
    "display_size", "CardLayout", "Card", "draw_card", "render_image_card", "region_state",
    "resolve_reward_config", "wrap_text", "font", "text_width", "line_height",
]

RGB = tuple[int, int, int]
RED: RGB = (215, 48, 39)
WHITE: RGB = (255, 255, 255)
GREEN: RGB = (26, 152, 80)
GREY: RGB = (140, 140, 140)
BLACK: RGB = (0, 0, 0)
INK: RGB = (30, 30, 30)
NO_MAP: RGB = (205, 205, 205)


# --------------------------------------------------------------------------- colour scales

@dataclasses.dataclass(frozen=True)
class ColorScale:
    """Piecewise-linear colour scale over ``[vmin, vmax]``.

    stops: ``(position in [0, 1], (r, g, b))`` pairs, positions increasing from 0 to 1.
    ticks: values labelled on colour bars.
    """

    name: str
    vmin: float
    vmax: float
    stops: tuple[tuple[float, RGB], ...]
    ticks: tuple[float, ...]

    def rgb(self, values) -> np.ndarray:
        """values [...] (float) -> colours [..., 3] uint8; out-of-range values are clipped."""
        t = (np.clip(np.asarray(values, dtype=np.float64), self.vmin, self.vmax) - self.vmin) / (self.vmax - self.vmin)
        positions = [p for p, _ in self.stops]
        channels = [np.interp(t, positions, [c[k] for _, c in self.stops]) for k in range(3)]
        return np.rint(np.stack(channels, axis=-1)).astype(np.uint8)

    def color(self, value: float) -> RGB:
        """One value -> ``(r, g, b)``."""
        return tuple(int(v) for v in self.rgb(np.array([value]))[0])  # type: ignore[return-value]


_DIVERGING = ((0.0, RED), (0.5, WHITE), (1.0, GREEN))
_VIRIDIS = ((0.0, (68, 1, 84)), (0.25, (59, 82, 139)), (0.5, (33, 145, 140)),
            (0.75, (94, 201, 98)), (1.0, (253, 231, 37)))

SCORE_SCALE = ColorScale("local score", -1.0, 1.0, _DIVERGING, (-1.0, -0.5, 0.0, 0.5, 1.0))
SIGNED_MAP_SCALE = ColorScale("signed reward map", -1.0, 1.0, _DIVERGING, (-1.0, -0.5, 0.0, 0.5, 1.0))
OFFICIAL_MAP_SCALE = ColorScale("official reward map", 0.0, 1.0, _VIRIDIS, (0.0, 0.25, 0.5, 0.75, 1.0))


def map_scale(config: RewardMapConfig) -> ColorScale:
    """The heat-map scale for a reward-map mode: official [0, 1] viridis, signed [-1, 1]
    red-white-green."""
    return OFFICIAL_MAP_SCALE if config.mode == "official" else SIGNED_MAP_SCALE


def resolve_reward_config(config, missing_global: str | None = None) -> tuple[RewardMapConfig, str]:
    """Accept None (defaults), a :class:`RewardMapConfig`, or the training config's
    ``rewards`` section (anything with ``.map`` and ``.missing_global``); returns
    ``(map config, missing_global)``. An explicit ``missing_global`` wins; else the
    section's, else ``"skip"`` (the trainer's default)."""
    section_missing = None
    if config is None:
        config = RewardMapConfig()
    elif not isinstance(config, RewardMapConfig) and isinstance(getattr(config, "map", None), RewardMapConfig):
        section_missing = getattr(config, "missing_global", None)
        config = config.map
    if not isinstance(config, RewardMapConfig):
        raise TypeError(f"reward config must be a RewardMapConfig or a rewards section with .map, "
                        f"got {type(config).__name__}")
    missing = missing_global or section_missing or "skip"
    if missing not in ("skip", "neutral"):
        raise ValueError(f"missing_global must be 'skip' or 'neutral', got {missing!r}")
    return config, missing


# --------------------------------------------------------------------------- text

@functools.lru_cache(maxsize=16)
def font(size: int) -> ImageFont.ImageFont:
    """Pillow's bundled font at ``size`` px (older Pillow: its fixed bitmap font).
    It covers Latin-1 only; other characters are drawn as boxes."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has no sized default font
        return ImageFont.load_default()


def text_width(text: str, fnt) -> float:
    """Advance width of ``text`` in pixels."""
    return fnt.getlength(text) if hasattr(fnt, "getlength") else fnt.getbbox(text)[2]


def line_height(fnt) -> int:
    """Pixels from one text line to the next (ascent + descent + a small gap)."""
    box = fnt.getbbox("Ag|")
    return int(box[3] - min(box[1], 0)) + 3


def wrap_text(text: str, fnt, max_width: float, max_lines: int | None = None) -> list[str]:
    """Greedy word wrap to ``max_width`` pixels; words longer than a line are split.
    With ``max_lines`` the last kept line ends in "..." when text was cut."""
    lines: list[str] = []
    for paragraph in text.replace("\r", "").split("\n"):
        line = ""
        for word in paragraph.split():
            candidate = f"{line} {word}" if line else word
            if text_width(candidate, fnt) <= max_width:
                line = candidate
                continue
            if line:
                lines.append(line)
            while text_width(word, fnt) > max_width and len(word) > 1:  # split an over-long word
                cut = len(word) - 1
                while cut > 1 and text_width(word[:cut], fnt) > max_width:
                    cut -= 1
                lines.append(word[:cut])
                word = word[cut:]
            line = word
        lines.append(line)
    if max_lines is not None and len(lines) > max_lines:
        lines = lines[:max_lines]
        last = lines[-1]
        while last and text_width(last + " ...", fnt) > max_width:
            last = last[:-1]
        lines[-1] = last + " ..."
    return lines


# --------------------------------------------------------------------------- geometry

def display_size(width: int, height: int, min_side: int = 256, max_side: int = 512) -> tuple[int, int, float, float]:
    """Panel size for a ``width`` x ``height`` image -> ``(dw, dh, sx, sy)``.

    Images whose long side is under ``min_side`` are enlarged by the smallest whole factor
    reaching it (capped so the long side stays within ``max(max_side, long side)``); those
    over ``max_side`` are shrunk to it; the rest keep their size. ``sx = dw / width``."""
    long_side = max(width, height)
    if long_side < min_side:
        factor = math.ceil(min_side / long_side)
        while factor > 1 and long_side * factor > max(max_side, min_side):
            factor -= 1
        dw, dh = width * factor, height * factor
    elif long_side > max_side:
        ratio = max_side / long_side
        dw, dh = max(1, round(width * ratio)), max(1, round(height * ratio))
    else:
        dw, dh = width, height
    return dw, dh, dw / width, dh / height


@dataclasses.dataclass(frozen=True)
class CardLayout:
    """Where things are on a card (card pixels, ``(x0, y0, x1, y1)`` with exclusive ends).

    Image pixel ``(x, y)`` shows at card pixel ``(image_box[0] + x * sx, image_box[1] + y * sy)``
    and its reward-map value at the same offset inside ``map_box``."""

    size: tuple[int, int]
    image_box: tuple[int, int, int, int]
    map_box: tuple[int, int, int, int]
    colorbar_box: tuple[int, int, int, int]
    sx: float
    sy: float


@dataclasses.dataclass
class Card:
    """A rendered card: the picture, its layout, the reward map shown (None when the record
    gets no map) and its statistics from :func:`srum.rewards.raster.reward_weights` (None
    without a map); ``notes`` are problems worth showing (missing map, size mismatch).

    ``reward_map`` is ``[height, width]`` (the image's pixel grid) when the panel shows the
    image at full size or enlarged, and ``[dh, dw]`` (the panel's grid) when it is shrunk."""

    image: Image.Image
    layout: CardLayout
    reward_map: np.ndarray | None
    map_stats: dict | None
    notes: list[str]


def region_state(region: dict) -> Literal["ok", "failed", "filtered"]:
    """"filtered" when self-grounding rejected the region, else its judgment status."""
    grounding = region.get("grounding")
    if isinstance(grounding, dict) and grounding.get("kept") is False:
        return "filtered"
    return "ok" if carries_reward(region) else "failed"


# --------------------------------------------------------------------------- drawing

def _dashed_rectangle(draw: ImageDraw.ImageDraw, box: Sequence[float], color: RGB, width: int, dash: int) -> None:
    """Rectangle outline of alternating ``color`` and white dashes (visible on any image)."""
    x0, y0, x1, y1 = box
    segments = (((x0, y0), (x1, y0)), ((x1, y0), (x1, y1)), ((x1, y1), (x0, y1)), ((x0, y1), (x0, y0)))
    for (ax, ay), (bx, by) in segments:
        length = math.hypot(bx - ax, by - ay)
        if length == 0:
            continue
        start, k = 0.0, 0
        while start < length:
            end = min(start + dash, length)
            draw.line([(ax + (bx - ax) * start / length, ay + (by - ay) * start / length),
                       (ax + (bx - ax) * end / length, ay + (by - ay) * end / length)],
                      fill=color if k % 2 == 0 else WHITE, width=width)
            start, k = end, k + 1


def _region_label(region: dict, state: str) -> str:
    label = region.get("label") or "region"
    if state == "ok":
        return f"#{region['region_id']} {label} {region['score']:+.2f}"
    return f"#{region['region_id']} {label} {state}"


def _draw_regions(panel: Image.Image, record: dict, sx: float, sy: float, fnt) -> None:
    """Mask tint + box outline + label per region, on the image panel (in place).

    Rewarded regions: solid outline in the local-score colour between two thin dark
    lines (so a white 0.0 stays visible); failed judgments: dashed dark grey and white;
    regions rejected by grounding: dashed light grey and white. Masks of rewarded regions are tinted."""
    dw, dh = panel.size
    stroke = max(2, round(max(dw, dh) / 170))
    order = sorted(record["regions"], key=lambda r: region_state(r) == "ok")  # rewarded ones on top
    for region in order:
        state = region_state(region)
        if state != "ok" or region.get("mask") is None:
            continue
        mask = Image.fromarray(decode_rle(region["mask"]).astype(np.uint8) * 90)
        mask = mask.resize((dw, dh), Image.NEAREST)
        tint = Image.new("RGB", (dw, dh), SCORE_SCALE.color(region["score"]))
        panel.paste(tint, (0, 0), mask)
    draw = ImageDraw.Draw(panel)
    line_h = line_height(fnt)
    for region in order:
        state = region_state(region)
        x1, y1, x2, y2 = region["bbox"]
        box = (round(x1 * sx), round(y1 * sy), max(round(x1 * sx), round(x2 * sx) - 1),
               max(round(y1 * sy), round(y2 * sy) - 1))
        if state == "ok":
            color = SCORE_SCALE.color(region["score"])
            draw.rectangle((box[0] - 1, box[1] - 1, box[2] + 1, box[3] + 1), outline=INK, width=1)
            draw.rectangle(box, outline=color, width=stroke)
            if box[2] - box[0] > 2 * stroke and box[3] - box[1] > 2 * stroke:
                inner = (box[0] + stroke, box[1] + stroke, box[2] - stroke, box[3] - stroke)
                draw.rectangle(inner, outline=INK, width=1)
            label_fill = color
        else:
            color = (60, 60, 60) if state == "failed" else (170, 170, 170)
            _dashed_rectangle(draw, box, color, stroke, dash=max(4, 3 * stroke))
            label_fill = (225, 225, 225)
        text = _region_label(region, state)
        text_w = int(text_width(text, fnt)) + 6
        top = box[1] - line_h if box[1] >= line_h else box[1] + stroke  # above the box when it fits
        left = min(box[0], max(0, dw - text_w))
        draw.rectangle((left, top, left + text_w, top + line_h - 1), fill=label_fill, outline=INK)
        draw.text((left + 3, top + 1), text, fill=BLACK, font=fnt)


def _draw_colorbar(scale: ColorScale, height: int, fnt, title: str) -> Image.Image:
    """Vertical colour bar (top = vmax) with tick labels and a title above."""
    bar_w, tick = 14, 4
    label_w = max(int(text_width(f"{t:g}", fnt)) for t in scale.ticks)
    line_h = line_height(fnt)
    width = max(bar_w + tick + 3 + label_w, int(text_width(title, fnt))) + 2
    bar_top = line_h + line_h // 2
    bar_h = max(20, height - bar_top - line_h // 2)
    image = Image.new("RGB", (width, height), WHITE)
    values = scale.vmax - (np.arange(bar_h) + 0.5) / bar_h * (scale.vmax - scale.vmin)
    strip = np.repeat(scale.rgb(values)[:, None, :], bar_w, axis=1)
    image.paste(Image.fromarray(strip), (0, bar_top))
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, bar_top, bar_w - 1, bar_top + bar_h - 1), outline=INK)
    draw.text((0, 0), title, fill=INK, font=fnt)
    for t in scale.ticks:
        y = bar_top + round((scale.vmax - t) / (scale.vmax - scale.vmin) * (bar_h - 1))
        draw.line((bar_w, y, bar_w + tick, y), fill=INK)
        draw.text((bar_w + tick + 3, y - line_h // 2), f"{t:g}", fill=INK, font=fnt)
    return image


def _score_legend(width: int, fnt) -> Image.Image:
    """Horizontal red-white-green strip labelled -1 / 0 / +1 (the box colours)."""
    line_h = line_height(fnt)
    title = "box colour = local score"
    strip_w = max(60, min(width - 4, 200))
    image = Image.new("RGB", (width, 2 * line_h + 12), WHITE)
    draw = ImageDraw.Draw(image)
    draw.text((0, 0), title, fill=INK, font=fnt)
    values = np.linspace(-1.0, 1.0, strip_w)
    strip = np.repeat(SCORE_SCALE.rgb(values)[None], 10, axis=0)
    image.paste(Image.fromarray(strip), (0, line_h))
    draw.rectangle((0, line_h, strip_w - 1, line_h + 9), outline=INK)
    for value, text in ((-1.0, "-1"), (0.0, "0"), (1.0, "+1")):
        x = round((value + 1.0) / 2.0 * (strip_w - 1))
        tw = text_width(text, fnt)
        draw.text((min(max(0, x - tw / 2), strip_w - tw), line_h + 11), text, fill=INK, font=fnt)
    return image


def _open_panel_image(record: dict, dw: int, dh: int, notes: list[str]) -> Image.Image:
    path = record.get("image_path") or record["image_file"]
    with Image.open(path) as source:
        source.load()
        image = source.convert("RGB")
    if image.size != (record["width"], record["height"]):
        notes.append(f"image file is {image.size[0]}x{image.size[1]} but the record's frame is "
                     f"{record['width']}x{record['height']}; shown stretched to the record's frame")
    resample = Image.NEAREST if dw >= image.size[0] and dh >= image.size[1] else Image.LANCZOS
    return image.resize((dw, dh), resample)


def draw_card(record: dict, config=None, *, missing_global: str | None = None,
              min_side: int = 256, max_side: int = 512) -> Card:
    """Render one validated reward record (with ``image_path``, as ``read_records`` gives).

    config: a :class:`RewardMapConfig`, the training config's ``rewards`` section, or None
    (defaults: official mode). missing_global: ``"skip"`` shows no map for a record whose
    global judgment failed (training drops it), ``"neutral"`` shows the map with
    ``alpha = 0.5``; default: the section's setting, else ``"skip"``.
    Raises FileNotFoundError / PIL errors when the image cannot be read."""
    map_config, missing = resolve_reward_config(config, missing_global)
    width, height = int(record["width"]), int(record["height"])
    dw, dh, sx, sy = display_size(width, height, min_side, max_side)
    fnt = font(max(11, min(18, round(max(dw, dh) / 22))))
    line_h = line_height(fnt)
    pad, gap = 10, 10
    notes: list[str] = []

    panel = _open_panel_image(record, dw, dh, notes)
    _draw_regions(panel, record, sx, sy, fnt)

    glob = record["global"]
    scale = map_scale(map_config)
    if not carries_reward(glob) and map_config.use_global and missing == "skip":
        reward_map, stats = None, None
        heat = Image.new("RGB", (dw, dh), NO_MAP)
        draw = ImageDraw.Draw(heat)
        for k, text in enumerate(("no reward map:", "global judgment failed,", "training skips this image",
                                  "(missing_global=skip)")):
            draw.text((8, 8 + k * line_h), text, fill=INK, font=fnt)
        notes.append("global judgment failed: no reward map (training with missing_global=skip drops this image)")
    else:
        # Enlarged or full-size panels show the map of every image pixel; a shrunk panel shows
        # the map rasterised on the panel's own grid (one frame pixel per display pixel), which
        # is what the image would get at that resolution and avoids [regions, H, W] buffers
        # of a large image.
        grid = (height, width) if dw >= width and dh >= height else (dh, dw)
        weights, stats = reward_weights(record, grid, map_config, missing_global=missing, frame_hw=grid)
        reward_map = weights.numpy()
        heat = Image.fromarray(scale.rgb(reward_map)).resize((dw, dh), Image.NEAREST)
        if stats["global_missing"] and map_config.use_global:
            notes.append("global judgment failed: map shown with alpha = 0.5 (missing_global=neutral)")
    colorbar = _draw_colorbar(scale, dh, fnt, "weight")

    card_w = pad + dw + gap + dw + gap + colorbar.size[0] + pad
    text_w = card_w - 2 * pad
    header = [f"{record['image_id']}" + (f" · {record['category']}" if record.get("category") else "")]
    header += wrap_text(f"prompt: {record['prompt']}", fnt, text_w, max_lines=6)
    if carries_reward(glob):
        summary = f"global: {glob['score']:+.2f}"
        swatch = SCORE_SCALE.color(glob["score"])
    else:
        summary = "global: failed"
        swatch = None
    if stats is not None:
        summary += f" · alpha {stats['alpha']:.2f} · mean weight {stats['mean']:.3f}"
    summary_y = pad + len(header) * line_h
    panels_y = summary_y + line_h + gap
    legend = _score_legend(dw, fnt)
    caption = wrap_text(f"reward map: {map_config.mode}, {map_config.region_shape}, overlap {map_config.overlap}, "
                        f"cells {map_config.cell_rule}",
                        fnt, dw, max_lines=2)
    footer_h = max(legend.size[1], len(caption) * line_h)
    card_h = panels_y + dh + 6 + footer_h + pad

    card = Image.new("RGB", (card_w, card_h), WHITE)
    draw = ImageDraw.Draw(card)
    for k, text in enumerate(header):
        draw.text((pad, pad + k * line_h), text, fill=INK, font=fnt)
    text_x = pad
    if swatch is not None:
        side = line_h - 4
        draw.rectangle((pad, summary_y + 1, pad + side, summary_y + 1 + side), fill=swatch, outline=INK)
        text_x += side + 6
    draw.text((text_x, summary_y), summary, fill=INK if swatch is not None else RED, font=fnt)

    image_box = (pad, panels_y, pad + dw, panels_y + dh)
    map_box = (pad + dw + gap, panels_y, pad + 2 * dw + gap, panels_y + dh)
    bar_x = map_box[2] + gap
    card.paste(panel, image_box[:2])
    card.paste(heat, map_box[:2])
    for x0, y0, x1, y1 in (image_box, map_box):  # a frame outside each panel (white map cells need one)
        draw.rectangle((x0 - 1, y0 - 1, x1, y1), outline=GREY)
    card.paste(colorbar, (bar_x, panels_y))
    card.paste(legend, (pad, panels_y + dh + 6))
    for k, text in enumerate(caption):
        draw.text((map_box[0], panels_y + dh + 6 + k * line_h), text, fill=INK, font=fnt)
    layout = CardLayout(size=(card_w, card_h), image_box=image_box, map_box=map_box,
                        colorbar_box=(bar_x, panels_y, bar_x + colorbar.size[0], panels_y + dh), sx=sx, sy=sy)
    return Card(card, layout, reward_map, stats, notes)


def render_image_card(record: dict, config=None, **kwargs) -> Image.Image:
    """The card picture of :func:`draw_card` (same arguments)."""
    return draw_card(record, config, **kwargs).image
