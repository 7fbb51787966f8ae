# SPDX-License-Identifier: Apache-2.0
"""The miniature SRUM loop (configs/pipeline/miniworld.yaml) through ``srum pipeline``,
shortened: a few training prompts, 1 round, a few steps, on a miniature Bagel the test
trains itself at minimal sizes (or the shipped models/miniworld when present). It checks
the mechanics and that every number is real: the judge's answers are logits (status ok,
probabilities on the rating digits), the model proposed and filtered its own boxes,
training used the reward records, every evaluation image has an oracle score, and the
report shows the miniworld accuracy table (base -> round 1) and the picture grid."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "pipeline" / "miniworld.yaml"
SHIPPED = ROOT / "models" / "miniworld"
STAGES = ["baseline/eval"] + [f"round-01/{s}" for s in ("generate", "propose", "judge", "train", "export", "eval",
                                                         "report")]


def test_config_builds_every_stage_and_checks_the_benchmark(tmp_path, capsys):
    from srum.config import ConfigError
    from srum.pipeline.config import load_pipeline_config
    from srum.pipeline.runner import Pipeline, eval_config_class
    cfg = load_pipeline_config(str(CONFIG), [f"run_dir={tmp_path / 'run'}"])
    assert cfg.eval.benchmark == "miniworld" and cfg.model.path == str(ROOT / "models/miniworld")   # config root
    Pipeline(cfg, str(CONFIG), dry_run=True).run()          # every stage config is built and checked
    assert capsys.readouterr().out.count("would run") == 1 + 2 * 7
    assert eval_config_class("miniworld").__name__ == "MiniWorldEvalConfig"
    with pytest.raises(ConfigError, match="leave data.eval empty"):
        load_pipeline_config(str(CONFIG), ["data.eval=[examples]"])
    with pytest.raises(ConfigError, match="init_tiny_judge"):
        load_pipeline_config(str(CONFIG), ["eval.init_tiny_judge=true"])
    with pytest.raises(ConfigError, match="benchmark"):
        load_pipeline_config(str(CONFIG), ["eval.benchmark=geneval"])


def test_shipped_training_prompts_are_what_the_command_writes(tmp_path):
    from srum.data.prompts import read_prompts
    from srum.miniworld.cli import cmd_prompts
    from types import SimpleNamespace
    out = tmp_path / "p.jsonl"
    assert cmd_prompts(SimpleNamespace(out=str(out), split="train", per_category=200, seed=1, categories=None)) == 0
    assert out.read_text() == (ROOT / "data/prompts/miniworld_train.jsonl").read_text()
    ref = tmp_path / "p.json"                          # the reference's format, same prompts
    assert cmd_prompts(SimpleNamespace(out=str(ref), split="train", per_category=3, seed=1,
                                       categories=["color", "spatial"])) == 0
    items, errors = read_prompts(ref)
    assert errors == [] and [i.category for i in items] == ["color"] * 3 + ["spatial"] * 3
    assert [i.prompt for i in items[:3]] == [i.prompt for i in read_prompts(out)[0][:3]]
    assert cmd_prompts(SimpleNamespace(out=str(tmp_path / "p.txt"), split="train", per_category=1, seed=1,
                                       categories=None)) == 2


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    if (SHIPPED / "llm_config.json").is_file():
        return str(SHIPPED)
    from srum.miniworld.data import DataConfig
    from srum.miniworld.pretrain import PretrainConfig, pretrain
    from srum.training.autoencoder import AutoencoderTrainConfig
    out = tmp_path_factory.mktemp("mw-pretrain")
    cfg = PretrainConfig(
        out_dir=str(out), device="cpu", autoencoder_images=40, export_dtype="float32",
        data=DataConfig(prompts=60, vqa_scenes=30, judge_scenes=10, workers=0),
        autoencoder=AutoencoderTrainConfig(steps=3, batch_size=4, warmup_steps=1, log_every=1),
        train_overrides=["train.total_steps=3", "data.expected_num_tokens=512", "data.max_num_tokens=1024",
                         "checkpoint.every_steps=0", "logging.tensorboard=false", "optim.warmup_steps=1",
                         "data.num_workers=0"])
    return pretrain(cfg)["model"]


@pytest.fixture(scope="module")
def run(model_dir, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("mw-pipeline") / "run"
    overrides = [
        f"run_dir={run_dir}", f"model.path={model_dir}", "rounds=1",
        # 2 training prompts per category, 2 candidates each, short sampling
        "generate.overrides.limit_per_category=2", "generate.overrides.num_images_per_prompt=2",
        "generate.overrides.sampling.num_timesteps=4", "generate.overrides.sampling.max_think_tokens=24",
        "propose.overrides.proposals.self_boxes.max_new_tokens=24",
        # a barely trained model puts little probability on the digits: keep every judgment
        "judge.overrides.judge.min_scale_mass=0.0",
        "train.overrides.train.total_steps=2", "train.overrides.checkpoint.every_steps=2",
        # 2 held-out prompts per category (12 images), short sampling
        "eval.overrides.prompts.per_category=2", "eval.overrides.sampling.num_timesteps=4",
        "report.limit=4", "report.grid_rows=6",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    proc = subprocess.run([sys.executable, "-m", "srum", "pipeline", "--config", str(CONFIG), *overrides],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return run_dir


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_every_stage_completed_with_the_configured_settings(run):
    from srum.pipeline import state
    for label in STAGES:
        marker = state.read_marker(run / label)
        assert marker is not None and marker["status"] == "complete", label
    gen = yaml.safe_load((run / "round-01/generate/config.yaml").read_text())
    assert gen["sampling"]["think"] is True and gen["sampling"]["height"] == 64
    assert gen["prompts"] == [str(ROOT / "data/prompts/miniworld_train.jsonl")]
    manifest = _jsonl(run / "round-01/generate/manifest.jsonl")
    assert len(manifest) == 6 * 2 * 2 and all(r["think_output"] for r in manifest)   # think mode: a plan each
    assert all(r["prompt_id"].startswith("mw_train_") for r in manifest)
    ev = yaml.safe_load((run / "round-01/eval/config.yaml").read_text())
    assert ev["prompts"]["split"] == "heldout" and ev["sampling"]["think"] is False
    assert ev["model"]["path"] == str(run / "round-01/export")


def test_regions_and_judgments_are_the_models_own_logits(run):
    regions = _jsonl(run / "round-01/propose/regions.jsonl")
    assert len(regions) == 24
    for row in regions:
        assert isinstance(row["stats"]["self_boxes_answer"], str)      # the model was asked for boxes
        for region in row["regions"]:                                  # boxes it named went through the filter
            assert region["grounding"] is not None and 0.0 <= region["grounding"]["p_relevant"] <= 1.0
    records = _jsonl(run / "round-01/judge/rewards.jsonl")
    assert len(records) == 24
    judged = [r["global"] for r in records] + [g for r in records for g in r["regions"]
                                               if not (g.get("detail") or {}).get("skipped")]
    assert all(j["method"] == "logits" for j in judged)
    ok = [j for j in judged if j["status"] == "ok"]
    assert len(ok) == len(judged), [j for j in judged if j["status"] != "ok"][:3]   # min_scale_mass 0: none failed
    for j in ok:
        probabilities = j["detail"]["probabilities"]
        assert len(probabilities) == 9 and math.isclose(sum(probabilities), 1.0, rel_tol=1e-4)
        assert j["detail"]["scale_mass"] > 0 and -1.0 <= j["score"] <= 1.0
    assert len({round(r["global"]["score"], 6) for r in records}) > 1                # real, image-dependent numbers


def test_training_used_the_reward_records(run):
    metrics = [json.loads(line) for line in (run / "round-01/train/metrics.jsonl").read_text().splitlines()]
    steps = [m for m in metrics if "step" in m and "loss" in m]
    assert [m["step"] for m in steps] == [1, 2]
    assert all(math.isfinite(m["loss"]) and m["constraint_term"] > 0 and 0 < m["weight_mean"] <= 1 for m in steps)
    train = yaml.safe_load((run / "round-01/train/config.yaml").read_text())
    assert train["freeze"]["und_expert"] is True and train["rewards"]["map"]["mode"] == "official"
    export = json.loads((run / "round-01/export/srum_export.json").read_text())
    assert export["step"] == 2 and export["dtype"] == "float32"


def test_every_eval_image_has_an_oracle_score(run):
    for label in ("baseline/eval", "round-01/eval"):
        images = _jsonl(run / label / "images/manifest.jsonl")
        scores = _jsonl(run / label / "scores/scores.jsonl")
        assert len(images) == 12 and {r["image_id"] for r in scores} == {r["image_id"] for r in images}
        assert all(r["status"] == "ok" and r["score"] in (0, 100) and r["judge"] == "miniworld-oracle"
                   for r in scores)
        summary = json.loads((run / label / "summary/summary.json").read_text())
        assert summary["benchmark"] == "miniworld" and summary["overall"] is not None
        assert summary["num_images"] == 12 and summary["table"]["values"]["overall"] == summary["overall"]


def test_report_shows_the_miniworld_table_and_the_grid(run):
    report = run / "round-01/report"
    compare = json.loads((report / "compare/compare.json").read_text())
    assert compare["benchmark"] == "Miniature world (exact oracle)"
    assert [r["label"] for r in compare["runs"]] == ["base", "round 1"]
    assert "single_object" in compare["columns"] and "3d_spatial" not in compare["columns"]
    base = json.loads((run / "baseline/eval/summary/summary.json").read_text())
    assert compare["runs"][0]["values"]["overall"] == base["overall"]
    grid = json.loads((report / "compare/grid.json").read_text())
    assert grid["columns"] == ["base", "round 1"] and grid["rows"] == 6
    assert sum(grid["changed"].values()) == 12
    html = (report / "report.html").read_text()
    assert "Miniature world (exact oracle) comparison" in html and "Pictures side by side" in html
    assert "eval/grid.png" in html and (report / "eval/grid.png").is_file()
    assert html.count('<article class="card"') == 4
