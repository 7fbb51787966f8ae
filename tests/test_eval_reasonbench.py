# SPDX-License-Identifier: Apache-2.0
"""`srum eval t2i-reasonbench`: the benchmark's files (small ones written here, in its
format), the judge conversation and its answer parsing, the per-image and per-dimension
arithmetic against hand-computed cases and the published numbers, and the whole
evaluation end to end on CPU with a tiny Bagel and a tiny random Qwen2.5-VL judge."""
import json
import re
from pathlib import Path

import pytest
import torch
from PIL import Image

from srum.config import load_config
from srum.evaluation.compbench import RunLayout
from srum.evaluation.reasonbench import (
    DIMENSIONS, PAPER_ROWS, ReasonBenchConfig, image_scores, read_prompts, reasonbench_overall, run_score,
    summarize_rows, summarize_run,
)
from srum.evaluation.reasonbench_judge import (
    DESCRIBE_QUESTION, ParseError, parse_section_scores, question_keys, score_reasonbench_images,
)
from srum.evaluation.summary import compare_runs, read_scores
from srum.judge.openai_backend import chat_messages
from srum.stages.generate import image_seed

from helpers_eval import TINY_SAMPLING, eval_parser, jsonl_rows

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- a small benchmark in the upstream format
def _section(*scores, prefix=""):
    """Questions whose text carries the score a scripted judge gives them: "... [0.5]"."""
    out = {}
    for k, s in enumerate(scores, 1):
        out[f"{prefix}q{k}"] = f"Is element {k} drawn right? [{s}]"
        out[f"{prefix}c{k}"] = "1: clearly; 0.5: partly; 0: not at all"
    return out


# per dimension: id -> (prompt, {section: scores}); entity 2 has the irregular keys the real files have
BENCH = {
    "idiom": {1: ("He broke the ice at the meeting.", {"reason_evaluation": (1, 0.5, 0, 1),
                                                          "quality_evaluation": (1, 1, 0.5)}),
              2: ("The exam was a piece of cake.", {"reason_evaluation": (0, 0, 0.5),
                                                     "quality_evaluation": (1, 0.5)})},
    "textual_image": {1: ("Design an infographic about rain.", {"reason_evaluation": (1, 1, 1, 0),
                                                                 "quality_evaluation": (0.5, 0.5, 0.5)})},
    "entity": {1: ("The city hosting the first modern Olympic Games", {
                   "entity_evaluation": (1, 0.5), "other_details_evaluation": (0, 1, 1),
                   "quality_evaluation": (1, 1, 1)}),
               2: ("The tower in the capital of France", {
                   "entity_evaluation": (1,), "other_details_evaluation": (1, 0.5),
                   "quality_evaluation": (0, 1)})},
    "scientific": {1: ("A wooden block and an iron cube in water", {
                       "scientific_evaluation": (1, 1, 0), "other_details_evaluation": (0.5, 0.5),
                       "quality_evaluation": (1, 0.5, 0)})},
}


def write_benchmark(root: Path, bench=BENCH, qs_dir="deepseek_evaluation_qs") -> Path:
    (root / "prompts").mkdir(parents=True, exist_ok=True)
    (root / qs_dir).mkdir(parents=True, exist_ok=True)
    for name, entries in bench.items():
        dim = DIMENSIONS[name]
        prompts, qs = [], []
        for bid, (text, sections) in entries.items():
            prompts.append({"id": bid, "prompt": text, "tag": "test"})
            entry = {"id": bid, "prompt": text, "image_content": "whatever the prompt implies"}
            for section, scores in sections.items():
                entry[section] = _section(*scores, prefix="sci_" if (name, bid) == ("entity", 2) and
                                          section == "other_details_evaluation" else "")
            if (name, bid) == ("entity", 2):   # a criterion given as an object of levels, as some real entries do
                entry["entity_evaluation"]["c1"] = {"score_1": "clear", "score_0.5": "vague", "score_0": "absent"}
            qs.append(entry)
        (root / "prompts" / f"{dim.prompt_file}.json").write_text(json.dumps(prompts, indent=2))
        (root / qs_dir / f"{dim.qs_file}.json").write_text(json.dumps(qs, indent=2))
    return root


def expected_scores(name, bid):
    """Hand arithmetic of the benchmark's formula for one image of BENCH."""
    sections = BENCH[name][bid][1]
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    dim = DIMENSIONS[name]
    acc = mean(sections[dim.primary]) if dim.details is None else \
        0.7 * mean(sections[dim.primary]) + 0.3 * mean(sections[dim.details])
    return 100 * acc, 100 * mean(sections["quality_evaluation"])


class ScriptedJudge:
    """Describes every image as "a scene"; scores each question with the number in its text.
    ``fail(question, history, sampled)`` -> an answer to send instead (or None)."""

    model_id = "scripted"

    def __init__(self, fail=None):
        self.fail = fail
        self.calls = []

    def generate(self, images, prompts, *, system, max_new_tokens, do_sample, temperature, generator, history=None):
        assert all(len(row) == 1 and isinstance(row[0], Image.Image) for row in images)
        self.calls.append((len(prompts), do_sample, history is not None))
        answers = []
        for i, prompt in enumerate(prompts):
            turns = None if history is None else history[i]
            bad = self.fail(prompt, turns, do_sample) if self.fail else None
            if bad is not None:
                answers.append(bad)
            elif prompt == DESCRIBE_QUESTION:
                answers.append("A scene with several things.")
            else:
                assert turns == [(DESCRIBE_QUESTION, "A scene with several things.")]
                criteria = json.loads(prompt.split("Questions and criteria: ")[1].split("\n")[0])
                scores = [float(re.search(r"\[([\d.]+)\]", criteria[k])[1]) for k in question_keys(criteria)]
                answers.append(json.dumps({"reason": "checked each question", "score": scores}))
        return answers


# ---------------------------------------------------------------- arithmetic
def test_image_scores_follow_the_benchmark_formula():
    acc, qual = image_scores("idiom", {"reason_evaluation": [1, 0.5, 0, 1], "quality_evaluation": [1, 1, 0.5]})
    assert acc == pytest.approx(62.5) and qual == pytest.approx(250 / 3)
    # entity / scientific: 0.7 * reasoning section + 0.3 * other details
    acc, qual = image_scores("entity", {"entity_evaluation": [1, 0.5], "other_details_evaluation": [0, 1, 1],
                                        "quality_evaluation": [0, 1]})
    assert acc == pytest.approx(100 * (0.7 * 0.75 + 0.3 * 2 / 3)) == pytest.approx(72.5) and qual == 50
    acc, _ = image_scores("scientific", {"scientific_evaluation": [1, 1, 0], "other_details_evaluation": [0.5, 0.5],
                                         "quality_evaluation": [1]})
    assert acc == pytest.approx(100 * (0.7 * 2 / 3 + 0.3 * 0.5))


def test_overall_is_the_mean_of_the_four_dimensions_as_in_the_paper():
    # Table 4 of the SRUM paper: Overall = mean of Entity, Idiom, Scientific, Textual
    for label, row in PAPER_ROWS.items():
        overall = reasonbench_overall({d: row[d] for d in DIMENSIONS})
        assert abs(overall - row["overall"]) <= 0.0051, label
    assert reasonbench_overall(PAPER_ROWS["Bagel"]) == pytest.approx(43.8175)
    assert reasonbench_overall({"entity": 50.0, "idiom": 40.0, "scientific": None, "textual_image": 30.0}) is None


def _row(cat, status, acc=None, qual=None):
    return {"category": cat, "status": status, "score": acc if status == "ok" else None,
            "quality": qual if status == "ok" else None}


def test_dimension_means_skip_failed_images_like_the_official_script():
    rows = [_row("idiom", "ok", 50.0, 100.0), _row("idiom", "ok", 25.0, 50.0), _row("idiom", "failed"),
            _row("entity", "ok", 72.5, 80.0), _row("scientific", "ok", 10.0, 20.0),
            _row("textual_image", "ok", 90.0, 60.0), _row("textual_image", "failed")]
    summary = summarize_rows(rows)
    idiom = summary["categories"]["idiom"]
    # official model_score: sum over the rows that parsed / their count, x 100
    assert (idiom["num_images"], idiom["num_scored"], idiom["num_failed"]) == (3, 2, 1)
    assert idiom["mean"] == 37.5 and idiom["quality"] == 75.0
    assert summary["overall"] == pytest.approx((37.5 + 72.5 + 10.0 + 90.0) / 4)
    assert summary["overall_quality"] == pytest.approx((75.0 + 80.0 + 20.0 + 60.0) / 4)
    assert (summary["num_images"], summary["num_scored"], summary["num_failed"]) == (7, 5, 2)
    partial = summarize_rows([r for r in rows if r["category"] != "scientific"])
    assert partial["overall"] is None and partial["missing_categories"] == ["scientific"]


# ---------------------------------------------------------------- answers
@pytest.mark.parametrize("answer, n, scores, reason", [
    ('{"reason": "fine", "score": [1, 0.5, 0]}', 3, [1, 0.5, 0], "fine"),
    ('```json\n{"reason": ["a", "b"], "score": ["1", "0.5"]}\n```', 2, [1, 0.5], "a b"),
    ("{'reason': 'ok', 'score': [0, 1,],}", 2, [0, 1], "ok"),
    ('draft {"score": [0]} then {"reason": "final", "score": [1]}', 1, [1], "final"),
    ('{"reason": "r", "score": {"q2": 0, "q1": 1}}', 2, [1, 0], "r"),
    ('<think>score [0, 0]</think>{"scores": [0.5, 0.5]}', 2, [0.5, 0.5], ""),
])
def test_parse_section_scores(answer, n, scores, reason):
    assert parse_section_scores(answer, n) == (scores, reason)


@pytest.mark.parametrize("answer, n, why", [
    ("", 2, "empty"),
    ("All questions are satisfied.", 2, "no JSON"),
    ('{"reason": "r", "score": [1, 1]}', 3, "2 scores for 3 questions"),
    ('{"score": [1, 2]}', 2, "outside 0-1"),
    ('{"score": [1, "high"]}', 2, "not a number"),
    ('{"score": 1}', 1, "not a list"),
    ('{"score": [true]}', 1, "not a number"),
])
def test_parse_section_scores_rejects(answer, n, why):
    with pytest.raises(ParseError, match=why):
        parse_section_scores(answer, n)


def test_question_keys_read_the_irregular_entries():
    assert question_keys({"q2": "b", "c2": "", "q1": "a", "c1": "", "scoring": "x"}) == ["q1", "q2"]
    assert question_keys({"sci_q1": "a", "sci_c1": "", "aq2": "b", "ac2": ""}) == ["sci_q1", "aq2"]
    assert question_keys({"q4": "a", "c4": "", "q5": "b", "c5": ""}) == ["q4", "q5"]
    with pytest.raises(ValueError, match="no questions"):
        question_keys({"c1": "only a criterion"})


# ---------------------------------------------------------------- the conversation
def test_judge_conversation_retries_and_failures():
    sections = [{"reason_evaluation": _section(1, 0.5), "quality_evaluation": _section(1)},
                {"entity_evaluation": _section(0), "other_details_evaluation": _section(1),
                 "quality_evaluation": _section(0.5, 0.5)},
                {"reason_evaluation": _section(1), "quality_evaluation": _section(1)}]
    images = [Image.new("RGB", (8, 8), (i * 60, 0, 0)) for i in range(3)]

    def fail(prompt, history, sampled):
        if "[0.5]" in prompt and not sampled:
            return "I think it is fine."          # greedy answer unparseable, sampled re-ask works
        return None

    judge = ScriptedJudge(fail)
    cfg = ReasonBenchConfig(out_dir="unused").judge
    gens = [torch.Generator().manual_seed(i) for i in range(3)]
    results = score_reasonbench_images(judge, images, sections, cfg, gens)
    assert [r["status"] for r in results] == ["ok", "ok", "ok"]
    assert results[0]["sections"]["reason_evaluation"]["scores"] == [1, 0.5]
    assert [a["sampled"] for a in results[0]["attempts"]["reason_evaluation"]] == [False, True]
    assert results[1]["sections"]["quality_evaluation"]["mean"] == 0.5
    # turn 1 for all images, then each section position for the images that have it
    assert judge.calls[0] == (3, False, False) and judge.calls[1] == (3, False, True)

    # an image whose section never parses fails as a whole; the others are untouched
    judge = ScriptedJudge(lambda prompt, history, sampled: "no idea" if "element 1 drawn right? [0]" in prompt
                          else None)
    results = score_reasonbench_images(judge, images, sections, cfg, gens)
    assert [r["status"] for r in results] == ["ok", "failed", "ok"]
    assert len(results[1]["attempts"]["entity_evaluation"]) == cfg.retries + 1
    assert "quality_evaluation" not in results[1]["attempts"]   # not asked once the image failed

    # a description the judge cannot give (the call raises) fails the image before any section
    def boom(prompt, history, sampled):
        if prompt == DESCRIBE_QUESTION:
            raise ValueError("image too large (scripted)")
        return None
    results = score_reasonbench_images(ScriptedJudge(boom), images[:1], sections[:1], cfg, gens[:1])
    assert results[0]["status"] == "failed" and results[0]["sections"] == {}
    assert results[0]["attempts"]["describe"][0]["error"].startswith("judge raised ValueError")


def test_openai_messages_carry_the_earlier_turns():
    image = Image.new("RGB", (4, 4))
    messages = chat_messages([image], "Score it.", None, [(DESCRIBE_QUESTION, "A red cube.")])
    assert [m["role"] for m in messages] == ["user", "assistant", "user"]
    assert messages[0]["content"][0]["type"] == "image_url" and messages[0]["content"][1]["text"] == DESCRIBE_QUESTION
    assert messages[1]["content"] == "A red cube." and messages[2]["content"] == [{"type": "text", "text": "Score it."}]
    assert [m["role"] for m in chat_messages([image], "Q", "sys")] == ["system", "user"]


# ---------------------------------------------------------------- files
def test_prompts_are_read_in_the_benchmark_format(tmp_path):
    data = write_benchmark(tmp_path / "bench", qs_dir="evaluation_qs")
    broken = json.loads((data / "prompts" / "idiom_interpretation.json").read_text())
    broken += [{"id": 2, "prompt": "duplicate"}, {"id": "x", "prompt": "no id"}, {"id": 7, "prompt": " "}]
    (data / "prompts" / "idiom_interpretation.json").write_text(json.dumps(broken))
    cfg = ReasonBenchConfig(out_dir=str(tmp_path / "run"), data_dir=str(data))
    items, errors = read_prompts(cfg)
    assert [p.id for p, _ in items] == ["entity_0001", "entity_0002", "idiom_0001", "idiom_0002", "scientific_0001",
                                        "textual_image_0001"]
    assert len(errors) == 3 and "duplicate id 2" in errors[0]
    assert cfg.question_dir() == data / "evaluation_qs"
    limited = ReasonBenchConfig(out_dir="x", data_dir=str(data), dimensions=["idiom"], limit_per_dimension=1)
    assert [p.id for p, _ in read_prompts(limited)[0]] == ["idiom_0001"]
    with pytest.raises(ValueError, match="dimensions"):
        ReasonBenchConfig(out_dir="x", dimensions=["color"])


# ---------------------------------------------------------------- end to end
def test_reasonbench_end_to_end_tiny(tmp_path, tiny_dir, tiny_judge_dir):
    data = write_benchmark(tmp_path / "bench")
    run = tmp_path / "run"
    args = ["--config", str(REPO / "configs" / "eval" / "tiny_t2i_reasonbench.yaml"), f"model.path={tiny_dir}",
            f"judge.model={tiny_judge_dir}", f"out_dir={run}", f"data_dir={data}", "limit_per_dimension=null",
            "judge.max_new_tokens=6", "judge.retries=0", *TINY_SAMPLING]
    parsed = eval_parser().parse_args(["eval", "t2i-reasonbench", "all", *args])
    code = parsed.func(parsed)
    layout = RunLayout(run)

    # images: the benchmark's layout <dimension folder>/<id:04d>.png, seeds from (seed, prompt id, k)
    images = jsonl_rows(layout.images_manifest)
    assert len(images) == 6
    for row in images:
        dim = DIMENSIONS[row["dimension"]]
        assert row["image_file"] == f"{dim.prompt_file}/{row['benchmark_id']:04d}.png"
        assert row["prompt"] == BENCH[row["dimension"]][row["benchmark_id"]][0] and row["think"] is False
        assert row["seed"] == image_seed(0, row["prompt_id"], 0)
        with Image.open(layout.images / row["image_file"]) as im:
            assert im.size == (32, 32)

    # scores: one row per image; the random judge's section answers do not parse -> failed, counted
    scores = jsonl_rows(layout.scores_file)
    assert [r["image_id"] for r in scores] == [r["image_id"] for r in images]
    assert all(r["status"] in ("ok", "failed") for r in scores)
    failed = sum(r["status"] == "failed" for r in scores)
    # the random judge does describe: its section turns ran as the second turn of a conversation
    assert any(len(r["attempts"]) > 1 for r in scores)
    assert failed >= 1 and all(r["score"] is None and r["quality"] is None for r in scores if r["status"] == "failed")
    assert code == 0   # failed judgments are counted results: the steps are complete (as compbench's)
    summary = json.loads((layout.summary / "summary.json").read_text())
    assert (summary["num_images"], summary["num_failed"]) == (6, failed)
    assert summary["num_scored"] + summary["num_failed"] == 6
    for name in ("results.csv", "summary.md", "scores.png"):
        assert (layout.summary / name).stat().st_size > 0

    # rerun: everything is done, nothing is redrawn or re-judged
    stamps = {p: p.stat().st_mtime_ns for p in layout.images.rglob("*.png")}
    parts = (layout.scores / "parts" / "rank-00000.jsonl").read_text()
    again = eval_parser().parse_args(["eval", "t2i-reasonbench", "all", *args])
    assert again.func(again) == code
    assert stamps == {p: p.stat().st_mtime_ns for p in layout.images.rglob("*.png")}
    assert (layout.scores / "parts" / "rank-00000.jsonl").read_text() == parts

    # the same images scored by a judge with known answers: every number follows the formula.
    # textual_image_0001's reasoning answer never parses (failed, counted, no Overall without
    # that dimension); idiom_0002 has no question entry (not judged at all: an error row)
    run2 = RunLayout(tmp_path / "run2")
    cfg = load_config(ReasonBenchConfig, None, [f"out_dir={run2.root}", f"data_dir={data}", "judge.retries=1"])
    unparseable, no_questions = "textual_image_0001", "idiom_0002"
    judge = ScriptedJudge(lambda prompt, history, sampled: "looks right" if "element 4 drawn right? [0]" in prompt
                          else None)
    manifest = tmp_path / "manifest.jsonl"
    rows = jsonl_rows(layout.images_manifest)
    for r in rows:
        r["image_file"] = str(layout.images / r["image_file"])
        if r["image_id"] == no_questions:
            r["benchmark_id"] = 99
        if r["image_id"] == "scientific_0001":   # a row another tool wrote: the folder name, the id in the file name
            del r["benchmark_id"], r["dimension"]
            r["category"] = "scientific_reasoning"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    stage = run_score(manifest, run2.scores, cfg, backend=judge)
    assert (stage["num_errors"], stage["num_scored"], stage["num_failed"], stage["status"]) == (1, 4, 1, "incomplete")
    assert "no entry with id 99" in jsonl_rows(run2.scores / "errors.jsonl")[0]["_error"]
    result = summarize_run(run2.root, label="scripted")
    got = {r["image_id"]: r for r in jsonl_rows(run2.scores_file)}
    assert no_questions not in got and got[unparseable]["status"] == "failed"
    assert len(got[unparseable]["attempts"]["reason_evaluation"]) == 2     # greedy + one sampled re-ask
    for image_id, row in got.items():
        if image_id != unparseable:
            name, bid = image_id.rsplit("_", 1)
            acc, qual = expected_scores(name, int(bid))
            assert row["status"] == "ok"
            assert row["score"] == pytest.approx(acc) and row["quality"] == pytest.approx(qual)
    entity = [expected_scores("entity", b) for b in (1, 2)]
    assert result["categories"]["entity"]["mean"] == pytest.approx((entity[0][0] + entity[1][0]) / 2)
    assert result["categories"]["entity"]["quality"] == pytest.approx((entity[0][1] + entity[1][1]) / 2)
    assert result["categories"]["idiom"]["mean"] == pytest.approx(expected_scores("idiom", 1)[0])
    assert result["categories"]["textual_image"]["num_failed"] == 1
    assert result["overall"] is None and result["missing_categories"] == ["textual_image"]
    assert (result["num_scored"], result["num_failed"], result["num_errors"]) == (4, 1, 1)
    table = read_scores(run2.summary / "results.csv")   # results.csv: accuracy and quality per image
    assert {r["image_id"]: (r["status"], r["quality"]) for r in table}[unparseable] == ("failed", "")
    assert float({r["image_id"]: r for r in table}["entity_0001"]["quality"]) == pytest.approx(entity[0][1])

    # retry_errors asks exactly the failed judgment again; a judge that now answers fixes it
    fixed = ScriptedJudge()
    retried = run_score(manifest, run2.scores, load_config(ReasonBenchConfig, None, [
        f"out_dir={run2.root}", f"data_dir={data}", "judge.retries=1", "retry_errors=true"]), backend=fixed)
    assert fixed.calls[0] == (1, False, False)                    # one image: its description ...
    assert (retried["num_scored"], retried["num_failed"]) == (5, 0)
    assert summarize_run(run2.root)["categories"]["textual_image"]["mean"] == pytest.approx(
        expected_scores("textual_image", 1)[0])
    summarize_run(run2.root, label="scripted")
    md = (run2.summary / "summary.md").read_text()
    assert "0 failed judgments excluded" in md and "1 not judged" in md and "43.82" in md

    # compare: ReasonBench columns, deltas, and the paper's rows beside ours
    out = compare_runs([run, run2.root], tmp_path / "compare", ["tiny", "scripted"])
    assert out["benchmark"] == "T2I-ReasonBench" and out["columns"][:5] == ["entity", "idiom", "scientific",
                                                                           "textual_image", "overall"]
    assert out["paper"]["rows"]["Bagel+SRUM"]["overall"] == 46.75
    text = (tmp_path / "compare" / "compare.md").read_text()
    assert "| Bagel | 49.70 | 34.46 | 47.52 | 43.59 | 43.82 | n/a |" in text


def test_tiny_qwen_judge_renders_the_earlier_turns(tiny_judge_dir):
    from srum.judge.backends import QwenVLJudge
    judge = QwenVLJudge(tiny_judge_dir, dtype="float32", device="cpu")
    text = judge._chat_text(1, "Score it.", None, [(DESCRIBE_QUESTION, "A red cube.")])
    assert text.count("<|vision_start|>") == 1 and text.index("<|vision_start|>") < text.index(DESCRIBE_QUESTION)
    assert "<|im_start|>assistant\nA red cube.<|im_end|>" in text
    assert text.rstrip().endswith("<|im_start|>assistant") and text.index("A red cube.") < text.index("Score it.")
    with pytest.raises(ValueError, match="history"):
        judge.generate([[Image.new("RGB", (28, 28))]], ["Q"], history=[], max_new_tokens=2)
