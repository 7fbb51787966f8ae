# SPDX-License-Identifier: Apache-2.0
"""The miniature world: rendering, prompts, scenes, the split by combination, ground truth."""
import itertools
import os
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest

from srum.miniworld import world as W


def _rng(seed=0):
    return np.random.default_rng(seed)


# ---------------------------------------------------------------- objects and pictures
def test_render_draws_each_object_inside_its_box_on_black():
    scene = W.Scene((W.WorldObject("circle", "red", "large", "solid", 16, 16),
                     W.WorldObject("triangle", "blue", "small", "striped", 46, 46)))
    image = W.render(scene)
    assert image.size == (64, 64) and image.mode == "RGB"
    a = np.asarray(image).astype(int)
    lit = a.sum(-1) > 0
    inside = np.zeros_like(lit)
    for obj in scene.objects:
        x1, y1, x2, y2 = obj.bbox()
        assert (x2 - x1, y2 - y1) == (obj.extent, obj.extent)
        inside[y1:y2, x1:x2] = True
    assert lit.any() and not (lit & ~inside).any()           # nothing outside the boxes, background black
    assert tuple(a[16, 16]) == W.COLORS["red"]               # a solid centre has the exact colour
    x1, y1, x2, y2 = scene.objects[1].bbox()
    rows = lit[y1:y2, x1:x2].any(1)                          # striped: whole black rows inside the object
    bands = W.STRIPES["small"]
    assert rows.tolist() == [k % 2 == 0 for k, n in enumerate(bands) for _ in range(n)]
    assert scene.objects[0].phrase() == "a large red solid circle"
    assert W.Scene.from_dict(scene.to_dict()) == scene


def test_world_object_checks_its_attributes():
    with pytest.raises(ValueError, match="hexagon"):
        W.WorldObject("hexagon", "red", "small", "solid", 10, 10)
    assert W.WorldObject("square", "cyan", "small", "striped", 7, 8).bbox() == (0, 1, 14, 15)


def test_everything_is_deterministic_from_the_seed():
    def draw(seed):
        rng = _rng(seed)
        out = []
        for category in W.CATEGORIES:
            spec = W.sample_prompt(category, rng, "heldout")
            out.append((spec, W.render(W.sample_scene(spec, rng)).tobytes()))
        out.append(W.render(W.sample_training_scene(rng)).tobytes())
        return out
    assert draw(3) == draw(3) and draw(3) != draw(4)
    assert W.eval_prompts("heldout", 7, 1) == W.eval_prompts("heldout", 7, 1)
    assert W.eval_prompts("heldout", 7, 1)[:3] != W.eval_prompts("heldout", 7, 2)[:3]
    small, large = W.eval_prompts("heldout", 3, 1), W.eval_prompts("heldout", 5, 1)
    assert all([s for s in small if s.category == c] == [s for s in large if s.category == c][:3]
               for c in W.CATEGORIES)                                 # a larger set extends a smaller one


def _gap(a, b):
    reach = (a.extent + b.extent) / 2
    return max(abs(a.x - b.x), abs(a.y - b.y)) - reach


def test_scenes_satisfy_their_prompt_exactly_with_gaps_and_margins():
    rng = _rng(1)
    for category in W.CATEGORIES:
        for _ in range(60):
            spec = W.sample_prompt(category, rng, "all")
            scene = W.sample_scene(spec, rng)
            assert W.spec_satisfied(spec, scene)["overall"], spec
            assert len(scene.objects) == spec.num_objects                # exactly the asked objects
            for obj in scene.objects:
                x1, y1, x2, y2 = obj.box()
                assert x1 >= W.EDGE and y1 >= W.EDGE and x2 <= 64 - W.EDGE and y2 <= 64 - W.EDGE
            for a, b in itertools.combinations(scene.objects, 2):
                assert _gap(a, b) >= W.MIN_GAP
            if spec.relation:                                            # drawn with a clear margin
                i, rel, j = spec.relation
                a, b = scene.objects[i], scene.objects[j]
                assert W.relation_holds(a, rel, b, margin=W.RELATION_ALONG)


def test_prompt_categories_templates_and_attributes():
    rng = _rng(2)
    for category in W.CATEGORIES:
        texts = {t: W.sample_prompt(category, _rng(5), "all", template=t).text for t in range(W.NUM_TEMPLATES)}
        assert len(set(texts.values())) == W.NUM_TEMPLATES >= 3         # distinct phrasings of one draw
        specs = [W.sample_prompt(category, rng, "all") for _ in range(200)]
        sizes = Counter(s.num_objects for s in specs)
        if category in ("color", "shape", "texture"):
            assert set(sizes) == {1, 2}
        if category == "spatial":
            assert set(sizes) == {2} and all(s.relation and s.relation[1] in W.RELATIONS for s in specs)
        if category == "numeracy":
            assert set(sizes) == {1, 2, 3, 4} and any(len(s.objects) == 2 for s in specs)
        if category == "complex":
            assert set(sizes) == {2, 3} and all(s.relation for s in specs)
            assert all(o.size or o.fill for s in specs for o in s.objects)
        for s in specs:
            assert W.PromptSpec.from_dict(s.to_dict()) == s
            if s.num_objects > 1:   # multi-object prompts name every object's kind, kinds distinct
                assert all(o.color and o.shape for o in s.objects)
                assert len({o.kind for o in s.objects}) == len(s.objects)
    spec = W.PromptSpec("spatial", "", (W.ObjectSpec("circle", "red"), W.ObjectSpec("square", "blue")),
                        (0, "left of", 1))
    assert [W.prompt_text("spatial", spec.objects, spec.relation, t) for t in range(4)] == [
        "a red circle to the left of a blue square", "a blue square with a red circle on its left",
        "on the left a red circle, on the right a blue square", "a red circle is to the left of a blue square"]
    assert W.prompt_text("numeracy", (W.ObjectSpec("triangle", "green", count=3),), None, 0) == "three green triangles"
    assert W.ObjectSpec("circle", "red", "small", "striped").post_phrase() == "a circle that is small, red and striped"


# ---------------------------------------------------------------- ground truth
def _obj(shape, color, x, y, size="small", fill="solid"):
    return W.WorldObject(shape, color, size, fill, x, y)


def test_relation_rule():
    a, b = _obj("circle", "red", 10, 30), _obj("square", "blue", 40, 35)
    assert W.relation_holds(a, "left of", b) and W.relation_holds(b, "right of", a)
    assert not W.relation_holds(a, "right of", b) and not W.relation_holds(a, "above", b)
    assert not W.relation_holds(a, "left of", _obj("square", "blue", 14, 30))          # under the margin
    assert not W.relation_holds(a, "left of", _obj("square", "blue", 30, 55))          # more below than right
    assert W.relation_holds(_obj("circle", "red", 30, 10), "above", _obj("square", "blue", 33, 40))


def test_evaluate_spec_counts_extras_and_distinct_objects():
    two = W.PromptSpec("color", "", (W.ObjectSpec("circle", "red"), W.ObjectSpec("circle")))
    one_red = W.Scene((_obj("circle", "red", 10, 10),))
    req = W.spec_satisfied(two, one_red)
    assert req["object0"] and req["object1"] and not req["overall"]   # one object cannot be both
    extra = W.Scene((_obj("circle", "red", 10, 10), _obj("circle", "blue", 40, 10), _obj("square", "green", 30, 45)))
    assert W.spec_satisfied(two, extra)["overall"]                     # extra objects allowed
    num = W.PromptSpec("numeracy", "", (W.ObjectSpec("circle", count=2),))
    req = W.spec_satisfied(num, extra)
    assert req["object0"] and req["count0"] and req["overall"]
    three = W.Scene(extra.objects + (_obj("circle", "cyan", 50, 50),))
    req = W.spec_satisfied(num, three)
    assert req["object0"] and not req["count0"] and not req["overall"]   # numeracy counts exactly
    rel = W.PromptSpec("spatial", "", (W.ObjectSpec("circle"), W.ObjectSpec("square")), (0, "right of", 1))
    assert not W.spec_satisfied(rel, extra)["overall"]
    assert W.spec_satisfied(rel, W.Scene(extra.objects + (_obj("circle", "red", 55, 45),)))["overall"]


def test_negative_scenes_violate_the_prompt_by_the_named_change():
    rng = _rng(3)
    seen = Counter()
    for k in range(240):
        spec = W.sample_prompt(W.CATEGORIES[k % 6], rng, "train")
        scene, kind = W.sample_negative_scene(spec, rng)
        seen[kind] += 1
        req = W.spec_satisfied(spec, scene)
        assert not req["overall"]
        if kind == "relation":
            assert not req["relation"] and all(v for k2, v in req.items() if k2.startswith("object"))
        assert not W.scene_is_heldout(scene)                     # a training prompt's negatives stay in training
    assert set(seen) == set(W.NEGATIVE_KINDS)
    with pytest.raises(ValueError, match="does not apply"):
        W.sample_negative_scene(W.sample_prompt("color", rng), rng, kind="relation")


# ---------------------------------------------------------------- the split
def test_artifact_scenes_melt_one_asked_object_and_keep_the_truth():
    rng = np.random.default_rng(3)
    seen = 0
    for i in range(60):
        spec = W.sample_prompt(W.CATEGORIES[i % len(W.CATEGORIES)], rng, "train")
        scene = W.sample_artifact_scene(spec, rng)
        if scene is None:    # every asked object is a circle
            assert all(o.shape == "circle" for o in W.sample_scene(spec, rng).objects if any(s.matches(o) for s in spec.objects))
            continue
        seen += 1
        melted = [o for o in scene.objects if o.melt]
        assert len(melted) == 1 and melted[0].shape != "circle" and W.MELT_RANGE[0] <= melted[0].melt <= W.MELT_RANGE[1]
        assert W.spec_satisfied(spec, scene)["overall"]         # a rendering flaw, not a wrong attribute
        assert W.Scene.from_dict(scene.to_dict()) == scene
        image = np.asarray(W.render(scene))
        assert np.array_equal(image, np.asarray(W.render(scene)))   # reproducible from melt_seed
        clean = W.Scene(tuple(W.WorldObject(o.shape, o.color, o.size, o.fill, o.x, o.y) for o in scene.objects))
        x1, y1, x2, y2 = melted[0].bbox()
        assert not np.array_equal(image[y1:y2, x1:x2], np.asarray(W.render(clean))[y1:y2, x1:x2])
    assert seen > 30
    assert "melt" not in W.WorldObject("circle", "red", "small", "solid", 10.0, 10.0).to_dict()   # clean dicts unchanged
    with pytest.raises(ValueError, match="melt"):
        W.WorldObject("square", "red", "small", "solid", 10.0, 10.0, melt=1.5)


def test_split_by_combination():
    rng = _rng(4)
    kinds = list(itertools.product(W.COLORS, W.SHAPES))
    pairs = list(itertools.combinations(kinds, 2))
    share = sum(W.pair_is_heldout(a, b) for a, b in pairs) / len(pairs)
    assert 0.12 < share < 0.28 and all(W.pair_is_heldout(a, b) == W.pair_is_heldout(b, a) for a, b in pairs)
    assert not any(W.pair_is_heldout(k, k) for k in kinds)
    for category in W.CATEGORIES:
        for _ in range(150):
            train = W.sample_prompt(category, rng, "train")
            assert not W.is_heldout(train)
            scene = W.sample_scene(train, rng)
            assert not W.scene_is_heldout(scene)
            held = W.sample_prompt(category, rng, "heldout")
            assert W.is_heldout(held) or held.num_objects == 1     # single-object prompts are in both splits
            assert W.scene_is_heldout(W.sample_scene(held, rng)) == W.is_heldout(held)
    for n in (1, 2, 3, 4):
        for _ in range(100):
            scene = W.sample_training_scene(rng, n)
            assert len(scene.objects) == n and not W.scene_is_heldout(scene)
    specs = W.eval_prompts("heldout", 40, 0)
    assert Counter(s.category for s in specs) == {c: 40 for c in W.CATEGORIES}
    for category in W.CATEGORIES:
        texts = [s.text for s in specs if s.category == category]
        assert len(set(texts)) == len(texts)
    assert all(W.is_heldout(s) for s in specs if s.num_objects > 1)
    assert all(s.num_objects > 1 for s in specs if s.category in ("spatial", "complex"))
    train_texts = {W.sample_prompt(c, rng, "train").text for c in W.CATEGORIES for _ in range(300)}
    assert not train_texts & {s.text for s in specs if s.num_objects > 1}


def test_split_does_not_depend_on_pythons_string_hash():
    # world.py loaded on its own (importing the srum package would import torch: slow)
    code = ("import importlib.util as u, itertools, sys; "
            f"s = u.spec_from_file_location('w', {W.__file__!r}); W = sys.modules['w'] = u.module_from_spec(s); "
            "s.loader.exec_module(W); "
            "k = list(itertools.product(W.COLORS, W.SHAPES)); "
            "print(sum(1 << i for i, (a, b) in enumerate(itertools.combinations(k, 2)) if W.pair_is_heldout(a, b)))")
    outs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONHASHSEED": seed}).stdout for seed in ("1", "2")}
    assert len(outs) == 1


def test_corpus_covers_every_word():
    words = W.corpus_words(W.world_corpus())
    rng = _rng(6)
    used = W.corpus_words(W.sample_prompt(c, rng, s).text for c in W.CATEGORIES for s in W.SPLITS
                          for _ in range(200))
    assert used <= words
    assert set(W.SHAPES) | set(W.COLORS) | set(W.SIZES) | set(W.FILLS) <= words
