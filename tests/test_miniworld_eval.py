# SPDX-License-Identifier: Apache-2.0
"""`srum eval miniworld`: generation with a tiny random Bagel (every picture scored, the
unreadable ones as wrong), ground-truth pictures (100 %), a manifest written by another
tool, swapped pictures, and `srum eval compare` over two runs."""
import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from srum.config import load_config
from srum.evaluation.cli import add_eval_parser
from srum.evaluation.compbench import RunLayout
from srum.evaluation.summary import compare_runs, read_scores
from srum.miniworld import world as W
from srum.miniworld.evaluation import MiniWorldEvalConfig, run_miniworld, run_score, summarize_run
from srum.stages.generate import image_seed
from srum.stages.shards import iter_jsonl

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "eval" / "miniworld.yaml"


def _rows(path):
    return [obj for _, obj, err in iter_jsonl(Path(path)) if obj is not None]


def _cli(*args) -> int:
    parser = argparse.ArgumentParser(prog="srum")
    add_eval_parser(parser.add_subparsers(dest="command", required=True))
    parsed = parser.parse_args(["eval", "miniworld", *args])
    return parsed.func(parsed)


def test_config_file_loads_with_the_documented_defaults():
    cfg = load_config(MiniWorldEvalConfig, CONFIG, ["model.path=/some/model"])
    assert cfg.model.path == "/some/model" and cfg.generator == "model"
    assert (cfg.prompts.split, cfg.prompts.per_category, cfg.prompts.seed) == ("heldout", 50, 0)
    s = cfg.sampling
    assert (s.height, s.width, s.num_timesteps, s.cfg_text_scale, s.timestep_shift, s.think) == (64, 64, 20, 3.0, 1.0,
                                                                                             False)
    assert load_config(MiniWorldEvalConfig, None, ["out_dir=x"]).sampling == s     # the YAML repeats the defaults
    with pytest.raises(ValueError, match="categories"):
        load_config(MiniWorldEvalConfig, None, ["out_dir=x", "prompts.categories=[color, 3d_spatial]"])
    with pytest.raises(ValueError, match="model.path"):
        run_miniworld("generate", load_config(MiniWorldEvalConfig, CONFIG, ["out_dir=/tmp/unused"]))


def test_tiny_model_run_scores_every_picture(tmp_path, tiny_dir):
    run = tmp_path / "tiny"
    args = ["all", "--config", str(CONFIG), f"model.path={tiny_dir}", "model.dtype=float32", f"out_dir={run}",
            "prompts.per_category=1", "sampling.num_timesteps=2", "batch_size=3"]
    assert _cli(*args) == 0
    layout = RunLayout(run)
    images = _rows(layout.images_manifest)
    assert [r["category"] for r in images] == list(W.CATEGORIES)
    for row in images:
        assert row["image_file"] == f"{row['category']}/{row['prompt_id']}.png"
        assert row["seed"] == image_seed(0, row["prompt_id"], 0)
        assert W.PromptSpec.from_dict(row["spec"]).text == row["prompt"]
        with Image.open(layout.images / row["image_file"]) as im:
            assert im.size == (64, 64)
    scores = _rows(layout.scores_file)
    assert [r["image_id"] for r in scores] == [r["image_id"] for r in images]       # every picture scored
    for r in scores:
        assert r["status"] == "ok" and r["score"] in (0, 100) and r["score"] == 100 * r["correct"]
        if not r["readable"]:
            assert r["score"] == 0 and r["failed"][0] == "unreadable"
    summary = json.loads((layout.summary / "summary.json").read_text())
    assert summary["num_images"] == summary["num_scored"] == 6 and summary["num_failed"] == 0
    expected = np.mean([r["score"] for r in scores])
    assert summary["overall"] == pytest.approx(expected)                             # one prompt per category
    for name in ("results.csv", "summary.md", "scores.png"):
        assert (layout.summary / name).stat().st_size > 0
    # a rerun finds every step done
    stamps = {p: p.stat().st_mtime_ns for p in layout.images.rglob("*.png")}
    parts = (layout.scores / "parts" / "rank-00000.jsonl").read_text()
    assert _cli(*args) == 0
    assert stamps == {p: p.stat().st_mtime_ns for p in layout.images.rglob("*.png")}
    assert (layout.scores / "parts" / "rank-00000.jsonl").read_text() == parts


def test_ground_truth_pictures_score_100_and_swapped_ones_do_not(tmp_path):
    truth = tmp_path / "truth"
    assert _cli("all", "--config", str(CONFIG), "generator=render", f"out_dir={truth}",
                "prompts.per_category=8") == 0
    summary = json.loads((RunLayout(truth).summary / "summary.json").read_text())
    assert summary["overall"] == 100.0 and summary["single_object"] == 100.0 and summary["multi_object"] == 100.0
    assert summary["num_images"] == 48 and summary["readable"] == 100.0
    assert all(summary["categories"][c]["mean"] == 100.0 for c in W.CATEGORIES)

    # the same pictures, each filed under the next prompt of its category: mostly wrong
    rows = _rows(RunLayout(truth).images_manifest)
    swapped = []
    for c in W.CATEGORIES:
        group = [r for r in rows if r["category"] == c]
        for r, other in zip(group, group[1:] + group[:1]):
            swapped.append({**r, "image_file": str(RunLayout(truth).images / other["image_file"])})
    manifest = tmp_path / "swapped.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in swapped))
    other = tmp_path / "swapped"
    assert _cli("all", f"out_dir={other}", f"images={manifest}") == 0
    result = json.loads((RunLayout(other).summary / "summary.json").read_text())
    assert result["num_images"] == 48 and result["overall"] < 30

    # srum eval compare reads both runs with the world's own columns (summary.json's table)
    compared = compare_runs([truth, other], tmp_path / "compare", ["truth", "swapped"])
    values = compared["runs"][1]["values"]
    assert compared["benchmark"] == "Miniature world (exact oracle)"
    assert compared["columns"] == [*W.CATEGORIES, "single_object", "multi_object", "overall"]
    assert compared["runs"][0]["values"]["overall"] == 100.0 and values["overall"] == result["overall"]
    assert values["complex"] == result["categories"]["complex"]["mean"]
    assert values["single_object"] == result["single_object"]
    assert "| truth | 100.00 |" in (tmp_path / "compare" / "compare.md").read_text()


def test_manifest_written_by_another_tool(tmp_path):
    """Pictures from elsewhere: rows with a spec, rows with only a prompt of the configured
    set (looked up), and rows that can be neither (recorded as errors)."""
    cfg = load_config(MiniWorldEvalConfig, CONFIG, [f"out_dir={tmp_path / 'run'}", "prompts.per_category=2"])
    specs = cfg.prompts.specs()
    (tmp_path / "pics").mkdir()
    rows = []
    for i, spec in enumerate(specs):
        scene = W.sample_scene(spec, np.random.default_rng(i))
        W.render(scene).resize((128, 128), Image.NEAREST).save(tmp_path / "pics" / f"{i}.png")  # other size
        row = {"image_id": f"img{i}", "image_file": f"pics/{i}.png", "prompt": spec.text}
        if i % 2:
            row["spec"] = json.dumps(spec.to_dict())   # JSON text works as well as an object
        rows.append(row)
    rows.append({"image_id": "stray", "image_file": "pics/0.png", "prompt": "a teapot"})
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = run_score(manifest, RunLayout(Path(cfg.out_dir)).scores, cfg)
    assert summary["num_ok"] == len(specs) and summary["num_errors"] == 1 and summary["num_unreadable"] == 0
    errors = _rows(RunLayout(Path(cfg.out_dir)).scores / "errors.jsonl")
    assert errors[0]["image_id"] == "stray" and "not in the configured prompt set" in errors[0]["_error"]
    result = summarize_run(cfg.out_dir, label="external")
    assert result["overall"] == 100.0 and result["num_errors"] == 1
    assert [r["category"] for r in read_scores(RunLayout(Path(cfg.out_dir)).summary / "results.csv")] == \
        [s.category for s in specs]
    shutil.rmtree(tmp_path / "pics")
