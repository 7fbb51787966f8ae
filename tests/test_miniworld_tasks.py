# SPDX-License-Identifier: Apache-2.0
"""The miniature world's training rows, the self-box proposals, the autoencoder objective
and the model-dependent input transforms."""
from __future__ import annotations

import json

import re
from collections import Counter

import numpy as np
import PIL.Image
import pytest
import torch

from srum.miniworld import tasks
from srum.miniworld import world as W
from srum.miniworld.data import DataConfig, text_corpus, write_training_data
from srum.proposals.self_boxes import SelfBoxesConfig, parse_boxes, propose_self_boxes


def _spatial(rng):
    spec = W.sample_prompt("spatial", rng, "train")
    return spec, W.sample_scene(spec, rng)


def test_plan_round_trips_every_object():
    rng = np.random.default_rng(1)
    for category in W.CATEGORIES:
        spec = W.sample_prompt(category, rng, "train")
        scene = W.sample_scene(spec, rng)
        parsed = tasks.parse_plan(tasks.plan_text(scene))
        assert [(o.shape, o.color, o.size, o.fill) for o in parsed] == \
               [(o.shape, o.color, o.size, o.fill) for o in scene.objects]
        assert all(abs(p.x - o.x) <= 0.5 and abs(p.y - o.y) <= 0.5 for p, o in zip(parsed, scene.objects))
        # the plan's objects still satisfy the prompt: drawing from the plan is drawing the prompt
        assert W.evaluate_spec(spec, parsed)["overall"]


def test_scene_question_answers_follow_the_scene():
    rng = np.random.default_rng(2)
    for _ in range(200):
        scene = W.sample_training_scene(rng)
        for kind, question, answer in tasks.scene_questions(scene, rng, 4):
            if kind == "count" and question == "How many objects are there?":
                assert answer == str(len(scene.objects))
            if kind == "exists":
                words = question.split()
                color, shape = words[3], words[4]
                assert (answer == "Yes") == any(o.color == color and o.shape == shape for o in scene.objects)
            if kind == "color":
                shape = question.split()[-1].rstrip("?")
                assert answer == next(o.color for o in scene.objects if o.shape == shape)
    # a curriculum asks only the kinds given; unknown kinds are refused by name
    kinds = {kind for _ in range(100)
             for kind, _, _ in tasks.scene_questions(W.sample_training_scene(rng, n_objects=1), rng, 3, ["color", "shape"])}
    assert kinds == {"color", "shape"}
    with pytest.raises(ValueError, match=r"question_kinds: \['colour'\]"):
        DataConfig(question_kinds=["colour"])
    # the default draw is unchanged by the option (the shipped data stays reproducible)
    a = tasks.scene_questions(scene, np.random.default_rng(9), 4)
    assert a == tasks.scene_questions(scene, np.random.default_rng(9), 4, list(tasks.QUESTION_KINDS))


def test_detection_answer_parses_back_to_the_boxes():
    rng = np.random.default_rng(3)
    scene = W.sample_training_scene(rng, 3)
    boxes = parse_boxes(tasks.detection_answer(scene), (64, 64), coords_scale=64)
    assert sorted(tuple(b["bbox"]) for b in boxes) == sorted(tuple(float(v) for v in o.bbox()) for o in scene.objects)
    assert {b["label"] for b in boxes} == {f"{o.color} {o.shape}" for o in scene.objects}


def test_parse_boxes_scales_clips_and_skips_degenerate():
    text = "red circle (100, 200, 300, 400); blue square (500, 500, 500, 900), big (900, 900, 1200, 1000)"
    boxes = parse_boxes(text, (200, 100), coords_scale=1000)
    assert boxes[0] == {"label": "red circle", "bbox": [20.0, 20.0, 60.0, 40.0]}
    assert boxes[1]["bbox"] == [180.0, 90.0, 200.0, 100.0]     # clipped to the image
    assert len(boxes) == 2                                       # the zero-width box is dropped


def test_self_box_proposals_use_the_model_answer():
    class FakeModel:
        def understand(self, image, question, max_new_tokens):
            assert question == SelfBoxesConfig().question
            return "red circle (0, 0, 32, 32); junk; blue square (32, 32, 64, 64)."

    regions, answer = propose_self_boxes(FakeModel(), PIL.Image.new("RGB", (64, 64)), SelfBoxesConfig(coords_scale=64))
    assert [r["bbox"] for r in regions] == [[0.0, 0.0, 32.0, 32.0], [32.0, 32.0, 64.0, 64.0]]
    assert all(r["mask"] is None and r["area"] == 1024.0 for r in regions)
    assert "junk" in answer


def test_judge_digits_follow_the_rubric_rules():
    rng = np.random.default_rng(4)
    seen = set()
    for _ in range(60):
        spec, scene = _spatial(rng)
        assert tasks.global_digit(spec, scene) == "9"
        i, rel, j = spec.relation
        bad, kind = W.sample_negative_scene(spec, rng, kind="relation")
        digit = tasks.global_digit(spec, bad)
        seen.add(digit)
        assert digit in ("1", "3")
        for obj in scene.objects:
            assert tasks.local_digit(spec, obj) == "9" and tasks.is_relevant(spec, obj)
    assert seen == {"1", "3"}
    melted = None
    while melted is None:    # None when both asked objects are circles
        spec, _ = _spatial(rng)
        melted = W.sample_artifact_scene(spec, rng)
    obj = next(o for o in melted.objects if o.melt)
    assert tasks.local_digit(spec, obj) == "3" and tasks.is_relevant(spec, obj)   # relevant, severe artifacts
    assert tasks.global_digit(spec, melted) == "9"                              # the layout is still right
    spec = W.sample_prompt("color", rng, "train")
    assert tasks.global_digit(spec, W.sample_scene(spec, rng)) == "5"    # no relation: neutral
    assert tasks.local_digit(spec, None) == "5" and not tasks.is_relevant(spec, None)


def test_judge_rows_are_asked_in_the_configured_wording():
    from srum.judge.rubric import global_question, local_question
    from srum.proposals.grounding import GroundingConfig
    rng = np.random.default_rng(9)
    spec, scene = _spatial(rng)
    image = W.render(scene)
    for wording, grounding in (("rubric", "full"), ("compact", "compact")):
        rows = tasks.judge_questions(spec, scene, image, np.random.default_rng(1), wording=wording)
        assert rows[0] == ("judge_global", global_question(spec.text, "logits", wording), "9", image)
        phrases = [q.split("Region: ")[1].split(".\n")[0] for k, q, *_ in rows if k == "judge_local"] if wording == "compact" else None
        assert not phrases or all(re.fullmatch(r"the box \(\d+, \d+, \d+, \d+\)", p) for p in phrases)
        locals_ = [q for k, q, *_ in rows if k == "judge_local"]
        relevance = [q for k, q, *_ in rows if k == "relevance"]
        assert all(picture is image for *_, picture in rows)   # coords: the question names the box
        assert locals_ and len(locals_) == len(relevance)
        if phrases:    # exactly the questions srum judge / srum propose ask in that wording
            assert locals_ == [local_question(spec.text, p, "logits", "compact") for p in phrases]
            assert relevance == [GroundingConfig(wording="compact").question_for(spec.text, p) for p in phrases]
    short = sum(len(q) for _, q, *_ in tasks.judge_questions(spec, scene, image, np.random.default_rng(1), wording="compact"))
    long = sum(len(q) for _, q, *_ in tasks.judge_questions(spec, scene, image, np.random.default_rng(1)))
    assert short < long / 5
    # isolate: each region's questions come with the picture blacked out around that region
    rows = tasks.judge_questions(spec, scene, image, np.random.default_rng(1), wording="compact", view="isolate")
    assert rows[0][3] is image
    for kind, question, answer, picture in rows[1:]:
        assert "Region: the part of the image left visible." in question
        assert picture is not image and picture.size == image.size


def test_training_data_never_holds_a_heldout_combination(tmp_path):
    cfg = DataConfig(prompts=120, vqa_scenes=60, judge_scenes=30, seed=5)
    summary = write_training_data(tmp_path / "d", cfg)
    assert summary["t2i"] == summary["cot"] == 120
    heldout_texts = {s.text for s in W.eval_prompts(split="heldout", per_category=30, seed=0)
                     if W.is_heldout(s)}
    for name in ("t2i.jsonl", "cot.jsonl", "vqa.jsonl"):
        for line in (tmp_path / "d" / name).read_text().splitlines():
            row = json.loads(line)
            assert (tmp_path / "d" / row["image"]).is_file()
            assert row.get("prompt") not in heldout_texts
    # a second call with the same config keeps the files; the corpus covers the world's words
    again = write_training_data(tmp_path / "d", cfg)
    assert again == summary
    words = " ".join(text_corpus(tmp_path / "d"))
    assert all(w in words for w in list(W.SHAPES) + list(W.COLORS))


def test_judge_rows_with_artifacts_in_the_compact_wording(tmp_path):
    cfg = DataConfig(prompts=6, vqa_scenes=6, judge_scenes=60, corrupt_prob=0.3, artifact_prob=0.6,
                     judge_wording="compact", seed=2)
    summary = write_training_data(tmp_path / "d", cfg)
    rows = [json.loads(line) for line in (tmp_path / "d" / "vqa.jsonl").read_text().splitlines()]
    judge = [r for r in rows if r["meta"]["kind"].startswith("judge") or r["meta"]["kind"] == "relevance"]
    assert summary["judge_violations"].get("artifact", 0) > 0
    assert all(len(r["question"]) < 200 for r in judge)              # compact: no rubric text
    melted = [r for r in judge if r["meta"]["violation"] == "artifact" and r["meta"]["kind"] == "judge_local"]
    assert melted and {r["answer"] for r in melted} <= {"9", "3", "2", "5"} and "3" in {r["answer"] for r in melted}
    with pytest.raises(ValueError, match="artifact_prob"):
        DataConfig(artifact_prob=2.0)


def test_autoencoder_objective_learns_and_normalises():
    from srum.models.bagel.autoencoder import AutoEncoderParams
    from srum.training.autoencoder import AutoencoderTrainConfig, latent_moments, train_autoencoder
    rng = np.random.default_rng(0)
    images = torch.stack([torch.from_numpy(np.array(W.render(W.sample_training_scene(rng)))).permute(2, 0, 1)
                          for _ in range(16)]).float() / 127.5 - 1
    params = AutoEncoderParams(ch=32, ch_mult=(1, 1, 1, 1), num_res_blocks=1, z_channels=4)
    cfg = AutoencoderTrainConfig(steps=60, batch_size=8, lr=2e-3, warmup_steps=5, log_every=20)
    curve = []
    ae = train_autoencoder(params, lambda step, b: images[(torch.arange(b) + step * b) % 16], cfg,
                           on_log=lambda step, m: curve.append(m))
    assert curve[-1]["loss"] < 0.85 * curve[0]["loss"]
    moments = latent_moments(ae, images)
    assert moments["psnr"] > 12.0


def test_autoencoder_moment_term_is_the_scaled_latents_distance_from_unit_moments():
    from srum.models.bagel.autoencoder import AutoEncoder, AutoEncoderParams
    from srum.training.autoencoder import AutoencoderTrainConfig, autoencoder_loss
    torch.manual_seed(0)
    ae = AutoEncoder(AutoEncoderParams(ch=32, ch_mult=(1, 1, 1, 1), num_res_blocks=1, z_channels=4))
    images = torch.rand(2, 3, 64, 64) * 2 - 1
    losses = [autoencoder_loss(ae, images, AutoencoderTrainConfig(kl_weight=0.0, moment_weight=w),
                               torch.Generator().manual_seed(1))[0] for w in (0.0, 1.0)]
    with torch.no_grad():
        s = ae.params.scale_factor * (ae.encoder(images).chunk(2, dim=1)[0] - ae.params.shift_factor)
    expected = s.mean() ** 2 + (s.std() - 1.0) ** 2
    torch.testing.assert_close(losses[1] - losses[0], expected, rtol=1e-4, atol=1e-6)
    assert float(expected) > 0.1   # a random encoder is far from unit moments: the term matters


def test_transforms_follow_the_model_config():
    from srum.models.bagel.tiny import build_tiny_model, load_tiny_spec
    from srum.models.bagel.transforms import vae_transform, vit_transform
    config = build_tiny_model(300, load_tiny_spec("configs/model/miniworld.yaml")).config
    assert vit_transform(config).resize.target_size(64, 64) == (64, 64)
    assert vae_transform(config).resize.target_size(64, 64) == (64, 64)
    assert vit_transform(config).stride == config.vit.patch_size == 16
    # Bagel-7B-MoT's numbers: the defaults
    from srum.models.bagel.config import BagelConfig, LanguageModelConfig, VisionConfig
    big = BagelConfig(llm=config.llm, vit=VisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                                        num_attention_heads=2, patch_size=14, image_size=980),
                      max_latent_size=64)
    for size in [(300, 200), (4000, 500), (1024, 1024)]:
        assert vae_transform(big).resize.target_size(*size) == vae_transform().resize.target_size(*size)
        assert vit_transform(big).resize.target_size(*size) == vit_transform().resize.target_size(*size)


def test_region_questions_balance_the_ratings_of_one_isolated_object():
    from srum.judge.rubric import local_question
    ratings, relevant = Counter(), Counter()
    for i in range(240):
        rng = np.random.default_rng([11, i])
        spec = W.sample_prompt(W.CATEGORIES[i % 6], rng, "train")
        (k1, q1, a1, p1), (k2, q2, a2, p2) = tasks.region_questions(spec, rng)
        assert (k1, k2) == ("judge_local", "relevance") and p1 is p2 and p1.size == (64, 64)
        assert q1 == local_question(spec.text, "the part of the image left visible", "logits", "compact")
        assert (a2 == "Yes") == (a1 in ("9", "3"))      # relevant exactly when it shares shape or colour
        ratings[a1] += 1
        relevant[a2] += 1
    # a judge that says "9" to every object is right for at most ~a third of them here
    assert set(ratings) == {"9", "3", "2"} and max(ratings.values()) < 0.5 * 240 and min(ratings.values()) > 0.15 * 240


def test_region_scenes_need_the_isolate_view():
    from srum.miniworld.data import DataConfig
    with pytest.raises(ValueError, match="judge_view: isolate"):
        DataConfig(region_scenes=10)
    with pytest.raises(ValueError, match="judge_view"):
        DataConfig(judge_view="crop")
    assert DataConfig(region_scenes=10, judge_view="isolate").region_scenes == 10


def test_isolate_view_rows_have_their_own_images_and_no_heldout_prompt(tmp_path):
    cfg = DataConfig(prompts=6, vqa_scenes=6, judge_scenes=12, judge_view="isolate", region_scenes=24, seed=3)
    summary = write_training_data(tmp_path / "d", cfg)
    rows = [json.loads(line) for line in (tmp_path / "d" / "vqa.jsonl").read_text().splitlines()]
    region = [r for r in rows if r["id"].startswith("region-")]
    judge = [r for r in rows if r["id"].startswith("judge-")]
    assert len(region) == 48 and summary["vqa"] == len(rows)
    local = [r for r in judge if r["meta"]["kind"] in ("judge_local", "relevance")]
    assert local and all(re.search(r"judge/\d{7}-r\d\.png$", r["image"]) for r in local)
    assert all(re.search(r"judge/\d{7}\.png$", r["image"]) for r in judge if r["meta"]["kind"] == "judge_global")
    heldout = {s.text for s in W.eval_prompts(split="heldout", per_category=30, seed=0) if W.is_heldout(s)}
    for r in region + judge:
        assert (tmp_path / "d" / r["image"]).is_file()
        assert not any(f'"{t}"' in r["question"] for t in heldout)


def test_abilities_refuse_an_unknown_judge_view_or_wording_at_once():
    from srum.miniworld.abilities import AbilitiesConfig
    with pytest.raises(ValueError, match="judge_view"):
        AbilitiesConfig(judge_view="crop")
    with pytest.raises(ValueError, match="judge_wording"):
        AbilitiesConfig(judge_wording="short")
