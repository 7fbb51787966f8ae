# SPDX-License-Identifier: Apache-2.0
"""What the miniature Bagel is taught: training rows for ``srum train``'s data modes.

Every row is built from a *rendered* scene and its specification, never from a
generated image: the model learns the world from ground truth, and what it later says
about its own drawings is its own understanding (the SRUM premise), not the oracle's.

* ``t2i``: a training prompt and a scene that satisfies it (text dropout is the trainer's);
* ``cot``: the same pair with a plan between ``<think>`` and ``</think>`` that lists every
  object with all its attributes and the pixel position of its centre (:func:`plan_text`);
  drawing from a plan is easier than from the prompt alone (counts are enumerated,
  relations turned into coordinates), which makes think-mode candidates better than
  direct ones, the gap SRUM distils;
* ``vqa``: questions about rendered scenes: existence, colour, shape, fill, size, count,
  relation (:func:`scene_questions`), object boxes as text (the ``self`` region
  proposals, :func:`detection_answer`), and the exact questions ``srum propose`` (the
  relevance filter) and ``srum judge`` (global and local rating, logits mode) ask, with
  answers derived from the scene specification (:func:`judge_questions`). Regions are
  shown in the ``coords`` view (numbers on a 0..64 grid), the view the miniature
  pipeline configures: a drawn rectangle would collide with the world's own colours.

Answer rules for the judge questions (the rubric's bands, :mod:`srum.judge.rubric`):

* global: a prompt without a relation gets 5 (neutral); with a relation, 9 when the
  scene holds both objects in that relation, 1 when they stand in the opposite relation,
  3 when an object is missing or the relation is another one;
* local, for a region around one object: 9 when the object has every attribute some
  object of the prompt asks for; 3 when it shares the shape or the colour of a prompt
  object but misses an asked attribute; 2 when it relates to nothing in the prompt; a
  region of empty background: 5;
* relevance (yes/no): yes when the region's object shares the shape or the colour of a
  prompt object, no for unrelated objects and empty background.
"""
from __future__ import annotations

import re
from typing import Any, Iterator, Sequence

import numpy as np

from ..judge.rubric import global_question, local_question
from ..proposals.grounding import QUESTIONS as RELEVANCE_QUESTIONS
from ..proposals.self_boxes import DEFAULT_BOXES_QUESTION
from ..regions import RegionView, show_region
from . import world as W

__all__ = ["COORDS_VIEW", "COMPACT_COORDS_VIEW", "ISOLATE_VIEW", "region_view", "DETECTION_QUESTION", "plan_text", "parse_plan", "scene_questions",
           "detection_answer", "judge_questions", "global_digit",
           "local_digit", "is_relevant", "region_questions"]

# the region view of the miniature pipeline: 0..64 integer coordinates (pixels at 64 px)
COORDS_VIEW = RegionView(mode="coords", coords_scale=64)
# with the compact wording the region is named in a few words too: "the box (x1, y1, x2, y2)"
COMPACT_COORDS_VIEW = RegionView(mode="coords", coords_scale=64, coords_phrase="compact")


# the region alone at its own size, the rest of the picture black (``view.mode: isolate``):
# the local and relevance questions become questions about one object, which the model reads
ISOLATE_VIEW = RegionView(mode="isolate", crop_margin=0.15)
REGION_VIEWS = ("coords", "isolate")


def region_view(wording: str = "rubric", view: str = "coords") -> RegionView:
    """How the judge and the relevance filter show a region to the miniature model:
    ``view`` "coords" (the box as text, in that wording) or "isolate"."""
    if view not in REGION_VIEWS:
        raise ValueError(f"region view must be one of {REGION_VIEWS}, got {view!r}")
    if view == "isolate":
        return ISOLATE_VIEW
    return COMPACT_COORDS_VIEW if wording == "compact" else COORDS_VIEW

# the question of the ``self`` region proposals; the miniature pipeline sets coords_scale 64
DETECTION_QUESTION = DEFAULT_BOXES_QUESTION

_OPPOSITE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}


# --------------------------------------------------------------------------- plans

def _describe(obj: W.WorldObject) -> str:
    return f"{obj.size} {obj.fill} {obj.color} {obj.shape}"


def plan_text(scene: W.Scene) -> str:
    """The chain of thought for drawing ``scene``: every object with all attributes and
    its centre, in the scene's order (the prompt's order for prompt scenes)."""
    items = [f"{_describe(o)} at ({round(o.x)}, {round(o.y)})" for o in scene.objects]
    return "<think>" + "; ".join(items) + ".</think>"


_PLAN_ITEM = re.compile(r"(\w+) (\w+) (\w+) (\w+) at \((\d+), (\d+)\)")


def parse_plan(text: str) -> list[W.WorldObject]:
    """Objects a plan describes (items that do not parse are left out)."""
    out = []
    for size, fill, color, shape, x, y in _PLAN_ITEM.findall(text):
        if size in W.SIZES and fill in W.FILLS and color in W.COLORS and shape in W.SHAPES:
            out.append(W.WorldObject(shape=shape, color=color, size=size, fill=fill, x=float(x), y=float(y)))
    return out


# --------------------------------------------------------------------------- plain questions

def _relation_holds(a: W.WorldObject, b: W.WorldObject, relation: str) -> bool:
    return bool(W.relation_holds(a, relation, b))


def scene_questions(scene: W.Scene, rng: np.random.Generator, k: int,
                    kinds: Sequence[str] | None = None) -> list[tuple[str, str, str]]:
    """Up to ``k`` (kind, question, answer) triples about ``scene``, kinds mixed at random
    (only ``kinds``, of :data:`QUESTION_KINDS`, when given).

    Answers are one word (Yes/No, a colour, a shape, a fill, a size) or one digit."""
    objs = list(scene.objects)
    out: list[tuple[str, str, str]] = []
    makers = list(_MAKERS.values()) if not kinds else [_MAKERS[kind] for kind in kinds]
    for _ in range(4 * k):
        if len(out) >= k:
            break
        made = makers[int(rng.integers(len(makers)))](objs, rng)
        if made is not None and made not in out:
            out.append(made)
    return out


def _ask_exists(objs, rng):
    color = tuple(W.COLORS)[int(rng.integers(len(tuple(W.COLORS))))]
    shape = W.SHAPES[int(rng.integers(len(W.SHAPES)))]
    if rng.random() < 0.5 and objs:  # half of the questions name an object that is there
        o = objs[int(rng.integers(len(objs)))]
        color, shape = o.color, o.shape
    there = any(o.color == color and o.shape == shape for o in objs)
    return "exists", f"Is there a {color} {shape} in the picture?", "Yes" if there else "No"


def _unique(objs, key, value):
    hits = [o for o in objs if getattr(o, key) == value]
    return hits[0] if len(hits) == 1 else None


def _ask_color(objs, rng):
    if not objs:
        return None
    o = objs[int(rng.integers(len(objs)))]
    if _unique(objs, "shape", o.shape) is None:
        return None
    return "color", f"What colour is the {o.shape}?", o.color


def _ask_shape(objs, rng):
    if not objs:
        return None
    o = objs[int(rng.integers(len(objs)))]
    if _unique(objs, "color", o.color) is None:
        return None
    return "shape", f"What shape is the {o.color} object?", o.shape


def _pick_unique_pair(objs, rng):
    if not objs:
        return None
    o = objs[int(rng.integers(len(objs)))]
    if sum(1 for p in objs if p.color == o.color and p.shape == o.shape) != 1:
        return None
    return o


def _ask_fill(objs, rng):
    o = _pick_unique_pair(objs, rng)
    if o is None:
        return None
    return "fill", f"Is the {o.color} {o.shape} {W.FILLS[0]} or {W.FILLS[1]}?", o.fill


def _ask_size(objs, rng):
    o = _pick_unique_pair(objs, rng)
    if o is None:
        return None
    return "size", f"Is the {o.color} {o.shape} {tuple(W.SIZES)[0]} or {tuple(W.SIZES)[1]}?", o.size


def _ask_count(objs, rng):
    r = rng.random()
    if r < 0.2:
        return "count", "How many objects are there?", str(len(objs))
    if r < 0.6:
        shape = W.SHAPES[int(rng.integers(len(W.SHAPES)))]
        if objs and rng.random() < 0.7:
            shape = objs[int(rng.integers(len(objs)))].shape
        n = sum(o.shape == shape for o in objs)
        return "count", f"How many {shape}s are there?", str(n)
    color = tuple(W.COLORS)[int(rng.integers(len(tuple(W.COLORS))))]
    if objs and rng.random() < 0.7:
        color = objs[int(rng.integers(len(objs)))].color
    n = sum(o.color == color for o in objs)
    return "count", f"How many {color} objects are there?", str(n)


def _ask_relation(objs, rng):
    if len(objs) < 2:
        return None
    i, j = (int(v) for v in rng.choice(len(objs), 2, replace=False))
    a, b = objs[i], objs[j]
    if sum(1 for o in objs if (o.color, o.shape) == (a.color, a.shape)) != 1 or \
            sum(1 for o in objs if (o.color, o.shape) == (b.color, b.shape)) != 1:
        return None
    relation = W.RELATIONS[int(rng.integers(len(W.RELATIONS)))]
    answer = "Yes" if _relation_holds(a, b, relation) else "No"
    return "relation", f"Is the {a.color} {a.shape} {relation} the {b.color} {b.shape}?", answer


# --------------------------------------------------------------------------- detection (self proposals)

def detection_answer(scene: W.Scene) -> str:
    """Every object left to right as ``colour shape (x1, y1, x2, y2)``, integer pixels."""
    parts = []
    for o in sorted(scene.objects, key=lambda o: (o.x, o.y)):
        x1, y1, x2, y2 = (int(round(v)) for v in o.bbox())
        parts.append(f"{o.color} {o.shape} ({x1}, {y1}, {x2}, {y2})")
    return "; ".join(parts) + "." if parts else "Nothing."


# --------------------------------------------------------------------------- judge questions

def _matches(obj: W.WorldObject, spec: W.ObjectSpec) -> bool:
    return bool(spec.matches(obj))


def _related(obj: W.WorldObject, spec: W.ObjectSpec) -> bool:
    return (spec.shape is not None and spec.shape == obj.shape) or (spec.color is not None and spec.color == obj.color)


def global_digit(spec: W.PromptSpec, scene: W.Scene) -> str:
    """The rating (1..9) the global question should get (module docstring)."""
    if spec.relation is None:
        return "5"
    i, relation, j = spec.relation
    a_spec, b_spec = spec.objects[i], spec.objects[j]
    pairs = [(a, b) for a in scene.objects for b in scene.objects
             if a is not b and _matches(a, a_spec) and _matches(b, b_spec)]
    if not pairs:
        return "3"
    if any(_relation_holds(a, b, relation) for a, b in pairs):
        return "9"
    if any(_relation_holds(a, b, _OPPOSITE[relation]) for a, b in pairs):
        return "1"
    return "3"


def local_digit(spec: W.PromptSpec, obj: W.WorldObject | None) -> str:
    """The rating (1..9) of a region around ``obj`` (None: empty background). A malformed
    (melted) object is "a relevant object with severe artifacts" (3) however right its
    attributes are."""
    if obj is None:
        return "5"
    if obj.melt:
        return "3" if any(_related(obj, s) for s in spec.objects) else "2"
    if any(_matches(obj, s) for s in spec.objects):
        return "9"
    if any(_related(obj, s) for s in spec.objects):
        return "3"
    return "2"


def is_relevant(spec: W.PromptSpec, obj: W.WorldObject | None) -> bool:
    return obj is not None and any(_related(obj, s) for s in spec.objects)


def _background_box(scene: W.Scene, rng: np.random.Generator) -> tuple[float, float, float, float] | None:
    """A box of empty background (overlapping no object), or None when none is found."""
    boxes = [o.bbox() for o in scene.objects]
    for _ in range(20):
        w, h = (float(v) for v in rng.integers(8, 24, size=2))
        x1, y1 = float(rng.integers(0, W.IMAGE_SIZE - int(w))), float(rng.integers(0, W.IMAGE_SIZE - int(h)))
        box = (x1, y1, x1 + w, y1 + h)
        if all(box[2] <= b[0] or b[2] <= box[0] or box[3] <= b[1] or b[3] <= box[1] for b in boxes):
            return box
    return None


def _jitter_box(box, rng: np.random.Generator, amount: float = 2.0):
    """Region proposals never sit exactly on the object: move each side a little."""
    x1, y1, x2, y2 = (v + float(rng.uniform(-amount, amount)) for v in box)
    x1, y1 = max(0.0, x1), max(0.0, y1)
    x2, y2 = min(float(W.IMAGE_SIZE), max(x2, x1 + 2)), min(float(W.IMAGE_SIZE), max(y2, y1 + 2))
    return (x1, y1, x2, y2)


def judge_questions(spec: W.PromptSpec, scene: W.Scene, image, rng: np.random.Generator,
                    max_regions: int = 2, wording: str = "rubric",
                    view: str = "coords") -> list[tuple[str, str, str, Any]]:
    """(kind, question, answer, picture) for the questions ``srum judge`` (logits mode) and
    the relevance filter of ``srum propose`` ask about ``image`` generated for ``spec``;
    ``picture`` is what the model is shown with the question (``image`` itself, or the
    region's view of it). ``wording``: "rubric" (``judge.wording: rubric`` with
    ``proposals.grounding.wording: full``) or "compact" (both compact); ``view``: the
    region view (:func:`region_view`), as the model will be asked."""
    shown = region_view(wording, view)
    out = [("judge_global", global_question(spec.text, "logits", wording), global_digit(spec, scene), image)]
    objs = list(scene.objects)
    picks = [objs[int(i)] for i in rng.permutation(len(objs))[:max_regions]]
    regions: list[tuple[W.WorldObject | None, tuple]] = [(o, _jitter_box(o.bbox(), rng)) for o in picks]
    if rng.random() < 0.3:
        box = _background_box(scene, rng)
        if box is not None:
            regions.append((None, box))
    for obj, box in regions:
        out += _region_pair(spec, obj, image, box, shown, wording)
    return out


def _region_pair(spec: W.PromptSpec, obj: W.WorldObject | None, image, box, view: RegionView,
                 wording: str) -> list[tuple[str, str, str, Any]]:
    """The local and the relevance question about the region ``box`` of ``image`` (around
    ``obj``; None: background), shown in ``view``; both share the shown picture."""
    pictures, phrase = show_region(image, box, view)
    relevance_question = RELEVANCE_QUESTIONS["compact" if wording == "compact" else "full"]
    return [("judge_local", local_question(spec.text, phrase, "logits", wording), local_digit(spec, obj), pictures[0]),
            ("relevance", relevance_question.format(prompt=spec.text, region=phrase),
             "Yes" if is_relevant(spec, obj) else "No", pictures[0])]




REGION_CASES = ("match", "related", "unrelated", "melted")


def _region_object(spec: W.PromptSpec, case: str, rng: np.random.Generator) -> W.WorldObject:
    """One object for :func:`region_questions`: a prompt object exactly ("match"), one that
    keeps its shape or colour and misses another asked attribute ("related"), one sharing
    neither with any prompt object ("unrelated"), or a malformed prompt object ("melted")."""
    target = spec.objects[int(rng.integers(len(spec.objects)))]
    shape = target.shape or W._choice(rng, W.SHAPES)
    color = target.color or W._choice(rng, tuple(W.COLORS))
    size = target.size or W._choice(rng, tuple(W.SIZES))
    fill = target.fill or W._choice(rng, W.FILLS)
    if case == "related":
        asked = [n for n, v in (("shape", target.shape), ("color", target.color), ("size", target.size),
                                ("fill", target.fill)) if v is not None]
        change = asked[int(rng.integers(len(asked)))]
        if change in ("shape", "color") and not ({"shape", "color"} - {change}) & set(asked):
            change = "size"   # only one of shape / colour asked: changing it would make the object unrelated
        shape = _other(W.SHAPES, shape, rng) if change == "shape" else shape
        color = _other(tuple(W.COLORS), color, rng) if change == "color" else color
        size = _other(tuple(W.SIZES), size, rng) if change == "size" else size
        fill = _other(W.FILLS, fill, rng) if change == "fill" else fill
    elif case == "unrelated":
        shapes = [x for x in W.SHAPES if all(o.shape != x for o in spec.objects)] or list(W.SHAPES)
        colors = [x for x in W.COLORS if all(o.color != x for o in spec.objects)] or list(W.COLORS)
        shape, color = W._choice(rng, shapes), W._choice(rng, colors)
    half = W.SIZES[size] / 2
    x, y = (float(rng.uniform(half + 1, W.IMAGE_SIZE - half - 1)) for _ in range(2))
    melt = 0.0
    if case == "melted" and shape != "circle":
        melt = round(float(rng.uniform(*W.MELT_RANGE)), 3)
    return W.WorldObject(shape, color, size, fill, x, y, melt=melt, melt_seed=int(rng.integers(2 ** 31)))


def _other(options, current, rng: np.random.Generator):
    return W._choice(rng, [o for o in options if o != current])


def region_questions(spec: W.PromptSpec, rng: np.random.Generator,
                     wording: str = "compact") -> list[tuple[str, str, str, Any]]:
    """The local and relevance questions about one region in the isolate view, on a picture
    of one object whose attributes are drawn to balance the ratings (:data:`REGION_CASES`,
    equally often), in the format of :func:`judge_questions`. The answers come from
    :func:`local_digit` and :func:`is_relevant`, as everywhere. In the judge's own scenes
    about three in four regions are an object the prompt asks for, so a judge that says "9"
    to every object is right most of the time; here it is right a quarter of the time."""
    case = REGION_CASES[int(rng.integers(len(REGION_CASES)))]
    obj = _region_object(spec, case, rng)
    return _region_pair(spec, obj, W.render(W.Scene((obj,))), _jitter_box(obj.bbox(), rng), ISOLATE_VIEW, wording)

# kind -> question maker; the order fixes which maker a random draw picks
_MAKERS = {"exists": _ask_exists, "color": _ask_color, "shape": _ask_shape, "fill": _ask_fill,
           "size": _ask_size, "count": _ask_count, "relation": _ask_relation}
QUESTION_KINDS = tuple(_MAKERS)
