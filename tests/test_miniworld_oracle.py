# SPDX-License-Identifier: Apache-2.0
"""The miniature world's oracle: objects read back from pictures, and its agreement with the
ground truth on >= 1000 rendered held-out scenes, clean and perturbed, right and wrong."""
import itertools
import json
import time
from collections import Counter

import numpy as np
import pytest
from PIL import Image, ImageFilter

from srum.miniworld import oracle as O
from srum.miniworld import world as W


def perturb(image: Image.Image, kind: str, rng: np.random.Generator) -> Image.Image:
    """noise: gaussian, sigma 6 grey levels; blur: gaussian, radius 0.7; jitter: shift by
    1-2 px (black comes in, nothing wraps); shift: every channel +-1..4 levels; all: the four."""
    if kind == "clean":
        return image
    if kind == "blur":
        return image.filter(ImageFilter.GaussianBlur(0.7))
    if kind == "all":
        for k in ("jitter", "blur", "shift", "noise"):
            image = perturb(image, k, rng)
        return image
    a = np.asarray(image, dtype=np.float32)
    if kind == "noise":
        a = a + rng.normal(0, 6, a.shape)
    elif kind == "shift":
        a = a + rng.choice([-4, -3, -2, -1, 1, 2, 3, 4], size=3)
    elif kind == "jitter":
        dy, dx = rng.choice([-2, -1, 1, 2], size=2)
        out = np.zeros_like(a)
        out[max(dy, 0):64 + min(dy, 0), max(dx, 0):64 + min(dx, 0)] = a[max(-dy, 0):64 + min(-dy, 0),
                                                                        max(-dx, 0):64 + min(-dx, 0)]
        a = out
    return Image.fromarray(np.clip(np.round(a), 0, 255).astype(np.uint8))


PERTURBATIONS = ("clean", "noise", "blur", "jitter", "shift", "all")


def test_reads_every_attribute_of_single_objects():
    rng = np.random.default_rng(0)
    for shape, size, fill in itertools.product(W.SHAPES, W.SIZES, W.FILLS):
        for color in W.COLORS:
            half = W.SIZES[size] // 2 + 1
            x, y = (float(v) for v in rng.integers(half, 64 - half + 1, size=2))
            obj = W.WorldObject(shape, color, size, fill, x, y)
            for kind in ("clean", "all"):
                found = O.read_objects(perturb(W.render(W.Scene((obj,))), kind, rng))
                assert len(found) == 1, (obj, kind, found)
                got = found[0]
                assert (got.shape, got.color, got.size, got.fill) == (shape, color, size, fill), (obj, kind, got)
                assert abs(got.x - x) <= 2.5 and abs(got.y - y) <= 2.5
                if kind == "clean":
                    assert abs(got.x - x) <= 0.5 and abs(got.y - y) <= 1.0


def test_nothing_recognisable_is_unreadable_and_wrong():
    rng = np.random.default_rng(1)
    spec = W.sample_prompt("color", rng, "all")
    pictures = {
        "black": np.zeros((64, 64, 3)),
        "uniform noise": rng.integers(0, 256, (64, 64, 3)),
        "grey noise": rng.normal(128, 60, (64, 64, 3)),
        "dark noise": rng.normal(0, 20, (64, 64, 3)),
        "white": np.full((64, 64, 3), 255),
    }
    for name, a in pictures.items():
        verdict = O.check(spec, Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)))
        assert not verdict.readable and not verdict.correct, name
        assert verdict.failed()[0] == "unreadable"


def test_colours_outside_the_palette_are_not_objects():
    image = Image.new("RGB", (64, 64))
    for k, colour in enumerate([(255, 255, 255), (128, 128, 128), (240, 130, 30), (120, 60, 30)]):
        image.paste(colour, (4 + 15 * k, 20, 16 + 15 * k, 32))
    assert O.read_objects(image) == []


def test_other_picture_sizes_are_read_in_the_64_px_frame():
    rng = np.random.default_rng(2)
    spec = W.sample_prompt("spatial", rng, "heldout")
    image = W.render(W.sample_scene(spec, rng))
    for side in (128, 256):
        assert O.check(spec, image.resize((side, side), Image.NEAREST)).correct
    assert O.check(spec, np.asarray(image)).correct


def test_verdict_fields():
    rng = np.random.default_rng(3)
    spec = W.sample_prompt("numeracy", rng, "heldout")
    verdict = O.check(spec, W.render(W.sample_scene(spec, rng)))
    assert verdict.correct and verdict.readable and verdict.failed() == []
    assert verdict.requirements["overall"] and all(k.startswith(("object", "count", "overall"))
                                                   for k in verdict.requirements)
    d = json.loads(json.dumps(verdict.to_dict()))
    assert len(d["objects"]) == spec.num_objects and set(d["objects"][0]) >= {"shape", "color", "bbox", "x"}


def test_agreement_with_the_ground_truth_on_1200_heldout_scenes():
    """Each held-out scene (half of them violating their prompt by one change) is judged
    clean and with one perturbation: >= 99.5 % agreement with spec_satisfied, overall and
    on the right and the wrong pictures separately."""
    rng = np.random.default_rng(2024)
    started = time.time()
    agree, kinds = Counter(), Counter()
    misses = []
    n_scenes = 1200
    for k in range(n_scenes):
        spec = W.sample_prompt(W.CATEGORIES[k % 6], rng, "heldout")
        negative = (k // 6) % 2 == 1           # every category gets right and wrong pictures
        if negative:
            scene, kind = W.sample_negative_scene(spec, rng)
            kinds[kind] += 1
        else:
            scene = W.sample_scene(spec, rng)
        truth = W.spec_satisfied(spec, scene)["overall"]
        assert truth == (not negative)
        image = W.render(scene)
        for p in ("clean", PERTURBATIONS[1 + (k // 2) % 5]):
            ok = O.check(spec, perturb(image, p, rng)).correct == truth
            agree[(truth, p, ok)] += 1
            if not ok:
                misses.append((p, spec.text, scene))

    def rate(select):
        hits = sum(v for key, v in agree.items() if select(key) and key[2])
        return hits / sum(v for key, v in agree.items() if select(key))

    overall, right, wrong = rate(lambda key: True), rate(lambda key: key[0]), rate(lambda key: not key[0])
    perturbed = rate(lambda key: key[1] != "clean")
    print(f"\noracle agreement on {2 * n_scenes} judgments of {n_scenes} held-out scenes: {100 * overall:.2f} % "
          f"(right pictures {100 * right:.2f} %, wrong pictures {100 * wrong:.2f} %, perturbed {100 * perturbed:.2f} %,"
          f" clean {100 * rate(lambda key: key[1] == 'clean'):.2f} %) in {time.time() - started:.1f} s; "
          f"negatives {dict(kinds)}; misses: {misses[:3]}")
    assert set(kinds) == set(W.NEGATIVE_KINDS)
    assert overall >= 0.995 and right >= 0.995 and wrong >= 0.995 and perturbed >= 0.995


def test_candidate_check_measures_candidates_and_the_judges_ranking(tmp_path):
    """The study's oracle diagnostic: correct share, and the AUC of the judge's scores."""
    from srum.miniworld.candidate_check import auc, check_candidates

    assert auc([0.9, 0.8, 0.1], [True, True, False]) == 100.0
    assert auc([0.1, 0.9], [True, False]) == 0.0 and auc([0.5, 0.5], [True, False]) == 50.0
    assert auc([0.3], [True]) is None

    rng = np.random.default_rng(3)
    specs, rows = {}, []
    (tmp_path / "images").mkdir()
    for i in range(6):
        spec = W.sample_prompt("color", rng)
        specs[spec.text] = spec
        good = i % 2 == 0
        scene = W.sample_scene(spec, rng) if good else W.sample_negative_scene(spec, rng, kind="attribute")[0]
        W.render(scene).save(tmp_path / "images" / f"{i}.png")
        assert O.check(spec, W.render(scene)).correct == good
        # a judge that ranks right globally and says the opposite of the truth for every region
        regions = [{"bbox": list(o.bbox()), "status": "ok",
                    "score": -1.0 if any(s.matches(o) for s in spec.objects) else 1.0} for o in scene.objects]
        rows.append({"image_file": f"images/{i}.png", "prompt": spec.text,
                     "global": {"status": "ok", "score": 0.8 if good else -0.2}, "regions": regions})
    rows.append({"image_file": "images/none.png", "prompt": "a prompt nobody wrote", "global": {}})
    (tmp_path / "rewards.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = check_candidates(tmp_path, specs)
    assert (out["images"], out["skipped"], out["oracle_accuracy"]) == (6, 1, 50.0)
    assert out["global_auc"] == 100.0 and out["global_mean_correct"] == pytest.approx(0.8)
    assert out["regions_matched"] > 0 and out["local_auc"] == 0.0
