# SPDX-License-Identifier: Apache-2.0
"""`srum eval compbench` / `official-layout` / `geneval-images`: answer parsing, retries,
judge placement, and the whole evaluation end to end on CPU with a tiny Bagel and a tiny
random Qwen2.5-VL judge."""
import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from srum.config import load_config
from srum.evaluation.compbench import CompBenchConfig, RunLayout, export_official_layout, official_file_stem
from srum.evaluation.geneval import GenEvalConfig, run_geneval_images
from srum.evaluation.scoring import (
    CompBenchJudgeConfig, ParseError, balanced_device_map, judge_placement, parse_alignment_score, run_score,
    score_images,
)
from srum.evaluation.summary import read_scores, summarize_run
from srum.distributed import DistInfo
from srum.stages.generate import image_seed

from helpers_eval import TINY_SAMPLING, eval_parser, jsonl_rows

REPO = Path(__file__).resolve().parents[1]
SHARED_VAL = REPO.parent / "shared" / "data" / "srum-prompts" / "val_comp.json"
EXAMPLES = REPO / "data" / "prompts" / "examples.jsonl"


class ScriptedJudge:
    """A judge whose answers are a function of (prompt, sampled?, generator)."""

    model_id = "scripted"

    def __init__(self, answer):
        self.answer = answer
        self.calls = []

    def generate(self, images, prompts, *, system, max_new_tokens, do_sample, temperature, generator):
        assert all(len(row) == 1 and isinstance(row[0], Image.Image) for row in images)
        self.calls.append((len(prompts), do_sample))
        return [self.answer(p, do_sample, generator) for p in prompts]


# ---------------------------------------------------------------- answer parsing
@pytest.mark.parametrize("answer, score, explanation", [
    ('{"score": 85, "explanation": "all objects present"}', 85, "all objects present"),
    ('```json\n{"score": 72, "explanation": "two cats"}\n```', 72, "two cats"),
    ("{'score': '64', 'explanation': 'fine',}", 64, "fine"),
    ('draft {"score": 10} -- corrected: {"score": 90, "explanation": "x"}', 90, "x"),
    ('<think>maybe score: 20</think>{"score": 77}', 77, ""),
    ("Score: 85/100\nExplanation: good match", 85, "good match"),
    ("**Score:** 55", 55, ""),
    ("  92  ", 92, ""),
    ("85%", 85, ""),
    ('{"score": 87.5}', 87.5, ""),
    ('{"Score": 0, "Explanation": "nothing matches"}', 0, "nothing matches"),
    ('{"score": 66, "explanation": "the red ca', 66, "the red ca"),  # cut off by max_new_tokens
    ('{"score": 70, "explanation": "score: 20 would be unfair"}', 70, "score: 20 would be unfair"),
    # a score inside the explanation never wins over the score line (issue 14)
    ("Score: 60\nExplanation: a higher score: 90 would need two cats", 60, "a higher score: 90 would need two cats"),
    ("Explanation: a score: 90 needs a red car\nScore: 40", 40, "a score: 90 needs a red car"),
    ("I would give it a score: 75", 75, ""),
])
def test_parse_alignment_score(answer, score, explanation):
    parsed = parse_alignment_score(answer)
    assert parsed.score == score and parsed.explanation == explanation


@pytest.mark.parametrize("answer, why", [
    ("", "empty"),
    ("The image looks good.", "no score"),
    ('{"score": 150}', "outside 0-100"),
    ('{"score": -1, "explanation": "error"}', "outside 0-100"),
    ("Score: 8/10", "another scale"),
    ('{"score": "80-90"}', "range"),
    ("<think>the score is 80", "unclosed"),
    ('{"score": null}', "not a number"),
    ('{"score": true}', "not a number"),
    ('{"score": NaN}', "finite"),
])
def test_parse_alignment_score_rejects(answer, why):
    with pytest.raises(ParseError, match=why):
        parse_alignment_score(answer)


# ---------------------------------------------------------------- retries
def test_unparseable_answers_are_retried_with_sampling_then_counted_as_failed():
    def answer(prompt, sampled, generator):
        if "never" in prompt:
            return "I cannot tell."
        if not sampled:
            return "The picture is nice." if "retry" in prompt else '{"score": 81, "explanation": "ok"}'
        return json.dumps({"score": int(torch.randint(0, 101, (1,), generator=generator)), "explanation": "s"})

    cfg = CompBenchJudgeConfig(model="unused", retries=2)
    images = [Image.new("RGB", (16, 16))] * 3
    prompts = ["a fine prompt", "retry this prompt", "never parses"]

    def run():
        judge = ScriptedJudge(answer)
        gens = [torch.Generator().manual_seed(image_seed(0, f"id{i}", 0)) for i in range(3)]
        return judge, score_images(judge, images, prompts, cfg, gens)

    judge, results = run()
    assert judge.calls[0] == (3, False)                     # one greedy batch ...
    assert judge.calls[1:] == [(1, True)] * 3                # ... then sampled re-asks one by one
    assert results[0]["status"] == "ok" and results[0]["score"] == 81 and len(results[0]["attempts"]) == 1
    assert results[1]["status"] == "ok" and [a["sampled"] for a in results[1]["attempts"]] == [False, True]
    assert results[1]["attempts"][0]["error"].startswith("no score found")
    assert results[2] == {"score": None, "status": "failed", "explanation": "",
                          "attempts": [{"answer": "I cannot tell.", "sampled": s, "error": results[2]["attempts"][0]
                                        ["error"]} for s in (False, True, True)]}
    _, again = run()
    assert again[1]["score"] == results[1]["score"]          # seeded retries are reproducible


def test_retry_errors_rejudges_exactly_the_failed_judgments(tmp_path):
    names = ["good0", "bad1", "good2", "boom3", "good4"]
    (tmp_path / "images").mkdir()
    rows = []
    for i, name in enumerate(names):
        Image.new("RGB", (16, 16), (40 * i, 0, 0)).save(tmp_path / "images" / f"{name}.png")
        rows.append({"image_id": name, "image_file": f"images/{name}.png", "prompt": f"prompt {name}",
                     "category": "color"})
    rows.append({"image_id": "gone5", "image_file": "images/gone5.png", "prompt": "prompt gone5", "category": "shape"})
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    layout = RunLayout(tmp_path / "run")
    judge = CompBenchJudgeConfig(model="unused", batch_size=2, retries=1)
    asked = []

    def text_of(question):
        return question.split('Text prompt: "')[1].split('"')[0]

    def flaky(question, sampled, generator):  # "bad": never parses; "boom": every call with it raises
        asked.append(text_of(question))
        if "boom" in text_of(question):
            raise RuntimeError("input too long for the judge (scripted)")  # CUDA errors stop the stage instead
        return "no idea" if "bad" in text_of(question) else json.dumps({"score": len(text_of(question)) * 5})

    def fixed(question, sampled, generator):
        asked.append(text_of(question))
        return json.dumps({"score": 90, "explanation": "fixed"})

    def score(answer, retry_errors):
        asked.clear()
        return run_score(manifest, layout.scores, judge, retry_errors=retry_errors, backend=ScriptedJudge(answer))

    def files():
        return {name: (layout.scores / name).read_bytes() for name in ("scores.jsonl", "errors.jsonl", "summary.json")}

    first = score(flaky, retry_errors=False)
    scores = jsonl_rows(layout.scores_file)
    assert [(r["image_id"], r["status"]) for r in scores] == [
        ("good0", "ok"), ("bad1", "failed"), ("good2", "ok"), ("boom3", "failed"), ("good4", "ok")]
    assert all("_error" not in r for r in scores) and scores[1]["score"] is None
    # good2 shared a greedy call with boom3: that call raised, its sampled re-ask alone worked
    assert [(a["answer"], a["sampled"], a["error"]) for a in scores[2]["attempts"]] == [
        (None, False, "judge raised RuntimeError: input too long for the judge (scripted)"), ('{"score": 60}', True, None)]
    assert scores[1]["attempts"][-1]["error"] and len(scores[1]["attempts"]) == 2
    errors = {r["image_id"]: r for r in jsonl_rows(layout.scores / "errors.jsonl")}
    assert sorted(errors) == ["gone5"] and "image not found" in errors["gone5"]["_error"]
    assert (first["num_scored"], first["num_failed"], first["num_errors"], first["mean_score"]) == (3, 2, 1, 60.0)
    assert first["num_retryable"] == 2
    summary = summarize_run(layout.root)    # the summary counts failed judgments as before
    assert (summary["num_images"], summary["num_scored"], summary["num_failed"], summary["num_errors"]) == (5, 3, 2, 1)
    assert summary["categories"]["color"]["mean"] == 60.0 and "shape" not in summary["categories"]
    assert "2 failed judgments excluded from the means, 1 unreadable" in (layout.summary / "summary.md").read_text()

    # without retry_errors a finished stage asks nothing and rewrites nothing
    before = files()
    score(fixed, retry_errors=False)
    assert asked == [] and files() == before

    # a retry that fails again replaces the failed row with its newer attempts
    score(lambda question, sampled, generator: asked.append(text_of(question)) or "still no idea", retry_errors=True)
    # greedy, then one sampled re-ask each; they sit in different batches of the global order
    assert asked == ["prompt bad1"] * 2 + ["prompt boom3"] * 2
    failed_again = {r["image_id"]: r for r in jsonl_rows(layout.scores_file)}
    assert list(failed_again) == names                          # still one row per image
    assert [a["answer"] for a in failed_again["boom3"]["attempts"]] == ["still no idea"] * 2

    # retry_errors: exactly the two failed judgments are asked again (gone5 is still unreadable)
    again = score(fixed, retry_errors=True)
    assert asked == ["prompt bad1", "prompt boom3"]
    rescored = jsonl_rows(layout.scores_file)
    assert [r["image_id"] for r in rescored] == names                    # one row per image, no duplicates
    assert [r for r in rescored if r["image_id"] in ("good0", "good2", "good4")] == [scores[0], scores[2], scores[4]]
    assert all(r["status"] == "ok" and r["score"] == 90 for r in rescored if r["image_id"] in ("bad1", "boom3"))
    assert [r["image_id"] for r in jsonl_rows(layout.scores / "errors.jsonl")] == ["gone5"]
    assert (again["num_scored"], again["num_failed"], again["num_errors"], again["num_ok"]) == (5, 0, 1, 5)
    assert again["num_retryable"] == 0
    assert summarize_run(layout.root)["num_failed"] == 0


def test_judge_config_checks():
    with pytest.raises(ValueError, match="prompt"):
        CompBenchJudgeConfig(question_template="rate the image")
    with pytest.raises(ValueError, match="question_template"):
        CompBenchJudgeConfig(question_template="{prompt} {other}")
    with pytest.raises(ValueError, match="not both"):
        CompBenchJudgeConfig(device_map="auto", gpus_per_process=2)
    assert "a red cube" in CompBenchJudgeConfig().question("a red cube")
    assert CompBenchJudgeConfig(question_template='Prompt: {prompt}. JSON {{"score": n}}').question("x") == \
        'Prompt: x. JSON {"score": n}'


def test_judge_placement():
    one = DistInfo(0, 1, 0)
    expected = "cuda:0" if torch.cuda.is_available() else "cpu"
    assert judge_placement(CompBenchJudgeConfig(), one) == (expected, None)
    assert judge_placement(CompBenchJudgeConfig(device="cpu"), one) == ("cpu", None)
    assert judge_placement(CompBenchJudgeConfig(device_map="auto"), one) == (None, "auto")
    with pytest.raises(ValueError, match="gpus_per_process"):
        judge_placement(CompBenchJudgeConfig(device_map="auto"), DistInfo(1, 2, 1))
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA"):
            judge_placement(CompBenchJudgeConfig(gpus_per_process=2), DistInfo(0, 2, 0))


def test_balanced_device_map_spreads_the_judge_over_the_given_devices(tiny_judge_dir):
    device_map = balanced_device_map(str(tiny_judge_dir), {0: 300_000, 1: 300_000, 2: 10_000_000}, "float32")
    assert set(device_map.values()) <= {0, 1, 2} and len(set(device_map.values())) >= 2
    assert any(k.startswith("lm_head") for k in device_map)


# ---------------------------------------------------------------- end to end
def test_compbench_end_to_end_tiny(tmp_path, tiny_dir, tiny_judge_dir):
    if SHARED_VAL.is_file():   # a slice of the real val prompts: one per category
        prompts, categories, n_expected = [str(SHARED_VAL)], None, 10
    else:
        prompts, categories, n_expected = [str(EXAMPLES)], "null", 8
    run = tmp_path / "run"
    args = ["--config", str(REPO / "configs" / "eval" / "tiny_compbench.yaml"), f"model.path={tiny_dir}",
            f"judge.model={tiny_judge_dir}", f"out_dir={run}", f"prompts={json.dumps(prompts)}",
            "limit_per_category=1", "judge.max_new_tokens=8", *TINY_SAMPLING]
    if categories:
        args.append(f"categories={categories}")
    parsed = eval_parser().parse_args(["eval", "compbench", "all", *args])
    assert parsed.step == "all"
    assert parsed.func(parsed) == 0
    layout = RunLayout(run)

    # images: <category>/<id>.png, seeds from (seed, prompt id, k), manifest complete
    images = jsonl_rows(layout.images_manifest)
    assert len(images) == n_expected and len({r["category"] for r in images}) == n_expected
    for row in images:
        assert row["image_file"] == f"{row['category']}/{row['prompt_id']}.png"
        assert row["seed"] == image_seed(0, row["prompt_id"], 0) and row["think"] is False
        with Image.open(layout.images / row["image_file"]) as im:
            assert im.size == (32, 32)

    # scores: one row per image; the random judge's answers do not parse -> failed, counted
    scores = jsonl_rows(layout.scores_file)
    assert [r["image_id"] for r in scores] == [r["image_id"] for r in images]
    assert all(r["status"] in ("ok", "failed") and len(r["attempts"]) >= 1 for r in scores)
    assert all(r["score"] is None for r in scores if r["status"] == "failed")
    summary = json.loads((layout.summary / "summary.json").read_text())
    assert summary["num_images"] == n_expected
    assert summary["num_scored"] + summary["num_failed"] == n_expected
    assert summary["num_failed"] == sum(r["status"] == "failed" for r in scores)
    for name in ("results.csv", "summary.md", "scores.png"):
        assert (layout.summary / name).stat().st_size > 0
    assert len(read_scores(layout.summary / "results.csv")) == n_expected

    # rerun: everything is done, nothing is redrawn or re-judged
    stamps = {p: p.stat().st_mtime_ns for p in layout.images.rglob("*.png")}
    score_parts = (layout.scores / "parts" / "rank-00000.jsonl").read_text()
    again = eval_parser().parse_args(["eval", "compbench", "all", *args])
    assert again.func(again) == 0
    assert stamps == {p: p.stat().st_mtime_ns for p in layout.images.rglob("*.png")}
    assert (layout.scores / "parts" / "rank-00000.jsonl").read_text() == score_parts

    # the same images scored by a judge with known answers: the means follow them exactly
    def answer(prompt, sampled, generator):
        text = prompt.split('Text prompt: "')[1].split('"')[0]
        return "no idea" if text == images[0]["prompt"] else json.dumps({"score": len(text) % 101})

    run2 = RunLayout(tmp_path / "run2")
    cfg = load_config(CompBenchConfig, None, [f"out_dir={run2.root}", f"judge.model={tiny_judge_dir}"])
    run_score(layout.images_manifest, run2.scores, cfg.judge, config=cfg, backend=ScriptedJudge(answer))
    result = summarize_run(run2.root, label="scripted")
    for row in images[1:]:
        assert result["categories"][row["category"]]["mean"] == len(row["prompt"]) % 101
    assert result["categories"][images[0]["category"]] == {"num_images": 1, "num_scored": 0, "num_failed": 1,
                                                           "mean": None, "std": None}
    assert result["num_failed"] == 1 and result["overall"] is None  # a category without a score: no overall

    # T2I-CompBench's own layout: <category>/samples/<prompt>_<index:06d>.png, same bytes
    official = tmp_path / "official"
    parsed = eval_parser().parse_args(["eval", "official-layout", str(run), "--out", str(official), "--mode", "copy"])
    assert parsed.func(parsed) == 0
    for row in images:
        index = jsonl_rows(official / row["category"] / "index.jsonl")
        assert len(index) == 1 and index[0]["image_id"] == row["image_id"]
        target = official / row["category"] / "samples" / f"{row['prompt']}_000000.png"
        assert target.read_bytes() == (layout.images / row["image_file"]).read_bytes()
        assert [p.name for p in target.parent.iterdir()] == [target.name]


def test_official_layout_names_and_indices(tmp_path):
    assert official_file_stem("a red_cube on a/b table") == ("a red cube on a b table", True)
    assert official_file_stem("a green bench") == ("a green bench", False)
    stem, changed = official_file_stem("x" * 400)
    assert changed and len(stem.encode()) == 240
    img = tmp_path / "img"
    img.mkdir()
    rows = []
    for i in range(3):
        Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(img / f"{i}.png")
        rows.append({"image_id": f"p{i}", "image_file": f"img/{i}.png", "prompt": "a cat" if i < 2 else "a dog",
                     "category": "color"})
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    (out / "color" / "samples").mkdir(parents=True)
    (out / "color" / "samples" / "stale.png").write_bytes(b"old")  # samples/ is rebuilt from scratch
    assert export_official_layout(manifest, out) == {"color": 3}
    assert sorted(p.name for p in (out / "color" / "samples").iterdir()) == [
        "a cat_000000.png", "a cat_000001.png", "a dog_000002.png"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"image_id": "x", "prompt": "p"}\n')
    with pytest.raises(ValueError, match="bad.jsonl:1: no 'image_file'"):
        export_official_layout(bad, tmp_path / "o2")


def test_geneval_images_layout(tmp_path, tiny_dir):
    meta = tmp_path / "evaluation_metadata.jsonl"
    lines = ['{"tag": "single_object", "include": [{"class": "bench", "count": 1}], "prompt": "a photo of a bench"}',
             '{"tag": "broken", ',
             '{"tag": "colors", "include": [{"class": "cow", "count": 1, "color": "red"}], "prompt": "a red cow"}']
    meta.write_text("\n".join(lines) + "\n")
    out = tmp_path / "geneval"
    cfg = load_config(GenEvalConfig, None, [f"model.path={tiny_dir}", f"metadata={meta}", f"out_dir={out}",
                                            "num_images_per_prompt=2", "batch_size=2", *TINY_SAMPLING])
    assert cfg.sampling.cfg_interval == (0.0, 1.0) and cfg.sampling.think is False
    summary = run_geneval_images(cfg)
    assert summary["complete"] and summary["num_ok"] == 4 and summary["num_input_errors"] == 1
    assert "evaluation_metadata.jsonl:2" in summary["input_errors"][0]
    # the folder number is the line number (the bad line keeps its index: no 00001)
    assert sorted(p.name for p in out.iterdir() if p.is_dir() and p.name.isdigit()) == ["00000", "00002"]
    for index, line in ((0, lines[0]), (2, lines[2])):
        folder = out / f"{index:05d}"
        assert json.loads((folder / "metadata.jsonl").read_text()) == json.loads(line)
        assert sorted(p.name for p in (folder / "samples").iterdir()) == ["0000.png", "0001.png"]
        assert [p.name for p in folder.iterdir()] != [] and not list(folder.glob(".*"))
    rows = jsonl_rows(out / "manifest.jsonl")
    assert [r["seed"] for r in rows] == [image_seed(0, f"geneval_{i:05d}", k) for i in (0, 2) for k in (0, 1)]


def test_score_resume_refuses_other_judge_settings_and_fresh_starts_over(tmp_path):
    from srum.run_settings import REPLACED_PREFIX, SettingsChanged

    (tmp_path / "images").mkdir()
    rows = []
    for i in range(3):
        Image.new("RGB", (16, 16), (60 * i, 0, 0)).save(tmp_path / "images" / f"im{i}.png")
        rows.append({"image_id": f"im{i}", "image_file": f"images/im{i}.png", "prompt": f"p{i}", "category": "color"})
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = RunLayout(tmp_path / "run").scores
    asked = []

    def answer(score):
        def reply(question, sampled, generator):
            asked.append(question)
            return json.dumps({"score": score})
        return ScriptedJudge(reply)

    judge = CompBenchJudgeConfig(model="unused", batch_size=2)
    assert run_score(manifest, out, judge, backend=answer(40))["mean_score"] == 40
    # speed settings may change on a resume: nothing is asked again
    asked.clear()
    run_score(manifest, out, CompBenchJudgeConfig(model="unused", batch_size=1, retries=5), backend=answer(90))
    assert asked == []
    # a result-changing one is refused by name, and nothing is lost
    other = CompBenchJudgeConfig(model="unused", question_template='Rate "{prompt}".')
    with pytest.raises(SettingsChanged) as err:
        run_score(manifest, out, other, backend=answer(90))
    assert "judge.question_template" in str(err.value)
    with pytest.raises(SettingsChanged, match="seed"):
        run_score(manifest, out, judge, seed=1, backend=answer(90))
    assert [r["score"] for r in jsonl_rows(out / "scores.jsonl")] == [40, 40, 40]
    # fresh: the earlier scores move aside and every image is judged again
    summary = run_score(manifest, out, other, backend=answer(90), fresh=True)
    assert summary["mean_score"] == 90 and len(asked) == 3 and asked[0] == 'Rate "p0".'
    moved = [p for p in out.iterdir() if p.name.startswith(REPLACED_PREFIX)]
    assert len(moved) == 1 and [r["score"] for r in jsonl_rows(moved[0] / "scores.jsonl")] == [40, 40, 40]
