# SPDX-License-Identifier: Apache-2.0
"""srum eval geneval: GenEval's evaluator run as a subprocess (a stand-in script written
here, with the official command line and results.jsonl format), summary_scores.py's
arithmetic checked by hand, resume, a failing evaluator, missing rows, the preflight,
and the compare table with the paper's GenEval rows."""
from __future__ import annotations

import csv
import json
import sys
import textwrap
from pathlib import Path

import pytest
from PIL import Image

from srum.cli import main
from srum.evaluation.geneval_score import (
    DEFAULT_DETECTOR, GenEvalEvaluatorConfig, GenEvalScoreConfig, geneval_scores, read_results, run_geneval_score,
)
from srum.evaluation.summary import compare_runs
from srum.stages.status import StageFailure, read_status

# Stands in for evaluation/evaluate_images.py: the same arguments, the same walk over the
# folder, one line per image in the official format. Verdicts come from a JSON file
# (image key -> correct; an image missing from it gets no row); FAKE_FAIL makes it crash.
FAKE_EVALUATOR = textwrap.dedent('''
    import argparse, json, os, re, sys
    p = argparse.ArgumentParser()
    p.add_argument("imagedir"); p.add_argument("--outfile", default="results.jsonl")
    p.add_argument("--model-config", default=None); p.add_argument("--model-path", default="./")
    p.add_argument("--options", nargs="*", default=[])
    args = p.parse_args()
    here = os.path.dirname(os.path.abspath(__file__))
    with open(os.path.join(here, "calls.txt"), "a") as f:
        f.write(json.dumps(sys.argv[1:]) + "\\n")
    if os.environ.get("FAKE_FAIL"):
        print("loading detector ...", file=sys.stderr)
        print("RuntimeError: CUDA out of memory (fake)", file=sys.stderr)
        sys.exit(3)
    assert os.path.isfile(os.path.join(args.model_path, "%s.pth"))
    verdicts = json.load(open(os.path.join(here, "verdicts.json")))
    rows = []
    for sub in os.listdir(args.imagedir):
        folder = os.path.join(args.imagedir, sub)
        if not os.path.isdir(folder) or not sub.isdigit():
            continue
        metadata = json.load(open(os.path.join(folder, "metadata.jsonl")))
        for name in os.listdir(os.path.join(folder, "samples")):
            path = os.path.join(folder, "samples", name)
            key = sub + "/samples/" + name
            if not os.path.isfile(path) or not re.match(r"\\d+\\.png", name) or key not in verdicts:
                continue
            rows.append({"filename": path, "tag": metadata["tag"], "prompt": metadata["prompt"],
                         "correct": verdicts[key], "reason": "" if verdicts[key] else "expected more",
                         "metadata": json.dumps(metadata), "details": "{}"})
    with open(args.outfile, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\\n")
''' % DEFAULT_DETECTOR)

# Two images per task; correct images per task: 2, 1, 0, 1, 2, 1 (of 2).
TASKS = ["single_object", "two_object", "counting", "colors", "position", "color_attr"]
CORRECT = {"single_object": [True, True], "two_object": [True, False], "counting": [False, False],
           "colors": [False, True], "position": [True, True], "color_attr": [False, True]}
EXPECTED = {"single_object": 1.0, "two_object": 0.5, "counting": 0.0, "colors": 0.5, "position": 1.0,
            "color_attr": 0.5}
EXPECTED_OVERALL = 3.5 / 6   # the mean over the six tasks (images weigh equally here, but tasks are averaged)


@pytest.fixture
def setup(tmp_path):
    images = tmp_path / "images"
    verdicts = {}
    for i, tag in enumerate(TASKS):
        folder = images / f"{i:05d}"
        (folder / "samples").mkdir(parents=True)
        (folder / "metadata.jsonl").write_text(json.dumps({"tag": tag, "include": [], "prompt": f"a photo {i}"}))
        for k, ok in enumerate(CORRECT[tag]):
            Image.new("RGB", (8, 8), (k * 50, 0, 0)).save(folder / "samples" / f"{k:04d}.png")
            verdicts[f"{i:05d}/samples/{k:04d}.png"] = ok
    (images / "manifest.jsonl").write_text(json.dumps({"image_id": "x", "sampling": {"think": False}}) + "\n")
    repo = tmp_path / "geneval"
    (repo / "evaluation").mkdir(parents=True)
    (repo / "evaluation" / "evaluate_images.py").write_text(FAKE_EVALUATOR)
    (repo / "evaluation" / "verdicts.json").write_text(json.dumps(verdicts))
    detector = tmp_path / "detector"
    detector.mkdir()
    (detector / f"{DEFAULT_DETECTOR}.pth").write_bytes(b"weights")
    cfg = GenEvalScoreConfig(images=str(images), out_dir=str(tmp_path / "run"),
                             evaluator=GenEvalEvaluatorConfig(python=sys.executable, repo=str(repo),
                                                              detector_path=str(detector)))
    return cfg, repo, verdicts


def _calls(repo: Path) -> list[list[str]]:
    path = repo / "evaluation" / "calls.txt"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def test_scores_by_hand_and_resume(setup):
    cfg, repo, _ = setup
    summary = run_geneval_score(cfg)
    assert summary["status"] == "complete" and summary["num_scored"] == 12 and summary["num_missing"] == 0
    for tag, value in EXPECTED.items():
        assert summary["tasks"][tag]["accuracy"] == pytest.approx(value)
        assert summary["table"]["values"][tag] == pytest.approx(value)
    assert summary["overall"] == pytest.approx(EXPECTED_OVERALL)
    assert summary["correct_images"] == pytest.approx(7 / 12)
    assert summary["correct_prompts"] == pytest.approx(5 / 6)   # the counting prompt has no correct image
    assert summary["run"]["think"] == "false"
    # the official command line, in the evaluator's environment
    (args,) = _calls(repo)
    assert args == [cfg.images, "--outfile", str(Path(cfg.out_dir) / "scores" / "results.partial.jsonl"),
                    "--model-path", cfg.evaluator.detector_path]
    run = Path(cfg.out_dir)
    assert (run / "scores" / "results.jsonl").is_file() and not (run / "scores" / "results.partial.jsonl").exists()
    assert read_status(run / "scores")["status"] == "complete"
    md = (run / "summary" / "summary.md").read_text()
    assert "| 1.00 | 0.50 | 0.00 | 0.50 | 1.00 | 0.50 | 0.58 |" in md
    with open(run / "summary" / "results.csv") as f:
        assert len(list(csv.DictReader(f))) == 12
    # the chart's axis is 0-1: single_object's 1.00 reaches the top of the plot (one series:
    # plot top at y=74, its first bar spans x=58..116)
    chart = Image.open(run / "summary" / "scores.png").convert("RGB")
    assert chart.getpixel((60, 80)) == (76, 114, 176) and chart.getpixel((60, 66)) == (255, 255, 255)
    # a rerun with the same images and command keeps the results (the evaluator is not run again)
    again = run_geneval_score(cfg)
    assert len(_calls(repo)) == 1 and again["overall"] == pytest.approx(EXPECTED_OVERALL)
    # a rewritten image invalidates them
    Image.new("RGB", (8, 8), (9, 9, 9)).save(Path(cfg.images) / "00002" / "samples" / "0001.png")
    run_geneval_score(cfg)
    assert len(_calls(repo)) == 2


def test_aggregation_is_over_tasks_not_images():
    rows = ([{"tag": "single_object", "correct": True, "metadata": f"s{i}"} for i in range(8)]
            + [{"tag": t, "correct": False, "metadata": t} for t in TASKS[1:]])
    numbers = geneval_scores(rows)
    assert numbers["overall"] == pytest.approx(1 / 6)           # image mean would be 8/13
    assert numbers["correct_images"] == pytest.approx(8 / 13)
    assert geneval_scores(rows[:8])["overall"] is None          # tasks missing: no overall
    assert geneval_scores(rows[:8])["missing_tasks"] == TASKS[1:]


def test_missing_and_bad_rows_are_counted(setup, tmp_path):
    cfg, repo, verdicts = setup
    del verdicts["00001/samples/0000.png"]      # the evaluator writes no row for it
    (repo / "evaluation" / "verdicts.json").write_text(json.dumps(verdicts))
    code = main(["eval", "geneval", f"images={cfg.images}", f"out_dir={cfg.out_dir}",
                 f"evaluator.python={cfg.evaluator.python}", f"evaluator.repo={cfg.evaluator.repo}",
                 f"evaluator.detector_path={cfg.evaluator.detector_path}"])
    assert code == 1
    summary = json.loads((Path(cfg.out_dir) / "summary" / "summary.json").read_text())
    assert summary["status"] == "incomplete" and summary["num_missing"] == 1 and summary["num_failed"] == 1
    assert summary["tasks"]["two_object"] == {"num_images": 1, "num_correct": 0, "accuracy": 0.0}
    status = read_status(Path(cfg.out_dir) / "scores")
    assert status["status"] == "incomplete" and "00001/samples/0000.png" in status["reason"]
    # rows that do not fit are named by file and line
    results = tmp_path / "by-hand.jsonl"
    results.write_text('{"filename": "x/00000/samples/0000.png", "tag": "single_object", "correct": "yes"}\n'
                       '{"filename": "x/00000/samples/0000.png", "tag": "single_object", "correct": true}\n'
                       '{"filename": "x/00000/samples/0000.png", "tag": "single_object", "correct": true}\n'
                       '{"filename": "x/00099/samples/0000.png", "tag": "counting", "correct": true}\n')
    rows, problems = read_results(results, ["00000/samples/0000.png", "00000/samples/0001.png"])
    assert len(rows) == 1 and problems["missing"] == ["00000/samples/0001.png"]
    assert [b.split(": ", 1)[0] for b in problems["bad_rows"]] == [f"{results}:{n}" for n in (1, 3, 4)]
    assert "scored twice" in problems["bad_rows"][1] and "not an image of this folder" in problems["bad_rows"][2]


def test_failing_evaluator_fails_the_step_with_its_stderr(setup, monkeypatch, capsys):
    cfg, repo, _ = setup
    monkeypatch.setenv("FAKE_FAIL", "1")
    with pytest.raises(StageFailure, match=r"(?s)exited with code 3.*CUDA out of memory \(fake\)"):
        run_geneval_score(cfg)
    status = read_status(Path(cfg.out_dir) / "scores")
    assert status["status"] == "failed" and "CUDA out of memory" in status["reason"]
    assert not (Path(cfg.out_dir) / "summary" / "summary.json").exists()
    code = main(["eval", "geneval", f"images={cfg.images}", f"out_dir={cfg.out_dir}",
                 f"evaluator.python={cfg.evaluator.python}", f"evaluator.repo={cfg.evaluator.repo}",
                 f"evaluator.detector_path={cfg.evaluator.detector_path}"])
    assert code == 2 and "CUDA out of memory (fake)" in capsys.readouterr().err
    # not set up: says which path is missing before running anything
    monkeypatch.delenv("FAKE_FAIL")
    cfg.evaluator.detector_path = str(Path(cfg.out_dir) / "nowhere")
    with pytest.raises(StageFailure, match=r"evaluator.detector_path: .*nowhere.*not found"):
        run_geneval_score(cfg)


def test_dry_run_checks_the_evaluator_paths(setup, tmp_path, capsys):
    cfg, repo, _ = setup
    stubs = tmp_path / "stubs"          # GenEval's dependencies, importable in "its" environment
    for module in ("mmdet", "open_clip", "clip_benchmark"):
        (stubs / module).mkdir(parents=True)
        (stubs / module / "__init__.py").write_text("")
    common = [f"images={cfg.images}", f"out_dir={cfg.out_dir}", f"evaluator.python={cfg.evaluator.python}",
              f"evaluator.repo={cfg.evaluator.repo}", f"evaluator.env={{PYTHONPATH: {stubs}}}"]
    detector = f"evaluator.detector_path={cfg.evaluator.detector_path}"
    assert main(["eval", "geneval", "--dry-run", *common, detector]) == 0
    out = capsys.readouterr().out
    assert "evaluation/evaluate_images.py" in out and "--model-path" in out and "no problem found" in out
    code = main(["eval", "geneval", "--dry-run", *common[:3], f"evaluator.repo={tmp_path / 'no-repo'}",
                 f"evaluator.detector_path={tmp_path}"])
    out = capsys.readouterr().out
    assert code == 1
    assert "evaluator.repo" in out and "evaluator.detector_path" in out and DEFAULT_DETECTOR in out
    assert "cannot import GenEval's dependencies" in out       # no stubs on the path: mmdet is missing
    assert not (Path(cfg.out_dir) / "scores" / "results.jsonl").exists() and not _calls(repo)


def test_compare_shows_the_geneval_table_and_the_papers_rows(setup):
    cfg, _, _ = setup
    run_geneval_score(cfg)
    result = compare_runs([cfg.out_dir], Path(cfg.out_dir) / "cmp", ["Bagel (ours)"])
    assert result["benchmark"] == "GenEval" and result["columns"][-1] == "overall"
    assert result["runs"][0]["values"]["counting"] == 0.0
    assert result["paper"]["rows"]["Bagel+SRUM"]["counting"] == 0.83
    md = (Path(cfg.out_dir) / "cmp" / "compare.md").read_text()
    assert "| run | Single obj. | Two obj. | Counting | Colors | Position | Color attr. | Overall |" in md
    assert "| Bagel (ours) | 1.00 | 0.50 | 0.00 | 0.50 | 1.00 | 0.50 | 0.58 | 12 | 0 |" in md
    assert "| Bagel+SRUM | 0.98 | 0.94 | 0.83 | 0.90 | 0.64 | 0.83 | n/a |" in md
