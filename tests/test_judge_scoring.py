# SPDX-License-Identifier: Apache-2.0
"""judge_image: retries with sampling, explicit failures, logits arithmetic, batching,
region bookkeeping; with a scripted fake backend and with the real tiny Bagel."""
import json
import math

import PIL.Image
import pytest
import torch

from srum.config import ConfigError, load_config
from srum.judge import RATING_SCALE, JudgeConfig, SelfJudge, judge_image, judge_images
from srum.judge.rubric import global_question, local_question
from srum.regions import RegionView, show_region

PROMPT = "a red apple to the left of a blue cup"


class FakeBackend:
    """Answers from a script: ``replies(question_text, attempt) -> str`` (attempt counts the
    times that exact question was asked); logits from ``probs_for(question_text)``."""

    name = "fake"
    model_id = "fake-judge"
    think_system_prompt = "FAKE THINK PROMPT"

    def __init__(self, replies=None, probs_for=None):
        self.replies, self.probs_for = replies, probs_for
        self.calls, self.seen = [], {}

    def generate(self, images, prompts, *, system, max_new_tokens, do_sample, temperature, generator):
        self.calls.append(dict(kind="generate", n=len(prompts), system=system, max_new_tokens=max_new_tokens,
                               do_sample=do_sample, temperature=temperature, generator=generator,
                               prompts=list(prompts), images=[list(r) for r in images]))
        out = []
        for p in prompts:
            attempt = self.seen.get(p, 0)
            self.seen[p] = attempt + 1
            out.append(self.replies(p, attempt))
        return out

    def choice_probabilities(self, images, prompts, choices, *, system=None):
        self.calls.append(dict(kind="choices", n=len(prompts), choices=list(choices), prompts=list(prompts)))
        rows = [self.probs_for(p) for p in prompts]
        return torch.tensor([r[0] for r in rows]), torch.tensor([r[1] for r in rows])


def _image():
    return PIL.Image.new("RGB", (64, 48), (120, 30, 30))


def _regions():
    return [
        {"region_id": 0, "bbox": [0, 0, 32, 24], "mask": None, "grounding": {"p_relevant": 0.9, "kept": True}},
        {"region_id": 1, "bbox": [8, 8, 40, 40], "mask": {"size": [48, 64], "counts": [3072]},
         "grounding": {"p_relevant": 0.1, "kept": False}},
        {"region_id": 2, "bbox": [30.5, 4.0, 64.0, 48.0], "mask": None, "grounding": None, "area": 1200},
    ]


COORDS = RegionView(mode="coords")  # every region gets a distinct question text


def _is_global(question: str) -> bool:
    return question.startswith(global_question(PROMPT, "text")[:40])


# ------------------------------------------------------------------ text mode
def test_unparseable_answer_is_retried_with_sampling():
    def replies(q, attempt):
        if _is_global(q):
            return "I like this picture." if attempt == 0 else '<think>left ok</think>{"score": 0.4, "reason": "ok"}'
        return '{"object": "apple", "score": 0.7, "reason": "clean"}'

    backend = FakeBackend(replies)
    gen = torch.Generator().manual_seed(3)
    cfg = JudgeConfig(retries=2, retry_temperature=0.9, view=COORDS)
    glob, regions = judge_image(backend, _image(), PROMPT, _regions(), cfg, gen)

    assert glob["status"] == "ok" and glob["method"] == "text"
    assert glob["score"] == pytest.approx(0.4) and glob["reason"] == "ok"
    assert glob["detail"]["attempts"] == 2 and glob["detail"]["sampled"] is True
    assert glob["detail"]["earlier_answers"] == ["I like this picture."]
    assert "label" not in glob
    first, retry = backend.calls
    assert first["do_sample"] is False and first["generator"] is None and first["n"] == 3  # global + 2 kept regions
    assert retry["do_sample"] is True and retry["temperature"] == 0.9 and retry["generator"] is gen
    assert retry["n"] == 1 and _is_global(retry["prompts"][0])  # only the failed question is asked again
    assert first["system"] == "FAKE THINK PROMPT" and first["max_new_tokens"] == cfg.max_new_tokens
    assert regions[0]["label"] == "apple" and regions[0]["detail"]["attempts"] == 1
    assert regions[0]["detail"]["sampled"] is False


def test_all_attempts_failing_is_an_explicit_failure_not_zero():
    answers = ["no idea", "Score: 80%", "<think>still thinking about it, maybe 0.5"]
    backend = FakeBackend(lambda q, attempt: answers[attempt])
    cfg = JudgeConfig(retries=2, judge_local=False)
    glob, regions = judge_image(backend, _image(), PROMPT, [], cfg, torch.Generator().manual_seed(0))
    assert glob["status"] == "failed" and glob["score"] is None and glob["reason"] == ""
    assert glob["detail"]["answers"] == answers
    assert glob["detail"]["sampled"] == [False, True, True]
    assert glob["detail"]["attempts"] == 3 and len(glob["detail"]["errors"]) == 3
    assert "percentage" in glob["detail"]["errors"][1]
    assert regions == []
    assert [c["do_sample"] for c in backend.calls] == [False, True, True]
    json.dumps(glob)  # the entry is JSON-serialisable as is


def test_zero_retries_means_one_greedy_attempt():
    backend = FakeBackend(lambda q, attempt: "nothing")
    glob, _ = judge_image(backend, _image(), PROMPT, [], JudgeConfig(retries=0, judge_local=False))
    assert glob["status"] == "failed" and glob["detail"]["attempts"] == 1 and len(backend.calls) == 1


def test_clamped_score_is_recorded():
    backend = FakeBackend(lambda q, attempt: "Score: 3\nReason: very good")
    glob, _ = judge_image(backend, _image(), PROMPT, [], JudgeConfig(judge_local=False))
    assert glob["score"] == 1.0 and glob["detail"]["clamped"] is True and glob["detail"]["raw_score"] == 3.0


def test_regions_keep_their_fields_order_and_skips():
    backend = FakeBackend(lambda q, attempt: '{"object": "thing", "score": -0.5, "reason": "r"}')
    regions_in = _regions()
    glob, regions = judge_image(backend, _image(), PROMPT, regions_in, JudgeConfig(view=COORDS))
    assert [r["region_id"] for r in regions] == [0, 1, 2]
    assert regions[1]["status"] == "failed" and regions[1]["score"] is None
    assert regions[1]["detail"] == {"skipped": "not kept by the grounding filter"}
    assert regions[1]["mask"] == {"size": [48, 64], "counts": [3072]} and regions[1]["grounding"]["kept"] is False
    assert regions[2]["area"] == 1200 and regions[2]["bbox"] == [30.5, 4.0, 64.0, 48.0]
    for r in (regions[0], regions[2]):
        assert r["status"] == "ok" and r["score"] == -0.5 and r["label"] == "thing" and r["method"] == "text"
    asked = [p for c in backend.calls for p in c["prompts"]]
    assert len(asked) == 3  # global + the two kept regions; the dropped one was never asked
    assert "(0, 0) and (500, 500)" in asked[1]  # region 0 in coords view
    assert regions_in[0].keys() == {"region_id", "bbox", "mask", "grounding"}  # input left untouched


def test_questions_are_batched_by_batch_size():
    backend = FakeBackend(lambda q, attempt: "Score: 0.1")
    regions = [{"region_id": k, "bbox": [k, 0, k + 10, 10]} for k in range(5)]
    judge_image(backend, _image(), PROMPT, regions, JudgeConfig(batch_size=2, view=COORDS))
    assert [c["n"] for c in backend.calls] == [2, 2, 2]


def test_switches_and_system_prompt():
    backend = FakeBackend(lambda q, attempt: "Score: 0.2")
    glob, regions = judge_image(backend, _image(), PROMPT, _regions()[:1], JudgeConfig(judge_global=False))
    assert glob["status"] == "failed" and glob["detail"] == {"skipped": "judge_global is false"}
    assert regions[0]["status"] == "ok"
    glob, regions = judge_image(backend, _image(), PROMPT, _regions()[:1],
                                JudgeConfig(judge_local=False, think=False))
    assert regions[0]["status"] == "failed" and regions[0]["detail"] == {"skipped": "judge_local is false"}
    assert backend.calls[-1]["system"] is None and backend.calls[-1]["n"] == 1
    judge_image(backend, _image(), PROMPT, [], JudgeConfig(think_system_prompt="MINE", judge_local=False))
    assert backend.calls[-1]["system"] == "MINE"
    calls = len(backend.calls)
    judge_image(backend, _image(), PROMPT, _regions()[:1], JudgeConfig(judge_local=False, judge_global=False))
    assert len(backend.calls) == calls  # nothing to ask


def test_mark_view_images_reach_the_backend():
    backend = FakeBackend(lambda q, attempt: "Score: 0.2")
    judge_image(backend, _image(), PROMPT, _regions()[:1], JudgeConfig(view=RegionView(mode="crop", crop_context=True)))
    images = backend.calls[0]["images"]
    assert [len(r) for r in images] == [1, 2]  # global: the image; region: image + crop
    assert images[1][1].size == (35, 26)  # box 32x24 grown by 10% per side, clipped at the origin
    assert "second image" in backend.calls[0]["prompts"][1]


@pytest.mark.parametrize("bbox", [[0, 0, 70, 10], [10, 10, 5, 20], [0, 0, float("nan"), 3], [1, 2, 3], "0 0 1 1"])
def test_bad_boxes_are_rejected(bbox):
    with pytest.raises(ValueError, match=r"regions\[0\] \(region_id 7\): bbox"):
        judge_image(FakeBackend(), _image(), PROMPT, [{"region_id": 7, "bbox": bbox}], JudgeConfig())


# ------------------------------------------------------------------ logits mode
def test_logits_expected_score_arithmetic_and_mass_floor():
    p_global = [0.0, 0.0, 0.0, 0.0, 0.5, 0.0, 0.5, 0.0, 0.0]    # digits 5 and 7 -> 0.0 and 0.5
    p_local = [0.25, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.75]   # digits 1 and 9 -> -1 and 1

    def probs_for(q):
        return (p_global, 0.9) if q.startswith(global_question(PROMPT, "logits")[:40]) else (p_local, 0.05)

    backend = FakeBackend(probs_for=probs_for)
    cfg = JudgeConfig(mode="logits", min_scale_mass=0.1)
    glob, regions = judge_image(backend, _image(), PROMPT, _regions()[:1], cfg)
    assert glob["status"] == "ok" and glob["method"] == "logits"
    assert glob["score"] == pytest.approx(0.25, abs=1e-12)
    assert glob["detail"]["probabilities"] == pytest.approx(p_global)
    assert glob["detail"]["scale_mass"] == pytest.approx(0.9)
    assert glob["detail"]["expected_rating"] == pytest.approx(6.0)
    assert glob["detail"]["choices"] == [str(d) for d in range(1, 10)]
    assert "expected rating 6.00" in glob["reason"]
    assert backend.calls[0]["choices"] == RATING_SCALE.choices
    # mass 0.05 < 0.1: failed, distribution kept
    r = regions[0]
    assert r["status"] == "failed" and r["score"] is None and r["method"] == "logits"
    assert "min_scale_mass" in r["detail"]["error"] and r["detail"]["expected_score"] == pytest.approx(0.5)
    # with the floor lowered the same answer is used
    _, regions = judge_image(FakeBackend(probs_for=probs_for), _image(), PROMPT, _regions()[:1],
                             JudgeConfig(mode="logits", min_scale_mass=0.01))
    assert regions[0]["status"] == "ok" and regions[0]["score"] == pytest.approx(0.5)


def test_rating_scale_matches_the_rubric_bands():
    assert RATING_SCALE.tokens == tuple("123456789")
    assert RATING_SCALE.values == (-1.0, -0.75, -0.5, -0.25, 0.0, 0.25, 0.5, 0.75, 1.0)
    q = local_question(PROMPT, "the area inside the red rectangle", "logits")
    assert q.rstrip().endswith("Answer with a single digit from 1 to 9 and nothing else.")
    assert "the area inside the red rectangle" in q and PROMPT in q
    assert '"score"' in global_question(PROMPT, "text") and "neutral" in global_question(PROMPT, "text")
    with pytest.raises(ValueError):
        global_question(PROMPT, "probabilities")


def test_compact_wording_asks_the_same_question_in_a_few_words():
    full, short = local_question(PROMPT, "the box", "logits"), local_question(PROMPT, "the box", "logits", "compact")
    assert PROMPT in short and "the box" in short and len(short) < len(full) / 5
    assert PROMPT in global_question(PROMPT, "logits", "compact") and "Region" not in global_question(PROMPT, "logits", "compact")
    with pytest.raises(ValueError, match="logits"):
        global_question(PROMPT, "text", "compact")      # a written score needs the rubric's format
    with pytest.raises(ValueError, match="wording"):
        local_question(PROMPT, "the box", "logits", "terse")
    with pytest.raises(ConfigError, match="logits"):
        load_config(JudgeConfig, None, ["wording=compact"])
    # the configured wording is what reaches the backend
    backend = FakeBackend(probs_for=lambda q: ([0.0] * 8 + [1.0], 1.0))
    judge_image(backend, _image(), PROMPT, _regions()[:1], JudgeConfig(mode="logits", wording="compact"))
    asked = [q for call in backend.calls for q in call["prompts"]]
    assert asked == [global_question(PROMPT, "logits", "compact"),
                     local_question(PROMPT, show_region(_image(), _regions()[0]["bbox"], RegionView())[1], "logits", "compact")]


# ------------------------------------------------------------------ config
def test_config_from_yaml_and_overrides(tmp_path):
    path = tmp_path / "judge.yaml"
    path.write_text("mode: logits\nretries: 1\nview:\n  mode: crop\n  crop_margin: 0.2\n")
    cfg = load_config(JudgeConfig, path, ["batch_size=4", "min_scale_mass=0.05"])
    assert cfg.mode == "logits" and cfg.retries == 1 and cfg.batch_size == 4
    assert cfg.view == RegionView(mode="crop", crop_margin=0.2) and cfg.min_scale_mass == 0.05
    with pytest.raises(ConfigError, match="retries"):
        load_config(JudgeConfig, None, ["retries=-1"])
    with pytest.raises(ConfigError, match="judge_model"):
        load_config(JudgeConfig, None, ["backend=qwen2_5_vl"])
    with pytest.raises(ConfigError, match="mode"):
        load_config(JudgeConfig, None, ["mode=vibes"])
    with pytest.raises(ConfigError, match="min_scale_mass"):
        load_config(JudgeConfig, None, ["min_scale_mass=2"])


# ------------------------------------------------------------------ the real tiny Bagel
def _tiny_regions():
    return [{"region_id": 0, "bbox": [0, 0, 32, 24], "mask": None, "grounding": None},
            {"region_id": 1, "bbox": [20, 10, 64, 48], "mask": None, "grounding": None}]


def test_self_judge_logits_mode_is_deterministic_and_batch_invariant(tiny_model):
    backend = SelfJudge(tiny_model)
    cfg = JudgeConfig(mode="logits", min_scale_mass=0.0, batch_size=8)
    runs = [judge_image(backend, _image(), PROMPT, _tiny_regions(), cfg) for _ in range(2)]
    assert json.dumps(runs[0]) == json.dumps(runs[1])
    glob, regions = runs[0]
    single = judge_image(backend, _image(), PROMPT, _tiny_regions(), JudgeConfig(mode="logits", min_scale_mass=0.0,
                                                                                  batch_size=1))
    for a, b in zip([glob, *regions], [single[0], *single[1]]):
        assert a["status"] == "ok" and -1.0 <= a["score"] <= 1.0
        assert a["score"] == pytest.approx(b["score"], abs=1e-5)
        assert a["detail"]["probabilities"] == pytest.approx(b["detail"]["probabilities"], abs=1e-5)
        assert math.fsum(a["detail"]["probabilities"]) == pytest.approx(1.0, abs=1e-6)
        assert 0.0 < a["detail"]["scale_mass"] < 1.0
    # the default floor (0.1) is far above what a random model puts on the digits: failed
    strict, _ = judge_image(backend, _image(), PROMPT, [], JudgeConfig(mode="logits", judge_local=False))
    assert strict["status"] == "failed" and strict["score"] is None
    assert strict["detail"]["scale_mass"] == pytest.approx(glob["detail"]["scale_mass"], abs=1e-6)


def test_judge_images_equals_judge_image_per_image(tiny_model):
    """Several images at once (logits mode: their questions share backend calls) give the
    records judge_image gives image by image; text mode goes image by image."""
    backend = SelfJudge(tiny_model)
    other = PIL.Image.new("RGB", (64, 48), (20, 30, 160))
    jobs = [(_image(), PROMPT, _tiny_regions()), (other, "a blue cup", []), (other, PROMPT, _tiny_regions()[:1])]
    cfg = JudgeConfig(mode="logits", min_scale_mass=0.0, batch_size=4)
    together = judge_images(backend, jobs, cfg)
    alone = [judge_image(backend, *job, cfg) for job in jobs]
    assert [len(r) for _, r in together] == [2, 0, 1]
    for (g1, r1), (g2, r2) in zip(together, alone):
        for a, b in zip([g1, *r1], [g2, *r2]):
            assert a["status"] == b["status"] == "ok" and a["score"] == pytest.approx(b["score"], abs=1e-5)
            assert {k: v for k, v in a.items() if k not in ("score", "reason", "detail")} == \
                {k: v for k, v in b.items() if k not in ("score", "reason", "detail")}
    fake = FakeBackend(probs_for=lambda q: ([0.0] * 8 + [1.0], 1.0))
    judge_images(fake, jobs, cfg)
    assert [c["n"] for c in fake.calls] == [4, 2]                        # 6 questions, 4 per call, across images
    with pytest.raises(ValueError, match="generators"):
        judge_images(fake, jobs, cfg, [None])


def test_self_judge_text_mode_records_failures_reproducibly(tiny_model):
    backend = SelfJudge(tiny_model)
    cfg = JudgeConfig(mode="text", max_new_tokens=4, retries=1, think=True)
    runs = [judge_image(backend, _image(), PROMPT, _tiny_regions(), cfg, torch.Generator().manual_seed(11))
            for _ in range(2)]
    assert json.dumps(runs[0]) == json.dumps(runs[1])  # sampled retries follow the generator
    glob, regions = runs[0]
    entries = [glob, *regions]
    for e in entries:
        assert e["method"] == "text"
        if e["status"] == "failed":
            assert e["score"] is None and e["detail"]["attempts"] == 2 and len(e["detail"]["answers"]) == 2
            assert e["detail"]["sampled"] == [False, True]
        else:
            assert -1.0 <= e["score"] <= 1.0
    assert any(e["status"] == "failed" for e in entries)  # a random model writes no score
