# SPDX-License-Identifier: Apache-2.0
"""The exact judge of the miniature world: read the objects of a picture, check a prompt.

:func:`read_objects` (numpy + Pillow, ~2-3 ms for a 64x64 picture):

1. **Colour of each pixel.** For every palette colour ``c`` the pixel ``p`` is explained
   as ``alpha * c`` (``alpha`` = the least-squares coverage, clipped to [0, 1]); the
   colour with the smallest residual ``|p - alpha c|`` wins. A pixel is *coloured* when
   ``alpha >= 0.5`` (at least half covered, so anti-aliased and blurred edges split
   evenly) and the residual is small (``<= 12 + 0.15 |alpha c|`` grey levels): a colour
   that is not in the palette (white, grey, orange ...) is no object.
2. **Components** of each colour, 8-connected (union-find over row runs).
3. **Stripe bands are merged**: components of one colour whose column ranges overlap and
   that are at most :data:`MERGE_GAP` rows apart form one object (even a 1-pixel band:
   after a blur the band at a diamond's tip may be all that is left of it). Objects of
   the world keep a gap of 6 px, so two objects never merge. Objects of under
   :data:`MIN_OBJECT_AREA` coloured pixels are dropped (specks of a noisy picture).
4. Per object:

   * the **silhouette** spans each row from its first to its last coloured pixel; a row
     a stripe left empty gets ends interpolated from the coloured rows around it (all
     shapes are convex and stripes horizontal, so this restores the outline);
   * the **fill** is "solid" when coloured pixels cover >= 85 % of the silhouette
     (striped objects: ~70 %);
   * the **shape** is the template (circle, square, triangle, diamond drawn into the
     silhouette's box, the box also grown by up to 3 rows up or down and a column each
     side, in case a blur thinned a tip or erased a stripe that held only a tip) of best
     IoU, or ``None`` (not recognised) under :data:`MIN_SHAPE_IOU`;
   * the **size** is "small" when the template box's larger side is under 19 px (drawn:
     14 or 24), the **position** the template box's centre.

:func:`check` matches the prompt against the recognised objects with
:func:`~srum.miniworld.world.evaluate_spec` (the ground truth's own rules: distinct
objects for each asked object, all assignments tried, relations on box centres, exact
counts for numeracy and extra objects allowed elsewhere). A picture in which no object
is recognised is ``readable: False`` and wrong: it is counted, never skipped.
"""
from __future__ import annotations

import functools
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image, ImageDraw

from .world import COLORS, IMAGE_SIZE, SHAPES, SIZES, PromptSpec, evaluate_spec

COLOR_NAMES = tuple(COLORS)
_PALETTE = np.array([COLORS[c] for c in COLOR_NAMES], dtype=np.float32)     # [6, 3]
_PALETTE_SQ = (_PALETTE ** 2).sum(1)                                          # [6]
_PALETTE_NORM = np.sqrt(_PALETTE_SQ)
MIN_ALPHA = 0.5            # coverage from which a pixel belongs to its colour
RESIDUAL_ABS = 12.0        # grey levels of noise a coloured pixel may carry ...
RESIDUAL_REL = 0.15        # ... plus this share of its brightness (hue tolerance)
MERGE_GAP = 4              # rows: stripe bands of one object are 2 px apart (objects: >= 6)
MIN_OBJECT_AREA = 30       # coloured px of an object (drawn ones, blurred: >= 46; noise specks: mostly < 25)
SOLID_MIN_RATIO = 0.85     # coloured / silhouette: solid ~1.0, striped ~0.7
MIN_SHAPE_IOU = 0.75       # best template IoU of a recognised shape (drawn ones, perturbed: >= 0.82)
SIZE_SPLIT = (SIZES["small"] + SIZES["large"]) / 2   # 19 px
MAX_TIP_ROWS = 3           # rows a lost tip may take off the top or bottom of an object


@dataclass(frozen=True)
class DetectedObject:
    """One object read from a picture. ``shape`` is ``None`` when no template fits
    (the object is then not recognised). ``bbox``: ``(x1, y1, x2, y2)`` pixels, ends
    exclusive; ``x``, ``y``: its centre; ``area``: coloured pixels; ``fill_ratio``:
    coloured / silhouette pixels; ``shape_iou``: IoU of the best template."""

    shape: str | None
    color: str
    size: str
    fill: str
    x: float
    y: float
    bbox: tuple[int, int, int, int]
    area: int
    fill_ratio: float
    shape_iou: float

    def to_dict(self) -> dict:
        d = asdict(self)
        d["bbox"] = list(self.bbox)
        d["fill_ratio"] = round(self.fill_ratio, 3)
        d["shape_iou"] = round(self.shape_iou, 3)
        return d


@dataclass(frozen=True)
class Verdict:
    """``correct``: the picture shows the prompt. ``requirements``: see
    :func:`~srum.miniworld.world.evaluate_spec` (``overall`` included). ``readable``:
    at least one object was recognised. ``objects``: every object read (recognised or not)."""

    correct: bool
    requirements: dict[str, bool]
    readable: bool
    objects: tuple[DetectedObject, ...]

    def failed(self) -> list[str]:
        """Names of the requirements that failed (``unreadable`` first when nothing was recognised)."""
        names = [k for k, v in self.requirements.items() if not v and k != "overall"]
        return (["unreadable"] if not self.readable else []) + names

    def to_dict(self) -> dict:
        return {"correct": self.correct, "readable": self.readable, "requirements": dict(self.requirements),
                "objects": [o.to_dict() for o in self.objects]}


# ------------------------------------------------------------------ pixels -> colour labels
def _as_array(image) -> np.ndarray:
    """``[64, 64, 3]`` float32 of a PIL image or an ``[H, W, 3]`` uint8 array (other sizes
    are resized to 64x64: the world's sizes are in pixels of that frame)."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(np.asarray(image, dtype=np.uint8))
    image = image.convert("RGB")
    if image.size != (IMAGE_SIZE, IMAGE_SIZE):
        image = image.resize((IMAGE_SIZE, IMAGE_SIZE), Image.BOX if image.width > IMAGE_SIZE else Image.BILINEAR)
    return np.asarray(image, dtype=np.float32)


def color_labels(image) -> np.ndarray:
    """``[H, W]`` int: index into :data:`COLOR_NAMES` of each coloured pixel, -1 elsewhere."""
    p = _as_array(image)
    alpha = np.clip((p @ _PALETTE.T) / _PALETTE_SQ, 0.0, 1.0)                       # [H, W, 6]
    residual = np.linalg.norm(p[..., None, :] - alpha[..., None] * _PALETTE, axis=-1)  # [H, W, 6]
    best = residual.argmin(-1)
    a = np.take_along_axis(alpha, best[..., None], -1)[..., 0]
    r = np.take_along_axis(residual, best[..., None], -1)[..., 0]
    ok = (a >= MIN_ALPHA) & (r <= RESIDUAL_ABS + RESIDUAL_REL * a * _PALETTE_NORM[best])
    return np.where(ok, best, -1)


# ------------------------------------------------------------------ components
def _find(parent: list[int], i: int) -> int:
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i


def components(mask: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """8-connected components of a boolean ``[H, W]`` mask as ``(rows, cols)`` index arrays,
    found by union-find over the runs of each row."""
    runs: list[tuple[int, int, int]] = []        # (row, start, end exclusive)
    row_runs: list[list[int]] = []
    padded = np.zeros((mask.shape[0], mask.shape[1] + 2), dtype=np.int8)
    padded[:, 1:-1] = mask
    edges = np.diff(padded, axis=1)
    parent: list[int] = []
    for y in range(mask.shape[0]):
        starts, ends = np.flatnonzero(edges[y] == 1), np.flatnonzero(edges[y] == -1)
        mine = []
        for s, e in zip(starts.tolist(), ends.tolist()):
            k = len(runs)
            runs.append((y, s, e))
            parent.append(k)
            mine.append(k)
            if y:
                for q in row_runs[y - 1]:        # 8-connected: column ranges touch diagonally too
                    if runs[q][1] <= e and runs[q][2] >= s:
                        parent[_find(parent, k)] = _find(parent, q)
        row_runs.append(mine)
    groups: dict[int, list[int]] = {}
    for k in range(len(runs)):
        groups.setdefault(_find(parent, k), []).append(k)
    out = []
    for members in groups.values():
        rows = np.concatenate([np.full(runs[k][2] - runs[k][1], runs[k][0]) for k in members])
        cols = np.concatenate([np.arange(runs[k][1], runs[k][2]) for k in members])
        out.append((rows, cols))
    return out


def _merge_bands(parts: list[tuple[np.ndarray, np.ndarray]]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Join the stripe bands of one colour: overlapping columns, <= MERGE_GAP rows apart."""
    boxes = [(c.min(), r.min(), c.max() + 1, r.max() + 1) for r, c in parts]
    parent = list(range(len(parts)))
    for i in range(len(parts)):
        for j in range(i + 1, len(parts)):
            a, b = boxes[i], boxes[j]
            if a[0] < b[2] and b[0] < a[2] and max(b[1] - a[3], a[1] - b[3]) <= MERGE_GAP:
                parent[_find(parent, i)] = _find(parent, j)
    groups: dict[int, list[int]] = {}
    for i in range(len(parts)):
        groups.setdefault(_find(parent, i), []).append(i)
    return [(np.concatenate([parts[i][0] for i in g]), np.concatenate([parts[i][1] for i in g]))
            for g in groups.values()]


# ------------------------------------------------------------------ shape templates
@functools.lru_cache(maxsize=4096)
def shape_template(shape: str, width: int, height: int) -> np.ndarray:
    """``[height, width]`` bool: ``shape`` drawn (as the world draws it) to fill a box of
    that size, at 4x and box-downsampled, pixels at least half covered."""
    ss = 4
    canvas = Image.new("L", (width * ss, height * ss))
    draw = ImageDraw.Draw(canvas)
    r, b = width * ss - 1, height * ss - 1
    xc, yc = r / 2, b / 2
    if shape == "circle":
        draw.ellipse([0, 0, r, b], fill=255)
    elif shape == "square":
        draw.rectangle([0, 0, r, b], fill=255)
    elif shape == "triangle":
        draw.polygon([(xc, 0), (r, b), (0, b)], fill=255)
    else:
        draw.polygon([(xc, 0), (r, yc), (xc, b), (0, yc)], fill=255)
    return np.asarray(canvas.resize((width, height), Image.BOX)) >= 128


def _silhouette(mask: np.ndarray) -> np.ndarray:
    """The outline of a convex object whose stripes left empty rows: each row spans from
    its first to its last coloured pixel; an empty row takes both ends linearly
    interpolated from the nearest coloured rows above and below (exact for straight
    edges, a fraction of a pixel inside a circle's)."""
    h, w = mask.shape
    has = mask.any(1)
    rows = np.flatnonzero(has)
    left = mask.argmax(1).astype(np.float64)
    right = (w - 1 - mask[:, ::-1].argmax(1)).astype(np.float64)
    ys = np.arange(h)
    left = np.where(has, left, np.interp(ys, rows, left[rows]))
    right = np.where(has, right, np.interp(ys, rows, right[rows]))
    xs = np.arange(w)[None, :]
    return (xs >= np.round(left)[:, None]) & (xs <= np.round(right)[:, None])


def _classify(rows: np.ndarray, cols: np.ndarray, color: str) -> DetectedObject:
    x1, y1, x2, y2 = int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1
    w, h = x2 - x1, y2 - y1
    mask = np.zeros((h, w), dtype=bool)
    mask[rows - y1, cols - x1] = True
    silhouette = _silhouette(mask)
    area, sil_area = int(mask.sum()), int(silhouette.sum())
    shape, iou, (up, down, side) = _fit_shape(silhouette)
    # the template's box: what a blur took off the tips is given back
    x1, x2, y1, y2 = max(0, x1 - side), min(IMAGE_SIZE, x2 + side), max(0, y1 - up), min(IMAGE_SIZE, y2 + down)
    return DetectedObject(
        shape=shape if iou >= MIN_SHAPE_IOU else None, color=color,
        size="small" if max(x2 - x1, y2 - y1) < SIZE_SPLIT else "large",
        fill="solid" if area >= SOLID_MIN_RATIO * sil_area else "striped",
        x=(x1 + x2) / 2, y=(y1 + y2) / 2, bbox=(x1, y1, x2, y2), area=area,
        fill_ratio=area / max(1, sil_area), shape_iou=float(iou))


def _fit_shape(silhouette: np.ndarray) -> tuple[str, float, tuple[int, int, int]]:
    """Best ``(shape, IoU, (rows added above, rows added below, columns added each side))``:
    every template drawn into the silhouette's box, the box also grown by up to
    :data:`MAX_TIP_ROWS` rows up or down and one column each side, because a blur thins
    tips below the threshold (a diamond's four, a circle's none) and can erase a stripe
    band that held only a triangle's apex."""
    h, w = silhouette.shape
    sil_area = int(silhouette.sum())
    best = ("circle", -1.0, (0, 0, 0))
    for side in (0, 1):
        for up in range(MAX_TIP_ROWS + 1):
            for down in range(MAX_TIP_ROWS + 1):
                for shape in SHAPES:
                    t = shape_template(shape, w + 2 * side, h + up + down)
                    inter = int(np.count_nonzero(t[up:up + h, side:side + w] & silhouette))
                    iou = inter / max(1, _template_area(shape, w + 2 * side, h + up + down) + sil_area - inter)
                    if iou > best[1] + 1e-9:
                        best = (shape, iou, (up, down, side))
    return best


@functools.lru_cache(maxsize=4096)
def _template_area(shape: str, width: int, height: int) -> int:
    return int(shape_template(shape, width, height).sum())


def read_objects(image) -> list[DetectedObject]:
    """Every object of a picture (PIL image or ``[H, W, 3]`` uint8 array), sorted by
    position (top to bottom, then left to right); see the module docstring."""
    labels = color_labels(image)
    found = []
    for ci in np.unique(labels):
        if ci < 0:
            continue
        for rows, cols in _merge_bands(components(labels == ci)):
            if len(rows) >= MIN_OBJECT_AREA:
                found.append(_classify(rows, cols, COLOR_NAMES[int(ci)]))
    return sorted(found, key=lambda o: (o.y, o.x))


def check(spec: PromptSpec, image) -> Verdict:
    """Judge ``image`` against ``spec``: correct when a picture with recognised objects
    meets every requirement (unrecognised shapes never match an asked object)."""
    objects = read_objects(image)
    recognised = [o for o in objects if o.shape is not None]
    requirements = evaluate_spec(spec, recognised)
    readable = bool(recognised)
    return Verdict(readable and requirements["overall"], requirements, readable, tuple(objects))
