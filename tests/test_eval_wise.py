# SPDX-License-Identifier: Apache-2.0
"""`srum eval wise`: WISE's prompt files (small ones written here in the upstream format;
the real ones from /work/shared/data when present), the judge's answers (malformed ones
counted as failed), WiScore and its category / domain / overall arithmetic against
hand-computed cases and WISE's published formula, resume, the domain split, and the
evaluation end to end on CPU with a tiny Bagel and a tiny random Qwen2.5-VL judge."""
import json
import re
from pathlib import Path

import pytest
import torch
from PIL import Image

from srum.config import load_config
from srum.evaluation.compbench import RunLayout
from srum.evaluation.summary import compare_runs, read_scores
from srum.evaluation.wise import (
    CATEGORIES, CATEGORY_WEIGHTS, WiseConfig, data_problems, read_prompts, run_score, summarize_rows,
    summarize_run, weighted,
)
from srum.evaluation.wise_judge import ParseError, parse_wise_scores, score_wise_images, wiscore
from srum.stages.generate import image_seed

from helpers_eval import LEVELS, TINY_SAMPLING, eval_parser, jsonl_rows, write_wise

REPO = Path(__file__).resolve().parents[1]
SHARED_WISE = REPO.parent / "shared" / "data" / "wise"

def expected_wiscore(pid):
    c, r, a = LEVELS[pid]
    return (0.7 * c + 0.2 * r + 0.1 * a) / 2


class ScriptedJudge:
    """Answers the levels named in the question's prompt; ``fail(question, sampled)`` -> an
    answer to send instead (or None). Records how many images each call had."""

    model_id = "scripted"

    def __init__(self, fail=None):
        self.fail, self.calls = fail, []

    def generate(self, images, prompts, *, system, max_new_tokens, do_sample, temperature, generator, history=None):
        assert history is None and all(len(row) == 1 and isinstance(row[0], Image.Image) for row in images)
        self.calls.append((len(prompts), do_sample))
        answers = []
        for q in prompts:
            bad = self.fail(q, do_sample) if self.fail else None
            if bad is not None:
                answers.append(bad)
                continue
            c, r, a = (int(v) for v in re.search(r"Prompt \d+: scores \((\d), (\d), (\d)\)", q).groups())
            answers.append(f"Consistency: {c}\nRealism: {r}\nAesthetic Quality: {a}")
        return answers


# ---------------------------------------------------------------- WiScore and its aggregation
def test_wiscore_is_wises_formula():
    assert wiscore(2, 2, 2) == 1.0 and wiscore(0, 0, 0) == 0.0
    assert wiscore(2, 1, 0) == pytest.approx((1.4 + 0.2) / 2) == pytest.approx(0.8)
    assert wiscore(1, 2, 2) == pytest.approx(0.65)
    assert wiscore(0, 0, 2) == pytest.approx(0.1) and wiscore(0, 2, 0) == pytest.approx(0.2)


def test_overall_weights_are_the_published_ones():
    # WISE_legacy/Calculate.py: 0.4 culture + 0.167 time + 0.133 space + 0.1 biology + 0.1 physics + 0.1 chemistry
    means = {"culture": 70.0, "time": 50.0, "space": 60.0, "biology": 40.0, "physics": 55.0, "chemistry": 30.0}
    assert weighted(means, CATEGORIES, "original") == pytest.approx(
        0.4 * 70 + 0.167 * 50 + 0.133 * 60 + 0.1 * 40 + 0.1 * 55 + 0.1 * 30)
    # WISE_Verified (calculate_verified.py): 0.4 culture, 0.12 for each other category
    assert weighted(means, CATEGORIES, "verified") == pytest.approx(0.4 * 70 + 0.12 * (50 + 60 + 40 + 55 + 30))
    for variant in ("original", "verified"):
        assert sum(CATEGORY_WEIGHTS[variant].values()) == pytest.approx(1.0)
    # a missing category: no overall (as upstream), unless asked for the evaluated ones only
    partial = {**means, "culture": None}
    assert weighted(partial, CATEGORIES, "original") is None
    assert weighted(partial, CATEGORIES, "original", partial=True) == pytest.approx(
        (0.167 * 50 + 0.133 * 60 + 0.1 * 40 + 0.1 * 55 + 0.1 * 30) / 0.6)


def _row(cat, sub, status, levels=None):
    row = {"category": cat, "subcategory": sub, "status": status, "score": None,
           **dict(zip(("consistency", "realism", "aesthetic_quality"), levels or (None,) * 3))}
    if status == "ok":
        row["score"] = 100 * wiscore(*levels)
    return row


def test_summary_by_category_subcategory_and_domain_counts_failures():
    rows = [_row("time", "Horizontal", "ok", (2, 2, 2)), _row("time", "Longitudinal", "ok", (1, 0, 0)),
            _row("time", "Horizontal", "failed"), _row("space", "Position", "ok", (2, 1, 0)),
            _row("biology", "State", "ok", (0, 0, 0)), _row("biology", "State", "failed")]
    s = summarize_rows(rows, "original")
    time = s["categories"]["time"]
    assert (time["num_images"], time["num_scored"], time["num_failed"]) == (3, 2, 1)
    assert time["mean"] == pytest.approx((100 + 35) / 2) and time["wiscore"] == pytest.approx(0.675)
    assert time["consistency"] == 1.5 and time["realism"] == 1.0
    assert list(s["categories"]) == ["time", "space", "biology"]                     # WISE's order
    assert s["subcategories"]["time/Horizontal"]["mean"] == 100 and s["subcategories"]["time/Horizontal"][
        "num_failed"] == 1
    # the space-time domain: WISE's weights of time and space over their category means
    assert s["domains"]["space-time"]["mean"] == pytest.approx((0.167 * 67.5 + 0.133 * 80) / 0.3)
    assert s["domains"]["science"]["mean"] is None            # physics and chemistry not evaluated
    assert s["overall"] is None and s["missing_categories"] == ["culture", "physics", "chemistry"]
    assert s["overall_evaluated"] == pytest.approx((0.167 * 67.5 + 0.133 * 80 + 0.1 * 0) / 0.4)
    assert (s["num_images"], s["num_scored"], s["num_failed"]) == (6, 4, 2)


# ---------------------------------------------------------------- answers
@pytest.mark.parametrize("answer, levels", [
    ("Consistency: 2\nRealism: 1\nAesthetic Quality: 0", (2, 1, 0)),
    ("**Consistency**: 1\n**Realism:** 2\n**Aesthetic Quality**: 2", (1, 2, 2)),
    ("- Consistency (0-2): 2/2\n- Realism: 0 (it looks drawn)\n- Aesthetic quality = 1.", (2, 0, 1)),
    ('{"consistency": 1, "realism": "2", "aesthetic_quality": 0}', (1, 2, 0)),
    ("```json\n{'Consistency': 0, 'Realism': 0, 'Aesthetics': 1,}\n```", (0, 0, 1)),
    ("2\n1\n1", (2, 1, 1)),                                               # upstream's bare-lines fallback
    ("<think>Consistency: 0</think>Consistency: 2\nRealism: 2\nAesthetic Quality: 1", (2, 2, 1)),
    ("Consistency: does the image show it?\nConsistency: 1\nRealism: 1\nAesthetic Quality: 1", (1, 1, 1)),
])
def test_parse_wise_scores(answer, levels):
    assert parse_wise_scores(answer) == dict(zip(("consistency", "realism", "aesthetic_quality"), levels))


@pytest.mark.parametrize("answer, why", [
    ("", "empty"),
    ("The image is great.", "no Consistency"),
    ("Consistency: 2\nRealism: 1", "no aesthetic_quality"),
    ("Consistency: 3\nRealism: 1\nAesthetic Quality: 0", "not 0, 1 or 2"),
    ("Consistency: 1.5\nRealism: 1\nAesthetic Quality: 0", "not 0, 1 or 2"),
    ("Consistency: 8/10\nRealism: 1\nAesthetic Quality: 0", "another scale"),
    ("Consistency: 2\nConsistency: 1\nRealism: 1\nAesthetic Quality: 0", "twice"),
    ('{"consistency": true, "realism": 1, "aesthetic_quality": 1}', "not a number"),
    ("2\n1", "no Consistency"),
])
def test_parse_wise_scores_rejects(answer, why):
    with pytest.raises(ParseError, match=why):
        parse_wise_scores(answer)


def test_malformed_answers_are_retried_then_counted_as_failed():
    cfg = WiseConfig(out_dir="unused").judge
    images = [Image.new("RGB", (8, 8)) for _ in range(3)]
    questions = ["Prompt 1: scores (2, 2, 2)", "Prompt 2: scores (1, 0, 1)", "Prompt 3: scores (0, 1, 2)"]
    gens = [torch.Generator().manual_seed(i) for i in range(3)]

    def fail(question, sampled):
        if question.startswith("Prompt 2") and not sampled:
            return "Consistency: high"          # greedy answer unparseable, the sampled re-ask works
        if question.startswith("Prompt 3"):
            return "Realism: 7"                 # never parses
        return None
    judge = ScriptedJudge(fail)
    results = score_wise_images(judge, images, questions, cfg, gens)
    assert [r["status"] for r in results] == ["ok", "ok", "failed"]
    assert results[0]["wiscore"] == 1.0 and results[1]["wiscore"] == pytest.approx(0.4)
    assert [a["sampled"] for a in results[1]["attempts"]] == [False, True]
    assert len(results[2]["attempts"]) == cfg.retries + 1 and results[2]["wiscore"] is None
    assert results[2]["consistency"] is None and "not 0, 1 or 2" in results[2]["attempts"][0]["error"]
    assert judge.calls[0] == (3, False) and all(call == (1, True) for call in judge.calls[1:])


# ---------------------------------------------------------------- files and the domain split
def test_prompts_domains_categories_and_bad_entries(tmp_path):
    data = write_wise(tmp_path / "wise")
    path = data / "natural_science_verified.json"
    entries = json.loads(path.read_text()) + [
        {"Prompt": "dup", "Explanation": "x", "Category": "Biology", "prompt_id": 641},
        {"Prompt": "x", "Explanation": "x", "Category": "Geology", "prompt_id": 990},
        {"Prompt": "x", "Explanation": "", "Category": "Biology", "prompt_id": 991},
        {"Prompt": "x", "Explanation": "x", "Category": "time", "prompt_id": 992}]
    path.write_text(json.dumps(entries))
    cfg = WiseConfig(out_dir="x", data_dir=str(data))
    prompts, errors = read_prompts(cfg)
    assert [p.wise_id for p in prompts] == [1, 2, 3, 401, 402, 521, 641, 761, 881]
    assert {p.wise_id: p.category for p in prompts}[761] == "physics" and prompts[0].domain == "culture"
    assert len(errors) == 4 and "duplicate prompt_id 641" in errors[0] and "Geology" in errors[1]
    assert "'Explanation'" in errors[2] and "belongs to domain space-time" in errors[3]
    assert cfg.resolved_variant() == "verified"

    # the paper's protocol: trained on one domain, evaluated on the other two
    split = WiseConfig(out_dir="x", data_dir=str(data), domains=["space-time", "science"])
    assert {p.domain for p in read_prompts(split)[0]} == {"space-time", "science"}
    some = WiseConfig(out_dir="x", data_dir=str(data), categories=["time", "chemistry"], limit_per_category=1)
    assert [p.wise_id for p in read_prompts(some)[0]] == [401, 881]
    # the score step looks any image up, whatever the selection
    assert len(read_prompts(split, selected=False)[0]) == 9
    for bad in ({"domains": ["history"]}, {"categories": ["geology"]},
                {"domains": ["culture"], "categories": ["time"]}):
        with pytest.raises(ValueError):
            WiseConfig(out_dir="x", **bad)


def test_release_files_are_found_and_told_apart(tmp_path):
    original = write_wise(tmp_path / "repo" / "WISE_legacy" / "data", suffix="")
    assert WiseConfig(out_dir="x", data_dir=str(original)).resolved_variant() == "original"
    # a clone's root holds both releases: the variant must be chosen
    write_wise(tmp_path / "repo" / "data_verified")
    clone = WiseConfig(out_dir="x", data_dir=str(tmp_path / "repo"))
    with pytest.raises(ValueError, match="set variant"):
        clone.resolved_variant()
    assert data_problems(clone) and "variant" in data_problems(clone)[0]
    assert WiseConfig(out_dir="x", data_dir=str(tmp_path / "repo"), variant="original").prompt_file("science")[0] \
        == original / "natural_science.json"
    empty = WiseConfig(out_dir="x", data_dir=str(tmp_path / "none"))
    with pytest.raises(FileNotFoundError, match="cultural_common_sense.json or cultural_common_sense_verified.json"):
        empty.prompt_file("culture")
    assert len(data_problems(empty)) == 3


@pytest.mark.skipif(not SHARED_WISE.is_dir(), reason="no copy of WISE in /work/shared/data")
def test_real_files_group_like_the_upstream_id_ranges():
    """Our grouping reads each prompt's Category; WISE's scripts use prompt-id ranges. Both agree."""
    cfg = WiseConfig(out_dir="x", data_dir=str(SHARED_WISE))
    prompts, errors = read_prompts(cfg)
    assert errors == [] and len(prompts) == 1000
    variant = cfg.resolved_variant()
    ranges = {"verified": {"culture": (1, 400), "time": (401, 520), "space": (521, 640), "biology": (641, 760),
                           "physics": (761, 880), "chemistry": (881, 1000)},
              "original": {"culture": (1, 400), "time": (401, 567), "space": (568, 700), "biology": (701, 800),
                           "physics": (801, 900), "chemistry": (901, 1000)}}[variant]
    for p in prompts:
        lo, hi = ranges[p.category]
        assert lo <= p.wise_id <= hi, p
    counts = {c: sum(p.category == c for p in prompts) for c in CATEGORIES}
    assert {c: round(n / 1000, 3) for c, n in counts.items()} == pytest.approx(CATEGORY_WEIGHTS[variant], abs=1e-3)


# ---------------------------------------------------------------- end to end
def test_wise_end_to_end_tiny(tmp_path, tiny_dir, tiny_judge_dir):
    data = write_wise(tmp_path / "wise")
    run = tmp_path / "run"
    args = ["--config", str(REPO / "configs" / "eval" / "tiny_wise.yaml"), f"model.path={tiny_dir}",
            f"judge.model={tiny_judge_dir}", f"out_dir={run}", f"data_dir={data}", "domains=[space-time,science]",
            "judge.max_new_tokens=6", "judge.retries=0", *TINY_SAMPLING]
    parsed = eval_parser().parse_args(["eval", "wise", "all", *args])
    code = parsed.func(parsed)
    layout = RunLayout(run)

    # images: WISE's layout <prompt_id>.png, the two evaluated domains' first prompt per category
    images = jsonl_rows(layout.images_manifest)
    assert [r["wise_id"] for r in images] == [401, 521, 641, 761, 881]
    for row in images:
        assert row["image_file"] == f"{row['wise_id']}.png" and row["variant"] == "verified"
        assert row["seed"] == image_seed(0, str(row["wise_id"]), 0) and row["think"] is False
        with Image.open(layout.images / row["image_file"]) as im:
            assert im.size == (32, 32)
    # the random judge's answers do not parse: failed, counted, the steps complete
    scores = jsonl_rows(layout.scores_file)
    assert [r["image_id"] for r in scores] == [r["image_id"] for r in images]
    assert code == 0 and all(r["status"] == "failed" and r["score"] is None for r in scores)
    summary = json.loads((layout.summary / "summary.json").read_text())
    assert (summary["num_images"], summary["num_failed"]) == (5, 5)
    for name in ("results.csv", "summary.md", "scores.png"):
        assert (layout.summary / name).stat().st_size > 0
    stamps = {p: p.stat().st_mtime_ns for p in layout.images.glob("*.png")}
    again = eval_parser().parse_args(["eval", "wise", "all", *args])
    assert again.func(again) == code and stamps == {p: p.stat().st_mtime_ns for p in layout.images.glob("*.png")}

    # the same images, every prompt of both domains' files, judged by a scripted judge: the numbers
    # follow the formula; 761's answers never parse (failed, counted); an unknown id is an error row
    manifest = tmp_path / "manifest.jsonl"
    drawn = [layout.images / r["image_file"] for r in images]
    rows = [{"image_id": str(pid), "prompt": "?", "image_file": str(drawn[n % 5]), "wise_id": pid}
            for n, pid in enumerate((401, 402, 521, 641, 761, 881))]
    rows.append({"image_id": "other", "prompt": "?", "image_file": str(layout.images / "401.png")})  # id from the name
    rows.append({"image_id": "x777", "prompt": "?", "image_file": str(drawn[0]), "wise_id": 777})  # in no file
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run2 = RunLayout(tmp_path / "run2")
    cfg = load_config(WiseConfig, None, [f"out_dir={run2.root}", f"data_dir={data}", "judge.retries=1"])
    judge = ScriptedJudge(lambda q, sampled: "Consistency: 5" if q.split('"')[1].startswith("Prompt 761") else None)
    stage = run_score(manifest, run2.scores, cfg, backend=judge)
    # "other" has no wise_id and its file is 401.png: judged as prompt 401
    assert (stage["num_scored"], stage["num_failed"], stage["num_errors"], stage["status"]) == (6, 1, 1, "incomplete")
    assert "prompt_id 777 is in none of the WISE files" in jsonl_rows(run2.scores / "errors.jsonl")[0]["_error"]
    got = {r["image_id"]: r for r in jsonl_rows(run2.scores_file)}
    assert got["other"]["wise_id"] == 401 and "x777" not in got
    for image_id, row in got.items():
        if image_id != "761":
            assert row["wiscore"] == pytest.approx(expected_wiscore(row["wise_id"]))
            assert row["score"] == pytest.approx(100 * row["wiscore"]) and row["status"] == "ok"
    assert got["761"]["status"] == "failed" and len(got["761"]["attempts"]) == 2
    result = summarize_run(run2.root, label="scripted")
    time = result["categories"]["time"]
    assert time["mean"] == pytest.approx(100 * (expected_wiscore(401) * 2 + expected_wiscore(402)) / 3)
    assert result["categories"]["physics"]["num_failed"] == 1 and result["categories"]["physics"]["mean"] is None
    w = CATEGORY_WEIGHTS["verified"]
    means = {c: result["categories"][c]["mean"] for c in ("time", "space", "biology", "chemistry")}
    assert result["domains"]["space-time"]["mean"] == pytest.approx(
        (w["time"] * means["time"] + w["space"] * means["space"]) / (w["time"] + w["space"]))
    assert result["domains"]["science"]["mean"] is None and result["overall"] is None
    assert result["overall_evaluated"] == pytest.approx(sum(w[c] * m for c, m in means.items()) /
                                                        sum(w[c] for c in means))
    csv_rows = read_scores(run2.summary / "results.csv")
    assert {r["image_id"]: r["status"] for r in csv_rows}["761"] == "failed"

    # resume: a kill after the first row (and half of the second) -> the rerun judges exactly the rest
    part = run2.scores / "parts" / "rank-00000.jsonl"
    lines = part.read_text().splitlines(keepends=True)
    part.write_text(lines[0] + lines[1][:40])
    (run2.scores_file).unlink()
    counting = ScriptedJudge()
    stage = run_score(manifest, run2.scores, cfg, backend=counting)
    assert sum(n for n, sampled in counting.calls if not sampled) == 6       # 8 rows: 1 kept, 1 not judgeable
    assert (stage["num_scored"], stage["num_failed"], stage["num_errors"]) == (7, 0, 1)
    # retry_errors asks the failed judgment (now none) and nothing else
    again = ScriptedJudge()
    run_score(manifest, run2.scores, load_config(WiseConfig, None, [
        f"out_dir={run2.root}", f"data_dir={data}", "retry_errors=true"]), backend=again)
    assert again.calls == []
    summarize_run(run2.root, label="scripted")

    # compare: WISE's columns, deltas against the first run, no paper rows (the paper shows a figure)
    out = compare_runs([run, run2.root], tmp_path / "compare", ["tiny", "scripted"])
    assert out["benchmark"] == "WISE" and out["columns"][:6] == list(CATEGORIES) and "paper" not in out
    text = (tmp_path / "compare" / "compare.md").read_text()
    assert "| run | Cultural | Time | Space |" in text and "WiScore x 100" in text


def test_dry_run_names_the_missing_files_and_skips_a_served_judge(tmp_path, capsys):
    from srum.preflight import check_stage
    cfg = load_config(WiseConfig, None, [f"out_dir={tmp_path / 'run'}", f"data_dir={tmp_path / 'none'}",
                                         "judge.backend=openai", "judge.server.base_url=http://judge:8000/v1"])
    pf = check_stage("eval wise", cfg, "score")
    assert sum("WISE prompt file not found" in p for p in pf.problems) == 3
    assert any(p.startswith("images:") and "manifest.jsonl" in p for p in pf.problems)
    assert not any("judge.model" in p for p in pf.problems) and any("http://judge:8000/v1" in n for n in pf.notes)
    local = load_config(WiseConfig, None, [f"out_dir={tmp_path / 'run'}", f"data_dir={write_wise(tmp_path / 'w')}",
                                           f"judge.model={tmp_path / 'no-judge'}"])
    pf = check_stage("eval wise", local, "all")
    assert not any("WISE prompt file" in p for p in pf.problems) and any("judge.model" in p for p in pf.problems)
    assert not (tmp_path / "run").exists()


def test_a_domain_file_is_a_training_prompt_set(tmp_path):
    """The generate stage (and the registry's wise_* entries) read WISE's files as prompts."""
    from srum.data.prompts import read_prompts as read_prompt_files
    data = write_wise(tmp_path / "wise")
    items, errors = read_prompt_files([data / "spatio-temporal_reasoning_verified.json"], categories=["time"])
    assert errors == [] and [(i.id, i.category) for i in items] == [("401", "time"), ("402", "time")]
    assert items[0].prompt == "Prompt 401: scores (2, 1, 0)"
