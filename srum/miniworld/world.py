# SPDX-License-Identifier: Apache-2.0
"""The miniature world: scenes, their pictures, prompts, the split and the ground truth.

**Pictures.** 64x64 RGB, black background. Each object is one of 4 shapes (circle,
square, triangle with its apex up, diamond), 6 colours (:data:`COLORS`, far apart in hue
so that blurred or half-covered edge pixels still point at their colour), 2 sizes
(extent 14 or 24 px: the width and height of the object's box) and 2 fills. It is drawn
at 4x with PIL and box-downsampled, so curved and slanted edges are anti-aliased.
Centres are whole pixels, so boxes and stripes sit on the pixel grid (no half-covered
rows for a threshold to split). Objects stay >= 1 px inside the frame and their boxes
keep a gap of >= :data:`MIN_GAP` (6) px.

**Fill (the analogue of texture): "solid" or "striped".** A striped object is cut by
2-px black rows into 3 (small) or 5 (large) colour bands of 2-4 px (:data:`STRIPES`):
the first, last and middle bands (the widest row of a circle or diamond) are coloured,
the end ones 4 px tall, so the outline can be read back. Why striped rather than
hollow: a 3 px outline leaves almost no hole inside a small triangle (its inradius is
~4 px), which a blur fills in, whereas a 2-px black row stays below ~25 % of the colour
after a 0.7 px blur; the oracle reads the fill as the share of coloured pixels in the
object's silhouette (solid ~1, striped ~0.7).

**Positions** are box centres in pixels (pixel ``i`` spans ``[i, i+1)``), whole
numbers. **Relations** (:func:`relation_holds`): object *a* is "left of" *b* when
``x_b - x_a >= RELATION_MARGIN`` (6 px) and ``|y_b - y_a| < x_b - x_a``; "right of",
"above" (smaller y), "below" likewise. Scenes drawn for a relation satisfy it with a
clear margin: >= 12 px along the axis and a cross-axis offset at least 6 px smaller.

**Prompts** (:class:`PromptSpec`) in T2I-CompBench's categories: color, shape (size and
shape), texture (fill), spatial, numeracy (1-4 of one or two kinds) and complex (2-3
objects with several attributes and one relation), each with 4 phrasings. An
attribute a prompt does not name is free: random in the scene. Every multi-object
prompt names the colour and shape of each object (its *kind*), kinds are distinct
(numeracy: distinct shapes).

**Split by combination.** A pair of two different kinds is held out when a sha256 of
its canonical name falls in the lowest :data:`HELDOUT_FRACTION` (20 %); so is a numeracy
key (count >= 2, kind). A prompt or a scene is held out when it contains a held-out pair
or exactly ``n`` objects of a kind whose ``(n, kind)`` is held out. The relation is not
part of the key: a picture shows the pair in *some* relation, so a relation-level split
would leak held-out compositions through training pictures. Single-object prompts are
never held out and occur in both splits (there is no combination to hold out, and
every kind must be seen in training for a held-out pair to be a fair test).
"""
from __future__ import annotations

import hashlib
import itertools
import math
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

IMAGE_SIZE = 64                      # pixels, square
SUPERSAMPLE = 4                      # drawn at 4x, then box-downsampled (anti-aliasing)
SHAPES = ("circle", "square", "triangle", "diamond")
COLORS = {"red": (230, 40, 40), "green": (40, 200, 60), "blue": (50, 90, 240), "yellow": (235, 220, 40),
          "purple": (170, 60, 220), "cyan": (40, 210, 220)}
SIZES = {"small": 14, "large": 24}  # extent (box width = height) in pixels: even, so boxes sit on whole pixels
FILLS = ("solid", "striped")
# Rows of the bands of a striped object from its top, colour and black in turn: colour
# first, last and in the middle (the widest row of a circle or diamond), black bands 2 px,
# the end bands 4 px (thinner ones leave too little of a circle's cap after a blur for it
# to be told from a diamond: 11/48 wrong at a 1 px blur with 3-px end bands, 0/48 with 4).
STRIPES = {"small": (4, 2, 2, 2, 4), "large": (4, 2, 3, 2, 2, 2, 3, 2, 4)}
RELATIONS = ("left of", "right of", "above", "below")
CATEGORIES = ("color", "shape", "texture", "spatial", "numeracy", "complex")
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five")
MAX_COUNT = 4
EDGE = 1.0                 # px between an object's box and the frame
MIN_GAP = 6.0              # px between two objects' boxes (the oracle merges stripe bands closer than that)
RELATION_MARGIN = 6.0      # px: the judged rule (see relation_holds)
RELATION_ALONG = 12.0      # px: drawn relations are at least this far apart along their axis ...
RELATION_SLACK = 6.0       # ... and the cross-axis offset is at least this much smaller
HELDOUT_FRACTION = 0.2
SPLITS = ("train", "heldout", "all")
_OPPOSITE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}


# ------------------------------------------------------------------ scenes and pictures
@dataclass(frozen=True)
class WorldObject:
    """One object: attributes and its box centre ``(x, y)`` in pixels of the 64x64 frame.

    ``melt`` (0 = clean, up to 1) draws the object *malformed*, the way an undertrained
    generator draws it: its outline warped and rounded off, its stripes smeared
    (:func:`_draw_melted`, reproducible from ``melt_seed``). A rendering flaw only: the
    object keeps its attributes and position, so the ground truth of a prompt
    (:func:`evaluate_spec`) does not change; the judge's local rubric calls such a region
    bad (:mod:`.tasks`). Only the judge's training scenes hold melted objects."""

    shape: str
    color: str
    size: str
    fill: str
    x: float
    y: float
    melt: float = 0.0
    melt_seed: int = 0

    def __post_init__(self):
        for value, allowed in ((self.shape, SHAPES), (self.color, COLORS), (self.size, SIZES), (self.fill, FILLS)):
            if value not in allowed:
                raise ValueError(f"{value!r} is not one of {list(allowed)}")
        if not 0.0 <= self.melt <= 1.0:
            raise ValueError(f"melt must be in [0, 1], got {self.melt}")

    @property
    def extent(self) -> int:
        """Width = height of the object's box in pixels."""
        return SIZES[self.size]

    @property
    def kind(self) -> tuple[str, str]:
        return self.color, self.shape

    def box(self) -> tuple[float, float, float, float]:
        """Exact box ``(x1, y1, x2, y2)`` in pixels (floats)."""
        h = self.extent / 2
        return self.x - h, self.y - h, self.x + h, self.y + h

    def bbox(self) -> tuple[int, int, int, int]:
        """Integer pixel box ``(x1, y1, x2, y2)`` covering the object, ``x2``/``y2`` exclusive
        (PIL's crop convention), clipped to the frame."""
        x1, y1, x2, y2 = self.box()
        return (max(0, math.floor(x1)), max(0, math.floor(y1)), min(IMAGE_SIZE, math.ceil(x2)),
                min(IMAGE_SIZE, math.ceil(y2)))

    def phrase(self) -> str:
        """All four attributes: ``"a small red striped circle"``."""
        return ObjectSpec(self.shape, self.color, self.size, self.fill).phrase()

    def to_dict(self) -> dict:
        d = asdict(self)
        if not self.melt:   # clean objects keep the dict they always had
            del d["melt"], d["melt_seed"]
        return d


@dataclass(frozen=True)
class Scene:
    objects: tuple[WorldObject, ...]

    def to_dict(self) -> dict:
        return {"objects": [o.to_dict() for o in self.objects]}

    @classmethod
    def from_dict(cls, data: dict) -> Scene:
        return cls(tuple(WorldObject(**o) for o in data["objects"]))


def _draw(draw: ImageDraw.ImageDraw, obj: WorldObject, ss: int) -> None:
    x1, y1, x2, y2 = (round(v * ss) for v in obj.box())
    r, b = x2 - 1, y2 - 1                                  # PIL includes the end coordinate
    xc, yc = (x1 + r) / 2, (y1 + b) / 2
    color = COLORS[obj.color]
    if obj.shape == "circle":
        draw.ellipse([x1, y1, r, b], fill=color)
    elif obj.shape == "square":
        draw.rectangle([x1, y1, r, b], fill=color)
    elif obj.shape == "triangle":
        draw.polygon([(xc, y1), (r, b), (x1, b)], fill=color)
    else:
        draw.polygon([(xc, y1), (r, yc), (xc, b), (x1, yc)], fill=color)
    if obj.fill == "striped":  # odd bands are black
        top = y1
        for k, rows in enumerate(STRIPES[obj.size]):
            if k % 2:
                draw.rectangle([x1, top, r, top + rows * ss - 1], fill=(0, 0, 0))
            top += rows * ss


MELT_WARP = 0.4    # x melt x extent: how far each corner of the object's window may move
MELT_BLUR = 0.25   # x melt x extent: the blur radius before the silhouette is thresholded again


def _draw_melted(canvas: Image.Image, obj: WorldObject, ss: int) -> None:
    """Draw ``obj`` malformed: the solid silhouette's window warped by a random
    quadrilateral (corners moved by up to MELT_WARP x melt x extent), blurred and
    thresholded at half, which rounds corners off, as an undertrained generator's blobs
    look; a striped object then gets its black rows across the melted silhouette."""
    rng = np.random.default_rng([int(obj.melt_seed), 11])
    extent = obj.extent * ss
    x1, y1, x2, y2 = (round(v * ss) for v in obj.box())
    pad = extent // 2
    win = (x1 - pad, y1 - pad, x2 + pad, y2 + pad)
    size = (win[2] - win[0], win[3] - win[1])
    solid = Image.new("RGB", size)
    _draw(ImageDraw.Draw(solid), WorldObject(obj.shape, obj.color, obj.size, "solid", obj.x - win[0] / ss,
                                             obj.y - win[1] / ss), ss)
    layer = solid.convert("L").point(lambda v: 255 if v > 0 else 0)
    jitter = MELT_WARP * obj.melt * extent
    quad = [v + float(rng.uniform(-jitter, jitter)) for v in (0, 0, 0, size[1], size[0], size[1], size[0], 0)]
    warped = layer.transform(size, Image.QUAD, data=quad, resample=Image.BILINEAR)
    blurred = warped.filter(ImageFilter.GaussianBlur(MELT_BLUR * obj.melt * extent))
    mask = blurred.point(lambda v: 255 if v >= 128 else 0)
    canvas.paste(Image.new("RGB", size, COLORS[obj.color]), win[:2], mask)
    if obj.fill == "striped":   # the odd bands black, across whatever the silhouette became
        rows = Image.new("L", size)
        draw, top = ImageDraw.Draw(rows), pad
        for k, n in enumerate(STRIPES[obj.size]):
            if k % 2:
                draw.rectangle([0, top, size[0] - 1, top + n * ss - 1], fill=255)
            top += n * ss
        canvas.paste(Image.new("RGB", size), win[:2], Image.fromarray(np.minimum(np.asarray(mask), np.asarray(rows))))


def render(scene: Scene) -> Image.Image:
    """The 64x64 RGB picture of ``scene`` (deterministic)."""
    ss = SUPERSAMPLE
    canvas = Image.new("RGB", (IMAGE_SIZE * ss, IMAGE_SIZE * ss))
    draw = ImageDraw.Draw(canvas)
    for obj in scene.objects:
        if obj.melt:
            _draw_melted(canvas, obj, ss)
        else:
            _draw(draw, obj, ss)
    return canvas.resize((IMAGE_SIZE, IMAGE_SIZE), Image.BOX)


# ------------------------------------------------------------------ prompts
@dataclass(frozen=True)
class ObjectSpec:
    """What a prompt asks of ``count`` objects; ``None`` = not named (free)."""

    shape: str
    color: str | None = None
    size: str | None = None
    fill: str | None = None
    count: int = 1

    def matches(self, obj: Any) -> bool:
        """Whether ``obj`` (anything with shape / color / size / fill) has every named attribute."""
        return all(want is None or getattr(obj, name) == want
                   for name, want in (("shape", self.shape), ("color", self.color), ("size", self.size),
                                      ("fill", self.fill)))

    @property
    def kind(self) -> tuple[str, str] | None:
        return (self.color, self.shape) if self.color is not None else None

    def phrase(self, number: bool = False) -> str:
        """``"a small red striped circle"``; ``number``: ``"three green triangles"``."""
        words = [w for w in (self.size, self.color, self.fill) if w is not None]
        noun = self.shape + ("s" if self.count > 1 else "")
        lead = NUMBER_WORDS[self.count] if number or self.count > 1 else "a"
        return " ".join([lead, *words, noun])

    def post_phrase(self) -> str:
        """``"a circle that is small, red and striped"`` (attributes after the noun)."""
        words = [w for w in (self.size, self.color, self.fill) if w is not None]
        if not words:
            return self.phrase()
        listed = words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]
        return f"a {self.shape} that is {listed}"


@dataclass(frozen=True)
class PromptSpec:
    """A prompt and what it asks. ``relation`` ``(i, rel, j)``: object ``i`` is ``rel``
    object ``j`` (indices into ``objects``); ``template``: which phrasing made ``text``."""

    category: str
    text: str
    objects: tuple[ObjectSpec, ...]
    relation: tuple[int, str, int] | None = None
    template: int = 0

    @property
    def num_objects(self) -> int:
        """Objects the prompt asks for (counts added up)."""
        return sum(o.count for o in self.objects)

    def to_dict(self) -> dict:
        return {"category": self.category, "text": self.text, "objects": [asdict(o) for o in self.objects],
                "relation": list(self.relation) if self.relation else None, "template": self.template}

    @classmethod
    def from_dict(cls, data: dict) -> PromptSpec:
        rel = data.get("relation")
        return cls(data["category"], data["text"], tuple(ObjectSpec(**o) for o in data["objects"]),
                   (int(rel[0]), str(rel[1]), int(rel[2])) if rel else None, int(data.get("template", 0)))


_REL_TEXT = {"left of": "to the left of", "right of": "to the right of", "above": "above", "below": "below"}
_REL_SIDE = {"left of": "on its left", "right of": "on its right", "above": "above it", "below": "below it"}
NUM_TEMPLATES = 4


def _and(parts: Sequence[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def prompt_text(category: str, objects: Sequence[ObjectSpec], relation: tuple[int, str, int] | None,
                template: int) -> str:
    """The words of a prompt (``template`` in ``0..NUM_TEMPLATES-1``)."""
    if category == "numeracy":
        listed = _and([o.phrase(number=True) for o in objects])
        verb = "is" if objects[0].count == 1 else "are"   # agrees with the first item, as in speech
        return (listed, f"a picture of {listed}", f"exactly {listed}", f"there {verb} {listed}")[template]
    if relation is None:
        listed = _and([o.phrase() for o in objects])
        return (listed, f"a picture of {listed}", ", as well as ".join(o.post_phrase() for o in objects),
                f"there is {listed}")[template]
    i, rel, j = relation
    a, b = objects[i].phrase(), objects[j].phrase()
    if template == 0:
        text = f"{a} {_REL_TEXT[rel]} {b}"
    elif template == 1:
        text = f"{b} with {a} {_REL_SIDE[rel]}"
    elif template == 2:
        first, second = (a, b) if rel in ("left of", "above") else (b, a)
        ends = ("on the left", "on the right") if rel in ("left of", "right of") else ("at the top", "at the bottom")
        text = f"{ends[0]} {first}, {ends[1]} {second}"
    else:
        text = f"{a} is {_REL_TEXT[rel]} {b}"
    rest = [o.phrase() for k, o in enumerate(objects) if k not in (i, j)]
    return text + "".join(f", and also {r}" for r in rest)


# ------------------------------------------------------------------ ground truth
def relation_holds(a: Any, rel: str, b: Any, margin: float = RELATION_MARGIN) -> bool:
    """Whether ``a`` is ``rel`` ``b``, judged by box centres ``.x``/``.y``: along the
    relation's axis ``a`` is >= ``margin`` px on the named side and the offset along the
    axis is larger than the offset across it."""
    along, across = _axes(b.x - a.x, b.y - a.y, rel)
    return along >= margin and abs(across) < along


def _axes(dx, dy, rel: str):
    """The offset from *a* to *b* (y grows downwards) as (along the relation's axis,
    positive when *a* is on the named side; across it)."""
    return {"left of": (dx, dy), "right of": (-dx, dy), "above": (dy, dx), "below": (-dy, dx)}[rel]


def evaluate_spec(spec: PromptSpec, objects: Sequence[Any]) -> dict[str, bool]:
    """Check ``spec`` against objects with ``shape``/``color``/``size``/``fill``/``x``/``y``
    (a scene's, or the oracle's readings; unknown attributes are ``None``). Requirements:

    * ``object{i}``: at least ``count`` objects have every attribute ``objects[i]`` names;
    * ``count{i}`` (numeracy only): exactly ``count`` such objects (extra objects of that
      kind make the prompt wrong; elsewhere extra objects are allowed, as in T2I-CompBench);
    * ``relation``: some pair of candidates, two different objects, stands in the relation;
    * ``overall``: one assignment of *distinct* objects to every requested object meets
      every requirement at once (all assignments are tried)."""
    cands = [[k for k, o in enumerate(objects) if s.matches(o)] for s in spec.objects]
    req: dict[str, bool] = {}
    for i, s in enumerate(spec.objects):
        req[f"object{i}"] = len(cands[i]) >= s.count
        if spec.category == "numeracy":
            req[f"count{i}"] = len(cands[i]) == s.count
    if spec.relation is not None:
        i, rel, j = spec.relation
        req["relation"] = any(p != q and relation_holds(objects[p], rel, objects[q]) for p in cands[i]
                              for q in cands[j])

    def assign(k: int, used: frozenset, chosen: list) -> bool:
        if k == len(spec.objects):
            if spec.relation is None:
                return True
            i, rel, j = spec.relation
            return relation_holds(objects[chosen[i][0]], rel, objects[chosen[j][0]])
        free = [c for c in cands[k] if c not in used]
        return any(assign(k + 1, used | set(pick), chosen + [pick])
                   for pick in itertools.combinations(free, spec.objects[k].count))

    req["overall"] = all(req.values()) and assign(0, frozenset(), [])
    return req


def spec_satisfied(spec: PromptSpec, scene: Scene) -> dict[str, bool]:
    """The ground truth of ``spec`` on ``scene``: :func:`evaluate_spec` of its objects."""
    return evaluate_spec(spec, scene.objects)


# ------------------------------------------------------------------ the split
def _fraction(key: str) -> float:
    digest = hashlib.sha256(f"srum-miniworld/{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2 ** 64


def _kind_name(kind: tuple[str, str]) -> str:
    return f"{kind[0]} {kind[1]}"


def pair_is_heldout(kind_a: tuple[str, str], kind_b: tuple[str, str]) -> bool:
    """Whether two different kinds ``(colour, shape)`` together are held out."""
    if kind_a == kind_b:
        return False
    return _fraction("pair:" + "|".join(sorted((_kind_name(kind_a), _kind_name(kind_b))))) < HELDOUT_FRACTION


def count_is_heldout(count: int, kind: tuple[str, str]) -> bool:
    """Whether exactly ``count`` (>= 2) objects of ``kind`` are held out (numeracy)."""
    return count >= 2 and _fraction(f"count:{count}:{_kind_name(kind)}") < HELDOUT_FRACTION


def kinds_are_heldout(kind_counts: dict[tuple[str, str], int]) -> bool:
    """Whether a multiset of kinds (``{kind: number of objects}``) holds a held-out combination."""
    if any(count_is_heldout(n, k) for k, n in kind_counts.items()):
        return True
    return any(pair_is_heldout(a, b) for a, b in itertools.combinations(sorted(kind_counts), 2))


def is_heldout(spec: PromptSpec) -> bool:
    """Whether a prompt belongs to the held-out split (single-object prompts never do;
    objects whose colour is not named have no kind and are left out of the key)."""
    if spec.num_objects <= 1:
        return False
    counts: Counter = Counter()
    for o in spec.objects:
        if o.kind is not None:
            counts[o.kind] += o.count
    return kinds_are_heldout(counts)


def scene_is_heldout(scene: Scene) -> bool:
    """Whether a scene shows a held-out combination (never in training pictures)."""
    return kinds_are_heldout(Counter(o.kind for o in scene.objects))


# ------------------------------------------------------------------ sampling prompts
def _choice(rng: np.random.Generator, options: Sequence) -> Any:
    return options[int(rng.integers(len(options)))]


def _distinct_kinds(rng: np.random.Generator, n: int, distinct_shapes: bool = False) -> list[tuple[str, str]]:
    while True:
        kinds = [(_choice(rng, tuple(COLORS)), _choice(rng, SHAPES)) for _ in range(n)]
        key = [k[1] for k in kinds] if distinct_shapes else kinds
        if len(set(key)) == n:
            return kinds


def _draw_objects(category: str, rng: np.random.Generator) -> tuple[list[ObjectSpec], tuple | None]:
    if category in ("color", "shape", "texture"):
        n = 1 if rng.random() < 1 / 3 else 2
        extra = {"color": None, "shape": "size", "texture": "fill"}[category]
        objs = []
        for color, shape in _distinct_kinds(rng, n):
            attrs = {"shape": shape, "color": color}
            if extra:
                attrs[extra] = _choice(rng, tuple(SIZES) if extra == "size" else FILLS)
                if n == 1 and category != "color":   # one object: the attribute and the shape, colour free
                    attrs.pop("color")
            objs.append(ObjectSpec(**attrs))
        return objs, None
    if category == "spatial":
        return [ObjectSpec(s, c) for c, s in _distinct_kinds(rng, 2)], (0, _choice(rng, RELATIONS), 1)
    if category == "numeracy":
        if rng.random() < 0.7:
            (color, shape), = _distinct_kinds(rng, 1)
            return [ObjectSpec(shape, color, count=int(rng.integers(1, MAX_COUNT + 1)))], None
        counts = _choice(rng, ((1, 1), (1, 2), (2, 1), (1, 3), (3, 1), (2, 2)))
        return [ObjectSpec(s, c, count=n) for (c, s), n in zip(_distinct_kinds(rng, 2, True), counts)], None
    if category == "complex":
        objs = []
        for color, shape in _distinct_kinds(rng, 2 if rng.random() < 0.7 else 3):
            extra = _choice(rng, ({"size"}, {"fill"}, {"size", "fill"}))
            objs.append(ObjectSpec(shape, color, _choice(rng, tuple(SIZES)) if "size" in extra else None,
                                   _choice(rng, FILLS) if "fill" in extra else None))
        return objs, (0, _choice(rng, RELATIONS), 1)
    raise ValueError(f"category must be one of {CATEGORIES}, got {category!r}")


def sample_prompt(category: str, rng: np.random.Generator, split: str = "train",
                  template: int | None = None) -> PromptSpec:
    """A random prompt of ``category``. ``split``: "train" never returns a held-out
    combination; "heldout" returns single-object prompts or held-out combinations only;
    "all" anything. ``template``: force a phrasing (default random)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    structure = None
    for _ in range(10_000):
        objs, relation = _draw_objects(category, rng)
        # The first draw fixes the prompt's structure (object counts); retries keep it, so
        # both splits have the same mix of one-, two- and three-object prompts.
        counts = tuple(o.count for o in objs)
        structure = structure or counts
        if counts != structure:
            continue
        t = int(rng.integers(NUM_TEMPLATES)) if template is None else template
        spec = PromptSpec(category, prompt_text(category, objs, relation, t), tuple(objs), relation, t)
        held = is_heldout(spec)
        wanted = {"all": True, "train": not held, "heldout": held or spec.num_objects == 1}[split]
        if wanted:
            return spec
    raise RuntimeError(f"no {split} prompt of {category} found")  # pragma: no cover - the split is ~20 %


def eval_prompts(split: str = "heldout", per_category: int = 50, seed: int = 0,
                 categories: Sequence[str] = CATEGORIES) -> list[PromptSpec]:
    """A fixed evaluation set: ``per_category`` prompts of each category with distinct texts,
    category by category (deterministic in ``(split, per_category, seed)``; a larger
    ``per_category`` extends the smaller set)."""
    out = []
    for category in categories:
        rng = np.random.default_rng([seed, CATEGORIES.index(category), 17])
        seen: set[str] = set()
        for _ in range(per_category * 200):
            if len(seen) == per_category:
                break
            spec = sample_prompt(category, rng, split)
            if spec.text not in seen:
                seen.add(spec.text)
                out.append(spec)
        else:
            raise ValueError(f"only {len(seen)} distinct {split} prompts of {category}; lower per_category")
    return out


# ------------------------------------------------------------------ placing objects
def _placement_ok(cand: np.ndarray, half: float, placed: list[WorldObject]) -> np.ndarray:
    ok = np.ones(len(cand), dtype=bool)
    for p in placed:
        reach = half + p.extent / 2
        gap = np.maximum(np.abs(cand[:, 0] - p.x), np.abs(cand[:, 1] - p.y)) - reach
        ok &= gap >= MIN_GAP
    return ok


def _relation_ok(cand: np.ndarray, rel: str, other: WorldObject, cand_is_a: bool) -> np.ndarray:
    """Drawn relations: >= RELATION_ALONG along the axis, cross offset <= along - RELATION_SLACK."""
    sign = 1 if cand_is_a else -1
    along, across = _axes(sign * (other.x - cand[:, 0]), sign * (other.y - cand[:, 1]), rel)
    return (along >= RELATION_ALONG) & (np.abs(across) <= along - RELATION_SLACK)


def place_objects(attrs: Sequence[tuple[str, str, str, str]], rng: np.random.Generator,
                  relations: Sequence[tuple[int, str, int]] = (), tries: int = 300,
                  candidates: int = 256) -> Scene | None:
    """Positions for objects ``(shape, color, size, fill)`` (kept in this order in the
    scene): inside the frame, boxes >= MIN_GAP apart, every ``(i, rel, j)`` drawn with a
    clear margin. Objects go one at a time (related ones, then larger ones first), each at
    a random valid candidate; a dead end restarts. ``None`` if ``tries`` restarts fail."""
    related = {k for r in relations for k in (r[0], r[2])}
    order = sorted(range(len(attrs)), key=lambda k: (k not in related, -SIZES[attrs[k][2]], k))
    for _ in range(tries):
        placed: dict[int, WorldObject] = {}
        for k in order:
            half = SIZES[attrs[k][2]] / 2
            lo, hi = half + EDGE, IMAGE_SIZE - half - EDGE
            cand = np.round(rng.uniform(lo, hi, size=(candidates, 2)))
            ok = _placement_ok(cand, half, list(placed.values()))
            for i, rel, j in relations:
                if k == i and j in placed:
                    ok &= _relation_ok(cand, rel, placed[j], cand_is_a=True)
                elif k == j and i in placed:
                    ok &= _relation_ok(cand, rel, placed[i], cand_is_a=False)
            valid = np.flatnonzero(ok)
            if not len(valid):
                break
            x, y = cand[valid[int(rng.integers(len(valid)))]]
            shape, color, size, fill = attrs[k]
            placed[k] = WorldObject(shape, color, size, fill, float(x), float(y))
        else:
            return Scene(tuple(placed[k] for k in range(len(attrs))))
    return None


def _free(spec: ObjectSpec, rng: np.random.Generator) -> tuple[str, str, str, str]:
    return (spec.shape, spec.color or _choice(rng, tuple(COLORS)), spec.size or _choice(rng, tuple(SIZES)),
            spec.fill or _choice(rng, FILLS))


def _attrs_for(spec: PromptSpec, rng: np.random.Generator) -> list[tuple[str, str, str, str]]:
    return [_free(o, rng) for o in spec.objects for _ in range(o.count)]


def _first_index(spec: PromptSpec) -> list[int]:
    """Index of the first scene object of each ObjectSpec (objects are laid out spec by spec)."""
    return [sum(o.count for o in spec.objects[:i]) for i in range(len(spec.objects))]


def _scene_for(spec: PromptSpec, rng: np.random.Generator, make, avoid_heldout: bool | None, want_truth: bool):
    avoid = (not is_heldout(spec)) if avoid_heldout is None else avoid_heldout
    for _ in range(200):
        attrs, relations = make()
        scene = place_objects(attrs, rng, relations)
        if scene is None or (avoid and scene_is_heldout(scene)):
            continue
        if spec_satisfied(spec, scene)["overall"] == want_truth:
            return scene
    raise RuntimeError(f"could not draw a scene for {spec.text!r}")


def sample_scene(spec: PromptSpec, rng: np.random.Generator, avoid_heldout: bool | None = None) -> Scene:
    """A scene that satisfies ``spec`` with exactly the objects it asks for (free attributes
    random; relations drawn with a clear margin). ``avoid_heldout`` (default: when the
    prompt itself is not held out) rejects scenes with a held-out combination, which only
    matters when a multi-object prompt leaves a colour free."""
    first = _first_index(spec)
    relations = [(first[spec.relation[0]], spec.relation[1], first[spec.relation[2]])] if spec.relation else []
    return _scene_for(spec, rng, lambda: (_attrs_for(spec, rng), relations), avoid_heldout, True)


NEGATIVE_KINDS = ("attribute", "relation", "count", "missing")


def sample_negative_scene(spec: PromptSpec, rng: np.random.Generator, kind: str | None = None,
                          avoid_heldout: bool | None = None) -> tuple[Scene, str]:
    """A scene that *violates* ``spec`` by one change, and which change: "attribute" (a
    named colour / shape / size / fill of one object differs), "relation" (the pair stands
    in another relation, drawn with a clear margin), "count" (numeracy: one object of a
    kind more or fewer) or "missing" (an asked object is absent; for a one-object prompt the
    picture is empty). ``kind`` None: a random one that applies (another if that one
    cannot avoid a held-out combination)."""
    kinds = [k for k in NEGATIVE_KINDS
             if (k != "relation" or spec.relation) and (k != "count" or spec.category == "numeracy")]
    if kind is not None and kind not in kinds:
        raise ValueError(f"{kind!r} does not apply to {spec.text!r} (possible: {kinds})")
    first = _first_index(spec)
    rel = spec.relation

    def make(kind: str):
        attrs = _attrs_for(spec, rng)
        relations = [(first[rel[0]], rel[1], first[rel[2]])] if rel else []
        if kind == "relation":
            relations = [(first[rel[0]], _choice(rng, [r for r in RELATIONS if r != rel[1]]), first[rel[2]])]
        elif kind == "attribute":
            i = int(rng.integers(len(spec.objects)))
            named = [a for a in ("shape", "color", "size", "fill") if getattr(spec.objects[i], a) is not None]
            attr = _choice(rng, named)
            pool = {"shape": SHAPES, "color": tuple(COLORS), "size": tuple(SIZES), "fill": FILLS}[attr]
            k = first[i] + int(rng.integers(spec.objects[i].count))
            values = list(attrs[k])
            values[("shape", "color", "size", "fill").index(attr)] = _choice(
                rng, [v for v in pool if v != getattr(spec.objects[i], attr)])
            attrs[k] = tuple(values)
        else:  # count / missing: remove or (count only) add one object of a requested kind
            i = int(rng.integers(len(spec.objects)))
            if kind == "count" and rng.random() < 0.5:
                attrs.insert(first[i], _free(spec.objects[i], rng))
            else:  # (a single asked object leaves an empty picture)
                del attrs[first[i]]
            relations = []  # a removed object takes its relation with it
        return attrs, relations

    order = [kind] if kind else [kinds[i] for i in rng.permutation(len(kinds))]
    for k in order:
        try:
            return _scene_for(spec, rng, lambda: make(k), avoid_heldout, False), k
        except RuntimeError:
            if k == order[-1]:
                raise
    raise AssertionError("unreachable")  # pragma: no cover


MELT_RANGE = (0.6, 1.0)


def sample_artifact_scene(spec: PromptSpec, rng: np.random.Generator,
                          avoid_heldout: bool | None = None) -> Scene | None:
    """A scene that satisfies ``spec`` (:func:`sample_scene`) with one of the objects it
    asks for drawn malformed (``melt`` in :data:`MELT_RANGE`): the judge's example of a
    relevant object with severe artifacts. Circles are never melted (rounding off a circle
    leaves a circle); None when every asked object is a circle."""
    scene = sample_scene(spec, rng, avoid_heldout)
    objs = list(scene.objects)
    picks = [k for k, o in enumerate(objs) if o.shape != "circle" and any(s.matches(o) for s in spec.objects)]
    if not picks:
        return None
    k = picks[int(rng.integers(len(picks)))]
    o = objs[k]
    objs[k] = WorldObject(o.shape, o.color, o.size, o.fill, o.x, o.y, melt=round(float(rng.uniform(*MELT_RANGE)), 3),
                          melt_seed=int(rng.integers(2 ** 31)))
    return Scene(tuple(objs))


def sample_training_scene(rng: np.random.Generator, n_objects: int | None = None) -> Scene:
    """A random scene of ``n_objects`` (default 1-4) objects for understanding questions;
    never a held-out combination."""
    n = int(rng.integers(1, MAX_COUNT + 1)) if n_objects is None else n_objects
    if not 1 <= n <= MAX_COUNT:
        raise ValueError(f"n_objects must be in 1..{MAX_COUNT}, got {n}")
    for _ in range(1000):
        attrs = [(_choice(rng, SHAPES), _choice(rng, tuple(COLORS)), _choice(rng, tuple(SIZES)), _choice(rng, FILLS))
                 for _ in range(n)]
        if kinds_are_heldout(Counter((a[1], a[0]) for a in attrs)):
            continue
        scene = place_objects(attrs, rng)
        if scene is not None:
            return scene
    raise RuntimeError(f"could not place {n} objects")  # pragma: no cover


# ------------------------------------------------------------------ vocabulary
def world_corpus() -> list[str]:
    """Strings that use every word of the world (prompt phrasings of every category and
    template, every object phrase in both word orders, singular and plural): text for
    training a tokenizer."""
    lines = [" ".join(NUMBER_WORDS), " ".join(RELATIONS)]
    for shape, color, size, fill in itertools.product(SHAPES, COLORS, SIZES, FILLS):
        spec = ObjectSpec(shape, color, size, fill)
        lines += [spec.phrase(), spec.post_phrase()]
    for shape, color in itertools.product(SHAPES, COLORS):
        lines += [ObjectSpec(shape, color, count=n).phrase(number=True) for n in range(1, MAX_COUNT + 1)]
    rng = np.random.default_rng(0)
    for category in CATEGORIES:
        for template in range(NUM_TEMPLATES):
            for _ in range(6):
                lines.append(sample_prompt(category, rng, "all", template).text)
    return lines


def corpus_words(texts: Iterable[str]) -> set[str]:
    """The words of some texts (split at spaces and commas, lower case)."""
    return {w for t in texts for w in t.lower().replace(",", " ").split()}
